//! What the agent starts before its loop, each returning what keeps it running: the pins'
//! place on the node's bpffs, the source and its watcher, link events, the HTTP endpoints, the
//! CNI plugin's socket and its place in the node's chain.

use std::{
    path::Path,
    sync::{atomic::AtomicBool, Arc},
};

use notify::Watcher as _;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

use super::{RunConfig, RunError, SourceConfig, Trigger};
use crate::{
    cni::{self, install::ChainChange},
    datapath::{
        bpffs::{self, PinLocation, Reach},
        netlink,
    },
    source::{kube::KubeSource, ManifestDir, Source},
    telemetry::{events::EventHub, http, metrics::Metrics},
};

/// The plugin's `timeoutSeconds` in the chained configuration.
const CNI_PLUGIN_TIMEOUT_SECONDS: u64 = 10;

/// The pin path on the node's bpffs ([`bpffs::resolve`]), logged when it is not the one given.
pub(super) fn pin_location(cfg: &RunConfig) -> Result<PinLocation, RunError> {
    let location = bpffs::resolve(&cfg.pin_path, cfg.pin_scope).map_err(|source| RunError::Pins { path: cfg.pin_path.clone(), source })?;
    match location.reach {
        Reach::Direct => {}
        Reach::NodeView { pid } => info!(
            pin_path = %cfg.pin_path.display(),
            through = %location.path.display(),
            view_of_pid = pid,
            "this mount namespace has no bpffs of the node at the pin path; pinning on the node's, through another process's view"
        ),
        Reach::Ephemeral => warn!(
            pin_path = %location.path.display(),
            "pinning on a bpffs of this mount namespace only (--ephemeral-pins): enforcement stops when the agent does"
        ),
    }
    Ok(location)
}

/// The cluster's source, with the watcher that schedules a sync on each change of a manifest
/// directory (the API source's watchers schedule theirs).
pub(super) async fn source(cfg: &RunConfig, tx: &mpsc::Sender<Trigger>) -> Result<(Source, Option<notify::RecommendedWatcher>), RunError> {
    match &cfg.source {
        SourceConfig::Manifests(dir) => {
            let manifest_tx = tx.clone();
            let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Reading the manifests raises access events; only changes schedule a sync.
                if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                    let _ = manifest_tx.try_send(Trigger::Manifests);
                }
            })
            .map_err(|source| RunError::Watch { path: dir.clone(), source })?;
            watcher.watch(dir, notify::RecursiveMode::Recursive).map_err(|source| RunError::Watch { path: dir.clone(), source })?;
            Ok((Source::Manifests(ManifestDir::new(dir.clone())), Some(watcher)))
        }
        SourceConfig::Kube => {
            let client = kube::Client::try_default().await.map_err(RunError::Kube)?;
            let api_tx = tx.clone();
            let source = KubeSource::start(client, &cfg.node, move || {
                // A full channel already holds a pending sync.
                let _ = api_tx.try_send(Trigger::Api);
            });
            Ok((Source::Kube(source), None))
        }
    }
}

/// A thread that schedules a sync on every link event of the node's namespace.
pub(super) fn link_events(tx: &mpsc::Sender<Trigger>) -> Result<(), RunError> {
    let events = netlink::LinkEvents::subscribe().map_err(|source| RunError::Netlink { op: "subscribe to link events", source })?;
    let link_tx = tx.clone();
    std::thread::Builder::new()
        .name("link-events".into())
        .spawn(move || {
            while events.wait().is_ok() {
                if link_tx.blocking_send(Trigger::Links).is_err() {
                    break;
                }
            }
        })
        .map(drop)
        .map_err(|source| RunError::Setup { op: "start the link event thread", source })
}

/// The HTTP endpoints, when the agent has an address for them.
pub(super) async fn endpoints(cfg: &RunConfig, ready: Arc<AtomicBool>, metrics: Arc<Metrics>, events: Option<Arc<EventHub>>) -> Result<Option<JoinHandle<()>>, RunError> {
    let Some(addr) = cfg.health_addr else { return Ok(None) };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| RunError::Listen { addr, source })?;
    info!(%addr, "serving /healthz, /readyz and /metrics");
    let endpoints = http::Endpoints { ready, metrics, events, token_file: cfg.http_token_file.clone() };
    Ok(Some(tokio::spawn(http::serve(listener, endpoints))))
}

/// Installs the CNI plugin binary, and chains it into the network configuration now and
/// whenever the configuration directory changes (a network plugin restarting rewrites its
/// configuration). The watcher returned keeps the chain while it lives.
pub(super) fn install_cni(cfg: &RunConfig) -> Result<Option<notify::RecommendedWatcher>, RunError> {
    let Some(socket) = cfg.cni_socket.clone() else { return Ok(None) };
    if let Some(dir) = &cfg.cni_bin_dir {
        let path = cni::install::install_binary(dir)?;
        info!(path = %path.display(), "CNI plugin installed");
    }
    let Some(conf_dir) = cfg.cni_conf_dir.clone() else { return Ok(None) };
    let ensure = move |dir: &Path| match cni::install::ensure_chained(dir, &socket, CNI_PLUGIN_TIMEOUT_SECONDS) {
        Ok(ChainChange::Added(path)) => info!(path = %path.display(), "netpol-cni chained into the network configuration"),
        Ok(ChainChange::NoConfiguration) => info!(dir = %dir.display(), "no network configuration yet; chaining netpol-cni when one appears"),
        Ok(ChainChange::Present(_)) => {}
        Err(e) => warn!(error = %e, "could not chain netpol-cni into the network configuration"),
    };
    std::fs::create_dir_all(&conf_dir).map_err(|source| RunError::Setup { op: "create the CNI configuration directory", source })?;
    ensure(&conf_dir);
    let dir = conf_dir.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            ensure(&dir);
        }
    })
    .map_err(|source| RunError::Watch { path: conf_dir.clone(), source })?;
    watcher.watch(&conf_dir, notify::RecursiveMode::NonRecursive).map_err(|source| RunError::Watch { path: conf_dir.clone(), source })?;
    Ok(Some(watcher))
}
