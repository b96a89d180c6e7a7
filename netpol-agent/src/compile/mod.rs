//! The compiler: from a [`ClusterState`] to the exact contents every kernel map should have on
//! one node ([`Desired`]), which the reconciler only diffs and writes. Pure: no I/O,
//! deterministic for a given input and allocator state.
//!
//! Identities follow the design (docs/architecture.md): every distinct (namespace, namespace
//! labels, pod labels, named ports) set gets a numeric identity ([`identity`]); every ipBlock
//! region gets a CIDR identity ([`cidr`]); each rule of each policy that selects a local pod
//! becomes policy entries ([`rules`], [`ports`]) in the kernel's shapes ([`kernel`]). Named
//! ports are part of a pod identity so that egress to a named port resolves exactly against the
//! peer pod's own container ports. [`eval`] answers questions over the result as the kernel
//! would. From outside: [`Compiler`], [`Desired`] and what it holds, [`eval`].

pub mod cidr;
pub mod eval;
pub mod identity;
pub mod kernel;
pub mod ports;
mod rules;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use ipnet::IpNet;
use netpol_common::{IpKey, IDENTITY_FIRST_CIDR, IDENTITY_FIRST_POD, IDENTITY_HOST};

use crate::model::{selector::Labels, ClusterState, Direction, ObjectRef, Peer, Pod};
use identity::{Allocator, IdentityKey, IdentityParts, PodIdentities, RuleIds, RuleKey};
use kernel::{cidr_key, ip_key, CidrKey, PolicyMaps};
use rules::{insert_entry, Entries, PodIdentity, RuleContext};

/// What the compiler needs to know besides the cluster.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// This node's name: pods with this `spec.nodeName` are local endpoints.
    pub node: String,
    /// The node's own addresses (identity HOST).
    pub host_ips: Vec<IpAddr>,
    /// Whether the node may always reach its own pods (kubelet probes), as other
    /// implementations allow.
    pub allow_host: bool,
}

/// A local pod as the data path will know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointPlan {
    /// Endpoint id.
    pub id: u32,
    /// Some policy isolates ingress.
    pub ingress_isolated: bool,
    /// Some policy isolates egress.
    pub egress_isolated: bool,
    /// The pod's IPv4 address, if any.
    pub ipv4: Option<Ipv4Addr>,
    /// The pod's IPv6 address, if any.
    pub ipv6: Option<Ipv6Addr>,
    /// All the pod's addresses (the attacher finds the pod's veth by them).
    pub ips: Vec<IpAddr>,
    /// Audit mode: its namespace is in [`ClusterState::audit_namespaces`]; policy drops pass
    /// and are counted (and reported) as "would drop".
    pub audit: bool,
}

/// Which rule of which policy a policy entry comes from (rule ids index this, from 1).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef {
    /// The policy.
    pub policy: ObjectRef,
    /// Ingress or egress rules.
    pub direction: Direction,
    /// Index of the rule in its list.
    pub index: usize,
}

impl RuleRef {
    /// The rule's place in its policy: `ingress[0]`, `egress[2]`.
    pub fn rule(&self) -> String {
        format!("{}[{}]", self.direction, self.index)
    }
}

impl fmt::Display for RuleRef {
    /// `namespace/policy ingress[i]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}[{}]", self.policy, self.direction, self.index)
    }
}

/// The desired contents of every map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Local pods, by namespace/name.
    pub endpoints: BTreeMap<ObjectRef, EndpointPlan>,
    /// Exact IP -> identity.
    pub ipcache: BTreeMap<IpKey, u32>,
    /// ipBlock region -> CIDR identity.
    pub cidrs: BTreeMap<CidrKey, u32>,
    /// The policy maps, as the kernel holds them.
    pub policy: PolicyMaps,
    /// How many policy entries were compiled (one per endpoint, peer identity, direction and
    /// protocol, port or port-range prefix) before they took the kernel's three shapes: the
    /// `policy` figure of `netpol_map_entries` and of the benchmarks.
    pub policy_entries: usize,
    /// Rule ids (from 1) to the rules that have entries in this state. A rule keeps its id
    /// while it has entries; the id of a rule that has none any more is handed out again
    /// (lowest first), so ids stay few and dense (the data path counts hits per id, and the
    /// reconciler zeroes an id's count when the rule behind it changes).
    pub rules: BTreeMap<u32, RuleRef>,
    /// Pod identities in use (shared with the compiler's allocator, not copied per compile).
    pub identities: BTreeMap<u32, Arc<IdentityKey>>,
}

/// The compiler, holding the number allocators that keep identities, endpoint ids and rule
/// ids stable from one compilation to the next.
#[derive(Clone, Debug)]
pub struct Compiler {
    identities: PodIdentities,
    cidr_identities: Allocator<IpNet>,
    endpoints: Allocator<ObjectRef>,
    /// Stable, so that a policy change does not renumber (and so rewrite) the entries of
    /// endpoints it does not select.
    rule_ids: RuleIds,
}

impl Default for Compiler {
    fn default() -> Self {
        Self::new()
    }
}

impl Compiler {
    /// A compiler with no numbers handed out yet.
    pub fn new() -> Self {
        Self {
            identities: PodIdentities::new(IDENTITY_FIRST_POD),
            cidr_identities: Allocator::new(IDENTITY_FIRST_CIDR),
            endpoints: Allocator::new(1),
            rule_ids: RuleIds::default(),
        }
    }

    /// Gives `pod` the endpoint id `id` (an id an earlier agent used), unless it has one.
    pub fn seed_endpoint(&mut self, pod: &ObjectRef, id: u32) {
        self.endpoints.seed(pod, id);
    }

    /// Compiles the cluster into map contents for `opts.node`.
    pub fn compile(&mut self, state: &ClusterState, opts: &CompileOptions) -> Desired {
        let mut out = Desired::default();
        let implicit = implicit_namespace_labels(state);
        let identities = self.pod_identities(state, &implicit, &mut out);
        for ip in &opts.host_ips {
            out.ipcache.entry(ip_key(ip)).or_insert(IDENTITY_HOST);
        }
        let regions = self.cidr_identities(state, &mut out);
        let mut entries = Entries::new();
        let mut used_rules: BTreeSet<RuleKey> = BTreeSet::new();

        let local: Vec<&Pod> = state.pods.values().filter(|p| !opts.node.is_empty() && p.node == opts.node).collect();
        let local_refs: BTreeSet<ObjectRef> = local.iter().map(|p| p.id.clone()).collect();
        self.endpoints.retain(&local_refs);
        for pod in local {
            let endpoint = self.endpoints.get(&pod.id);
            let ctx = RuleContext { identities: &identities, regions: &regions, endpoint, pod };
            let (mut ingress_isolated, mut egress_isolated) = (false, false);
            for policy in state.policies_selecting(pod) {
                ingress_isolated |= policy.isolates_ingress;
                egress_isolated |= policy.isolates_egress;
                for direction in Direction::BOTH.into_iter().filter(|d| policy.isolates(*d)) {
                    for (index, rule) in policy.rules(direction).iter().enumerate() {
                        let key = (policy.id.clone(), direction, index);
                        let rule_id = self.rule_ids.get(&key);
                        out.rules.entry(rule_id).or_insert_with(|| RuleRef { policy: policy.id.clone(), direction, index });
                        used_rules.insert(key);
                        ctx.emit_rule(&mut entries, policy, direction, rule, rule_id);
                    }
                }
            }
            if ingress_isolated && opts.allow_host {
                insert_entry(&mut entries, endpoint, IDENTITY_HOST, Direction::Ingress, None, 0);
            }
            out.endpoints.insert(pod.id.clone(), endpoint_plan(state, pod, endpoint, ingress_isolated, egress_isolated));
        }
        self.rule_ids.retain(&used_rules);
        out.policy = PolicyMaps::from_entries(&entries);
        out.policy_entries = entries.len();
        out
    }

    /// Pod identities, grouped by parts borrowed from the snapshot (no per-pod copies), with
    /// their addresses in the ipcache. `implicit` holds the labels of every namespace the
    /// snapshot lacks ([`implicit_namespace_labels`]).
    fn pod_identities<'s>(&mut self, state: &'s ClusterState, implicit: &'s BTreeMap<&'s str, Labels>, out: &mut Desired) -> Vec<PodIdentity<'s>> {
        let mut groups: BTreeMap<IdentityParts<'s>, Vec<&'s Pod>> = BTreeMap::new();
        for pod in state.pods.values() {
            let ns = pod.id.namespace.as_str();
            let namespace_labels = match state.namespaces.get(ns) {
                Some(n) => &n.labels,
                // Invariant: implicit holds every namespace the snapshot lacks.
                None => &implicit[ns],
            };
            let parts = IdentityParts { namespace: ns, namespace_labels, labels: &pod.labels, named_ports: &pod.named_ports };
            groups.entry(parts).or_default().push(pod);
        }
        let identities: Vec<PodIdentity<'s>> = groups
            .iter()
            .map(|(parts, pods)| PodIdentity { id: self.identities.number(*parts), key: *parts, ips: pods.iter().flat_map(|p| p.ips.iter().copied()).collect() })
            .collect();
        let used: BTreeSet<u32> = identities.iter().map(|i| i.id).collect();
        out.identities = self.identities.retain(&used);
        for ident in &identities {
            for ip in &ident.ips {
                out.ipcache.entry(ip_key(ip)).or_insert(ident.id);
            }
        }
        identities
    }

    /// CIDR identities: one per region of every ipBlock prefix, in the CIDR map.
    fn cidr_identities(&mut self, state: &ClusterState, out: &mut Desired) -> Vec<(IpNet, u32)> {
        let prefixes: Vec<IpNet> = state
            .policies
            .values()
            .flat_map(|p| p.ingress.iter().chain(p.egress.iter()))
            .flat_map(|r| r.peers.iter())
            .flat_map(|peer| match peer {
                Peer::IpBlock { cidr, except } => std::iter::once(*cidr).chain(except.iter().copied()).collect(),
                Peer::Pods { .. } => Vec::new(),
            })
            .collect();
        let regions = cidr::regions(&prefixes);
        self.cidr_identities.retain(&regions);
        let region_ids: Vec<(IpNet, u32)> = regions.iter().map(|r| (*r, self.cidr_identities.get(r))).collect();
        for (region, id) in &region_ids {
            out.cidrs.insert(cidr_key(region), *id);
        }
        region_ids
    }
}

/// The labels of the namespaces that pods name but the snapshot lacks: only the name label.
fn implicit_namespace_labels(state: &ClusterState) -> BTreeMap<&str, Labels> {
    state
        .pods
        .values()
        .filter(|p| !state.namespaces.contains_key(&p.id.namespace))
        .map(|p| (p.id.namespace.as_str(), state.namespace_labels(&p.id.namespace)))
        .collect()
}

/// A local pod's endpoint.
fn endpoint_plan(state: &ClusterState, pod: &Pod, id: u32, ingress_isolated: bool, egress_isolated: bool) -> EndpointPlan {
    EndpointPlan {
        id,
        ingress_isolated,
        egress_isolated,
        audit: state.audit_namespaces.contains(&pod.id.namespace),
        ipv4: pod.ips.iter().find_map(|ip| match ip {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        }),
        ipv6: pod.ips.iter().find_map(|ip| match ip {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        }),
        ips: pod.ips.clone(),
    }
}

