//! Convergence: time from a policy change on disk to the first packet that obeys it, measured
//! with real probes, over 100 changes that alternately open and close a flow.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use netpol_sandbox::{netns, Cluster, Shape};

use crate::Figures;

const CHANGES: usize = 100;

/// One UDP round trip from a fresh socket (a new flow each time), waiting at most `wait`.
pub fn udp_once(from: &str, to: SocketAddr, wait: Duration) -> bool {
    let bind: SocketAddr = "0.0.0.0:0".parse().expect("literal");
    netns::within(from, || UdpSocket::bind(bind)).ok().and_then(Result::ok).is_some_and(|s| {
        let _ = s.set_read_timeout(Some(wait));
        let mut buf = [0u8; 8];
        s.send_to(b"conv", to).is_ok() && s.recv_from(&mut buf).is_ok()
    })
}

/// A policy on x/a admitting only the pods labelled `pod: POD`.
pub fn admit(pod: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: admit, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: {pod}}}}}}}]}}]\n")
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
    let to = SocketAddr::new(c.pod("x", "a").ipv4.into(), 53);
    let from = c.pod("x", "b").netns.clone();
    let mut times = Vec::new();
    for i in 0..CHANGES {
        let open = i % 2 == 0;
        let t = Instant::now();
        c.set_policies(&[admit(if open { "b" } else { "c" })])?;
        loop {
            // A probe that should pass gets a short wait; one that should fail must time out.
            let ok = udp_once(&from, to, Duration::from_millis(if open { 20 } else { 5 }));
            if ok == open {
                break;
            }
            anyhow::ensure!(t.elapsed() < Duration::from_secs(10), "change {i} not enforced after 10 s");
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
        c.sync()?;
    }
    times.sort_by(f64::total_cmp);
    let p50 = times[times.len() / 2];
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    println!("  convergence over {CHANGES} changes: p50 {p50:.1} ms, p99 {p99:.1} ms, max {:.1} ms", times[times.len() - 1]);
    figures.add("convergence_p50_ms", p50, "ms");
    figures.add("convergence_p99_ms", p99, "ms");
    Ok(())
}
