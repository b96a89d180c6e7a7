//! The manifests of `deploy/`, read as the cluster would read them: every Kubernetes document
//! with the file it is in, by kind, and the DaemonSets by name. Tests read these files, never
//! copies of them.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use serde_json::Value;

/// The `deploy/` directory.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The documents of one YAML file.
pub fn file(name: &str) -> Vec<Value> {
    let path = dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut reader = std::io::Cursor::new(text.as_bytes());
    serde_saphyr::read_with_options::<_, Value>(&mut reader, netpol_agent::source::manifests::yaml_options()).map(|d| d.unwrap_or_else(|e| panic!("{}: {e}", path.display()))).collect()
}

/// Every Kubernetes document under `deploy/` (kind's cluster configuration is not one), with
/// its file.
pub fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("deploy/")
        .map(|e| e.expect("a deploy/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let name = path.file_name().and_then(|n| n.to_str()).expect("a file name").to_string();
        for value in file(&name) {
            if !value.is_null() && !value["apiVersion"].as_str().is_some_and(|v| v.starts_with("kind.x-k8s.io/")) {
                out.push((path.display().to_string(), value));
            }
        }
    }
    out
}

/// Every document of `kind`, as its type.
pub fn of_kind<T: serde::de::DeserializeOwned>(kind: &str) -> Vec<T> {
    documents()
        .into_iter()
        .filter(|(_, v)| v["kind"] == kind)
        .map(|(file, v)| serde_json::from_value(v).unwrap_or_else(|e| panic!("{file}: not a valid {kind}: {e}")))
        .collect()
}

/// The DaemonSet `name`.
pub fn daemonset(name: &str) -> DaemonSet {
    of_kind::<DaemonSet>("DaemonSet").into_iter().find(|d| d.metadata.name.as_deref() == Some(name)).unwrap_or_else(|| panic!("no DaemonSet {name}"))
}
