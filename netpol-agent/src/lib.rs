//! netpol-agent as a library: the typed cluster snapshot ([`model`]), its sources ([`source`]:
//! the manifest directory, [`manifests`], or the Kubernetes API, [`kube_source`]), the pure
//! policy compiler ([`compiler`]), and the effectful edges: the data path loader and reconciler
//! ([`datapath`]), netlink discovery ([`netlink`]), the health endpoints ([`health`]) and the
//! run loop ([`agent`]).
pub mod agent;
pub mod cidr;
pub mod cni;
pub mod cni_install;
pub mod cni_server;
pub mod compiler;
#[cfg(test)]
mod compiler_tests;
pub mod datapath;
pub mod eval;
pub mod events;
pub mod explain;
pub mod graph;
pub mod health;
pub mod kube_source;
pub mod lint;
pub mod manifests;
pub mod map_count;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod observe;
pub mod policy_maps;
pub mod ports;
pub mod selector;
pub mod source;
