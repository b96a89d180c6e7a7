//! The conformance cases: each a set of policies and the reachability it must produce, as
//! explicit truth tables over the upstream e2e layout (namespaces x, y, z; pods a, b, c in each;
//! servers on 80 and 81 over TCP, UDP and SCTP). Written from the NetworkPolicy specification
//! and the upstream Kubernetes e2e tests (test/e2e/network/netpol), not from netpol's compiler.
//!
//! A table has one row per source pod and one column per destination pod, both in the order
//! x/a x/b x/c y/a y/b y/c z/a z/b z/c; `.` means the connection opens, `X` that it must not.
//! Pod self-traffic (the diagonal) is never blocked. Placeholders in policies: `{x/b}` is that
//! pod's IPv4 address, `{x/b6}` its IPv6 address, `{x/b/24}` the IPv4 /24 it sits in.

/// Which connections a table is about.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    /// Destination port.
    pub port: u16,
    /// "TCP", "UDP" or "SCTP".
    pub protocol: &'static str,
    /// Probe the IPv6 addresses instead of IPv4.
    pub ipv6: bool,
}

pub const TCP80: Probe = Probe { port: 80, protocol: "TCP", ipv6: false };
pub const TCP81: Probe = Probe { port: 81, protocol: "TCP", ipv6: false };
pub const UDP80: Probe = Probe { port: 80, protocol: "UDP", ipv6: false };
pub const UDP81: Probe = Probe { port: 81, protocol: "UDP", ipv6: false };
pub const SCTP80: Probe = Probe { port: 80, protocol: "SCTP", ipv6: false };
pub const SCTP81: Probe = Probe { port: 81, protocol: "SCTP", ipv6: false };
pub const TCP80V6: Probe = Probe { port: 80, protocol: "TCP", ipv6: true };
pub const UDP80V6: Probe = Probe { port: 80, protocol: "UDP", ipv6: true };

/// A case: policies (YAML documents) and the tables they must produce.
pub struct Case {
    /// What the case shows, as a sentence of the spec.
    pub name: &'static str,
    /// The policies.
    pub policies: &'static [&'static str],
    /// Probes and their expected tables.
    pub tables: &'static [(Probe, &'static str)],
}

pub const ALL_OPEN: &str = "
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .";

/// Nothing reaches x/a (but x/a itself).
const INTO_XA_DENIED: &str = "
. . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .";

/// Only pods of x reach x/a.
const INTO_XA_FROM_X_ONLY: &str = "
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .";

/// Only x/b reaches x/a.
const INTO_XA_FROM_XB_ONLY: &str = "
. . . . . . . . .
. . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .";

/// x/a reaches nothing (but itself).
const FROM_XA_DENIED: &str = "
. X X X X X X X X
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .";

pub const CASES: &[Case] = &[
    Case { name: "without policies every pod reaches every pod", policies: &[], tables: &[(TCP80, ALL_OPEN), (UDP81, ALL_OPEN), (SCTP80, ALL_OPEN), (TCP80V6, ALL_OPEN)] },
    Case {
        name: "default deny ingress isolates every pod of the namespace and only for ingress",
        policies: &[r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#],
        tables: &[
            (
                TCP80,
                "
. X X . . . . . .
X . X . . . . . .
X X . . . . . . .
X X X . . . . . .
X X X . . . . . .
X X X . . . . . .
X X X . . . . . .
X X X . . . . . .
X X X . . . . . .",
            ),
            (
                UDP80V6,
                "
. X X . . . . . .
X . X . . . . . .
X X . . . . . . .
X X X . . . . . .
X X X . . . . . .
X X X . . . . . .
X X X . . . . . .
X X X . . . . . .
X X X . . . . . .",
            ),
        ],
    },
    Case {
        name: "default deny egress isolates every pod of the namespace and only for egress",
        policies: &[r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-egress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
"#],
        tables: &[(
            TCP80,
            "
. X X X X X X X X
X . X X X X X X X
X X . X X X X X X
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .",
        )],
    },
    Case {
        name: "an ingress rule with an empty podSelector admits every pod of the policy's namespace",
        policies: &[r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-same-namespace, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {}}]}]
"#],
        tables: &[(TCP80, INTO_XA_FROM_X_ONLY), (UDP81, INTO_XA_FROM_X_ONLY), (SCTP81, INTO_XA_FROM_X_ONLY)],
    },
    Case {
        name: "a podSelector with matchExpressions admits only the pods it matches",
        policies: &[r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b-by-expression, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}}]
"#],
        tables: &[(TCP80, INTO_XA_FROM_XB_ONLY)],
    },
    Case {
        name: "a namespaceSelector with NotIn admits every pod of the other namespaces",
        policies: &[r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-not-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [y]}]}}]
"#],
        tables: &[(
            TCP80,
            "
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .",
        )],
    },
    Case {
        name: "namespaceSelector and podSelector in one peer must both match",
        policies: &[r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y-or-z-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y, z]}]}
      podSelector: {matchLabels: {pod: b}}
"#],
        tables: &[(
            TCP80,
            "
. . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
. . . . . . . . .
X . . . . . . . .
X . . . . . . . .
. . . . . . . . .
X . . . . . . . .",
        )],
    },
    Case {
        name: "namespaceSelector and podSelector as two peers are ORed",
        policies: &[r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-z-or-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: z}}
    - podSelector: {matchLabels: {pod: c}}
"#],
        tables: &[(
            TCP80,
            "
. . . . . . . . .
X . . . . . . . .
. . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .",
        )],
    },
    Case {
        name: "an empty namespaceSelector admits pods of every namespace",
        policies: &[r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-namespaces-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]
"#],
        tables: &[(
            TCP80,
            "
. . . . . . . . .
. . . . . . . . .
X . . . . . . . .
X . . . . . . . .
. . . . . . . . .
X . . . . . . . .
X . . . . . . . .
. . . . . . . . .
X . . . . . . . .",
        )],
    },
    Case {
        name: "the kubernetes.io/metadata.name label selects a namespace by name",
        policies: &[r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-y-by-name, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
"#],
        tables: &[(
            TCP80,
            "
. . . . . . . . .
X . . . . . . . .
X . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .",
        )],
    },
    Case {
        name: "a port rule allows that port only",
        policies: &[r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 81, protocol: TCP}]}]
"#],
        tables: &[(TCP80, INTO_XA_DENIED), (TCP81, ALL_OPEN), (UDP81, INTO_XA_DENIED)],
    },
    Case {
        name: "a named port matches the selected pod's container port of that name and protocol",
        policies: &[r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-named-81-udp, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: serve-81-udp, protocol: UDP}, {port: serve-80-udp}]}]
"#],
        // serve-80-udp with the default protocol TCP matches no container port.
        tables: &[(UDP81, ALL_OPEN), (UDP80, INTO_XA_DENIED), (TCP80, INTO_XA_DENIED), (TCP81, INTO_XA_DENIED)],
    },
    Case {
        name: "an endPort range includes both ends and nothing beyond",
        policies: &[r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-81-to-90, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 81, endPort: 90, protocol: TCP}, {port: 70, endPort: 80, protocol: SCTP}]}]
"#],
        tables: &[(TCP81, ALL_OPEN), (TCP80, INTO_XA_DENIED), (SCTP80, ALL_OPEN), (SCTP81, INTO_XA_DENIED)],
    },
    Case {
        name: "a protocol without a port allows every port of that protocol only",
        policies: &[r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-udp, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{protocol: UDP}]}]
"#],
        tables: &[(UDP80, ALL_OPEN), (UDP81, ALL_OPEN), (TCP80, INTO_XA_DENIED), (SCTP80, INTO_XA_DENIED)],
    },
    Case {
        name: "SCTP rules allow SCTP only",
        policies: &[r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-sctp-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 80, protocol: SCTP}]}]
"#],
        tables: &[(SCTP80, ALL_OPEN), (SCTP81, INTO_XA_DENIED), (TCP80, INTO_XA_DENIED), (UDP80, INTO_XA_DENIED)],
    },
    Case {
        name: "several policies on one pod are ORed",
        policies: &[
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
"#,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-z-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: 81}]}]
"#,
        ],
        tables: &[
            (TCP80, INTO_XA_FROM_XB_ONLY),
            (
                TCP81,
                "
. . . . . . . . .
. . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .",
            ),
        ],
    },
    Case {
        name: "an egress rule allows only its destinations, and replies still come back",
        policies: &[r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-to-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress, Ingress]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
"#],
        tables: &[(
            TCP80,
            "
. X X . . . X X X
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .",
        )],
    },
    Case {
        name: "egress to a named port resolves against the destination pod",
        policies: &[r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-named, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{ports: [{port: serve-81-tcp}]}]
"#],
        tables: &[(TCP81, ALL_OPEN), (TCP80, FROM_XA_DENIED)],
    },
    Case {
        name: "an ipBlock admits the addresses of its cidr, pods included, minus except",
        policies: &[r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ipblock, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{ipBlock: {cidr: "{y/b/24}", except: ["{y/b}/32"]}}]}]
"#],
        // All pods share one /24 here: everyone but y/b is admitted through the block.
        tables: &[(
            TCP80,
            "
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
X . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .",
        )],
    },
    Case {
        name: "an egress ipBlock applies to pod addresses and an IPv6 block only to IPv6",
        policies: &[r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-ipblock, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: "{z/c}/32"}}, {ipBlock: {cidr: "{y/c6}/128"}}]
"#],
        tables: &[
            (
                TCP80,
                "
. X X X X X X X .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .",
            ),
            (
                TCP80V6,
                "
. X X X X . X X X
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .
. . . . . . . . .",
            ),
        ],
    },
    Case {
        name: "an empty ingress rule list isolates without allowing, and policyTypes default to Ingress",
        policies: &[r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: []
  egress: []
"#],
        tables: &[(TCP80, INTO_XA_DENIED), (UDP80V6, INTO_XA_DENIED)],
    },
    Case {
        name: "policyTypes default to Ingress and Egress when egress rules are present",
        policies: &[r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-to-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]
"#],
        tables: &[(
            UDP80,
            "
. . X X X X X X X
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .
X . . . . . . . .",
        )],
    },
];
