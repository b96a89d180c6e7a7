//! A verdict of the data path with names: the pods at either end, the policy rule that allowed a
//! new flow, the reason in words. One [`VerdictRecord`] is one line of `observe`.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use netpol_common::{IpKey, Reason, VerdictEvent, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, VERDICT_ALLOWED, VERDICT_AUDIT};
use serde::{Deserialize, Serialize};

use crate::{
    compile::{Desired, RuleRef},
    model::{ClusterState, Direction, ObjectRef},
};

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
    pub(super) fn touches_namespace(&self, namespace: &str) -> bool {
        [&self.source, &self.destination].iter().any(|e| e.namespace.as_deref() == Some(namespace))
            || self.pod.split_once('/').is_some_and(|(ns, _)| ns == namespace)
    }

    /// Whether `pod` (`namespace/name`, or a bare name in any namespace) is either end.
    pub(super) fn touches_pod(&self, pod: &str) -> bool {
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
            direction: Direction::from_number(ev.direction).to_string(),
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
            rule: rule.map(RuleRef::rule),
            suppressed: ev.suppressed,
        }
    }
}

/// Whether the protocol's events carry ports (or ICMP echo identifiers).
fn has_ports(protocol: u8) -> bool {
    matches!(protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_ICMP | IPPROTO_ICMPV6)
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
        IPPROTO_TCP => "TCP".to_string(),
        IPPROTO_UDP => "UDP".to_string(),
        IPPROTO_SCTP => "SCTP".to_string(),
        IPPROTO_ICMP => "ICMP".to_string(),
        IPPROTO_ICMPV6 => "ICMPv6".to_string(),
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

#[cfg(test)]
mod tests {
    use netpol_common::{DIR_EGRESS, VERDICT_AUDIT, VERDICT_DROPPED};

    use super::{super::decode, super::filter::EventFilter, *};

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
