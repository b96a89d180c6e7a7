//! `cargo xtask demo`: the three-tier example on a sandbox node with the real agent. Applies the
//! demo's five steps, measures reachability with real TCP and UDP connections after each,
//! prints it as a matrix with what changed, compares it with the expected reachability written
//! in `demo_steps`, and writes a Markdown report with a Mermaid diagram per step. Exits non-zero
//! on any mismatch.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf, process::ExitCode, time::Instant};

use anyhow::Context as _;
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
    let mut md = String::from("# netpol demo: the three-tier example\n\nMeasured with real connections between pods in network namespaces, enforced by netpol's eBPF classifiers.\n");
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
        if mismatches.is_empty() {
            println!("  check: all {} connections as expected\n", CONNECTIONS.len());
        } else {
            all_ok = false;
            for m in &mismatches {
                println!("  MISMATCH: {m}");
            }
            println!();
        }
        write_step_report(&mut md, i, step.title, step.policies, step.notes, &measured, &mismatches);
        previous = Some(measured);
    }
    std::fs::create_dir_all(report_dir).with_context(|| format!("create {}", report_dir.display()))?;
    let path = report_dir.join("demo.md");
    std::fs::write(&path, md).with_context(|| format!("write {}", path.display()))?;
    let counters = c.agent(0).status().map(|s| s["entries"].clone()).unwrap_or_default();
    println!("report: {}   map entries at the end: {counters}   took {:.1} s", path.display(), started.elapsed().as_secs_f64());
    println!("{}", if all_ok { "demo: every step measured as expected" } else { "demo: MEASURED REACHABILITY DIFFERS FROM THE EXPECTED ONE" });
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

fn write_step_report(md: &mut String, i: usize, title: &str, policies: &[&str], notes: &[&str], measured: &[bool], mismatches: &[String]) {
    let _ = writeln!(md, "\n## Step {}: {title}\n", i + 1);
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
