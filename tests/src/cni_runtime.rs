//! The container runtime's side of CNI on a sandbox node ([`NodeFs`]): the network plugin a
//! sandbox node runs (`sandbox-net`, which reports the addresses the sandbox gave the pod, as
//! Flannel reports the ones it gave), and a pod's network set up by running the whole chain of
//! the node's active network configuration as libcni runs it: every plugin in order, each given
//! the list's name and version and the previous plugin's result.

use std::{io::Write as _, process::Stdio};

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::{netns, node::Pod, node_fs::NodeFs};

/// The node's network plugin's name (its binary in `/opt/cni/bin`).
pub const NETWORK_PLUGIN: &str = "sandbox-net";

/// The node's network configuration, as a network plugin writes it.
pub const NETWORK_CONF: &str = "/etc/cni/net.d/10-sandbox.conflist";

/// Where `sandbox-net` finds the result it reports for a container.
const RESULTS: &str = "/run/sandbox-net";

/// Installs the node's network plugin and its configuration (as Flannel's DaemonSet would).
pub fn install_network_plugin(node: &NodeFs) -> anyhow::Result<()> {
    let script = format!(
        "#!/bin/sh\ncase \"$CNI_COMMAND\" in\n  ADD) exec cat \"{RESULTS}/$CNI_CONTAINERID.json\" ;;\n  VERSION) echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"1.0.0\"]}}' ;;\nesac\nexit 0\n"
    );
    let bin = node.path(format!("/opt/cni/bin/{NETWORK_PLUGIN}"));
    std::fs::create_dir_all(bin.parent().context("a parent")?)?;
    std::fs::write(&bin, script).context("write the network plugin")?;
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let conf = node.path(NETWORK_CONF);
    std::fs::create_dir_all(conf.parent().context("a parent")?)?;
    std::fs::create_dir_all(node.path(RESULTS))?;
    let list = json!({"cniVersion": "1.0.0", "name": "sandbox", "plugins": [{"type": NETWORK_PLUGIN}]});
    std::fs::write(conf, serde_json::to_vec_pretty(&list)?).context("write the network configuration")
}

/// The plugin types of the node's network configuration, in order.
pub fn chain(node: &NodeFs) -> anyhow::Result<Vec<String>> {
    let conf: Value = serde_json::from_slice(&std::fs::read(node.path(NETWORK_CONF))?)?;
    Ok(conf["plugins"].as_array().into_iter().flatten().filter_map(|p| Some(p["type"].as_str()?.to_string())).collect())
}

/// How a chain ended: the failing plugin and its CNI error, or the last result.
#[derive(Debug)]
pub enum ChainOutcome {
    /// Every plugin succeeded; the final result.
    Added(Value),
    /// A plugin failed: its type, exit code and what it printed.
    Failed { plugin: String, code: i32, output: Value },
}

/// CNI ADD for `pod` (wired by the sandbox, as the network plugin would wire it) through the
/// node's whole chain, inside the node.
pub fn add(node: &NodeFs, pod: &Pod) -> anyhow::Result<ChainOutcome> {
    let id = format!("sandbox-{}-{}", pod.name, netns::unique(""));
    let result = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": netns::path(&pod.netns)}],
        "ips": [
            {"address": format!("{}/24", pod.ipv4), "interface": 0},
            {"address": format!("{}/64", pod.ipv6), "interface": 0},
        ],
    });
    std::fs::write(node.path(format!("{RESULTS}/{id}.json")), result.to_string())?;
    let list: Value = serde_json::from_slice(&std::fs::read(node.path(NETWORK_CONF))?).context("read the network configuration")?;
    let mut previous: Option<Value> = None;
    for plugin in list["plugins"].as_array().context("no plugins")? {
        let kind = plugin["type"].as_str().context("a plugin without a type")?.to_string();
        let mut conf = plugin.clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        if let Some(prev) = &previous {
            conf["prevResult"] = prev.clone();
        }
        let mut child = node
            .command(format!("/opt/cni/bin/{kind}"))
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", &id)
            .env("CNI_NETNS", netns::path(&pod.netns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}", pod.namespace, pod.name))
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("run CNI plugin {kind}"))?;
        child.stdin.take().context("stdin")?.write_all(conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let printed: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            return Ok(ChainOutcome::Failed { plugin: kind, code: out.status.code().unwrap_or(-1), output: printed });
        }
        previous = Some(printed);
    }
    Ok(ChainOutcome::Added(previous.unwrap_or(Value::Null)))
}
