//! Named scenarios: manifests text the tests, the examples and the tools' checks share, and how
//! to load them as the manifest source does.

use netpol_agent::{
    model::ClusterState,
    source::manifests::{load_documents, Loaded},
};

/// The three-tier example: an ingress controller, frontend, backend and database, kube-dns,
/// default-deny everywhere and exactly the flows the application needs (with DNS).
pub const THREE_TIER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: production, labels: {env: production}}
---
apiVersion: v1
kind: Namespace
metadata: {name: ingress-nginx}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
---
apiVersion: v1
kind: Pod
metadata: {name: ingress-controller, namespace: ingress-nginx, labels: {app: ingress-nginx}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}
status: {podIP: 198.18.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: production, labels: {app: frontend}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}
status: {podIP: 198.18.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: production, labels: {app: backend}}
spec: {nodeName: n2, containers: [{name: c, ports: [{name: api, containerPort: 8080}]}]}
status: {podIP: 198.18.0.12}
---
apiVersion: v1
kind: Pod
metadata: {name: database, namespace: production, labels: {app: database}}
spec: {nodeName: n2, containers: [{name: c, ports: [{name: postgres, containerPort: 5432}]}]}
status: {podIP: 198.18.0.13}
---
apiVersion: v1
kind: Pod
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: dns, containerPort: 53, protocol: UDP}, {name: dns-tcp, containerPort: 53}]}]}
status: {podIP: 198.18.0.14}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: production}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: production}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: frontend, namespace: production}
spec:
  podSelector: {matchLabels: {app: frontend}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}
      podSelector: {matchLabels: {app: ingress-nginx}}
    ports: [{port: 80}]
  egress:
  - to: [{podSelector: {matchLabels: {app: backend}}}]
    ports: [{port: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: backend, namespace: production}
spec:
  podSelector: {matchLabels: {app: backend}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{port: api}]
  egress:
  - to: [{podSelector: {matchLabels: {app: database}}}]
    ports: [{port: 5432}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: database, namespace: production}
spec:
  podSelector: {matchLabels: {app: database}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: backend}}}]
    ports: [{port: 5432}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: ingress-nginx}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: controller, namespace: ingress-nginx}
spec:
  podSelector: {matchLabels: {app: ingress-nginx}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{ipBlock: {cidr: 0.0.0.0/0}}]
    ports: [{port: 80}, {port: 443}]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: production}}
      podSelector: {matchLabels: {app: frontend}}
    ports: [{port: 80}]
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: kube-system}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: kube-system}
spec:
  podSelector: {matchLabels: {k8s-app: kube-dns}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [production, ingress-nginx]}]
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
"#;

/// Loads manifests text as the manifest source does.
pub fn load(text: &str) -> Loaded {
    let mut loaded = Loaded::default();
    load_documents(text, "test.yaml", &mut loaded, &mut Default::default());
    loaded
}

/// The three-tier state, checked to load cleanly.
pub fn three_tier() -> ClusterState {
    let l = load(THREE_TIER);
    assert!(l.problems.is_empty(), "{:?}", l.problems);
    l.state
}
