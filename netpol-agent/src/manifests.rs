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
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for path in manifest_files(dir)? {
        let rel = path.strip_prefix(dir).unwrap_or(&path);
        feed(rel.to_string_lossy().as_bytes());
        feed(&[0]);
        feed(&std::fs::read(&path)?);
        feed(&[0]);
    }
    Ok(format!("{hash:016x}"))
}
