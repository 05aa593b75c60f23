//! The admin server (port 4191): liveness, readiness, metrics, the config
//! in force, the mesh identity, live requests (tap), and a drain switch
//! for Jobs.
//!
//! It speaks plain HTTP/1.1 and HTTP/2, and, when the proxy has a mesh
//! identity, mesh TLS too: a meshed client's proxy reaches another pod's
//! admin port over mTLS (iptables leaves that port alone, so the admin
//! server, not the inbound listener, sees the ClientHello), and the
//! controller relays `weft tap` over it with its own identity.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use weft_proto::spiffe::SpiffeId;

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
    /// `/tap` watches its requests.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// Mesh TLS on the admin port, when the proxy has an identity.
    pub mesh: Option<crate::tls::MeshTls>,
    /// Who may tap over mesh TLS: the controller's identity.
    pub tap_identity: Option<SpiffeId>,
}

/// Who is asking.
#[derive(Clone, Debug)]
pub struct Caller {
    pub addr: SocketAddr,
    /// Over mesh TLS: the client's verified identity.
    pub identity: Option<Arc<SpiffeId>>,
}

/// How long a client has to send its first bytes or its ClientHello.
const FIRST_BYTES: Duration = Duration::from_secs(10);

/// Serves the admin endpoints until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(connection(stream, peer, state.clone()));
    }
}

/// One admin connection: mesh TLS if it starts with a TLS record (and the
/// proxy has an identity), plain HTTP otherwise.
async fn connection(stream: TcpStream, peer: SocketAddr, state: Arc<AdminState>) {
    let mut first = [0u8; 1];
    let tls = match tokio::time::timeout(FIRST_BYTES, stream.peek(&mut first)).await {
        Ok(Ok(1)) => first[0] == 0x16,
        _ => return,
    };
    if !tls {
        let caller = Caller {
            addr: peer,
            identity: None,
        };
        serve_http(TokioIo::new(stream), caller, state).await;
        return;
    }
    let Some(mesh) = &state.mesh else {
        tracing::debug!(%peer, "TLS on the admin port, but this proxy has no mesh identity");
        return;
    };
    let accept = tokio_rustls::TlsAcceptor::from(mesh.server.clone()).accept(stream);
    let tls = match tokio::time::timeout(FIRST_BYTES, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "admin mesh TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(weft_proto::mesh_tls::spiffe_id_of)
        .map(Arc::new);
    let caller = Caller {
        addr: peer,
        identity,
    };
    serve_http(TokioIo::new(tls), caller, state).await;
}

async fn serve_http<I>(io: TokioIo<I>, caller: Caller, state: Arc<AdminState>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let svc = service_fn(move |req| {
        let (state, caller) = (state.clone(), caller.clone());
        async move { Ok::<_, Infallible>(handle(&state, &caller, req)) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    let _ = builder.serve_connection(io, svc).await;
}

/// A whole answer, or a stream (`/tap`).
pub type AdminBody = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> AdminBody {
    Full::new(b.into()).boxed()
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<AdminBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(full(body.into()))
        .expect("static response")
}

fn json(value: &serde_json::Value) -> Response<AdminBody> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .expect("static response")
}

fn handle(state: &AdminState, caller: &Caller, req: Request<Incoming>) -> Response<AdminBody> {
    let peer = caller.addr;
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
        ("/tap", true) => {
            let allowed = match &caller.identity {
                // Over mesh TLS the identity decides, wherever it comes from.
                Some(id) => state.tap_identity.as_ref() == Some(&**id),
                None => peer.ip().to_canonical().is_loopback(),
            };
            tap(state, allowed, req.uri().query().unwrap_or(""))
        }
        ("/live" | "/ready" | "/metrics" | "/config" | "/identity" | "/shutdown" | "/tap", _) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /live /ready /metrics /config /identity /tap\n",
        ),
    }
}

/// `GET /tap?direction=&method=&authority=&path=`: every matching request
/// as it happens, one JSON object per line (a `request` event when it
/// arrives, a `response` event when its response ends), until the client
/// goes away. Only when tap is on, and only for `allowed` callers
/// (localhost, or the controller over mesh TLS).
pub fn tap(state: &AdminState, allowed: bool, query: &str) -> Response<AdminBody> {
    let t = &state.telemetry;
    if !t.tap_enabled {
        return text(
            StatusCode::NOT_FOUND,
            "tap is off in this proxy: WEFT_PROXY_TAP=true turns it on (chart value proxy.tap.enabled)\n",
        );
    }
    if !allowed {
        return text(
            StatusCode::FORBIDDEN,
            "tap is served to localhost and to the controller (over mesh TLS) only\n",
        );
    }
    let filter = match crate::telemetry::tap::Filter::parse(query) {
        Ok(f) => f,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let watch = t.tap.watch(filter);
    let events = futures_util::stream::unfold(watch, |mut w| async move {
        let line = w.events.recv().await?;
        Some((Ok::<_, Infallible>(hyper::body::Frame::data(line)), w))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(StreamBody::new(events).boxed())
        .expect("static response")
}

fn metrics(state: &AdminState, req: &Request<Incoming>) -> Response<AdminBody> {
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
        .body(full(body))
        .expect("static response")
}
