//! Why a packet passed or was dropped: one numbered list shared by kernel and user space.


/// Why the classifier let a packet pass or dropped it: the index of [`MAP_COUNTERS`](crate::MAP_COUNTERS), one list
/// shared by kernel and user space.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Allowed: part of a tracked flow that was allowed, current generation.
    AllowEstablished = 0,
    /// Allowed: new flow, the endpoint is not isolated in this direction.
    AllowNotIsolated = 1,
    /// Allowed: new flow, a policy entry allows it.
    AllowPolicy = 2,
    /// Allowed: not IP (ARP and other link-layer protocols).
    AllowNonIp = 3,
    /// Allowed: IPv6 neighbour discovery or router solicitation/advertisement.
    AllowNeighbourDiscovery = 4,
    /// Allowed: the pod talking to itself (hairpin).
    AllowSelf = 5,
    /// Allowed: a later fragment of an allowed first fragment.
    AllowFragment = 6,
    /// Dropped: the endpoint is isolated and no policy entry allows the flow.
    DropNoRule = 7,
    /// Dropped: the packet leaves the pod with a source address that is not the pod's.
    DropSpoofed = 8,
    /// Dropped: a headers could not be parsed (truncated, bad header length).
    DropMalformed = 9,
    /// Dropped: a later fragment whose first fragment was not seen or not allowed.
    DropOrphanFragment = 10,
    /// Dropped: more IPv6 extension headers than the parser walks.
    DropExtHeaders = 11,
    /// Dropped: a tracked flow whose policy was withdrawn (generation changed, checked again).
    DropRevoked = 12,
    /// Allowed: no endpoint is known for the interface (not a pod veth the agent manages).
    AllowUnknownInterface = 13,
    /// Dropped: a link-layer protocol other than IP and ARP, into or out of an isolated pod.
    DropNonIp = 14,
    /// Allowed: an ICMP error about a tracked flow (destination unreachable, time exceeded, ...).
    AllowRelated = 15,
    /// Allowed: the endpoint is in audit mode and policy would have dropped the packet.
    AllowAudit = 16,
    /// Passed on: a new flow to an address that is neither a pod nor the node; the pod's egress
    /// policy judges it where it leaves the node, after NAT (its later packets count as
    /// established here, and are judged there too).
    PassDeferred = 17,
    /// Dropped: a deferred packet into a pod found no program to judge it by ([`MAP_JUMPS`](crate::MAP_JUMPS) not
    /// filled: never once the agent has loaded the programs).
    DropNoProgram = 18,
}

/// Number of [`Reason`] values (counters per endpoint slot and direction in [`MAP_COUNTERS`](crate::MAP_COUNTERS)).
pub const REASON_COUNT: u32 = 19;

impl Reason {
    /// Every reason, in counter-index order.
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::AllowEstablished,
        Reason::AllowNotIsolated,
        Reason::AllowPolicy,
        Reason::AllowNonIp,
        Reason::AllowNeighbourDiscovery,
        Reason::AllowSelf,
        Reason::AllowFragment,
        Reason::DropNoRule,
        Reason::DropSpoofed,
        Reason::DropMalformed,
        Reason::DropOrphanFragment,
        Reason::DropExtHeaders,
        Reason::DropRevoked,
        Reason::AllowUnknownInterface,
        Reason::DropNonIp,
        Reason::AllowRelated,
        Reason::AllowAudit,
        Reason::PassDeferred,
        Reason::DropNoProgram,
    ];

    /// A short snake_case name for logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::AllowEstablished => "allow_established",
            Reason::AllowNotIsolated => "allow_not_isolated",
            Reason::AllowPolicy => "allow_policy",
            Reason::AllowNonIp => "allow_non_ip",
            Reason::AllowNeighbourDiscovery => "allow_neighbour_discovery",
            Reason::AllowSelf => "allow_self",
            Reason::AllowFragment => "allow_fragment",
            Reason::DropNoRule => "drop_no_rule",
            Reason::DropSpoofed => "drop_spoofed",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropOrphanFragment => "drop_orphan_fragment",
            Reason::DropExtHeaders => "drop_ext_headers",
            Reason::DropRevoked => "drop_revoked",
            Reason::AllowUnknownInterface => "allow_unknown_interface",
            Reason::DropNonIp => "drop_non_ip",
            Reason::AllowRelated => "allow_related",
            Reason::AllowAudit => "allow_audit",
            Reason::PassDeferred => "pass_deferred",
            Reason::DropNoProgram => "drop_no_program",
        }
    }

    /// Whether this is a drop decided by policy isolation (what audit mode lets pass), rather
    /// than by a packet's own fault (spoofed, malformed).
    pub const fn is_policy_drop(self) -> bool {
        matches!(self, Reason::DropNoRule | Reason::DropRevoked | Reason::DropNonIp | Reason::DropOrphanFragment)
    }

    /// Whether packets counted under this reason are dropped.
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::DropNoRule
                | Reason::DropSpoofed
                | Reason::DropMalformed
                | Reason::DropOrphanFragment
                | Reason::DropExtHeaders
                | Reason::DropRevoked
                | Reason::DropNonIp
                | Reason::DropNoProgram
        )
    }
}
