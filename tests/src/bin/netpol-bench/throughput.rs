//! Throughput (iperf3 TCP and UDP), connection rate and request/response latency between two
//! pods on a routed node, side by side and interleaved over rounds: no program attached; netpol enforcing the three-tier policies plus
//! 1 000 unrelated ones; and the same policies enforced the classic way, as iptables rules with
//! ipsets and conntrack the way kube-router generates them (translated here, in the bench).

use std::{
    collections::BTreeMap,
    io::Read as _,
    net::{IpAddr, SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use netpol_agent::{
    source::manifests::{self, Loaded},
    model::{ClusterState, Peer, PortSpec},

};
use netpol_sandbox::{agent::agent_bin, netns, Cluster, Shape};

use crate::{synth, Figures};

/// Rounds of every variant. Single runs on these machines differ by 5 % and more (a round's
/// ratios spread 0.85-1.15), and the targets are 3 % and 5 % lines: with 9 rounds the paired
/// medians still moved by 0.03 between runs of the same build.
const ROUNDS: usize = 15;
/// The variants, each round in this order rotated by the round's number, so that none always
/// runs first or right after another.
const VARIANTS: [&str; 4] = ["none", "empty", "netpol", "iptables"];
const IPERF_SECONDS: &str = "3";
/// Seconds at the start of each iperf3 run left out of its result (`-O`): TCP's ramp and the
/// moment the two processes settle on the cores.
const IPERF_OMIT_SECONDS: &str = "1";
/// How long the connection-rate loop runs.
const CONNECTION_RATE_TIME: Duration = Duration::from_secs(2);
/// The pause after a variant is set up, before it is measured: loading programs (the empty
/// program's data path, the agent's start) leaves the kernel freeing the verifier's memory and
/// waiting out RCU grace periods for a moment; every variant waits the same.
const SETTLE: Duration = Duration::from_secs(1);
/// Requests per request/response latency measurement.
const REQUESTS: usize = 5000;

const POLICIES: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-all, namespace: production}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: frontend-egress, namespace: production}
spec:
  podSelector: {matchLabels: {app: frontend}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: backend}}}]
    ports: [{port: 5201}, {port: 5201, protocol: UDP}, {port: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: backend-ingress, namespace: production}
spec:
  podSelector: {matchLabels: {app: backend}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{port: 5201}, {port: 5201, protocol: UDP}, {port: 8080}]
"#;

/// The kube-router-style translation of the policies selecting this node's pods: per pod and
/// direction a chain that accepts established flows, accepts what any rule's ipset and ports
/// match, and drops the rest; FORWARD jumps to it by the pod's address. Returns the
/// iptables-restore input and the ipsets (name, members).
pub fn iptables_translation(state: &ClusterState, node: &str) -> (String, Vec<(String, Vec<String>)>) {
    let mut rules = String::from("*filter\n:NETPOL - [0:0]\n");
    let mut jumps = Vec::new();
    let mut sets = Vec::new();
    for (k, pod) in state.pods.values().filter(|p| p.node == node).enumerate() {
        let Some(ip) = pod.ips.iter().find(|ip| ip.is_ipv4()) else { continue };
        for (dir, addr_flag, set_flag) in [("IN", "-d", "src"), ("OUT", "-s", "dst")] {
            let selecting: Vec<_> = state
                .policies
                .values()
                .filter(|p| p.id.namespace == pod.id.namespace && p.pod_selector.matches(&pod.labels))
                .filter(|p| if dir == "IN" { p.isolates_ingress } else { p.isolates_egress })
                .collect();
            if selecting.is_empty() {
                continue;
            }
            let chain = format!("NP-{dir}-{k}");
            rules.push_str(&format!(":{chain} - [0:0]\n-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"));
            for policy in selecting {
                let list = if dir == "IN" { &policy.ingress } else { &policy.egress };
                for (j, rule) in list.iter().enumerate() {
                    let set_match = if rule.peers.is_empty() {
                        String::new()
                    } else {
                        let name = format!("np{k}{}{}r{j}", dir.to_lowercase(), sets.len());
                        let mut members = Vec::new();
                        for peer in &rule.peers {
                            match peer {
                                Peer::IpBlock { cidr, except } => {
                                    members.push(cidr.to_string());
                                    members.extend(except.iter().map(|e| format!("{e} nomatch")));
                                }
                                Peer::Pods { namespaces, pods } => {
                                    for other in state.pods.values() {
                                        let ns_ok = match namespaces {
                                            None => other.id.namespace == policy.id.namespace,
                                            Some(sel) => sel.matches(&state.namespace_labels(&other.id.namespace)),
                                        };
                                        if ns_ok && pods.matches(&other.labels) {
                                            members.extend(other.ips.iter().filter(|i| i.is_ipv4()).map(|i| format!("{i}/32")));
                                        }
                                    }
                                }
                            }
                        }
                        sets.push((name.clone(), members));
                        format!(" -m set --match-set {name} {set_flag}")
                    };
                    if rule.ports.is_empty() {
                        rules.push_str(&format!("-A {chain}{set_match} -j ACCEPT\n"));
                    }
                    for pm in &rule.ports {
                        let proto = pm.protocol.to_string().to_lowercase();
                        let port = match &pm.port {
                            PortSpec::All => String::new(),
                            PortSpec::Range(lo, hi) if lo == hi => format!(" --dport {lo}"),
                            PortSpec::Range(lo, hi) => format!(" --dport {lo}:{hi}"),
                            PortSpec::Named(name) => match pod.named_ports.iter().find(|n| &n.name == name) {
                                Some(n) => format!(" --dport {}", n.port),
                                None => continue,
                            },
                        };
                        rules.push_str(&format!("-A {chain}{set_match} -p {proto}{port} -j ACCEPT\n"));
                    }
                }
            }
            rules.push_str(&format!("-A {chain} -j DROP\n"));
            jumps.push(format!("-A NETPOL {addr_flag} {ip}/32 -j {chain}\n"));
        }
    }
    for j in jumps {
        rules.push_str(&j);
    }
    rules.push_str("-I FORWARD 1 -j NETPOL\nCOMMIT\n");
    (rules, sets)
}

fn run_cmd(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    anyhow::ensure!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn apply_iptables(node: &str, state: &ClusterState) -> anyhow::Result<()> {
    let (rules, sets) = iptables_translation(state, node);
    let mut restore = String::new();
    for (name, members) in &sets {
        restore.push_str(&format!("create {name} hash:net family inet\n"));
        for m in members {
            restore.push_str(&format!("add {name} {m}\n"));
        }
    }
    let mut child = Command::new("ip").args(["netns", "exec", node, "ipset", "restore"]).stdin(Stdio::piped()).spawn()?;
    std::io::Write::write_all(child.stdin.as_mut().context("stdin")?, restore.as_bytes())?;
    anyhow::ensure!(child.wait()?.success(), "ipset restore");
    let mut child = Command::new("ip").args(["netns", "exec", node, "iptables-restore", "--noflush"]).stdin(Stdio::piped()).spawn()?;
    std::io::Write::write_all(child.stdin.as_mut().context("stdin")?, rules.as_bytes())?;
    anyhow::ensure!(child.wait()?.success(), "iptables-restore");
    Ok(())
}

fn clear_iptables(node: &str) -> anyhow::Result<()> {
    let _ = run_cmd(Command::new("ip").args(["netns", "exec", node, "iptables", "-F"]));
    let _ = run_cmd(Command::new("ip").args(["netns", "exec", node, "iptables", "-X"]));
    let _ = run_cmd(Command::new("ip").args(["netns", "exec", node, "ipset", "destroy"]));
    Ok(())
}

/// Received bits per second of one iperf3 run: TCP, or UDP as fast as it goes (`-b 0`) in
/// 1 400-byte datagrams, where the per-packet cost shows without segmentation offload.
fn iperf(client: &str, server: &str, addr: IpAddr, udp: bool) -> anyhow::Result<f64> {
    let mut srv = Command::new("ip").args(["netns", "exec", server, "iperf3", "-s", "-1", "-p", "5201"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    std::thread::sleep(Duration::from_millis(200));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", client, "iperf3", "-c", &addr.to_string(), "-p", "5201", "-t", IPERF_SECONDS, "-O", IPERF_OMIT_SECONDS, "-J"]);
    if udp {
        cmd.args(["-u", "-b", "0", "-l", "1400"]);
    }
    let out = run_cmd(&mut cmd);
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_str(&out?)?;
    if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
        return Ok(bps);
    }
    // Older iperf3 reports UDP as one sum with the receiver's loss.
    let sum = &v["end"]["sum"];
    let bps = sum["bits_per_second"].as_f64().context("iperf3 result")?;
    Ok(bps * (1.0 - sum["lost_percent"].as_f64().unwrap_or(0.0) / 100.0))
}

/// Median round trip in microseconds of 1-byte requests echoed on one open TCP connection.
fn request_response_us(client: &str, addr: IpAddr) -> anyhow::Result<f64> {
    use std::io::Write as _;
    let mut s = netns::within(client, || TcpStream::connect_timeout(&SocketAddr::new(addr, 8080), Duration::from_secs(1)))??;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut banner = [0u8; 64];
    anyhow::ensure!(s.read(&mut banner)? > 0, "no banner");
    let mut rtts = Vec::with_capacity(REQUESTS);
    let mut b = [0u8; 1];
    for _ in 0..REQUESTS {
        let t = Instant::now();
        s.write_all(b"x")?;
        s.read_exact(&mut b)?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(median(&rtts))
}

/// Closes with a reset (SO_LINGER 0), so that a second of connections does not fill the
/// ephemeral port range with TIME_WAIT sockets.
fn reset_on_close(s: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt with a valid linger struct of the right size.
    unsafe {
        libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, std::ptr::from_ref(&l).cast(), std::mem::size_of::<libc::linger>() as libc::socklen_t);
    }
}

/// Connections per second: connect, read the banner, close, for [`CONNECTION_RATE_TIME`].
fn connection_rate(client: &str, addr: IpAddr) -> f64 {
    let (n, elapsed) = connections(client, addr);
    f64::from(n) / elapsed.as_secs_f64()
}

/// The connection-rate loop: the connections made in [`CONNECTION_RATE_TIME`], and the time taken.
fn connections(client: &str, addr: IpAddr) -> (u32, Duration) {
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < CONNECTION_RATE_TIME {
        let ok = netns::within(client, || TcpStream::connect_timeout(&SocketAddr::new(addr, 8080), Duration::from_millis(500)))
            .ok()
            .and_then(Result::ok)
            .is_some_and(|mut s| {
                reset_on_close(&s);
                // A lost banner costs this connection, not the rest of the run.
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut b = [0u8; 64];
                s.read(&mut b).is_ok_and(|r| r > 0)
            });
        if ok {
            n += 1;
        }
    }
    (n, start.elapsed())
}

/// The run count and run time (ns) summed over the loaded programs whose names start with
/// `netpol_` (the kernel keeps them while BPF statistics are enabled).
fn netpol_program_stats() -> (u64, u64) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("netpol_")))
        .fold((0, 0), |(runs, ns), p| (runs + p.run_count(), ns + p.run_time().as_nanos() as u64))
}

/// One connection-rate loop with the kernel's BPF run-time statistics on: the `netpol_*`
/// programs' runs and nanoseconds per connection, and a connection's nanoseconds.
fn program_time_per_connection(client: &str, addr: IpAddr) -> anyhow::Result<(f64, f64, f64)> {
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enable BPF run-time statistics")?;
    let (runs_before, ns_before) = netpol_program_stats();
    let (n, elapsed) = connections(client, addr);
    let (runs_after, ns_after) = netpol_program_stats();
    drop(stats);
    anyhow::ensure!(n > 0, "no connection opened with BPF statistics on");
    let n = f64::from(n);
    Ok(((runs_after - runs_before) as f64 / n, (ns_after - ns_before) as f64 / n, elapsed.as_secs_f64() * 1e9 / n))
}

/// What netpol's programs cost one connection of the connection-rate loop, measured after the
/// rounds with the kernel's BPF run-time statistics on (they add two clock reads to every program
/// run, so they stay off while the variants are compared): the program time per connection with
/// netpol and with the empty program (the statistics' own cost and the hook's), and the
/// difference as a share of a connection's time (the empty program loaded under `empty_pin`, as
/// in the rounds). `PROBES` runs of each, interleaved; medians.
fn program_cost_per_connection(c: &mut Cluster, node: &str, empty_pin: &std::path::Path, fe: &str, server: IpAddr, figures: &mut Figures) -> anyhow::Result<()> {
    const PROBES: usize = 3;
    let (mut netpol, mut empty, mut runs, mut connection) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..PROBES {
        start_netpol(c)?;
        std::thread::sleep(SETTLE);
        let measured = program_time_per_connection(fe, server);
        stop_netpol(c)?;
        let (r, ns, conn) = measured?;
        netpol.push(ns);
        runs.push(r);
        connection.push(conn);

        let dp = attach_empty(c, node, empty_pin)?;
        std::thread::sleep(SETTLE);
        let measured = program_time_per_connection(fe, server);
        detach_empty(dp, empty_pin);
        empty.push(measured?.1);
    }
    let (netpol, empty, runs, connection) = (median(&netpol), median(&empty), median(&runs), median(&connection));
    let overhead = netpol - empty;
    println!(
        "  program time per connection (BPF statistics on, median of {PROBES}): netpol {netpol:.0} ns in {runs:.1} runs, the empty program {empty:.0} ns; netpol's own {overhead:.0} ns = {:.1} % of a connection ({:.1} us)",
        overhead / connection * 100.0,
        connection / 1e3
    );
    figures.add("connection_program_ns_netpol", netpol, "ns");
    figures.add("connection_program_ns_empty_program", empty, "ns");
    figures.add("connection_program_overhead_ns", overhead, "ns");
    figures.add("connection_program_overhead_share", overhead / connection, "ratio");
    Ok(())
}

/// The netpol variant: the real agent started on the sandbox node and its first sync done.
fn start_netpol(c: &mut Cluster) -> anyhow::Result<()> {
    c.start_agent(0, &[])?;
    c.sync()
}

/// Stops the agent and removes everything it left (its pinned links and maps).
fn stop_netpol(c: &mut Cluster) -> anyhow::Result<()> {
    let pin = c.agent(0).pin_path.clone();
    c.drop_agent(0);
    run_cmd(Command::new(agent_bin()).args(["uninstall", "--pin-path"]).arg(&pin)).map(drop)
}

/// Detaches the empty classifier (dropping the data path detaches its unpinned links) and
/// removes its maps.
fn detach_empty(dp: netpol_agent::datapath::Datapath, pin: &std::path::Path) {
    drop(dp);
    let _ = netpol_agent::datapath::uninstall(pin);
}

/// The empty classifier attached where netpol attaches, on both hooks of both pods' host veths,
/// from a data path loaded under `pin`: the links go when the returned data path is dropped.
fn attach_empty(c: &Cluster, node: &str, pin: &std::path::Path) -> anyhow::Result<netpol_agent::datapath::Datapath> {
    let ifaces = [c.pod("production", "frontend").host_if.clone(), c.pod("production", "backend").host_if.clone()];
    let pin = pin.to_path_buf();
    netns::within(node, move || -> anyhow::Result<netpol_agent::datapath::Datapath> {
        let mut dp = netpol_agent::datapath::Datapath::load(&pin)?;
        let prog = dp.program(netpol_agent::datapath::PROG_NOOP)?;
        for iface in &ifaces {
            for hook in [aya::programs::TcAttachType::Ingress, aya::programs::TcAttachType::Egress] {
                prog.attach(iface, hook).with_context(|| format!("attach the empty program to {iface}"))?;
            }
        }
        Ok(dp)
    })?
}

/// The median (the upper one of an even count).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(figures: &mut Figures) -> anyhow::Result<()> {
    let mut c = Cluster::new(&[Shape::Routed])?;
    c.namespace("production", &[])?;
    c.add_pod(0, "production", "frontend", &[("app", "frontend")], &[("http", 80, "TCP")])?;
    c.add_pod(0, "production", "backend", &[("app", "backend")], &[("api", 8080, "TCP")])?;
    let unrelated = synth::cluster_yaml(7, 2000, 50, 20, 1000);
    c.manifests.write("unrelated.yaml", &unrelated)?;
    c.set_policies(&[POLICIES.to_string()])?;
    let node = c.nodes[0].netns.clone();
    let (fe, be) = (c.pod("production", "frontend").netns.clone(), c.pod("production", "backend").clone());
    let server = IpAddr::V4(be.ipv4);

    let mut loaded = Loaded::default();
    let cluster_yaml = std::fs::read_to_string(c.manifests.path().join("cluster.yaml"))?;
    manifests::load_documents(&format!("{cluster_yaml}\n---\n{POLICIES}\n---\n{unrelated}"), "bench", &mut loaded, &mut Default::default());
    let state = loaded.state;

    let mut tput: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut udp: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut rate: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut rr: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    // The "empty" variant: the empty classifier (returns "next") attached where netpol attaches,
    // on both hooks of both pods' host veths: the cost of having a TCX program on the path at all.
    let empty_pin = netpol_sandbox::host_bpffs()?.join(netpol_sandbox::netns::unique("netpol-bench-empty-"));
    let mut empty_dp = None;
    for round in 0..ROUNDS {
        for k in 0..VARIANTS.len() {
            let variant = VARIANTS[(round + k) % VARIANTS.len()];
            match variant {
                "empty" => empty_dp = Some(attach_empty(&c, &node, &empty_pin)?),
                "netpol" => start_netpol(&mut c)?,
                "iptables" => apply_iptables(&node, &state)?,
                _ => {}
            }
            std::thread::sleep(SETTLE);
            // The agent's own CPU time while the variant is measured: on two cores it competes
            // with iperf3's client and server.
            let agent_pid = (variant == "netpol").then(|| c.agent(0).pid());
            let cpu_before = agent_pid.and_then(netpol_sandbox::churn::cpu_seconds);
            let t = iperf(&fe, &be.netns, server, false)?;
            let u = iperf(&fe, &be.netns, server, true)?;
            let r = connection_rate(&fe, server);
            let l = request_response_us(&fe, server)?;
            let agent_cpu = match (agent_pid.and_then(netpol_sandbox::churn::cpu_seconds), cpu_before) {
                (Some(after), Some(before)) => format!(", agent CPU {:.0} ms", (after - before) * 1e3),
                _ => String::new(),
            };
            println!("  round {round} {variant:<8}: TCP {:6.2} Gbit/s, UDP {:5.2} Gbit/s, {r:6.0} connections/s, request/response {l:5.1} us{agent_cpu}", t / 1e9, u / 1e9);
            tput.entry(variant).or_default().push(t);
            udp.entry(variant).or_default().push(u);
            rate.entry(variant).or_default().push(r);
            rr.entry(variant).or_default().push(l);
            match variant {
                "empty" => {
                    if let Some(dp) = empty_dp.take() {
                        detach_empty(dp, &empty_pin);
                    }
                }
                "netpol" => stop_netpol(&mut c)?,
                "iptables" => clear_iptables(&node)?,
                _ => {}
            }
        }
    }
    let spread = |v: &Vec<f64>| {
        let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
        (lo, hi)
    };
    program_cost_per_connection(&mut c, &node, &empty_pin, &fe, server, figures)?;
    for variant in VARIANTS {
        let (lo, hi) = spread(&tput[variant]);
        let (ulo, uhi) = spread(&udp[variant]);
        let (llo, lhi) = spread(&rr[variant]);
        println!(
            "  {variant:<8}: TCP median {:.2} Gbit/s (range {:.2}-{:.2}), UDP median {:.2} Gbit/s (range {:.2}-{:.2}), connections/s median {:.0}, request/response median {:.1} us (range {:.1}-{:.1})",
            median(&tput[variant]) / 1e9,
            lo / 1e9,
            hi / 1e9,
            median(&udp[variant]) / 1e9,
            ulo / 1e9,
            uhi / 1e9,
            median(&rate[variant]),
            median(&rr[variant]),
            llo,
            lhi
        );
    }
    // The ratios are paired: the median over rounds of each round's own ratio. A round measures
    // every variant within a minute, so the VM's slow drifts (neighbours, host frequency), which
    // move whole rounds by more than the targets' margins, cancel in a round's ratio; the ratio
    // of the variants' medians, in which they do not cancel, is reported beside it
    // (`..._of_medians`).
    let mut paired = |name: &str, map: &BTreeMap<&str, Vec<f64>>, a: &str, b: &str| {
        let ratios: Vec<f64> = map[a].iter().zip(&map[b]).map(|(x, y)| x / y).collect();
        let (lo, hi) = spread(&ratios);
        let r = median(&ratios);
        let of_medians = median(&map[a]) / median(&map[b]);
        println!("  {name}: {r:.3} (rounds {lo:.3}-{hi:.3}; ratio of medians {of_medians:.3})");
        figures.add(name, r, "ratio");
        figures.add(&format!("{name}_of_medians"), of_medians, "ratio");
    };
    paired("tcp_throughput_ratio_vs_no_program", &tput, "netpol", "none");
    paired("tcp_throughput_ratio_empty_program_vs_no_program", &tput, "empty", "none");
    paired("tcp_throughput_ratio_vs_empty_program", &tput, "netpol", "empty");
    paired("tcp_throughput_ratio_vs_iptables", &tput, "netpol", "iptables");
    paired("connection_rate_ratio_vs_no_program", &rate, "netpol", "none");
    paired("connection_rate_ratio_vs_iptables", &rate, "netpol", "iptables");
    paired("udp_throughput_ratio_vs_no_program", &udp, "netpol", "none");
    paired("udp_throughput_ratio_vs_iptables", &udp, "netpol", "iptables");
    paired("request_response_latency_ratio_vs_no_program", &rr, "netpol", "none");
    let (tn, tp, ti, te) = (median(&tput["none"]), median(&tput["netpol"]), median(&tput["iptables"]), median(&tput["empty"]));
    figures.add("tcp_throughput_gbps_no_program", tn / 1e9, "Gbit/s");
    figures.add("tcp_throughput_gbps_empty_program", te / 1e9, "Gbit/s");
    figures.add("tcp_throughput_gbps_netpol", tp / 1e9, "Gbit/s");
    figures.add("tcp_throughput_gbps_iptables", ti / 1e9, "Gbit/s");
    let (un, up, ui) = (median(&udp["none"]), median(&udp["netpol"]), median(&udp["iptables"]));
    figures.add("udp_throughput_gbps_no_program", un / 1e9, "Gbit/s");
    figures.add("udp_throughput_gbps_netpol", up / 1e9, "Gbit/s");
    figures.add("udp_throughput_gbps_iptables", ui / 1e9, "Gbit/s");
    let (rn, rp, ri) = (median(&rate["none"]), median(&rate["netpol"]), median(&rate["iptables"]));
    figures.add("connections_per_second_no_program", rn, "1/s");
    figures.add("connections_per_second_netpol", rp, "1/s");
    figures.add("connections_per_second_iptables", ri, "1/s");
    let (ln, lp, li) = (median(&rr["none"]), median(&rr["netpol"]), median(&rr["iptables"]));
    figures.add("request_response_us_no_program", ln, "us");
    figures.add("request_response_us_netpol", lp, "us");
    figures.add("request_response_us_iptables", li, "us");
    Ok(())
}
