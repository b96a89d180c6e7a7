//! The conformance matrix on real namespaces, in the style of the upstream Kubernetes e2e
//! NetworkPolicy tests: namespaces x, y, z; pods a, b, c; servers on 80 and 81 over TCP, UDP
//! and SCTP; every case's expected reachability an explicit truth table (see `cases.rs`). Run
//! on both node shapes: a bridge (Flannel's cni0) and routed /32 veths (kindnet).

#[path = "conformance/cases.rs"]
mod cases;

use std::{collections::BTreeMap, net::IpAddr};

use cases::{Case, Probe, CASES};
use netpol_agent::{
    tools::explain::{explain, Endpoint, PortQuery},
    source::manifests::load_dir,
    model::ClusterState,

};
use netpol_sandbox::{privileged, probe, Cluster, Protocol, Shape};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const PORTS: &[(&str, u16, &str)] = &[
    ("serve-80-tcp", 80, "TCP"),
    ("serve-81-tcp", 81, "TCP"),
    ("serve-80-udp", 80, "UDP"),
    ("serve-81-udp", 81, "UDP"),
    ("serve-80-sctp", 80, "SCTP"),
    ("serve-81-sctp", 81, "SCTP"),
];

/// The upstream layout on one node of `shape`, with the agent running and synced.
fn xyz(shape: Shape) -> Cluster {
    let mut c = Cluster::new(&[shape]).expect("node");
    for ns in NAMESPACES {
        c.namespace(ns, &[("ns", ns)]).expect("namespace");
        for pod in PODS {
            c.add_pod(0, ns, pod, &[("pod", pod)], PORTS).expect("pod");
        }
    }
    c.start_agent(0, &[]).expect("agent");
    c.sync().expect("first sync");
    c
}

/// Fills `{x/b}`, `{x/b6}` and `{x/b/24}` placeholders with the sandbox's addresses.
fn render(c: &Cluster, policy: &str) -> String {
    let mut out = policy.to_string();
    for ns in NAMESPACES {
        for pod in PODS {
            let p = c.pod(ns, pod);
            let o = p.ipv4.octets();
            out = out
                .replace(&format!("{{{ns}/{pod}/24}}"), &format!("{}.{}.{}.0/24", o[0], o[1], o[2]))
                .replace(&format!("{{{ns}/{pod}6}}"), &p.ipv6.to_string())
                .replace(&format!("{{{ns}/{pod}}}"), &p.ipv4.to_string());
        }
    }
    out
}

fn all_pods() -> Vec<(&'static str, &'static str)> {
    NAMESPACES.iter().flat_map(|ns| PODS.iter().map(move |p| (*ns, *p))).collect()
}

/// Parses a truth table into `expected[from][to]`.
fn parse_table(table: &str) -> Vec<Vec<bool>> {
    let rows: Vec<Vec<bool>> =
        table.lines().filter(|l| !l.trim().is_empty()).map(|l| l.split_whitespace().map(|c| c == ".").collect()).collect();
    assert!(rows.len() == 9 && rows.iter().all(|r| r.len() == 9), "a truth table is 9 x 9:\n{table}");
    rows
}

/// What one table's check counted.
#[derive(Default)]
struct Counts {
    /// Real probes made.
    probes: usize,
    /// Of those, how many `explain` answered the same as the probe.
    explain_agrees: usize,
}

/// Probes every pair but the diagonal, and asks `explain` about each probe (the same source
/// and destination addresses, port and protocol) on `state`, the manifests the agent enforces;
/// returns the counts and a report of the cells where the table, the measurement and explain
/// do not all agree.
fn check(c: &Cluster, state: &ClusterState, p: Probe, table: &str) -> (Counts, Option<String>) {
    let expected = parse_table(table);
    let pods = all_pods();
    let protocol = Protocol::parse(p.protocol);
    let query = PortQuery { protocol: netpol_agent::model::Protocol::parse(Some(p.protocol)).expect("a known protocol"), port: Some(p.port) };
    let mut probes = Vec::new();
    let mut cells = Vec::new();
    let mut explained = vec![vec![true; 9]; 9];
    let mut unexplained = vec![vec![false; 9]; 9];
    let mut errors = Vec::new();
    for (i, from) in pods.iter().enumerate() {
        for (j, to) in pods.iter().enumerate() {
            if i != j {
                let target = c.target(to.0, to.1, p.port, protocol, p.ipv6);
                let src = c.pod(from.0, from.1);
                let src_ip = if p.ipv6 { IpAddr::V6(src.ipv6) } else { IpAddr::V4(src.ipv4) };
                match explain(state, &Endpoint::Ip(src_ip), &Endpoint::Ip(target.addr), query) {
                    Ok(e) => explained[i][j] = e.allowed,
                    Err(e) => {
                        unexplained[i][j] = true;
                        errors.push(format!("explain {src_ip} -> {} {query}: {e}", target.addr));
                    }
                }
                probes.push((src.netns.clone(), target));
                cells.push((i, j));
            }
        }
    }
    let results = probe::probe_many(&probes);
    let mut actual = vec![vec![true; 9]; 9];
    for ((i, j), ok) in cells.iter().zip(&results) {
        actual[*i][*j] = *ok;
    }
    let explain_agrees = cells.iter().filter(|(i, j)| !unexplained[*i][*j] && explained[*i][*j] == actual[*i][*j]).count();
    let counts = Counts { probes: probes.len(), explain_agrees };
    if actual == expected && explained == actual && errors.is_empty() {
        return (counts, None);
    }
    let mut report = format!("{} {} (ipv6: {}): expected | measured | explain (rows: from, columns: to)\n", p.protocol, p.port, p.ipv6);
    for (i, from) in pods.iter().enumerate() {
        let cell = |v: &Vec<Vec<bool>>, j: usize| if v[i][j] { '.' } else { 'X' };
        let e: String = (0..9).map(|j| cell(&expected, j)).collect();
        let a: String = (0..9).map(|j| cell(&actual, j)).collect();
        let x: String = (0..9).map(|j| if unexplained[i][j] { '?' } else { cell(&explained, j) }).collect();
        let mark = if e == a && a == x { "" } else { "   <-" };
        report.push_str(&format!("{:>4}  {e} | {a} | {x}{mark}\n", format!("{}/{}", from.0, from.1)));
    }
    for e in &errors {
        report.push_str(&format!("  {e}\n"));
    }
    (counts, Some(report))
}

fn run_cases(shape: Shape) {
    if !privileged() {
        return;
    }
    let mut c = xyz(shape);
    let mut failures = Vec::new();
    let mut total = Counts::default();
    let mut tables = 0;
    for case in CASES {
        let Case { name, policies, tables: case_tables } = case;
        let rendered: Vec<String> = policies.iter().map(|p| render(&c, p)).collect();
        c.set_policies(&rendered).expect("write policies");
        c.sync().expect("agent applies the case");
        let status = c.agent(0).status().expect("status");
        assert_eq!(status["problems"], serde_json::json!([]), "{name}: the case's policies are valid");
        // The state explain is asked about: the very manifests the agent has applied. No case
        // depends on node addresses or host traffic (every probe is pod to pod), so none is
        // skipped.
        let loaded = load_dir(c.manifests.path()).expect("read the manifests");
        assert_eq!(status["manifest_digest"], loaded.digest.as_str(), "{name}: explain reads what the agent enforces");
        assert!(loaded.problems.is_empty(), "{name}: {:?}", loaded.problems);
        for (p, table) in *case_tables {
            let (n, report) = check(&c, &loaded.state, *p, table);
            total.probes += n.probes;
            total.explain_agrees += n.explain_agrees;
            tables += 1;
            if let Some(r) = report {
                failures.push(format!("{name}\n{r}"));
            }
        }
    }
    eprintln!(
        "{shape:?}: {} cases, {tables} tables, {} probes, explain agrees with {} of them, {} tables wrong",
        CASES.len(),
        total.probes,
        total.explain_agrees,
        failures.len()
    );
    assert!(failures.is_empty(), "{} tables differ:\n\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn conformance_matrix_on_a_bridge_node() {
    run_cases(Shape::Bridge);
}

#[test]
fn conformance_matrix_on_a_routed_node() {
    run_cases(Shape::Routed);
}

fn policy(name: &str, spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\nspec:\n{spec}")
}

#[test]
fn policy_updates_apply_while_running_and_cut_or_keep_open_connections() {
    if !privileged() {
        return;
    }
    for shape in [Shape::Bridge, Shape::Routed] {
        let mut c = xyz(shape);
        let tcp = |c: &Cluster, from: &str| c.probe(("x", from), ("x", "a"), 80, Protocol::Tcp, false);
        let mut held = c.open_connection(("x", "b"), ("x", "a")).expect("the connection opens");
        assert!(held.works());

        // Add: only x/b may reach x/a. The open connection from x/b keeps working.
        c.set_policies(&[policy("allow-b", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n")]).expect("write");
        c.sync().expect("sync");
        assert!(tcp(&c, "b"), "{shape:?}: b allowed");
        assert!(!tcp(&c, "c"), "{shape:?}: c denied");
        assert!(held.works(), "{shape:?}: an allowed open connection survives a policy change");

        // Change: now only x/c. The open connection from x/b is cut.
        c.set_policies(&[policy("allow-b", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}]}]\n")]).expect("write");
        c.sync().expect("sync");
        assert!(!tcp(&c, "b"), "{shape:?}: b denied after the change");
        assert!(tcp(&c, "c"), "{shape:?}: c allowed after the change");
        assert!(!held.works(), "{shape:?}: withdrawing the allow stops the open connection too");

        // Label change on a pod: x/b becomes pod=c and is admitted.
        c.set_pod_labels("x", "b", &[("pod", "c")]).expect("relabel");
        c.sync().expect("sync");
        assert!(tcp(&c, "b"), "{shape:?}: relabelled x/b now matches");

        // Label change on a namespace: admit namespace y by a label it gets later.
        c.set_policies(&[policy("allow-team", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]\n")]).expect("write");
        c.sync().expect("sync");
        assert!(!c.probe(("y", "a"), ("x", "a"), 80, Protocol::Tcp, false), "{shape:?}: y has no team label yet");
        c.namespace("y", &[("ns", "y"), ("team", "blue")]).expect("label namespace");
        c.sync().expect("sync");
        assert!(c.probe(("y", "a"), ("x", "a"), 80, Protocol::Tcp, false), "{shape:?}: y labelled team=blue is admitted");
        assert!(!c.probe(("z", "a"), ("x", "a"), 80, Protocol::Tcp, false), "{shape:?}: z is not");

        // Delete: everything opens again.
        c.set_policies(&[]).expect("write");
        c.sync().expect("sync");
        assert!(tcp(&c, "c") && c.probe(("z", "a"), ("x", "a"), 80, Protocol::Tcp, false), "{shape:?}: open again");
    }
}

#[test]
fn a_pod_created_after_the_agent_started_is_enforced() {
    if !privileged() {
        return;
    }
    for shape in [Shape::Bridge, Shape::Routed] {
        let mut c = Cluster::new(&[shape]).expect("node");
        c.namespace("x", &[]).expect("ns");
        c.add_pod(0, "x", "a", &[("pod", "a")], PORTS).expect("pod");
        c.set_policies(&[policy("deny", "  podSelector: {}\n")]).expect("write");
        c.start_agent(0, &[]).expect("agent");
        c.sync().expect("sync");
        c.add_pod(0, "x", "late", &[("pod", "late")], PORTS).expect("late pod");
        c.sync().expect("the late pod gets attached");
        assert!(!c.probe(("x", "a"), ("x", "late"), 80, Protocol::Tcp, false), "{shape:?}: default deny covers the late pod");
        assert!(!c.probe(("x", "late"), ("x", "a"), 80, Protocol::Tcp, false), "{shape:?}: and protects a from it");
        c.remove_pod("x", "late").expect("remove");
        c.sync().expect("sync after removal");
    }
}

#[test]
fn the_node_reaches_isolated_pods_unless_told_not_to() {
    if !privileged() {
        return;
    }
    for (args, allowed) in [(&[][..], true), (&["--no-host-access"][..], false)] {
        let mut c = Cluster::new(&[Shape::Bridge]).expect("node");
        c.namespace("x", &[]).expect("ns");
        c.add_pod(0, "x", "a", &[("pod", "a")], PORTS).expect("pod");
        c.set_policies(&[policy("deny", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n")]).expect("write");
        c.start_agent(0, args).expect("agent");
        c.sync().expect("sync");
        let target = c.target("x", "a", 80, Protocol::Tcp, false);
        assert_eq!(probe::probe(&c.nodes[0].netns, &target), allowed, "node -> pod with {args:?}");
    }
}

#[test]
fn bad_input_is_reported_by_name_and_everything_else_stays_enforced() {
    if !privileged() {
        return;
    }
    let mut c = Cluster::new(&[Shape::Routed]).expect("node");
    c.namespace("x", &[]).expect("ns");
    c.add_pod(0, "x", "a", &[("pod", "a")], PORTS).expect("pod");
    c.add_pod(0, "x", "b", &[("pod", "b")], PORTS).expect("pod");
    c.set_policies(&[
        policy("deny", "  podSelector: {matchLabels: {pod: a}}\n"),
        policy("bad-cidr", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/40}}]}]\n"),
        policy("bad-protocol", "  podSelector: {}\n  ingress: [{ports: [{protocol: ICMP, port: 1}]}]\n"),
    ])
    .expect("write");
    c.manifests.write("broken.yaml", "kind: NetworkPolicy\nmetadata: {name: [\n").expect("write");
    c.manifests.write("zz-duplicate.yaml", &policy("deny", "  podSelector: {}\n")).expect("write");
    c.start_agent(0, &[]).expect("agent");
    let status = c.agent(0).wait_synced(cluster_timeout()).expect("sync despite bad input");
    let problems: BTreeMap<String, String> = status["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| (p["object"].as_str().unwrap_or_default().to_string(), p["reason"].as_str().unwrap_or_default().to_string()))
        .collect();
    assert!(problems["NetworkPolicy x/bad-cidr"].contains("not a CIDR"), "{problems:?}");
    assert!(problems["NetworkPolicy x/bad-protocol"].contains("unknown protocol"), "{problems:?}");
    assert!(problems["NetworkPolicy x/deny"].contains("duplicate"), "{problems:?}");
    assert!(problems.keys().any(|k| k.contains("broken.yaml")), "{problems:?}");
    assert!(!c.probe(("x", "b"), ("x", "a"), 80, Protocol::Tcp, false), "the valid policy is enforced");
    assert!(c.probe(("x", "a"), ("x", "b"), 80, Protocol::Tcp, false), "x/b is not isolated");
    c.manifests.remove("broken.yaml").expect("remove");
    c.sync().expect("the agent keeps running and syncing");
}

fn cluster_timeout() -> std::time::Duration {
    netpol_sandbox::cluster::SYNC_TIMEOUT
}

#[test]
fn a_pod_cannot_pass_as_another_pod_by_forging_its_source_address() {
    if !privileged() {
        return;
    }
    let mut c = Cluster::new(&[Shape::Bridge]).expect("node");
    c.namespace("x", &[]).expect("ns");
    for p in ["a", "b", "c"] {
        c.add_pod(0, "x", p, &[("pod", p)], PORTS).expect("pod");
    }
    let (a, b) = (c.pod("x", "a").ipv4, c.pod("x", "b").ipv4);
    let sink = c.target("x", "a", 80, Protocol::Sctp, false).sctp_sink.expect("sink");
    let forged = |c: &Cluster| {
        let tag = probe::send_forged_sctp(&c.pod("x", "c").netns, b, a, 80).expect("send");
        probe::sctp_seen(&sink, tag, 80)
    };
    // Control: with nothing enforcing, a forged packet from x/c does arrive at x/a.
    assert!(forged(&c), "without netpol the forged packet arrives (else this test proves nothing)");
    c.set_policies(&[policy("only-b", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n")]).expect("write");
    c.start_agent(0, &[]).expect("agent");
    c.sync().expect("sync");
    assert!(c.probe(("x", "b"), ("x", "a"), 80, Protocol::Sctp, false), "the real x/b is admitted");
    assert!(!c.probe(("x", "c"), ("x", "a"), 80, Protocol::Sctp, false), "x/c under its own address is not");
    assert!(!forged(&c), "x/c with x/b's address is dropped");
}
