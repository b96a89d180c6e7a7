//! The maps of the data path. Layouts, writers and readers are documented in `netpol-common`
//! beside each map's name; maps are pinned by name under the agent's `--pin-path`.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use netpol_common::{
    CtKey, CtValue, EndpointInfo, FragKey, FragValue, IdentityValue, IpKey, PeerKey, PeerRules, PolicyKey, PolicyValue,
    CIDRS_MAX, CONNTRACK_MAX, ENDPOINTS_MAX, FRAGMENTS_MAX, IPCACHE_MAX, POLICY_MAX, COUNTERS_LEN, RULES_MAX,
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
