//! A sandbox node's own file system, as a kind node has it: a mount namespace of the node's own
//! (entered with the node's network namespace), with `/` shared inside it, a fresh sysfs on
//! `/sys` with no bpffs mounted on `/sys/fs/bpf` (systemd skips it in a container), and
//! directories of the node's own where a kind node keeps its CNI set-up and runtime state
//! (`/opt`, `/etc/cni`, `/run`, each an empty tmpfs; the host's `/run/netns` stays visible so
//! that pod namespaces can be named). Mounts made inside (by a privileged container with
//! Bidirectional propagation) stay inside: the host's mounts propagate in, none propagate out.
//!
//! A process holds the namespace; dropping the [`NodeFs`] kills it, and with it every mount of
//! the node (its bpffs too, and every pin in that bpffs). Run everything that must end first
//! (containers) before dropping it.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::Context as _;

use crate::netns;

/// The holder's set-up, run by `sh` in a new mount namespace: the host's mounts become slaves
/// (they propagate in, nothing propagates out), then the node's own mounts, then `/` shared.
const SETUP: &str = r#"
set -eu
mount --make-rslave /
keep=$(mktemp -d /tmp/netpol-node-keep.XXXXXX)
mkdir "$keep/cgroup" "$keep/netns"
mount --rbind /sys/fs/cgroup "$keep/cgroup"
mount --rbind /run/netns "$keep/netns"
umount -l /sys
mount -t sysfs sysfs /sys
mount --move "$keep/cgroup" /sys/fs/cgroup
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir /run/netns
mount --move "$keep/netns" /run/netns
mount -t tmpfs -o mode=0755 tmpfs /opt
mount -t tmpfs -o mode=0755 tmpfs /etc/cni
rmdir "$keep/cgroup" "$keep/netns" "$keep"
mount --make-rshared /
echo ready
exec sleep infinity
"#;

/// A node's mount namespace, held open by a process of its own.
pub struct NodeFs {
    holder: Child,
    /// The node's network namespace (its name is the node's name).
    pub netns: String,
}

impl NodeFs {
    /// Makes the mount namespace of node `netns` (a network namespace the caller made).
    pub fn new(netns: &str) -> anyhow::Result<Self> {
        let mut holder = Command::new("nsenter")
            .arg(format!("--net={}", netns::path(netns)))
            .args(["unshare", "--mount", "--propagation", "unchanged", "sh", "-c", SETUP])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start the node's mount namespace holder")?;
        let stdout = holder.stdout.take().context("holder stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).context("read the holder's first line")?;
        if line.trim() != "ready" {
            let _ = holder.kill();
            let out = holder.wait_with_output().context("wait for the holder")?;
            anyhow::bail!("the node's mount namespace set-up failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(Self { holder, netns: netns.to_string() })
    }

    /// The pid of the process that holds the node's namespaces (an `nsenter` target).
    pub fn holder_pid(&self) -> u32 {
        self.holder.id()
    }

    /// `program` to run inside the node: its mount and network namespaces.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t").arg(self.holder.id().to_string()).args(["-m", "-n", "--"]).arg(program);
        cmd
    }

    /// Runs `program` with `args` inside the node; its standard output, or an error with its
    /// standard error.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command(program).args(args).stdin(Stdio::null()).output().with_context(|| format!("run {program} in the node"))?;
        anyhow::ensure!(out.status.success(), "{program} {} in the node: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The path at which this process reaches the node's `path` (through the holder's root).
    pub fn path(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        PathBuf::from(format!("/proc/{}/root", self.holder.id())).join(path.strip_prefix("/").unwrap_or(path))
    }

    /// Whether the node has a bpffs mounted on `path`.
    pub fn is_bpffs(&self, path: impl AsRef<Path>) -> bool {
        nix::sys::statfs::statfs(&self.path(path)).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
    }
}

impl Drop for NodeFs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
