//! netpol-agent as a library, one room per concern. A change flows down this list, and no room
//! imports one above it:
//!
//! - [`model`]: the typed cluster snapshot (namespaces, pods, validated policies), its
//!   selectors, and the conversion from Kubernetes objects with the API server's defaults.
//! - [`source`]: where snapshots come from: a manifest directory or the Kubernetes API.
//! - [`compile`]: the pure compiler from a snapshot to the exact contents of every kernel map,
//!   and the one evaluator of compiled maps (the kernel's lookups, in user space).
//! - [`datapath`]: the kernel edge: loading and pinning, reconciling maps, links and holds,
//!   counters, netlink discovery.
//! - [`cni`]: the CNI chain plugin, its installation, and the agent's end of it.
//! - [`telemetry`]: metrics, verdict events, the HTTP endpoints, `observe`.
//! - [`tools`]: `explain`, `lint` and `graph`, offline answers from the compiled maps.
//! - [`run`]: the agent's loop: triggers, the sync, the status.
pub mod cni;
pub mod compile;
pub mod datapath;
pub mod model;
pub mod run;
pub mod source;
pub mod telemetry;
pub mod tools;
