//! Verdict events: the agent's side of the data path's ring buffer (`netpol_common::MAP_EVENTS`).
//! The [`EventHub`] drains the ring buffer, names the pods and the policy rule of each event
//! ([`Names`], refreshed after every sync), and fans the [`VerdictRecord`]s out to subscribers
//! (`GET /events` on the health address, which `netpol-agent observe` reads). A slow subscriber
//! loses events (and is told how many); it never holds up the ring buffer, which never holds up
//! a packet.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
};

use anyhow::Context as _;
use aya::maps::{Array, Map, MapData, RingBuf};
use netpol_common::{
    DatapathConfig, IpKey, Reason, VerdictEvent, CONFIG_EVENTS_ALLOWED, DIR_INGRESS, MAP_CONFIG, MAP_EVENTS, VERDICT_ALLOWED,
    VERDICT_AUDIT,
};
use serde::{Deserialize, Serialize};
use tokio::{io::unix::AsyncFd, sync::broadcast};
use tracing::{debug, warn};

use crate::{
    compile::{Desired, RuleRef}, model::Direction,
    model::{ClusterState, ObjectRef},

};

/// The default `--event-rate`: events per endpoint, per second and CPU.
pub const DEFAULT_RATE: u32 = 100;
/// Records a subscriber may fall behind by before it loses some.
const SUBSCRIBER_BACKLOG: usize = 4096;

/// `verdict` of a [`VerdictRecord`]: the packet passed.
pub const ALLOWED: &str = "allowed";
/// `verdict`: the packet was dropped.
pub const DROPPED: &str = "dropped";
/// `verdict`: policy would have dropped the packet; audit mode let it pass.
pub const AUDIT: &str = "audit";
/// Every `verdict` value.
pub const VERDICTS: [&str; 3] = [ALLOWED, DROPPED, AUDIT];

/// One end of a reported flow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEnd {
    /// The address (absent when the headers could not be parsed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// The port (TCP, UDP, SCTP) or ICMP echo identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The pod with this address, `namespace/name`, when the agent knows one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// That pod's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A verdict of the data path, with names: one line of `netpol-agent observe --output json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictRecord {
    /// When, RFC 3339 (UTC).
    pub time: String,
    /// The node whose agent reported it.
    pub node: String,
    /// The local pod whose veth saw the packet, `namespace/name` (or its endpoint number when
    /// the agent no longer knows it).
    pub pod: String,
    /// `ingress` (into `pod`) or `egress` (out of it).
    pub direction: String,
    /// `allowed`, `dropped` or `audit` ("would drop": audit mode let it pass).
    pub verdict: String,
    /// The data path's reason (`netpol_common::Reason` names, e.g. `drop_no_rule`).
    pub reason: String,
    /// The reason in words.
    pub explanation: String,
    /// `TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6`, or the protocol number.
    pub protocol: String,
    /// The packet's source.
    pub source: FlowEnd,
    /// The packet's destination.
    pub destination: FlowEnd,
    /// The policy that allowed the flow, `namespace/name` (allowed flows of isolated pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Which rule of that policy: `ingress[0]`, `egress[2]`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Events of this pod the data path's rate limit suppressed just before this one.
    #[serde(default)]
    pub suppressed: u32,
}

impl VerdictRecord {
    /// Whether `namespace` is the namespace of either end.
    fn touches_namespace(&self, namespace: &str) -> bool {
        [&self.source, &self.destination].iter().any(|e| e.namespace.as_deref() == Some(namespace))
            || self.pod.split_once('/').is_some_and(|(ns, _)| ns == namespace)
    }

    /// Whether `pod` (`namespace/name`, or a bare name in any namespace) is either end.
    fn touches_pod(&self, pod: &str) -> bool {
        let is = |name: &str| if pod.contains('/') { name == pod } else { name.split_once('/').is_some_and(|(_, n)| n == pod) };
        is(&self.pod) || [&self.source, &self.destination].iter().any(|e| e.pod.as_deref().is_some_and(is))
    }
}

impl fmt::Display for FlowEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = match (self.ip, self.port) {
            (Some(IpAddr::V6(ip)), Some(port)) => format!("[{ip}]:{port}"),
            (Some(ip), Some(port)) => format!("{ip}:{port}"),
            (Some(ip), None) => ip.to_string(),
            (None, _) => "?".to_string(),
        };
        match &self.pod {
            Some(pod) => write!(f, "{pod} ({addr})"),
            None => f.write_str(&addr),
        }
    }
}

impl fmt::Display for VerdictRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict.as_str() {
            AUDIT => "WOULD DROP",
            v => &v.to_uppercase(),
        };
        write!(f, "{} {:<10} {:<7} {} -> {} {}", self.time, verdict, self.direction, self.source, self.destination, self.protocol)?;
        match (&self.policy, &self.rule) {
            (Some(policy), Some(rule)) => write!(f, ": allowed by {policy} {rule}")?,
            _ => write!(f, ": {} ({})", self.explanation, self.reason)?,
        }
        if self.suppressed > 0 {
            write!(f, " [{} similar events suppressed before]", self.suppressed)?;
        }
        Ok(())
    }
}

/// Which records a subscriber wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFilter {
    /// Only flows with an end in this namespace.
    pub namespace: Option<String>,
    /// Only flows with this pod at one end (`namespace/name`, or a name in any namespace).
    pub pod: Option<String>,
    /// Only these verdicts (`allowed`, `dropped`, `audit`).
    pub verdicts: BTreeSet<String>,
}

impl Default for EventFilter {
    /// Drops and audit "would drop"s: what the data path reports unless asked for more.
    fn default() -> Self {
        Self { namespace: None, pod: None, verdicts: [DROPPED, AUDIT].iter().map(ToString::to_string).collect() }
    }
}

impl EventFilter {
    /// Whether the record passes the filter.
    pub fn matches(&self, r: &VerdictRecord) -> bool {
        self.verdicts.contains(&r.verdict)
            && self.namespace.as_deref().is_none_or(|ns| r.touches_namespace(ns))
            && self.pod.as_deref().is_none_or(|p| r.touches_pod(p))
    }

    /// Whether the subscriber wants allowed flows, which the data path reports only on request.
    pub fn wants_allowed(&self) -> bool {
        self.verdicts.contains(ALLOWED)
    }

    /// The filter as a URL query (`namespace=..&pod=..&verdict=a,b`).
    pub fn to_query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(ns) = &self.namespace {
            parts.push(format!("namespace={ns}"));
        }
        if let Some(pod) = &self.pod {
            parts.push(format!("pod={pod}"));
        }
        parts.push(format!("verdict={}", self.verdicts.iter().cloned().collect::<Vec<_>>().join(",")));
        parts.join("&")
    }

    /// Parses [`Self::to_query`]'s form; `verdict=all` means every verdict. Missing keys keep
    /// the default.
    pub fn from_query(query: &str) -> anyhow::Result<Self> {
        let mut filter = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '/' | ',' | '_')) {
                anyhow::bail!("{key}: {value:?} is not a namespace, pod or verdict name");
            }
            match key {
                "namespace" if !value.is_empty() => filter.namespace = Some(value.to_string()),
                "pod" if !value.is_empty() => filter.pod = Some(value.to_string()),
                "verdict" => filter.verdicts = parse_verdicts(value)?,
                _ => anyhow::bail!("unknown filter {key:?} (namespace, pod, verdict)"),
            }
        }
        Ok(filter)
    }
}

/// Parses a comma-separated verdict list (`all` for every verdict).
pub fn parse_verdicts(list: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for v in list.split(',').map(str::trim).filter(|v| !v.is_empty()) {
        match v {
            "all" => out.extend(VERDICTS.iter().map(ToString::to_string)),
            "would-drop" | "would_drop" => {
                out.insert(AUDIT.to_string());
            }
            v if VERDICTS.contains(&v) => {
                out.insert(v.to_string());
            }
            v => anyhow::bail!("unknown verdict {v:?} (allowed, dropped, audit, all)"),
        }
    }
    if out.is_empty() {
        anyhow::bail!("no verdict given (allowed, dropped, audit, all)");
    }
    Ok(out)
}

/// What the agent knows to name an event's pods and rule: refreshed after every sync.
#[derive(Clone, Debug, Default)]
pub struct Names {
    /// Local endpoint ids to their pods.
    pub endpoints: HashMap<u32, ObjectRef>,
    /// Pod addresses in the cluster to their pods.
    pub ips: HashMap<IpAddr, ObjectRef>,
    /// Compiled rule ids (from 1) to their rules.
    pub rules: std::collections::BTreeMap<u32, RuleRef>,
}

impl Names {
    /// The names of a compiled state.
    pub fn new(state: &ClusterState, desired: &Desired) -> Self {
        Self {
            endpoints: desired.endpoints.iter().map(|(pod, plan)| (plan.id, pod.clone())).collect(),
            ips: state.pods.values().flat_map(|p| p.ips.iter().map(|ip| (*ip, p.id.clone()))).collect(),
            rules: desired.rules.clone(),
        }
    }

    fn end(&self, ip: Option<IpAddr>, port: Option<u16>) -> FlowEnd {
        let pod = ip.and_then(|ip| self.ips.get(&ip));
        FlowEnd { ip, port, pod: pod.map(ToString::to_string), namespace: pod.map(|p| p.namespace.clone()) }
    }

    /// The record of a data-path event; `wall_offset_ns` turns its monotonic time into Unix time.
    pub fn record(&self, ev: &VerdictEvent, node: &str, wall_offset_ns: i128) -> VerdictRecord {
        let reason = Reason::ALL.get(usize::from(ev.reason)).copied();
        let parsed = ev.protocol != 0 || ev.src != IpKey::default();
        let ports = has_ports(ev.protocol);
        let end_of = |k: &IpKey, p: u16| (parsed.then(|| ip_of(k, ev.ipv6 != 0)), (parsed && ports).then(|| u16::from_be(p)));
        let (src_ip, src_port) = end_of(&ev.src, ev.sport_be);
        let (dst_ip, dst_port) = end_of(&ev.dst, ev.dport_be);
        let rule = (ev.verdict == VERDICT_ALLOWED && ev.rule != 0).then(|| self.rules.get(&ev.rule)).flatten();
        let nanos = i128::from(ev.time_ns) + wall_offset_ns;
        let time = jiff::Timestamp::from_nanosecond(nanos).map_or_else(|_| nanos.to_string(), |t| t.to_string());
        VerdictRecord {
            time,
            node: node.to_string(),
            pod: self.endpoints.get(&ev.endpoint).map_or_else(|| format!("endpoint {}", ev.endpoint), ToString::to_string),
            direction: if ev.direction == DIR_INGRESS { "ingress" } else { "egress" }.to_string(),
            verdict: match ev.verdict {
                VERDICT_ALLOWED => ALLOWED,
                VERDICT_AUDIT => AUDIT,
                _ => DROPPED,
            }
            .to_string(),
            reason: reason.map_or_else(|| format!("reason {}", ev.reason), |r| r.name().to_string()),
            explanation: reason.map_or("unknown reason", explanation).to_string(),
            protocol: protocol_name(ev.protocol, ev.ipv6 != 0, parsed),
            source: self.end(src_ip, src_port),
            destination: self.end(dst_ip, dst_port),
            policy: rule.map(|r| r.policy.to_string()),
            rule: rule.map(|r| format!("{}[{}]", if r.direction == Direction::Ingress { "ingress" } else { "egress" }, r.index)),
            suppressed: ev.suppressed,
        }
    }
}

/// Whether the protocol's events carry ports (or ICMP echo identifiers).
fn has_ports(protocol: u8) -> bool {
    matches!(protocol, 6 | 17 | 132 | 1 | 58)
}

/// The address of a data-path key.
fn ip_of(k: &IpKey, ipv6: bool) -> IpAddr {
    let o = k.octets();
    if ipv6 {
        IpAddr::V6(Ipv6Addr::from(o))
    } else {
        IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
    }
}

fn protocol_name(protocol: u8, ipv6: bool, parsed: bool) -> String {
    match protocol {
        _ if !parsed => "unparsed".to_string(),
        6 => "TCP".to_string(),
        17 => "UDP".to_string(),
        132 => "SCTP".to_string(),
        1 => "ICMP".to_string(),
        58 => "ICMPv6".to_string(),
        0 if !ipv6 => "IPv4/0".to_string(),
        n => format!("IP/{n}"),
    }
}

/// A data-path reason in words.
pub fn explanation(reason: Reason) -> &'static str {
    match reason {
        Reason::AllowEstablished => "part of an allowed connection",
        Reason::AllowNotIsolated => "no policy isolates the pod in this direction",
        Reason::AllowPolicy => "a policy rule allows it",
        Reason::AllowNonIp => "not IP (ARP and the like)",
        Reason::AllowNeighbourDiscovery => "IPv6 neighbour discovery",
        Reason::AllowSelf => "the pod talking to itself",
        Reason::AllowFragment => "a later fragment of an allowed datagram",
        Reason::DropNoRule => "no policy rule allows this flow",
        Reason::DropSpoofed => "spoofed source: not the pod's own address",
        Reason::DropMalformed => "malformed or truncated headers",
        Reason::DropOrphanFragment => "a fragment whose first fragment was not allowed",
        Reason::DropExtHeaders => "too many IPv6 extension headers",
        Reason::DropRevoked => "the connection's policy was withdrawn",
        Reason::AllowUnknownInterface => "not a pod interface netpol manages",
        Reason::DropNonIp => "a non-IP protocol into or out of an isolated pod",
        Reason::AllowRelated => "an ICMP error about an allowed connection",
        Reason::AllowAudit => "audit mode: policy would drop it",
        Reason::PassDeferred => "judged where it leaves the node, after NAT (a Service address or outside the cluster)",
        Reason::DropNoProgram => "no program to judge a packet deferred until after NAT (the agent has not loaded its programs)",
    }
}

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
    pub fn open(pin_path: &Path, node: &str, settings: EventSettings) -> anyhow::Result<(Arc<Self>, RingBuf<MapData>)> {
        let open = |name: &str| MapData::from_pin(pin_path.join(name)).with_context(|| format!("open pinned map {name}"));
        let config = Array::try_from(Map::Array(open(MAP_CONFIG)?)).context("NETPOL_CONFIG is not an array")?;
        let ring = RingBuf::try_from(Map::RingBuf(open(MAP_EVENTS)?)).context("NETPOL_EVENTS is not a ring buffer")?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use netpol_common::{DIR_EGRESS, VERDICT_DROPPED};

    fn names() -> Names {
        let a = ObjectRef::new("shop", "frontend");
        let b = ObjectRef::new("shop", "db");
        Names {
            endpoints: HashMap::from([(7, a.clone())]),
            ips: HashMap::from([("198.18.0.2".parse().unwrap(), a), ("198.18.0.3".parse().unwrap(), b)]),
            rules: [(1, RuleRef { policy: ObjectRef::new("shop", "db-from-frontend"), direction: Direction::Ingress, index: 1 })].into(),
        }
    }

    fn event(verdict: u8, reason: Reason, rule: u32) -> VerdictEvent {
        VerdictEvent {
            time_ns: 1_000,
            endpoint: 7,
            rule,
            src: IpKey::from_v4([198, 18, 0, 2]),
            dst: IpKey::from_v4([198, 18, 0, 3]),
            sport_be: 40_000u16.to_be(),
            dport_be: 5432u16.to_be(),
            protocol: 6,
            direction: DIR_EGRESS,
            reason: reason as u8,
            verdict,
            suppressed: 3,
            ..Default::default()
        }
    }

    #[test]
    fn a_drop_names_both_pods_the_port_and_the_reason() {
        let r = names().record(&event(VERDICT_DROPPED, Reason::DropNoRule, 0), "node-a", 1_700_000_000_000_000_000);
        assert_eq!((r.pod.as_str(), r.direction.as_str(), r.verdict.as_str()), ("shop/frontend", "egress", "dropped"));
        assert_eq!(r.reason, "drop_no_rule");
        assert_eq!(r.source.pod.as_deref(), Some("shop/frontend"));
        assert_eq!(r.destination.pod.as_deref(), Some("shop/db"));
        assert_eq!((r.destination.port, r.protocol.as_str()), (Some(5432), "TCP"));
        assert_eq!((r.policy, r.suppressed), (None, 3));
        assert!(r.time.starts_with("2023-11-14T22:13:20"), "{}", r.time);
        let text = names().record(&event(VERDICT_DROPPED, Reason::DropNoRule, 0), "n", 0).to_string();
        assert!(text.contains("DROPPED") && text.contains("shop/db (198.18.0.3:5432) TCP") && text.contains("no policy rule"), "{text}");
    }

    #[test]
    fn an_allowed_flow_names_the_rule_that_allowed_it() {
        let r = names().record(&event(VERDICT_ALLOWED, Reason::AllowPolicy, 1), "n", 0);
        assert_eq!((r.policy.as_deref(), r.rule.as_deref()), (Some("shop/db-from-frontend"), Some("ingress[1]")));
        assert!(r.to_string().contains("allowed by shop/db-from-frontend ingress[1]"));
        // A rule id the agent does not know names nothing rather than the wrong rule.
        assert_eq!(names().record(&event(VERDICT_ALLOWED, Reason::AllowPolicy, 9), "n", 0).policy, None);
    }

    #[test]
    fn an_unparsed_packet_has_no_addresses() {
        let mut ev = event(VERDICT_DROPPED, Reason::DropMalformed, 0);
        ev.src = IpKey::default();
        ev.dst = IpKey::default();
        ev.protocol = 0;
        let r = names().record(&ev, "n", 0);
        assert_eq!((r.source.ip, r.destination.port, r.protocol.as_str()), (None, None, "unparsed"));
    }

    #[test]
    fn filters_match_either_end_and_the_verdicts_asked_for() {
        let r = names().record(&event(VERDICT_DROPPED, Reason::DropNoRule, 0), "n", 0);
        let f = |q: &str| EventFilter::from_query(q).unwrap();
        assert!(f("").matches(&r), "drops are shown by default");
        assert!(!f("verdict=allowed").matches(&r));
        assert!(f("verdict=all").matches(&r));
        assert!(f("namespace=shop&pod=db").matches(&r), "the destination pod");
        assert!(f("pod=shop/frontend").matches(&r));
        assert!(!f("pod=other/db").matches(&r));
        assert!(!f("namespace=other").matches(&r));
        assert!(f("verdict=all").wants_allowed() && !f("").wants_allowed());
        let round = f("namespace=shop&pod=db&verdict=dropped,audit");
        assert_eq!(EventFilter::from_query(&round.to_query()).unwrap(), round);
        assert!(EventFilter::from_query("verdict=maybe").is_err());
        assert!(EventFilter::from_query("pod=a b").is_err());
    }

    #[test]
    fn ring_buffer_entries_decode_whole() {
        let ev = event(VERDICT_AUDIT, Reason::DropNoRule, 0);
        // SAFETY: VerdictEvent is 64 plain bytes.
        let bytes: [u8; 64] = unsafe { std::mem::transmute(ev) };
        assert_eq!(decode(&bytes), Some(ev));
        assert_eq!(decode(&bytes[..63]), None);
        assert_eq!(names().record(&ev, "n", 0).verdict, "audit");
    }
}
