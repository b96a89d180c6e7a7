//! New veths held closed until their pod is known (`--hold-new-interfaces`): which veths may be
//! held, which were released and are not held again, and when a hold expires.

use std::{collections::BTreeSet, time::Duration};

use tracing::{info, warn};

use crate::datapath::{netlink, Datapath, PodInterface};

/// Which veths may be held closed until their pod is known ([`Datapath::hold`] keeps the ones
/// held, and since when).
#[derive(Debug, Default)]
pub(super) struct Holds {
    /// Veths there when the agent started (never held: the node's own, and pods enforced by the
    /// first sync).
    pub(super) baseline: BTreeSet<u32>,
    /// Veths held once and released (no pod came, or they are the node's): not held again.
    released: BTreeSet<u32>,
}

impl Holds {
    /// Holds every veth with its peer in another namespace that is new since the agent started,
    /// has no endpoint yet, no address of its own and was not released before; releases held
    /// veths that got an address (a link of the node's, like an underlay to other nodes, not a
    /// pod's); forgets veths that are gone.
    pub(super) fn hold_new(&mut self, datapath: &mut Datapath) {
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
                Err(e) => warn!(interface = %v.name, error = %e, "could not hold a new veth"),
            }
        }
    }

    /// Releases the veths held longer than `limit` that no pod claimed (their entries and
    /// links go with the next apply).
    pub(super) fn release_expired(&mut self, datapath: &mut Datapath, limit: Duration) {
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
