//! Object builders: pods, namespaces and policies as the Kubernetes API would hold them,
//! converted into the model through the same conversions as every real object, and as JSON for
//! the sandbox's API server.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::{Namespace as K8sNamespace, Pod as K8sPod},
    networking::v1::NetworkPolicy,
};
use netpol_agent::model::{namespace_from_k8s, pod_from_k8s, policy_from_k8s, Namespace, Pod, Policy, Problem};
use serde_json::{json, Value};

/// The node that compiled fixtures treat as local.
pub const NODE: &str = "n1";
/// Another node.
pub const OTHER_NODE: &str = "n2";

/// A pod under construction; converted through [`pod_from_k8s`] like every real one.
#[derive(Clone, Debug)]
pub struct PodBuilder {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<String>,
    pub ports: Vec<(String, u16, String)>,
    pub host_network: bool,
    pub phase: Option<String>,
}

/// A pod `namespace/name` on [`NODE`], with nothing else yet.
pub fn pod(namespace: &str, name: &str) -> PodBuilder {
    PodBuilder {
        namespace: namespace.into(),
        name: name.into(),
        node: NODE.into(),
        labels: BTreeMap::new(),
        ips: Vec::new(),
        ports: Vec::new(),
        host_network: false,
        phase: None,
    }
}

impl PodBuilder {
    /// A label.
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }

    /// An address (`status.podIPs`, in order).
    pub fn ip(mut self, ip: &str) -> Self {
        self.ips.push(ip.into());
        self
    }

    /// A named container port.
    pub fn port(mut self, name: &str, number: u16, protocol: &str) -> Self {
        self.ports.push((name.into(), number, protocol.into()));
        self
    }

    /// The node (`spec.nodeName`; [`NODE`] unless set).
    pub fn node(mut self, node: &str) -> Self {
        self.node = node.into();
        self
    }

    /// On the host network (takes no part in policy).
    pub fn host_network(mut self) -> Self {
        self.host_network = true;
        self
    }

    /// The pod's phase.
    pub fn phase(mut self, phase: &str) -> Self {
        self.phase = Some(phase.into());
        self
    }

    /// The pod as the API server serves it.
    pub fn json(&self) -> Value {
        let ports: Vec<_> = self
            .ports
            .iter()
            .map(|(name, number, protocol)| json!({"name": name, "containerPort": number, "protocol": protocol}))
            .collect();
        let ips: Vec<_> = self.ips.iter().map(|ip| json!({"ip": ip})).collect();
        let mut status = json!({"podIPs": ips});
        if let Some(first) = self.ips.first() {
            status["podIP"] = json!(first);
        }
        if let Some(phase) = &self.phase {
            status["phase"] = json!(phase);
        }
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"namespace": self.namespace, "name": self.name, "labels": self.labels},
            "spec": {
                "nodeName": self.node,
                "hostNetwork": self.host_network,
                "containers": [{"name": "main", "image": "registry.invalid/main", "ports": ports}],
            },
            "status": status,
        })
    }

    /// The pod as the API holds it.
    pub fn k8s(&self) -> K8sPod {
        serde_json::from_value(self.json()).expect("the builder writes a valid Pod")
    }

    /// The pod in the model.
    pub fn build(&self) -> Pod {
        pod_from_k8s(&self.k8s(), "default")
            .unwrap_or_else(|p| panic!("pod {}/{} rejected: {p}", self.namespace, self.name))
            .unwrap_or_else(|| panic!("pod {}/{} takes no part in policy", self.namespace, self.name))
    }
}

/// A namespace with `labels` as the API server serves it.
pub fn namespace_json<'a>(name: &str, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Value {
    let labels: BTreeMap<&str, &str> = labels.into_iter().collect();
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

/// A namespace with `labels` (and the name label the API server adds).
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    let ns: K8sNamespace = serde_json::from_value(namespace_json(name, labels.iter().copied())).expect("the builder writes a valid Namespace");
    namespace_from_k8s(&ns).unwrap_or_else(|p| panic!("namespace {name} rejected: {p}"))
}

/// A NetworkPolicy from YAML (`apiVersion` and `kind` may be left out).
pub fn k8s_policy(yaml: &str) -> NetworkPolicy {
    let mut value: serde_json::Value = serde_saphyr::from_str_with_options(yaml, netpol_agent::source::manifests::yaml_options()).unwrap_or_else(|e| panic!("bad test YAML: {e}\n{yaml}"));
    let map = value.as_object_mut().expect("a policy is a YAML mapping");
    map.entry("apiVersion").or_insert("networking.k8s.io/v1".into());
    map.entry("kind").or_insert("NetworkPolicy".into());
    serde_json::from_value(value).unwrap_or_else(|e| panic!("not a NetworkPolicy: {e}\n{yaml}"))
}

/// A valid policy from YAML.
pub fn policy(yaml: &str) -> Policy {
    policy_from_k8s(&k8s_policy(yaml), "default").unwrap_or_else(|p| panic!("policy rejected: {p}\n{yaml}"))
}

/// The problem an invalid policy's YAML is reported with.
pub fn problem(yaml: &str) -> Problem {
    match policy_from_k8s(&k8s_policy(yaml), "default") {
        Ok(p) => panic!("policy accepted, expected a problem: {p:?}\n{yaml}"),
        Err(p) => p,
    }
}
