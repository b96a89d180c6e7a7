//! The end of every verdict: counted per endpoint slot, direction and reason, and reported as
//! an event when it calls for one. Shared by the classifier on a pod's veth and the exit.

use netpol_common::{counter_index, EndpointInfo, Reason, EP_AUDIT};

use crate::{events, maps::COUNTERS, parse::Packet};

/// Counts the verdict `decided` on a packet of `ep` in `direction` (in audit mode a policy drop
/// as [`Reason::AllowAudit`]), reports the ones that call for an event, and says whether to
/// drop. `packet` is `None` when the headers could not be parsed.
#[inline(always)]
pub fn settle(ep: &EndpointInfo, direction: u8, decided: Reason, rule: u32, packet: Option<&Packet>) -> bool {
    let reason = if ep.flags & EP_AUDIT != 0 && decided.is_policy_drop() { Reason::AllowAudit } else { decided };
    count(ep.slot, direction, reason);
    if decided.is_drop() || matches!(decided, Reason::AllowPolicy | Reason::AllowNotIsolated) {
        events::report(ep, direction, decided, rule, packet);
    }
    reason.is_drop()
}

/// Counts one packet of endpoint slot `slot` in `direction` under `reason`.
#[inline(always)]
pub fn count(slot: u32, direction: u8, reason: Reason) {
    if let Some(counter) = COUNTERS.get_ptr_mut(counter_index(slot, direction, reason as u32)) {
        // SAFETY: a per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}
