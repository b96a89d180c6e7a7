//! Tests of `graph`: edges exactly where `explain` (held to the compiled maps) allows, grouping,
//! and output that is well-formed Mermaid and XML.

use netpol_agent::{
    model::ObjectRef,
    tools::{
        explain::{explain, Endpoint, PortQuery},
        graph::*,
    },
};
use netpol_testkit::{
    random::random_state,
    scenarios::{load, three_tier, THREE_TIER},
};

/// (source, destination, label) of every edge, by node name.
fn edges(r: &Reachability) -> Vec<(String, String, String)> {
    r.edges.iter().map(|e| (r.nodes[e.from].name.clone(), r.nodes[e.to].name.clone(), r.edge_label(e))).collect()
}

fn e(from: &str, to: &str, label: &str) -> (String, String, String) {
    (from.to_string(), to.to_string(), label.to_string())
}

#[test]
fn the_three_tier_example_has_exactly_its_intended_edges() {
    let r = reachability(&three_tier());
    let classes: Vec<String> = r.classes.iter().map(PortClass::label).collect();
    assert_eq!(classes, ["53/TCP", "80/TCP", "443/TCP", "5432/TCP", "8080/TCP", "other TCP", "53/UDP", "other UDP", "other SCTP"]);
    let mut got = edges(&r);
    got.sort();
    let mut want = vec![
        e("backend", "database", "5432/TCP"),
        e("frontend", "backend", "8080/TCP"),
        e("ingress-controller", "frontend", "80/TCP"),
        // 0.0.0.0/0 in the controller's ingress includes pod addresses; kube-dns's egress is open.
        e("kube-dns", "ingress-controller", "80/TCP, 443/TCP"),
    ];
    for client in ["backend", "database", "frontend", "ingress-controller"] {
        want.push(e(client, "kube-dns", "53/TCP, 53/UDP"));
    }
    want.sort();
    assert_eq!(got, want);
    let dns = r.nodes.iter().find(|n| n.name == "kube-dns").expect("kube-dns");
    assert!(dns.ingress_isolated && !dns.egress_isolated);
}

#[test]
fn without_policies_every_pair_is_connected_on_any_port() {
    let mut state = three_tier();
    state.policies.clear();
    let r = reachability(&state);
    let n = r.nodes.len();
    assert_eq!(r.edges.len(), n * (n - 1));
    assert!(r.edges.iter().all(|e| r.edge_label(e) == "any"));
    assert!(r.nodes.iter().all(|n| !n.ingress_isolated && !n.egress_isolated));
}

#[test]
fn random_clusters_have_an_edge_class_exactly_where_explain_allows_it() {
    let mut checked = 0;
    let mut allowed = 0;
    for seed in 0..40 {
        let state = random_state(seed);
        let r = reachability(&state);
        for (i, src) in r.nodes.iter().enumerate() {
            for (j, dst) in r.nodes.iter().enumerate() {
                if i == j {
                    continue;
                }
                let edge = r.edges.iter().find(|e| e.from == i && e.to == j);
                for (k, class) in r.classes.iter().enumerate() {
                    let port: PortQuery = format!("{}/{}", class.lo, class.protocol).parse().expect("port");
                    let from = Endpoint::Pod(ObjectRef::new(&src.namespace, &src.name));
                    let to = Endpoint::Pod(ObjectRef::new(&dst.namespace, &dst.name));
                    let Ok(x) = explain(&state, &from, &to, port) else { continue };
                    let hi: PortQuery = format!("{}/{}", class.hi, class.protocol).parse().expect("port");
                    let want = x.allowed && explain(&state, &from, &to, hi).expect("explained").allowed;
                    assert_eq!(edge.is_some_and(|e| e.classes.contains(&k)), want, "seed {seed}: {} -> {} {}", src.name, dst.name, class.label());
                    checked += 1;
                    allowed += usize::from(want);
                }
            }
        }
    }
    assert!(checked > 5000 && allowed > checked / 10 && allowed < checked * 9 / 10, "{allowed} of {checked}");
}

#[test]
fn grouping_by_a_label_merges_pods_and_their_edges() {
    let extra = "apiVersion: v1\nkind: Pod\nmetadata: {name: frontend-2, namespace: production, labels: {app: frontend}}\nspec: {nodeName: n2, containers: [{name: c}]}\nstatus: {podIP: 198.18.0.21}\n";
    let state = load(&format!("{THREE_TIER}\n---\n{extra}")).state;
    let r = group_by(&reachability(&state), &state, "app");
    let fe = r.nodes.iter().find(|n| n.name == "app=frontend").expect("group");
    assert_eq!(fe.pods, ["production/frontend", "production/frontend-2"]);
    assert!(fe.ingress_isolated && fe.egress_isolated);
    // kube-dns has no app label: it stays a pod of its own.
    assert!(r.nodes.iter().any(|n| n.name == "kube-dns"));
    let got = edges(&r);
    assert!(got.contains(&e("app=ingress-nginx", "app=frontend", "80/TCP")), "{got:?}");
    assert!(got.contains(&e("app=frontend", "app=backend", "8080/TCP")), "{got:?}");
    assert!(!got.iter().any(|(a, b, _)| a == b), "frontends may not talk to each other: {got:?}");
    assert!(to_mermaid(&r).contains("[[\"app=frontend (2 pods)<br/>"), "{}", to_mermaid(&r));
}

#[test]
fn mermaid_output_is_a_flowchart_with_namespaces_nodes_and_labelled_edges() {
    let r = reachability(&three_tier());
    let m = to_mermaid(&r);
    let lines: Vec<&str> = m.lines().collect();
    assert_eq!(lines[0], "flowchart LR");
    assert_eq!(lines.iter().filter(|l| l.trim_start().starts_with("subgraph ")).count(), 3);
    assert_eq!(lines.iter().filter(|l| l.trim() == "end").count(), 3);
    assert!(m.contains("  subgraph ns1[\"kube-system\"]\n"), "{m}");
    let frontend = r.nodes.iter().position(|n| n.name == "frontend").expect("frontend");
    assert!(m.contains(&format!("    n{frontend}[[\"frontend<br/><small>isolated: ingress, egress</small>\"]]:::isolated\n")), "{m}");
    let edge_lines: Vec<&&str> = lines.iter().filter(|l| l.contains("-->")).collect();
    assert_eq!(edge_lines.len(), r.edges.len());
    for l in edge_lines {
        let rest = l.trim().strip_prefix('n').expect("from node");
        let (from, rest) = rest.split_once(" -->|\"").expect("arrow with a label");
        let (label, to) = rest.split_once("\"| n").expect("end of label");
        assert!(from.parse::<usize>().is_ok() && to.parse::<usize>().is_ok() && !label.is_empty(), "{l}");
    }
}

/// A small XML well-formedness check: tags nest and close, attributes are quoted, `&` starts
/// an entity, and there is one root element.
fn check_xml(text: &str) -> Result<usize, String> {
    let mut stack: Vec<String> = Vec::new();
    let mut elements = 0;
    let mut roots = 0;
    let mut rest = text;
    while let Some(lt) = rest.find('<') {
        check_text(&rest[..lt])?;
        if stack.is_empty() && !rest[..lt].trim().is_empty() {
            return Err(format!("text outside the root: {:?}", &rest[..lt]));
        }
        let gt = rest[lt..].find('>').ok_or("unclosed tag")? + lt;
        let tag = &rest[lt + 1..gt];
        rest = &rest[gt + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().ok_or_else(|| format!("</{name}> closes nothing"))?;
            if open != name.trim() {
                return Err(format!("</{name}> closes <{open}>"));
            }
            continue;
        }
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        let self_closing = tag.ends_with('/');
        let body = tag.trim_end_matches('/');
        let name: String = body.chars().take_while(|c| !c.is_whitespace()).collect();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':') {
            return Err(format!("bad tag name in <{tag}>"));
        }
        check_attributes(&body[name.len()..])?;
        elements += 1;
        if stack.is_empty() {
            roots += 1;
        }
        if !self_closing {
            stack.push(name);
        }
    }
    check_text(rest)?;
    if !stack.is_empty() || roots != 1 || !rest.trim().is_empty() {
        return Err(format!("unclosed {stack:?}, {roots} roots"));
    }
    Ok(elements)
}

fn check_text(t: &str) -> Result<(), String> {
    for (i, _) in t.match_indices('&') {
        let entity: String = t[i + 1..].chars().take_while(|c| *c != ';').collect();
        if !["amp", "lt", "gt", "quot", "apos"].contains(&entity.as_str()) {
            return Err(format!("bare & in {t:?}"));
        }
    }
    if t.contains("]]>") {
        return Err(format!("]]> in {t:?}"));
    }
    Ok(())
}

fn check_attributes(mut a: &str) -> Result<(), String> {
    loop {
        a = a.trim_start();
        if a.is_empty() {
            return Ok(());
        }
        let eq = a.find('=').ok_or_else(|| format!("attribute without value: {a:?}"))?;
        let name = a[..eq].trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(format!("bad attribute name {name:?}"));
        }
        let value = a[eq + 1..].strip_prefix('"').ok_or_else(|| format!("unquoted attribute {name}"))?;
        let end = value.find('"').ok_or_else(|| format!("unterminated attribute {name}"))?;
        check_text(&value[..end])?;
        if value[..end].contains('<') {
            return Err(format!("< in attribute {name}"));
        }
        a = &value[end + 1..];
    }
}

#[test]
fn the_xml_checker_rejects_what_is_not_xml() {
    assert!(check_xml("<a><b x=\"1\"/></a>").is_ok());
    for bad in ["<a><b></a>", "<a x=1/>", "<a>&</a>", "<a/><b/>", "<a>", "<a x=\"<\"/>"] {
        assert!(check_xml(bad).is_err(), "{bad}");
    }
}

#[test]
fn svg_output_is_well_formed_xml_with_a_box_per_node_and_a_line_per_edge() {
    let mut state = three_tier();
    // Names that need escaping, and a group with a loop.
    let pod = state.pods.values().next().expect("a pod").clone();
    let mut odd = pod.clone();
    odd.id = ObjectRef::new(pod.id.namespace.clone(), "a&b<c>\"d'");
    odd.ips = vec!["198.18.0.99".parse().expect("ip")];
    state.pods.insert(odd.id.clone(), odd);
    for r in [reachability(&state), group_by(&reachability(&state), &state, "app")] {
        let svg = to_svg(&r);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""), "{svg}");
        check_xml(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        assert_eq!(svg.matches("<g class=\"pod\">").count(), r.nodes.len());
        assert_eq!(svg.matches("<g class=\"edge\">").count(), r.edges.len());
        assert_eq!(svg.matches("<g class=\"namespace\">").count(), 3);
        assert!(svg.contains("a&amp;b&lt;c&gt;&quot;d&apos;") || r.nodes.iter().all(|n| !n.name.contains('&')), "{svg}");
        let m = to_mermaid(&r);
        assert!(!m.contains("a&b<c>\"d"), "{m}");
    }
}
