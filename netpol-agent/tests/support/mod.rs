//! What the BPF_PROG_TEST_RUN tests share: the classifier's two verdicts as test_run returns
//! them, and a pin directory that is removed however the test ends.

use std::path::PathBuf;

/// TC_ACT_UNSPEC (-1): on to the next program, the packet passes.
pub const ALLOW: u32 = u32::MAX;
/// TC_ACT_SHOT: dropped.
pub const DROP: u32 = 2;

/// A pin directory removed on drop, also when loading fails.
pub struct PinDir(pub PathBuf);

impl PinDir {
    /// `/sys/fs/bpf/NAME`, with a bpffs mounted on `/sys/fs/bpf` if the host has none (the agent
    /// pins only on a bpffs and never mounts one itself).
    pub fn new(name: &str) -> Self {
        netpol_agent::datapath::bpffs::mount_bpffs(std::path::Path::new("/sys/fs/bpf")).expect("a bpffs on /sys/fs/bpf");
        Self(PathBuf::from("/sys/fs/bpf").join(name))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
