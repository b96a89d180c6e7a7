//! Checks that depend on traffic, asked of the compiled maps: an allow on one side that the
//! other side drops, namespaces without a default deny, DNS allowed on one protocol only.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::{policy_object, Linter};
use crate::{
    compile::eval::Flow,
    model::{Direction, ObjectRef, Peer, Pod, Policy, PortMatch, PortSpec, Protocol, Rule},
};

impl Linter<'_> {

    /// An allow on this side that the other side drops: for every pod pair the rule's
    /// selector peers name, and the ports the rule names, whether the far side (the peer's
    /// ingress for an egress rule, its egress for an ingress rule) admits at least one. A peer
    /// with an empty podSelector (whole namespaces) is reported only when no pair gets through.
    pub(super) fn far_side(&mut self, policy: &Policy, selected: &[&Pod], direction: Direction, at: &str, rule: &Rule) {
        let pw = direction.peers_field();
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
                    let Some((src_ip, dst_ip)) = src.addresses_to(dst) else { continue };
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
    pub(super) fn default_deny(&mut self) {
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
    pub(super) fn dns(&mut self) {
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


