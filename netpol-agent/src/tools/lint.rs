//! `lint`: policies that are valid but probably do not do what their author meant.
//!
//! Every [`Finding`] names the object, the rule (`ingress[0].from[1]`, or empty), a stable
//! kebab-case code, why it matters and how to fix it. Checks that depend on traffic (an allow
//! on one side that the other side drops) ask the compiler and [`crate::compile::eval`], like `explain`;
//! the others read the model. Objects the loader had to leave out are findings too.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    path::Path,
};

use crate::{
    compile::cidr,
    model::Direction,
    compile::eval::Flow,
    tools::explain::selector_text,
    compile::eval::Dataplane,
    source::manifests::{manifest_files, DEFAULT_NAMESPACE},
    model::{ClusterState, ObjectRef, Peer, Pod, Policy, PortMatch, PortSpec, Problem, Protocol, Rule, NAMESPACE_NAME_LABEL},
    model::selector::{Requirement, Selector},

};

/// One thing worth a second look.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Finding {
    /// `Kind namespace/name` (`Namespace name` for namespaces).
    pub object: String,
    /// The rule or field: `ingress[0].from[1]`, `podSelector`, or empty for the whole object.
    pub rule: String,
    /// A stable kebab-case id of the kind of finding.
    pub code: String,
    /// What is wrong and why it matters.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.rule.is_empty() { String::new() } else { format!(" {}", self.rule) };
        write!(f, "{}{at}: [{}] {}\n    fix: {}", self.object, self.code, self.message, self.fix)
    }
}

/// What lint needs to know beyond the state: what the loader had to leave out, and the
/// policies whose manifest named no namespace.
#[derive(Clone, Debug, Default)]
pub struct Extra {
    /// Objects left out, with the reason.
    pub problems: Vec<Problem>,
    /// Policies whose manifest has no `metadata.namespace` (loaded into `default`), with the
    /// file they are in.
    pub namespace_missing: Vec<(ObjectRef, String)>,
}

/// Reads the manifests under `dir` again for what the state does not record: the
/// NetworkPolicies without `metadata.namespace`.
pub fn namespace_missing_in_dir(dir: &Path) -> std::io::Result<Vec<(ObjectRef, String)>> {
    let mut out = Vec::new();
    for path in manifest_files(dir)? {
        let text = match std::fs::read(&path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let rel = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
        out.extend(namespace_missing(&text, &rel));
    }
    Ok(out)
}

/// The NetworkPolicies of one file (several documents, `List`s) without `metadata.namespace`,
/// as the loader names them (`default/name`), with the file.
pub fn namespace_missing(text: &str, file: &str) -> Vec<(ObjectRef, String)> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        // The loader reports malformed YAML; like it, stop at the first error.
        let Ok(value) = serde_yaml::Value::deserialize(doc) else { break };
        let items = match value.get("kind").and_then(|k| k.as_str()) {
            Some(k) if k.ends_with("List") => value.get("items").and_then(|i| i.as_sequence()).cloned().unwrap_or_default(),
            _ => vec![value],
        };
        for item in items {
            let meta = item.get("metadata");
            if item.get("kind").and_then(|k| k.as_str()) == Some("NetworkPolicy") && meta.and_then(|m| m.get("namespace")).is_none() {
                let name = meta.and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or("?");
                out.push((ObjectRef::new(DEFAULT_NAMESPACE, name), file.to_string()));
            }
        }
    }
    out
}

/// Every finding for `state`, sorted by object, rule and code.
pub fn lint(state: &ClusterState, extra: &Extra) -> Vec<Finding> {
    let mut l = Linter {
        state,
        out: Vec::new(),
        dataplane: Dataplane::compile(state),
        namespaces: namespaces(state),
        every_port: named_ports_anywhere(state),
    };
    for p in &extra.problems {
        l.problem(p);
    }
    for (id, file) in &extra.namespace_missing {
        l.push(
            policy_object(id),
            "",
            "namespace-missing",
            format!("the manifest in {file} has no metadata.namespace, so the policy lands in the namespace of whoever applies it (`default` here and with a fresh kubeconfig) and does not protect the pods it was written for"),
            "add `namespace: <the namespace of the pods it is for>` under metadata".to_string(),
        );
    }
    for policy in state.policies.values() {
        l.policy(policy);
    }
    l.default_deny();
    l.dns();
    l.out.sort();
    l.out.dedup();
    l.out
}

/// Every (protocol, port) any rule or container port names (TCP 80 when none does).
fn named_ports_anywhere(state: &ClusterState) -> Vec<(Protocol, u16)> {
    let mut out: BTreeSet<(Protocol, u16)> = BTreeSet::new();
    for policy in state.policies.values() {
        for rule in policy.ingress.iter().chain(&policy.egress) {
            for pm in &rule.ports {
                if let PortSpec::Range(lo, _) = pm.port {
                    out.insert((pm.protocol, lo));
                }
            }
        }
    }
    for pod in state.pods.values() {
        out.extend(pod.named_ports.iter().map(|np| (np.protocol, np.port)));
    }
    if out.is_empty() {
        out.insert((Protocol::Tcp, 80));
    }
    out.into_iter().collect()
}

/// Every namespace the state knows of (declared, or holding pods or policies), with labels.
fn namespaces(state: &ClusterState) -> BTreeMap<String, crate::model::selector::Labels> {
    let names: BTreeSet<&String> =
        state.namespaces.keys().chain(state.pods.keys().map(|p| &p.namespace)).chain(state.policies.keys().map(|p| &p.namespace)).collect();
    names.into_iter().map(|n| (n.clone(), state.namespace_labels(n))).collect()
}

fn policy_object(id: &ObjectRef) -> String {
    format!("NetworkPolicy {id}")
}

fn dir_word(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

fn peers_word(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    }
}

struct Linter<'a> {
    state: &'a ClusterState,
    out: Vec<Finding>,
    dataplane: Dataplane,
    namespaces: BTreeMap<String, crate::model::selector::Labels>,
    /// [`named_ports_anywhere`] of the state, computed once (it is asked for per pod pair).
    every_port: Vec<(Protocol, u16)>,
}

impl<'a> Linter<'a> {
    fn push(&mut self, object: String, rule: &str, code: &str, message: String, fix: String) {
        self.out.push(Finding { object, rule: rule.to_string(), code: code.to_string(), message, fix });
    }

    /// An object the loader left out.
    fn problem(&mut self, p: &Problem) {
        let reason = &p.reason;
        // Policy reasons start with the field: `spec.ingress[0].from[1].ipBlock: ...`.
        let rule = reason.strip_prefix("spec.").and_then(|r| r.split_once(':')).map(|(field, _)| field.to_string()).unwrap_or_default();
        let (code, fix) = if reason.contains("needs values") {
            ("selector-in-without-values", "give the In/NotIn expression at least one value, or use Exists/DoesNotExist")
        } else if reason.contains("ipBlock.except") {
            (
                "ip-block-except-outside-cidr",
                "every except entry must be strictly inside cidr; an except equal to or containing the cidr leaves nothing: drop the peer instead",
            )
        } else if reason.contains("endPort") && reason.contains("below port") {
            ("end-port-below-port", "endPort is the last port of the range: make it at least port, or swap them")
        } else if reason.contains("a peer needs") {
            (
                "empty-peer",
                "a peer needs podSelector, namespaceSelector or ipBlock; to allow everyone write the rule without from/to (`- {}` in the rule list), to allow no one leave the rule out",
            )
        } else if reason.contains("host bits") {
            ("ip-block-host-bits", "write the network address of the block (the message suggests it)")
        } else {
            ("invalid-object", "fix the field the message names")
        };
        let message = format!("{reason}: the API server rejects this object and netpol leaves it out, so none of its rules apply");
        self.push(p.object.clone(), &rule, code, message, fix.to_string());
    }

    fn policy(&mut self, policy: &Policy) {
        let object = policy_object(&policy.id);
        let selected = self.selected(policy);
        if !self.state.pods.is_empty() && selected.is_empty() {
            self.push(
                object.clone(),
                "podSelector",
                "policy-selects-no-pod",
                format!(
                    "podSelector {} matches no pod in namespace {}: the policy applies to nothing",
                    selector_text(&policy.pod_selector),
                    policy.id.namespace
                ),
                "check the labels against the pods' (kubectl get pods --show-labels), and the policy's namespace".to_string(),
            );
        }
        self.selector(&object, "podSelector", &policy.pod_selector);
        for (direction, isolates, rules) in
            [(Direction::Ingress, policy.isolates_ingress, &policy.ingress), (Direction::Egress, policy.isolates_egress, &policy.egress)]
        {
            let dir = dir_word(direction);
            if !isolates && !rules.is_empty() {
                self.push(
                    object.clone(),
                    dir,
                    "rules-ignored-by-policy-types",
                    format!(
                        "the policy has {dir} rules but its policyTypes leave out {}, so they are ignored",
                        if dir == "ingress" { "Ingress" } else { "Egress" }
                    ),
                    format!("add {} to policyTypes, or remove the {dir} rules", if dir == "ingress" { "Ingress" } else { "Egress" }),
                );
                continue;
            }
            for (i, rule) in rules.iter().enumerate() {
                self.rule(policy, &selected, direction, i, rule);
            }
        }
    }

    fn selected(&self, policy: &Policy) -> Vec<&'a Pod> {
        self.state.pods.values().filter(|p| p.id.namespace == policy.id.namespace && policy.pod_selector.matches(&p.labels)).collect()
    }

    /// The pods a peer selects.
    fn peer_pods(&self, policy: &Policy, namespaces: Option<&Selector>, pods: &Selector) -> Vec<&'a Pod> {
        self.state
            .pods
            .values()
            .filter(|p| match namespaces {
                None => p.id.namespace == policy.id.namespace,
                Some(sel) => sel.matches(&self.state.namespace_labels(&p.id.namespace)),
            })
            .filter(|p| pods.matches(&p.labels))
            .collect()
    }

    fn rule(&mut self, policy: &Policy, selected: &[&Pod], direction: Direction, i: usize, rule: &Rule) {
        let object = policy_object(&policy.id);
        let dir = dir_word(direction);
        let pw = peers_word(direction);
        let at = format!("{dir}[{i}]");
        if rule.peers.is_empty() && rule.ports.is_empty() {
            let whom =
                if direction == Direction::Ingress { "from everywhere, including outside the cluster" } else { "to everywhere, including outside the cluster" };
            self.push(
                object.clone(),
                &at,
                "rule-allows-everything",
                format!("`{dir}: [{{}}]` looks empty but is a rule without `{pw}` and `ports`: it allows all {dir} {whom}"),
                format!(
                    "to deny all {dir}, write `{dir}: []` (or no {dir} rules) with {} in policyTypes; to allow all, keep it",
                    if direction == Direction::Ingress { "Ingress" } else { "Egress" }
                ),
            );
        }
        // Peers.
        let ns_only: Vec<usize> = rule
            .peers
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p, Peer::Pods { namespaces: Some(_), pods } if pods.is_everything()))
            .map(|(j, _)| j)
            .collect();
        let pod_only: Vec<usize> = rule.peers.iter().enumerate().filter(|(_, p)| matches!(p, Peer::Pods { namespaces: None, .. })).map(|(j, _)| j).collect();
        if let (Some(&n), Some(&p)) = (ns_only.first(), pod_only.first()) {
            if let (Peer::Pods { namespaces: Some(ns), .. }, Peer::Pods { pods, .. }) = (&rule.peers[n], &rule.peers[p]) {
                self.push(
                object.clone(),
                &format!("{at}.{pw}[{n}]"),
                "peers-ored",
                format!(
                    "{pw}[{n}] (namespaceSelector {}) and {pw}[{p}] (podSelector {}) are two peers, and peers are OR'd: this allows every pod of the namespaces matching {}, and the pods matching {} of namespace {} — did you mean one peer with both selectors?",
                    selector_text(ns),
                    selector_text(pods),
                    selector_text(ns),
                    selector_text(pods),
                    policy.id.namespace
                ),
                "to require both, write them as one list item: `- namespaceSelector: ...` followed by `  podSelector: ...` (no dash before podSelector)".to_string(),
            );
            }
        }
        for (j, peer) in rule.peers.iter().enumerate() {
            let pat = format!("{at}.{pw}[{j}]");
            let Peer::Pods { namespaces, pods } = peer else { continue };
            match namespaces {
                None if pods.is_everything() => self.push(
                    object.clone(),
                    &pat,
                    "empty-pod-selector-peer",
                    format!("`podSelector: {{}}` as a peer looks like no one but selects every pod of namespace {}", policy.id.namespace),
                    "to allow the whole namespace, keep it; to allow some pods, give the podSelector labels; to allow no one, remove the peer".to_string(),
                ),
                Some(ns) if ns.is_everything() => self.push(
                    object.clone(),
                    &pat,
                    "empty-namespace-selector",
                    if pods.is_everything() {
                        "`namespaceSelector: {}` looks like no namespace (or this one) but selects every namespace: every pod of the cluster".to_string()
                    } else {
                        format!(
                            "`namespaceSelector: {{}}` selects every namespace: pods matching {} in any namespace, not only in {}",
                            selector_text(pods),
                            policy.id.namespace
                        )
                    },
                    "to mean this namespace only, drop namespaceSelector; to name namespaces, select them by `kubernetes.io/metadata.name`".to_string(),
                ),
                _ => {}
            }
            let mut ns_known = true;
            if let Some(ns) = namespaces {
                ns_known = self.namespace_selector(&object, &format!("{pat}.namespaceSelector"), ns);
                self.selector(&object, &format!("{pat}.namespaceSelector"), ns);
            }
            self.selector(&object, &format!("{pat}.podSelector"), pods);
            if ns_known && !self.state.pods.is_empty() && self.peer_pods(policy, namespaces.as_ref(), pods).is_empty() {
                let where_ = match namespaces {
                    None => format!("namespace {}", policy.id.namespace),
                    Some(ns) => format!("the namespaces matching {}", selector_text(ns)),
                };
                self.push(
                    object.clone(),
                    &pat,
                    "peer-selects-no-pod",
                    format!("podSelector {} matches no pod in {where_}: the peer allows nothing", selector_text(pods)),
                    "check the labels against the pods', and whether a namespaceSelector is needed to reach another namespace".to_string(),
                );
            }
        }
        // Ports.
        for (k, pm) in rule.ports.iter().enumerate() {
            let PortSpec::Named(name) = &pm.port else { continue };
            if self.state.pods.is_empty() {
                break;
            }
            let owners: Vec<&Pod> = match direction {
                Direction::Ingress => selected.to_vec(),
                Direction::Egress => self.egress_peer_pods(policy, rule),
            };
            if !owners.iter().any(|p| p.named_ports.iter().any(|np| np.name == *name && np.protocol == pm.protocol)) {
                let whose = if direction == Direction::Ingress { "the pods the policy selects" } else { "the pods the rule allows" };
                self.push(
                    object.clone(),
                    &format!("{at}.ports[{k}]"),
                    "named-port-not-found",
                    format!("no {} port named {name:?} on {whose}: this port entry matches nothing", pm.protocol),
                    "use the name of a containerPort of those pods (with its protocol), or the port number".to_string(),
                );
            }
        }
        self.far_side(policy, selected, direction, &at, rule);
    }

    /// The pods an egress rule's peers can name (for named ports): by selector, all pods when
    /// the rule has no peers, or pods inside its ipBlocks.
    fn egress_peer_pods(&self, policy: &Policy, rule: &Rule) -> Vec<&'a Pod> {
        if rule.peers.is_empty() {
            return self.state.pods.values().collect();
        }
        self.state
            .pods
            .values()
            .filter(|p| {
                rule.peers.iter().any(|peer| match peer {
                    Peer::Pods { namespaces, pods } => {
                        let ns_ok = match namespaces {
                            None => p.id.namespace == policy.id.namespace,
                            Some(sel) => sel.matches(&self.state.namespace_labels(&p.id.namespace)),
                        };
                        ns_ok && pods.matches(&p.labels)
                    }
                    Peer::IpBlock { cidr, except } => p.ips.iter().all(|ip| cidr::addr_in_block(ip, cidr, except)),
                })
            })
            .collect()
    }

    /// Whether a namespaceSelector's keys exist; reports the ones no namespace carries, and a
    /// selector that matches no namespace. Returns whether the selector matches a namespace.
    fn namespace_selector(&mut self, object: &str, at: &str, sel: &Selector) -> bool {
        let mut ok = true;
        for r in &sel.requirements {
            let (Requirement::In(key, _) | Requirement::Exists(key)) = r else { continue };
            if self.namespaces.values().any(|labels| labels.contains_key(key)) {
                continue;
            }
            ok = false;
            let fix = match r {
                Requirement::In(k, vs) if k == "name" && vs.len() == 1 => {
                    format!(
                        "namespaces are not labelled `name` unless someone did it; select by the label the API server sets: `{NAMESPACE_NAME_LABEL}: {}`",
                        vs[0]
                    )
                }
                _ => format!("label the namespaces (kubectl label namespace ... {key}=...), or select them by `{NAMESPACE_NAME_LABEL}`"),
            };
            self.push(
                object.to_string(),
                at,
                "namespace-label-unknown",
                format!("no namespace carries the label {key:?}, so namespaceSelector {} matches no namespace and the peer allows nothing", selector_text(sel)),
                fix,
            );
        }
        if ok && !self.namespaces.values().any(|labels| sel.matches(labels)) {
            ok = false;
            self.push(
                object.to_string(),
                at,
                "namespace-selector-matches-nothing",
                format!(
                    "namespaceSelector {} matches none of the namespaces ({}): the peer allows nothing",
                    selector_text(sel),
                    self.namespaces.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                "check the label values against `kubectl get namespaces --show-labels`".to_string(),
            );
        }
        ok
    }

    /// A selector whose requirements contradict each other.
    fn selector(&mut self, object: &str, at: &str, sel: &Selector) {
        if let Some(why) = contradiction(sel) {
            self.push(
                object.to_string(),
                at,
                "selector-never-matches",
                format!("selector {} can never match: {why}", selector_text(sel)),
                "the requirements are ANDed: drop or correct the one that contradicts the others".to_string(),
            );
        }
    }

    /// An allow on this side that the other side drops: for every pod pair the rule's
    /// selector peers name, and the ports the rule names, whether the far side (the peer's
    /// ingress for an egress rule, its egress for an ingress rule) admits at least one. A peer
    /// with an empty podSelector (whole namespaces) is reported only when no pair gets through.
    fn far_side(&mut self, policy: &Policy, selected: &[&Pod], direction: Direction, at: &str, rule: &Rule) {
        let pw = peers_word(direction);
        for (j, peer) in rule.peers.iter().enumerate() {
            let Peer::Pods { namespaces, pods } = peer else { continue };
            let peers = self.peer_pods(policy, namespaces.as_ref(), pods);
            let mut blocked: Vec<String> = Vec::new();
            let mut passed = 0_usize;
            let mut far_isolating: BTreeSet<String> = BTreeSet::new();
            for this in selected {
                for other in &peers {
                    if this.id == other.id {
                        continue;
                    }
                    let (src, dst) = if direction == Direction::Egress { (*this, *other) } else { (*other, *this) };
                    let Some((src_ip, dst_ip)) = common_family(src, dst) else { continue };
                    let ports = self.expected_ports(rule, direction, this, other);
                    let near_ok: Vec<(Protocol, u16)> = ports
                        .into_iter()
                        .filter(|(proto, port)| self.verdict(&this.id, direction, if direction == Direction::Egress { dst_ip } else { src_ip }, *proto, *port))
                        .collect();
                    if near_ok.is_empty() {
                        continue;
                    }
                    let far_dir = if direction == Direction::Egress { Direction::Ingress } else { Direction::Egress };
                    let far_peer = if direction == Direction::Egress { src_ip } else { dst_ip };
                    if near_ok.iter().any(|(proto, port)| self.verdict(&other.id, far_dir, far_peer, *proto, *port)) {
                        passed += 1;
                        continue;
                    }
                    let list = if rule.ports.is_empty() {
                        "any port".to_string()
                    } else {
                        near_ok.iter().map(|(p, n)| format!("{n}/{p}")).collect::<Vec<_>>().join(", ")
                    };
                    blocked.push(format!("{} -> {} on {list}", src.id, dst.id));
                    for p in self.state.policies_selecting(other).collect::<Vec<_>>() {
                        if if far_dir == Direction::Ingress { p.isolates_ingress } else { p.isolates_egress } {
                            far_isolating.insert(p.id.to_string());
                        }
                    }
                }
            }
            // A peer of whole namespaces names no pod in particular: only when none of its pods
            // gets through is that a mistake.
            if blocked.is_empty() || pods.is_everything() && passed > 0 {
                continue;
            }
            let n = blocked.len();
            let shown: Vec<String> = blocked.into_iter().take(3).collect();
            let more = if n > 3 { format!(" and {} more", n - 3) } else { String::new() };
            let isolating = far_isolating.into_iter().collect::<Vec<_>>().join(", ");
            let (code, message, fix) = if direction == Direction::Egress {
                (
                    "egress-not-admitted",
                    format!(
                        "this rule lets {}{more} out, but the destination's ingress (isolated by {isolating}) never admits it: the connection is still dropped",
                        shown.join("; ")
                    ),
                    "add an ingress rule admitting these sources and ports to a policy selecting the destination, or remove the peer if the flow is not wanted",
                )
            } else {
                (
                    "ingress-not-permitted",
                    format!(
                        "this rule admits {}{more}, but the source's egress (isolated by {isolating}) never lets it out: the connection is still dropped",
                        shown.join("; ")
                    ),
                    "add an egress rule permitting these destinations and ports to a policy selecting the source, or remove the peer if the flow is not wanted",
                )
            };
            self.push(policy_object(&policy.id), &format!("{at}.{pw}[{j}]"), code, message, fix.to_string());
        }
    }

    /// The (protocol, port) pairs a rule names for one pair of pods. A port entry of a whole
    /// protocol, or no ports at all, stands for every port policies name anywhere (so that the
    /// far side admitting one of them counts).
    fn expected_ports(&self, rule: &Rule, direction: Direction, this: &Pod, other: &Pod) -> Vec<(Protocol, u16)> {
        let every = || self.every_port.iter().copied();
        let mut out = Vec::new();
        if rule.ports.is_empty() {
            out.extend(every());
        }
        for pm in &rule.ports {
            match &pm.port {
                PortSpec::All => out.extend(every().filter(|(p, _)| *p == pm.protocol)),
                PortSpec::Range(lo, hi) => {
                    out.push((pm.protocol, *lo));
                    if hi != lo {
                        out.push((pm.protocol, *hi));
                    }
                }
                PortSpec::Named(name) => {
                    let owner = if direction == Direction::Ingress { this } else { other };
                    out.extend(owner.named_ports.iter().filter(|np| np.name == *name && np.protocol == pm.protocol).map(|np| (np.protocol, np.port)));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    fn verdict(&self, pod: &ObjectRef, direction: Direction, peer: IpAddr, protocol: Protocol, port: u16) -> bool {
        self.dataplane.allows(pod, &Flow { direction, peer, protocol: protocol.number(), port }).unwrap_or(true)
    }

    /// Namespaces that hold pods and have no policy isolating the ingress of all their pods.
    fn default_deny(&mut self) {
        let with_pods: BTreeSet<&String> = self.state.pods.keys().map(|p| &p.namespace).collect();
        for ns in with_pods {
            let has = self.state.policies.values().any(|p| p.id.namespace == *ns && p.pod_selector.is_everything() && p.isolates_ingress);
            if !has {
                self.push(
                    format!("Namespace {ns}"),
                    "",
                    "namespace-without-default-deny",
                    format!("namespace {ns} has pods but no default-deny policy (podSelector: {{}} isolating ingress): any pod no policy selects, including new ones, accepts traffic from everywhere"),
                    format!("add `kind: NetworkPolicy`, `metadata: {{name: default-deny, namespace: {ns}}}`, `spec: {{podSelector: {{}}, policyTypes: [Ingress]}}` (and Egress if wanted), then allow what is needed"),
                );
            }
        }
    }

    /// DNS: egress-isolated pods that cannot resolve names, and DNS on one protocol only.
    fn dns(&mut self) {
        let mut no_dns: BTreeMap<ObjectRef, Vec<String>> = BTreeMap::new();
        let mut udp_only: BTreeSet<(ObjectRef, String, &'static str)> = BTreeSet::new();
        for pod in self.state.pods.values() {
            let egress: Vec<&Policy> = self.state.policies_selecting(pod).filter(|p| p.isolates_egress).collect();
            if egress.is_empty() {
                continue;
            }
            let rules: Vec<(&Policy, usize, &Rule)> = egress.iter().flat_map(|p| p.egress.iter().enumerate().map(move |(i, r)| (*p, i, r))).collect();
            let covers = |proto: Protocol| rules.iter().any(|(_, _, r)| self.rule_covers_53(r, proto));
            let (udp, tcp) = (covers(Protocol::Udp), covers(Protocol::Tcp));
            if !udp && !tcp {
                for p in &egress {
                    no_dns.entry(p.id.clone()).or_default().push(pod.id.to_string());
                }
                continue;
            }
            for (have, missing, word) in [(udp, tcp, "dns-udp-without-tcp"), (tcp, udp, "dns-tcp-without-udp")] {
                if have && !missing {
                    let proto = if word == "dns-udp-without-tcp" { Protocol::Udp } else { Protocol::Tcp };
                    for (p, i, r) in &rules {
                        for (k, pm) in r.ports.iter().enumerate() {
                            if pm.protocol == proto && self.port_covers_53(pm) {
                                udp_only.insert((p.id.clone(), format!("egress[{i}].ports[{k}]"), word));
                            }
                        }
                    }
                }
            }
        }
        for (id, pods) in no_dns {
            self.push(
                policy_object(&id),
                "",
                "egress-without-dns",
                format!("the policy isolates the egress of {} and no egress rule selecting them allows port 53: they cannot resolve names (unless they never need to)", pods.join(", ")),
                "add an egress rule to the DNS servers (e.g. namespaceSelector kubernetes.io/metadata.name: kube-system with podSelector k8s-app: kube-dns) on port 53 UDP and TCP".to_string(),
            );
        }
        for (id, at, code) in udp_only {
            let (has, lacks) = if code == "dns-udp-without-tcp" { ("UDP", "TCP") } else { ("TCP", "UDP") };
            self.push(
                policy_object(&id),
                &at,
                code,
                format!("DNS is allowed on {has} 53 but not on {lacks} 53: resolvers fall back to TCP for truncated (large) answers and some use TCP only, so lookups fail intermittently"),
                format!("allow port 53 on both protocols: add `- port: 53` with `protocol: {lacks}` next to this entry"),
            );
        }
    }

    fn rule_covers_53(&self, rule: &Rule, proto: Protocol) -> bool {
        rule.ports.is_empty() || rule.ports.iter().any(|pm| pm.protocol == proto && self.port_covers_53(pm))
    }

    fn port_covers_53(&self, pm: &PortMatch) -> bool {
        match &pm.port {
            PortSpec::All => true,
            PortSpec::Range(lo, hi) => (*lo..=*hi).contains(&53),
            PortSpec::Named(name) => {
                self.state.pods.values().any(|p| p.named_ports.iter().any(|np| np.name == *name && np.protocol == pm.protocol && np.port == 53))
            }
        }
    }
}

/// Two addresses of one family, source first.
fn common_family(src: &Pod, dst: &Pod) -> Option<(IpAddr, IpAddr)> {
    dst.ips.iter().find_map(|d| src.ips.iter().find(|s| s.is_ipv4() == d.is_ipv4()).map(|s| (*s, *d)))
}

/// Why the requirements of a selector cannot all hold, if they cannot.
fn contradiction(sel: &Selector) -> Option<String> {
    let reqs = &sel.requirements;
    for (a, ra) in reqs.iter().enumerate() {
        for rb in &reqs[a + 1..] {
            let why = match (ra, rb) {
                (Requirement::In(k, _) | Requirement::Exists(k), Requirement::DoesNotExist(l))
                | (Requirement::DoesNotExist(l), Requirement::In(k, _) | Requirement::Exists(k))
                    if k == l =>
                {
                    Some(format!("{k} must both exist and not exist"))
                }
                (Requirement::In(k, vs), Requirement::In(l, ws)) if k == l && !vs.iter().any(|v| ws.contains(v)) => {
                    Some(format!("{k} cannot be in ({}) and in ({}) at once", vs.join(", "), ws.join(", ")))
                }
                (Requirement::In(k, vs), Requirement::NotIn(l, ws)) | (Requirement::NotIn(l, ws), Requirement::In(k, vs))
                    if k == l && vs.iter().all(|v| ws.contains(v)) =>
                {
                    Some(format!("every value {k} may have ({}) is excluded by notin ({})", vs.join(", "), ws.join(", ")))
                }
                _ => None,
            };
            if why.is_some() {
                return why;
            }
        }
    }
    None
}

#[cfg(test)]
#[path = "lint_tests.rs"]
mod tests;
