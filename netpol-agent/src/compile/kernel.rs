//! The kernel's policy maps, exactly as the compiler emits them and the reconciler writes them:
//! what each peer may do ([`netpol_common::MAP_PEER_RULES`]), single ports
//! ([`netpol_common::MAP_PORT_RULES`]) and port-range prefixes ([`netpol_common::MAP_POLICY`]),
//! and the keys of the address maps. The classifier looks a peer up exactly, and only then, for
//! the protocols that have them, a single port and port ranges, so that a new flow's verdict
//! costs the same few lookups whatever the number of policies; [`PolicyMaps::allows`] makes
//! those lookups in user space.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use netpol_common::{
    proto_bit, IpKey, PeerKey, PeerRules, PolicyKey, PolicyValue, ACTION_ALLOW, POLICY_PREFIX_FULL, POLICY_PREFIX_PEER, POLICY_PREFIX_PROTO,
};

/// An LPM key of the CIDR map: prefix length over the 128-bit (IPv4-mapped) address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CidrKey {
    /// Prefix length (IPv4 regions: 96 + length).
    pub prefix_len: u32,
    /// Address.
    pub addr: IpKey,
}

impl CidrKey {
    /// Whether the region covers `addr` (the kernel's longest-prefix match, one candidate).
    pub fn covers(&self, addr: &IpKey) -> bool {
        prefix_mask(self.prefix_len) & u128::from_be_bytes(self.addr.octets()) == prefix_mask(self.prefix_len) & u128::from_be_bytes(addr.octets())
    }
}

/// An LPM key of the policy map: a prefix of [`PolicyKey`]'s bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyEntryKey {
    /// Prefix length in bits (see `netpol_common::POLICY_PREFIX_*`).
    pub prefix_len: u32,
    /// Key data, zero beyond the prefix.
    pub key: PolicyKey,
}

impl PolicyEntryKey {
    /// Whether this entry covers a lookup of the full key `probe`: the user-space twin of the
    /// kernel's longest-prefix match.
    pub fn covers(&self, probe: &PolicyKey) -> bool {
        let bits = |k: &PolicyKey| -> u128 {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&k.endpoint.to_ne_bytes());
            b[4..8].copy_from_slice(&k.identity.to_ne_bytes());
            b[8] = k.direction;
            b[9] = k.protocol;
            b[10..12].copy_from_slice(&k.port_be.to_ne_bytes());
            u128::from_be_bytes(b)
        };
        let mask = prefix_mask(self.prefix_len);
        bits(&self.key) & mask == bits(probe) & mask
    }
}

/// The first `bits` bits of a 128-bit word set.
fn prefix_mask(bits: u32) -> u128 {
    if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits.min(128))
    }
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

/// The kernel's three policy maps: what each peer may do, single ports, and port ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyMaps {
    /// Per (endpoint, peer identity, direction): everything, all ports of some protocols, and
    /// which protocols have port or range entries.
    pub peers: BTreeMap<PeerKey, PeerRules>,
    /// Single allowed ports (the compiled entries of [`POLICY_PREFIX_FULL`] bits).
    pub ports: BTreeMap<PolicyKey, PolicyValue>,
    /// Port-range prefixes (compiled entries between [`POLICY_PREFIX_PROTO`] and
    /// [`POLICY_PREFIX_FULL`] bits), for the LPM trie.
    pub ranges: BTreeMap<PolicyEntryKey, PolicyValue>,
}

/// The peer part of a policy key.
fn peer_of(k: &PolicyKey) -> PeerKey {
    PeerKey { endpoint: k.endpoint, identity: k.identity, direction: k.direction, _pad: 0, _pad2: 0 }
}

impl PolicyMaps {
    /// The maps that LPM entries become. Pure; [`PolicyMaps::allows`] over the result decides
    /// exactly as an LPM lookup over `entries` would.
    pub fn from_entries(entries: &BTreeMap<PolicyEntryKey, PolicyValue>) -> Self {
        let mut out = Self::default();
        for (k, v) in entries {
            // v1 NetworkPolicy compiles to allow entries only; anything else allows nothing.
            if v.action != ACTION_ALLOW {
                continue;
            }
            let rules = out.peers.entry(peer_of(&k.key)).or_default();
            let bit = proto_bit(k.key.protocol);
            match k.prefix_len {
                POLICY_PREFIX_PEER => {
                    rules.any = 1;
                    rules.rule = v.rule;
                }
                POLICY_PREFIX_PROTO => {
                    rules.all_ports |= bit;
                    if rules.any == 0 {
                        rules.rule = v.rule;
                    }
                }
                POLICY_PREFIX_FULL => {
                    rules.ports |= bit;
                    out.ports.insert(k.key, *v);
                }
                _ => {
                    rules.ranges |= bit;
                    out.ranges.insert(*k, *v);
                }
            }
        }
        out
    }

    /// Entries in all three maps.
    pub fn len(&self) -> usize {
        self.peers.len() + self.ports.len() + self.ranges.len()
    }

    /// Whether the maps hold nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries of `endpoint` in all three maps, as (identity, direction) with the rule ids
    /// they name: what its verdicts depend on, besides the peers' identities.
    pub fn of_endpoint(&self, endpoint: u32) -> impl Iterator<Item = EndpointEntry<'_>> {
        let lo = PeerKey { endpoint, identity: 0, direction: 0, _pad: 0, _pad2: 0 };
        let hi = PeerKey { endpoint, identity: u32::MAX, direction: u8::MAX, _pad: u8::MAX, _pad2: u16::MAX };
        let peers = self.peers.range(lo..=hi).map(|(k, v)| EndpointEntry::Peer(k, v));
        let plo = PolicyKey { endpoint, identity: 0, direction: 0, protocol: 0, port_be: 0 };
        let phi = PolicyKey { endpoint, identity: u32::MAX, direction: u8::MAX, protocol: u8::MAX, port_be: u16::MAX };
        let ports = self.ports.range(plo..=phi).map(|(k, v)| EndpointEntry::Port(k, v));
        let ranges = self.ranges.iter().filter(move |(k, _)| k.key.endpoint == endpoint).map(|(k, v)| EndpointEntry::Range(k, v));
        peers.chain(ports).chain(ranges)
    }

    /// Whether the maps allow `probe` (an exact endpoint, identity, direction, protocol and
    /// port), lookup for lookup as the classifier's `entry_allows` does it.
    pub fn allows(&self, probe: &PolicyKey) -> bool {
        let Some(rules) = self.peers.get(&peer_of(probe)) else { return false };
        if rules.any != 0 {
            return true;
        }
        let bit = proto_bit(probe.protocol);
        if rules.all_ports & bit != 0 {
            return true;
        }
        if rules.ports & bit != 0 && self.ports.get(probe).is_some_and(|v| v.action == ACTION_ALLOW) {
            return true;
        }
        if rules.ranges & bit != 0 {
            // The longest matching range prefix decides (an LPM lookup).
            let best = self.ranges.iter().filter(|(k, _)| k.covers(probe)).max_by_key(|(k, _)| k.prefix_len);
            if let Some((_, v)) = best {
                return v.action == ACTION_ALLOW;
            }
        }
        false
    }
}

/// One entry of an endpoint in [`PolicyMaps`].
#[derive(Clone, Copy, Debug, Hash)]
pub enum EndpointEntry<'a> {
    /// What a peer may do.
    Peer(&'a PeerKey, &'a PeerRules),
    /// A single port.
    Port(&'a PolicyKey, &'a PolicyValue),
    /// A port-range prefix.
    Range(&'a PolicyEntryKey, &'a PolicyValue),
}
