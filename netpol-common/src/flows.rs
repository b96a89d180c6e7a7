//! Flows: conntrack entries, the flow cache and fragments.

use crate::IpKey;


/// Key of [`MAP_CONNTRACK`](crate::MAP_CONNTRACK): a flow as seen on one endpoint, direction-neutral. The two
/// (address, port) ends are stored in a canonical order (a fixed total order over address words
/// then port, chosen by the classifier) so that a packet and its reply find the same entry with
/// one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    /// Endpoint id.
    pub endpoint: u32,
    /// IP protocol number.
    pub protocol: u8,
    /// Explicit padding (a byte and a half-word rather than `[u8; 3]`, which the BPF
    /// compiler clears with a `memset` call).
    pub _pad: u8,
    /// Explicit padding.
    pub _pad2: u16,
    /// The canonically first end's address.
    pub addr_a: IpKey,
    /// The other end's address.
    pub addr_b: IpKey,
    /// Port of `addr_a`'s end, big-endian (ICMP echo: the identifier).
    pub port_a_be: u16,
    /// Port of `addr_b`'s end, big-endian.
    pub port_b_be: u16,
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 44);

/// `CtValue::origin`: the flow was opened by a packet whose source is the `a` end.
pub const CT_ORIGIN_A: u8 = 0;
/// `CtValue::origin`: the flow was opened by a packet whose source is the `b` end.
pub const CT_ORIGIN_B: u8 = 1;

/// Value of [`MAP_CONNTRACK`](crate::MAP_CONNTRACK).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    /// The endpoint's policy generation when the flow was last allowed.
    pub generation: u32,
    /// Policy direction the flow was opened in ([`DIR_INGRESS`](crate::DIR_INGRESS) / [`DIR_EGRESS`](crate::DIR_EGRESS)).
    pub direction: u8,
    /// `CT_ORIGIN_*`: which end opened the flow.
    pub origin: u8,
    /// Non-zero: a tombstone. The flow's policy was withdrawn (checked again at `generation`
    /// and denied); its packets are dropped, and only a packet that opens a flow (a TCP SYN,
    /// or any other protocol's packet) is judged again as new — so the other end's next
    /// segment cannot reopen the connection as a new flow of its own.
    pub revoked: u8,
    /// Non-zero: the flow left the pod towards an address that is neither a pod nor the node, and
    /// its egress is judged where it leaves the node, after NAT ([`defer_mark`](crate::defer_mark)); this entry
    /// (of the address the pod sent to) only lets the replies in and marks the pod's packets.
    pub deferred: u8,
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 8);

/// Entries of [`MAP_FLOW_CACHE`](crate::MAP_FLOW_CACHE) per CPU (a power of two, below 2^20).
pub const FLOW_CACHE_SIZE: u32 = 1024;

/// [`FlowCacheEntry::flags`]: the pod's own end of the flow is the key's `a` end.
pub const FLOW_OWN_IS_A: u8 = 1;
/// [`FlowCacheEntry::flags`]: the flow is IPv6 (an IPv4-mapped IPv6 packet must not find an
/// IPv4 flow's entry).
pub const FLOW_IPV6: u8 = 1 << 1;

/// Value of [`MAP_FLOW_CACHE`](crate::MAP_FLOW_CACHE): an established flow on one interface whose conntrack entry said
/// "pass" (not revoked) at the endpoint's current generation when [`FlowCacheEntry::epoch`] was
/// current. A packet with the same key, the pod at the same end and the same IP version gets
/// the same verdict while the epoch holds: its endpoint, and so its generation, addresses and
/// isolation, are unchanged, and only a generation change can turn a passing conntrack entry
/// into a tombstone.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowCacheEntry {
    /// The flow's conntrack key, with the interface's ifindex in place of the endpoint id.
    pub key: CtKey,
    /// The [`MAP_EPOCH`](crate::MAP_EPOCH) value the entry was made under; 0: empty.
    pub epoch: u32,
    /// The endpoint's counter slot.
    pub slot: u32,
    /// `FLOW_*` bits.
    pub flags: u8,
    /// [`CtValue::deferred`] of the flow.
    pub deferred: u8,
    /// Explicit padding.
    pub _pad: u16,
    /// Explicit padding to a cache line.
    pub _line: u64,
}
const _: () = assert!(core::mem::size_of::<FlowCacheEntry>() == 64);

/// The [`MAP_FLOW_CACHE`](crate::MAP_FLOW_CACHE) index of a flow cache key: a multiplicative hash of its words.
#[inline(always)]
pub const fn flow_cache_index(key: &CtKey) -> u32 {
    let a = &key.addr_a.addr;
    let b = &key.addr_b.addr;
    let ports = ((key.port_a_be as u32) << 16) | key.port_b_be as u32;
    let h = key.endpoint ^ ports ^ (key.protocol as u32) ^ a[0] ^ a[1] ^ a[2] ^ a[3].rotate_left(7) ^ b[0] ^ b[1] ^ b[2] ^ b[3].rotate_left(13);
    h.wrapping_mul(0x9e37_79b1) >> (32 - FLOW_CACHE_SIZE.trailing_zeros())
}

/// Key of [`MAP_FRAGMENTS`](crate::MAP_FRAGMENTS): one IP datagram being fragmented, on one endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    /// Endpoint id.
    pub endpoint: u32,
    /// IP identification (IPv4: 16 bits; IPv6 fragment header: 32 bits).
    pub id: u32,
    /// Source address.
    pub src: IpKey,
    /// Destination address.
    pub dst: IpKey,
    /// IP protocol of the datagram.
    pub protocol: u8,
    /// Explicit padding (see [`CtKey::_pad`]).
    pub _pad: u8,
    /// Explicit padding.
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 44);

/// Value of [`MAP_FRAGMENTS`](crate::MAP_FRAGMENTS): the first fragment was allowed (only allowed ones are stored).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragValue {
    /// Endpoint generation when the first fragment was allowed.
    pub generation: u32,
}
const _: () = assert!(core::mem::size_of::<FragValue>() == 4);
