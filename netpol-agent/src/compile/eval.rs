//! The one evaluator of compiled maps: the data path's decision for a new flow, in user space,
//! lookup for lookup as the classifier makes it (exact peer, CIDR region, ANY; then the kernel's
//! policy maps, [`super::kernel::PolicyMaps::allows`]). `explain`, `lint`, `graph` and the
//! differential tests all ask it, through [`allows`] on one node's [`Desired`] or through a
//! [`Dataplane`] of every node that runs the pods of interest.

use std::{borrow::Cow, collections::BTreeMap, net::IpAddr};

use netpol_common::{PolicyKey, IDENTITY_ANY};

use super::{kernel::ip_key, CompileOptions, Compiler, Desired};
use crate::model::{ClusterState, Direction, ObjectRef, Pod, PortSpec, Protocol};

/// A new flow as one endpoint sees it.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    /// Ingress (peer -> pod) or egress (pod -> peer).
    pub direction: Direction,
    /// The other end's address.
    pub peer: IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    /// Destination port (0 for protocols without ports).
    pub port: u16,
}

/// The peer identities the classifier looks up for `peer`: exact (pod or host), CIDR region,
/// and ANY.
pub fn peer_identities(desired: &Desired, peer: IpAddr) -> Vec<u32> {
    let key = ip_key(&peer);
    let mut ids = Vec::new();
    if let Some(id) = desired.ipcache.get(&key) {
        ids.push(*id);
    }
    if let Some((_, id)) = desired.cidrs.iter().filter(|(k, _)| k.covers(&key)).max_by_key(|(k, _)| k.prefix_len) {
        ids.push(*id);
    }
    ids.push(IDENTITY_ANY);
    ids
}

/// Whether the compiled state allows `flow` on the local pod `pod`; `None` when the pod is
/// not a local endpoint.
pub fn allows(desired: &Desired, pod: &ObjectRef, flow: &Flow) -> Option<bool> {
    let ep = desired.endpoints.get(pod)?;
    let isolated = match flow.direction {
        Direction::Ingress => ep.ingress_isolated,
        Direction::Egress => ep.egress_isolated,
    };
    if !isolated {
        return Some(true);
    }
    Some(peer_identities(desired, flow.peer).into_iter().any(|identity| {
        let probe = PolicyKey { endpoint: ep.id, identity, direction: flow.direction.number(), protocol: flow.protocol, port_be: flow.port.to_be() };
        desired.policy.allows(&probe)
    }))
}

/// The compiled maps of the nodes that run the pods of interest, asked flow by flow: the
/// kernel's answer, offline. Pods without a node are compiled as if on a node of their own.
#[derive(Clone, Debug, Default)]
pub struct Dataplane {
    /// Per node: the compiled state.
    nodes: BTreeMap<String, Desired>,
    node_of: BTreeMap<ObjectRef, String>,
}

/// The node name given to pods that have none, so that they can be compiled as local.
const UNSCHEDULED: &str = "(unscheduled)";

impl Dataplane {
    /// Compiles every node that runs a pod.
    pub fn compile(state: &ClusterState) -> Self {
        let pods: Vec<&Pod> = state.pods.values().collect();
        Self::compile_nodes(state, &pods)
    }

    /// Compiles the nodes that run `pods` (once per node).
    pub fn compile_nodes(state: &ClusterState, pods: &[&Pod]) -> Self {
        let state: Cow<'_, ClusterState> = if state.pods.values().any(|p| p.node.is_empty()) {
            let mut s = state.clone();
            for p in s.pods.values_mut().filter(|p| p.node.is_empty()) {
                p.node = UNSCHEDULED.to_string();
            }
            Cow::Owned(s)
        } else {
            Cow::Borrowed(state)
        };
        let node = |p: &Pod| if p.node.is_empty() { UNSCHEDULED.to_string() } else { p.node.clone() };
        let mut out = Self::default();
        for pod in pods {
            let n = node(pod);
            if !out.nodes.contains_key(&n) {
                let opts = CompileOptions { node: n.clone(), host_ips: Vec::new(), allow_host: false };
                out.nodes.insert(n.clone(), Compiler::new().compile(&state, &opts));
            }
            out.node_of.insert(pod.id.clone(), n);
        }
        out
    }

    /// The verdict for `flow` at `pod`; `None` when `pod` was not compiled.
    pub fn allows(&self, pod: &ObjectRef, flow: &Flow) -> Option<bool> {
        allows(self.nodes.get(self.node_of.get(pod)?)?, pod, flow)
    }

    /// The verdict for `protocol` and `port` at `pod` (no port: every port of the protocol,
    /// judged at every port where some rule's answer can change).
    pub fn allows_port(&self, state: &ClusterState, pod: &ObjectRef, direction: Direction, peer: IpAddr, protocol: Protocol, port: Option<u16>) -> Option<bool> {
        let flow = |p: u16| Flow { direction, peer, protocol: protocol.number(), port: p };
        match port {
            Some(p) => self.allows(pod, &flow(p)),
            None => {
                let mut all = true;
                for p in port_breakpoints(state) {
                    all &= self.allows(pod, &flow(p))?;
                }
                Some(all)
            }
        }
    }
}

/// Every port where a verdict can change, so that checking them all checks every port.
fn port_breakpoints(state: &ClusterState) -> Vec<u16> {
    let mut points = vec![1, u16::MAX];
    let mut add = |lo: u16, hi: u16| {
        points.extend([lo.saturating_sub(1).max(1), lo, hi, hi.saturating_add(1)]);
    };
    for policy in state.policies.values() {
        for rule in policy.ingress.iter().chain(&policy.egress) {
            for pm in &rule.ports {
                if let PortSpec::Range(lo, hi) = pm.port {
                    add(lo, hi);
                }
            }
        }
    }
    for pod in state.pods.values() {
        for np in &pod.named_ports {
            add(np.port, np.port);
        }
    }
    points.sort_unstable();
    points.dedup();
    points
}
