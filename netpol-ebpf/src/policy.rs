//! Policy decisions for new flows: a fixed number of exact lookups (the peer's pod identity, its
//! CIDR identity, and the reserved ANY identity, each with its rules), whatever the number of
//! policies.

use aya_ebpf::maps::lpm_trie::Key;
use netpol_common::{
    proto_bit, EndpointInfo, IpKey, PeerKey, PolicyKey, ACTION_ALLOW, DIR_INGRESS, EP_EGRESS_ISOLATED,
    EP_INGRESS_ISOLATED, IDENTITY_ANY, POLICY_PREFIX_FULL,
};

use crate::maps::{CIDRS, IPCACHE, PEER_RULES, POLICY, PORT_RULES};

/// Whether the endpoint is isolated in `direction`.
#[inline(always)]
pub fn isolated(ep: &EndpointInfo, direction: u8) -> bool {
    let bit = if direction == DIR_INGRESS { EP_INGRESS_ISOLATED } else { EP_EGRESS_ISOLATED };
    ep.flags & bit != 0
}

/// [`allows`] and [`entry_allows`]: no policy entry allows the flow.
pub const DENIED: u32 = u32::MAX;

/// The compiled rule that allows `identity` for this endpoint, direction, protocol and port (0
/// for built-in entries), or [`DENIED`]: one exact lookup of what the peer may do, then, only
/// for protocols that have them, one exact lookup of the port and one LPM lookup of port
/// ranges. Its own small BPF function: the keys live in this frame only.
#[inline(never)]
fn entry_allows(endpoint: u32, identity: u32, direction: u8, protocol: u8, dport_be: u16) -> u32 {
    let peer = PeerKey { endpoint, identity, direction, _pad: 0, _pad2: 0 };
    // SAFETY: the value is copied out at once; the agent replaces values whole.
    let Some(rules) = (unsafe { PEER_RULES.get(&peer) }).copied() else { return DENIED };
    let bit = proto_bit(protocol);
    if rules.any != 0 || rules.all_ports & bit != 0 {
        return rules.rule;
    }
    let key = PolicyKey { endpoint, identity, direction, protocol, port_be: dport_be };
    if rules.ports & bit != 0 {
        // SAFETY: copied out at once.
        if let Some(v) = unsafe { PORT_RULES.get(&key) }.copied() {
            if v.action == ACTION_ALLOW {
                return v.rule;
            }
        }
    }
    if rules.ranges & bit != 0 {
        if let Some(v) = POLICY.get(&Key::new(POLICY_PREFIX_FULL, key)).copied() {
            if v.action == ACTION_ALLOW {
                return v.rule;
            }
        }
    }
    DENIED
}

/// Whether a new flow with `peer` in `direction` to `dport_be` is allowed, as the rule that
/// allows it (0 when the endpoint is not isolated in that direction, or for built-in entries)
/// or [`DENIED`]: by no isolation, or by a policy entry for one of the peer's identities. A
/// separate BPF function: only new flows get here, and its keys stay off the hot path's stack
/// frame.
#[inline(never)]
pub fn allows(ep: &EndpointInfo, direction: u8, peer: &IpKey, protocol: u8, dport_be: u16) -> u32 {
    if !isolated(ep, direction) {
        return 0;
    }
    // SAFETY: the value is copied out at once; the agent replaces ipcache values whole.
    if let Some(id) = unsafe { IPCACHE.get(peer) } {
        let identity = id.identity;
        let rule = entry_allows(ep.endpoint, identity, direction, protocol, dport_be);
        if rule != DENIED {
            return rule;
        }
    }
    let cidr = cidr_identity(peer);
    if cidr != 0 {
        let rule = entry_allows(ep.endpoint, cidr, direction, protocol, dport_be);
        if rule != DENIED {
            return rule;
        }
    }
    entry_allows(ep.endpoint, IDENTITY_ANY, direction, protocol, dport_be)
}

/// The CIDR identity of the region `peer` falls in, or 0 when no ipBlock covers it.
#[inline(never)]
fn cidr_identity(peer: &IpKey) -> u32 {
    let key = Key::new(128, *peer);
    match CIDRS.get(&key) {
        Some(id) => id.identity,
        None => 0,
    }
}
