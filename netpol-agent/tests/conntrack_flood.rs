//! Conntrack exhaustion, run by the kernel with BPF_PROG_TEST_RUN (as tests/classifier.rs does;
//! a real path through veths would take minutes for this many flows): a pod opens half again as
//! many new allowed UDP flows as the conntrack map holds (`CONNTRACK_MAX`), while one of its TCP
//! connections keeps exchanging data, its replies allowed only by conntrack (ingress isolated),
//! and denied flows are tried both ways. The flood goes to an ipBlock, outside the cluster: the
//! pod's veth tracks those flows and defers their egress judgement to where they leave the node
//! (`pass_deferred`), so the conntrack map fills exactly as with any other new flow. Needs root
//! (skips, saying why, without it).

use std::collections::BTreeMap;

use aya::programs::{TestRun, TestRunOptions};
use netpol_common::Reason;
use netpol_agent::{
    compile::{CompileOptions, Compiler},
    datapath::{Datapath, PodInterface, PROG_FROM_POD, PROG_TO_POD},
    source::manifests,
    model::ObjectRef,

};

mod support;

use support::{PinDir, ALLOW, DROP};

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

/// An Ethernet + IPv4 frame with a TCP (SYN when `syn`, else ACK) or UDP header.
fn frame(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
    let l4_len = if proto == 6 { 20 } else { 8 };
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + l4_len + 32) as u16).to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    f.extend_from_slice(&h);
    let mut l4 = vec![0u8; l4_len];
    l4[..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        l4[12] = 5 << 4;
        l4[13] = if syn { 0x02 } else { 0x10 };
    } else {
        l4[4..6].copy_from_slice(&((8 + 32) as u16).to_be_bytes());
    }
    f.extend_from_slice(&l4);
    f.extend_from_slice(&[0x5a; 32]);
    f
}

fn run_on(dp: &mut Datapath, f: &[u8], entering: bool) -> u32 {
    let prog = dp.program(if entering { PROG_TO_POD } else { PROG_FROM_POD }).expect("program");
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(f);
    prog.test_run(opts).expect("BPF_PROG_TEST_RUN").return_value
}

#[test]
fn a_flood_of_new_flows_neither_opens_denied_flows_nor_cuts_a_busy_connection() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: BPF_PROG_TEST_RUN needs root");
        return;
    }
    let pin = PinDir::new(&format!("netpol-conntrack-flood-{}", std::process::id()));
    let mut dp = Datapath::load(&pin.0).expect("the classifiers load and pass the verifier");
    let mut loaded = manifests::Loaded::default();
    manifests::load_documents(MANIFESTS, "flood.yaml", &mut loaded, &mut Default::default());
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    let desired = Compiler::new().compile(&loaded.state, &CompileOptions { node: "n1".into(), host_ips: vec![], allow_host: false });
    let interfaces = BTreeMap::from([(ObjectRef::new("x", "a"), PodInterface { ifindex: 1, name: "lo".into() })]);
    let stats = dp.apply_maps(&desired, &interfaces);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);

    let (a, b) = ([198, 18, 0, 10], [198, 18, 0, 11]);
    // The busy connection: a:40000 -> b:80, its replies allowed only as a tracked flow.
    assert_eq!(run_on(&mut dp, &frame(a, b, 6, 40000, 80, true), false), ALLOW, "a opens a connection to b:80");
    let data_out = frame(a, b, 6, 40000, 80, false);
    let data_in = frame(b, a, 6, 80, 40000, false);
    assert_eq!(run_on(&mut dp, &data_in, true), ALLOW, "b's reply");
    let denied_out = frame(a, b, 6, 40001, 81, true);
    let denied_in = frame(b, a, 6, 50000, 22, true);

    let total = netpol_common::CONNTRACK_MAX as usize * 3 / 2;
    let started = std::time::Instant::now();
    let mut checks = 0;
    for i in 0..total {
        // Flow i: a:(1024 + i % 64000) -> 198.18.4.(i / 64000):53/UDP, each one new.
        let dst = [198, 18, 4, (i / 64_000) as u8];
        let sport = 1024 + (i % 64_000) as u16;
        assert_eq!(run_on(&mut dp, &frame(a, dst, 17, sport, 53, false), false), ALLOW, "flood flow {i} is allowed");
        if i % 1000 == 0 {
            assert_eq!(run_on(&mut dp, &data_out, false), ALLOW, "the busy connection's data after {i} new flows");
            assert_eq!(run_on(&mut dp, &data_in, true), ALLOW, "the busy connection's reply after {i} new flows");
            assert_eq!(run_on(&mut dp, &denied_out, false), DROP, "a -> b:81 after {i} new flows");
            assert_eq!(run_on(&mut dp, &denied_in, true), DROP, "b -> a:22 after {i} new flows");
            checks += 1;
        }
    }
    let elapsed = started.elapsed();
    let during = dp.counters().expect("counters");
    // After: the busy connection still works, denied flows stay denied, and the oldest flood
    // flows were evicted (their next packet is judged by policy again, as a new flow).
    assert_eq!(run_on(&mut dp, &data_in, true), ALLOW, "the busy connection's reply after the flood");
    assert_eq!(run_on(&mut dp, &denied_out, false), DROP);
    assert_eq!(run_on(&mut dp, &denied_in, true), DROP);
    let before = dp.counters().expect("counters");
    assert_eq!(run_on(&mut dp, &frame(a, [198, 18, 4, 0], 17, 1024, 53, false), false), ALLOW);
    let after = dp.counters().expect("counters");
    let evicted = after[&Reason::PassDeferred] - before[&Reason::PassDeferred] == 1;
    let last = total - 1;
    let newest = frame(a, [198, 18, 4, (last / 64_000) as u8], 17, 1024 + (last % 64_000) as u16, 53, false);
    assert_eq!(run_on(&mut dp, &newest, false), ALLOW);
    let after_newest = dp.counters().expect("counters");
    let newest_tracked = after_newest[&Reason::AllowEstablished] - after[&Reason::AllowEstablished] == 1;
    // A reply to the evicted first flow is dropped: ingress is isolated and nothing tracks it.
    let old_reply = frame([198, 18, 4, 1], a, 17, 53, 1024, false);
    let old_reply_verdict = run_on(&mut dp, &old_reply, true);
    let (batched, walked) = conntrack_counts(&pin.0);

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
    let batched = netpol_agent::telemetry::metrics::count_conntrack(&path).expect("count conntrack in batches");
    let batched_time = t.elapsed();
    let t = std::time::Instant::now();
    let data = aya::maps::MapData::from_pin(&path).expect("the pinned conntrack map");
    let map: aya::maps::HashMap<_, netpol_common::CtKey, netpol_common::CtValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data)).expect("an LRU hash of conntrack entries");
    let walked = map.keys().filter(Result::is_ok).count();
    eprintln!("conntrack entries: {batched} counted in batches in {batched_time:?}, {walked} key by key in {:?}", t.elapsed());
    (batched, walked)
}
