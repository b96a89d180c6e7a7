//! What the agent reports about real traffic: per-pod packet counters by direction and reason
//! move by exactly the packets sent, and audit mode lets policy drops pass while counting them
//! as "would drop" — on real namespaces with real packets.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use netpol_sandbox::{netns, privileged, Cluster, Protocol, Shape};

const PORTS: &[(&str, u16, &str)] = &[("http", 80, "TCP"), ("dns", 53, "UDP")];

/// x/a admits x/b only (ingress isolation; egress open).
const ADMIT_B: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: admit-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n";

fn three_pods() -> Cluster {
    let mut c = Cluster::new(&[Shape::Bridge]).expect("node");
    c.namespace("x", &[]).expect("ns");
    for p in ["a", "b", "c"] {
        c.add_pod(0, "x", p, &[("pod", p)], PORTS).expect("pod");
    }
    c.set_policies(&[ADMIT_B.to_string()]).expect("write");
    c
}

/// Sends `n` datagrams from `from` to x/a's UDP 53 from one socket (one flow) and returns how
/// many echoes came back.
fn udp_flow(c: &Cluster, from: &str, n: usize) -> usize {
    let to = SocketAddr::new(c.pod("x", "a").ipv4.into(), 53);
    netns::within(&c.pod("x", from).netns, || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
        let mut echoes = 0;
        for i in 0..n {
            s.send_to(&[i as u8; 8], to).expect("send");
            let mut b = [0u8; 64];
            if s.recv_from(&mut b).is_ok() {
                echoes += 1;
            }
        }
        echoes
    })
    .expect("netns")
}

/// x/a's counters (`direction -> reason -> packets`) in a status written after now.
fn counters(c: &mut Cluster) -> serde_json::Value {
    let before = c.agent(0).status().and_then(|s| s["syncs"].as_u64()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = c.agent(0).status().expect("status");
        // Two syncs later, the counters were read after the packets.
        if status["syncs"].as_u64().unwrap_or(0) >= before + 2 {
            return status["packets"]["x/a"].clone();
        }
        assert!(Instant::now() < deadline, "the agent did not sync again: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn get(counters: &serde_json::Value, direction: &str, reason: &str) -> u64 {
    counters[direction][reason].as_u64().unwrap_or(0)
}

#[test]
fn per_pod_counters_move_by_the_packets_sent() {
    if !privileged() {
        return;
    }
    let mut c = three_pods();
    c.start_agent(0, &[]).expect("agent");
    c.sync().expect("sync");
    let before = counters(&mut c);

    // x/c is denied: each of its 5 datagrams is a new flow judged and dropped.
    assert_eq!(udp_flow(&c, "c", 5), 0, "x/c gets no echo");
    // x/b is admitted: one new flow, then 4 packets of it, and 5 echoes back out of x/a.
    assert_eq!(udp_flow(&c, "b", 5), 5, "x/b gets every echo");

    let after = counters(&mut c);
    let moved = |direction, reason| get(&after, direction, reason) - get(&before, direction, reason);
    let got = (
        moved("ingress", "drop_no_rule"),
        moved("ingress", "allow_policy"),
        moved("ingress", "allow_established"),
        moved("egress", "allow_established"),
    );
    eprintln!("x/a: ingress drop_no_rule +{}, allow_policy +{}, allow_established +{}; egress allow_established +{}", got.0, got.1, got.2, got.3);
    assert_eq!(got, (5, 1, 4, 5), "(dropped, new flows admitted, established in, replies out)");

    // The same counts on the Prometheus endpoint (the agent's default health address, in the
    // node's namespace).
    let text = scrape(&c.nodes[0].netns);
    let series = |reason: &str, verdict: &str| {
        let prefix = format!(r#"netpol_packets_total{{namespace="x",pod="a",direction="ingress",reason="{reason}",verdict="{verdict}"}} "#);
        text.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0)
    };
    assert!(series("drop_no_rule", "drop") >= 5 && series("allow_policy", "allow") >= 1, "metrics:\n{text}");
    assert!(text.contains("netpol_ready 1") && text.contains("netpol_programming_seconds_count"), "metrics:\n{text}");
}

/// The agent's `/metrics`, fetched inside the node's network namespace.
fn scrape(node: &str) -> String {
    use std::io::{Read as _, Write as _};
    netns::within(node, || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", 9790)).expect("connect to the metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("response");
        out
    })
    .expect("netns")
}

#[test]
fn audit_mode_lets_policy_drops_pass_and_counts_them_as_would_drop() {
    if !privileged() {
        return;
    }
    let mut c = three_pods();
    c.start_agent(0, &["--audit-namespace", "x"]).expect("agent");
    c.sync().expect("sync");
    let would_drop = get(&counters(&mut c), "ingress", "allow_audit");

    assert!(c.probe(("x", "c"), ("x", "a"), 80, Protocol::Tcp, false), "audit mode: x/c's connection opens");
    assert_eq!(udp_flow(&c, "c", 5), 5, "audit mode: x/c's datagrams pass and are echoed");
    let after = counters(&mut c);
    let counted = get(&after, "ingress", "allow_audit") - would_drop;
    eprintln!("audit: x/a ingress allow_audit +{counted}");
    // The connection's SYN and the first datagram are would-be drops; x/a's answers (egress
    // is open) are tracked, and the flows' later packets ride on those entries.
    assert!(counted >= 2, "the would-be-dropped packets are counted: +{counted}");
    assert_eq!(get(&after, "ingress", "drop_no_rule"), 0, "nothing is dropped in audit mode");

    // The same policies without audit mode drop x/c.
    c.drop_agent(0);
    c.start_agent(0, &[]).expect("agent");
    c.sync().expect("sync");
    assert!(!c.probe(("x", "c"), ("x", "a"), 80, Protocol::Tcp, false), "enforcing: x/c is denied");
    assert!(c.probe(("x", "b"), ("x", "a"), 80, Protocol::Tcp, false), "enforcing: x/b is admitted");
}
