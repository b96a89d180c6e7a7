//! The maps the agent writes, and a mirror of what each holds, so that a reconciliation writes
//! only differences: endpoints and their counter slots, the ipcache and CIDR regions, the three
//! policy maps, and the endpoint epoch that tells the classifiers' flow caches to forget.

use std::collections::BTreeMap;

use aya::maps::{Array, HashMap, LpmTrie, MapData};
use netpol_common::{
    EndpointInfo, IdentityValue, IpKey, PeerKey, PeerRules, PolicyKey, PolicyValue, MAP_CIDRS, MAP_ENDPOINTS, MAP_EPOCH, MAP_IPCACHE,
    MAP_PEER_RULES, MAP_POLICY, MAP_PORT_RULES, MAP_SLOTS,
};

use super::{
    error::{map_err, ApplyError, ApplyStats, Result},
    loader::MapSource,
};
use crate::compile::kernel::{CidrKey, PolicyEntryKey};

/// What the maps hold, as the agent last wrote or read them.
#[derive(Debug, Default)]
pub(super) struct Mirror {
    /// `ifindex -> endpoint`.
    pub(super) endpoints: BTreeMap<u32, EndpointInfo>,
    pub(super) ipcache: BTreeMap<IpKey, u32>,
    pub(super) cidrs: BTreeMap<CidrKey, u32>,
    pub(super) peer_rules: BTreeMap<PeerKey, PeerRules>,
    pub(super) port_rules: BTreeMap<PolicyKey, PolicyValue>,
    pub(super) ranges: BTreeMap<PolicyEntryKey, PolicyValue>,
}

/// The map handles and their mirror.
pub(super) struct Maps {
    pub(super) endpoints: HashMap<MapData, u32, EndpointInfo>,
    pub(super) ipcache: HashMap<MapData, IpKey, IdentityValue>,
    pub(super) cidrs: LpmTrie<MapData, IpKey, IdentityValue>,
    pub(super) peer_rules: HashMap<MapData, PeerKey, PeerRules>,
    pub(super) port_rules: HashMap<MapData, PolicyKey, PolicyValue>,
    pub(super) ranges: LpmTrie<MapData, PolicyKey, PolicyValue>,
    /// `MAP_SLOTS`: written with every endpoint.
    slots: Array<MapData, u32>,
    /// `MAP_EPOCH`: bumped after every endpoint write ([`Maps::bump_epoch`]).
    epoch: Array<MapData, u32>,
    /// The last epoch written (never 0).
    cur_epoch: u32,
    /// Whether the classifiers use their flow cache (the epoch map holds 0 when not).
    flow_cache: bool,
    pub(super) mirror: Mirror,
}

impl Maps {
    /// Opens the maps and reads what they hold into the mirror (an agent adopting what an
    /// earlier one left reconciles against what is really there).
    pub(super) fn open(source: &mut MapSource<'_>) -> Result<Self> {
        let epoch: Array<MapData, u32> = source.take(MAP_EPOCH)?;
        let cur_epoch = epoch.get(&0, 0).map_err(map_err("read epoch"))?;
        let mut maps = Self {
            endpoints: source.take(MAP_ENDPOINTS)?,
            ipcache: source.take(MAP_IPCACHE)?,
            cidrs: source.take(MAP_CIDRS)?,
            peer_rules: source.take(MAP_PEER_RULES)?,
            port_rules: source.take(MAP_PORT_RULES)?,
            ranges: source.take(MAP_POLICY)?,
            slots: source.take(MAP_SLOTS)?,
            epoch,
            cur_epoch,
            flow_cache: true,
            mirror: Mirror::default(),
        };
        maps.read_current()?;
        Ok(maps)
    }

    fn read_current(&mut self) -> Result<()> {
        let m = &mut self.mirror;
        for item in self.endpoints.iter() {
            let (k, v) = item.map_err(map_err("read endpoints"))?;
            m.endpoints.insert(k, v);
        }
        for item in self.ipcache.iter() {
            let (k, v) = item.map_err(map_err("read ipcache"))?;
            m.ipcache.insert(k, v.identity);
        }
        for item in self.cidrs.iter() {
            let (k, v) = item.map_err(map_err("read cidrs"))?;
            m.cidrs.insert(CidrKey { prefix_len: k.prefix_len(), addr: k.data() }, v.identity);
        }
        for item in self.peer_rules.iter() {
            let (k, v) = item.map_err(map_err("read peer rules"))?;
            m.peer_rules.insert(k, v);
        }
        for item in self.port_rules.iter() {
            let (k, v) = item.map_err(map_err("read port rules"))?;
            m.port_rules.insert(k, v);
        }
        for item in self.ranges.iter() {
            let (k, v) = item.map_err(map_err("read policy"))?;
            m.ranges.insert(PolicyEntryKey { prefix_len: k.prefix_len(), key: k.data() }, v);
        }
        Ok(())
    }

    /// Writes the endpoint of `ifindex` (its counter slot's interface first: a deferred packet
    /// of this endpoint finds it at once), then moves the epoch on.
    pub(super) fn write_endpoint(&mut self, ifindex: u32, info: EndpointInfo, stats: &mut ApplyStats) {
        if info.slot != 0 {
            if let Err(e) = self.slots.set(info.slot, ifindex, 0) {
                stats.errors.push(ApplyError::Write { what: "slot", key: format!("{} of ifindex {ifindex}", info.slot), source: Box::new(e) });
            }
        }
        match self.endpoints.insert(ifindex, info, 0) {
            Ok(()) => {
                self.mirror.endpoints.insert(ifindex, info);
                stats.writes += 1;
                self.bump_epoch_into(stats);
            }
            Err(e) => stats.errors.push(ApplyError::Write { what: "endpoint", key: format!("of ifindex {ifindex}"), source: Box::new(e) }),
        }
    }

    /// Deletes the endpoint of `ifindex`, then moves the epoch on; the endpoint it was.
    pub(super) fn remove_endpoint(&mut self, ifindex: u32, stats: &mut ApplyStats) -> Option<EndpointInfo> {
        match self.endpoints.remove(&ifindex) {
            Ok(()) => {
                stats.deletes += 1;
                self.bump_epoch_into(stats);
                self.mirror.endpoints.remove(&ifindex)
            }
            Err(e) => {
                stats.errors.push(ApplyError::Delete { what: "endpoint", key: format!("of ifindex {ifindex}"), source: Box::new(e) });
                None
            }
        }
    }

    /// Moves the endpoint epoch on after an endpoint write, so that the classifiers' flow
    /// caches stop using what they learnt under the earlier endpoint: the next packet of every
    /// flow takes the full path (conntrack, and policy if the generation changed).
    pub(super) fn bump_epoch(&mut self) -> std::result::Result<(), aya::maps::MapError> {
        self.cur_epoch = self.cur_epoch.wrapping_add(1).max(1);
        self.epoch.set(0, if self.flow_cache { self.cur_epoch } else { 0 }, 0)
    }

    /// [`Maps::bump_epoch`], a failure recorded in `stats`.
    fn bump_epoch_into(&mut self, stats: &mut ApplyStats) {
        if let Err(e) = self.bump_epoch() {
            stats.errors.push(ApplyError::Write { what: "endpoint", key: "epoch".into(), source: Box::new(e) });
        }
    }

    /// Turns the classifiers' flow cache on or off.
    pub(super) fn set_flow_cache(&mut self, on: bool) -> Result<()> {
        self.flow_cache = on;
        self.bump_epoch().map_err(map_err("write epoch"))
    }
}

/// Writes every entry of `desired` that the mirror `current` lacks or holds differently, and
/// mirrors each write that succeeds; failures are reported in `stats`.
pub(super) fn upsert<K: Ord + Copy + std::fmt::Debug, V: PartialEq + Copy>(
    current: &mut BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    what: &'static str,
    stats: &mut ApplyStats,
    mut write: impl FnMut(&K, &V) -> std::result::Result<(), aya::maps::MapError>,
) {
    for (k, v) in desired {
        if current.get(k) != Some(v) {
            match write(k, v) {
                Ok(()) => {
                    current.insert(*k, *v);
                    stats.writes += 1;
                }
                Err(e) => stats.errors.push(ApplyError::Write { what, key: format!("{k:?}"), source: Box::new(e) }),
            }
        }
    }
}

/// Deletes every entry of the mirror `current` that `desired` does not hold, and mirrors each
/// deletion that succeeds; failures are reported in `stats`.
pub(super) fn remove_stale<K: Ord + Copy + std::fmt::Debug, V, D>(
    current: &mut BTreeMap<K, V>,
    desired: &BTreeMap<K, D>,
    what: &'static str,
    stats: &mut ApplyStats,
    mut remove: impl FnMut(&K) -> std::result::Result<(), aya::maps::MapError>,
) {
    let stale: Vec<K> = current.keys().filter(|k| !desired.contains_key(k)).copied().collect();
    for k in stale {
        match remove(&k) {
            Ok(()) => {
                current.remove(&k);
                stats.deletes += 1;
            }
            Err(e) => stats.errors.push(ApplyError::Delete { what, key: format!("{k:?}"), source: Box::new(e) }),
        }
    }
}
