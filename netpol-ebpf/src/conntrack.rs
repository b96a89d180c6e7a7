//! Connection tracking: one direction-neutral entry per flow and endpoint, so that a packet and
//! its reply find the same entry with a single lookup.

use netpol_common::{CtKey, CtValue, IpKey, CT_ORIGIN_A, CT_ORIGIN_B};

use crate::maps::CONNTRACK;

/// Whether `(a, pa)` sorts before `(b, pb)` in the canonical order of [`CtKey`] ends.
#[inline(always)]
fn end_before(a: &IpKey, pa: u16, b: &IpKey, pb: u16) -> bool {
    let a_hi = u64::from_be_bytes([a.addr[0], a.addr[1], a.addr[2], a.addr[3], a.addr[4], a.addr[5], a.addr[6], a.addr[7]]);
    let b_hi = u64::from_be_bytes([b.addr[0], b.addr[1], b.addr[2], b.addr[3], b.addr[4], b.addr[5], b.addr[6], b.addr[7]]);
    if a_hi != b_hi {
        return a_hi < b_hi;
    }
    let a_lo = u64::from_be_bytes([a.addr[8], a.addr[9], a.addr[10], a.addr[11], a.addr[12], a.addr[13], a.addr[14], a.addr[15]]);
    let b_lo = u64::from_be_bytes([b.addr[8], b.addr[9], b.addr[10], b.addr[11], b.addr[12], b.addr[13], b.addr[14], b.addr[15]]);
    if a_lo != b_lo {
        return a_lo < b_lo;
    }
    pa <= pb
}

/// The conntrack key of a packet on `endpoint`, and whether the packet's source is the key's
/// `a` end.
#[inline(always)]
pub fn flow_key(endpoint: u32, protocol: u8, src: &IpKey, sport_be: u16, dst: &IpKey, dport_be: u16) -> (CtKey, bool) {
    if end_before(src, sport_be, dst, dport_be) {
        (
            CtKey { endpoint, protocol, _pad: [0; 3], addr_a: src.addr, addr_b: dst.addr, port_a_be: sport_be, port_b_be: dport_be },
            true,
        )
    } else {
        (
            CtKey { endpoint, protocol, _pad: [0; 3], addr_a: dst.addr, addr_b: src.addr, port_a_be: dport_be, port_b_be: sport_be },
            false,
        )
    }
}

/// Records a newly allowed flow, opened by the packet whose source is `a` when `src_is_a`.
#[inline(always)]
pub fn track(key: &CtKey, src_is_a: bool, direction: u8, generation: u32) {
    let value = CtValue { generation, direction, origin: if src_is_a { CT_ORIGIN_A } else { CT_ORIGIN_B }, _pad: 0 };
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
