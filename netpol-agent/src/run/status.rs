//! The `--status-file`: a JSON status written after each sync, from the sync's typed
//! [`SyncReport`] and what the source said it read. Its fields are a user interface (tests and
//! tools read them): names and shapes stay as documented in the README.

use std::{collections::BTreeMap, path::Path};

use crate::{
    model::Problem,
    source::Snapshot,
    telemetry::report::SyncReport,
};

/// What the agent reports after each sync.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Status {
    /// Digest of the manifest content applied (see `manifests::digest_dir`; manifest source).
    pub manifest_digest: String,
    /// The newest resourceVersion applied per resource (API source).
    pub resource_versions: BTreeMap<String, String>,
    /// Whether a complete state has been programmed.
    pub ready: bool,
    /// Syncs done since start.
    pub syncs: u64,
    /// Local pods (`namespace/name`) the manifests place on this node.
    pub local_pods: Vec<String>,
    /// Local pods whose veth carries the classifiers.
    pub attached: Vec<String>,
    /// Local pods enforced after this sync (endpoint entry written, classifiers linked), with
    /// their veth.
    pub enforcing: BTreeMap<String, String>,
    /// Objects left out, and why.
    pub problems: Vec<Problem>,
    /// Data-path failures of the last sync.
    pub errors: Vec<String>,
    /// Packets counted by the classifiers per local pod (`namespace/name`), direction
    /// (`ingress`: into the pod, `egress`: out of it) and reason (`netpol_common::Reason`
    /// names), only the non-zero ones; read after each sync.
    pub packets: BTreeMap<String, BTreeMap<String, BTreeMap<&'static str, u64>>>,
    /// Map entries: policy, ipcache, CIDR regions, endpoints.
    pub entries: BTreeMap<&'static str, usize>,
    /// Verdict events per local pod: `sent`, `suppressed` (rate limit), `lost` (ring buffer
    /// full); only pods with some.
    pub events: BTreeMap<String, BTreeMap<&'static str, u64>>,
    /// New flows each policy rule allowed (the rule the data path found first), keyed
    /// `namespace/policy ingress[i]` or `... egress[i]`; only rules with hits.
    pub policy_hits: BTreeMap<String, u64>,
}

impl Status {
    /// The status after a sync of `snapshot` that did what `report` says; `syncs` counts it.
    pub fn new(snapshot: &Snapshot, report: &SyncReport, syncs: u64) -> Self {
        Self {
            manifest_digest: snapshot.manifest_digest.clone(),
            resource_versions: snapshot.resource_versions.clone(),
            ready: true,
            syncs,
            local_pods: report.local_pods.iter().map(ToString::to_string).collect(),
            attached: report.attached.keys().map(ToString::to_string).collect(),
            enforcing: report.enforcing.iter().map(|(pod, iface)| (pod.to_string(), iface.clone())).collect(),
            problems: report.problems.clone(),
            errors: report.errors.iter().map(ToString::to_string).collect(),
            packets: report
                .packets
                .iter()
                .map(|(pod, directions)| {
                    let directions = directions
                        .iter()
                        .map(|(direction, reasons)| (direction.to_string(), reasons.iter().map(|(r, n)| (r.name(), *n)).collect()))
                        .collect();
                    (pod.to_string(), directions)
                })
                .collect(),
            entries: report.entries.by_name().into_iter().collect(),
            events: report
                .events
                .iter()
                .map(|(pod, e)| (pod.to_string(), BTreeMap::from([("sent", e.sent), ("suppressed", e.suppressed), ("lost", e.lost)])))
                .collect(),
            policy_hits: report.policy_hits.iter().map(|(rule, n)| (rule.to_string(), *n)).collect(),
        }
    }

    /// Writes the status to `path`, atomically (a reader never sees half of it).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, path)
    }
}
