//! What the agent reports about real traffic: per-pod packet counters by direction and reason
//! move by exactly the packets sent; audit mode lets policy drops pass while counting them as
//! "would drop"; `netpol-agent observe` streams an event for a real dropped connection with the
//! right pod names (and, on request, for allowed flows, naming the policy rule; in audit mode as
//! "would drop"); the rate limit suppresses and counts — on real namespaces with real packets.

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

/// x/a's counters (`direction -> reason -> packets`), read after every packet sent before now.
fn counters(c: &mut Cluster) -> serde_json::Value {
    c.agent(0).status_after_two_syncs().expect("status")["packets"]["x/a"].clone()
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
    netpol_sandbox::agent::scrape_metrics(node).expect("scrape /metrics")
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
    let observer = Observer::start(&c.nodes[0].netns.clone(), &["--verdict", "audit"]);

    assert!(c.probe(("x", "c"), ("x", "a"), 80, Protocol::Tcp, false), "audit mode: x/c's connection opens");
    let ev = observer
        .wait_for(Duration::from_secs(5), |v| field(v, &["destination", "port"]) == 80)
        .expect("a 'would drop' event for x/c's connection");
    eprintln!("audit event: {ev}");
    assert_eq!((ev["verdict"].as_str(), ev["reason"].as_str()), (Some("audit"), Some("drop_no_rule")), "reported as would drop, with the drop's reason");
    assert_eq!((field(&ev, &["source", "pod"]).as_str(), ev["pod"].as_str()), (Some("x/c"), Some("x/a")));
    drop(observer);
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

/// A running `netpol-agent observe` in the node's namespace, its JSON lines collected.
struct Observer {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl Observer {
    fn start(node: &str, args: &[&str]) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new("nsenter")
            .arg(format!("--net={}", netns::path(node)))
            .arg("--")
            .arg(netpol_sandbox::agent::agent_bin())
            .args(["observe", "--agent", "127.0.0.1:9790", "--output", "json"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start observe");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(e) => panic!("observe printed a line that is not JSON ({e}): {line}"),
                }
            }
        });
        // Give the subscription a moment to reach the agent.
        std::thread::sleep(Duration::from_millis(700));
        Self { child, lines }
    }

    /// The first event satisfying `want` within `timeout` (events before it are skipped).
    fn wait_for(&self, timeout: Duration, want: impl Fn(&serde_json::Value) -> bool) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(v) if want(&v) => return Some(v),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    }

    /// Every event that arrives within `quiet` of the previous one.
    fn drain(&self, quiet: Duration) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Ok(v) = self.lines.recv_timeout(quiet) {
            out.push(v);
        }
        out
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field<'a>(v: &'a serde_json::Value, path: &[&str]) -> &'a serde_json::Value {
    path.iter().fold(v, |v, k| &v[*k])
}

#[test]
fn observe_streams_a_real_drop_and_an_allowed_flow_with_names_and_policy() {
    if !privileged() {
        return;
    }
    let mut c = three_pods();
    c.start_agent(0, &[]).expect("agent");
    c.sync().expect("sync");
    let node = c.nodes[0].netns.clone();
    let a_ip = c.pod("x", "a").ipv4.to_string();

    // Drops only (the default): x/c's connection to x/a:80 is refused by policy.
    let drops = Observer::start(&node, &["--namespace", "x"]);
    assert!(!c.probe(("x", "c"), ("x", "a"), 80, Protocol::Tcp, false), "x/c is denied");
    let ev = drops
        .wait_for(Duration::from_secs(5), |v| v["verdict"] == "dropped" && field(v, &["destination", "port"]) == 80)
        .expect("an event for the dropped connection");
    eprintln!("drop event: {ev}");
    assert_eq!(ev["pod"], "x/a", "reported on the pod whose ingress dropped it");
    assert_eq!(ev["direction"], "ingress");
    assert_eq!(ev["reason"], "drop_no_rule");
    assert_eq!(ev["protocol"], "TCP");
    assert_eq!(field(&ev, &["source", "pod"]), "x/c");
    assert_eq!(field(&ev, &["destination", "pod"]), "x/a");
    assert_eq!(field(&ev, &["destination", "ip"]), a_ip.as_str());
    assert!(ev["time"].as_str().is_some_and(|t| t.starts_with("20")), "a wall-clock time: {ev}");
    // The allowed connection of x/b is not shown to a drops-only observer.
    assert!(c.probe(("x", "b"), ("x", "a"), 80, Protocol::Tcp, false), "x/b is admitted");
    assert!(drops.wait_for(Duration::from_secs(1), |v| v["verdict"] == "allowed").is_none(), "allowed flows only on request");
    drop(drops);

    // Asking for allowed flows: x/b's connection is reported with the rule that allowed it.
    let all = Observer::start(&node, &["--verdict", "all", "--pod", "x/b"]);
    assert!(c.probe(("x", "b"), ("x", "a"), 80, Protocol::Tcp, false), "x/b is admitted");
    let ev = all
        .wait_for(Duration::from_secs(5), |v| v["verdict"] == "allowed" && v["direction"] == "ingress" && v["pod"] == "x/a")
        .expect("an event for the allowed connection");
    eprintln!("allow event: {ev}");
    assert_eq!(ev["policy"], "x/admit-b");
    assert_eq!(ev["rule"], "ingress[0]");
    assert_eq!(ev["reason"], "allow_policy");
    assert_eq!(field(&ev, &["source", "pod"]), "x/b");
    drop(all);

    // The rule's hits: in the status file and on /metrics.
    let deadline = Instant::now() + Duration::from_secs(10);
    let hits = loop {
        let hits = c.agent(0).status().and_then(|s| s["policy_hits"]["x/admit-b ingress[0]"].as_u64()).unwrap_or(0);
        if hits >= 2 || Instant::now() > deadline {
            break hits;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(hits >= 2, "two connections of x/b were allowed by x/admit-b ingress[0]: {hits}");
    let text = scrape(&node);
    assert!(text.contains(r#"netpol_policy_hits_total{namespace="x",policy="admit-b",rule="ingress[0]"}"#), "metrics:\n{text}");
}

#[test]
fn the_event_rate_limit_suppresses_and_counts_every_drop() {
    if !privileged() {
        return;
    }
    let mut c = three_pods();
    c.start_agent(0, &["--event-rate", "5"]).expect("agent");
    c.sync().expect("sync");
    let node = c.nodes[0].netns.clone();
    let observer = Observer::start(&node, &["--pod", "x/a"]);

    // 300 denied datagrams, each from a new socket: 300 new flows, all dropped, in well under
    // a second.
    const SENT: u64 = 300;
    let to = SocketAddr::new(c.pod("x", "a").ipv4.into(), 53);
    let started = Instant::now();
    netns::within(&c.pod("x", "c").netns, || {
        for i in 0..SENT {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            s.send_to(&[i as u8; 8], to).expect("send");
        }
    })
    .expect("netns");
    let took = started.elapsed();
    let events = observer.drain(Duration::from_secs(2));
    let suppressed_in_events: u64 = events.iter().filter_map(|e| e["suppressed"].as_u64()).sum();
    eprintln!("{SENT} drops in {took:?}: {} events reached observe", events.len());
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    // At most 5 per CPU per window; the burst may straddle a window boundary.
    assert!(!events.is_empty() && (events.len() as u64) <= 5 * cpus * 2, "{} events for {SENT} drops", events.len());
    assert!(events.iter().all(|e| e["verdict"] == "dropped" && e["pod"] == "x/a"));

    // Every drop was either sent as an event or counted as suppressed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = c.agent(0).status().expect("status");
        let counts = &status["events"]["x/a"];
        let (sent, suppressed, lost) =
            (counts["sent"].as_u64().unwrap_or(0), counts["suppressed"].as_u64().unwrap_or(0), counts["lost"].as_u64().unwrap_or(0));
        let drops = status["packets"]["x/a"]["ingress"]["drop_no_rule"].as_u64().unwrap_or(0);
        if drops >= SENT && sent + suppressed + lost == drops {
            eprintln!("x/a: {drops} drops, events sent {sent}, suppressed {suppressed}, lost {lost}; suppressed carried by events {suppressed_in_events}");
            assert!(suppressed >= SENT - 5 * cpus * 2, "the rest were suppressed");
            assert_eq!(lost, 0, "the ring buffer had room");
            break;
        }
        assert!(Instant::now() < deadline, "counts did not add up: drops {drops}, sent {sent}, suppressed {suppressed}, lost {lost}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = scrape(&node);
    assert!(text.contains(r#"netpol_events_total{namespace="x",pod="a",outcome="suppressed"}"#), "metrics:\n{text}");
    assert!(text.contains(r#"netpol_map_entries{map="conntrack"}"#), "metrics:\n{text}");
}

/// An HTTP/1.0 GET of `path` on `addr` from inside network namespace `from`, with a bearer token
/// when given: the status code.
fn http_status(from: &str, addr: SocketAddr, path: &str, token: Option<&str>) -> u16 {
    use std::io::{Read as _, Write as _};
    netns::within(from, || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to the agent");
        s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        s.write_all(format!("GET {path} HTTP/1.0\r\n{auth}\r\n").as_bytes()).expect("request");
        let mut head = [0u8; 12];
        s.read_exact(&mut head).expect("status line");
        String::from_utf8_lossy(&head[9..12]).parse().expect("a status code")
    })
    .expect("netns")
}

#[test]
fn pods_reach_metrics_and_events_only_with_the_bearer_token_and_the_node_over_loopback() {
    if !privileged() {
        return;
    }
    let mut c = three_pods();
    let token = std::env::temp_dir().join(netns::unique("netpol-token-"));
    std::fs::write(&token, "s3cret\n").expect("token file");
    let token_arg = token.to_str().expect("utf-8").to_string();
    c.start_agent(0, &["--health-addr", "0.0.0.0:9790", "--http-token-file", &token_arg]).expect("agent");
    c.sync().expect("sync");
    let node = c.nodes[0].netns.clone();
    let pod = c.pod("x", "b").netns.clone();
    let on_node = SocketAddr::new(c.nodes[0].gateway4().into(), 9790);
    let loopback: SocketAddr = "127.0.0.1:9790".parse().expect("address");

    assert_eq!(http_status(&pod, on_node, "/healthz", None), 200, "probes are open to all");
    assert_eq!(http_status(&pod, on_node, "/readyz", None), 200);
    assert_eq!(http_status(&pod, on_node, "/metrics", None), 401, "a pod without the token gets no metrics");
    assert_eq!(http_status(&pod, on_node, "/events", None), 401, "nor the flows");
    assert_eq!(http_status(&pod, on_node, "/metrics", Some("guess")), 401);
    assert_eq!(http_status(&pod, on_node, "/metrics", Some("s3cret")), 200, "with the token it does");
    assert_eq!(http_status(&node, loopback, "/metrics", None), 200, "the node itself, over loopback, needs none");
    std::fs::write(&token, "rotated\n").expect("rotate");
    assert_eq!(http_status(&pod, on_node, "/metrics", Some("s3cret")), 401, "a rotated token takes effect at once");
    std::fs::remove_file(&token).expect("remove token file");
}

#[test]
fn by_default_the_endpoints_listen_on_loopback_only() {
    if !privileged() {
        return;
    }
    let mut c = three_pods();
    c.start_agent(0, &[]).expect("agent");
    c.sync().expect("sync");
    let on_node = SocketAddr::new(c.nodes[0].gateway4().into(), 9790);
    let refused = netns::within(&c.pod("x", "b").netns, || std::net::TcpStream::connect_timeout(&on_node, Duration::from_secs(2)).is_err())
        .expect("netns");
    assert!(refused, "a pod cannot even connect to the agent's endpoints on the node's address");
    assert_eq!(http_status(&c.nodes[0].netns, "127.0.0.1:9790".parse().expect("address"), "/metrics", None), 200);
}
