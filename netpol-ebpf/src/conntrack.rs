//! Connection tracking: one direction-neutral entry per flow and endpoint, so that a packet and
//! its reply find the same entry with a single lookup.

use netpol_common::{CtKey, CtValue, IpKey, CT_ORIGIN_A, CT_ORIGIN_B};

use crate::{maps::CONNTRACK, parse::Packet};

/// An address as two big-endian 64-bit words, for ordering.
#[inline(always)]
fn words(a: &IpKey) -> (u64, u64) {
    let p = a.addr.as_ptr().cast::<u64>();
    // SAFETY: `addr` is 16 bytes, so both unaligned 8-byte reads are inside it.
    unsafe { (u64::from_be(core::ptr::read_unaligned(p)), u64::from_be(core::ptr::read_unaligned(p.add(1)))) }
}

/// Whether `(a, pa)` sorts before `(b, pb)` in the canonical order of [`CtKey`] ends.
#[inline(always)]
fn end_before(a: &IpKey, pa: u16, b: &IpKey, pb: u16) -> bool {
    let (a_hi, a_lo) = words(a);
    let (b_hi, b_lo) = words(b);
    if a_hi != b_hi {
        return a_hi < b_hi;
    }
    if a_lo != b_lo {
        return a_lo < b_lo;
    }
    pa <= pb
}

/// Fills `key` with the conntrack key of a packet on `endpoint`; returns whether the packet's
/// source is the key's `a` end. One BPF function shared by its two callers.
#[inline(never)]
pub fn flow_key(key: &mut CtKey, endpoint: u32, p: &Packet) -> bool {
    let (src, dst, sport_be, dport_be) = (&p.src, &p.dst, p.sport_be, p.dport_be);
    key.endpoint = endpoint;
    key.protocol = p.protocol;
    key._pad = [0; 3];
    let src_is_a = end_before(src, sport_be, dst, dport_be);
    if src_is_a {
        key.addr_a = src.addr;
        key.addr_b = dst.addr;
        key.port_a_be = sport_be;
        key.port_b_be = dport_be;
    } else {
        key.addr_a = dst.addr;
        key.addr_b = src.addr;
        key.port_a_be = dport_be;
        key.port_b_be = sport_be;
    }
    src_is_a
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
