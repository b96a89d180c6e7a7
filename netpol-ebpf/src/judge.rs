//! What conntrack says of a packet's flow, and the verdict of policy on a new flow: one
//! judgement, shared by the classifier on a pod's veth ([`crate::verdict`]) and the exit, which
//! judges a deferred packet by its sender's egress policy ([`crate::deferred`]).

use aya_ebpf::programs::TcContext;
use netpol_common::{CtKey, CtValue, EndpointInfo, IpKey, Reason};

use crate::{
    conntrack, events,
    maps::CONNTRACK,
    parse::{self, Packet},
    policy,
};

/// What conntrack says of a packet's flow on an endpoint.
pub enum Tracked {
    /// No entry, or a withdrawn flow that this packet may open again: judged as new.
    New,
    /// A flow allowed at the endpoint's current policy: it passes.
    Established,
    /// A flow the endpoint's policy withdrew, and this packet does not open one: dropped.
    Revoked,
    /// The pod's veth passed the flow on to be judged where it leaves the node, after NAT: the
    /// entry is no verdict. `denied`: there, with these very addresses (no NAT on the way), the
    /// pod's egress policy denied it. `entry` is the map value, valid for this program run.
    PassedOn {
        /// The conntrack entry.
        entry: *mut CtValue,
        /// Denied where it left the node.
        denied: bool,
    },
}

/// Looks the flow `key` up on endpoint `ep`; an allowed flow whose endpoint's policy changed
/// since is checked again first ([`revalidate`]).
#[inline(always)]
pub fn tracked(ctx: &TcContext, ep: &EndpointInfo, key: &CtKey, src_is_a: bool, peer: &IpKey, p: &Packet) -> Tracked {
    let Some(ct) = CONNTRACK.get_ptr_mut(key) else { return Tracked::New };
    // SAFETY: a valid map value pointer for the duration of the program.
    let entry = unsafe { &mut *ct };
    if entry.deferred != 0 {
        return Tracked::PassedOn { entry: ct, denied: entry.revoked != 0 };
    }
    revalidate(entry, ep, src_is_a, peer, p);
    if entry.revoked == 0 {
        Tracked::Established
    } else if opens_flow(ctx, p) {
        Tracked::New
    } else {
        Tracked::Revoked
    }
}

/// The verdict on a new flow of `ep` with `peer` in `direction`: not isolated, allowed by a
/// policy rule (counted as a hit of that rule), or no rule. An allowed flow is tracked under
/// `key`. The rule is [`policy::DENIED`] when no rule allowed the flow (0 when not isolated).
#[inline(always)]
pub fn new_flow(ep: &EndpointInfo, direction: u8, peer: &IpKey, p: &Packet, key: &CtKey, src_is_a: bool) -> (Reason, u32) {
    let rule = policy::allows(ep, direction, peer, p.protocol, p.dport_be);
    let reason = if !policy::isolated(ep, direction) {
        Reason::AllowNotIsolated
    } else if rule != policy::DENIED {
        events::count_rule_hit(rule);
        Reason::AllowPolicy
    } else {
        return (Reason::DropNoRule, policy::DENIED);
    };
    conntrack::track(key, src_is_a, direction, ep.generation, 0);
    (reason, rule)
}

/// If the endpoint's policy changed since the flow `ct` was allowed, checks it again as the
/// flow was opened (same direction, the original destination port) and marks it revoked when
/// the policy no longer allows it.
#[inline(always)]
fn revalidate(ct: &mut CtValue, ep: &EndpointInfo, src_is_a: bool, peer: &IpKey, p: &Packet) {
    if ct.generation != ep.generation {
        let dport = if conntrack::is_forward(ct, src_is_a) { p.dport_be } else { p.sport_be };
        ct.generation = ep.generation;
        ct.revoked = u8::from(policy::allows(ep, ct.direction, peer, p.protocol, dport) == policy::DENIED);
    }
}

/// Whether the packet may open a flow: a TCP SYN without ACK, or a packet of another protocol.
/// A cold path (only for tombstoned flows), so the TCP flags are read only here.
#[inline(never)]
pub fn opens_flow(ctx: &TcContext, p: &Packet) -> bool {
    if p.protocol != parse::IPPROTO_TCP {
        return true;
    }
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    // Bytes 12-13 of the TCP header: data offset, then the flags. Read as a pair: the compiler
    // turns the bounds check of a single byte into a comparison the verifier does not take as one.
    match p.l4_offset(12).and_then(|off| parse::read::<[u8; 2]>(ctx, off)) {
        Some([_, flags]) => flags & (SYN | ACK) == SYN,
        None => false,
    }
}

/// Whether an ICMP error quotes a packet of a flow tracked on this endpoint (a cold path, in its
/// own BPF function).
#[inline(never)]
pub fn related_to_tracked_flow(ctx: &TcContext, ep: &EndpointInfo, p: &Packet) -> bool {
    let Some(key) = parse::quoted_flow_key(ctx, p, ep.endpoint) else { return false };
    // SAFETY: only checked for presence.
    unsafe { CONNTRACK.get(&key) }.is_some()
}
