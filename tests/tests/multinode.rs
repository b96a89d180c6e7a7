//! Several nodes, one agent each, as a DaemonSet runs: a bridge node (Flannel's cni0) and a routed
//! node (kindnet), connected like Flannel's host-gw (an underlay segment and a route to each
//! other's pod subnets; pod addresses cross unNATed). Every agent reads the same manifests, so it
//! knows the other node's pods as peers. A cross-node flow must be enforced on both ends: the
//! client's egress policy at the client's node, the server's ingress policy at the server's node.
//! Then a Service: kube-proxy's DNAT of a ClusterIP in the client's node namespace, after the
//! client veth's hook, in front of two backends of which the client's egress policy admits one.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use netpol_sandbox::{cluster::OpenConnection, netns, privileged, probe, Cluster, Protocol, Shape};

/// The pods, as (namespace, name, node): the first three on node 0 (bridge), the last three on
/// node 1 (routed). Every pod is labelled `pod: <name>`, every namespace `ns: <name>`; y/a carries
/// `pod: a` like x/a and y/c `pod: c` like x/c, so a podSelector without namespaceSelector must
/// tell them apart by namespace.
const PODS: [(&str, &str, usize); 6] = [("x", "a", 0), ("x", "b", 0), ("y", "a", 0), ("x", "c", 1), ("x", "d", 1), ("y", "c", 1)];
const PORTS: &[(&str, u16, &str)] = &[("serve-80-tcp", 80, "TCP"), ("serve-80-udp", 80, "UDP")];

/// A pod, as (namespace, name).
type PodRef = (&'static str, &'static str);

/// Where a denied cross-node flow must be dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// At the client's node: not a packet of it reaches the server's node.
    ClientNode,
    /// At the server's node: its packets cross the underlay and die at the server's veth.
    ServerNode,
}

/// A case: policies as (namespace, name, spec), the reachability they must produce (one row per
/// source pod, one column per destination pod, both in the order of [`PODS`]; `.` opens, `X` must
/// not; the same table for TCP and UDP port 80, IPv4 and IPv6), and where chosen cross-node
/// denials (from, to) must happen.
struct Case {
    name: &'static str,
    policies: &'static [(&'static str, &'static str, &'static str)],
    table: &'static str,
    drops: &'static [(PodRef, PodRef, At)],
}

const CASES: &[Case] = &[
    Case {
        name: "no policy: every pod reaches every pod, across the underlay too",
        policies: &[],
        table: "
            . . . . . .
            . . . . . .
            . . . . . .
            . . . . . .
            . . . . . .
            . . . . . .",
        drops: &[],
    },
    Case {
        name: "egress only: x/a (node 0) may send only to pods c of x, x/d (node 1) only to pods b of x; no pod is isolated for ingress",
        policies: &[
            ("x", "egress-a", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {matchLabels: {pod: c}}}]}]\n"),
            ("x", "egress-d", "  podSelector: {matchLabels: {pod: d}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]\n"),
        ],
        //    x/a x/b y/a x/c x/d y/c
        table: "
            .   X   X   .   X   X
            .   .   .   .   .   .
            .   .   .   .   .   .
            .   .   .   .   .   .
            X   .   X   X   .   X
            .   .   .   .   .   .",
        drops: &[
            (("x", "a"), ("x", "d"), At::ClientNode),
            (("x", "a"), ("y", "c"), At::ClientNode),
            (("x", "d"), ("x", "a"), At::ClientNode),
            (("x", "d"), ("y", "a"), At::ClientNode),
        ],
    },
    Case {
        name: "ingress only: x/c (node 1) admits only pods a of x, x/b (node 0) only pods d of x; no pod is isolated for egress",
        policies: &[
            ("x", "ingress-c", "  podSelector: {matchLabels: {pod: c}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]\n"),
            ("x", "ingress-b", "  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: d}}}]}]\n"),
        ],
        //    x/a x/b y/a x/c x/d y/c
        table: "
            .   X   .   .   .   .
            .   .   .   X   .   .
            .   X   .   X   .   .
            .   X   .   .   .   .
            .   .   .   X   .   .
            .   X   .   X   .   .",
        drops: &[
            (("x", "b"), ("x", "c"), At::ServerNode),
            (("y", "a"), ("x", "c"), At::ServerNode),
            (("x", "c"), ("x", "b"), At::ServerNode),
            (("y", "c"), ("x", "b"), At::ServerNode),
        ],
    },
    Case {
        name: "both ends: x/a may send to pods c and d of x; x/c admits only pods a of x, x/d only pods b of x",
        policies: &[
            (
                "x",
                "egress-a",
                "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  \
                 egress: [{to: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [c, d]}]}}]}]\n",
            ),
            ("x", "ingress-c", "  podSelector: {matchLabels: {pod: c}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]\n"),
            ("x", "ingress-d", "  podSelector: {matchLabels: {pod: d}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n"),
        ],
        //    x/a x/b y/a x/c x/d y/c
        table: "
            .   X   X   .   X   X
            .   .   .   X   .   .
            .   .   .   X   X   .
            .   .   .   .   X   .
            .   .   .   X   .   .
            .   .   .   X   X   .",
        drops: &[
            (("x", "a"), ("y", "c"), At::ClientNode),
            (("x", "a"), ("x", "d"), At::ServerNode),
            (("x", "b"), ("x", "c"), At::ServerNode),
            (("y", "a"), ("x", "d"), At::ServerNode),
        ],
    },
    Case {
        name: "namespaceSelector and podSelector across nodes: x/c admits pods a of namespaces ns=y, x/d any pod of ns=y; y/c may send only to pods a of ns=x",
        policies: &[
            (
                "x",
                "ingress-c",
                "  podSelector: {matchLabels: {pod: c}}\n  \
                 ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: a}}}]}]\n",
            ),
            ("x", "ingress-d", "  podSelector: {matchLabels: {pod: d}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n"),
            (
                "y",
                "egress-c",
                "  podSelector: {matchLabels: {pod: c}}\n  policyTypes: [Egress]\n  \
                 egress: [{to: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]}]\n",
            ),
        ],
        //    x/a x/b y/a x/c x/d y/c
        table: "
            .   .   .   X   X   .
            .   .   .   X   X   .
            .   .   .   .   .   .
            .   .   .   .   X   .
            .   .   .   X   .   .
            .   X   X   X   X   .",
        drops: &[
            (("x", "a"), ("x", "c"), At::ServerNode),
            (("x", "b"), ("x", "d"), At::ServerNode),
            (("y", "c"), ("x", "b"), At::ClientNode),
            (("y", "c"), ("y", "a"), At::ClientNode),
        ],
    },
];

fn policy(namespace: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}")
}

/// Two nodes (bridge, routed) connected host-gw style, the pods of [`PODS`], an agent per node.
fn two_nodes() -> Cluster {
    let mut c = Cluster::new(&[Shape::Bridge, Shape::Routed]).expect("nodes");
    c.connect_nodes().expect("underlay");
    for ns in ["x", "y"] {
        c.namespace(ns, &[("ns", ns)]).expect("namespace");
    }
    for (ns, name, node) in PODS {
        c.add_pod(node, ns, name, &[("pod", name)], PORTS).expect("pod");
    }
    c.start_agent(0, &[]).expect("agent on node 0");
    c.start_agent(1, &[]).expect("agent on node 1");
    c.sync().expect("first sync");
    c
}

fn node_of(pod: (&str, &str)) -> usize {
    PODS.iter().find(|p| (p.0, p.1) == pod).map(|p| p.2).expect("a pod of PODS")
}

fn parse_table(table: &str) -> Vec<Vec<bool>> {
    let rows: Vec<Vec<bool>> =
        table.lines().filter(|l| !l.trim().is_empty()).map(|l| l.split_whitespace().map(|c| c == ".").collect()).collect();
    assert!(rows.len() == 6 && rows.iter().all(|r| r.len() == 6), "a table is 6 x 6:\n{table}");
    rows
}

fn addr(c: &Cluster, pod: (&str, &str), ipv6: bool) -> IpAddr {
    let p = c.pod(pod.0, pod.1);
    if ipv6 {
        IpAddr::V6(p.ipv6)
    } else {
        IpAddr::V4(p.ipv4)
    }
}

/// Probes every pair but the diagonal with `protocol` on port 80; a report of the table where
/// the measurement differs from the expectation, and the number of probes (cross-node ones too).
fn check(c: &Cluster, table: &str, protocol: Protocol, ipv6: bool) -> (usize, usize, Option<String>) {
    let expected = parse_table(table);
    let mut probes = Vec::new();
    let mut cells = Vec::new();
    for (i, from) in PODS.iter().enumerate() {
        for (j, to) in PODS.iter().enumerate() {
            if i != j {
                probes.push((c.pod(from.0, from.1).netns.clone(), c.target(to.0, to.1, 80, protocol, ipv6)));
                cells.push((i, j));
            }
        }
    }
    let results = probe::probe_many(&probes);
    let mut actual = vec![vec![true; 6]; 6];
    for ((i, j), ok) in cells.iter().zip(&results) {
        actual[*i][*j] = *ok;
    }
    let cross = cells.iter().filter(|(i, j)| PODS[*i].2 != PODS[*j].2).count();
    if actual == expected {
        return (probes.len(), cross, None);
    }
    let mut report = format!("{protocol:?} 80 (ipv6: {ipv6}): expected | measured (rows: from, columns: to; x/a x/b y/a on node 0, x/c x/d y/c on node 1)\n");
    for (i, from) in PODS.iter().enumerate() {
        let e: String = (0..6).map(|j| if expected[i][j] { '.' } else { 'X' }).collect();
        let a: String = (0..6).map(|j| if actual[i][j] { '.' } else { 'X' }).collect();
        let mark = if e == a { "" } else { "   <-" };
        report.push_str(&format!("{:>4}  {e} | {a}{mark}\n", format!("{}/{}", from.0, from.1)));
    }
    (probes.len(), cross, Some(report))
}

/// Runs `program` with `args` inside network namespace `ns`; its stdout.
fn run_in(ns: &str, program: &str, args: &[&str]) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns, program]).args(args).output().expect("run ip netns exec");
    assert!(out.status.success(), "{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How many packets of `protocol` from `src` to `dst` arrive at node namespace `node` over the
/// underlay while `f` runs, counted by a rule of the raw table's PREROUTING (before any routing or
/// filtering there, so it sees what the netpol hook at the server's veth later drops).
fn arrivals(node: &str, src: IpAddr, dst: IpAddr, protocol: Protocol, f: impl FnOnce() -> bool) -> (u64, bool) {
    let iptables = if src.is_ipv6() { "ip6tables" } else { "iptables" };
    let proto = if protocol == Protocol::Udp { "udp" } else { "tcp" };
    let (s, d) = (src.to_string(), dst.to_string());
    let rule = ["PREROUTING", "-i", "eth0", "-s", &s, "-d", &d, "-p", proto];
    run_in(node, iptables, &[&["-t", "raw", "-I"][..], &rule].concat());
    let opened = f();
    let listing = run_in(node, iptables, &["-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"]);
    run_in(node, iptables, &[&["-t", "raw", "-D"][..], &rule].concat());
    let count = listing
        .lines()
        .find(|l| l.contains(&format!(" {s} ")) || l.contains(&format!(" {s}/")))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter for {s} -> {d} in:\n{listing}"));
    (count, opened)
}

#[test]
fn cross_node_flows_are_enforced_at_the_client_for_egress_and_at_the_server_for_ingress() {
    if !privileged() {
        return;
    }
    let mut c = two_nodes();
    let mut failures = Vec::new();
    let (mut probes, mut cross, mut located) = (0, 0, 0);
    for case in CASES {
        let rendered: Vec<String> = case.policies.iter().map(|(ns, name, spec)| policy(ns, name, spec)).collect();
        c.set_policies(&rendered).expect("write policies");
        c.sync().expect("both agents apply the case");
        for node in 0..2 {
            let status = c.agent(node).status().expect("status");
            assert_eq!(status["problems"], serde_json::json!([]), "{}: the policies are valid", case.name);
        }
        for (protocol, ipv6) in [(Protocol::Tcp, false), (Protocol::Udp, false), (Protocol::Tcp, true), (Protocol::Udp, true)] {
            let (n, x, report) = check(&c, case.table, protocol, ipv6);
            probes += n;
            cross += x;
            if let Some(r) = report {
                failures.push(format!("{}\n{r}", case.name));
            }
            // Where each chosen denial happens: count the flow's packets arriving at the server's
            // node over the underlay.
            for (from, to, at) in case.drops {
                let (client, server) = (node_of(*from), node_of(*to));
                assert_ne!(client, server, "{}: {from:?} -> {to:?} is a cross-node flow", case.name);
                let target = c.target(to.0, to.1, 80, protocol, ipv6);
                let netns = c.pod(from.0, from.1).netns.clone();
                let (n, opened) = arrivals(&c.nodes[server].netns, addr(&c, *from, ipv6), target.addr, protocol, || probe::probe(&netns, &target));
                located += 1;
                let ok = !opened && (n == 0) == (*at == At::ClientNode);
                eprintln!(
                    "  {protocol:?} ipv6={ipv6} {}/{} -> {}/{}: opened={opened}, {n} packets reached node {server} (expected dropped at {at:?})",
                    from.0, from.1, to.0, to.1
                );
                if !ok {
                    failures.push(format!(
                        "{}\n{protocol:?} 80 (ipv6: {ipv6}) {}/{} (node {client}) -> {}/{} (node {server}): opened {opened}, {n} packets reached \
                         node {server}; expected denied at {at:?}\n",
                        case.name, from.0, from.1, to.0, to.1
                    ));
                }
            }
        }
    }
    eprintln!(
        "{} cases, {} tables, {probes} probes ({cross} cross-node), {located} denials located, {} wrong",
        CASES.len(),
        CASES.len() * 4,
        failures.len()
    );
    assert!(failures.is_empty(), "{} differ:\n\n{}", failures.len(), failures.join("\n"));
}

/// x/a may send to pods c of x, and to the underlay's addresses when `underlay` says so.
fn egress_a_to_c(underlay: bool) -> String {
    let block = if underlay { ", {ipBlock: {cidr: 198.19.0.0/24}}" } else { "" };
    policy("x", "egress-a", &format!("  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{podSelector: {{matchLabels: {{pod: c}}}}}}{block}]}}]\n"))
}

#[test]
fn an_egress_isolated_pod_reaches_another_nodes_own_address_only_where_a_rule_allows_it() {
    if !privileged() {
        return;
    }
    // Node 1's own address is neither a pod nor node 0's: x/a's packets to it are judged where
    // they leave node 0, and cross the underlay with their addresses unchanged (no NAT).
    let mut c = two_nodes();
    let server = netpol_sandbox::servers::start(&c.nodes[1].netns, &[8080], &[8080], "node 1\n").expect("a server on node 1");
    let target = |protocol| probe::Target { addr: netpol_sandbox::node::Underlay::addr4(1).into(), port: 8080, protocol, sctp_sink: None };
    let reaches = |c: &Cluster, pod: &str, protocol| probe::probe(&c.pod("x", pod).netns, &target(protocol));
    c.set_policies(&[egress_a_to_c(false)]).expect("write");
    c.sync().expect("sync");
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        assert!(!reaches(&c, "a", protocol), "{protocol:?}: x/a, isolated for egress, reached node 1's address that no rule allows");
        assert!(reaches(&c, "b", protocol), "{protocol:?}: x/b, not isolated, reaches node 1");
    }
    c.set_policies(&[egress_a_to_c(true)]).expect("write");
    c.sync().expect("sync");
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        assert!(reaches(&c, "a", protocol), "{protocol:?}: an ipBlock of the underlay lets x/a reach node 1");
    }
    drop(server);
}

const EGRESS_A_TO_C: &str = "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {matchLabels: {pod: c}}}]}]\n";
const EGRESS_A_TO_D: &str = "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {matchLabels: {pod: d}}}]}]\n";
const INGRESS_C_FROM_A: &str = "  podSelector: {matchLabels: {pod: c}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]\n";
const INGRESS_C_FROM_B: &str = "  podSelector: {matchLabels: {pod: c}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n";

/// x/a (node 0) opens a TCP connection to x/c (node 1) over `ipv6`.
fn open_a_to_c(c: &Cluster, ipv6: bool) -> anyhow::Result<OpenConnection> {
    OpenConnection::open(&c.pod("x", "a").netns, addr(c, ("x", "c"), ipv6), 80)
}

#[test]
fn a_cross_node_connection_allowed_at_both_ends_carries_data_both_ways() {
    if !privileged() {
        return;
    }
    let mut c = two_nodes();
    c.set_policies(&[policy("x", "egress-a", EGRESS_A_TO_C), policy("x", "ingress-c", INGRESS_C_FROM_A)]).expect("write");
    c.sync().expect("sync");
    for ipv6 in [false, true] {
        // Both ends are isolated: x/a's egress (node 0) and x/c's ingress (node 1) each admit the
        // flow, and each node must let the replies back through.
        let mut conn = open_a_to_c(&c, ipv6).unwrap_or_else(|e| panic!("x/a (node 0) -> x/c (node 1), ipv6 {ipv6}: {e}"));
        for i in 0..20 {
            assert!(conn.works(), "ipv6 {ipv6}, exchange {i}: bytes go out and their echo comes back across the nodes");
        }
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            assert!(c.probe(("x", "a"), ("x", "c"), 80, protocol, ipv6), "ipv6 {ipv6}: a new {protocol:?} flow opens too");
            assert!(!c.probe(("x", "b"), ("x", "c"), 80, protocol, ipv6), "ipv6 {ipv6}: x/c's ingress still turns x/b away");
            assert!(!c.probe(("x", "a"), ("x", "d"), 80, protocol, ipv6), "ipv6 {ipv6}: x/a's egress still keeps it from x/d");
        }
    }
}

/// Opens a connection x/a (node 0) -> x/c (node 1) over IPv4 and one over IPv6 while both ends
/// admit them, then withdraws, in turn, the server's ingress and the client's egress. With `busy`,
/// each connection exchanges data right before the change, so the peer that did not open it (the
/// server for an ingress withdrawal, the client for an egress one, both not isolated in the other
/// direction) still has packets in flight: its delayed ACK, then its retransmission. Otherwise the
/// connections are idle (every ACK delivered) when the change comes. Returns how many open
/// connections still worked or new ones opened (expected: none), and what each did.
fn withdraw_under_open_connections(busy: bool) -> (usize, String) {
    let mut c = two_nodes();
    let both = [policy("x", "egress-a", EGRESS_A_TO_C), policy("x", "ingress-c", INGRESS_C_FROM_A)];
    // Each row: the policies that replace `both` once the connections are open, and which node
    // must then cut them. Expected: every open connection stops working, no new one opens.
    let withdrawals = [
        ("x/c's ingress no longer admits x/a: node 1 cuts", [both[0].clone(), policy("x", "ingress-c", INGRESS_C_FROM_B)]),
        ("x/a's egress no longer allows x/c: node 0 cuts", [policy("x", "egress-a", EGRESS_A_TO_D), both[1].clone()]),
    ];
    let mut report = Vec::new();
    let mut wrong = 0;
    for (what, policies) in &withdrawals {
        c.set_policies(&both).expect("write");
        c.sync().expect("sync");
        let mut held: Vec<OpenConnection> = [false, true].iter().map(|v6| open_a_to_c(&c, *v6).expect("opens while both ends admit it")).collect();
        for conn in &mut held {
            assert!(conn.works(), "{what}: works before the change");
        }
        if !busy {
            std::thread::sleep(Duration::from_millis(500));
        }
        c.set_policies(policies).expect("write");
        c.sync().expect("sync");
        for (conn, ipv6) in held.iter_mut().zip([false, true]) {
            let (still_works, new_opens) = (conn.works(), open_a_to_c(&c, ipv6).is_ok());
            wrong += usize::from(still_works) + usize::from(new_opens);
            let state = if busy { "busy" } else { "idle" };
            report.push(format!("{what}, ipv6 {ipv6}, {state}: the open connection still works: {still_works}, a new one opens: {new_opens}"));
        }
    }
    (wrong, report.join("\n"))
}

#[test]
fn withdrawing_either_ends_policy_cuts_an_idle_open_cross_node_connection() {
    if !privileged() {
        return;
    }
    let (wrong, report) = withdraw_under_open_connections(false);
    eprintln!("{report}");
    assert_eq!(wrong, 0, "expected every open connection cut and no new one opened:\n{report}");
}

#[test]
fn withdrawing_either_ends_policy_cuts_a_busy_open_cross_node_connection() {
    if !privileged() {
        return;
    }
    let (wrong, report) = withdraw_under_open_connections(true);
    eprintln!("{report}");
    assert_eq!(wrong, 0, "expected every open connection cut and no new one opened:\n{report}");
}

/// The ClusterIP of the Service (198.19.128.0/24: no pod subnet, no node, no route anywhere; only
/// kube-proxy's rules give it a meaning).
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 128, 10);
const SERVICE_CONNECTIONS: usize = 40;

/// What one connection to the ClusterIP did: the banner of the backend that answered (every
/// sandbox server writes "namespace/name\n" first) and whether bytes sent then came back.
fn through_service(netns_name: &str) -> Option<(String, bool)> {
    // Below the first SYN retransmission (1 s): each attempt is exactly one SYN, and from a
    // source port of its own, so one new conntrack entry and one pass through kube-proxy's rules
    // (a port the kernel picked again would meet the conntrack entry of an earlier, denied SYN
    // and its NAT binding, and skip the rules).
    let mut s = netns::within(netns_name, || connect_from(next_source_port(), SocketAddr::new(CLUSTER_IP.into(), 80), Duration::from_millis(500)))
        .expect("enter the client's netns")
        .ok()?;
    s.set_read_timeout(Some(Duration::from_millis(700))).ok()?;
    let mut banner = [0u8; 64];
    let n = s.read(&mut banner).ok()?;
    let banner = String::from_utf8_lossy(&banner[..n]).trim().to_string();
    let mut echo = [0u8; 16];
    let echoed = s.write_all(b"ping\n").is_ok() && s.read(&mut echo).is_ok_and(|n| echo[..n] == *b"ping\n");
    Some((banner, echoed))
}

/// A source port not used before in this process (from a random start).
fn next_source_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(0, 20_000 + (netpol_sandbox::node::random_u32() % 20_000) as u16, Ordering::Relaxed, Ordering::Relaxed);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A TCP connection to `to` from source port `port`, given up after `timeout`.
fn connect_from(port: u16, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{bind, connect, getsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_NONBLOCK, None)?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(0, 0, 0, 0, port))?;
    let SocketAddr::V4(v4) = to else { return Err(std::io::Error::other("IPv4 only")) };
    match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4)) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    let mut pfd = libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&fd), events: libc::POLLOUT, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().min(60_000) as i32) };
    if ready < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if ready == 0 {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    let err = getsockopt(&fd, sockopt::SocketError)?;
    if err != 0 {
        return Err(std::io::Error::from_raw_os_error(err));
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Packets counted by the DNAT rule of a kube-proxy endpoint chain (one per new connection).
fn dnat_hits(node: &str, chain: &str) -> u64 {
    let listing = run_in(node, "iptables", &["-t", "nat", "-L", chain, "-v", "-x", "-n"]);
    listing.lines().filter(|l| l.contains("DNAT")).filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok()).sum()
}

/// What [`SERVICE_CONNECTIONS`] connections from a pod to the ClusterIP did.
#[derive(Debug)]
struct ServiceRun {
    /// Connections kube-proxy's rules DNATed to the allowed and to the denied backend.
    dnat: (u64, u64),
    /// Connections that opened, answered by the allowed and by the denied backend.
    opened: (usize, usize),
    /// Opened connections whose bytes came back echoed.
    echoed: usize,
}

impl std::fmt::Display for ServiceRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{SERVICE_CONNECTIONS} connections to {CLUSTER_IP}:80: {} DNATed to x/allowed, {} to x/denied; {} opened answered by x/allowed, {} by \
             x/denied; {} exchanged data both ways",
            self.dnat.0, self.dnat.1, self.opened.0, self.opened.1, self.echoed
        )
    }
}

fn through_service_many(client: &str, node: &str) -> ServiceRun {
    run_in(node, "iptables", &["-t", "nat", "-Z"]);
    let results: Vec<(String, bool)> = (0..SERVICE_CONNECTIONS).filter_map(|_| through_service(client)).collect();
    ServiceRun {
        dnat: (dnat_hits(node, "KUBE-SEP-ALLOWED"), dnat_hits(node, "KUBE-SEP-DENIED")),
        opened: (results.iter().filter(|(b, _)| b == "x/allowed").count(), results.iter().filter(|(b, _)| b == "x/denied").count()),
        echoed: results.iter().filter(|(_, e)| *e).count(),
    }
}

#[test]
fn connections_through_a_clusterip_open_only_to_the_backend_the_clients_egress_allows() {
    if !privileged() {
        return;
    }
    // Node 0 has a bridge, node 1 routed veths. Both backends on the other node: the DNATed
    // connections leave through the node's uplink.
    through_clusterip(0, 1, 1);
}

#[test]
fn a_clusterip_backend_on_the_clients_own_node_is_judged_by_the_clients_egress_too() {
    if !privileged() {
        return;
    }
    // The denied backend on the client's bridge, the allowed one across the underlay; then a
    // routed client with the allowed backend beside it and the denied one across.
    through_clusterip(0, 1, 0);
    through_clusterip(1, 1, 0);
}

/// A client on node `client`, the allowed backend on node `allowed` and the denied one on node
/// `denied`, kube-proxy's rules for a ClusterIP in front of both on the client's node; the
/// client's egress policy allows only the allowed backend.
fn through_clusterip(client_node: usize, allowed_node: usize, denied_node: usize) {
    let mut c = Cluster::new(&[Shape::Bridge, Shape::Routed]).expect("nodes");
    c.connect_nodes().expect("underlay");
    c.namespace("x", &[("ns", "x")]).expect("namespace");
    c.add_pod(client_node, "x", "client", &[("pod", "client")], PORTS).expect("pod");
    c.add_pod(allowed_node, "x", "allowed", &[("pod", "backend"), ("tier", "allowed")], PORTS).expect("pod");
    c.add_pod(denied_node, "x", "denied", &[("pod", "backend"), ("tier", "denied")], PORTS).expect("pod");
    c.start_agent(0, &[]).expect("agent on node 0");
    c.start_agent(1, &[]).expect("agent on node 1");
    c.sync().expect("sync");
    eprintln!("client on node {client_node}, x/allowed on node {allowed_node}, x/denied on node {denied_node}");

    // kube-proxy's rules in the client's node, as iptables mode writes them (nth instead of
    // random, so the split is exact: new connections alternate between the endpoints). The
    // client's default route (via its node) covers the ClusterIP.
    let node = c.nodes[client_node].netns.clone();
    let (allowed, denied) = (c.pod("x", "allowed").ipv4.to_string(), c.pod("x", "denied").ipv4.to_string());
    let ip = CLUSTER_IP.to_string();
    for rule in [
        vec!["-N", "KUBE-SVC-NETPOL"],
        vec!["-N", "KUBE-SEP-ALLOWED"],
        vec!["-N", "KUBE-SEP-DENIED"],
        vec!["-A", "KUBE-SEP-ALLOWED", "-p", "tcp", "-j", "DNAT", "--to-destination", &format!("{allowed}:80")],
        vec!["-A", "KUBE-SEP-DENIED", "-p", "tcp", "-j", "DNAT", "--to-destination", &format!("{denied}:80")],
        vec!["-A", "KUBE-SVC-NETPOL", "-m", "statistic", "--mode", "nth", "--every", "2", "--packet", "0", "-j", "KUBE-SEP-ALLOWED"],
        vec!["-A", "KUBE-SVC-NETPOL", "-j", "KUBE-SEP-DENIED"],
        vec!["-A", "PREROUTING", "-d", &format!("{ip}/32"), "-p", "tcp", "--dport", "80", "-j", "KUBE-SVC-NETPOL"],
    ] {
        run_in(&node, "iptables", &[&["-t", "nat"][..], &rule].concat());
    }
    let client = c.pod("x", "client").netns.clone();
    let half = (SERVICE_CONNECTIONS / 2) as u64;

    // Control, with no policy: the Service works, half the connections on each backend, all
    // exchanging data (the replies come back from the ClusterIP after un-DNAT).
    let open = through_service_many(&client, &node);
    eprintln!("no policy: {open}");
    assert_eq!(open.dnat, (half, half), "no policy: {open}");
    assert_eq!(open.opened, (SERVICE_CONNECTIONS / 2, SERVICE_CONNECTIONS / 2), "no policy: {open}");
    assert_eq!(open.echoed, SERVICE_CONNECTIONS, "no policy: {open}");

    // The client may send only to the allowed backend (TCP 80): by its pod labels, and then also
    // with an ipBlock of the ClusterIP beside them (what a user adds when the Service "does not
    // work"; NetworkPolicy judges the backend, so it must change nothing). Every row must hold:
    // the direct probes, every connection through kube-proxy's DNAT, none opening to the denied
    // backend, every one DNATed to the allowed backend opening and exchanging data.
    let egress = "  podSelector: {matchLabels: {pod: client}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {matchLabels: {tier: allowed}}}";
    let rows = [
        ("egress to tier=allowed".to_string(), format!("{egress}], ports: [{{protocol: TCP, port: 80}}]}}]\n")),
        (
            format!("egress to tier=allowed and ipBlock {ip}/32"),
            format!("{egress}, {{ipBlock: {{cidr: {ip}/32}}}}], ports: [{{protocol: TCP, port: 80}}]}}]\n"),
        ),
    ];
    let mut failures = Vec::new();
    for (what, spec) in &rows {
        c.set_policies(&[policy("x", "client-egress", spec)]).expect("write");
        c.sync().expect("sync");
        // Directly, by pod address: the allowed backend opens, the denied one does not.
        let to = |backend: &str| c.probe(("x", "client"), ("x", backend), 80, Protocol::Tcp, false);
        let direct = (to("allowed"), to("denied"));
        let run = through_service_many(&client, &node);
        let report = format!("{what}: direct to x/allowed opens {}, to x/denied opens {}; {run}", direct.0, direct.1);
        eprintln!("{report}");
        let ok = direct == (true, false)
            && run.dnat.0 + run.dnat.1 == SERVICE_CONNECTIONS as u64
            && run.opened.1 == 0
            && run.opened.0 as u64 == run.dnat.0
            && run.dnat.0 == half
            && run.echoed == run.opened.0;
        if !ok {
            failures.push(report);
        }
    }
    assert!(
        failures.is_empty(),
        "expected through the ClusterIP: {SERVICE_CONNECTIONS} DNATed, {half} to x/allowed, all of those open and echo, none to x/denied opens:\n{}",
        failures.join("\n")
    );
}
