//! Peers by pod and namespace selectors (every operator, empty and absent selectors), and ipBlocks with except.

use crate::prelude::*;

#[test]
fn a_pod_selector_peer_allows_matching_pods_of_the_policy_namespace_only() {
    let c = cluster().with_policy(
        r"
metadata: {name: from-db, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: db}}}]
",
    );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, "a/y", TCP, 80, ALLOW),
            (IN, "a/y@6", TCP, 80, ALLOW),
            (IN, "b/z", TCP, 80, DENY), // app=db, but in namespace b
            (IN, "a/w", TCP, 80, DENY),
            (IN, OUTSIDE, TCP, 80, DENY),
        ],
    );
}

#[test]
fn a_namespace_selector_peer_allows_every_pod_of_the_matching_namespaces() {
    let c = cluster().with_policy(
        r"
metadata: {name: from-beta, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: beta}}}]
",
    );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, "b/x", TCP, 80, ALLOW),
            (IN, "b/x@6", UDP, 53, ALLOW),
            (IN, "b/z", TCP, 80, ALLOW),
            (IN, "a/y", TCP, 80, DENY), // the policy's own namespace is not team=beta
            (IN, "c/v", TCP, 80, DENY),
            (IN, OUTSIDE, TCP, 80, DENY),
        ],
    );
}

#[test]
fn namespace_and_pod_selector_in_one_peer_must_both_match() {
    let c = cluster().with_policy(
        r"
metadata: {name: web-of-beta, namespace: a}
spec:
  podSelector: {matchLabels: {pod: y}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: beta}}
      podSelector: {matchLabels: {app: web}}
",
    );
    let net = c.compile();
    net.expect(
        "a/y",
        &[
            (IN, "b/x", TCP, 80, ALLOW),
            (IN, "b/z", TCP, 80, DENY), // beta, but app=db
            (IN, "a/x", TCP, 80, DENY), // app=web, but alpha
            (IN, "c/v", TCP, 80, DENY), // app=web, but no team label
        ],
    );
}

#[test]
fn namespace_and_pod_selector_as_two_peers_either_matches() {
    let c = cluster().with_policy(
        r"
metadata: {name: web-or-beta, namespace: a}
spec:
  podSelector: {matchLabels: {pod: y}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: beta}}
    - podSelector: {matchLabels: {app: web}}
",
    );
    let net = c.compile();
    net.expect(
        "a/y",
        &[
            (IN, "b/x", TCP, 80, ALLOW),
            (IN, "b/z", TCP, 80, ALLOW), // beta
            (IN, "a/x", TCP, 80, ALLOW), // app=web in the policy's namespace
            (IN, "c/v", TCP, 80, DENY),  // app=web, but the pod selector alone means namespace a
            (IN, "a/w", TCP, 80, DENY),
            (IN, OUTSIDE, TCP, 80, DENY),
        ],
    );
}

#[test]
fn an_empty_pod_selector_selects_every_pod_in_the_namespace() {
    let c = cluster().with_policy(
        r"
metadata: {name: all-of-a, namespace: a}
spec:
  podSelector: {}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: w}}}]
",
    );
    let net = c.compile();
    for p in ["a/x", "a/y"] {
        assert_eq!(net.isolation(p), (true, false), "{p}");
        net.expect(p, &[(IN, "a/w", TCP, 80, ALLOW), (IN, "b/x", TCP, 80, DENY)]);
    }
    assert_eq!(net.isolation("b/z"), (false, false));
}

#[test]
fn an_empty_pod_selector_peer_allows_every_pod_of_the_policy_namespace() {
    let c = cluster().with_policy(
        r"
metadata: {name: same-namespace, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {}}]
  egress:
  - to: [{podSelector: {}}]
",
    );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, "a/y", TCP, 80, ALLOW),
            (IN, "a/w", UDP, 53, ALLOW),
            (IN, "b/x", TCP, 80, DENY),
            (IN, "d/u", TCP, 80, DENY),
            (IN, OUTSIDE, TCP, 80, DENY),
            (OUT, "a/w", TCP, 80, ALLOW),
            (OUT, "b/z", TCP, 80, DENY),
            (OUT, OUTSIDE, TCP, 80, DENY),
        ],
    );
}

#[test]
fn an_empty_namespace_selector_allows_all_pods_in_all_namespaces_but_not_external_ips() {
    let c = cluster().with_policy(
        r"
metadata: {name: cluster-only, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{namespaceSelector: {}}]
  egress:
  - to: [{namespaceSelector: {}}]
",
    );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, "a/y", TCP, 80, ALLOW),
            (IN, "b/x@6", TCP, 80, ALLOW),
            (IN, "c/v", TCP, 80, ALLOW),
            (IN, "d/u", TCP, 80, ALLOW), // a namespace the snapshot has no object for
            (IN, OUTSIDE, TCP, 80, DENY),
            (IN, OUTSIDE6, TCP, 80, DENY),
            (IN, HOST, TCP, 80, DENY),
            (OUT, "c/v", UDP, 53, ALLOW),
            (OUT, OUTSIDE, UDP, 53, DENY),
            (OUT, HOST, UDP, 53, DENY),
        ],
    );
}

#[test]
fn a_rule_without_from_or_to_allows_everyone_including_external_ips() {
    let c = cluster().with_policy(
        r"
metadata: {name: anyone, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Ingress, Egress]
  ingress:
  - {}
  egress:
  - ports: [{protocol: UDP, port: 53}]
",
    );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, "a/y", TCP, 80, ALLOW),
            (IN, OUTSIDE, TCP, 22, ALLOW),
            (IN, OUTSIDE6, SCTP, 9, ALLOW),
            (IN, HOST, ICMP, 0, ALLOW),
            (OUT, OUTSIDE, UDP, 53, ALLOW),
            (OUT, "c/v", UDP, 53, ALLOW),
            (OUT, OUTSIDE6, UDP, 53, ALLOW),
            (OUT, OUTSIDE, TCP, 53, DENY),
            (OUT, "c/v", UDP, 54, DENY),
        ],
    );
    // "If this field is empty or missing, this rule matches all sources": `from: []` too.
    let c = cluster().with_policy(
        r"
metadata: {name: empty-lists, namespace: a}
spec:
  podSelector: {matchLabels: {pod: y}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: []
    ports: [{port: 5432}]
  egress:
  - to: []
    ports: []
",
    );
    let net = c.compile();
    net.expect(
        "a/y",
        &[
            (IN, OUTSIDE, TCP, 5432, ALLOW),
            (IN, "b/x", TCP, 5432, ALLOW),
            (IN, OUTSIDE, TCP, 5433, DENY),
            (OUT, OUTSIDE6, UDP, 1, ALLOW),
            (OUT, OUTSIDE, ICMP, 0, ALLOW),
        ],
    );
}

#[test]
fn match_expressions_in_not_in_exists_and_does_not_exist_select_peers() {
    let base = Cluster::empty()
        .with_pod(pod("a", "t").label("pod", "t").ip("198.18.0.100"))
        .with_pod(pod("a", "p1").label("tier", "front").label("env", "prod").ip("198.18.0.101"))
        .with_pod(pod("a", "p2").label("tier", "back").label("env", "dev").ip("198.18.0.102"))
        .with_pod(pod("a", "p3").label("tier", "back").ip("198.18.0.103"))
        .with_pod(pod("a", "p4").label("env", "prod").ip("198.18.0.104"));
    let cases: &[(&str, &str, &[&str])] = &[
        ("In matches any of its values", "{key: tier, operator: In, values: [front, back]}", &["p1", "p2", "p3"]),
        ("NotIn matches other values and an absent key", "{key: env, operator: NotIn, values: [prod]}", &["p2", "p3"]),
        ("Exists matches any value", "{key: env, operator: Exists}", &["p1", "p2", "p4"]),
        ("DoesNotExist matches an absent key", "{key: env, operator: DoesNotExist}", &["p3", "t"]),
        ("expressions are ANDed", "{key: tier, operator: In, values: [back]}, {key: env, operator: Exists}", &["p2"]),
    ];
    for (case, exprs, allowed) in cases {
        let c = base.clone().with_policy(&format!(
            r"
metadata: {{name: p, namespace: a}}
spec:
  podSelector: {{matchLabels: {{pod: t}}}}
  ingress:
  - from: [{{podSelector: {{matchExpressions: [{exprs}]}}}}]
"
        ));
        let net = c.compile();
        for peer in ["p1", "p2", "p3", "p4"] {
            let got = net.verdict("a/t", (IN, &format!("a/{peer}"), TCP, 80));
            assert_eq!(got, allowed.contains(&peer), "{case}: from a/{peer}");
        }
        assert!(!net.verdict("a/t", (IN, OUTSIDE, TCP, 80)), "{case}: from outside");
    }
}

#[test]
fn the_kubernetes_io_metadata_name_label_selects_a_namespace_by_name() {
    let c = cluster().with_policy(
        r"
metadata: {name: from-b-and-d, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: b}}
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [d]}]
",
    );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, "b/x", TCP, 80, ALLOW),
            (IN, "b/z", TCP, 80, ALLOW),
            (IN, "d/u", TCP, 80, ALLOW), // no Namespace object: its name label still holds
            (IN, "c/v", TCP, 80, DENY),
            (IN, "a/y", TCP, 80, DENY),
        ],
    );
}

#[test]
fn several_policies_selecting_one_pod_are_ored() {
    let c = cluster()
        .with_policy(
            r"
metadata: {name: web-from-y, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: y}}}]
    ports: [{port: 80}]
",
        )
        .with_policy(
            r"
metadata: {name: metrics-from-beta, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: beta}}}]
    ports: [{port: 9090}]
",
        );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, "a/y", TCP, 80, ALLOW),
            (IN, "a/y", TCP, 9090, DENY),
            (IN, "b/x", TCP, 9090, ALLOW),
            (IN, "b/x", TCP, 80, DENY),
            (IN, OUTSIDE, TCP, 80, DENY),
        ],
    );
}

#[test]
fn a_policy_in_another_namespace_does_not_select_the_pod() {
    let c = cluster().with_policy(
        r"
metadata: {name: deny-x, namespace: b}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Ingress, Egress]
",
    );
    let net = c.compile();
    assert_eq!(net.isolation("a/x"), (false, false), "a/x has pod=x, but the policy lives in b");
    net.expect("a/x", &[(IN, OUTSIDE, TCP, 80, ALLOW), (OUT, OUTSIDE, TCP, 80, ALLOW)]);
    let c = c.with_policy(
        r"
metadata: {name: deny-all, namespace: b}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
",
    );
    let net = c.compile();
    assert_eq!(net.isolation("a/x"), (false, false));
    assert_eq!(net.isolation("b/z"), (true, true));
    net.expect("b/z", &[(IN, "a/x", TCP, 80, DENY), (OUT, "a/x", TCP, 80, DENY)]);
}

// ---------------------------------------------------------------------------------------------
// ipBlock.

#[test]
fn an_ip_block_allows_its_cidr_minus_its_except_prefixes() {
    let c = cluster().with_policy(
        r"
metadata: {name: block, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.128/25]}}]
  egress:
  - to: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.128/25]}}]
",
    );
    let net = c.compile();
    for d in [IN, OUT] {
        net.expect(
            "a/x",
            &[
                (d, "203.0.113.0", TCP, 80, ALLOW),
                (d, "203.0.113.7", TCP, 80, ALLOW),
                (d, "203.0.113.127", UDP, 53, ALLOW),
                (d, "203.0.113.128", TCP, 80, DENY),
                (d, "203.0.113.200", TCP, 80, DENY),
                (d, "198.51.100.1", TCP, 80, DENY),
                (d, "a/y", TCP, 80, DENY),
            ],
        );
    }
}

#[test]
fn an_ip_block_matches_pod_ips_in_both_directions_and_its_except_holes_exclude_them() {
    let c = cluster().with_policy(
        r"
metadata: {name: pods-by-ip, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{ipBlock: {cidr: 198.18.0.0/15, except: [198.18.1.0/24]}}]
  - from: [{podSelector: {matchLabels: {pod: w}}}]
    ports: [{port: 80}]
  egress:
  - to: [{ipBlock: {cidr: 198.18.0.0/15, except: [198.18.1.0/24]}}]
",
    );
    let net = c.compile();
    for d in [IN, OUT] {
        net.expect(
            "a/x",
            &[
                (d, "a/y", TCP, 80, ALLOW),
                (d, "b/z", UDP, 53, ALLOW),
                (d, HOST, TCP, 10250, ALLOW), // the node's address is in the block too
                (d, "b/x", TCP, 80, DENY),    // 198.18.1.20: in the except hole
                (d, "c/v", TCP, 80, DENY),
                (d, "a/y@6", TCP, 80, DENY),
                (d, OUTSIDE, TCP, 80, DENY),
            ],
        );
    }
    // a/w (198.18.1.12) is in the hole, but a pod selector of another rule still allows it.
    net.expect("a/x", &[(IN, "a/w", TCP, 80, ALLOW), (IN, "a/w", TCP, 81, DENY), (OUT, "a/w", TCP, 80, DENY)]);
}

#[test]
fn ipv6_ip_blocks_allow_ipv6_peers_minus_their_except() {
    let c = cluster().with_policy(
        r"
metadata: {name: v6, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{ipBlock: {cidr: 'fd00:198:18::/48', except: ['fd00:198:18:1::/64']}}]
  egress:
  - to: [{ipBlock: {cidr: '2001:db8::/32'}}]
",
    );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, "a/y@6", TCP, 80, ALLOW),
            (IN, "fd00:198:18:2::9", TCP, 80, ALLOW),
            (IN, "b/x@6", TCP, 80, DENY), // fd00:198:18:1::20, in the hole
            (IN, "a/y", TCP, 80, DENY),   // the same pod over IPv4
            (IN, OUTSIDE6, TCP, 80, DENY),
            (OUT, OUTSIDE6, TCP, 443, ALLOW),
            (OUT, "2001:db8:ffff::1", TCP, 443, ALLOW),
            (OUT, OUTSIDE, TCP, 443, DENY),
            (OUT, "b/x@6", TCP, 443, DENY),
        ],
    );
}

#[test]
fn overlapping_ip_blocks_of_different_policies_are_ored() {
    let c = cluster()
        .with_policy(
            r"
metadata: {name: wide, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{ipBlock: {cidr: 198.18.0.0/15, except: [198.18.0.0/24]}}]
",
        )
        .with_policy(
            r"
metadata: {name: narrow, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{ipBlock: {cidr: 198.18.0.0/24, except: [198.18.0.128/25]}}]
    ports: [{port: 80}]
",
        )
        .with_policy(
            r"
metadata: {name: everything-but-the-cluster, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{ipBlock: {cidr: 0.0.0.0/0, except: [198.18.0.0/15]}}]
    ports: [{port: 443}]
",
        );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, "a/y", TCP, 80, ALLOW),          // 198.18.0.11: only "narrow", port 80
            (IN, "a/y", TCP, 81, DENY),
            (IN, "198.18.0.200", TCP, 80, DENY),  // in both holes
            (IN, "a/w", TCP, 81, ALLOW),          // 198.18.1.12: "wide", every port
            (IN, "198.19.255.254", UDP, 9, ALLOW),
            (IN, OUTSIDE, TCP, 443, ALLOW),       // "everything-but-the-cluster"
            (IN, OUTSIDE, TCP, 80, DENY),
            (IN, "a/y", TCP, 443, DENY),
            (IN, OUTSIDE6, TCP, 443, DENY),
        ],
    );
}

#[test]
fn an_ipv6_block_of_everything_does_not_allow_ipv4_and_vice_versa() {
    let c = cluster()
        .with_policy(
            r"
metadata: {name: all-v6, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{ipBlock: {cidr: '::/0'}}]
",
        )
        .with_policy(
            r"
metadata: {name: all-v4, namespace: a}
spec:
  podSelector: {matchLabels: {pod: y}}
  ingress:
  - from: [{ipBlock: {cidr: 0.0.0.0/0}}]
",
        );
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, OUTSIDE6, TCP, 80, ALLOW),
            (IN, "a/y@6", TCP, 80, ALLOW),
            (IN, OUTSIDE, TCP, 80, DENY),
            (IN, "a/y", TCP, 80, DENY),
            (IN, HOST, TCP, 80, DENY),
        ],
    );
    net.expect(
        "a/y",
        &[
            (IN, OUTSIDE, TCP, 80, ALLOW),
            (IN, "a/x", TCP, 80, ALLOW),
            (IN, OUTSIDE6, TCP, 80, DENY),
            (IN, "a/x@6", TCP, 80, DENY),
            (IN, HOST6, TCP, 80, DENY),
        ],
    );
}
