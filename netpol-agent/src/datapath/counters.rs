//! The classifiers' counters, read and reset by the agent: packets per endpoint slot, direction
//! and reason ([`netpol_common::MAP_COUNTERS`]), verdict-event outcomes per slot
//! ([`netpol_common::MAP_EVENT_STATS`]), new flows per compiled rule
//! ([`netpol_common::MAP_RULE_HITS`]), and the fill level of the conntrack map.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::AsFd as _,
    path::Path,
};

use aya::maps::{MapData, PerCpuArray};
use netpol_common::{
    counter_index, event_stat_index, Reason, COUNTER_SLOTS, DIR_EGRESS, DIR_INGRESS, EVENT_STAT_KINDS, EVENT_STAT_LOST, EVENT_STAT_SENT,
    EVENT_STAT_SUPPRESSED, MAP_RULE_HITS, RULE_HITS_MAX,
};

use super::{
    error::{map_err, ApplyError, ApplyStats, DatapathError, Result},
    loader::MapSource,
    map_count,
};
use crate::compile::RuleRef;

/// Verdict events of one endpoint slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// Reported on the ring buffer.
    pub sent: u64,
    /// Suppressed by the endpoint's rate limit.
    pub suppressed: u64,
    /// Lost to a full ring buffer.
    pub lost: u64,
}

/// The counter maps, and the rule each rule id stood for at the last apply.
pub(super) struct Counters {
    packets: PerCpuArray<MapData, u64>,
    event_stats: PerCpuArray<MapData, u64>,
    rule_hits: PerCpuArray<MapData, u64>,
    /// Ids are dense and reused, so this stays small: an id that comes to stand for another rule
    /// has its hit count zeroed.
    rules: BTreeMap<u32, RuleRef>,
}

impl Counters {
    /// Opens the counter maps. Rule hits an earlier agent left are zeroed: rule ids are this
    /// agent's own, so they would be put on the wrong rules.
    pub(super) fn open(maps: &mut MapSource<'_>) -> Result<Self> {
        let mut counters = Self {
            packets: maps.take(netpol_common::MAP_COUNTERS)?,
            event_stats: maps.take(netpol_common::MAP_EVENT_STATS)?,
            rule_hits: maps.take(MAP_RULE_HITS)?,
            rules: BTreeMap::new(),
        };
        for id in 0..RULE_HITS_MAX {
            let values = counters.rule_hits.get(&id, 0).map_err(map_err("read rule hits"))?;
            if values.iter().any(|n| *n != 0) {
                zero_per_cpu(&mut counters.rule_hits, id)?;
            }
        }
        Ok(counters)
    }

    /// Packets counted for one endpoint slot (see `netpol_common::counter_index`), per reason:
    /// `[ingress, egress]`, summed over CPUs. Slot 0 holds interfaces without an endpoint.
    pub(super) fn slot(&self, slot: u32) -> Result<Vec<(Reason, [u64; 2])>> {
        let mut out = Vec::with_capacity(Reason::ALL.len());
        for reason in Reason::ALL {
            let mut by_direction = [0u64; 2];
            for (d, direction) in [DIR_INGRESS, DIR_EGRESS].into_iter().enumerate() {
                let values = self.packets.get(&counter_index(slot, direction, reason as u32), 0).map_err(map_err("read counters"))?;
                by_direction[d] = values.iter().sum();
            }
            out.push((reason, by_direction));
        }
        Ok(out)
    }

    /// Packets counted per reason, summed over CPUs, the given slots and slot 0, and both
    /// directions.
    pub(super) fn totals(&self, slots: &BTreeSet<u32>) -> Result<BTreeMap<Reason, u64>> {
        let mut out: BTreeMap<Reason, u64> = Reason::ALL.iter().map(|r| (*r, 0)).collect();
        for slot in slots.iter().copied().chain([0]).collect::<BTreeSet<u32>>() {
            for (reason, [ingress, egress]) in self.slot(slot)? {
                *out.entry(reason).or_default() += ingress + egress;
            }
        }
        Ok(out)
    }

    /// Verdict events of one endpoint slot, summed over CPUs.
    pub(super) fn events(&self, slot: u32) -> Result<EventCounts> {
        let count = |kind: u32| -> Result<u64> {
            Ok(self.event_stats.get(&event_stat_index(slot, kind), 0).map_err(map_err("read event counts"))?.iter().sum())
        };
        Ok(EventCounts { sent: count(EVENT_STAT_SENT)?, suppressed: count(EVENT_STAT_SUPPRESSED)?, lost: count(EVENT_STAT_LOST)? })
    }

    /// New flows allowed by compiled rule `id` (0 for ids past the map's size), summed over
    /// CPUs.
    pub(super) fn rule_hits(&self, id: u32) -> Result<u64> {
        if id >= RULE_HITS_MAX {
            return Ok(0);
        }
        Ok(self.rule_hits.get(&id, 0).map_err(map_err("read rule hits"))?.iter().sum())
    }

    /// Zeroes the hit count of each rule id that now stands for another rule than at the last
    /// apply (ids of rules gone are reused).
    pub(super) fn rules_changed(&mut self, rules: &BTreeMap<u32, RuleRef>, stats: &mut ApplyStats) {
        for (id, rule) in rules {
            let before = self.rules.insert(*id, rule.clone());
            if *id < RULE_HITS_MAX && before.is_some_and(|b| b != *rule) {
                if let Err(e) = zero_per_cpu(&mut self.rule_hits, *id) {
                    stats.errors.push(ApplyError::Counters { what: format!("hits of rule {id}"), source: Box::new(e) });
                }
            }
        }
    }

    /// Zeroes an endpoint slot's packet and event counters before a new endpoint takes it.
    pub(super) fn reset_slot(&mut self, slot: u32, stats: &mut ApplyStats) {
        let mut reset = |map: &mut PerCpuArray<MapData, u64>, index: u32, what: &str| {
            if let Err(e) = zero_per_cpu(map, index) {
                stats.errors.push(ApplyError::Counters { what: format!("{what} of slot {slot}"), source: Box::new(e) });
            }
        };
        for reason in Reason::ALL {
            for direction in [DIR_INGRESS, DIR_EGRESS] {
                reset(&mut self.packets, counter_index(slot, direction, reason as u32), "counters");
            }
        }
        for kind in 0..EVENT_STAT_KINDS {
            reset(&mut self.event_stats, event_stat_index(slot, kind), "event counts");
        }
    }
}

/// The lowest counter slot no endpoint in `used` holds, if any ([`COUNTER_SLOTS`] in all; slot
/// 0 is shared by interfaces without one).
pub(super) fn free_slot(used: &BTreeSet<u32>) -> Option<u32> {
    (1..COUNTER_SLOTS).find(|s| !used.contains(s))
}

/// Sets every CPU's value at `index` of a per-CPU counter array to 0.
fn zero_per_cpu(map: &mut PerCpuArray<MapData, u64>, index: u32) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(path, source)| DatapathError::Fs { op: "count CPUs in", path: path.into(), source })?;
    let zeros = aya::maps::PerCpuValues::try_from(vec![0u64; cpus])
        .map_err(|source| DatapathError::Fs { op: "zero per-CPU values of", path: MAP_RULE_HITS.into(), source })?;
    map.set(index, zeros, 0).map_err(map_err(format!("zero counter {index}")))
}

/// The number of entries in the pinned conntrack map at `path`, read in batches
/// ([`map_count`]).
pub fn count_conntrack(path: &Path) -> Result<usize> {
    let data = MapData::from_pin(path).map_err(map_err(format!("open {}", path.display())))?;
    map_count::count_entries(data.fd().as_fd(), std::mem::size_of::<netpol_common::CtKey>(), std::mem::size_of::<netpol_common::CtValue>())
        .map_err(|source| DatapathError::Count { path: path.to_path_buf(), source })
}
