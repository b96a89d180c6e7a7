//! The model: conversion from Kubernetes objects and the API server's validation.

use crate::prelude::*;

#[test]
fn pods_without_ips_on_the_host_network_or_finished_take_no_part_in_policy() {
    let base = pod("a", "p").label("pod", "p").ip("198.18.0.60");
    assert!(pod_from_k8s(&base.k8s(), "default").expect("valid").is_some());
    // A pod without IPs yet is kept apart, for its addresses to come (from CNI or the API).
    let waiting = pod_from_k8s(&pod("a", "p").k8s(), "default").expect("valid").expect("a pod");
    assert!(waiting.ips.is_empty());
    let mut state = ClusterState::default();
    state.insert_pod(waiting);
    assert!(state.pods.is_empty() && state.unaddressed.len() == 1);
    for (case, p) in [
        ("host network", base.clone().host_network()),
        ("succeeded", base.clone().phase("Succeeded")),
        ("failed", base.clone().phase("Failed")),
    ] {
        assert_eq!(pod_from_k8s(&p.k8s(), "default").expect("valid"), None, "{case}");
    }
    // podIP and podIPs together: each address once, the primary first.
    let mut k = base.clone().ip("fd00:198:18::60").k8s();
    let status = k.status.as_mut().expect("status");
    status.pod_ip = Some("198.18.0.60".into());
    let p = pod_from_k8s(&k, "default").expect("valid").expect("a pod");
    assert_eq!(p.ips, vec!["198.18.0.60".parse::<IpAddr>().expect("v4"), "fd00:198:18::60".parse().expect("v6")]);
    // A bad address or port is a problem naming the pod.
    let mut bad = base.k8s();
    bad.status.as_mut().expect("status").pod_ips = Some(vec![k8s_openapi::api::core::v1::PodIP { ip: "198.18.0.300".into() }]);
    let problem = pod_from_k8s(&bad, "default").expect_err("bad address");
    assert_eq!(problem.object, "Pod a/p");
    assert!(problem.reason.contains("status.podIPs"), "{problem}");
    let problem = pod_from_k8s(&base.clone().port("http", 0, "TCP").k8s(), "default").expect_err("port 0");
    assert!(problem.reason.contains("container port http"), "{problem}");
    let problem = pod_from_k8s(&base.port("http", 80, "ICMP").k8s(), "default").expect_err("bad protocol");
    assert!(problem.reason.contains("unknown protocol"), "{problem}");
}

#[test]
fn namespaces_carry_their_name_label_and_objects_without_a_namespace_are_defaulted() {
    let ns = namespace("team-a", &[("team", "alpha")]);
    assert_eq!(ns.labels.get("kubernetes.io/metadata.name").map(String::as_str), Some("team-a"));
    assert_eq!(ns.labels.get("team").map(String::as_str), Some("alpha"));
    let p = policy_from_k8s(&k8s_policy("metadata: {name: p}\nspec: {podSelector: {}}"), "fallback").expect("valid");
    assert_eq!(p.id, ObjectRef::new("fallback", "p"));
    let state = ClusterState::default();
    assert_eq!(state.namespace_labels("nowhere").get("kubernetes.io/metadata.name").map(String::as_str), Some("nowhere"));
}

#[test]
fn invalid_policies_are_reported_with_their_name_and_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("an invalid CIDR", "ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/33}}]}]", "spec.ingress[0].from[0].ipBlock.cidr"),
        ("a CIDR that is no address", "ingress: [{from: [{ipBlock: {cidr: not-a-cidr}}]}]", "spec.ingress[0].from[0].ipBlock.cidr"),
        ("a CIDR with host bits set", "egress: [{to: [{ipBlock: {cidr: 198.18.0.1/24}}]}]", "spec.egress[0].to[0].ipBlock.cidr"),
        (
            "an IPv4-mapped IPv6 CIDR, which would match IPv4 peers",
            "ingress: [{from: [{ipBlock: {cidr: '::ffff:203.0.113.0/120'}}]}]",
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            "an IPv4-mapped IPv6 except",
            "ingress: [{from: [{ipBlock: {cidr: '::/0', except: ['::ffff:0:0/96']}}]}]",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "an except outside the cidr",
            "ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/24, except: [198.18.1.0/25]}}]}]",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "an except equal to the cidr",
            "ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/24, except: [198.18.0.0/24]}}]}]",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "an except of the other family",
            "ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0, except: ['fd00:198:18::/48']}}]}]",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        ("an unknown protocol", "ingress: [{ports: [{protocol: ICMP, port: 8}]}]", "spec.ingress[0].ports[0].protocol"),
        ("a lowercase protocol", "egress: [{ports: [{protocol: tcp}]}]", "spec.egress[0].ports[0].protocol"),
        ("an endPort below port", "ingress: [{ports: [{port: 90, endPort: 80}]}]", "spec.ingress[0].ports[0].endPort"),
        ("an endPort with a named port", "ingress: [{ports: [{port: http, endPort: 90}]}]", "spec.ingress[0].ports[0].endPort"),
        ("an endPort without a port", "ingress: [{ports: [{endPort: 90}]}]", "spec.ingress[0].ports[0].endPort"),
        ("port 0", "ingress: [{ports: [{port: 0}]}]", "spec.ingress[0].ports[0].port"),
        ("a port above 65535", "egress: [{ports: [{port: 65536}]}]", "spec.egress[0].ports[0].port"),
        ("a number written as a string", "ingress: [{ports: [{port: '80'}]}]", "spec.ingress[0].ports[0].port"),
        (
            "an unknown selector operator",
            "ingress: [{from: [{podSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}}]}]",
            "spec.ingress[0].from[0].podSelector",
        ),
        (
            "an unknown operator in the namespace selector",
            "egress: [{to: [{namespaceSelector: {matchExpressions: [{key: a, operator: Has}]}}]}]",
            "spec.egress[0].to[0].namespaceSelector",
        ),
        (
            "an unknown operator in spec.podSelector",
            "podSelector: {matchExpressions: [{key: a, operator: Like, values: [b]}]}",
            "spec.podSelector",
        ),
        (
            "ipBlock with a podSelector in one peer",
            "ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/24}, podSelector: {}}]}]",
            "spec.ingress[0].from[0]",
        ),
        (
            "ipBlock with a namespaceSelector in one peer",
            "egress: [{to: [{podSelector: {}}, {ipBlock: {cidr: 198.18.0.0/24}, namespaceSelector: {}}]}]",
            "spec.egress[0].to[1]",
        ),
        ("an empty peer", "ingress: [{from: [{}]}]", "spec.ingress[0].from[0]"),
        ("an unknown policyType", "policyTypes: [Ingress, Sideways]", "spec.policyTypes"),
    ];
    for (case, spec, field) in cases {
        // `spec` adds to an otherwise valid policy; a podSelector line in it replaces the default.
        let selector = if spec.starts_with("podSelector") { "" } else { "  podSelector: {}\n" };
        let yaml = format!("metadata: {{name: bad, namespace: ns1}}\nspec:\n{selector}  {spec}\n");
        let p = problem(&yaml);
        assert_eq!(p.object, "NetworkPolicy ns1/bad", "{case}");
        assert!(p.reason.starts_with(field), "{case}: the reason names {field}: {:?}", p.reason);
        let rest = &p.reason[field.len()..];
        assert!(rest.starts_with(':') || rest.starts_with(' '), "{case}: names exactly {field}: {:?}", p.reason);
    }
}
