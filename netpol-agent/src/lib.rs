//! netpol-agent as a library: the typed cluster snapshot ([`model`]), the manifest source
//! ([`manifests`]), the pure policy compiler ([`compiler`]), and the effectful edges (data path
//! loader and reconciler, veth attacher).
pub mod cidr;
pub mod compiler;
pub mod eval;
pub mod manifests;
pub mod model;
pub mod ports;
pub mod selector;
