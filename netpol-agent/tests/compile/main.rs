//! The compiler against the NetworkPolicy API text, one file per part of the API. Every case
//! builds a cluster (pods from the test kit's builders, policies from YAML), compiles it for
//! node `n1`, and asks the evaluator of compiled maps (`compile::eval::allows`, the
//! classifier's new-flow decision) for a verdict per flow. Case names read as sentences of the
//! spec.
//!
//! Addresses: pods and nodes live in 198.18.0.0/15 and fd00:198:18::/48; "outside the cluster"
//! is 203.0.113.0/24, 198.51.100.0/24 and 2001:db8::/32 (documentation ranges, never contacted).

mod dual_stack;
mod isolation;
mod kernel;
mod model;
mod node;
mod policy_types;
mod ports;
mod random;
mod selectors;
mod stability;

/// What every file of these tests uses.
mod prelude {
    pub use std::net::IpAddr;

    pub use netpol_agent::{
        compile::{
            eval::{allows, Flow},
            Compiler,
        },
        model::{pod_from_k8s, policy_from_k8s, ClusterState, ObjectRef, Pod},
    };
    pub use netpol_common::{DIR_EGRESS, DIR_INGRESS, IDENTITY_HOST};

    pub use crate::node::DENY_ALL_OF_A;
    pub use netpol_testkit::{
        compiled::{cluster, Cluster, Net, ALLOW, DENY, HOST, HOST6, ICMP, ICMPV6, IN, OUT, OUTSIDE, OUTSIDE6, SCTP, TCP, UDP},
        objects::{k8s_policy, namespace, pod, policy, problem, NODE, OTHER_NODE},
        random::random_cluster,
    };
}
