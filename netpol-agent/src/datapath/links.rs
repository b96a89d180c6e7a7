//! TCX links and their pins under `links/` of the pin path: the two classifiers of each local
//! pod's veth (`<ifindex>-<program>`), the exit program on every other Ethernet interface of the
//! node (`exit-<ifindex>`). Pinned, a link outlives the agent; adopted, it is pointed at this
//! build's program in place (no moment without a program); removed, it is detached at once.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::SchedClassifierLink,
    TcAttachType,
};

use super::{
    error::{prog_err, ApplyError, ApplyStats, DatapathError, Result},
    loader::Programs,
    netlink::EthernetInterface,
    PodInterface, PROG_EXIT, PROG_FROM_POD, PROG_TO_POD,
};

/// The links directory of a pin path.
pub(super) struct Links {
    dir: PathBuf,
}

impl Links {
    /// The links under `dir` (created if missing).
    pub(super) fn open(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|source| DatapathError::Fs { op: "create pin directory", path: dir.clone(), source })?;
        Ok(Self { dir })
    }

    fn pod_pin(&self, ifindex: u32, program: &str) -> PathBuf {
        self.dir.join(format!("{ifindex}-{program}"))
    }

    fn exit_pin(&self, ifindex: u32) -> PathBuf {
        self.dir.join(format!("exit-{ifindex}"))
    }

    /// Whether interface `ifindex` has both classifiers linked.
    pub(super) fn pod_linked(&self, ifindex: u32) -> bool {
        [PROG_TO_POD, PROG_FROM_POD].iter().all(|p| self.pod_pin(ifindex, p).exists())
    }

    /// Interfaces with a pinned [`PROG_EXIT`] link.
    fn pinned_exits(&self) -> BTreeSet<u32> {
        self.pinned().filter_map(|name| name.strip_prefix("exit-")?.parse().ok()).collect()
    }

    /// Interfaces with pinned classifier links.
    pub(super) fn pinned_pods(&self) -> BTreeSet<u32> {
        self.pinned().filter_map(|name| name.split('-').next()?.parse().ok()).collect()
    }

    fn pinned(&self) -> impl Iterator<Item = String> {
        std::fs::read_dir(&self.dir).into_iter().flatten().filter_map(|e| e.ok()?.file_name().into_string().ok())
    }

    /// Attaches both classifiers to a pod's veth and pins the links.
    pub(super) fn attach_pod(&self, programs: &mut Programs, iface: &PodInterface) -> std::result::Result<(), ApplyError> {
        for (program, attach_type) in [(PROG_TO_POD, TcAttachType::Egress), (PROG_FROM_POD, TcAttachType::Ingress)] {
            attach_pinned(programs, program, &iface.name, attach_type, &self.pod_pin(iface.ifindex, program))
                .map_err(|e| ApplyError::Attach { program, interface: iface.name.clone(), source: Box::new(e) })?;
        }
        Ok(())
    }

    /// Unpins (and detaches) the classifiers of interface `ifindex`.
    pub(super) fn detach_pod(&self, ifindex: u32, stats: &mut ApplyStats) {
        for program in [PROG_TO_POD, PROG_FROM_POD] {
            unpin(&self.pod_pin(ifindex, program), stats);
        }
    }

    /// Attaches [`PROG_EXIT`] to the TCX egress of every interface in `interfaces` that has
    /// none yet and is not a local pod's veth (pinned, like the pods' links), and unpins the
    /// links of interfaces gone. A pod's veth needs no exit once its [`PROG_TO_POD`] is linked
    /// (that program judges deferred packets first): a new veth gets one here until its pod's
    /// classifiers are linked and [`Links::retire_pod_exits`] removes it.
    pub(super) fn apply_exits(&self, programs: &mut Programs, interfaces: &[EthernetInterface]) -> ApplyStats {
        let mut stats = ApplyStats::default();
        let pinned = self.pinned_exits();
        let pods = self.pinned_pods();
        for iface in interfaces.iter().filter(|i| !pinned.contains(&i.ifindex) && !pods.contains(&i.ifindex)) {
            match attach_pinned(programs, PROG_EXIT, &iface.name, TcAttachType::Egress, &self.exit_pin(iface.ifindex)) {
                Ok(()) => stats.attached += 1,
                // An interface that went away meanwhile is no error.
                Err(e) if super::netlink::list_ethernet_interfaces().is_ok_and(|now| !now.contains(iface)) => {
                    tracing::debug!(interface = %iface.name, error = %e, "interface gone before its exit link was attached");
                }
                Err(e) => stats.errors.push(ApplyError::Attach { program: PROG_EXIT, interface: iface.name.clone(), source: Box::new(e) }),
            }
        }
        let wanted: BTreeSet<u32> = interfaces.iter().map(|i| i.ifindex).collect();
        for ifindex in pinned.difference(&wanted) {
            // The interface is gone (and its link with it); only the pin is left.
            unpin(&self.exit_pin(*ifindex), &mut stats);
            stats.detached += 1;
        }
        stats
    }

    /// Unpins the [`PROG_EXIT`] links of interfaces whose [`PROG_TO_POD`] is linked: that
    /// program judges deferred packets itself. Only after the links were switched to this
    /// build's programs (an earlier build's may not judge them).
    pub(super) fn retire_pod_exits(&self, stats: &mut ApplyStats) {
        for ifindex in self.pinned_exits() {
            if self.pod_pin(ifindex, PROG_TO_POD).exists() {
                unpin(&self.exit_pin(ifindex), stats);
                stats.detached += 1;
            }
        }
    }

    /// Points every link pinned by an earlier agent at this agent's programs (atomically, with
    /// no moment without a program), so an upgrade takes effect without detaching.
    pub(super) fn adopt(&self, programs: &mut Programs) -> Vec<ApplyError> {
        let pods = self.pinned_pods().into_iter().flat_map(|i| [(self.pod_pin(i, PROG_TO_POD), PROG_TO_POD), (self.pod_pin(i, PROG_FROM_POD), PROG_FROM_POD)]);
        let exits = self.pinned_exits().into_iter().map(|i| (self.exit_pin(i), PROG_EXIT));
        let mut errors = Vec::new();
        for (pin, program) in pods.chain(exits).collect::<Vec<_>>() {
            if let Err(e) = adopt_pinned(programs, program, &pin) {
                errors.push(ApplyError::Adopt { pin, source: Box::new(e) });
            }
        }
        errors
    }
}

/// Attaches program `name` to interface `iface` at `attach_type` and pins the TCX link at `pin`.
fn attach_pinned(programs: &mut Programs, name: &str, iface: &str, attach_type: TcAttachType, pin: &Path) -> Result<()> {
    let prog = programs.get(name)?;
    let id = prog.attach(iface, attach_type).map_err(prog_err(format!("attach {name} to {iface}")))?;
    let link = prog.take_link(id).map_err(prog_err(format!("take link of {name} on {iface}")))?;
    let link: FdLink = link.try_into().map_err(|e| DatapathError::Link { op: format!("link of {name} on {iface}"), source: Box::new(e) })?;
    link.pin(pin).map(drop).map_err(|source| DatapathError::Pin { path: pin.to_path_buf(), source: Box::new(source) })
}

/// Points the link pinned at `pin` at this build's program `name`.
fn adopt_pinned(programs: &mut Programs, name: &str, pin: &Path) -> Result<()> {
    let pinned = PinnedLink::from_pin(pin).map_err(|e| DatapathError::Link { op: format!("open {}", pin.display()), source: Box::new(e) })?;
    let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| DatapathError::Link { op: format!("type of {}", pin.display()), source: Box::new(e) })?;
    programs.get(name)?.attach_to_link(link).map(drop).map_err(prog_err(format!("update {}", pin.display())))
}

/// Detaches the link pinned at `pin` and removes the pin (either gone already is no error).
fn unpin(pin: &Path, stats: &mut ApplyStats) {
    if let Err(e) = detach_pinned_link(pin) {
        if e.kind() != std::io::ErrorKind::NotFound {
            stats.errors.push(ApplyError::Unlink { op: "detach", pin: pin.to_path_buf(), source: e });
        }
    }
    if let Err(e) = std::fs::remove_file(pin) {
        if e.kind() != std::io::ErrorKind::NotFound {
            stats.errors.push(ApplyError::Unlink { op: "unpin", pin: pin.to_path_buf(), source: e });
        }
    }
}

/// Detaches the link pinned at `pin` at once (BPF_LINK_DETACH, Linux 5.9+), rather than when the
/// kernel gets round to releasing it after its last reference goes; the pin stays.
pub fn detach_pinned_link(pin: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // union bpf_attr, zeroed; BPF_OBJ_GET takes the path pointer at offset 0.
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: bpf(2) with a zeroed attr of 128 bytes holding a valid NUL-terminated path.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = fd as i32;
    let mut attr = [0u64; 16];
    attr[0] = u64::from(fd as u32); // link_detach.link_fd
    // SAFETY: bpf(2) with a zeroed attr naming a link fd we own.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd came from BPF_OBJ_GET above and is closed once.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err);
    }
    Ok(())
}

/// Detaches every link pinned under `pin_path` and removes every pin (programs, links, maps):
/// `netpol-agent uninstall`.
pub fn uninstall(pin_path: &Path) -> std::io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(pin_path.join("links")) {
        for e in entries.flatten() {
            detach_pinned_link(&e.path())?;
        }
    }
    match std::fs::remove_dir_all(pin_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
