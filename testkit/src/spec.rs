//! NetworkPolicy read straight off the API's definition, flow by flow, with no identities, no
//! regions and no maps: the reference the compiled maps are tested against (the compiler's
//! random clusters, the fuzz targets).

use std::net::IpAddr;

use ipnet::IpNet;
use netpol_agent::{
    compile::eval::Flow,
    model::{ClusterState, Direction, Peer, Pod, Policy, PortSpec},
};

/// The pod with address `ip`.
fn pod_of(state: &ClusterState, ip: IpAddr) -> Option<&Pod> {
    state.pods.values().find(|p| p.ips.contains(&ip))
}

/// Whether `ip` is in the ipBlock `cidr` but none of its `except`s.
fn in_block(ip: IpAddr, cidr: &IpNet, except: &[IpNet]) -> bool {
    cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
}

/// Whether `peer` of a rule of `policy` matches address `ip`.
fn peer_matches(state: &ClusterState, policy: &Policy, peer: &Peer, ip: IpAddr) -> bool {
    match peer {
        Peer::IpBlock { cidr, except } => in_block(ip, cidr, except),
        Peer::Pods { namespaces, pods } => pod_of(state, ip).is_some_and(|q| {
            let ns_ok = match namespaces {
                None => q.id.namespace == policy.id.namespace,
                Some(sel) => sel.matches(&state.namespace_labels(&q.id.namespace)),
            };
            ns_ok && pods.matches(&q.labels)
        }),
    }
}

/// What the oracle says: a flow is allowed, denied, or (egress to a named port of a pod reached
/// only through an ipBlock, which the API leaves to implementations) either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The narrow reading: a named port resolves only against pods selected by a pod peer (or
    /// any pod, for a rule without peers).
    pub strict: bool,
    /// The broad reading: also against a pod whose address an ipBlock peer matches.
    pub lenient: bool,
}

/// NetworkPolicy semantics for `flow` on pod `pod`, read straight off the API's definition.
pub fn oracle(state: &ClusterState, pod: &Pod, flow: &Flow) -> Verdict {
    let selecting: Vec<&Policy> =
        state.policies.values().filter(|p| p.id.namespace == pod.id.namespace && p.pod_selector.matches(&pod.labels)).collect();
    let isolating: Vec<&Policy> = selecting
        .into_iter()
        .filter(|p| match flow.direction {
            Direction::Ingress => p.isolates_ingress,
            Direction::Egress => p.isolates_egress,
        })
        .collect();
    if isolating.is_empty() {
        return Verdict { strict: true, lenient: true };
    }
    let peer_pod = pod_of(state, flow.peer);
    let mut v = Verdict { strict: false, lenient: false };
    for policy in isolating {
        let rules = match flow.direction {
            Direction::Ingress => &policy.ingress,
            Direction::Egress => &policy.egress,
        };
        for rule in rules {
            let by_pod_peer =
                rule.peers.is_empty() || rule.peers.iter().any(|p| matches!(p, Peer::Pods { .. }) && peer_matches(state, policy, p, flow.peer));
            let by_block = rule.peers.iter().any(|p| matches!(p, Peer::IpBlock { .. }) && peer_matches(state, policy, p, flow.peer));
            if !by_pod_peer && !by_block {
                continue;
            }
            let port_ok = |named_via_pod: bool| {
                rule.ports.is_empty()
                    || rule.ports.iter().any(|pm| {
                        pm.protocol.number() == flow.protocol
                            && match &pm.port {
                                PortSpec::All => true,
                                PortSpec::Range(lo, hi) => (*lo..=*hi).contains(&flow.port),
                                PortSpec::Named(name) => {
                                    let owner = match flow.direction {
                                        Direction::Ingress => Some(pod),
                                        Direction::Egress if named_via_pod => peer_pod,
                                        Direction::Egress => None,
                                    };
                                    owner.is_some_and(|o| {
                                        o.named_ports.iter().any(|np| np.name == *name && np.protocol == pm.protocol && np.port == flow.port)
                                    })
                                }
                            }
                    })
            };
            if port_ok(by_pod_peer) {
                v.strict = true;
            }
            if port_ok(true) {
                v.lenient = true;
            }
        }
    }
    v
}

/// Whether some policy selecting `pod` isolates it in `direction`.
pub fn isolated(state: &ClusterState, pod: &Pod, direction: Direction) -> bool {
    state.policies.values().any(|p| {
        p.id.namespace == pod.id.namespace
            && p.pod_selector.matches(&pod.labels)
            && match direction {
                Direction::Ingress => p.isolates_ingress,
                Direction::Egress => p.isolates_egress,
            }
    })
}
