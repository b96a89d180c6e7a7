//! Verdict events and per-rule hit counts: the slow-path reporting of what the classifier
//! decided, for `netpol-agent observe` and the metrics. Reporting never waits: past an
//! endpoint's budget for the second an event is only counted as suppressed, and a full ring
//! buffer loses it (counted as lost).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use netpol_common::{
    event_stat_index, EndpointInfo, IpKey, Reason, VerdictEvent, CONFIG_EVENTS_ALLOWED, COUNTER_SLOTS, EP_AUDIT,
    EVENT_STAT_LOST, EVENT_STAT_SENT, EVENT_STAT_SUPPRESSED, RULE_HITS_MAX, VERDICT_ALLOWED, VERDICT_AUDIT,
    VERDICT_DROPPED,
};

use crate::{
    maps::{CONFIG, EVENTS, EVENT_BUDGET, EVENT_STATS, RULE_HITS},
    parse::Packet,
};

/// Length of a rate-limit window.
const WINDOW_NS: u64 = 1_000_000_000;

/// Counts one new flow allowed by compiled rule `rule`.
#[inline(never)]
pub fn count_rule_hit(rule: u32) {
    if rule == 0 || rule >= RULE_HITS_MAX {
        return;
    }
    if let Some(hits) = RULE_HITS.get_ptr_mut(rule) {
        // SAFETY: a per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *hits += 1 };
    }
}

/// Reports the verdict `reason` on a packet of `ep` in `direction`, with
/// the rule that allowed it, if the settings ask for it and the endpoint's budget allows.
/// `packet` is `None` when the headers could not be parsed.
#[inline(never)]
pub fn report(ep: &EndpointInfo, direction: u8, reason: Reason, rule: u32, packet: Option<&Packet>) {
    let Some(cfg) = CONFIG.get(0) else { return };
    if cfg.events_per_second == 0 {
        return;
    }
    let drop = reason.is_drop();
    if !drop && cfg.flags & CONFIG_EVENTS_ALLOWED == 0 {
        return;
    }
    let slot = if ep.slot < COUNTER_SLOTS { ep.slot } else { 0 };
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(slot) else { return };
    // SAFETY: a per-CPU slot, only this CPU uses it while the program runs.
    let budget = unsafe { &mut *budget };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(budget.window_start_ns) >= WINDOW_NS {
        budget.window_start_ns = now;
        budget.sent = 0;
    }
    if budget.sent >= cfg.events_per_second {
        budget.suppressed = budget.suppressed.saturating_add(1);
        count(slot, EVENT_STAT_SUPPRESSED);
        return;
    }
    budget.sent += 1;
    let verdict = if !drop {
        VERDICT_ALLOWED
    } else if ep.flags & EP_AUDIT != 0 && reason.is_policy_drop() {
        VERDICT_AUDIT
    } else {
        VERDICT_DROPPED
    };
    let Some(mut entry) = EVENTS.reserve::<VerdictEvent>(0) else {
        count(slot, EVENT_STAT_LOST);
        return;
    };
    let none = IpKey { addr: [0; 4] };
    let (src, dst, sport_be, dport_be, protocol, icmp_type, ipv6) = match packet {
        Some(p) => (p.src, p.dst, p.sport_be, p.dport_be, p.protocol, p.icmp_type, u8::from(p.ipv6)),
        None => (none, none, 0, 0, 0, 0, 0),
    };
    entry.write(VerdictEvent {
        time_ns: now,
        endpoint: ep.endpoint,
        rule: if drop { 0 } else { rule },
        src,
        dst,
        sport_be,
        dport_be,
        protocol,
        direction,
        reason: reason as u8,
        verdict,
        suppressed: budget.suppressed,
        icmp_type,
        ipv6,
        _pad: 0,
    });
    entry.submit(0);
    budget.suppressed = 0;
    count(slot, EVENT_STAT_SENT);
}

/// Counts one event outcome of endpoint slot `slot`.
#[inline(always)]
fn count(slot: u32, kind: u32) {
    if let Some(n) = EVENT_STATS.get_ptr_mut(event_stat_index(slot, kind)) {
        // SAFETY: a per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *n += 1 };
    }
}
