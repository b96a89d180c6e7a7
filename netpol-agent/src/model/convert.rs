//! Conversion of Kubernetes objects into the model, with the API server's defaulting and
//! validation: a NetworkPolicy that fails validation becomes a [`Problem`] naming it.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::{
    api::{
        core::v1::{Namespace as K8sNamespace, Pod as K8sPod},
        networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{
    selector::{Selector, SelectorError},
    Direction, NamedPort, Namespace, ObjectRef, Peer, Pod, Policy, PortMatch, PortSpec, Problem, Protocol, Rule, UnknownProtocol, NAMESPACE_NAME_LABEL,
};

/// Converts a Namespace, adding the name label as the API server does.
pub fn namespace_from_k8s(ns: &K8sNamespace) -> Result<Namespace, Problem> {
    let name = ns.metadata.name.clone().ok_or_else(|| Problem { object: "Namespace".into(), reason: "no metadata.name".into() })?;
    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
    Ok(Namespace { name, labels })
}

/// Converts a Pod. `Ok(None)` for pods that take no part in policy: host-network pods and pods
/// that have finished. A pod without IPs yet comes back with none ([`ClusterState::insert_pod`]
/// keeps it apart).
pub fn pod_from_k8s(pod: &K8sPod, default_namespace: &str) -> Result<Option<Pod>, Problem> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| default_namespace.to_string());
    let name = pod.metadata.name.clone().ok_or_else(|| Problem { object: format!("Pod {namespace}/?"), reason: "no metadata.name".into() })?;
    let id = ObjectRef::new(namespace, name);
    let problem = |reason: String| Problem { object: format!("Pod {id}"), reason };
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return Ok(None);
    }
    let status = pod.status.as_ref();
    if matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
        return Ok(None);
    }
    let mut ips = Vec::new();
    for s in status.and_then(|s| s.pod_ips.as_ref()).into_iter().flatten() {
        ips.push(s.ip.parse::<IpAddr>().map_err(|e| problem(format!("status.podIPs {:?}: {e}", s.ip)))?);
    }
    if let Some(ip) = status.and_then(|s| s.pod_ip.as_ref()) {
        let ip = ip.parse::<IpAddr>().map_err(|e| problem(format!("status.podIP {ip:?}: {e}")))?;
        if !ips.contains(&ip) {
            ips.insert(0, ip);
        }
    }
    let mut named_ports = Vec::new();
    for c in spec.map(|s| s.containers.iter()).into_iter().flatten() {
        for p in c.ports.iter().flatten() {
            if let Some(name) = &p.name {
                let protocol = Protocol::parse(p.protocol.as_deref()).map_err(|e| problem(format!("container port {name}: {e}")))?;
                let port = u16::try_from(p.container_port)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| problem(format!("container port {name}: {} is not a port", p.container_port)))?;
                named_ports.push(NamedPort { name: name.clone(), protocol, port });
            }
        }
    }
    named_ports.sort();
    named_ports.dedup();
    Ok(Some(Pod {
        id,
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ips,
        named_ports,
    }))
}

/// What makes a field of a NetworkPolicy invalid, as the API server would refuse it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Not a CIDR at all.
    #[error("{0:?} is not a CIDR")]
    NotCidr(String),
    /// A CIDR with host bits set.
    #[error("{value:?} has host bits set (did you mean {network}?)")]
    HostBits {
        /// As written.
        value: String,
        /// The network it names.
        network: IpNet,
    },
    /// An IPv4-mapped IPv6 CIDR.
    #[error("{0:?} is an IPv4-mapped IPv6 CIDR; write it as an IPv4 CIDR")]
    V4Mapped(String),
    /// An `except` outside its `cidr`.
    #[error("{except} is not inside {cidr}")]
    ExceptOutside {
        /// The except.
        except: String,
        /// The block.
        cidr: String,
    },
    /// An `except` equal to its `cidr`.
    #[error("{except} must be strictly inside {cidr}")]
    ExceptEqual {
        /// The except.
        except: String,
        /// The block.
        cidr: String,
    },
    /// An ipBlock beside a selector in one peer.
    #[error("ipBlock cannot be combined with a selector")]
    IpBlockWithSelector,
    /// A peer with nothing in it.
    #[error("a peer needs podSelector, namespaceSelector or ipBlock")]
    EmptyPeer,
    /// A selector that cannot be read.
    #[error(transparent)]
    Selector(#[from] SelectorError),
    /// A protocol policies cannot name.
    #[error(transparent)]
    Protocol(#[from] UnknownProtocol),
    /// `endPort` without a numeric `port`.
    #[error("needs a numeric port")]
    EndPortWithoutPort,
    /// `endPort` with a named `port`.
    #[error("needs a numeric port, not a named one")]
    EndPortWithNamedPort,
    /// A port number written as a string.
    #[error("{0:?} is a string; write the number without quotes")]
    QuotedNumber(u16),
    /// An empty port name.
    #[error("empty port name")]
    EmptyPortName,
    /// A port number out of range.
    #[error("{0} is not in 1-65535")]
    PortOutOfRange(i32),
    /// `endPort` below `port`.
    #[error("{end} is below port {start}")]
    EndPortBelow {
        /// The end.
        end: u16,
        /// The start.
        start: u16,
    },
    /// A `policyTypes` value that is neither Ingress nor Egress.
    #[error("unknown type {0:?} (Ingress or Egress)")]
    UnknownPolicyType(String),
}

/// An invalid field, with its path in the object (`spec.ingress[0].from[1].ipBlock.cidr`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {why}")]
pub struct InvalidField {
    /// Where.
    pub at: String,
    /// Why.
    pub why: Invalid,
}

/// The error `why` at `at`.
fn invalid(at: impl Into<String>, why: impl Into<Invalid>) -> InvalidField {
    InvalidField { at: at.into(), why: why.into() }
}

/// Converts and validates a NetworkPolicy, applying the API server's `policyTypes` default:
/// Ingress always, and Egress when the policy has egress rules.
pub fn policy_from_k8s(np: &NetworkPolicy, default_namespace: &str) -> Result<Policy, Problem> {
    let namespace = np.metadata.namespace.clone().unwrap_or_else(|| default_namespace.to_string());
    let name = np.metadata.name.clone().ok_or_else(|| Problem {
        object: format!("NetworkPolicy {namespace}/?"),
        reason: "no metadata.name".into(),
    })?;
    let id = ObjectRef::new(namespace, name);
    let problem = |e: InvalidField| Problem { object: format!("NetworkPolicy {id}"), reason: e.to_string() };
    let spec = np.spec.clone().unwrap_or_default();
    let pod_selector = match &spec.pod_selector {
        Some(s) => Selector::parse(s).map_err(|e| problem(invalid("spec.podSelector", e)))?,
        None => Selector::everything(),
    };
    let (isolates_ingress, isolates_egress) = match &spec.policy_types {
        Some(types) if !types.is_empty() => {
            let mut ingress = false;
            let mut egress = false;
            for t in types {
                match Direction::BOTH.into_iter().find(|d| d.policy_type() == t) {
                    Some(Direction::Ingress) => ingress = true,
                    Some(Direction::Egress) => egress = true,
                    None => return Err(problem(invalid("spec.policyTypes", Invalid::UnknownPolicyType(t.clone())))),
                }
            }
            (ingress, egress)
        }
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    };
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let at = format!("spec.ingress[{i}]");
        ingress.push(Rule {
            peers: peers(r.from.as_deref().unwrap_or_default(), &format!("{at}.from")).map_err(problem)?,
            ports: ports(r.ports.as_deref().unwrap_or_default(), &format!("{at}.ports")).map_err(problem)?,
        });
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let at = format!("spec.egress[{i}]");
        egress.push(Rule {
            peers: peers(r.to.as_deref().unwrap_or_default(), &format!("{at}.to")).map_err(problem)?,
            ports: ports(r.ports.as_deref().unwrap_or_default(), &format!("{at}.ports")).map_err(problem)?,
        });
    }
    Ok(Policy { id, pod_selector, isolates_ingress, isolates_egress, ingress, egress })
}

fn peers(list: &[NetworkPolicyPeer], at: &str) -> Result<Vec<Peer>, InvalidField> {
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            let at = format!("{at}[{i}]");
            match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
                (Some(block), None, None) => {
                    let cidr = parse_cidr(&block.cidr).map_err(|e| invalid(format!("{at}.ipBlock.cidr"), e))?;
                    let mut except = Vec::new();
                    for (j, e) in block.except.iter().flatten().enumerate() {
                        let here = format!("{at}.ipBlock.except[{j}]");
                        let net = parse_cidr(e).map_err(|err| invalid(here.clone(), err))?;
                        let names = || (e.clone(), block.cidr.clone());
                        if !cidr.contains(&net) || net.prefix_len() <= cidr.prefix_len() && net != cidr {
                            let (except, cidr) = names();
                            return Err(invalid(here, Invalid::ExceptOutside { except, cidr }));
                        }
                        if net == cidr {
                            let (except, cidr) = names();
                            return Err(invalid(here, Invalid::ExceptEqual { except, cidr }));
                        }
                        except.push(net);
                    }
                    Ok(Peer::IpBlock { cidr, except })
                }
                (Some(_), _, _) => Err(invalid(at, Invalid::IpBlockWithSelector)),
                (None, None, None) => Err(invalid(at, Invalid::EmptyPeer)),
                (None, ns, pods) => Ok(Peer::Pods {
                    namespaces: ns.as_ref().map(Selector::parse).transpose().map_err(|e| invalid(format!("{at}.namespaceSelector"), e))?,
                    pods: pods.as_ref().map(Selector::parse).transpose().map_err(|e| invalid(format!("{at}.podSelector"), e))?.unwrap_or_default(),
                }),
            }
        })
        .collect()
}

/// Parses a CIDR as the API requires it: an address and a prefix length, host bits zero.
fn parse_cidr(s: &str) -> Result<IpNet, Invalid> {
    let net: IpNet = s.parse().map_err(|_| Invalid::NotCidr(s.to_string()))?;
    if net.trunc() != net {
        return Err(Invalid::HostBits { value: s.to_string(), network: net.trunc() });
    }
    // The maps store IPv4 as IPv4-mapped IPv6, so such a block would match IPv4 peers while
    // being an IPv6 block; the API's strict CIDR validation rejects it too.
    if let IpNet::V6(v6) = net {
        if v6.prefix_len() >= 96 && v6.network().to_ipv4_mapped().is_some() {
            return Err(Invalid::V4Mapped(s.to_string()));
        }
    }
    Ok(net)
}

fn ports(list: &[NetworkPolicyPort], at: &str) -> Result<Vec<PortMatch>, InvalidField> {
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            let at = format!("{at}[{i}]");
            let protocol = Protocol::parse(p.protocol.as_deref()).map_err(|e| invalid(format!("{at}.protocol"), e))?;
            let port_at = || format!("{at}.port");
            let end_at = || format!("{at}.endPort");
            let port = match (&p.port, p.end_port) {
                (None, None) => PortSpec::All,
                (None, Some(_)) => return Err(invalid(end_at(), Invalid::EndPortWithoutPort)),
                (Some(IntOrString::String(name)), None) => {
                    if let Ok(n) = name.parse::<u16>() {
                        return Err(invalid(port_at(), Invalid::QuotedNumber(n)));
                    }
                    if name.is_empty() {
                        return Err(invalid(port_at(), Invalid::EmptyPortName));
                    }
                    PortSpec::Named(name.clone())
                }
                (Some(IntOrString::String(_)), Some(_)) => return Err(invalid(end_at(), Invalid::EndPortWithNamedPort)),
                (Some(IntOrString::Int(n)), end) => {
                    let start = port_number(*n).ok_or_else(|| invalid(port_at(), Invalid::PortOutOfRange(*n)))?;
                    let end = match end {
                        None => start,
                        Some(e) => {
                            let e = port_number(e).ok_or_else(|| invalid(end_at(), Invalid::PortOutOfRange(e)))?;
                            if e < start {
                                return Err(invalid(end_at(), Invalid::EndPortBelow { end: e, start }));
                            }
                            e
                        }
                    };
                    PortSpec::Range(start, end)
                }
            };
            Ok(PortMatch { protocol, port })
        })
        .collect()
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}
