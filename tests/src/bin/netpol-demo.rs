//! `cargo xtask demo`: the three-tier example on a sandbox node with the real agent. Applies the
//! demo's five steps, measures reachability with real TCP and UDP connections after each,
//! prints it as a matrix with what changed, compares it with the expected reachability written
//! in `demo_steps` and with what `netpol-agent graph` computes from the same manifests, and
//! writes a Markdown report with, per step, a Mermaid diagram of the measured connections, the
//! graph's Mermaid diagram and its SVG (`step-N.svg`). Exits non-zero on any mismatch.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf, process::ExitCode, time::Instant};

use anyhow::Context as _;
use netpol_agent::tools::graph::{self, Reachability};
use netpol_sandbox::{
    demo_steps::{CONNECTIONS, NAMESPACES, PODS, STEPS},
    privileged, probe, Cluster, Protocol, Shape,
};

fn main() -> ExitCode {
    let mut report = PathBuf::from("report");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--report" {
            report = args.next().map(PathBuf::from).unwrap_or(report);
        }
    }
    match run(&report) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Short names for the matrix.
fn short(pod: &str) -> &str {
    match pod {
        "ingress-controller" => "ingress",
        other => other,
    }
}

fn run(report_dir: &std::path::Path) -> anyhow::Result<bool> {
    anyhow::ensure!(privileged(), "the demo needs root");
    let started = Instant::now();
    println!("netpol demo: the three-tier example on a sandbox node (bridge, like Flannel's cni0)\n");
    let mut c = Cluster::new(&[Shape::Bridge])?;
    for (ns, labels) in NAMESPACES {
        c.namespace(ns, labels)?;
    }
    for p in PODS {
        let pod = c.add_pod(0, p.namespace, p.name, p.labels, p.ports)?;
        println!("  pod {:<30} {:<15} {}", format!("{}/{}", p.namespace, p.name), pod.ipv4, pod.ipv6);
    }
    c.start_agent(0, &[])?;
    c.sync()?;
    println!("  agent running in node {}, attached to {} pods\n", c.nodes[0].netns, PODS.len());

    let namespace_of = |pod: &str| PODS.iter().find(|p| p.name == pod).map(|p| p.namespace).unwrap_or_default();
    let mut previous: Option<Vec<bool>> = None;
    let mut all_ok = true;
    let mut md = String::from("# netpol demo: the three-tier example\n\nMeasured with real connections between pods in network namespaces, enforced by netpol's eBPF classifiers, and computed offline by `netpol-agent graph` from the same manifests.\n");
    std::fs::create_dir_all(report_dir).with_context(|| format!("create {}", report_dir.display()))?;
    for (i, step) in STEPS.iter().enumerate() {
        c.set_policies(&step.policies.iter().map(|p| (*p).to_string()).collect::<Vec<_>>())?;
        let t = Instant::now();
        c.sync()?;
        let applied_ms = t.elapsed().as_millis();
        let probes: Vec<(String, probe::Target)> = CONNECTIONS
            .iter()
            .map(|(from, to, port, proto)| {
                let netns = if *from == "node" { c.nodes[0].netns.clone() } else { c.pod(namespace_of(from), from).netns.clone() };
                (netns, c.target(namespace_of(to), to, *port, Protocol::parse(proto), false))
            })
            .collect();
        let measured = probe::probe_many(&probes);
        // What `netpol-agent graph` computes from the manifests the agent has just applied.
        let loaded = netpol_agent::source::manifests::load_dir(c.manifests.path())?;
        let applied = c.agent(0).status().map(|s| s["manifest_digest"].clone()).unwrap_or_default();
        anyhow::ensure!(applied == loaded.digest.as_str(), "the manifests changed under the demo");
        let computed = graph::reachability(&loaded.state);
        println!("== Step {}/{}: {} ({} policies, applied in {applied_ms} ms) ==", i + 1, STEPS.len(), step.title, step.policies.len());
        print_matrix(&measured, previous.as_deref());
        let mismatches: Vec<String> = CONNECTIONS
            .iter()
            .zip(measured.iter().zip(step.expected.iter()))
            .filter(|(_, (m, e))| m != e)
            .map(|((from, to, port, proto), (m, _))| {
                format!("{from} -> {to}:{port}/{proto} is {} but should be {}", open(*m), open(!*m))
            })
            .collect();
        let graph_mismatches = compare_with_graph(&computed, &measured);
        if let Some(prev) = &previous {
            let changes: Vec<String> = CONNECTIONS
                .iter()
                .zip(prev.iter().zip(measured.iter()))
                .filter(|(_, (p, m))| p != m)
                .map(|((from, to, port, proto), (_, m))| format!("{} {from} -> {to}:{port}/{proto}", if *m { "opened:" } else { "closed:" }))
                .collect();
            if changes.is_empty() {
                println!("  changed: nothing");
            }
            for ch in &changes {
                println!("  {ch}");
            }
        }
        for note in step.notes {
            println!("  * {note}");
        }
        if mismatches.is_empty() && graph_mismatches.is_empty() {
            println!("  check: all {} connections as expected, and as netpol-agent graph computes them\n", CONNECTIONS.len());
        } else {
            all_ok = false;
            for m in &mismatches {
                println!("  MISMATCH: {m}");
            }
            for m in &graph_mismatches {
                println!("  MISMATCH: {m}");
            }
            println!();
        }
        let svg = format!("step-{}.svg", i + 1);
        let svg_path = report_dir.join(&svg);
        std::fs::write(&svg_path, graph::to_svg(&computed)).with_context(|| format!("write {}", svg_path.display()))?;
        let all_mismatches: Vec<String> = mismatches.into_iter().chain(graph_mismatches).collect();
        let step_report = StepReport { title: step.title, policies: step.policies, notes: step.notes, measured: &measured, mismatches: &all_mismatches };
        write_step_report(&mut md, i, &step_report, &graph::to_mermaid(&computed), &svg);
        previous = Some(measured);
    }
    let path = report_dir.join("demo.md");
    std::fs::write(&path, md).with_context(|| format!("write {}", path.display()))?;
    let counters = c.agent(0).status().map(|s| s["entries"].clone()).unwrap_or_default();
    println!("report: {}   map entries at the end: {counters}   took {:.1} s", path.display(), started.elapsed().as_secs_f64());
    println!(
        "{}",
        if all_ok { "demo: every step measured as expected" } else { "demo: MEASURED REACHABILITY DIFFERS FROM THE EXPECTED OR THE COMPUTED ONE" }
    );
    Ok(all_ok)
}

fn open(ok: bool) -> &'static str {
    if ok {
        "open"
    } else {
        "blocked"
    }
}

/// Prints sources as rows and destination ports as columns.
fn print_matrix(measured: &[bool], previous: Option<&[bool]>) {
    let mut columns: Vec<(&str, u16, &str)> = Vec::new();
    let mut rows: Vec<&str> = Vec::new();
    for (from, to, port, proto) in CONNECTIONS {
        if !columns.contains(&(to, *port, proto)) {
            columns.push((to, *port, proto));
        }
        if !rows.contains(from) {
            rows.push(from);
        }
    }
    let header: Vec<String> = columns.iter().map(|(to, port, proto)| format!("{}:{port}/{proto}", short(to))).collect();
    print!("  {:<10}", "from \\ to");
    for h in &header {
        print!(" {h:>16}");
    }
    println!();
    for row in rows {
        print!("  {:<10}", short(row));
        for (to, port, proto) in &columns {
            let cell = CONNECTIONS.iter().position(|c| c.0 == row && c.1 == *to && c.2 == *port && c.3 == *proto).map(|i| {
                let changed = previous.is_some_and(|p| p[i] != measured[i]);
                format!("{}{}", if measured[i] { "open" } else { "blocked" }, if changed { "*" } else { " " })
            });
            print!(" {:>16}", cell.unwrap_or_else(|| "-  ".into()));
        }
        println!();
    }
    println!("  (* changed in this step)");
}

/// Whether `graph` computes `from -> to` on `port`/`protocol` as allowed: the edge's classes,
/// the class of exactly that port if there is one, else a range holding it, else the
/// protocol's "other ports" class. `None` when the graph has no such pods.
fn graph_allows(r: &Reachability, from: &str, to: &str, port: u16, protocol: &str) -> Option<bool> {
    let node = |pod: &str| r.nodes.iter().position(|n| n.pods.len() == 1 && n.name == pod);
    let (f, t) = (node(from)?, node(to)?);
    let of = |pick: &dyn Fn(&graph::PortClass) -> bool| r.classes.iter().position(|c| c.protocol == protocol && pick(c));
    let class = of(&|c| !c.other && c.lo == port && c.hi == port)
        .or_else(|| of(&|c| !c.other && (c.lo..=c.hi).contains(&port)))
        .or_else(|| of(&|c| c.other))?;
    Some(r.edges.iter().any(|e| e.from == f && e.to == t && e.classes.contains(&class)))
}

/// The demo's pod-to-pod connections on which the measurement and `graph` disagree. The
/// node's connections (kubelet traffic) are left out: graph draws pods only, and host access
/// is a setting of the running agent, not something the manifests say.
fn compare_with_graph(r: &Reachability, measured: &[bool]) -> Vec<String> {
    CONNECTIONS
        .iter()
        .zip(measured)
        .filter(|((from, ..), _)| *from != "node")
        .filter_map(|((from, to, port, proto), m)| match graph_allows(r, from, to, *port, proto) {
            Some(g) if g == *m => None,
            Some(g) => Some(format!("{from} -> {to}:{port}/{proto} is {} but netpol-agent graph computes it {}", open(*m), open(g))),
            None => Some(format!("{from} -> {to}:{port}/{proto}: netpol-agent graph has no such pods")),
        })
        .collect()
}

/// What one step's section of the report shows.
struct StepReport<'a> {
    title: &'a str,
    policies: &'a [&'a str],
    notes: &'a [&'a str],
    measured: &'a [bool],
    mismatches: &'a [String],
}

fn write_step_report(md: &mut String, i: usize, step: &StepReport<'_>, computed_mermaid: &str, svg: &str) {
    let StepReport { title, policies, notes, measured, mismatches } = *step;
    let _ = writeln!(md, "\n## Step {}: {title}\n", i + 1);
    let _ = writeln!(md, "**Measured** (real connections; dashed: blocked):\n");
    let _ = writeln!(md, "```mermaid\nflowchart LR");
    let mut by_ns: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in PODS {
        by_ns.entry(p.namespace).or_default().push(p.name);
    }
    for (ns, pods) in &by_ns {
        let _ = writeln!(md, "  subgraph {}[{ns}]", ns.replace('-', "_"));
        for p in pods {
            let _ = writeln!(md, "    {}[{p}]", p.replace('-', "_"));
        }
        let _ = writeln!(md, "  end");
    }
    let _ = writeln!(md, "  node((node))");
    for ((from, to, port, proto), ok) in CONNECTIONS.iter().zip(measured) {
        let (f, t) = (from.replace('-', "_"), to.replace('-', "_"));
        if *ok {
            let _ = writeln!(md, "  {f} -->|{port}/{proto}| {t}");
        } else {
            let _ = writeln!(md, "  {f} -.-x|{port}/{proto} blocked| {t}");
        }
    }
    let _ = writeln!(md, "```\n");
    let _ = writeln!(
        md,
        "**Computed by netpol-agent graph** (from the same manifests, offline; pods only, the node is not drawn; [SVG]({svg})):\n"
    );
    let _ = writeln!(md, "```mermaid\n{}```\n", computed_mermaid);
    let _ = writeln!(md, "![Step {} computed by netpol-agent graph]({svg})\n", i + 1);
    for n in notes {
        let _ = writeln!(md, "- {n}");
    }
    if !mismatches.is_empty() {
        let _ = writeln!(md, "\n**Mismatches:**\n");
        for m in mismatches {
            let _ = writeln!(md, "- {m}");
        }
    }
    if !policies.is_empty() {
        let _ = writeln!(md, "\n<details><summary>Policies in force</summary>\n");
        for p in policies {
            let _ = writeln!(md, "```yaml\n{}```", p);
        }
        let _ = writeln!(md, "</details>");
    }
}
