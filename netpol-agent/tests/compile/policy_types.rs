//! Default deny and `policyTypes` defaulting: Ingress always, Egress when there are egress rules.

use crate::prelude::*;

#[test]
fn default_deny_ingress_denies_every_ingress_flow_and_leaves_egress_open() {
    let c = cluster().with_policy(
        r"
metadata: {name: default-deny-ingress, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Ingress]
",
    );
    let net = c.compile();
    for p in ["a/x", "a/y"] {
        assert_eq!(net.isolation(p), (true, false), "{p}");
        assert_eq!(net.entries(p), 0, "{p}: deny is the absence of entries");
    }
    let table = [
        (IN, "a/y", TCP, 80, DENY),
        (IN, "b/x", TCP, 80, DENY),
        (IN, OUTSIDE, UDP, 53, DENY),
        (IN, HOST, TCP, 10250, DENY),
        (IN, "a/y", ICMP, 0, DENY),
        (OUT, OUTSIDE, TCP, 443, ALLOW),
        (OUT, "b/x", TCP, 80, ALLOW),
    ];
    net.expect("a/x", &table);
    net.expect("b/z", &[(IN, "a/y", TCP, 80, ALLOW), (IN, OUTSIDE, TCP, 80, ALLOW)]);
}

#[test]
fn default_deny_egress_denies_every_egress_flow_and_leaves_ingress_open() {
    let c = cluster().with_policy(
        r"
metadata: {name: default-deny-egress, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Egress]
",
    );
    let net = c.compile();
    assert_eq!(net.isolation("a/x"), (false, true));
    assert_eq!(net.isolation("a/y"), (false, true));
    net.expect(
        "a/x",
        &[
            (OUT, "a/y", TCP, 80, DENY),
            (OUT, OUTSIDE, TCP, 443, DENY),
            (OUT, HOST, UDP, 53, DENY),
            (OUT, OUTSIDE6, ICMPV6, 0, DENY),
            (IN, OUTSIDE, TCP, 80, ALLOW),
            (IN, "a/y", TCP, 80, ALLOW),
        ],
    );
    net.expect("b/z", &[(OUT, OUTSIDE, TCP, 443, ALLOW)]);
}

#[test]
fn default_deny_in_both_directions_denies_everything_of_the_namespace_only() {
    let c = cluster().with_policy(
        r"
metadata: {name: default-deny-all, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
",
    );
    let net = c.compile();
    for p in ["a/x", "a/y"] {
        assert_eq!(net.isolation(p), (true, true), "{p}");
        net.expect(
            p,
            &[
                (IN, "a/w", TCP, 80, DENY),
                (IN, OUTSIDE, TCP, 80, DENY),
                (OUT, "a/w", TCP, 80, DENY),
                (OUT, OUTSIDE6, TCP, 443, DENY),
            ],
        );
    }
    net.expect("b/z", &[(IN, "a/x", TCP, 80, ALLOW), (OUT, "a/x", TCP, 80, ALLOW)]);
}

#[test]
fn an_empty_ingress_list_and_an_absent_one_both_deny_all_ingress() {
    let empty = cluster().with_policy(
        r"
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress: []
",
    );
    let absent = cluster().with_policy(
        r"
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
",
    );
    let (e, a) = (empty.compile(), absent.compile());
    assert_eq!(e.desired, a.desired, "`ingress: []` and no ingress compile the same");
    for net in [&e, &a] {
        assert_eq!(net.isolation("a/x"), (true, false));
        net.expect("a/x", &[(IN, "a/y", TCP, 80, DENY), (IN, OUTSIDE, TCP, 80, DENY), (OUT, OUTSIDE, TCP, 80, ALLOW)]);
    }
}

#[test]
fn absent_policy_types_with_egress_rules_isolate_both_directions() {
    let yaml = r"
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  egress:
  - to: [{podSelector: {matchLabels: {pod: y}}}]
";
    let p = policy(yaml);
    assert!(p.isolates_ingress && p.isolates_egress, "defaulted to [Ingress, Egress]: {p:?}");
    let c = cluster().with_policy(yaml);
    let net = c.compile();
    assert_eq!(net.isolation("a/x"), (true, true));
    net.expect(
        "a/x",
        &[(OUT, "a/y", TCP, 80, ALLOW), (OUT, "b/x", TCP, 80, DENY), (OUT, OUTSIDE, TCP, 80, DENY), (IN, "a/y", TCP, 80, DENY)],
    );
}

#[test]
fn absent_policy_types_with_an_empty_egress_list_isolate_only_ingress() {
    for yaml in [
        r"
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  egress: []
",
        // An empty policyTypes list is defaulted like an absent one.
        r"
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: []
  egress: []
",
    ] {
        let p = policy(yaml);
        assert!(p.isolates_ingress && !p.isolates_egress, "defaulted to [Ingress]: {p:?}");
        let c = cluster().with_policy(yaml);
        let net = c.compile();
        assert_eq!(net.isolation("a/x"), (true, false));
        net.expect("a/x", &[(IN, "a/y", TCP, 80, DENY), (OUT, "a/y", TCP, 80, ALLOW), (OUT, OUTSIDE, TCP, 80, ALLOW)]);
    }
}

#[test]
fn explicit_egress_policy_type_ignores_ingress_rules_and_leaves_ingress_open() {
    let c = cluster().with_policy(
        r"
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: y}}}]
  egress:
  - to: [{podSelector: {matchLabels: {pod: y}}}]
",
    );
    let net = c.compile();
    assert_eq!(net.isolation("a/x"), (false, true));
    assert!(net.desired.policy.peers.keys().all(|k| k.direction == DIR_EGRESS), "no ingress entries are written");
    net.expect(
        "a/x",
        &[(IN, "b/x", TCP, 80, ALLOW), (IN, OUTSIDE, TCP, 80, ALLOW), (OUT, "a/y", TCP, 80, ALLOW), (OUT, "b/x", TCP, 80, DENY)],
    );
}

#[test]
fn explicit_ingress_policy_type_ignores_egress_rules_and_leaves_egress_open() {
    let c = cluster().with_policy(
        r"
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: y}}}]
  egress:
  - to: [{podSelector: {matchLabels: {pod: y}}}]
",
    );
    let net = c.compile();
    assert_eq!(net.isolation("a/x"), (true, false));
    assert!(net.desired.policy.peers.keys().all(|k| k.direction == DIR_INGRESS), "no egress entries are written");
    net.expect(
        "a/x",
        &[(IN, "a/y", TCP, 80, ALLOW), (IN, "b/x", TCP, 80, DENY), (OUT, "b/x", TCP, 80, ALLOW), (OUT, OUTSIDE, TCP, 80, ALLOW)],
    );
}
