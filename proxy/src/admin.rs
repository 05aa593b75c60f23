//! The admin server (port 4191): liveness, readiness, metrics, the config
//! in force, the mesh identity, and a drain switch for Jobs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::discovery::Store;
use crate::drain::Drain;
use crate::metrics::Metrics;

/// What the admin endpoints report on.
#[derive(Debug)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub drain: Drain,
    /// Set once the listeners are up.
    pub ready: AtomicBool,
    /// With a controller, /ready also waits for the first config.
    pub discovery: Option<Arc<Store>>,
    /// The `/config` document without discovery (pass-through).
    pub config: serde_json::Value,
    /// The mesh identity, when configured: /ready waits for its first
    /// certificate, /identity describes it.
    pub identity: Option<Arc<crate::identity::LocalIdentity>>,
}

/// Serves the admin endpoints until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, peer, req)) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static response")
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}

fn handle(state: &AdminState, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match (req.uri().path(), get) {
        ("/live", true) => text(StatusCode::OK, "live\n"),
        ("/ready", true) => {
            let config_ready = state
                .discovery
                .as_ref()
                .is_none_or(|s| s.first_applied.load(Ordering::Acquire));
            let identity_ready = state.identity.as_ref().is_none_or(|i| i.has_certificate());
            if state.ready.load(Ordering::Acquire)
                && config_ready
                && identity_ready
                && !state.drain.is_draining()
            {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        ("/metrics", true) => metrics(state, &req),
        ("/config", true) => match &state.discovery {
            Some(store) => json(&store.to_json()),
            None => json(&state.config),
        },
        ("/identity", true) => match &state.identity {
            Some(id) => json(&id.to_json()),
            None => json(&serde_json::json!({
                "identity": null,
                "reason": "no mesh identity: WEFT_PROXY_IDENTITY_ADDR is not set",
                "certificate_expiry": null,
                "trust_anchor_fingerprints": [],
            })),
        },
        ("/shutdown", _) if req.method() == Method::POST => {
            if !peer.ip().to_canonical().is_loopback() {
                return text(
                    StatusCode::FORBIDDEN,
                    "shutdown is only accepted from localhost\n",
                );
            }
            tracing::info!(%peer, "shutdown requested through the admin server");
            state.drain.start();
            text(StatusCode::OK, "draining, then exiting\n")
        }
        ("/live" | "/ready" | "/metrics" | "/config" | "/identity" | "/shutdown", _) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /live /ready /metrics /config /identity\n",
        ),
    }
}

fn metrics(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let wants_openmetrics = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = if wants_openmetrics {
        (
            state.metrics.encode_openmetrics(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            state.metrics.encode_prometheus(),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}
