//! A kubelet for a sandbox node: runs a pod of a workload manifest (a DaemonSet's template, read
//! from `deploy/`) in a real container runtime, podman with runc, inside the node's namespaces
//! ([`NodeFs`]), as kubelet and a CRI runtime would run it: init containers to completion first,
//! then the containers, each with its securityContext (privileges, capabilities, seccomp and
//! AppArmor profiles, read-only root, user), host network, every hostPath volume with its type
//! and mountPropagation, env (values and the downward API's fields), args, resource limits and
//! termination grace; probes run as kubelet runs them (HTTP GET from the node, exec in the
//! container). A field this kubelet cannot honour is an error, never skipped.
//!
//! One deviation, said where it is made: the Kubernetes API is reached through a kubeconfig
//! mounted where the service account's files would be (the sandbox's API server speaks plain
//! HTTP, and in-cluster configuration is HTTPS only).
//!
//! Images are built locally, without a registry: the agent binary and the shared libraries it
//! links, at the path, entrypoint and command the final stage of `deploy/Dockerfile` gives.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, Probe, SecurityContext, Volume};

use crate::{netns, node_fs::NodeFs};

/// Where the kubeconfig that stands in for the service account's credentials is mounted.
pub const KUBECONFIG_IN_CONTAINER: &str = "/var/run/secrets/kubernetes.io/serviceaccount/kubeconfig";

/// The host's CA bundle (Debian's ca-certificates), which the image carries as its base does.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How often this kubelet runs a container's probes (kubelet's periods are seconds; a test
/// wants to see more of them).
const PROBE_PERIOD: Duration = Duration::from_millis(500);

/// podman, run inside a node, with storage of its own.
#[derive(Clone)]
struct Podman {
    /// The node's `nsenter` target (the holder's pid).
    holder: u32,
    /// Storage, run and temporary directories live under it.
    state: PathBuf,
}

impl Podman {
    fn command(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t").arg(self.holder.to_string()).args(["-m", "-n", "--", "podman"]);
        cmd.arg("--root").arg(self.state.join("store"));
        cmd.arg("--runroot").arg(self.state.join("run"));
        cmd.arg("--tmpdir").arg(self.state.join("tmp"));
        cmd.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs podman with `args`; its standard output, or an error with its standard error.
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command().args(args).output().context("run podman")?;
        anyhow::ensure!(out.status.success(), "podman {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// What kubelet knows of a pod besides its spec.
#[derive(Clone, Debug)]
pub struct PodMeta {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// The kubeconfig to mount for API access (see the module's deviation), unless the pod
    /// opts out of the service account's token.
    pub kubeconfig: Option<PathBuf>,
}

/// One probe's outcome.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    /// When it ran.
    pub at: Instant,
    /// `liveness` or `readiness`.
    pub kind: &'static str,
    /// Whether it succeeded.
    pub ok: bool,
}

/// A running container and its prober.
pub struct RunningContainer {
    /// The runtime's container name.
    pub id: String,
    /// Every probe result so far.
    pub probes: Arc<Mutex<Vec<ProbeResult>>>,
    stop: Arc<AtomicBool>,
    prober: Option<JoinHandle<()>>,
}

impl RunningContainer {
    /// Stops probing (kubelet stops probing a container that is gone).
    fn stop_probing(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(p) = self.prober.take() {
            let _ = p.join();
        }
    }

    /// Whether the latest readiness probe succeeded.
    pub fn ready(&self) -> bool {
        self.probes.lock().map(|p| p.iter().rev().find(|r| r.kind == "readiness").is_some_and(|r| r.ok)).unwrap_or(false)
    }

    /// Liveness probes that failed after the container first became ready.
    pub fn liveness_failures_after_ready(&self) -> usize {
        let probes = self.probes.lock().map(|p| p.clone()).unwrap_or_default();
        let Some(ready) = probes.iter().find(|r| r.kind == "readiness" && r.ok).map(|r| r.at) else { return 0 };
        probes.iter().filter(|r| r.kind == "liveness" && r.at > ready && !r.ok).count()
    }
}

/// The kubelet of one sandbox node. Dropping it removes every container it made, then its
/// storage, then the node's mount namespace.
pub struct Kubelet {
    podman: Podman,
    made: Vec<String>,
    node: NodeFs,
}

impl Kubelet {
    /// A kubelet for `node`, with podman storage of its own.
    pub fn new(node: NodeFs) -> anyhow::Result<Self> {
        let state = std::env::temp_dir().join(netns::unique("netpol-podman-"));
        for dir in ["store", "run", "tmp"] {
            std::fs::create_dir_all(state.join(dir)).with_context(|| format!("create {}", state.display()))?;
        }
        let holder = node.holder_pid();
        Ok(Self { podman: Podman { holder, state }, made: Vec::new(), node })
    }

    /// The node.
    pub fn node(&self) -> &NodeFs {
        &self.node
    }

    /// Builds image `tag` from `binary`, laid out as the final stage of `dockerfile` lays it out
    /// (its `COPY` destination, `ENTRYPOINT` and `CMD`), with the shared libraries it links.
    pub fn build_image(&self, tag: &str, binary: &Path, dockerfile: &Path) -> anyhow::Result<()> {
        let stage = final_stage(&std::fs::read_to_string(dockerfile).with_context(|| format!("read {}", dockerfile.display()))?)?;
        let rootfs = self.podman.state.join(netns::unique("rootfs-"));
        let install = |from: &Path, to: &Path| -> anyhow::Result<()> {
            let dest = rootfs.join(to.strip_prefix("/").unwrap_or(to));
            std::fs::create_dir_all(dest.parent().context("a parent")?)?;
            std::fs::copy(from, &dest).with_context(|| format!("copy {} into the image", from.display()))?;
            Ok(())
        };
        install(binary, Path::new(&stage.binary))?;
        for lib in linked_libraries(binary)? {
            install(&lib, &lib)?;
        }
        // What the Dockerfile's base (distroless/cc) brings besides the C runtime: the CA
        // bundle (the Kubernetes client loads the system's roots) and root's passwd entry.
        install(Path::new(CA_BUNDLE), Path::new(CA_BUNDLE))?;
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/sbin/nologin\n")?;
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\n")?;
        for dir in ["tmp", "proc", "sys", "dev", "run", "var/run", "root"] {
            std::fs::create_dir_all(rootfs.join(dir))?;
        }
        let tar = rootfs.with_extension("tar");
        netns::run("tar", &["-C", path_str(&rootfs)?, "-cf", path_str(&tar)?, "."])?;
        let image = if tag.contains('/') { tag.to_string() } else { format!("localhost/{tag}") };
        self.podman.run(&[
            "import",
            "--change",
            &format!("ENTRYPOINT {}", serde_json::to_string(&stage.entrypoint)?),
            "--change",
            &format!("CMD {}", serde_json::to_string(&stage.cmd)?),
            path_str(&tar)?,
            &image,
        ])?;
        std::fs::remove_dir_all(&rootfs)?;
        std::fs::remove_file(&tar)?;
        Ok(())
    }

    /// Runs the pod's init containers, each to successful completion, as kubelet does before
    /// any of the pod's containers start.
    pub fn run_init_containers(&mut self, meta: &PodMeta, spec: &PodSpec) -> anyhow::Result<()> {
        for c in spec.init_containers.iter().flatten() {
            let id = self.create(meta, spec, c, false)?;
            let out = self.podman.command().args(["start", "--attach", &id]).output().context("run an init container")?;
            let logs = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
            let code = self.podman.run(&["inspect", "--format", "{{.State.ExitCode}}", &id])?;
            anyhow::ensure!(out.status.success() && code == "0", "init container {} failed (exit {code}):\n{logs}", c.name);
        }
        Ok(())
    }

    /// Starts container `name` of the pod (a new container each time, as kubelet restarts
    /// one), with its probes running.
    pub fn start_container(&mut self, meta: &PodMeta, spec: &PodSpec, name: &str) -> anyhow::Result<RunningContainer> {
        let c = spec.containers.iter().find(|c| c.name == name).with_context(|| format!("no container {name}"))?;
        let id = self.create(meta, spec, c, true)?;
        self.podman.run(&["start", &id])?;
        let probes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let prober = {
            let (podman, id, probes, stop) = (self.podman.clone(), id.clone(), probes.clone(), stop.clone());
            let checks: Vec<(&'static str, Probe)> =
                [("liveness", c.liveness_probe.clone()), ("readiness", c.readiness_probe.clone())].into_iter().filter_map(|(k, p)| Some((k, p?))).collect();
            let netns = self.node.netns.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for (kind, probe) in &checks {
                        let ok = run_probe(&podman, &netns, &id, probe);
                        if let Ok(mut p) = probes.lock() {
                            p.push(ProbeResult { at: Instant::now(), kind, ok });
                        }
                    }
                    std::thread::sleep(PROBE_PERIOD);
                }
            })
        };
        Ok(RunningContainer { id, probes, stop, prober: Some(prober) })
    }

    /// Waits until the container's readiness probe succeeds.
    pub fn wait_ready(&self, c: &RunningContainer, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !c.ready() {
            if self.podman.run(&["inspect", "--format", "{{.State.Running}}", &c.id]).is_ok_and(|r| r == "false") {
                bail!("container {} exited before it was ready:\n{}", c.id, self.logs(&c.id));
            }
            if Instant::now() > deadline {
                bail!("container {} not ready in {timeout:?}:\n{}", c.id, self.logs(&c.id));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Kills the container with SIGKILL, as the kernel's OOM killer or a crash would end it.
    pub fn kill(&self, c: &mut RunningContainer) -> anyhow::Result<()> {
        c.stop_probing();
        self.podman.run(&["kill", "--signal", "KILL", &c.id])?;
        self.podman.run(&["wait", &c.id]).map(drop)
    }

    /// Stops the container as kubelet stops a deleted pod's: SIGTERM, then SIGKILL after the
    /// pod's termination grace period.
    pub fn stop(&self, c: &mut RunningContainer, spec: &PodSpec) -> anyhow::Result<()> {
        c.stop_probing();
        let grace = spec.termination_grace_period_seconds.unwrap_or(30);
        self.podman.run(&["stop", "--time", &grace.to_string(), &c.id]).map(drop)
    }

    /// The exit code of a container that has ended.
    pub fn exit_code(&self, id: &str) -> anyhow::Result<i64> {
        Ok(self.podman.run(&["inspect", "--format", "{{.State.ExitCode}}", id])?.parse()?)
    }

    /// The container's log (standard output and error).
    pub fn logs(&self, id: &str) -> String {
        let out = self.podman.command().args(["logs", id]).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)).unwrap_or_default()
    }

    /// Creates (does not start) a container of the pod; its runtime name.
    fn create(&mut self, meta: &PodMeta, spec: &PodSpec, c: &Container, long_running: bool) -> anyhow::Result<String> {
        let id = netns::unique(&format!("{}-{}-", meta.name, c.name));
        let mut args = vec!["create".to_string(), "--name".into(), id.clone(), "--pull".into(), "never".into(), "--restart".into(), "no".into()];
        args.extend(self.pod_args(meta, spec)?);
        args.extend(security_args(spec, c.security_context.as_ref())?);
        args.extend(self.volume_args(spec, c)?);
        for e in c.env.iter().flatten() {
            args.extend(["--env".to_string(), format!("{}={}", e.name, env_value(e, meta, &self.node.netns)?)]);
        }
        if spec.automount_service_account_token != Some(false) {
            if let Some(kubeconfig) = &meta.kubeconfig {
                args.extend(["--volume".to_string(), format!("{}:{KUBECONFIG_IN_CONTAINER}:ro", kubeconfig.display())]);
                args.extend(["--env".to_string(), format!("KUBECONFIG={KUBECONFIG_IN_CONTAINER}")]);
            }
        }
        args.extend(limit_args(c)?);
        if let Some(command) = &c.command {
            args.extend(["--entrypoint".to_string(), serde_json::to_string(command)?]);
        }
        anyhow::ensure!(long_running || c.liveness_probe.is_none(), "init container {} has a probe", c.name);
        args.push(c.image.clone().with_context(|| format!("container {} has no image", c.name))?);
        args.extend(c.args.iter().flatten().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.podman.run(&args)?;
        self.made.push(id.clone());
        Ok(id)
    }

    /// The pod-level settings: host namespaces and limits every container gets.
    fn pod_args(&self, meta: &PodMeta, spec: &PodSpec) -> anyhow::Result<Vec<String>> {
        anyhow::ensure!(spec.host_network == Some(true), "pod {}: only host-network pods run here", meta.name);
        anyhow::ensure!(spec.host_pid != Some(true) && spec.host_ipc != Some(true), "pod {}: hostPID and hostIPC are not supported here", meta.name);
        // The runtime's file limits, explicit: within this process's own hard limits.
        let (_, nofile) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
        let (_, nproc) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NPROC)?;
        let (nofile, nproc) = (nofile.min(1 << 14), nproc.min(1 << 14));
        Ok(vec![
            "--network=host".into(),
            "--uts=host".into(),
            format!("--ulimit=nofile={nofile}:{nofile}"),
            format!("--ulimit=nproc={nproc}:{nproc}"),
        ])
    }

    /// Every volume mount of `c`: hostPath volumes, checked or created as their type says, with
    /// their propagation.
    fn volume_args(&self, spec: &PodSpec, c: &Container) -> anyhow::Result<Vec<String>> {
        let volumes: BTreeMap<&str, &Volume> = spec.volumes.iter().flatten().map(|v| (v.name.as_str(), v)).collect();
        let mut mounts: Vec<_> = c.volume_mounts.iter().flatten().collect();
        mounts.sort_by(|a, b| a.mount_path.cmp(&b.mount_path));
        let mut args = Vec::new();
        for m in mounts {
            let v = volumes.get(m.name.as_str()).with_context(|| format!("no volume {}", m.name))?;
            let host = v.host_path.as_ref().with_context(|| format!("volume {}: only hostPath volumes are supported here", m.name))?;
            let on_node = self.node.path(&host.path);
            match host.type_.as_deref().unwrap_or("") {
                "Directory" => anyhow::ensure!(on_node.is_dir(), "hostPath {} is not a directory on the node", host.path),
                "DirectoryOrCreate" => std::fs::create_dir_all(&on_node).with_context(|| format!("create hostPath {}", host.path))?,
                "" => {}
                other => bail!("hostPath type {other} is not supported here"),
            }
            anyhow::ensure!(m.sub_path.is_none() && m.sub_path_expr.is_none(), "subPath is not supported here");
            let propagation = match m.mount_propagation.as_deref().unwrap_or("None") {
                "None" => "rprivate",
                "HostToContainer" => "rslave",
                "Bidirectional" => "rshared",
                other => bail!("unknown mountPropagation {other}"),
            };
            let ro = if m.read_only == Some(true) { "ro" } else { "rw" };
            args.extend(["--volume".to_string(), format!("{}:{}:rbind,{ro},{propagation}", host.path, m.mount_path)]);
        }
        Ok(args)
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        for id in &self.made {
            let _ = self.podman.run(&["rm", "--force", "--time", "0", id]);
        }
        let _ = self.podman.run(&["rmi", "--all", "--force"]);
        let _ = std::fs::remove_dir_all(&self.podman.state);
    }
}

/// The container's securityContext (and the pod's AppArmor profile) as runtime options.
fn security_args(spec: &PodSpec, sc: Option<&SecurityContext>) -> anyhow::Result<Vec<String>> {
    let pod = spec.security_context.as_ref();
    let mut args = Vec::new();
    let sc = sc.cloned().unwrap_or_default();
    if let Some(user) = sc.run_as_user.or_else(|| pod.and_then(|p| p.run_as_user)) {
        args.push(format!("--user={user}"));
    }
    if sc.privileged == Some(true) {
        args.push("--privileged".into());
    } else if let Some(caps) = &sc.capabilities {
        args.extend(caps.drop.iter().flatten().map(|c| format!("--cap-drop={c}")));
        args.extend(caps.add.iter().flatten().map(|c| format!("--cap-add={c}")));
    }
    if sc.allow_privilege_escalation == Some(false) {
        args.push("--security-opt=no-new-privileges".into());
    }
    if sc.read_only_root_filesystem == Some(true) {
        // Kubernetes gives a read-only root no writable /tmp or /run of its own.
        args.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    }
    // Kubelet's default is no seccomp filter (without --seccomp-default).
    let seccomp = sc.seccomp_profile.or_else(|| pod.and_then(|p| p.seccomp_profile.clone()));
    match seccomp.as_ref().map(|p| p.type_.as_str()) {
        None | Some("Unconfined") => args.push("--security-opt=seccomp=unconfined".into()),
        Some("RuntimeDefault") => {}
        Some(other) => bail!("seccomp profile {other} is not supported here"),
    }
    let apparmor = sc.app_armor_profile.or_else(|| pod.and_then(|p| p.app_armor_profile.clone()));
    match apparmor.as_ref().map(|p| p.type_.as_str()) {
        Some("Unconfined") => args.push("--security-opt=apparmor=unconfined".into()),
        None | Some("RuntimeDefault") => {}
        Some(other) => bail!("AppArmor profile {other} is not supported here"),
    }
    anyhow::ensure!(sc.se_linux_options.is_none() && sc.proc_mount.is_none(), "seLinuxOptions and procMount are not supported here");
    Ok(args)
}

/// An env var's value: a literal, or the downward API's fields kubelet fills in.
fn env_value(e: &EnvVar, meta: &PodMeta, node: &str) -> anyhow::Result<String> {
    if let Some(v) = &e.value {
        return Ok(v.clone());
    }
    let field = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).with_context(|| format!("env {}: only values and fieldRefs are supported here", e.name))?;
    Ok(match field.field_path.as_str() {
        "spec.nodeName" => node.to_string(),
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        other => bail!("env {}: fieldRef {other} is not supported here", e.name),
    })
}

/// The container's resource limits as runtime options (memory in MiB, CPU in cores).
fn limit_args(c: &Container) -> anyhow::Result<Vec<String>> {
    let mut args = Vec::new();
    let Some(limits) = c.resources.as_ref().and_then(|r| r.limits.as_ref()) else { return Ok(args) };
    for (resource, q) in limits {
        let q = q.0.as_str();
        match resource.as_str() {
            "memory" => {
                let mib = q.strip_suffix("Mi").map(str::to_string).or_else(|| q.strip_suffix("Gi").map(|g| format!("{}", g.parse::<u64>().unwrap_or(0) * 1024)));
                args.push(format!("--memory={}m", mib.with_context(|| format!("memory limit {q}: only Mi and Gi are supported here"))?));
            }
            "cpu" => {
                let cores = match q.strip_suffix('m') {
                    Some(milli) => milli.parse::<f64>()? / 1000.0,
                    None => q.parse::<f64>()?,
                };
                args.push(format!("--cpus={cores}"));
            }
            other => bail!("resource limit {other} is not supported here"),
        }
    }
    Ok(args)
}

/// Runs one probe: HTTP GET from the node (2xx and 3xx succeed), or a command in the container
/// (exit 0 succeeds).
fn run_probe(podman: &Podman, netns: &str, id: &str, probe: &Probe) -> bool {
    let timeout = Duration::from_secs(u64::try_from(probe.timeout_seconds.unwrap_or(1)).unwrap_or(1));
    if let Some(get) = &probe.http_get {
        let (Some(host), k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port)) = (&get.host, &get.port) else { return false };
        let Ok(addr) = format!("{host}:{port}").parse::<SocketAddr>() else { return false };
        let path = get.path.clone().unwrap_or_else(|| "/".into());
        let status = netns::within(netns, || -> Option<u16> {
            let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
            s.set_read_timeout(Some(timeout)).ok()?;
            write!(s, "GET {path} HTTP/1.0\r\nUser-Agent: kube-probe\r\n\r\n").ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            out.split(' ').nth(1)?.parse().ok()
        });
        return status.ok().flatten().is_some_and(|s| (200..400).contains(&s));
    }
    if let Some(exec) = &probe.exec {
        let mut cmd = podman.command();
        cmd.args(["exec", id]).args(exec.command.iter().flatten()).stdout(Stdio::null()).stderr(Stdio::null());
        return cmd.status().is_ok_and(|s| s.success());
    }
    false
}

/// The final stage of a Dockerfile: where the binary goes, its entrypoint and command.
struct FinalStage {
    binary: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
}

fn final_stage(dockerfile: &str) -> anyhow::Result<FinalStage> {
    let last = dockerfile.rsplit("\nFROM ").next().context("no FROM")?;
    let instruction = |name: &str| last.lines().find_map(|l| l.strip_prefix(name).map(str::trim));
    let copy = instruction("COPY ").context("the final stage copies nothing")?;
    let binary = copy.split_whitespace().last().context("COPY without a destination")?.to_string();
    let entrypoint = serde_json::from_str(instruction("ENTRYPOINT ").context("no ENTRYPOINT")?).context("ENTRYPOINT is not a JSON list")?;
    let cmd = instruction("CMD ").map(serde_json::from_str).transpose().context("CMD is not a JSON list")?.unwrap_or_default();
    Ok(FinalStage { binary, entrypoint, cmd })
}

/// The shared libraries `binary` loads (the dynamic loader included), as `ldd` resolves them.
fn linked_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output().context("run ldd")?;
    anyhow::ensure!(out.status.success(), "ldd {}: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))
}
