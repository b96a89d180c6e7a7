//! netpol's classifiers, one per direction on the host end of every local pod's veth. The
//! packet path reads top to bottom in [`verdict`] and [`decide`]: parse, the flow cache (an
//! established flow's next packets end there), endpoint, anti-spoofing, built-in allowances,
//! fragments, conntrack, policy; then the verdict is counted.
#![no_std]
#![no_main]

mod conntrack;
mod deferred;
mod events;
mod flow_cache;
mod maps;
mod parse;
mod policy;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use netpol_common::{
    counter_index, CtValue, EndpointInfo, EP_AUDIT, FragKey, FragValue, IpKey, Reason, DIR_EGRESS, DIR_INGRESS, EP_HAS_IPV4, EP_HAS_IPV6,
    JUMP_DEFERRED, JUMP_TO_POD,
};

use crate::{
    maps::{COUNTERS, ENDPOINTS, FRAGMENTS},
    parse::{Fragment, NotIp, Packet, IPPROTO_ICMPV6},
};

/// TCX ingress of the host-side veth: packets leaving the pod, judged by its Egress policy.
#[classifier]
pub fn netpol_from_pod(ctx: TcContext) -> i32 {
    verdict(&ctx, DIR_EGRESS)
}

/// TCX egress of the host-side veth: packets entering the pod, judged by its Ingress policy. A
/// packet whose egress judgement another pod's veth deferred ([`deferred`]) is judged by that
/// pod's Egress policy first, in [`netpol_exit`] (a tail call there and back), so that pods'
/// veths need no exit program of their own on every packet.
#[classifier]
pub fn netpol_to_pod(ctx: TcContext) -> i32 {
    if deferred::deferred_mark(&ctx).is_some() {
        return deferred::jump(&ctx, JUMP_DEFERRED);
    }
    verdict(&ctx, DIR_INGRESS)
}

/// TCX egress of every interface of the node that is not a local pod's veth, and the tail call
/// of [`netpol_to_pod`] for a deferred packet: a packet leaving through the interface whose
/// egress judgement a pod's veth deferred until after the node's NAT ([`deferred`]) is judged by
/// that pod's Egress policy (the mark cleared); on a pod's veth it then goes back to
/// [`netpol_to_pod`] for the receiving pod's Ingress policy. Every other packet goes on after one
/// mark check.
#[classifier]
pub fn netpol_exit(ctx: TcContext) -> i32 {
    let Some((mark, slot)) = deferred::deferred_mark(&ctx) else {
        return TC_ACT_UNSPEC;
    };
    if deferred::denied(&ctx, mark, slot) {
        return TC_ACT_SHOT;
    }
    if deferred::into_pod(&ctx) {
        return deferred::jump(&ctx, JUMP_TO_POD);
    }
    TC_ACT_UNSPEC
}

/// A classifier that only lets packets go on: the floor the benchmarks measure netpol's cost
/// against. Never attached by the agent.
#[classifier]
pub fn netpol_noop(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// Passes an established flow the flow cache knows; otherwise finds the endpoint, decides,
/// counts (per endpoint slot, direction and reason), reports the verdicts that call for an
/// event, and turns the reason into a TC action. Allowed packets go on
/// to the next program on the hook (`TC_ACT_UNSPEC` is TCX_NEXT), so netpol composes with a
/// CNI's programs. In audit mode a policy drop passes, counted as [`Reason::AllowAudit`].
#[inline(always)]
fn verdict(ctx: &TcContext, direction: u8) -> i32 {
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let site = flow_cache::Site { ifindex, direction, epoch: flow_cache::epoch() };
    let parsed = parse::parse(ctx);
    let found = match &parsed {
        Ok(p) => flow_cache::find(&site, p),
        Err(_) => flow_cache::Found::UNCACHED,
    };
    if let Some((slot, deferred)) = found.hit() {
        if direction == DIR_EGRESS && deferred {
            deferred::mark_slot(ctx, slot);
        }
        count(slot, direction, Reason::AllowEstablished);
        return TC_ACT_UNSPEC;
    }
    // SAFETY: the agent replaces endpoint values whole (a hash map update swaps elements).
    let Some(ep) = (unsafe { ENDPOINTS.get(&ifindex) }) else {
        count(0, direction, Reason::AllowUnknownInterface);
        return TC_ACT_UNSPEC;
    };
    let Decision { reason: decided, rule, learn } = decide(ctx, ep, direction, &parsed);
    if learn != Learn::Nothing {
        flow_cache::learn(found, &site, ep.slot, learn == Learn::PassDeferred);
    }
    if settle(ep, direction, decided, rule, parsed.as_ref().ok()) {
        TC_ACT_SHOT
    } else {
        TC_ACT_UNSPEC
    }
}

/// The end of every verdict: counts it (in audit mode a policy drop as
/// [`Reason::AllowAudit`]), reports the ones that call for an event, and says whether to drop.
#[inline(always)]
pub(crate) fn settle(ep: &EndpointInfo, direction: u8, decided: Reason, rule: u32, packet: Option<&Packet>) -> bool {
    let reason = if ep.flags & EP_AUDIT != 0 && decided.is_policy_drop() { Reason::AllowAudit } else { decided };
    count(ep.slot, direction, reason);
    if decided.is_drop() || matches!(decided, Reason::AllowPolicy | Reason::AllowNotIsolated) {
        events::report(ep, direction, decided, rule, packet);
    }
    reason.is_drop()
}

/// Counts one packet of endpoint slot `slot` in `direction` under `reason`.
#[inline(always)]
pub(crate) fn count(slot: u32, direction: u8, reason: Reason) {
    if let Some(counter) = COUNTERS.get_ptr_mut(counter_index(slot, direction, reason as u32)) {
        // SAFETY: a per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

/// What the flow cache learns from a verdict.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Learn {
    /// Nothing: the packet's flow does not pass by conntrack.
    Nothing,
    /// The flow passes.
    Pass,
    /// The flow passes, its egress judged after NAT.
    PassDeferred,
}

/// A packet's verdict: why, the rule that allowed a new flow ([`policy::DENIED`] otherwise), and
/// what the flow cache learns.
struct Decision {
    reason: Reason,
    rule: u32,
    learn: Learn,
}

impl From<(Reason, u32)> for Decision {
    #[inline(always)]
    fn from((reason, rule): (Reason, u32)) -> Self {
        Decision { reason, rule, learn: Learn::Nothing }
    }
}

/// The verdict on a packet. A flow that passes by conntrack, or is tracked now, is learnt by the
/// flow cache.
#[inline(always)]
fn decide(ctx: &TcContext, ep: &EndpointInfo, direction: u8, parsed: &Result<Packet, NotIp>) -> Decision {
    const NONE: u32 = policy::DENIED;
    let isolated = policy::isolated(ep, direction);
    let from_pod = direction == DIR_EGRESS;
    let p = match parsed {
        Ok(p) => p,
        Err(NotIp::Arp) if from_pod && !arp_sender_is_own(ctx, ep) => return (Reason::DropSpoofed, NONE).into(),
        Err(NotIp::Arp) => return (Reason::AllowNonIp, NONE).into(),
        Err(NotIp::Other) => return (if isolated { Reason::DropNonIp } else { Reason::AllowNonIp }, NONE).into(),
        Err(NotIp::Malformed) => return (Reason::DropMalformed, NONE).into(),
        Err(NotIp::TooManyExtHeaders) => return (Reason::DropExtHeaders, NONE).into(),
    };
    let (own, peer) = if from_pod { (&p.src, &p.dst) } else { (&p.dst, &p.src) };
    if p.ipv6 && has_v4_mapped_address(p) {
        return (Reason::DropMalformed, NONE).into();
    }

    if from_pod && !is_own_address(ep, own) && !is_link_local_icmpv6(p) {
        return (Reason::DropSpoofed, NONE).into();
    }
    if p.protocol == IPPROTO_ICMPV6 && is_neighbour_discovery(p.icmp_type) {
        if from_pod && p.icmp_type == ND_NEIGHBOR_ADVERT && !advertises_own_address(ctx, ep, p) {
            return (Reason::DropSpoofed, NONE).into();
        }
        return (Reason::AllowNeighbourDiscovery, NONE).into();
    }
    if is_own_address(ep, peer) {
        return (Reason::AllowSelf, NONE).into();
    }
    if p.fragment == Fragment::Later {
        return (later_fragment(ep, p, isolated), NONE).into();
    }
    if p.icmp_error && related_to_tracked_flow(ctx, ep, p) {
        return (Reason::AllowRelated, NONE).into();
    }

    let (key, src_is_a) = conntrack::flow_key(ep.endpoint, p.protocol, &p.src, p.sport_be, &p.dst, p.dport_be);
    if let Some(ct) = maps::CONNTRACK.get_ptr_mut(&key) {
        // SAFETY: a valid map value pointer for the duration of the program.
        let ct = unsafe { &mut *ct };
        if ct.deferred != 0 {
            if ct.revoked == 0 {
                // Judged where the packet leaves the node (marked again); replies pass like any
                // tracked flow's.
                if from_pod {
                    deferred::mark(ctx, ep);
                }
                return Decision { reason: Reason::AllowEstablished, rule: NONE, learn: Learn::PassDeferred };
            }
            // Revoked: where it left the node, with these very addresses (no NAT on the way),
            // the pod's egress policy denied it. The pod's packets are judged there again;
            // nothing comes into the pod as part of it.
            if from_pod {
                deferred::mark(ctx, ep);
                return (Reason::PassDeferred, NONE).into();
            }
        } else {
            revalidate(ct, ep, src_is_a, peer, p);
            if ct.revoked == 0 {
                remember_first_fragment(ep, p);
                return Decision { reason: Reason::AllowEstablished, rule: NONE, learn: Learn::Pass };
            }
        }
        // A withdrawn flow: only a packet that opens a flow is judged again, as new.
        if !opens_flow(ctx, p) {
            return (Reason::DropRevoked, NONE).into();
        }
    }

    if from_pod && isolated && deferred::judged_after_nat(ep, peer) {
        conntrack::track(&key, src_is_a, direction, ep.generation, 1);
        remember_first_fragment(ep, p);
        deferred::mark(ctx, ep);
        // Not learnt yet: where it leaves the node the flow may be denied as it is (no NAT).
        // Its next packets, still passed on and not revoked there, are.
        return (Reason::PassDeferred, NONE).into();
    }
    let rule = policy::allows(ep, direction, peer, p.protocol, p.dport_be);
    let reason = if !isolated {
        Reason::AllowNotIsolated
    } else if rule != policy::DENIED {
        events::count_rule_hit(rule);
        Reason::AllowPolicy
    } else {
        return (Reason::DropNoRule, NONE).into();
    };
    conntrack::track(&key, src_is_a, direction, ep.generation, 0);
    remember_first_fragment(ep, p);
    Decision { reason, rule, learn: Learn::Pass }
}

/// If the endpoint's policy changed since the flow `ct` was allowed, checks it again as the
/// flow was opened (same direction, the original destination port) and marks it revoked when
/// the policy no longer allows it.
#[inline(always)]
pub(crate) fn revalidate(ct: &mut CtValue, ep: &EndpointInfo, src_is_a: bool, peer: &IpKey, p: &Packet) {
    if ct.generation != ep.generation {
        let dport = if conntrack::is_forward(ct, src_is_a) { p.dport_be } else { p.sport_be };
        ct.generation = ep.generation;
        ct.revoked = u8::from(policy::allows(ep, ct.direction, peer, p.protocol, dport) == policy::DENIED);
    }
}

/// Whether an IPv6 packet carries an IPv4-mapped address (`::ffff:0:0/96`): never valid on an
/// IPv6 wire (RFC 4291 2.5.5.2), and its key would be the IPv4 host's, with that host's policy
/// and conntrack entries. Its own BPF function: one call on the IPv6 path, no new verifier
/// branches in the caller.
#[inline(never)]
fn has_v4_mapped_address(p: &Packet) -> bool {
    p.src.is_v4_mapped() || p.dst.is_v4_mapped()
}

/// ICMPv6 Neighbor Advertisement (RFC 4861).
const ND_NEIGHBOR_ADVERT: u8 = 136;

/// Whether an ARP packet from the pod speaks for the pod's own IPv4 address (or for none: the
/// unspecified sender of an address probe). A pod must not answer for another pod's address
/// and so steal its traffic on a shared bridge.
#[inline(always)]
fn arp_sender_is_own(ctx: &TcContext, ep: &EndpointInfo) -> bool {
    // ARP for IPv4 over Ethernet: htype, ptype, hlen, plen, oper, then sha[6], spa[4].
    let Some(hdr) = parse::read::<[u8; 8]>(ctx, parse::ETH_LEN) else { return false };
    if hdr[2..4] != [0x08, 0x00] || hdr[5] != 4 {
        // Not about IPv4 addresses: nothing of a pod's to steal.
        return true;
    }
    let Some(spa) = parse::read::<[u8; 4]>(ctx, parse::ETH_LEN + 14) else { return false };
    let spa = u32::from_ne_bytes(spa);
    spa == 0 || (ep.flags & EP_HAS_IPV4 != 0 && spa == ep.ipv4)
}

/// Whether a Neighbor Advertisement from the pod advertises one of its own addresses (or a
/// link-local one, which the pod configures itself).
#[inline(always)]
fn advertises_own_address(ctx: &TcContext, ep: &EndpointInfo, p: &Packet) -> bool {
    // The target address follows the 4-byte ICMPv6 header and 4 bytes of flags.
    let Some(words) = p.l4_offset(8).and_then(|off| parse::read::<[u32; 4]>(ctx, off)) else { return false };
    let target = IpKey { addr: words };
    let link_local = u32::from_be(words[0]) >> 22 == 0xfe80 >> 6;
    link_local || is_own_address(ep, &target)
}

/// Whether the packet may open a flow: a TCP SYN without ACK, or a packet of another protocol.
/// A cold path (only for tombstoned flows), so the TCP flags are read only here.
#[inline(never)]
pub(crate) fn opens_flow(ctx: &TcContext, p: &Packet) -> bool {
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

/// Whether `addr` is one of the endpoint's own addresses.
#[inline(always)]
fn is_own_address(ep: &EndpointInfo, addr: &IpKey) -> bool {
    if ep.flags & EP_HAS_IPV4 != 0 && addr.is_v4_word(ep.ipv4) {
        return true;
    }
    ep.flags & EP_HAS_IPV6 != 0 && *addr == ep.ipv6
}

/// ICMPv6 sent from a link-local or the unspecified address: neighbour discovery, duplicate
/// address detection and MLD, which a pod does before (and beside) using its own address.
#[inline(always)]
fn is_link_local_icmpv6(p: &Packet) -> bool {
    if !p.ipv6 || p.protocol != IPPROTO_ICMPV6 {
        return false;
    }
    let a = &p.src.addr;
    // fe80::/10: the first 10 bits of the first word, read as a big-endian number.
    let link_local = u32::from_be(a[0]) >> 22 == 0xfe80 >> 6;
    link_local || *a == [0u32; 4]
}

/// ICMPv6 types of neighbour discovery (RFC 4861: 133-137) and multicast listener messages
/// (RFC 2710/3810: 130-132, 143), which IPv6 needs to work at all.
#[inline(always)]
fn is_neighbour_discovery(icmp_type: u8) -> bool {
    matches!(icmp_type, 130..=137 | 143)
}

/// A later fragment gets the verdict of its first fragment. A separate BPF function: a cold
/// path that keeps its key off the hot path's stack frame.
#[inline(never)]
fn later_fragment(ep: &EndpointInfo, p: &Packet, isolated: bool) -> Reason {
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
fn remember_first_fragment(ep: &EndpointInfo, p: &Packet) {
    if p.fragment == Fragment::First {
        insert_first_fragment(ep, p);
    }
}

#[inline(never)]
fn insert_first_fragment(ep: &EndpointInfo, p: &Packet) {
    let _ = FRAGMENTS.insert(&frag_key(ep, p), &FragValue { generation: ep.generation }, 0);
}

/// Whether an ICMP error quotes a packet of a flow tracked on this endpoint (a cold path, in its
/// own BPF function).
#[inline(never)]
fn related_to_tracked_flow(ctx: &TcContext, ep: &EndpointInfo, p: &Packet) -> bool {
    let Some(key) = parse::quoted_flow_key(ctx, p, ep.endpoint) else { return false };
    // SAFETY: only checked for presence.
    unsafe { maps::CONNTRACK.get(&key) }.is_some()
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
