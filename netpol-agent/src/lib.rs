//! netpol-agent as a library: the typed cluster snapshot ([`model`]), the manifest source
//! ([`manifests`]), the pure policy compiler ([`compiler`]), and the effectful edges: the data
//! path loader and reconciler ([`datapath`]), netlink discovery ([`netlink`]) and the run loop
//! ([`agent`]).
pub mod agent;
pub mod cidr;
pub mod compiler;
#[cfg(test)]
mod compiler_tests;
pub mod datapath;
pub mod eval;
pub mod manifests;
pub mod model;
pub mod netlink;
pub mod ports;
pub mod selector;
