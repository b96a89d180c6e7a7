//! Where the cluster state comes from: a manifest directory or the Kubernetes API. Either
//! source hands the run loop the same [`Snapshot`], so there is one path from a snapshot to
//! the maps whatever the source.

pub mod kube;
pub mod manifests;

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};


use crate::{
    source::kube::KubeSource,

    model::{ClusterState, Problem},

};

/// Why a source could not give a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The manifest directory could not be read.
    #[error("read {dir}: {source}")]
    Read {
        /// The directory.
        dir: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The API server refused or failed a list.
    #[error("list {resource}: {source}")]
    List {
        /// The resource.
        resource: &'static str,
        /// Cause.
        source: Box<::kube::Error>,
    },
}

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
    Manifests(ManifestDir),
    /// The Kubernetes API, through watchers and reflector stores.
    Kube(KubeSource),
}

/// A manifest file and the SHA-256 of its bytes.
type FileHash = (PathBuf, [u8; 32]);

/// `--manifests DIR`: a manifest directory read again on every sync, parsed only when its files
/// changed: the agent's periodic resync of an unchanged directory (thousands of pods) reads and
/// hashes bytes instead of parsing YAML, and shares the snapshot it made last instead of copying
/// it. Written and read by the agent's sync loop.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    /// Each file of the last read with the SHA-256 of its bytes, and what they parsed into.
    last: LastSnapshot<Vec<FileHash>>,
}

impl ManifestDir {
    /// A directory not read yet.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, last: LastSnapshot::default() }
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.dir
    }

    /// What the directory holds now, as [`manifests::load_dir`] would read it; parsed again only
    /// if a file was added, removed or changed since the last call (SHA-256 of its bytes).
    pub fn load(&self) -> std::io::Result<Arc<Snapshot>> {
        let files = manifests::read_files(&self.dir)?;
        let hashes: Vec<FileHash> = files
            .iter()
            .map(|(path, bytes)| {
                let mut hash = [0u8; 32];
                hash.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
                (path.clone(), hash)
            })
            .collect();
        Ok(self.last.get_or_make(hashes, || {
            let loaded = manifests::parse_files(&self.dir, &files);
            Snapshot { state: loaded.state, problems: loaded.problems, manifest_digest: loaded.digest, resource_versions: BTreeMap::new() }
        }))
    }
}

/// The snapshot a source made last and the key it was made under (what the source read: file
/// hashes, resourceVersions), so that a resync with nothing changed shares it instead of
/// making it again. Written and read by the source's `snapshot`.
#[derive(Debug)]
pub(crate) struct LastSnapshot<K>(std::sync::Mutex<Option<(K, Arc<Snapshot>)>>);

impl<K> Default for LastSnapshot<K> {
    fn default() -> Self {
        Self(std::sync::Mutex::new(None))
    }
}

impl<K: PartialEq> LastSnapshot<K> {
    /// The last snapshot if it was made under `key`; otherwise `make`'s, remembered under `key`.
    pub(crate) fn get_or_make(&self, key: K, make: impl FnOnce() -> Snapshot) -> Arc<Snapshot> {
        // A poisoned lock means `make` panicked on another thread; what is stored was stored
        // whole before it.
        let mut last = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, snapshot)) = last.as_ref().filter(|(k, _)| *k == key) {
            return snapshot.clone();
        }
        let snapshot = Arc::new(make());
        *last = Some((key, snapshot.clone()));
        snapshot
    }
}

impl Source {
    /// The current snapshot (shared with the source, which hands out the same one until
    /// something changes), or `None` while the source cannot give a complete one yet (the API
    /// source before every resource has been listed once): nothing may be programmed then.
    pub fn snapshot(&self) -> Result<Option<Arc<Snapshot>>, SourceError> {
        match self {
            Self::Manifests(dir) => {
                let loaded = dir.load().map_err(|source| SourceError::Read { dir: dir.path().to_path_buf(), source })?;
                Ok(Some(loaded))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::manifests::tests::{dir, NS, POD, POLICY};

    #[test]
    fn a_manifest_dir_sees_every_change_and_gives_what_load_dir_gives() {
        let d = dir(&[("a.yaml", &format!("{NS}---\n{POD}")), ("p.yaml", POLICY)]);
        let md = ManifestDir::new(d.0.clone());
        let names = |l: &Snapshot| l.state.policies.keys().map(|k| k.name.clone()).collect::<Vec<_>>();
        let first = md.load().unwrap();
        assert_eq!(names(&first), ["p"]);
        assert!(std::sync::Arc::ptr_eq(&md.load().unwrap(), &first), "unchanged files parsed again");
        // Same length, one byte different: the name changes from p to q.
        std::fs::write(d.0.join("p.yaml"), POLICY.replace("name: p", "name: q")).unwrap();
        let renamed = md.load().unwrap();
        assert!(!std::sync::Arc::ptr_eq(&renamed, &first));
        assert_eq!(names(&renamed), ["q"]);
        assert_eq!(renamed.manifest_digest, manifests::load_dir(&d.0).unwrap().digest);
        std::fs::write(d.0.join("r.yaml"), POLICY.replace("name: p", "name: r")).unwrap();
        assert_eq!(names(&md.load().unwrap()), ["q", "r"]);
        std::fs::remove_file(d.0.join("p.yaml")).unwrap();
        let last = md.load().unwrap();
        assert_eq!(names(&last), ["r"]);
        assert_eq!(last.state.pods.len(), 1);
    }
}
