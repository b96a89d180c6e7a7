//! The compiler: from a [`ClusterState`] to the exact contents every data-path map should have
//! on one node. Pure: no I/O, deterministic for a given input and allocator state.
//!
//! Identities follow the design (docs/architecture.md): every distinct (namespace, namespace
//! labels, pod labels, named ports) set gets a numeric identity; every ipBlock region gets a CIDR
//! identity; policy entries are keyed by (endpoint, peer identity, direction, protocol, port
//! prefix). Named ports are part of a pod identity so that egress to a named port resolves
//! exactly against the peer pod's own container ports.

pub mod cidr;
pub mod eval;
pub mod kernel;
pub mod ports;

use std::{
    borrow::Borrow,
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use ipnet::IpNet;
use netpol_common::{
    IpKey, PolicyKey, PolicyValue, ACTION_ALLOW, DIR_EGRESS, DIR_INGRESS, IDENTITY_ANY, IDENTITY_FIRST_CIDR,
    IDENTITY_FIRST_POD, IDENTITY_HOST, POLICY_PREFIX_FULL, POLICY_PREFIX_PEER, POLICY_PREFIX_PROTO,
    TIER_NETWORK_POLICY,
};

use crate::{

    model::{ClusterState, NamedPort, ObjectRef, Peer, Pod, Policy, PortSpec, Rule},
    compile::ports::range_prefixes,
    model::selector::Labels,

};

/// A policy direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Direction {
    /// Traffic into the selected pod.
    Ingress,
    /// Traffic out of the selected pod.
    Egress,
}

impl Direction {
    /// The data path's direction number.
    pub fn number(self) -> u8 {
        match self {
            Self::Ingress => DIR_INGRESS,
            Self::Egress => DIR_EGRESS,
        }
    }
}

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

/// An LPM key of the CIDR map: prefix length over the 128-bit (IPv4-mapped) address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CidrKey {
    /// Prefix length (IPv4 regions: 96 + length).
    pub prefix_len: u32,
    /// Address.
    pub addr: IpKey,
}

/// An LPM key of the policy map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyEntryKey {
    /// Prefix length in bits (see `netpol_common::POLICY_PREFIX_*`).
    pub prefix_len: u32,
    /// Key data, zero beyond the prefix.
    pub key: PolicyKey,
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
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RuleRef {
    /// The policy.
    pub policy: String,
    /// Ingress or egress rules.
    pub direction: Direction,
    /// Index of the rule in its list.
    pub index: usize,
}

/// What a pod identity stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey {
    /// Namespace name.
    pub namespace: String,
    /// Namespace labels.
    pub namespace_labels: Labels,
    /// Pod labels.
    pub labels: Labels,
    /// Named container ports.
    pub named_ports: Vec<NamedPort>,
}

/// An identity's parts borrowed from the snapshot: how the compiler groups pods and looks up
/// identity numbers without building (cloning) an [`IdentityKey`] per pod. Orders exactly as
/// [`IdentityKey`] does (same fields, same order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct IdentityParts<'a> {
    namespace: &'a str,
    namespace_labels: &'a Labels,
    labels: &'a Labels,
    named_ports: &'a [NamedPort],
}

impl IdentityParts<'_> {
    fn to_key(self) -> IdentityKey {
        IdentityKey {
            namespace: self.namespace.to_string(),
            namespace_labels: self.namespace_labels.clone(),
            labels: self.labels.clone(),
            named_ports: self.named_ports.to_vec(),
        }
    }
}

/// Anything that can show its [`IdentityParts`]: lets a map keyed by `Arc<IdentityKey>` be
/// searched with borrowed parts (`Borrow<dyn AsIdentityParts>`).
trait AsIdentityParts {
    fn parts(&self) -> IdentityParts<'_>;
}

impl AsIdentityParts for IdentityKey {
    fn parts(&self) -> IdentityParts<'_> {
        IdentityParts {
            namespace: &self.namespace,
            namespace_labels: &self.namespace_labels,
            labels: &self.labels,
            named_ports: &self.named_ports,
        }
    }
}

impl AsIdentityParts for IdentityParts<'_> {
    fn parts(&self) -> IdentityParts<'_> {
        *self
    }
}

impl PartialEq for dyn AsIdentityParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn AsIdentityParts + '_ {}

impl PartialOrd for dyn AsIdentityParts + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn AsIdentityParts + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts().cmp(&other.parts())
    }
}

impl<'a> Borrow<dyn AsIdentityParts + 'a> for Arc<IdentityKey> {
    fn borrow(&self) -> &(dyn AsIdentityParts + 'a) {
        &**self
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
    /// Policy entries.
    pub policy: BTreeMap<PolicyEntryKey, PolicyValue>,
    /// Rule ids (from 1) to the rules that have entries in this state. A rule keeps its id
    /// while it has entries; the id of a rule that has none any more is handed out again
    /// (lowest first), so ids stay few and dense (the data path counts hits per id, and the
    /// reconciler zeroes an id's count when the rule behind it changes).
    pub rules: BTreeMap<u32, RuleRef>,
    /// Pod identities in use (shared with the compiler's allocator, not copied per compile).
    pub identities: BTreeMap<u32, Arc<IdentityKey>>,
}

impl Desired {
    /// The policy entries of one endpoint.
    pub fn entries_of(&self, endpoint: u32) -> impl Iterator<Item = (&PolicyEntryKey, &PolicyValue)> {
        self.policy.iter().filter(move |(k, _)| k.key.endpoint == endpoint)
    }
}

/// Rule ids by (policy, direction, index): stable while the rule has entries; ids of rules
/// gone are reused, lowest first.
#[derive(Clone, Debug, Default)]
struct RuleIds {
    ids: BTreeMap<(ObjectRef, Direction, usize), u32>,
    free: BTreeSet<u32>,
    next: u32,
}

impl RuleIds {
    fn get(&mut self, key: &(ObjectRef, Direction, usize)) -> u32 {
        if let Some(n) = self.ids.get(key) {
            return *n;
        }
        let n = self.free.pop_first().unwrap_or_else(|| {
            self.next += 1;
            self.next
        });
        self.ids.insert(key.clone(), n);
        n
    }

    /// Frees the ids of rules not in `used`.
    fn retain(&mut self, used: &BTreeSet<(ObjectRef, Direction, usize)>) {
        let free = &mut self.free;
        self.ids.retain(|k, n| used.contains(k) || !free.insert(*n));
    }
}

/// Hands out numbers for keys, stable while a key is in use, never reused.
#[derive(Clone, Debug)]
struct Allocator<K: Ord> {
    next: u32,
    numbers: BTreeMap<K, u32>,
}

impl<K: Ord + Clone> Allocator<K> {
    fn new(first: u32) -> Self {
        Self { next: first, numbers: BTreeMap::new() }
    }

    fn get(&mut self, key: &K) -> u32 {
        if let Some(n) = self.numbers.get(key) {
            return *n;
        }
        let n = self.next;
        self.next += 1;
        self.numbers.insert(key.clone(), n);
        n
    }

    fn retain(&mut self, used: &BTreeSet<K>) {
        self.numbers.retain(|k, _| used.contains(k));
    }
}

/// The compiler, holding the number allocators that keep identities and endpoint ids stable
/// from one compilation to the next.
#[derive(Clone, Debug)]
pub struct Compiler {
    /// Pod identity numbers, by what they stand for.
    identities: BTreeMap<Arc<IdentityKey>, u32>,
    /// The next pod identity number to hand out.
    next_identity: u32,
    cidr_identities: Allocator<IpNet>,
    endpoints: Allocator<ObjectRef>,
    /// Rule ids by (policy, direction, index): stable, so that a policy change does not
    /// renumber (and so rewrite) the entries of endpoints it does not select.
    rule_ids: RuleIds,
}

impl Default for Compiler {
    fn default() -> Self {
        Self::new()
    }
}

/// An identity and what it is, while compiling.
struct PodIdentity<'a> {
    id: u32,
    key: IdentityParts<'a>,
    ips: Vec<IpAddr>,
}

impl Compiler {
    /// A compiler with no numbers handed out yet.
    pub fn new() -> Self {
        Self {
            identities: BTreeMap::new(),
            next_identity: IDENTITY_FIRST_POD,
            cidr_identities: Allocator::new(IDENTITY_FIRST_CIDR),
            endpoints: Allocator::new(1),
            rule_ids: RuleIds::default(),
        }
    }

    /// The identity number of `parts`, handing out the next one to parts not seen before.
    fn identity_number(&mut self, parts: IdentityParts<'_>) -> u32 {
        if let Some(n) = self.identities.get(&parts as &dyn AsIdentityParts) {
            return *n;
        }
        let n = self.next_identity;
        self.next_identity += 1;
        self.identities.insert(Arc::new(parts.to_key()), n);
        n
    }

    /// Gives `pod` the endpoint id `id` (an id an earlier agent used), unless it has one.
    pub fn seed_endpoint(&mut self, pod: &ObjectRef, id: u32) {
        if !self.endpoints.numbers.contains_key(pod) && !self.endpoints.numbers.values().any(|n| *n == id) {
            self.endpoints.numbers.insert(pod.clone(), id);
            self.endpoints.next = self.endpoints.next.max(id + 1);
        }
    }

    /// Compiles the cluster into map contents for `opts.node`.
    pub fn compile(&mut self, state: &ClusterState, opts: &CompileOptions) -> Desired {
        let mut out = Desired::default();
        let mut used_rules: BTreeSet<(ObjectRef, Direction, usize)> = BTreeSet::new();

        // Pod identities, grouped by parts borrowed from the snapshot (no per-pod copies).
        let implicit_labels: BTreeMap<&str, Labels> = state
            .pods
            .values()
            .filter(|p| !state.namespaces.contains_key(&p.id.namespace))
            .map(|p| (p.id.namespace.as_str(), state.namespace_labels(&p.id.namespace)))
            .collect();
        let mut groups: BTreeMap<IdentityParts<'_>, Vec<&Pod>> = BTreeMap::new();
        for pod in state.pods.values() {
            let ns = pod.id.namespace.as_str();
            let namespace_labels = match state.namespaces.get(ns) {
                Some(n) => &n.labels,
                // Invariant: implicit_labels holds every namespace the snapshot lacks.
                None => &implicit_labels[ns],
            };
            let parts = IdentityParts { namespace: ns, namespace_labels, labels: &pod.labels, named_ports: &pod.named_ports };
            groups.entry(parts).or_default().push(pod);
        }
        let identities: Vec<PodIdentity<'_>> = groups
            .iter()
            .map(|(parts, pods)| PodIdentity {
                id: self.identity_number(*parts),
                key: *parts,
                ips: pods.iter().flat_map(|p| p.ips.iter().copied()).collect(),
            })
            .collect();
        let used: BTreeSet<u32> = identities.iter().map(|i| i.id).collect();
        self.identities.retain(|_, id| used.contains(id));
        for (key, id) in &self.identities {
            out.identities.insert(*id, Arc::clone(key));
        }
        for ident in &identities {
            for ip in &ident.ips {
                out.ipcache.entry(ip_key(ip)).or_insert(ident.id);
            }
        }
        for ip in &opts.host_ips {
            out.ipcache.entry(ip_key(ip)).or_insert(IDENTITY_HOST);
        }

        // CIDR identities.
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

        // Local endpoints and their policy entries.
        let local: Vec<&Pod> = state.pods.values().filter(|p| !opts.node.is_empty() && p.node == opts.node).collect();
        let local_refs: BTreeSet<ObjectRef> = local.iter().map(|p| p.id.clone()).collect();
        self.endpoints.retain(&local_refs);
        for pod in local {
            let endpoint = self.endpoints.get(&pod.id);
            let selecting: Vec<&Policy> = state
                .policies
                .values()
                .filter(|p| p.id.namespace == pod.id.namespace && p.pod_selector.matches(&pod.labels))
                .collect();
            let ingress_isolated = selecting.iter().any(|p| p.isolates_ingress);
            let egress_isolated = selecting.iter().any(|p| p.isolates_egress);
            let ctx = RuleContext { identities: &identities, regions: &region_ids, endpoint, pod };
            for policy in &selecting {
                for (direction, isolates, rules) in [
                    (Direction::Ingress, policy.isolates_ingress, &policy.ingress),
                    (Direction::Egress, policy.isolates_egress, &policy.egress),
                ] {
                    if !isolates {
                        continue;
                    }
                    for (index, rule) in rules.iter().enumerate() {
                        let key = (policy.id.clone(), direction, index);
                        let rule_id = self.rule_ids.get(&key);
                        out.rules.entry(rule_id).or_insert_with(|| RuleRef { policy: policy.id.to_string(), direction, index });
                        used_rules.insert(key);
                        ctx.emit_rule(&mut out.policy, policy, direction, rule, rule_id);
                    }
                }
            }
            if ingress_isolated && opts.allow_host {
                insert_entry(&mut out.policy, endpoint, IDENTITY_HOST, Direction::Ingress, None, 0);
            }
            out.endpoints.insert(
                pod.id.clone(),
                EndpointPlan {
                    id: endpoint,
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
                },
            );
        }
        self.rule_ids.retain(&used_rules);
        out
    }
}

/// Port match of one entry: `None` = any protocol and port; `(proto, None)` = all ports of a
/// protocol; `(proto, Some((base, bits)))` = a port prefix.
type EntryPorts = Option<(u8, Option<(u16, u8)>)>;

struct RuleContext<'a> {
    identities: &'a [PodIdentity<'a>],
    regions: &'a [(IpNet, u32)],
    endpoint: u32,
    pod: &'a Pod,
}

impl RuleContext<'_> {
    /// Emits the entries of one rule of `policy` for this endpoint.
    fn emit_rule(&self, out: &mut BTreeMap<PolicyEntryKey, PolicyValue>, policy: &Policy, direction: Direction, rule: &Rule, rule_id: u32) {
        // Peers: (identity, the named ports of that peer when it is a pod identity).
        let mut peers: Vec<(u32, Option<&[NamedPort]>)> = Vec::new();
        let mut any_peer = false;
        if rule.peers.is_empty() {
            any_peer = true;
            peers.push((IDENTITY_ANY, None));
        }
        for peer in &rule.peers {
            match peer {
                Peer::Pods { namespaces, pods } => {
                    for ident in self.identities {
                        let ns_ok = match namespaces {
                            None => ident.key.namespace == policy.id.namespace,
                            Some(sel) => sel.matches(ident.key.namespace_labels),
                        };
                        if ns_ok && pods.matches(ident.key.labels) {
                            peers.push((ident.id, Some(ident.key.named_ports)));
                        }
                    }
                }
                Peer::IpBlock { cidr: block, except } => {
                    for (region, id) in self.regions {
                        if cidr::region_in_block(region, block, except) {
                            peers.push((*id, None));
                        }
                    }
                }
            }
        }
        // Named ports of egress peers resolve against pods: pods whose every address lies in
        // one of the rule's ipBlocks take part through their pod identity. Any of the blocks,
        // since peers are ORed and one block has one family: a dual-stack pod is only ever
        // covered by a pair of blocks.
        let blocks: Vec<(&IpNet, &[IpNet])> = rule
            .peers
            .iter()
            .filter_map(|p| match p {
                Peer::IpBlock { cidr, except } => Some((cidr, except.as_slice())),
                Peer::Pods { .. } => None,
            })
            .collect();
        if direction == Direction::Egress && has_named_port(rule) && !blocks.is_empty() {
            for ident in self.identities {
                let covered = |ip: &IpAddr| blocks.iter().any(|(cidr, except)| cidr::addr_in_block(ip, cidr, except));
                if !ident.ips.is_empty() && ident.ips.iter().all(covered) {
                    peers.push((ident.id, Some(ident.key.named_ports)));
                }
            }
        }
        if any_peer && direction == Direction::Egress && has_named_port(rule) {
            // "Any destination" on a named port: the pods that have that port.
            for ident in self.identities {
                peers.push((ident.id, Some(ident.key.named_ports)));
            }
        }
        peers.sort_unstable_by_key(|(id, _)| *id);
        peers.dedup_by_key(|(id, _)| *id);

        for (identity, peer_ports) in peers {
            if rule.ports.is_empty() {
                insert_entry(out, self.endpoint, identity, direction, None, rule_id);
                continue;
            }
            for pm in &rule.ports {
                let proto = pm.protocol.number();
                match &pm.port {
                    PortSpec::All => insert_entry(out, self.endpoint, identity, direction, Some((proto, None)), rule_id),
                    PortSpec::Range(lo, hi) => {
                        for prefix in range_prefixes(*lo, *hi) {
                            insert_entry(out, self.endpoint, identity, direction, Some((proto, Some(prefix))), rule_id);
                        }
                    }
                    PortSpec::Named(name) => {
                        // Ingress: the selected pod's port. Egress: the peer pod's port.
                        let owner: &[NamedPort] = match direction {
                            Direction::Ingress => &self.pod.named_ports,
                            Direction::Egress => match peer_ports {
                                Some(p) => p,
                                None => continue,
                            },
                        };
                        for np in owner.iter().filter(|np| np.name == *name && np.protocol == pm.protocol) {
                            insert_entry(out, self.endpoint, identity, direction, Some((proto, Some((np.port, 16)))), rule_id);
                        }
                    }
                }
            }
        }
    }
}

fn has_named_port(rule: &Rule) -> bool {
    rule.ports.iter().any(|p| matches!(p.port, PortSpec::Named(_)))
}

/// Adds one entry; when several rules produce the same key, the first rule keeps it.
fn insert_entry(out: &mut BTreeMap<PolicyEntryKey, PolicyValue>, endpoint: u32, identity: u32, direction: Direction, ports: EntryPorts, rule: u32) {
    let (prefix_len, protocol, port_be) = match ports {
        None => (POLICY_PREFIX_PEER, 0, 0),
        Some((proto, None)) => (POLICY_PREFIX_PROTO, proto, 0),
        Some((proto, Some((base, bits)))) => (POLICY_PREFIX_PROTO + u32::from(bits), proto, base.to_be()),
    };
    debug_assert!(prefix_len <= POLICY_PREFIX_FULL);
    let key = PolicyEntryKey {
        prefix_len,
        key: PolicyKey { endpoint, identity, direction: direction.number(), protocol, port_be },
    };
    out.entry(key).or_insert(PolicyValue { action: ACTION_ALLOW, tier: TIER_NETWORK_POLICY, _pad: 0, rule });
}

/// The map form of an address.
pub fn ip_key(ip: &IpAddr) -> IpKey {
    match ip {
        IpAddr::V4(a) => IpKey::from_v4(a.octets()),
        IpAddr::V6(a) => IpKey::from_octets(a.octets()),
    }
}

/// The LPM key of a region.
pub fn cidr_key(net: &IpNet) -> CidrKey {
    match net {
        IpNet::V4(n) => CidrKey { prefix_len: 96 + u32::from(n.prefix_len()), addr: IpKey::from_v4(n.network().octets()) },
        IpNet::V6(n) => CidrKey { prefix_len: u32::from(n.prefix_len()), addr: IpKey::from_octets(n.network().octets()) },
    }
}

/// Whether the LPM entry `prefix_len/key` covers a lookup of the full key `probe`: the
/// user-space twin of the kernel's longest-prefix match, for tests and `explain`.
pub fn policy_key_covers(entry: &PolicyEntryKey, probe: &PolicyKey) -> bool {
    let bits = |k: &PolicyKey| -> u128 {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&k.endpoint.to_ne_bytes());
        b[4..8].copy_from_slice(&k.identity.to_ne_bytes());
        b[8] = k.direction;
        b[9] = k.protocol;
        b[10..12].copy_from_slice(&k.port_be.to_ne_bytes());
        u128::from_be_bytes(b)
    };
    let n = entry.prefix_len;
    let mask = if n == 0 { 0 } else { u128::MAX << (128 - n) };
    bits(&entry.key) & mask == bits(probe) & mask
}

#[cfg(test)]
mod compiler_tests;
