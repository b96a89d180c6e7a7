//! The agent on the Kubernetes API: the real agent binary, with no manifests, watches a fake API
//! server (tests/src/apiserver.rs) through a kubeconfig, and enforcement follows the API: policy
//! created, updated, deleted, pods relabelled, the server gone (the last state stays), the server
//! back with changes and every resourceVersion expired (410: the agent lists again and
//! converges), an invalid policy (a Warning Event names it), and /readyz before and after the
//! first sync. Real namespaces, real TCP connections.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use netpol_sandbox::{
    agent::agent_bin,
    apiserver::{ApiServer, Kind},
    netns, privileged, Cluster, Protocol, Shape,
};
use netpol_testkit::objects::pod;
use serde_json::{json, Value};

const PORTS: &[(&str, u16, &str)] = &[("http", 80, "TCP")];
const HEALTH: &str = "127.0.0.1:9790";
const TIMEOUT: Duration = Duration::from_secs(40);

/// The agent binary on the API source, in a node's network namespace; stopped, its pins and
/// files removed, on drop (its log printed when the test failed).
struct KubeAgent {
    child: Child,
    pin_path: PathBuf,
    status_file: PathBuf,
    log: PathBuf,
    keep_pins: bool,
}

impl KubeAgent {
    fn start(node: &str, kubeconfig: &Path) -> Self {
        Self::start_at(node, kubeconfig, &netpol_sandbox::host_bpffs().expect("bpffs").join(netns::unique("netpol-kube-")))
    }

    /// Starts an agent on a given pin path (adopting what an earlier agent left there).
    fn start_at(node: &str, kubeconfig: &Path, pin_path: &Path) -> Self {
        let bin = agent_bin();
        assert!(bin.is_file(), "no agent binary at {} (run `cargo xtask build`)", bin.display());
        let id = netns::unique("netpol-kube-");
        let pin_path = pin_path.to_path_buf();
        let status_file = std::env::temp_dir().join(format!("{id}.status.json"));
        let log = std::env::temp_dir().join(format!("{id}.log"));
        // As users run a node's agent: `ip netns exec` gives it the node's network namespace and
        // a mount namespace of its own (with a fresh /sys, and no bpffs on /sys/fs/bpf).
        let child = Command::new("ip")
            .args(["netns", "exec", node])
            .arg(&bin)
            .args(["--log-format", "text", "run", "--node-name", node, "--resync-seconds", "2", "--health-addr", HEALTH])
            .arg("--pin-path")
            .arg(&pin_path)
            .arg("--status-file")
            .arg(&status_file)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,netlink_packet_route=error")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the agent log"))
            .spawn()
            .expect("start the agent");
        Self { child, pin_path, status_file, log, keep_pins: false }
    }

    /// Kills the agent with SIGKILL, as a crash would, leaving its pins for a successor.
    fn crash(&mut self) {
        self.keep_pins = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn status(&self) -> Option<Value> {
        serde_json::from_slice(&std::fs::read(&self.status_file).ok()?).ok()
    }

    /// Waits until the agent has programmed `resource` at resourceVersion `rv` or later, with
    /// every local pod attached.
    fn wait_applied(&mut self, resource: &str, rv: u64) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(s) = self.status() {
                let seen = s["resource_versions"][resource].as_str().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                let attached = s["attached"].as_array().map_or(0, Vec::len);
                let local = s["local_pods"].as_array().map_or(0, Vec::len);
                if seen >= rv && attached == local && local > 0 {
                    return s;
                }
            }
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!("the agent exited ({exit}):\n{}", self.log_tail());
            }
            assert!(Instant::now() < deadline, "the agent did not apply {resource}@{rv}; status {:?}\n{}", self.status(), self.log_tail());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for KubeAgent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own child's pid, which has not been reaped.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep_pins {
            let _ = std::fs::remove_dir_all(&self.pin_path);
        }
        let _ = std::fs::remove_file(&self.status_file);
        if std::thread::panicking() {
            eprintln!("agent log ({}):\n{}", self.log.display(), self.log_tail());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// The HTTP status of GET `path` on the agent's health endpoint, from inside the node; `None`
/// while nothing answers.
fn health(node: &str, path: &str) -> Option<u16> {
    let mut s =
        netns::within(node, || TcpStream::connect_timeout(&HEALTH.parse().expect("literal"), Duration::from_millis(500))).ok()?.ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split(' ').nth(1)?.parse().ok()
}

fn wait_health(node: &str, path: &str, want: u16) {
    let deadline = Instant::now() + TIMEOUT;
    while health(node, path) != Some(want) {
        assert!(Instant::now() < deadline, "{path} never answered {want} (last {:?})", health(node, path));
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pod_object(c: &Cluster, name: &str, label: &str) -> Value {
    let p = c.pod("x", name);
    pod("x", name).label("pod", label).node(&c.nodes[0].netns).port("http", 80, "TCP").phase("Running").ip(&p.ipv4.to_string()).ip(&p.ipv6.to_string()).json()
}

/// A policy on x/a admitting pods labelled `pod: <from>`.
fn admit(from: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "admit", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": from}}}]}]},
    })
}

fn reaches_a(c: &Cluster, from: &str) -> bool {
    c.probe(("x", from), ("x", "a"), 80, Protocol::Tcp, false)
}

/// Asserts who reaches x/a: (pod, expected).
fn expect(c: &Cluster, step: &str, cases: &[(&str, bool)]) {
    for (from, want) in cases {
        assert_eq!(reaches_a(c, from), *want, "{step}: x/{from} -> x/a should be {}", if *want { "allowed" } else { "denied" });
    }
    eprintln!("{step}: {cases:?} as expected");
}

#[test]
fn enforcement_follows_the_api_through_changes_outages_and_expired_versions() {
    if !privileged() {
        return;
    }
    let (c, mut api) = cluster_and_api();
    let node = c.nodes[0].netns.clone();

    // Not ready before the first complete state: the API server is away when the agent starts.
    api.stop();
    let mut agent = KubeAgent::start(&node, &api.kubeconfig);
    wait_health(&node, "/healthz", 200);
    assert_eq!(health(&node, "/readyz"), Some(503), "not ready before the first sync");
    assert!(agent.status().is_none(), "nothing programmed without the API");
    eprintln!("readyz: 503 before the first sync");
    api.start().expect("restart");
    let rv = api.resource_version();
    let status = agent.wait_applied("pods", rv);
    assert_eq!(status["ready"], true);
    wait_health(&node, "/readyz", 200);
    eprintln!("readyz: 200 after the first sync");
    expect(&c, "no policy", &[("b", true), ("c", true)]);

    let rv = api.apply(admit("b")).expect("create");
    agent.wait_applied("networkpolicies", rv);
    expect(&c, "policy created", &[("b", true), ("c", false)]);

    let rv = api.apply(admit("c")).expect("update");
    agent.wait_applied("networkpolicies", rv);
    expect(&c, "policy updated", &[("b", false), ("c", true)]);

    let rv = api.apply(pod_object(&c, "b", "c")).expect("relabel");
    agent.wait_applied("pods", rv);
    expect(&c, "x/b relabelled pod=c", &[("b", true), ("c", true)]);

    let rv = api.apply(pod_object(&c, "b", "b")).expect("relabel back");
    agent.wait_applied("pods", rv);
    expect(&c, "x/b relabelled back", &[("b", false), ("c", true)]);

    let rv = api.delete(Kind::NetworkPolicy, "x", "admit").expect("delete");
    agent.wait_applied("networkpolicies", rv);
    expect(&c, "policy deleted", &[("b", true), ("c", true)]);

    let rv = api.apply(admit("b")).expect("create again");
    agent.wait_applied("networkpolicies", rv);
    expect(&c, "policy created again", &[("b", true), ("c", false)]);

    // The API server goes away: the last state stays enforced through several resyncs.
    api.stop();
    let syncs = agent.status().expect("status")["syncs"].as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_secs(5));
    let after = agent.status().expect("status");
    assert!(after["syncs"].as_u64().unwrap_or(0) > syncs, "the agent kept resyncing");
    assert!(agent.child.try_wait().expect("wait").is_none(), "the agent runs on");
    assert_eq!(health(&node, "/readyz"), Some(200), "still ready: the last state is programmed");
    expect(&c, "API server down", &[("b", true), ("c", false)]);

    // It comes back with a changed policy, and every resourceVersion the agent holds expired:
    // the watches get 410, the agent lists again and converges.
    let rv = api.apply(admit("c")).expect("change while down");
    api.expire_all();
    let requests_before = api.requests().len();
    api.start().expect("restart");
    agent.wait_applied("networkpolicies", rv);
    expect(&c, "API server back, versions expired", &[("b", false), ("c", true)]);
    let relisted = api.requests()[requests_before..]
        .iter()
        .any(|r| r.starts_with("GET /apis/networking.k8s.io/v1/networkpolicies") && !r.contains("watch=true"));
    assert!(api.expired_watches() > 0, "the agent watched from an expired version: {:?}", &api.requests()[requests_before..]);
    assert!(relisted, "and then listed again: {:?}", &api.requests()[requests_before..]);
    eprintln!("after the restart: {} watches refused with 410, then listed again", api.expired_watches());

    // An invalid policy: left out, the rest still enforced, and one Warning Event names it.
    let bad = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "bad-cidr", "namespace": "x"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "198.18.0.0/33"}}]}]},
    });
    let rv = api.apply(bad).expect("bad policy");
    let status = agent.wait_applied("networkpolicies", rv);
    assert!(status["problems"].as_array().expect("problems").iter().any(|p| p["object"] == "NetworkPolicy x/bad-cidr"), "{status}");
    expect(&c, "invalid policy ignored", &[("b", false), ("c", true)]);
    let deadline = Instant::now() + TIMEOUT;
    let named = |e: &Value| e["involvedObject"]["name"] == "bad-cidr";
    while !api.events().iter().any(named) {
        assert!(Instant::now() < deadline, "no Event for x/bad-cidr: {:?}", api.events());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Several resyncs later there is still one Event for the one problem.
    std::thread::sleep(Duration::from_secs(3));
    let events: Vec<Value> = api.events().into_iter().filter(named).collect();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["involvedObject"]["kind"], "NetworkPolicy");
    assert_eq!(e["involvedObject"]["namespace"], "x");
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["reason"], "InvalidNetworkPolicy");
    let message = e["message"].as_str().unwrap_or_default();
    assert!(message.contains("ipBlock.cidr") && message.contains("198.18.0.0/33"), "{message}");
    eprintln!("event: {message}");
}

/// A node with pods x/a, x/b, x/c (servers on port 80) and a fake API server in the node's
/// namespace that knows them.
fn cluster_and_api() -> (Cluster, ApiServer) {
    let mut c = Cluster::new(&[Shape::Bridge]).expect("node");
    c.namespace("x", &[]).expect("ns");
    for p in ["a", "b", "c"] {
        c.add_pod(0, "x", p, &[("pod", p)], PORTS).expect("pod");
    }
    let api = ApiServer::start_in(&c.nodes[0].netns).expect("fake API server");
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})).expect("namespace");
    for p in ["a", "b", "c"] {
        api.apply(pod_object(&c, p, p)).expect("pod");
    }
    (c, api)
}

#[test]
fn a_successor_programs_nothing_until_every_resource_is_listed() {
    if !privileged() {
        return;
    }
    let (c, api) = cluster_and_api();
    let node = c.nodes[0].netns.clone();
    let rv = api.apply(admit("b")).expect("policy");
    let mut first = KubeAgent::start(&node, &api.kubeconfig);
    first.wait_applied("networkpolicies", rv);
    expect(&c, "first agent", &[("b", true), ("c", false)]);
    let pin = first.pin_path.clone();
    first.crash();

    // The successor can list pods and namespaces but not policies: programming what it has
    // would drop the policy and open x/a to everyone.
    api.set_unavailable(Kind::NetworkPolicy, true);
    let mut successor = KubeAgent::start_at(&node, &api.kubeconfig, &pin);
    drop(first);
    wait_health(&node, "/healthz", 200);
    std::thread::sleep(Duration::from_secs(4));
    assert!(successor.status().is_none(), "nothing programmed from a partial view");
    assert_eq!(health(&node, "/readyz"), Some(503), "not ready on a partial view");
    expect(&c, "policies unlistable", &[("b", true), ("c", false)]);

    // Policies come back, changed meanwhile: the successor converges and is ready.
    let rv = api.apply(admit("c")).expect("change");
    api.set_unavailable(Kind::NetworkPolicy, false);
    successor.wait_applied("networkpolicies", rv);
    wait_health(&node, "/readyz", 200);
    expect(&c, "policies listed", &[("b", false), ("c", true)]);
}
