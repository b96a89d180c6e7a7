//! Which pods are isolated: no policy, and a policy selecting a pod isolates only that pod, only in the directions it names.

use crate::prelude::*;

#[test]
fn without_any_policy_every_flow_is_allowed() {
    let c = cluster();
    let net = c.compile();
    assert!(net.desired.policy.is_empty(), "no policy, no entries");
    for p in ["a/x", "a/y", "b/z"] {
        assert_eq!(net.isolation(p), (false, false), "{p} is not isolated");
        net.expect(
            p,
            &[
                (IN, "b/x", TCP, 80, ALLOW),
                (IN, OUTSIDE, UDP, 53, ALLOW),
                (IN, HOST, ICMP, 0, ALLOW),
                (IN, OUTSIDE6, ICMPV6, 0, ALLOW),
                (OUT, OUTSIDE, TCP, 443, ALLOW),
                (OUT, "c/v", SCTP, 7, ALLOW),
            ],
        );
    }
    assert!(!net.desired.endpoints.contains_key(&ObjectRef::new("b", "x")), "pods of other nodes are not endpoints");
}

#[test]
fn a_pod_not_selected_by_any_policy_is_not_isolated() {
    let c = cluster().with_policy(
        r"
metadata: {name: deny-y, namespace: a}
spec:
  podSelector: {matchLabels: {pod: y}}
  policyTypes: [Ingress, Egress]
",
    );
    let net = c.compile();
    assert_eq!(net.isolation("a/x"), (false, false));
    assert_eq!(net.isolation("a/y"), (true, true));
    net.expect("a/x", &[(IN, "a/y", TCP, 80, ALLOW), (IN, OUTSIDE, TCP, 80, ALLOW), (OUT, OUTSIDE, UDP, 53, ALLOW)]);
    net.expect("a/y", &[(IN, "a/x", TCP, 80, DENY), (IN, OUTSIDE, TCP, 80, DENY), (OUT, OUTSIDE, UDP, 53, DENY)]);
}

#[test]
fn isolation_is_per_direction_an_ingress_policy_leaves_egress_open() {
    let c = cluster().with_policy(
        r"
metadata: {name: from-y, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: y}}}]
",
    );
    let net = c.compile();
    assert_eq!(net.isolation("a/x"), (true, false));
    net.expect(
        "a/x",
        &[
            (IN, "a/y", TCP, 80, ALLOW),
            (IN, "b/x", TCP, 80, DENY),
            (IN, OUTSIDE, TCP, 80, DENY),
            (OUT, OUTSIDE, TCP, 443, ALLOW),
            (OUT, "b/x", UDP, 53, ALLOW),
        ],
    );
}

#[test]
fn isolation_is_per_direction_an_egress_policy_leaves_ingress_open() {
    let c = cluster().with_policy(
        r"
metadata: {name: to-y, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {pod: y}}}]
",
    );
    let net = c.compile();
    assert_eq!(net.isolation("a/x"), (false, true));
    net.expect(
        "a/x",
        &[
            (OUT, "a/y", TCP, 5432, ALLOW),
            (OUT, "b/x", TCP, 80, DENY),
            (OUT, OUTSIDE, TCP, 443, DENY),
            (IN, OUTSIDE, TCP, 80, ALLOW),
            (IN, "b/x", UDP, 53, ALLOW),
        ],
    );
}
