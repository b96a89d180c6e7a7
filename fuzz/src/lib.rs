//! The checks the fuzz targets run, as plain functions of the input bytes: the cargo-fuzz targets
//! (fuzz_targets/) call them on libFuzzer's inputs, and this crate's tests call them on
//! deterministic pseudo-random inputs (what `cargo xtask test` runs when it does not fuzz).
//!
//! - [`check_manifest`]: bytes as a manifest file through `manifests::load_documents`. No panic,
//!   and every problem names the object it is about (`Kind namespace/name`, with the file and
//!   document in its reason) or the file and document (`file (document N)`).
//! - [`check_compiler`]: a small cluster built from the bytes (a few namespaces, pods with labels
//!   from a tiny alphabet and addresses in 198.18.0.0/16 and fd00:198:18::/64, policies with
//!   selectors, ipBlocks, ports, port ranges and named ports) through `Compiler::compile` and
//!   `eval::allows`, against [`oracle`](netpol_testkit::spec::oracle) (the test kit's reading of the spec): NetworkPolicy semantics written out directly, with no
//!   identities, regions or map entries. Also: a pod no policy selects is not isolated, policies
//!   only add allows (compiling a subset of the policies allows no more), and a second
//!   compilation with the same compiler (identities and ids already handed out) agrees too.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use arbitrary::Unstructured;
use ipnet::IpNet;
use netpol_testkit::spec::{isolated, oracle};
use netpol_agent::{
    compile::{CompileOptions, Compiler}, model::Direction,
    compile::eval::{self, Flow},
    source::manifests::{self, Loaded},
    model::{ClusterState, NamedPort, Namespace, ObjectRef, Peer, Pod, Policy, PortMatch, PortSpec, Protocol, Rule, NAMESPACE_NAME_LABEL},
    model::selector::{Labels, Requirement, Selector},

};

/// The file name the manifest check gives its input.
const FILE: &str = "fuzz.yaml";

/// Bytes as one manifest file (lossy UTF-8, as the agent reads files).
pub fn check_manifest(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut loaded = Loaded::default();
    manifests::load_documents(&text, FILE, &mut loaded, &mut BTreeSet::new());
    for p in &loaded.problems {
        let names_document = |s: &str| {
            s.strip_prefix(&format!("{FILE} (document "))
                .and_then(|rest| rest.split_once(')'))
                .is_some_and(|(n, _)| n.parse::<usize>().is_ok_and(|n| n >= 1))
        };
        let names_file = names_document(&p.object);
        // `Kind namespace/name`, or only the kind when the object has no name.
        let names_object = ["Namespace", "Pod ", "NetworkPolicy "].iter().any(|k| p.object.starts_with(k))
            && p.reason.rsplit_once(" (in ").is_some_and(|(_, at)| names_document(at));
        assert!(names_file || names_object, "a problem that names neither its object nor its file: {p:?}");
        assert!(!p.reason.is_empty(), "a problem without a reason: {p:?}");
    }
    // What was kept is usable: every pod has an address, every policy a namespace and name.
    for pod in loaded.state.pods.values() {
        assert!(!pod.ips.is_empty(), "pod {} kept without addresses", pod.id);
    }
    for id in loaded.state.policies.keys() {
        assert!(!id.namespace.is_empty(), "policy {id} kept without a namespace");
    }
}

// --- The compiler check. ---

const NAMESPACES: [&str; 3] = ["n0", "n1", "n2"];
const KEYS: [&str; 3] = ["a", "b", "c"];
const VALUES: [&str; 2] = ["1", "2"];
const PORT_NAMES: [&str; 2] = ["p0", "p1"];
const PORTS: [u16; 8] = [1, 53, 80, 81, 443, 8080, 32768, 65535];
/// The node whose pods are local endpoints.
const NODE: &str = "n1";

fn pick<'a, T>(u: &mut Unstructured<'_>, of: &'a [T]) -> arbitrary::Result<&'a T> {
    u.choose(of)
}

fn labels(u: &mut Unstructured<'_>) -> arbitrary::Result<Labels> {
    let mut l = Labels::new();
    for k in KEYS {
        match u.int_in_range(0..=2u8)? {
            0 => {}
            v => {
                l.insert(k.to_string(), VALUES[usize::from(v - 1)].to_string());
            }
        }
    }
    Ok(l)
}

fn selector(u: &mut Unstructured<'_>) -> arbitrary::Result<Selector> {
    let n = u.int_in_range(0..=2u8)?;
    let mut requirements = Vec::new();
    for _ in 0..n {
        let key = pick(u, &KEYS)?.to_string();
        let values = |u: &mut Unstructured<'_>| -> arbitrary::Result<Vec<String>> {
            Ok(match u.int_in_range(0..=2u8)? {
                0 => vec!["1".into()],
                1 => vec!["2".into()],
                _ => vec!["1".into(), "2".into()],
            })
        };
        requirements.push(match u.int_in_range(0..=3u8)? {
            0 => Requirement::In(key, values(u)?),
            1 => Requirement::NotIn(key, values(u)?),
            2 => Requirement::Exists(key),
            _ => Requirement::DoesNotExist(key),
        });
    }
    Ok(Selector { requirements })
}

fn protocol(u: &mut Unstructured<'_>) -> arbitrary::Result<Protocol> {
    Ok(*pick(u, &[Protocol::Tcp, Protocol::Tcp, Protocol::Udp, Protocol::Sctp])?)
}

fn port(u: &mut Unstructured<'_>) -> arbitrary::Result<u16> {
    if u.ratio(1, 4)? {
        Ok(u.int_in_range(1..=u16::MAX)?)
    } else {
        Ok(*pick(u, &PORTS)?)
    }
}

/// An address of the small pool pods and probes use: 198.18.{0,1}.{0..15}, fd00:198:18::{0,1}:{0..15}.
fn pool_v4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, (i >> 4) & 1, i & 15)
}

fn pool_v6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, u16::from((i >> 4) & 1), u16::from(i & 15))
}

/// A prefix around an address of the pool (host bits cleared).
fn net_around(u: &mut Unstructured<'_>, v6: bool) -> arbitrary::Result<IpNet> {
    let i = u.arbitrary::<u8>()?;
    let net = if v6 {
        let len = if u.ratio(1, 8)? { u.int_in_range(0..=128u8)? } else { u.int_in_range(112..=128u8)? };
        IpNet::new(IpAddr::V6(pool_v6(i)), len)
    } else {
        let len = if u.ratio(1, 8)? { u.int_in_range(0..=32u8)? } else { u.int_in_range(20..=32u8)? };
        IpNet::new(IpAddr::V4(pool_v4(i)), len)
    };
    Ok(net.map_err(|_| arbitrary::Error::IncorrectFormat)?.trunc())
}

fn peer(u: &mut Unstructured<'_>) -> arbitrary::Result<Peer> {
    if u.ratio(1, 3)? {
        let v6 = u.ratio(1, 3)?;
        let cidr = net_around(u, v6)?;
        let mut except = Vec::new();
        for _ in 0..u.int_in_range(0..=2u8)? {
            // Strictly inside the block, as validation requires.
            let e = net_around(u, matches!(cidr, IpNet::V6(_)))?;
            if cidr.contains(&e) && e.prefix_len() > cidr.prefix_len() {
                except.push(e);
            }
        }
        Ok(Peer::IpBlock { cidr, except })
    } else {
        let namespaces = if u.arbitrary()? { Some(selector(u)?) } else { None };
        Ok(Peer::Pods { namespaces, pods: selector(u)? })
    }
}

fn port_match(u: &mut Unstructured<'_>) -> arbitrary::Result<PortMatch> {
    let protocol = protocol(u)?;
    let port = match u.int_in_range(0..=3u8)? {
        0 => PortSpec::All,
        1 => {
            let p = port(u)?;
            PortSpec::Range(p, p)
        }
        2 => {
            let (a, b) = (port(u)?, port(u)?);
            PortSpec::Range(a.min(b), a.max(b))
        }
        _ => PortSpec::Named(pick(u, &PORT_NAMES)?.to_string()),
    };
    Ok(PortMatch { protocol, port })
}

fn rule(u: &mut Unstructured<'_>) -> arbitrary::Result<Rule> {
    let peers = (0..u.int_in_range(0..=2u8)?).map(|_| peer(u)).collect::<arbitrary::Result<_>>()?;
    let ports = (0..u.int_in_range(0..=2u8)?).map(|_| port_match(u)).collect::<arbitrary::Result<_>>()?;
    Ok(Rule { peers, ports })
}

/// A small cluster from the bytes; `None` when they run out before it is whole.
pub fn cluster(u: &mut Unstructured<'_>) -> arbitrary::Result<ClusterState> {
    let mut state = ClusterState::default();
    for ns in NAMESPACES {
        // Some namespaces are absent from the snapshot: they have only their name label.
        if u.ratio(3, 4)? {
            let mut l = labels(u)?;
            l.insert(NAMESPACE_NAME_LABEL.into(), ns.into());
            state.namespaces.insert(ns.into(), Namespace { name: ns.into(), labels: l });
        }
    }
    let mut used = BTreeSet::new();
    for i in 0..u.int_in_range(1..=6u8)? {
        let ns = pick(u, &NAMESPACES)?;
        let slot = u.arbitrary::<u8>()? & 31;
        // Pod addresses are unique in a cluster.
        if !used.insert(slot) {
            continue;
        }
        let mut ips = Vec::new();
        match u.int_in_range(0..=2u8)? {
            0 => ips.push(IpAddr::V4(pool_v4(slot))),
            1 => ips.push(IpAddr::V6(pool_v6(slot))),
            _ => ips.extend([IpAddr::V4(pool_v4(slot)), IpAddr::V6(pool_v6(slot))]),
        }
        let mut named_ports = Vec::new();
        for _ in 0..u.int_in_range(0..=2u8)? {
            named_ports.push(NamedPort { name: pick(u, &PORT_NAMES)?.to_string(), protocol: protocol(u)?, port: port(u)? });
        }
        named_ports.sort();
        named_ports.dedup();
        let node = if u.ratio(2, 3)? { NODE } else { "n2" };
        let id = ObjectRef::new(*ns, format!("pod{i}"));
        state.pods.insert(id.clone(), Pod { id, node: node.into(), labels: labels(u)?, ips, named_ports });
    }
    for i in 0..u.int_in_range(0..=4u8)? {
        let ns = pick(u, &NAMESPACES)?;
        let (isolates_ingress, isolates_egress) = *pick(u, &[(true, false), (true, true), (false, true)])?;
        let ingress = (0..u.int_in_range(0..=2u8)?).map(|_| rule(u)).collect::<arbitrary::Result<_>>()?;
        let egress = (0..u.int_in_range(0..=2u8)?).map(|_| rule(u)).collect::<arbitrary::Result<_>>()?;
        let id = ObjectRef::new(*ns, format!("pol{i}"));
        state.policies.insert(id.clone(), Policy { id, pod_selector: selector(u)?, isolates_ingress, isolates_egress, ingress, egress });
    }
    Ok(state)
}

/// The pod an address belongs to.
/// Flows to probe: from bytes, with peers from the pool (pods' and other addresses).
fn flows(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<Flow>> {
    let mut out = Vec::new();
    for _ in 0..u.int_in_range(1..=24u8)? {
        let direction = if u.arbitrary()? { Direction::Ingress } else { Direction::Egress };
        let slot = u.arbitrary::<u8>()?;
        let peer = if u.arbitrary()? { IpAddr::V4(pool_v4(slot)) } else { IpAddr::V6(pool_v6(slot)) };
        let protocol = *pick(u, &[6u8, 6, 17, 132, 1, 58])?;
        out.push(Flow { direction, peer, protocol, port: port(u)? });
    }
    Ok(out)
}

/// Compiles `state` and checks every local pod against the oracle for `flows`; returns the
/// compiled verdicts (pod, flow index) -> allowed, for the monotonicity check.
fn compile_and_check(compiler: &mut Compiler, state: &ClusterState, flows: &[Flow]) -> BTreeMap<(ObjectRef, usize), bool> {
    let opts = CompileOptions { node: NODE.into(), host_ips: vec![], allow_host: false };
    let desired = compiler.compile(state, &opts);
    let mut verdicts = BTreeMap::new();
    for pod in state.pods.values() {
        let local = pod.node == NODE;
        let ep = desired.endpoints.get(&pod.id);
        assert_eq!(ep.is_some(), local, "pod {} on {}: endpoint {ep:?}", pod.id, pod.node);
        let Some(ep) = ep else {
            assert!(eval::allows(&desired, &pod.id, &flows[0]).is_none(), "a remote pod has a verdict");
            continue;
        };
        assert_eq!(ep.ingress_isolated, isolated(state, pod, Direction::Ingress), "pod {}: ingress isolation", pod.id);
        assert_eq!(ep.egress_isolated, isolated(state, pod, Direction::Egress), "pod {}: egress isolation", pod.id);
        for (i, flow) in flows.iter().enumerate() {
            // Traffic to itself is not policed by the data path (AllowSelf); no claim here.
            if pod.ips.contains(&flow.peer) {
                continue;
            }
            let got = eval::allows(&desired, &pod.id, flow).expect("a local pod has a verdict");
            let want = oracle(state, pod, flow);
            assert!(
                (!want.strict || got) && (!got || want.lenient),
                "pod {} {flow:?}: compiled {got}, oracle {want:?}\nstate: {state:#?}",
                pod.id
            );
            verdicts.insert((pod.id.clone(), i), got);
        }
    }
    verdicts
}

/// A cluster and flows from the bytes through the compiler, against the oracle.
pub fn check_compiler(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(state) = cluster(&mut u) else { return };
    let Ok(flows) = flows(&mut u) else { return };
    // Fewer policies: the first half (by name).
    let mut fewer = state.clone();
    let keep = state.policies.len() / 2;
    fewer.policies = state.policies.iter().take(keep).map(|(k, v)| (k.clone(), v.clone())).collect();

    let mut compiler = Compiler::new();
    let all = compile_and_check(&mut compiler, &state, &flows);
    // Again with the same compiler, its numbers handed out: a subset, then everything.
    let some = compile_and_check(&mut compiler, &fewer, &flows);
    let again = compile_and_check(&mut compiler, &state, &flows);
    assert_eq!(all, again, "the same state compiled twice decides differently");
    // Policies only add allows: where the pod is isolated with fewer policies, whatever those
    // allow the full set allows too.
    for ((pod, i), allowed) in &some {
        if *allowed && isolated(&fewer, &fewer.pods[pod], flows[*i].direction) {
            assert_eq!(all.get(&(pod.clone(), *i)), Some(&true), "pod {pod} {:?}: allowed by fewer policies only", flows[*i]);
        }
    }
}
