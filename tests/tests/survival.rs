//! Survival of enforcement across agent crashes, restarts with changes made meanwhile, clean
//! stops, and uninstalling — on real namespaces with real connections.

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

fn reaches_a(c: &Cluster, from: &str) -> bool {
    c.probe(("x", from), ("x", "a"), 80, Protocol::Tcp, false)
}

#[test]
fn a_killed_agent_leaves_enforcement_and_its_successor_adopts_it_and_converges() {
    if !privileged() {
        return;
    }
    let mut c = three_pods();
    c.set_policies(&[admit("b")]).expect("write");
    c.start_agent(0, &[]).expect("agent");
    c.sync().expect("sync");
    let pin = c.agent(0).pin_path.clone();
    let mut held = c.open_connection(("x", "b"), ("x", "a")).expect("the connection opens");

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
    let converged = started.elapsed();
    eprintln!("successor converged in {converged:?}");
    assert!(converged < Duration::from_secs(2), "converged in {converged:?}");
    assert!(reaches_a(&c, "c"), "the new policy admits x/c");
    assert!(!reaches_a(&c, "b"), "and no longer x/b");
    assert!(!held.works(), "the connection the new policy withdraws is cut");

    // Adoption attached nothing twice: one pinned link per pod and direction.
    let links = std::fs::read_dir(pin.join("links")).expect("links").count();
    assert_eq!(links, 6, "3 pods x 2 directions");
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
