//! Egress judged after the node's NAT. kube-proxy rewrites a Service's ClusterIP to a backend
//! pod in the node's namespace, after the classifier on the client's veth has run: judged there,
//! a flow to a ClusterIP would be judged against the ClusterIP, not the pod it reaches. So a new
//! flow from an egress-isolated pod to an address that is neither a pod nor the node is passed on
//! with the pod's endpoint slot in the packet mark ([`netpol_common::defer_mark`]), and judged by
//! the pod's egress policy where it leaves the node — on the veth of the pod it reaches (a tail
//! call from the classifier into that pod), or on one of the node's other interfaces — with the
//! address it really goes to.

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use netpol_common::{deferred_slot, defer_mark, EndpointInfo, IpKey, Reason, DIR_EGRESS, MARK_DEFER_MASK};

use crate::{
    conntrack,
    judge::{self, Tracked},
    maps::{ENDPOINTS, IPCACHE, JUMPS, SLOTS},
    parse::{self, Packet},
    policy,
    tally::{count, settle},
};

/// Whether a new flow from a pod to `peer` is judged after NAT: the peer is not in the ipcache
/// (neither a pod nor one of the node's own addresses, which are delivered here and never leave
/// through an interface), and the endpoint has a slot to name it by in the mark.
#[inline(always)]
pub fn judged_after_nat(ep: &EndpointInfo, peer: &IpKey) -> bool {
    // SAFETY: only checked for presence.
    ep.slot != 0 && unsafe { IPCACHE.get(peer) }.is_none()
}

/// Marks the packet as leaving endpoint `ep` with its egress judgement deferred.
#[inline(always)]
pub fn mark(ctx: &TcContext, ep: &EndpointInfo) {
    mark_slot(ctx, ep.slot);
}

/// Marks the packet as leaving the endpoint with counter slot `slot`, its egress judgement
/// deferred.
#[inline(always)]
pub fn mark_slot(ctx: &TcContext, slot: u32) {
    // SAFETY: the context pointer is valid for the whole program run.
    let mark = unsafe { (*ctx.skb.skb).mark };
    ctx.set_mark(defer_mark(mark, slot));
}

/// Whether the packet's egress judgement was deferred (one mark check): then its mark and the
/// endpoint slot of the pod it came from.
#[inline(always)]
pub fn deferred_mark(ctx: &TcContext) -> Option<(u32, u32)> {
    // SAFETY: the context pointer is valid for the whole program run.
    let mark = unsafe { (*ctx.skb.skb).mark };
    deferred_slot(mark).map(|slot| (mark, slot))
}

/// Goes on in the program at `index` of [`JUMPS`] (a tail call: it does not come back). Only
/// if the table lacks it does this return: the packet is dropped, counted as
/// [`Reason::DropNoProgram`] (no judgement is no pass).
#[inline(always)]
pub fn jump(ctx: &TcContext, index: u32) -> i32 {
    // SAFETY: a tail call into a classifier of this object, on the same context.
    unsafe { JUMPS.tail_call(ctx, index) };
    count(0, DIR_EGRESS, Reason::DropNoProgram);
    TC_ACT_SHOT
}

/// Whether the packet is leaving into a local pod: the interface is a pod's veth (it has an
/// endpoint).
#[inline(always)]
pub fn into_pod(ctx: &TcContext) -> bool {
    // SAFETY: the context pointer is valid for the whole program run. Copied: a map key must be
    // on the stack.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: only checked for presence.
    unsafe { ENDPOINTS.get(&ifindex) }.is_some()
}

/// For a packet leaving through this interface whose egress judgement was deferred (`mark` and
/// the sender's `slot`, from [`deferred_mark`]): clears the mark and judges it by the egress
/// policy of the pod it came from, with the addresses it has now. Whether to drop it.
#[inline(always)]
pub fn denied(ctx: &TcContext, mark: u32, slot: u32) -> bool {
    ctx.set_mark(mark & !MARK_DEFER_MASK);
    // SAFETY: copied out at once.
    let Some(ifindex) = SLOTS.get(slot).copied() else { return true };
    // SAFETY: the agent replaces endpoint values whole.
    let ep = match unsafe { ENDPOINTS.get(&ifindex) } {
        Some(ep) if ep.slot == slot => *ep,
        _ => {
            // The pod left (its slot is free or another's): nothing can judge its flow.
            count(0, DIR_EGRESS, Reason::DropNoRule);
            return true;
        }
    };
    let parsed = parse::parse(ctx);
    let (reason, rule) = match &parsed {
        Ok(p) => judge(ctx, &ep, p),
        Err(_) => (Reason::DropMalformed, policy::DENIED),
    };
    // Established packets were counted on the pod's veth already.
    reason != Reason::AllowEstablished && settle(&ep, DIR_EGRESS, reason, rule, parsed.as_ref().ok())
}

/// The egress verdict of endpoint `ep` on a deferred packet, with the rule that allowed a new
/// flow; conntrack entries are kept on the endpoint as for any flow, under the addresses after
/// NAT. The entry the pod's veth left when it passed the flow on is no verdict: found here (the
/// flow was not NATed on the way), the flow is judged as new, and that entry marked denied when
/// policy denies it.
#[inline(always)]
fn judge(ctx: &TcContext, ep: &EndpointInfo, p: &Packet) -> (Reason, u32) {
    let (key, src_is_a) = conntrack::flow_key(ep.endpoint, p.protocol, &p.src, p.sport_be, &p.dst, p.dport_be);
    let passed_on = match judge::tracked(ctx, ep, &key, src_is_a, &p.dst, p) {
        Tracked::Established => return (Reason::AllowEstablished, policy::DENIED),
        Tracked::Revoked => return (Reason::DropRevoked, policy::DENIED),
        Tracked::PassedOn { entry, .. } => Some(entry),
        Tracked::New => None,
    };
    let (reason, rule) = judge::new_flow(ep, DIR_EGRESS, &p.dst, p, &key, src_is_a);
    if let (Reason::DropNoRule, Some(entry)) = (reason, passed_on) {
        // SAFETY: the map value pointer found above, valid for this program run.
        unsafe { (*entry).revoked = 1 };
    }
    (reason, rule)
}
