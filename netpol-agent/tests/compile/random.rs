//! Random clusters compiled against a direct reading of the spec, flow by flow.

use crate::prelude::*;

/// The spec read directly off the model (the test kit's reference reading), with the node's
/// own addresses admitted where the cluster lets the node reach its pods.
fn spec_allows(c: &Cluster, pod: &Pod, flow: &Flow) -> bool {
    let isolated = netpol_testkit::spec::isolated(&c.state, pod, flow.direction);
    let host = flow.direction == IN && c.opts.allow_host && c.opts.host_ips.contains(&flow.peer);
    (isolated && host) || netpol_testkit::spec::oracle(&c.state, pod, flow).strict
}

#[test]
fn random_clusters_compile_to_the_verdicts_of_the_spec() {
    let outside: Vec<IpAddr> =
        ["203.0.113.7", "203.0.113.200", "198.51.100.1", "2001:db8::7", "198.18.200.1", "fd00:198:18::13"]
            .iter()
            .map(|a| a.parse().expect("address"))
            .collect();
    let mut checked = 0_usize;
    let mut allowed = 0_usize;
    for seed in 0..300 {
        let c = random_cluster(seed);
        // A compiler that has numbered another cluster before, as a long-running agent's has;
        // then this cluster twice: the second time with the numbers of the first.
        let mut compiler = Compiler::new();
        let _ = random_cluster(seed + 1000).compile_with(&mut compiler);
        let first = c.compile_with(&mut compiler).desired;
        let net = c.compile_with(&mut compiler);
        assert_eq!(first, net.desired, "seed {seed}: recompiling changes nothing");
        let mut peers: Vec<IpAddr> = c.state.pods.values().flat_map(|p| p.ips.iter().copied()).collect();
        peers.extend(c.opts.host_ips.iter().copied());
        peers.extend(outside.iter().copied());
        for pod in c.state.pods.values().filter(|p| p.node == NODE) {
            for direction in [IN, OUT] {
                for peer in &peers {
                    for (protocol, port) in
                        [(TCP, 80), (TCP, 8080), (TCP, 8081), (TCP, 8000), (TCP, 53), (UDP, 53), (UDP, 80), (SCTP, 80), (ICMP, 0), (ICMPV6, 0)]
                    {
                        let flow = Flow { direction, peer: *peer, protocol, port };
                        let want = spec_allows(&c, pod, &flow);
                        let got = allows(&net.desired, &pod.id, &flow).expect("local endpoint");
                        assert_eq!(
                            got, want,
                            "seed {seed}: {} {flow:?}\npolicies: {:#?}\npods: {:#?}\nallow_host: {}",
                            pod.id, c.state.policies, c.state.pods, c.opts.allow_host
                        );
                        let ep = net.endpoint(&format!("{}/{}", pod.id.namespace, pod.id.name));
                        if if direction == IN { ep.ingress_isolated } else { ep.egress_isolated } {
                            checked += 1;
                            allowed += usize::from(got);
                        }
                    }
                }
            }
        }
    }
    // The generator must exercise both answers where it matters: on isolated endpoints.
    println!("{allowed} of {checked} flows of isolated endpoints allowed");
    assert!(checked > 50_000 && allowed > checked / 5 && allowed < checked * 4 / 5, "{allowed} of {checked} flows allowed");
}
