//! Survival of enforcement across agent crashes, restarts with changes made meanwhile, clean
//! stops, upgrades and uninstalling — on real namespaces with real connections. The agent runs
//! as users run a node's agent (`ip netns exec`: the node's network namespace and a mount
//! namespace of its own, whose fresh /sys has no bpffs): its pins must land on the node's bpffs
//! all the same, and outlive it.

use std::time::{Duration, Instant};

use netpol_sandbox::{agent::agent_bin, privileged, Cluster, Protocol, Shape};

const PORTS: &[(&str, u16, &str)] = &[("http", 80, "TCP"), ("dns", 53, "UDP")];

fn admit(pod: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: admit, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: {pod}}}}}}}]}}]\n"
    )
}

fn three_pods() -> Cluster {
    let mut c = Cluster::new(&[Shape::Bridge]).expect("node");
    c.namespace("x", &[]).expect("ns");
    for p in ["a", "b", "c"] {
        c.add_pod(0, "x", p, &[("pod", p)], PORTS).expect("pod");
    }
    c
}

/// Three pods with x/a admitting only x/b, the agent enforcing it, and an open connection from
/// x/b to x/a; with the agent's pin path.
fn enforcing_with_an_open_connection() -> (Cluster, std::path::PathBuf, netpol_sandbox::cluster::OpenConnection) {
    let mut c = three_pods();
    c.set_policies(&[admit("b")]).expect("write");
    c.start_agent(0, &[]).expect("agent");
    c.sync().expect("sync");
    let pin = c.agent(0).pin_path.clone();
    let held = c.open_connection(("x", "b"), ("x", "a")).expect("the connection opens");
    (c, pin, held)
}

fn reaches_a(c: &Cluster, from: &str) -> bool {
    c.probe(("x", from), ("x", "a"), 80, Protocol::Tcp, false)
}

#[test]
fn a_killed_agent_leaves_enforcement_and_its_successor_adopts_it_and_converges() {
    if !privileged() {
        return;
    }
    let (mut c, pin, mut held) = enforcing_with_an_open_connection();

    // Crash: SIGKILL. Denied stays denied, allowed stays allowed, the open connection works.
    c.agent(0).keep_pins();
    c.agent(0).kill();
    assert!(!reaches_a(&c, "c"), "after the crash x/c is still denied");
    assert!(reaches_a(&c, "b"), "after the crash x/b is still admitted");
    assert!(held.works(), "the open connection survives the crash");

    // Change the policy while no agent runs, then start a successor on the same pins.
    c.drop_agent(0);
    c.set_policies(&[admit("c")]).expect("write");
    assert!(!reaches_a(&c, "c"), "nothing changes while no agent runs");
    let started = Instant::now();
    c.start_agent_at(0, &pin, &[]).expect("successor");
    c.sync().expect("the successor converges");
    eprintln!("successor converged in {:?} (a figure of the bench: restart_converge_seconds)", started.elapsed());
    let log = c.agent(0).log_tail();
    assert!(log.contains("origin=Pinned"), "a successor of the same build opens the pinned programs, no new load:\n{log}");
    assert!(reaches_a(&c, "c"), "the new policy admits x/c");
    assert!(!reaches_a(&c, "b"), "and no longer x/b");
    assert!(!held.works(), "the connection the new policy withdraws is cut");

    // Adoption attached nothing twice: one pinned link per pod and direction, one exit link per
    // interface of the node that is not a pod's veth (the bridge).
    assert_eq!(pinned_links(&pin), (6, 1), "3 pods x 2 directions, 1 exit");
}

#[test]
fn an_agent_that_finds_no_bpffs_of_the_node_refuses_to_start_and_chains_no_cni_plugin() {
    if !privileged() {
        return;
    }
    let mut c = three_pods();
    c.set_policies(&[admit("b")]).expect("write");
    // A pin path on no bpffs, neither in the agent's mount namespace nor in PID 1's.
    let pin = std::env::temp_dir().join(netpol_sandbox::netns::unique("netpol-no-bpffs-"));
    let conf_dir = std::env::temp_dir().join(netpol_sandbox::netns::unique("netpol-cni-conf-"));
    std::fs::create_dir_all(&conf_dir).expect("conf dir");
    let conflist = conf_dir.join("10-flannel.conflist");
    let flannel = r#"{"cniVersion":"1.0.0","name":"cbr0","plugins":[{"type":"bridge"}]}"#;
    std::fs::write(&conflist, flannel).expect("conflist");
    let socket = conf_dir.join("cni.sock");
    let args = ["--cni-socket", socket.to_str().expect("utf-8"), "--cni-conf-dir", conf_dir.to_str().expect("utf-8")];
    c.start_agent_at(0, &pin, &args).expect("start");
    let exited = c.agent(0).wait_exit(Duration::from_secs(20)).expect("the agent refuses to start");
    let log = c.agent(0).log_tail();
    assert!(!exited.success(), "it exits with an error:\n{log}");
    assert!(log.contains("no bpffs of the node") && log.contains("--ephemeral-pins"), "it says why and what to do:\n{log}");
    assert_eq!(std::fs::read_to_string(&conflist).expect("conflist"), flannel, "no CNI plugin chained");
    assert!(!socket.exists(), "no CNI socket");
    assert!(!pin.exists(), "nothing pinned");
    c.drop_agent(0);
    std::fs::remove_dir_all(&conf_dir).expect("remove conf dir");
    assert!(reaches_a(&c, "c"), "no agent, no enforcement: and none pretended");
}

#[test]
fn a_successor_of_another_build_loads_its_own_programs_and_switches_the_links_without_opening_anything() {
    if !privileged() {
        return;
    }
    let (mut c, pin, mut held) = enforcing_with_an_open_connection();
    let _cleanup = Uninstall(pin.clone());
    c.agent(0).keep_pins();
    c.agent(0).kill();
    c.drop_agent(0);
    // The pinned programs as an earlier build would have left them: under another build's name.
    let programs = pin.join("programs");
    let ours = std::fs::read_dir(&programs).expect("program pins").next().expect("one build").expect("entry").path();
    let earlier = programs.join("0123456789abcdef");
    std::fs::rename(&ours, &earlier).expect("rename the build's directory");
    c.set_policies(&[admit("c")]).expect("write");

    let (stop, prober) = probe_continuously(&c, "b");
    c.start_agent_at(0, &pin, &[]).expect("successor");
    c.sync().expect("the successor converges");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (tries, opened_after) = prober.join().expect("prober");
    let log = c.agent(0).log_tail();
    assert!(log.contains("origin=Loaded"), "another build's programs are not taken for this one's:\n{log}");
    assert!(!earlier.exists(), "the earlier build's program pins are gone");
    assert_eq!(std::fs::read_dir(&programs).expect("program pins").count(), 1, "this build's only");
    assert_eq!(pinned_links(&pin), (6, 1), "every pinned link switched in place, none attached twice");
    assert!(reaches_a(&c, "c"), "the new policy admits x/c");
    assert!(!reaches_a(&c, "b"), "and no longer x/b");
    assert!(!held.works(), "the connection the new policy withdraws is cut");
    eprintln!("x/b probed {tries} times while the successor started; {opened_after} opened once refused");
    assert_eq!(opened_after, 0, "once the new policy refused x/b, no state allowed it again");
}

/// Probes `from` -> x/a on port 80 until told to stop: (tries, connections that opened after the
/// agent had converged, i.e. after the first refused one following a success).
fn probe_continuously(c: &Cluster, from: &str) -> (std::sync::Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<(u32, u32)>) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (netns, target, flag) = (c.pod("x", from).netns.clone(), c.target("x", "a", 80, Protocol::Tcp, false), stop.clone());
    let handle = std::thread::spawn(move || {
        let (mut tries, mut opened_after, mut refused_once) = (0, 0, false);
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            tries += 1;
            let opened = netpol_sandbox::probe::probe(&netns, &target);
            refused_once |= !opened;
            if opened && refused_once {
                opened_after += 1;
            }
        }
        (tries, opened_after)
    });
    (stop, handle)
}

/// Links pinned under `pin`: (the pods' classifiers, the exits of the node's other interfaces).
fn pinned_links(pin: &std::path::Path) -> (usize, usize) {
    let names: Vec<String> =
        std::fs::read_dir(pin.join("links")).expect("links").filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    let exits = names.iter().filter(|n| n.starts_with("exit-")).count();
    (names.len() - exits, exits)
}

#[test]
fn a_clean_stop_leaves_enforcement_and_uninstall_removes_it() {
    if !privileged() {
        return;
    }
    let mut c = three_pods();
    c.set_policies(&[admit("b")]).expect("write");
    c.start_agent(0, &[]).expect("agent");
    c.sync().expect("sync");
    let pin = c.agent(0).pin_path.clone();
    c.agent(0).keep_pins();
    c.agent(0).stop();
    assert!(!reaches_a(&c, "c"), "SIGTERM leaves enforcement in place");
    c.drop_agent(0);
    let out = std::process::Command::new(agent_bin()).args(["uninstall", "--pin-path"]).arg(&pin).output().expect("uninstall");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!pin.exists(), "every pin is gone");
    assert!(reaches_a(&c, "c"), "with netpol uninstalled nothing is enforced");
}

/// Pins, in place of the map `name` under `pin`, a hash map of another layout (as an earlier
/// release with a smaller value would have left it), with the raw `bpf(2)` calls.
fn pin_incompatible_map(pin: &std::path::Path, name: &str, key_size: u32, value_size: u32) {
    use std::os::unix::ffi::OsStrExt as _;
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    let path = pin.join(name);
    std::fs::remove_file(&path).expect("unpin the current map");
    let mut attr = [0u32; 32];
    attr[..4].copy_from_slice(&[BPF_MAP_TYPE_HASH, key_size, value_size, 64]);
    // SAFETY: bpf(2) with a zeroed, large enough attribute union.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    assert!(fd >= 0, "create a map: {}", std::io::Error::last_os_error());
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    let mut pin_attr = [0u64; 4];
    pin_attr[0] = cpath.as_ptr() as u64;
    pin_attr[1] = fd as u64;
    // SAFETY: as above; the path outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, pin_attr.as_ptr(), std::mem::size_of_val(&pin_attr)) };
    assert_eq!(rc, 0, "pin the map: {}", std::io::Error::last_os_error());
    // SAFETY: our own descriptor; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

/// Removes whatever an agent pinned under `pin` when the test ends, however it ends.
struct Uninstall(std::path::PathBuf);

impl Drop for Uninstall {
    fn drop(&mut self) {
        let _ = std::process::Command::new(agent_bin()).arg("uninstall").arg("--pin-path").arg(&self.0).status();
    }
}

#[test]
fn pins_of_an_incompatible_earlier_layout_are_replaced_without_opening_anything() {
    if !privileged() {
        return;
    }
    let (mut c, pin, mut held) = enforcing_with_an_open_connection();
    let _cleanup = Uninstall(pin.clone());

    // The earlier agent is gone; its programs still enforce through the pinned links, but the
    // pinned endpoint map now has another value size (32 bytes where this build has 40).
    c.agent(0).keep_pins();
    c.agent(0).kill();
    c.drop_agent(0);
    pin_incompatible_map(&pin, "NETPOL_ENDPOINTS", 4, 32);

    // x/c probes x/a all along: while the successor replaces the incompatible map, programs the
    // new maps and only then switches the pinned links to its programs, not one of its
    // connections may open.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (netns, target, stop) = (c.pod("x", "c").netns.clone(), c.target("x", "a", 80, Protocol::Tcp, false), stop.clone());
        std::thread::spawn(move || {
            let (mut tries, mut opened) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tries += 1;
                if netpol_sandbox::probe::probe(&netns, &target) {
                    opened += 1;
                }
            }
            (tries, opened)
        })
    };
    let started = Instant::now();
    c.start_agent_at(0, &pin, &[]).expect("successor");
    c.sync().expect("the successor converges");
    let converged = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (tries, opened) = prober.join().expect("prober");
    eprintln!("successor converged in {converged:?}; x/c tried {tries} connections meanwhile, {opened} opened");
    assert_eq!(opened, 0, "nothing opened while the layout was replaced");
    assert!(tries >= 2, "x/c kept probing ({tries})");

    let log = c.agent(0).log_tail();
    assert!(log.contains("incompatible layout"), "the agent says what it did:\n{log}");
    assert_eq!(pinned_links(&pin), (6, 1), "3 pods x 2 directions and the bridge's exit, attached once");
    assert!(reaches_a(&c, "b"), "x/b is still admitted");
    assert!(!reaches_a(&c, "c"), "x/c is still denied");
    assert!(held.works(), "the open connection of x/b survives (re-judged by policy: still allowed)");
}
