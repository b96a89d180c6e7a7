//! The health endpoints probes ask: `/healthz` answers 200 while the process runs, `/readyz`
//! answers 200 once the first complete state has been programmed and 503 before; `/metrics`
//! serves the Prometheus metrics ([`crate::metrics`]); `/events?namespace=..&pod=..&verdict=..`
//! streams verdict events as JSON lines ([`crate::events`]) for `netpol-agent observe`.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::{body::Frame, server::conn::http1, service::service_fn, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// The default `--health-addr`.
pub const DEFAULT_ADDR: &str = "0.0.0.0:9790";

/// The answer to a GET of `path`.
pub fn respond(path: &str, ready: bool) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/healthz" | "/livez" => (StatusCode::OK, "ok\n"),
        "/readyz" if ready => (StatusCode::OK, "ready\n"),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "not ready: no complete state programmed yet\n"),
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

/// A response body: a whole text, or the event stream.
type Body = BoxBody<Bytes, Infallible>;

/// The `/events` response: the subscriber's records as JSON lines, as they come; a subscriber
/// that falls behind gets a line `{"lost": N}` instead of the records it missed.
fn event_stream(hub: &Arc<crate::events::EventHub>, query: Option<&str>) -> Response<Body> {
    let filter = match crate::events::EventFilter::from_query(query.unwrap_or("")) {
        Ok(f) => f,
        Err(e) => {
            let mut r = Response::new(Full::new(Bytes::from(format!("bad filter: {e:#}\n"))).boxed());
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        }
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
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(lines.map(|b| Ok::<_, Infallible>(Frame::data(b))))));
    if let Ok(v) = hyper::header::HeaderValue::from_str("application/x-ndjson") {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Serves the endpoints on `listener` until the task is dropped; `ready` is read per request.
/// Without an event hub, `/events` answers 404.
pub async fn serve(
    listener: TcpListener,
    ready: Arc<AtomicBool>,
    metrics: Arc<crate::metrics::Metrics>,
    events: Option<Arc<crate::events::EventHub>>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "health endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (ready, metrics, events) = (ready.clone(), metrics.clone(), events.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let response: Response<Body> = match (req.uri().path(), &events) {
                    ("/metrics", _) => {
                        let mut r = Response::new(Full::new(Bytes::from(metrics.encode())).boxed());
                        if let Ok(v) = hyper::header::HeaderValue::from_str("application/openmetrics-text; version=1.0.0; charset=utf-8") {
                            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
                        }
                        r
                    }
                    ("/events", Some(hub)) => event_stream(hub, req.uri().query()),
                    (path, _) => respond(path, ready.load(Ordering::Relaxed)).map(BodyExt::boxed),
                };
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                debug!(%peer, error = %e, "health endpoint: connection failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_is_always_ok_and_readyz_follows_readiness() {
        assert_eq!(respond("/healthz", false).status(), StatusCode::OK);
        assert_eq!(respond("/readyz", false).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(respond("/readyz", true).status(), StatusCode::OK);
        assert_eq!(respond("/other", true).status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn the_server_answers_over_http() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(AtomicBool::new(false));
        let server = tokio::spawn(serve(listener, ready.clone(), Arc::new(crate::metrics::Metrics::new()), None));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.0 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.0 503"));
        ready.store(true, Ordering::Relaxed);
        assert!(get("/readyz").await.starts_with("HTTP/1.0 200"));
        let metrics = get("/metrics").await;
        assert!(metrics.starts_with("HTTP/1.0 200") && metrics.contains("netpol_ready"), "{metrics}");
        server.abort();
    }
}
