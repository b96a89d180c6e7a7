//! The data path's decision for a new flow, evaluated in user space over compiled map contents
//! ([`Desired`]), lookup for lookup as the classifier does it. Tests use it to check the
//! compiler against truth tables without a kernel.

use std::net::IpAddr;

use netpol_common::{PolicyKey, IDENTITY_ANY};

use crate::{
    compile::{ip_key, Desired, Direction},
    model::ObjectRef,
    compile::kernel,

};

/// A new flow as one endpoint sees it.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    /// Ingress (peer -> pod) or egress (pod -> peer).
    pub direction: Direction,
    /// The other end's address.
    pub peer: IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    /// Destination port (0 for protocols without ports).
    pub port: u16,
}

/// The peer identities the classifier looks up for `peer`: exact (pod or host), CIDR region,
/// and ANY.
pub fn peer_identities(desired: &Desired, peer: IpAddr) -> Vec<u32> {
    let key = ip_key(&peer);
    let mut ids = Vec::new();
    if let Some(id) = desired.ipcache.get(&key) {
        ids.push(*id);
    }
    let region = desired
        .cidrs
        .iter()
        .filter(|(k, _)| {
            let n = k.prefix_len;
            let mask = if n == 0 { 0 } else { u128::MAX << (128 - n) };
            u128::from_be_bytes(k.addr.octets()) & mask == u128::from_be_bytes(key.octets()) & mask
        })
        .max_by_key(|(k, _)| k.prefix_len);
    if let Some((_, id)) = region {
        ids.push(*id);
    }
    ids.push(IDENTITY_ANY);
    ids
}

/// Whether the compiled state allows `flow` on the local pod `pod`; `None` when the pod is
/// not a local endpoint.
pub fn allows(desired: &Desired, pod: &ObjectRef, flow: &Flow) -> Option<bool> {
    let ep = desired.endpoints.get(pod)?;
    // The endpoint's entries split as the kernel's maps hold them, looked up as the classifier does.
    let entries = desired.entries_of(ep.id).map(|(k, v)| (*k, *v)).collect();
    allows_in(desired, &kernel::policy_maps(&entries), pod, flow)
}

/// [`allows`] with the policy entries already split as the kernel holds them
/// (`kernel::policy_maps(&desired.policy)`, made once for many questions).
pub fn allows_in(desired: &Desired, maps: &kernel::PolicyMaps, pod: &ObjectRef, flow: &Flow) -> Option<bool> {
    let ep = desired.endpoints.get(pod)?;
    let isolated = match flow.direction {
        Direction::Ingress => ep.ingress_isolated,
        Direction::Egress => ep.egress_isolated,
    };
    if !isolated {
        return Some(true);
    }
    Some(peer_identities(desired, flow.peer).into_iter().any(|identity| {
        let probe = PolicyKey {
            endpoint: ep.id,
            identity,
            direction: flow.direction.number(),
            protocol: flow.protocol,
            port_be: flow.port.to_be(),
        };
        kernel::allows(maps, &probe)
    }))
}
