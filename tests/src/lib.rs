//! netpol's sandbox: a Kubernetes node and its pods imitated with network namespaces, with
//! real servers in the pods, real probes between them, the manifests that describe them, and
//! the real agent running in the node's namespace.
//!
//! Addresses come only from 198.18.0.0/15 and fd00:198:18::/48; no route leads out of the
//! namespaces a sandbox makes; every namespace, veth and bridge it makes is deleted on drop,
//! also when a test panics; names are unique per process and sandbox, so tests run in parallel.

pub mod agent;
pub mod apiserver;
pub mod churn;
pub mod cluster;
pub mod cni_runtime;
pub mod demo_steps;
pub mod kubelet;
pub mod manifests;
pub mod netns;
pub mod node;
pub mod node_fs;
pub mod probe;
pub mod servers;

pub use agent::Agent;
pub use cluster::Cluster;
pub use node::{Node, Pod, Shape};
pub use probe::{Protocol, Target};

pub use netpol_testkit::datapath::{host_bpffs, privileged};
