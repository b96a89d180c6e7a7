//! The verdict on a packet at a pod's veth, top to bottom: the flow cache (an established
//! flow's next packets end there), the endpoint, anti-spoofing and the built-in allowances
//! ([`crate::guards`]), fragments, conntrack and policy ([`crate::judge`]); then the verdict is
//! counted and reported ([`crate::tally`]).

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    programs::TcContext,
};
use netpol_common::{EndpointInfo, Reason, DIR_EGRESS};

use crate::{
    conntrack, deferred, flow_cache,
    fragments::{later_fragment, remember_first_fragment},
    guards::{
        advertises_own_address, arp_sender_is_own, has_v4_mapped_address, is_link_local_icmpv6, is_neighbour_discovery, is_own_address,
        ND_NEIGHBOR_ADVERT,
    },
    judge::{self, Tracked},
    maps::ENDPOINTS,
    parse::{self, Fragment, NotIp, Packet, IPPROTO_ICMPV6},
    policy,
    tally::{count, settle},
};

/// Passes an established flow the flow cache knows; otherwise finds the endpoint, decides,
/// counts (per endpoint slot, direction and reason), reports the verdicts that call for an
/// event, and turns the reason into a TC action. Allowed packets go on to the next program on
/// the hook (`TC_ACT_UNSPEC` is TCX_NEXT), so netpol composes with a CNI's programs. In audit
/// mode a policy drop passes, counted as [`Reason::AllowAudit`].
#[inline(always)]
pub fn verdict(ctx: &TcContext, direction: u8) -> i32 {
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
    if p.icmp_error && judge::related_to_tracked_flow(ctx, ep, p) {
        return (Reason::AllowRelated, NONE).into();
    }

    let (key, src_is_a) = conntrack::flow_key(ep.endpoint, p.protocol, &p.src, p.sport_be, &p.dst, p.dport_be);
    match judge::tracked(ctx, ep, &key, src_is_a, peer, p) {
        Tracked::Established => {
            remember_first_fragment(ep, p);
            return Decision { reason: Reason::AllowEstablished, rule: NONE, learn: Learn::Pass };
        }
        Tracked::Revoked => return (Reason::DropRevoked, NONE).into(),
        Tracked::PassedOn { denied: false, .. } => {
            // Judged where the packet leaves the node (marked again); replies pass like any
            // tracked flow's.
            if from_pod {
                deferred::mark(ctx, ep);
            }
            return Decision { reason: Reason::AllowEstablished, rule: NONE, learn: Learn::PassDeferred };
        }
        // Denied where it left the node with these very addresses: the pod's packets are judged
        // there again; nothing comes into the pod as part of it.
        Tracked::PassedOn { denied: true, .. } if from_pod => {
            deferred::mark(ctx, ep);
            return (Reason::PassDeferred, NONE).into();
        }
        Tracked::PassedOn { denied: true, .. } if !judge::opens_flow(ctx, p) => return (Reason::DropRevoked, NONE).into(),
        Tracked::PassedOn { .. } | Tracked::New => {}
    }

    if from_pod && isolated && deferred::judged_after_nat(ep, peer) {
        conntrack::track(&key, src_is_a, direction, ep.generation, 1);
        remember_first_fragment(ep, p);
        deferred::mark(ctx, ep);
        // Not learnt yet: where it leaves the node the flow may be denied as it is (no NAT).
        // Its next packets, still passed on and not denied there, are.
        return (Reason::PassDeferred, NONE).into();
    }
    let (reason, rule) = judge::new_flow(ep, direction, peer, p, &key, src_is_a);
    if reason.is_drop() {
        return (reason, NONE).into();
    }
    remember_first_fragment(ep, p);
    Decision { reason, rule, learn: Learn::Pass }
}
