//! `graph`: who can reach whom, as the data path will decide it, drawn as a Mermaid flowchart
//! or a self-contained SVG.
//!
//! Every ordered pair of pods is asked, through the compiler and [`crate::compile::eval`] (egress at the
//! source and ingress at the destination), about every port class: each port or range a policy
//! rule names (named ports resolved against the pods), and per protocol one port no rule names
//! ("other"). A range counts as allowed when both its ends are.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
};

use crate::{
    model::Direction,
    compile::eval::Flow,
    compile::eval::Dataplane,
    model::{ClusterState, Pod, PortSpec, Protocol},

};

/// A set of destination ports that is asked about as one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct PortClass {
    /// Protocol name (`TCP`, `UDP`, `SCTP`).
    pub protocol: String,
    /// First port.
    pub lo: u16,
    /// Last port (`lo` for one port).
    pub hi: u16,
    /// Whether this stands for the ports no rule names.
    pub other: bool,
}

impl PortClass {
    /// `80/TCP`, `8000-8080/TCP`, or `other TCP`.
    pub fn label(&self) -> String {
        if self.other {
            format!("other {}", self.protocol)
        } else if self.lo == self.hi {
            format!("{}/{}", self.lo, self.protocol)
        } else {
            format!("{}-{}/{}", self.lo, self.hi, self.protocol)
        }
    }
}

/// A node of the graph: one pod, or the pods of a namespace sharing a label value.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Node {
    /// Namespace.
    pub namespace: String,
    /// The pod's name, or `label=value` for a group.
    pub name: String,
    /// The pods it stands for (`ns/name`).
    pub pods: Vec<String>,
    /// Whether some of its pods are isolated for ingress.
    pub ingress_isolated: bool,
    /// Whether some of its pods are isolated for egress.
    pub egress_isolated: bool,
}

/// Allowed traffic from one node to another.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Edge {
    /// Index of the source node.
    pub from: usize,
    /// Index of the destination node.
    pub to: usize,
    /// Indices of the port classes allowed (for some pod pair, when nodes are groups).
    pub classes: BTreeSet<usize>,
}

/// The effective reachability between pods (or groups).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Reachability {
    /// Nodes, by namespace and name.
    pub nodes: Vec<Node>,
    /// Edges with at least one allowed class, by source and destination.
    pub edges: Vec<Edge>,
    /// The port classes asked about.
    pub classes: Vec<PortClass>,
}

impl Reachability {
    /// The label of an edge: `any` when every class is allowed; else per protocol the whole
    /// protocol (`TCP`) when all its classes are, or the allowed classes.
    pub fn edge_label(&self, edge: &Edge) -> String {
        if edge.classes.len() == self.classes.len() {
            return "any".to_string();
        }
        let mut parts = Vec::new();
        for proto in ["TCP", "UDP", "SCTP"] {
            let of: Vec<usize> = (0..self.classes.len()).filter(|i| self.classes[*i].protocol == proto).collect();
            if !of.is_empty() && of.iter().all(|i| edge.classes.contains(i)) {
                parts.push(proto.to_string());
            } else {
                parts.extend(of.iter().filter(|i| edge.classes.contains(i)).map(|i| self.classes[*i].label()));
            }
        }
        parts.join(", ")
    }
}

/// The port classes of a state: what rules name, and one unnamed port per protocol.
fn port_classes(state: &ClusterState) -> Vec<PortClass> {
    let mut named: BTreeSet<(Protocol, u16, u16)> = BTreeSet::new();
    for policy in state.policies.values() {
        for rule in policy.ingress.iter().chain(&policy.egress) {
            for pm in &rule.ports {
                match &pm.port {
                    PortSpec::All => {}
                    PortSpec::Range(lo, hi) => {
                        named.insert((pm.protocol, *lo, *hi));
                    }
                    PortSpec::Named(name) => {
                        for pod in state.pods.values() {
                            for np in pod.named_ports.iter().filter(|np| np.name == *name && np.protocol == pm.protocol) {
                                named.insert((np.protocol, np.port, np.port));
                            }
                        }
                    }
                }
            }
        }
    }
    let mut out: Vec<PortClass> = named.iter().map(|(p, lo, hi)| PortClass { protocol: p.to_string(), lo: *lo, hi: *hi, other: false }).collect();
    for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        let taken = |port: u16| {
            named.iter().any(|(p, lo, hi)| *p == proto && (*lo..=*hi).contains(&port))
                || state.pods.values().any(|pod| pod.named_ports.iter().any(|np| np.protocol == proto && np.port == port))
        };
        if let Some(port) = [65000, 60001, 50001, 40001, 30001, 20001, 10001, 7].into_iter().find(|p| !taken(*p)) {
            out.push(PortClass { protocol: proto.to_string(), lo: port, hi: port, other: true });
        }
    }
    out.sort_by_key(|c| (protocol_of(&c.protocol), c.other, c.lo, c.hi));
    out
}

fn protocol_of(name: &str) -> Protocol {
    match name {
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        _ => Protocol::Tcp,
    }
}

/// The reachability between every two pods.
pub fn reachability(state: &ClusterState) -> Reachability {
    let dataplane = Dataplane::compile(state);
    let classes = port_classes(state);
    let pods: Vec<&Pod> = state.pods.values().collect();
    let nodes: Vec<Node> = pods
        .iter()
        .map(|p| {
            let (ingress_isolated, egress_isolated) = isolation(state, p);
            Node { namespace: p.id.namespace.clone(), name: p.id.name.clone(), pods: vec![p.id.to_string()], ingress_isolated, egress_isolated }
        })
        .collect();
    let mut edges = Vec::new();
    for (i, src) in pods.iter().enumerate() {
        for (j, dst) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            let Some((src_ip, dst_ip)) = src.addresses_to(dst) else { continue };
            let allowed: BTreeSet<usize> = classes
                .iter()
                .enumerate()
                .filter(|(_, c)| [c.lo, c.hi].iter().all(|port| pair_allows(&dataplane, src, dst, src_ip, dst_ip, protocol_of(&c.protocol), *port)))
                .map(|(k, _)| k)
                .collect();
            if !allowed.is_empty() {
                edges.push(Edge { from: i, to: j, classes: allowed });
            }
        }
    }
    Reachability { nodes, edges, classes }
}

/// Merges the pods of each namespace that share a value of `label` into one node; pods
/// without the label stay nodes of their own. An edge between groups means some pod of one
/// reaches some pod of the other on those classes; isolation marks mean some pod is isolated.
pub fn group_by(r: &Reachability, state: &ClusterState, label: &str) -> Reachability {
    let mut keys: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (i, n) in r.nodes.iter().enumerate() {
        let value = n
            .pods
            .first()
            .and_then(|id| id.split_once('/'))
            .and_then(|(ns, name)| state.pods.get(&crate::model::ObjectRef::new(ns, name)))
            .and_then(|p| p.labels.get(label));
        let name = match value {
            Some(v) => format!("{label}={v}"),
            None => n.name.clone(),
        };
        keys.entry((n.namespace.clone(), name)).or_default().push(i);
    }
    let mut index = vec![0; r.nodes.len()];
    let mut nodes = Vec::new();
    for (k, ((namespace, name), members)) in keys.into_iter().enumerate() {
        let mut node = Node { namespace, name, pods: Vec::new(), ingress_isolated: false, egress_isolated: false };
        for m in members {
            index[m] = k;
            node.pods.extend(r.nodes[m].pods.iter().cloned());
            node.ingress_isolated |= r.nodes[m].ingress_isolated;
            node.egress_isolated |= r.nodes[m].egress_isolated;
        }
        nodes.push(node);
    }
    let mut merged: BTreeMap<(usize, usize), BTreeSet<usize>> = BTreeMap::new();
    for e in &r.edges {
        merged.entry((index[e.from], index[e.to])).or_default().extend(e.classes.iter().copied());
    }
    let edges = merged.into_iter().map(|((from, to), classes)| Edge { from, to, classes }).collect();
    Reachability { nodes, edges, classes: r.classes.clone() }
}

fn isolation(state: &ClusterState, pod: &Pod) -> (bool, bool) {
    let selecting = state.policies_selecting(pod).collect::<Vec<_>>();
    (selecting.iter().any(|p| p.isolates_ingress), selecting.iter().any(|p| p.isolates_egress))
}


fn pair_allows(dp: &Dataplane, src: &Pod, dst: &Pod, src_ip: IpAddr, dst_ip: IpAddr, protocol: Protocol, port: u16) -> bool {
    let out = Flow { direction: Direction::Egress, peer: dst_ip, protocol: protocol.number(), port };
    let into = Flow { direction: Direction::Ingress, peer: src_ip, protocol: protocol.number(), port };
    dp.allows(&src.id, &out).unwrap_or(true) && dp.allows(&dst.id, &into).unwrap_or(true)
}

/// The isolation of a node in words (`ingress, egress`), or empty.
fn isolation_text(n: &Node) -> String {
    match (n.ingress_isolated, n.egress_isolated) {
        (true, true) => "isolated: ingress, egress".to_string(),
        (true, false) => "isolated: ingress".to_string(),
        (false, true) => "isolated: egress".to_string(),
        (false, false) => String::new(),
    }
}

/// A node's name as drawn: a group's name with its number of pods.
fn display_name(n: &Node) -> String {
    if n.pods.len() > 1 {
        format!("{} ({} pods)", n.name, n.pods.len())
    } else {
        n.name.clone()
    }
}

/// The namespaces in order, each with the indices of its nodes.
fn columns(r: &Reachability) -> Vec<(String, Vec<usize>)> {
    let mut by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, n) in r.nodes.iter().enumerate() {
        by_ns.entry(n.namespace.as_str()).or_default().push(i);
    }
    by_ns.into_iter().map(|(ns, v)| (ns.to_string(), v)).collect()
}

/// Text safe inside a quoted Mermaid label.
fn mermaid_text(s: &str) -> String {
    s.replace('"', "#quot;").replace('<', "#lt;").replace('>', "#gt;")
}

/// A Mermaid `flowchart LR`: namespaces as subgraphs, pods (or groups) as nodes, isolated ones
/// double-bordered and of class `isolated`, allowed edges labelled with their ports.
pub fn to_mermaid(r: &Reachability) -> String {
    let mut out = String::from("flowchart LR\n");
    out.push_str("  classDef isolated fill:#fdecea,stroke:#c0392b,stroke-width:2px\n");
    for (k, (ns, members)) in columns(r).iter().enumerate() {
        let _ = writeln!(out, "  subgraph ns{k}[\"{}\"]", mermaid_text(ns));
        out.push_str("    direction TB\n");
        for i in members {
            let n = &r.nodes[*i];
            let iso = isolation_text(n);
            if iso.is_empty() {
                let _ = writeln!(out, "    n{i}[\"{}\"]", mermaid_text(&display_name(n)));
            } else {
                let _ = writeln!(out, "    n{i}[[\"{}<br/><small>{iso}</small>\"]]:::isolated", mermaid_text(&display_name(n)));
            }
        }
        out.push_str("  end\n");
    }
    for e in &r.edges {
        let _ = writeln!(out, "  n{} -->|\"{}\"| n{}", e.from, mermaid_text(&r.edge_label(e)), e.to);
    }
    out
}

/// Text safe in SVG content and attribute values.
fn xml_text(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

const BOX_W: i64 = 190;
const BOX_H: i64 = 46;
const COL_W: i64 = 380;
const ROW_H: i64 = 90;
const TOP: i64 = 70;
const LEFT: i64 = 30;

/// A self-contained SVG: one column per namespace, a box per pod (or group; isolated ones
/// outlined in red), an arrow per allowed edge with its ports.
pub fn to_svg(r: &Reachability) -> String {
    let cols = columns(r);
    let mut pos: BTreeMap<usize, (i64, i64)> = BTreeMap::new();
    let mut rows = 1;
    for (c, (_, members)) in cols.iter().enumerate() {
        rows = rows.max(members.len());
        for (k, i) in members.iter().enumerate() {
            pos.insert(*i, (LEFT + 20 + c as i64 * COL_W, TOP + 40 + k as i64 * ROW_H));
        }
    }
    let width = LEFT * 2 + cols.len().max(1) as i64 * COL_W;
    let height = TOP + 40 + rows as i64 * ROW_H + 40;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">"#
    );
    out.push_str("  <title>netpol reachability</title>\n");
    out.push_str(r##"  <defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#34495e"/></marker></defs>"##);
    out.push('\n');
    let _ = writeln!(out, r##"  <rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>"##);
    let _ = writeln!(
        out,
        r##"  <text x="{LEFT}" y="28" font-size="15" font-weight="bold">Allowed traffic (arrows: source to destination; red boxes: isolated pods)</text>"##
    );
    for (c, (ns, members)) in cols.iter().enumerate() {
        let x = LEFT + c as i64 * COL_W;
        let h = 40 + members.len() as i64 * ROW_H;
        let _ =
            writeln!(out, r##"  <g class="namespace"><rect x="{x}" y="{TOP}" width="{}" height="{h}" rx="8" fill="#f4f6f7" stroke="#95a5a6"/>"##, BOX_W + 40);
        let _ = writeln!(out, r##"    <text x="{}" y="{}" font-weight="bold">{}</text></g>"##, x + 10, TOP + 22, xml_text(ns));
    }
    for (k, e) in r.edges.iter().enumerate() {
        let (Some(&(x1, y1)), Some(&(x2, y2))) = (pos.get(&e.from), pos.get(&e.to)) else { continue };
        let label = xml_text(&r.edge_label(e));
        let title = format!("{} → {}: {label}", xml_text(&r.nodes[e.from].pods.join(", ")), xml_text(&r.nodes[e.to].pods.join(", ")));
        // Spread the labels of many edges a little so that they overlap less.
        let shift = (k as i64 % 5) * 9 - 18;
        let (path, lx, ly) = if x1 == x2 {
            // Same column: an arc on the right of the boxes (a loop for a group's own pods).
            let xr = x1 + BOX_W;
            let (ya, yb) = if y1 == y2 { (y1 + 12, y1 + BOX_H - 12) } else { (y1 + BOX_H / 2, y2 + BOX_H / 2) };
            let bulge = 36 + (ya - yb).abs() / 5 + (k as i64 % 3) * 14;
            (format!("M {xr} {ya} C {} {ya}, {} {yb}, {xr} {yb}", xr + bulge, xr + bulge), xr + bulge * 3 / 4 + 4, (ya + yb) / 2 + shift)
        } else {
            // Rightward edges run a little above the middle, leftward ones below: the two
            // directions between a pair of pods are two lines.
            let (xa, xb, off) = if x2 > x1 { (x1 + BOX_W, x2, -6) } else { (x1, x2 + BOX_W, 6) };
            let (ya, yb) = (y1 + BOX_H / 2 + off, y2 + BOX_H / 2 + off);
            (format!("M {xa} {ya} L {xb} {yb}"), (xa + xb) / 2, (ya + yb) / 2 + if off < 0 { -5 } else { 14 })
        };
        let _ = writeln!(
            out,
            r##"  <g class="edge"><title>{title}</title><path d="{path}" fill="none" stroke="#34495e" stroke-width="1.4" marker-end="url(#arrow)"/><text x="{lx}" y="{ly}" font-size="11" fill="#1f618d" text-anchor="middle" stroke="#ffffff" stroke-width="3" paint-order="stroke">{label}</text></g>"##
        );
    }
    for (i, n) in r.nodes.iter().enumerate() {
        let Some(&(x, y)) = pos.get(&i) else { continue };
        let iso = isolation_text(n);
        let (stroke, width, fill) = if iso.is_empty() { ("#2c3e50", "1.2", "#ffffff") } else { ("#c0392b", "2.5", "#fdecea") };
        let _ = writeln!(
            out,
            r##"  <g class="pod"><title>{}</title><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{fill}" stroke="{stroke}" stroke-width="{width}"/>"##,
            xml_text(&n.pods.join(", "))
        );
        let name_y = if iso.is_empty() { y + BOX_H / 2 + 5 } else { y + 19 };
        let _ = write!(out, r##"    <text x="{}" y="{name_y}" text-anchor="middle">{}</text>"##, x + BOX_W / 2, xml_text(&display_name(n)));
        if !iso.is_empty() {
            let _ = write!(out, r##"<text x="{}" y="{}" text-anchor="middle" font-size="10" fill="#c0392b">{iso}</text>"##, x + BOX_W / 2, y + 36);
        }
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n");
    out
}
