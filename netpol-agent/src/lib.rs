//! netpol-agent as a library: the typed cluster snapshot, the manifest source, the pure policy
//! compiler, and the effectful edges (data path loader and reconciler, veth attacher).
pub mod manifests;
