//! What can go wrong at the kernel edge: [`DatapathError`] for an operation that cannot go on
//! (loading, opening a map), and [`ApplyError`] for one failure of a reconciliation, which is
//! reported and leaves the rest applied. [`ApplyStats`] carries what a reconciliation did.

use std::path::PathBuf;

/// Errors of the data-path edge.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// Loading the object or its maps failed.
    #[error("load eBPF object (pin path {path}): {source}")]
    Load {
        /// Pin path.
        path: PathBuf,
        /// Cause.
        source: Box<aya::EbpfError>,
    },
    /// A program operation failed.
    #[error("{op}: {source}")]
    Program {
        /// What was being done.
        op: String,
        /// Cause.
        source: Box<aya::programs::ProgramError>,
    },
    /// A link operation failed.
    #[error("{op}: {source}")]
    Link {
        /// What was being done.
        op: String,
        /// Cause.
        source: Box<aya::programs::links::LinkError>,
    },
    /// A map operation failed.
    #[error("{op}: {source}")]
    Map {
        /// What was being done.
        op: String,
        /// Cause.
        source: Box<aya::maps::MapError>,
    },
    /// A file system operation on the pin path failed.
    #[error("{op} {path}: {source}")]
    Fs {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Counting a map's entries failed.
    #[error("count the entries of {path}: {source}")]
    Count {
        /// The map's pin.
        path: PathBuf,
        /// Cause.
        source: super::map_count::CountError,
    },
    /// Pinning a link failed.
    #[error("pin link {path}: {source}")]
    Pin {
        /// The pin.
        path: PathBuf,
        /// Cause.
        source: Box<aya::pin::PinError>,
    },
}

/// Result alias of the data-path edge.
pub type Result<T> = std::result::Result<T, DatapathError>;

/// The [`DatapathError::Map`] of operation `op`.
pub(super) fn map_err(op: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    let op = op.into();
    move |source| DatapathError::Map { op, source: Box::new(source) }
}

/// The [`DatapathError::Program`] of operation `op`.
pub(super) fn prog_err(op: impl Into<String>) -> impl FnOnce(aya::programs::ProgramError) -> DatapathError {
    let op = op.into();
    move |source| DatapathError::Program { op, source: Box::new(source) }
}

/// One failure of a reconciliation: that part of the state is left unapplied, the rest is
/// applied, and the next sync tries again.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Attaching a classifier to an interface failed: the interface is not enforced.
    #[error("attach {program} to {interface}: {source}")]
    Attach {
        /// The program.
        program: &'static str,
        /// The interface.
        interface: String,
        /// Cause.
        source: Box<DatapathError>,
    },
    /// Writing a map entry failed.
    #[error("write {what} {key}: {source}")]
    Write {
        /// Which map's entry.
        what: &'static str,
        /// The entry's key.
        key: String,
        /// Cause.
        source: Box<aya::maps::MapError>,
    },
    /// Deleting a map entry failed.
    #[error("delete {what} {key}: {source}")]
    Delete {
        /// Which map's entry.
        what: &'static str,
        /// The entry's key.
        key: String,
        /// Cause.
        source: Box<aya::maps::MapError>,
    },
    /// Detaching or unpinning a link failed.
    #[error("{op} {pin}: {source}")]
    Unlink {
        /// `detach` or `unpin`.
        op: &'static str,
        /// The link's pin.
        pin: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Pointing a pinned link at this build's program failed: it keeps running the earlier one.
    #[error("adopt {pin}: {source}")]
    Adopt {
        /// The link's pin.
        pin: PathBuf,
        /// Cause.
        source: Box<DatapathError>,
    },
    /// Zeroing counters for a new owner failed: the new owner's counts start from the old ones.
    #[error("reset {what}: {source}")]
    Counters {
        /// Which counters.
        what: String,
        /// Cause.
        source: Box<DatapathError>,
    },
}

impl ApplyError {
    /// Whether the failure left an interface without its classifiers.
    pub fn is_attach(&self) -> bool {
        matches!(self, Self::Attach { .. })
    }
}

/// What one reconciliation did.
#[derive(Debug, Default)]
pub struct ApplyStats {
    /// Map entries written (inserted or updated).
    pub writes: usize,
    /// Map entries deleted.
    pub deletes: usize,
    /// Interfaces attached.
    pub attached: usize,
    /// Interfaces detached.
    pub detached: usize,
    /// Failures that left part of the state unapplied (reported, not fatal).
    pub errors: Vec<ApplyError>,
}

impl ApplyStats {
    /// Adds what another reconciliation did.
    pub fn absorb(&mut self, other: ApplyStats) {
        self.writes += other.writes;
        self.deletes += other.deletes;
        self.attached += other.attached;
        self.detached += other.detached;
        self.errors.extend(other.errors);
    }
}
