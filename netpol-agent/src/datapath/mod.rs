//! The data-path edge: loads the embedded eBPF object with its maps pinned under the pin path,
//! attaches the classifiers to pod veths (TCX links, pinned so enforcement outlives the agent),
//! and reconciles map contents with the compiler's [`Desired`] state, writing only differences.
//!
//! Write order (docs/architecture.md, "Survival"): isolation being lifted first, then new and
//! changed entries, then isolation being added, then removals, then generation bumps, so no
//! packet sees a half-applied change that denies what both the old and the new state allow.

use std::{
    collections::{hash_map::DefaultHasher, BTreeMap, BTreeSet},
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, ProgramArray},
    programs::{
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        SchedClassifier, TcAttachType,
    },
};
use netpol_common::{
    counter_index, COUNTER_SLOTS, DIR_EGRESS, DIR_INGRESS, EP_AUDIT, EndpointInfo, IdentityValue, IpKey, PeerKey, PeerRules, PolicyKey, PolicyValue, Reason, EP_EGRESS_ISOLATED,
    EP_HAS_IPV4, EP_HAS_IPV6, EP_INGRESS_ISOLATED, MAP_CIDRS, MAP_COUNTERS, MAP_ENDPOINTS, MAP_EPOCH, MAP_IPCACHE, MAP_PEER_RULES,
    MAP_POLICY, MAP_PORT_RULES, MAP_EVENT_STATS, MAP_RULE_HITS, MAP_SLOTS, event_stat_index, EVENT_STAT_KINDS, RULE_HITS_MAX,
    JUMP_DEFERRED, JUMP_TO_POD, MAP_JUMPS,
};

pub mod bpffs;
pub mod loader;
pub mod map_count;
pub mod netlink;

use crate::{
    compile::{kernel::CidrKey, Desired, EndpointPlan, kernel::PolicyEntryKey},

};

/// The eBPF object built by build.rs from netpol-ebpf.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpol"));

/// Program on the host veth's TCX ingress: traffic from the pod (its egress policy).
pub const PROG_FROM_POD: &str = "netpol_from_pod";
/// Program on the host veth's TCX egress: traffic to the pod (its ingress policy).
pub const PROG_TO_POD: &str = "netpol_to_pod";
/// Program on the TCX egress of every Ethernet interface of the node but local pods' veths:
/// judges the packets whose egress judgement a pod's veth deferred until after NAT. On pods'
/// veths [`PROG_TO_POD`] jumps to it for those packets (a tail call through `MAP_JUMPS`).
pub const PROG_EXIT: &str = "netpol_exit";
/// The endpoint id of interfaces held closed ([`Datapath::hold`]): no policy entry has it
/// (pods' ids start at 1).
pub const HELD_ENDPOINT: u32 = 0;
/// A program that only returns "next": the benchmarks' floor, never attached.
pub const PROG_NOOP: &str = "netpol_noop";

/// Errors of the data-path edge.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// Loading the object or its maps failed.
    #[error("load eBPF object (pin path {path}): {source}")]
    Load {
        /// Pin path.
        path: PathBuf,
        /// Cause.
        source: Box<aya::EbpfError>,
    },
    /// A program operation failed.
    #[error("{op}: {source}")]
    Program {
        /// What was being done.
        op: String,
        /// Cause.
        source: Box<aya::programs::ProgramError>,
    },
    /// A link operation failed.
    #[error("{op}: {source}")]
    Link {
        /// What was being done.
        op: String,
        /// Cause.
        source: Box<aya::programs::links::LinkError>,
    },
    /// A map operation failed.
    #[error("{op}: {source}")]
    Map {
        /// What was being done.
        op: String,
        /// Cause.
        source: Box<aya::maps::MapError>,
    },
    /// A file system operation on the pin path failed.
    #[error("{op} {path}: {source}")]
    Fs {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Pinning a link failed.
    #[error("pin link {path}: {source}")]
    Pin {
        /// The pin.
        path: PathBuf,
        /// Cause.
        source: Box<aya::pin::PinError>,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, DatapathError>;

fn map_err(op: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    let op = op.into();
    move |source| DatapathError::Map { op, source: Box::new(source) }
}

fn prog_err(op: impl Into<String>) -> impl FnOnce(aya::programs::ProgramError) -> DatapathError {
    let op = op.into();
    move |source| DatapathError::Program { op, source: Box::new(source) }
}

/// A local pod's host-side veth, as the attacher found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInterface {
    /// Interface index in the node namespace.
    pub ifindex: u32,
    /// Interface name.
    pub name: String,
}

/// What one reconciliation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Map entries written (inserted or updated).
    pub writes: usize,
    /// Map entries deleted.
    pub deletes: usize,
    /// Interfaces attached.
    pub attached: usize,
    /// Interfaces detached.
    pub detached: usize,
    /// Failures that left part of the state unapplied (reported, not fatal).
    pub errors: Vec<String>,
}

impl ApplyStats {
    /// Adds what another reconciliation did.
    pub fn absorb(&mut self, other: ApplyStats) {
        self.writes += other.writes;
        self.deletes += other.deletes;
        self.attached += other.attached;
        self.detached += other.detached;
        self.errors.extend(other.errors);
    }
}

/// The loaded data path and a mirror of what the maps hold.
pub struct Datapath {
    programs: loader::Programs,
    /// Whether the programs came from this build's pins or were loaded.
    origin: loader::Origin,
    links_dir: PathBuf,
    endpoints: HashMap<MapData, u32, EndpointInfo>,
    ipcache: HashMap<MapData, IpKey, IdentityValue>,
    cidrs: LpmTrie<MapData, IpKey, IdentityValue>,
    peer_rules: HashMap<MapData, PeerKey, PeerRules>,
    port_rules: HashMap<MapData, PolicyKey, PolicyValue>,
    policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    counters: PerCpuArray<MapData, u64>,
    event_stats: PerCpuArray<MapData, u64>,
    rule_hits: PerCpuArray<MapData, u64>,
    /// `MAP_SLOTS`: written with every endpoint.
    slots: Array<MapData, u32>,
    /// `MAP_EPOCH`: bumped after every endpoint write ([`Datapath::bump_epoch`]).
    epoch: Array<MapData, u32>,
    /// The last epoch written (never 0).
    cur_epoch: u32,
    /// Whether the classifiers use their flow cache (the epoch map holds 0 when not).
    flow_cache: bool,
    /// Interfaces held closed ([`Datapath::hold`]) until a local pod claims them, since when.
    held: BTreeMap<u32, std::time::Instant>,
    cur_endpoints: BTreeMap<u32, EndpointInfo>,
    cur_ipcache: BTreeMap<IpKey, u32>,
    cur_cidrs: BTreeMap<CidrKey, u32>,
    cur_peer_rules: BTreeMap<PeerKey, PeerRules>,
    cur_port_rules: BTreeMap<PolicyKey, PolicyValue>,
    cur_policy: BTreeMap<PolicyEntryKey, PolicyValue>,
    /// Per endpoint id: fingerprint of its flags and policy entries, and its generation.
    fingerprints: BTreeMap<u32, (u64, u32)>,
    /// The pinned maps had an earlier, incompatible layout and were replaced by new, empty
    /// ones: the pinned links keep running the earlier programs (on the earlier maps) until the
    /// first [`Datapath::apply`] has programmed the new maps, and only then are switched to
    /// this build's programs.
    adopt_after_first_apply: bool,
    /// The rule each id last stood for (ids are dense and reused, so this stays small): an id
    /// that comes to stand for another rule has its hit count zeroed.
    cur_rules: BTreeMap<u32, crate::compile::RuleRef>,
}

impl Datapath {
    /// Opens the data path pinned under `pin_path` (a directory on the node's bpffs: see
    /// [`bpffs::resolve`]), reusing the maps pinned there: this build's programs from their pins
    /// when an agent of this build left them ([`loader::open`]), else loaded and verified from
    /// the embedded object. Reads what the maps hold.
    pub fn load(pin_path: &Path) -> Result<Self> {
        let dir = bpffs::existing_ancestor(pin_path);
        if !bpffs::is_bpffs(dir) {
            return Err(DatapathError::Fs {
                op: "pin under",
                path: pin_path.to_path_buf(),
                source: std::io::Error::other(format!("{} is not on a bpffs", dir.display())),
            });
        }
        let incompatible = incompatible_pins(pin_path)?;
        for (name, why) in &incompatible {
            // The earlier programs hold their own references: unpinning the map does not take
            // it from them, so they keep enforcing through the pinned links.
            let path = pin_path.join(name);
            std::fs::remove_file(&path).map_err(|source| DatapathError::Fs { op: "unpin incompatible map", path, source })?;
            tracing::warn!(map = %name, %why, "pinned map has an earlier, incompatible layout: replaced by a new one");
        }
        let links_dir = pin_path.join("links");
        std::fs::create_dir_all(&links_dir)
            .map_err(|source| DatapathError::Fs { op: "create pin directory", path: links_dir.clone(), source })?;
        let pinned = if incompatible.is_empty() { loader::open(pin_path) } else { None };
        let (programs, origin, mut object) = match pinned {
            Some(programs) => (programs, loader::Origin::Pinned, None),
            None => {
                let (programs, object) = loader::load(pin_path)?;
                (programs, loader::Origin::Loaded, Some(object))
            }
        };
        let mut maps = match object.as_mut() {
            Some(ebpf) => loader::MapSource::Object(ebpf),
            None => loader::MapSource::Pins(pin_path),
        };
        let mut dp = Self::from_parts(programs, &mut maps, links_dir, !incompatible.is_empty())?;
        drop(object);
        dp.origin = origin;
        Ok(dp)
    }

    /// Whether the programs were opened from this build's pins or loaded and verified.
    pub fn origin(&self) -> loader::Origin {
        self.origin
    }

    fn from_parts(mut programs: loader::Programs, maps: &mut loader::MapSource<'_>, links_dir: PathBuf, incompatible: bool) -> Result<Self> {
        // The jump table before any link runs these programs: without it a deferred packet into
        // a pod is dropped. The pin keeps it filled after this handle is gone.
        let mut jumps: ProgramArray<MapData> = maps.take(MAP_JUMPS)?;
        for (index, name) in [(JUMP_DEFERRED, PROG_EXIT), (JUMP_TO_POD, PROG_TO_POD)] {
            let fd = programs.get(name)?.fd().map_err(prog_err(format!("program {name}")))?;
            jumps.set(index, fd, 0).map_err(map_err(format!("jump table entry {index} ({name})")))?;
        }
        let epoch: Array<MapData, u32> = maps.take(MAP_EPOCH)?;
        let cur_epoch = epoch.get(&0, 0).map_err(map_err("read epoch"))?;
        let mut dp = Self {
            programs,
            origin: loader::Origin::Loaded,
            links_dir,
            endpoints: maps.take(MAP_ENDPOINTS)?,
            ipcache: maps.take(MAP_IPCACHE)?,
            cidrs: maps.take(MAP_CIDRS)?,
            peer_rules: maps.take(MAP_PEER_RULES)?,
            port_rules: maps.take(MAP_PORT_RULES)?,
            policy: maps.take(MAP_POLICY)?,
            counters: maps.take(MAP_COUNTERS)?,
            event_stats: maps.take(MAP_EVENT_STATS)?,
            rule_hits: maps.take(MAP_RULE_HITS)?,
            slots: maps.take(MAP_SLOTS)?,
            epoch,
            cur_epoch,
            flow_cache: true,
            held: BTreeMap::new(),
            cur_endpoints: BTreeMap::new(),
            cur_ipcache: BTreeMap::new(),
            cur_cidrs: BTreeMap::new(),
            cur_peer_rules: BTreeMap::new(),
            cur_port_rules: BTreeMap::new(),
            cur_policy: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
            adopt_after_first_apply: incompatible,
            cur_rules: BTreeMap::new(),
        };
        dp.read_current()?;
        dp.zero_rule_hits()?;
        // Whatever an earlier agent left, flows are checked in full once more.
        dp.bump_epoch().map_err(map_err("write epoch"))?;
        Ok(dp)
    }

    /// Reads the pinned maps' contents into the mirror (an agent adopting what an earlier one
    /// left reconciles against what is really there).
    fn read_current(&mut self) -> Result<()> {
        for item in self.endpoints.iter() {
            let (k, v) = item.map_err(map_err("read endpoints"))?;
            self.cur_endpoints.insert(k, v);
        }
        for item in self.ipcache.iter() {
            let (k, v) = item.map_err(map_err("read ipcache"))?;
            self.cur_ipcache.insert(k, v.identity);
        }
        for item in self.cidrs.iter() {
            let (k, v) = item.map_err(map_err("read cidrs"))?;
            self.cur_cidrs.insert(CidrKey { prefix_len: k.prefix_len(), addr: k.data() }, v.identity);
        }
        for item in self.peer_rules.iter() {
            let (k, v) = item.map_err(map_err("read peer rules"))?;
            self.cur_peer_rules.insert(k, v);
        }
        for item in self.port_rules.iter() {
            let (k, v) = item.map_err(map_err("read port rules"))?;
            self.cur_port_rules.insert(k, v);
        }
        for item in self.policy.iter() {
            let (k, v) = item.map_err(map_err("read policy"))?;
            self.cur_policy.insert(PolicyEntryKey { prefix_len: k.prefix_len(), key: k.data() }, v);
        }
        for ep in self.cur_endpoints.values() {
            self.fingerprints.insert(ep.endpoint, (0, ep.generation));
        }
        Ok(())
    }

    /// The endpoints the pinned map already holds: `ifindex -> info` (for adoption).
    pub fn current_endpoints(&self) -> &BTreeMap<u32, EndpointInfo> {
        &self.cur_endpoints
    }

    /// Packets counted per reason, summed over CPUs, endpoints and directions.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>> {
        let mut out: BTreeMap<&'static str, u64> = Reason::ALL.iter().map(|r| (r.name(), 0)).collect();
        let mut slots: BTreeSet<u32> = self.cur_endpoints.values().map(|e| e.slot).collect();
        slots.insert(0);
        for slot in slots {
            for (reason, [ingress, egress]) in self.slot_counters(slot)? {
                *out.entry(reason.name()).or_default() += ingress + egress;
            }
        }
        Ok(out)
    }

    /// Packets counted for one endpoint slot (see `netpol_common::counter_index`), per reason:
    /// `[ingress, egress]`, summed over CPUs. Slot 0 holds interfaces without an endpoint.
    pub fn slot_counters(&self, slot: u32) -> Result<Vec<(Reason, [u64; 2])>> {
        let mut out = Vec::with_capacity(Reason::ALL.len());
        for reason in Reason::ALL {
            let mut by_direction = [0u64; 2];
            for (d, direction) in [DIR_INGRESS, DIR_EGRESS].into_iter().enumerate() {
                let values =
                    self.counters.get(&counter_index(slot, direction, reason as u32), 0).map_err(map_err("read counters"))?;
                by_direction[d] = values.iter().sum();
            }
            out.push((reason, by_direction));
        }
        Ok(out)
    }

    /// Verdict events of one endpoint slot, summed over CPUs: `[sent, suppressed, lost]`.
    pub fn event_counts(&self, slot: u32) -> Result<[u64; 3]> {
        let mut out = [0u64; 3];
        for (kind, n) in out.iter_mut().enumerate() {
            let values = self.event_stats.get(&event_stat_index(slot, kind as u32), 0).map_err(map_err("read event counts"))?;
            *n = values.iter().sum();
        }
        Ok(out)
    }

    /// New flows allowed by compiled rule `id` (0 for ids past the map's size), summed over
    /// CPUs.
    pub fn rule_hits(&self, id: u32) -> Result<u64> {
        if id >= RULE_HITS_MAX {
            return Ok(0);
        }
        Ok(self.rule_hits.get(&id, 0).map_err(map_err("read rule hits"))?.iter().sum())
    }

    /// Zeroes the hit count of each rule id that now stands for another rule than at the last
    /// apply (ids of rules gone are reused).
    fn zero_reused_rule_ids(&mut self, rules: &BTreeMap<u32, crate::compile::RuleRef>, stats: &mut ApplyStats) {
        for (id, rule) in rules {
            let before = self.cur_rules.insert(*id, rule.clone());
            if *id < RULE_HITS_MAX && before.is_some_and(|b| b != *rule) {
                if let Err(e) = zero_per_cpu(&mut self.rule_hits, *id) {
                    stats.errors.push(format!("zero hits of rule {id}: {e}"));
                }
            }
        }
    }

    /// Zeroes the rule hit counts: rule ids are this agent's own, so counts an earlier agent
    /// left in the pinned map would be put on the wrong rules.
    fn zero_rule_hits(&mut self) -> Result<()> {
        for id in 0..RULE_HITS_MAX {
            let values = self.rule_hits.get(&id, 0).map_err(map_err("read rule hits"))?;
            if values.iter().any(|n| *n != 0) {
                zero_per_cpu(&mut self.rule_hits, id).map_err(|e| DatapathError::Fs {
                    op: "zero rule hits",
                    path: MAP_RULE_HITS.into(),
                    source: std::io::Error::other(e),
                })?;
            }
        }
        Ok(())
    }

    /// Zeroes an endpoint slot's packet and event counters before a new endpoint takes it.
    fn reset_slot(&mut self, slot: u32, stats: &mut ApplyStats) {
        for reason in Reason::ALL {
            for direction in [DIR_INGRESS, DIR_EGRESS] {
                if let Err(e) = zero_per_cpu(&mut self.counters, counter_index(slot, direction, reason as u32)) {
                    stats.errors.push(format!("reset counters of slot {slot}: {e}"));
                }
            }
        }
        for kind in 0..EVENT_STAT_KINDS {
            if let Err(e) = zero_per_cpu(&mut self.event_stats, event_stat_index(slot, kind)) {
                stats.errors.push(format!("reset event counts of slot {slot}: {e}"));
            }
        }
    }

    /// The counter slot of the endpoint `id` on `ifindex`: the one it has, or the lowest one no
    /// current endpoint uses (zeroed first), or the shared slot 0 when all are taken.
    fn slot_for(&mut self, ifindex: u32, id: u32, stats: &mut ApplyStats) -> u32 {
        if let Some(ep) = self.cur_endpoints.get(&ifindex) {
            if ep.endpoint == id && ep.slot != 0 {
                return ep.slot;
            }
        }
        let used: BTreeSet<u32> = self.cur_endpoints.values().map(|e| e.slot).collect();
        match (1..COUNTER_SLOTS).find(|s| !used.contains(s)) {
            Some(slot) => {
                self.reset_slot(slot, stats);
                slot
            }
            None => 0,
        }
    }

    /// Brings maps and attachments to `desired`, for the local pods found at `interfaces`
    /// (pods without an interface get no endpoint yet).
    pub fn apply(&mut self, desired: &Desired, interfaces: &BTreeMap<crate::model::ObjectRef, PodInterface>) -> ApplyStats {
        let mut stats = self.apply_maps(desired, interfaces);
        if self.adopt_after_first_apply {
            // The new maps hold the whole state now: switch every pinned link to this build's
            // programs (an atomic program replacement per link; no packet sees neither).
            self.adopt_after_first_apply = false;
            let errors = self.adopt_links();
            tracing::info!(errors = errors.len(), "pinned links switched to this build's programs after the layout change");
            stats.errors.extend(errors);
        }
        self.apply_links(interfaces, &mut stats);
        stats
    }

    /// The map half of [`Datapath::apply`]: writes every map, attaches nothing (tests drive the
    /// programs with BPF_PROG_TEST_RUN on top of it).
    pub fn apply_maps(&mut self, desired: &Desired, interfaces: &BTreeMap<crate::model::ObjectRef, PodInterface>) -> ApplyStats {
        let mut stats = ApplyStats::default();
        self.zero_reused_rule_ids(&desired.rules, &mut stats);
        // A held interface a local pod now claims gets that pod's endpoint below.
        self.held.retain(|ifindex, _| !interfaces.values().any(|i| i.ifindex == *ifindex));

        // 0. Isolation that the new state lifts, first. The new state allows everything in that
        // direction, so lifting it early opens nothing the new state denies; done later, a peer
        // whose identity changes below would meet the old isolation with no rule for its new
        // identity (the old state's rule named the old one), and a flow both states allow would
        // be dropped in between.
        for (pod, plan) in &desired.endpoints {
            let Some(iface) = interfaces.get(pod) else { continue };
            let Some(cur) = self.cur_endpoints.get(&iface.ifindex).copied() else { continue };
            if cur.endpoint != plan.id {
                continue;
            }
            let mut flags = cur.flags;
            if !plan.ingress_isolated {
                flags &= !EP_INGRESS_ISOLATED;
            }
            if !plan.egress_isolated {
                flags &= !EP_EGRESS_ISOLATED;
            }
            if flags != cur.flags {
                self.write_endpoint(iface.ifindex, EndpointInfo { flags, ..cur }, &mut stats);
            }
        }

        // 1. New and changed policy entries (ports and ranges before the peer rules that send
        // lookups to them), regions and identities.
        let kernel = &desired.policy;
        upsert(&mut self.cur_port_rules, &kernel.ports, "port rule", &mut stats, |k, v| self.port_rules.insert(k, v, 0));
        upsert(&mut self.cur_policy, &kernel.ranges, "port range entry", &mut stats, |k, v| {
            self.policy.insert(&Key::new(k.prefix_len, k.key), v, 0)
        });
        upsert(&mut self.cur_peer_rules, &kernel.peers, "peer rules", &mut stats, |k, v| self.peer_rules.insert(k, v, 0));
        // A peer address whose identity changes or goes away may revoke open flows of every
        // endpoint; a new address only adds identities, and policies only add allows.
        let identities_changed = self.cur_cidrs.iter().any(|(k, id)| desired.cidrs.get(k) != Some(id))
            || self.cur_ipcache.iter().any(|(k, id)| desired.ipcache.get(k) != Some(id));
        upsert(&mut self.cur_cidrs, &desired.cidrs, "cidr region", &mut stats, |k, id| {
            self.cidrs.insert(&Key::new(k.prefix_len, k.addr), IdentityValue { identity: *id }, 0)
        });
        upsert(&mut self.cur_ipcache, &desired.ipcache, "ipcache entry", &mut stats, |k, id| {
            self.ipcache.insert(k, IdentityValue { identity: *id }, 0)
        });

        // 2. Endpoints with their new isolation flags, at their current generation.
        let mut wanted: BTreeMap<u32, (u64, &EndpointPlan)> = BTreeMap::new();
        for (pod, plan) in &desired.endpoints {
            let Some(iface) = interfaces.get(pod) else { continue };
            let fingerprint = fingerprint(desired, plan);
            wanted.insert(iface.ifindex, (fingerprint, plan));
            let generation = self.fingerprints.get(&plan.id).map_or(1, |(_, g)| *g);
            let slot = self.slot_for(iface.ifindex, plan.id, &mut stats);
            let info = endpoint_info(plan, generation, slot);
            if self.cur_endpoints.get(&iface.ifindex) != Some(&info) {
                self.write_endpoint(iface.ifindex, info, &mut stats);
            }
        }

        // 3. Removals (peer rules first: nothing sends lookups to an entry once it is gone).
        remove_stale(&mut self.cur_peer_rules, &kernel.peers, "peer rules", &mut stats, |k| self.peer_rules.remove(k));
        remove_stale(&mut self.cur_port_rules, &kernel.ports, "port rule", &mut stats, |k| self.port_rules.remove(k));
        remove_stale(&mut self.cur_policy, &kernel.ranges, "port range entry", &mut stats, |k| {
            self.policy.remove(&Key::new(k.prefix_len, k.key))
        });
        remove_stale(&mut self.cur_cidrs, &desired.cidrs, "cidr region", &mut stats, |k| {
            self.cidrs.remove(&Key::new(k.prefix_len, k.addr))
        });
        remove_stale(&mut self.cur_ipcache, &desired.ipcache, "ipcache entry", &mut stats, |k| self.ipcache.remove(k));

        // 4. Generation bumps: flows allowed under an older policy are checked again.
        for (ifindex, (fp, plan)) in &wanted {
            let (old_fp, generation) = self.fingerprints.get(&plan.id).copied().unwrap_or((0, 0));
            if old_fp != *fp || identities_changed {
                let generation = generation.wrapping_add(1).max(1);
                self.fingerprints.insert(plan.id, (*fp, generation));
                let slot = self.cur_endpoints.get(ifindex).map_or(0, |e| e.slot);
                self.write_endpoint(*ifindex, endpoint_info(plan, generation, slot), &mut stats);
            }
        }

        // 5. Endpoints of interfaces that are gone or no longer local pods (and not held).
        let stale: Vec<u32> = self.cur_endpoints.keys().filter(|k| !wanted.contains_key(k) && !self.held.contains_key(k)).copied().collect();
        for ifindex in stale {
            match self.endpoints.remove(&ifindex) {
                Ok(()) => {
                    if let Some(ep) = self.cur_endpoints.remove(&ifindex) {
                        self.fingerprints.remove(&ep.endpoint);
                    }
                    stats.deletes += 1;
                    self.bump_epoch_into(&mut stats);
                }
                Err(e) => stats.errors.push(format!("delete endpoint of ifindex {ifindex}: {e}")),
            }
        }
        stats
    }

    /// The link half of [`Datapath::apply`]: attaches the classifiers to every interface that
    /// has an endpoint entry and no links yet, and detaches (unpins) links of other interfaces.
    fn apply_links(&mut self, interfaces: &BTreeMap<crate::model::ObjectRef, PodInterface>, stats: &mut ApplyStats) {
        let pinned = self.pinned_links();
        let mut wanted: BTreeSet<u32> = interfaces.values().map(|i| i.ifindex).filter(|i| self.cur_endpoints.contains_key(i)).collect();
        wanted.extend(self.held.keys());
        for iface in interfaces.values() {
            if wanted.contains(&iface.ifindex) && !pinned.contains(&iface.ifindex) {
                match self.attach(iface) {
                    Ok(()) => stats.attached += 1,
                    Err(e) => stats.errors.push(format!("attach {}: {e}", iface.name)),
                }
            }
        }
        for ifindex in pinned.difference(&wanted) {
            self.unpin_links(*ifindex, stats);
            stats.detached += 1;
        }
        self.retire_pod_exits(stats);
    }

    /// Unpins the [`PROG_EXIT`] links of interfaces whose [`PROG_TO_POD`] is linked: that
    /// program judges deferred packets itself. Only from [`Datapath::apply`], after the links
    /// were switched to this build's programs (an earlier build's may not judge them).
    fn retire_pod_exits(&mut self, stats: &mut ApplyStats) {
        for ifindex in self.pinned_exits() {
            if self.link_pin(ifindex, PROG_TO_POD).exists() {
                unpin(&self.exit_pin(ifindex), stats);
                stats.detached += 1;
            }
        }
    }

    /// Holds a new interface closed until a local pod claims it: an endpoint entry isolated both
    /// ways with no address and no rules (everything but IPv6 neighbour discovery is dropped:
    /// from the pod as spoofed, to it for want of a rule), and both classifiers linked. The next
    /// [`Datapath::apply`] that finds a pod on it gives it the pod's entry; until then it keeps
    /// the hold, until [`Datapath::release`].
    pub fn hold(&mut self, iface: &PodInterface) -> Result<()> {
        let info = EndpointInfo {
            endpoint: HELD_ENDPOINT,
            flags: EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED,
            generation: 1,
            ..EndpointInfo::default()
        };
        self.endpoints.insert(iface.ifindex, info, 0).map_err(map_err(format!("hold {}", iface.name)))?;
        self.cur_endpoints.insert(iface.ifindex, info);
        self.bump_epoch().map_err(map_err(format!("hold {}: write epoch", iface.name)))?;
        self.held.insert(iface.ifindex, std::time::Instant::now());
        if !self.link_pin(iface.ifindex, PROG_FROM_POD).exists() {
            self.attach(iface)?;
        }
        Ok(())
    }

    /// Stops holding interface `ifindex`; the next [`Datapath::apply`] removes its entry and
    /// links unless a pod claims it.
    pub fn release(&mut self, ifindex: u32) {
        self.held.remove(&ifindex);
    }

    /// Interfaces held closed (ifindex), and since when.
    pub fn held(&self) -> &BTreeMap<u32, std::time::Instant> {
        &self.held
    }

    /// Whether the interface `ifindex` has its endpoint entry and both classifiers linked.
    pub fn is_enforcing(&self, ifindex: u32) -> bool {
        self.cur_endpoints.contains_key(&ifindex) && [PROG_TO_POD, PROG_FROM_POD].iter().all(|p| self.link_pin(ifindex, p).exists())
    }

    /// A loaded classifier ([`PROG_FROM_POD`] or [`PROG_TO_POD`]), e.g. for BPF_PROG_TEST_RUN.
    pub fn program(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        self.programs.get(name)
    }

    fn write_endpoint(&mut self, ifindex: u32, info: EndpointInfo, stats: &mut ApplyStats) {
        // The slot's interface first: a deferred packet of this endpoint finds it at once.
        if info.slot != 0 {
            if let Err(e) = self.slots.set(info.slot, ifindex, 0) {
                stats.errors.push(format!("write slot {} of ifindex {ifindex}: {e}", info.slot));
            }
        }
        match self.endpoints.insert(ifindex, info, 0) {
            Ok(()) => {
                self.cur_endpoints.insert(ifindex, info);
                stats.writes += 1;
                self.bump_epoch_into(stats);
            }
            Err(e) => stats.errors.push(format!("write endpoint of ifindex {ifindex}: {e}")),
        }
    }

    /// Moves the endpoint epoch on after an endpoint write, so that the classifiers' flow
    /// caches stop using what they learnt under the earlier endpoint: the next packet of every
    /// flow takes the full path (conntrack, and policy if the generation changed).
    fn bump_epoch(&mut self) -> std::result::Result<(), aya::maps::MapError> {
        self.cur_epoch = self.cur_epoch.wrapping_add(1).max(1);
        self.epoch.set(0, if self.flow_cache { self.cur_epoch } else { 0 }, 0)
    }

    /// [`Datapath::bump_epoch`], a failure recorded in `stats`.
    fn bump_epoch_into(&mut self, stats: &mut ApplyStats) {
        if let Err(e) = self.bump_epoch() {
            stats.errors.push(format!("write endpoint epoch: {e}"));
        }
    }

    /// Turns the classifiers' flow cache on or off (on after [`Datapath::load`]): off, every
    /// packet takes the full path, as the benchmarks measure it.
    pub fn set_flow_cache(&mut self, on: bool) -> Result<()> {
        self.flow_cache = on;
        self.bump_epoch().map_err(map_err("write epoch"))
    }

    fn link_pin(&self, ifindex: u32, program: &str) -> PathBuf {
        self.links_dir.join(format!("{ifindex}-{program}"))
    }

    fn exit_pin(&self, ifindex: u32) -> PathBuf {
        self.links_dir.join(format!("exit-{ifindex}"))
    }

    /// Interfaces with a pinned [`PROG_EXIT`] link (by ifindex).
    fn pinned_exits(&self) -> BTreeSet<u32> {
        std::fs::read_dir(&self.links_dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("exit-")?.parse().ok())
            .collect()
    }

    /// Attaches [`PROG_EXIT`] to the TCX egress of every interface in `interfaces` that has
    /// none yet and is not a local pod's veth (pinned, like the pods' links), and unpins the
    /// links of interfaces gone. Run before [`Datapath::apply`] attaches a pod's classifiers, so
    /// that no packet they defer leaves unjudged. A pod's veth needs no exit once its
    /// [`PROG_TO_POD`] is linked (that program judges deferred packets first): a new veth gets
    /// one here until [`Datapath::apply`] links the pod's classifiers and retires it.
    pub fn apply_exits(&mut self, interfaces: &[crate::datapath::netlink::EthernetInterface]) -> ApplyStats {
        let mut stats = ApplyStats::default();
        let pinned = self.pinned_exits();
        let pods = self.pinned_links();
        for iface in interfaces.iter().filter(|i| !pinned.contains(&i.ifindex) && !pods.contains(&i.ifindex)) {
            let pin = self.exit_pin(iface.ifindex);
            let attached = self.attach_pinned(PROG_EXIT, &iface.name, TcAttachType::Egress, &pin);
            match attached {
                Ok(()) => stats.attached += 1,
                // An interface that went away meanwhile is no error.
                Err(e) if crate::datapath::netlink::list_ethernet_interfaces().is_ok_and(|now| !now.contains(iface)) => {
                    tracing::debug!(interface = %iface.name, error = %e, "interface gone before its exit link was attached");
                }
                Err(e) => stats.errors.push(format!("attach {PROG_EXIT} to {}: {e}", iface.name)),
            }
        }
        let wanted: BTreeSet<u32> = interfaces.iter().map(|i| i.ifindex).collect();
        for ifindex in pinned.difference(&wanted) {
            // The interface is gone (and its link with it); only the pin is left.
            unpin(&self.exit_pin(*ifindex), &mut stats);
            stats.detached += 1;
        }
        stats
    }

    /// Interfaces with pinned links (by ifindex).
    fn pinned_links(&self) -> BTreeSet<u32> {
        std::fs::read_dir(&self.links_dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.split('-').next()?.parse().ok())
            .collect()
    }

    /// Attaches both classifiers to `iface` and pins the links.
    fn attach(&mut self, iface: &PodInterface) -> Result<()> {
        for (name, attach_type) in [(PROG_TO_POD, TcAttachType::Egress), (PROG_FROM_POD, TcAttachType::Ingress)] {
            let pin = self.link_pin(iface.ifindex, name);
            self.attach_pinned(name, &iface.name, attach_type, &pin)?;
        }
        Ok(())
    }

    /// Attaches program `name` to interface `iface` at `attach_type` and pins the TCX link at
    /// `pin`.
    fn attach_pinned(&mut self, name: &str, iface: &str, attach_type: TcAttachType, pin: &Path) -> Result<()> {
        let prog = self.programs.get(name)?;
        let id = prog.attach(iface, attach_type).map_err(prog_err(format!("attach {name} to {iface}")))?;
        let link = prog.take_link(id).map_err(prog_err(format!("take link of {name} on {iface}")))?;
        let link: FdLink = link.try_into().map_err(|e| DatapathError::Link { op: format!("link of {name} on {iface}"), source: Box::new(e) })?;
        link.pin(pin).map(drop).map_err(|source| DatapathError::Pin { path: pin.to_path_buf(), source: Box::new(source) })
    }

    /// Points links pinned by an earlier agent at this agent's programs (atomically, with no
    /// moment without a program), so an upgrade takes effect without detaching.
    pub fn adopt_links(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.adopt_after_first_apply {
            // Deferred to the first apply: the new maps are still empty.
            return errors;
        }
        let pod_links = self.pinned_links().into_iter().flat_map(|i| [(i, PROG_TO_POD), (i, PROG_FROM_POD)]);
        let exit_links = self.pinned_exits().into_iter().map(|i| (i, PROG_EXIT));
        for (ifindex, name) in pod_links.chain(exit_links).collect::<Vec<_>>() {
            let pin = if name == PROG_EXIT { self.exit_pin(ifindex) } else { self.link_pin(ifindex, name) };
            let result = PinnedLink::from_pin(&pin)
                .map_err(|e| format!("open {}: {e}", pin.display()))
                .and_then(|pinned| {
                    let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| format!("{}: {e}", pin.display()))?;
                    let prog = self.programs.get(name).map_err(|e| e.to_string())?;
                    prog.attach_to_link(link).map(|_| ()).map_err(|e| format!("update {}: {e}", pin.display()))
                });
            if let Err(e) = result {
                errors.push(e);
            }
        }
        errors
    }

    fn unpin_links(&mut self, ifindex: u32, stats: &mut ApplyStats) {
        for name in [PROG_TO_POD, PROG_FROM_POD] {
            unpin(&self.link_pin(ifindex, name), stats);
        }
    }
}

/// Detaches the link pinned at `pin` and removes the pin (either gone already is no error).
fn unpin(pin: &Path, stats: &mut ApplyStats) {
    if let Err(e) = detach_pinned_link(pin) {
        if e.kind() != std::io::ErrorKind::NotFound {
            stats.errors.push(format!("detach {}: {e}", pin.display()));
        }
    }
    if let Err(e) = std::fs::remove_file(pin) {
        if e.kind() != std::io::ErrorKind::NotFound {
            stats.errors.push(format!("unpin {}: {e}", pin.display()));
        }
    }
}

/// Writes every entry of `desired` that the mirror `current` lacks or holds differently, and
/// mirrors each write that succeeds; failures are reported in `stats`.
fn upsert<K: Ord + Copy + std::fmt::Debug, V: PartialEq + Copy>(
    current: &mut BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    what: &str,
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
                Err(e) => stats.errors.push(format!("write {what} {k:?}: {e}")),
            }
        }
    }
}

/// Deletes every entry of the mirror `current` that `desired` does not hold, and mirrors each
/// deletion that succeeds; failures are reported in `stats`.
fn remove_stale<K: Ord + Copy + std::fmt::Debug, V, D>(
    current: &mut BTreeMap<K, V>,
    desired: &BTreeMap<K, D>,
    what: &str,
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
            Err(e) => stats.errors.push(format!("delete {what} {k:?}: {e}")),
        }
    }
}

/// Detaches the link pinned at `pin` at once (BPF_LINK_DETACH, Linux 5.9+), rather than when the
/// kernel gets round to releasing it after its last reference goes; the pin stays.
pub fn detach_pinned_link(pin: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // union bpf_attr, zeroed; BPF_OBJ_GET takes the path pointer at offset 0.
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: bpf(2) with a zeroed attr of 128 bytes holding a valid NUL-terminated path.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = fd as i32;
    let mut attr = [0u64; 16];
    attr[0] = u64::from(fd as u32); // link_detach.link_fd
    // SAFETY: bpf(2) with a zeroed attr naming a link fd we own.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd came from BPF_OBJ_GET above and is closed once.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err);
    }
    Ok(())
}

/// Detaches every link pinned under `pin_path` and removes every pin (programs, links, maps):
/// `netpol-agent uninstall`.
pub fn uninstall(pin_path: &Path) -> std::io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(pin_path.join("links")) {
        for e in entries.flatten() {
            detach_pinned_link(&e.path())?;
        }
    }
    match std::fs::remove_dir_all(pin_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Sets every CPU's value at `index` of a per-CPU counter array to 0.
fn zero_per_cpu(map: &mut PerCpuArray<MapData, u64>, index: u32) -> std::result::Result<(), String> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| format!("count CPUs: {e}"))?;
    let zeros = aya::maps::PerCpuValues::try_from(vec![0u64; cpus]).map_err(|e| format!("zero values: {e}"))?;
    map.set(index, zeros, 0).map_err(|e| e.to_string())
}

/// The maps pinned under `pin_path` whose layout (type, key size, value size, capacity, flags)
/// is not the one this build's programs were compiled for: (name, how it differs). Reusing such
/// a map would make the verifier refuse the programs, or worse, make them read the wrong bytes.
pub fn incompatible_pins(pin_path: &Path) -> Result<Vec<(String, String)>> {
    let obj = aya_obj::Object::parse(EBPF_OBJECT).map_err(|e| DatapathError::Fs {
        op: "parse the embedded eBPF object",
        path: pin_path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let mut out = Vec::new();
    let mut names: Vec<&String> = obj.maps.keys().collect();
    names.sort();
    for name in names {
        let want = &obj.maps[name];
        if want.pinning() != aya_obj::maps::PinningType::ByName {
            continue;
        }
        let path = pin_path.join(name);
        if !path.exists() {
            continue;
        }
        let info = match aya::maps::MapInfo::from_pin(&path) {
            Ok(info) => info,
            Err(e) => {
                out.push((name.clone(), format!("unreadable ({e})")));
                continue;
            }
        };
        let kind = info.map_type().map_or(u32::MAX, |t| t as u32);
        let got = [kind, info.key_size(), info.value_size(), info.max_entries(), info.map_flags()];
        let expected = [want.map_type(), want.key_size(), want.value_size(), want.max_entries(), want.map_flags()];
        if got != expected {
            out.push((name.clone(), format!("pinned (type, key, value, entries, flags) {got:?}, this build {expected:?}")));
        }
    }
    Ok(out)
}

/// The endpoint map value of a plan at a generation, counting into counter slot `slot`.
pub fn endpoint_info(plan: &EndpointPlan, generation: u32, slot: u32) -> EndpointInfo {
    let mut flags = 0;
    if plan.ingress_isolated {
        flags |= EP_INGRESS_ISOLATED;
    }
    if plan.egress_isolated {
        flags |= EP_EGRESS_ISOLATED;
    }
    if plan.ipv4.is_some() {
        flags |= EP_HAS_IPV4;
    }
    if plan.ipv6.is_some() {
        flags |= EP_HAS_IPV6;
    }
    if plan.audit {
        flags |= EP_AUDIT;
    }
    EndpointInfo {
        endpoint: plan.id,
        flags,
        generation,
        slot,
        ipv4: plan.ipv4.map_or(0, |a| u32::from_ne_bytes(a.octets())),
        _pad2: 0,
        ipv6: plan.ipv6.map_or(IpKey::default(), |a| IpKey::from_octets(a.octets())),
    }
}

/// A fingerprint of the endpoint's own part of its verdicts: its isolation and policy entries
/// (the peers' identities are checked separately, for all endpoints at once). Rule ids are left
/// out: they name what allowed a flow, they do not change whether it is.
fn fingerprint(desired: &Desired, plan: &EndpointPlan) -> u64 {
    use crate::compile::kernel::EndpointEntry;
    let mut h = DefaultHasher::new();
    (plan.ingress_isolated, plan.egress_isolated).hash(&mut h);
    for entry in desired.policy.of_endpoint(plan.id) {
        match entry {
            EndpointEntry::Peer(k, v) => (0u8, k, v.any, v.all_ports, v.ports, v.ranges).hash(&mut h),
            EndpointEntry::Port(k, v) => (1u8, k, v.action, v.tier).hash(&mut h),
            EndpointEntry::Range(k, v) => (2u8, k.prefix_len, k.key, v.action, v.tier).hash(&mut h),
        }
    }
    h.finish()
}
