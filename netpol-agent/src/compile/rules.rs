//! One rule of one policy, for one local endpoint, as policy entries: the rule's peers resolved
//! to identities (pods by selectors, ipBlocks by CIDR region, named egress ports against the
//! peer pods that own them) times its ports (single ports, range prefixes, named ports). The
//! entries are LPM entries over (endpoint, identity, direction, protocol, port prefix), which
//! [`super::kernel`] turns into the kernel's maps.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use netpol_common::{PolicyKey, PolicyValue, ACTION_ALLOW, IDENTITY_ANY, POLICY_PREFIX_FULL, POLICY_PREFIX_PEER, POLICY_PREFIX_PROTO, TIER_NETWORK_POLICY};

use super::{cidr, identity::IdentityParts, kernel::PolicyEntryKey, ports::range_prefixes};
use crate::model::{Direction, NamedPort, Peer, Pod, Policy, PortSpec, Rule};

/// Policy entries as LPM entries, before [`super::kernel::PolicyMaps::from_entries`] shapes them.
pub(super) type Entries = BTreeMap<PolicyEntryKey, PolicyValue>;

/// A pod identity while compiling: its number, what it stands for, and its pods' addresses.
pub(super) struct PodIdentity<'a> {
    pub(super) id: u32,
    pub(super) key: IdentityParts<'a>,
    pub(super) ips: Vec<IpAddr>,
}

/// Port match of one entry: `None` = any protocol and port; `(proto, None)` = all ports of a
/// protocol; `(proto, Some((base, bits)))` = a port prefix.
pub(super) type EntryPorts = Option<(u8, Option<(u16, u8)>)>;

/// What the rules of one local endpoint are resolved against.
pub(super) struct RuleContext<'a> {
    pub(super) identities: &'a [PodIdentity<'a>],
    pub(super) regions: &'a [(IpNet, u32)],
    pub(super) endpoint: u32,
    pub(super) pod: &'a Pod,
}

impl RuleContext<'_> {
    /// Emits the entries of one rule of `policy` for this endpoint.
    pub(super) fn emit_rule(&self, out: &mut Entries, policy: &Policy, direction: Direction, rule: &Rule, rule_id: u32) {
        for (identity, peer_ports) in self.peers(policy, direction, rule) {
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

    /// The rule's peers as identities, each with the named ports of that peer when it is a pod
    /// identity; sorted, each once.
    fn peers<'p>(&'p self, policy: &Policy, direction: Direction, rule: &Rule) -> Vec<(u32, Option<&'p [NamedPort]>)> {
        let mut peers: Vec<(u32, Option<&[NamedPort]>)> = Vec::new();
        let named_egress = direction == Direction::Egress && rule.has_named_port();
        if rule.peers.is_empty() {
            peers.push((IDENTITY_ANY, None));
            if named_egress {
                // "Any destination" on a named port: the pods that have that port.
                peers.extend(self.identities.iter().map(|ident| (ident.id, Some(ident.key.named_ports))));
            }
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
                    peers.extend(self.regions.iter().filter(|(region, _)| cidr::region_in_block(region, block, except)).map(|(_, id)| (*id, None)));
                }
            }
        }
        // Named ports of egress peers resolve against pods: pods whose every address lies in
        // one of the rule's ipBlocks take part through their pod identity. Any of the blocks,
        // since peers are ORed and one block has one family: a dual-stack pod is only ever
        // covered by a pair of blocks.
        let blocks: Vec<(&IpNet, &[IpNet])> = rule.ip_blocks().collect();
        if named_egress && !blocks.is_empty() {
            for ident in self.identities {
                let covered = |ip: &IpAddr| blocks.iter().any(|(cidr, except)| cidr::addr_in_block(ip, cidr, except));
                if !ident.ips.is_empty() && ident.ips.iter().all(covered) {
                    peers.push((ident.id, Some(ident.key.named_ports)));
                }
            }
        }
        peers.sort_unstable_by_key(|(id, _)| *id);
        peers.dedup_by_key(|(id, _)| *id);
        peers
    }
}

/// Adds one entry; when several rules produce the same key, the first rule keeps it.
pub(super) fn insert_entry(out: &mut Entries, endpoint: u32, identity: u32, direction: Direction, ports: EntryPorts, rule: u32) {
    let (prefix_len, protocol, port_be) = match ports {
        None => (POLICY_PREFIX_PEER, 0, 0),
        Some((proto, None)) => (POLICY_PREFIX_PROTO, proto, 0),
        Some((proto, Some((base, bits)))) => (POLICY_PREFIX_PROTO + u32::from(bits), proto, base.to_be()),
    };
    debug_assert!(prefix_len <= POLICY_PREFIX_FULL);
    let key = PolicyEntryKey { prefix_len, key: PolicyKey { endpoint, identity, direction: direction.number(), protocol, port_be } };
    out.entry(key).or_insert(PolicyValue { action: ACTION_ALLOW, tier: TIER_NETWORK_POLICY, _pad: 0, rule });
}
