//! How the agent runs: its source, node, pin path and every setting of `netpol-agent run`.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, time::Duration};

/// Where the agent reads the cluster from.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// A manifest directory.
    Manifests(PathBuf),
    /// The Kubernetes API (KUBECONFIG, or the in-cluster service account).
    Kube,
}

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The source of the cluster state.
    pub source: SourceConfig,
    /// This node's name.
    pub node: String,
    /// Where maps and links are pinned (resolved to the node's bpffs at start, see
    /// [`crate::datapath::bpffs::resolve`]).
    pub pin_path: PathBuf,
    /// Whether the pins must outlive the agent (on the node's bpffs) or may die with it.
    pub pin_scope: crate::datapath::bpffs::PinScope,
    /// Where to write the status after each sync.
    pub status_file: Option<PathBuf>,
    /// Whether the node may reach its pods (kubelet probes) whatever the policies.
    pub allow_host: bool,
    /// Resync at least this often.
    pub resync: Duration,
    /// Where to serve `/healthz`, `/readyz`, `/metrics` and `/events` (none: no endpoints).
    pub health_addr: Option<SocketAddr>,
    /// The bearer token that opens `/metrics` and `/events` to clients other than loopback.
    pub http_token_file: Option<PathBuf>,
    /// Namespaces in audit mode (policy drops pass, counted as "would drop").
    pub audit_namespaces: BTreeSet<String>,
    /// How the data path reports verdict events.
    pub events: crate::telemetry::events::EventSettings,
    /// Lint the cluster state at most this often, logging new findings as warnings (none: no
    /// linting in the agent).
    pub lint_interval: Option<Duration>,
    /// Where to serve the CNI chain plugin (none: no plugin; new pods are found by their veth).
    pub cni_socket: Option<PathBuf>,
    /// Install the plugin binary here as `netpol-cni` (the node's CNI binary directory).
    pub cni_bin_dir: Option<PathBuf>,
    /// Keep the plugin chained into the network configuration of this directory.
    pub cni_conf_dir: Option<PathBuf>,
    /// Hold a veth that appears while the agent runs closed until a local pod claims it, for at
    /// most this long (none: new veths pass until their pod is known).
    pub hold_new_interfaces: Option<Duration>,
}
