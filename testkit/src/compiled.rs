//! A compiled cluster: a model state and the options to compile it with, compiled for node
//! [`NODE`] by the real compiler, checked against the invariants every compilation keeps, and
//! asked flow by flow through the one evaluator of compiled maps (truth tables).

use std::net::IpAddr;

use netpol_agent::{
    compile::{
        eval::{allows, Flow},
        kernel::ip_key,
        CompileOptions, Compiler, Desired, EndpointPlan,
    },
    model::{ClusterState, Direction, Namespace, ObjectRef},
};
use netpol_common::{IDENTITY_ANY, IDENTITY_FIRST_CIDR, IDENTITY_HOST, POLICY_PREFIX_PEER};

pub use crate::frames::{ICMP, ICMPV6, SCTP, TCP, UDP};
use crate::objects::{namespace, pod, policy, PodBuilder, NODE, OTHER_NODE};

/// The node's own IPv4 address.
pub const HOST: &str = "198.18.255.1";
/// The node's own IPv6 address.
pub const HOST6: &str = "fd00:198:18:ffff::1";
/// An address outside the cluster (a documentation range, never contacted).
pub const OUTSIDE: &str = "203.0.113.7";
/// An IPv6 address outside the cluster.
pub const OUTSIDE6: &str = "2001:db8::7";
/// Ingress, for truth tables.
pub const IN: Direction = Direction::Ingress;
/// Egress, for truth tables.
pub const OUT: Direction = Direction::Egress;
/// The flow is allowed.
pub const ALLOW: bool = true;
/// The flow is denied.
pub const DENY: bool = false;

/// One row of a truth table: direction, peer (an address, `ns/name` for a pod's first address,
/// `ns/name@6` for its IPv6 address), protocol, port, expected verdict.
pub type Row<'a> = (Direction, &'a str, u8, u16, bool);

/// A cluster and the options to compile it with.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub state: ClusterState,
    pub opts: CompileOptions,
}

impl Cluster {
    /// Nothing but the node's own addresses.
    pub fn empty() -> Self {
        Self {
            state: ClusterState::default(),
            opts: CompileOptions {
                node: NODE.into(),
                host_ips: vec![HOST.parse().expect("HOST"), HOST6.parse().expect("HOST6")],
                allow_host: false,
            },
        }
    }

    /// With a namespace.
    pub fn with_namespace(mut self, ns: Namespace) -> Self {
        self.state.namespaces.insert(ns.name.clone(), ns);
        self
    }

    /// With a pod.
    pub fn with_pod(mut self, p: PodBuilder) -> Self {
        let p = p.build();
        self.state.pods.insert(p.id.clone(), p);
        self
    }

    /// With a policy from YAML.
    pub fn with_policy(mut self, yaml: &str) -> Self {
        let p = policy(yaml);
        self.state.policies.insert(p.id.clone(), p);
        self
    }

    /// Whether the node may reach its pods.
    pub fn allow_host(mut self, on: bool) -> Self {
        self.opts.allow_host = on;
        self
    }

    /// Compiles with a fresh compiler.
    pub fn compile(&self) -> Net<'_> {
        self.compile_with(&mut Compiler::new())
    }

    /// Compiles with `compiler` (which keeps its numbers from earlier compilations).
    pub fn compile_with(&self, compiler: &mut Compiler) -> Net<'_> {
        let desired = compiler.compile(&self.state, &self.opts);
        check_invariants(&desired);
        Net { cluster: self, desired }
    }
}

/// The standard cluster. Local pods (node n1): a/x, a/y, b/z. Namespaces a (team=alpha,
/// env=prod), b (team=beta, env=dev), c (no labels), and d, which has pods but no Namespace
/// object.
pub fn cluster() -> Cluster {
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
pub struct Net<'a> {
    pub cluster: &'a Cluster,
    pub desired: Desired,
}

impl Net<'_> {
    /// The address a truth table's peer names.
    pub fn addr(&self, who: &str) -> IpAddr {
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

    /// `ns/name` as a reference.
    pub fn pod_ref(pod: &str) -> ObjectRef {
        let (ns, name) = pod.split_once('/').unwrap_or_else(|| panic!("{pod:?} is not ns/name"));
        ObjectRef::new(ns, name)
    }

    /// The compiled verdict for one flow at local pod `pod`.
    pub fn verdict(&self, pod: &str, (direction, peer, protocol, port): (Direction, &str, u8, u16)) -> bool {
        let flow = Flow { direction, peer: self.addr(peer), protocol, port };
        allows(&self.desired, &Self::pod_ref(pod), &flow).unwrap_or_else(|| panic!("{pod} is not a local endpoint"))
    }

    /// Checks every row, and reports all the rows that disagree at once.
    pub fn expect(&self, pod: &str, table: &[Row<'_>]) {
        let wrong: Vec<String> = table
            .iter()
            .filter(|(d, peer, proto, port, want)| self.verdict(pod, (*d, peer, *proto, *port)) != *want)
            .map(|(d, peer, proto, port, want)| {
                format!("  {d:?} {peer} ({}) proto {proto} port {port}: want {}", self.addr(peer), if *want { "ALLOW" } else { "DENY" })
            })
            .collect();
        assert!(wrong.is_empty(), "pod {pod}: wrong verdicts\n{}\nendpoint: {:?}", wrong.join("\n"), self.endpoint(pod));
    }

    /// The endpoint of local pod `pod`.
    pub fn endpoint(&self, pod: &str) -> &EndpointPlan {
        self.desired.endpoints.get(&Self::pod_ref(pod)).unwrap_or_else(|| panic!("{pod} is not a local endpoint"))
    }

    /// Whether local pod `pod` is isolated for (ingress, egress).
    pub fn isolation(&self, pod: &str) -> (bool, bool) {
        let ep = self.endpoint(pod);
        (ep.ingress_isolated, ep.egress_isolated)
    }

    /// How many policy entries local pod `pod` has, in the three maps.
    pub fn entries(&self, pod: &str) -> usize {
        self.desired.policy.of_endpoint(self.endpoint(pod).id).count()
    }

    /// The identity the ipcache gives an address.
    pub fn identity_of(&self, who: &str) -> u32 {
        *self.desired.ipcache.get(&ip_key(&self.addr(who))).unwrap_or_else(|| panic!("{who} not in the ipcache"))
    }
}

/// What must hold for every compilation, whatever the input.
pub fn check_invariants(d: &Desired) {
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
