//! Tests of `lint`: the clean three-tier example has no findings, and each kind of finding
//! fires on a small change to it.

use netpol_agent::{
    model::ObjectRef,
    tools::lint::{lint, namespace_missing, namespace_missing_in_dir, Extra, Finding},
};
use netpol_testkit::scenarios::{load, THREE_TIER};

/// The three-tier example with `extra` documents added and the policies `drop` (`ns/name`)
/// removed, linted with the loader's problems.
fn lint_with(extra: &str, drop: &[&str]) -> Vec<Finding> {
    let text = if extra.is_empty() { THREE_TIER.to_string() } else { format!("{THREE_TIER}\n---\n{extra}") };
    let mut loaded = load(&text);
    for d in drop {
        let (ns, name) = d.split_once('/').expect("ns/name");
        assert!(loaded.state.policies.remove(&ObjectRef::new(ns, name)).is_some(), "no policy {d}");
    }
    lint(&loaded.state, &Extra { problems: loaded.problems, namespace_missing: namespace_missing(&text, "test.yaml") })
}

/// The (object, rule, code) of each finding.
fn keys(findings: &[Finding]) -> Vec<(&str, &str, &str)> {
    findings.iter().map(|f| (f.object.as_str(), f.rule.as_str(), f.code.as_str())).collect()
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n")
}

#[test]
fn the_clean_three_tier_example_has_no_findings() {
    let f = lint_with("", &[]);
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn an_egress_allow_the_destination_never_admits_is_found() {
    let extra = policy(
        "production",
        "frontend-to-db",
        "  podSelector: {matchLabels: {app: frontend}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {app: database}}}]\n    ports: [{port: 5432}]",
    );
    let f = lint_with(&extra, &[]);
    assert_eq!(keys(&f), [("NetworkPolicy production/frontend-to-db", "egress[0].to[0]", "egress-not-admitted")], "{f:#?}");
    assert!(f[0].message.contains("production/frontend -> production/database on 5432/TCP"), "{}", f[0].message);
    assert!(f[0].message.contains("production/database, production/default-deny"), "{}", f[0].message);
}

#[test]
fn an_ingress_allow_the_source_never_lets_out_is_found() {
    let extra = policy(
        "production",
        "db-from-frontend",
        "  podSelector: {matchLabels: {app: database}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: frontend}}}]\n    ports: [{port: postgres}]",
    );
    let f = lint_with(&extra, &[]);
    assert_eq!(keys(&f), [("NetworkPolicy production/db-from-frontend", "ingress[0].from[0]", "ingress-not-permitted")], "{f:#?}");
    assert!(f[0].message.contains("production/frontend -> production/database on 5432/TCP"), "{}", f[0].message);
}

#[test]
fn a_namespace_only_peer_beside_a_pod_only_peer_is_found() {
    let extra = policy(
        "production",
        "ored",
        "  podSelector: {matchLabels: {app: frontend}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}\n    - podSelector: {matchLabels: {app: ingress-nginx}}\n    ports: [{port: 80}]",
    );
    let f = lint_with(&extra, &[]);
    let ored: Vec<&Finding> = f.iter().filter(|f| f.code == "peers-ored").collect();
    assert_eq!(ored.len(), 1, "{f:#?}");
    assert_eq!(ored[0].rule, "ingress[0].from[0]");
    assert!(ored[0].message.contains("did you mean one peer with both selectors?"), "{}", ored[0].message);
    // The pod-only peer also selects no pod of production: a second, independent finding.
    assert_eq!(keys(&f).iter().map(|k| k.2).collect::<Vec<_>>(), ["peers-ored", "peer-selects-no-pod"], "{f:#?}");
}

#[test]
fn a_namespace_selector_on_a_label_no_namespace_has_is_found_with_the_name_label_fix() {
    let extra = policy(
        "production",
        "by-name",
        "  podSelector: {matchLabels: {app: frontend}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {name: ingress-nginx}}\n      podSelector: {matchLabels: {app: ingress-nginx}}",
    );
    let f = lint_with(&extra, &[]);
    assert_eq!(keys(&f), [("NetworkPolicy production/by-name", "ingress[0].from[0].namespaceSelector", "namespace-label-unknown")], "{f:#?}");
    assert!(f[0].fix.contains("kubernetes.io/metadata.name: ingress-nginx"), "{}", f[0].fix);
}

#[test]
fn a_namespace_selector_that_matches_no_namespace_is_found() {
    let extra = policy(
        "production",
        "typo",
        "  podSelector: {matchLabels: {app: frontend}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingres-nginx}}",
    );
    let f = lint_with(&extra, &[]);
    assert_eq!(keys(&f), [("NetworkPolicy production/typo", "ingress[0].from[0].namespaceSelector", "namespace-selector-matches-nothing")], "{f:#?}");
}

#[test]
fn dns_on_udp_without_tcp_is_found() {
    let extra = policy(
        "production",
        "allow-dns",
        "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}\n      podSelector: {matchLabels: {k8s-app: kube-dns}}\n    ports: [{port: 53, protocol: UDP}]",
    );
    let f = lint_with(&extra, &["production/allow-dns"]);
    // The replacement is dropped with the original (same name), so add it back by a new name.
    assert!(f.iter().any(|f| f.code == "egress-without-dns"), "{f:#?}");
    let f = lint_with(&extra.replace("name: allow-dns", "name: allow-dns-udp"), &["production/allow-dns"]);
    assert_eq!(keys(&f), [("NetworkPolicy production/allow-dns-udp", "egress[0].ports[0]", "dns-udp-without-tcp")], "{f:#?}");
    assert!(f[0].fix.contains("protocol: TCP"), "{}", f[0].fix);
}

#[test]
fn egress_isolation_without_any_dns_is_found() {
    let f = lint_with("", &["production/allow-dns"]);
    let codes: Vec<(&str, &str, &str)> = keys(&f);
    assert!(codes.contains(&("NetworkPolicy production/default-deny", "", "egress-without-dns")), "{f:#?}");
    let d = f.iter().find(|f| f.object == "NetworkPolicy production/default-deny").expect("finding");
    assert!(d.message.contains("production/backend, production/database, production/frontend"), "{}", d.message);
    // kube-dns's ingress now admits lookups production's pods can no longer send.
    assert!(codes.iter().all(|c| c.2 == "egress-without-dns" || c.2 == "ingress-not-permitted"), "{f:#?}");
}

#[test]
fn a_policy_without_a_namespace_is_found_from_the_manifest_text() {
    let text = "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: loose}\nspec: {podSelector: {}}\n---\nkind: List\nitems:\n- {kind: NetworkPolicy, metadata: {name: listed}}\n- {kind: Pod, metadata: {name: p}}\n---\nkind: NetworkPolicy\nmetadata: {name: fine, namespace: x}\n";
    let missing = namespace_missing(text, "a.yaml");
    assert_eq!(missing, [(ObjectRef::new("default", "loose"), "a.yaml".to_string()), (ObjectRef::new("default", "listed"), "a.yaml".to_string())]);
    let f = lint_with(&policy("production", "x", "  podSelector: {}").replace("namespace: production", "").replace(", }", "}"), &[]);
    assert!(keys(&f).contains(&("NetworkPolicy default/x", "", "namespace-missing")), "{f:#?}");
}

#[test]
fn namespace_missing_in_dir_reads_every_manifest_file() {
    let dir = std::env::temp_dir().join(format!("netpol-lint-test-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    std::fs::write(dir.join("sub/p.yaml"), "kind: NetworkPolicy\nmetadata: {name: loose}\n").expect("write");
    std::fs::write(dir.join("q.yaml"), "kind: NetworkPolicy\nmetadata: {name: ok, namespace: a}\n").expect("write");
    let found = namespace_missing_in_dir(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(found.expect("read"), [(ObjectRef::new("default", "loose"), "sub/p.yaml".to_string())]);
}

#[test]
fn selectors_that_match_no_pod_are_found() {
    let extra = policy(
        "production",
        "nothing",
        "  podSelector: {matchLabels: {app: cache}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: frontend}}}]\n---\n",
    ) + &policy(
        "production",
        "no-peer",
        "  podSelector: {matchLabels: {app: backend}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: fronted}}}]",
    );
    let f = lint_with(&extra, &[]);
    assert_eq!(
        keys(&f),
        [
            ("NetworkPolicy production/no-peer", "ingress[0].from[0]", "peer-selects-no-pod"),
            ("NetworkPolicy production/nothing", "podSelector", "policy-selects-no-pod"),
        ],
        "{f:#?}"
    );
}

#[test]
fn a_namespace_with_pods_and_no_default_deny_is_found() {
    let f = lint_with("", &["kube-system/default-deny"]);
    assert_eq!(keys(&f), [("Namespace kube-system", "", "namespace-without-default-deny")], "{f:#?}");
    // An ingress default-deny that selects some pods only does not count.
    let f = lint_with(&policy("kube-system", "some", "  podSelector: {matchLabels: {k8s-app: kube-dns}}"), &["kube-system/default-deny"]);
    assert!(keys(&f).contains(&("Namespace kube-system", "", "namespace-without-default-deny")), "{f:#?}");
}

#[test]
fn selectors_that_look_like_none_but_mean_all_are_found() {
    let extra = policy(
        "production",
        "all-looking",
        "  podSelector: {matchLabels: {app: frontend}}\n  ingress:\n  - from: [{podSelector: {}}]\n  - from: [{namespaceSelector: {}}]\n  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: ingress-nginx}}}]\n  - {}",
    );
    let f = lint_with(&extra, &[]);
    let mine: Vec<(&str, &str)> = f.iter().filter(|f| f.object == "NetworkPolicy production/all-looking").map(|f| (f.rule.as_str(), f.code.as_str())).collect();
    assert_eq!(
        mine,
        [
            ("ingress[0].from[0]", "empty-pod-selector-peer"),
            ("ingress[0].from[0]", "ingress-not-permitted"),
            ("ingress[1].from[0]", "empty-namespace-selector"),
            ("ingress[2].from[0]", "empty-namespace-selector"),
            ("ingress[3]", "rule-allows-everything"),
        ],
        "{f:#?}"
    );
    // No pod of production may send to frontend; the ingress controller of the other peers may.
    let blocked = f.iter().find(|x| x.code == "ingress-not-permitted").expect("finding");
    assert!(blocked.message.contains("production/backend -> production/frontend on any port"), "{}", blocked.message);
    assert!(f.iter().all(|x| x.object == "NetworkPolicy production/all-looking"), "{f:#?}");
}

#[test]
fn an_empty_peer_is_found_from_the_loaders_problem() {
    let f = lint_with(&policy("production", "empty-peer", "  podSelector: {}\n  ingress:\n  - from: [{}]"), &[]);
    assert_eq!(keys(&f), [("NetworkPolicy production/empty-peer", "ingress[0].from[0]", "empty-peer")], "{f:#?}");
}

#[test]
fn rules_that_can_never_match_are_found() {
    let extra = [
        policy(
            "production",
            "in-no-values",
            "  podSelector: {matchExpressions: [{key: app, operator: In, values: []}]}",
        ),
        policy("production", "except-all", "  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 198.18.0.0/16, except: [198.18.0.0/16]}}]"),
        policy("production", "except-more", "  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 198.18.0.0/16, except: [198.18.0.0/15]}}]"),
        policy("production", "backwards", "  podSelector: {}\n  ingress:\n  - ports: [{port: 9000, endPort: 8000}]"),
        policy(
            "production",
            "no-such-port",
            "  podSelector: {matchLabels: {app: backend}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: frontend}}}]\n    ports: [{port: grpc}]",
        ),
        policy(
            "production",
            "contradiction",
            "  podSelector: {matchLabels: {app: backend}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: frontend}, matchExpressions: [{key: app, operator: DoesNotExist}]}}]",
        ),
    ]
    .join("---\n");
    let f = lint_with(&extra, &[]);
    assert_eq!(
        keys(&f),
        [
            ("NetworkPolicy production/backwards", "ingress[0].ports[0].endPort", "end-port-below-port"),
            ("NetworkPolicy production/contradiction", "ingress[0].from[0]", "peer-selects-no-pod"),
            ("NetworkPolicy production/contradiction", "ingress[0].from[0].podSelector", "selector-never-matches"),
            ("NetworkPolicy production/except-all", "ingress[0].from[0].ipBlock.except[0]", "ip-block-except-outside-cidr"),
            ("NetworkPolicy production/except-more", "ingress[0].from[0].ipBlock.except[0]", "ip-block-except-outside-cidr"),
            ("NetworkPolicy production/in-no-values", "podSelector", "selector-in-without-values"),
            ("NetworkPolicy production/no-such-port", "ingress[0].ports[0]", "named-port-not-found"),
        ],
        "{f:#?}"
    );
}

#[test]
fn rules_of_a_direction_policy_types_leave_out_are_found() {
    let extra = policy(
        "production",
        "ignored",
        "  podSelector: {matchLabels: {app: backend}}\n  policyTypes: [Ingress]\n  egress:\n  - to: [{podSelector: {matchLabels: {app: database}}}]",
    );
    let f = lint_with(&extra, &[]);
    assert_eq!(keys(&f), [("NetworkPolicy production/ignored", "egress", "rules-ignored-by-policy-types")], "{f:#?}");
}

#[test]
fn findings_serialize_with_the_five_fields() {
    let f = lint_with("", &["kube-system/default-deny"]);
    let v = serde_json::to_value(&f).expect("json");
    for field in ["object", "rule", "code", "message", "fix"] {
        assert!(v[0].get(field).is_some(), "{field}");
    }
    assert!(f[0].to_string().starts_with("Namespace kube-system: [namespace-without-default-deny] "), "{}", f[0]);
}
