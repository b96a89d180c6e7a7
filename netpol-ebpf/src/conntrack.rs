//! Connection tracking: one direction-neutral entry per flow and endpoint, so that a packet and
//! its reply find the same entry with a single lookup.

use netpol_common::{CtKey, CtValue, IpKey, CT_ORIGIN_A, CT_ORIGIN_B};

use crate::maps::CONNTRACK;

/// Whether `(a, pa)` sorts before `(b, pb)` in the canonical order of [`CtKey`] ends: any fixed
/// total order will do, so it compares native address words, the last (an IPv4 address, the
/// interface id of an IPv6 one) first, then the ports.
#[inline(always)]
fn end_before(a: &IpKey, pa: u16, b: &IpKey, pb: u16) -> bool {
    let a_lo = (u64::from(a.addr[3]) << 32) | u64::from(a.addr[2]);
    let b_lo = (u64::from(b.addr[3]) << 32) | u64::from(b.addr[2]);
    if a_lo != b_lo {
        return a_lo < b_lo;
    }
    let a_hi = (u64::from(a.addr[1]) << 32) | u64::from(a.addr[0]);
    let b_hi = (u64::from(b.addr[1]) << 32) | u64::from(b.addr[0]);
    if a_hi != b_hi {
        return a_hi < b_hi;
    }
    pa <= pb
}

/// The conntrack key on `endpoint` of a packet from `(src, sport_be)` to `(dst, dport_be)`,
/// and whether the source is the key's `a` end. Built whole (never zeroed then filled: zeroing
/// becomes a byte-wise `memset` loop on this target).
#[inline(always)]
pub fn flow_key(endpoint: u32, protocol: u8, src: &IpKey, sport_be: u16, dst: &IpKey, dport_be: u16) -> (CtKey, bool) {
    let src_is_a = end_before(src, sport_be, dst, dport_be);
    let key = if src_is_a {
        CtKey { endpoint, protocol, _pad: 0, _pad2: 0, addr_a: *src, addr_b: *dst, port_a_be: sport_be, port_b_be: dport_be }
    } else {
        CtKey { endpoint, protocol, _pad: 0, _pad2: 0, addr_a: *dst, addr_b: *src, port_a_be: dport_be, port_b_be: sport_be }
    };
    (key, src_is_a)
}

/// Records a newly allowed flow, opened by the packet whose source is `a` when `src_is_a`;
/// `deferred` (1) when its egress is judged after the node's NAT ([`CtValue::deferred`]).
#[inline(always)]
pub fn track(key: &CtKey, src_is_a: bool, direction: u8, generation: u32, deferred: u8) {
    let value = CtValue { generation, direction, origin: if src_is_a { CT_ORIGIN_A } else { CT_ORIGIN_B }, revoked: 0, deferred };
    // A full LRU map evicts the oldest entry; a failed insert only means the next packet of the
    // flow is judged by policy again, which never opens anything policy denies.
    let _ = CONNTRACK.insert(key, &value, 0);
}

/// Whether a packet whose source is the key's `a` end (`src_is_a`) travels in the direction
/// the flow was opened in.
#[inline(always)]
pub fn is_forward(ct: &CtValue, src_is_a: bool) -> bool {
    src_is_a == (ct.origin == CT_ORIGIN_A)
}
