//! Types shared by the netpol data path (`netpol-ebpf`) and the agent (`netpol-agent`).
//!
//! Every map the classifier uses is declared here by name, with its key and value layout, who
//! writes it and who reads it. All types are `#[repr(C)]`, `Copy`, have explicit `_pad` fields and
//! a size assertion, so the kernel and user space agree byte for byte.
//!
//! Byte order: addresses are stored as 16 network-order bytes (IPv4 as the IPv4-mapped IPv6
//! address `::ffff:a.b.c.d`); ports are stored big-endian (`*_be` fields), because the policy
//! LPM trie matches port prefixes bit by bit from the most significant bit. Endpoint ids and
//! identities are exact in every key, so their byte order does not matter; they are native.
#![no_std]

/// Name of the map `ifindex -> EndpointInfo` ([`EndpointInfo`]). Written by the agent when it
/// attaches to a pod's veth and when the pod's policy changes; read by the classifier first, for
/// every packet, to learn which local pod the interface belongs to.
pub const MAP_ENDPOINTS: &str = "NETPOL_ENDPOINTS";
/// Name of the hash map `IpKey -> IdentityValue`: exact peer IPs (pods, the node's own
/// addresses) to their numeric identity. Written by the agent; read by the classifier for new
/// flows.
pub const MAP_IPCACHE: &str = "NETPOL_IPCACHE";
/// Name of the LPM trie `(prefix_len: u32, IpKey) -> IdentityValue`: disjoint ipBlock regions (every
/// `cidr` and `except` prefix of every policy) to their CIDR identity; the longest match is the
/// region. Written by the agent; read by the classifier for new flows.
pub const MAP_CIDRS: &str = "NETPOL_CIDRS";
/// Name of the hash map `PeerKey -> PeerRules`: per (endpoint, peer identity, direction), what
/// the compiled policy allows that peer — everything, all ports of some protocols — and which
/// protocols have single-port or port-range entries to look up. Written by the agent (from the
/// compiled policy entries); read by the classifier first for every new flow of an isolated
/// endpoint, one exact lookup per peer identity, whatever the number of policies.
pub const MAP_PEER_RULES: &str = "NETPOL_PEER_RULES";
/// Name of the hash map `PolicyKey -> PolicyValue`: single allowed ports (every field exact).
/// Written by the agent; read by the classifier when [`PeerRules::ports`] has the protocol.
pub const MAP_PORT_RULES: &str = "NETPOL_PORT_RULES";
/// Name of the LPM trie `(prefix_len: u32, PolicyKey) -> PolicyValue`: allowed port ranges, as
/// prefixes of `port_be` (prefix lengths between [`POLICY_PREFIX_PROTO`] and
/// [`POLICY_PREFIX_FULL`], exclusive). Written by the agent; read by the classifier only when
/// [`PeerRules::ranges`] has the protocol, so its depth never costs other flows anything.
pub const MAP_POLICY: &str = "NETPOL_POLICY";
/// Name of the LRU hash `CtKey -> CtValue`: connection tracking. Written and read by the
/// classifier only; the agent counts its entries for its metrics.
pub const MAP_CONNTRACK: &str = "NETPOL_CONNTRACK";
/// Name of the LRU hash `FragKey -> FragValue`: the verdict of the first fragment of a datagram,
/// for its later fragments. Written and read by the classifier only.
pub const MAP_FRAGMENTS: &str = "NETPOL_FRAGMENTS";
/// Name of the per-CPU array `u32 -> u64`: packets per endpoint slot, direction and verdict
/// reason, at index [`counter_index`]`(slot, direction, reason)`. Written by the classifier (one
/// increment per packet); read (summed over CPUs) by the agent for its metrics, and by tests.
pub const MAP_COUNTERS: &str = "NETPOL_COUNTERS";

/// Name of the ring buffer of [`VerdictEvent`]s: one event per dropped packet of a new flow,
/// per packet audit mode lets pass ("would drop"), and, when [`CONFIG_EVENTS_ALLOWED`] is set,
/// per allowed new flow; rate limited per endpoint slot and CPU ([`MAP_EVENT_BUDGET`]). Written by
/// the classifier (a full buffer loses the event, never delays the packet); read by the agent,
/// which names the pods and policies and streams the events to `netpol-agent observe`.
pub const MAP_EVENTS: &str = "NETPOL_EVENTS";
/// Name of the array `0 -> DatapathConfig` ([`DatapathConfig`]): the event settings. Written by
/// the agent at start and when a subscriber asks for allowed flows; read by the classifier when
/// it would report a verdict.
pub const MAP_CONFIG: &str = "NETPOL_CONFIG";
/// Name of the per-CPU array `slot -> EventBudget` ([`EventBudget`]): the events each endpoint
/// slot sent in the current one-second window on this CPU. Written and read by the classifier
/// only.
pub const MAP_EVENT_BUDGET: &str = "NETPOL_EVENT_BUDGET";
/// Name of the per-CPU array `u32 -> u64` of event outcomes per endpoint slot, at index
/// [`event_stat_index`]`(slot, EVENT_STAT_*)`: sent, suppressed by the rate limit, lost to a
/// full ring buffer. Written by the classifier; read by the agent for its metrics.
pub const MAP_EVENT_STATS: &str = "NETPOL_EVENT_STATS";
/// Name of the per-CPU array `rule id -> u64`: new flows each compiled rule allowed (the rule the
/// classifier found first, ids below [`RULE_HITS_MAX`]). Written by the classifier; read by the
/// agent, which knows each id's policy and rule, for the per-policy hit counts.
pub const MAP_RULE_HITS: &str = "NETPOL_RULE_HITS";
/// Name of the array `slot -> ifindex`: the interface of the endpoint holding each counter slot.
/// Written by the agent with every endpoint it writes; read by the classifiers that judge a
/// deferred egress flow after the node's NAT ([`defer_mark`]), to find the pod it came from.
/// A stale entry is harmless: the endpoint found must still hold the slot.
pub const MAP_SLOTS: &str = "NETPOL_SLOTS";

/// Name of the array `0 -> u32`: the endpoint epoch. The agent bumps it after every write to
/// [`MAP_ENDPOINTS`] (an endpoint added, changed, held or removed), never to 0; 0 turns the flow
/// cache off. Read by the classifier for every packet, before it reads the endpoint: a
/// [`FlowCacheEntry`] made under another epoch is not used.
pub const MAP_EPOCH: &str = "NETPOL_EPOCH";
/// Name of the array `cpu * FLOW_CACHE_SIZE + index -> FlowCacheEntry`: per CPU a region of
/// [`FLOW_CACHE_SIZE`] entries, direct-mapped by [`flow_cache_index`], holding the established
/// TCP, UDP and SCTP flows that CPU saw last, so that their next packets pass after one array
/// lookup instead of the endpoint and conntrack hash lookups. A plain array rather than a per-CPU
/// one: an entry is one cache line at a computed address (a per-CPU array reaches each value
/// through a table of pointers, one more cold line per packet). Memory-mappable, so that the
/// values start on a page and every entry sits in one line. The agent sizes it at load to
/// `FLOW_CACHE_SIZE` times the possible CPUs. Written and read by the classifier only (not
/// pinned: each loaded program set has its own, and [`MAP_EPOCH`], which is pinned, says which
/// entries still hold).
pub const MAP_FLOW_CACHE: &str = "NETPOL_FLOW_CACHE";
/// Name of the per-CPU array `0 -> u32`: what the flow cache lookup found for the packet being
/// judged (a hit's slot, a miss's entry index, or nothing). Written by the classifier's lookup
/// function and read back at once by the classifier, so that the verifier sees one unknown number
/// instead of walking the rest of the program once per way through the lookup. Not pinned.
pub const MAP_FLOW_FOUND: &str = "NETPOL_FLOW_FOUND";

/// Name of the program array `index -> program` ([`JUMPS_LEN`] entries): the tail calls of the
/// classifier on a pod's veth that judges a packet entering the pod. At [`JUMP_DEFERRED`] the
/// exit program, which judges a deferred packet ([`MARK_DEFER_MASK`]) by its sender's egress
/// policy, at [`JUMP_TO_POD`] the program that judges a packet by the receiving pod's ingress
/// policy, where the exit program goes on. Written
/// by the agent right after it loads the programs, before it attaches or adopts any link; read by
/// the classifiers only. Pinned, so that the table outlives the agent with the links (the kernel
/// empties a program array when no file descriptor or pin holds it any more).
pub const MAP_JUMPS: &str = "NETPOL_JUMPS";
/// [`MAP_JUMPS`] index of the exit program, which judges a deferred packet and, entering a pod,
/// jumps to [`JUMP_TO_POD`].
pub const JUMP_DEFERRED: u32 = 0;
/// [`MAP_JUMPS`] index of the program that judges a packet entering a pod by the pod's ingress
/// policy.
pub const JUMP_TO_POD: u32 = 1;
/// Entries of [`MAP_JUMPS`].
pub const JUMPS_LEN: u32 = 2;

/// The packet-mark bits ([`MARK_DEFER_MASK`]) that say "this packet left a local pod whose
/// egress is judged where it leaves the node, after NAT": the magic value [`MARK_DEFER_MAGIC`] in
/// bits 25-27 and the pod's endpoint slot in bits 16-24. Set by the classifier on a pod's veth for
/// new flows to addresses that are neither pods nor the node (a Service's ClusterIP, which
/// kube-proxy rewrites to a backend in the node's namespace after that hook, or an outside
/// address); read and cleared where the packet leaves the node: by the classifier into a pod (through
/// [`JUMP_DEFERRED`]) or on one of the node's other interfaces. Bits 0-15 (kube-proxy's 0x4000 and 0x8000)
/// and 28-31 are left alone.
pub const MARK_DEFER_MASK: u32 = 0x0fff_0000;
/// See [`MARK_DEFER_MASK`].
pub const MARK_DEFER_MAGIC: u32 = 0x0a00_0000;
const MARK_DEFER_MAGIC_MASK: u32 = 0x0e00_0000;
const MARK_SLOT_SHIFT: u32 = 16;
const MARK_SLOT_MASK: u32 = 0x01ff;

/// `mark` with the deferral bits of endpoint slot `slot` (below [`COUNTER_SLOTS`]) set.
#[inline(always)]
pub const fn defer_mark(mark: u32, slot: u32) -> u32 {
    (mark & !MARK_DEFER_MASK) | MARK_DEFER_MAGIC | ((slot & MARK_SLOT_MASK) << MARK_SLOT_SHIFT)
}

/// The endpoint slot a packet's egress judgement was deferred for, if `mark` says so.
#[inline(always)]
pub const fn deferred_slot(mark: u32) -> Option<u32> {
    if mark & MARK_DEFER_MAGIC_MASK == MARK_DEFER_MAGIC {
        Some((mark >> MARK_SLOT_SHIFT) & MARK_SLOT_MASK)
    } else {
        None
    }
}

/// Size in bytes of [`MAP_EVENTS`] (a power of two): about 14 000 events waiting.
pub const EVENTS_BYTES: u32 = 1 << 20;
/// Size of [`MAP_RULE_HITS`]: rule ids at or past it are not counted. The agent reuses the ids
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
/// Size of [`MAP_EVENT_STATS`].
pub const EVENT_STATS_LEN: u32 = COUNTER_SLOTS * EVENT_STAT_KINDS;

/// The [`MAP_EVENT_STATS`] index of endpoint slot `slot` (0 past [`COUNTER_SLOTS`]) and `kind`.
#[inline(always)]
pub const fn event_stat_index(slot: u32, kind: u32) -> u32 {
    let slot = if slot < COUNTER_SLOTS { slot } else { 0 };
    slot * EVENT_STAT_KINDS + kind
}

/// [`DatapathConfig::flags`]: also report allowed new flows (not only drops).
pub const CONFIG_EVENTS_ALLOWED: u32 = 1;

/// Value of [`MAP_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DatapathConfig {
    /// `CONFIG_*` bits.
    pub flags: u32,
    /// Events each endpoint slot may send per second on each CPU; 0: no events at all.
    pub events_per_second: u32,
}
const _: () = assert!(core::mem::size_of::<DatapathConfig>() == 8);

/// Value of [`MAP_EVENT_BUDGET`].
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

/// An entry of [`MAP_EVENTS`]: one verdict on one packet of one local endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VerdictEvent {
    /// When (`bpf_ktime_get_ns`: CLOCK_MONOTONIC nanoseconds).
    pub time_ns: u64,
    /// The local endpoint ([`EndpointInfo::endpoint`]).
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
    /// [`DIR_INGRESS`] (into the pod) or [`DIR_EGRESS`] (out of it).
    pub direction: u8,
    /// The decision's [`Reason`] (for audit mode, the drop that did not happen).
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

/// Size of [`MAP_COUNTERS`].
pub const COUNTERS_LEN: u32 = COUNTER_SLOTS * 2 * REASON_COUNT;
/// Capacity of [`MAP_ENDPOINTS`] (local pods on one node).
pub const ENDPOINTS_MAX: u32 = 4096;
/// Capacity of [`MAP_IPCACHE`] (pod IPs in the cluster plus node addresses).
pub const IPCACHE_MAX: u32 = 262_144;
/// Capacity of [`MAP_CIDRS`].
pub const CIDRS_MAX: u32 = 65_536;
/// Capacity of [`MAP_POLICY`].
pub const POLICY_MAX: u32 = 1_048_576;
/// Capacity of [`MAP_PEER_RULES`] and of [`MAP_PORT_RULES`] (allocated as used).
pub const RULES_MAX: u32 = 1_048_576;
/// Capacity of [`MAP_CONNTRACK`].
pub const CONNTRACK_MAX: u32 = 262_144;
/// Capacity of [`MAP_FRAGMENTS`].
pub const FRAGMENTS_MAX: u32 = 8192;

/// `EndpointInfo::flags`: ingress (traffic to the pod) is isolated by at least one policy.
pub const EP_INGRESS_ISOLATED: u32 = 1;
/// `EndpointInfo::flags`: egress (traffic from the pod) is isolated by at least one policy.
pub const EP_EGRESS_ISOLATED: u32 = 1 << 1;
/// `EndpointInfo::flags`: the endpoint has an IPv4 address in `ipv4`.
pub const EP_HAS_IPV4: u32 = 1 << 2;
/// `EndpointInfo::flags`: the endpoint has an IPv6 address in `ipv6`.
pub const EP_HAS_IPV6: u32 = 1 << 3;
/// `EndpointInfo::flags`: audit mode. Packets policy would drop pass, counted as
/// [`Reason::AllowAudit`] (and reported), so a team can roll out isolation safely.
pub const EP_AUDIT: u32 = 1 << 4;

/// Endpoint slots of [`MAP_COUNTERS`]: slot 0 is shared by interfaces without an endpoint and
/// endpoints beyond the last slot; the agent gives each local pod its own slot from 1.
pub const COUNTER_SLOTS: u32 = 512;

/// The [`MAP_COUNTERS`] index of packets of endpoint slot `slot` (0 past [`COUNTER_SLOTS`]) in
/// `direction` counted under `reason`.
#[inline(always)]
pub const fn counter_index(slot: u32, direction: u8, reason: u32) -> u32 {
    let slot = if slot < COUNTER_SLOTS { slot } else { 0 };
    (slot * 2 + (direction as u32 & 1)) * REASON_COUNT + reason
}

/// Value of [`MAP_ENDPOINTS`]: one local pod, as seen by the classifier on its veth.
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
    /// The endpoint's slot in [`MAP_COUNTERS`] (see [`counter_index`]).
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

/// An IP address as 16 network-order bytes; IPv4 is `::ffff:a.b.c.d`. Key of [`MAP_IPCACHE`],
/// data of the [`MAP_CIDRS`] LPM key (`prefix_len: u32` then the data, as the kernel lays it
/// out; prefix lengths of IPv4 regions are `96 + len`), and both ends of conntrack keys.
///
/// Held as four native words whose memory is the 16 address bytes in network order: the same
/// bytes in the maps as a byte array, but 4-byte aligned, so the BPF compiler copies and
/// compares it in 4 word operations instead of 16 byte operations (the BPF target has no
/// unaligned loads and splits every access to a byte array into single bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct IpKey {
    /// Address words; word `i` holds bytes `4i..4i+4` in network order (`u32::from_ne_bytes`).
    pub addr: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<IpKey>() == 16);

/// The third word of an IPv4-mapped address (`::ffff:0:0/96`).
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

impl IpKey {
    /// An address from its 16 network-order bytes.
    #[inline(always)]
    pub const fn from_octets(b: [u8; 16]) -> Self {
        Self {
            addr: [
                u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
                u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
                u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
                u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
            ],
        }
    }

    /// The 16 network-order bytes of the address.
    #[inline(always)]
    pub const fn octets(&self) -> [u8; 16] {
        let [a, b, c, d] = self.addr;
        let (a, b, c, d) = (
            a.to_ne_bytes(),
            b.to_ne_bytes(),
            c.to_ne_bytes(),
            d.to_ne_bytes(),
        );
        [
            a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1],
            d[2], d[3],
        ]
    }

    /// The IPv4-mapped form of an IPv4 address given as network-order bytes.
    #[inline(always)]
    pub const fn from_v4(b: [u8; 4]) -> Self {
        Self::from_v4_word(u32::from_ne_bytes(b))
    }

    /// The IPv4-mapped form of an IPv4 address given as its network-order bytes read as one
    /// native word.
    #[inline(always)]
    pub const fn from_v4_word(w: u32) -> Self {
        Self {
            addr: [0, 0, V4_MAPPED_WORD, w],
        }
    }

    /// Whether this is an IPv4-mapped address (`::ffff:0:0/96`): the form of every IPv4 key, and
    /// never a valid address on an IPv6 wire (RFC 4291 2.5.5.2).
    #[inline(always)]
    pub const fn is_v4_mapped(&self) -> bool {
        self.addr[2] == V4_MAPPED_WORD && self.addr[1] == 0 && self.addr[0] == 0
    }

    /// Whether this is the IPv4-mapped form of the IPv4 address `w` (as in [`Self::from_v4_word`]).
    #[inline(always)]
    pub const fn is_v4_word(&self, w: u32) -> bool {
        self.addr[3] == w
            && self.addr[2] == V4_MAPPED_WORD
            && self.addr[1] == 0
            && self.addr[0] == 0
    }
}

/// Value of [`MAP_IPCACHE`] and [`MAP_CIDRS`]: a numeric identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IdentityValue {
    /// The identity (see the `IDENTITY_*` reserved values).
    pub identity: u32,
}
const _: () = assert!(core::mem::size_of::<IdentityValue>() == 4);

/// Reserved identity: matches every peer (a rule with no `from` / `to`). Never stored in the
/// ipcache; the classifier always asks the policy map for it.
pub const IDENTITY_ANY: u32 = 1;
/// Reserved identity of the node's own addresses (kubelet probes come from there).
pub const IDENTITY_HOST: u32 = 2;
/// First identity given to a (namespace labels, pod labels, named ports) set.
pub const IDENTITY_FIRST_POD: u32 = 256;
/// First identity given to an ipBlock region; pod identities stay below it.
pub const IDENTITY_FIRST_CIDR: u32 = 1 << 24;

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

/// Data of the [`MAP_POLICY`] LPM key. Matched from the first bit: `endpoint`, `identity` and
/// `direction` are always exact ([`POLICY_PREFIX_PEER`] bits); the protocol can be wildcarded
/// only together with the port (a rule with no `ports`), and a port range is a few prefixes of
/// `port_be`, which is why it is big-endian.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PolicyKey {
    /// Endpoint id (see [`EndpointInfo::endpoint`]).
    pub endpoint: u32,
    /// Peer identity, or [`IDENTITY_ANY`].
    pub identity: u32,
    /// [`DIR_INGRESS`] or [`DIR_EGRESS`].
    pub direction: u8,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP; ICMP only matches with no ports).
    pub protocol: u8,
    /// Destination port of the flow, big-endian.
    pub port_be: u16,
}
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 12);

/// Key of [`MAP_PEER_RULES`]: one peer identity of one endpoint in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PeerKey {
    /// Endpoint id.
    pub endpoint: u32,
    /// Peer identity, or [`IDENTITY_ANY`].
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
        6 => PROTO_BIT_TCP,
        17 => PROTO_BIT_UDP,
        132 => PROTO_BIT_SCTP,
        _ => 0,
    }
}

/// Value of [`MAP_PEER_RULES`]: what one peer may do, by protocol bit (`PROTO_BIT_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PeerRules {
    /// Non-zero: every protocol and port is allowed (a rule without ports).
    pub any: u8,
    /// Protocols all of whose ports are allowed (a port entry without a port number).
    pub all_ports: u8,
    /// Protocols with single-port entries in [`MAP_PORT_RULES`].
    pub ports: u8,
    /// Protocols with port-range entries in [`MAP_POLICY`].
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

/// Value of [`MAP_POLICY`].
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

/// Key of [`MAP_CONNTRACK`]: a flow as seen on one endpoint, direction-neutral. The two
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

/// Value of [`MAP_CONNTRACK`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    /// The endpoint's policy generation when the flow was last allowed.
    pub generation: u32,
    /// Policy direction the flow was opened in ([`DIR_INGRESS`] / [`DIR_EGRESS`]).
    pub direction: u8,
    /// `CT_ORIGIN_*`: which end opened the flow.
    pub origin: u8,
    /// Non-zero: a tombstone. The flow's policy was withdrawn (checked again at `generation`
    /// and denied); its packets are dropped, and only a packet that opens a flow (a TCP SYN,
    /// or any other protocol's packet) is judged again as new — so the other end's next
    /// segment cannot reopen the connection as a new flow of its own.
    pub revoked: u8,
    /// Non-zero: the flow left the pod towards an address that is neither a pod nor the node, and
    /// its egress is judged where it leaves the node, after NAT ([`defer_mark`]); this entry
    /// (of the address the pod sent to) only lets the replies in and marks the pod's packets.
    pub deferred: u8,
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 8);

/// Entries of [`MAP_FLOW_CACHE`] per CPU (a power of two, below 2^20).
pub const FLOW_CACHE_SIZE: u32 = 1024;

/// [`FlowCacheEntry::flags`]: the pod's own end of the flow is the key's `a` end.
pub const FLOW_OWN_IS_A: u8 = 1;
/// [`FlowCacheEntry::flags`]: the flow is IPv6 (an IPv4-mapped IPv6 packet must not find an
/// IPv4 flow's entry).
pub const FLOW_IPV6: u8 = 1 << 1;

/// Value of [`MAP_FLOW_CACHE`]: an established flow on one interface whose conntrack entry said
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
    /// The [`MAP_EPOCH`] value the entry was made under; 0: empty.
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

/// The [`MAP_FLOW_CACHE`] index of a flow cache key: a multiplicative hash of its words.
#[inline(always)]
pub const fn flow_cache_index(key: &CtKey) -> u32 {
    let a = &key.addr_a.addr;
    let b = &key.addr_b.addr;
    let ports = ((key.port_a_be as u32) << 16) | key.port_b_be as u32;
    let h = key.endpoint ^ ports ^ (key.protocol as u32) ^ a[0] ^ a[1] ^ a[2] ^ a[3].rotate_left(7) ^ b[0] ^ b[1] ^ b[2] ^ b[3].rotate_left(13);
    h.wrapping_mul(0x9e37_79b1) >> (32 - FLOW_CACHE_SIZE.trailing_zeros())
}

/// Key of [`MAP_FRAGMENTS`]: one IP datagram being fragmented, on one endpoint.
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

/// Value of [`MAP_FRAGMENTS`]: the first fragment was allowed (only allowed ones are stored).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragValue {
    /// Endpoint generation when the first fragment was allowed.
    pub generation: u32,
}
const _: () = assert!(core::mem::size_of::<FragValue>() == 4);

/// Why the classifier let a packet pass or dropped it: the index of [`MAP_COUNTERS`], one list
/// shared by kernel and user space.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// Dropped: a deferred packet into a pod found no program to judge it by ([`MAP_JUMPS`] not
    /// filled: never once the agent has loaded the programs).
    DropNoProgram = 18,
}

/// Number of [`Reason`] values (counters per endpoint slot and direction in [`MAP_COUNTERS`]).
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

#[cfg(feature = "user")]
mod user {
    //! `aya::Pod` for the map types, so the agent can read and write them.
    use super::{
        CtKey, CtValue, DatapathConfig, EndpointInfo, EventBudget, FlowCacheEntry, FragKey, FragValue, IdentityValue, IpKey, PeerKey,
        PeerRules, PolicyKey, PolicyValue, VerdictEvent,
    };

    // SAFETY: each type is #[repr(C)], Copy, made only of integers and byte arrays, with every
    // padding byte an explicit field, so any bit pattern is valid and there are no hidden bytes.
    unsafe impl aya::Pod for EndpointInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for IpKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for IdentityValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PolicyValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PeerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PeerRules {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FragKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FragValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DatapathConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowCacheEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EventBudget {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VerdictEvent {}
}

#[cfg(test)]
mod tests {
    use super::{flow_cache_index, CtKey, IpKey, FLOW_CACHE_SIZE};

    #[test]
    fn flow_cache_indexes_stay_in_the_cache_and_spread_the_flows_of_one_pair_of_hosts() {
        let key = |port: u16| CtKey {
            endpoint: 7,
            protocol: 6,
            _pad: 0,
            _pad2: 0,
            addr_a: IpKey::from_v4([198, 18, 0, 10]),
            addr_b: IpKey::from_v4([198, 18, 1, 11]),
            port_a_be: 80u16.to_be(),
            port_b_be: port.to_be(),
        };
        let mut used = [false; FLOW_CACHE_SIZE as usize];
        for port in 40000..40256 {
            let i = flow_cache_index(&key(port));
            assert!(i < FLOW_CACHE_SIZE);
            used[i as usize] = true;
        }
        // 256 client ports of one connection pair: a direct-mapped cache keeps most of them.
        let distinct = used.iter().filter(|u| **u).count();
        assert!(distinct >= 200, "256 flows took only {distinct} entries");
    }

    #[test]
    fn ip_key_words_hold_network_order_bytes() {
        let b: [u8; 16] = [0xfd, 0, 1, 0x98, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
        let k = IpKey::from_octets(b);
        assert_eq!(k.octets(), b);
        // SAFETY: IpKey is 16 plain bytes (repr(C), four u32s).
        let raw: [u8; 16] = unsafe { core::mem::transmute(k) };
        assert_eq!(raw, b, "the map sees the address bytes in network order");
        let v4 = IpKey::from_v4([198, 18, 0, 10]);
        assert_eq!(
            v4.octets(),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 10]
        );
        assert!(v4.is_v4_word(u32::from_ne_bytes([198, 18, 0, 10])));
        assert!(!v4.is_v4_word(u32::from_ne_bytes([198, 18, 0, 11])));
        assert!(!IpKey::from_octets([0; 16]).is_v4_word(0));
        assert!(v4.is_v4_mapped() && !k.is_v4_mapped());
    }
}
