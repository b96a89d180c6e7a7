//! netpol's classifiers: one per direction on the host end of every local pod's veth, and the
//! exit on the node's other interfaces. Each entry point is a few lines; the packet path reads
//! top to bottom in [`verdict`] (a pod's veth) and [`deferred`] (the exit):
//!
//! - [`parse`]: Ethernet, IPv4/IPv6 with bounded extension headers, ports, ICMP.
//! - [`flow_cache`]: an established flow's next packets end after one array lookup.
//! - [`guards`]: anti-spoofing and the built-in allowances (neighbour discovery, self).
//! - [`fragments`]: later fragments get their first fragment's verdict.
//! - [`judge`]: conntrack and policy ([`conntrack`], [`policy`]), one judgement for both paths.
//! - [`tally`]: every verdict counted and, where it calls for one, reported ([`events`]).
//! - [`maps`]: the maps, documented in `netpol-common`.
#![no_std]
#![no_main]

mod conntrack;
mod deferred;
mod events;
mod flow_cache;
mod fragments;
mod guards;
mod judge;
mod maps;
mod parse;
mod policy;
mod tally;
mod verdict;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use netpol_common::{DIR_EGRESS, DIR_INGRESS, JUMP_DEFERRED, JUMP_TO_POD};

/// TCX ingress of the host-side veth: packets leaving the pod, judged by its Egress policy.
#[classifier]
pub fn netpol_from_pod(ctx: TcContext) -> i32 {
    verdict::verdict(&ctx, DIR_EGRESS)
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
    verdict::verdict(&ctx, DIR_INGRESS)
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
