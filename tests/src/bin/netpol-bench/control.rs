//! Control-plane scale on a synthetic cluster: compile time, map entries, the map writes and
//! time of single changes, and the agent's memory with that state loaded.

use std::{collections::BTreeMap, time::Instant};

use netpol_agent::{
    compile::{CompileOptions, Compiler},

};
use netpol_sandbox::{manifests::ManifestDir, Agent, Node, Shape};
use netpol_testkit::datapath::{DataPath, PinDir};

use crate::{synth, Figures};

const SEED: u64 = 42;
const PODS: u32 = 10_000;
const NAMESPACES: u32 = 100;
const NODES: u32 = 100;
const POLICIES: u32 = 1_000;

/// The synthetic cluster `yaml` with pod `name`'s labels changed to another label set that other
/// pods have (`{app: web, tier: t0}`, or `{app: api, tier: t1}` if it had that one).
fn relabel(yaml: &str, name: &str) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let at = yaml.find(&format!("metadata: {{name: {name}, namespace: ")).with_context(|| format!("pod {name} in the synthetic cluster"))?;
    let open = at + yaml[at..].find("labels: ").context("the pod's labels")? + "labels: ".len();
    let close = open + yaml[open..].find('}').context("the end of the pod's labels")? + 1;
    let labels = if &yaml[open..close] == "{app: web, tier: t0}" { "{app: api, tier: t1}" } else { "{app: web, tier: t0}" };
    Ok(format!("{}{labels}{}", &yaml[..open], &yaml[close..]))
}

fn opts() -> CompileOptions {
    CompileOptions { node: "n0".into(), host_ips: vec![], allow_host: true }
}

pub fn run(figures: &mut Figures) -> anyhow::Result<()> {
    let yaml = synth::cluster_yaml(SEED, PODS, NAMESPACES, NODES, POLICIES);
    let state = synth::state(&yaml);

    // Full compile, median of 5.
    let mut times = Vec::new();
    let mut desired = None;
    for _ in 0..5 {
        let mut compiler = Compiler::new();
        let t = Instant::now();
        let d = compiler.compile(&state, &opts());
        times.push(t.elapsed().as_secs_f64());
        desired = Some(d);
    }
    times.sort_by(f64::total_cmp);
    let desired = desired.expect("compiled");
    let counts = synth::entry_counts(&desired);
    println!("  control: compile {PODS} pods / {POLICIES} policies for one node: {:.3} s (median of 5); entries {counts:?}", times[2]);
    figures.add("compile_seconds_10k_pods_1k_policies", times[2], "s");
    figures.add("policy_entries_10k_pods_1k_policies", counts["policy"] as f64, "entries");

    // Single changes against a loaded data path: map writes and wall time.
    {
        let mut fixture = DataPath::load_at(PinDir::new("netpol-bench-control"))?;
        let dp = &mut fixture.dp;
        let mut compiler = Compiler::new();
        let first = compiler.compile(&state, &opts());
        let stats = dp.apply_maps(&first, &BTreeMap::new());
        anyhow::ensure!(stats.errors.is_empty(), "{:?}", &stats.errors[..stats.errors.len().min(3)]);
        let mut change = |name: &str, changed: &str| -> anyhow::Result<(usize, f64)> {
            let s = synth::state(changed);
            let t = Instant::now();
            let d = compiler.compile(&s, &opts());
            let st = dp.apply_maps(&d, &BTreeMap::new());
            let secs = t.elapsed().as_secs_f64();
            anyhow::ensure!(st.errors.is_empty(), "{name}: {:?}", st.errors);
            // Back to the base state for the next change.
            let _ = dp.apply_maps(&compiler.compile(&state, &opts()), &BTreeMap::new());
            Ok((st.writes + st.deletes, secs))
        };
        // A pod on another node whose label set (and named ports) already exists.
        let (w, t) = change("remote pod", &(yaml.clone() + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: extra, namespace: ns1, labels: {app: web, tier: t0}}\nspec: {nodeName: n7, containers: [{name: c, ports: [{name: http, containerPort: 8000}]}]}\nstatus: {podIP: 198.19.250.1}\n"))?;
        println!("  control: a pod added on another node: {w} map writes, {:.1} ms (compile + apply)", t * 1e3);
        figures.add("remote_pod_add_map_writes", w as f64, "writes");
        figures.add("remote_pod_add_ms", t * 1e3, "ms");
        // One pod's labels changed to another label set that exists: on another node (p7 is on n7)
        // only its address's identity changes; on this node (p0) its own rules change too.
        for (pod, figure, where_) in [("p7", "remote_pod_label_change", "on another node"), ("p0", "local_pod_label_change", "on this node")] {
            let (w, t) = change("relabelled pod", &relabel(&yaml, pod)?)?;
            println!("  control: a pod's labels changed {where_}: {w} map writes, {:.1} ms", t * 1e3);
            figures.add(&format!("{figure}_map_writes"), w as f64, "writes");
            figures.add(&format!("{figure}_ms"), t * 1e3, "ms");
        }
        let (w, t) = change("policy", &(yaml.clone() + "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: extra, namespace: ns0}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 443}]}]\n"))?;
        println!("  control: a policy added: {w} map writes, {:.1} ms", t * 1e3);
        figures.add("policy_add_map_writes", w as f64, "writes");
        figures.add("policy_add_ms", t * 1e3, "ms");
    }

    // The real agent with that state loaded and its maps programmed: peak RSS.
    let node = Node::new(Shape::Bridge)?;
    let dir = ManifestDir::new()?;
    dir.write("cluster.yaml", &yaml.replace("nodeName: n0,", &format!("nodeName: {},", node.netns)))?;
    let mut agent = Agent::start(&node.netns, dir.path(), &[])?;
    let t = Instant::now();
    agent.wait_applied(std::time::Duration::from_secs(120))?;
    let sync = t.elapsed().as_secs_f64();
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))?;
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    println!("  control: agent with {PODS} pods / {POLICIES} policies: first sync {sync:.2} s, peak RSS {:.1} MiB", hwm_kib / 1024.0);
    figures.add("agent_rss_mib_10k_pods_1k_policies", hwm_kib / 1024.0, "MiB");
    figures.add("agent_first_sync_seconds_10k_pods_1k_policies", sync, "s");
    Ok(())
}
