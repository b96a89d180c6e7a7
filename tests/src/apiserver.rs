//! A fake Kubernetes API server, in process, over plain HTTP: the list and watch protocol of
//! pods, namespaces and networkpolicies (cluster-wide and per namespace) with resourceVersions
//! from one global counter, streamed watch events (ADDED, MODIFIED, DELETED, BOOKMARK when
//! asked, ERROR 410 for an expired resourceVersion), `timeoutSeconds`, and recorded Event
//! POSTs. The test drives it: apply and delete objects, end every watch, expire every
//! resourceVersion, stop it and start it again on the same port. It listens on 127.0.0.1,
//! optionally inside a network namespace (where an agent in that namespace reaches it), and
//! writes a kubeconfig pointing at itself (http, no auth).

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full, StreamBody};
use hyper::{body::Frame, server::conn::http1, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::netns;

/// The kinds the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// core/v1 Namespace (cluster-scoped).
    Namespace,
    /// core/v1 Pod.
    Pod,
    /// networking.k8s.io/v1 NetworkPolicy.
    NetworkPolicy,
}

impl Kind {
    /// The kind of an object by its `kind` field.
    pub fn of(kind: &str) -> Option<Self> {
        match kind {
            "Namespace" => Some(Self::Namespace),
            "Pod" => Some(Self::Pod),
            "NetworkPolicy" => Some(Self::NetworkPolicy),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::Pod => "Pod",
            Self::NetworkPolicy => "NetworkPolicy",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Self::Namespace | Self::Pod => "v1",
            Self::NetworkPolicy => "networking.k8s.io/v1",
        }
    }

    fn namespaced(self) -> bool {
        self != Self::Namespace
    }
}

/// `(kind, namespace, name)`; the namespace is empty for namespaces.
type Key = (Kind, String, String);

/// One change, as watchers see it.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    kind: Kind,
    namespace: String,
    event: &'static str,
    object: Value,
}

/// An open watch: what it follows and where its events go.
struct Watch {
    kind: Kind,
    namespace: Option<String>,
    tx: mpsc::UnboundedSender<Bytes>,
}

impl Watch {
    fn wants(&self, c: &Change) -> bool {
        self.kind == c.kind && self.namespace.as_ref().is_none_or(|n| *n == c.namespace)
    }
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Watches from a resourceVersion below this one get 410 Gone.
    oldest: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    watches: Vec<Watch>,
    events: Vec<Value>,
    uids: u64,
    requests: Vec<String>,
    expired: u64,
    unavailable: std::collections::BTreeSet<Kind>,
}

impl State {
    fn change(&mut self, kind: Kind, namespace: &str, event: &'static str, object: Value) -> u64 {
        let c = Change { rv: self.rv, kind, namespace: namespace.to_string(), event, object };
        let line = watch_line(c.event, &c.object);
        self.watches.retain(|w| !w.wants(&c) || w.tx.send(line.clone()).is_ok());
        self.history.push(c);
        self.rv
    }
}

fn watch_line(event: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": event, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn gone(rv: u64, oldest: u64) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("too old resource version: {rv} ({oldest})"), "reason": "Expired", "code": 410,
    })
}

type Body = BoxBody<Bytes, Infallible>;

/// The running part: the accept loop and its connections.
struct Serving {
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Serving {
    /// Aborts the accept loop and every connection, and waits until they are gone (so the port
    /// is free and the sockets closed).
    fn stop(&self, runtime: &tokio::runtime::Runtime) {
        // A connection accepted while stopping is caught by the next round.
        loop {
            let tasks: Vec<JoinHandle<()>> = lock(&self.tasks).drain(..).collect();
            if tasks.is_empty() {
                return;
            }
            for t in &tasks {
                t.abort();
            }
            runtime.block_on(async {
                for t in tasks {
                    let _ = t.await;
                }
            });
        }
    }
}

/// The fake API server. Stops on drop; its kubeconfig is removed.
pub struct ApiServer {
    runtime: tokio::runtime::Runtime,
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    netns: Option<String>,
    serving: Option<Serving>,
    /// A kubeconfig pointing at the server.
    pub kubeconfig: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ApiServer {
    /// Starts a server on 127.0.0.1 (a random port) of this process's network namespace.
    pub fn start_here() -> anyhow::Result<Self> {
        Self::new(None)
    }

    /// Starts a server on 127.0.0.1 (a random port) inside network namespace `netns`.
    pub fn start_in(netns: &str) -> anyhow::Result<Self> {
        Self::new(Some(netns.to_string()))
    }

    fn new(netns: Option<String>) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().context("start a runtime")?;
        let listener = bind(netns.as_deref(), "127.0.0.1:0".parse()?)?;
        let addr = listener.local_addr()?;
        let kubeconfig = std::env::temp_dir().join(format!("{}.kubeconfig", netns::unique("netpol-api-")));
        std::fs::write(&kubeconfig, kubeconfig_text(addr)).with_context(|| format!("write {}", kubeconfig.display()))?;
        let mut server =
            Self { runtime, state: Arc::new(Mutex::new(State { rv: 1, ..State::default() })), addr, netns, serving: None, kubeconfig };
        server.serve(listener)?;
        Ok(server)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it is serving.
    pub fn running(&self) -> bool {
        self.serving.is_some()
    }

    fn serve(&mut self, listener: std::net::TcpListener) -> anyhow::Result<()> {
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let listener = {
            let _guard = self.runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let state = self.state.clone();
        let conns = tasks.clone();
        let accept = self.runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                let conn = tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
                let mut conns = lock(&conns);
                conns.retain(|c| !c.is_finished());
                conns.push(conn);
            }
        });
        lock(&tasks).push(accept);
        self.serving = Some(Serving { tasks });
        Ok(())
    }

    /// Stops listening and drops every connection (watches end without a word, as when the
    /// server goes away).
    pub fn stop(&mut self) {
        if let Some(s) = self.serving.take() {
            s.stop(&self.runtime);
        }
        lock(&self.state).watches.clear();
    }

    /// Starts again on the same address.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.running() {
            return Ok(());
        }
        let listener = bind(self.netns.as_deref(), self.addr)?;
        self.serve(listener)
    }

    /// Creates or replaces an object (`kind`, `metadata.name`, and `metadata.namespace` for
    /// namespaced kinds, default "default"); returns its new resourceVersion.
    pub fn apply(&self, mut object: Value) -> anyhow::Result<u64> {
        let kind = Kind::of(object["kind"].as_str().unwrap_or_default()).context("apply: unsupported kind")?;
        let name = object["metadata"]["name"].as_str().context("apply: no metadata.name")?.to_string();
        let namespace =
            if kind.namespaced() { object["metadata"]["namespace"].as_str().unwrap_or("default").to_string() } else { String::new() };
        let mut st = lock(&self.state);
        st.rv += 1;
        let key = (kind, namespace.clone(), name);
        let uid = match st.objects.get(&key) {
            Some(old) => old["metadata"]["uid"].clone(),
            None => {
                st.uids += 1;
                json!(format!("00000000-0000-4000-8000-{:012}", st.uids))
            }
        };
        object["apiVersion"] = json!(kind.api_version());
        let meta = object["metadata"].as_object_mut().context("apply: metadata is not an object")?;
        meta.insert("resourceVersion".into(), json!(st.rv.to_string()));
        meta.insert("uid".into(), uid);
        if kind.namespaced() {
            meta.insert("namespace".into(), json!(namespace));
        }
        let event = if st.objects.insert(key, object.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        Ok(st.change(kind, &namespace, event, object))
    }

    /// Deletes an object; returns the resourceVersion of the deletion, `None` when there was no
    /// such object. `namespace` is ignored for namespaces.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Option<u64> {
        let namespace = if kind.namespaced() { namespace } else { "" };
        let mut st = lock(&self.state);
        let mut object = st.objects.remove(&(kind, namespace.to_string(), name.to_string()))?;
        st.rv += 1;
        object["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        Some(st.change(kind, namespace, "DELETED", object))
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.state).rv
    }

    /// The Events posted so far.
    pub fn events(&self) -> Vec<Value> {
        lock(&self.state).events.clone()
    }

    /// The requests served so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.state).requests.clone()
    }

    /// Makes lists and watches of `kind` fail with 503 (or serves them again), while the rest
    /// is served: a client sees part of the cluster only.
    pub fn set_unavailable(&self, kind: Kind, unavailable: bool) {
        let mut st = lock(&self.state);
        if unavailable {
            st.unavailable.insert(kind);
            st.watches.retain(|w| w.kind != kind);
        } else {
            st.unavailable.remove(&kind);
        }
    }

    /// How many watches were refused with 410 Gone (an expired resourceVersion).
    pub fn expired_watches(&self) -> u64 {
        lock(&self.state).expired
    }

    /// Ends every open watch cleanly (as the server's own watch timeout does).
    pub fn end_watches(&self) {
        lock(&self.state).watches.clear();
    }

    /// Makes every resourceVersion handed out so far too old: open watches get an ERROR 410
    /// event and end, and watches from an older version are refused the same way, so clients
    /// must list again.
    pub fn expire_all(&self) {
        let mut st = lock(&self.state);
        st.rv += 1;
        st.oldest = st.rv;
        st.history.clear();
        let (rv, oldest) = (st.rv, st.oldest);
        for w in st.watches.drain(..) {
            let _ = w.tx.send(watch_line("ERROR", &gone(rv, oldest)));
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// A listening socket on `addr`, made inside `netns` when given.
fn bind(netns: Option<&str>, addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = match netns {
        Some(n) => netns::within(n, || std::net::TcpListener::bind(addr))?,
        None => std::net::TcpListener::bind(addr),
    }
    .with_context(|| format!("listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// A kubeconfig for a server at `addr`: plain http, no credentials.
pub fn kubeconfig_text(addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\n"
    )
}

/// What a request path names.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// A collection of `kind`, in one namespace or all.
    Collection(Kind, Option<String>),
    /// The events of a namespace.
    Events(String),
}

fn route(path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "v1", "pods"] => Some(Route::Collection(Kind::Pod, None)),
        ["api", "v1", "namespaces"] => Some(Route::Collection(Kind::Namespace, None)),
        ["api", "v1", "namespaces", ns, "pods"] => Some(Route::Collection(Kind::Pod, Some((*ns).to_string()))),
        ["api", "v1", "namespaces", ns, "events"] => Some(Route::Events((*ns).to_string())),
        ["apis", "networking.k8s.io", "v1", "networkpolicies"] => Some(Route::Collection(Kind::NetworkPolicy, None)),
        ["apis", "networking.k8s.io", "v1", "namespaces", ns, "networkpolicies"] => {
            Some(Route::Collection(Kind::NetworkPolicy, Some((*ns).to_string())))
        }
        _ => None,
    }
}

fn query(req: &Request<hyper::body::Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(body).unwrap_or_default())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

async fn handle(state: &Arc<Mutex<State>>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let q = query(&req);
    let unavailable = {
        let mut st = lock(state);
        st.requests.push(format!("{} {}", req.method(), req.uri()));
        st.unavailable.clone()
    };
    match (req.method().clone(), route(req.uri().path())) {
        (Method::GET, Some(Route::Collection(kind, _))) if unavailable.contains(&kind) => {
            status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", &format!("{} are unavailable (the test says so)", kind.name()))
        }
        (Method::GET, Some(Route::Collection(kind, ns))) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            watch(state, kind, ns, &q)
        }
        (Method::GET, Some(Route::Collection(kind, ns))) => list(state, kind, ns.as_deref()),
        (Method::POST, Some(Route::Events(ns))) => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
            };
            let mut event: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
            };
            let mut st = lock(state);
            st.rv += 1;
            st.uids += 1;
            let name = match (event["metadata"]["name"].as_str(), event["metadata"]["generateName"].as_str()) {
                (Some(n), _) => n.to_string(),
                (None, Some(g)) => format!("{g}{:05x}", st.uids),
                (None, None) => return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name or generateName required"),
            };
            event["metadata"]["name"] = json!(name);
            event["metadata"]["namespace"] = json!(ns);
            event["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            event["metadata"]["uid"] = json!(format!("00000000-0000-4000-9000-{:012}", st.uids));
            st.events.push(event.clone());
            json_response(StatusCode::CREATED, &event)
        }
        _ => {
            status(StatusCode::NOT_FOUND, "NotFound", &format!("the fake API server does not serve {} {}", req.method(), req.uri().path()))
        }
    }
}

fn list(state: &Arc<Mutex<State>>, kind: Kind, ns: Option<&str>) -> Response<Body> {
    let st = lock(state);
    let items: Vec<&Value> = st.objects.iter().filter(|((k, n, _), _)| *k == kind && ns.is_none_or(|ns| ns == n)).map(|(_, v)| v).collect();
    json_response(
        StatusCode::OK,
        &json!({
            "apiVersion": kind.api_version(),
            "kind": format!("{}List", kind.name()),
            "metadata": {"resourceVersion": st.rv.to_string()},
            "items": items,
        }),
    )
}

fn watch(state: &Arc<Mutex<State>>, kind: Kind, namespace: Option<String>, q: &BTreeMap<String, String>) -> Response<Body> {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let timeout = Duration::from_secs(q.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(1800));
    {
        let mut st = lock(state);
        let from = q.get("resourceVersion").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let w = Watch { kind, namespace, tx };
        if from == 0 {
            // "Any version": the current objects as ADDED, then changes.
            for ((k, n, _), o) in &st.objects {
                if *k == kind && w.namespace.as_ref().is_none_or(|ns| ns == n) {
                    let _ = w.tx.send(watch_line("ADDED", o));
                }
            }
        } else if from < st.oldest {
            st.expired += 1;
            let _ = w.tx.send(watch_line("ERROR", &gone(from, st.oldest)));
            drop(w);
            return stream_response(rx, timeout);
        } else {
            for c in st.history.iter().filter(|c| c.rv > from && w.wants(c)) {
                let _ = w.tx.send(watch_line(c.event, &c.object));
            }
        }
        if q.get("allowWatchBookmarks").is_some_and(|b| b == "true") {
            let bookmark =
                json!({"kind": kind.name(), "apiVersion": kind.api_version(), "metadata": {"resourceVersion": st.rv.to_string()}});
            let _ = w.tx.send(watch_line("BOOKMARK", &bookmark));
        }
        st.watches.push(w);
    }
    stream_response(rx, timeout)
}

/// A response streaming what arrives on `rx` until its senders are gone or `timeout` passes.
fn stream_response(rx: mpsc::UnboundedReceiver<Bytes>, timeout: Duration) -> Response<Body> {
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = futures::stream::unfold(rx, move |mut rx| async move {
        tokio::select! {
            line = rx.recv() => line.map(|l| (Ok::<_, Infallible>(Frame::data(l)), rx)),
            () = tokio::time::sleep_until(deadline) => None,
        }
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader, Read as _, Write as _},
        net::TcpStream,
    };

    use super::*;

    fn policy(name: &str, ns: &str) -> Value {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns}, "spec": {"podSelector": {}}})
    }

    fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, serde_json::from_str(body).unwrap())
    }

    /// Opens a watch and returns a reader of its lines.
    fn open_watch(addr: SocketAddr, path: &str) -> BufReader<TcpStream> {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                return r;
            }
        }
    }

    /// The next watch event, or `None` when the stream ended.
    fn next(r: &mut BufReader<TcpStream>) -> Option<Value> {
        let mut line = String::new();
        match r.read_line(&mut line).unwrap() {
            0 => None,
            _ => Some(serde_json::from_str(&line).unwrap()),
        }
    }

    #[test]
    fn lists_carry_the_global_resource_version_and_filter_by_namespace() {
        let api = ApiServer::start_here().unwrap();
        api.apply(policy("p", "a")).unwrap();
        let rv = api.apply(policy("q", "b")).unwrap();
        api.apply(json!({"kind": "Namespace", "metadata": {"name": "a"}})).unwrap();
        let (code, all) = get(api.addr(), "/apis/networking.k8s.io/v1/networkpolicies?limit=500");
        assert_eq!(code, 200);
        assert_eq!(all["kind"], "NetworkPolicyList");
        assert_eq!(all["items"].as_array().unwrap().len(), 2);
        assert_eq!(all["metadata"]["resourceVersion"], (rv + 1).to_string());
        assert_eq!(all["items"][1]["metadata"]["resourceVersion"], rv.to_string());
        let (_, one) = get(api.addr(), "/apis/networking.k8s.io/v1/namespaces/b/networkpolicies");
        assert_eq!(one["items"].as_array().unwrap().len(), 1);
        let (_, ns) = get(api.addr(), "/api/v1/namespaces");
        assert_eq!(ns["items"][0]["metadata"]["name"], "a");
        let (code, _) = get(api.addr(), "/api/v1/secrets");
        assert_eq!(code, 404);
        api.set_unavailable(Kind::NetworkPolicy, true);
        assert_eq!(get(api.addr(), "/apis/networking.k8s.io/v1/networkpolicies").0, 503);
        assert_eq!(get(api.addr(), "/api/v1/namespaces").0, 200);
        api.set_unavailable(Kind::NetworkPolicy, false);
        assert_eq!(get(api.addr(), "/apis/networking.k8s.io/v1/networkpolicies").0, 200);
    }

    #[test]
    fn a_watch_replays_changes_after_its_version_then_streams_and_bookmarks() {
        let api = ApiServer::start_here().unwrap();
        let first = api.apply(policy("p", "a")).unwrap();
        api.apply(policy("q", "a")).unwrap();
        let mut w = open_watch(
            api.addr(),
            &format!("/apis/networking.k8s.io/v1/networkpolicies?watch=true&resourceVersion={first}&allowWatchBookmarks=true"),
        );
        let e = next(&mut w).unwrap();
        assert_eq!((e["type"].as_str(), e["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("q")));
        assert_eq!(next(&mut w).unwrap()["type"], "BOOKMARK");
        api.apply(policy("q", "a")).unwrap();
        assert_eq!(next(&mut w).unwrap()["type"], "MODIFIED");
        api.apply(json!({"kind": "Namespace", "metadata": {"name": "a"}})).unwrap();
        let gone = api.delete(Kind::NetworkPolicy, "a", "p").unwrap();
        let e = next(&mut w).unwrap();
        assert_eq!(e["type"], "DELETED", "the namespace is not a policy: {e}");
        assert_eq!(e["object"]["metadata"]["resourceVersion"], gone.to_string());
        api.end_watches();
        assert!(next(&mut w).is_none(), "the watch ended");
    }

    #[test]
    fn expired_versions_get_410_and_timeouts_end_watches() {
        let api = ApiServer::start_here().unwrap();
        let rv = api.apply(policy("p", "a")).unwrap();
        let mut open = open_watch(api.addr(), &format!("/api/v1/pods?watch=true&resourceVersion={rv}"));
        api.expire_all();
        let e = next(&mut open).unwrap();
        assert_eq!((e["type"].as_str(), e["object"]["code"].as_u64()), (Some("ERROR"), Some(410)));
        assert!(next(&mut open).is_none());
        let mut late = open_watch(api.addr(), &format!("/api/v1/pods?watch=true&resourceVersion={rv}"));
        assert_eq!(next(&mut late).unwrap()["object"]["reason"], "Expired");
        assert_eq!(api.expired_watches(), 1);
        let now = api.resource_version();
        let mut fresh = open_watch(api.addr(), &format!("/api/v1/pods?watch=true&resourceVersion={now}&timeoutSeconds=1"));
        let started = std::time::Instant::now();
        assert!(next(&mut fresh).is_none(), "ends at its timeout");
        assert!(started.elapsed() >= Duration::from_millis(900));
    }

    #[test]
    fn events_are_recorded_and_the_server_stops_and_starts_on_its_port() {
        let mut api = ApiServer::start_here().unwrap();
        let mut s = TcpStream::connect(api.addr()).unwrap();
        let body = r#"{"apiVersion":"v1","kind":"Event","metadata":{"generateName":"bad.","namespace":"x"},"involvedObject":{"kind":"NetworkPolicy","name":"bad"},"reason":"InvalidNetworkPolicy"}"#;
        write!(
            s,
            "POST /api/v1/namespaces/x/events HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.0 201"), "{out}");
        let events = api.events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["involvedObject"]["name"], "bad");
        assert!(events[0]["metadata"]["name"].as_str().unwrap().starts_with("bad."));

        let addr = api.addr();
        let mut w = open_watch(addr, "/api/v1/namespaces?watch=true&resourceVersion=1");
        api.stop();
        assert!(w.read_line(&mut String::new()).map_or(true, |n| n == 0), "the watch is cut");
        assert!(TcpStream::connect(addr).is_err(), "nothing listens");
        api.apply(json!({"kind": "Namespace", "metadata": {"name": "later"}})).unwrap();
        api.start().unwrap();
        assert_eq!(api.addr(), addr);
        let (_, ns) = get(addr, "/api/v1/namespaces");
        assert_eq!(ns["items"][0]["metadata"]["name"], "later");
        let config = std::fs::read_to_string(&api.kubeconfig).unwrap();
        assert!(config.contains(&format!("server: http://{addr}")));
    }
}
