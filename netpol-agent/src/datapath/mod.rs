//! The kernel edge: loads the embedded eBPF object with its maps pinned under the pin path on
//! the node's bpffs ([`bpffs`], [`loader`]), writes the compiler's
//! [`Desired`](crate::compile::Desired) state into the
//! maps, only the differences and in a safe order ([`reconcile`], [`maps`]), attaches the
//! classifiers to pod veths and the exit to the node's other interfaces with pinned TCX links
//! ([`links`]), holds new veths closed ([`holds`]), reads the counters ([`counters`]) and finds
//! veths and addresses through netlink ([`netlink`]). From outside, [`Datapath`] is the handle;
//! [`links::uninstall`] removes everything.

pub mod bpffs;
pub mod counters;
pub mod error;
mod holds;
pub mod links;
pub mod loader;
pub mod map_count;
mod maps;
pub mod netlink;
pub mod reconcile;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Instant,
};

use aya::{
    maps::{MapData, ProgramArray},
    programs::SchedClassifier,
};
use netpol_common::{EndpointInfo, Reason, JUMP_DEFERRED, JUMP_TO_POD, MAP_JUMPS};

pub use counters::EventCounts;
pub use error::{ApplyError, ApplyStats, DatapathError, Result};
pub use links::uninstall;

use error::{map_err, prog_err};

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

/// A local pod's host-side veth, as the attacher found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInterface {
    /// Interface index in the node namespace.
    pub ifindex: u32,
    /// Interface name.
    pub name: String,
}

/// The loaded data path: its programs, the maps with a mirror of what they hold, the counters,
/// the pinned links, and the interfaces held closed.
pub struct Datapath {
    programs: loader::Programs,
    /// Whether the programs came from this build's pins or were loaded.
    origin: loader::Origin,
    maps: maps::Maps,
    counters: counters::Counters,
    links: links::Links,
    /// Per endpoint id: fingerprint of its flags and policy entries, and its generation.
    generations: BTreeMap<u32, (u64, u32)>,
    /// Interfaces held closed ([`Datapath::hold`]) until a local pod claims them, since when.
    held: BTreeMap<u32, Instant>,
    /// The pinned maps had an earlier, incompatible layout and were replaced by new, empty
    /// ones: the pinned links keep running the earlier programs (on the earlier maps) until the
    /// first [`Datapath::apply`] has programmed the new maps, and only then are switched to
    /// this build's programs.
    adopt_after_first_apply: bool,
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
        let incompatible = loader::incompatible_pins(pin_path)?;
        for (name, why) in &incompatible {
            // The earlier programs hold their own references: unpinning the map does not take
            // it from them, so they keep enforcing through the pinned links.
            let path = pin_path.join(name);
            std::fs::remove_file(&path).map_err(|source| DatapathError::Fs { op: "unpin incompatible map", path, source })?;
            tracing::warn!(map = %name, %why, "pinned map has an earlier, incompatible layout: replaced by a new one");
        }
        let links = links::Links::open(pin_path.join("links"))?;
        let pinned = if incompatible.is_empty() { loader::open(pin_path) } else { None };
        let (mut programs, origin, mut object) = match pinned {
            Some(programs) => (programs, loader::Origin::Pinned, None),
            None => {
                let (programs, object) = loader::load(pin_path)?;
                (programs, loader::Origin::Loaded, Some(object))
            }
        };
        let mut source = match object.as_mut() {
            Some(ebpf) => loader::MapSource::Object(ebpf),
            None => loader::MapSource::Pins(pin_path),
        };
        // The jump table before any link runs these programs: without it a deferred packet into
        // a pod is dropped. The pin keeps it filled after this handle is gone.
        let mut jumps: ProgramArray<MapData> = source.take(MAP_JUMPS)?;
        for (index, name) in [(JUMP_DEFERRED, PROG_EXIT), (JUMP_TO_POD, PROG_TO_POD)] {
            let fd = programs.get(name)?.fd().map_err(prog_err(format!("program {name}")))?;
            jumps.set(index, fd, 0).map_err(map_err(format!("jump table entry {index} ({name})")))?;
        }
        let mut maps = maps::Maps::open(&mut source)?;
        let counters = counters::Counters::open(&mut source)?;
        drop(object);
        // Whatever an earlier agent left, flows are checked in full once more.
        maps.bump_epoch().map_err(map_err("write epoch"))?;
        let generations = maps.mirror.endpoints.values().map(|ep| (ep.endpoint, (0, ep.generation))).collect();
        Ok(Self { programs, origin, maps, counters, links, generations, held: BTreeMap::new(), adopt_after_first_apply: !incompatible.is_empty() })
    }

    /// Whether the programs were opened from this build's pins or loaded and verified.
    pub fn origin(&self) -> loader::Origin {
        self.origin
    }

    /// Points the links pinned by an earlier agent at this agent's programs (atomically, with no
    /// moment without a program), so an upgrade takes effect without detaching. Deferred to the
    /// first [`Datapath::apply`] when the maps were replaced (they are still empty).
    pub fn adopt_links(&mut self) -> Vec<ApplyError> {
        if self.adopt_after_first_apply {
            return Vec::new();
        }
        self.links.adopt(&mut self.programs)
    }

    /// Attaches [`PROG_EXIT`] to every interface of `interfaces` that is not a local pod's veth
    /// and unpins the exits of interfaces gone (see [`links`]). Run before [`Datapath::apply`]
    /// attaches a pod's classifiers, so that no packet they defer leaves unjudged.
    pub fn apply_exits(&mut self, interfaces: &[netlink::EthernetInterface]) -> ApplyStats {
        self.links.apply_exits(&mut self.programs, interfaces)
    }

    /// The endpoints the maps hold: `ifindex -> info` (for adoption).
    pub fn current_endpoints(&self) -> &BTreeMap<u32, EndpointInfo> {
        &self.maps.mirror.endpoints
    }

    /// Whether the interface `ifindex` has its endpoint entry and both classifiers linked.
    pub fn is_enforcing(&self, ifindex: u32) -> bool {
        self.maps.mirror.endpoints.contains_key(&ifindex) && self.links.pod_linked(ifindex)
    }

    /// Packets counted per reason, summed over CPUs, endpoints and directions.
    pub fn counters(&self) -> Result<BTreeMap<Reason, u64>> {
        let slots: BTreeSet<u32> = self.maps.mirror.endpoints.values().map(|e| e.slot).collect();
        self.counters.totals(&slots)
    }

    /// Packets counted for one endpoint slot, per reason: `[ingress, egress]`, summed over CPUs.
    /// Slot 0 holds interfaces without an endpoint.
    pub fn slot_counters(&self, slot: u32) -> Result<Vec<(Reason, [u64; 2])>> {
        self.counters.slot(slot)
    }

    /// Verdict events of one endpoint slot, summed over CPUs.
    pub fn event_counts(&self, slot: u32) -> Result<EventCounts> {
        self.counters.events(slot)
    }

    /// New flows allowed by compiled rule `id` (0 for ids past the map's size), summed over
    /// CPUs.
    pub fn rule_hits(&self, id: u32) -> Result<u64> {
        self.counters.rule_hits(id)
    }

    /// A loaded classifier (one of [`loader::PROGRAMS`]), e.g. for BPF_PROG_TEST_RUN.
    pub fn program(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        self.programs.get(name)
    }

    /// Turns the classifiers' flow cache on or off (on after [`Datapath::load`]): off, every
    /// packet takes the full path, as the benchmarks measure it.
    pub fn set_flow_cache(&mut self, on: bool) -> Result<()> {
        self.maps.set_flow_cache(on)
    }
}
