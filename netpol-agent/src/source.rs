//! Where the cluster state comes from: a manifest directory or the Kubernetes API. Either
//! source hands the run loop the same [`Snapshot`], so there is one path from a snapshot to
//! the maps whatever the source.

use std::collections::BTreeMap;

use anyhow::Context as _;

use crate::{
    kube_source::KubeSource,
    manifests,
    model::{ClusterState, Problem},
};

/// One complete, typed view of the cluster.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The namespaces, pods and valid policies.
    pub state: ClusterState,
    /// Objects left out, and why.
    pub problems: Vec<Problem>,
    /// Digest of the manifest content read (manifest source only).
    pub manifest_digest: String,
    /// The newest resourceVersion applied per resource (API source only).
    pub resource_versions: BTreeMap<String, String>,
}

/// A source of snapshots.
pub enum Source {
    /// `--manifests DIR`: YAML and JSON files under a directory.
    Manifests(manifests::ManifestDir),
    /// The Kubernetes API, through watchers and reflector stores.
    Kube(KubeSource),
}

impl Source {
    /// The current snapshot, or `None` while the source cannot give a complete one yet (the API
    /// source before every resource has been listed once): nothing may be programmed then.
    pub fn snapshot(&self) -> anyhow::Result<Option<Snapshot>> {
        match self {
            Self::Manifests(dir) => {
                let loaded = dir.load().with_context(|| format!("read {}", dir.path().display()))?;
                Ok(Some(Snapshot {
                    state: loaded.state,
                    problems: loaded.problems,
                    manifest_digest: loaded.digest,
                    resource_versions: BTreeMap::new(),
                }))
            }
            Self::Kube(kube) => Ok(kube.snapshot()),
        }
    }

    /// A short description for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Manifests(dir) => format!("manifests {}", dir.path().display()),
            Self::Kube(_) => "kubernetes api".to_string(),
        }
    }
}
