//! The agent's Prometheus metrics (served at `/metrics` beside the health endpoints): packets
//! per pod, direction, reason and verdict from the classifiers' counters, map fill levels, how
//! long a change takes to be programmed, attach errors, invalid objects and the agent's own
//! health. Every series is documented in `docs/observability.md`.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering},
};

use netpol_common::{CIDRS_MAX, CONNTRACK_MAX, ENDPOINTS_MAX, IPCACHE_MAX, MAP_CONNTRACK, POLICY_MAX};
use super::report::{PodPackets, SyncReport};
use crate::model::ObjectRef;
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels of `netpol_packets_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PacketLabels {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// `ingress` (into the pod) or `egress` (out of it).
    pub direction: String,
    /// The classifier's reason (`netpol_common::Reason::name`).
    pub reason: String,
    /// `allow` or `drop`.
    pub verdict: String,
}

/// Labels of the map gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    /// The map: `policy`, `ipcache`, `cidrs` or `endpoints`.
    pub map: String,
}

/// Labels of `netpol_policy_hits_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RuleLabels {
    /// The policy's namespace.
    pub namespace: String,
    /// The policy's name.
    pub policy: String,
    /// The rule: `ingress[i]` or `egress[i]`.
    pub rule: String,
}

/// Labels of `netpol_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct EventLabels {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// `sent`, `suppressed` (rate limit) or `lost` (ring buffer full).
    pub outcome: String,
}

/// The metrics, updated by the run loop after each sync and encoded per scrape.
pub struct Metrics {
    registry: Registry,
    packets: Family<PacketLabels, Counter>,
    map_entries: Family<MapLabels, Gauge>,
    programming_seconds: Histogram,
    syncs: Counter,
    sync_failures: Counter,
    attach_errors: Counter,
    datapath_errors: Counter,
    invalid_objects: Gauge,
    local_pods: Gauge,
    attached_pods: Gauge,
    ready: Gauge,
    policy_hits: Family<RuleLabels, Counter>,
    events: Family<EventLabels, Counter>,
    /// The kernel counters seen at the last update, to add only what moved.
    last: std::sync::Mutex<BTreeMap<PacketLabels, u64>>,
    /// The same for rule hits and event outcomes.
    last_rules: std::sync::Mutex<BTreeMap<RuleLabels, u64>>,
    last_events: std::sync::Mutex<BTreeMap<EventLabels, u64>>,
    /// Scrapes served.
    scrapes: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("scrapes", &self.scrapes.load(Ordering::Relaxed)).finish()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every series.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("netpol");
        let packets = Family::<PacketLabels, Counter>::default();
        registry.register("packets", "Packets the classifiers judged, per local pod, direction, reason and verdict", packets.clone());
        let map_entries = Family::<MapLabels, Gauge>::default();
        registry.register("map_entries", "Entries the agent programmed into each data-path map", map_entries.clone());
        let map_capacity = Family::<MapLabels, Gauge>::default();
        registry.register("map_capacity", "Capacity of each data-path map", map_capacity.clone());
        for (map, cap) in
            [("policy", POLICY_MAX), ("ipcache", IPCACHE_MAX), ("cidrs", CIDRS_MAX), ("endpoints", ENDPOINTS_MAX), ("conntrack", CONNTRACK_MAX)]
        {
            map_capacity.get_or_create(&MapLabels { map: map.into() }).set(i64::from(cap));
        }
        let programming_seconds = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]);
        registry.register(
            "programming_seconds",
            "Time from a change being noticed (file, API or link event) to the data path programmed",
            programming_seconds.clone(),
        );
        let syncs = Counter::default();
        registry.register("syncs", "Syncs that programmed a complete state", syncs.clone());
        let sync_failures = Counter::default();
        registry.register("sync_failures", "Syncs that failed (the last programmed state stayed)", sync_failures.clone());
        let attach_errors = Counter::default();
        registry.register("attach_errors", "Failures to attach the classifiers to a pod's veth", attach_errors.clone());
        let datapath_errors = Counter::default();
        registry.register("datapath_errors", "Failed map writes, deletes and detaches", datapath_errors.clone());
        let invalid_objects = Gauge::default();
        registry.register("invalid_objects", "Objects left out as invalid in the current state", invalid_objects.clone());
        let local_pods = Gauge::default();
        registry.register("local_pods", "Pods of this node in the current state", local_pods.clone());
        let attached_pods = Gauge::default();
        registry.register("attached_pods", "Local pods whose veth carries the classifiers", attached_pods.clone());
        let ready = Gauge::default();
        registry.register("ready", "1 once the first complete state is programmed", ready.clone());
        let policy_hits = Family::<RuleLabels, Counter>::default();
        registry.register(
            "policy_hits",
            "New flows each policy rule allowed on this node (the rule the data path found first)",
            policy_hits.clone(),
        );
        let events = Family::<EventLabels, Counter>::default();
        registry.register("events", "Verdict events per local pod: sent, suppressed by the rate limit, lost to a full ring buffer", events.clone());
        Self {
            registry,
            packets,
            map_entries,
            programming_seconds,
            syncs,
            sync_failures,
            attach_errors,
            datapath_errors,
            invalid_objects,
            local_pods,
            attached_pods,
            ready,
            policy_hits,
            events,
            last: std::sync::Mutex::new(BTreeMap::new()),
            last_rules: std::sync::Mutex::new(BTreeMap::new()),
            last_events: std::sync::Mutex::new(BTreeMap::new()),
            scrapes: AtomicU64::new(0),
        }
    }

    /// Records a sync that programmed a complete state.
    pub fn synced(&self, programming_seconds: f64, report: &SyncReport) {
        self.syncs.inc();
        self.ready.set(1);
        self.programming_seconds.observe(programming_seconds);
        for e in &report.errors {
            if e.is_attach() {
                self.attach_errors.inc();
            } else {
                self.datapath_errors.inc();
            }
        }
        self.invalid_objects.set(gauge(report.problems.len()));
        self.local_pods.set(gauge(report.local_pods.len()));
        self.attached_pods.set(gauge(report.attached.len()));
        for (map, n) in report.entries.by_name() {
            self.map_entries.get_or_create(&MapLabels { map: map.into() }).set(gauge(n));
        }
        self.packets_seen(&report.packets);
        let rules = report.policy_hits.iter().map(|(rule, n)| {
            (RuleLabels { namespace: rule.policy.namespace.clone(), policy: rule.policy.name.clone(), rule: rule.rule() }, *n)
        });
        add_moved(&self.policy_hits, &self.last_rules, rules);
        let events = report.events.iter().flat_map(|(pod, counts)| {
            [("sent", counts.sent), ("suppressed", counts.suppressed), ("lost", counts.lost)]
                .map(|(outcome, n)| (EventLabels { namespace: pod.namespace.clone(), pod: pod.name.clone(), outcome: outcome.into() }, n))
        });
        add_moved(&self.events, &self.last_events, events);
    }

    /// Sets the conntrack fill level (entries counted in the pinned map).
    pub fn conntrack_entries(&self, n: usize) {
        self.map_entries.get_or_create(&MapLabels { map: "conntrack".into() }).set(gauge(n));
    }

    /// Records a failed sync.
    pub fn sync_failed(&self) {
        self.sync_failures.inc();
    }

    /// Adds what each kernel counter moved since the last call (a counter that went back —
    /// a pod's slot given to a new pod — starts again from its new value).
    pub fn packets_seen(&self, packets: &BTreeMap<ObjectRef, PodPackets>) {
        let counts = packets.iter().flat_map(|(pod, directions)| {
            directions.iter().flat_map(move |(direction, reasons)| {
                reasons.iter().map(move |(reason, n)| {
                    let labels = PacketLabels {
                        namespace: pod.namespace.clone(),
                        pod: pod.name.clone(),
                        direction: direction.to_string(),
                        reason: reason.name().to_string(),
                        verdict: if reason.is_drop() { "drop" } else { "allow" }.to_string(),
                    };
                    (labels, *n)
                })
            })
        });
        add_moved(&self.packets, &self.last, counts);
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        self.scrapes.fetch_add(1, Ordering::Relaxed);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// A count as a gauge's value (saturating: no map holds 2^63 entries).
fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Adds to each counter of `family` what its kernel count moved since the last call (a count
/// that went back starts again from its new value).
fn add_moved<L>(family: &Family<L, Counter>, last: &std::sync::Mutex<BTreeMap<L, u64>>, counts: impl Iterator<Item = (L, u64)>)
where
    L: Clone + Ord + std::hash::Hash + EncodeLabelSet + std::fmt::Debug,
{
    let mut last = last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for (labels, n) in counts {
        let before = last.insert(labels.clone(), n).unwrap_or(0);
        family.get_or_create(&labels).inc_by(if n >= before { n - before } else { n });
    }
}

/// How often the conntrack fill level is counted.
const CONNTRACK_COUNT_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// Stops the conntrack counting thread when dropped: the thread waits on the other end of this
/// channel between counts, and its sender gone ends the wait at once.
#[derive(Debug)]
pub struct ConntrackCounter {
    _stop: std::sync::mpsc::Sender<()>,
}

/// Counts the entries of the pinned conntrack map every few seconds on a thread of its own
/// (batched reads of up to `CONNTRACK_MAX` entries, kept off the sync path) into
/// `netpol_map_entries{map="conntrack"}`. The thread sleeps between counts, with no wake-ups in
/// between: on a small node every wake-up of the agent's can move a workload's thread to the
/// other CPU.
pub fn count_conntrack_in_background(pin_path: &std::path::Path, metrics: std::sync::Arc<Metrics>) -> ConntrackCounter {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let path = pin_path.join(MAP_CONNTRACK);
    let spawned = std::thread::Builder::new().name("conntrack-count".into()).spawn(move || loop {
        match crate::datapath::counters::count_conntrack(&path) {
            Ok(n) => metrics.conntrack_entries(n),
            Err(e) => tracing::debug!(error = %e, "could not count conntrack entries"),
        }
        if stopped.recv_timeout(CONNTRACK_COUNT_PERIOD) != Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            return;
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the conntrack counting thread");
    }
    ConntrackCounter { _stop: stop }
}

impl PartialOrd for PacketLabels {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PacketLabels {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.namespace, &self.pod, &self.direction, &self.reason).cmp(&(&other.namespace, &other.pod, &other.direction, &other.reason))
    }
}

#[cfg(test)]
mod tests {
    use netpol_common::Reason;

    use super::*;
    use crate::model::Direction;

    fn packets(n: u64) -> BTreeMap<ObjectRef, PodPackets> {
        let reasons = BTreeMap::from([(Reason::DropNoRule, n), (Reason::AllowPolicy, 2)]);
        BTreeMap::from([(ObjectRef::new("x", "a"), BTreeMap::from([(Direction::Ingress, reasons)]))])
    }

    #[test]
    fn packet_counters_add_what_the_kernel_counters_moved() {
        let m = Metrics::new();
        m.packets_seen(&packets(5));
        m.packets_seen(&packets(8));
        let text = m.encode();
        assert!(
            text.contains(r#"netpol_packets_total{namespace="x",pod="a",direction="ingress",reason="drop_no_rule",verdict="drop"} 8"#),
            "{text}"
        );
        assert!(text.contains(r#"reason="allow_policy",verdict="allow"} 2"#), "{text}");
        // A slot reused by a new pod starts from zero again: its new count is added.
        m.packets_seen(&packets(3));
        assert!(m.encode().contains(r#"reason="drop_no_rule",verdict="drop"} 11"#));
    }

    #[test]
    fn every_series_is_exposed() {
        let m = Metrics::new();
        m.synced(0.012, &SyncReport::default());
        let text = m.encode();
        for series in [
            "netpol_packets",
            "netpol_map_entries",
            "netpol_map_capacity",
            "netpol_programming_seconds_bucket",
            "netpol_syncs_total",
            "netpol_sync_failures_total",
            "netpol_attach_errors_total",
            "netpol_datapath_errors_total",
            "netpol_invalid_objects",
            "netpol_local_pods",
            "netpol_attached_pods",
            "netpol_ready 1",
            "netpol_policy_hits",
            "netpol_events",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }
}
