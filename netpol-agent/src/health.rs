//! The health endpoints probes ask: `/healthz` answers 200 while the process runs, `/readyz`
//! answers 200 once the first complete state has been programmed and 503 before; `/metrics`
//! serves the Prometheus metrics ([`crate::metrics`]).

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn, Response, StatusCode};
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

/// Serves the endpoints on `listener` until the task is dropped; `ready` is read per request.
pub async fn serve(listener: TcpListener, ready: Arc<AtomicBool>, metrics: Arc<crate::metrics::Metrics>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "health endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (ready, metrics) = (ready.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let response = if req.uri().path() == "/metrics" {
                    let mut r = Response::new(Full::new(Bytes::from(metrics.encode())));
                    if let Ok(v) = hyper::header::HeaderValue::from_str("application/openmetrics-text; version=1.0.0; charset=utf-8") {
                        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
                    }
                    r
                } else {
                    respond(req.uri().path(), ready.load(Ordering::Relaxed))
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
        let server = tokio::spawn(serve(listener, ready.clone(), Arc::new(crate::metrics::Metrics::new())));
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
