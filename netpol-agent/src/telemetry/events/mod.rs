//! Verdict events: the agent's side of the data path's ring buffer (`netpol_common::MAP_EVENTS`).
//! The [`EventHub`] drains the ring buffer, names the pods and the policy rule of each event
//! ([`Names`], refreshed after every sync), and fans the [`VerdictRecord`]s out to subscribers
//! (`GET /events` on the health address, which `netpol-agent observe` reads). A slow subscriber
//! loses events (and is told how many); it never holds up the ring buffer, which never holds up
//! a packet.

mod filter;
mod record;

use std::{
    fmt,
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
};

use aya::maps::{Array, Map, MapData, RingBuf};
use netpol_common::{DatapathConfig, VerdictEvent, CONFIG_EVENTS_ALLOWED, MAP_CONFIG, MAP_EVENTS};
use tokio::{io::unix::AsyncFd, sync::broadcast};
use tracing::{debug, warn};

pub use filter::{parse_verdicts, EventFilter, FilterError};
pub use record::{explanation, FlowEnd, Names, VerdictRecord, ALLOWED, AUDIT, DROPPED, VERDICTS};

use crate::datapath::DatapathError;

/// The default `--event-rate`: events per endpoint, per second and CPU.
pub const DEFAULT_RATE: u32 = 100;
/// Records a subscriber may fall behind by before it loses some.
const SUBSCRIBER_BACKLOG: usize = 4096;

/// Decodes one ring buffer entry.
pub fn decode(bytes: &[u8]) -> Option<VerdictEvent> {
    if bytes.len() < std::mem::size_of::<VerdictEvent>() {
        return None;
    }
    // SAFETY: the length was checked; VerdictEvent is plain integers (any bit pattern is valid)
    // and read_unaligned makes no alignment assumption.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<VerdictEvent>()) })
}

/// How the data path reports verdicts.
#[derive(Clone, Copy, Debug)]
pub struct EventSettings {
    /// Events per endpoint, second and CPU; 0 turns events off.
    pub rate: u32,
    /// Report allowed new flows even when no subscriber asks for them.
    pub always_allowed: bool,
}

/// Fans verdict events out to subscribers; see the module documentation.
pub struct EventHub {
    node: String,
    settings: EventSettings,
    tx: broadcast::Sender<Arc<VerdictRecord>>,
    names: RwLock<Names>,
    config: Mutex<Array<MapData, DatapathConfig>>,
    allowed_subscribers: AtomicUsize,
    wall_offset_ns: i128,
}

impl fmt::Debug for EventHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventHub").field("node", &self.node).field("settings", &self.settings).finish()
    }
}

/// A subscriber's place: its records, and its share in asking the data path for allowed flows.
pub struct Subscription {
    /// The records, as they come (a lagging receiver learns how many it lost).
    pub records: broadcast::Receiver<Arc<VerdictRecord>>,
    /// What the subscriber asked for.
    pub filter: EventFilter,
    hub: Arc<EventHub>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.filter.wants_allowed() && self.hub.allowed_subscribers.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.hub.write_config();
        }
    }
}

impl EventHub {
    /// Opens the pinned event maps under `pin_path` (the data path must be loaded) and writes
    /// the settings. Returns the hub and the ring buffer for [`EventHub::run`].
    pub fn open(pin_path: &Path, node: &str, settings: EventSettings) -> Result<(Arc<Self>, RingBuf<MapData>), DatapathError> {
        let map_err = |name: &str| {
            let op = format!("open pinned map {name}");
            move |source| DatapathError::Map { op, source: Box::new(source) }
        };
        let open = |name: &str| MapData::from_pin(pin_path.join(name)).map_err(map_err(name));
        let config = Array::try_from(Map::Array(open(MAP_CONFIG)?)).map_err(map_err(MAP_CONFIG))?;
        let ring = RingBuf::try_from(Map::RingBuf(open(MAP_EVENTS)?)).map_err(map_err(MAP_EVENTS))?;
        let (tx, _) = broadcast::channel(SUBSCRIBER_BACKLOG);
        let hub = Arc::new(Self {
            node: node.to_string(),
            settings,
            tx,
            names: RwLock::new(Names::default()),
            config: Mutex::new(config),
            allowed_subscribers: AtomicUsize::new(0),
            wall_offset_ns: wall_offset_ns(),
        });
        hub.write_config();
        Ok((hub, ring))
    }

    /// Replaces the names events are resolved with.
    pub fn set_names(&self, names: Names) {
        *self.names.write().unwrap_or_else(std::sync::PoisonError::into_inner) = names;
    }

    /// Subscribes; while a subscription wants allowed flows, the data path reports them.
    pub fn subscribe(self: &Arc<Self>, filter: EventFilter) -> Subscription {
        let records = self.tx.subscribe();
        if filter.wants_allowed() && self.allowed_subscribers.fetch_add(1, Ordering::SeqCst) == 0 {
            self.write_config();
        }
        Subscription { records, filter, hub: self.clone() }
    }

    /// Subscribers connected now.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// The data path's settings now.
    fn config(&self) -> DatapathConfig {
        let allowed = self.settings.always_allowed || self.allowed_subscribers.load(Ordering::SeqCst) > 0;
        DatapathConfig { flags: if allowed { CONFIG_EVENTS_ALLOWED } else { 0 }, events_per_second: self.settings.rate }
    }

    fn write_config(&self) {
        let cfg = self.config();
        let mut map = self.config.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = map.set(0, cfg, 0) {
            warn!(error = %e, "could not write the event settings");
        }
    }

    /// Drains the ring buffer as it fills, until the task is dropped.
    pub async fn run(self: Arc<Self>, ring: RingBuf<MapData>) {
        // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, until it is
        // dropped, which only the AsyncFd does.
        let mut fd = match unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) } {
            Ok(fd) => fd,
            Err(e) => return warn!(error = %e, "cannot wait on the event ring buffer; no verdict events"),
        };
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(g) => g,
                Err(e) => return warn!(error = %e, "event ring buffer failed; no more verdict events"),
            };
            let ring = guard.get_inner_mut();
            let mut batch = Vec::new();
            while let Some(item) = ring.next() {
                if let Some(ev) = decode(&item) {
                    batch.push(ev);
                }
            }
            guard.clear_ready();
            if batch.is_empty() {
                continue;
            }
            let names = self.names.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            for ev in &batch {
                let record = names.record(ev, &self.node, self.wall_offset_ns);
                debug!(pod = %record.pod, verdict = %record.verdict, reason = %record.reason, "verdict event");
                // No subscriber: the record is simply not kept.
                let _ = self.tx.send(Arc::new(record));
            }
        }
    }
}

/// Unix time minus CLOCK_MONOTONIC (what `bpf_ktime_get_ns` reads), in nanoseconds.
fn wall_offset_ns() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: ts is a valid timespec to write; the clocks exist on every Linux.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC)
}
