//! `lint`: policies that are valid but probably do not do what their author meant.
//!
//! Every [`Finding`] names the object, the rule (`ingress[0].from[1]`, or empty), a stable
//! kebab-case code, why it matters and how to fix it. Checks that depend on traffic (an allow
//! on one side that the other side drops) ask the compiler and [`crate::compile::eval`], like `explain`;
//! the others read the model. Objects the loader had to leave out are findings too.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::Path,
};

mod selectors;
mod traffic;

use crate::{
    compile::{cidr, eval::Dataplane},
    model::{selector::Selector, ClusterState, Direction, ObjectRef, Peer, Pod, Policy, PortSpec, Problem, Protocol, Rule},
    source::manifests::{manifest_files, DEFAULT_NAMESPACE},
    tools::explain::selector_text,
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
    // The loader reports malformed YAML and reads no further; errors are its to report.
    let mut out = Vec::new();
    crate::source::manifests::each_object(text, |object| {
        let Ok((_, item)) = object else { return };
        let meta = item.get("metadata");
        if item.get("kind").and_then(|k| k.as_str()) == Some("NetworkPolicy") && meta.and_then(|m| m.get("namespace")).is_none() {
            let name = meta.and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or("?");
            out.push((ObjectRef::new(DEFAULT_NAMESPACE, name), file.to_string()));
        }
    });
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
        for direction in Direction::BOTH {
            let rules = policy.rules(direction);
            if !policy.isolates(direction) && !rules.is_empty() {
                let kind = direction.policy_type();
                self.push(
                    object.clone(),
                    &direction.to_string(),
                    "rules-ignored-by-policy-types",
                    format!("the policy has {direction} rules but its policyTypes leave out {kind}, so they are ignored"),
                    format!("add {kind} to policyTypes, or remove the {direction} rules"),
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
        let dir = direction;
        let pw = direction.peers_field();
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
                    direction.policy_type()
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
}
