//! Restart: an agent killed with SIGKILL, the policy changed while no agent runs, and a successor
//! started on the same pins; the time from starting the successor to the first packet that obeys
//! the changed policy, measured with real probes. Two kinds of successor, interleaved: one of the
//! same build (it opens the pinned programs) and one that finds another build's programs pinned
//! (it loads and verifies its own, as an upgrade does).

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use netpol_sandbox::{Cluster, Shape};

use crate::{
    convergence::{admit, udp_once},
    Figures,
};

/// Restarts of each kind.
const ROUNDS: usize = 8;

/// Moves this build's pinned programs under another build's name, as an earlier release would
/// have left them.
fn pose_as_another_build(pin: &Path) -> anyhow::Result<()> {
    let programs = pin.join("programs");
    for entry in std::fs::read_dir(&programs)? {
        let path = entry?.path();
        std::fs::rename(&path, programs.join("0000000000000000"))?;
    }
    Ok(())
}

/// The median of `times` (sorted in place).
fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

pub fn run(figures: &mut Figures) -> anyhow::Result<()> {
    let mut c = Cluster::new(&[Shape::Bridge])?;
    c.namespace("x", &[])?;
    for p in ["a", "b", "c"] {
        c.add_pod(0, "x", p, &[("pod", p)], &[("dns", 53, "UDP")])?;
    }
    c.set_policies(&[admit("c")])?;
    c.start_agent(0, &[])?;
    c.sync()?;
    let pin = c.agent(0).pin_path.clone();
    let to = SocketAddr::new(c.pod("x", "a").ipv4.into(), 53);
    let from = c.pod("x", "b").netns.clone();
    let (mut same, mut other) = (Vec::new(), Vec::new());
    for i in 0..2 * ROUNDS {
        // Each change flips the flow; the kinds of successor take turns in pairs, so each kind
        // sees flows opened and closed.
        let open = i % 2 == 0;
        let upgrade = (i / 2) % 2 == 1;
        c.agent(0).keep_pins();
        c.agent(0).kill();
        c.drop_agent(0);
        c.set_policies(&[admit(if open { "b" } else { "c" })])?;
        if upgrade {
            pose_as_another_build(&pin)?;
        }
        anyhow::ensure!(udp_once(&from, to, Duration::from_millis(20)) != open, "the change took effect with no agent running");
        let t = Instant::now();
        c.start_agent_at(0, &pin, &[])?;
        loop {
            // A probe that should pass gets a short wait; one that should fail must time out.
            if udp_once(&from, to, Duration::from_millis(if open { 20 } else { 5 })) == open {
                break;
            }
            anyhow::ensure!(t.elapsed() < Duration::from_secs(30), "restart {i} did not converge in 30 s");
        }
        let seconds = t.elapsed().as_secs_f64();
        if upgrade { &mut other } else { &mut same }.push(seconds);
        c.sync()?;
    }
    let (same_build, other_build) = (median(&mut same), median(&mut other));
    println!(
        "  restart with a policy changed meanwhile, start to first obeying packet (median of {ROUNDS}): same build {:.3} s (max {:.3}), another build's pins {:.3} s (max {:.3})",
        same_build,
        same[same.len() - 1],
        other_build,
        other[other.len() - 1]
    );
    figures.add("restart_converge_seconds", same_build, "s");
    figures.add("restart_converge_seconds_max", same[same.len() - 1], "s");
    figures.add("restart_converge_seconds_other_build", other_build, "s");
    Ok(())
}
