//! Where pins can outlive the agent: the node's bpffs.
//!
//! A bpffs instance lives as long as some mount of it does. One that the agent mounted inside a
//! mount namespace of its own (`ip netns exec`, which gives the command a new mount namespace
//! with a fresh `/sys`; a container whose `/sys/fs/bpf` is not the node's) dies with that
//! namespace, and every pin in it: TCX links are then released and enforcement stops with the
//! agent. So the agent pins only where the node's bpffs is, and refuses otherwise (unless told
//! that pins may die with it, [`PinScope::Ephemeral`]). [`resolve`] finds the node's bpffs:
//!
//! 1. The pin path's own file system, when it is a bpffs and, seen from the agent, the same
//!    instance as at that path in PID 1's mount namespace (or the agent cannot tell: PID 1 is in
//!    its own mount namespace, as in a container without the host's PID namespace, where the
//!    DaemonSet's hostPath volume is what makes it the node's).
//! 2. Otherwise, when the agent runs in another mount namespace than PID 1 (the host's PID
//!    namespace: `ip netns exec`, `nsenter`, a container with `hostPID`), the same path under
//!    `/proc/1/root`, when a bpffs is there: the node's, reached across the namespaces. Where PID
//!    1 cannot be inspected (a sandbox that hides it), the nearest ancestor process in another
//!    mount namespace stands for it. The directory is opened once and every pin made through
//!    `/proc/self/fd/N`, so the path stays valid whatever becomes of that process.
//! 3. Otherwise none: an error that says what to do.
//!
//! [`mount_bpffs`] mounts one for a node that lacks it (the DaemonSet's init container, with
//! `Bidirectional` mount propagation, as Cilium does).

use std::{
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

/// `BPF_FS_MAGIC` from `include/uapi/linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether pins must outlive the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinScope {
    /// Only on the node's bpffs (the default): enforcement outlives the agent.
    Node,
    /// Also on a bpffs of the agent's own mount namespace, mounted if needed: enforcement stops
    /// when that namespace ends (`--ephemeral-pins`).
    Ephemeral,
}

/// How the pin path was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// At the path given: the node's bpffs is mounted in the agent's own mount namespace.
    Direct,
    /// Through another process's view (`/proc/PID/root`, held open): the agent's mount
    /// namespace has no bpffs there, the node's has.
    NodeView {
        /// The process whose view it is (PID 1, or an ancestor of the agent).
        pid: u32,
    },
    /// On a bpffs of the agent's own mount namespace only ([`PinScope::Ephemeral`]).
    Ephemeral,
}

/// The pin path to use, how it was reached, and what keeps it reachable.
#[derive(Debug)]
pub struct PinLocation {
    /// The path to pin under: the one given, or `/proc/self/fd/N/...` below the node's view of
    /// its nearest existing directory.
    pub path: PathBuf,
    /// How it was found.
    pub reach: Reach,
    /// The node's directory, held open for the life of the location: `path` goes through it,
    /// so it stays valid when the process whose view it was ends.
    _anchor: Option<std::fs::File>,
}

/// Why no pin path could be used.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    /// The pin path is not absolute.
    #[error("pin path {0} is not absolute")]
    Relative(PathBuf),
    /// Inspecting a path failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// No bpffs of the node holds the pin path.
    #[error(
        "no bpffs of the node at {dir}: pins made here would die with this process's mount namespace, and enforcement with them. \
         Mount one on the node (`mount -t bpf bpf /sys/fs/bpf`; systemd does it on most distributions; in Kubernetes the \
         DaemonSet's mount-bpffs init container does it, with Bidirectional mount propagation), or pass --ephemeral-pins to \
         accept that enforcement stops when the agent does"
    )]
    NoNodeBpffs {
        /// The directory that should be on the node's bpffs.
        dir: PathBuf,
    },
    /// Mounting a bpffs failed.
    #[error("mount bpffs on {path}: {source}")]
    Mount {
        /// Where.
        path: PathBuf,
        /// Cause.
        source: nix::Error,
    },
    /// A bpffs is there, but of this mount namespace only: the node's view has none.
    #[error("{dir} is a bpffs of this mount namespace only, not the node's: pins there would die with it (pass --ephemeral-pins to accept that)")]
    Private {
        /// The directory.
        dir: PathBuf,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, BpffsError>;

/// The nearest existing directory at or above `path`.
pub fn existing_ancestor(path: &Path) -> &Path {
    let mut dir = path;
    while !dir.exists() {
        match dir.parent() {
            Some(parent) => dir = parent,
            None => return Path::new("/"),
        }
    }
    dir
}

/// Whether `path` lies on a bpffs (false when it cannot be inspected).
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|fs| fs.filesystem_type().0 == BPF_FS_MAGIC)
}

/// The mount namespace of process `pid` (`self` for this one): its nsfs (device, inode), when it
/// can be read.
fn mount_namespace(pid: &str) -> Option<(u64, u64)> {
    std::fs::metadata(format!("/proc/{pid}/ns/mnt")).ok().map(|m| (m.dev(), m.ino()))
}

/// The parent of process `pid`, from `/proc/PID/stat` (the field after the command's `)`).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// The process whose view of the file system stands for the node's, when it is not this
/// process's: PID 1 (the host's PID namespace: `ip netns exec`, `nsenter`, a container with
/// `hostPID`), else the nearest ancestor that sees another mount namespace (where PID 1 cannot
/// be inspected). `None` when every process this one can inspect shares its mount namespace
/// (a container without the host's PID namespace: its hostPath volumes are the node's).
fn node_view() -> Option<u32> {
    let own = mount_namespace("self")?;
    let mut candidates = vec![1];
    let mut pid = std::process::id();
    while let Some(parent) = parent_of(pid).filter(|p| *p > 1 && !candidates.contains(p)) {
        candidates.push(parent);
        pid = parent;
    }
    candidates.into_iter().find(|pid| mount_namespace(&pid.to_string()).is_some_and(|ns| ns != own))
}

/// `path` as process `pid` sees it: under `/proc/PID/root`.
fn seen_by(pid: u32, path: &Path) -> PathBuf {
    Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path))
}

/// Finds where to pin `pin_path` so that the pins outlive the agent (see the module's doc); with
/// [`PinScope::Ephemeral`], falls back to a bpffs of this mount namespace, mounting one on the
/// nearest existing directory of the pin path if needed.
pub fn resolve(pin_path: &Path, scope: PinScope) -> Result<PinLocation> {
    if !pin_path.is_absolute() {
        return Err(BpffsError::Relative(pin_path.to_path_buf()));
    }
    let dir = existing_ancestor(pin_path);
    let own = is_bpffs(dir);
    let view = node_view().map(|pid| (pid, seen_by(pid, dir)));
    let direct = || PinLocation { path: pin_path.to_path_buf(), reach: Reach::Direct, _anchor: None };
    let ephemeral = || PinLocation { reach: Reach::Ephemeral, ..direct() };
    match view {
        // One mount namespace as far as this process can tell: the hostPath volume (or the host
        // itself) makes it the node's.
        None if own => Ok(direct()),
        Some((pid, node_dir)) if is_bpffs(&node_dir) => {
            let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).map_err(|source| BpffsError::Io { op: "stat", path: p.to_path_buf(), source });
            if own && dev(dir)? == dev(&node_dir)? {
                return Ok(direct());
            }
            // This namespace has no bpffs there, or one of its own hiding the node's: pin
            // through the node's view, held open.
            let anchor = std::fs::File::open(&node_dir).map_err(|source| BpffsError::Io { op: "open", path: node_dir.clone(), source })?;
            let rest = pin_path.strip_prefix(dir).unwrap_or(Path::new(""));
            let path = Path::new(&format!("/proc/self/fd/{}", anchor.as_raw_fd())).join(rest);
            Ok(PinLocation { path, reach: Reach::NodeView { pid }, _anchor: Some(anchor) })
        }
        Some(_) if own && scope == PinScope::Ephemeral => Ok(ephemeral()),
        Some(_) if own => Err(BpffsError::Private { dir: dir.to_path_buf() }),
        _ if scope == PinScope::Ephemeral => {
            mount_bpffs(dir)?;
            Ok(ephemeral())
        }
        _ => Err(BpffsError::NoNodeBpffs { dir: dir.to_path_buf() }),
    }
}

/// Mounts a bpffs on `dir` unless one is there; `Ok(true)` when it mounted one. In the
/// DaemonSet's init container (privileged, the node's `/sys/fs/bpf` with `Bidirectional`
/// propagation) the mount reaches the node and outlives the container.
pub fn mount_bpffs(dir: &Path) -> Result<bool> {
    if is_bpffs(dir) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).map_err(|source| BpffsError::Io { op: "create", path: dir.to_path_buf(), source })?;
    nix::mount::mount(Some("bpffs"), dir, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|source| BpffsError::Mount { path: dir.to_path_buf(), source })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_seen_from_another_process_under_its_root() {
        assert_eq!(seen_by(1, Path::new("/sys/fs/bpf/netpol")), PathBuf::from("/proc/1/root/sys/fs/bpf/netpol"));
    }

    #[test]
    fn the_nearest_existing_directory_of_a_pin_path_is_found() {
        let missing = std::env::temp_dir().join("netpol-bpffs-test-missing/a/b");
        assert_eq!(existing_ancestor(&missing), std::env::temp_dir());
    }

    #[test]
    fn the_parent_of_this_process_is_read_from_proc() {
        assert_eq!(parent_of(std::process::id()), Some(std::os::unix::process::parent_id()));
    }

    #[test]
    fn a_relative_pin_path_is_refused() {
        assert!(matches!(resolve(Path::new("netpol"), PinScope::Node), Err(BpffsError::Relative(_))));
    }

    #[test]
    fn a_pin_path_on_no_bpffs_anywhere_is_refused_with_what_to_do() {
        // The temporary directory is a bpffs in no process's view.
        let err = resolve(&std::env::temp_dir().join("netpol-pins"), PinScope::Node).expect_err("refused");
        let text = err.to_string();
        assert!(matches!(err, BpffsError::NoNodeBpffs { .. }), "{text}");
        assert!(text.contains("mount -t bpf bpf /sys/fs/bpf") && text.contains("--ephemeral-pins"), "{text}");
    }
}
