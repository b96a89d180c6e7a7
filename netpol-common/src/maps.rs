//! The maps' names, sizes and the jump table: every map the classifier uses, with its key and
//! value types, its writer and its reader.

use crate::{COUNTER_SLOTS, REASON_COUNT};


/// Name of the map `ifindex -> EndpointInfo` ([`EndpointInfo`](crate::EndpointInfo)). Written by the agent when it
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
/// Written by the agent; read by the classifier when [`PeerRules::ports`](crate::PeerRules::ports) has the protocol.
pub const MAP_PORT_RULES: &str = "NETPOL_PORT_RULES";
/// Name of the LPM trie `(prefix_len: u32, PolicyKey) -> PolicyValue`: allowed port ranges, as
/// prefixes of `port_be` (prefix lengths between [`POLICY_PREFIX_PROTO`](crate::POLICY_PREFIX_PROTO) and
/// [`POLICY_PREFIX_FULL`](crate::POLICY_PREFIX_FULL), exclusive). Written by the agent; read by the classifier only when
/// [`PeerRules::ranges`](crate::PeerRules::ranges) has the protocol, so its depth never costs other flows anything.
pub const MAP_POLICY: &str = "NETPOL_POLICY";
/// Name of the LRU hash `CtKey -> CtValue`: connection tracking. Written and read by the
/// classifier only; the agent counts its entries for its metrics.
pub const MAP_CONNTRACK: &str = "NETPOL_CONNTRACK";
/// Name of the LRU hash `FragKey -> FragValue`: the verdict of the first fragment of a datagram,
/// for its later fragments. Written and read by the classifier only.
pub const MAP_FRAGMENTS: &str = "NETPOL_FRAGMENTS";
/// Name of the per-CPU array `u32 -> u64`: packets per endpoint slot, direction and verdict
/// reason, at index [`counter_index`](crate::counter_index)`(slot, direction, reason)`. Written by the classifier (one
/// increment per packet); read (summed over CPUs) by the agent for its metrics, and by tests.
pub const MAP_COUNTERS: &str = "NETPOL_COUNTERS";

/// Name of the ring buffer of [`VerdictEvent`](crate::VerdictEvent)s: one event per dropped packet of a new flow,
/// per packet audit mode lets pass ("would drop"), and, when [`CONFIG_EVENTS_ALLOWED`](crate::CONFIG_EVENTS_ALLOWED) is set,
/// per allowed new flow; rate limited per endpoint slot and CPU ([`MAP_EVENT_BUDGET`]). Written by
/// the classifier (a full buffer loses the event, never delays the packet); read by the agent,
/// which names the pods and policies and streams the events to `netpol-agent observe`.
pub const MAP_EVENTS: &str = "NETPOL_EVENTS";
/// Name of the array `0 -> DatapathConfig` ([`DatapathConfig`](crate::DatapathConfig)): the event settings. Written by
/// the agent at start and when a subscriber asks for allowed flows; read by the classifier when
/// it would report a verdict.
pub const MAP_CONFIG: &str = "NETPOL_CONFIG";
/// Name of the per-CPU array `slot -> EventBudget` ([`EventBudget`](crate::EventBudget)): the events each endpoint
/// slot sent in the current one-second window on this CPU. Written and read by the classifier
/// only.
pub const MAP_EVENT_BUDGET: &str = "NETPOL_EVENT_BUDGET";
/// Name of the per-CPU array `u32 -> u64` of event outcomes per endpoint slot, at index
/// [`event_stat_index`](crate::event_stat_index)`(slot, EVENT_STAT_*)`: sent, suppressed by the rate limit, lost to a
/// full ring buffer. Written by the classifier; read by the agent for its metrics.
pub const MAP_EVENT_STATS: &str = "NETPOL_EVENT_STATS";
/// Name of the per-CPU array `rule id -> u64`: new flows each compiled rule allowed (the rule the
/// classifier found first, ids below [`RULE_HITS_MAX`](crate::RULE_HITS_MAX)). Written by the classifier; read by the
/// agent, which knows each id's policy and rule, for the per-policy hit counts.
pub const MAP_RULE_HITS: &str = "NETPOL_RULE_HITS";
/// Name of the array `slot -> ifindex`: the interface of the endpoint holding each counter slot.
/// Written by the agent with every endpoint it writes; read by the classifiers that judge a
/// deferred egress flow after the node's NAT ([`defer_mark`](crate::defer_mark)), to find the pod it came from.
/// A stale entry is harmless: the endpoint found must still hold the slot.
pub const MAP_SLOTS: &str = "NETPOL_SLOTS";

/// Name of the array `0 -> u32`: the endpoint epoch. The agent bumps it after every write to
/// [`MAP_ENDPOINTS`] (an endpoint added, changed, held or removed), never to 0; 0 turns the flow
/// cache off. Read by the classifier for every packet, before it reads the endpoint: a
/// [`FlowCacheEntry`](crate::FlowCacheEntry) made under another epoch is not used.
pub const MAP_EPOCH: &str = "NETPOL_EPOCH";
/// Name of the array `cpu * FLOW_CACHE_SIZE + index -> FlowCacheEntry`: per CPU a region of
/// [`FLOW_CACHE_SIZE`](crate::FLOW_CACHE_SIZE) entries, direct-mapped by [`flow_cache_index`](crate::flow_cache_index), holding the established
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
/// exit program, which judges a deferred packet ([`MARK_DEFER_MASK`](crate::MARK_DEFER_MASK)) by its sender's egress
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
