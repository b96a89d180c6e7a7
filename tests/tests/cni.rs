//! New pods' first packets. With the CNI chain plugin (`netpol-agent cni`, installed as
//! `netpol-cni`), a new pod's CNI ADD returns only once the agent enforces the pod's policies on
//! its veth, so the pod's very first packet obeys them — on real namespaces, with the plugin run
//! as the container runtime runs it (CNI_* environment, network configuration with the network
//! plugin's result on stdin). Without it, a veth that appears while the agent runs is held
//! closed until its pod is known (for a bounded time).

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use netpol_sandbox::{agent::agent_bin, netns, privileged, Cluster, Pod, Shape};
use serde_json::{json, Value};

const PORTS: &[(&str, u16, &str)] = &[("http", 80, "TCP")];

/// Pods labelled `pod: new` may send only to x/a's TCP 80, and take connections only from x/a.
const NEW_PODS: [&str; 2] = [
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: new-egress, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: new}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {matchLabels: {pod: a}}}], ports: [{protocol: TCP, port: 80}]}]\n",
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: new-ingress, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: new}}\n  policyTypes: [Ingress]\n  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]\n",
];

/// One bridged node with x/a and x/b (servers on TCP 80) and the policies of [`NEW_PODS`].
fn two_pods_and_the_new_pods_policies() -> Cluster {
    let mut c = Cluster::new(&[Shape::Bridge]).expect("node");
    c.namespace("x", &[]).expect("ns");
    for p in ["a", "b"] {
        c.add_pod(0, "x", p, &[("pod", p)], PORTS).expect("pod");
    }
    c.set_policies(&NEW_PODS.map(String::from)).expect("write");
    c
}

/// A link of the node's own made while the agent runs: a veth to a namespace of its own, with
/// addresses on both ends and a server on the far end's TCP 80. Removed on drop.
struct NodeLink {
    far: String,
    servers: Option<netpol_sandbox::servers::Servers>,
}

impl NodeLink {
    const NEAR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 19, 250, 1);
    const FAR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 19, 250, 2);

    fn new(node: &str) -> Self {
        let far = netns::unique("npl");
        netns::ip(&["netns", "add", &far]).expect("netns");
        // From here on, Drop deletes the namespace whatever fails next.
        let mut link = Self { far: far.clone(), servers: None };
        let near_if = format!("lnk{:08x}", netpol_sandbox::node::random_u32());
        let (near, far_addr) = (format!("{}/30", Self::NEAR), format!("{}/30", Self::FAR));
        for args in [
            vec!["-n", node, "link", "add", &near_if, "type", "veth", "peer", "name", "eth0", "netns", &far],
            vec!["-n", node, "addr", "add", &near, "dev", &near_if],
            vec!["-n", &far, "addr", "add", &far_addr, "dev", "eth0"],
            vec!["-n", &far, "link", "set", "lo", "up"],
            vec!["-n", &far, "link", "set", "eth0", "up"],
            vec!["-n", node, "link", "set", &near_if, "up"],
        ] {
            netns::ip(&args).expect("set up the link");
        }
        link.servers = Some(netpol_sandbox::servers::start(&far, &[80], &[], "far\n").expect("server"));
        link
    }
}

impl Drop for NodeLink {
    fn drop(&mut self) {
        self.servers = None;
        let _ = netns::ip(&["netns", "del", &self.far]);
    }
}

/// A socket path of this test run's own.
fn socket_path() -> PathBuf {
    std::env::temp_dir().join(format!("{}.cni.sock", netns::unique("netpol-test-")))
}

/// Runs the plugin for `command` as a container runtime would, for pod `namespace/name` whose
/// network plugin gave it `pod`'s addresses. The exit code and the JSON printed (Null if none).
fn run_plugin(command: &str, socket: &Path, pod: &Pod, timeout_seconds: f64) -> (i32, Value) {
    run_plugin_binary(&agent_bin(), &["cni"], command, socket, pod, timeout_seconds)
}

/// [`run_plugin`] with a given executable and arguments (the installed `netpol-cni` takes none).
fn run_plugin_binary(bin: &Path, args: &[&str], command: &str, socket: &Path, pod: &Pod, timeout_seconds: f64) -> (i32, Value) {
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "sandbox",
        "type": "netpol-cni",
        "socket": socket,
        "timeoutSeconds": timeout_seconds,
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": netns::path(&pod.netns)}],
            "ips": [
                {"address": format!("{}/24", pod.ipv4), "interface": 0},
                {"address": format!("{}/64", pod.ipv6), "interface": 0},
            ],
        },
    });
    let mut child = Command::new(bin)
        .args(args)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("sandbox-{}", pod.name))
        .env("CNI_NETNS", netns::path(&pod.netns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}", pod.namespace, pod.name))
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run the plugin");
    child.stdin.take().expect("stdin").write_all(conf.to_string().as_bytes()).expect("write the configuration");
    let out = child.wait_with_output().expect("wait for the plugin");
    let printed = String::from_utf8_lossy(&out.stdout);
    (out.status.code().unwrap_or(-1), serde_json::from_str(printed.trim()).unwrap_or(Value::Null))
}

/// Whether a TCP connection from `netns` to `addr`:80 opens within 400 ms: below the first SYN
/// retransmission (1 s), so it says what happened to the very first SYN.
fn first_syn_opens(netns: &str, addr: IpAddr) -> bool {
    netns::within(netns, || TcpStream::connect_timeout(&SocketAddr::new(addr, 80), Duration::from_millis(400)).is_ok()).expect("enter netns")
}

#[test]
fn a_new_pods_first_packets_obey_its_policies_once_cni_add_returns() {
    if !privileged() {
        return;
    }
    let mut c = two_pods_and_the_new_pods_policies();
    let socket = socket_path();
    // The node's CNI directories, with the network plugin's configuration in place.
    let cni_dir = socket.with_extension("dirs");
    let (bin_dir, conf_dir) = (cni_dir.join("bin"), cni_dir.join("net.d"));
    std::fs::create_dir_all(&bin_dir).expect("bin dir");
    std::fs::create_dir_all(&conf_dir).expect("conf dir");
    let flannel = r#"{"name": "cbr0", "cniVersion": "0.3.1", "plugins": [{"type": "flannel"}, {"type": "portmap"}]}"#;
    std::fs::write(conf_dir.join("10-flannel.conflist"), flannel).expect("write conf");
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    let (socket_arg, bin_arg, conf_arg) = (path(&socket), path(&bin_dir), path(&conf_dir));
    c.start_agent(0, &["--cni-socket", &socket_arg, "--cni-bin-dir", &bin_arg, "--cni-conf-dir", &conf_arg]).expect("agent");
    c.sync().expect("sync");
    let chain = || -> Vec<String> {
        let conf: Value = serde_json::from_str(&std::fs::read_to_string(conf_dir.join("10-flannel.conflist")).unwrap_or_default()).unwrap_or(Value::Null);
        conf["plugins"].as_array().into_iter().flatten().filter_map(|p| Some(p["type"].as_str()?.to_string())).collect()
    };
    assert_eq!(chain(), ["flannel", "portmap", "netpol-cni"], "the agent chains its plugin last");
    let plugin = bin_dir.join("netpol-cni");

    // The pod is scheduled (the agent knows its labels, not its addresses), then its network
    // plugin wires it, then the runtime runs the chain: netpol-cni last.
    c.schedule_pod(0, "x", "new", &[("pod", "new")], PORTS).expect("schedule");
    c.sync().expect("sync");
    let pod = c.wire_pod("x", "new").expect("wire");
    let started = Instant::now();
    let (code, result) = run_plugin_binary(&plugin, &[], "ADD", &socket, &pod, 10.0);
    let took = started.elapsed();
    assert_eq!(code, 0, "CNI ADD failed: {result}\n{}", c.agent(0).log_tail());
    assert_eq!(result["ips"][0]["address"], format!("{}/24", pod.ipv4), "the network plugin's result passes through: {result}");
    assert_eq!(result["cniVersion"], "1.0.0");

    // The moment ADD returns: the first SYN to a peer the policy does not allow is dropped,
    // the allowed one opens.
    let (a, b) = (c.pod("x", "a").ipv4.into(), c.pod("x", "b").ipv4.into());
    let to_b = first_syn_opens(&pod.netns, b);
    let to_a = first_syn_opens(&pod.netns, a);
    eprintln!("CNI ADD took {took:?}; then x/new -> x/b opens {to_b}, x/new -> x/a opens {to_a}");
    assert!(!to_b, "x/new's first connection to x/b opened: its egress policy was not enforced when ADD returned");
    assert!(to_a, "x/new's connection to x/a did not open");

    // Its containers start: ingress is enforced too.
    c.start_servers("x", "new").expect("servers");
    let new_addr = pod.ipv4.into();
    let from_b = first_syn_opens(&c.pod("x", "b").netns, new_addr);
    let from_a = first_syn_opens(&c.pod("x", "a").netns, new_addr);
    assert!(!from_b && from_a, "into x/new: from x/b opens {from_b} (must not), from x/a opens {from_a} (must)");

    let status = c.agent(0).status_after_two_syncs().expect("status");
    let drops = status["packets"]["x/new"]["egress"]["drop_no_rule"].as_u64().unwrap_or(0);
    assert!(drops >= 1, "x/new's dropped SYN is not counted: {}", status["packets"]);
    assert_eq!(status["enforcing"]["x/new"].as_str(), Some(pod.host_if.as_str()), "{}", status["enforcing"]);


    // DEL: the agent forgets the addresses; the pod stays enforced while its manifest lasts.
    let (code, _) = run_plugin_binary(&plugin, &[], "DEL", &socket, &pod, 2.0);
    assert_eq!(code, 0, "CNI DEL must succeed");

    // Flannel restarting rewrites its configuration: the agent chains its plugin again.
    std::fs::write(conf_dir.join("10-flannel.conflist"), flannel).expect("rewrite conf");
    let deadline = Instant::now() + Duration::from_secs(5);
    while chain().len() != 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(chain(), ["flannel", "portmap", "netpol-cni"], "chained again after the rewrite");
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_dir_all(&cni_dir);
}

#[test]
fn cni_add_fails_until_the_agent_can_enforce_the_pod() {
    if !privileged() {
        return;
    }
    let mut c = two_pods_and_the_new_pods_policies();
    let socket = socket_path();

    // No agent has ever run on the node (no socket): the pod passes, unenforced, so a node
    // without netpol still starts pods.
    let ghost = c.nodes[0].add_pod("x", "ghost").expect("wire");
    let (code, result) = run_plugin("ADD", &socket, &ghost, 1.0);
    assert_eq!(code, 0, "{result}");
    // An agent's socket, but no agent listening (it is restarting): ADD fails with "try again
    // later" (11), and the runtime retries.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    let (code, err) = run_plugin("ADD", &socket, &ghost, 1.0);
    assert_eq!((code, err["code"].as_u64()), (1, Some(11)), "{err}");

    // The agent runs, but its source does not know the pod yet (the API lags): ADD waits, then
    // fails the same way, saying why.
    c.start_agent(0, &["--cni-socket", socket.to_str().expect("utf-8 path")]).expect("agent");
    c.sync().expect("sync");
    let (code, err) = run_plugin("ADD", &socket, &ghost, 1.5);
    assert_eq!((code, err["code"].as_u64()), (1, Some(11)), "{err}");
    assert!(err["details"].as_str().is_some_and(|d| d.contains("not enforced")), "{err}");

    // The pod appears in the source: the runtime's retry succeeds, and the pod is enforced.
    c.schedule_pod(0, "x", "ghost", &[("pod", "new")], PORTS).expect("schedule");
    let (code, result) = run_plugin("ADD", &socket, &ghost, 10.0);
    assert_eq!(code, 0, "retry failed: {result}");
    let _ = std::fs::remove_file(&socket);
    let to_b = first_syn_opens(&ghost.netns, c.pod("x", "b").ipv4.into());
    let to_a = first_syn_opens(&ghost.netns, c.pod("x", "a").ipv4.into());
    assert!(!to_b && to_a, "after the retry: x/ghost -> x/b opens {to_b} (must not), -> x/a opens {to_a} (must)");
}

#[test]
fn without_the_plugin_a_new_veth_is_held_closed_until_its_pod_is_known() {
    if !privileged() {
        return;
    }
    let mut c = two_pods_and_the_new_pods_policies();
    c.start_agent(0, &["--hold-new-interfaces", "5"]).expect("agent");
    c.sync().expect("sync");
    let (a, b) = (c.pod("x", "a").ipv4.into(), c.pod("x", "b").ipv4.into());

    // A pod wired while the agent runs sends the moment its interface is up, before the agent
    // knows it: held closed, nothing opens (not even what its policy will allow).
    c.schedule_pod(0, "x", "late", &[("pod", "new")], PORTS).expect("schedule");
    let late = c.wire_pod("x", "late").expect("wire");
    let to_b = first_syn_opens(&late.netns, b);
    let to_a = first_syn_opens(&late.netns, a);
    assert!(!to_b && !to_a, "held: x/late -> x/b opens {to_b}, -> x/a opens {to_a} (neither may)");
    // Its addresses are published: its policy applies.
    c.publish_addresses("x", "late").expect("publish");
    c.sync().expect("sync");
    let to_b = first_syn_opens(&late.netns, b);
    let to_a = first_syn_opens(&late.netns, a);
    assert!(!to_b && to_a, "known: x/late -> x/b opens {to_b} (must not), -> x/a opens {to_a} (must)");

    // A veth of the node's own, added while the agent runs (an underlay link to another node,
    // say): released as soon as it has an address, long before the limit.
    let link = NodeLink::new(&c.nodes[0].netns);
    let started = Instant::now();
    let mut opened = false;
    while !opened && started.elapsed() < Duration::from_secs(3) {
        opened = netns::within(&c.nodes[0].netns, || TcpStream::connect_timeout(&SocketAddr::new(NodeLink::FAR.into(), 80), Duration::from_millis(200)).is_ok())
            .expect("enter netns");
    }
    assert!(opened, "the node's own new link still closed after {:?}\n{}", started.elapsed(), c.agent(0).log_tail());
    eprintln!("the node's new link carried a connection {:?} after it was made", started.elapsed());
    drop(link);

    // A veth no pod claims is released after the limit, and then passes.
    let stray = c.nodes[0].add_pod("x", "stray").expect("wire");
    assert!(!first_syn_opens(&stray.netns, b), "held at first");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut opened = false;
    while !opened && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        opened = first_syn_opens(&stray.netns, b);
    }
    assert!(opened, "a veth no pod claims is released after --hold-new-interfaces\n{}", c.agent(0).log_tail());
}
