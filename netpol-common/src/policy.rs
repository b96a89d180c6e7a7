//! The policy maps' keys and values: what a peer may do, single ports and port ranges.


/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// IP protocol number of SCTP.
pub const IPPROTO_SCTP: u8 = 132;

/// Policy direction: traffic into the pod (the pod's Ingress rules).
pub const DIR_INGRESS: u8 = 0;
/// Policy direction: traffic out of the pod (the pod's Egress rules).
pub const DIR_EGRESS: u8 = 1;

/// Length in bits of the [`PolicyKey`] data that is always exact: endpoint, identity, direction.
pub const POLICY_PREFIX_PEER: u32 = 72;
/// Length in bits of a [`PolicyKey`] that also fixes the protocol (all ports of one protocol).
pub const POLICY_PREFIX_PROTO: u32 = 80;
/// Length in bits of a [`PolicyKey`] that fixes one port.
pub const POLICY_PREFIX_FULL: u32 = 96;

/// Data of the [`MAP_POLICY`](crate::MAP_POLICY) LPM key. Matched from the first bit: `endpoint`, `identity` and
/// `direction` are always exact ([`POLICY_PREFIX_PEER`] bits); the protocol can be wildcarded
/// only together with the port (a rule with no `ports`), and a port range is a few prefixes of
/// `port_be`, which is why it is big-endian.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PolicyKey {
    /// Endpoint id (see [`EndpointInfo::endpoint`](crate::EndpointInfo::endpoint)).
    pub endpoint: u32,
    /// Peer identity, or [`IDENTITY_ANY`](crate::IDENTITY_ANY).
    pub identity: u32,
    /// [`DIR_INGRESS`] or [`DIR_EGRESS`].
    pub direction: u8,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP; ICMP only matches with no ports).
    pub protocol: u8,
    /// Destination port of the flow, big-endian.
    pub port_be: u16,
}
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 12);

/// Key of [`MAP_PEER_RULES`](crate::MAP_PEER_RULES): one peer identity of one endpoint in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PeerKey {
    /// Endpoint id.
    pub endpoint: u32,
    /// Peer identity, or [`IDENTITY_ANY`](crate::IDENTITY_ANY).
    pub identity: u32,
    /// [`DIR_INGRESS`] or [`DIR_EGRESS`].
    pub direction: u8,
    /// Explicit padding.
    pub _pad: u8,
    /// Explicit padding.
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<PeerKey>() == 8 + 4);

/// [`PeerRules`] protocol bit of TCP.
pub const PROTO_BIT_TCP: u8 = 1;
/// [`PeerRules`] protocol bit of UDP.
pub const PROTO_BIT_UDP: u8 = 2;
/// [`PeerRules`] protocol bit of SCTP.
pub const PROTO_BIT_SCTP: u8 = 4;

/// The [`PeerRules`] bit of an IP protocol; 0 for protocols without ports (ICMP and others,
/// which only a rule without ports allows).
#[inline(always)]
pub const fn proto_bit(protocol: u8) -> u8 {
    match protocol {
        IPPROTO_TCP => PROTO_BIT_TCP,
        IPPROTO_UDP => PROTO_BIT_UDP,
        IPPROTO_SCTP => PROTO_BIT_SCTP,
        _ => 0,
    }
}

/// Value of [`MAP_PEER_RULES`](crate::MAP_PEER_RULES): what one peer may do, by protocol bit (`PROTO_BIT_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PeerRules {
    /// Non-zero: every protocol and port is allowed (a rule without ports).
    pub any: u8,
    /// Protocols all of whose ports are allowed (a port entry without a port number).
    pub all_ports: u8,
    /// Protocols with single-port entries in [`MAP_PORT_RULES`](crate::MAP_PORT_RULES).
    pub ports: u8,
    /// Protocols with port-range entries in [`MAP_POLICY`](crate::MAP_POLICY).
    pub ranges: u8,
    /// The compiled rule behind `any` or `all_ports` (the agent's rule table), 0 if none.
    pub rule: u32,
}
const _: () = assert!(core::mem::size_of::<PeerRules>() == 8);

/// Action of a policy entry. v1 NetworkPolicy only writes [`ACTION_ALLOW`]; the admin tiers
/// (ClusterNetworkPolicy) will add deny and pass entries without a new data path.
pub const ACTION_ALLOW: u8 = 1;
/// Deny action (admin tiers; not written by v1 policies).
pub const ACTION_DENY: u8 = 2;
/// Pass action (admin tiers; not written by v1 policies).
pub const ACTION_PASS: u8 = 3;
/// Tier of namespaced NetworkPolicy entries.
pub const TIER_NETWORK_POLICY: u8 = 1;

/// Value of [`MAP_POLICY`](crate::MAP_POLICY).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyValue {
    /// `ACTION_*`.
    pub action: u8,
    /// `TIER_*`.
    pub tier: u8,
    /// Explicit padding.
    pub _pad: u16,
    /// Which compiled rule wrote the entry (the agent's rule table); 0 for built-in entries.
    pub rule: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 8);
