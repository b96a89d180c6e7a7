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
    Ok(parse_files(dir, &read_files(dir)?))
}

/// The manifest files under `dir` with their bytes, in [`manifest_files`] order.
pub fn read_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut files = Vec::new();
    for path in manifest_files(dir)? {
        match std::fs::read(&path) {
            Ok(bytes) => files.push((path, bytes)),
            // A file deleted between listing and reading is simply gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(files)
}

/// Parses files read from `dir` into a snapshot with their digest.
pub fn parse_files(dir: &Path, files: &[(PathBuf, Vec<u8>)]) -> Loaded {
    let mut digest = Digest::new();
    let mut loaded = Loaded::default();
    let mut seen = std::collections::BTreeSet::new();
    for (path, bytes) in files {
        let rel = path.strip_prefix(dir).unwrap_or(path);
        digest.file(rel, bytes);
        let text = String::from_utf8_lossy(bytes);
        load_documents(&text, &rel.display().to_string(), &mut loaded, &mut seen);
    }
    loaded.digest = digest.finish();
    loaded
}

/// How manifests are read: YAML 1.2 (only `true` and `false` are booleans, so a label value
/// `y` or `on` stays a string), with the parser's default limits on aliases and depth.
pub fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { strict_booleans: true }
}

/// One object of a manifest file as [`each_object`] yields it: the number (from 1) of the YAML
/// (or JSON) document it is in and its value, or the number of a document that is not YAML.
pub type ObjectItem = Result<(usize, serde_json::Value), (usize, serde_saphyr::Error)>;

/// Calls `visit` with each object of one manifest file, in order: each YAML (or JSON) document,
/// or the items of a `*List` document. One document is held at a time, so a file of ten
/// thousand pods costs one pod's tree, not ten thousand. Reading stops at a document that is not
/// YAML (a YAML stream cannot be resynchronised after a syntax error), after visiting its error.
pub fn each_object(text: &str, mut visit: impl FnMut(ObjectItem)) {
    let mut reader = std::io::Cursor::new(text.as_bytes());
    for (i, doc) in serde_saphyr::read_with_options::<_, serde_json::Value>(&mut reader, yaml_options()).enumerate() {
        let number = i + 1;
        let mut value = match doc {
            Ok(v) => v,
            Err(e) => {
                visit(Err((number, e)));
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        match value.get("kind").and_then(serde_json::Value::as_str) {
            Some(k) if k.ends_with("List") => {
                let items = match value.get_mut("items").map(serde_json::Value::take) {
                    Some(serde_json::Value::Array(items)) => items,
                    _ => Vec::new(),
                };
                for item in items {
                    visit(Ok((number, item)));
                }
            }
            _ => visit(Ok((number, value))),
        }
    }
}

/// Parses the YAML documents of one file into `loaded`.
pub fn load_documents(text: &str, file: &str, loaded: &mut Loaded, seen: &mut std::collections::BTreeSet<(String, String, String)>) {
    use crate::model::Problem;
    each_object(text, |object| {
        match object {
            Ok((number, item)) => add_object(item, &format!("{file} (document {number})"), loaded, seen),
            Err((number, e)) => {
                loaded.problems.push(Problem { object: format!("{file} (document {number})"), reason: format!("malformed YAML: {e}") });
            }
        }
    });
}

fn add_object(value: serde_json::Value, at: &str, loaded: &mut Loaded, seen: &mut std::collections::BTreeSet<(String, String, String)>) {
    use k8s_openapi::api::{
        core::v1::Pod,
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
    // The object as its Kubernetes type, then converted; either failure is the object's problem.
    fn convert<K: serde::de::DeserializeOwned, T>(
        value: serde_json::Value,
        kind: &str,
        at: &str,
        problem: impl Fn(String) -> Problem,
        from_k8s: impl FnOnce(&K) -> Result<T, Problem>,
    ) -> Result<T, Problem> {
        let object = serde_json::from_value::<K>(value).map_err(|e| problem(format!("invalid {kind}: {e}")))?;
        from_k8s(&object).map_err(|mut p| {
            p.reason = format!("{} (in {at})", p.reason);
            p
        })
    }
    let added = match kind.as_str() {
        "Namespace" => convert(value, &kind, at, problem, namespace_from_k8s).map(|ns: crate::model::Namespace| {
            loaded.state.namespaces.insert(ns.name.clone(), ns);
        }),
        "Pod" => convert(value, &kind, at, problem, |p: &Pod| pod_from_k8s(p, DEFAULT_NAMESPACE)).map(|pod| {
            if let Some(pod) = pod {
                loaded.state.insert_pod(pod);
            }
        }),
        _ => convert(value, &kind, at, problem, |np: &NetworkPolicy| policy_from_k8s(np, DEFAULT_NAMESPACE)).map(|policy| {
            loaded.state.policies.insert(policy.id.clone(), policy);
        }),
    };
    if let Err(p) = added {
        loaded.problems.push(p);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A temporary manifest directory, removed when dropped.
    pub(crate) struct Dir(pub(crate) PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A temporary directory holding `files` (relative path, content).
    pub(crate) fn dir(files: &[(&str, &str)]) -> Dir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "netpol-manifests-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        for (name, text) in files {
            let path = d.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        Dir(d)
    }

    pub(crate) const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {team: a}}\n";
    pub(crate) const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {nodeName: n1, containers: [{name: c}]}\nstatus: {podIP: 198.18.0.10}\n";
    pub(crate) const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}}\n";

    #[test]
    fn several_documents_per_file_subdirectories_and_json_are_read() {
        let json = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"j","namespace":"x"},"spec":{"podSelector":{}}}"#;
        let d = dir(&[("a.yaml", &format!("{NS}---\n{POD}")), ("sub/deeper/p.yml", POLICY), ("q.json", json), ("notes.txt", "not: yaml: [")]);
        let l = load_dir(&d.0).unwrap();
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert_eq!(l.state.namespaces["x"].labels["team"], "a");
        assert_eq!(l.state.namespaces["x"].labels["kubernetes.io/metadata.name"], "x");
        assert_eq!(l.state.pods.len(), 1);
        assert_eq!(l.state.policies.len(), 2);
    }

    #[test]
    fn a_list_object_contributes_its_items() {
        let list = format!("apiVersion: v1\nkind: List\nitems:\n- {}\n", POLICY.replace('\n', "\n  ").trim_end());
        let d = dir(&[("list.yaml", &list)]);
        let l = load_dir(&d.0).unwrap();
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert_eq!(l.state.policies.len(), 1);
    }

    #[test]
    fn malformed_yaml_is_reported_with_its_file_and_the_other_files_still_count() {
        let d = dir(&[("bad.yaml", "kind: NetworkPolicy\nmetadata: {name: [unclosed\n"), ("good.yaml", POLICY)]);
        let l = load_dir(&d.0).unwrap();
        assert_eq!(l.state.policies.len(), 1);
        assert_eq!(l.problems.len(), 1);
        assert!(l.problems[0].object.contains("bad.yaml"), "{:?}", l.problems);
        assert!(l.problems[0].reason.contains("malformed YAML"), "{:?}", l.problems);
    }

    #[test]
    fn a_duplicate_object_is_reported_and_the_first_definition_kept() {
        let second = POLICY.replace("podSelector: {}", "podSelector: {matchLabels: {a: b}}");
        let d = dir(&[("1.yaml", POLICY), ("2.yaml", &second)]);
        let l = load_dir(&d.0).unwrap();
        assert_eq!(l.problems.len(), 1, "{:?}", l.problems);
        assert_eq!(l.problems[0].object, "NetworkPolicy x/p");
        assert!(l.problems[0].reason.contains("duplicate"));
        assert!(l.state.policies.values().next().unwrap().pod_selector.is_everything());
    }

    #[test]
    fn an_invalid_policy_is_left_out_with_its_name_and_reason_and_the_rest_is_kept() {
        let bad_cidr = POLICY.replace("name: p", "name: bad-cidr").replace("spec: {podSelector: {}}", "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/33}}]}]}");
        let bad_proto = POLICY.replace("name: p", "name: bad-proto").replace("spec: {podSelector: {}}", "spec: {podSelector: {}, ingress: [{ports: [{protocol: ICMP}]}]}");
        let d = dir(&[("p.yaml", &format!("{POLICY}---\n{bad_cidr}---\n{bad_proto}"))]);
        let l = load_dir(&d.0).unwrap();
        assert_eq!(l.state.policies.len(), 1);
        let objects: Vec<&str> = l.problems.iter().map(|p| p.object.as_str()).collect();
        assert_eq!(objects, ["NetworkPolicy x/bad-cidr", "NetworkPolicy x/bad-proto"]);
        assert!(l.problems[0].reason.contains("ipBlock.cidr"), "{}", l.problems[0].reason);
        assert!(l.problems[1].reason.contains("unknown protocol"), "{}", l.problems[1].reason);
    }

    #[test]
    fn objects_of_other_kinds_are_ignored_and_missing_namespaces_default() {
        let deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {}\n";
        let no_ns = POLICY.replace("namespace: x", "").replace("metadata: {name: p, }", "metadata: {name: p}");
        let d = dir(&[("d.yaml", deploy), ("p.yaml", &no_ns)]);
        let l = load_dir(&d.0).unwrap();
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert_eq!(l.state.policies.keys().next().unwrap().namespace, "default");
    }

    #[test]
    fn the_digest_changes_with_content_and_matches_digest_dir() {
        let d = dir(&[("p.yaml", POLICY)]);
        let first = load_dir(&d.0).unwrap().digest;
        assert_eq!(first, digest_dir(&d.0).unwrap());
        std::fs::write(d.0.join("p.yaml"), POLICY.replace("name: p", "name: q")).unwrap();
        let second = load_dir(&d.0).unwrap().digest;
        assert_ne!(first, second);
        assert_eq!(second, digest_dir(&d.0).unwrap());
    }
}
