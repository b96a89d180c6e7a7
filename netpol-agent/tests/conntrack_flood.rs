//! Conntrack exhaustion, run by the kernel with BPF_PROG_TEST_RUN (as tests/classifier.rs does;
//! a real path through veths would take minutes for this many flows): a pod opens half again as
//! many new allowed UDP flows as the conntrack map holds (`CONNTRACK_MAX`), while one of its TCP
//! connections keeps exchanging data, its replies allowed only by conntrack (ingress isolated),
//! and denied flows are tried both ways. The flood goes to an ipBlock, outside the cluster: the
//! pod's veth tracks those flows and defers their egress judgement to where they leave the node
//! (`pass_deferred`), so the conntrack map fills exactly as with any other new flow. Needs root
//! (skips, saying why, without it).

use netpol_agent::datapath::{PROG_FROM_POD, PROG_TO_POD};
use netpol_common::Reason;
use netpol_testkit::{
    datapath::{DataPath, ALLOW, DROP},
    frames::{self, TCP, UDP},
};

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIP: 198.18.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: n2, containers: [{name: c, image: i}]}
status: {podIP: 198.18.0.11}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: flood, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  egress:
  - to: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}]
  - to: [{ipBlock: {cidr: 198.18.4.0/24}}]
    ports: [{protocol: UDP, port: 53}]
"#;

/// An Ethernet + IPv4 frame with a TCP (SYN when `syn`, else ACK) or UDP header and 32 bytes of
/// payload.
fn frame(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let mut l4 = if proto == TCP { frames::tcp(sport, dport, syn) } else { frames::udp(sport, dport, 32) };
    l4.extend_from_slice(&[0x5a; 32]);
    frames::ipv4(src, dst, proto, 0, 0, &l4)
}

fn run_on(dp: &mut DataPath, f: &[u8], entering: bool) -> u32 {
    dp.run(if entering { PROG_TO_POD } else { PROG_FROM_POD }, f)
}

#[test]
fn a_flood_of_new_flows_neither_opens_denied_flows_nor_cuts_a_busy_connection() {
    let Some(mut dp) = DataPath::load("netpol-conntrack-flood") else { return };
    dp.program_yaml(MANIFESTS, &[(("x", "a"), 1)]);

    let (a, b) = ([198, 18, 0, 10], [198, 18, 0, 11]);
    // The busy connection: a:40000 -> b:80, its replies allowed only as a tracked flow.
    assert_eq!(run_on(&mut dp, &frame(a, b, TCP, 40000, 80, true), false), ALLOW, "a opens a connection to b:80");
    let data_out = frame(a, b, TCP, 40000, 80, false);
    let data_in = frame(b, a, TCP, 80, 40000, false);
    assert_eq!(run_on(&mut dp, &data_in, true), ALLOW, "b's reply");
    let denied_out = frame(a, b, TCP, 40001, 81, true);
    let denied_in = frame(b, a, TCP, 50000, 22, true);

    let total = netpol_common::CONNTRACK_MAX as usize * 3 / 2;
    let started = std::time::Instant::now();
    let mut checks = 0;
    for i in 0..total {
        // Flow i: a:(1024 + i % 64000) -> 198.18.4.(i / 64000):53/UDP, each one new.
        let dst = [198, 18, 4, (i / 64_000) as u8];
        let sport = 1024 + (i % 64_000) as u16;
        assert_eq!(run_on(&mut dp, &frame(a, dst, UDP, sport, 53, false), false), ALLOW, "flood flow {i} is allowed");
        if i % 1000 == 0 {
            assert_eq!(run_on(&mut dp, &data_out, false), ALLOW, "the busy connection's data after {i} new flows");
            assert_eq!(run_on(&mut dp, &data_in, true), ALLOW, "the busy connection's reply after {i} new flows");
            assert_eq!(run_on(&mut dp, &denied_out, false), DROP, "a -> b:81 after {i} new flows");
            assert_eq!(run_on(&mut dp, &denied_in, true), DROP, "b -> a:22 after {i} new flows");
            checks += 1;
        }
    }
    let elapsed = started.elapsed();
    let during = dp.counters();
    // After: the busy connection still works, denied flows stay denied, and the oldest flood
    // flows were evicted (their next packet is judged by policy again, as a new flow).
    assert_eq!(run_on(&mut dp, &data_in, true), ALLOW, "the busy connection's reply after the flood");
    assert_eq!(run_on(&mut dp, &denied_out, false), DROP);
    assert_eq!(run_on(&mut dp, &denied_in, true), DROP);
    let before = dp.counters();
    assert_eq!(run_on(&mut dp, &frame(a, [198, 18, 4, 0], UDP, 1024, 53, false), false), ALLOW);
    let after = dp.counters();
    let evicted = after[&Reason::PassDeferred] - before[&Reason::PassDeferred] == 1;
    let last = total - 1;
    let newest = frame(a, [198, 18, 4, (last / 64_000) as u8], UDP, 1024 + (last % 64_000) as u16, 53, false);
    assert_eq!(run_on(&mut dp, &newest, false), ALLOW);
    let after_newest = dp.counters();
    let newest_tracked = after_newest[&Reason::AllowEstablished] - after[&Reason::AllowEstablished] == 1;
    // A reply to the evicted first flow is dropped: ingress is isolated and nothing tracks it.
    let old_reply = frame([198, 18, 4, 1], a, UDP, 53, 1024, false);
    let old_reply_verdict = run_on(&mut dp, &old_reply, true);
    let (batched, walked) = conntrack_counts(dp.pin_path());

    eprintln!("{total} new flows (CONNTRACK_MAX {}) in {elapsed:?}, {checks} checks during the flood", netpol_common::CONNTRACK_MAX);
    eprintln!("counters after the flood: {:?}", during.iter().filter(|(_, v)| **v > 0).collect::<Vec<_>>());
    eprintln!("oldest flood flow evicted: {evicted}; newest still tracked: {newest_tracked}; reply to an evicted flow: {}", if old_reply_verdict == ALLOW { "passed" } else { "dropped" });
    assert!(during[&Reason::PassDeferred] >= total as u64, "every flood flow was a new flow, passed on to be judged after NAT");
    assert_eq!(during[&Reason::DropNoRule], 2 * checks as u64, "exactly the denied probes were dropped");
    assert!(evicted, "the map holds CONNTRACK_MAX flows: the oldest were evicted");
    assert!(newest_tracked, "the newest flows are tracked");
    assert_eq!(batched, walked, "the fill metric's batched count is the count of a walk key by key");
    assert!(batched as u64 * 100 >= u64::from(netpol_common::CONNTRACK_MAX) * 90, "the map is nearly full: {batched}");
}

/// The conntrack map's entries counted as the agent's fill metric counts them (in batches) and
/// by a walk key by key, each timed.
fn conntrack_counts(pin: &std::path::Path) -> (usize, usize) {
    let path = pin.join(netpol_common::MAP_CONNTRACK);
    let t = std::time::Instant::now();
    let batched = netpol_agent::datapath::counters::count_conntrack(&path).expect("count conntrack in batches");
    let batched_time = t.elapsed();
    let t = std::time::Instant::now();
    let data = aya::maps::MapData::from_pin(&path).expect("the pinned conntrack map");
    let map: aya::maps::HashMap<_, netpol_common::CtKey, netpol_common::CtValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data)).expect("an LRU hash of conntrack entries");
    let walked = map.keys().filter(Result::is_ok).count();
    eprintln!("conntrack entries: {batched} counted in batches in {batched_time:?}, {walked} key by key in {:?}", t.elapsed());
    (batched, walked)
}
