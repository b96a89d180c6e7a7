//! `netpol-agent`: enforces Kubernetes NetworkPolicies with eBPF on this node.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use netpol_agent::{
    run::{self as agent, RunConfig},
    datapath::bpffs::{self, PinScope},
};

#[derive(Parser)]
#[command(name = "netpol-agent", version, about = "eBPF NetworkPolicy enforcement for Kubernetes nodes")]
struct Cli {
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enforce the cluster's policies on this node: from the Kubernetes API (KUBECONFIG, or the
    /// in-cluster service account), or from a manifest directory.
    Run {
        /// Directory of Namespace, Pod and NetworkPolicy manifests (YAML or JSON, recursive),
        /// read instead of the Kubernetes API.
        #[arg(long)]
        manifests: Option<PathBuf>,
        /// This node's name (pods with this spec.nodeName are enforced here).
        #[arg(long, env = "NODE_NAME")]
        node_name: String,
        /// bpffs directory for maps and links (one per agent), on the node's bpffs. When this
        /// process's mount namespace has no bpffs there but PID 1's has (`ip netns exec`, a
        /// container with the host's PID namespace), the node's is used through
        /// `/proc/1/root`; with none at all the agent refuses to start.
        #[arg(long, default_value = "/sys/fs/bpf/netpol")]
        pin_path: PathBuf,
        /// Accept pins that die with this process's mount namespace (a bpffs of its own, mounted
        /// if needed): enforcement then stops when the agent does.
        #[arg(long)]
        ephemeral_pins: bool,
        /// Write a JSON status here after each sync.
        #[arg(long)]
        status_file: Option<PathBuf>,
        /// Do not let the node itself (kubelet probes) reach isolated pods.
        #[arg(long)]
        no_host_access: bool,
        /// Resync period in seconds (changes are also picked up as they happen).
        #[arg(long, default_value_t = 5)]
        resync_seconds: u64,
        /// Serve /healthz and /readyz on this address ("off": not at all).
        #[arg(long, default_value = netpol_agent::telemetry::http::DEFAULT_ADDR)]
        health_addr: String,
        /// A file holding a bearer token: clients other than loopback may then read /metrics and
        /// /events with `Authorization: Bearer TOKEN` (without it, only loopback clients may;
        /// the probes are open to all).
        #[arg(long)]
        http_token_file: Option<PathBuf>,
        /// Audit mode for this namespace (repeatable): its pods' policy drops pass and are
        /// counted as `allow_audit` ("would drop"), to roll out isolation safely.
        #[arg(long = "audit-namespace", value_name = "NAMESPACE")]
        audit_namespaces: Vec<String>,
        /// Verdict events each pod may raise per second (per CPU); past it they are counted as
        /// suppressed. 0: no events.
        #[arg(long, default_value_t = netpol_agent::telemetry::events::DEFAULT_RATE)]
        event_rate: u32,
        /// Report allowed new flows too, even when no `observe` asks for them (drops and audit
        /// "would drop"s are always reported).
        #[arg(long)]
        events_allowed: bool,
        /// Lint the cluster's policies at most every this many seconds and log new findings as
        /// warnings (`netpol_agent::tools::lint` target); 0: never.
        #[arg(long, default_value_t = 30)]
        lint_interval: u64,
        /// Serve the CNI chain plugin (`netpol-cni`) on this Unix socket: a new pod's CNI ADD
        /// returns only once its policies are enforced, so its first packet obeys them.
        #[arg(long)]
        cni_socket: Option<PathBuf>,
        /// With --cni-socket: install the plugin binary into this directory as `netpol-cni`
        /// (the node's CNI binary directory, e.g. /opt/cni/bin).
        #[arg(long, requires = "cni_socket")]
        cni_bin_dir: Option<PathBuf>,
        /// With --cni-socket: keep netpol-cni chained at the end of the network configuration
        /// in this directory (e.g. /etc/cni/net.d), also after the network plugin rewrites it.
        #[arg(long, requires = "cni_socket")]
        cni_conf_dir: Option<PathBuf>,
        /// Hold a veth that appears while the agent runs closed (everything dropped) until a
        /// local pod claims it, for at most this many seconds; then it passes unenforced until
        /// its pod is known. 0: never hold (a new pod's first packets race its programming,
        /// unless the CNI plugin is chained).
        #[arg(long, default_value_t = 10)]
        hold_new_interfaces: u64,
    },
    /// Run as the CNI chain plugin (also when this binary is invoked as `netpol-cni`): reads
    /// the CNI_* environment and the network configuration on standard input, as the container
    /// runtime passes them, and asks the agent on the configuration's `socket` (default
    /// /run/netpol/cni.sock) to enforce the new pod before it starts.
    Cni,
    /// Stream the verdicts of a running agent live: drops, audit "would drop"s and, on request,
    /// allowed new flows, with pod names and the policy rule that allowed each flow.
    ///
    /// Reads the agent's `/events` on its health address. Runs until interrupted (or `--count`
    /// events); exits non-zero when the agent cannot be reached.
    Observe {
        /// The agent's health address (`--health-addr` of `run`).
        #[arg(long, default_value = "127.0.0.1:9790")]
        agent: String,
        /// A file holding the agent's bearer token (its --http-token-file), needed when the
        /// agent is not reached over loopback.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Output: one line of text per event, or one JSON object per line.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
        /// Only flows with an end in this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Only flows with this pod at one end: NAMESPACE/POD, or POD in any namespace.
        #[arg(long)]
        pod: Option<String>,
        /// Verdicts to show, comma-separated: dropped, audit, allowed, or all. Asking for
        /// allowed flows makes the data path report them while you watch.
        #[arg(long, default_value = "dropped,audit")]
        verdict: String,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Remove every program, link and map pinned under the pin path (stops enforcement), and
    /// the CNI chain plugin where told.
    Uninstall {
        /// bpffs directory the agent used (found on the node's bpffs as `run` finds it).
        #[arg(long, default_value = "/sys/fs/bpf/netpol")]
        pin_path: PathBuf,
        /// Also take netpol-cni out of the network configuration in this directory.
        #[arg(long)]
        cni_conf_dir: Option<PathBuf>,
        /// Also remove the netpol-cni binary from this directory.
        #[arg(long)]
        cni_bin_dir: Option<PathBuf>,
        /// Also remove the agent's CNI socket file.
        #[arg(long)]
        cni_socket: Option<PathBuf>,
        /// Then keep running until SIGTERM (for a DaemonSet that removes netpol from every
        /// node: its pods become ready once their node is clean).
        #[arg(long)]
        keep_running: bool,
    },
    /// Mount a bpffs on PATH unless one is there (the DaemonSet's init container, with the
    /// node's /sys/fs/bpf mounted with Bidirectional propagation, so that the mount is the
    /// node's and pins outlive the agent's container).
    MountBpffs {
        /// Where.
        #[arg(long, default_value = "/sys/fs/bpf")]
        path: PathBuf,
    },
    /// Explain whether the policies allow a flow, and why (from a manifest directory, or the
    /// cluster's API without --manifests).
    ///
    /// For the source pod's egress and the destination pod's ingress: every policy selecting the
    /// pod and every rule, with the verdict of the compiled maps. Exits 0 whether the flow is
    /// allowed or denied (the answer is in the output) and non-zero on errors (unknown pod, bad
    /// port).
    Explain {
        /// Directory of Namespace, Pod and NetworkPolicy manifests (YAML or JSON, recursive).
        /// Without it, they are read from the Kubernetes API (KUBECONFIG, or the in-cluster
        /// service account, as `run` reads it): one list of each, cluster-wide.
        #[arg(long)]
        manifests: Option<PathBuf>,
        /// Source: NAMESPACE/POD, or an IP address (a pod's address stands for the pod).
        #[arg(long)]
        from: String,
        /// Destination: NAMESPACE/POD, or an IP address.
        #[arg(long)]
        to: String,
        /// Destination port: `80` (TCP), `53/UDP`, `9/SCTP`, or a protocol alone (`UDP`: every
        /// port of it).
        #[arg(long)]
        port: String,
        /// Output: human-readable text, or one JSON object.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// Find policies that are valid but probably wrong (exit 1 when there are findings), in a
    /// manifest directory or, without --manifests, in the cluster.
    ///
    /// An allow the other side drops, OR'd peers, selectors that match nothing or everything,
    /// DNS, missing default-deny, ... Each finding has an object, a rule, a code, a message and a
    /// fix.
    ///
    /// Exit status: 0 when there are no findings, 1 when there are, 2 on errors.
    Lint {
        /// Directory of Namespace, Pod and NetworkPolicy manifests (YAML or JSON, recursive).
        /// Without it, they are read from the Kubernetes API (KUBECONFIG, or the in-cluster
        /// service account, as `run` reads it): one list of each, cluster-wide.
        #[arg(long)]
        manifests: Option<PathBuf>,
        /// Output: human-readable text, or one JSON array of findings.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// Draw who can reach whom under the policies, as Mermaid or SVG (from a manifest directory,
    /// or the cluster's API without --manifests).
    ///
    /// As the data path decides it: namespaces as columns or subgraphs, pods as nodes (isolated
    /// ones marked), allowed edges labelled with their ports (`any` when every port is allowed).
    Graph {
        /// Directory of Namespace, Pod and NetworkPolicy manifests (YAML or JSON, recursive).
        /// Without it, they are read from the Kubernetes API (KUBECONFIG, or the in-cluster
        /// service account, as `run` reads it): one list of each, cluster-wide.
        #[arg(long)]
        manifests: Option<PathBuf>,
        /// Output: a Mermaid flowchart, or a self-contained SVG image.
        #[arg(long, default_value = "mermaid", value_parser = ["mermaid", "svg"])]
        format: String,
        /// Draw one node per value of this pod label in each namespace (pods without it stay
        /// nodes of their own); an edge means some pod of one group reaches some pod of the other.
        #[arg(long)]
        group_by: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    // Installed as the CNI plugin, the runtime runs this binary by the plugin's type name.
    if std::env::args_os().next().is_some_and(|a| Path::new(&a).file_name() == Some(netpol_agent::cni::plugin::PLUGIN_NAME.as_ref())) {
        std::process::exit(netpol_agent::cni::plugin::main());
    }
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,netlink_packet_route=error".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if cli.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    match cli.command {
        Command::Run {
            manifests,
            node_name,
            pin_path,
            ephemeral_pins,
            status_file,
            no_host_access,
            resync_seconds,
            health_addr,
            http_token_file,
            audit_namespaces,
            event_rate,
            events_allowed,
            lint_interval,
            cni_socket,
            cni_bin_dir,
            cni_conf_dir,
            hold_new_interfaces,
        } => {
            let health_addr = match health_addr.as_str() {
                "off" => None,
                a => Some(a.parse().with_context(|| format!("--health-addr {a:?}: not an address:port"))?),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("start tokio runtime")?;
            Ok(runtime.block_on(agent::run(RunConfig {
                source: manifests.map_or(agent::SourceConfig::Kube, agent::SourceConfig::Manifests),
                node: node_name,
                pin_path,
                pin_scope: if ephemeral_pins { PinScope::Ephemeral } else { PinScope::Node },
                status_file,
                allow_host: !no_host_access,
                resync: Duration::from_secs(resync_seconds.max(1)),
                health_addr,
                http_token_file,
                audit_namespaces: audit_namespaces.into_iter().collect(),
                events: netpol_agent::telemetry::events::EventSettings { rate: event_rate, always_allowed: events_allowed },
                lint_interval: (lint_interval > 0).then(|| Duration::from_secs(lint_interval)),
                cni_socket,
                cni_bin_dir,
                cni_conf_dir,
                hold_new_interfaces: (hold_new_interfaces > 0).then(|| Duration::from_secs(hold_new_interfaces)),
            }))?)
        }
        Command::Cni => std::process::exit(netpol_agent::cni::plugin::main()),
        Command::Uninstall { pin_path, cni_conf_dir, cni_bin_dir, cni_socket, keep_running } => {
            uninstall(&pin_path, cni_conf_dir.as_deref(), cni_bin_dir.as_deref(), cni_socket.as_deref())?;
            if keep_running {
                wait_for_termination()?;
            }
            Ok(())
        }
        Command::MountBpffs { path } => {
            if bpffs::mount_bpffs(&path)? {
                tracing::info!(path = %path.display(), "mounted bpffs");
            } else {
                tracing::info!(path = %path.display(), "a bpffs is mounted there already");
            }
            Ok(())
        }
        Command::Explain { manifests, from, to, port, output } => explain(manifests.as_deref(), &from, &to, &port, &output),
        Command::Lint { manifests, output } => exit_lint(lint(manifests.as_deref(), &output)),
        Command::Observe { agent, token_file, output, namespace, pod, verdict, count } => {
            let filter = netpol_agent::telemetry::events::EventFilter {
                namespace,
                pod,
                verdicts: netpol_agent::telemetry::events::parse_verdicts(&verdict).context("--verdict")?,
            };
            let token = match &token_file {
                Some(f) => Some(std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?.trim().to_string()),
                None => None,
            };
            Ok(netpol_agent::telemetry::observe::observe(&agent, token.as_deref(), &filter, output == "json", count)?)
        }
        Command::Graph { manifests, format, group_by } => graph(manifests.as_deref(), &format, group_by.as_deref()),
    }
}

/// `uninstall`: the CNI chain entry first (no new pod asks for the agent any more), then the
/// binary and the socket, then every pin (links detached at once).
fn uninstall(pin_path: &Path, conf_dir: Option<&Path>, bin_dir: Option<&Path>, socket: Option<&Path>) -> anyhow::Result<()> {
    use netpol_agent::cni::install as cni_install;
    if let Some(dir) = conf_dir {
        if let Some(path) = cni_install::remove_chained(dir).with_context(|| format!("unchain netpol-cni in {}", dir.display()))? {
            tracing::info!(path = %path.display(), "netpol-cni taken out of the network configuration");
        }
    }
    if let Some(dir) = bin_dir {
        if cni_install::remove_binary(dir)? {
            tracing::info!(dir = %dir.display(), "netpol-cni binary removed");
        }
    }
    if let Some(socket) = socket {
        match std::fs::remove_file(socket) {
            Ok(()) => tracing::info!(socket = %socket.display(), "CNI socket removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("remove {}", socket.display())),
        }
    }
    match bpffs::resolve(pin_path, PinScope::Node) {
        Ok(location) => {
            netpol_agent::datapath::uninstall(&location.path).with_context(|| format!("uninstall {}", location.path.display()))?;
            tracing::info!(pin_path = %location.path.display(), "removed netpol's programs, links and maps");
        }
        Err(bpffs::BpffsError::NoNodeBpffs { dir }) => {
            tracing::info!(dir = %dir.display(), "no bpffs of the node there: nothing pinned to remove");
        }
        Err(e) => return Err(e).with_context(|| format!("find {}", pin_path.display())),
    }
    Ok(())
}

/// Blocks until SIGTERM or SIGINT.
fn wait_for_termination() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("start tokio runtime")?;
    runtime.block_on(async {
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("install SIGTERM handler")?;
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}

/// Reads the cluster for the one-shot commands: the manifest directory when there is one, else
/// one list of each resource from the Kubernetes API, converted as the agent's API source does.
fn read_cluster(manifests: Option<&std::path::Path>) -> anyhow::Result<netpol_agent::source::Snapshot> {
    let Some(dir) = manifests else {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("start tokio runtime")?;
        return runtime
            .block_on(async {
                // The configuration `Client::try_default` (and `run`) would use ...
                let mut config =
                    kube::Config::infer().await.context("configure the Kubernetes client (KUBECONFIG or in-cluster)")?;
                // ... but a one-shot command reports a 429/503/504 at once rather than backing
                // off for minutes, as kube's default retry does for controllers.
                config.default_retry = false;
                let client = kube::Client::try_from(config).context("build the Kubernetes client")?;
                Ok::<_, anyhow::Error>(netpol_agent::source::kube::list_snapshot(client).await?)
            })
            .context("no --manifests: read the cluster from the Kubernetes API");
    };
    let loaded = netpol_agent::source::manifests::load_dir(dir).with_context(|| format!("read manifests in {}", dir.display()))?;
    Ok(netpol_agent::source::Snapshot { state: loaded.state, problems: loaded.problems, manifest_digest: loaded.digest, ..Default::default() })
}

/// Reads the cluster for `explain` and `graph`, reporting the objects left out.
fn load_manifests(manifests: Option<&std::path::Path>) -> anyhow::Result<netpol_agent::source::Snapshot> {
    let loaded = read_cluster(manifests)?;
    for p in &loaded.problems {
        tracing::warn!(object = %p.object, "left out: {}", p.reason);
    }
    Ok(loaded)
}

/// `explain`: prints the explanation of one flow.
fn explain(manifests: Option<&std::path::Path>, from: &str, to: &str, port: &str, output: &str) -> anyhow::Result<()> {
    use netpol_agent::tools::explain::{Endpoint, PortQuery};
    let from: Endpoint = from.parse().context("--from")?;
    let to: Endpoint = to.parse().context("--to")?;
    let port: PortQuery = port.parse().context("--port")?;
    let loaded = load_manifests(manifests)?;
    let e = netpol_agent::tools::explain::explain(&loaded.state, &from, &to, port)?;
    let text = if output == "json" { serde_json::to_string_pretty(&e).context("encode the explanation")? + "\n" } else { e.to_string() };
    write_stdout(&text)
}

/// Writes a command's answer to stdout; a closed pipe (`| head`) is not an error.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("write to stdout"),
        _ => Ok(()),
    }
}

/// `lint`: prints the findings; `Ok(true)` when there are none.
fn lint(manifests: Option<&std::path::Path>, output: &str) -> anyhow::Result<bool> {
    use netpol_agent::tools::lint;
    let loaded = read_cluster(manifests)?;
    // Only files can lack a namespace: the API server gives every object one.
    let namespace_missing = match manifests {
        Some(dir) => lint::namespace_missing_in_dir(dir).with_context(|| format!("read manifests in {}", dir.display()))?,
        None => Vec::new(),
    };
    let findings = lint::lint(&loaded.state, &lint::Extra { problems: loaded.problems, namespace_missing });
    let text = if output == "json" {
        serde_json::to_string_pretty(&findings).context("encode the findings")? + "\n"
    } else if findings.is_empty() {
        "no findings\n".to_string()
    } else {
        findings.iter().map(|f| format!("{f}\n")).collect::<String>() + &format!("{} finding(s)\n", findings.len())
    };
    write_stdout(&text)?;
    Ok(findings.is_empty())
}

/// Ends `lint` with its documented status: 0 clean, 1 findings, 2 error.
fn exit_lint(result: anyhow::Result<bool>) -> anyhow::Result<()> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::exit(2)
        }
    }
}

/// `graph`: prints the reachability as Mermaid or SVG.
fn graph(manifests: Option<&std::path::Path>, format: &str, group_by: Option<&str>) -> anyhow::Result<()> {
    use netpol_agent::tools::graph;
    let loaded = load_manifests(manifests)?;
    let mut r = graph::reachability(&loaded.state);
    if let Some(label) = group_by {
        r = graph::group_by(&r, &loaded.state, label);
    }
    write_stdout(&if format == "svg" { graph::to_svg(&r) } else { graph::to_mermaid(&r) })
}
