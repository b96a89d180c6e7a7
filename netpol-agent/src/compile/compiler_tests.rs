//! Table-driven tests of the compiler against the NetworkPolicy API text. Every case builds a
//! cluster (pods from small builders, policies from YAML), compiles it for node `n1`, and asks
//! [`crate::compile::eval::allows`] (the classifier's new-flow decision evaluated over the compiled maps)
//! for a verdict per flow. Case names read as sentences of the spec.
//!
//! Addresses: pods and nodes live in 198.18.0.0/15 and fd00:198:18::/48; "outside the cluster"
//! is 203.0.113.0/24, 198.51.100.0/24 and 2001:db8::/32 (documentation ranges, never contacted).

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::{
    core::v1::{Namespace as K8sNamespace, Pod as K8sPod},
    networking::v1::NetworkPolicy,
};
use netpol_common::{DIR_EGRESS, DIR_INGRESS, IDENTITY_ANY, IDENTITY_FIRST_CIDR, IDENTITY_HOST, POLICY_PREFIX_PEER};
use serde_json::json;

use crate::{
    compile::{kernel::ip_key, CompileOptions, Compiler, Desired}, model::Direction,
    compile::eval::{allows, Flow},
    model::{namespace_from_k8s, pod_from_k8s, policy_from_k8s, ClusterState, Namespace, ObjectRef, Pod, Policy, Problem},

};

const NODE: &str = "n1";
const OTHER_NODE: &str = "n2";
const HOST: &str = "198.18.255.1";
const HOST6: &str = "fd00:198:18:ffff::1";
const OUTSIDE: &str = "203.0.113.7";
const OUTSIDE6: &str = "2001:db8::7";

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

const IN: Direction = Direction::Ingress;
const OUT: Direction = Direction::Egress;
const ALLOW: bool = true;
const DENY: bool = false;

/// One row of a truth table: direction, peer (an address, `ns/name` for a pod's first address,
/// `ns/name@6` for its IPv6 address), protocol, port, expected verdict.
type Row<'a> = (Direction, &'a str, u8, u16, bool);

// ---------------------------------------------------------------------------------------------
// Builders.

/// A pod under construction; converted through [`pod_from_k8s`] like every real one.
#[derive(Clone, Debug)]
struct PodBuilder {
    namespace: String,
    name: String,
    node: String,
    labels: BTreeMap<String, String>,
    ips: Vec<String>,
    ports: Vec<(String, u16, String)>,
    host_network: bool,
    phase: Option<String>,
}

fn pod(namespace: &str, name: &str) -> PodBuilder {
    PodBuilder {
        namespace: namespace.into(),
        name: name.into(),
        node: NODE.into(),
        labels: BTreeMap::new(),
        ips: Vec::new(),
        ports: Vec::new(),
        host_network: false,
        phase: None,
    }
}

impl PodBuilder {
    fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }

    fn ip(mut self, ip: &str) -> Self {
        self.ips.push(ip.into());
        self
    }

    fn port(mut self, name: &str, number: u16, protocol: &str) -> Self {
        self.ports.push((name.into(), number, protocol.into()));
        self
    }

    fn node(mut self, node: &str) -> Self {
        self.node = node.into();
        self
    }

    fn host_network(mut self) -> Self {
        self.host_network = true;
        self
    }

    fn phase(mut self, phase: &str) -> Self {
        self.phase = Some(phase.into());
        self
    }

    fn k8s(&self) -> K8sPod {
        let ports: Vec<_> = self
            .ports
            .iter()
            .map(|(name, number, protocol)| json!({"name": name, "containerPort": number, "protocol": protocol}))
            .collect();
        let ips: Vec<_> = self.ips.iter().map(|ip| json!({"ip": ip})).collect();
        let mut status = json!({"podIPs": ips});
        if let Some(first) = self.ips.first() {
            status["podIP"] = json!(first);
        }
        if let Some(phase) = &self.phase {
            status["phase"] = json!(phase);
        }
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"namespace": self.namespace, "name": self.name, "labels": self.labels},
            "spec": {
                "nodeName": self.node,
                "hostNetwork": self.host_network,
                "containers": [{"name": "main", "image": "registry.invalid/main", "ports": ports}],
            },
            "status": status,
        }))
        .expect("the builder writes a valid Pod")
    }

    fn build(&self) -> Pod {
        pod_from_k8s(&self.k8s(), "default")
            .unwrap_or_else(|p| panic!("pod {}/{} rejected: {p}", self.namespace, self.name))
            .unwrap_or_else(|| panic!("pod {}/{} takes no part in policy", self.namespace, self.name))
    }
}

fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let ns: K8sNamespace = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    }))
    .expect("the builder writes a valid Namespace");
    namespace_from_k8s(&ns).unwrap_or_else(|p| panic!("namespace {name} rejected: {p}"))
}

/// A NetworkPolicy from YAML (`apiVersion` and `kind` may be left out).
fn k8s_policy(yaml: &str) -> NetworkPolicy {
    let mut value: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("bad test YAML: {e}\n{yaml}"));
    let map = value.as_mapping_mut().expect("a policy is a YAML mapping");
    map.entry("apiVersion".into()).or_insert("networking.k8s.io/v1".into());
    map.entry("kind".into()).or_insert("NetworkPolicy".into());
    serde_yaml::from_value(value).unwrap_or_else(|e| panic!("not a NetworkPolicy: {e}\n{yaml}"))
}

fn policy(yaml: &str) -> Policy {
    policy_from_k8s(&k8s_policy(yaml), "default").unwrap_or_else(|p| panic!("policy rejected: {p}\n{yaml}"))
}

fn problem(yaml: &str) -> Problem {
    match policy_from_k8s(&k8s_policy(yaml), "default") {
        Ok(p) => panic!("policy accepted, expected a problem: {p:?}\n{yaml}"),
        Err(p) => p,
    }
}

/// A cluster and the options to compile it with.
#[derive(Clone, Debug)]
struct Cluster {
    state: ClusterState,
    opts: CompileOptions,
}

impl Cluster {
    /// Nothing but the node's own addresses.
    fn empty() -> Self {
        Self {
            state: ClusterState::default(),
            opts: CompileOptions {
                node: NODE.into(),
                host_ips: vec![HOST.parse().expect("HOST"), HOST6.parse().expect("HOST6")],
                allow_host: false,
            },
        }
    }

    fn with_namespace(mut self, ns: Namespace) -> Self {
        self.state.namespaces.insert(ns.name.clone(), ns);
        self
    }

    fn with_pod(mut self, p: PodBuilder) -> Self {
        let p = p.build();
        self.state.pods.insert(p.id.clone(), p);
        self
    }

    fn with_policy(mut self, yaml: &str) -> Self {
        let p = policy(yaml);
        self.state.policies.insert(p.id.clone(), p);
        self
    }

    fn allow_host(mut self, on: bool) -> Self {
        self.opts.allow_host = on;
        self
    }

    /// Compiles with a fresh compiler.
    fn compile(&self) -> Net<'_> {
        self.compile_with(&mut Compiler::new())
    }

    /// Compiles with `compiler` (which keeps its numbers from earlier compilations).
    fn compile_with(&self, compiler: &mut Compiler) -> Net<'_> {
        let desired = compiler.compile(&self.state, &self.opts);
        check_invariants(&desired);
        Net { cluster: self, desired }
    }
}

/// The standard cluster. Local pods (node n1): a/x, a/y, b/z. Namespaces a (team=alpha,
/// env=prod), b (team=beta, env=dev), c (no labels), and d, which has pods but no Namespace
/// object.
fn cluster() -> Cluster {
    Cluster::empty()
        .with_namespace(namespace("a", &[("team", "alpha"), ("env", "prod")]))
        .with_namespace(namespace("b", &[("team", "beta"), ("env", "dev")]))
        .with_namespace(namespace("c", &[]))
        .with_pod(
            pod("a", "x")
                .label("pod", "x")
                .label("app", "web")
                .ip("198.18.0.10")
                .ip("fd00:198:18::10")
                .port("http", 80, "TCP")
                .port("metrics", 9090, "TCP")
                .port("dns", 53, "UDP"),
        )
        .with_pod(pod("a", "y").label("pod", "y").label("app", "db").ip("198.18.0.11").ip("fd00:198:18::11").port("http", 8080, "TCP"))
        .with_pod(pod("a", "w").label("pod", "w").ip("198.18.1.12").node(OTHER_NODE))
        .with_pod(
            pod("b", "x")
                .label("pod", "x")
                .label("app", "web")
                .ip("198.18.1.20")
                .ip("fd00:198:18:1::20")
                .port("http", 80, "TCP")
                .node(OTHER_NODE),
        )
        .with_pod(pod("b", "z").label("pod", "z").label("app", "db").ip("198.18.0.21"))
        .with_pod(pod("c", "v").label("pod", "v").label("app", "web").ip("198.18.1.30").node(OTHER_NODE))
        .with_pod(pod("d", "u").label("pod", "u").ip("198.18.1.40").node(OTHER_NODE))
}

/// A compiled cluster.
struct Net<'a> {
    cluster: &'a Cluster,
    desired: Desired,
}

impl Net<'_> {
    fn addr(&self, who: &str) -> IpAddr {
        if let Ok(ip) = who.parse() {
            return ip;
        }
        let (name, v6) = who.strip_suffix("@6").map_or((who, false), |n| (n, true));
        let (ns, name) = name.split_once('/').unwrap_or_else(|| panic!("{who:?} is neither an address nor ns/name"));
        let p = self.cluster.state.pods.get(&ObjectRef::new(ns, name)).unwrap_or_else(|| panic!("no pod {who}"));
        p.ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv6() == v6)
            .unwrap_or_else(|| panic!("pod {who} has no IPv{} address", if v6 { 6 } else { 4 }))
    }

    fn pod_ref(pod: &str) -> ObjectRef {
        let (ns, name) = pod.split_once('/').unwrap_or_else(|| panic!("{pod:?} is not ns/name"));
        ObjectRef::new(ns, name)
    }

    fn verdict(&self, pod: &str, (direction, peer, protocol, port): (Direction, &str, u8, u16)) -> bool {
        let flow = Flow { direction, peer: self.addr(peer), protocol, port };
        allows(&self.desired, &Self::pod_ref(pod), &flow).unwrap_or_else(|| panic!("{pod} is not a local endpoint"))
    }

    /// Checks every row, and reports all the rows that disagree at once.
    fn expect(&self, pod: &str, table: &[Row<'_>]) {
        let wrong: Vec<String> = table
            .iter()
            .filter(|(d, peer, proto, port, want)| self.verdict(pod, (*d, peer, *proto, *port)) != *want)
            .map(|(d, peer, proto, port, want)| {
                format!("  {d:?} {peer} ({}) proto {proto} port {port}: want {}", self.addr(peer), if *want { "ALLOW" } else { "DENY" })
            })
            .collect();
        assert!(wrong.is_empty(), "pod {pod}: wrong verdicts\n{}\nendpoint: {:?}", wrong.join("\n"), self.endpoint(pod));
    }

    fn endpoint(&self, pod: &str) -> &crate::compile::EndpointPlan {
        self.desired.endpoints.get(&Self::pod_ref(pod)).unwrap_or_else(|| panic!("{pod} is not a local endpoint"))
    }

    fn isolation(&self, pod: &str) -> (bool, bool) {
        let ep = self.endpoint(pod);
        (ep.ingress_isolated, ep.egress_isolated)
    }

    fn entries(&self, pod: &str) -> usize {
        self.desired.policy.of_endpoint(self.endpoint(pod).id).count()
    }

    fn identity_of(&self, who: &str) -> u32 {
        *self.desired.ipcache.get(&ip_key(&self.addr(who))).unwrap_or_else(|| panic!("{who} not in the ipcache"))
    }
}

/// What must hold for every compilation, whatever the input.
fn check_invariants(d: &Desired) {
    let endpoint_ids: Vec<u32> = d.endpoints.values().map(|e| e.id).collect();
    let mut unique = endpoint_ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), endpoint_ids.len(), "endpoint ids are unique: {endpoint_ids:?}");
    let known_identity = |id: u32| id == IDENTITY_ANY || id == IDENTITY_HOST || d.identities.contains_key(&id) || d.cidrs.values().any(|c| *c == id);
    let known_rule = |rule: u32| rule == 0 || d.rules.contains_key(&rule);
    for (k, v) in &d.policy.peers {
        assert!(endpoint_ids.contains(&k.endpoint), "peer rules {k:?} of an unknown endpoint");
        assert!(known_identity(k.identity), "peer rules {k:?} name identity {}, which nothing stands for", k.identity);
        assert!(known_rule(v.rule), "peer rules {k:?} name rule {} of {}", v.rule, d.rules.len());
    }
    let peer_bits = |k: &netpol_common::PolicyKey| {
        let peer = netpol_common::PeerKey { endpoint: k.endpoint, identity: k.identity, direction: k.direction, _pad: 0, _pad2: 0 };
        let rules = d.policy.peers.get(&peer).unwrap_or_else(|| panic!("entry {k:?} has no peer rules to send lookups to it"));
        (rules.ports, rules.ranges, netpol_common::proto_bit(k.protocol))
    };
    for (k, v) in &d.policy.ports {
        let (ports, _, bit) = peer_bits(k);
        assert!(ports & bit != 0, "port entry {k:?}: its peer rules send no port lookups for its protocol");
        assert!(known_rule(v.rule), "port entry {k:?} names rule {} of {}", v.rule, d.rules.len());
    }
    for (k, v) in &d.policy.ranges {
        let (_, ranges, bit) = peer_bits(&k.key);
        assert!(ranges & bit != 0, "range entry {k:?}: its peer rules send no range lookups for its protocol");
        assert!(k.prefix_len > POLICY_PREFIX_PEER + 8 && k.prefix_len < POLICY_PREFIX_PEER + 24, "range entry {k:?} is a port prefix");
        // Bits beyond the prefix are zero: one LPM entry has exactly one key.
        let port_bits = k.prefix_len - 80;
        let mask: u16 = if port_bits == 0 { 0 } else { u16::MAX << (16 - port_bits) };
        assert_eq!(u16::from_be(k.key.port_be) & !mask, 0, "entry {k:?} has port bits beyond its prefix");
        assert!(known_rule(v.rule), "range entry {k:?} names rule {} of {}", v.rule, d.rules.len());
    }
    for id in d.ipcache.values() {
        assert!(*id == IDENTITY_HOST || d.identities.contains_key(id), "ipcache identity {id} stands for nothing");
    }
    for id in d.cidrs.values() {
        assert!(*id >= IDENTITY_FIRST_CIDR, "CIDR identity {id} below the CIDR range");
    }
}

// ---------------------------------------------------------------------------------------------
// No policy, and isolation.

#[test]
fn without_any_policy_every_flow_is_allowed() {
    let c = cluster();
    let net = c.compile();
    assert!(net.desired.policy.is_empty(), "no policy, no entries");
    for p in ["a/x", "a/y", "b/z"] {
        assert_eq!(net.isolation(p), (false, false), "{p} is not isolated");
        net.expect(
            p,
            &[
                (IN, "b/x", TCP, 80, ALLOW),
                (IN, OUTSIDE, UDP, 53, ALLOW),
                (IN, HOST, ICMP, 0, ALLOW),
                (IN, OUTSIDE6, ICMPV6, 0, ALLOW),
                (OUT, OUTSIDE, TCP, 443, ALLOW),
                (OUT, "c/v", SCTP, 7, ALLOW),
            ],
        );
    }
    assert!(!net.desired.endpoints.contains_key(&ObjectRef::new("b", "x")), "pods of other nodes are not endpoints");
}

#[test]
fn a_pod_not_selected_by_any_policy_is_not_isolated() {
    let c = cluster().with_policy(
        r"
metadata: {name: deny-y, namespace: a}
spec:
  podSelector: {matchLabels: {pod: y}}
  policyTypes: [Ingress, Egress]
",
    );
    let net = c.compile();
    assert_eq!(net.isolation("a/x"), (false, false));
    assert_eq!(net.isolation("a/y"), (true, true));
    net.expect("a/x", &[(IN, "a/y", TCP, 80, ALLOW), (IN, OUTSIDE, TCP, 80, ALLOW), (OUT, OUTSIDE, UDP, 53, ALLOW)]);
    net.expect("a/y", &[(IN, "a/x", TCP, 80, DENY), (IN, OUTSIDE, TCP, 80, DENY), (OUT, OUTSIDE, UDP, 53, DENY)]);
}

#[test]
fn isolation_is_per_direction_an_ingress_policy_leaves_egress_open() {
    let c = cluster().with_policy(
        r"
metadata: {name: from-y, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: y}}}]
",
    );
    let net = c.compile();
    assert_eq!(net.isolation("a/x"), (true, false));
    net.expect(
        "a/x",
        &[
            (IN, "a/y", TCP, 80, ALLOW),
            (IN, "b/x", TCP, 80, DENY),
            (IN, OUTSIDE, TCP, 80, DENY),
            (OUT, OUTSIDE, TCP, 443, ALLOW),
            (OUT, "b/x", UDP, 53, ALLOW),
        ],
    );
}

#[test]
fn isolation_is_per_direction_an_egress_policy_leaves_ingress_open() {
    let c = cluster().with_policy(
        r"
metadata: {name: to-y, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {pod: y}}}]
",
    );
    let net = c.compile();
    assert_eq!(net.isolation("a/x"), (false, true));
    net.expect(
        "a/x",
        &[
            (OUT, "a/y", TCP, 5432, ALLOW),
            (OUT, "b/x", TCP, 80, DENY),
            (OUT, OUTSIDE, TCP, 443, DENY),
            (IN, OUTSIDE, TCP, 80, ALLOW),
            (IN, "b/x", UDP, 53, ALLOW),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Default deny and policyTypes defaulting.

#[test]
fn default_deny_ingress_denies_every_ingress_flow_and_leaves_egress_open() {
    let c = cluster().with_policy(
        r"
metadata: {name: default-deny-ingress, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Ingress]
",
    );
    let net = c.compile();
    for p in ["a/x", "a/y"] {
        assert_eq!(net.isolation(p), (true, false), "{p}");
        assert_eq!(net.entries(p), 0, "{p}: deny is the absence of entries");
    }
    let table = [
        (IN, "a/y", TCP, 80, DENY),
        (IN, "b/x", TCP, 80, DENY),
        (IN, OUTSIDE, UDP, 53, DENY),
        (IN, HOST, TCP, 10250, DENY),
        (IN, "a/y", ICMP, 0, DENY),
        (OUT, OUTSIDE, TCP, 443, ALLOW),
        (OUT, "b/x", TCP, 80, ALLOW),
    ];
    net.expect("a/x", &table);
    net.expect("b/z", &[(IN, "a/y", TCP, 80, ALLOW), (IN, OUTSIDE, TCP, 80, ALLOW)]);
}

#[test]
fn default_deny_egress_denies_every_egress_flow_and_leaves_ingress_open() {
    let c = cluster().with_policy(
        r"
metadata: {name: default-deny-egress, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Egress]
",
    );
    let net = c.compile();
    assert_eq!(net.isolation("a/x"), (false, true));
    assert_eq!(net.isolation("a/y"), (false, true));
    net.expect(
        "a/x",
        &[
            (OUT, "a/y", TCP, 80, DENY),
            (OUT, OUTSIDE, TCP, 443, DENY),
            (OUT, HOST, UDP, 53, DENY),
            (OUT, OUTSIDE6, ICMPV6, 0, DENY),
            (IN, OUTSIDE, TCP, 80, ALLOW),
            (IN, "a/y", TCP, 80, ALLOW),
        ],
    );
    net.expect("b/z", &[(OUT, OUTSIDE, TCP, 443, ALLOW)]);
}

#[test]
fn default_deny_in_both_directions_denies_everything_of_the_namespace_only() {
    let c = cluster().with_policy(
        r"
metadata: {name: default-deny-all, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
",
    );
    let net = c.compile();
    for p in ["a/x", "a/y"] {
        assert_eq!(net.isolation(p), (true, true), "{p}");
        net.expect(
            p,
            &[
                (IN, "a/w", TCP, 80, DENY),
                (IN, OUTSIDE, TCP, 80, DENY),
                (OUT, "a/w", TCP, 80, DENY),
                (OUT, OUTSIDE6, TCP, 443, DENY),
            ],
        );
    }
    net.expect("b/z", &[(IN, "a/x", TCP, 80, ALLOW), (OUT, "a/x", TCP, 80, ALLOW)]);
}

#[test]
fn an_empty_ingress_list_and_an_absent_one_both_deny_all_ingress() {
    let empty = cluster().with_policy(
        r"
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress: []
",
    );
    let absent = cluster().with_policy(
        r"
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
",
    );
    let (e, a) = (empty.compile(), absent.compile());
    assert_eq!(e.desired, a.desired, "`ingress: []` and no ingress compile the same");
    for net in [&e, &a] {
        assert_eq!(net.isolation("a/x"), (true, false));
        net.expect("a/x", &[(IN, "a/y", TCP, 80, DENY), (IN, OUTSIDE, TCP, 80, DENY), (OUT, OUTSIDE, TCP, 80, ALLOW)]);
    }
}

#[test]
fn absent_policy_types_with_egress_rules_isolate_both_directions() {
    let yaml = r"
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  egress:
  - to: [{podSelector: {matchLabels: {pod: y}}}]
";
    let p = policy(yaml);
    assert!(p.isolates_ingress && p.isolates_egress, "defaulted to [Ingress, Egress]: {p:?}");
    let c = cluster().with_policy(yaml);
    let net = c.compile();
    assert_eq!(net.isolation("a/x"), (true, true));
    net.expect(
        "a/x",
        &[(OUT, "a/y", TCP, 80, ALLOW), (OUT, "b/x", TCP, 80, DENY), (OUT, OUTSIDE, TCP, 80, DENY), (IN, "a/y", TCP, 80, DENY)],
    );
}

#[test]
fn absent_policy_types_with_an_empty_egress_list_isolate_only_ingress() {
    for yaml in [
        r"
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  egress: []
",
        // An empty policyTypes list is defaulted like an absent one.
        r"
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: []
  egress: []
",
    ] {
        let p = policy(yaml);
        assert!(p.isolates_ingress && !p.isolates_egress, "defaulted to [Ingress]: {p:?}");
        let c = cluster().with_policy(yaml);
        let net = c.compile();
        assert_eq!(net.isolation("a/x"), (true, false));
        net.expect("a/x", &[(IN, "a/y", TCP, 80, DENY), (OUT, "a/y", TCP, 80, ALLOW), (OUT, OUTSIDE, TCP, 80, ALLOW)]);
    }
}

#[test]
fn explicit_egress_policy_type_ignores_ingress_rules_and_leaves_ingress_open() {
    let c = cluster().with_policy(
        r"
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: y}}}]
  egress:
  - to: [{podSelector: {matchLabels: {pod: y}}}]
",
    );
    let net = c.compile();
    assert_eq!(net.isolation("a/x"), (false, true));
    assert!(net.desired.policy.peers.keys().all(|k| k.direction == DIR_EGRESS), "no ingress entries are written");
    net.expect(
        "a/x",
        &[(IN, "b/x", TCP, 80, ALLOW), (IN, OUTSIDE, TCP, 80, ALLOW), (OUT, "a/y", TCP, 80, ALLOW), (OUT, "b/x", TCP, 80, DENY)],
    );
}

#[test]
fn explicit_ingress_policy_type_ignores_egress_rules_and_leaves_egress_open() {
    let c = cluster().with_policy(
        r"
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: y}}}]
  egress:
  - to: [{podSelector: {matchLabels: {pod: y}}}]
",
    );
    let net = c.compile();
    assert_eq!(net.isolation("a/x"), (true, false));
    assert!(net.desired.policy.peers.keys().all(|k| k.direction == DIR_INGRESS), "no egress entries are written");
    net.expect(
        "a/x",
        &[(IN, "a/y", TCP, 80, ALLOW), (IN, "b/x", TCP, 80, DENY), (OUT, "b/x", TCP, 80, ALLOW), (OUT, OUTSIDE, TCP, 80, ALLOW)],
    );
}

// ---------------------------------------------------------------------------------------------
// Selectors.

#[test]
fn a_pod_selector_peer_allows_matching_pods_of_the_policy_namespace_only() {
    let c = cluster().with_policy(
        r"
metadata: {name: from-db, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: db}}}]
",
    );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, "a/y", TCP, 80, ALLOW),
            (IN, "a/y@6", TCP, 80, ALLOW),
            (IN, "b/z", TCP, 80, DENY), // app=db, but in namespace b
            (IN, "a/w", TCP, 80, DENY),
            (IN, OUTSIDE, TCP, 80, DENY),
        ],
    );
}

#[test]
fn a_namespace_selector_peer_allows_every_pod_of_the_matching_namespaces() {
    let c = cluster().with_policy(
        r"
metadata: {name: from-beta, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: beta}}}]
",
    );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, "b/x", TCP, 80, ALLOW),
            (IN, "b/x@6", UDP, 53, ALLOW),
            (IN, "b/z", TCP, 80, ALLOW),
            (IN, "a/y", TCP, 80, DENY), // the policy's own namespace is not team=beta
            (IN, "c/v", TCP, 80, DENY),
            (IN, OUTSIDE, TCP, 80, DENY),
        ],
    );
}

#[test]
fn namespace_and_pod_selector_in_one_peer_must_both_match() {
    let c = cluster().with_policy(
        r"
metadata: {name: web-of-beta, namespace: a}
spec:
  podSelector: {matchLabels: {pod: y}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: beta}}
      podSelector: {matchLabels: {app: web}}
",
    );
    let net = c.compile();
    net.expect(
        "a/y",
        &[
            (IN, "b/x", TCP, 80, ALLOW),
            (IN, "b/z", TCP, 80, DENY), // beta, but app=db
            (IN, "a/x", TCP, 80, DENY), // app=web, but alpha
            (IN, "c/v", TCP, 80, DENY), // app=web, but no team label
        ],
    );
}

#[test]
fn namespace_and_pod_selector_as_two_peers_either_matches() {
    let c = cluster().with_policy(
        r"
metadata: {name: web-or-beta, namespace: a}
spec:
  podSelector: {matchLabels: {pod: y}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: beta}}
    - podSelector: {matchLabels: {app: web}}
",
    );
    let net = c.compile();
    net.expect(
        "a/y",
        &[
            (IN, "b/x", TCP, 80, ALLOW),
            (IN, "b/z", TCP, 80, ALLOW), // beta
            (IN, "a/x", TCP, 80, ALLOW), // app=web in the policy's namespace
            (IN, "c/v", TCP, 80, DENY),  // app=web, but the pod selector alone means namespace a
            (IN, "a/w", TCP, 80, DENY),
            (IN, OUTSIDE, TCP, 80, DENY),
        ],
    );
}

#[test]
fn an_empty_pod_selector_selects_every_pod_in_the_namespace() {
    let c = cluster().with_policy(
        r"
metadata: {name: all-of-a, namespace: a}
spec:
  podSelector: {}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: w}}}]
",
    );
    let net = c.compile();
    for p in ["a/x", "a/y"] {
        assert_eq!(net.isolation(p), (true, false), "{p}");
        net.expect(p, &[(IN, "a/w", TCP, 80, ALLOW), (IN, "b/x", TCP, 80, DENY)]);
    }
    assert_eq!(net.isolation("b/z"), (false, false));
}

#[test]
fn an_empty_pod_selector_peer_allows_every_pod_of_the_policy_namespace() {
    let c = cluster().with_policy(
        r"
metadata: {name: same-namespace, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {}}]
  egress:
  - to: [{podSelector: {}}]
",
    );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, "a/y", TCP, 80, ALLOW),
            (IN, "a/w", UDP, 53, ALLOW),
            (IN, "b/x", TCP, 80, DENY),
            (IN, "d/u", TCP, 80, DENY),
            (IN, OUTSIDE, TCP, 80, DENY),
            (OUT, "a/w", TCP, 80, ALLOW),
            (OUT, "b/z", TCP, 80, DENY),
            (OUT, OUTSIDE, TCP, 80, DENY),
        ],
    );
}

#[test]
fn an_empty_namespace_selector_allows_all_pods_in_all_namespaces_but_not_external_ips() {
    let c = cluster().with_policy(
        r"
metadata: {name: cluster-only, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{namespaceSelector: {}}]
  egress:
  - to: [{namespaceSelector: {}}]
",
    );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, "a/y", TCP, 80, ALLOW),
            (IN, "b/x@6", TCP, 80, ALLOW),
            (IN, "c/v", TCP, 80, ALLOW),
            (IN, "d/u", TCP, 80, ALLOW), // a namespace the snapshot has no object for
            (IN, OUTSIDE, TCP, 80, DENY),
            (IN, OUTSIDE6, TCP, 80, DENY),
            (IN, HOST, TCP, 80, DENY),
            (OUT, "c/v", UDP, 53, ALLOW),
            (OUT, OUTSIDE, UDP, 53, DENY),
            (OUT, HOST, UDP, 53, DENY),
        ],
    );
}

#[test]
fn a_rule_without_from_or_to_allows_everyone_including_external_ips() {
    let c = cluster().with_policy(
        r"
metadata: {name: anyone, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Ingress, Egress]
  ingress:
  - {}
  egress:
  - ports: [{protocol: UDP, port: 53}]
",
    );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, "a/y", TCP, 80, ALLOW),
            (IN, OUTSIDE, TCP, 22, ALLOW),
            (IN, OUTSIDE6, SCTP, 9, ALLOW),
            (IN, HOST, ICMP, 0, ALLOW),
            (OUT, OUTSIDE, UDP, 53, ALLOW),
            (OUT, "c/v", UDP, 53, ALLOW),
            (OUT, OUTSIDE6, UDP, 53, ALLOW),
            (OUT, OUTSIDE, TCP, 53, DENY),
            (OUT, "c/v", UDP, 54, DENY),
        ],
    );
    // "If this field is empty or missing, this rule matches all sources": `from: []` too.
    let c = cluster().with_policy(
        r"
metadata: {name: empty-lists, namespace: a}
spec:
  podSelector: {matchLabels: {pod: y}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: []
    ports: [{port: 5432}]
  egress:
  - to: []
    ports: []
",
    );
    let net = c.compile();
    net.expect(
        "a/y",
        &[
            (IN, OUTSIDE, TCP, 5432, ALLOW),
            (IN, "b/x", TCP, 5432, ALLOW),
            (IN, OUTSIDE, TCP, 5433, DENY),
            (OUT, OUTSIDE6, UDP, 1, ALLOW),
            (OUT, OUTSIDE, ICMP, 0, ALLOW),
        ],
    );
}

#[test]
fn match_expressions_in_not_in_exists_and_does_not_exist_select_peers() {
    let base = Cluster::empty()
        .with_pod(pod("a", "t").label("pod", "t").ip("198.18.0.100"))
        .with_pod(pod("a", "p1").label("tier", "front").label("env", "prod").ip("198.18.0.101"))
        .with_pod(pod("a", "p2").label("tier", "back").label("env", "dev").ip("198.18.0.102"))
        .with_pod(pod("a", "p3").label("tier", "back").ip("198.18.0.103"))
        .with_pod(pod("a", "p4").label("env", "prod").ip("198.18.0.104"));
    let cases: &[(&str, &str, &[&str])] = &[
        ("In matches any of its values", "{key: tier, operator: In, values: [front, back]}", &["p1", "p2", "p3"]),
        ("NotIn matches other values and an absent key", "{key: env, operator: NotIn, values: [prod]}", &["p2", "p3"]),
        ("Exists matches any value", "{key: env, operator: Exists}", &["p1", "p2", "p4"]),
        ("DoesNotExist matches an absent key", "{key: env, operator: DoesNotExist}", &["p3", "t"]),
        ("expressions are ANDed", "{key: tier, operator: In, values: [back]}, {key: env, operator: Exists}", &["p2"]),
    ];
    for (case, exprs, allowed) in cases {
        let c = base.clone().with_policy(&format!(
            r"
metadata: {{name: p, namespace: a}}
spec:
  podSelector: {{matchLabels: {{pod: t}}}}
  ingress:
  - from: [{{podSelector: {{matchExpressions: [{exprs}]}}}}]
"
        ));
        let net = c.compile();
        for peer in ["p1", "p2", "p3", "p4"] {
            let got = net.verdict("a/t", (IN, &format!("a/{peer}"), TCP, 80));
            assert_eq!(got, allowed.contains(&peer), "{case}: from a/{peer}");
        }
        assert!(!net.verdict("a/t", (IN, OUTSIDE, TCP, 80)), "{case}: from outside");
    }
}

#[test]
fn the_kubernetes_io_metadata_name_label_selects_a_namespace_by_name() {
    let c = cluster().with_policy(
        r"
metadata: {name: from-b-and-d, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: b}}
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [d]}]
",
    );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, "b/x", TCP, 80, ALLOW),
            (IN, "b/z", TCP, 80, ALLOW),
            (IN, "d/u", TCP, 80, ALLOW), // no Namespace object: its name label still holds
            (IN, "c/v", TCP, 80, DENY),
            (IN, "a/y", TCP, 80, DENY),
        ],
    );
}

#[test]
fn several_policies_selecting_one_pod_are_ored() {
    let c = cluster()
        .with_policy(
            r"
metadata: {name: web-from-y, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: y}}}]
    ports: [{port: 80}]
",
        )
        .with_policy(
            r"
metadata: {name: metrics-from-beta, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: beta}}}]
    ports: [{port: 9090}]
",
        );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, "a/y", TCP, 80, ALLOW),
            (IN, "a/y", TCP, 9090, DENY),
            (IN, "b/x", TCP, 9090, ALLOW),
            (IN, "b/x", TCP, 80, DENY),
            (IN, OUTSIDE, TCP, 80, DENY),
        ],
    );
}

#[test]
fn a_policy_in_another_namespace_does_not_select_the_pod() {
    let c = cluster().with_policy(
        r"
metadata: {name: deny-x, namespace: b}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Ingress, Egress]
",
    );
    let net = c.compile();
    assert_eq!(net.isolation("a/x"), (false, false), "a/x has pod=x, but the policy lives in b");
    net.expect("a/x", &[(IN, OUTSIDE, TCP, 80, ALLOW), (OUT, OUTSIDE, TCP, 80, ALLOW)]);
    let c = c.with_policy(
        r"
metadata: {name: deny-all, namespace: b}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
",
    );
    let net = c.compile();
    assert_eq!(net.isolation("a/x"), (false, false));
    assert_eq!(net.isolation("b/z"), (true, true));
    net.expect("b/z", &[(IN, "a/x", TCP, 80, DENY), (OUT, "a/x", TCP, 80, DENY)]);
}

// ---------------------------------------------------------------------------------------------
// ipBlock.

#[test]
fn an_ip_block_allows_its_cidr_minus_its_except_prefixes() {
    let c = cluster().with_policy(
        r"
metadata: {name: block, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.128/25]}}]
  egress:
  - to: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.128/25]}}]
",
    );
    let net = c.compile();
    for d in [IN, OUT] {
        net.expect(
            "a/x",
            &[
                (d, "203.0.113.0", TCP, 80, ALLOW),
                (d, "203.0.113.7", TCP, 80, ALLOW),
                (d, "203.0.113.127", UDP, 53, ALLOW),
                (d, "203.0.113.128", TCP, 80, DENY),
                (d, "203.0.113.200", TCP, 80, DENY),
                (d, "198.51.100.1", TCP, 80, DENY),
                (d, "a/y", TCP, 80, DENY),
            ],
        );
    }
}

#[test]
fn an_ip_block_matches_pod_ips_in_both_directions_and_its_except_holes_exclude_them() {
    let c = cluster().with_policy(
        r"
metadata: {name: pods-by-ip, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{ipBlock: {cidr: 198.18.0.0/15, except: [198.18.1.0/24]}}]
  - from: [{podSelector: {matchLabels: {pod: w}}}]
    ports: [{port: 80}]
  egress:
  - to: [{ipBlock: {cidr: 198.18.0.0/15, except: [198.18.1.0/24]}}]
",
    );
    let net = c.compile();
    for d in [IN, OUT] {
        net.expect(
            "a/x",
            &[
                (d, "a/y", TCP, 80, ALLOW),
                (d, "b/z", UDP, 53, ALLOW),
                (d, HOST, TCP, 10250, ALLOW), // the node's address is in the block too
                (d, "b/x", TCP, 80, DENY),    // 198.18.1.20: in the except hole
                (d, "c/v", TCP, 80, DENY),
                (d, "a/y@6", TCP, 80, DENY),
                (d, OUTSIDE, TCP, 80, DENY),
            ],
        );
    }
    // a/w (198.18.1.12) is in the hole, but a pod selector of another rule still allows it.
    net.expect("a/x", &[(IN, "a/w", TCP, 80, ALLOW), (IN, "a/w", TCP, 81, DENY), (OUT, "a/w", TCP, 80, DENY)]);
}

#[test]
fn ipv6_ip_blocks_allow_ipv6_peers_minus_their_except() {
    let c = cluster().with_policy(
        r"
metadata: {name: v6, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{ipBlock: {cidr: 'fd00:198:18::/48', except: ['fd00:198:18:1::/64']}}]
  egress:
  - to: [{ipBlock: {cidr: '2001:db8::/32'}}]
",
    );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, "a/y@6", TCP, 80, ALLOW),
            (IN, "fd00:198:18:2::9", TCP, 80, ALLOW),
            (IN, "b/x@6", TCP, 80, DENY), // fd00:198:18:1::20, in the hole
            (IN, "a/y", TCP, 80, DENY),   // the same pod over IPv4
            (IN, OUTSIDE6, TCP, 80, DENY),
            (OUT, OUTSIDE6, TCP, 443, ALLOW),
            (OUT, "2001:db8:ffff::1", TCP, 443, ALLOW),
            (OUT, OUTSIDE, TCP, 443, DENY),
            (OUT, "b/x@6", TCP, 443, DENY),
        ],
    );
}

#[test]
fn overlapping_ip_blocks_of_different_policies_are_ored() {
    let c = cluster()
        .with_policy(
            r"
metadata: {name: wide, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{ipBlock: {cidr: 198.18.0.0/15, except: [198.18.0.0/24]}}]
",
        )
        .with_policy(
            r"
metadata: {name: narrow, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{ipBlock: {cidr: 198.18.0.0/24, except: [198.18.0.128/25]}}]
    ports: [{port: 80}]
",
        )
        .with_policy(
            r"
metadata: {name: everything-but-the-cluster, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{ipBlock: {cidr: 0.0.0.0/0, except: [198.18.0.0/15]}}]
    ports: [{port: 443}]
",
        );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, "a/y", TCP, 80, ALLOW),          // 198.18.0.11: only "narrow", port 80
            (IN, "a/y", TCP, 81, DENY),
            (IN, "198.18.0.200", TCP, 80, DENY),  // in both holes
            (IN, "a/w", TCP, 81, ALLOW),          // 198.18.1.12: "wide", every port
            (IN, "198.19.255.254", UDP, 9, ALLOW),
            (IN, OUTSIDE, TCP, 443, ALLOW),       // "everything-but-the-cluster"
            (IN, OUTSIDE, TCP, 80, DENY),
            (IN, "a/y", TCP, 443, DENY),
            (IN, OUTSIDE6, TCP, 443, DENY),
        ],
    );
}

#[test]
fn an_ipv6_block_of_everything_does_not_allow_ipv4_and_vice_versa() {
    let c = cluster()
        .with_policy(
            r"
metadata: {name: all-v6, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{ipBlock: {cidr: '::/0'}}]
",
        )
        .with_policy(
            r"
metadata: {name: all-v4, namespace: a}
spec:
  podSelector: {matchLabels: {pod: y}}
  ingress:
  - from: [{ipBlock: {cidr: 0.0.0.0/0}}]
",
        );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, OUTSIDE6, TCP, 80, ALLOW),
            (IN, "a/y@6", TCP, 80, ALLOW),
            (IN, OUTSIDE, TCP, 80, DENY),
            (IN, "a/y", TCP, 80, DENY),
            (IN, HOST, TCP, 80, DENY),
        ],
    );
    net.expect(
        "a/y",
        &[
            (IN, OUTSIDE, TCP, 80, ALLOW),
            (IN, "a/x", TCP, 80, ALLOW),
            (IN, OUTSIDE6, TCP, 80, DENY),
            (IN, "a/x@6", TCP, 80, DENY),
            (IN, HOST6, TCP, 80, DENY),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Ports.

/// The standard cluster with one policy on a/x whose single ingress rule (from anyone) has
/// `ports`.
fn ports_policy(ports: &str) -> Cluster {
    cluster().with_policy(&format!(
        r"
metadata: {{name: ports, namespace: a}}
spec:
  podSelector: {{matchLabels: {{pod: x}}}}
  ingress:
  - ports: {ports}
"
    ))
}

#[test]
fn a_numeric_port_allows_only_that_port_of_that_protocol() {
    let c = ports_policy("[{port: 8443}]");
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, OUTSIDE, TCP, 8443, ALLOW),
            (IN, "a/y", TCP, 8443, ALLOW),
            (IN, OUTSIDE, TCP, 8442, DENY),
            (IN, OUTSIDE, TCP, 8444, DENY),
            (IN, OUTSIDE, UDP, 8443, DENY),
            (IN, OUTSIDE, SCTP, 8443, DENY),
        ],
    );
}

#[test]
fn tcp_is_the_protocol_when_none_is_given() {
    let c = ports_policy("[{port: 443}, {protocol: TCP, port: 444}]");
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, OUTSIDE, TCP, 443, ALLOW),
            (IN, OUTSIDE, TCP, 444, ALLOW),
            (IN, OUTSIDE, UDP, 443, DENY),
            (IN, OUTSIDE, SCTP, 443, DENY),
        ],
    );
}

#[test]
fn a_udp_port_allows_that_udp_port_only() {
    let c = ports_policy("[{protocol: UDP, port: 53}]");
    let net = c.compile();
    net.expect(
        "a/x",
        &[(IN, OUTSIDE, UDP, 53, ALLOW), (IN, OUTSIDE, TCP, 53, DENY), (IN, OUTSIDE, UDP, 54, DENY), (IN, OUTSIDE, UDP, 52, DENY)],
    );
}

#[test]
fn a_protocol_without_a_port_allows_every_port_of_that_protocol() {
    let c = ports_policy("[{protocol: UDP}]");
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, OUTSIDE, UDP, 1, ALLOW),
            (IN, OUTSIDE, UDP, 53, ALLOW),
            (IN, OUTSIDE, UDP, 65535, ALLOW),
            (IN, OUTSIDE, TCP, 53, DENY),
            (IN, OUTSIDE, SCTP, 53, DENY),
            (IN, OUTSIDE, ICMP, 0, DENY),
        ],
    );
}

#[test]
fn an_end_port_range_includes_both_edges_and_nothing_beyond() {
    let c = ports_policy("[{port: 32000, endPort: 32768}, {protocol: UDP, port: 1, endPort: 3}, {protocol: SCTP, port: 65534, endPort: 65535}]");
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, OUTSIDE, TCP, 31999, DENY),
            (IN, OUTSIDE, TCP, 32000, ALLOW),
            (IN, OUTSIDE, TCP, 32001, ALLOW),
            (IN, OUTSIDE, TCP, 32767, ALLOW),
            (IN, OUTSIDE, TCP, 32768, ALLOW),
            (IN, OUTSIDE, TCP, 32769, DENY),
            (IN, OUTSIDE, UDP, 32000, DENY),
            (IN, OUTSIDE, UDP, 0, DENY),
            (IN, OUTSIDE, UDP, 1, ALLOW),
            (IN, OUTSIDE, UDP, 3, ALLOW),
            (IN, OUTSIDE, UDP, 4, DENY),
            (IN, OUTSIDE, SCTP, 65533, DENY),
            (IN, OUTSIDE, SCTP, 65534, ALLOW),
            (IN, OUTSIDE, SCTP, 65535, ALLOW),
        ],
    );
}

#[test]
fn an_sctp_port_matches_ip_protocol_132() {
    let c = ports_policy("[{protocol: SCTP, port: 9000}]");
    let net = c.compile();
    net.expect(
        "a/x",
        &[(IN, OUTSIDE, SCTP, 9000, ALLOW), (IN, OUTSIDE, SCTP, 9001, DENY), (IN, OUTSIDE, TCP, 9000, DENY), (IN, OUTSIDE, UDP, 9000, DENY)],
    );
}

#[test]
fn icmp_is_allowed_only_by_a_rule_without_ports() {
    let c = cluster()
        .with_policy(
            r"
metadata: {name: every-tcp-port, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - ports: [{protocol: TCP}, {protocol: UDP}, {protocol: SCTP}]
",
        )
        .with_policy(
            r"
metadata: {name: anything-from-x, namespace: a}
spec:
  podSelector: {matchLabels: {pod: y}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: x}}}]
",
        );
    let net = c.compile();
    net.expect(
        "a/x",
        &[(IN, OUTSIDE, TCP, 1, ALLOW), (IN, OUTSIDE, ICMP, 0, DENY), (IN, "a/y", ICMP, 0, DENY), (IN, "a/y@6", ICMPV6, 0, DENY)],
    );
    net.expect(
        "a/y",
        &[(IN, "a/x", ICMP, 0, ALLOW), (IN, "a/x@6", ICMPV6, 0, ALLOW), (IN, "b/x", ICMP, 0, DENY), (IN, OUTSIDE, ICMP, 0, DENY)],
    );
}

#[test]
fn an_ingress_named_port_resolves_against_the_selected_pod_by_name_and_protocol() {
    let c = cluster().with_policy(
        r"
metadata: {name: named, namespace: a}
spec:
  podSelector: {}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: w}}}]
    ports: [{port: http}]
  - from: [{namespaceSelector: {matchLabels: {team: beta}}}]
    ports: [{port: dns}]
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: v}}}]
    ports: [{port: dns, protocol: UDP}]
",
    );
    let net = c.compile();
    // a/x: http is 80/TCP, dns is 53/UDP.
    net.expect(
        "a/x",
        &[
            (IN, "a/w", TCP, 80, ALLOW),
            (IN, "a/w", TCP, 8080, DENY),
            (IN, "b/x", TCP, 53, DENY), // `dns` with protocol TCP (the default): a/x has no such port
            (IN, "b/x", UDP, 53, DENY),
            (IN, "c/v", UDP, 53, ALLOW),
            (IN, "c/v", TCP, 53, DENY),
        ],
    );
    // a/y: http is 8080/TCP, no dns.
    net.expect(
        "a/y",
        &[(IN, "a/w", TCP, 8080, ALLOW), (IN, "a/w", TCP, 80, DENY), (IN, "c/v", UDP, 53, DENY), (IN, "b/x", TCP, 53, DENY)],
    );
}

#[test]
fn an_egress_named_port_resolves_against_each_peer_pod() {
    // Two peers with the same labels whose `http` ports have different numbers.
    let c = cluster()
        .with_pod(pod("a", "v1").label("app", "api").ip("198.18.1.51").port("http", 8081, "TCP").node(OTHER_NODE))
        .with_pod(pod("a", "v2").label("app", "api").ip("198.18.1.52").ip("fd00:198:18:1::52").port("http", 8082, "TCP").node(OTHER_NODE))
        .with_pod(pod("a", "v3").label("app", "api").ip("198.18.1.53").port("http", 8083, "UDP").node(OTHER_NODE))
        .with_policy(
            r"
metadata: {name: to-api, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: http}]
",
        );
    let net = c.compile();
    assert_ne!(net.identity_of("a/v1"), net.identity_of("a/v2"), "different named ports, different identities");
    net.expect(
        "a/x",
        &[
            (OUT, "a/v1", TCP, 8081, ALLOW),
            (OUT, "a/v1", TCP, 8082, DENY),
            (OUT, "a/v2", TCP, 8082, ALLOW),
            (OUT, "a/v2@6", TCP, 8082, ALLOW),
            (OUT, "a/v2", TCP, 8081, DENY),
            (OUT, "a/v3", TCP, 8083, DENY), // its `http` is UDP
            (OUT, "a/v3", UDP, 8083, DENY),
            (OUT, "a/x", TCP, 80, DENY), // not app=api, though its http is 80
            (OUT, "a/y", TCP, 8080, DENY),
            (OUT, OUTSIDE, TCP, 8081, DENY),
        ],
    );
}

#[test]
fn an_egress_named_port_to_anyone_resolves_against_every_pod_and_no_external_ip() {
    let c = cluster().with_policy(
        r"
metadata: {name: to-any-http, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: http}]
",
    );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (OUT, "a/y", TCP, 8080, ALLOW),
            (OUT, "a/y", TCP, 80, DENY),
            (OUT, "b/x", TCP, 80, ALLOW),
            (OUT, "b/x@6", TCP, 80, ALLOW),
            (OUT, "b/x", TCP, 8080, DENY),
            (OUT, "c/v", TCP, 80, DENY), // c/v has no named ports
            (OUT, OUTSIDE, TCP, 80, DENY),
        ],
    );
}

#[test]
fn an_egress_named_port_to_an_ip_block_resolves_against_the_pods_inside_it() {
    let c = cluster()
        .with_pod(pod("b", "s").label("pod", "s").ip("198.18.0.40").port("http", 8000, "TCP").node(OTHER_NODE))
        .with_policy(
            r"
metadata: {name: http-by-ip, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 198.18.0.0/24}}, {ipBlock: {cidr: 'fd00:198:18::/64'}}]
    ports: [{port: http}]
  - to: [{ipBlock: {cidr: 198.18.0.0/24}}]
    ports: [{port: metrics}]
",
        );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (OUT, "b/s", TCP, 8000, ALLOW), // single-stack, inside the block, http is 8000
            (OUT, "b/s", TCP, 80, DENY),
            (OUT, "a/y", TCP, 8080, ALLOW), // dual-stack, both addresses inside the blocks
            (OUT, "a/y@6", TCP, 8080, ALLOW),
            (OUT, "a/y", TCP, 80, DENY),
            (OUT, "b/x", TCP, 80, DENY), // http is 80, but outside the blocks
            (OUT, "198.18.0.99", TCP, 80, DENY), // no pod: a named port names nothing there
            (OUT, "198.18.0.99", TCP, 8000, DENY),
        ],
    );
    // Known limitation, failing closed: a pod identity takes part only when every address of
    // every pod holding it lies in the block (an entry for the identity would allow all of
    // them). a/x's own `metrics` port does not matter for egress; no peer has `metrics`.
    let c = cluster().with_policy(
        r"
metadata: {name: http-by-v4-only, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 198.18.0.0/24}}]
    ports: [{port: http}]
",
    );
    let net = c.compile();
    net.expect("a/x", &[(OUT, "a/y", TCP, 8080, DENY), (OUT, "a/y@6", TCP, 8080, DENY)]);
}

#[test]
fn a_named_port_that_no_pod_has_allows_nothing() {
    let c = cluster().with_policy(
        r"
metadata: {name: grpc, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Ingress, Egress]
  ingress:
  - ports: [{port: grpc}]
  egress:
  - ports: [{port: grpc}]
",
    );
    let net = c.compile();
    assert_eq!(net.isolation("a/x"), (true, true));
    assert_eq!(net.entries("a/x"), 0);
    net.expect(
        "a/x",
        &[(IN, "a/y", TCP, 80, DENY), (IN, OUTSIDE, TCP, 50051, DENY), (OUT, "a/y", TCP, 8080, DENY), (OUT, OUTSIDE, TCP, 50051, DENY)],
    );
    net.expect("a/y", &[(IN, OUTSIDE, TCP, 80, ALLOW)]);
}

// ---------------------------------------------------------------------------------------------
// The node itself.

const DENY_ALL_OF_A: &str = r"
metadata: {name: deny-all, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
";

#[test]
fn with_allow_host_the_node_reaches_ingress_isolated_pods() {
    let c = cluster().with_policy(DENY_ALL_OF_A).allow_host(true);
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, HOST, TCP, 8080, ALLOW),
            (IN, HOST6, TCP, 8080, ALLOW),
            (IN, HOST, ICMP, 0, ALLOW),
            (IN, "a/y", TCP, 8080, DENY),
            (IN, OUTSIDE, TCP, 8080, DENY),
            (OUT, HOST, TCP, 10250, DENY), // only ingress: probes come from the node
        ],
    );
    assert_eq!(net.entries("b/z"), 0, "a pod no policy isolates needs no host entry");
}

#[test]
fn without_allow_host_the_node_is_denied_like_any_other_peer() {
    let c = cluster().with_policy(DENY_ALL_OF_A).allow_host(false);
    let net = c.compile();
    net.expect("a/x", &[(IN, HOST, TCP, 8080, DENY), (IN, HOST6, TCP, 8080, DENY), (OUT, HOST, TCP, 10250, DENY)]);
    net.expect("b/z", &[(IN, HOST, TCP, 8080, ALLOW)]);
}

#[test]
fn the_node_identity_is_not_confused_with_pods() {
    let c = cluster().with_policy(
        r"
metadata: {name: all-pods, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{namespaceSelector: {}}]
  - from: [{podSelector: {}}]
",
    );
    for allow_host in [false, true] {
        let c = c.clone().allow_host(allow_host);
        let net = c.compile();
        assert_eq!(net.identity_of(HOST), IDENTITY_HOST);
        assert_eq!(net.identity_of(HOST6), IDENTITY_HOST);
        for p in ["a/x", "a/y", "b/x", "d/u"] {
            assert_ne!(net.identity_of(p), IDENTITY_HOST, "{p}");
        }
        net.expect("a/x", &[(IN, HOST, TCP, 80, allow_host), (IN, "a/y", TCP, 80, ALLOW), (IN, OUTSIDE, TCP, 80, DENY)]);
    }
    // A host entry that allows the node does not allow pods: an a/y-only policy with the node
    // allowed still denies a/w.
    let c = cluster()
        .allow_host(true)
        .with_policy(
            r"
metadata: {name: from-y, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: y}}}]
",
        );
    let net = c.compile();
    net.expect("a/x", &[(IN, HOST, TCP, 80, ALLOW), (IN, "a/y", TCP, 80, ALLOW), (IN, "a/w", TCP, 80, DENY)]);
}

// ---------------------------------------------------------------------------------------------
// Stability.

/// A cluster with a mix of everything, for the stability tests.
fn busy_cluster() -> Cluster {
    cluster()
        .with_policy(
            r"
metadata: {name: web, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: beta}}}, {ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.0/28]}}]
    ports: [{port: http}, {port: 30000, endPort: 30100}]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: http}]
",
        )
        .with_policy(
            r"
metadata: {name: db, namespace: a}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
",
        )
        .with_policy(DENY_ALL_OF_A.replace("namespace: a", "namespace: b").as_str())
}

#[test]
fn recompiling_the_same_state_yields_identical_maps() {
    let c = busy_cluster().allow_host(true);
    let mut compiler = Compiler::new();
    let first = c.compile_with(&mut compiler).desired;
    let second = c.compile_with(&mut compiler).desired;
    assert_eq!(first, second, "same compiler, same state");
    let fresh = c.compile().desired;
    assert_eq!(first, fresh, "a fresh compiler gives the same numbers for the same state");
    assert!(!first.policy.is_empty() && !first.cidrs.is_empty());
}

#[test]
fn a_new_pod_on_another_node_with_a_known_label_set_adds_one_ipcache_entry_only() {
    let before = busy_cluster();
    let mut compiler = Compiler::new();
    let old = before.compile_with(&mut compiler).desired;
    // Same namespace, labels and named ports as b/x.
    let after = before.clone().with_pod(
        pod("b", "x2").label("pod", "x").label("app", "web").ip("198.18.1.21").port("http", 80, "TCP").node(OTHER_NODE),
    );
    let new = after.compile_with(&mut compiler).desired;
    assert_eq!(new.endpoints, old.endpoints);
    assert_eq!(new.policy, old.policy, "no policy entry changes");
    assert_eq!(new.cidrs, old.cidrs);
    assert_eq!(new.identities, old.identities);
    assert_eq!(new.rules, old.rules);
    let added: Vec<_> = new.ipcache.iter().filter(|(k, v)| old.ipcache.get(k) != Some(v)).collect();
    assert_eq!(added.len(), 1, "one ipcache write: {added:?}");
    assert_eq!(new.ipcache.len(), old.ipcache.len() + 1);
    let net = after.compile_with(&mut compiler);
    assert_eq!(net.identity_of("b/x2"), net.identity_of("b/x"));
    net.expect("a/x", &[(IN, "b/x2", TCP, 80, ALLOW), (IN, "b/x2", TCP, 81, DENY)]);
}

#[test]
fn endpoint_ids_and_identities_stay_stable_when_unrelated_objects_change() {
    let before = busy_cluster();
    let mut compiler = Compiler::new();
    let net = before.compile_with(&mut compiler);
    let ids = |net: &Net<'_>, pods: &[&str]| -> Vec<(u32, u32)> { pods.iter().map(|p| (net.endpoint(p).id, net.identity_of(p))).collect() };
    let old = ids(&net, &["a/x", "a/y", "b/z"]);
    let old_cidrs = net.desired.cidrs.clone();

    // New local pods sorting before and after the others, with new label sets; a removed
    // remote pod; a relabelled unrelated namespace.
    let mut after = before
        .clone()
        .with_pod(pod("a", "a0").label("pod", "a0").ip("198.18.0.2"))
        .with_pod(pod("z", "last").label("pod", "last").ip("198.18.0.250"))
        .with_namespace(namespace("c", &[("team", "gamma")]));
    after.state.pods.remove(&ObjectRef::new("d", "u"));
    let net = after.compile_with(&mut compiler);
    assert_eq!(ids(&net, &["a/x", "a/y", "b/z"]), old, "endpoint ids and identities of the pods that did not change");
    assert_eq!(net.desired.cidrs, old_cidrs);
    let new_ids = [net.endpoint("a/a0").id, net.endpoint("z/last").id];
    assert!(new_ids.iter().all(|id| !old.iter().any(|(e, _)| e == id)), "new endpoints get new ids: {new_ids:?}");

    // Removing the new pods again does not hand their numbers to anyone else.
    let net = before.compile_with(&mut compiler);
    assert_eq!(ids(&net, &["a/x", "a/y", "b/z"]), old);
}

#[test]
fn a_policy_change_rewrites_only_the_entries_of_the_endpoints_it_selects() {
    let before = busy_cluster();
    let mut compiler = Compiler::new();
    let old = before.compile_with(&mut compiler);
    let old_y: Vec<String> = old.desired.policy.of_endpoint(old.endpoint("a/y").id).map(|e| format!("{e:?}")).collect();
    let old_z: Vec<String> = old.desired.policy.of_endpoint(old.endpoint("b/z").id).map(|e| format!("{e:?}")).collect();

    // A policy (named to sort first) that selects only a/x, the first local pod.
    let after = before.clone().with_policy(
        r"
metadata: {name: aaa-extra, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: w}}}]
",
    );
    let new = after.compile_with(&mut compiler);
    let new_y: Vec<String> = new.desired.policy.of_endpoint(new.endpoint("a/y").id).map(|e| format!("{e:?}")).collect();
    let new_z: Vec<String> = new.desired.policy.of_endpoint(new.endpoint("b/z").id).map(|e| format!("{e:?}")).collect();
    assert_eq!(new_y, old_y, "a/y's entries (keys and values, rule ids included) are untouched");
    assert_eq!(new_z, old_z, "b/z's entries are untouched");
    assert!(new.entries("a/x") > old.entries("a/x"));
    new.expect("a/x", &[(IN, "a/w", UDP, 5, ALLOW)]);
    // Every entry still names the rule that wrote it.
    let p = &new.desired.policy;
    let named = p.peers.iter().map(|(k, v)| (k.direction, v.rule)).chain(p.ports.iter().map(|(k, v)| (k.direction, v.rule))).chain(p.ranges.iter().map(|(k, v)| (k.key.direction, v.rule)));
    for (direction, rule) in named {
        if rule != 0 {
            let r = &new.desired.rules[&rule];
            let dir = if direction == DIR_INGRESS { IN } else { OUT };
            assert_eq!(r.direction, dir, "an entry of direction {direction} names {r:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dual stack.

#[test]
fn a_dual_stack_pod_gives_both_addresses_its_identity_and_is_judged_the_same_on_either() {
    let c = cluster().with_policy(
        r"
metadata: {name: y-only, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: y}}}]
    ports: [{port: 80}]
  egress:
  - to: [{namespaceSelector: {matchLabels: {team: beta}}, podSelector: {matchLabels: {pod: x}}}]
",
    );
    let net = c.compile();
    assert_eq!(net.identity_of("a/y"), net.identity_of("a/y@6"));
    assert_eq!(net.identity_of("b/x"), net.identity_of("b/x@6"));
    let ep = net.endpoint("a/x");
    assert_eq!(ep.ipv4, Some("198.18.0.10".parse().expect("v4")));
    assert_eq!(ep.ipv6, Some("fd00:198:18::10".parse().expect("v6")));
    assert_eq!(ep.ips.len(), 2);
    for v6 in ["", "@6"] {
        let y = format!("a/y{v6}");
        let bx = format!("b/x{v6}");
        net.expect(
            "a/x",
            &[
                (IN, &y, TCP, 80, ALLOW),
                (IN, &y, TCP, 443, DENY),
                (IN, &bx, TCP, 80, DENY),
                (OUT, &bx, UDP, 53, ALLOW),
                (OUT, &y, UDP, 53, DENY),
            ],
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The model: conversion and validation.

#[test]
fn pods_without_ips_on_the_host_network_or_finished_take_no_part_in_policy() {
    let base = pod("a", "p").label("pod", "p").ip("198.18.0.60");
    assert!(pod_from_k8s(&base.k8s(), "default").expect("valid").is_some());
    // A pod without IPs yet is kept apart, for its addresses to come (from CNI or the API).
    let waiting = pod_from_k8s(&pod("a", "p").k8s(), "default").expect("valid").expect("a pod");
    assert!(waiting.ips.is_empty());
    let mut state = ClusterState::default();
    state.insert_pod(waiting);
    assert!(state.pods.is_empty() && state.unaddressed.len() == 1);
    for (case, p) in [
        ("host network", base.clone().host_network()),
        ("succeeded", base.clone().phase("Succeeded")),
        ("failed", base.clone().phase("Failed")),
    ] {
        assert_eq!(pod_from_k8s(&p.k8s(), "default").expect("valid"), None, "{case}");
    }
    // podIP and podIPs together: each address once, the primary first.
    let mut k = base.clone().ip("fd00:198:18::60").k8s();
    let status = k.status.as_mut().expect("status");
    status.pod_ip = Some("198.18.0.60".into());
    let p = pod_from_k8s(&k, "default").expect("valid").expect("a pod");
    assert_eq!(p.ips, vec!["198.18.0.60".parse::<IpAddr>().expect("v4"), "fd00:198:18::60".parse().expect("v6")]);
    // A bad address or port is a problem naming the pod.
    let mut bad = base.k8s();
    bad.status.as_mut().expect("status").pod_ips = Some(vec![k8s_openapi::api::core::v1::PodIP { ip: "198.18.0.300".into() }]);
    let problem = pod_from_k8s(&bad, "default").expect_err("bad address");
    assert_eq!(problem.object, "Pod a/p");
    assert!(problem.reason.contains("status.podIPs"), "{problem}");
    let problem = pod_from_k8s(&base.clone().port("http", 0, "TCP").k8s(), "default").expect_err("port 0");
    assert!(problem.reason.contains("container port http"), "{problem}");
    let problem = pod_from_k8s(&base.port("http", 80, "ICMP").k8s(), "default").expect_err("bad protocol");
    assert!(problem.reason.contains("unknown protocol"), "{problem}");
}

#[test]
fn namespaces_carry_their_name_label_and_objects_without_a_namespace_are_defaulted() {
    let ns = namespace("team-a", &[("team", "alpha")]);
    assert_eq!(ns.labels.get("kubernetes.io/metadata.name").map(String::as_str), Some("team-a"));
    assert_eq!(ns.labels.get("team").map(String::as_str), Some("alpha"));
    let p = policy_from_k8s(&k8s_policy("metadata: {name: p}\nspec: {podSelector: {}}"), "fallback").expect("valid");
    assert_eq!(p.id, ObjectRef::new("fallback", "p"));
    let state = ClusterState::default();
    assert_eq!(state.namespace_labels("nowhere").get("kubernetes.io/metadata.name").map(String::as_str), Some("nowhere"));
}

#[test]
fn invalid_policies_are_reported_with_their_name_and_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("an invalid CIDR", "ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/33}}]}]", "spec.ingress[0].from[0].ipBlock.cidr"),
        ("a CIDR that is no address", "ingress: [{from: [{ipBlock: {cidr: not-a-cidr}}]}]", "spec.ingress[0].from[0].ipBlock.cidr"),
        ("a CIDR with host bits set", "egress: [{to: [{ipBlock: {cidr: 198.18.0.1/24}}]}]", "spec.egress[0].to[0].ipBlock.cidr"),
        (
            "an IPv4-mapped IPv6 CIDR, which would match IPv4 peers",
            "ingress: [{from: [{ipBlock: {cidr: '::ffff:203.0.113.0/120'}}]}]",
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            "an IPv4-mapped IPv6 except",
            "ingress: [{from: [{ipBlock: {cidr: '::/0', except: ['::ffff:0:0/96']}}]}]",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "an except outside the cidr",
            "ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/24, except: [198.18.1.0/25]}}]}]",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "an except equal to the cidr",
            "ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/24, except: [198.18.0.0/24]}}]}]",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "an except of the other family",
            "ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0, except: ['fd00:198:18::/48']}}]}]",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        ("an unknown protocol", "ingress: [{ports: [{protocol: ICMP, port: 8}]}]", "spec.ingress[0].ports[0].protocol"),
        ("a lowercase protocol", "egress: [{ports: [{protocol: tcp}]}]", "spec.egress[0].ports[0].protocol"),
        ("an endPort below port", "ingress: [{ports: [{port: 90, endPort: 80}]}]", "spec.ingress[0].ports[0].endPort"),
        ("an endPort with a named port", "ingress: [{ports: [{port: http, endPort: 90}]}]", "spec.ingress[0].ports[0].endPort"),
        ("an endPort without a port", "ingress: [{ports: [{endPort: 90}]}]", "spec.ingress[0].ports[0].endPort"),
        ("port 0", "ingress: [{ports: [{port: 0}]}]", "spec.ingress[0].ports[0].port"),
        ("a port above 65535", "egress: [{ports: [{port: 65536}]}]", "spec.egress[0].ports[0].port"),
        ("a number written as a string", "ingress: [{ports: [{port: '80'}]}]", "spec.ingress[0].ports[0].port"),
        (
            "an unknown selector operator",
            "ingress: [{from: [{podSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}}]}]",
            "spec.ingress[0].from[0].podSelector",
        ),
        (
            "an unknown operator in the namespace selector",
            "egress: [{to: [{namespaceSelector: {matchExpressions: [{key: a, operator: Has}]}}]}]",
            "spec.egress[0].to[0].namespaceSelector",
        ),
        (
            "an unknown operator in spec.podSelector",
            "podSelector: {matchExpressions: [{key: a, operator: Like, values: [b]}]}",
            "spec.podSelector",
        ),
        (
            "ipBlock with a podSelector in one peer",
            "ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/24}, podSelector: {}}]}]",
            "spec.ingress[0].from[0]",
        ),
        (
            "ipBlock with a namespaceSelector in one peer",
            "egress: [{to: [{podSelector: {}}, {ipBlock: {cidr: 198.18.0.0/24}, namespaceSelector: {}}]}]",
            "spec.egress[0].to[1]",
        ),
        ("an empty peer", "ingress: [{from: [{}]}]", "spec.ingress[0].from[0]"),
        ("an unknown policyType", "policyTypes: [Ingress, Sideways]", "spec.policyTypes"),
    ];
    for (case, spec, field) in cases {
        // `spec` adds to an otherwise valid policy; a podSelector line in it replaces the default.
        let selector = if spec.starts_with("podSelector") { "" } else { "  podSelector: {}\n" };
        let yaml = format!("metadata: {{name: bad, namespace: ns1}}\nspec:\n{selector}  {spec}\n");
        let p = problem(&yaml);
        assert_eq!(p.object, "NetworkPolicy ns1/bad", "{case}");
        assert!(p.reason.starts_with(field), "{case}: the reason names {field}: {:?}", p.reason);
        let rest = &p.reason[field.len()..];
        assert!(rest.starts_with(':') || rest.starts_with(' '), "{case}: names exactly {field}: {:?}", p.reason);
    }
}


// ---------------------------------------------------------------------------------------------
// Random clusters against a reference reading of the spec.

/// A small deterministic generator (xorshift64*), so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n as u64)).expect("small")
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

fn random_selector(rng: &mut Rng, namespace: bool) -> crate::model::selector::Selector {
    use crate::model::selector::{Requirement, Selector};
    let s = |v: &str| v.to_string();
    let pod_forms: Vec<Vec<Requirement>> = vec![
        vec![],
        vec![Requirement::In(s("app"), vec![s("web")])],
        vec![Requirement::In(s("app"), vec![s("db")])],
        vec![Requirement::In(s("app"), vec![s("web"), s("db")]), Requirement::Exists(s("tier"))],
        vec![Requirement::NotIn(s("tier"), vec![s("front")])],
        vec![Requirement::DoesNotExist(s("app"))],
        vec![Requirement::In(s("tier"), vec![s("back")])],
    ];
    let ns_forms: Vec<Vec<Requirement>> = vec![
        vec![],
        vec![Requirement::In(s("team"), vec![s("alpha")])],
        vec![Requirement::In(s("team"), vec![s("beta")])],
        vec![Requirement::NotIn(s("env"), vec![s("prod")])],
        vec![Requirement::In(s("kubernetes.io/metadata.name"), vec![s("d")])],
        vec![Requirement::Exists(s("env")), Requirement::NotIn(s("team"), vec![s("beta")])],
    ];
    Selector { requirements: rng.pick(if namespace { &ns_forms } else { &pod_forms }).clone() }
}

fn random_cluster(seed: u64) -> Cluster {
    use crate::model::{Peer, PortMatch, PortSpec, Protocol, Rule};
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut c = Cluster::empty().allow_host(rng.chance(50));
    for name in ["a", "b", "c"] {
        let mut labels = vec![];
        if let Some(team) = rng.pick(&[Some("alpha"), Some("beta"), None]) {
            labels.push(("team", *team));
        }
        if let Some(env) = rng.pick(&[Some("prod"), Some("dev"), None]) {
            labels.push(("env", *env));
        }
        c = c.with_namespace(namespace(name, &labels));
    }
    let namespaces = ["a", "b", "c", "d"];
    for i in 0..9_u8 {
        let namespace: &str = rng.pick::<&str>(&namespaces);
        let mut p = pod(namespace, &format!("p{i}"));
        p.ips.push(format!("198.18.0.{}", 10 + i));
        if rng.chance(40) {
            p.ips.push(format!("fd00:198:18::{}", 10 + i));
        }
        if rng.chance(50) {
            p.node = OTHER_NODE.into();
        }
        if let Some(app) = rng.pick(&[Some("web"), Some("db"), None]) {
            p = p.label("app", app);
        }
        if let Some(tier) = rng.pick(&[Some("front"), Some("back"), None]) {
            p = p.label("tier", tier);
        }
        if rng.chance(60) {
            p = p.port("http", *rng.pick(&[80, 8080, 8081]), "TCP");
        }
        if rng.chance(40) {
            let protocol: &str = rng.pick::<&str>(&["UDP", "TCP"]);
            p = p.port("dns", 53, protocol);
        }
        c = c.with_pod(p);
    }
    let net = |s: &str| s.parse::<ipnet::IpNet>().expect("test CIDR");
    let blocks: Vec<(ipnet::IpNet, Vec<ipnet::IpNet>)> = vec![
        (net("198.18.0.0/15"), vec![net("198.18.0.0/28")]),
        (net("198.18.0.0/28"), vec![]),
        (net("198.18.0.12/30"), vec![net("198.18.0.13/32")]),
        (net("203.0.113.0/24"), vec![net("203.0.113.128/25")]),
        (net("0.0.0.0/0"), vec![net("198.18.0.0/15")]),
        (net("::/0"), vec![]),
        (net("fd00:198:18::/48"), vec![net("fd00:198:18::10/126")]),
    ];
    let n_policies = 1 + rng.below(4);
    for i in 0..n_policies {
        let ns = rng.pick(&["a", "b", "c"]).to_string();
        let rules = |rng: &mut Rng, egress: bool| -> Vec<Rule> {
            (0..rng.below(3))
                .map(|_| {
                    let mut peers: Vec<Peer> = (0..rng.below(3))
                        .map(|_| match rng.below(4) {
                            0 => Peer::Pods { namespaces: None, pods: random_selector(rng, false) },
                            1 => Peer::Pods { namespaces: Some(random_selector(rng, true)), pods: Default::default() },
                            2 => Peer::Pods { namespaces: Some(random_selector(rng, true)), pods: random_selector(rng, false) },
                            _ => {
                                let (cidr, except) = rng.pick(&blocks).clone();
                                Peer::IpBlock { cidr, except }
                            }
                        })
                        .collect();
                    let has_block = peers.iter().any(|p| matches!(p, Peer::IpBlock { .. }));
                    let ports: Vec<PortMatch> = (0..rng.below(3))
                        .map(|_| {
                            let protocol = *rng.pick(&[Protocol::Tcp, Protocol::Tcp, Protocol::Udp, Protocol::Sctp]);
                            let port = match rng.below(4) {
                                0 => PortSpec::All,
                                1 => PortSpec::Range(*rng.pick(&[53, 80, 8080]), 0),
                                2 => PortSpec::Range(8000, 8080),
                                // Named ports towards ipBlocks: see the known limitation above.
                                _ if egress && has_block => PortSpec::Range(80, 80),
                                _ => PortSpec::Named(rng.pick(&["http", "dns", "grpc"]).to_string()),
                            };
                            let port = match port {
                                PortSpec::Range(lo, 0) => PortSpec::Range(lo, lo),
                                other => other,
                            };
                            PortMatch { protocol, port }
                        })
                        .collect();
                    if rng.chance(10) {
                        peers.clear();
                    }
                    Rule { peers, ports }
                })
                .collect()
        };
        let ingress = rules(&mut rng, false);
        let egress = rules(&mut rng, true);
        let (isolates_ingress, isolates_egress) = match rng.below(4) {
            0 => (true, !egress.is_empty()),
            1 => (true, false),
            2 => (false, true),
            _ => (true, true),
        };
        let p = Policy {
            id: ObjectRef::new(ns, format!("np{i}")),
            pod_selector: random_selector(&mut rng, false),
            isolates_ingress,
            isolates_egress,
            ingress,
            egress,
        };
        c.state.policies.insert(p.id.clone(), p);
    }
    c
}

/// The spec read directly off the model, flow by flow, with no identities or maps.
fn spec_allows(c: &Cluster, pod: &Pod, flow: &Flow) -> bool {
    use crate::model::{Peer, PortSpec};
    let state = &c.state;
    let peer_pod = state.pods.values().find(|p| p.ips.contains(&flow.peer));
    let isolating: Vec<&Policy> = state
        .policies
        .values()
        .filter(|p| p.id.namespace == pod.id.namespace && p.pod_selector.matches(&pod.labels))
        .filter(|p| if flow.direction == IN { p.isolates_ingress } else { p.isolates_egress })
        .collect();
    if isolating.is_empty() {
        return true;
    }
    if flow.direction == IN && c.opts.allow_host && c.opts.host_ips.contains(&flow.peer) {
        return true;
    }
    isolating.iter().any(|policy| {
        let rules = if flow.direction == IN { &policy.ingress } else { &policy.egress };
        rules.iter().any(|rule| {
            let peer_ok = rule.peers.is_empty()
                || rule.peers.iter().any(|peer| match peer {
                    Peer::Pods { namespaces, pods } => peer_pod.is_some_and(|pp| {
                        let ns_ok = match namespaces {
                            None => pp.id.namespace == policy.id.namespace,
                            Some(sel) => sel.matches(&state.namespace_labels(&pp.id.namespace)),
                        };
                        ns_ok && pods.matches(&pp.labels)
                    }),
                    Peer::IpBlock { cidr, except } => cidr.contains(&flow.peer) && !except.iter().any(|e| e.contains(&flow.peer)),
                });
            let port_ok = rule.ports.is_empty()
                || rule.ports.iter().any(|pm| {
                    pm.protocol.number() == flow.protocol
                        && match &pm.port {
                            PortSpec::All => true,
                            PortSpec::Range(lo, hi) => (*lo..=*hi).contains(&flow.port),
                            PortSpec::Named(name) => {
                                let owner = if flow.direction == IN { Some(pod) } else { peer_pod };
                                owner.is_some_and(|o| {
                                    o.named_ports.iter().any(|np| np.name == *name && np.protocol == pm.protocol && np.port == flow.port)
                                })
                            }
                        }
                });
            peer_ok && port_ok
        })
    })
}

#[test]
fn random_clusters_compile_to_the_verdicts_of_the_spec() {
    let outside: Vec<IpAddr> =
        ["203.0.113.7", "203.0.113.200", "198.51.100.1", "2001:db8::7", "198.18.200.1", "fd00:198:18::13"]
            .iter()
            .map(|a| a.parse().expect("address"))
            .collect();
    let mut checked = 0_usize;
    let mut allowed = 0_usize;
    for seed in 0..300 {
        let c = random_cluster(seed);
        // A compiler that has numbered another cluster before, as a long-running agent's has;
        // then this cluster twice: the second time with the numbers of the first.
        let mut compiler = Compiler::new();
        let _ = random_cluster(seed + 1000).compile_with(&mut compiler);
        let first = c.compile_with(&mut compiler).desired;
        let net = c.compile_with(&mut compiler);
        assert_eq!(first, net.desired, "seed {seed}: recompiling changes nothing");
        let mut peers: Vec<IpAddr> = c.state.pods.values().flat_map(|p| p.ips.iter().copied()).collect();
        peers.extend(c.opts.host_ips.iter().copied());
        peers.extend(outside.iter().copied());
        for pod in c.state.pods.values().filter(|p| p.node == NODE) {
            for direction in [IN, OUT] {
                for peer in &peers {
                    for (protocol, port) in
                        [(TCP, 80), (TCP, 8080), (TCP, 8081), (TCP, 8000), (TCP, 53), (UDP, 53), (UDP, 80), (SCTP, 80), (ICMP, 0), (ICMPV6, 0)]
                    {
                        let flow = Flow { direction, peer: *peer, protocol, port };
                        let want = spec_allows(&c, pod, &flow);
                        let got = allows(&net.desired, &pod.id, &flow).expect("local endpoint");
                        assert_eq!(
                            got, want,
                            "seed {seed}: {} {flow:?}\npolicies: {:#?}\npods: {:#?}\nallow_host: {}",
                            pod.id, c.state.policies, c.state.pods, c.opts.allow_host
                        );
                        let ep = net.endpoint(&format!("{}/{}", pod.id.namespace, pod.id.name));
                        if if direction == IN { ep.ingress_isolated } else { ep.egress_isolated } {
                            checked += 1;
                            allowed += usize::from(got);
                        }
                    }
                }
            }
        }
    }
    // The generator must exercise both answers where it matters: on isolated endpoints.
    println!("{allowed} of {checked} flows of isolated endpoints allowed");
    assert!(checked > 50_000 && allowed > checked / 5 && allowed < checked * 4 / 5, "{allowed} of {checked} flows allowed");
}

#[test]
fn rule_ids_of_removed_policies_are_freed_and_reused_so_the_table_stays_small() {
    let deny = |name: &str| {
        format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: a}}\nspec:\n  podSelector: {{}}\n  ingress: [{{from: [{{podSelector: {{}}}}]}}]\n")
    };
    let mut compiler = Compiler::new();
    let first = cluster().with_policy(&deny("p0")).compile_with(&mut compiler).desired;
    assert_eq!(first.rules.keys().copied().collect::<Vec<_>>(), [1]);
    // 100 policies replaced one after the other: the table never holds more than the live one,
    // and ids are reused instead of growing.
    for i in 1..=100 {
        let d = cluster().with_policy(&deny(&format!("p{i}"))).compile_with(&mut compiler).desired;
        assert_eq!(d.rules.len(), 1, "only the live rule is in the table");
        let (id, rule) = d.rules.iter().next().expect("one rule");
        assert_eq!(rule.policy.to_string(), format!("a/p{i}"));
        // Freed at the end of the compile that no longer uses it, so ids alternate 1 and 2.
        assert!(*id <= 2, "freed ids are reused: id {id} at step {i}");
    }
    // Two live policies keep distinct, stable ids.
    let both = cluster().with_policy(&deny("p100")).with_policy(&deny("q")).compile_with(&mut compiler).desired;
    assert_eq!(both.rules.keys().copied().collect::<Vec<_>>(), [1, 2]);
    let again = cluster().with_policy(&deny("p100")).with_policy(&deny("q")).compile_with(&mut compiler).desired;
    assert_eq!(again.rules, both.rules, "stable while live");
}
