//! The typed cluster snapshot every source produces and the compiler consumes: namespaces,
//! pods and validated NetworkPolicies, converted from the Kubernetes API types with the API
//! server's defaulting and validation applied. A policy that fails validation is reported as a
//! [`Problem`] and left out; everything else is kept.

pub mod convert;
pub mod selector;

pub use convert::{namespace_from_k8s, pod_from_k8s, policy_from_k8s, Invalid, InvalidField};

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use ipnet::IpNet;
use netpol_common::{DIR_EGRESS, DIR_INGRESS, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};

use selector::{Labels, Selector};

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

/// A policy direction, as the API names its rule lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Direction {
    /// Traffic into the selected pod (`ingress` rules, `from` peers).
    Ingress,
    /// Traffic out of the selected pod (`egress` rules, `to` peers).
    Egress,
}

impl Direction {
    /// Both directions, ingress first.
    pub const BOTH: [Self; 2] = [Self::Ingress, Self::Egress];

    /// The data path's direction number (`netpol_common::DIR_*`).
    pub fn number(self) -> u8 {
        match self {
            Self::Ingress => DIR_INGRESS,
            Self::Egress => DIR_EGRESS,
        }
    }

    /// The direction of a data-path direction number (anything but ingress is egress).
    pub fn from_number(n: u8) -> Self {
        if n == DIR_INGRESS {
            Self::Ingress
        } else {
            Self::Egress
        }
    }

    /// The direction as `policyTypes` names it: `Ingress` or `Egress`.
    pub fn policy_type(self) -> &'static str {
        match self {
            Self::Ingress => "Ingress",
            Self::Egress => "Egress",
        }
    }

    /// The name of a rule's peer list in this direction: `from` or `to`.
    pub fn peers_field(self) -> &'static str {
        match self {
            Self::Ingress => "from",
            Self::Egress => "to",
        }
    }
}

impl fmt::Display for Direction {
    /// `ingress` or `egress`, as the API's field names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

/// A protocol name a policy may not use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?} (TCP, UDP or SCTP)")]
pub struct UnknownProtocol(pub String);

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
    /// Every protocol a policy can name.
    pub const ALL: [Self; 3] = [Self::Tcp, Self::Udp, Self::Sctp];

    /// Parses the API's protocol name; `None` (absent) is TCP.
    pub fn parse(s: Option<&str>) -> Result<Self, UnknownProtocol> {
        match s {
            None | Some("TCP") => Ok(Self::Tcp),
            Some("UDP") => Ok(Self::Udp),
            Some("SCTP") => Ok(Self::Sctp),
            Some(other) => Err(UnknownProtocol(other.to_string())),
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => IPPROTO_TCP,
            Self::Udp => IPPROTO_UDP,
            Self::Sctp => IPPROTO_SCTP,
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

impl Pod {
    /// An address of this pod and one of `to` of the same family: the two ends of a flow from
    /// this pod to `to` (the first of `to`'s addresses that this pod has a family for).
    pub fn addresses_to(&self, to: &Pod) -> Option<(IpAddr, IpAddr)> {
        to.ips.iter().find_map(|d| self.ips.iter().find(|s| s.is_ipv4() == d.is_ipv4()).map(|s| (*s, *d)))
    }
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

impl Policy {
    /// Whether the policy isolates the pods it selects in `direction` (its `policyTypes`, after
    /// defaulting).
    pub fn isolates(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.isolates_ingress,
            Direction::Egress => self.isolates_egress,
        }
    }

    /// The rules of `direction`.
    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Whether the policy selects `pod`: a pod of its namespace its podSelector matches.
    pub fn selects(&self, pod: &Pod) -> bool {
        self.id.namespace == pod.id.namespace && self.pod_selector.matches(&pod.labels)
    }
}

/// One ingress or egress rule: traffic matching any peer AND any port is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Peers (`from` / `to`). Empty means every peer, including outside the cluster.
    pub peers: Vec<Peer>,
    /// Ports. Empty means every port and protocol.
    pub ports: Vec<PortMatch>,
}

impl Rule {
    /// The rule's ipBlock peers: (cidr, except).
    pub fn ip_blocks(&self) -> impl Iterator<Item = (&IpNet, &[IpNet])> {
        self.peers.iter().filter_map(|p| match p {
            Peer::IpBlock { cidr, except } => Some((cidr, except.as_slice())),
            Peer::Pods { .. } => None,
        })
    }

    /// Whether one of the rule's ports is a named port.
    pub fn has_named_port(&self) -> bool {
        self.ports.iter().any(|p| matches!(p.port, PortSpec::Named(_)))
    }
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

    /// The policies that select `pod`, in name order.
    pub fn policies_selecting<'a>(&'a self, pod: &'a Pod) -> impl Iterator<Item = &'a Policy> + 'a {
        self.policies.values().filter(move |p| p.selects(pod))
    }

    /// The labels of a namespace; a namespace the snapshot does not hold has only its name label.
    pub fn namespace_labels(&self, name: &str) -> Labels {
        self.namespaces.get(name).map_or_else(
            || Labels::from([(NAMESPACE_NAME_LABEL.to_string(), name.to_string())]),
            |n| n.labels.clone(),
        )
    }
}
