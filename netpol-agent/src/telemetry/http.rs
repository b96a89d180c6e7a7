//! The agent's HTTP endpoints: `/healthz` answers 200 while the process runs, `/readyz` 200 once
//! the first complete state has been programmed and 503 before; `/metrics` serves the Prometheus
//! metrics ([`crate::telemetry::metrics`]); `/events?namespace=..&pod=..&verdict=..` streams verdict events
//! as JSON lines ([`crate::telemetry::events`]) for `netpol-agent observe`.
//!
//! Who may read what: the probes are open to every client (they say nothing about the node's
//! traffic). `/metrics` and `/events` name pods, policies and flows, so they answer only loopback
//! clients, or clients that present the bearer token of `--http-token-file`
//! (`Authorization: Bearer TOKEN`); everyone else gets 403 (no token configured) or 401. The
//! default address is loopback only ([`DEFAULT_ADDR`]): on the host network, `0.0.0.0` would
//! let every pod that reaches a node address ask.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use axum::{
    body::{Body, Bytes},
    extract::{ConnectInfo, Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use futures::StreamExt as _;
use tokio::net::TcpListener;
use tracing::warn;

/// The default `--health-addr`: loopback only (kubelet probes a host-network pod there).
pub const DEFAULT_ADDR: &str = "127.0.0.1:9790";

/// What the endpoints answer from.
#[derive(Clone)]
pub struct Endpoints {
    /// Whether a complete state has been programmed.
    pub ready: Arc<AtomicBool>,
    /// The metrics.
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// The verdict events (none: `/events` answers 404).
    pub events: Option<Arc<crate::telemetry::events::EventHub>>,
    /// A file holding the bearer token that opens `/metrics` and `/events` to clients other than
    /// loopback (read at each such request, so it can be rotated).
    pub token_file: Option<PathBuf>,
}

/// The routes.
pub fn router(endpoints: Endpoints) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/events", get(events))
        .route_layer(middleware::from_fn_with_state(endpoints.clone(), guard));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(endpoints)
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, endpoints: Endpoints) {
    let app = router(endpoints).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "HTTP endpoints stopped");
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(e): State<Endpoints>) -> Response {
    if e.ready.load(Ordering::Relaxed) {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: no complete state programmed yet\n").into_response()
    }
}

async fn metrics(State(e): State<Endpoints>) -> Response {
    let mut r = e.metrics.encode().into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    r
}

/// The `/events` response: the subscriber's records as JSON lines, as they come; a subscriber
/// that falls behind gets a line `{"lost": N}` instead of the records it missed.
async fn events(State(e): State<Endpoints>, request: Request) -> Response {
    let Some(hub) = e.events else { return (StatusCode::NOT_FOUND, "no verdict events on this agent\n").into_response() };
    let filter = match crate::telemetry::events::EventFilter::from_query(request.uri().query().unwrap_or("")) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad filter: {e:#}\n")).into_response(),
    };
    let subscription = hub.subscribe(filter);
    let lines = futures::stream::unfold(subscription, |mut sub| async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let line = match sub.records.recv().await {
                Ok(record) if sub.filter.matches(&record) => serde_json::to_string(&*record).ok()?,
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => format!("{{\"lost\":{n}}}"),
                Err(RecvError::Closed) => return None,
            };
            return Some((Bytes::from(line + "\n"), sub));
        }
    });
    let mut r = Body::from_stream(lines.map(Ok::<_, Infallible>)).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    r
}

/// Lets loopback clients and holders of the bearer token through (see the module's doc).
async fn guard(State(e): State<Endpoints>, ConnectInfo(peer): ConnectInfo<SocketAddr>, request: Request, next: Next) -> Response {
    match access(peer, request.headers(), e.token_file.as_deref()) {
        Access::Granted => next.run(request).await,
        Access::LoopbackOnly => (
            StatusCode::FORBIDDEN,
            "metrics and events are served to loopback clients only; start the agent with --http-token-file to serve them to others with a bearer token\n",
        )
            .into_response(),
        Access::NeedsToken => {
            let mut r = (StatusCode::UNAUTHORIZED, "a bearer token is needed: Authorization: Bearer TOKEN\n").into_response();
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

/// The answer of [`access`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Serve the request.
    Granted,
    /// Refused: not loopback, and no token is configured.
    LoopbackOnly,
    /// Refused: not loopback, and the request has no valid token.
    NeedsToken,
}

/// Whether `peer` may read `/metrics` and `/events`: from loopback always; otherwise with the
/// bearer token held by `token_file` (an unreadable or empty file opens nothing).
pub fn access(peer: SocketAddr, headers: &HeaderMap, token_file: Option<&std::path::Path>) -> Access {
    if peer.ip().to_canonical().is_loopback() {
        return Access::Granted;
    }
    let Some(file) = token_file else { return Access::LoopbackOnly };
    let expected = match std::fs::read_to_string(file) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        Ok(_) => return Access::NeedsToken,
        Err(e) => {
            warn!(file = %file.display(), error = %e, "cannot read the HTTP token file: metrics and events refused to non-loopback clients");
            return Access::NeedsToken;
        }
    };
    let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if constant_time_eq(token.trim().as_bytes(), expected.as_bytes()) => Access::Granted,
        _ => Access::NeedsToken,
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(token_file: Option<PathBuf>) -> Endpoints {
        Endpoints { ready: Arc::new(AtomicBool::new(false)), metrics: Arc::new(crate::telemetry::metrics::Metrics::new()), events: None, token_file }
    }

    /// Starts the endpoints on `addr` and returns the address they listen on.
    async fn start(addr: &str, e: Endpoints) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("address");
        (addr, tokio::spawn(serve(listener, e)))
    }

    async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        s.write_all(format!("GET {path} HTTP/1.0\r\n{auth}\r\n").as_bytes()).await.expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn probes_and_metrics_answer_a_loopback_client() {
        let e = endpoints(None);
        let ready = e.ready.clone();
        let (addr, server) = start("127.0.0.1:0", e).await;
        assert!(get(addr, "/healthz", None).await.starts_with("HTTP/1.0 200"));
        assert!(get(addr, "/readyz", None).await.starts_with("HTTP/1.0 503"));
        ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz", None).await.starts_with("HTTP/1.0 200"));
        assert!(get(addr, "/other", None).await.starts_with("HTTP/1.0 404"));
        let metrics = get(addr, "/metrics", None).await;
        assert!(metrics.starts_with("HTTP/1.0 200") && metrics.contains("netpol_ready"), "{metrics}");
        server.abort();
    }

    #[test]
    fn other_clients_need_the_token_and_loopback_never_does() {
        let file = std::env::temp_dir().join(format!("netpol-token-test-{}", std::process::id()));
        std::fs::write(&file, "s3cret\n").expect("write token");
        let pod: SocketAddr = "198.18.0.10:40000".parse().expect("address");
        let mapped_loopback: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().expect("address");
        let with = |token: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).expect("header"));
            h
        };
        assert_eq!(access(pod, &HeaderMap::new(), None), Access::LoopbackOnly, "no token configured: loopback only");
        assert_eq!(access(pod, &with("s3cret"), None), Access::LoopbackOnly);
        assert_eq!(access(pod, &HeaderMap::new(), Some(&file)), Access::NeedsToken);
        assert_eq!(access(pod, &with("wrong"), Some(&file)), Access::NeedsToken);
        assert_eq!(access(pod, &with("s3cret"), Some(&file)), Access::Granted);
        assert_eq!(access(mapped_loopback, &HeaderMap::new(), None), Access::Granted);
        std::fs::write(&file, "").expect("empty token");
        assert_eq!(access(pod, &with(""), Some(&file)), Access::NeedsToken, "an empty token file opens nothing");
        std::fs::remove_file(&file).expect("remove token");
    }

    #[tokio::test]
    async fn a_client_that_is_not_loopback_gets_probes_but_not_metrics() {
        // The peer address a connection from a pod would carry (the sandbox tests make real ones).
        use tower::ServiceExt as _;
        let app = router(endpoints(None));
        let request = |path: &str| {
            let mut r = Request::builder().uri(path).body(Body::empty()).expect("request");
            r.extensions_mut().insert(ConnectInfo("198.18.0.10:40000".parse::<SocketAddr>().expect("address")));
            r
        };
        let status = |r: Response| r.status();
        assert_eq!(status(app.clone().oneshot(request("/healthz")).await.expect("answer")), StatusCode::OK);
        assert_eq!(status(app.clone().oneshot(request("/metrics")).await.expect("answer")), StatusCode::FORBIDDEN);
        assert_eq!(status(app.oneshot(request("/events")).await.expect("answer")), StatusCode::FORBIDDEN);
    }
}
