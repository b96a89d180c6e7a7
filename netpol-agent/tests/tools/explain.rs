//! Tests of `explain`: parsing, the three-tier example read in words, and random clusters
//! where the rule-by-rule reading must give the compiled maps' verdict for every pair.

use std::net::IpAddr;

use netpol_agent::{
    compile::{
        eval::{self, Flow},
        CompileOptions, Compiler,
    },
    model::{Direction, ObjectRef, PortMatch, PortSpec, Protocol, Rule},
    tools::explain::{explain, Endpoint, ExplainError, PortQuery, RuleVerdict},
};
use netpol_testkit::{
    random::random_state,
    scenarios::three_tier,
};

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
            p.node = "only".to_string();
        }
        let desired = Compiler::new().compile(&one_node, &CompileOptions { node: "only".to_string(), host_ips: vec![], allow_host: false });
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
