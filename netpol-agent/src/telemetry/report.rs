//! What one sync did and found, typed: the run loop makes a [`SyncReport`] after every sync that
//! programmed a complete state; the metrics read it, and so does the status file.

use std::collections::{BTreeMap, BTreeSet};

use netpol_common::Reason;

use crate::{
    compile::RuleRef,
    datapath::{ApplyError, EventCounts},
    model::{Direction, ObjectRef, Problem},
};

/// Entries programmed into each data-path map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapEntries {
    /// The three policy maps together.
    pub policy: usize,
    /// Exact peer addresses.
    pub ipcache: usize,
    /// ipBlock regions.
    pub cidrs: usize,
    /// Local endpoints with an interface.
    pub endpoints: usize,
}

impl MapEntries {
    /// Each count with the map's name, as the metrics and the status file label them.
    pub fn by_name(&self) -> [(&'static str, usize); 4] {
        [("policy", self.policy), ("ipcache", self.ipcache), ("cidrs", self.cidrs), ("endpoints", self.endpoints)]
    }
}

/// Packets one local pod's classifiers counted, per direction and reason (non-zero only).
pub type PodPackets = BTreeMap<Direction, BTreeMap<Reason, u64>>;

/// One sync's outcome.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Local pods of the compiled state.
    pub local_pods: BTreeSet<ObjectRef>,
    /// Local pods whose veth was found, with its name.
    pub attached: BTreeMap<ObjectRef, String>,
    /// Local pods enforced after this sync (endpoint entry written, classifiers linked), with
    /// their veth's name.
    pub enforcing: BTreeMap<ObjectRef, String>,
    /// Objects left out of the snapshot, and why.
    pub problems: Vec<Problem>,
    /// Data-path failures of this sync.
    pub errors: Vec<ApplyError>,
    /// Map entries.
    pub entries: MapEntries,
    /// Packets counted per attached local pod.
    pub packets: BTreeMap<ObjectRef, PodPackets>,
    /// Verdict events per attached local pod (only pods with some).
    pub events: BTreeMap<ObjectRef, EventCounts>,
    /// New flows each policy rule allowed (only rules with hits).
    pub policy_hits: BTreeMap<RuleRef, u64>,
}
