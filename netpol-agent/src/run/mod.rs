//! The agent's run loop: every trigger (a manifest change, an API watch event, a link event, a
//! CNI ADD, a periodic tick) schedules one debounced, level-triggered sync ([`sync`]) that takes
//! a snapshot of the whole source, compiles it, finds the local pods' veths and reconciles the
//! data path; its [`SyncReport`](crate::telemetry::report::SyncReport) goes to the metrics, the
//! status file ([`status`]) and the CNI plugin's waiting requests. From outside: [`run`] with a
//! [`RunConfig`].

mod config;
mod error;
mod holds;
mod lint;
mod start;
pub mod status;
mod sync;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

pub use config::{RunConfig, SourceConfig};
pub use error::RunError;

use crate::{
    cni::server::{CniPods, Enforced, Resync},
    datapath::{loader, netlink, Datapath},
    telemetry::{events::EventHub, metrics},
};
use holds::Holds;
use status::Status;
use sync::Syncer;

/// How soon to look again while some local pod has no interface yet.
const UNATTACHED_RESYNC: Duration = Duration::from_millis(250);

/// How long a CNI ADD may wait for its pod to be enforced (the plugin's own timeout is usually
/// shorter).
const CNI_WAIT: Duration = Duration::from_secs(30);

/// Why a sync was scheduled.
#[derive(Debug)]
enum Trigger {
    Manifests,
    Api,
    Links,
    Cni,
}

/// Runs the agent until SIGINT or SIGTERM. Enforcement stays in place when it stops.
pub async fn run(cfg: RunConfig) -> Result<(), RunError> {
    // Held for the agent's life: the pin path may go through it.
    let pins = start::pin_location(&cfg)?;
    let pin_path_given = cfg.pin_path.clone();
    let cfg = RunConfig { pin_path: pins.path.clone(), ..cfg };
    loader::check_tcx().map_err(RunError::Kernel)?;
    let loading = Instant::now();
    let mut datapath = Datapath::load(&cfg.pin_path).map_err(|source| RunError::Load { path: cfg.pin_path.clone(), source })?;
    info!(origin = ?datapath.origin(), build = %loader::build_id(), elapsed_ms = loading.elapsed().as_millis() as u64, "data path ready");
    for e in datapath.adopt_links() {
        warn!(error = %e, "could not adopt a pinned link");
    }
    let (tx, mut rx) = mpsc::channel::<Trigger>(64);

    let ready = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(metrics::Metrics::new());
    let (event_hub, event_task) = match EventHub::open(&cfg.pin_path, &cfg.node, cfg.events) {
        Ok((hub, ring)) => {
            let task = tokio::spawn(hub.clone().run(ring));
            (Some(hub), Some(task))
        }
        Err(e) => {
            warn!(error = %e, "verdict events unavailable");
            (None, None)
        }
    };
    let conntrack_counter = metrics::count_conntrack_in_background(&cfg.pin_path, metrics.clone());
    let endpoints = start::endpoints(&cfg, ready.clone(), metrics.clone(), event_hub.clone()).await?;
    let (source, watcher) = start::source(&cfg, &tx).await?;
    start::link_events(&tx)?;

    let cni_pods = Arc::new(CniPods::default());
    let (enforced_tx, enforced_rx) = tokio::sync::watch::channel(Enforced::default());
    let cni_task = match &cfg.cni_socket {
        Some(socket) => {
            let cni_tx = tx.clone();
            let resync: Resync = Arc::new(move || {
                let _ = cni_tx.try_send(Trigger::Cni);
            });
            Some(crate::cni::server::serve(socket, cni_pods.clone(), resync, enforced_rx, CNI_WAIT).await?)
        }
        None => None,
    };
    // Only now that the socket listens: a pod's ADD from here on finds the agent.
    let cni_conf_watcher = start::install_cni(&cfg)?;

    let mut holds = Holds::default();
    if cfg.hold_new_interfaces.is_some() {
        let veths = netlink::list_veth_links().map_err(|source| RunError::Netlink { op: "list veths", source })?;
        holds.baseline = veths.iter().map(|v| v.ifindex).collect();
    }
    let mut syncer = Syncer::default();
    let mut syncs = 0u64;
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|source| RunError::Setup { op: "install the SIGTERM handler", source })?;
    let mut next_sync = tokio::time::Instant::now();
    let mut unattached_delay = UNATTACHED_RESYNC;
    info!(node = %cfg.node, source = %source.describe(), pin_path = %pin_path_given.display(), "netpol agent started");
    loop {
        // When the change that leads to this sync was noticed (for the programming-time metric).
        let noticed;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = tokio::time::sleep_until(next_sync) => { noticed = Instant::now(); }
            Some(trigger) = rx.recv() => {
                noticed = Instant::now();
                debug!(?trigger, "sync scheduled");
                debounce(&mut rx, trigger, &cfg, &mut holds, &mut datapath).await;
            }
        }
        let started = Instant::now();
        next_sync = tokio::time::Instant::now() + cfg.resync;
        if let Some(limit) = cfg.hold_new_interfaces {
            holds.hold_new(&mut datapath);
            holds.release_expired(&mut datapath, limit);
        }
        let synced = match syncer.sync(&cfg, &source, &cni_pods, &mut datapath, event_hub.as_deref()) {
            Ok(Some(synced)) => synced,
            Ok(None) => {
                debug!("waiting for the source's first complete state; nothing programmed");
                continue;
            }
            Err(e) => {
                metrics.sync_failed();
                warn!(error = %error_chain(&e), "sync failed; the last programmed state stays enforced");
                continue;
            }
        };
        syncs += 1;
        let report = &synced.report;
        enforced_tx.send_replace(Enforced { syncs, pods: report.enforcing.clone(), known: report.local_pods.clone() });
        metrics.synced(noticed.elapsed().as_secs_f64(), report);
        if let Some(path) = &cfg.status_file {
            if let Err(source) = Status::new(&synced.snapshot, report, syncs).write(path) {
                warn!(error = %error_chain(&RunError::Status { path: path.clone(), source }), "status not written");
            }
        }
        if !ready.swap(true, Ordering::Relaxed) {
            info!("first complete state programmed; ready");
        }
        debug!(elapsed_ms = started.elapsed().as_millis() as u64, "synced");
        // A pod's address is configured inside its own namespace, which raises no event here:
        // while a local pod has no interface yet, look again soon (backing off to the resync
        // period, for pods whose interface does not come).
        if report.attached.len() < report.local_pods.len() || !datapath.held().is_empty() {
            next_sync = tokio::time::Instant::now() + unattached_delay.min(cfg.resync);
            unattached_delay = unattached_delay.saturating_mul(2);
        } else {
            unattached_delay = UNATTACHED_RESYNC;
        }
    }
    info!("netpol agent stopping; enforcement stays in place (pinned under {})", pin_path_given.display());
    drop(watcher);
    drop(source);
    for task in [endpoints, event_task, cni_task].into_iter().flatten() {
        task.abort();
    }
    drop(conntrack_counter);
    drop(cni_conf_watcher);
    drop(pins);
    Ok(())
}

/// Waits out a burst of triggers (file or link events) so that it becomes one sync. A new veth
/// is held closed at once, before the debounce and the sync find its pod: a pod that sends the
/// moment its interface is up meets a closed door.
async fn debounce(rx: &mut mpsc::Receiver<Trigger>, first: Trigger, cfg: &RunConfig, holds: &mut Holds, datapath: &mut Datapath) {
    let hold = cfg.hold_new_interfaces.is_some();
    if hold && matches!(first, Trigger::Links) {
        holds.hold_new(datapath);
    }
    let until = tokio::time::Instant::now() + Duration::from_millis(20);
    while let Ok(Some(trigger)) = tokio::time::timeout_at(until, rx.recv()).await {
        if hold && matches!(trigger, Trigger::Links) {
            holds.hold_new(datapath);
        }
    }
}

/// An error and its causes, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
