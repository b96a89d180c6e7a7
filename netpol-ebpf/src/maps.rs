//! The maps of the data path. Layouts, writers and readers are documented in `netpol-common`
//! beside each map's name; maps are pinned by name under the agent's `--pin-path`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use netpol_common::{
    CtKey, CtValue, DatapathConfig, EndpointInfo, EventBudget, FlowCacheEntry, FragKey, FragValue, IdentityValue, IpKey, PeerKey, PeerRules,
    PolicyKey, PolicyValue, CIDRS_MAX, CONNTRACK_MAX, COUNTERS_LEN, COUNTER_SLOTS, ENDPOINTS_MAX, EVENTS_BYTES,
    EVENT_STATS_LEN, FLOW_CACHE_SIZE, FRAGMENTS_MAX, IPCACHE_MAX, JUMPS_LEN, POLICY_MAX, RULES_MAX, RULE_HITS_MAX,
};

/// `BPF_F_NO_PREALLOC`: hash map elements allocated as written, not all at load.
const NO_PREALLOC: u32 = 1;

/// `ifindex -> EndpointInfo` (`netpol_common::MAP_ENDPOINTS`).
#[map(name = "NETPOL_ENDPOINTS")]
pub static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(ENDPOINTS_MAX, 0);

/// Exact peer IP -> identity (`netpol_common::MAP_IPCACHE`).
#[map(name = "NETPOL_IPCACHE")]
pub static IPCACHE: HashMap<IpKey, IdentityValue> = HashMap::pinned(IPCACHE_MAX, 0);

/// ipBlock region -> CIDR identity (`netpol_common::MAP_CIDRS`).
#[map(name = "NETPOL_CIDRS")]
pub static CIDRS: LpmTrie<IpKey, IdentityValue> = LpmTrie::pinned(CIDRS_MAX, 0);

/// (endpoint, identity, direction) -> what that peer may do (`netpol_common::MAP_PEER_RULES`).
#[map(name = "NETPOL_PEER_RULES")]
pub static PEER_RULES: HashMap<PeerKey, PeerRules> = HashMap::pinned(RULES_MAX, NO_PREALLOC);

/// (endpoint, identity, direction, protocol, port) -> action, single ports
/// (`netpol_common::MAP_PORT_RULES`).
#[map(name = "NETPOL_PORT_RULES")]
pub static PORT_RULES: HashMap<PolicyKey, PolicyValue> = HashMap::pinned(RULES_MAX, NO_PREALLOC);

/// (endpoint, identity, direction, protocol, port) prefix -> action, port ranges
/// (`netpol_common::MAP_POLICY`).
#[map(name = "NETPOL_POLICY")]
pub static POLICY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(POLICY_MAX, 0);

/// Connection tracking (`netpol_common::MAP_CONNTRACK`).
#[map(name = "NETPOL_CONNTRACK")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(CONNTRACK_MAX, 0);

/// Verdicts of first fragments (`netpol_common::MAP_FRAGMENTS`).
#[map(name = "NETPOL_FRAGMENTS")]
pub static FRAGMENTS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(FRAGMENTS_MAX, 0);

/// Packets per endpoint slot, direction and `Reason` (`netpol_common::MAP_COUNTERS`).
#[map(name = "NETPOL_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTERS_LEN, 0);

/// Verdict events for the agent (`netpol_common::MAP_EVENTS`).
#[map(name = "NETPOL_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

/// Event settings written by the agent (`netpol_common::MAP_CONFIG`).
#[map(name = "NETPOL_CONFIG")]
pub static CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

/// Events sent per endpoint slot in the current window, per CPU (`netpol_common::MAP_EVENT_BUDGET`).
#[map(name = "NETPOL_EVENT_BUDGET")]
pub static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

/// Events sent, suppressed and lost per endpoint slot (`netpol_common::MAP_EVENT_STATS`).
#[map(name = "NETPOL_EVENT_STATS")]
pub static EVENT_STATS: PerCpuArray<u64> = PerCpuArray::pinned(EVENT_STATS_LEN, 0);

/// New flows allowed per compiled rule id (`netpol_common::MAP_RULE_HITS`).
#[map(name = "NETPOL_RULE_HITS")]
pub static RULE_HITS: PerCpuArray<u64> = PerCpuArray::pinned(RULE_HITS_MAX, 0);

/// Endpoint slot -> ifindex of its veth (`netpol_common::MAP_SLOTS`).
#[map(name = "NETPOL_SLOTS")]
pub static SLOTS: Array<u32> = Array::pinned(COUNTER_SLOTS, 0);

/// The endpoint epoch (`netpol_common::MAP_EPOCH`).
#[map(name = "NETPOL_EPOCH")]
pub static EPOCH: Array<u32> = Array::pinned(1, 0);

/// `BPF_F_MMAPABLE`: the array's values start on a page.
const MMAPABLE: u32 = 1 << 10;

/// Established flows, a region per CPU (`netpol_common::MAP_FLOW_CACHE`); sized by the agent at
/// load (one CPU's region here); not pinned.
#[map(name = "NETPOL_FLOW_CACHE")]
pub static FLOW_CACHE: Array<FlowCacheEntry> = Array::with_max_entries(FLOW_CACHE_SIZE, MMAPABLE);

/// What the flow cache lookup found for the packet being judged, per CPU
/// (`netpol_common::MAP_FLOW_FOUND`); not pinned.
#[map(name = "NETPOL_FLOW_FOUND")]
pub static FLOW_FOUND: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The tail calls of the classifier into a pod (`netpol_common::MAP_JUMPS`).
#[map(name = "NETPOL_JUMPS")]
pub static JUMPS: ProgramArray = ProgramArray::pinned(JUMPS_LEN, 0);
