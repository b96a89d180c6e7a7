//! Writing the manifests the agent reads: Namespaces, Pods (with addresses, node and named
//! ports), and policies. Files are replaced atomically (written hidden, then renamed), so the
//! agent never reads half a file.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use netpol_testkit::objects::{namespace_json, pod};

/// A pod as the manifests describe it.
#[derive(Clone, Debug)]
pub struct PodManifest {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// `spec.nodeName`.
    pub node: String,
    /// `status.podIPs`.
    pub ips: Vec<IpAddr>,
    /// Named container ports: (name, number, protocol).
    pub ports: Vec<(String, u16, String)>,
}

/// A manifest directory the test owns, removed on drop.
pub struct ManifestDir {
    /// The directory.
    pub path: PathBuf,
}

impl ManifestDir {
    /// A new, empty, uniquely named directory.
    pub fn new() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(crate::netns::unique("netpol-manifests-"));
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self { path })
    }

    /// Writes (or replaces) `name` with `text`, atomically.
    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let tmp = self.path.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, self.path.join(name)).with_context(|| format!("rename into {name}"))
    }

    /// Removes `name`.
    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        std::fs::remove_file(self.path.join(name)).with_context(|| format!("remove {name}"))
    }

    /// Writes the namespaces and pods (replacing the previous ones).
    pub fn write_cluster(&self, namespaces: &BTreeMap<String, BTreeMap<String, String>>, pods: &[PodManifest]) -> anyhow::Result<()> {
        let mut docs = Vec::new();
        for (name, labels) in namespaces {
            docs.push(namespace_json(name, labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
        }
        for p in pods {
            let mut b = pod(&p.namespace, &p.name).node(&p.node).phase("Running");
            for (k, v) in &p.labels {
                b = b.label(k, v);
            }
            for ip in &p.ips {
                b = b.ip(&ip.to_string());
            }
            for (name, port, proto) in &p.ports {
                b = b.port(name, *port, proto);
            }
            docs.push(b.json());
        }
        let text = docs.iter().map(|d| serde_json::to_string_pretty(d).unwrap_or_default()).collect::<Vec<_>>().join("\n---\n");
        self.write("cluster.yaml", &text)
    }

    /// Writes the policies (YAML documents), replacing the previous ones.
    pub fn write_policies(&self, policies: &[String]) -> anyhow::Result<()> {
        self.write("policies.yaml", &policies.join("\n---\n"))
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
