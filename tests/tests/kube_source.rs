//! The API source against the fake API server, without root: it gives no snapshot until every
//! resource is listed, then the same typed state the manifest source makes of the same objects,
//! follows changes, and posts one Warning Event per invalid policy.

use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use netpol_agent::{source::kube::KubeSource, source::manifests, source::Snapshot};
use netpol_sandbox::apiserver::{ApiServer, Kind};
use serde_json::{json, Value};

fn objects() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"team": "a"}}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y"}}),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 80}]}]},
            "status": {"phase": "Running", "podIP": "198.18.0.10", "podIPs": [{"ip": "198.18.0.10"}, {"ip": "fd00:198:18::10"}]},
        }),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "b", "namespace": "y", "labels": {"pod": "b"}},
            "spec": {"nodeName": "n2", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": "198.18.1.10"},
        }),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "pending", "namespace": "y"},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Pending"},
        }),
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "admit", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}], "ports": [{"port": "http"}]}],
                "egress": [{"to": [{"ipBlock": {"cidr": "198.18.0.0/15", "except": ["198.18.1.0/24"]}}]}]},
        }),
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "bad-cidr", "namespace": "y"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "198.18.0.0/33"}}]}]},
        }),
    ]
}

/// What the manifest source makes of the same objects.
fn from_manifests(objects: &[Value]) -> manifests::Loaded {
    let text = objects.iter().map(|o| serde_json::to_string(o).expect("json")).collect::<Vec<_>>().join("\n---\n");
    let mut loaded = manifests::Loaded::default();
    manifests::load_documents(&text, "objects.yaml", &mut loaded, &mut Default::default());
    loaded
}

async fn source(api: &ApiServer) -> KubeSource {
    let kubeconfig = Kubeconfig::read_from(&api.kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("config");
    KubeSource::start(kube::Client::try_from(config).expect("client"), "n1", || {})
}

async fn snapshot_where(source: &KubeSource, what: &str, ok: impl Fn(&Snapshot) -> bool) -> std::sync::Arc<Snapshot> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = source.snapshot().filter(|s| ok(s)) {
            return s;
        }
        assert!(Instant::now() < deadline, "no snapshot where {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_source_makes_the_same_state_as_the_manifest_source_and_follows_changes() {
    let api = tokio::task::spawn_blocking(ApiServer::start_here).await.expect("join").expect("fake API server");
    for o in objects() {
        api.apply(o).expect("apply");
    }
    let source = source(&api).await;
    let snap = snapshot_where(&source, "listed", |_| true).await;
    let expected = from_manifests(&objects());
    assert_eq!(snap.state, expected.state, "one conversion, whatever the source");
    let objects_of = |p: &[netpol_agent::model::Problem]| p.iter().map(|p| p.object.clone()).collect::<Vec<_>>();
    assert_eq!(objects_of(&snap.problems), objects_of(&expected.problems));
    assert_eq!(objects_of(&snap.problems), ["NetworkPolicy y/bad-cidr"]);
    let rv = api.resource_version();
    assert!(snap.resource_versions.values().all(|v| v.parse::<u64>().expect("number") <= rv), "{:?}", snap.resource_versions);

    // Changes arrive through the watches.
    let rv = api.delete(Kind::NetworkPolicy, "x", "admit").expect("delete");
    let snap = snapshot_where(&source, "the policy is deleted", |s| s.resource_versions["networkpolicies"] == rv.to_string()).await;
    assert!(snap.state.policies.is_empty());
    let mut relabelled = objects()[3].clone();
    relabelled["metadata"]["labels"]["pod"] = json!("c");
    let rv = api.apply(relabelled).expect("relabel");
    let snap = snapshot_where(&source, "the pod is relabelled", |s| s.resource_versions["pods"] == rv.to_string()).await;
    let b = &snap.state.pods[&netpol_agent::model::ObjectRef::new("y", "b")];
    assert_eq!(b.labels["pod"], "c");

    // One Event for the invalid policy, however many snapshots were taken.
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.events().is_empty() {
        assert!(Instant::now() < deadline, "no Event posted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..20 {
        source.snapshot();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = api.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["involvedObject"]["name"], "bad-cidr");
    assert_eq!(events[0]["involvedObject"]["namespace"], "y");
    assert_eq!(events[0]["metadata"]["namespace"], "y");
    assert_eq!(events[0]["reason"], "InvalidNetworkPolicy");
    assert_eq!(events[0]["type"], "Warning");
    drop(source);
    tokio::task::spawn_blocking(move || drop(api)).await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_snapshot_until_every_resource_is_listed() {
    let api = tokio::task::spawn_blocking(ApiServer::start_here).await.expect("join").expect("fake API server");
    for o in objects() {
        api.apply(o).expect("apply");
    }
    api.set_unavailable(Kind::NetworkPolicy, true);
    let source = source(&api).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !api.requests().iter().any(|r| r.starts_with("GET /api/v1/pods"))
        || !api.requests().iter().any(|r| r.starts_with("GET /api/v1/namespaces"))
    {
        assert!(Instant::now() < deadline, "pods and namespaces were not listed: {:?}", api.requests());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(source.snapshot().is_none(), "pods and namespaces alone make no snapshot");
    api.set_unavailable(Kind::NetworkPolicy, false);
    let snap = snapshot_where(&source, "listed", |_| true).await;
    assert_eq!(snap.state.policies.len(), 1);
    drop(source);
    tokio::task::spawn_blocking(move || drop(api)).await.expect("join");
}
