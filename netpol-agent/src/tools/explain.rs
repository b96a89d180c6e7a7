//! `explain`: whether a flow between two endpoints is allowed, and why.
//!
//! The verdict comes from the compiler and [`crate::compile::eval::allows`], the same map contents and
//! lookups the kernel uses: egress is judged on the source pod's node, ingress on the
//! destination pod's node, and a flow is allowed iff both sides allow it. The reasons come from
//! the model: every policy that selects the pod, every rule of the direction, whether its peers
//! and its ports match the other end. Tests hold the two readings to the same answer.

use std::{fmt, net::IpAddr, str::FromStr};

use crate::{
    compile::{cidr, eval::Dataplane},
    model::{
        selector::{Requirement, Selector},
        ClusterState, Direction, ObjectRef, Peer, Pod, Policy, PortMatch, PortSpec, Protocol, Rule,
    },
};

/// What went wrong before a flow could be explained.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExplainError {
    /// The endpoint is neither `NAMESPACE/NAME` nor an address.
    #[error("{0:?} is neither a pod (NAMESPACE/NAME) nor an IP address")]
    BadEndpoint(String),
    /// The port is not `PORT`, `PORT/PROTOCOL` or `PROTOCOL`.
    #[error("bad port {0:?}: {1}")]
    BadPort(String, String),
    /// No such pod in the state.
    #[error("no pod {0} in the manifests (pods without IPs, on the host network or finished take no part in policy)")]
    UnknownPod(ObjectRef),
    /// The two ends share no address family.
    #[error("{0} and {1} have no address of the same family (IPv4/IPv6)")]
    NoCommonFamily(String, String),
}

/// One end of a flow as the user names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A pod, `namespace/name`.
    Pod(ObjectRef),
    /// An address; a pod's address stands for that pod.
    Ip(IpAddr),
}

impl FromStr for Endpoint {
    type Err = ExplainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok(Self::Pod(ObjectRef::new(ns, name))),
            _ => Err(ExplainError::BadEndpoint(s.to_string())),
        }
    }
}

/// The port of the question: a protocol and a port, or a protocol alone ("every port of it").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortQuery {
    /// Protocol.
    pub protocol: Protocol,
    /// Destination port; `None` asks about every port of the protocol.
    pub port: Option<u16>,
}

impl FromStr for PortQuery {
    type Err = ExplainError;

    /// `80` (TCP), `53/UDP`, `8080/tcp`, or a protocol alone: `UDP`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| ExplainError::BadPort(s.to_string(), why.to_string());
        let protocol = |p: &str| Protocol::parse(Some(&p.to_ascii_uppercase())).map_err(|e| bad(&e.to_string()));
        let number =
            |n: &str| n.parse::<u16>().ok().filter(|n| *n != 0).ok_or_else(|| bad("the port must be a number in 1-65535 (named ports are not supported)"));
        match s.split_once('/') {
            Some((n, p)) => Ok(Self { protocol: protocol(p)?, port: Some(number(n)?) }),
            None if s.chars().all(|c| c.is_ascii_digit()) => Ok(Self { protocol: Protocol::Tcp, port: Some(number(s)?) }),
            None => Ok(Self { protocol: protocol(s)?, port: None }),
        }
    }
}

impl fmt::Display for PortQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{p}/{}", self.protocol),
            None => write!(f, "every {} port", self.protocol),
        }
    }
}

/// The verdict and the reasons for one flow.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Explanation {
    /// Whether the flow is allowed: egress at the source and ingress at the destination.
    pub allowed: bool,
    /// The source, as `ns/name (ip)` or the address.
    pub from: String,
    /// The destination.
    pub to: String,
    /// The port asked about, e.g. `80/TCP`.
    pub port: String,
    /// The source pod's egress.
    pub egress: Side,
    /// The destination pod's ingress.
    pub ingress: Side,
}

/// One direction at one pod.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Side {
    /// The pod whose policies decide (`ns/name`); `None` when this end is not a pod.
    pub pod: Option<String>,
    /// Whether some policy selecting the pod isolates this direction.
    pub isolated: bool,
    /// The compiled maps' verdict for this side.
    pub allowed: bool,
    /// Every policy selecting the pod.
    pub policies: Vec<PolicyVerdict>,
    /// Every rule of this direction of those policies.
    pub rules: Vec<RuleVerdict>,
    /// One sentence: what decides.
    pub summary: String,
}

/// A policy that selects the pod.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PolicyVerdict {
    /// `ns/name`.
    pub name: String,
    /// Whether it isolates the side's direction (its `policyTypes`, after defaulting).
    pub isolates: bool,
}

/// One rule of a selecting policy.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RuleVerdict {
    /// `ns/name` of the policy.
    pub policy: String,
    /// Ingress or egress.
    pub direction: Direction,
    /// Index in the policy's rule list.
    pub index: usize,
    /// Whether the rule allows the flow (peer and port match, and the policy isolates).
    pub matched: bool,
    /// Whether some peer matches the other end.
    pub peer_matched: bool,
    /// Whether some port entry matches.
    pub port_matched: bool,
    /// The reason, in words.
    pub why: String,
}

impl Side {
    /// The verdict the rule list implies: not isolated, or some rule matches.
    pub fn rules_allow(&self) -> bool {
        !self.isolated || self.rules.iter().any(|r| r.matched)
    }
}

/// Explains a flow from `from` to `to` on `port`.
pub fn explain(state: &ClusterState, from: &Endpoint, to: &Endpoint, port: PortQuery) -> Result<Explanation, ExplainError> {
    let src = resolve(state, from)?;
    let dst = resolve(state, to)?;
    let (src_ip, dst_ip) = addresses(&src, &dst)?;
    let src = End { pod: src.pod, ip: src_ip };
    let dst = End { pod: dst.pod, ip: dst_ip };
    let pods: Vec<&Pod> = src.pod.iter().chain(dst.pod.iter()).copied().collect();
    let dataplane = Dataplane::compile_nodes(state, &pods);
    let egress = side(state, &dataplane, Direction::Egress, &src, &dst, port);
    let ingress = side(state, &dataplane, Direction::Ingress, &dst, &src, port);
    Ok(Explanation { allowed: egress.allowed && ingress.allowed, from: src.to_string(), to: dst.to_string(), port: port.to_string(), egress, ingress })
}

/// A resolved end: the pod (if the end is one) and the address used.
#[derive(Clone, Copy)]
struct End<'a> {
    pod: Option<&'a Pod>,
    ip: IpAddr,
}

impl fmt::Display for End<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pod {
            Some(p) => write!(f, "{} ({})", p.id, self.ip),
            None => write!(f, "{}", self.ip),
        }
    }
}

struct Named<'a> {
    pod: Option<&'a Pod>,
    ip: Option<IpAddr>,
    name: String,
}

fn resolve<'a>(state: &'a ClusterState, e: &Endpoint) -> Result<Named<'a>, ExplainError> {
    match e {
        Endpoint::Pod(id) => {
            let pod = state.pods.get(id).ok_or_else(|| ExplainError::UnknownPod(id.clone()))?;
            Ok(Named { pod: Some(pod), ip: None, name: id.to_string() })
        }
        Endpoint::Ip(ip) => Ok(Named { pod: state.pods.values().find(|p| p.ips.contains(ip)), ip: Some(*ip), name: ip.to_string() }),
    }
}

/// The two addresses of the flow: the given ones, or pod addresses of one family.
fn addresses(src: &Named<'_>, dst: &Named<'_>) -> Result<(IpAddr, IpAddr), ExplainError> {
    let candidates = |n: &Named<'_>| -> Vec<IpAddr> {
        match (n.ip, n.pod) {
            (Some(ip), _) => vec![ip],
            (None, Some(p)) => p.ips.clone(),
            (None, None) => Vec::new(),
        }
    };
    let (s, d) = (candidates(src), candidates(dst));
    d.iter()
        .find_map(|d| s.iter().find(|s| s.is_ipv4() == d.is_ipv4()).map(|s| (*s, *d)))
        .ok_or_else(|| ExplainError::NoCommonFamily(src.name.clone(), dst.name.clone()))
}

/// The explanation of one direction at `this` end, the other end being `other`.
fn side(state: &ClusterState, dataplane: &Dataplane, direction: Direction, this: &End<'_>, other: &End<'_>, port: PortQuery) -> Side {
    let dir = direction;
    let Some(pod) = this.pod else {
        return Side {
            pod: None,
            isolated: false,
            allowed: true,
            policies: Vec::new(),
            rules: Vec::new(),
            summary: format!("{} is not a pod of the cluster: no policy applies to its {dir}", this.ip),
        };
    };
    let selecting: Vec<&Policy> = state.policies_selecting(pod).collect();
    let isolates = |p: &Policy| p.isolates(direction);
    let isolated = selecting.iter().any(|p| isolates(p));
    let policies = selecting.iter().map(|p| PolicyVerdict { name: p.id.to_string(), isolates: isolates(p) }).collect();
    let mut rules = Vec::new();
    for policy in &selecting {
        let list = policy.rules(direction);
        for (index, rule) in list.iter().enumerate() {
            let m = rule_match(state, policy, direction, rule, pod, other, port);
            let matched = isolates(policy) && m.matched;
            let why =
                if isolates(policy) { m.why } else { format!("ignored: the policy does not isolate {dir} (policyTypes), so its {dir} rules do not apply") };
            rules.push(RuleVerdict { policy: policy.id.to_string(), direction, index, matched, peer_matched: m.peer, port_matched: m.port, why });
        }
    }
    let allowed = dataplane.allows_port(state, &pod.id, direction, other.ip, port.protocol, port.port).unwrap_or(true);
    let mut side = Side { pod: Some(pod.id.to_string()), isolated, allowed, policies, rules, summary: String::new() };
    let isolating: Vec<String> = selecting.iter().filter(|p| isolates(p)).map(|p| p.id.to_string()).collect();
    side.summary = summary(&side, dir, &isolating, port.port.is_some());
    side
}

fn summary(side: &Side, dir: Direction, isolating: &[String], concrete: bool) -> String {
    let pod = side.pod.as_deref().unwrap_or_default();
    let matched: Vec<String> = side.rules.iter().filter(|r| r.matched).map(|r| format!("{} {dir}[{}]", r.policy, r.index)).collect();
    let mut s = if !side.isolated {
        format!("allowed: no policy selecting {pod} isolates {dir}, so all {dir} is allowed")
    } else if side.allowed && !matched.is_empty() {
        format!("allowed by {}", matched.join(", "))
    } else if side.allowed && !concrete {
        format!("allowed: {pod} is isolated for {dir} by {}; no one rule covers every port, but together they do", isolating.join(", "))
    } else {
        format!("denied: {pod} is isolated for {dir} by {} and none of their {dir} rules allows this flow", isolating.join(", "))
    };
    if concrete && side.allowed != side.rules_allow() {
        s.push_str(" (the compiled maps and the rule-by-rule reading disagree: please report this)");
    }
    s
}


/// How one rule fares against the other end.
struct RuleMatch {
    peer: bool,
    port: bool,
    matched: bool,
    why: String,
}

/// Matches one rule of `policy` (selecting `pod`) against the other end and port, as the
/// compiler resolves it: including that a named port of an egress rule resolves only against
/// pods the rule's peers name as pods (by selector, by no `to` at all, or by ipBlocks that hold
/// every address of the pod).
fn rule_match(state: &ClusterState, policy: &Policy, direction: Direction, rule: &Rule, pod: &Pod, other: &End<'_>, port: PortQuery) -> RuleMatch {
    let (peers_word, end_word) = match direction {
        Direction::Ingress => ("from", "source"),
        Direction::Egress => ("to", "destination"),
    };
    // Peers.
    let mut peer_notes = Vec::new();
    let mut peer = false;
    // Whether the other end is a pod identity named by the rule (what named egress ports need).
    let mut pod_peer = false;
    if rule.peers.is_empty() {
        peer = true;
        pod_peer = other.pod.is_some();
        peer_notes.push(format!("no `{peers_word}`: every {end_word} matches"));
    }
    for (j, p) in rule.peers.iter().enumerate() {
        let (ok, note) = peer_match(state, policy, p, other);
        peer |= ok;
        if ok && matches!(p, Peer::Pods { .. }) {
            pod_peer = true;
        }
        peer_notes.push(format!("{peers_word}[{j}] {}", note));
    }
    let blocks: Vec<(&ipnet::IpNet, &[ipnet::IpNet])> = rule
        .peers
        .iter()
        .filter_map(|p| match p {
            Peer::IpBlock { cidr, except } => Some((cidr, except.as_slice())),
            Peer::Pods { .. } => None,
        })
        .collect();
    if let Some(o) = other.pod {
        if !blocks.is_empty() && o.ips.iter().all(|ip| blocks.iter().any(|(c, e)| cidr::addr_in_block(ip, c, e))) {
            pod_peer = true;
        }
    }
    // Ports.
    let mut port_notes = Vec::new();
    let mut port_ok = false;
    let mut matched = false;
    if rule.ports.is_empty() {
        port_ok = true;
        matched = peer;
        port_notes.push("no `ports`: every port and protocol matches".to_string());
    }
    for (k, pm) in rule.ports.iter().enumerate() {
        let (ok, note) = port_match(direction, pm, pod, other, port);
        let named = matches!(pm.port, PortSpec::Named(_));
        port_ok |= ok;
        if ok {
            if named && direction == Direction::Egress {
                if pod_peer {
                    matched = true;
                } else if peer {
                    port_notes.push(format!(
                        "ports[{k}] is a named port: it resolves only against pods the rule names as pods (by selector, by no `to`, or by ipBlocks holding every address of the pod), and {} is not one",
                        other.ip
                    ));
                }
            } else {
                matched |= peer;
            }
        }
        port_notes.push(format!("ports[{k}] {note}"));
    }
    let verdict = if matched { "allows" } else { "does not allow" };
    let why = format!("{verdict}: {}; {}", peer_notes.join("; "), port_notes.join("; "));
    RuleMatch { peer, port: port_ok, matched, why }
}

fn peer_match(state: &ClusterState, policy: &Policy, peer: &Peer, other: &End<'_>) -> (bool, String) {
    match peer {
        Peer::Pods { namespaces, pods } => {
            let Some(o) = other.pod else {
                return (false, format!("selects pods, and {} is not a pod of the cluster", other.ip));
            };
            let (ns_ok, ns_note) = match namespaces {
                None => {
                    let ok = o.id.namespace == policy.id.namespace;
                    (ok, format!("(no namespaceSelector: namespace {} only) {}", policy.id.namespace, if ok { "matches" } else { "does not match" }))
                }
                Some(sel) => {
                    let ok = sel.matches(&state.namespace_labels(&o.id.namespace));
                    (ok, format!("namespaceSelector {} {} namespace {}", selector_text(sel), if ok { "matches" } else { "does not match" }, o.id.namespace))
                }
            };
            let pod_ok = pods.matches(&o.labels);
            let pod_note = format!("podSelector {} {} {}", selector_text(pods), if pod_ok { "matches" } else { "does not match" }, o.id);
            let ok = ns_ok && pod_ok;
            (ok, format!("{}: {ns_note}, {pod_note}", if ok { "matches" } else { "does not match" }))
        }
        Peer::IpBlock { cidr, except } => {
            let ok = cidr::addr_in_block(&other.ip, cidr, except);
            let except_text =
                if except.is_empty() { String::new() } else { format!(" except {}", except.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")) };
            (ok, format!("ipBlock {cidr}{except_text} {} {}", if ok { "contains" } else { "does not contain" }, other.ip))
        }
    }
}

fn port_match(direction: Direction, pm: &PortMatch, pod: &Pod, other: &End<'_>, q: PortQuery) -> (bool, String) {
    let text = port_match_text(pm);
    if pm.protocol != q.protocol {
        return (false, format!("{text} is not {}", q.protocol));
    }
    match (&pm.port, q.port) {
        (PortSpec::All, _) => (true, format!("{text} matches every {} port", q.protocol)),
        (PortSpec::Range(lo, hi), Some(p)) => {
            let ok = (*lo..=*hi).contains(&p);
            (ok, format!("{text} {} {p}", if ok { "includes" } else { "does not include" }))
        }
        (PortSpec::Range(lo, hi), None) => {
            let ok = *lo == 1 && *hi == u16::MAX;
            (ok, format!("{text} {} every port", if ok { "covers" } else { "does not cover" }))
        }
        (PortSpec::Named(name), p) => {
            let owner = match direction {
                Direction::Ingress => Some(pod),
                Direction::Egress => other.pod,
            };
            let Some(owner) = owner else {
                return (false, format!("{text} is a named port and {} is not a pod", other.ip));
            };
            let numbers: Vec<u16> = owner.named_ports.iter().filter(|np| np.name == *name && np.protocol == pm.protocol).map(|np| np.port).collect();
            match (numbers.is_empty(), p) {
                (true, _) => (false, format!("{text}: {} has no {} port named {name:?}", owner.id, pm.protocol)),
                (false, Some(p)) => {
                    let ok = numbers.contains(&p);
                    let list = numbers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                    (ok, format!("{text} ({list} on {}) {} {p}", owner.id, if ok { "includes" } else { "does not include" }))
                }
                (false, None) => (false, format!("{text} is one port of {}, not every port", owner.id)),
            }
        }
    }
}

/// A `ports` entry as text: `80/TCP`, `8000-8080/TCP`, `http/TCP`, `TCP`.
pub fn port_match_text(pm: &PortMatch) -> String {
    match &pm.port {
        PortSpec::All => pm.protocol.to_string(),
        PortSpec::Range(lo, hi) if lo == hi => format!("{lo}/{}", pm.protocol),
        PortSpec::Range(lo, hi) => format!("{lo}-{hi}/{}", pm.protocol),
        PortSpec::Named(n) => format!("{n}/{}", pm.protocol),
    }
}

/// A selector as short text: `{}` for everything, else `app=web, tier in (a, b), !x`.
pub fn selector_text(sel: &Selector) -> String {
    if sel.is_everything() {
        return "{}".to_string();
    }
    let parts: Vec<String> = sel
        .requirements
        .iter()
        .map(|r| match r {
            Requirement::In(k, vs) if vs.len() == 1 => format!("{k}={}", vs[0]),
            Requirement::In(k, vs) => format!("{k} in ({})", vs.join(", ")),
            Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(", ")),
            Requirement::Exists(k) => k.clone(),
            Requirement::DoesNotExist(k) => format!("!{k}"),
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} -> {} on {}: {}", self.from, self.to, self.port, if self.allowed { "ALLOWED" } else { "DENIED" })?;
        for (dir, side) in [(Direction::Egress, &self.egress), (Direction::Ingress, &self.ingress)] {
            writeln!(f)?;
            match &side.pod {
                Some(p) => writeln!(f, "{dir} at {p}: {}", side.summary)?,
                None => writeln!(f, "{dir}: {}", side.summary)?,
            }
            for p in &side.policies {
                writeln!(f, "  policy {} ({})", p.name, if p.isolates { format!("isolates {dir}") } else { format!("does not isolate {dir}") })?;
                for r in side.rules.iter().filter(|r| r.policy == p.name) {
                    writeln!(f, "    {dir}[{}] {}: {}", r.index, if r.matched { "MATCH" } else { "no" }, r.why)?;
                }
            }
        }
        Ok(())
    }
}
