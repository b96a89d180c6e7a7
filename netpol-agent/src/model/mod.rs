//! The typed cluster snapshot every source produces and the compiler consumes: namespaces,
//! pods and validated NetworkPolicies, converted from the Kubernetes API types with the API
//! server's defaulting and validation applied. A policy that fails validation is reported as a
//! [`Problem`] and left out; everything else is kept.

pub mod selector;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use ipnet::IpNet;
use k8s_openapi::{
    api::{
        core::v1::{Namespace as K8sNamespace, Pod as K8sPod},
        networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::model::selector::{Labels, Selector};

/// The label the API server puts on every namespace, with the namespace's name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectRef {
    /// A reference from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// L4 protocols a NetworkPolicy port can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Parses the API's protocol name; `None` (absent) is TCP.
    pub fn parse(s: Option<&str>) -> Result<Self, String> {
        match s {
            None | Some("TCP") => Ok(Self::Tcp),
            Some("UDP") => Ok(Self::Udp),
            Some("SCTP") => Ok(Self::Sctp),
            Some(other) => Err(format!("unknown protocol {other:?} (TCP, UDP or SCTP)")),
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

/// A named container port of a pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedPort {
    /// The port's name.
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its number.
    pub port: u16,
}

/// A namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Labels, including [`NAMESPACE_NAME_LABEL`].
    pub labels: Labels,
}

/// A pod that has IPs (scheduled, running, not on the host network).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Namespace and name.
    pub id: ObjectRef,
    /// `spec.nodeName`.
    pub node: String,
    /// Labels.
    pub labels: Labels,
    /// `status.podIPs` (or `status.podIP`).
    pub ips: Vec<IpAddr>,
    /// Named container ports.
    pub named_ports: Vec<NamedPort>,
}

/// A validated NetworkPolicy with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Namespace and name.
    pub id: ObjectRef,
    /// `spec.podSelector`: the pods of the namespace the policy applies to (absent = all).
    pub pod_selector: Selector,
    /// Whether the policy isolates ingress (`policyTypes` contains Ingress, after defaulting).
    pub isolates_ingress: bool,
    /// Whether the policy isolates egress.
    pub isolates_egress: bool,
    /// Ingress rules (ignored unless `isolates_ingress`).
    pub ingress: Vec<Rule>,
    /// Egress rules (ignored unless `isolates_egress`).
    pub egress: Vec<Rule>,
}

/// One ingress or egress rule: traffic matching any peer AND any port is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Peers (`from` / `to`). Empty means every peer, including outside the cluster.
    pub peers: Vec<Peer>,
    /// Ports. Empty means every port and protocol.
    pub ports: Vec<PortMatch>,
}

/// A rule peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Pods selected by labels, in namespaces selected by labels or in the policy's namespace.
    Pods {
        /// `namespaceSelector`; `None` means the policy's own namespace.
        namespaces: Option<Selector>,
        /// `podSelector`; absent is "all pods" of those namespaces.
        pods: Selector,
    },
    /// `ipBlock`: addresses in `cidr` but in none of `except`.
    IpBlock {
        /// The block.
        cidr: IpNet,
        /// Holes in it.
        except: Vec<IpNet>,
    },
}

/// Which ports of a protocol a rule allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// Every port of the protocol.
    All,
    /// `port` to `end` inclusive (`end == port` for a single port).
    Range(u16, u16),
    /// A named container port: of the selected pod for ingress, of the peer pod for egress.
    Named(String),
}

/// One `ports` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMatch {
    /// Protocol (TCP when omitted).
    pub protocol: Protocol,
    /// Port(s).
    pub port: PortSpec,
}

/// A problem with one object of the input; the object is left out, the rest is applied.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// `Kind namespace/name` (or a file name when the object could not be read).
    pub object: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}

/// The typed snapshot of the cluster that the compiler works on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Pods with IPs, by namespace/name.
    pub pods: BTreeMap<ObjectRef, Pod>,
    /// Pods scheduled but without addresses yet (the API learns them after the pod's network
    /// is set up): no part in policy until they have some — the CNI chain plugin's may come
    /// first ([`crate::cni::server::CniPods::merge_into`]).
    pub unaddressed: BTreeMap<ObjectRef, Pod>,
    /// Valid policies, by namespace/name.
    pub policies: BTreeMap<ObjectRef, Policy>,
    /// Namespaces in audit mode (the agent's `--audit-namespace`): their pods' policy drops
    /// pass and are reported as "would drop".
    pub audit_namespaces: BTreeSet<String>,
}

impl ClusterState {
    /// Adds a converted pod: to [`ClusterState::pods`], or to [`ClusterState::unaddressed`]
    /// while it has no address.
    pub fn insert_pod(&mut self, pod: Pod) {
        if pod.ips.is_empty() {
            self.unaddressed.insert(pod.id.clone(), pod);
        } else {
            self.pods.insert(pod.id.clone(), pod);
        }
    }

    /// The labels of a namespace; a namespace the snapshot does not hold has only its name label.
    pub fn namespace_labels(&self, name: &str) -> Labels {
        self.namespaces.get(name).map_or_else(
            || Labels::from([(NAMESPACE_NAME_LABEL.to_string(), name.to_string())]),
            |n| n.labels.clone(),
        )
    }
}

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

/// Converts and validates a NetworkPolicy, applying the API server's `policyTypes` default:
/// Ingress always, and Egress when the policy has egress rules.
pub fn policy_from_k8s(np: &NetworkPolicy, default_namespace: &str) -> Result<Policy, Problem> {
    let namespace = np.metadata.namespace.clone().unwrap_or_else(|| default_namespace.to_string());
    let name = np.metadata.name.clone().ok_or_else(|| Problem {
        object: format!("NetworkPolicy {namespace}/?"),
        reason: "no metadata.name".into(),
    })?;
    let id = ObjectRef::new(namespace, name);
    let problem = |reason: String| Problem { object: format!("NetworkPolicy {id}"), reason };
    let spec = np.spec.clone().unwrap_or_default();
    let pod_selector = match &spec.pod_selector {
        Some(s) => Selector::parse(s).map_err(|e| problem(format!("spec.podSelector: {e}")))?,
        None => Selector::everything(),
    };
    let (isolates_ingress, isolates_egress) = match &spec.policy_types {
        Some(types) if !types.is_empty() => {
            let mut ingress = false;
            let mut egress = false;
            for t in types {
                match t.as_str() {
                    "Ingress" => ingress = true,
                    "Egress" => egress = true,
                    other => return Err(problem(format!("spec.policyTypes: unknown type {other:?} (Ingress or Egress)"))),
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

fn peers(list: &[NetworkPolicyPeer], at: &str) -> Result<Vec<Peer>, String> {
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            let at = format!("{at}[{i}]");
            match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
                (Some(block), None, None) => {
                    let cidr = parse_cidr(&block.cidr).map_err(|e| format!("{at}.ipBlock.cidr: {e}"))?;
                    let mut except = Vec::new();
                    for (j, e) in block.except.iter().flatten().enumerate() {
                        let net = parse_cidr(e).map_err(|err| format!("{at}.ipBlock.except[{j}]: {err}"))?;
                        if !cidr.contains(&net) || net.prefix_len() <= cidr.prefix_len() && net != cidr {
                            return Err(format!("{at}.ipBlock.except[{j}]: {e} is not inside {}", block.cidr));
                        }
                        if net == cidr {
                            return Err(format!("{at}.ipBlock.except[{j}]: {e} must be strictly inside {}", block.cidr));
                        }
                        except.push(net);
                    }
                    Ok(Peer::IpBlock { cidr, except })
                }
                (Some(_), _, _) => Err(format!("{at}: ipBlock cannot be combined with a selector")),
                (None, None, None) => Err(format!("{at}: a peer needs podSelector, namespaceSelector or ipBlock")),
                (None, ns, pods) => Ok(Peer::Pods {
                    namespaces: ns
                        .as_ref()
                        .map(Selector::parse)
                        .transpose()
                        .map_err(|e| format!("{at}.namespaceSelector: {e}"))?,
                    pods: pods
                        .as_ref()
                        .map(Selector::parse)
                        .transpose()
                        .map_err(|e| format!("{at}.podSelector: {e}"))?
                        .unwrap_or_default(),
                }),
            }
        })
        .collect()
}

/// Parses a CIDR as the API requires it: an address and a prefix length, host bits zero.
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net: IpNet = s.parse().map_err(|_| format!("{s:?} is not a CIDR"))?;
    if net.trunc() != net {
        return Err(format!("{s:?} has host bits set (did you mean {}?)", net.trunc()));
    }
    // The maps store IPv4 as IPv4-mapped IPv6, so such a block would match IPv4 peers while
    // being an IPv6 block; the API's strict CIDR validation rejects it too.
    if let IpNet::V6(v6) = net {
        if v6.prefix_len() >= 96 && v6.network().to_ipv4_mapped().is_some() {
            return Err(format!("{s:?} is an IPv4-mapped IPv6 CIDR; write it as an IPv4 CIDR"));
        }
    }
    Ok(net)
}

fn ports(list: &[NetworkPolicyPort], at: &str) -> Result<Vec<PortMatch>, String> {
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            let at = format!("{at}[{i}]");
            let protocol = Protocol::parse(p.protocol.as_deref()).map_err(|e| format!("{at}.protocol: {e}"))?;
            let port = match (&p.port, p.end_port) {
                (None, None) => PortSpec::All,
                (None, Some(_)) => return Err(format!("{at}.endPort: needs a numeric port")),
                (Some(IntOrString::String(name)), None) => {
                    if let Ok(n) = name.parse::<u16>() {
                        return Err(format!("{at}.port: {n:?} is a string; write the number without quotes"));
                    }
                    if name.is_empty() {
                        return Err(format!("{at}.port: empty port name"));
                    }
                    PortSpec::Named(name.clone())
                }
                (Some(IntOrString::String(_)), Some(_)) => return Err(format!("{at}.endPort: needs a numeric port, not a named one")),
                (Some(IntOrString::Int(n)), end) => {
                    let start = port_number(*n).ok_or_else(|| format!("{at}.port: {n} is not in 1-65535"))?;
                    let end = match end {
                        None => start,
                        Some(e) => {
                            let e = port_number(e).ok_or_else(|| format!("{at}.endPort: {e} is not in 1-65535"))?;
                            if e < start {
                                return Err(format!("{at}.endPort: {e} is below port {start}"));
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
