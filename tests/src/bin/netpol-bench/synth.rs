//! A seeded synthetic cluster: namespaces, nodes, pods and policies of realistic shapes.

use std::{collections::BTreeMap, net::{IpAddr, Ipv4Addr}};

use netpol_agent::{
    source::manifests::{self, Loaded},
    model::ClusterState,

};

pub use netpol_testkit::rng::Rng;

/// The address of the i-th synthetic pod, in 198.19.0.0/16 (65 536 addresses), apart from the
/// sandbox nodes' 198.18.k.0/24 subnets so that no two pods ever share an address.
pub fn pod_ip(i: u32) -> IpAddr {
    let n = 0xc613_0000u32 + i; // 198.19.0.0 + i
    IpAddr::V4(Ipv4Addr::from(n))
}

const APPS: [&str; 10] = ["web", "api", "db", "cache", "queue", "worker", "auth", "search", "metrics", "gateway"];

/// YAML of a synthetic cluster: `pods` pods over `namespaces` namespaces and `nodes` nodes
/// (named n0, n1, ...), and `policies` policies: a default deny per namespace, then pod-selector,
/// namespace-selector, ipBlock and port-range policies in turn.
pub fn cluster_yaml(seed: u64, pods: u32, namespaces: u32, nodes: u32, policies: u32) -> String {
    let mut rng = Rng::new(seed);
    let mut out = String::new();
    for n in 0..namespaces {
        out.push_str(&format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{n}, labels: {{team: t{}, env: {}}}}}\n", n % 7, if n % 3 == 0 { "prod" } else { "dev" }));
    }
    for i in 0..pods {
        let app = APPS[rng.below(APPS.len())];
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: ns{}, labels: {{app: {app}, tier: t{}}}}}\nspec: {{nodeName: n{}, containers: [{{name: c, ports: [{{name: http, containerPort: {}}}]}}]}}\nstatus: {{podIP: {}}}\n",
            i % namespaces,
            rng.below(3),
            i % nodes,
            8000 + rng.below(4) * 10,
            pod_ip(i)
        ));
    }
    for p in 0..policies {
        let ns = p % namespaces;
        let app = APPS[rng.below(APPS.len())];
        let peer_app = APPS[rng.below(APPS.len())];
        let spec = if p < namespaces {
            "  podSelector: {}\n  policyTypes: [Ingress]\n".to_string()
        } else {
            match p % 4 {
                0 => format!("  podSelector: {{matchLabels: {{app: {app}}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: {peer_app}}}}}}}], ports: [{{port: http}}]}}]\n"),
                1 => format!("  podSelector: {{matchLabels: {{app: {app}}}}}\n  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{team: t{}}}}}, podSelector: {{matchLabels: {{app: {peer_app}}}}}}}], ports: [{{port: 8000, endPort: 8030}}]}}]\n", rng.below(7)),
                2 => {
                    let net = 1 + rng.below(40);
                    format!("  podSelector: {{matchLabels: {{app: {app}}}}}\n  policyTypes: [Ingress, Egress]\n  ingress: [{{from: [{{ipBlock: {{cidr: 198.18.{net}.0/24, except: [198.18.{net}.128/25]}}}}]}}]\n  egress: [{{to: [{{namespaceSelector: {{matchLabels: {{env: prod}}}}}}]}}, {{ports: [{{port: 53, protocol: UDP}}]}}]\n")
                }
                _ => format!("  podSelector: {{matchExpressions: [{{key: app, operator: In, values: [{app}, {peer_app}]}}]}}\n  ingress: [{{from: [{{namespaceSelector: {{matchExpressions: [{{key: env, operator: NotIn, values: [dev]}}]}}}}], ports: [{{protocol: TCP, port: 8010}}, {{protocol: UDP}}]}}]\n"),
            }
        };
        out.push_str(&format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: pol{p}, namespace: ns{ns}}}\nspec:\n{spec}"));
    }
    out
}

/// Parses synthetic YAML into a snapshot.
pub fn state(yaml: &str) -> ClusterState {
    let mut loaded = Loaded::default();
    manifests::load_documents(yaml, "synthetic.yaml", &mut loaded, &mut Default::default());
    assert!(loaded.problems.is_empty(), "synthetic cluster has problems: {:?}", &loaded.problems[..loaded.problems.len().min(3)]);
    loaded.state
}

/// Counts of map entries by map.
pub fn entry_counts(d: &netpol_agent::compile::Desired) -> BTreeMap<&'static str, usize> {
    BTreeMap::from([("policy", d.policy_entries), ("kernel_policy", d.policy.len()), ("ipcache", d.ipcache.len()), ("cidrs", d.cidrs.len()), ("endpoints", d.endpoints.len())])
}
