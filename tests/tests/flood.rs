//! Exhaustion: a conntrack flood through real pods. One pod sends hundreds of thousands of
//! distinct allowed UDP flows (crafted on a raw socket: its own address, every source port, 16
//! destination ports of an allowed peer), more than the conntrack map holds
//! (`netpol_common::CONNTRACK_MAX`), so the map fills and evicts. Meanwhile, between other pods
//! of the same default-deny namespace (every reply depends on conntrack):
//! - an established, allowed TCP connection keeps working (a round trip every 100 ms, none
//!   failing or taking a second or more);
//! - a denied flow, probed again and again over TCP and UDP, never opens;
//! - an allowed new flow keeps opening.
//!
//! Afterwards the conntrack map is full, its fill metric (`netpol_map_entries{map="conntrack"}`)
//! says so, and the agent's status counters show the flood (allow_policy at the flooding pod's
//! egress and the peer's ingress moved by about the number of datagrams sent) and the denied
//! probes (drop_no_rule at the denied pod's ingress).

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use netpol_sandbox::{netns, privileged, probe, Cluster, Protocol, Shape};

const PORTS: &[(&str, u16, &str)] = &[("http", 80, "TCP"), ("dns", 53, "UDP")];
/// The destination ports of the flood (nothing listens there).
const FLOOD_PORTS: std::ops::RangeInclusive<u16> = 10_000..=10_015;
/// Distinct flows to send: nearly four times what the conntrack map holds (262 144); at about
/// 130 000 a second on a 2-core machine, an 8-second flood.
const FLOWS: usize = 1_000_000;

fn policy(name: &str, spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\nspec:\n{spec}")
}

fn policies() -> Vec<String> {
    vec![
        policy("default-deny", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n"),
        policy(
            "flood-out",
            "  podSelector: {matchLabels: {pod: flood}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {matchLabels: {pod: sink}}}], ports: [{protocol: UDP, port: 10000, endPort: 10015}]}]\n",
        ),
        policy(
            "sink-in",
            "  podSelector: {matchLabels: {pod: sink}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: flood}}}], ports: [{protocol: UDP, port: 10000, endPort: 10015}]}]\n",
        ),
        // a, c and e may send to b and d; b admits a and e; nothing admits c into d.
        policy(
            "clients-out",
            "  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, c, e]}]}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, d]}]}}], ports: [{port: 80}, {protocol: UDP, port: 53}]}]\n",
        ),
        policy(
            "b-in",
            "  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, e]}]}}], ports: [{port: 80}]}]\n",
        ),
    ]
}

/// Sends `flows` UDP datagrams from a raw socket inside `from` (source address: the pod's own)
/// to `to`, each a new flow: every source port from 1024 up, for each port of [`FLOOD_PORTS`].
/// Returns how many were sent.
fn flood(from: &str, to: Ipv4Addr, flows: usize) -> usize {
    netns::within(from, || {
        // SAFETY: plain socket(2); checked below, closed at the end.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_UDP) };
        assert!(fd >= 0, "raw UDP socket: {}", std::io::Error::last_os_error());
        let sa = libc::sockaddr_in { sin_family: libc::AF_INET as u16, sin_port: 0, sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(to.octets()) }, sin_zero: [0; 8] };
        // A UDP header (checksum 0: none, allowed over IPv4) and 8 bytes of payload; the kernel
        // writes the IP header.
        let mut pkt = [0u8; 16];
        pkt[4..6].copy_from_slice(&16u16.to_be_bytes());
        pkt[8..].copy_from_slice(b"flooding");
        let mut sent = 0;
        'all: for dport in FLOOD_PORTS {
            pkt[2..4].copy_from_slice(&dport.to_be_bytes());
            for sport in 1024..=u16::MAX {
                if sent == flows {
                    break 'all;
                }
                pkt[..2].copy_from_slice(&sport.to_be_bytes());
                // SAFETY: sendto with a valid buffer and a sockaddr_in of the right size.
                let n = unsafe { libc::sendto(fd, pkt.as_ptr().cast(), pkt.len(), 0, std::ptr::from_ref(&sa).cast(), std::mem::size_of_val(&sa) as u32) };
                if n == pkt.len() as isize {
                    sent += 1;
                }
            }
        }
        // SAFETY: fd is ours and closed once.
        unsafe { libc::close(fd) };
        sent
    })
    .expect("netns")
}

/// The pod counters of the agent's status (`pod -> direction -> reason -> packets`), read after
/// every packet sent before now.
fn counters(c: &mut Cluster) -> serde_json::Value {
    c.agent(0).status_after_two_syncs().expect("status")["packets"].clone()
}

fn get(counters: &serde_json::Value, pod: &str, direction: &str, reason: &str) -> u64 {
    counters[pod][direction][reason].as_u64().unwrap_or(0)
}

/// Entries in the agent's conntrack map, and its capacity.
fn conntrack_fill(pin_path: &std::path::Path) -> (usize, u32) {
    let data = aya::maps::MapData::from_pin(pin_path.join("NETPOL_CONNTRACK")).expect("the pinned conntrack map");
    let max = data.info().expect("map info").max_entries();
    // Key and value as bytes: netpol_common::CtKey (44) and CtValue (8).
    let map: aya::maps::HashMap<_, [u8; 44], [u8; 8]> = aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data)).expect("conntrack key and value sizes");
    (map.keys().filter(Result::is_ok).count(), max)
}

/// What the held connection saw: round trips made, failed ones, and the slowest.
#[derive(Debug, Default)]
struct Held {
    round_trips: usize,
    failures: Vec<String>,
    slowest: Duration,
}

/// Keeps an open connection busy: a round trip every 100 ms until `stop`.
fn keep_busy(mut stream: TcpStream, stop: &AtomicBool) -> Held {
    let mut held = Held::default();
    stream.set_read_timeout(Some(Duration::from_secs(1))).expect("timeout");
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let mut buf = [0u8; 16];
        let result = stream.write_all(b"ping\n").map_err(|e| e.to_string()).and_then(|()| match stream.read(&mut buf) {
            Ok(0) => Err("closed by the peer".to_string()),
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        });
        let rtt = t.elapsed();
        held.round_trips += 1;
        held.slowest = held.slowest.max(rtt);
        if let Err(e) = result {
            held.failures.push(format!("round trip {} failed after {rtt:?}: {e}", held.round_trips));
            // A broken connection stays broken; one failure says it.
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    held
}

#[test]
fn a_conntrack_flood_from_one_pod_evicts_without_opening_denied_flows() {
    if !privileged() {
        return;
    }
    let started = Instant::now();
    let mut c = Cluster::new(&[Shape::Bridge]).expect("node");
    c.namespace("x", &[]).expect("ns");
    for p in ["flood", "sink", "a", "b", "c", "d", "e"] {
        c.add_pod(0, "x", p, &[("pod", p)], PORTS).expect("pod");
    }
    c.set_policies(&policies()).expect("write");
    c.start_agent(0, &[]).expect("agent");
    c.sync().expect("sync");
    let pin = c.agent(0).pin_path.clone();

    // Before: the allowed flows open, the denied ones do not.
    let opens = |c: &Cluster, from: &str, to: &str, port: u16, protocol: Protocol| c.probe(("x", from), ("x", to), port, protocol, false);
    assert!(opens(&c, "a", "b", 80, Protocol::Tcp) && opens(&c, "e", "b", 80, Protocol::Tcp), "a and e reach b");
    assert!(!opens(&c, "c", "d", 80, Protocol::Tcp) && !opens(&c, "c", "d", 53, Protocol::Udp), "c does not reach d");
    let b = SocketAddr::new(IpAddr::V4(c.pod("x", "b").ipv4), 80);
    let mut stream = netns::within(&c.pod("x", "a").netns, || TcpStream::connect_timeout(&b, Duration::from_secs(1))).expect("netns").expect("a connects to b");
    stream.set_read_timeout(Some(Duration::from_secs(1))).expect("timeout");
    let mut banner = [0u8; 64];
    assert!(stream.read(&mut banner).expect("banner") > 0, "b's banner");
    let (ct_before, ct_max) = conntrack_fill(&pin);
    let before = counters(&mut c);

    let sink = c.pod("x", "sink").ipv4;
    let flood_ns = c.pod("x", "flood").netns.clone();
    let (denied_tcp, denied_udp, allowed) =
        (c.target("x", "d", 80, Protocol::Tcp, false), c.target("x", "d", 53, Protocol::Udp, false), c.target("x", "b", 80, Protocol::Tcp, false));
    let (c_ns, e_ns) = (c.pod("x", "c").netns.clone(), c.pod("x", "e").netns.clone());
    let stop = AtomicBool::new(false);
    let (sent, flood_time, held, denied, allowed) = std::thread::scope(|s| {
        let held = s.spawn(|| keep_busy(stream, &stop));
        let denied = s.spawn(|| {
            let (mut probes, mut opened) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                for t in [&denied_tcp, &denied_udp] {
                    probes += 1;
                    if probe::probe(&c_ns, t) {
                        opened.push(format!("{:?} {}:{}", t.protocol, t.addr, t.port));
                    }
                }
            }
            (probes, opened)
        });
        let allowed = s.spawn(|| {
            let (mut probes, mut failed) = (0usize, 0usize);
            while !stop.load(Ordering::Relaxed) {
                probes += 1;
                failed += usize::from(!probe::probe(&e_ns, &allowed));
                std::thread::sleep(Duration::from_millis(50));
            }
            (probes, failed)
        });
        // Let the checkers start, flood, and let them run on a little after it.
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        let sent = flood(&flood_ns, sink, FLOWS);
        let flood_time = t.elapsed();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        (sent, flood_time, held.join().expect("held"), denied.join().expect("denied"), allowed.join().expect("allowed"))
    });
    let (ct_after, _) = conntrack_fill(&pin);
    let after = counters(&mut c);
    let moved = |pod: &str, direction: &str, reason: &str| get(&after, pod, direction, reason).saturating_sub(get(&before, pod, direction, reason));

    eprintln!(
        "flood: {sent} distinct flows in {flood_time:.2?} ({:.0} flows/s); conntrack {ct_before} -> {ct_after} of {ct_max} entries",
        sent as f64 / flood_time.as_secs_f64()
    );
    eprintln!("flood: held connection: {} round trips, slowest {:?}, failures {:?}", held.round_trips, held.slowest, held.failures);
    eprintln!("flood: denied probes (c -> d, TCP 80 and UDP 53): {}, opened {:?}; allowed new flows (e -> b): {}, failed {}", denied.0, denied.1, allowed.0, allowed.1);
    let interesting = [
        ("x/flood", "egress", "allow_policy"),
        ("x/flood", "egress", "drop_no_rule"),
        ("x/sink", "ingress", "allow_policy"),
        ("x/sink", "ingress", "allow_established"),
        ("x/sink", "egress", "allow_related"),
        ("x/sink", "egress", "drop_no_rule"),
        ("x/d", "ingress", "drop_no_rule"),
        ("x/c", "egress", "allow_policy"),
        ("x/b", "ingress", "allow_policy"),
        ("x/b", "ingress", "allow_established"),
    ];
    for (pod, direction, reason) in interesting {
        eprintln!("flood: {pod} {direction} {reason} +{}", moved(pod, direction, reason));
    }
    eprintln!("flood: run time {:.1?}", started.elapsed());

    assert!(sent > 300_000 && sent as u64 > u64::from(ct_max), "the flood sent {sent} flows, more than the {ct_max} conntrack entries");
    assert!(ct_after as u64 * 100 >= u64::from(ct_max) * 90, "the flood filled the conntrack map: {ct_after} of {ct_max}");
    assert!(held.round_trips >= 5 && held.failures.is_empty(), "the established connection kept working: {held:?}");
    assert!(held.slowest < Duration::from_secs(1), "no round trip stalled a second: slowest {:?}", held.slowest);
    assert!(denied.0 >= 2 && denied.1.is_empty(), "the denied flow never opened: {} probes, opened {:?}", denied.0, denied.1);
    assert!(allowed.0 >= 3 && allowed.1 == 0, "the allowed new flow kept opening: {} of {} failed", allowed.1, allowed.0);
    // Every flood datagram is a new flow, judged by policy on both sides.
    let (out, into) = (moved("x/flood", "egress", "allow_policy"), moved("x/sink", "ingress", "allow_policy"));
    let sent = sent as u64;
    assert!(out * 100 >= sent * 99 && out <= sent + 100, "x/flood egress allow_policy +{out} for {sent} sent");
    assert!(into * 100 >= sent * 95 && into <= out, "x/sink ingress allow_policy +{into} for {sent} sent");
    assert!(moved("x/d", "ingress", "drop_no_rule") >= denied.0 as u64, "every denied probe was dropped at x/d's ingress");

    // After the flood: the same answers.
    assert!(opens(&c, "e", "b", 80, Protocol::Tcp), "after the flood e still reaches b");
    assert!(!opens(&c, "c", "d", 80, Protocol::Tcp), "after the flood c still does not reach d");

    // The pressure shows on /metrics: the conntrack fill gauge (counted every 10 s) near capacity.
    let deadline = Instant::now() + Duration::from_secs(25);
    let gauge = loop {
        let text = scrape(&c.nodes[0].netns);
        let gauge = text
            .lines()
            .find_map(|l| l.strip_prefix(r#"netpol_map_entries{map="conntrack"} "#))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if gauge * 100 >= u64::from(ct_max) * 90 || Instant::now() > deadline {
            break gauge;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("flood: netpol_map_entries{{map=\"conntrack\"}} {gauge} of {ct_max}");
    assert!(gauge * 100 >= u64::from(ct_max) * 90, "the conntrack fill metric shows the flood: {gauge} of {ct_max}");
}

/// The agent's `/metrics`, fetched inside the node's network namespace.
fn scrape(node: &str) -> String {
    netpol_sandbox::agent::scrape_metrics(node).expect("scrape /metrics")
}
