//! Dual stack: a pod with both families is judged the same on either.

use crate::prelude::*;

#[test]
fn a_dual_stack_pod_gives_both_addresses_its_identity_and_is_judged_the_same_on_either() {
    let c = cluster().with_policy(
        r"
metadata: {name: y-only, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: y}}}]
    ports: [{port: 80}]
  egress:
  - to: [{namespaceSelector: {matchLabels: {team: beta}}, podSelector: {matchLabels: {pod: x}}}]
",
    );
    let net = c.compile();
    assert_eq!(net.identity_of("a/y"), net.identity_of("a/y@6"));
    assert_eq!(net.identity_of("b/x"), net.identity_of("b/x@6"));
    let ep = net.endpoint("a/x");
    assert_eq!(ep.ipv4, Some("198.18.0.10".parse().expect("v4")));
    assert_eq!(ep.ipv6, Some("fd00:198:18::10".parse().expect("v6")));
    assert_eq!(ep.ips.len(), 2);
    for v6 in ["", "@6"] {
        let y = format!("a/y{v6}");
        let bx = format!("b/x{v6}");
        net.expect(
            "a/x",
            &[
                (IN, &y, TCP, 80, ALLOW),
                (IN, &y, TCP, 443, DENY),
                (IN, &bx, TCP, 80, DENY),
                (OUT, &bx, UDP, 53, ALLOW),
                (OUT, &y, UDP, 53, DENY),
            ],
        );
    }
}
