//! The `--manifests DIR` source: YAML (and JSON) files under a directory.
use std::path::{Path, PathBuf};

/// Every manifest file under `dir` (recursively: `.yaml`, `.yml`, `.json`), sorted by path.
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push(path);
            } else if is_manifest(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn is_manifest(path: &Path) -> bool {
    let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
    !hidden && matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

/// A digest of the manifest directory's content: FNV-1a (64 bit) over each manifest file's path
/// relative to `dir`, a zero byte, its content and a zero byte, in path order, as 16 hex digits.
/// The agent reports the digest of the content it last applied in its status file, so a tool
/// that wrote the directory knows when its change is enforced.
pub fn digest_dir(dir: &Path) -> std::io::Result<String> {
    let mut digest = Digest::new();
    for path in manifest_files(dir)? {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        digest.file(path.strip_prefix(dir).unwrap_or(&path), &bytes);
    }
    Ok(digest.finish())
}

/// The running FNV-1a digest of [`digest_dir`].
struct Digest(u64);

impl Digest {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn file(&mut self, rel: &Path, bytes: &[u8]) {
        for chunk in [rel.to_string_lossy().as_bytes(), &[0], bytes, &[0]] {
            for b in chunk {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }

    fn finish(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// What a manifest directory holds: the snapshot, what was wrong, and the digest of the bytes
/// that were read (see [`digest_dir`]).
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// The cluster state.
    pub state: crate::model::ClusterState,
    /// Objects left out, with the reason.
    pub problems: Vec<crate::model::Problem>,
    /// Digest of the content read.
    pub digest: String,
}

/// The namespace of objects that name none, as the API server would put them.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Reads every manifest under `dir` (recursively; several documents per file; JSON too) into a
/// snapshot. Bad files and objects are reported and skipped; everything else is kept. Only an
/// unreadable directory is an error.
pub fn load_dir(dir: &Path) -> std::io::Result<Loaded> {
    let mut files = Vec::new();
    for path in manifest_files(dir)? {
        match std::fs::read(&path) {
            Ok(bytes) => files.push((path, bytes)),
            // A file deleted between listing and reading is simply gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let mut digest = Digest::new();
    let mut loaded = Loaded::default();
    let mut seen = std::collections::BTreeSet::new();
    for (path, bytes) in &files {
        let rel = path.strip_prefix(dir).unwrap_or(path);
        digest.file(rel, bytes);
        let text = String::from_utf8_lossy(bytes);
        load_documents(&text, &rel.display().to_string(), &mut loaded, &mut seen);
    }
    loaded.digest = digest.finish();
    Ok(loaded)
}

/// Parses the YAML documents of one file into `loaded`.
pub fn load_documents(text: &str, file: &str, loaded: &mut Loaded, seen: &mut std::collections::BTreeSet<(String, String, String)>) {
    use serde::Deserialize as _;

    use crate::model::Problem;
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                loaded.problems.push(Problem { object: format!("{file} (document {})", i + 1), reason: format!("malformed YAML: {e}") });
                // The YAML stream cannot be resynchronised after a syntax error.
                return;
            }
        };
        if value.is_null() {
            continue;
        }
        let items = match value.get("kind").and_then(|k| k.as_str()) {
            Some(k) if k.ends_with("List") => value.get("items").and_then(|i| i.as_sequence()).cloned().unwrap_or_default(),
            _ => vec![value],
        };
        for item in items {
            add_object(item, &format!("{file} (document {})", i + 1), loaded, seen);
        }
    }
}

fn add_object(value: serde_yaml::Value, at: &str, loaded: &mut Loaded, seen: &mut std::collections::BTreeSet<(String, String, String)>) {
    use k8s_openapi::api::{
        core::v1::{Namespace, Pod},
        networking::v1::NetworkPolicy,
    };

    use crate::model::{namespace_from_k8s, pod_from_k8s, policy_from_k8s, Problem};

    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
    let name = value.get("metadata").and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or("?").to_string();
    let namespace = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .unwrap_or(DEFAULT_NAMESPACE)
        .to_string();
    let object = if kind == "Namespace" { format!("Namespace {name}") } else { format!("{kind} {namespace}/{name}") };
    let problem = |reason: String| Problem { object: object.clone(), reason: format!("{reason} (in {at})") };
    if !matches!(kind.as_str(), "Namespace" | "Pod" | "NetworkPolicy") {
        // Other kinds (Deployments, Services, ...) may share the directory; they are not ours.
        return;
    }
    let key = (kind.clone(), if kind == "Namespace" { String::new() } else { namespace.clone() }, name.clone());
    if !seen.insert(key) {
        loaded.problems.push(problem("duplicate object: defined more than once; the first definition is used".into()));
        return;
    }
    match kind.as_str() {
        "Namespace" => match serde_yaml::from_value::<Namespace>(value).map_err(|e| problem(format!("invalid Namespace: {e}"))) {
            Ok(ns) => match namespace_from_k8s(&ns) {
                Ok(ns) => {
                    loaded.state.namespaces.insert(ns.name.clone(), ns);
                }
                Err(p) => loaded.problems.push(p),
            },
            Err(p) => loaded.problems.push(p),
        },
        "Pod" => match serde_yaml::from_value::<Pod>(value).map_err(|e| problem(format!("invalid Pod: {e}"))) {
            Ok(pod) => match pod_from_k8s(&pod, DEFAULT_NAMESPACE) {
                Ok(Some(pod)) => {
                    loaded.state.pods.insert(pod.id.clone(), pod);
                }
                Ok(None) => {}
                Err(p) => loaded.problems.push(p),
            },
            Err(p) => loaded.problems.push(p),
        },
        _ => match serde_yaml::from_value::<NetworkPolicy>(value).map_err(|e| problem(format!("invalid NetworkPolicy: {e}"))) {
            Ok(np) => match policy_from_k8s(&np, DEFAULT_NAMESPACE) {
                Ok(policy) => {
                    loaded.state.policies.insert(policy.id.clone(), policy);
                }
                Err(mut p) => {
                    p.reason = format!("{} (in {at})", p.reason);
                    loaded.problems.push(p);
                }
            },
            Err(p) => loaded.problems.push(p),
        },
    }
}
