//! The CNI chain plugin `netpol-cni`: closes the race between a pod's veth appearing and its
//! policy being programmed. Chained after the network plugin (Flannel, bridge, ptp, ...), it is
//! run by the container runtime at CNI ADD, after the pod's interface exists and before any of
//! the pod's containers start; it hands the agent the pod's name and addresses (from the CNI
//! arguments and the previous plugin's result) over the agent's Unix socket, and returns only
//! once the agent enforces the pod's policies on its veth. So the pod's first packet already
//! obeys them. If the agent cannot say so in time, ADD fails (CNI error 11, "try again later")
//! and the runtime retries the sandbox: no pod runs unenforced. Only when the agent's socket does
//! not exist at all (no agent has started on this node since boot, or netpol was removed) does
//! the pod pass, so that a node without netpol can still start pods.
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
            if !socket.exists() {
                // No agent was ever started on this node since boot (or netpol was removed and
                // left its entry behind): nothing can enforce, and failing would stop every pod
                // from starting. The agent enforces the pod when it starts and finds its veth.
                eprintln!("netpol-cni: no agent socket at {}: pod {}/{} passes unenforced until the agent starts", socket.display(), request.namespace, request.name);
                return PluginOutput { stdout: result.to_string(), code: 0 };
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let refused = plugin(&env("ADD"), &conf(), |_, _, _| Ok(CniReply { ok: false, message: "pod unknown".into(), interface: None }));
        let err: Value = serde_json::from_str(&refused.stdout).expect("json");
        assert_eq!((refused.code, err["code"].as_u64()), (1, Some(11)));
        assert_eq!(err["details"], "pod unknown");
        let gone = plugin(&env("ADD"), &conf(), |_, _, _| anyhow::bail!("connection refused"));
        let err: Value = serde_json::from_str(&gone.stdout).expect("json");
        assert_eq!((gone.code, err["code"].as_u64()), (1, Some(11)));
    }

    #[test]
    fn configurations_the_plugin_cannot_work_with_are_errors_and_other_commands_succeed() {
        let never = |_: &CniRequest, _: &Path, _: Duration| -> anyhow::Result<CniReply> { panic!("the agent must not be asked") };
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
            anyhow::bail!("agent down")
        });
        assert_eq!((del.code, del_asked), (0, true), "DEL succeeds even with the agent down");
    }

    #[test]
    fn the_pod_is_read_from_cni_args() {
        assert_eq!(pod_of("K8S_POD_NAMESPACE=a;K8S_POD_NAME=b"), Some(("a".into(), "b".into())));
        assert_eq!(pod_of("IgnoreUnknown=1;K8S_POD_NAME=b"), None);
        assert_eq!(pod_of(""), None);
    }
}
