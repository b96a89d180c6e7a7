//! Interfaces held closed until a local pod claims them: a veth that appears while the agent
//! runs gets an endpoint isolated both ways with no address and no rules (everything but IPv6
//! neighbour discovery is dropped: from the pod as spoofed, to it for want of a rule) and both
//! classifiers, until a reconciliation finds its pod or the run loop releases it.

use std::{collections::BTreeMap, time::Instant};

use netpol_common::{EndpointInfo, EP_EGRESS_ISOLATED, EP_INGRESS_ISOLATED};

use super::{error::ApplyError, Datapath, PodInterface, HELD_ENDPOINT};

impl Datapath {
    /// Holds `iface` closed. The next [`Datapath::apply`] that finds a pod on it gives it the
    /// pod's entry; until then it keeps the hold, until [`Datapath::release`].
    pub fn hold(&mut self, iface: &PodInterface) -> Result<(), ApplyError> {
        let info = EndpointInfo { endpoint: HELD_ENDPOINT, flags: EP_INGRESS_ISOLATED | EP_EGRESS_ISOLATED, generation: 1, ..EndpointInfo::default() };
        let write = |what: &'static str| move |e| ApplyError::Write { what, key: format!("of {} (held)", iface.name), source: Box::new(e) };
        self.maps.endpoints.insert(iface.ifindex, info, 0).map_err(write("endpoint"))?;
        self.maps.mirror.endpoints.insert(iface.ifindex, info);
        self.maps.bump_epoch().map_err(write("epoch"))?;
        self.held.insert(iface.ifindex, Instant::now());
        if !self.links.pod_linked(iface.ifindex) {
            self.links.attach_pod(&mut self.programs, iface)?;
        }
        Ok(())
    }

    /// Stops holding interface `ifindex`; the next [`Datapath::apply`] removes its entry and
    /// links unless a pod claims it.
    pub fn release(&mut self, ifindex: u32) {
        self.held.remove(&ifindex);
    }

    /// Interfaces held closed (ifindex), and since when.
    pub fn held(&self) -> &BTreeMap<u32, Instant> {
        &self.held
    }
}
