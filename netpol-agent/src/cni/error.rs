//! What can go wrong with the CNI chain plugin: installing and chaining it, serving its socket,
//! and the plugin's request to the agent.

use std::path::PathBuf;

/// Errors of the CNI room.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// A file or directory operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Talking to the agent over its socket failed.
    #[error("{op}: {source}")]
    Socket {
        /// What was being done.
        op: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// A network configuration or a message is not the JSON it should be.
    #[error("{what}: {source}")]
    Json {
        /// What was being read or written.
        what: String,
        /// Cause.
        source: serde_json::Error,
    },
    /// A network configuration has not the shape of one.
    #[error("{path}: {why}")]
    Configuration {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
}

/// Result alias of the CNI room.
pub type Result<T> = std::result::Result<T, CniError>;

/// The [`CniError::Io`] of `op` on `path`.
pub(super) fn io(op: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> CniError {
    let path = path.to_path_buf();
    move |source| CniError::Io { op, path, source }
}
