//! netpol's image in a real container runtime (podman with runc), run exactly as
//! `deploy/daemonset.yaml` declares it (read from the file: init container, securityContext,
//! capabilities, host network, hostPath volumes with their mountPropagation, env, args, probes)
//! on a sandbox node whose mount namespace is like a kind node's: no bpffs mounted, `/` shared.
//! The agent watches the sandbox's API server. Shown with real connections: the node's pods are
//! enforced; the agent's container killed and started again as kubelet does, then upgraded to a
//! second image with the policy changed meanwhile, with kubelet's probes and a prober of denied
//! flows running throughout: nothing denied opens, the open allowed connection survives, the
//! pins are the node's; then the documented removal (`deploy/uninstall.yaml`) leaves no program,
//! link, pin, CNI entry or socket, and a new pod's network is set up again.

use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use k8s_openapi::api::core::v1::PodSpec;
use netpol_sandbox::{
    agent::agent_bin,
    apiserver::ApiServer,
    cni_runtime::{self, ChainOutcome, NETWORK_PLUGIN},
    kubelet::{Kubelet, PodMeta, RunningContainer},
    netns,
    node_fs::NodeFs,
    privileged,
    Cluster, Protocol, Shape,
};
use netpol_testkit::{deploy, objects::pod};
use serde_json::{json, Value};

/// x/a serves 80 (admitted from some pods) and 81 (admitted from none).
const PORTS: &[(&str, u16, &str)] = &[("http", 80, "TCP"), ("admin", 81, "TCP")];
const TIMEOUT: Duration = Duration::from_secs(60);

/// The pod template of DaemonSet `name` of `deploy/`.
fn daemonset_pod(name: &str) -> (PodMeta, PodSpec) {
    let ds = deploy::daemonset(name);
    let meta = PodMeta { name: format!("{name}-sandbox"), namespace: ds.metadata.namespace.clone().unwrap_or_default(), kubeconfig: None };
    (meta, ds.spec.template.spec.expect("pod spec"))
}

/// The spec with every container's image set to `image` (`kubectl set image`).
fn with_image(spec: &PodSpec, image: &str) -> PodSpec {
    let mut spec = spec.clone();
    for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
        c.image = Some(image.to_string());
    }
    spec
}

fn pod_object(c: &Cluster, name: &str) -> Value {
    let p = c.pod("x", name);
    pod("x", name).label("pod", name).node(&c.nodes[0].netns).phase("Running").ip(&p.ipv4.to_string()).ip(&p.ipv6.to_string()).json()
}

/// x/a admits the pods named in `from` on port 80, and nothing else.
fn admit(from: &[&str]) -> Value {
    let peers: Vec<Value> = from.iter().map(|p| json!({"podSelector": {"matchLabels": {"pod": p}}})).collect();
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "admit", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": peers, "ports": [{"port": 80}]}]},
    })
}

/// Whether a TCP connection from `netns` to `addr` opens within 100 ms (a dropped SYN is retried
/// only after a second; an admitted one on the sandbox's veths is answered in well under 1 ms).
fn connects(netns: &str, addr: SocketAddr) -> bool {
    netns::within(netns, || TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()).unwrap_or(false)
}

/// Probes the flows a policy denies, over and over, from a thread of its own, counting every
/// one that opened.
struct DeniedProber {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicUsize>,
    tried: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DeniedProber {
    fn start(flows: Vec<(String, SocketAddr)>) -> Self {
        let (stop, opened, tried) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let thread = {
            let (stop, opened, tried) = (stop.clone(), opened.clone(), tried.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for (from, addr) in &flows {
                        if connects(from, *addr) {
                            opened.fetch_add(1, Ordering::Relaxed);
                        }
                        tried.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        Self { stop, opened, tried, thread: Some(thread) }
    }

    /// Probes made so far.
    fn tried(&self) -> usize {
        self.tried.load(Ordering::Relaxed)
    }

    /// Stops probing: (opened, tried).
    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (self.opened.load(Ordering::Relaxed), self.tried.load(Ordering::Relaxed))
    }
}

impl Drop for DeniedProber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn reaches(c: &Cluster, from: &str, port: u16) -> bool {
    c.probe(("x", from), ("x", "a"), port, Protocol::Tcp, false)
}

/// Waits until `from` reaches x/a on `port` as `want` says.
fn wait_reaches(c: &Cluster, from: &str, port: u16, want: bool, what: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while reaches(c, from, port) != want {
        assert!(Instant::now() < deadline, "{what}: x/{from} -> x/a:{port} never became {}", if want { "allowed" } else { "denied" });
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The ids of the TCX programs on every interface of the node.
fn node_programs(node: &NodeFs) -> Vec<u32> {
    let names: Vec<String> = std::fs::read_dir(node.path("/sys/class/net"))
        .expect("the node's interfaces")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let mut ids = Vec::new();
    for name in names {
        for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
            let found = netns::within(&node.netns, || SchedClassifier::query_tcx(&name, direction)).expect("enter the node");
            ids.extend(found.map(|(_, programs)| programs.into_iter().map(|p| p.id()).collect::<Vec<_>>()).unwrap_or_default());
        }
    }
    ids
}

fn have_podman() -> bool {
    let found = std::process::Command::new("podman").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: podman is not installed (`cargo xtask setup` installs it)");
    }
    found
}

fn logs_say(kubelet: &Kubelet, c: &RunningContainer, what: &str) -> bool {
    kubelet.logs(&c.id).contains(what)
}

#[test]
fn the_daemonset_in_a_real_container_runtime_enforces_survives_a_kill_and_an_upgrade_and_uninstalls_cleanly() {
    if !privileged() || !have_podman() {
        return;
    }
    let mut c = Cluster::new(&[Shape::Bridge]).expect("node");
    c.namespace("x", &[]).expect("ns");
    for p in ["a", "b", "c"] {
        c.add_pod(0, "x", p, &[("pod", p)], PORTS).expect("pod");
    }
    let node_name = c.nodes[0].netns.clone();
    let mut kubelet = Kubelet::new(NodeFs::new(&node_name).expect("the node's mount namespace")).expect("kubelet");
    cni_runtime::install_network_plugin(kubelet.node()).expect("network plugin");
    let api = ApiServer::start_in(&node_name).expect("API server");
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"kubernetes.io/metadata.name": "x"}}})).expect("ns");
    for p in ["a", "b", "c"] {
        api.apply(pod_object(&c, p)).expect("pod");
    }
    api.apply(admit(&["b"])).expect("policy");

    let (mut meta, spec) = daemonset_pod("netpol-agent");
    meta.kubeconfig = Some(api.kubeconfig.clone());
    let image = spec.containers[0].image.clone().expect("the agent's image");
    kubelet.build_image(&image, &agent_bin(), &deploy::dir().join("Dockerfile")).expect("build the image");

    // The pod starts: the init container gives the node a bpffs, the agent pins into it.
    assert!(!kubelet.node().is_bpffs("/sys/fs/bpf"), "the node starts like a kind node, with no bpffs");
    kubelet.run_init_containers(&meta, &spec).expect("init containers");
    assert!(kubelet.node().is_bpffs("/sys/fs/bpf"), "the init container mounted a bpffs on the node's /sys/fs/bpf");
    let mut agent = kubelet.start_container(&meta, &spec, "agent").expect("agent container");
    kubelet.wait_ready(&agent, TIMEOUT).expect("ready");
    let pins = kubelet.node().path("/sys/fs/bpf/netpol");
    assert!(pins.join("links").is_dir() && pins.join("NETPOL_POLICY").exists(), "the agent pinned on the node's bpffs");
    let dev = |p: &Path| std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(p).expect("stat"));
    assert_ne!(dev(&kubelet.node().path("/sys/fs/bpf")), dev(Path::new("/sys/fs/bpf")), "the node's bpffs, not the host's");
    assert_eq!(cni_runtime::chain(kubelet.node()).expect("chain"), [NETWORK_PLUGIN, "netpol-cni"], "the CNI plugin is chained last");

    // Enforced: x/a admits x/b on 80, nobody on 81.
    for (from, port, want) in [("b", 80, true), ("c", 80, false), ("b", 81, false), ("c", 81, false)] {
        assert_eq!(reaches(&c, from, port), want, "x/{from} -> x/a:{port}");
    }
    let mut held = c.open_connection(("x", "b"), ("x", "a")).expect("x/b -> x/a:80 opens");
    let denied = DeniedProber::start(
        ["b", "c"].iter().map(|p| (c.pod("x", p).netns.clone(), SocketAddr::new(c.pod("x", "a").ipv4.into(), 81))).collect(),
    );

    // Killed, and started again as kubelet restarts a container: a new container, same spec.
    kubelet.kill(&mut agent).expect("kill");
    let probes_at_kill = denied.tried();
    assert_ne!(kubelet.exit_code(&agent.id).expect("exit code"), 0, "killed");
    std::thread::sleep(Duration::from_secs(1));
    assert!(held.works(), "the open connection works while no agent runs");
    assert!(!reaches(&c, "c", 80), "x/c is still denied while no agent runs");
    assert!(pins.join("NETPOL_POLICY").exists(), "the pins outlive the container");
    assert!(denied.tried() > probes_at_kill, "denied flows were probed while no agent ran");
    let first = agent;
    let mut agent = kubelet.start_container(&meta, &spec, "agent").expect("restart");
    kubelet.wait_ready(&agent, TIMEOUT).expect("ready after the restart");
    assert!(logs_say(&kubelet, &agent, r#""origin":"Pinned""#), "the restarted agent opens its pinned programs:\n{}", kubelet.logs(&agent.id));
    assert!(held.works(), "the open connection survives the restart");
    assert!(reaches(&c, "b", 80) && !reaches(&c, "c", 80), "the same policy after the restart");

    // Upgraded: the DaemonSet's image set to a second build; the pod is replaced (a graceful
    // stop, a new pod whose init container finds the bpffs there); the policy changes while no
    // agent runs, and the pins are an earlier build's.
    let second = format!("{image}-upgrade");
    kubelet.build_image(&second, &agent_bin(), &deploy::dir().join("Dockerfile")).expect("build the second image");
    kubelet.stop(&mut agent, &spec).expect("graceful stop");
    let probes_at_stop = denied.tried();
    assert_eq!(kubelet.exit_code(&agent.id).expect("exit code"), 0, "the agent stops cleanly on SIGTERM:\n{}", kubelet.logs(&agent.id));
    let programs = pins.join("programs");
    let ours = std::fs::read_dir(&programs).expect("program pins").next().expect("one build").expect("entry").path();
    std::fs::rename(&ours, programs.join("0000000000000000")).expect("pose as an earlier build");
    api.apply(admit(&["b", "c"])).expect("policy change");
    assert!(!reaches(&c, "c", 80), "nothing changes while no agent runs");
    assert!(denied.tried() > probes_at_stop, "denied flows were probed while no agent ran");
    let upgraded_spec = with_image(&spec, &second);
    kubelet.run_init_containers(&meta, &upgraded_spec).expect("init containers of the new pod");
    let mut upgraded = kubelet.start_container(&meta, &upgraded_spec, "agent").expect("upgraded agent");
    kubelet.wait_ready(&upgraded, TIMEOUT).expect("the upgraded agent is ready");
    assert!(logs_say(&kubelet, &upgraded, r#""origin":"Loaded""#), "another build's pins: it loads its own:\n{}", kubelet.logs(&upgraded.id));
    wait_reaches(&c, "c", 80, true, "the upgraded agent converges on the changed policy");
    assert!(held.works(), "the open connection survives the upgrade");
    assert!(!programs.join("0000000000000000").exists(), "the earlier build's program pins are gone");

    let (opened, tried) = denied.finish();
    eprintln!("denied flows probed {tried} times through a kill, a restart and an upgrade: {opened} opened");
    assert_eq!(opened, 0, "a flow every policy denied opened while the agent was killed, restarted or upgraded");
    for (which, container) in [("first", &first), ("restarted", &agent), ("upgraded", &upgraded)] {
        assert_eq!(container.liveness_failures_after_ready(), 0, "the {which} agent's liveness probe failed");
    }

    // The documented removal: the DaemonSet deleted, the uninstaller run until ready, deleted.
    let attached = node_programs(kubelet.node());
    assert!(attached.len() >= 6, "programs on the node's interfaces: {attached:?}");
    kubelet.stop(&mut upgraded, &upgraded_spec).expect("delete the DaemonSet");
    let (un_meta, un_spec) = daemonset_pod("netpol-uninstall");
    let mut uninstall = kubelet.start_container(&un_meta, &un_spec, "uninstall").expect("uninstaller");
    kubelet.wait_ready(&uninstall, TIMEOUT).expect("the uninstaller's readiness: the node is clean");
    kubelet.stop(&mut uninstall, &un_spec).expect("delete the uninstaller");
    assert!(node_programs(kubelet.node()).is_empty(), "no program on any interface of the node");
    let loaded: Vec<u32> = aya::programs::loaded_programs().filter_map(|p| Some(p.ok()?.id())).collect();
    assert!(attached.iter().all(|id| !loaded.contains(id)), "netpol's programs are unloaded");
    assert!(!pins.exists(), "no pins");
    assert_eq!(cni_runtime::chain(kubelet.node()).expect("chain"), [NETWORK_PLUGIN], "no CNI entry");
    assert!(!kubelet.node().path("/opt/cni/bin/netpol-cni").exists(), "no CNI plugin binary");
    assert!(!kubelet.node().path("/run/netpol/cni.sock").exists(), "no socket");

    // Pods start again: a new pod's network is set up through the node's chain, unenforced.
    c.schedule_pod(0, "x", "d", &[("pod", "d")], PORTS).expect("schedule");
    let d = c.wire_pod("x", "d").expect("wire");
    match cni_runtime::add(kubelet.node(), &d).expect("CNI ADD") {
        ChainOutcome::Added(result) => assert_eq!(result["ips"][0]["address"], format!("{}/24", d.ipv4), "{result}"),
        failed => panic!("a new pod cannot start after the removal: {failed:?}"),
    }
    assert!(reaches(&c, "c", 81), "nothing is enforced any more");
}
