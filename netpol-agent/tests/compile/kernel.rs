//! The kernel's policy maps: the peer rules, single ports and port-range prefixes the compiler
//! emits decide every probe exactly as the LPM entries they come from would.
use std::collections::BTreeMap;

use netpol_agent::compile::kernel::{PolicyEntryKey, PolicyMaps};
use netpol_common::{PeerKey, PolicyKey, PolicyValue, ACTION_ALLOW, POLICY_PREFIX_FULL, POLICY_PREFIX_PEER, POLICY_PREFIX_PROTO};
use netpol_testkit::rng::Rng;

fn entry(rng: &mut Rng) -> PolicyEntryKey {
    let protocol = [6u8, 17, 132][rng.below(3)];
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
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let mut checked = 0;
    for _ in 0..300 {
        let n = rng.below(12);
        let entries: BTreeMap<PolicyEntryKey, PolicyValue> =
            (0..n).map(|_| (entry(&mut rng), PolicyValue { action: ACTION_ALLOW, tier: 1, _pad: 0, rule: 1 })).collect();
        let maps = PolicyMaps::from_entries(&entries);
        for endpoint in 1..=2 {
            for identity in 256..=258 {
                for direction in 0..=1 {
                    for protocol in [1u8, 6, 17, 132] {
                        for port in 76..=88u16 {
                            let probe = PolicyKey { endpoint, identity, direction, protocol, port_be: port.to_be() };
                            let lpm = entries.keys().any(|k| k.covers(&probe));
                            assert_eq!(maps.allows(&probe), lpm, "{probe:?} over {entries:?}");
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
    let maps = PolicyMaps::from_entries(&entries);
    let rules = maps.peers[&PeerKey { endpoint: 1, identity: 300, direction: 0, _pad: 0, _pad2: 0 }];
    assert_eq!((rules.any, rules.all_ports, rules.ports, rules.ranges), (0, 0, netpol_common::PROTO_BIT_TCP, 0));
    assert!(maps.ranges.is_empty());
    let udp = PolicyKey { endpoint: 1, identity: 300, direction: 0, protocol: 17, port_be: 80u16.to_be() };
    assert!(!maps.allows(&udp), "UDP 80 is not TCP 80");
}
