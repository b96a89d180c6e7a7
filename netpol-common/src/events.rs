//! Verdict events, their rate limit and outcomes, the data path's settings, and rule hits.

use crate::{IpKey, COUNTER_SLOTS};


/// Size in bytes of [`MAP_EVENTS`](crate::MAP_EVENTS) (a power of two): about 14 000 events waiting.
pub const EVENTS_BYTES: u32 = 1 << 20;
/// Size of [`MAP_RULE_HITS`](crate::MAP_RULE_HITS): rule ids at or past it are not counted. The agent reuses the ids
/// of rules gone, so ids stay below the number of rules with entries on the node.
pub const RULE_HITS_MAX: u32 = 16_384;
/// [`event_stat_index`] kind: the event was written to the ring buffer.
pub const EVENT_STAT_SENT: u32 = 0;
/// [`event_stat_index`] kind: the endpoint's budget for this second was spent; not sent.
pub const EVENT_STAT_SUPPRESSED: u32 = 1;
/// [`event_stat_index`] kind: the ring buffer was full; lost.
pub const EVENT_STAT_LOST: u32 = 2;
/// Kinds of [`event_stat_index`].
pub const EVENT_STAT_KINDS: u32 = 3;
/// Size of [`MAP_EVENT_STATS`](crate::MAP_EVENT_STATS).
pub const EVENT_STATS_LEN: u32 = COUNTER_SLOTS * EVENT_STAT_KINDS;

/// The [`MAP_EVENT_STATS`](crate::MAP_EVENT_STATS) index of endpoint slot `slot` (0 past [`COUNTER_SLOTS`](crate::COUNTER_SLOTS)) and `kind`.
#[inline(always)]
pub const fn event_stat_index(slot: u32, kind: u32) -> u32 {
    let slot = if slot < COUNTER_SLOTS { slot } else { 0 };
    slot * EVENT_STAT_KINDS + kind
}

/// [`DatapathConfig::flags`]: also report allowed new flows (not only drops).
pub const CONFIG_EVENTS_ALLOWED: u32 = 1;

/// Value of [`MAP_CONFIG`](crate::MAP_CONFIG).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DatapathConfig {
    /// `CONFIG_*` bits.
    pub flags: u32,
    /// Events each endpoint slot may send per second on each CPU; 0: no events at all.
    pub events_per_second: u32,
}
const _: () = assert!(core::mem::size_of::<DatapathConfig>() == 8);

/// Value of [`MAP_EVENT_BUDGET`](crate::MAP_EVENT_BUDGET).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventBudget {
    /// Start of the current window (`bpf_ktime_get_ns`).
    pub window_start_ns: u64,
    /// Events sent in the window.
    pub sent: u32,
    /// Events suppressed since the last one sent (carried by the next event, then reset).
    pub suppressed: u32,
}
const _: () = assert!(core::mem::size_of::<EventBudget>() == 16);

/// [`VerdictEvent::verdict`]: the packet passed.
pub const VERDICT_ALLOWED: u8 = 0;
/// [`VerdictEvent::verdict`]: the packet was dropped.
pub const VERDICT_DROPPED: u8 = 1;
/// [`VerdictEvent::verdict`]: policy would drop the packet, but the endpoint is in audit mode.
pub const VERDICT_AUDIT: u8 = 2;

/// An entry of [`MAP_EVENTS`](crate::MAP_EVENTS): one verdict on one packet of one local endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VerdictEvent {
    /// When (`bpf_ktime_get_ns`: CLOCK_MONOTONIC nanoseconds).
    pub time_ns: u64,
    /// The local endpoint ([`EndpointInfo::endpoint`](crate::EndpointInfo::endpoint)).
    pub endpoint: u32,
    /// The compiled rule that allowed the flow (the agent's rule table); 0 when none did.
    pub rule: u32,
    /// Source address (zero when the headers could not be parsed).
    pub src: IpKey,
    /// Destination address.
    pub dst: IpKey,
    /// Source port, big-endian (ICMP echo: the identifier).
    pub sport_be: u16,
    /// Destination port, big-endian.
    pub dport_be: u16,
    /// IP protocol (0 when the headers could not be parsed).
    pub protocol: u8,
    /// [`DIR_INGRESS`](crate::DIR_INGRESS) (into the pod) or [`DIR_EGRESS`](crate::DIR_EGRESS) (out of it).
    pub direction: u8,
    /// The decision's [`Reason`](crate::Reason) (for audit mode, the drop that did not happen).
    pub reason: u8,
    /// `VERDICT_*`.
    pub verdict: u8,
    /// Events of this endpoint suppressed on this CPU by the rate limit since the previous one.
    pub suppressed: u32,
    /// ICMP / ICMPv6 type, 0 for other protocols.
    pub icmp_type: u8,
    /// 1 for IPv6, 0 for IPv4.
    pub ipv6: u8,
    /// Explicit padding.
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<VerdictEvent>() == 64);
