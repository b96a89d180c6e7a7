//! Stability: identities, endpoint ids and rule ids stay as they were from one compilation to the next.

use crate::prelude::*;

/// A cluster with a mix of everything, for the stability tests.
fn busy_cluster() -> Cluster {
    cluster()
        .with_policy(
            r"
metadata: {name: web, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: beta}}}, {ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.0/28]}}]
    ports: [{port: http}, {port: 30000, endPort: 30100}]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: http}]
",
        )
        .with_policy(
            r"
metadata: {name: db, namespace: a}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
",
        )
        .with_policy(DENY_ALL_OF_A.replace("namespace: a", "namespace: b").as_str())
}

#[test]
fn recompiling_the_same_state_yields_identical_maps() {
    let c = busy_cluster().allow_host(true);
    let mut compiler = Compiler::new();
    let first = c.compile_with(&mut compiler).desired;
    let second = c.compile_with(&mut compiler).desired;
    assert_eq!(first, second, "same compiler, same state");
    let fresh = c.compile().desired;
    assert_eq!(first, fresh, "a fresh compiler gives the same numbers for the same state");
    assert!(!first.policy.is_empty() && !first.cidrs.is_empty());
}

#[test]
fn a_new_pod_on_another_node_with_a_known_label_set_adds_one_ipcache_entry_only() {
    let before = busy_cluster();
    let mut compiler = Compiler::new();
    let old = before.compile_with(&mut compiler).desired;
    // Same namespace, labels and named ports as b/x.
    let after = before.clone().with_pod(
        pod("b", "x2").label("pod", "x").label("app", "web").ip("198.18.1.21").port("http", 80, "TCP").node(OTHER_NODE),
    );
    let new = after.compile_with(&mut compiler).desired;
    assert_eq!(new.endpoints, old.endpoints);
    assert_eq!(new.policy, old.policy, "no policy entry changes");
    assert_eq!(new.cidrs, old.cidrs);
    assert_eq!(new.identities, old.identities);
    assert_eq!(new.rules, old.rules);
    let added: Vec<_> = new.ipcache.iter().filter(|(k, v)| old.ipcache.get(k) != Some(v)).collect();
    assert_eq!(added.len(), 1, "one ipcache write: {added:?}");
    assert_eq!(new.ipcache.len(), old.ipcache.len() + 1);
    let net = after.compile_with(&mut compiler);
    assert_eq!(net.identity_of("b/x2"), net.identity_of("b/x"));
    net.expect("a/x", &[(IN, "b/x2", TCP, 80, ALLOW), (IN, "b/x2", TCP, 81, DENY)]);
}

#[test]
fn endpoint_ids_and_identities_stay_stable_when_unrelated_objects_change() {
    let before = busy_cluster();
    let mut compiler = Compiler::new();
    let net = before.compile_with(&mut compiler);
    let ids = |net: &Net<'_>, pods: &[&str]| -> Vec<(u32, u32)> { pods.iter().map(|p| (net.endpoint(p).id, net.identity_of(p))).collect() };
    let old = ids(&net, &["a/x", "a/y", "b/z"]);
    let old_cidrs = net.desired.cidrs.clone();

    // New local pods sorting before and after the others, with new label sets; a removed
    // remote pod; a relabelled unrelated namespace.
    let mut after = before
        .clone()
        .with_pod(pod("a", "a0").label("pod", "a0").ip("198.18.0.2"))
        .with_pod(pod("z", "last").label("pod", "last").ip("198.18.0.250"))
        .with_namespace(namespace("c", &[("team", "gamma")]));
    after.state.pods.remove(&ObjectRef::new("d", "u"));
    let net = after.compile_with(&mut compiler);
    assert_eq!(ids(&net, &["a/x", "a/y", "b/z"]), old, "endpoint ids and identities of the pods that did not change");
    assert_eq!(net.desired.cidrs, old_cidrs);
    let new_ids = [net.endpoint("a/a0").id, net.endpoint("z/last").id];
    assert!(new_ids.iter().all(|id| !old.iter().any(|(e, _)| e == id)), "new endpoints get new ids: {new_ids:?}");

    // Removing the new pods again does not hand their numbers to anyone else.
    let net = before.compile_with(&mut compiler);
    assert_eq!(ids(&net, &["a/x", "a/y", "b/z"]), old);
}

#[test]
fn a_policy_change_rewrites_only_the_entries_of_the_endpoints_it_selects() {
    let before = busy_cluster();
    let mut compiler = Compiler::new();
    let old = before.compile_with(&mut compiler);
    let old_y: Vec<String> = old.desired.policy.of_endpoint(old.endpoint("a/y").id).map(|e| format!("{e:?}")).collect();
    let old_z: Vec<String> = old.desired.policy.of_endpoint(old.endpoint("b/z").id).map(|e| format!("{e:?}")).collect();

    // A policy (named to sort first) that selects only a/x, the first local pod.
    let after = before.clone().with_policy(
        r"
metadata: {name: aaa-extra, namespace: a}
spec:
  podSelector: {matchLabels: {pod: x}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: w}}}]
",
    );
    let new = after.compile_with(&mut compiler);
    let new_y: Vec<String> = new.desired.policy.of_endpoint(new.endpoint("a/y").id).map(|e| format!("{e:?}")).collect();
    let new_z: Vec<String> = new.desired.policy.of_endpoint(new.endpoint("b/z").id).map(|e| format!("{e:?}")).collect();
    assert_eq!(new_y, old_y, "a/y's entries (keys and values, rule ids included) are untouched");
    assert_eq!(new_z, old_z, "b/z's entries are untouched");
    assert!(new.entries("a/x") > old.entries("a/x"));
    new.expect("a/x", &[(IN, "a/w", UDP, 5, ALLOW)]);
    // Every entry still names the rule that wrote it.
    let p = &new.desired.policy;
    let named = p.peers.iter().map(|(k, v)| (k.direction, v.rule)).chain(p.ports.iter().map(|(k, v)| (k.direction, v.rule))).chain(p.ranges.iter().map(|(k, v)| (k.key.direction, v.rule)));
    for (direction, rule) in named {
        if rule != 0 {
            let r = &new.desired.rules[&rule];
            let dir = if direction == DIR_INGRESS { IN } else { OUT };
            assert_eq!(r.direction, dir, "an entry of direction {direction} names {r:?}");
        }
    }
}

#[test]
fn rule_ids_of_removed_policies_are_freed_and_reused_so_the_table_stays_small() {
    let deny = |name: &str| {
        format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: a}}\nspec:\n  podSelector: {{}}\n  ingress: [{{from: [{{podSelector: {{}}}}]}}]\n")
    };
    let mut compiler = Compiler::new();
    let first = cluster().with_policy(&deny("p0")).compile_with(&mut compiler).desired;
    assert_eq!(first.rules.keys().copied().collect::<Vec<_>>(), [1]);
    // 100 policies replaced one after the other: the table never holds more than the live one,
    // and ids are reused instead of growing.
    for i in 1..=100 {
        let d = cluster().with_policy(&deny(&format!("p{i}"))).compile_with(&mut compiler).desired;
        assert_eq!(d.rules.len(), 1, "only the live rule is in the table");
        let (id, rule) = d.rules.iter().next().expect("one rule");
        assert_eq!(rule.policy.to_string(), format!("a/p{i}"));
        // Freed at the end of the compile that no longer uses it, so ids alternate 1 and 2.
        assert!(*id <= 2, "freed ids are reused: id {id} at step {i}");
    }
    // Two live policies keep distinct, stable ids.
    let both = cluster().with_policy(&deny("p100")).with_policy(&deny("q")).compile_with(&mut compiler).desired;
    assert_eq!(both.rules.keys().copied().collect::<Vec<_>>(), [1, 2]);
    let again = cluster().with_policy(&deny("p100")).with_policy(&deny("q")).compile_with(&mut compiler).desired;
    assert_eq!(again.rules, both.rules, "stable while live");
}
