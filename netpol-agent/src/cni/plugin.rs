//! The CNI chain plugin `netpol-cni`: closes the race between a pod's veth appearing and its
//! policy being programmed. Chained after the network plugin (Flannel, bridge, ptp, ...), it is
//! run by the container runtime at CNI ADD, after the pod's interface exists and before any of
//! the pod's containers start; it hands the agent the pod's name and addresses (from the CNI
//! arguments and the previous plugin's result) over the agent's Unix socket, and returns only
//! once the agent enforces the pod's policies on its veth. So the pod's first packet already
//! obeys them. If the agent cannot say so in time, ADD fails (CNI error 11, "try again later")
//! and the runtime retries the sandbox: no pod runs unenforced while an agent is expected. The
//! pod passes only when no agent is: the socket does not exist (no agent has started on this node
//! since boot, or netpol was uninstalled), or nobody has listened on it for longer than an agent
//! restart takes ([`DEFAULT_AGENT_GONE_AFTER`]; a running agent refreshes the socket's
//! modification time every [`HEARTBEAT`]): the DaemonSet was deleted without the uninstall, and
//! failing would stop every pod on the node from starting. STATUS answers the same way: it
//! fails only while ADD would.
//!
//! The plugin's own logic ([`plugin`]) is pure: environment and standard input in, standard
//! output and exit code out, with the agent reached through a function argument.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The agent's socket when the network configuration names none.
pub const DEFAULT_SOCKET: &str = "/run/netpol/cni.sock";
/// The plugin's binary name (its `type` in the CNI configuration).
pub const PLUGIN_NAME: &str = "netpol-cni";
/// How long ADD waits for the agent when the configuration does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a socket nobody listens on may go without the agent's heartbeat before the agent is
/// taken to be gone for good (the configuration's `agentGoneSeconds` overrides it): longer than
/// kubelet's longest back-off between restarts of a crashing container (5 min), so a crashing
/// agent keeps new pods waiting rather than starting them unenforced.
pub const DEFAULT_AGENT_GONE_AFTER: Duration = Duration::from_secs(360);
/// How often a running agent refreshes its socket's modification time.
pub const HEARTBEAT: Duration = Duration::from_secs(60);
/// CNI versions the plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// CNI error code: try again later (CNI spec, well-known error codes).
const ERR_TRY_AGAIN: u32 = 11;
/// CNI error code: invalid network configuration.
const ERR_INVALID_CONFIG: u32 = 7;
/// CNI error code: the plugin is not available (STATUS).
const ERR_NOT_AVAILABLE: u32 = 50;

/// What the plugin asks of the agent: one JSON line on the socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniRequest {
    /// `ADD`: enforce this pod and answer when done; `DEL`: forget the addresses given.
    pub command: CniCommand,
    /// The pod's namespace (`K8S_POD_NAMESPACE`).
    pub namespace: String,
    /// The pod's name (`K8S_POD_NAME`).
    pub name: String,
    /// The sandbox's container id (`CNI_CONTAINERID`), for logs.
    pub container_id: String,
    /// The pod's addresses, from the previous plugin's result.
    pub ips: Vec<IpAddr>,
    /// How long the plugin waits for the answer (ms): the agent answers before, with the
    /// reason if the pod is not enforced by then.
    #[serde(default)]
    pub wait_ms: u64,
}

/// The CNI operations the agent takes part in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CniCommand {
    /// A pod's network was set up.
    Add,
    /// A pod's network is being torn down.
    Del,
}

/// The agent's answer: one JSON line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniReply {
    /// Whether the pod is enforced (ADD) or forgotten (DEL).
    pub ok: bool,
    /// What happened, for the runtime's error message.
    pub message: String,
    /// The pod's host-side interface the classifiers are on (ADD).
    pub interface: Option<String>,
}

/// Whether an agent is to be expected on the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    /// No socket: no agent since boot, or netpol was uninstalled.
    Absent,
    /// The socket was refreshed lately: an agent runs, or is restarting.
    Expected,
    /// The socket has not been refreshed for this long: the agent is gone (its DaemonSet deleted
    /// without the uninstall), unless it still answers.
    Stale(Duration),
}

/// Whether an agent is to be expected on `socket`: [`Presence::Stale`] once its modification
/// time is older than `gone_after`.
pub fn presence(socket: &Path, gone_after: Duration) -> Presence {
    let Ok(meta) = std::fs::metadata(socket) else { return Presence::Absent };
    let age = meta.modified().ok().and_then(|m| m.elapsed().ok()).unwrap_or_default();
    if age > gone_after {
        Presence::Stale(age)
    } else {
        Presence::Expected
    }
}

/// The plugin's result: what to print and the exit code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginOutput {
    /// Standard output (a CNI result or error object; empty for DEL, CHECK and GC).
    pub stdout: String,
    /// Exit code.
    pub code: i32,
}

/// Runs one CNI operation. `env` holds the `CNI_*` variables, `stdin` the network configuration;
/// `agent(request, socket, timeout)` sends a request to the agent and returns its reply.
pub fn plugin(
    env: &HashMap<String, String>,
    stdin: &str,
    agent: impl FnOnce(&CniRequest, &Path, Duration) -> super::error::Result<CniReply>,
) -> PluginOutput {
    let command = env.get("CNI_COMMAND").map_or("", String::as_str);
    if command == "VERSION" {
        return PluginOutput { stdout: json!({"cniVersion": "1.1.0", "supportedVersions": SUPPORTED_VERSIONS}).to_string(), code: 0 };
    }
    let conf: Value = match serde_json::from_str(stdin) {
        Ok(v) => v,
        Err(e) => return error("1.0.0", ERR_INVALID_CONFIG, "netpol-cni: the network configuration is not JSON", &e.to_string()),
    };
    let version = conf.get("cniVersion").and_then(Value::as_str).unwrap_or("1.0.0").to_string();
    let socket = conf.get("socket").and_then(Value::as_str).map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from);
    let timeout = conf.get("timeoutSeconds").and_then(Value::as_f64).map_or(DEFAULT_TIMEOUT, Duration::from_secs_f64);
    let gone_after = conf.get("agentGoneSeconds").and_then(Value::as_f64).map_or(DEFAULT_AGENT_GONE_AFTER, Duration::from_secs_f64);
    let pod = pod_of(env.get("CNI_ARGS").map_or("", String::as_str));
    let container_id = env.get("CNI_CONTAINERID").cloned().unwrap_or_default();
    match command {
        "ADD" => {
            let Some(prev) = conf.get("prevResult").filter(|v| v.is_object()) else {
                return error(&version, ERR_INVALID_CONFIG, "netpol-cni must be chained after the plugin that sets up the pod's network", "no prevResult");
            };
            let mut result = prev.clone();
            result["cniVersion"] = Value::String(version.clone());
            let Some((namespace, name)) = pod else {
                // Not a Kubernetes pod: nothing of ours to enforce.
                return PluginOutput { stdout: result.to_string(), code: 0 };
            };
            // The agent answers a little before the plugin stops listening.
            let wait_ms = (timeout.as_millis() as u64).saturating_mul(8) / 10;
            let request = CniRequest { command: CniCommand::Add, namespace, name, container_id, ips: result_ips(prev), wait_ms };
            if request.ips.is_empty() {
                return error(&version, ERR_INVALID_CONFIG, "netpol-cni: the previous plugin's result has no IP address", "prevResult.ips is empty");
            }
            let pass = |why: String| {
                // Nothing can enforce, and failing would stop every pod from starting. An agent
                // that starts later enforces the pod once it finds its veth.
                eprintln!("netpol-cni: {why}: pod {}/{} passes unenforced", request.namespace, request.name);
                PluginOutput { stdout: result.to_string(), code: 0 }
            };
            let presence = presence(&socket, gone_after);
            if presence == Presence::Absent {
                return pass(format!("no agent socket at {}", socket.display()));
            }
            match (agent(&request, &socket, timeout), presence) {
                (Ok(reply), _) if reply.ok => PluginOutput { stdout: result.to_string(), code: 0 },
                (Ok(reply), _) => error(&version, ERR_TRY_AGAIN, &format!("netpol: pod {}/{} is not enforced yet", request.namespace, request.name), &reply.message),
                (Err(e), Presence::Stale(age)) => {
                    pass(format!("no agent has refreshed {} for {} s and none answers ({e:#})", socket.display(), age.as_secs()))
                }
                (Err(e), _) => error(&version, ERR_TRY_AGAIN, &format!("netpol: agent not reachable at {}", socket.display()), &format!("{e:#}")),
            }
        }
        "DEL" => {
            if let Some((namespace, name)) = pod {
                let ips = conf.get("prevResult").map(result_ips).unwrap_or_default();
                let request = CniRequest { command: CniCommand::Del, namespace, name, container_id, ips, wait_ms: 0 };
                // Best effort: the agent also forgets a pod when its veth and object are gone,
                // and DEL must succeed for the runtime to clean up.
                let _ = agent(&request, &socket, Duration::from_secs(2));
            }
            PluginOutput { stdout: String::new(), code: 0 }
        }
        "CHECK" | "GC" => PluginOutput { stdout: String::new(), code: 0 },
        // Ready exactly when ADD would not fail for want of the agent.
        "STATUS" => match (presence(&socket, gone_after), UnixStream::connect(&socket)) {
            (Presence::Absent | Presence::Stale(_), _) | (_, Ok(_)) => PluginOutput { stdout: String::new(), code: 0 },
            (Presence::Expected, Err(e)) => {
                error(&version, ERR_NOT_AVAILABLE, "netpol agent not answering (restarting?)", &format!("{}: {e}", socket.display()))
            }
        },
        other => error(&version, ERR_INVALID_CONFIG, &format!("netpol-cni: unknown CNI_COMMAND {other:?}"), ""),
    }
}

/// A CNI error object and exit code 1.
fn error(version: &str, code: u32, msg: &str, details: &str) -> PluginOutput {
    PluginOutput { stdout: json!({"cniVersion": version, "code": code, "msg": msg, "details": details}).to_string(), code: 1 }
}

/// The pod's (namespace, name) from `CNI_ARGS` (`K8S_POD_NAMESPACE=..;K8S_POD_NAME=..`).
pub fn pod_of(cni_args: &str) -> Option<(String, String)> {
    let mut namespace = None;
    let mut name = None;
    for pair in cni_args.split(';') {
        match pair.split_once('=') {
            Some(("K8S_POD_NAMESPACE", v)) if !v.is_empty() => namespace = Some(v.to_string()),
            Some(("K8S_POD_NAME", v)) if !v.is_empty() => name = Some(v.to_string()),
            _ => {}
        }
    }
    Some((namespace?, name?))
}

/// The addresses of a CNI result (`ips[].address`, CIDR notation).
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address")?.as_str()?.split('/').next()?.parse().ok())
        .collect()
}

/// Sends `request` to the agent listening on `socket` and waits up to `timeout` for its reply.
pub fn ask_agent(request: &CniRequest, socket: &Path, timeout: Duration) -> super::error::Result<CniReply> {
    use super::error::{io, CniError};
    let socket_err = |op| move |source| CniError::Socket { op, source };
    let stream = UnixStream::connect(socket).map_err(io("connect to", socket))?;
    stream.set_read_timeout(Some(timeout)).map_err(socket_err("set read timeout"))?;
    stream.set_write_timeout(Some(timeout)).map_err(socket_err("set write timeout"))?;
    let mut line = serde_json::to_string(request).map_err(|source| CniError::Json { what: "encode the request".into(), source })?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(socket_err("send the request"))?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).map_err(socket_err("read the agent's reply"))?;
    serde_json::from_str(&reply).map_err(|source| CniError::Json { what: format!("decode the agent's reply {reply:?}"), source })
}

/// Runs the plugin on this process's environment and standard input; returns the exit code.
pub fn main() -> i32 {
    use std::io::Read as _;
    let env: HashMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("CNI_")).collect();
    let mut stdin = String::new();
    if env.get("CNI_COMMAND").is_some_and(|c| c != "VERSION") {
        let _ = std::io::stdin().read_to_string(&mut stdin);
    }
    let out = plugin(&env, &stdin, ask_agent);
    if !out.stdout.is_empty() {
        println!("{}", out.stdout);
    }
    out.code
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::error::CniError;

    /// What a plugin finds where no agent listens.
    fn no_agent() -> CniError {
        CniError::Socket { op: "connect", source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused) }
    }

    fn env(command: &str) -> HashMap<String, String> {
        HashMap::from([
            ("CNI_COMMAND".to_string(), command.to_string()),
            ("CNI_CONTAINERID".to_string(), "abc".to_string()),
            ("CNI_ARGS".to_string(), "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc".to_string()),
        ])
    }

    /// A chained configuration whose socket exists (this crate's manifest: any existing path).
    fn conf() -> String {
        json!({
            "cniVersion": "0.4.0",
            "name": "cbr0",
            "type": "netpol-cni",
            "socket": env!("CARGO_MANIFEST_PATH"),
            "timeoutSeconds": 3,
            "prevResult": {"cniVersion": "0.4.0", "interfaces": [{"name": "eth0"}],
                "ips": [{"version": "4", "address": "198.18.0.7/24"}, {"version": "6", "address": "fd00:198:18::7/64"}]},
        })
        .to_string()
    }

    #[test]
    fn add_hands_the_pod_to_the_agent_and_passes_the_previous_result_on() {
        let mut asked = None;
        let out = plugin(&env("ADD"), &conf(), |req, socket, timeout| {
            asked = Some((req.clone(), socket.to_path_buf(), timeout));
            Ok(CniReply { ok: true, message: "enforced".into(), interface: Some("veth1".into()) })
        });
        assert_eq!(out.code, 0);
        let result: Value = serde_json::from_str(&out.stdout).expect("json");
        assert_eq!(result["ips"][0]["address"], "198.18.0.7/24");
        assert_eq!(result["cniVersion"], "0.4.0");
        let (req, socket, timeout) = asked.expect("the agent was asked");
        assert_eq!((req.namespace.as_str(), req.name.as_str(), req.command), ("x", "web-1", CniCommand::Add));
        assert_eq!(req.ips, vec!["198.18.0.7".parse::<IpAddr>().expect("v4"), "fd00:198:18::7".parse().expect("v6")]);
        assert_eq!(socket, Path::new(env!("CARGO_MANIFEST_PATH")));
        assert_eq!(timeout, Duration::from_secs(3));
        assert_eq!(req.wait_ms, 2400, "the agent answers before the plugin gives up");
    }

    #[test]
    fn add_fails_with_try_again_when_the_agent_cannot_enforce_or_answer() {
        let (path, conf) = dead_socket(Duration::ZERO);
        let refused = plugin(&env("ADD"), &conf, |_, _, _| Ok(CniReply { ok: false, message: "pod unknown".into(), interface: None }));
        let err: Value = serde_json::from_str(&refused.stdout).expect("json");
        assert_eq!((refused.code, err["code"].as_u64()), (1, Some(11)));
        assert_eq!(err["details"], "pod unknown");
        let gone = plugin(&env("ADD"), &conf, |_, _, _| Err(no_agent()));
        let err: Value = serde_json::from_str(&gone.stdout).expect("json");
        assert_eq!((gone.code, err["code"].as_u64()), (1, Some(11)));
        std::fs::remove_file(path).expect("remove the socket");
    }

    #[test]
    fn configurations_the_plugin_cannot_work_with_are_errors_and_other_commands_succeed() {
        let never = |_: &CniRequest, _: &Path, _: Duration| -> crate::cni::error::Result<CniReply> { panic!("the agent must not be asked") };
        let unchained = plugin(&env("ADD"), r#"{"cniVersion":"1.0.0","name":"n","type":"netpol-cni"}"#, never);
        let err: Value = serde_json::from_str(&unchained.stdout).expect("json");
        assert_eq!((unchained.code, err["code"].as_u64()), (1, Some(7)), "ADD without prevResult");
        let garbage = plugin(&env("ADD"), "not json", never);
        assert_eq!(garbage.code, 1);
        // Not a Kubernetes pod: passed through untouched.
        let mut plain = env("ADD");
        plain.remove("CNI_ARGS");
        let out = plugin(&plain, &conf(), never);
        assert_eq!(out.code, 0);
        assert_eq!(serde_json::from_str::<Value>(&out.stdout).expect("json")["ips"][1]["address"], "fd00:198:18::7/64");
        // No agent socket on the node at all: passed through.
        let missing = conf().replace(env!("CARGO_MANIFEST_PATH"), "/nonexistent/netpol.sock");
        assert_eq!(plugin(&env("ADD"), &missing, never).code, 0);
        let version = plugin(&env("VERSION"), "", never);
        assert_eq!(version.code, 0);
        assert!(version.stdout.contains("\"1.0.0\""), "{}", version.stdout);
        for command in ["CHECK", "GC"] {
            assert_eq!(plugin(&env(command), &conf(), never), PluginOutput { stdout: String::new(), code: 0 }, "{command}");
        }
        let mut del_asked = false;
        let del = plugin(&env("DEL"), &conf(), |req, _, _| {
            del_asked = req.command == CniCommand::Del;
            Err(no_agent())
        });
        assert_eq!((del.code, del_asked), (0, true), "DEL succeeds even with the agent down");
    }

    /// A socket path that exists but nobody listens on, last refreshed `age` ago.
    fn dead_socket(age: Duration) -> (PathBuf, String) {
        use nix::sys::{stat::utimensat, time::TimeSpec};
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("netpol-cni-test-{}-{n}.sock", std::process::id()));
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind a socket"));
        let then = std::time::SystemTime::now() - age;
        let since_epoch = then.duration_since(std::time::UNIX_EPOCH).expect("after 1970");
        let t = TimeSpec::from_duration(since_epoch);
        utimensat(nix::fcntl::AT_FDCWD, &path, &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink).expect("set the socket's times");
        let conf = conf().replace(env!("CARGO_MANIFEST_PATH"), path.to_str().expect("utf-8"));
        (path, conf)
    }

    fn code(out: &PluginOutput) -> (i32, Option<u64>) {
        let err: Option<Value> = serde_json::from_str(&out.stdout).ok();
        (out.code, err.and_then(|e| e["code"].as_u64()))
    }

    #[test]
    fn a_socket_nobody_refreshed_for_longer_than_a_restart_lets_pods_start_and_status_pass() {
        let (path, conf) = dead_socket(DEFAULT_AGENT_GONE_AFTER + Duration::from_secs(60));
        let add = plugin(&env("ADD"), &conf, ask_agent);
        assert_eq!(code(&add), (0, None), "the agent is gone: the pod starts: {}", add.stdout);
        assert_eq!(plugin(&env("STATUS"), &conf, |_, _, _| Err(no_agent())).code, 0, "STATUS passes as ADD does");
        std::fs::remove_file(path).expect("remove the socket");
    }

    #[test]
    fn a_socket_refreshed_lately_that_nobody_answers_is_an_agent_restarting_and_add_waits() {
        let (path, conf) = dead_socket(Duration::from_secs(5));
        let add = plugin(&env("ADD"), &conf, ask_agent);
        assert_eq!(code(&add), (1, Some(11)), "try again later: {}", add.stdout);
        let status = plugin(&env("STATUS"), &conf, |_, _, _| Err(no_agent()));
        assert_eq!(code(&status), (1, Some(50)), "STATUS fails while ADD would: {}", status.stdout);
        std::fs::remove_file(path).expect("remove the socket");
        let status = plugin(&env("STATUS"), &conf, |_, _, _| Err(no_agent()));
        assert_eq!(status.code, 0, "no socket: ADD passes, so STATUS does");
    }

    #[test]
    fn the_pod_is_read_from_cni_args() {
        assert_eq!(pod_of("K8S_POD_NAMESPACE=a;K8S_POD_NAME=b"), Some(("a".into(), "b".into())));
        assert_eq!(pod_of("IgnoreUnknown=1;K8S_POD_NAME=b"), None);
        assert_eq!(pod_of(""), None);
    }
}
