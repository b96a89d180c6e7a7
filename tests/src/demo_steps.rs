//! The three-tier demo's script: its pods, its five steps (policies), the connections it
//! measures, and the reachability each step must show — written down by hand from the
//! NetworkPolicy specification, independently of netpol's compiler.

/// A pod of the demo: namespace, name, labels, and the ports its servers listen on.
pub struct DemoPod {
    /// Namespace.
    pub namespace: &'static str,
    /// Name.
    pub name: &'static str,
    /// Labels.
    pub labels: &'static [(&'static str, &'static str)],
    /// (port name, number, protocol) of its servers.
    pub ports: &'static [(&'static str, u16, &'static str)],
}

/// The demo's namespaces with their labels (the API server adds `kubernetes.io/metadata.name`).
pub const NAMESPACES: &[(&str, &[(&str, &str)])] =
    &[("ingress-nginx", &[("purpose", "ingress")]), ("production", &[("env", "production")]), ("kube-system", &[])];

/// The demo's pods.
pub const PODS: &[DemoPod] = &[
    DemoPod {
        namespace: "ingress-nginx",
        name: "ingress-controller",
        labels: &[("app.kubernetes.io/name", "ingress-nginx")],
        ports: &[("http", 80, "TCP")],
    },
    DemoPod { namespace: "production", name: "frontend", labels: &[("app", "frontend"), ("tier", "web")], ports: &[("http", 80, "TCP")] },
    DemoPod { namespace: "production", name: "backend", labels: &[("app", "backend"), ("tier", "api")], ports: &[("api", 8080, "TCP")] },
    DemoPod { namespace: "production", name: "database", labels: &[("app", "database"), ("tier", "db")], ports: &[("postgres", 5432, "TCP")] },
    DemoPod {
        namespace: "kube-system",
        name: "kube-dns",
        labels: &[("k8s-app", "kube-dns")],
        ports: &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")],
    },
];

/// Who connects to whom: (source pod, destination pod or "node" for the node itself, port,
/// protocol). The node is the kubelet probing a pod.
pub const CONNECTIONS: &[(&str, &str, u16, &str)] = &[
    ("ingress-controller", "frontend", 80, "TCP"),
    ("frontend", "backend", 8080, "TCP"),
    ("backend", "database", 5432, "TCP"),
    ("frontend", "database", 5432, "TCP"),
    ("ingress-controller", "backend", 8080, "TCP"),
    ("backend", "frontend", 80, "TCP"),
    ("database", "backend", 8080, "TCP"),
    ("frontend", "kube-dns", 53, "UDP"),
    ("frontend", "kube-dns", 53, "TCP"),
    ("backend", "kube-dns", 53, "UDP"),
    ("database", "kube-dns", 53, "UDP"),
    ("ingress-controller", "kube-dns", 53, "UDP"),
    ("node", "frontend", 80, "TCP"),
    ("node", "database", 5432, "TCP"),
];

/// One step of the demo.
pub struct Step {
    /// Title.
    pub title: &'static str,
    /// The policies in force after this step (all of them, YAML).
    pub policies: &'static [&'static str],
    /// Expected result of each of [`CONNECTIONS`], in order.
    pub expected: [bool; 14],
    /// What users should notice, including where common explanations go wrong.
    pub notes: &'static [&'static str],
}

const DEFAULT_DENY: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-all
  namespace: production
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
"#;

const FRONTEND_INGRESS: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: frontend-allow-ingress-controller
  namespace: production
spec:
  podSelector:
    matchLabels: {app: frontend}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: ingress-nginx}
      podSelector:
        matchLabels: {app.kubernetes.io/name: ingress-nginx}
    ports:
    - port: http
"#;

const FRONTEND_EGRESS: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: frontend-egress
  namespace: production
spec:
  podSelector:
    matchLabels: {app: frontend}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector:
        matchLabels: {app: backend}
    ports:
    - port: 8080
  - to:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: kube-system}
      podSelector:
        matchLabels: {k8s-app: kube-dns}
    ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
"#;

const BACKEND: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: backend
  namespace: production
spec:
  podSelector:
    matchLabels: {app: backend}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector:
        matchLabels: {app: frontend}
    ports:
    - port: api
  egress:
  - to:
    - podSelector:
        matchLabels: {app: database}
    ports:
    - port: 5432
  - to:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: kube-system}
      podSelector:
        matchLabels: {k8s-app: kube-dns}
    ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
"#;

const DATABASE: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: database
  namespace: production
spec:
  podSelector:
    matchLabels: {app: database}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels: {app: backend}
    ports:
    - {port: 5432, protocol: TCP}
"#;

/// The steps, in order. Columns of `expected` follow [`CONNECTIONS`]:
/// ic->fe, fe->be, be->db, fe->db, ic->be, be->fe, db->be, fe->dns/UDP, fe->dns/TCP,
/// be->dns, db->dns, ic->dns, node->fe, node->db.
pub const STEPS: &[Step] = &[
    Step {
        title: "No policy",
        policies: &[],
        expected: [true; 14],
        notes: &["Without a policy every pod reaches every other pod: Kubernetes networking is open by default."],
    },
    Step {
        title: "Default deny in production",
        policies: &[DEFAULT_DENY],
        expected: [false, false, false, false, false, false, false, false, false, false, false, true, true, true],
        notes: &[
            "An empty podSelector selects every pod of the namespace: all of production is isolated, both ways.",
            "Egress isolation blocks DNS too: name lookups from production now fail until DNS is allowed explicitly.",
            "The node still reaches its pods (kubelet probes), as in other implementations; pods outside production are untouched.",
        ],
    },
    Step {
        title: "Frontend accepts the ingress controller",
        policies: &[DEFAULT_DENY, FRONTEND_INGRESS],
        expected: [true, false, false, false, false, false, false, false, false, false, false, true, true, true],
        notes: &[
            "namespaceSelector and podSelector in ONE peer mean 'these pods in those namespaces'. Written as two peers (two dashes) they would mean 'any pod of ingress-nginx OR any pod with that label in production'.",
            "The namespace is matched by kubernetes.io/metadata.name, which Kubernetes sets. Many examples use `name: ingress-nginx`, a label no namespace has unless someone adds it: such a policy silently allows nothing.",
            "The reply from frontend to the controller needs no egress rule: NetworkPolicy is stateful.",
        ],
    },
    Step {
        title: "Frontend egress to backend, and DNS",
        policies: &[DEFAULT_DENY, FRONTEND_INGRESS, FRONTEND_EGRESS],
        expected: [true, false, false, false, false, false, false, true, true, false, false, true, true, true],
        notes: &[
            "GOTCHA: frontend -> backend:8080 is STILL DROPPED. A common explanation draws that arrow as soon as frontend's egress rule exists, but backend is isolated for ingress by the default deny and nothing admits frontend yet: a connection needs egress allowed at the source AND ingress allowed at the destination.",
            "DNS is allowed on UDP and TCP 53: large answers and DNSSEC fall back to TCP, so UDP alone is a classic half-fix.",
        ],
    },
    Step {
        title: "Full three-tier set",
        policies: &[DEFAULT_DENY, FRONTEND_INGRESS, FRONTEND_EGRESS, BACKEND, DATABASE],
        expected: [true, true, true, false, false, false, false, true, true, true, false, true, true, true],
        notes: &[
            "ingress -> frontend -> backend -> database works end to end, and nothing else does: policies are not transitive, so frontend cannot reach the database.",
            "The database has no egress rule and is still isolated for egress by the default deny: it cannot even resolve names, which is usually what you want for a database.",
            "backend's ingress rule uses the named port `api`, resolved against backend's own container port (8080).",
        ],
    },
];
