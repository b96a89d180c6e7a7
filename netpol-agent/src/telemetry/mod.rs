//! What the agent tells about the data path: Prometheus [`metrics`] (from the typed
//! [`report::SyncReport`] of each sync), verdict [`events`] from the kernel's ring buffer, the
//! [`http`] endpoints that serve both with the probes, and the [`observe`] client. The run loop
//! feeds them; nothing here writes a map.
pub mod events;
pub mod http;
pub mod metrics;
pub mod observe;
pub mod report;
