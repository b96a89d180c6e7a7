//! `cargo xtask bench`: netpol's benchmarks. Prints a table of figures and writes them to
//! `target/bench/results.json` (one object per figure: name, value, unit). Ratios are measured
//! side by side in the same run; see docs/benchmarks.md for each method.

mod control;
mod convergence;
mod datapath;
mod restart;
mod synth;
mod throughput;

use std::{path::PathBuf, process::ExitCode};

/// The figures of one run.
#[derive(Default)]
pub struct Figures(Vec<(String, f64, String)>);

impl Figures {
    /// Records a figure.
    pub fn add(&mut self, name: &str, value: f64, unit: &str) {
        self.0.push((name.to_string(), value, unit.to_string()));
    }
}

/// One benchmark: adds its figures.
type Bench = fn(&mut Figures) -> anyhow::Result<()>;

fn main() -> ExitCode {
    let mut out = PathBuf::from("target/bench/results.json");
    let mut only: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = args.next().map(PathBuf::from).unwrap_or(out),
            other => only.push(other.to_string()),
        }
    }
    if !netpol_sandbox::privileged() {
        return ExitCode::FAILURE;
    }
    let mut figures = Figures::default();
    let benches: [(&str, Bench); 5] = [
        ("datapath", datapath::run),
        ("control", control::run),
        ("convergence", convergence::run),
        ("restart", restart::run),
        ("throughput", throughput::run),
    ];
    let mut failed = false;
    for (name, bench) in benches {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        println!("== {name} ==");
        if let Err(e) = bench(&mut figures) {
            eprintln!("benchmark {name} failed: {e:#}");
            failed = true;
        }
    }
    println!("\n{:<52} {:>14}  unit", "figure", "value");
    for (name, value, unit) in &figures.0 {
        println!("{name:<52} {value:>14.3}  {unit}");
    }
    let json: Vec<serde_json::Value> =
        figures.0.iter().map(|(n, v, u)| serde_json::json!({"name": n, "value": v, "unit": u})).collect();
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&out, serde_json::to_vec_pretty(&json).unwrap_or_default()) {
        Ok(()) => println!("results: {}", out.display()),
        Err(e) => {
            eprintln!("write {}: {e}", out.display());
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
