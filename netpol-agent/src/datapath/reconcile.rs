//! Bringing the kernel to a compiled [`Desired`]: only the differences are written, in an order
//! that never lets a packet see a half-applied change that denies what both the old and the new
//! state allow (docs/architecture.md, "Survival"): isolation being lifted first, then new and
//! changed entries, then isolation being added, then removals, then generation bumps. Then the
//! links: classifiers onto every interface that has its endpoint, off every other.

use std::{
    collections::{hash_map::DefaultHasher, BTreeMap, BTreeSet},
    hash::{Hash, Hasher},
};

use aya::maps::lpm_trie::Key;
use netpol_common::{EndpointInfo, IdentityValue, IpKey, EP_AUDIT, EP_EGRESS_ISOLATED, EP_HAS_IPV4, EP_HAS_IPV6, EP_INGRESS_ISOLATED};

use super::{
    counters::free_slot,
    error::ApplyStats,
    maps::{remove_stale, upsert},
    Datapath, PodInterface,
};
use crate::{
    compile::{kernel::EndpointEntry, Desired, EndpointPlan},
    model::ObjectRef,
};

impl Datapath {
    /// Brings maps and attachments to `desired`, for the local pods found at `interfaces`
    /// (pods without an interface get no endpoint yet).
    pub fn apply(&mut self, desired: &Desired, interfaces: &BTreeMap<ObjectRef, PodInterface>) -> ApplyStats {
        let mut stats = self.apply_maps(desired, interfaces);
        if self.adopt_after_first_apply {
            // The new maps hold the whole state now: switch every pinned link to this build's
            // programs (an atomic program replacement per link; no packet sees neither).
            self.adopt_after_first_apply = false;
            let errors = self.links.adopt(&mut self.programs);
            tracing::info!(errors = errors.len(), "pinned links switched to this build's programs after the layout change");
            stats.errors.extend(errors);
        }
        self.apply_links(interfaces, &mut stats);
        stats
    }

    /// The map half of [`Datapath::apply`]: writes every map, attaches nothing (tests drive the
    /// programs with BPF_PROG_TEST_RUN on top of it).
    pub fn apply_maps(&mut self, desired: &Desired, interfaces: &BTreeMap<ObjectRef, PodInterface>) -> ApplyStats {
        let mut stats = ApplyStats::default();
        self.counters.rules_changed(&desired.rules, &mut stats);
        // A held interface a local pod now claims gets that pod's endpoint below.
        self.held.retain(|ifindex, _| !interfaces.values().any(|i| i.ifindex == *ifindex));
        self.lift_isolation(desired, interfaces, &mut stats);

        // 1. New and changed policy entries (ports and ranges before the peer rules that send
        // lookups to them), regions and identities.
        let (maps, kernel) = (&mut self.maps, &desired.policy);
        let m = &mut maps.mirror;
        upsert(&mut m.port_rules, &kernel.ports, "port rule", &mut stats, |k, v| maps.port_rules.insert(k, v, 0));
        upsert(&mut m.ranges, &kernel.ranges, "port range entry", &mut stats, |k, v| maps.ranges.insert(&Key::new(k.prefix_len, k.key), v, 0));
        upsert(&mut m.peer_rules, &kernel.peers, "peer rules", &mut stats, |k, v| maps.peer_rules.insert(k, v, 0));
        // A peer address whose identity changes or goes away may revoke open flows of every
        // endpoint; a new address only adds identities, and policies only add allows.
        let identities_changed = m.cidrs.iter().any(|(k, id)| desired.cidrs.get(k) != Some(id))
            || m.ipcache.iter().any(|(k, id)| desired.ipcache.get(k) != Some(id));
        upsert(&mut m.cidrs, &desired.cidrs, "cidr region", &mut stats, |k, id| {
            maps.cidrs.insert(&Key::new(k.prefix_len, k.addr), IdentityValue { identity: *id }, 0)
        });
        upsert(&mut m.ipcache, &desired.ipcache, "ipcache entry", &mut stats, |k: &IpKey, id| maps.ipcache.insert(k, IdentityValue { identity: *id }, 0));

        // 2. Endpoints with their new isolation flags, at their current generation.
        let mut wanted: BTreeMap<u32, (u64, &EndpointPlan)> = BTreeMap::new();
        for (pod, plan) in &desired.endpoints {
            let Some(iface) = interfaces.get(pod) else { continue };
            wanted.insert(iface.ifindex, (fingerprint(desired, plan), plan));
            let generation = self.generations.get(&plan.id).map_or(1, |(_, g)| *g);
            let slot = self.slot_for(iface.ifindex, plan.id, &mut stats);
            let info = endpoint_info(plan, generation, slot);
            if self.maps.mirror.endpoints.get(&iface.ifindex) != Some(&info) {
                self.maps.write_endpoint(iface.ifindex, info, &mut stats);
            }
        }

        // 3. Removals (peer rules first: nothing sends lookups to an entry once it is gone).
        let (maps, kernel) = (&mut self.maps, &desired.policy);
        let m = &mut maps.mirror;
        remove_stale(&mut m.peer_rules, &kernel.peers, "peer rules", &mut stats, |k| maps.peer_rules.remove(k));
        remove_stale(&mut m.port_rules, &kernel.ports, "port rule", &mut stats, |k| maps.port_rules.remove(k));
        remove_stale(&mut m.ranges, &kernel.ranges, "port range entry", &mut stats, |k| maps.ranges.remove(&Key::new(k.prefix_len, k.key)));
        remove_stale(&mut m.cidrs, &desired.cidrs, "cidr region", &mut stats, |k| maps.cidrs.remove(&Key::new(k.prefix_len, k.addr)));
        remove_stale(&mut m.ipcache, &desired.ipcache, "ipcache entry", &mut stats, |k| maps.ipcache.remove(k));

        // 4. Generation bumps: flows allowed under an older policy are checked again.
        for (ifindex, (fp, plan)) in &wanted {
            let (old_fp, generation) = self.generations.get(&plan.id).copied().unwrap_or((0, 0));
            if old_fp != *fp || identities_changed {
                let generation = generation.wrapping_add(1).max(1);
                self.generations.insert(plan.id, (*fp, generation));
                let slot = self.maps.mirror.endpoints.get(ifindex).map_or(0, |e| e.slot);
                self.maps.write_endpoint(*ifindex, endpoint_info(plan, generation, slot), &mut stats);
            }
        }

        // 5. Endpoints of interfaces that are gone or no longer local pods (and not held).
        let stale: Vec<u32> = self.maps.mirror.endpoints.keys().filter(|k| !wanted.contains_key(k) && !self.held.contains_key(k)).copied().collect();
        for ifindex in stale {
            if let Some(ep) = self.maps.remove_endpoint(ifindex, &mut stats) {
                self.generations.remove(&ep.endpoint);
            }
        }
        stats
    }

    /// Step 0 of [`Datapath::apply_maps`]: isolation that the new state lifts, first. The new
    /// state allows everything in that direction, so lifting it early opens nothing the new
    /// state denies; done later, a peer whose identity changes would meet the old isolation with
    /// no rule for its new identity (the old state's rule named the old one), and a flow both
    /// states allow would be dropped in between.
    fn lift_isolation(&mut self, desired: &Desired, interfaces: &BTreeMap<ObjectRef, PodInterface>, stats: &mut ApplyStats) {
        for (pod, plan) in &desired.endpoints {
            let Some(iface) = interfaces.get(pod) else { continue };
            let Some(cur) = self.maps.mirror.endpoints.get(&iface.ifindex).copied() else { continue };
            if cur.endpoint != plan.id {
                continue;
            }
            let mut flags = cur.flags;
            if !plan.ingress_isolated {
                flags &= !EP_INGRESS_ISOLATED;
            }
            if !plan.egress_isolated {
                flags &= !EP_EGRESS_ISOLATED;
            }
            if flags != cur.flags {
                self.maps.write_endpoint(iface.ifindex, EndpointInfo { flags, ..cur }, stats);
            }
        }
    }

    /// The counter slot of the endpoint `id` on `ifindex`: the one it has, or the lowest one no
    /// current endpoint uses (zeroed first), or the shared slot 0 when all are taken.
    fn slot_for(&mut self, ifindex: u32, id: u32, stats: &mut ApplyStats) -> u32 {
        if let Some(ep) = self.maps.mirror.endpoints.get(&ifindex) {
            if ep.endpoint == id && ep.slot != 0 {
                return ep.slot;
            }
        }
        let used: BTreeSet<u32> = self.maps.mirror.endpoints.values().map(|e| e.slot).collect();
        match free_slot(&used) {
            Some(slot) => {
                self.counters.reset_slot(slot, stats);
                slot
            }
            None => 0,
        }
    }

    /// The link half of [`Datapath::apply`]: attaches the classifiers to every interface that
    /// has an endpoint entry and no links yet, and detaches (unpins) links of other interfaces.
    fn apply_links(&mut self, interfaces: &BTreeMap<ObjectRef, PodInterface>, stats: &mut ApplyStats) {
        let pinned = self.links.pinned_pods();
        let mut wanted: BTreeSet<u32> = interfaces.values().map(|i| i.ifindex).filter(|i| self.maps.mirror.endpoints.contains_key(i)).collect();
        wanted.extend(self.held.keys());
        for iface in interfaces.values() {
            if wanted.contains(&iface.ifindex) && !pinned.contains(&iface.ifindex) {
                match self.links.attach_pod(&mut self.programs, iface) {
                    Ok(()) => stats.attached += 1,
                    Err(e) => stats.errors.push(e),
                }
            }
        }
        for ifindex in pinned.difference(&wanted) {
            self.links.detach_pod(*ifindex, stats);
            stats.detached += 1;
        }
        self.links.retire_pod_exits(stats);
    }
}

/// The endpoint map value of a plan at a generation, counting into counter slot `slot`.
pub fn endpoint_info(plan: &EndpointPlan, generation: u32, slot: u32) -> EndpointInfo {
    let mut flags = 0;
    for (on, flag) in [
        (plan.ingress_isolated, EP_INGRESS_ISOLATED),
        (plan.egress_isolated, EP_EGRESS_ISOLATED),
        (plan.ipv4.is_some(), EP_HAS_IPV4),
        (plan.ipv6.is_some(), EP_HAS_IPV6),
        (plan.audit, EP_AUDIT),
    ] {
        if on {
            flags |= flag;
        }
    }
    EndpointInfo {
        endpoint: plan.id,
        flags,
        generation,
        slot,
        ipv4: plan.ipv4.map_or(0, |a| u32::from_ne_bytes(a.octets())),
        _pad2: 0,
        ipv6: plan.ipv6.map_or(IpKey::default(), |a| IpKey::from_octets(a.octets())),
    }
}

/// A fingerprint of the endpoint's own part of its verdicts: its isolation and policy entries
/// (the peers' identities are checked separately, for all endpoints at once). Rule ids are left
/// out: they name what allowed a flow, they do not change whether it is.
fn fingerprint(desired: &Desired, plan: &EndpointPlan) -> u64 {
    let mut h = DefaultHasher::new();
    (plan.ingress_isolated, plan.egress_isolated).hash(&mut h);
    for entry in desired.policy.of_endpoint(plan.id) {
        match entry {
            EndpointEntry::Peer(k, v) => (0u8, k, v.any, v.all_ports, v.ports, v.ranges).hash(&mut h),
            EndpointEntry::Port(k, v) => (1u8, k, v.action, v.tier).hash(&mut h),
            EndpointEntry::Range(k, v) => (2u8, k.prefix_len, k.key, v.action, v.tier).hash(&mut h),
        }
    }
    h.finish()
}
