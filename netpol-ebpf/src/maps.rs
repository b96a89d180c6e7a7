//! The maps of the data path. Layouts, writers and readers are documented in `netpol-common`
//! beside each map's name; maps are pinned by name under the agent's `--pin-path`.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use netpol_common::{
    CtKey, CtValue, EndpointInfo, FragKey, FragValue, IdentityValue, IpKey, PolicyKey, PolicyValue,
    CIDRS_MAX, CONNTRACK_MAX, ENDPOINTS_MAX, FRAGMENTS_MAX, IPCACHE_MAX, POLICY_MAX, REASON_COUNT,
};

/// `ifindex -> EndpointInfo` (`netpol_common::MAP_ENDPOINTS`).
#[map(name = "NETPOL_ENDPOINTS")]
pub static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(ENDPOINTS_MAX, 0);

/// Exact peer IP -> identity (`netpol_common::MAP_IPCACHE`).
#[map(name = "NETPOL_IPCACHE")]
pub static IPCACHE: HashMap<IpKey, IdentityValue> = HashMap::pinned(IPCACHE_MAX, 0);

/// ipBlock region -> CIDR identity (`netpol_common::MAP_CIDRS`).
#[map(name = "NETPOL_CIDRS")]
pub static CIDRS: LpmTrie<IpKey, IdentityValue> = LpmTrie::pinned(CIDRS_MAX, 0);

/// (endpoint, identity, direction, protocol, port) prefix -> action (`netpol_common::MAP_POLICY`).
#[map(name = "NETPOL_POLICY")]
pub static POLICY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(POLICY_MAX, 0);

/// Connection tracking (`netpol_common::MAP_CONNTRACK`).
#[map(name = "NETPOL_CONNTRACK")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(CONNTRACK_MAX, 0);

/// Verdicts of first fragments (`netpol_common::MAP_FRAGMENTS`).
#[map(name = "NETPOL_FRAGMENTS")]
pub static FRAGMENTS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(FRAGMENTS_MAX, 0);

/// Packets per `Reason` (`netpol_common::MAP_COUNTERS`).
#[map(name = "NETPOL_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(REASON_COUNT, 0);
