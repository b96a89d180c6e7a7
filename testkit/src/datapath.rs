//! The data-path fixture: the real classifiers loaded on a pin directory of their own (removed
//! however the test ends), a compiled state written into their maps for chosen local pods on
//! chosen interface indexes, and BPF_PROG_TEST_RUN on crafted frames ([`crate::frames`]),
//! with the verdict and the counters to assert on. Needs root.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use aya::programs::{TestRun, TestRunOptions};
use netpol_agent::{
    compile::{CompileOptions, Compiler, Desired},
    datapath::{Datapath, DatapathError, PodInterface, PROG_FROM_POD, PROG_TO_POD},
    model::{ClusterState, ObjectRef},
};
use netpol_common::Reason;

use crate::scenarios::load;

/// What BPF_PROG_TEST_RUN returns for a packet that goes on (TC_ACT_UNSPEC, -1: the next
/// program on the hook).
pub const ALLOW: u32 = u32::MAX;
/// What it returns for a dropped packet (TC_ACT_SHOT).
pub const DROP: u32 = 2;

/// Whether this process may load eBPF and make namespaces (root); says why when it may not.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: needs root (eBPF, network namespaces)");
    }
    root
}

/// The host's `/sys/fs/bpf`, with a bpffs mounted there if it has none (as systemd does on most
/// hosts): the agent pins only on the node's bpffs and never mounts one itself.
pub fn host_bpffs() -> Result<PathBuf, std::io::Error> {
    let dir = PathBuf::from("/sys/fs/bpf");
    netpol_agent::datapath::bpffs::mount_bpffs(&dir).map_err(std::io::Error::other)?;
    Ok(dir)
}

/// A pin directory on the host's bpffs, unique to this process and call, removed on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    /// `/sys/fs/bpf/<prefix>-<pid>-<n>`.
    pub fn new(prefix: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = host_bpffs().expect("a bpffs on /sys/fs/bpf");
        Self(dir.join(format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loaded data path on a pin directory of its own (declared after the data path, so that the
/// maps are closed before the pins are removed).
pub struct DataPath {
    /// The data path.
    pub dp: Datapath,
    pin: PinDir,
}

impl DataPath {
    /// Loads the classifiers under a new pin directory; `None` (saying why) without root.
    pub fn load(prefix: &str) -> Option<Self> {
        if !privileged() {
            return None;
        }
        Some(Self::load_at(PinDir::new(prefix)).expect("the classifiers load and pass the verifier"))
    }

    /// Loads the classifiers under `pin` (removed when loading fails, too).
    pub fn load_at(pin: PinDir) -> Result<Self, DatapathError> {
        Ok(Self { dp: Datapath::load(&pin.0)?, pin })
    }

    /// The pin directory.
    pub fn pin_path(&self) -> &Path {
        &self.pin.0
    }

    /// Compiles `state` for node `node` and writes the maps for the local pods at the given
    /// interface indexes (BPF_PROG_TEST_RUN runs on ifindex 1); the compiled state.
    pub fn program(&mut self, state: &ClusterState, node: &str, locals: &[(ObjectRef, u32)]) -> Desired {
        let desired = Compiler::new().compile(state, &CompileOptions { node: node.into(), host_ips: vec![], allow_host: false });
        self.apply(&desired, locals);
        desired
    }

    /// [`DataPath::program`] for manifests text (node `n1`), which must load cleanly.
    pub fn program_yaml(&mut self, yaml: &str, locals: &[((&str, &str), u32)]) -> Desired {
        let loaded = load(yaml);
        assert!(loaded.problems.is_empty(), "fixture problems: {:?}", loaded.problems);
        let locals: Vec<(ObjectRef, u32)> = locals.iter().map(|((ns, name), i)| (ObjectRef::new(*ns, *name), *i)).collect();
        self.program(&loaded.state, crate::objects::NODE, &locals)
    }

    /// Writes `desired` into the maps for the local pods at the given interface indexes.
    pub fn apply(&mut self, desired: &Desired, locals: &[(ObjectRef, u32)]) {
        let interfaces: BTreeMap<ObjectRef, PodInterface> =
            locals.iter().map(|(pod, ifindex)| (pod.clone(), PodInterface { ifindex: *ifindex, name: format!("if{ifindex}") })).collect();
        let stats = self.dp.apply_maps(desired, &interfaces);
        assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    }

    /// Runs `program` on `frame`; its verdict.
    pub fn run(&mut self, program: &str, frame: &[u8]) -> u32 {
        self.run_timed(program, frame, 1).1
    }

    /// [`DataPath::run`] for frames the kernel may refuse to run (shorter than an Ethernet or
    /// an IP header).
    pub fn try_run(&mut self, program: &str, frame: &[u8]) -> Result<u32, aya::programs::ProgramError> {
        let prog = self.dp.program(program).expect("program");
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        Ok(prog.test_run(opts)?.return_value)
    }

    /// Runs a frame leaving the local pod (its egress policy).
    pub fn leaving_pod(&mut self, frame: &[u8]) -> u32 {
        self.run(PROG_FROM_POD, frame)
    }

    /// Runs a frame entering the local pod (its ingress policy).
    pub fn entering_pod(&mut self, frame: &[u8]) -> u32 {
        self.run(PROG_TO_POD, frame)
    }

    /// Runs `program` on `frame` `repeat` times in the kernel: the mean time per run, as the
    /// kernel measures it, and the verdict.
    pub fn run_timed(&mut self, program: &str, frame: &[u8], repeat: u32) -> (Duration, u32) {
        let prog = self.dp.program(program).expect("program");
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat;
        let out = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
        (out.duration, out.return_value)
    }

    /// Runs `program` on a frame carrying packet mark `mark`; the verdict and the mark after.
    pub fn run_marked(&mut self, program: &str, frame: &[u8], mark: u32) -> (u32, u32) {
        // struct __sk_buff (192 bytes); BPF_PROG_TEST_RUN takes and gives back `mark` (offset 8).
        let mut ctx_in = [0u8; 192];
        ctx_in[8..12].copy_from_slice(&mark.to_ne_bytes());
        let mut ctx_out = [0u8; 192];
        let prog = self.dp.program(program).expect("program");
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&ctx_in);
        opts.ctx_out = Some(&mut ctx_out);
        let verdict = prog.test_run(opts).expect("BPF_PROG_TEST_RUN").return_value;
        let mut after = [0u8; 4];
        after.copy_from_slice(&ctx_out[8..12]);
        (verdict, u32::from_ne_bytes(after))
    }

    /// Packets counted per reason, summed over every slot.
    pub fn counters(&self) -> BTreeMap<Reason, u64> {
        self.dp.counters().expect("counters")
    }

    /// Packets counted under the reason named `name` (`netpol_common::Reason::name`).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters().iter().find(|(r, _)| r.name() == name).map(|(_, n)| *n).unwrap_or_else(|| panic!("no reason {name}"))
    }
}
