//! The node itself: its addresses, kubelet probes, `--no-host-access`.

use crate::prelude::*;

pub const DENY_ALL_OF_A: &str = r"
metadata: {name: deny-all, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
";

#[test]
fn with_allow_host_the_node_reaches_ingress_isolated_pods() {
    let c = cluster().with_policy(DENY_ALL_OF_A).allow_host(true);
    let net = c.compile();
    net.expect(
        "a/x",
        &[
            (IN, HOST, TCP, 8080, ALLOW),
            (IN, HOST6, TCP, 8080, ALLOW),
            (IN, HOST, ICMP, 0, ALLOW),
            (IN, "a/y", TCP, 8080, DENY),
            (IN, OUTSIDE, TCP, 8080, DENY),
            (OUT, HOST, TCP, 10250, DENY), // only ingress: probes come from the node
        ],
    );
    assert_eq!(net.entries("b/z"), 0, "a pod no policy isolates needs no host entry");
}

#[test]
fn without_allow_host_the_node_is_denied_like_any_other_peer() {
    let c = cluster().with_policy(DENY_ALL_OF_A).allow_host(false);
    let net = c.compile();
    net.expect("a/x", &[(IN, HOST, TCP, 8080, DENY), (IN, HOST6, TCP, 8080, DENY), (OUT, HOST, TCP, 10250, DENY)]);
    net.expect("b/z", &[(IN, HOST, TCP, 8080, ALLOW)]);
}

#[test]
fn the_node_identity_is_not_confused_with_pods() {
    let c = cluster().with_policy(
        r"
metadata: {name: all-pods, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{namespaceSelector: {}}]
  - from: [{podSelector: {}}]
",
    );
    for allow_host in [false, true] {
        let c = c.clone().allow_host(allow_host);
        let net = c.compile();
        assert_eq!(net.identity_of(HOST), IDENTITY_HOST);
        assert_eq!(net.identity_of(HOST6), IDENTITY_HOST);
        for p in ["a/x", "a/y", "b/x", "d/u"] {
            assert_ne!(net.identity_of(p), IDENTITY_HOST, "{p}");
        }
        net.expect("a/x", &[(IN, HOST, TCP, 80, allow_host), (IN, "a/y", TCP, 80, ALLOW), (IN, OUTSIDE, TCP, 80, DENY)]);
    }
    // A host entry that allows the node does not allow pods: an a/y-only policy with the node
    // allowed still denies a/w.
    let c = cluster()
        .allow_host(true)
        .with_policy(
            r"
metadata: {name: from-y, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: y}}}]
",
        );
    let net = c.compile();
    net.expect("a/x", &[(IN, HOST, TCP, 80, ALLOW), (IN, "a/y", TCP, 80, ALLOW), (IN, "a/w", TCP, 80, DENY)]);
}
