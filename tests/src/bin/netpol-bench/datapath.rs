//! Per-packet cost of the real classifiers, by BPF_PROG_TEST_RUN (the kernel's own timing),
//! with the maps filled by the real compiler and reconciler (the test kit's data-path fixture).

use std::collections::BTreeMap;

use netpol_agent::{
    datapath::{PROG_NOOP, PROG_TO_POD},
    model::ObjectRef,
};
use netpol_testkit::{
    datapath::{DataPath, PinDir, ALLOW, DROP},
    frames,
};

use crate::{synth::pod_ip, Figures};

const LOCAL: &str = "198.18.0.10";

/// An Ethernet + IPv4 + TCP SYN frame.
fn tcp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    frames::ipv4(src, dst, frames::TCP, 0, 0, &frames::tcp(sport, dport, true))
}

fn octets(ip: std::net::IpAddr) -> [u8; 4] {
    match ip {
        std::net::IpAddr::V4(a) => a.octets(),
        std::net::IpAddr::V6(_) => [0; 4],
    }
}

/// A data path whose local pod x/a (ifindex 1, what BPF_PROG_TEST_RUN uses) is isolated for
/// ingress by `entries` policies, each admitting one peer pod on TCP 80; peer 0 is the client.
struct Bench {
    dp: DataPath,
}

fn setup(entries: u32) -> anyhow::Result<Bench> {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: x, labels: {{app: a}}}}\nspec: {{nodeName: n1, containers: [{{name: c}}]}}\nstatus: {{podIP: {LOCAL}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: open, namespace: x, labels: {{app: open}}}}\nspec: {{nodeName: n1, containers: [{{name: c}}]}}\nstatus: {{podIP: 198.18.0.11}}\n"
    );
    for i in 0..entries {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: peer{i}, namespace: y, labels: {{peer: p{i}}}}}\nspec: {{nodeName: n2, containers: [{{name: c}}]}}\nstatus: {{podIP: {}}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: allow-{i}, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: a}}}}\n  ingress: [{{from: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{peer: p{i}}}}}}}], ports: [{{port: 80}}]}}]\n",
            pod_ip(i)
        ));
    }
    let state = crate::synth::state(&yaml);
    let mut dp = DataPath::load_at(PinDir::new("netpol-bench"))?;
    dp.program(&state, "n1", &[(ObjectRef::new("x", "a"), 1)]);
    Ok(Bench { dp })
}

impl Bench {
    /// Mean ns per run over `repeat` runs of one frame, as the kernel measures it.
    fn run(&mut self, prog: &str, frame: &[u8], repeat: u32) -> anyhow::Result<(f64, u32)> {
        let (duration, verdict) = self.dp.run_timed(prog, frame, repeat);
        Ok((duration.as_nanos() as f64, verdict))
    }

    /// Median ns of single runs over distinct new flows from `src` (each a conntrack miss).
    fn new_flows(&mut self, prog: &str, src: [u8; 4], dport: u16, first_port: u16, n: u16) -> anyhow::Result<f64> {
        let dst = octets(LOCAL.parse()?);
        let mut t = Vec::with_capacity(usize::from(n));
        for i in 0..n {
            t.push(self.run(prog, &tcp_frame(src, dst, first_port + i, dport), 1)?.0);
        }
        t.sort_by(f64::total_cmp);
        Ok(t[t.len() / 2])
    }
}

const REPEAT: u32 = 200_000;

/// Fills conntrack with `n` allowed flows (distinct client ports and peers).
fn fill_conntrack(b: &mut Bench, n: u32) -> anyhow::Result<()> {
    let dst = octets(LOCAL.parse()?);
    let client = octets(pod_ip(0));
    for i in 0..n {
        let port = 1024 + (i % 60000) as u16;
        let src = [client[0], client[1], client[2], client[3].wrapping_add((i / 60000) as u8)];
        let _ = b.run(PROG_TO_POD, &tcp_frame(src, dst, port, 80), 1)?;
    }
    Ok(())
}

pub fn run(figures: &mut Figures) -> anyhow::Result<()> {
    let dst = octets(LOCAL.parse()?);
    let client = octets(pod_ip(0));
    let stranger = [198, 19, 255, 200];
    let mut denied_by_entries = BTreeMap::new();
    let mut allowed_by_entries = BTreeMap::new();
    // NETPOL_BENCH_QUICK=1: only the 1-entry case (for profiling changes to the data path).
    let quick = std::env::var_os("NETPOL_BENCH_QUICK").is_some();
    let sizes: &[u32] = if quick { &[1] } else { &[1, 1000, 10_000] };
    for &entries in sizes {
        let mut b = setup(entries)?;
        fill_conntrack(&mut b, 100_000)?;
        let est = tcp_frame(client, dst, 40000, 80);
        let (_, v) = b.run(PROG_TO_POD, &est, 1)?;
        anyhow::ensure!(v == ALLOW, "the client's flow is allowed");
        // Interleave the floor and the established path so both see the same machine state.
        // The established path with the flow cache (its entry found after the first run) and
        // without it (the endpoint and conntrack hash lookups, as after a cache miss).
        let mut empty = Vec::new();
        let mut established = Vec::new();
        let mut uncached = Vec::new();
        for _ in 0..5 {
            empty.push(b.run(PROG_NOOP, &est, REPEAT)?.0);
            established.push(b.run(PROG_TO_POD, &est, REPEAT)?.0);
            b.dp.dp.set_flow_cache(false)?;
            uncached.push(b.run(PROG_TO_POD, &est, REPEAT)?.0);
            b.dp.dp.set_flow_cache(true)?;
        }
        for v in [&mut empty, &mut established, &mut uncached] {
            v.sort_by(f64::total_cmp);
        }
        let (empty, established, uncached) = (empty[2], established[2], uncached[2]);
        let (denied, v) = b.run(PROG_TO_POD, &tcp_frame(stranger, dst, 40000, 80), REPEAT)?;
        anyhow::ensure!(v == DROP || quick, "a stranger is denied");
        let allowed_new = b.new_flows(PROG_TO_POD, client, 80, 20000, 3000)?;
        let empty_single = b.new_flows(PROG_NOOP, client, 80, 20000, 3000)?;
        println!(
            "  datapath entries={entries:>5}: empty {empty:6.1} ns | established {established:6.1} ns (+{:5.1}; flow cache off {uncached:6.1} ns, +{:5.1}) | new flow denied {denied:6.1} ns | new flow allowed {:6.1} ns over empty (single runs)",
            established - empty,
            uncached - empty,
            allowed_new - empty_single
        );
        figures.add(&format!("datapath_empty_ns_{entries}"), empty, "ns");
        figures.add(&format!("datapath_established_ns_{entries}"), established, "ns");
        figures.add(&format!("datapath_established_uncached_ns_{entries}"), uncached, "ns");
        figures.add(&format!("datapath_new_flow_denied_ns_{entries}"), denied, "ns");
        figures.add(&format!("datapath_new_flow_allowed_over_empty_ns_{entries}"), allowed_new - empty_single, "ns");
        if entries == 1 {
            figures.add("established_overhead_ns", established - empty, "ns");
            figures.add("established_uncached_overhead_ns", uncached - empty, "ns");
        }
        denied_by_entries.insert(entries, denied - empty);
        allowed_by_entries.insert(entries, allowed_new - empty_single);
    }
    if quick {
        return Ok(());
    }
    // A pod no policy selects: new flows pass after the endpoint lookup (and get tracked).
    let mut b = setup(0)?;
    let open_new = b.new_flows(PROG_TO_POD, stranger, 80, 20000, 3000)?;
    let empty_single = b.new_flows(PROG_NOOP, stranger, 80, 20000, 3000)?;
    println!("  datapath non-isolated pod: new flow {:6.1} ns over empty (single runs)", open_new - empty_single);
    figures.add("datapath_non_isolated_new_flow_over_empty_ns", open_new - empty_single, "ns");
    figures.add("new_flow_ratio_10k_vs_1", denied_by_entries[&10_000] / denied_by_entries[&1], "ratio");
    figures.add("new_flow_allowed_ratio_10k_vs_1", allowed_by_entries[&10_000] / allowed_by_entries[&1].max(1.0), "ratio");
    Ok(())
}
