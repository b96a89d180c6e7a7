//! The real agent binary, run in a node's network namespace with its own pin path and status
//! file; killed, and its pins removed, on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::netns;

/// A running agent.
pub struct Agent {
    child: Child,
    /// Its pin path (removed on drop).
    pub pin_path: PathBuf,
    /// Its status file.
    pub status_file: PathBuf,
    /// Its log (stderr).
    pub log: PathBuf,
    manifests: PathBuf,
    keep_pins: bool,
}

/// The `/metrics` text of the agent serving on its default health address in network namespace
/// `node`.
pub fn scrape_metrics(node: &str) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    netns::within(node, || -> anyhow::Result<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", 9790)).context("connect to the metrics endpoint")?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").context("request")?;
        let mut out = String::new();
        s.read_to_string(&mut out).context("response")?;
        Ok(out)
    })?
}

/// The agent binary: `$NETPOL_AGENT_BIN`, or the workspace's release build.
pub fn agent_bin() -> PathBuf {
    std::env::var_os("NETPOL_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/netpol-agent"))
}

impl Agent {
    /// Starts the agent for node `node` (its netns name is its node name) on `manifests`, with
    /// a new pin path of its own.
    pub fn start(node: &str, manifests: &Path, extra_args: &[&str]) -> anyhow::Result<Self> {
        let pin_path = crate::host_bpffs()?.join(netns::unique("netpol-test-"));
        Self::start_at(node, manifests, &pin_path, extra_args)
    }

    /// Starts the agent with a given pin path (e.g. the one an earlier agent left).
    pub fn start_at(node: &str, manifests: &Path, pin_path: &Path, extra_args: &[&str]) -> anyhow::Result<Self> {
        let bin = agent_bin();
        anyhow::ensure!(bin.is_file(), "no agent binary at {} (run `cargo xtask build`)", bin.display());
        let id = netns::unique("netpol-test-");
        let pin_path = pin_path.to_path_buf();
        let status_file = std::env::temp_dir().join(format!("{id}.status.json"));
        let log = std::env::temp_dir().join(format!("{id}.log"));
        let stderr = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        // As users run a node's agent: `ip netns exec` gives it the node's network namespace and
        // a mount namespace of its own (with a fresh /sys, and no bpffs on /sys/fs/bpf).
        let child = Command::new("ip")
            .args(["netns", "exec", node])
            .arg(&bin)
            .args(["--log-format", "text", "run", "--node-name", node, "--resync-seconds", "2"])
            .arg("--manifests")
            .arg(manifests)
            .arg("--pin-path")
            .arg(&pin_path)
            .arg("--status-file")
            .arg(&status_file)
            .args(extra_args)
            .env("RUST_LOG", "info,netlink_packet_route=error")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("start the agent")?;
        Ok(Self { child, pin_path, status_file, log, manifests: manifests.to_path_buf(), keep_pins: false })
    }

    /// A status written two syncs after now, so its counters were read after every packet sent
    /// before the call. Fails after 15 s without two syncs.
    pub fn status_after_two_syncs(&self) -> anyhow::Result<serde_json::Value> {
        let before = self.status().and_then(|s| s["syncs"].as_u64()).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = self.status().unwrap_or_default();
            if status["syncs"].as_u64().unwrap_or(0) >= before + 2 {
                return Ok(status);
            }
            anyhow::ensure!(Instant::now() < deadline, "the agent did not sync twice in 15 s: {status}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last status the agent wrote, if any.
    pub fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(&self.status_file).ok()?).ok()
    }

    /// Waits until the agent has applied the manifests as they are now and attached to every
    /// local pod. On timeout, fails with the tail of the agent's log.
    pub fn wait_synced(&mut self, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        self.wait(timeout, true)
    }

    /// Waits until the agent has applied the manifests as they are now (some local pods may
    /// have no interface).
    pub fn wait_applied(&mut self, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        self.wait(timeout, false)
    }

    fn wait(&mut self, timeout: Duration, all_attached: bool) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let digest = netpol_agent::source::manifests::digest_dir(&self.manifests)?;
            if let Some(status) = self.status() {
                let attached = status["attached"].as_array().map_or(0, Vec::len);
                let local = status["local_pods"].as_array().map_or(0, Vec::len);
                if status["manifest_digest"] == digest.as_str() && (attached == local || !all_attached) {
                    return Ok(status);
                }
            }
            if let Ok(Some(exit)) = self.child.try_wait() {
                anyhow::bail!("the agent exited ({exit}):\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                anyhow::bail!("the agent did not sync within {timeout:?}; status {:?}\nlog:\n{}", self.status(), self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of the agent's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the agent with SIGKILL, as a crash would, and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the agent to exit on its own; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("wait for the agent")? {
                return Ok(status);
            }
            anyhow::ensure!(Instant::now() < deadline, "the agent still runs after {timeout:?}:\n{}", self.log_tail());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Leaves the pins in place when this handle is dropped (for a successor agent).
    pub fn keep_pins(&mut self) {
        self.keep_pins = true;
    }

    /// Stops the agent with SIGTERM (it leaves enforcement in place) and waits for it.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        if !self.keep_pins {
            let _ = std::fs::remove_dir_all(&self.pin_path);
        }
        let _ = std::fs::remove_file(&self.status_file);
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("agent log ({}):\n{}", self.log.display(), self.log_tail());
        }
    }
}
