//! The agent's run loop: every trigger (a manifest change, an API watch event, a link event, a
//! periodic tick) schedules one debounced, level-triggered sync that takes a snapshot of the
//! whole source, compiles it, finds the local pods' veths and reconciles the data path.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use notify::Watcher as _;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    compile::{CompileOptions, Compiler, Desired},
    datapath::{Datapath, PodInterface},
    telemetry::http,
    source::kube::KubeSource,
    model::{ObjectRef, Problem},
    datapath::netlink,
    source::Source,

};

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
    pub audit_namespaces: std::collections::BTreeSet<String>,
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

/// Which veths may be held closed until their pod is known ([`Datapath::hold`] keeps the ones
/// held, and since when).
#[derive(Debug, Default)]
struct Holds {
    /// Veths there when the agent started (never held: the node's own, and pods enforced by the
    /// first sync).
    baseline: BTreeSet<u32>,
    /// Veths held once and released (no pod came, or they are the node's): not held again.
    released: BTreeSet<u32>,
}

impl Holds {
    /// Holds every veth with its peer in another namespace that is new since the agent started,
    /// has no endpoint yet, no address of its own and was not released before; releases held
    /// veths that got an address (a link of the node's, like an underlay to other nodes, not a
    /// pod's); forgets veths that are gone.
    fn hold_new(&mut self, datapath: &mut Datapath) {
        let (veths, addressed) = match (netlink::list_veth_links(), netlink::addressed_interfaces()) {
            (Ok(v), Ok(a)) => (v, a),
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, "list veths to hold new ones");
                return;
            }
        };
        let present: BTreeSet<u32> = veths.iter().map(|v| v.ifindex).collect();
        self.released.retain(|i| present.contains(i));
        let gone: Vec<u32> = datapath.held().keys().filter(|i| !present.contains(i)).copied().collect();
        for ifindex in gone {
            datapath.release(ifindex);
        }
        let addressed_held: Vec<u32> = datapath.held().keys().filter(|i| addressed.contains(i)).copied().collect();
        for ifindex in addressed_held {
            info!(ifindex, "held veth has an address of its own: the node's, not a pod's; released");
            self.release(datapath, ifindex);
        }
        for v in veths {
            let new = !self.baseline.contains(&v.ifindex) && !self.released.contains(&v.ifindex);
            if !new || addressed.contains(&v.ifindex) || datapath.current_endpoints().contains_key(&v.ifindex) {
                continue;
            }
            match datapath.hold(&PodInterface { ifindex: v.ifindex, name: v.name.clone() }) {
                Ok(()) => info!(interface = %v.name, ifindex = v.ifindex, "new veth held closed until its pod is known"),
                Err(e) => warn!(interface = %v.name, error = format!("{e:#}"), "could not hold a new veth"),
            }
        }
    }

    /// Releases the veths held longer than `limit` that no pod claimed (their entries and
    /// links go with the next apply).
    fn release_expired(&mut self, datapath: &mut Datapath, limit: Duration) {
        let expired: Vec<u32> = datapath.held().iter().filter(|(_, t)| t.elapsed() >= limit).map(|(i, _)| *i).collect();
        for ifindex in expired {
            warn!(ifindex, held_seconds = limit.as_secs(), "no local pod claimed a held veth: released (it passes unenforced)");
            self.release(datapath, ifindex);
        }
    }

    fn release(&mut self, datapath: &mut Datapath, ifindex: u32) {
        datapath.release(ifindex);
        self.released.insert(ifindex);
    }
}

/// What the agent reports after each sync (the `--status-file`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Status {
    /// Digest of the manifest content applied (see `manifests::digest_dir`; manifest source).
    pub manifest_digest: String,
    /// The newest resourceVersion applied per resource (API source).
    pub resource_versions: BTreeMap<String, String>,
    /// Whether a complete state has been programmed.
    pub ready: bool,
    /// Syncs done since start.
    pub syncs: u64,
    /// Local pods (`namespace/name`) the manifests place on this node.
    pub local_pods: Vec<String>,
    /// Local pods whose veth carries the classifiers.
    pub attached: Vec<String>,
    /// Local pods enforced after this sync (endpoint entry written, classifiers linked), with
    /// their veth.
    pub enforcing: BTreeMap<String, String>,
    /// Objects left out, and why.
    pub problems: Vec<Problem>,
    /// Data-path failures of the last sync.
    pub errors: Vec<String>,
    /// Packets counted by the classifiers per local pod (`namespace/name`), direction
    /// (`ingress`: into the pod, `egress`: out of it) and reason (`netpol_common::Reason`
    /// names), only the non-zero ones; read after each sync.
    pub packets: BTreeMap<String, BTreeMap<&'static str, BTreeMap<&'static str, u64>>>,
    /// Map entries: policy, ipcache, CIDR regions, endpoints.
    pub entries: BTreeMap<String, usize>,
    /// Verdict events per local pod: `sent`, `suppressed` (rate limit), `lost` (ring buffer
    /// full); only pods with some.
    pub events: BTreeMap<String, BTreeMap<&'static str, u64>>,
    /// New flows each policy rule allowed (the rule the data path found first), keyed
    /// `namespace/policy ingress[i]` or `... egress[i]`; only rules with hits.
    pub policy_hits: BTreeMap<String, u64>,
}

/// How soon to look again while some local pod has no interface yet.
const UNATTACHED_RESYNC: Duration = Duration::from_millis(250);

/// Why a sync was scheduled.
#[derive(Debug)]
enum Trigger {
    Manifests,
    Api,
    Links,
    Cni,
}

/// How long a CNI ADD may wait for its pod to be enforced (the plugin's own timeout is usually
/// shorter).
const CNI_WAIT: Duration = Duration::from_secs(30);

/// Runs the agent until SIGINT or SIGTERM. Enforcement stays in place when it stops.
pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    // Held for the agent's life: the pin path may go through it.
    let pins = pin_location(&cfg)?;
    let pin_path_given = cfg.pin_path.clone();
    let cfg = RunConfig { pin_path: pins.path.clone(), ..cfg };
    crate::datapath::loader::check_tcx().context("netpol enforces nothing on this node")?;
    let loading = Instant::now();
    let mut datapath = Datapath::load(&cfg.pin_path).with_context(|| format!("load data path under {}", cfg.pin_path.display()))?;
    info!(
        origin = ?datapath.origin(),
        build = %crate::datapath::loader::build_id(),
        elapsed_ms = loading.elapsed().as_millis() as u64,
        "data path ready"
    );
    for e in datapath.adopt_links() {
        warn!(error = %e, "could not adopt a pinned link");
    }
    let (tx, mut rx) = mpsc::channel::<Trigger>(64);

    let ready = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(crate::telemetry::metrics::Metrics::new());
    let (event_hub, event_task) = match crate::telemetry::events::EventHub::open(&cfg.pin_path, &cfg.node, cfg.events) {
        Ok((hub, ring)) => {
            let task = tokio::spawn(hub.clone().run(ring));
            (Some(hub), Some(task))
        }
        Err(e) => {
            warn!(error = format!("{e:#}"), "verdict events unavailable");
            (None, None)
        }
    };
    let conntrack_counter = crate::telemetry::metrics::count_conntrack_in_background(&cfg.pin_path, metrics.clone());
    let health = match cfg.health_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listen for health probes on {addr}"))?;
            info!(%addr, "serving /healthz, /readyz and /metrics");
            let endpoints = http::Endpoints {
                ready: ready.clone(),
                metrics: metrics.clone(),
                events: event_hub.clone(),
                token_file: cfg.http_token_file.clone(),
            };
            Some(tokio::spawn(http::serve(listener, endpoints)))
        }
        None => None,
    };

    let (source, watcher) = match &cfg.source {
        SourceConfig::Manifests(dir) => {
            let manifest_tx = tx.clone();
            let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Reading the manifests raises access events; only changes schedule a sync.
                if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                    let _ = manifest_tx.try_send(Trigger::Manifests);
                }
            })
            .context("create manifest watcher")?;
            watcher.watch(dir, notify::RecursiveMode::Recursive).with_context(|| format!("watch {}", dir.display()))?;
            (Source::Manifests(crate::source::ManifestDir::new(dir.clone())), Some(watcher))
        }
        SourceConfig::Kube => {
            let client = kube::Client::try_default().await.context("configure the Kubernetes client (KUBECONFIG or in-cluster)")?;
            let api_tx = tx.clone();
            let source = KubeSource::start(client, &cfg.node, move || {
                // A full channel already holds a pending sync.
                let _ = api_tx.try_send(Trigger::Api);
            });
            (Source::Kube(source), None)
        }
    };

    let events = netlink::LinkEvents::subscribe().context("subscribe to link events")?;
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
        .context("start link event thread")?;

    let cni_pods = Arc::new(crate::cni::server::CniPods::default());
    let (enforced_tx, enforced_rx) = tokio::sync::watch::channel(crate::cni::server::Enforced::default());
    let cni_task = match &cfg.cni_socket {
        Some(socket) => {
            let cni_tx = tx.clone();
            let resync: crate::cni::server::Resync = Arc::new(move || {
                let _ = cni_tx.try_send(Trigger::Cni);
            });
            Some(crate::cni::server::serve(socket, cni_pods.clone(), resync, enforced_rx, CNI_WAIT).await?)
        }
        None => None,
    };
    // Only now that the socket listens: a pod's ADD from here on finds the agent.
    let cni_conf_watcher = install_cni(&cfg)?;

    let mut holds = Holds::default();
    if cfg.hold_new_interfaces.is_some() {
        holds.baseline = netlink::list_veth_links().context("list veths")?.iter().map(|v| v.ifindex).collect();
    }

    let mut compiler = Compiler::new();
    let mut status = Status::default();
    let mut memo = SyncMemo::default();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("install SIGTERM handler")?;
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
                // A new veth is held closed at once, before the debounce and the sync find its
                // pod: a pod that sends the moment its interface is up meets a closed door.
                let hold = cfg.hold_new_interfaces.is_some();
                if hold && matches!(trigger, Trigger::Links) {
                    holds.hold_new(&mut datapath);
                }
                // Debounce: a burst of file or link events becomes one sync; link events in it
                // still hold new veths at once.
                let until = tokio::time::Instant::now() + Duration::from_millis(20);
                while let Ok(Some(trigger)) = tokio::time::timeout_at(until, rx.recv()).await {
                    if hold && matches!(trigger, Trigger::Links) {
                        holds.hold_new(&mut datapath);
                    }
                }
            }
        }
        let started = Instant::now();
        next_sync = tokio::time::Instant::now() + cfg.resync;
        if let Some(limit) = cfg.hold_new_interfaces {
            holds.hold_new(&mut datapath);
            holds.release_expired(&mut datapath, limit);
        }
        match sync(&cfg, &source, &cni_pods, &mut compiler, &mut datapath, &mut status, &mut memo, event_hub.as_deref()) {
            Ok(true) => {
                enforced_tx.send_replace(crate::cni::server::Enforced {
                    syncs: status.syncs,
                    pods: status.enforcing.clone(),
                    known: status.local_pods.iter().cloned().collect(),
                });
                metrics.synced(noticed.elapsed().as_secs_f64(), &status);
                if !ready.swap(true, Ordering::Relaxed) {
                    info!("first complete state programmed; ready");
                }
            }
            Ok(false) => {
                debug!("waiting for the source's first complete state; nothing programmed");
                continue;
            }
            Err(e) => {
                metrics.sync_failed();
                warn!(error = format!("{e:#}"), "sync failed; the last programmed state stays enforced");
                continue;
            }
        }
        debug!(elapsed_ms = started.elapsed().as_millis() as u64, "synced");
        // A pod's address is configured inside its own namespace, which raises no event here:
        // while a local pod has no interface yet, look again soon (backing off to the resync
        // period, for pods whose interface does not come).
        if status.attached.len() < status.local_pods.len() || !datapath.held().is_empty() {
            next_sync = tokio::time::Instant::now() + unattached_delay.min(cfg.resync);
            unattached_delay = unattached_delay.saturating_mul(2);
        } else {
            unattached_delay = UNATTACHED_RESYNC;
        }
    }
    info!("netpol agent stopping; enforcement stays in place (pinned under {})", pin_path_given.display());
    drop(watcher);
    drop(source);
    if let Some(h) = health {
        h.abort();
    }
    if let Some(t) = event_task {
        t.abort();
    }
    drop(conntrack_counter);
    if let Some(t) = cni_task {
        t.abort();
    }
    drop(cni_conf_watcher);
    drop(pins);
    Ok(())
}

/// The pin path on the node's bpffs ([`crate::datapath::bpffs::resolve`]), logged when it is not
/// the one given.
fn pin_location(cfg: &RunConfig) -> anyhow::Result<crate::datapath::bpffs::PinLocation> {
    use crate::datapath::bpffs::{self, Reach};
    let location = bpffs::resolve(&cfg.pin_path, cfg.pin_scope).with_context(|| format!("pin under {}", cfg.pin_path.display()))?;
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

/// Installs the CNI plugin binary, and chains it into the network configuration now and
/// whenever the configuration directory changes (a network plugin restarting rewrites its
/// configuration). The watcher returned keeps the chain while it lives.
fn install_cni(cfg: &RunConfig) -> anyhow::Result<Option<notify::RecommendedWatcher>> {
    let Some(socket) = cfg.cni_socket.clone() else { return Ok(None) };
    if let Some(dir) = &cfg.cni_bin_dir {
        let path = crate::cni::install::install_binary(dir).with_context(|| format!("install the CNI plugin into {}", dir.display()))?;
        info!(path = %path.display(), "CNI plugin installed");
    }
    let Some(conf_dir) = cfg.cni_conf_dir.clone() else { return Ok(None) };
    let ensure = move |dir: &Path| match crate::cni::install::ensure_chained(dir, &socket, CNI_PLUGIN_TIMEOUT_SECONDS) {
        Ok(crate::cni::install::ChainChange::Added(path)) => info!(path = %path.display(), "netpol-cni chained into the network configuration"),
        Ok(crate::cni::install::ChainChange::NoConfiguration) => info!(dir = %dir.display(), "no network configuration yet; chaining netpol-cni when one appears"),
        Ok(crate::cni::install::ChainChange::Present(_)) => {}
        Err(e) => warn!(error = format!("{e:#}"), "could not chain netpol-cni into the network configuration"),
    };
    std::fs::create_dir_all(&conf_dir).with_context(|| format!("create {}", conf_dir.display()))?;
    ensure(&conf_dir);
    let dir = conf_dir.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            ensure(&dir);
        }
    })
    .context("create CNI configuration watcher")?;
    watcher.watch(&conf_dir, notify::RecursiveMode::NonRecursive).with_context(|| format!("watch {}", conf_dir.display()))?;
    Ok(Some(watcher))
}

/// The plugin's `timeoutSeconds` in the chained configuration.
const CNI_PLUGIN_TIMEOUT_SECONDS: u64 = 10;

/// What one sync leaves for the next.
#[derive(Default)]
struct SyncMemo {
    /// Endpoint ids were taken over from the pinned map (once, at the first sync).
    seeded: bool,
    /// The last compile's output, and what it was made from.
    compiled: Option<Compiled>,
}

/// A compile's output with its input: the source's snapshot, used as it was (not changed by the
/// sync), and the node's addresses. A resync with the same input uses it again: the compiler
/// would make the same maps (its endpoint ids and rule ids are kept per pod and rule).
struct Compiled {
    snapshot: Arc<crate::source::Snapshot>,
    host_ips: Vec<std::net::IpAddr>,
    desired: crate::compile::Desired,
}

/// One level-triggered sync. `Ok(false)` when the source has no complete snapshot yet, so
/// nothing was programmed.
#[allow(clippy::too_many_arguments)]
fn sync(
    cfg: &RunConfig,
    source: &Source,
    cni_pods: &crate::cni::server::CniPods,
    compiler: &mut Compiler,
    datapath: &mut Datapath,
    status: &mut Status,
    memo: &mut SyncMemo,
    events: Option<&crate::telemetry::events::EventHub>,
) -> anyhow::Result<bool> {
    let Some(loaded) = source.snapshot()? else {
        return Ok(false);
    };
    // The source's snapshot is shared with it; the state is copied only to change it.
    let mut state = std::borrow::Cow::Borrowed(&loaded.state);
    if state.audit_namespaces != cfg.audit_namespaces {
        state.to_mut().audit_namespaces.clone_from(&cfg.audit_namespaces);
    }
    cni_pods.merge_into(&mut state, &cfg.node);
    // The node's addresses are in the ipcache whether or not the node may reach its pods: the
    // classifier judges a pod's flows to them at once (they are delivered here, never leave
    // through an interface where a deferred judgement could happen).
    let host_ips = netlink::local_addresses().context("list node addresses")?;
    if !memo.seeded {
        // Keep the endpoint ids an earlier agent gave (by pod address), so conntrack entries
        // of open connections stay valid across a restart.
        for ep in datapath.current_endpoints().values() {
            if let Some(pod) = state.pods.values().find(|p| p.ips.iter().any(|ip| endpoint_has(ep, ip))) {
                compiler.seed_endpoint(&pod.id, ep.endpoint);
            }
        }
        memo.seeded = true;
    }
    // Only a snapshot the sync did not change can be recognised (the same `Arc`); a changed copy
    // is compiled every time.
    let unchanged = matches!(state, std::borrow::Cow::Borrowed(_))
        && memo.compiled.as_ref().is_some_and(|c| Arc::ptr_eq(&c.snapshot, &loaded) && c.host_ips == host_ips);
    let compiled = match memo.compiled.take() {
        Some(last) if unchanged => last,
        _ => {
            let desired = compiler.compile(&state, &CompileOptions { node: cfg.node.clone(), host_ips: host_ips.clone(), allow_host: cfg.allow_host });
            Compiled { snapshot: loaded.clone(), host_ips, desired }
        }
    };
    let desired = &memo.compiled.insert(compiled).desired;
    let interfaces = find_interfaces(desired).context("find pod interfaces")?;
    let exits = netlink::list_ethernet_interfaces().context("list interfaces")?;
    let mut stats = datapath.apply_exits(&exits);
    stats.absorb(datapath.apply(desired, &interfaces));

    for p in &loaded.problems {
        if !status.problems.contains(p) {
            warn!(object = %p.object, reason = %p.reason, "ignored invalid object");
        }
    }
    for e in &stats.errors {
        warn!(error = %e, "data path update failed");
    }
    if stats.writes + stats.deletes + stats.attached + stats.detached > 0 {
        info!(
            writes = stats.writes,
            deletes = stats.deletes,
            attached = stats.attached,
            detached = stats.detached,
            policies = state.policies.len(),
            pods = state.pods.len(),
            "applied"
        );
    }
    for (pod, iface) in &interfaces {
        if !status.attached.contains(&pod.to_string()) {
            info!(pod = %pod, interface = %iface.name, ifindex = iface.ifindex, "enforcing on pod");
        }
    }
    // Lint only a changed snapshot (and the first): a resync of the same state says nothing new.
    let changed = status.syncs == 0 || status.manifest_digest != loaded.manifest_digest || status.resource_versions != loaded.resource_versions;
    if let (true, Some(interval)) = (changed, cfg.lint_interval) {
        lint_in_background(&state, interval);
    }
    status.manifest_digest.clone_from(&loaded.manifest_digest);
    status.resource_versions.clone_from(&loaded.resource_versions);
    status.ready = true;
    status.syncs += 1;
    status.local_pods = desired.endpoints.keys().map(ToString::to_string).collect();
    status.attached = interfaces.keys().map(ToString::to_string).collect();
    status.enforcing = interfaces
        .iter()
        .filter(|(_, iface)| datapath.is_enforcing(iface.ifindex))
        .map(|(pod, iface)| (pod.to_string(), iface.name.clone()))
        .collect();
    status.problems.clone_from(&loaded.problems);
    status.errors = stats.errors.iter().map(ToString::to_string).collect();
    status.packets = pod_counters(datapath, &interfaces);
    status.events = pod_event_counts(datapath, &interfaces);
    status.policy_hits = policy_hits(datapath, &desired.rules);
    if let (Some(hub), false) = (events, unchanged) {
        hub.set_names(crate::telemetry::events::Names::new(&state, desired));
    }
    status.entries = BTreeMap::from([
        ("policy".to_string(), desired.policy.len()),
        ("ipcache".to_string(), desired.ipcache.len()),
        ("cidrs".to_string(), desired.cidrs.len()),
        ("endpoints".to_string(), interfaces.len()),
    ]);
    if let Some(path) = &cfg.status_file {
        write_status(path, status).with_context(|| format!("write status {}", path.display()))?;
    }
    Ok(true)
}

/// The classifiers' packet counters of each attached local pod.
fn pod_counters(
    datapath: &Datapath,
    interfaces: &BTreeMap<ObjectRef, PodInterface>,
) -> BTreeMap<String, BTreeMap<&'static str, BTreeMap<&'static str, u64>>> {
    let mut out = BTreeMap::new();
    for (pod, iface) in interfaces {
        let Some(ep) = datapath.current_endpoints().get(&iface.ifindex) else { continue };
        let Ok(counts) = datapath.slot_counters(ep.slot) else { continue };
        let mut by_direction: BTreeMap<&'static str, BTreeMap<&'static str, u64>> = BTreeMap::new();
        for (reason, [ingress, egress]) in counts {
            for (direction, n) in [("ingress", ingress), ("egress", egress)] {
                if n > 0 {
                    by_direction.entry(direction).or_default().insert(reason.name(), n);
                }
            }
        }
        out.insert(pod.to_string(), by_direction);
    }
    out
}

/// The verdict-event outcomes of each attached local pod.
fn pod_event_counts(datapath: &Datapath, interfaces: &BTreeMap<ObjectRef, PodInterface>) -> BTreeMap<String, BTreeMap<&'static str, u64>> {
    let mut out = BTreeMap::new();
    for (pod, iface) in interfaces {
        let Some(ep) = datapath.current_endpoints().get(&iface.ifindex) else { continue };
        let Ok(crate::datapath::EventCounts { sent, suppressed, lost }) = datapath.event_counts(ep.slot) else { continue };
        if sent + suppressed + lost > 0 {
            out.insert(pod.to_string(), BTreeMap::from([("sent", sent), ("suppressed", suppressed), ("lost", lost)]));
        }
    }
    out
}

/// New flows allowed per compiled rule, by the rule's name (see [`Status::policy_hits`]).
fn policy_hits(datapath: &Datapath, rules: &BTreeMap<u32, crate::compile::RuleRef>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (id, rule) in rules {
        let Ok(n) = datapath.rule_hits(*id) else { continue };
        if n > 0 {
            let direction = if rule.direction == crate::model::Direction::Ingress { "ingress" } else { "egress" };
            *out.entry(format!("{} {direction}[{}]", rule.policy, rule.index)).or_default() += n;
        }
    }
    out
}

fn endpoint_has(ep: &netpol_common::EndpointInfo, ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => ep.flags & netpol_common::EP_HAS_IPV4 != 0 && ep.ipv4 == u32::from_ne_bytes(a.octets()),
        IpAddr::V6(a) => ep.flags & netpol_common::EP_HAS_IPV6 != 0 && ep.ipv6 == netpol_common::IpKey::from_octets(a.octets()),
    }
}

/// Finds the host-side veth of each local pod by the pod's addresses on the veth's peer.
fn find_interfaces(desired: &Desired) -> anyhow::Result<BTreeMap<ObjectRef, PodInterface>> {
    let veths = netlink::list_veths()?;
    let mut out = BTreeMap::new();
    for (pod, plan) in &desired.endpoints {
        if let Some(v) = veths.iter().find(|v| v.peer_addresses.iter().any(|a| plan.ips.contains(a))) {
            out.insert(pod.clone(), PodInterface { ifindex: v.ifindex, name: v.name.clone() });
        }
    }
    Ok(out)
}

fn write_status(path: &Path, status: &Status) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}

/// Clusters with more pods x policies than this are not linted inside the agent: the lint's
/// pairwise checks would take minutes of CPU and a compiled copy of the cluster per node
/// (10 000 pods x 1 000 policies: 3 min 22 s); `netpol-agent lint` does it on demand.
const LINT_BUDGET: usize = 200_000;

/// The newest snapshot waiting to be linted, and the signal that one is there.
static LINT_PENDING: (std::sync::Mutex<Option<crate::model::ClusterState>>, std::sync::Condvar) =
    (std::sync::Mutex::new(None), std::sync::Condvar::new());

/// Hands a copy of `state` to the lint thread (started on first use), replacing any snapshot it
/// has not got to yet: linting a large cluster takes a while, and enforcement must not wait for
/// it, nor lint a backlog of states already gone. The thread lints at most once per `interval`
/// (the first call's).
fn lint_in_background(state: &crate::model::ClusterState, interval: Duration) {
    static STARTED: std::sync::Once = std::sync::Once::new();
    static TOO_LARGE: std::sync::Once = std::sync::Once::new();
    if state.pods.len().saturating_mul(state.policies.len().max(1)) > LINT_BUDGET {
        TOO_LARGE.call_once(|| {
            info!(
                pods = state.pods.len(),
                policies = state.policies.len(),
                "cluster too large to lint inside the agent (pods x policies over {LINT_BUDGET}); run `netpol-agent lint` instead"
            );
        });
        return;
    }
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new().name("lint".into()).spawn(move || loop {
            let state = {
                let (slot, ready) = &LINT_PENDING;
                let mut pending = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                loop {
                    if let Some(state) = pending.take() {
                        break state;
                    }
                    pending = ready.wait(pending).unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            };
            // Advice must not compete with enforcement: the lowest CPU priority for this thread.
            // SAFETY: setpriority on this thread's own id; a failure only leaves the priority.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t, 19) };
            let started = Instant::now();
            warn_lint_findings(&state);
            drop(state);
            // A lint allocates (and frees) a compiled copy of the cluster per node; give the
            // freed memory back rather than keep it as the thread's arena high-water mark.
            // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
            unsafe { libc::malloc_trim(0) };
            debug!(elapsed_ms = started.elapsed().as_millis() as u64, "linted");
            // Findings are advice: at most one lint per interval (and at least ten times as long
            // as the lint took), of the newest state then.
            let took = started.elapsed();
            std::thread::sleep(interval.max(took.saturating_mul(10)).saturating_sub(took));
        });
        if let Err(e) = spawned {
            warn!(error = %e, "could not start the lint thread; lint findings are not logged");
        }
    });
    let (slot, ready) = &LINT_PENDING;
    *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(state.clone());
    ready.notify_one();
}

/// The lint findings already logged (only the lint thread uses it); a finding is logged again
/// only after it went away and came back.
static LINT_REPORTED: std::sync::Mutex<std::collections::BTreeSet<crate::tools::lint::Finding>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Logs each lint finding of `state` that was not there at the last lint as a warning, with
/// the finding's object, rule, code and fix as fields. Objects left out as invalid are not
/// linted again here: the sync already logs them.
fn warn_lint_findings(state: &crate::model::ClusterState) {
    let findings = crate::tools::lint::lint(state, &crate::tools::lint::Extra::default());
    let mut reported = LINT_REPORTED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for f in new_findings(&mut reported, &findings) {
        warn!(target: "netpol_agent::tools::lint", object = %f.object, rule = %f.rule, code = %f.code, fix = %f.fix, "{}", f.message);
    }
}

/// Keeps in `reported` only the findings of `current`, and returns those of them that were not
/// in it (to log now; they count as reported from here on).
fn new_findings<'a>(
    reported: &mut std::collections::BTreeSet<crate::tools::lint::Finding>,
    current: &'a [crate::tools::lint::Finding],
) -> Vec<&'a crate::tools::lint::Finding> {
    let now: std::collections::BTreeSet<&crate::tools::lint::Finding> = current.iter().collect();
    reported.retain(|f| now.contains(f));
    current.iter().filter(|f| reported.insert((*f).clone())).collect()
}

#[cfg(test)]
mod lint_warning_tests {
    use std::collections::BTreeSet;

    use super::new_findings;
    use crate::tools::lint::Finding;

    fn finding(object: &str, code: &str) -> Finding {
        Finding { object: object.into(), rule: "ingress[0]".into(), code: code.into(), message: "m".into(), fix: "f".into() }
    }

    #[test]
    fn each_finding_is_logged_once_while_it_lasts_and_again_when_it_comes_back() {
        let a = finding("NetworkPolicy x/a", "peers-ored");
        let b = finding("NetworkPolicy x/b", "namespace-label-unknown");
        let codes = |v: Vec<&Finding>| v.into_iter().map(|f| f.code.clone()).collect::<Vec<_>>();
        let mut reported = BTreeSet::new();
        assert_eq!(codes(new_findings(&mut reported, &[a.clone(), b.clone()])), ["peers-ored", "namespace-label-unknown"]);
        assert!(new_findings(&mut reported, &[a.clone(), b.clone()]).is_empty(), "no repeats while they last");
        assert!(new_findings(&mut reported, std::slice::from_ref(&a)).is_empty(), "b fixed");
        assert_eq!(codes(new_findings(&mut reported, &[a.clone(), b.clone()])), ["namespace-label-unknown"], "b broken again");
        assert!(new_findings(&mut reported, &[]).is_empty(), "all fixed");
        assert_eq!(reported, BTreeSet::new());
        assert_eq!(new_findings(&mut reported, &[a.clone(), a.clone()]).len(), 1, "a duplicate is logged once");
    }
}
