//! Tests of `explain`: parsing, the three-tier example read in words, and random clusters
//! where the rule-by-rule reading must give the compiled maps' verdict for every pair.

use std::net::IpAddr;

use super::*;
use crate::{
    compile::{
        eval::{self, Flow},
        CompileOptions, Compiler,
    },
    model::{selector::Labels, NamedPort, Namespace, PortMatch, Rule, NAMESPACE_NAME_LABEL},
    source::manifests::{load_documents, Loaded},
};

/// The three-tier example: an ingress controller, frontend, backend and database, kube-dns,
/// default-deny everywhere and exactly the flows the application needs (with DNS).
pub(crate) const THREE_TIER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: production, labels: {env: production}}
---
apiVersion: v1
kind: Namespace
metadata: {name: ingress-nginx}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
---
apiVersion: v1
kind: Pod
metadata: {name: ingress-controller, namespace: ingress-nginx, labels: {app: ingress-nginx}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}
status: {podIP: 198.18.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: production, labels: {app: frontend}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}
status: {podIP: 198.18.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: production, labels: {app: backend}}
spec: {nodeName: n2, containers: [{name: c, ports: [{name: api, containerPort: 8080}]}]}
status: {podIP: 198.18.0.12}
---
apiVersion: v1
kind: Pod
metadata: {name: database, namespace: production, labels: {app: database}}
spec: {nodeName: n2, containers: [{name: c, ports: [{name: postgres, containerPort: 5432}]}]}
status: {podIP: 198.18.0.13}
---
apiVersion: v1
kind: Pod
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: dns, containerPort: 53, protocol: UDP}, {name: dns-tcp, containerPort: 53}]}]}
status: {podIP: 198.18.0.14}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: production}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: production}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: frontend, namespace: production}
spec:
  podSelector: {matchLabels: {app: frontend}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}
      podSelector: {matchLabels: {app: ingress-nginx}}
    ports: [{port: 80}]
  egress:
  - to: [{podSelector: {matchLabels: {app: backend}}}]
    ports: [{port: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: backend, namespace: production}
spec:
  podSelector: {matchLabels: {app: backend}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{port: api}]
  egress:
  - to: [{podSelector: {matchLabels: {app: database}}}]
    ports: [{port: 5432}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: database, namespace: production}
spec:
  podSelector: {matchLabels: {app: database}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: backend}}}]
    ports: [{port: 5432}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: ingress-nginx}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: controller, namespace: ingress-nginx}
spec:
  podSelector: {matchLabels: {app: ingress-nginx}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{ipBlock: {cidr: 0.0.0.0/0}}]
    ports: [{port: 80}, {port: 443}]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: production}}
      podSelector: {matchLabels: {app: frontend}}
    ports: [{port: 80}]
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: kube-system}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: kube-system}
spec:
  podSelector: {matchLabels: {k8s-app: kube-dns}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [production, ingress-nginx]}]
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
"#;

/// Loads manifests text as the manifest source does.
pub(crate) fn load(text: &str) -> Loaded {
    let mut loaded = Loaded::default();
    load_documents(text, "test.yaml", &mut loaded, &mut Default::default());
    loaded
}

/// The three-tier state, checked to load cleanly.
pub(crate) fn three_tier() -> ClusterState {
    let l = load(THREE_TIER);
    assert!(l.problems.is_empty(), "{:?}", l.problems);
    l.state
}

fn ep(s: &str) -> Endpoint {
    s.parse().expect("test endpoint")
}

fn port(s: &str) -> PortQuery {
    s.parse().expect("test port")
}

#[test]
fn endpoints_and_ports_parse_and_bad_ones_say_why() {
    assert_eq!(ep("production/frontend"), Endpoint::Pod(ObjectRef::new("production", "frontend")));
    assert_eq!(ep("203.0.113.7"), Endpoint::Ip("203.0.113.7".parse().expect("ip")));
    assert_eq!(ep("2001:db8::7"), Endpoint::Ip("2001:db8::7".parse().expect("ip")));
    assert!(matches!("frontend".parse::<Endpoint>(), Err(ExplainError::BadEndpoint(_))));
    assert!(matches!("a/b/c".parse::<Endpoint>(), Err(ExplainError::BadEndpoint(_))));
    assert_eq!(port("80"), PortQuery { protocol: Protocol::Tcp, port: Some(80) });
    assert_eq!(port("53/UDP"), PortQuery { protocol: Protocol::Udp, port: Some(53) });
    assert_eq!(port("9/sctp"), PortQuery { protocol: Protocol::Sctp, port: Some(9) });
    assert_eq!(port("UDP"), PortQuery { protocol: Protocol::Udp, port: None });
    for bad in ["0", "70000", "http", "80/ICMP", "x/TCP", ""] {
        assert!(matches!(bad.parse::<PortQuery>(), Err(ExplainError::BadPort(..))), "{bad:?}");
    }
}

#[test]
fn an_allowed_flow_names_the_rules_that_allow_it_on_both_sides() {
    let s = three_tier();
    let e = explain(&s, &ep("production/frontend"), &ep("production/backend"), port("8080")).expect("explained");
    assert!(e.allowed);
    assert_eq!(e.from, "production/frontend (198.18.0.11)");
    assert_eq!(e.egress.pod.as_deref(), Some("production/frontend"));
    assert!(e.egress.isolated && e.ingress.isolated);
    let names: Vec<&str> = e.egress.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["production/allow-dns", "production/default-deny", "production/frontend"]);
    let matched: Vec<(&str, usize)> = e.egress.rules.iter().filter(|r| r.matched).map(|r| (r.policy.as_str(), r.index)).collect();
    assert_eq!(matched, [("production/frontend", 0)]);
    assert_eq!(e.egress.summary, "allowed by production/frontend egress[0]");
    let backend_rule = e.ingress.rules.iter().find(|r| r.policy == "production/backend").expect("backend's rule");
    assert!(backend_rule.matched, "{}", backend_rule.why);
    assert!(backend_rule.why.contains("api/TCP (8080 on production/backend) includes 8080"), "{}", backend_rule.why);
}

#[test]
fn a_denied_flow_says_which_isolation_applies_and_why_each_rule_misses() {
    let s = three_tier();
    let e = explain(&s, &ep("production/frontend"), &ep("production/database"), port("5432/TCP")).expect("explained");
    assert!(!e.allowed);
    assert!(!e.egress.allowed && !e.ingress.allowed);
    assert!(e.egress.summary.starts_with("denied: production/frontend is isolated for egress by"), "{}", e.egress.summary);
    let dns = e.egress.rules.iter().find(|r| r.policy == "production/allow-dns").expect("dns rule");
    assert!(!dns.matched && !dns.peer_matched && !dns.port_matched);
    assert!(dns.why.contains("does not match"), "{}", dns.why);
    let fe = e.egress.rules.iter().find(|r| r.policy == "production/frontend").expect("frontend rule");
    assert!(!fe.peer_matched && !fe.port_matched, "{}", fe.why);
    let db = e.ingress.rules.iter().find(|r| r.policy == "production/database").expect("database rule");
    assert!(!db.peer_matched && db.port_matched, "{}", db.why);
    let text = e.to_string();
    assert!(text.starts_with("production/frontend (198.18.0.11) -> production/database (198.18.0.13) on 5432/TCP: DENIED"), "{text}");
}

#[test]
fn a_pod_no_policy_isolates_allows_everything_and_an_outside_address_has_no_policies() {
    let s = three_tier();
    let e = explain(&s, &ep("kube-system/kube-dns"), &ep("203.0.113.7"), port("443")).expect("explained");
    assert!(e.allowed);
    assert!(!e.egress.isolated);
    assert!(e.egress.summary.contains("no policy selecting kube-system/kube-dns isolates egress"), "{}", e.egress.summary);
    assert_eq!(e.ingress.pod, None);
    let rules: Vec<&RuleVerdict> = e.egress.rules.iter().collect();
    assert!(rules.iter().all(|r| !r.matched));
    // An address of a pod stands for the pod.
    let e = explain(&s, &ep("203.0.113.7"), &ep("198.18.0.10"), port("80")).expect("explained");
    assert!(e.allowed);
    assert_eq!(e.ingress.pod.as_deref(), Some("ingress-nginx/ingress-controller"));
    let e = explain(&s, &ep("203.0.113.7"), &ep("198.18.0.10"), port("8080")).expect("explained");
    assert!(!e.allowed);
}

#[test]
fn ports_of_the_wrong_protocol_do_not_match_and_a_protocol_alone_asks_for_every_port() {
    let s = three_tier();
    let udp = explain(&s, &ep("production/backend"), &ep("kube-system/kube-dns"), port("53/UDP")).expect("explained");
    assert!(udp.allowed);
    let sctp = explain(&s, &ep("production/backend"), &ep("kube-system/kube-dns"), port("53/SCTP")).expect("explained");
    assert!(!sctp.allowed);
    let all_udp = explain(&s, &ep("production/backend"), &ep("kube-system/kube-dns"), port("UDP")).expect("explained");
    assert!(!all_udp.allowed, "only port 53 of UDP is allowed");
    assert_eq!(all_udp.port, "every UDP port");
    // Not isolated: every port of every protocol.
    let out = explain(&s, &ep("kube-system/kube-dns"), &ep("203.0.113.7"), port("SCTP")).expect("explained");
    assert!(out.allowed);
}

#[test]
fn rules_that_cover_every_port_together_allow_a_protocol_alone() {
    let mut s = three_tier();
    let pol = s.policies.get_mut(&ObjectRef::new("production", "frontend")).expect("frontend policy");
    pol.egress = vec![
        Rule { peers: vec![], ports: vec![PortMatch { protocol: Protocol::Udp, port: PortSpec::Range(1, 1000) }] },
        Rule { peers: vec![], ports: vec![PortMatch { protocol: Protocol::Udp, port: PortSpec::Range(1001, 65535) }] },
    ];
    let e = explain(&s, &ep("production/frontend"), &ep("203.0.113.7"), port("UDP")).expect("explained");
    assert!(e.allowed);
    assert!(e.egress.rules.iter().all(|r| !r.matched));
    assert!(e.egress.summary.contains("together"), "{}", e.egress.summary);
    let e = explain(&s, &ep("production/frontend"), &ep("203.0.113.7"), port("TCP")).expect("explained");
    assert!(!e.allowed);
}

#[test]
fn unknown_pods_and_mismatched_families_are_errors() {
    let s = three_tier();
    let err = explain(&s, &ep("production/nope"), &ep("production/backend"), port("80")).expect_err("unknown");
    assert_eq!(err, ExplainError::UnknownPod(ObjectRef::new("production", "nope")));
    assert!(err.to_string().contains("no pod production/nope"));
    let err = explain(&s, &ep("production/frontend"), &ep("2001:db8::1"), port("80")).expect_err("family");
    assert!(matches!(err, ExplainError::NoCommonFamily(..)));
}

#[test]
fn json_output_has_the_verdict_and_both_sides() {
    let s = three_tier();
    let e = explain(&s, &ep("production/frontend"), &ep("production/backend"), port("8080")).expect("explained");
    let v = serde_json::to_value(&e).expect("json");
    assert_eq!(v["allowed"], serde_json::Value::Bool(true));
    assert_eq!(v["egress"]["policies"][0]["name"], "production/allow-dns");
    let rule = &v["ingress"]["rules"][0];
    for field in ["policy", "direction", "index", "matched", "why"] {
        assert!(rule.get(field).is_some(), "{field} in {rule}");
    }
}

// ---------------------------------------------------------------------------------------------
// Random clusters: the rule-by-rule reading gives the compiled maps' verdict.

/// xorshift64*, so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n as u64)).expect("small")
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

fn s(v: &str) -> String {
    v.to_string()
}

fn random_selector(rng: &mut Rng, namespace: bool) -> Selector {
    let forms: Vec<Vec<Requirement>> = if namespace {
        vec![
            vec![],
            vec![Requirement::In(s("team"), vec![s("alpha")])],
            vec![Requirement::NotIn(s("env"), vec![s("prod")])],
            vec![Requirement::In(s(NAMESPACE_NAME_LABEL), vec![s("b")])],
            vec![Requirement::Exists(s("env"))],
        ]
    } else {
        vec![
            vec![],
            vec![Requirement::In(s("app"), vec![s("web")])],
            vec![Requirement::In(s("app"), vec![s("db")])],
            vec![Requirement::NotIn(s("tier"), vec![s("front")])],
            vec![Requirement::DoesNotExist(s("app"))],
        ]
    };
    Selector { requirements: rng.pick(&forms).clone() }
}

/// A random cluster: three namespaces, seven pods (some dual-stack, some unscheduled), up to
/// four policies with selector, namespace, ipBlock and named-port peers and ports.
pub(crate) fn random_state(seed: u64) -> ClusterState {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut state = ClusterState::default();
    for name in ["a", "b", "c"] {
        let mut labels = Labels::from([(s(NAMESPACE_NAME_LABEL), s(name))]);
        if rng.chance(50) {
            labels.insert(s("team"), s("alpha"));
        }
        if let Some(env) = rng.pick(&[Some("prod"), Some("dev"), None]) {
            labels.insert(s("env"), s(env));
        }
        state.namespaces.insert(s(name), Namespace { name: s(name), labels });
    }
    for i in 0..7_u8 {
        let id = ObjectRef::new(*rng.pick(&["a", "b", "c"]), format!("p{i}"));
        let mut ips: Vec<IpAddr> = vec![format!("198.18.0.{}", 10 + i).parse().expect("ip")];
        if rng.chance(30) {
            ips.push(format!("fd00:198:18::{}", 10 + i).parse().expect("ip"));
        }
        let mut labels = Labels::new();
        if let Some(app) = rng.pick(&[Some("web"), Some("db"), None]) {
            labels.insert(s("app"), s(app));
        }
        if rng.chance(50) {
            labels.insert(s("tier"), rng.pick(&["front", "back"]).to_string());
        }
        let mut named_ports = Vec::new();
        if rng.chance(60) {
            named_ports.push(NamedPort { name: s("http"), protocol: Protocol::Tcp, port: *rng.pick(&[80, 8080]) });
        }
        if rng.chance(40) {
            named_ports.push(NamedPort { name: s("dns"), protocol: *rng.pick(&[Protocol::Udp, Protocol::Tcp]), port: 53 });
        }
        let node = rng.pick(&["n1", "n2", ""]).to_string();
        state.pods.insert(id.clone(), Pod { id, node, labels, ips, named_ports });
    }
    let net = |v: &str| v.parse::<ipnet::IpNet>().expect("cidr");
    let blocks = [
        (net("198.18.0.0/15"), vec![net("198.18.0.8/29")]),
        (net("198.18.0.8/29"), vec![]),
        (net("0.0.0.0/0"), vec![net("198.18.0.0/15")]),
        (net("fd00:198:18::/48"), vec![]),
    ];
    for i in 0..1 + rng.below(4) {
        let rules = |rng: &mut Rng| -> Vec<Rule> {
            (0..rng.below(3))
                .map(|_| {
                    let peers = (0..rng.below(3))
                        .map(|_| match rng.below(4) {
                            0 => Peer::Pods { namespaces: None, pods: random_selector(rng, false) },
                            1 => Peer::Pods { namespaces: Some(random_selector(rng, true)), pods: Selector::everything() },
                            2 => Peer::Pods { namespaces: Some(random_selector(rng, true)), pods: random_selector(rng, false) },
                            _ => {
                                let (cidr, except) = rng.pick(&blocks).clone();
                                Peer::IpBlock { cidr, except }
                            }
                        })
                        .collect();
                    let ports = (0..rng.below(3))
                        .map(|_| PortMatch {
                            protocol: *rng.pick(&[Protocol::Tcp, Protocol::Tcp, Protocol::Udp]),
                            port: match rng.below(4) {
                                0 => PortSpec::All,
                                1 => {
                                    let p = *rng.pick(&[53, 80, 8080]);
                                    PortSpec::Range(p, p)
                                }
                                2 => PortSpec::Range(8000, 8080),
                                _ => PortSpec::Named(rng.pick(&["http", "dns", "grpc"]).to_string()),
                            },
                        })
                        .collect();
                    Rule { peers, ports }
                })
                .collect()
        };
        let ingress = rules(&mut rng);
        let egress = rules(&mut rng);
        let (isolates_ingress, isolates_egress) = *rng.pick(&[(true, false), (false, true), (true, true)]);
        let id = ObjectRef::new(*rng.pick(&["a", "b", "c"]), format!("np{i}"));
        let pod_selector = random_selector(&mut rng, false);
        state.policies.insert(id.clone(), Policy { id, pod_selector, isolates_ingress, isolates_egress, ingress, egress });
    }
    state
}

#[test]
fn random_clusters_explanations_agree_with_the_compiled_maps() {
    let outside: Vec<Endpoint> = ["203.0.113.7", "198.18.0.9", "2001:db8::7"].iter().map(|a| ep(a)).collect();
    let ports: Vec<PortQuery> = ["80", "8080", "8000", "53", "53/UDP", "80/UDP"].iter().map(|p| port(p)).collect();
    let (mut flows, mut allowed, mut isolated_sides) = (0_usize, 0_usize, 0_usize);
    for seed in 0..150 {
        let state = random_state(seed);
        // An independent compilation: every pod on one node.
        let mut one_node = state.clone();
        for p in one_node.pods.values_mut() {
            p.node = s("only");
        }
        let desired = Compiler::new().compile(&one_node, &CompileOptions { node: s("only"), host_ips: vec![], allow_host: false });
        let mut ends: Vec<Endpoint> = state.pods.keys().map(|id| Endpoint::Pod(id.clone())).collect();
        ends.extend(outside.iter().cloned());
        for from in &ends {
            for to in &ends {
                if from == to || matches!((from, to), (Endpoint::Ip(_), Endpoint::Ip(_))) {
                    continue;
                }
                for q in &ports {
                    let e = match explain(&state, from, to, *q) {
                        Ok(e) => e,
                        Err(ExplainError::NoCommonFamily(..)) => continue,
                        Err(err) => panic!("seed {seed}: {err}"),
                    };
                    flows += 1;
                    allowed += usize::from(e.allowed);
                    assert_eq!(e.allowed, e.egress.allowed && e.ingress.allowed);
                    for (dir, side, this) in [(Direction::Egress, &e.egress, from), (Direction::Ingress, &e.ingress, to)] {
                        isolated_sides += usize::from(side.isolated);
                        assert_eq!(side.allowed, side.rules_allow(), "seed {seed}: {} -> {} {q}: {dir:?}: {side:#?}\n{:#?}", e.from, e.to, state.policies);
                        if let Endpoint::Pod(id) = this {
                            let peer: IpAddr = (if dir == Direction::Egress { &e.to } else { &e.from })
                                .split(['(', ')'])
                                .nth(1)
                                .unwrap_or(if dir == Direction::Egress { &e.to } else { &e.from })
                                .parse()
                                .expect("address");
                            let flow = Flow { direction: dir, peer, protocol: q.protocol.number(), port: q.port.expect("a port") };
                            assert_eq!(Some(side.allowed), eval::allows(&desired, id, &flow), "seed {seed}: {id} {flow:?}");
                        }
                    }
                }
            }
        }
    }
    println!("{allowed} of {flows} flows allowed; {isolated_sides} isolated sides");
    assert!(flows > 20_000 && allowed > flows / 10 && allowed < flows * 9 / 10, "{allowed} of {flows}");
    assert!(isolated_sides > flows / 3, "{isolated_sides} of {flows}");
}
