//! Fragments: the first fragment of a datagram carries the ports and gets the verdict; later
//! fragments get the first one's (a small LRU map keyed by addresses and IP id), and a later
//! fragment with no known first fragment is dropped for an isolated endpoint.

use netpol_common::{EndpointInfo, FragKey, FragValue, Reason};

use crate::{
    maps::FRAGMENTS,
    parse::{Fragment, Packet},
};

/// A later fragment gets the verdict of its first fragment. A separate BPF function: a cold
/// path that keeps its key off the hot path's stack frame.
#[inline(never)]
pub fn later_fragment(ep: &EndpointInfo, p: &Packet, isolated: bool) -> Reason {
    let key = frag_key(ep, p);
    // SAFETY: copied out at once.
    match unsafe { FRAGMENTS.get(&key) } {
        Some(v) if v.generation == ep.generation => Reason::AllowFragment,
        _ if !isolated => Reason::AllowFragment,
        _ => Reason::DropOrphanFragment,
    }
}

#[inline(always)]
fn frag_key(ep: &EndpointInfo, p: &Packet) -> FragKey {
    FragKey { endpoint: ep.endpoint, id: p.frag_id, src: p.src, dst: p.dst, protocol: p.protocol, _pad: 0, _pad2: 0 }
}

/// Records an allowed first fragment so that the datagram's later fragments pass.
#[inline(always)]
pub fn remember_first_fragment(ep: &EndpointInfo, p: &Packet) {
    if p.fragment == Fragment::First {
        insert_first_fragment(ep, p);
    }
}

#[inline(never)]
fn insert_first_fragment(ep: &EndpointInfo, p: &Packet) {
    let _ = FRAGMENTS.insert(&frag_key(ep, p), &FragValue { generation: ep.generation }, 0);
}
