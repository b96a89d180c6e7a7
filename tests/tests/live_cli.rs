//! `explain`, `lint` and `graph` against a live cluster, without root: the real binary reads
//! the fake API server through a kubeconfig (no `--manifests`) and answers as it does for the
//! same objects written to a manifest directory.

use std::process::{Command, Output};

use netpol_sandbox::{
    agent::agent_bin,
    apiserver::{kubeconfig_text, ApiServer, Kind},
    manifests::ManifestDir,
};
use serde_json::{json, Value};

/// A shop namespace with a default deny, `web` allowed into `api` on 8080, and a `db` policy
/// with the classic mistake: a namespaceSelector on a `name` label no namespace carries.
fn objects() -> Vec<Value> {
    let pod = |name: &str, ip: &str, ports: Value| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        })
    };
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        pod("web", "198.18.0.10", json!([{"name": "http", "containerPort": 80}])),
        pod("api", "198.18.0.11", json!([{"name": "http", "containerPort": 8080}])),
        pod("db", "198.18.0.12", json!([{"containerPort": 5432}])),
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny", "namespace": "shop"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }),
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "api-from-web", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "api"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 8080}]}]},
        }),
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"name": "shop"}}, "podSelector": {"matchLabels": {"app": "web"}}}],
                             "ports": [{"port": 5432}]}]},
        }),
    ]
}

/// The fake API server holding `objects()`, a kubeconfig for it, and the same objects as a
/// manifest directory.
struct Setup {
    api: ApiServer,
    kubeconfig_dir: ManifestDir,
    manifests: ManifestDir,
}

impl Setup {
    fn new() -> Self {
        let api = ApiServer::start_here().expect("start the fake API server");
        for o in objects() {
            api.apply(o).expect("apply");
        }
        let kubeconfig_dir = ManifestDir::new().expect("kubeconfig dir");
        kubeconfig_dir.write("kubeconfig", &kubeconfig_text(api.addr())).expect("write the kubeconfig");
        let manifests = ManifestDir::new().expect("manifest dir");
        let text = objects().iter().map(|o| serde_json::to_string_pretty(o).expect("json")).collect::<Vec<_>>().join("\n---\n");
        manifests.write("shop.yaml", &text).expect("write the manifests");
        Self { api, kubeconfig_dir, manifests }
    }

    /// Runs the agent binary with `args`, reading the cluster through the kubeconfig.
    fn live(&self, args: &[&str]) -> Output {
        let bin = agent_bin();
        assert!(bin.is_file(), "no agent binary at {} (run `cargo xtask build`, or set NETPOL_AGENT_BIN)", bin.display());
        Command::new(bin)
            .args(args)
            .env("KUBECONFIG", self.kubeconfig_dir.path().join("kubeconfig"))
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("run netpol-agent")
    }

    /// Runs the agent binary with `args` and `--manifests` on the same objects (and a
    /// kubeconfig pointing nowhere, so an answer cannot come from the API).
    fn offline(&self, args: &[&str]) -> Output {
        Command::new(agent_bin())
            .args(args)
            .arg("--manifests")
            .arg(self.manifests.path())
            .env("KUBECONFIG", self.manifests.path().join("no-such-kubeconfig"))
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .output()
            .expect("run netpol-agent")
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs one command live and offline; both must exit with `code` and print the same thing.
fn same_both_ways(s: &Setup, args: &[&str], code: i32) -> String {
    let live = s.live(args);
    let offline = s.offline(args);
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(live.status.code(), Some(code), "{args:?} live: {}\n{}", stdout(&live), stderr(&live));
    assert_eq!(offline.status.code(), Some(code), "{args:?} offline: {}\n{}", stdout(&offline), stderr(&offline));
    assert_eq!(stdout(&live), stdout(&offline), "{args:?}: the cluster and its manifests give different answers");
    stdout(&live)
}

#[test]
fn explain_lint_and_graph_answer_from_the_cluster_as_from_its_manifests() {
    let s = Setup::new();

    // An allowed flow, named by the policy that allows it.
    let out = same_both_ways(&s, &["explain", "--from", "shop/web", "--to", "shop/api", "--port", "8080", "--output", "json"], 0);
    let e: Value = serde_json::from_str(&out).expect("explain json");
    assert_eq!(e["allowed"], true, "{e:#}");
    let allowing: Vec<&str> =
        e["ingress"]["rules"].as_array().expect("rules").iter().filter(|r| r["matched"] == true).filter_map(|r| r["policy"].as_str()).collect();
    assert_eq!(allowing, ["shop/api-from-web"], "{e:#}");

    // A denied flow: the db policy's namespaceSelector matches no namespace.
    let out = same_both_ways(&s, &["explain", "--from", "shop/web", "--to", "shop/db", "--port", "5432", "--output", "json"], 0);
    let e: Value = serde_json::from_str(&out).expect("explain json");
    assert_eq!(e["allowed"], false, "{e:#}");
    assert_eq!(e["ingress"]["allowed"], false, "{e:#}");
    // By address too, and as text.
    same_both_ways(&s, &["explain", "--from", "198.18.0.10", "--to", "198.18.0.12", "--port", "5432"], 0);

    // Lint finds the mistake and exits 1.
    let out = same_both_ways(&s, &["lint", "--output", "json"], 1);
    let findings: Value = serde_json::from_str(&out).expect("lint json");
    let found = findings.as_array().expect("findings").iter().any(|f| {
        f["object"] == "NetworkPolicy shop/db" && f["code"] == "namespace-label-unknown" && f["rule"].as_str().is_some_and(|r| r.starts_with("ingress[0].from[0]"))
    });
    assert!(found, "no namespace-label-unknown finding on shop/db: {findings:#}");
    same_both_ways(&s, &["lint"], 1);

    // The graph has web -> api on 8080 and nothing into db.
    let out = same_both_ways(&s, &["graph"], 0);
    assert!(out.starts_with("flowchart LR\n"), "{out}");
    let id = |pod: &str| {
        out.lines()
            .map(str::trim)
            .find_map(|l| {
                // `n1["web"]`, or `n1[["web<br/>...` for an isolated pod.
                let (id, label) = l.split_once('[')?;
                let name = label.trim_start_matches(['[', '"']);
                (name.starts_with(&format!("{pod}<")) || name.starts_with(&format!("{pod}\""))).then_some(id)
            })
            .unwrap_or_else(|| panic!("no node for {pod} in:\n{out}"))
            .to_string()
    };
    let (web, api, db) = (id("web"), id("api"), id("db"));
    assert!(out.lines().any(|l| l.trim() == format!("{web} -->|\"8080/TCP\"| {api}")), "no web -> api edge on 8080/TCP in:\n{out}");
    assert!(!out.lines().any(|l| l.contains("-->") && l.trim().ends_with(&format!("| {db}"))), "an edge into db in:\n{out}");
    same_both_ways(&s, &["graph", "--format", "svg"], 0);
}

#[test]
fn a_cluster_that_cannot_be_read_is_an_error_not_an_answer() {
    let s = Setup::new();
    s.api.set_unavailable(Kind::NetworkPolicy, true);
    let out = s.live(&["explain", "--from", "shop/web", "--to", "shop/api", "--port", "8080"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "explain answered without the policies: {}", stdout(&out));
    assert!(stderr.contains("list networkpolicies"), "{stderr}");
    assert!(stdout(&out).is_empty());
    let out = s.live(&["lint"]);
    assert_eq!(out.status.code(), Some(2), "lint's status on errors");
}
