//! The CNI chain plugin `netpol-cni`: closes the race between a pod's veth appearing and its
//! policy being programmed. Chained after the network plugin (Flannel, bridge, ptp, ...), it is
//! run by the container runtime at CNI ADD, after the pod's interface exists and before any of
//! the pod's containers start; it hands the agent the pod's name and addresses (from the CNI
//! arguments and the previous plugin's result) over the agent's Unix socket, and returns only
//! once the agent enforces the pod's policies on its veth. So the pod's first packet already
//! obeys them. If the agent cannot say so in time, ADD fails (CNI error 11, "try again later")
//! and the runtime retries the sandbox: no pod runs unenforced.
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
    agent: impl FnOnce(&CniRequest, &Path, Duration) -> anyhow::Result<CniReply>,
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
            match agent(&request, &socket, timeout) {
                Ok(reply) if reply.ok => PluginOutput { stdout: result.to_string(), code: 0 },
                Ok(reply) => error(&version, ERR_TRY_AGAIN, &format!("netpol: pod {}/{} is not enforced yet", request.namespace, request.name), &reply.message),
                Err(e) => error(&version, ERR_TRY_AGAIN, &format!("netpol: agent not reachable at {}", socket.display()), &format!("{e:#}")),
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
        "STATUS" => match UnixStream::connect(&socket) {
            Ok(_) => PluginOutput { stdout: String::new(), code: 0 },
            Err(e) => error(&version, ERR_NOT_AVAILABLE, "netpol agent not running", &format!("{}: {e}", socket.display())),
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
pub fn ask_agent(request: &CniRequest, socket: &Path, timeout: Duration) -> anyhow::Result<CniReply> {
    use anyhow::Context as _;
    let stream = UnixStream::connect(socket).with_context(|| format!("connect to {}", socket.display()))?;
    stream.set_read_timeout(Some(timeout)).context("set read timeout")?;
    stream.set_write_timeout(Some(timeout)).context("set write timeout")?;
    let mut line = serde_json::to_string(request).context("encode request")?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).context("send request")?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).context("read the agent's reply")?;
    serde_json::from_str(&reply).with_context(|| format!("decode the agent's reply {reply:?}"))
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
