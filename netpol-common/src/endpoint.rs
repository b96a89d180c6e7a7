//! Local endpoints: the value of the endpoint map, its flags, and the counter slots.

use crate::{IpKey, REASON_COUNT};


/// `EndpointInfo::flags`: ingress (traffic to the pod) is isolated by at least one policy.
pub const EP_INGRESS_ISOLATED: u32 = 1;
/// `EndpointInfo::flags`: egress (traffic from the pod) is isolated by at least one policy.
pub const EP_EGRESS_ISOLATED: u32 = 1 << 1;
/// `EndpointInfo::flags`: the endpoint has an IPv4 address in `ipv4`.
pub const EP_HAS_IPV4: u32 = 1 << 2;
/// `EndpointInfo::flags`: the endpoint has an IPv6 address in `ipv6`.
pub const EP_HAS_IPV6: u32 = 1 << 3;
/// `EndpointInfo::flags`: audit mode. Packets policy would drop pass, counted as
/// [`Reason::AllowAudit`](crate::Reason::AllowAudit) (and reported), so a team can roll out isolation safely.
pub const EP_AUDIT: u32 = 1 << 4;

/// Endpoint slots of [`MAP_COUNTERS`](crate::MAP_COUNTERS): slot 0 is shared by interfaces without an endpoint and
/// endpoints beyond the last slot; the agent gives each local pod its own slot from 1.
pub const COUNTER_SLOTS: u32 = 512;

/// The [`MAP_COUNTERS`](crate::MAP_COUNTERS) index of packets of endpoint slot `slot` (0 past [`COUNTER_SLOTS`]) in
/// `direction` counted under `reason`.
#[inline(always)]
pub const fn counter_index(slot: u32, direction: u8, reason: u32) -> u32 {
    let slot = if slot < COUNTER_SLOTS { slot } else { 0 };
    (slot * 2 + (direction as u32 & 1)) * REASON_COUNT + reason
}

/// Value of [`MAP_ENDPOINTS`](crate::MAP_ENDPOINTS): one local pod, as seen by the classifier on its veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointInfo {
    /// Endpoint id, unique on this node; the first field of policy and conntrack keys.
    pub endpoint: u32,
    /// `EP_*` bits.
    pub flags: u32,
    /// Policy generation: bumped by the agent whenever this endpoint's isolation or policy
    /// entries change, so that conntrack entries made under an older generation are checked again.
    pub generation: u32,
    /// The endpoint's slot in [`MAP_COUNTERS`](crate::MAP_COUNTERS) (see [`counter_index`]).
    pub slot: u32,
    /// The pod's IPv4 address when `EP_HAS_IPV4`: its network-order bytes read as one native
    /// word (`u32::from_ne_bytes(octets)`), so the classifier compares it in one instruction.
    pub ipv4: u32,
    /// Explicit padding.
    pub _pad2: u32,
    /// The pod's IPv6 address when `EP_HAS_IPV6`.
    pub ipv6: IpKey,
}
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 40);
