//! `netpol-agent`: enforces Kubernetes NetworkPolicies with eBPF on this node.
use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use netpol_agent::agent::{self, RunConfig};

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
    /// Enforce the policies of a manifest directory on this node.
    Run {
        /// Directory of Namespace, Pod and NetworkPolicy manifests (YAML or JSON, recursive).
        #[arg(long)]
        manifests: PathBuf,
        /// This node's name (pods with this spec.nodeName are enforced here).
        #[arg(long, env = "NODE_NAME")]
        node_name: String,
        /// bpffs directory for maps and links (one per agent).
        #[arg(long, default_value = "/sys/fs/bpf/netpol")]
        pin_path: PathBuf,
        /// Write a JSON status here after each sync.
        #[arg(long)]
        status_file: Option<PathBuf>,
        /// Do not let the node itself (kubelet probes) reach isolated pods.
        #[arg(long)]
        no_host_access: bool,
        /// Resync period in seconds (changes are also picked up as they happen).
        #[arg(long, default_value_t = 5)]
        resync_seconds: u64,
    },
    /// Remove every program, link and map pinned under the pin path (stops enforcement).
    Uninstall {
        /// bpffs directory the agent used.
        #[arg(long, default_value = "/sys/fs/bpf/netpol")]
        pin_path: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,netlink_packet_route=error".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if cli.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    match cli.command {
        Command::Run { manifests, node_name, pin_path, status_file, no_host_access, resync_seconds } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("start tokio runtime")?;
            runtime.block_on(agent::run(RunConfig {
                manifests,
                node: node_name,
                pin_path,
                status_file,
                allow_host: !no_host_access,
                resync: Duration::from_secs(resync_seconds.max(1)),
            }))
        }
        Command::Uninstall { pin_path } => {
            netpol_agent::datapath::uninstall(&pin_path).with_context(|| format!("uninstall {}", pin_path.display()))?;
            tracing::info!(pin_path = %pin_path.display(), "removed netpol's programs, links and maps");
            Ok(())
        }
    }
}
