//! The kernel's three policy maps as the compiled entries become them, and the classifier's
//! lookups over them mirrored in user space. The compiler speaks in LPM entries (a peer, a
//! protocol, a port or a port-range prefix); the classifier looks a peer up exactly, and only
//! then, for the protocols that have them, a single port and port ranges, so that a new flow's
//! verdict costs the same few lookups whatever the number of policies.

use std::collections::BTreeMap;

use netpol_common::{
    proto_bit, PeerKey, PeerRules, PolicyKey, PolicyValue, ACTION_ALLOW, POLICY_PREFIX_FULL, POLICY_PREFIX_PEER,
    POLICY_PREFIX_PROTO,
};

use crate::compile::{policy_key_covers, PolicyEntryKey};

/// The kernel's policy maps as the compiled entries become them (`netpol_common::MAP_PEER_RULES`):
/// what each peer may do, single ports, and port ranges.
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

/// Splits compiled policy entries into the kernel's three policy maps. Pure; the classifier's
/// lookups over the result decide exactly as an LPM lookup over `entries` would.
pub fn policy_maps(entries: &BTreeMap<PolicyEntryKey, PolicyValue>) -> PolicyMaps {
    let mut out = PolicyMaps::default();
    for (k, v) in entries {
        // v1 NetworkPolicy compiles to allow entries only; anything else allows nothing.
        if v.action != ACTION_ALLOW {
            continue;
        }
        let peer = PeerKey { endpoint: k.key.endpoint, identity: k.key.identity, direction: k.key.direction, _pad: 0, _pad2: 0 };
        let rules = out.peers.entry(peer).or_default();
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

/// Whether the kernel's policy maps allow `probe` (an exact endpoint, identity, direction,
/// protocol and port), lookup for lookup as the classifier's `entry_allows` does it.
pub fn allows(maps: &PolicyMaps, probe: &PolicyKey) -> bool {
    let peer = PeerKey { endpoint: probe.endpoint, identity: probe.identity, direction: probe.direction, _pad: 0, _pad2: 0 };
    let Some(rules) = maps.peers.get(&peer) else { return false };
    if rules.any != 0 {
        return true;
    }
    let bit = proto_bit(probe.protocol);
    if rules.all_ports & bit != 0 {
        return true;
    }
    if rules.ports & bit != 0 && maps.ports.get(probe).is_some_and(|v| v.action == ACTION_ALLOW) {
        return true;
    }
    if rules.ranges & bit != 0 {
        // The longest matching range prefix decides (an LPM lookup).
        let best = maps.ranges.iter().filter(|(k, _)| policy_key_covers(k, probe)).max_by_key(|(k, _)| k.prefix_len);
        if let Some((_, v)) = best {
            return v.action == ACTION_ALLOW;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::policy_key_covers;

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn entry(rng: &mut Rng) -> PolicyEntryKey {
        let protocol = [6u8, 17, 132][rng.below(3) as usize];
        let port = 78 + rng.below(8) as u16;
        let mut key = PolicyKey { endpoint: 1 + rng.below(2) as u32, identity: 256 + rng.below(3) as u32, direction: rng.below(2) as u8, protocol, port_be: port.to_be() };
        let prefix_len = match rng.below(4) {
            0 => {
                key.protocol = 0;
                key.port_be = 0;
                POLICY_PREFIX_PEER
            }
            1 => {
                key.port_be = 0;
                POLICY_PREFIX_PROTO
            }
            2 => POLICY_PREFIX_FULL,
            _ => {
                // A range prefix: the port with its low 1-3 bits free.
                let free = 1 + rng.below(3) as u32;
                key.port_be = (port & !((1u16 << free) - 1)).to_be();
                POLICY_PREFIX_FULL - free
            }
        };
        PolicyEntryKey { prefix_len, key }
    }

    #[test]
    fn the_split_maps_decide_as_the_compiled_lpm_entries_do() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut checked = 0;
        for _ in 0..300 {
            let n = rng.below(12);
            let entries: BTreeMap<PolicyEntryKey, PolicyValue> =
                (0..n).map(|_| (entry(&mut rng), PolicyValue { action: ACTION_ALLOW, tier: 1, _pad: 0, rule: 1 })).collect();
            let maps = policy_maps(&entries);
            for endpoint in 1..=2 {
                for identity in 256..=258 {
                    for direction in 0..=1 {
                        for protocol in [1u8, 6, 17, 132] {
                            for port in 76..=88u16 {
                                let probe = PolicyKey { endpoint, identity, direction, protocol, port_be: port.to_be() };
                                let lpm = entries.keys().any(|k| policy_key_covers(k, &probe));
                                assert_eq!(allows(&maps, &probe), lpm, "{probe:?} over {entries:?}");
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 100_000);
    }

    #[test]
    fn only_protocols_with_ports_get_port_lookups() {
        let entries = BTreeMap::from([(
            PolicyEntryKey { prefix_len: POLICY_PREFIX_FULL, key: PolicyKey { endpoint: 1, identity: 300, direction: 0, protocol: 6, port_be: 80u16.to_be() } },
            PolicyValue { action: ACTION_ALLOW, tier: 1, _pad: 0, rule: 7 },
        )]);
        let maps = policy_maps(&entries);
        let rules = maps.peers[&PeerKey { endpoint: 1, identity: 300, direction: 0, _pad: 0, _pad2: 0 }];
        assert_eq!((rules.any, rules.all_ports, rules.ports, rules.ranges), (0, 0, netpol_common::PROTO_BIT_TCP, 0));
        assert!(maps.ranges.is_empty());
        let udp = PolicyKey { endpoint: 1, identity: 300, direction: 0, protocol: 17, port_be: 80u16.to_be() };
        assert!(!allows(&maps, &udp), "UDP 80 is not TCP 80");
    }
}
