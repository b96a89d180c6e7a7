//! The Kubernetes API source: kube-runtime watchers feeding reflector stores of
//! NetworkPolicies, Namespaces and Pods, cluster-wide. The watchers list, then watch, re-list
//! after `410 Gone`, and resume with a backoff after disconnects; every event they report asks
//! the run loop for a sync, and a sync converts the stores with the same `*_from_k8s`
//! conversions as the manifest source. Until every store has had its first complete list there
//! is no snapshot, so nothing partial is ever programmed; while the API server is unreachable
//! the stores keep the last state they saw.
//!
//! Invalid NetworkPolicies are reported on the API as Warning Events (once per distinct
//! problem), besides the agent's log.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    sync::{Arc, Mutex, PoisonError},
};

use futures::StreamExt as _;
use k8s_openapi::{
    api::{
        core::v1::{Container, Event, EventSource, Namespace, ObjectReference, Pod, PodSpec, PodStatus},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    api::{Api, ListParams, PostParams},
    runtime::{
        reflector::{self, Store},
        watcher, WatchStreamExt as _,
    },
    Client, Resource, ResourceExt as _,
};
use serde::de::DeserializeOwned;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{debug, info, warn};

use crate::{
    model::{namespace_from_k8s, pod_from_k8s, policy_from_k8s, ClusterState, Problem},
    source::{Snapshot, SourceError},

};

/// One call the agent makes on the API: (API group, resource, verb). The ClusterRole in
/// `deploy/` must grant each of them (a test checks it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiCall {
    /// API group ("" for the core group).
    pub group: &'static str,
    /// Resource (plural).
    pub resource: &'static str,
    /// Verb.
    pub verb: &'static str,
}

const fn call(group: &'static str, resource: &'static str, verb: &'static str) -> ApiCall {
    ApiCall { group, resource, verb }
}

/// Every API call the agent's Kubernetes code makes: watchers list and watch the three
/// resources cluster-wide, and invalid policies are reported by creating Events.
pub const API_CALLS: &[ApiCall] = &[
    call("", "pods", "list"),
    call("", "pods", "watch"),
    call("", "namespaces", "list"),
    call("", "namespaces", "watch"),
    call("networking.k8s.io", "networkpolicies", "list"),
    call("networking.k8s.io", "networkpolicies", "watch"),
    call("", "events", "create"),
];

/// The reason of the Events posted for invalid NetworkPolicies.
pub const INVALID_POLICY_REASON: &str = "InvalidNetworkPolicy";

/// The component name Events are posted under.
pub const COMPONENT: &str = "netpol-agent";

/// How far each watched resource has come.
#[derive(Clone, Debug, Default)]
struct Progress {
    /// Whether the store holds a complete list (it keeps it through later re-lists).
    listed: bool,
    /// The newest resourceVersion in the store.
    version: Option<String>,
    /// The newest resourceVersion of a re-list in progress (the store swaps at its end).
    pending: Option<String>,
}

/// Progress of every watched resource, by resource name.
#[derive(Debug, Default)]
struct Watched(Mutex<BTreeMap<&'static str, Progress>>);

impl Watched {
    fn record<K: Resource>(&self, resource: &'static str, event: &watcher::Event<K>) {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let p = all.entry(resource).or_default();
        match event {
            watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                newest(&mut p.version, o.meta().resource_version.as_deref());
            }
            watcher::Event::Init => p.pending = None,
            watcher::Event::InitApply(o) => {
                newest(&mut p.pending, o.meta().resource_version.as_deref());
            }
            watcher::Event::InitDone => {
                p.listed = true;
                if let Some(v) = p.pending.take() {
                    newest(&mut p.version, Some(&v));
                }
            }
        }
    }

    /// The resourceVersions, once every resource in `expected` has been listed.
    fn versions(&self, expected: &[&'static str]) -> Option<BTreeMap<String, String>> {
        let all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = BTreeMap::new();
        for r in expected {
            let p = all.get(r).filter(|p| p.listed)?;
            out.insert((*r).to_string(), p.version.clone().unwrap_or_default());
        }
        Some(out)
    }
}

/// Keeps the newer of two resourceVersions. They are opaque to clients; etcd's are decimal
/// numbers, so numbers compare as numbers, and anything else counts as newer when it comes.
fn newest(current: &mut Option<String>, seen: Option<&str>) {
    let Some(seen) = seen else { return };
    let newer = match (current.as_deref().map(str::parse::<u64>), seen.parse::<u64>()) {
        (Some(Ok(a)), Ok(b)) => b >= a,
        _ => true,
    };
    if newer {
        *current = Some(seen.to_string());
    }
}

const PODS: &str = "pods";
const NAMESPACES: &str = "namespaces";
const POLICIES: &str = "networkpolicies";

/// The API source: three reflector stores kept current by watcher tasks.
pub struct KubeSource {
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    policies: Store<NetworkPolicy>,
    watched: Arc<Watched>,
    reporter: EventReporter,
    tasks: Vec<JoinHandle<()>>,
    /// The last snapshot: a resync with no watch event since (the same resourceVersions) shares
    /// it instead of converting every object again.
    last: crate::source::LastSnapshot<BTreeMap<String, String>>,
}

impl KubeSource {
    /// Starts the watchers (on the current tokio runtime). `changed` is called on every watch
    /// event; it should schedule a sync.
    pub fn start(client: Client, node: &str, changed: impl Fn() + Send + Sync + 'static) -> Self {
        let changed: Arc<dyn Fn() + Send + Sync> = Arc::new(changed);
        let watched = Arc::new(Watched::default());
        let (pods, pods_task) = watch(Api::<Pod>::all(client.clone()), PODS, trim_pod, watched.clone(), changed.clone());
        let (namespaces, namespaces_task) =
            watch(Api::<Namespace>::all(client.clone()), NAMESPACES, |_| {}, watched.clone(), changed.clone());
        let (policies, policies_task) = watch(Api::<NetworkPolicy>::all(client.clone()), POLICIES, |_| {}, watched.clone(), changed);
        let (reporter, reporter_task) = EventReporter::start(client, node);
        Self {
            pods,
            namespaces,
            policies,
            watched,
            reporter,
            tasks: vec![pods_task, namespaces_task, policies_task, reporter_task],
            last: crate::source::LastSnapshot::default(),
        }
    }

    /// The stores as a snapshot, or `None` until each has had its first complete list.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        // Versions first: the stores are at least as new as the versions read here.
        let resource_versions = self.watched.versions(&[PODS, NAMESPACES, POLICIES])?;
        // The same versions: no event since, the same objects, converted and reported already.
        Some(self.last.get_or_make(resource_versions.clone(), || {
            let (state, problems, invalid) = convert(self.namespaces.state(), self.pods.state(), self.policies.state());
            self.reporter.report(&invalid);
            Snapshot { state, problems, manifest_digest: String::new(), resource_versions }
        }))
    }
}

/// An invalid NetworkPolicy with why it was left out.
type Invalid = (Arc<NetworkPolicy>, Problem);

/// Converts the objects of the three resources into the typed state with the `*_from_k8s`
/// conversions (as the manifest source does), for every snapshot of the API source: the
/// problems sorted by object and reason, and the invalid policies apart (to report on them).
fn convert(
    namespaces: Vec<Arc<Namespace>>,
    pods: Vec<Arc<Pod>>,
    policies: Vec<Arc<NetworkPolicy>>,
) -> (ClusterState, Vec<Problem>, Vec<Invalid>) {
    let mut state = ClusterState::default();
    let mut problems = Vec::new();
    for ns in namespaces {
        match namespace_from_k8s(&ns) {
            Ok(ns) => {
                state.namespaces.insert(ns.name.clone(), ns);
            }
            Err(p) => problems.push(p),
        }
    }
    for pod in pods {
        match pod_from_k8s(&pod, "") {
            Ok(Some(pod)) => state.insert_pod(pod),
            Ok(None) => {}
            Err(p) => problems.push(p),
        }
    }
    let mut invalid = Vec::new();
    for np in policies {
        match policy_from_k8s(&np, "") {
            Ok(policy) => {
                state.policies.insert(policy.id.clone(), policy);
            }
            Err(p) => {
                problems.push(p.clone());
                invalid.push((np, p));
            }
        }
    }
    problems.sort_by(|a, b| a.object.cmp(&b.object).then(a.reason.cmp(&b.reason)));
    (state, problems, invalid)
}

/// Objects per page when [`list_snapshot`] lists a resource.
const LIST_PAGE: u32 = 500;

/// One snapshot of the cluster from a single list of Namespaces, Pods and NetworkPolicies,
/// cluster-wide (paged), converted as the watchers' [`KubeSource::snapshot`] converts its
/// stores; `resource_versions` holds each list's resourceVersion. For the commands that answer
/// once (`explain`, `lint`, `graph` without `--manifests`): no watch, no Events posted.
pub async fn list_snapshot(client: Client) -> Result<Snapshot, SourceError> {
    let (namespaces, namespaces_version) = list_all(Api::<Namespace>::all(client.clone()), NAMESPACES, |_| {}).await?;
    let (pods, pods_version) = list_all(Api::<Pod>::all(client.clone()), PODS, trim_pod).await?;
    let (policies, policies_version) = list_all(Api::<NetworkPolicy>::all(client), POLICIES, |_| {}).await?;
    let (state, problems, _) = convert(namespaces, pods, policies);
    let resource_versions = BTreeMap::from([
        (NAMESPACES.to_string(), namespaces_version),
        (PODS.to_string(), pods_version),
        (POLICIES.to_string(), policies_version),
    ]);
    Ok(Snapshot { state, problems, manifest_digest: String::new(), resource_versions })
}

/// Every object of one resource, page by page (following `continue`), each passed through
/// `trim` as the watchers do, with the resourceVersion of the list.
async fn list_all<K>(api: Api<K>, resource: &'static str, trim: fn(&mut K)) -> Result<(Vec<Arc<K>>, String), SourceError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let mut objects = Vec::new();
    let mut version = None;
    let mut params = ListParams::default().limit(LIST_PAGE);
    loop {
        let page = api.list(&params).await.map_err(|source| SourceError::List { resource, source: Box::new(source) })?;
        // Later pages are served from the first page's snapshot: its version is the list's.
        if version.is_none() {
            version = page.metadata.resource_version.clone();
        }
        objects.extend(page.items.into_iter().map(|mut o| {
            trim(&mut o);
            Arc::new(o)
        }));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    Ok((objects, version.unwrap_or_default()))
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts a watcher and reflector for one resource, cluster-wide.
/// `trim` drops what the conversions never read before an object enters the store.
fn watch<K>(
    api: Api<K>,
    resource: &'static str,
    trim: fn(&mut K),
    watched: Arc<Watched>,
    changed: Arc<dyn Fn() + Send + Sync>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff().modify(move |o: &mut K| {
            // Nothing reads managed fields or annotations: keep them out of memory.
            let meta = o.meta_mut();
            meta.managed_fields = None;
            meta.annotations = None;
            trim(o);
        }),
    );
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    if failing {
                        info!(resource, "watch resumed");
                        failing = false;
                    }
                    if matches!(event, watcher::Event::InitDone) {
                        debug!(resource, "listed");
                    }
                    watched.record(resource, &event);
                    changed();
                }
                Err(e) => {
                    if !failing {
                        warn!(
                            resource,
                            error = %e,
                            "watch failed; retrying with backoff, the last state stays enforced"
                        );
                    } else {
                        debug!(resource, error = %e, "watch still failing");
                    }
                    failing = true;
                }
            }
        }
        warn!(resource, "watch ended");
    });
    (store, task)
}

/// Keeps of a pod only what `pod_from_k8s` reads: node, host networking, the containers' names
/// and ports, phase and addresses. Every node's agent holds every pod of the cluster, so the
/// rest (volumes, env, images, conditions, ...) is dropped on arrival.
pub fn trim_pod(pod: &mut Pod) {
    if let Some(spec) = pod.spec.as_mut() {
        *spec = PodSpec {
            node_name: spec.node_name.take(),
            host_network: spec.host_network,
            containers: spec.containers.drain(..).map(|c| Container { name: c.name, ports: c.ports, ..Container::default() }).collect(),
            ..PodSpec::default()
        };
    }
    if let Some(status) = pod.status.as_mut() {
        *status =
            PodStatus { phase: status.phase.take(), pod_ip: status.pod_ip.take(), pod_ips: status.pod_ips.take(), ..PodStatus::default() };
    }
}

/// What identifies one reported problem: the policy (uid, or namespace/name) and the reason.
type ProblemKey = (String, String);

/// Posts a Warning Event on each invalid NetworkPolicy, once per distinct problem.
struct EventReporter {
    posted: Arc<Mutex<BTreeSet<ProblemKey>>>,
    tx: mpsc::UnboundedSender<(ProblemKey, Event)>,
    node: String,
}

impl EventReporter {
    fn start(client: Client, node: &str) -> (Self, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(ProblemKey, Event)>();
        let posted = Arc::new(Mutex::new(BTreeSet::new()));
        let forget = posted.clone();
        let task = tokio::spawn(async move {
            while let Some((key, event)) = rx.recv().await {
                let namespace = event.metadata.namespace.clone().unwrap_or_default();
                let policy = event.involved_object.name.clone().unwrap_or_default();
                let api = Api::<Event>::namespaced(client.clone(), &namespace);
                match api.create(&PostParams::default(), &event).await {
                    Ok(_) => debug!(policy = %format!("{namespace}/{policy}"), "posted an event"),
                    Err(e) => {
                        warn!(policy = %format!("{namespace}/{policy}"), error = %e, "could not post an event; will try again");
                        // Try again on a later sync.
                        forget.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
                    }
                }
            }
        });
        (Self { posted, tx, node: node.to_string() }, task)
    }

    /// Reports the problems of the invalid policies that were not reported yet. Problems no
    /// longer present are forgotten: a policy fixed and broken again is reported again.
    fn report(&self, invalid: &[(Arc<NetworkPolicy>, Problem)]) {
        let keyed: Vec<(ProblemKey, &NetworkPolicy, &Problem)> = invalid.iter().map(|(np, p)| (problem_key(np, p), &**np, p)).collect();
        let fresh = {
            let mut posted = self.posted.lock().unwrap_or_else(PoisonError::into_inner);
            fresh_problems(&mut posted, keyed.iter().map(|(k, _, _)| k.clone()).collect())
        };
        for (key, np, problem) in keyed {
            if fresh.contains(&key) {
                let _ = self.tx.send((key, invalid_policy_event(np, problem, &self.node)));
            }
        }
    }
}

fn problem_key(np: &NetworkPolicy, problem: &Problem) -> ProblemKey {
    (np.uid().unwrap_or_else(|| format!("{}/{}", np.namespace().unwrap_or_default(), np.name_any())), problem.reason.clone())
}

/// Keeps in `posted` only the problems of `current`, and returns those of them that were not
/// there (to report now; they count as posted from here on).
fn fresh_problems(posted: &mut BTreeSet<ProblemKey>, current: BTreeSet<ProblemKey>) -> BTreeSet<ProblemKey> {
    posted.retain(|k| current.contains(k));
    let fresh: BTreeSet<ProblemKey> = current.difference(posted).cloned().collect();
    posted.extend(fresh.iter().cloned());
    fresh
}

/// The core/v1 Event reporting that `np` is ignored because of `problem`.
pub fn invalid_policy_event(np: &NetworkPolicy, problem: &Problem, node: &str) -> Event {
    let namespace = np.namespace().unwrap_or_default();
    let name = np.name_any();
    let now = Time(Timestamp::now());
    Event {
        metadata: ObjectMeta { generate_name: Some(format!("{name}.")), namespace: Some(namespace.clone()), ..ObjectMeta::default() },
        involved_object: ObjectReference {
            api_version: Some("networking.k8s.io/v1".into()),
            kind: Some("NetworkPolicy".into()),
            name: Some(name),
            namespace: Some(namespace),
            uid: np.uid(),
            resource_version: np.resource_version(),
            ..ObjectReference::default()
        },
        reason: Some(INVALID_POLICY_REASON.into()),
        message: Some(format!("{COMPONENT} on node {node} ignores this NetworkPolicy: {}", problem.reason)),
        type_: Some("Warning".into()),
        source: Some(EventSource { component: Some(COMPONENT.into()), host: Some(node.to_string()) }),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(node.to_string()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_versions_compare_as_numbers() {
        let mut v = None;
        newest(&mut v, Some("9"));
        newest(&mut v, Some("10"));
        newest(&mut v, Some("2"));
        assert_eq!(v.as_deref(), Some("10"));
        newest(&mut v, None);
        assert_eq!(v.as_deref(), Some("10"));
    }

    #[test]
    fn no_versions_until_every_resource_is_listed_and_relists_count_at_their_end() {
        let w = Watched::default();
        let pod = |rv: &str| Pod {
            metadata: ObjectMeta { name: Some("p".into()), resource_version: Some(rv.into()), ..ObjectMeta::default() },
            ..Pod::default()
        };
        w.record(PODS, &watcher::Event::<Pod>::Init);
        w.record(PODS, &watcher::Event::InitApply(pod("3")));
        assert_eq!(w.versions(&[PODS]), None);
        w.record(PODS, &watcher::Event::<Pod>::InitDone);
        assert_eq!(w.versions(&[PODS]).unwrap()[PODS], "3");
        assert_eq!(w.versions(&[PODS, POLICIES]), None);
        w.record(PODS, &watcher::Event::Apply(pod("5")));
        w.record(PODS, &watcher::Event::<Pod>::Init);
        w.record(PODS, &watcher::Event::InitApply(pod("8")));
        assert_eq!(w.versions(&[PODS]).unwrap()[PODS], "5", "re-list not done");
        w.record(PODS, &watcher::Event::<Pod>::InitDone);
        assert_eq!(w.versions(&[PODS]).unwrap()[PODS], "8");
    }

    #[test]
    fn each_problem_is_reported_once_while_it_lasts_and_again_when_it_comes_back() {
        let key = |p: &str| (p.to_string(), "bad cidr".to_string());
        let set = |keys: &[&str]| keys.iter().map(|k| key(k)).collect::<BTreeSet<_>>();
        let mut posted = BTreeSet::new();
        assert_eq!(fresh_problems(&mut posted, set(&["a", "b"])), set(&["a", "b"]));
        assert_eq!(fresh_problems(&mut posted, set(&["a", "b"])), set(&[]), "no repeats");
        assert_eq!(fresh_problems(&mut posted, set(&["a"])), set(&[]), "b fixed");
        assert_eq!(fresh_problems(&mut posted, set(&["a", "b"])), set(&["b"]), "b broken again");
    }

    #[test]
    fn a_trimmed_pod_converts_as_the_whole_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "x", "labels": {"app": "web"}},
            "spec": {
                "nodeName": "n1",
                "volumes": [{"name": "v", "emptyDir": {}}],
                "initContainers": [{"name": "init", "image": "busybox"}],
                "containers": [
                    {"name": "web", "image": "nginx", "env": [{"name": "A", "value": "b"}],
                     "ports": [{"name": "http", "containerPort": 80}, {"containerPort": 8080}]},
                    {"name": "dns", "image": "coredns", "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"}]}
                ]
            },
            "status": {"phase": "Running", "podIP": "198.18.0.10", "podIPs": [{"ip": "198.18.0.10"}, {"ip": "fd00:198:18::10"}],
                       "conditions": [{"type": "Ready", "status": "True"}], "hostIP": "198.18.0.1"}
        }))
        .unwrap();
        let mut trimmed = pod.clone();
        trim_pod(&mut trimmed);
        assert!(trimmed.spec.as_ref().unwrap().volumes.is_none());
        assert!(trimmed.status.as_ref().unwrap().conditions.is_none());
        let whole = pod_from_k8s(&pod, "").unwrap().unwrap();
        assert_eq!(pod_from_k8s(&trimmed, "").unwrap(), Some(whole.clone()));
        assert_eq!(whole.named_ports.len(), 2);

        let mut host: Pod = pod.clone();
        host.spec.as_mut().unwrap().host_network = Some(true);
        trim_pod(&mut host);
        assert_eq!(pod_from_k8s(&host, "").unwrap(), None, "host-network pods stay out");
    }

    #[test]
    fn the_event_names_the_policy_and_the_problem() {
        let np = NetworkPolicy {
            metadata: ObjectMeta {
                name: Some("bad".into()),
                namespace: Some("x".into()),
                uid: Some("u-1".into()),
                ..ObjectMeta::default()
            },
            ..NetworkPolicy::default()
        };
        let e = invalid_policy_event(
            &np,
            &Problem {
                object: "NetworkPolicy x/bad".into(),
                reason: "spec.ingress[0].from[0].ipBlock.cidr: \"1/33\" is not a CIDR".into(),
            },
            "n1",
        );
        assert_eq!(e.involved_object.kind.as_deref(), Some("NetworkPolicy"));
        assert_eq!(e.involved_object.name.as_deref(), Some("bad"));
        assert_eq!(e.involved_object.uid.as_deref(), Some("u-1"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("x"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some(INVALID_POLICY_REASON));
        assert!(e.message.unwrap().contains("ipBlock.cidr"));
    }
}
