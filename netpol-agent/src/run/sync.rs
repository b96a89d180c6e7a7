//! One level-triggered sync: the source's snapshot (with the CNI plugin's new pods merged in and
//! the audit namespaces set), compiled for this node (again only when it changed), the local
//! pods' veths found, the data path reconciled, and a typed [`SyncReport`] of what was done.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    net::IpAddr,
    sync::Arc,
};

use netpol_common::{EndpointInfo, IpKey, EP_HAS_IPV4, EP_HAS_IPV6};
use tracing::{info, warn};

use super::{config::RunConfig, RunError};
use crate::{
    cni::server::CniPods,
    compile::{CompileOptions, Compiler, Desired, RuleRef},
    datapath::{netlink, Datapath, PodInterface},
    model::{ObjectRef, Problem},
    source::{Snapshot, Source},
    telemetry::{
        events::{EventHub, Names},
        report::{MapEntries, SyncReport},
    },
};

/// A compile's output with its input: the source's snapshot, used as it was (not changed by the
/// sync), and the node's addresses. A resync with the same input uses it again: the compiler
/// would make the same maps (its endpoint ids and rule ids are kept per pod and rule).
struct Compiled {
    snapshot: Arc<Snapshot>,
    host_ips: Vec<IpAddr>,
    desired: Desired,
}

/// A sync that programmed a complete state.
pub(super) struct Synced {
    /// What it did and found.
    pub(super) report: SyncReport,
    /// The snapshot it programmed.
    pub(super) snapshot: Arc<Snapshot>,
}

/// What one sync leaves for the next: the compiler's allocators, the last compile, and what was
/// logged already.
#[derive(Default)]
pub(super) struct Syncer {
    compiler: Compiler,
    /// Endpoint ids were taken over from the pinned map (once, at the first sync).
    seeded: bool,
    compiled: Option<Compiled>,
    /// The problems and attached pods of the last sync, so each is logged when it appears.
    problems: Vec<Problem>,
    attached: BTreeMap<ObjectRef, String>,
}

impl Syncer {
    /// One sync. `Ok(None)` when the source has no complete snapshot yet, so nothing was
    /// programmed.
    pub(super) fn sync(&mut self, cfg: &RunConfig, source: &Source, cni_pods: &CniPods, datapath: &mut Datapath, events: Option<&EventHub>) -> Result<Option<Synced>, RunError> {
        let Some(loaded) = source.snapshot()? else {
            return Ok(None);
        };
        // The source's snapshot is shared with it; the state is copied only to change it.
        let mut state = Cow::Borrowed(&loaded.state);
        if state.audit_namespaces != cfg.audit_namespaces {
            state.to_mut().audit_namespaces.clone_from(&cfg.audit_namespaces);
        }
        cni_pods.merge_into(&mut state, &cfg.node);
        // The node's addresses are in the ipcache whether or not the node may reach its pods:
        // the classifier judges a pod's flows to them at once (they are delivered here, never
        // leave through an interface where a deferred judgement could happen).
        let host_ips = netlink::local_addresses().map_err(|source| RunError::Netlink { op: "list node addresses", source })?;
        if !self.seeded {
            // Keep the endpoint ids an earlier agent gave (by pod address), so conntrack
            // entries of open connections stay valid across a restart.
            for ep in datapath.current_endpoints().values() {
                if let Some(pod) = state.pods.values().find(|p| p.ips.iter().any(|ip| endpoint_has(ep, ip))) {
                    self.compiler.seed_endpoint(&pod.id, ep.endpoint);
                }
            }
            self.seeded = true;
        }
        // Only a snapshot the sync did not change can be recognised (the same `Arc`); a changed
        // copy is compiled every time.
        let unchanged = matches!(state, Cow::Borrowed(_))
            && self.compiled.as_ref().is_some_and(|c| Arc::ptr_eq(&c.snapshot, &loaded) && c.host_ips == host_ips);
        // A resync of the same snapshot says nothing new to lint.
        let new_snapshot = !self.compiled.as_ref().is_some_and(|c| Arc::ptr_eq(&c.snapshot, &loaded));
        let compiled = match self.compiled.take() {
            Some(last) if unchanged => last,
            _ => {
                let opts = CompileOptions { node: cfg.node.clone(), host_ips: host_ips.clone(), allow_host: cfg.allow_host };
                Compiled { snapshot: loaded.clone(), host_ips, desired: self.compiler.compile(&state, &opts) }
            }
        };
        let desired = &self.compiled.insert(compiled).desired;
        let interfaces = find_interfaces(desired)?;
        let exits = netlink::list_ethernet_interfaces().map_err(|source| RunError::Netlink { op: "list interfaces", source })?;
        let mut stats = datapath.apply_exits(&exits);
        stats.absorb(datapath.apply(desired, &interfaces));

        for p in loaded.problems.iter().filter(|p| !self.problems.contains(p)) {
            warn!(object = %p.object, reason = %p.reason, "ignored invalid object");
        }
        self.problems.clone_from(&loaded.problems);
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
        let attached: BTreeMap<ObjectRef, String> = interfaces.iter().map(|(pod, iface)| (pod.clone(), iface.name.clone())).collect();
        for (pod, iface) in interfaces.iter().filter(|(pod, _)| !self.attached.contains_key(*pod)) {
            info!(pod = %pod, interface = %iface.name, ifindex = iface.ifindex, "enforcing on pod");
        }
        self.attached.clone_from(&attached);
        if let (true, Some(interval)) = (new_snapshot, cfg.lint_interval) {
            super::lint::lint_in_background(&state, interval);
        }
        if let (Some(hub), false) = (events, unchanged) {
            hub.set_names(Names::new(&state, desired));
        }
        let report = SyncReport {
            local_pods: desired.endpoints.keys().cloned().collect(),
            enforcing: interfaces.iter().filter(|(_, i)| datapath.is_enforcing(i.ifindex)).map(|(pod, i)| (pod.clone(), i.name.clone())).collect(),
            attached,
            problems: loaded.problems.clone(),
            errors: stats.errors,
            entries: MapEntries { policy: desired.policy_entries, ipcache: desired.ipcache.len(), cidrs: desired.cidrs.len(), endpoints: interfaces.len() },
            packets: pod_packets(datapath, &interfaces),
            events: pod_events(datapath, &interfaces),
            policy_hits: policy_hits(datapath, &desired.rules),
        };
        Ok(Some(Synced { report, snapshot: loaded }))
    }
}

/// The endpoint the maps hold for each attached local pod.
fn endpoints<'a>(datapath: &'a Datapath, interfaces: &'a BTreeMap<ObjectRef, PodInterface>) -> impl Iterator<Item = (&'a ObjectRef, &'a EndpointInfo)> {
    interfaces.iter().filter_map(|(pod, iface)| Some((pod, datapath.current_endpoints().get(&iface.ifindex)?)))
}

/// The classifiers' packet counters of each attached local pod (non-zero ones only).
fn pod_packets(datapath: &Datapath, interfaces: &BTreeMap<ObjectRef, PodInterface>) -> BTreeMap<ObjectRef, crate::telemetry::report::PodPackets> {
    let mut out = BTreeMap::new();
    for (pod, ep) in endpoints(datapath, interfaces) {
        let Ok(counts) = datapath.slot_counters(ep.slot) else { continue };
        let mut by_direction = crate::telemetry::report::PodPackets::new();
        for (reason, by) in counts {
            for (direction, n) in crate::model::Direction::BOTH.into_iter().zip(by) {
                if n > 0 {
                    by_direction.entry(direction).or_default().insert(reason, n);
                }
            }
        }
        out.insert(pod.clone(), by_direction);
    }
    out
}

/// The verdict-event outcomes of each attached local pod (only pods with some).
fn pod_events(datapath: &Datapath, interfaces: &BTreeMap<ObjectRef, PodInterface>) -> BTreeMap<ObjectRef, crate::datapath::EventCounts> {
    endpoints(datapath, interfaces)
        .filter_map(|(pod, ep)| datapath.event_counts(ep.slot).ok().filter(|e| e.sent + e.suppressed + e.lost > 0).map(|e| (pod.clone(), e)))
        .collect()
}

/// New flows allowed per compiled rule (rules with hits only).
fn policy_hits(datapath: &Datapath, rules: &BTreeMap<u32, RuleRef>) -> BTreeMap<RuleRef, u64> {
    rules.iter().filter_map(|(id, rule)| datapath.rule_hits(*id).ok().filter(|n| *n > 0).map(|n| (rule.clone(), n))).collect()
}

/// Whether the endpoint value holds the address `ip`.
fn endpoint_has(ep: &EndpointInfo, ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => ep.flags & EP_HAS_IPV4 != 0 && ep.ipv4 == u32::from_ne_bytes(a.octets()),
        IpAddr::V6(a) => ep.flags & EP_HAS_IPV6 != 0 && ep.ipv6 == IpKey::from_octets(a.octets()),
    }
}

/// Finds the host-side veth of each local pod by the pod's addresses on the veth's peer.
fn find_interfaces(desired: &Desired) -> Result<BTreeMap<ObjectRef, PodInterface>, RunError> {
    let veths = netlink::list_veths().map_err(|source| RunError::Netlink { op: "find pod interfaces", source })?;
    let mut out = BTreeMap::new();
    for (pod, plan) in &desired.endpoints {
        if let Some(v) = veths.iter().find(|v| v.peer_addresses.iter().any(|a| plan.ips.contains(a))) {
            out.insert(pod.clone(), PodInterface { ifindex: v.ifindex, name: v.name.clone() });
        }
    }
    Ok(out)
}
