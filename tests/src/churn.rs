//! Churn: a cluster description that changes at random (seeded), written as one manifest file,
//! with the expected verdict of a flow computed offline from the same manifests; and the
//! agent's memory, read from /proc.
//!
//! The cluster holds a few real pods (network namespaces with servers, made by the test) and
//! many manifest-only pods: pods the manifests place on another node, with addresses in
//! 198.18.240.0/20 and fd00:198:18:f0::/64 that no namespace holds. They cost the agent what
//! every remote pod costs (identities, ipcache entries, policy entries) and carry no traffic.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use netpol_agent::{
    model::Direction,
    compile::eval::Dataplane,
    tools::explain::PortQuery,
    source::manifests::{load_documents, Loaded},
    model::{ClusterState, ObjectRef, Pod},

};
use serde_json::{json, Value};

pub use netpol_testkit::rng::Rng;

/// The agent's resident memory (VmRSS of /proc/PID/status) in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time a process has used so far (user + system, all its threads), in seconds; from
/// /proc/PID/stat, whose comm field may hold spaces, so the fields are counted after its ')'.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / hz.max(1) as f64)
}

/// The median of `values` (the upper one of an even count); 0 for none.
pub fn median(values: &[u64]) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// A real pod of the churn cluster: its manifest identity and addresses.
#[derive(Clone, Debug)]
pub struct RealPod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels (they change).
    pub labels: BTreeMap<String, String>,
    /// IPv4 address.
    pub ipv4: Ipv4Addr,
    /// IPv6 address.
    pub ipv6: Ipv6Addr,
}

/// A manifest-only pod.
#[derive(Clone, Debug)]
struct VirtualPod {
    namespace: String,
    labels: BTreeMap<String, String>,
    /// Host index in the manifest-only address range.
    host: u16,
    /// Its "http" port (80 or 8080): named ports are part of an identity.
    http: u16,
}

/// Namespaces that hold real pods (and manifest-only ones).
pub const REAL_NAMESPACES: [&str; 3] = ["a", "b", "c"];
/// Namespaces that hold only manifest-only pods.
const VIRTUAL_NAMESPACES: [&str; 2] = ["d", "e"];
/// The node the manifest-only pods are placed on (no agent runs there).
const REMOTE_NODE: &str = "churn-remote-node";
/// The named container ports of every real pod (the servers the test starts).
pub const REAL_PORTS: &[(&str, u16, &str)] = &[("http", 80, "TCP"), ("alt", 8080, "TCP"), ("dns", 53, "UDP")];

const APPS: [&str; 5] = ["web", "api", "db", "cache", "worker"];
const TIERS: [&str; 2] = ["front", "back"];
const TEAMS: [&str; 3] = ["red", "blue", "green"];
const ENVS: [&str; 2] = ["prod", "dev"];

/// What one change did, for the tally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// A real pod's labels changed.
    RelabelRealPod,
    /// A manifest-only pod's labels changed.
    RelabelVirtualPod,
    /// A manifest-only pod was added.
    AddVirtualPod,
    /// A manifest-only pod was removed.
    RemoveVirtualPod,
    /// A policy was added.
    AddPolicy,
    /// A policy's spec was replaced.
    ChangePolicy,
    /// A policy was removed.
    RemovePolicy,
    /// A namespace's labels changed.
    RelabelNamespace,
}

/// The churning cluster description.
pub struct ChurnModel {
    rng: Rng,
    node: String,
    /// The real pods' node subnet (for ipBlock peers), e.g. 198.18.1.0/24.
    real_subnet: Ipv4Addr,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// The real pods.
    pub real: Vec<RealPod>,
    virtual_pods: BTreeMap<String, VirtualPod>,
    free_hosts: Vec<u16>,
    policies: BTreeMap<(String, String), Value>,
    next_id: u64,
    /// Bounds on the number of manifest-only pods (kept between them, so memory has a level
    /// to stay at).
    pub virtual_bounds: (usize, usize),
    /// Bounds on the number of policies.
    pub policy_bounds: (usize, usize),
}

impl ChurnModel {
    /// A model of `real` pods on node `node` (whose pod subnet is `real_subnet`, a /24), with
    /// `virtual_pods` manifest-only pods and `policies` random policies to start with.
    pub fn new(seed: u64, node: &str, real_subnet: Ipv4Addr, real: Vec<RealPod>, virtual_pods: usize, policies: usize) -> Self {
        let mut m = Self {
            rng: Rng::new(seed),
            node: node.to_string(),
            real_subnet,
            namespaces: BTreeMap::new(),
            real,
            virtual_pods: BTreeMap::new(),
            // 198.18.240.1 - 198.18.255.254: 4094 addresses, far more than the bounds use.
            free_hosts: (1..4095).rev().collect(),
            policies: BTreeMap::new(),
            next_id: 0,
            virtual_bounds: (virtual_pods * 2 / 3, virtual_pods * 4 / 3),
            policy_bounds: (policies * 2 / 3, policies * 4 / 3),
        };
        for ns in REAL_NAMESPACES.iter().chain(&VIRTUAL_NAMESPACES) {
            let labels = m.namespace_labels();
            m.namespaces.insert((*ns).to_string(), labels);
        }
        for _ in 0..virtual_pods {
            m.add_virtual_pod();
        }
        for _ in 0..policies {
            m.add_policy();
        }
        m
    }

    /// Labels for a pod from a small vocabulary (so identities are bounded).
    pub fn pod_labels(&mut self) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        l.insert("app".to_string(), (*self.rng.pick(&APPS)).to_string());
        l.insert("tier".to_string(), (*self.rng.pick(&TIERS)).to_string());
        if self.rng.chance(1, 3) {
            l.insert("team".to_string(), (*self.rng.pick(&TEAMS[..2])).to_string());
        }
        l
    }

    fn namespace_labels(&mut self) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        l.insert("team".to_string(), (*self.rng.pick(&TEAMS)).to_string());
        l.insert("env".to_string(), (*self.rng.pick(&ENVS)).to_string());
        l
    }

    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }

    fn any_namespace(&mut self) -> String {
        let all: Vec<&str> = REAL_NAMESPACES.iter().chain(&VIRTUAL_NAMESPACES).copied().collect();
        (*self.rng.pick(&all)).to_string()
    }

    fn add_virtual_pod(&mut self) {
        let Some(host) = self.free_hosts.pop() else { return };
        let name = self.id("v");
        let namespace = self.any_namespace();
        let labels = self.pod_labels();
        let http = if self.rng.chance(1, 4) { 8080 } else { 80 };
        self.virtual_pods.insert(name, VirtualPod { namespace, labels, host, http });
    }

    fn add_policy(&mut self) {
        let name = self.id("p");
        // Most policies where real pods are, so that they decide the probes.
        let namespace = if self.rng.chance(4, 5) { (*self.rng.pick(&REAL_NAMESPACES)).to_string() } else { self.any_namespace() };
        let spec = self.policy_spec();
        self.policies.insert((namespace, name), spec);
    }

    /// Applies one random change that really changes the description.
    pub fn change(&mut self) -> Change {
        let (vmin, vmax) = self.virtual_bounds;
        let (pmin, pmax) = self.policy_bounds;
        loop {
            match self.rng.below(100) {
                0..=14 => {
                    let i = self.rng.below(self.real.len());
                    let labels = self.pod_labels();
                    if labels != self.real[i].labels {
                        self.real[i].labels = labels;
                        return Change::RelabelRealPod;
                    }
                }
                15..=34 if !self.virtual_pods.is_empty() => {
                    let names: Vec<String> = self.virtual_pods.keys().cloned().collect();
                    let name = self.rng.pick(&names).clone();
                    let labels = self.pod_labels();
                    if let Some(p) = self.virtual_pods.get_mut(&name) {
                        if p.labels != labels {
                            p.labels = labels;
                            return Change::RelabelVirtualPod;
                        }
                    }
                }
                35..=49 if self.virtual_pods.len() < vmax => {
                    self.add_virtual_pod();
                    return Change::AddVirtualPod;
                }
                50..=64 if self.virtual_pods.len() > vmin => {
                    let names: Vec<String> = self.virtual_pods.keys().cloned().collect();
                    let name = self.rng.pick(&names).clone();
                    if let Some(p) = self.virtual_pods.remove(&name) {
                        self.free_hosts.insert(0, p.host);
                    }
                    return Change::RemoveVirtualPod;
                }
                65..=74 if self.policies.len() < pmax => {
                    self.add_policy();
                    return Change::AddPolicy;
                }
                75..=84 if !self.policies.is_empty() => {
                    let keys: Vec<(String, String)> = self.policies.keys().cloned().collect();
                    let key = self.rng.pick(&keys).clone();
                    let spec = self.policy_spec();
                    if self.policies.get(&key) != Some(&spec) {
                        self.policies.insert(key, spec);
                        return Change::ChangePolicy;
                    }
                }
                85..=94 if self.policies.len() > pmin => {
                    let keys: Vec<(String, String)> = self.policies.keys().cloned().collect();
                    let key = self.rng.pick(&keys).clone();
                    self.policies.remove(&key);
                    return Change::RemovePolicy;
                }
                95..=99 => {
                    let ns = self.any_namespace();
                    let labels = self.namespace_labels();
                    if self.namespaces.get(&ns) != Some(&labels) {
                        self.namespaces.insert(ns, labels);
                        return Change::RelabelNamespace;
                    }
                }
                _ => {}
            }
        }
    }

    fn pod_selector(&mut self) -> Value {
        match self.rng.below(7) {
            0 => json!({}),
            1 => json!({"matchLabels": {"app": self.rng.pick(&APPS)}}),
            2 => json!({"matchLabels": {"tier": self.rng.pick(&TIERS)}}),
            3 => json!({"matchLabels": {"app": self.rng.pick(&APPS), "tier": self.rng.pick(&TIERS)}}),
            4 => {
                let (a, b) = (*self.rng.pick(&APPS), *self.rng.pick(&APPS));
                json!({"matchExpressions": [{"key": "app", "operator": "In", "values": [a, b]}]})
            }
            5 => json!({"matchExpressions": [{"key": "team", "operator": "Exists"}]}),
            _ => json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": [self.rng.pick(&APPS)]}]}),
        }
    }

    fn namespace_selector(&mut self) -> Value {
        let all: Vec<&str> = REAL_NAMESPACES.iter().chain(&VIRTUAL_NAMESPACES).copied().collect();
        match self.rng.below(4) {
            0 => json!({}),
            1 => json!({"matchLabels": {"team": self.rng.pick(&TEAMS)}}),
            2 => json!({"matchLabels": {"env": self.rng.pick(&ENVS)}}),
            _ => json!({"matchLabels": {"kubernetes.io/metadata.name": self.rng.pick(&all)}}),
        }
    }

    fn peer(&mut self) -> Value {
        match self.rng.below(7) {
            0..=2 => json!({"podSelector": self.pod_selector()}),
            3 | 4 => json!({"namespaceSelector": self.namespace_selector()}),
            5 => json!({"namespaceSelector": self.namespace_selector(), "podSelector": self.pod_selector()}),
            _ => {
                // The real pods' /24 less one of its /29s (real pods are at .10 and up).
                let o = self.real_subnet.octets();
                let except = 8 * (1 + self.rng.below(2));
                json!({"ipBlock": {"cidr": format!("{}.{}.{}.0/24", o[0], o[1], o[2]), "except": [format!("{}.{}.{}.{except}/29", o[0], o[1], o[2])]}})
            }
        }
    }

    fn ports(&mut self) -> Option<Value> {
        Some(match self.rng.below(12) {
            0..=4 => return None,
            5 => json!([{"port": 80, "protocol": "TCP"}]),
            6 => json!([{"port": "http"}]),
            7 => json!([{"port": 53, "protocol": "UDP"}]),
            8 => json!([{"port": 8000, "endPort": 8100, "protocol": "TCP"}]),
            9 => json!([{"protocol": "UDP"}]),
            10 => json!([{"port": "dns", "protocol": "UDP"}, {"port": 8080}]),
            _ => json!([{"port": "alt"}]),
        })
    }

    fn rule(&mut self, peers_key: &str) -> Value {
        let mut rule = serde_json::Map::new();
        if !self.rng.chance(1, 6) {
            let n = 1 + self.rng.below(2);
            let peers: Vec<Value> = (0..n).map(|_| self.peer()).collect();
            rule.insert(peers_key.to_string(), Value::Array(peers));
        }
        if let Some(p) = self.ports() {
            rule.insert("ports".to_string(), p);
        }
        Value::Object(rule)
    }

    /// A policy spec of one of the usual shapes: default deny (ingress, egress), pod selector,
    /// namespace selector, ipBlock and port rules, allow-all.
    fn policy_spec(&mut self) -> Value {
        match self.rng.below(10) {
            0 => json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            1 => json!({"podSelector": self.pod_selector(), "policyTypes": ["Egress"]}),
            2..=5 => {
                let n = 1 + self.rng.below(2);
                let rules: Vec<Value> = (0..n).map(|_| self.rule("from")).collect();
                json!({"podSelector": self.pod_selector(), "ingress": rules})
            }
            6 | 7 => {
                let n = 1 + self.rng.below(2);
                let rules: Vec<Value> = (0..n).map(|_| self.rule("to")).collect();
                let types = if self.rng.chance(1, 2) { json!(["Egress"]) } else { json!(["Ingress", "Egress"]) };
                json!({"podSelector": self.pod_selector(), "egress": rules, "policyTypes": types})
            }
            8 => json!({"podSelector": self.pod_selector(), "ingress": [{}]}),
            _ => json!({"podSelector": self.pod_selector(), "egress": [{}], "policyTypes": ["Egress"]}),
        }
    }

    /// Manifest-only pods now.
    pub fn virtual_pod_count(&self) -> usize {
        self.virtual_pods.len()
    }

    /// Policies now.
    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// The whole description as one manifest file (JSON documents, which YAML reads).
    pub fn manifest(&self) -> String {
        let mut docs = Vec::new();
        for (name, labels) in &self.namespaces {
            docs.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}));
        }
        let pod = |ns: &str, name: &str, labels: &BTreeMap<String, String>, node: &str, ips: [IpAddr; 2], ports: Vec<Value>| {
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {"nodeName": node, "containers": [{"name": "server", "image": "netpol/sandbox", "ports": ports}]},
                "status": {"phase": "Running", "podIP": ips[0].to_string(), "podIPs": [{"ip": ips[0].to_string()}, {"ip": ips[1].to_string()}]},
            })
        };
        for p in &self.real {
            let ports = REAL_PORTS.iter().map(|(n, port, proto)| json!({"name": n, "containerPort": port, "protocol": proto})).collect();
            docs.push(pod(&p.namespace, &p.name, &p.labels, &self.node, [p.ipv4.into(), p.ipv6.into()], ports));
        }
        for (name, p) in &self.virtual_pods {
            let ports = vec![
                json!({"name": "http", "containerPort": p.http, "protocol": "TCP"}),
                json!({"name": "dns", "containerPort": 53, "protocol": "UDP"}),
            ];
            let [hi, lo] = p.host.to_be_bytes();
            let v4 = Ipv4Addr::new(198, 18, 240 + hi, lo);
            let v6 = Ipv6Addr::new(0xfd00, 0x198, 0x18, 0xf0, 0, 0, 0, p.host);
            docs.push(pod(&p.namespace, name, &p.labels, REMOTE_NODE, [v4.into(), v6.into()], ports));
        }
        for ((ns, name), spec) in &self.policies {
            docs.push(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns}, "spec": spec}));
        }
        docs.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n---\n")
    }
}

/// Parses a manifest file's text as the agent would (see `netpol_agent::source::manifests`).
pub fn parse(text: &str, file: &str) -> Loaded {
    let mut loaded = Loaded::default();
    load_documents(text, file, &mut loaded, &mut BTreeSet::new());
    loaded
}

/// The verdicts of one cluster state: the compiled maps of the real pods' node, asked the
/// lookups the kernel makes (what `netpol-agent explain` answers).
pub struct Verdicts<'a> {
    state: &'a ClusterState,
    dataplane: Dataplane,
}

/// One probe: from a real pod to another, on an address family, protocol and port.
#[derive(Clone, Debug)]
pub struct Flow {
    /// Source pod.
    pub from: ObjectRef,
    /// Source address.
    pub src: IpAddr,
    /// Destination pod.
    pub to: ObjectRef,
    /// Destination address.
    pub dst: IpAddr,
    /// Protocol and port.
    pub port: PortQuery,
}

impl<'a> Verdicts<'a> {
    /// Compiles the node of `pods` in `state`.
    pub fn new(state: &'a ClusterState, pods: &[ObjectRef]) -> Self {
        let pods: Vec<&Pod> = pods.iter().filter_map(|p| state.pods.get(p)).collect();
        Self { state, dataplane: Dataplane::compile_nodes(state, &pods) }
    }

    /// Whether `flow` is allowed: egress at the source and ingress at the destination.
    /// `None` when a pod is not in the state.
    pub fn allows(&self, flow: &Flow) -> Option<bool> {
        self.sides(flow).map(|(egress, ingress)| egress && ingress)
    }

    /// The two sides' verdicts of `flow`: (egress at the source, ingress at the destination).
    pub fn sides(&self, flow: &Flow) -> Option<(bool, bool)> {
        let egress = self.dataplane.allows_port(self.state, &flow.from, Direction::Egress, flow.dst, flow.port.protocol, flow.port.port)?;
        let ingress = self.dataplane.allows_port(self.state, &flow.to, Direction::Ingress, flow.src, flow.port.protocol, flow.port.port)?;
        Some((egress, ingress))
    }
}

/// Whether `pod`'s identity (its labels, or its namespace's) differs between two states.
pub fn identity_changed(old: &ClusterState, new: &ClusterState, pod: &ObjectRef) -> bool {
    old.pods.get(pod).map(|p| &p.labels) != new.pods.get(pod).map(|p| &p.labels)
        || old.namespace_labels(&pod.namespace) != new.namespace_labels(&pod.namespace)
}

/// `min/median/max` of each tenth of `series` (in MiB, one decimal), one line per tenth.
pub fn decile_summary(series: &[u64]) -> String {
    let n = series.len();
    let mut out = String::new();
    for d in 0..10 {
        let (lo, hi) = (d * n / 10, (d + 1) * n / 10);
        let part = &series[lo..hi.max(lo)];
        if part.is_empty() {
            continue;
        }
        let mib = |k: u64| k as f64 / 1024.0;
        let (min, max) = (part.iter().min().copied().unwrap_or(0), part.iter().max().copied().unwrap_or(0));
        out.push_str(&format!(
            "  bursts {:>3}-{:<3} RSS min {:.1} / median {:.1} / max {:.1} MiB\n",
            lo + 1,
            hi,
            mib(min),
            mib(median(part)),
            mib(max)
        ));
    }
    out
}
