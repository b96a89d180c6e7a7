//! The real classifiers, run by the kernel with BPF_PROG_TEST_RUN on crafted frames, over maps
//! filled by the real compiler and reconciler. Needs root (skips, saying why, without it).
//!
//! BPF_PROG_TEST_RUN runs a classifier on the loopback device, so the local pod under test is
//! given ifindex 1 (`lo`) in the endpoint map; nothing is attached to any interface.

use std::{collections::BTreeMap, net::IpAddr};

use aya::maps::{Map, MapData, ProgramArray};
use netpol_agent::{
    compile::{CompileOptions, Compiler},
    datapath::{PodInterface, PROG_EXIT, PROG_FROM_POD, PROG_TO_POD},
    model::ObjectRef,
    source::manifests,
};

use netpol_testkit::{
    datapath::{DataPath, ALLOW, DROP},
    frames::{self as frame, flow, ICMP, SCTP, TCP, UDP},
};

/// Loads the data path and programs `yaml` (namespaces, pods, policies) for pod `local`,
/// which the classifier sees on ifindex 1.
fn fixture(yaml: &str, local: (&str, &str)) -> Option<DataPath> {
    fixture_at(yaml, &[(local, 1)])
}

/// [`fixture`] with local pods on the given ifindexes (BPF_PROG_TEST_RUN runs on 1).
fn fixture_at(yaml: &str, locals: &[((&str, &str), u32)]) -> Option<DataPath> {
    let mut f = DataPath::load("netpol-classifier-test")?;
    f.program_yaml(yaml, locals);
    Some(f)
}


const PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: n1, containers: [{name: c, image: i, ports: [{name: serve-80, containerPort: 80}]}]}
status: {podIPs: [{ip: 198.18.0.10}, {ip: "fd00:198:18::10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIPs: [{ip: 198.18.0.11}, {ip: "fd00:198:18::11"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: y, labels: {pod: b}}
spec: {nodeName: n2, containers: [{name: c, image: i}]}
status: {podIPs: [{ip: 198.18.1.11}, {ip: "fd00:198:18:1::11"}]}
"#;

const A: &str = "198.18.0.10";
const B: &str = "198.18.0.11";
const YB: &str = "198.18.1.11";
const A6: &str = "fd00:198:18::10";
const B6: &str = "fd00:198:18::11";

fn with_policy(policy: &str) -> String {
    format!("{PODS}\n---\n{policy}")
}

/// x/a may send to x/b on TCP 443 only, and accepts nothing (isolated both ways).
const A_EGRESS_TO_B_443: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-egress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  egress:
  - to: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{protocol: TCP, port: 443}]
"#;

const ALLOW_B_TCP_80: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}, {protocol: SCTP, port: 80}]
"#;

#[test]
fn a_pod_no_policy_selects_passes_everything() {
    let Some(mut f) = fixture(PODS, ("x", "a")) else { return };
    assert_eq!(f.entering_pod(&flow(YB, A, TCP, 40000, 81)), ALLOW);
    assert_eq!(f.leaving_pod(&flow(A, YB, UDP, 40000, 53)), ALLOW);
    assert_eq!(f.counter("allow_not_isolated"), 2);
}

#[test]
fn an_interface_that_is_no_pod_of_ours_is_not_policed() {
    let Some(mut f) = fixture(&with_policy(ALLOW_B_TCP_80), ("x", "b")) else { return };
    // ifindex 1 is pod b here, which no policy isolates; a is not on this interface.
    assert_eq!(f.entering_pod(&flow(YB, B, TCP, 40000, 81)), ALLOW);
}

#[test]
fn an_ingress_rule_allows_only_its_peer_port_and_protocol() {
    let Some(mut f) = fixture(&with_policy(ALLOW_B_TCP_80), ("x", "a")) else { return };
    assert_eq!(f.entering_pod(&flow(B, A, TCP, 40000, 80)), ALLOW, "b -> a:80/TCP is allowed");
    assert_eq!(f.entering_pod(&flow(B, A, TCP, 40000, 81)), DROP, "port 81 is not");
    assert_eq!(f.entering_pod(&flow(B, A, UDP, 40000, 80)), DROP, "UDP is not");
    assert_eq!(f.entering_pod(&flow(YB, A, TCP, 40000, 80)), DROP, "b of namespace y is not");
    assert_eq!(f.entering_pod(&flow(B, A, SCTP, 40000, 80)), ALLOW, "SCTP 80 is allowed");
    assert_eq!(f.entering_pod(&flow(B, A, SCTP, 40000, 81)), DROP, "SCTP 81 is not");
    assert_eq!(f.entering_pod(&flow(B6, A6, TCP, 40000, 80)), ALLOW, "IPv6 b -> a:80 too");
    assert_eq!(f.entering_pod(&flow(B6, A6, TCP, 40000, 81)), DROP);
    assert_eq!(f.counter("drop_no_rule"), 5);
}

#[test]
fn replies_of_an_allowed_connection_pass_and_new_flows_the_other_way_do_not() {
    let policy = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]
"#;
    let Some(mut f) = fixture(&with_policy(policy), ("x", "a")) else { return };
    assert_eq!(f.leaving_pod(&flow(A, B, TCP, 40000, 80)), ALLOW, "a -> b:80 opens");
    let reply = frame::ip(B, A, TCP, &frame::l4(TCP, 80, 40000, false));
    assert_eq!(f.entering_pod(&reply), ALLOW, "the reply passes a's ingress isolation");
    assert_eq!(f.counter("allow_established"), 1);
    assert_eq!(f.entering_pod(&flow(B, A, TCP, 40001, 80)), DROP, "b cannot open a connection to a");
}

#[test]
fn a_pod_cannot_send_with_another_source_address() {
    let Some(mut f) = fixture(PODS, ("x", "a")) else { return };
    assert_eq!(f.leaving_pod(&flow(B, YB, TCP, 40000, 80)), DROP, "forged IPv4 source");
    assert_eq!(f.leaving_pod(&flow("198.18.9.9", YB, UDP, 1, 53)), DROP, "random IPv4 source");
    assert_eq!(f.leaving_pod(&flow(B6, "fd00:198:18:1::11", TCP, 40000, 80)), DROP, "forged IPv6 source");
    assert_eq!(f.leaving_pod(&flow(A, YB, TCP, 40000, 80)), ALLOW, "its own address");
    assert_eq!(f.counter("drop_spoofed"), 3);
}

#[test]
fn ipv4_mapped_ipv6_addresses_are_not_taken_for_the_ipv4_host() {
    // ::ffff:198.18.0.11 is b's IPv4 address in IPv6 form: the same map key as b, so it would
    // get b's allowance; such addresses never appear on an IPv6 wire, and are dropped.
    let Some(mut f) = fixture(&with_policy(ALLOW_B_TCP_80), ("x", "a")) else { return };
    assert_eq!(f.entering_pod(&flow("::ffff:198.18.0.11", A6, TCP, 40000, 80)), DROP, "a mapped source posing as b");
    assert_eq!(f.leaving_pod(&flow(A6, "::ffff:198.18.1.11", UDP, 40000, 53)), DROP, "a mapped destination");
    assert_eq!(f.entering_pod(&flow(B6, A6, TCP, 40000, 80)), ALLOW, "b's real IPv6 address is allowed");
    assert_eq!(f.counter("drop_malformed"), 2);
}

#[test]
fn icmp_into_an_isolated_pod_needs_a_rule_without_ports() {
    let Some(mut f) = fixture(&with_policy(ALLOW_B_TCP_80), ("x", "a")) else { return };
    assert_eq!(f.entering_pod(&flow(B, A, ICMP, 7, 0)), DROP, "a rule with ports does not allow ICMP");
    let no_ports = ALLOW_B_TCP_80.replace("    ports: [{port: 80}, {protocol: SCTP, port: 80}]\n", "");
    let Some(mut f) = fixture(&with_policy(&no_ports), ("x", "a")) else { return };
    assert_eq!(f.entering_pod(&flow(B, A, ICMP, 7, 0)), ALLOW, "a rule without ports does");
}

#[test]
fn ipv6_neighbour_discovery_is_never_blocked() {
    let deny = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"#;
    let Some(mut f) = fixture(&with_policy(deny), ("x", "a")) else { return };
    let mut ns = frame::l4(frame::ICMPV6, 0, 0, false);
    ns[0] = 135; // neighbour solicitation
    assert_eq!(f.entering_pod(&frame::ip("fe80::1", A6, frame::ICMPV6, &ns)), ALLOW);
    assert_eq!(f.leaving_pod(&frame::ip("fe80::2", "ff02::1:ff00:1", frame::ICMPV6, &ns)), ALLOW, "from a link-local source");
    assert_eq!(f.entering_pod(&flow(B6, A6, TCP, 1000, 80)), DROP);
}

#[test]
fn ports_are_found_behind_ipv6_extension_headers_and_long_chains_are_dropped() {
    let Some(mut f) = fixture(&with_policy(ALLOW_B_TCP_80), ("x", "a")) else { return };
    let s: std::net::Ipv6Addr = B6.parse().expect("addr");
    let d: std::net::Ipv6Addr = A6.parse().expect("addr");
    let opts = (0u8, vec![0u8, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop, 8 bytes of PadN
    let dst_opts = (60u8, vec![0u8, 0, 1, 4, 0, 0, 0, 0]);
    let tcp81 = frame::l4(TCP, 40000, 81, true);
    let tcp80 = frame::l4(TCP, 40000, 80, true);
    assert_eq!(f.entering_pod(&frame::ipv6(s.octets(), d.octets(), TCP, &[opts.clone(), dst_opts.clone()], &tcp80)), ALLOW);
    assert_eq!(f.entering_pod(&frame::ipv6(s.octets(), d.octets(), TCP, &[opts.clone(), dst_opts.clone()], &tcp81)), DROP);
    let long: Vec<(u8, Vec<u8>)> = std::iter::once(opts).chain(std::iter::repeat_n(dst_opts, 7)).collect();
    assert_eq!(f.entering_pod(&frame::ipv6(s.octets(), d.octets(), TCP, &long, &tcp80)), DROP, "a chain past the parser's bound");
    assert_eq!(f.counter("drop_ext_headers"), 1);
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    let Some(mut f) = fixture(&with_policy(ALLOW_B_TCP_80), ("x", "a")) else { return };
    let (b, a) = ([198, 18, 0, 11], [198, 18, 0, 10]);
    let more = 0x2000;
    assert_eq!(f.entering_pod(&frame::ipv4(b, a, TCP, 77, 0x20, &[0u8; 8])), DROP, "a later fragment with no first fragment");
    assert_eq!(f.entering_pod(&frame::ipv4(b, a, TCP, 78, more, &frame::l4(TCP, 40000, 81, true))), DROP, "first fragment to a denied port");
    assert_eq!(f.entering_pod(&frame::ipv4(b, a, TCP, 78, 3, &[0u8; 8])), DROP, "its later fragment");
    assert_eq!(f.entering_pod(&frame::ipv4(b, a, TCP, 79, more, &frame::l4(TCP, 40000, 80, true))), ALLOW, "first fragment to an allowed port");
    assert_eq!(f.entering_pod(&frame::ipv4(b, a, TCP, 79, 3, &[0u8; 8])), ALLOW, "its later fragment");
    assert_eq!(f.counter("drop_orphan_fragment"), 2);
}

#[test]
fn truncated_headers_are_dropped() {
    let Some(mut f) = fixture(PODS, ("x", "a")) else { return };
    let full = flow(B, A, TCP, 40000, 80);
    assert_eq!(f.entering_pod(&full[..14 + 20 + 2]), DROP, "TCP header cut short");
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x43;
    assert_eq!(f.entering_pod(&bad_ihl), DROP, "IHL below 5");
    assert_eq!(f.counter("drop_malformed"), 2);
}

#[test]
fn an_allowed_flow_is_cut_when_its_policy_is_withdrawn() {
    let Some(mut f) = fixture(&with_policy(ALLOW_B_TCP_80), ("x", "a")) else { return };
    assert_eq!(f.entering_pod(&flow(B, A, TCP, 40000, 80)), ALLOW);
    // Recompile without the allow rule but still isolated, and reconcile in place.
    let deny = ALLOW_B_TCP_80.replace("  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n    ports: [{port: 80}, {protocol: SCTP, port: 80}]\n", "  policyTypes: [Ingress]\n");
    let mut loaded = manifests::Loaded::default();
    manifests::load_documents(&with_policy(&deny), "t.yaml", &mut loaded, &mut Default::default());
    let desired = Compiler::new().compile(&loaded.state, &CompileOptions { node: "n1".into(), host_ips: vec![], allow_host: false });
    let ifaces = BTreeMap::from([(ObjectRef::new("x", "a"), PodInterface { ifindex: 1, name: "lo".into() })]);
    f.dp.apply_maps(&desired, &ifaces);
    let next = frame::ip(B, A, TCP, &frame::l4(TCP, 40000, 80, false));
    assert_eq!(f.entering_pod(&next), DROP, "the open connection's next packet");
    assert_eq!(f.counter("drop_revoked"), 1);
    let _: IpAddr = A.parse().expect("addr");
}

#[test]
fn fragment_tricks_and_icmp_errors_for_unknown_flows_are_dropped() {
    let Some(mut f) = fixture(&with_policy(ALLOW_B_TCP_80), ("x", "a")) else { return };
    let (b, a) = ([198, 18, 0, 11], [198, 18, 0, 10]);
    let more = 0x2000;
    // A tiny first fragment that splits the TCP header: the ports are not all there.
    assert_eq!(f.entering_pod(&frame::ipv4(b, a, TCP, 90, more, &[0x9c, 0x40])), DROP, "tiny first fragment");
    // An allowed first fragment, then an overlapping one at offset 0 rewriting the port: it is a
    // first fragment of its own and judged by its own ports.
    assert_eq!(f.entering_pod(&frame::ipv4(b, a, TCP, 91, more, &frame::l4(TCP, 40000, 80, true))), ALLOW);
    assert_eq!(f.entering_pod(&frame::ipv4(b, a, TCP, 91, more, &frame::l4(TCP, 40000, 81, true))), DROP, "overlap rewriting the port");
    // A later fragment overlapping the header (offset 8 bytes) only follows an allowed first one.
    assert_eq!(f.entering_pod(&frame::ipv4(b, a, TCP, 92, 1, &[0u8; 16])), DROP, "later fragment of nothing");
    // An IPv4 header with no L4 bytes at all (zero-length payload) for a port protocol.
    assert_eq!(f.entering_pod(&frame::ipv4(b, a, TCP, 93, 0, &[])), DROP, "zero-length TCP");
    // ICMP destination unreachable quoting a flow a never had: dropped; quoting a's tracked
    // connection to b: passes as related.
    let icmp_error = |quoted: Vec<u8>| {
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted[14..14 + 28]);
        frame::ipv4(b, a, ICMP, 94, 0, &icmp)
    };
    let unknown = frame::ipv4(a, b, UDP, 1, 0, &frame::l4(UDP, 5000, 53, false));
    assert_eq!(f.entering_pod(&icmp_error(unknown)), DROP, "an error about no flow");
    let opened = frame::ipv4(b, a, TCP, 95, 0, &frame::l4(TCP, 41000, 80, true));
    assert_eq!(f.entering_pod(&opened), ALLOW, "b opens a connection to a:80");
    let reply = frame::ipv4(a, b, TCP, 96, 0, &frame::l4(TCP, 80, 41000, false));
    assert_eq!(f.entering_pod(&icmp_error(reply)), ALLOW, "an error about a's reply to that connection");
    assert_eq!(f.counter("allow_related"), 1);
}

#[test]
fn egress_to_a_service_address_is_judged_after_nat_where_it_leaves_the_node() {
    let Some(mut f) = fixture(&with_policy(A_EGRESS_TO_B_443), ("x", "a")) else { return };
    const SERVICE: &str = "198.19.128.10";
    // kube-proxy's mark bits are left alone.
    const KUBE_MASQ: u32 = 0x4000;
    // To a pod: judged at once, no mark.
    assert_eq!(f.run_marked(PROG_FROM_POD, &flow(A, B, TCP, 40000, 80), KUBE_MASQ), (DROP, KUBE_MASQ));
    assert_eq!(f.run_marked(PROG_FROM_POD, &flow(A, B, TCP, 40001, 443), 0), (ALLOW, 0));
    // To an address that is neither a pod nor the node (a ClusterIP): passed on, marked with
    // the pod's slot, counted as deferred.
    let (verdict, mark) = f.run_marked(PROG_FROM_POD, &flow(A, SERVICE, TCP, 40002, 443), KUBE_MASQ);
    assert_eq!(verdict, ALLOW);
    let slot = netpol_common::deferred_slot(mark).expect("the packet is marked as deferred");
    assert_ne!(slot, 0, "the endpoint's own slot");
    assert_eq!(mark & KUBE_MASQ, KUBE_MASQ, "kube-proxy's bit survives");
    assert_eq!(f.counter("pass_deferred"), 1);
    // Its next packet is marked again (the entry is not a verdict).
    let (verdict, again) = f.run_marked(PROG_FROM_POD, &flow(A, SERVICE, TCP, 40002, 443), 0);
    assert_eq!((verdict, netpol_common::deferred_slot(again)), (ALLOW, Some(slot)));

    // Where it leaves the node, after DNAT: to x/b:443 it passes, to x/b:80 it is dropped;
    // either way the mark is cleared and kube-proxy's bit kept.
    let before = (f.counter("allow_policy"), f.counter("drop_no_rule"));
    assert_eq!(f.run_marked(PROG_EXIT, &flow(A, B, TCP, 40002, 443), mark), (ALLOW, KUBE_MASQ));
    assert_eq!(f.run_marked(PROG_EXIT, &flow(A, B, TCP, 40003, 80), mark), (DROP, KUBE_MASQ));
    // To an address outside the cluster (not DNATed), which no rule allows: dropped.
    assert_eq!(f.run_marked(PROG_EXIT, &flow(A, "198.18.200.1", UDP, 40004, 53), mark).0, DROP);
    // The same, deferred on the pod's veth first (the conntrack entry it leaves is no verdict):
    // dropped where it leaves, and again on its next packet.
    let (verdict, outside) = f.run_marked(PROG_FROM_POD, &flow(A, "198.18.200.2", UDP, 40010, 53), 0);
    assert_eq!(verdict, ALLOW);
    assert_eq!(f.run_marked(PROG_EXIT, &flow(A, "198.18.200.2", UDP, 40010, 53), outside).0, DROP, "not NATed, not allowed");
    assert_eq!(f.run_marked(PROG_EXIT, &flow(A, "198.18.200.2", UDP, 40010, 53), outside).0, DROP, "its next packet");
    assert_eq!(f.entering_pod(&flow("198.18.200.2", A, UDP, 53, 40010)), DROP, "no reply of a denied flow comes in as tracked");
    assert_eq!((f.counter("allow_policy"), f.counter("drop_no_rule")), (before.0 + 1, before.1 + 5));
    // The allowed flow is tracked: its next packet passes without a new verdict.
    assert_eq!(f.run_marked(PROG_EXIT, &frame::ip(A, B, TCP, &frame::l4(TCP, 40002, 443, false)), mark).0, ALLOW);
    assert_eq!(f.counter("allow_policy"), before.0 + 1);

    // Unmarked packets, and marks of other programs, pass the exit untouched.
    assert_eq!(f.run_marked(PROG_EXIT, &flow(A, B, TCP, 40005, 80), 0), (ALLOW, 0));
    assert_eq!(f.run_marked(PROG_EXIT, &flow(A, B, TCP, 40005, 80), 0x0f00_0000), (ALLOW, 0x0f00_0000));
    // A mark naming a slot no endpoint holds: its pod is gone, the packet is dropped.
    let stale = netpol_common::defer_mark(0, 77);
    assert_eq!(f.run_marked(PROG_EXIT, &flow(A, B, TCP, 40006, 443), stale).0, DROP);

    // The reply of the deferred flow comes back from the address the pod sent to: allowed
    // (ingress is isolated, so only as a tracked flow); a new flow from there is not.
    assert_eq!(f.entering_pod(&frame::ip(SERVICE, A, TCP, &frame::l4(TCP, 443, 40002, false))), ALLOW);
    assert_eq!(f.entering_pod(&flow(SERVICE, A, TCP, 443, 40099)), DROP);
}

/// x/b may send to x/a on TCP 80 and 443 only.
const B_EGRESS_TO_A: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-egress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {pod: a}}}]
    ports: [{port: 80}, {port: 443}]
"#;

#[test]
fn a_deferred_packet_into_a_local_pod_is_judged_by_the_senders_egress_then_the_pods_ingress() {
    let yaml = format!("{}\n---\n{B_EGRESS_TO_A}", with_policy(ALLOW_B_TCP_80));
    // x/a on ifindex 1 (where BPF_PROG_TEST_RUN runs the classifier), x/b local too, on 2.
    let Some(mut f) = fixture_at(&yaml, &[(("x", "a"), 1), (("x", "b"), 2)]) else { return };
    const KUBE_MASQ: u32 = 0x4000;
    let b_slot = f.dp.current_endpoints()[&2].slot;
    let mark = netpol_common::defer_mark(KUBE_MASQ, b_slot);
    // From x/b (deferred on its veth, after kube-proxy's DNAT of a ClusterIP to x/a), leaving
    // into x/a: x/b's egress allows 80 and 443, x/a's ingress only 80; x/b may not send to 22.
    // Either way the mark is cleared and kube-proxy's bit kept.
    assert_eq!(f.run_marked(PROG_TO_POD, &flow(B, A, TCP, 40000, 80), mark), (ALLOW, KUBE_MASQ));
    assert_eq!(f.run_marked(PROG_TO_POD, &flow(B, A, TCP, 40001, 443), mark), (DROP, KUBE_MASQ), "x/a's ingress");
    assert_eq!(f.run_marked(PROG_TO_POD, &flow(B, A, TCP, 40002, 22), mark), (DROP, KUBE_MASQ), "x/b's egress");
    assert_eq!((f.counter("allow_policy"), f.counter("drop_no_rule")), (3, 2), "both sides judged the first, each side dropped one");
    // The allowed flow's next packets pass, marked (deferred again on x/b's veth) or not.
    let next = frame::ip(B, A, TCP, &frame::l4(TCP, 40000, 80, false));
    assert_eq!(f.run_marked(PROG_TO_POD, &next, mark), (ALLOW, KUBE_MASQ));
    assert_eq!(f.run_marked(PROG_TO_POD, &next, 0), (ALLOW, 0));
    assert_eq!(f.counter("allow_policy"), 3, "no new verdict");

    // Without its jump table the classifier judges no deferred packet: dropped and counted.
    // Unmarked packets are judged as before.
    let pinned = MapData::from_pin(f.pin_path().join(netpol_common::MAP_JUMPS)).expect("pinned jump table");
    let mut jumps = ProgramArray::try_from(Map::ProgramArray(pinned)).expect("a program array");
    jumps.clear_index(&netpol_common::JUMP_DEFERRED).expect("clear");
    assert_eq!(f.run_marked(PROG_TO_POD, &flow(B, A, TCP, 40003, 80), mark).0, DROP);
    assert_eq!(f.counter("drop_no_program"), 1);
    assert_eq!(f.entering_pod(&flow(B, A, TCP, 40004, 80)), ALLOW);
    assert_eq!(f.entering_pod(&flow(B, A, TCP, 40005, 443)), DROP);
}

#[test]
fn the_flow_cache_passes_an_established_flow_and_nothing_the_full_path_would_not() {
    let Some(mut f) = fixture(&with_policy(ALLOW_B_TCP_80), ("x", "a")) else { return };
    for cache in [true, false] {
        f.dp.set_flow_cache(cache).expect("flow cache setting");
        let sport = if cache { 40000 } else { 40001 };
        assert_eq!(f.entering_pod(&flow(B, A, TCP, sport, 80)), ALLOW, "b opens a:80 (cache {cache})");
        let next = frame::ip(B, A, TCP, &frame::l4(TCP, sport, 80, false));
        let reply = frame::ip(A, B, TCP, &frame::l4(TCP, 80, sport, false));
        for _ in 0..3 {
            assert_eq!(f.entering_pod(&next), ALLOW, "b's next packets (cache {cache})");
            assert_eq!(f.leaving_pod(&reply), ALLOW, "a's replies (cache {cache})");
        }
        // The same addresses and ports, sent by a claiming to be b: the flow is established, but
        // this packet is forged, and the cache must not take it for one of b's.
        assert_eq!(f.leaving_pod(&next), DROP, "a forging b's packet (cache {cache})");
        // The established IPv4 flow's addresses in IPv4-mapped IPv6 form: not b's flow.
        let mapped = frame::ip("::ffff:198.18.0.11", "::ffff:198.18.0.10", TCP, &frame::l4(TCP, sport, 80, false));
        assert_eq!(f.entering_pod(&mapped), DROP, "an IPv4-mapped twin of the flow (cache {cache})");
        // The flow's UDP twin was never allowed.
        assert_eq!(f.entering_pod(&frame::ip(B, A, UDP, &frame::l4(UDP, sport, 80, false))), DROP, "UDP twin (cache {cache})");
    }
    assert_eq!(f.counter("allow_policy"), 2);
    assert_eq!(f.counter("allow_established"), 12);
    assert_eq!(f.counter("drop_spoofed"), 2);
    assert_eq!(f.counter("drop_malformed"), 2);
    assert_eq!(f.counter("drop_no_rule"), 2);
}
