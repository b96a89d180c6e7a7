//! Why the agent could not start, or a sync could not program the state.

use std::{net::SocketAddr, path::PathBuf};

use crate::{
    cni::error::CniError,
    datapath::{bpffs::BpffsError, netlink::NetlinkError, DatapathError},
    source::SourceError,
};

/// Errors of the run loop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No place for pins that outlive the agent.
    #[error("pin under {path}")]
    Pins {
        /// The pin path given.
        path: PathBuf,
        /// Cause.
        #[source]
        source: BpffsError,
    },
    /// The kernel cannot run netpol's programs as the agent needs.
    #[error("netpol enforces nothing on this node")]
    Kernel(#[source] DatapathError),
    /// The data path could not be loaded or adopted.
    #[error("load data path under {path}")]
    Load {
        /// The pin path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: DatapathError,
    },
    /// The HTTP endpoints cannot listen.
    #[error("listen for health probes on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The Kubernetes client cannot be configured.
    #[error("configure the Kubernetes client (KUBECONFIG or in-cluster)")]
    Kube(#[source] kube::Error),
    /// A directory cannot be watched.
    #[error("watch {path}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: notify::Error,
    },
    /// The process could not set itself up (a thread, a signal handler).
    #[error("{op}")]
    Setup {
        /// What was being done.
        op: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The CNI plugin cannot be served or installed.
    #[error("the CNI chain plugin")]
    Cni(#[from] CniError),
    /// The source gave no snapshot.
    #[error("read the cluster")]
    Source(#[from] SourceError),
    /// Netlink answered no question about this node's interfaces.
    #[error("{op}")]
    Netlink {
        /// What was being asked.
        op: &'static str,
        /// Cause.
        #[source]
        source: NetlinkError,
    },
    /// The status file cannot be written.
    #[error("write status {path}")]
    Status {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}
