//! One request through the proxy: count it, send it upstream in the
//! upstream's HTTP version, and return the response (or the proxy's error)
//! with its metrics attached to the end of the stream.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::authz::{self, Authorizer};
use crate::discovery::{Resolved, Slot};
use crate::drain::Drain;
use crate::http::app_protocol::AppProtocols;
use crate::http::body::{Body, ResponseBody, ResponseRecord, grpc_status};
use crate::http::error::ProxyError;
use crate::http::headers::{authority_of, convert_request, is_upgrade, strip_hop_by_hop};
use crate::http::pool::Pool;
use crate::http::pool::Target;
use crate::http::{routed, upgrade};
use crate::metrics::{
    Classification, Direction, LatencyLabels, Metrics, RequestLabels, ResponseLabels, RouteLabels,
    RouteLatencyLabels, Tls, Value,
};
use crate::routing::{DestinationConfig, Pick};
use crate::telemetry::{Routed, Telemetry};
use crate::tls::{CLIENT_ID_HEADER, ORIG_PROTO_HEADER};
use weft_proto::spiffe::SpiffeId;

/// What every request on one accepted HTTP connection shares.
#[derive(Debug)]
pub struct HttpConn {
    pub direction: Direction,
    /// Where the connection was going (its original destination).
    pub target: SocketAddr,
    pub tls: Tls,
    pub metrics: Arc<Metrics>,
    pub pool: Arc<Pool>,
    /// Inbound only: how to learn the application's HTTP version.
    pub app_protocols: Option<Arc<AppProtocols>>,
    pub drain: Drain,
    /// Outbound, with discovery: the destination's config slot. Read per
    /// request, so config changes reach open connections.
    pub dest: Option<Arc<Slot>>,
    /// Outbound with a mesh identity: meshed endpoints are reached over
    /// mesh TLS.
    pub mesh: bool,
    /// Inbound over mesh TLS: the client's verified identity, and its
    /// `client_id` label value.
    pub client_id: Option<(Arc<SpiffeId>, Value)>,
    /// Where the connection came from.
    pub client: SocketAddr,
    /// Inbound: the pod's authorization.
    pub authz: Option<Arc<Authorizer>>,
    /// Spans, access logs and tap.
    pub telemetry: Arc<Telemetry>,
    /// Requests admitted proxy-wide (load shedding).
    pub load: Arc<crate::overload::Load>,
    pub limits: crate::config::Limits,
    /// This connection's requests in flight (for its idle timeout).
    pub active: Arc<std::sync::atomic::AtomicUsize>,
    /// HTTP/1: the index of the first request framed two ways (see
    /// framing.rs), and how many requests came so far.
    pub ambiguous: Arc<std::sync::atomic::AtomicU64>,
    pub requests_seen: std::sync::atomic::AtomicU64,
}

impl HttpConn {
    /// The destination's config in force, if discovery knows it.
    fn destination(&self) -> Option<Arc<DestinationConfig>> {
        match &**self.dest.as_ref()?.load() {
            Resolved::Destination(d) => Some(d.clone()),
            _ => None,
        }
    }

    /// Where a request goes: route -> split -> endpoint, or the original
    /// destination when discovery does not know it.
    fn upstream<B>(
        &self,
        dest: Option<&DestinationConfig>,
        req: &Request<B>,
    ) -> Result<Target, ProxyError> {
        let Some(d) = dest else {
            return Ok(Target::plain(self.target));
        };
        let pick = d.pick_for_request(req)?;
        self.metrics.record_split(d, &pick);
        Ok(self.target_of(&pick))
    }

    /// Where a pick goes: over mesh TLS when the endpoint is meshed and
    /// this proxy has an identity.
    pub fn target_of(&self, pick: &Pick<'_>) -> Target {
        Target {
            addr: pick.endpoint.address,
            identity: if self.mesh {
                pick.identity.cloned()
            } else {
                None
            },
        }
    }

    /// The HTTP version to speak upstream. HTTP/1 stays HTTP/1. HTTP/2 stays
    /// HTTP/2 outbound (the client chose it for that server); inbound, the
    /// application decides.
    async fn upstream_version<B>(&self, req: &Request<B>) -> Result<Version, ProxyError> {
        if req.version() != Version::HTTP_2 {
            return Ok(Version::HTTP_11);
        }
        match &self.app_protocols {
            Some(app) => app.version(self.target).await,
            None => Ok(Version::HTTP_2),
        }
    }
}

/// Proxies one request; never fails (errors become responses).
pub async fn proxy(conn: &HttpConn, mut req: Request<Incoming>) -> Response<ResponseBody> {
    let index = conn
        .requests_seen
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let slot = conn.load.admit_request(&conn.active);
    if slot.is_none() {
        conn.metrics.shed(conn.direction, "requests");
    }
    // The client identity header is the inbound proxy's to set, never the
    // client's.
    req.headers_mut().remove(CLIENT_ID_HEADER);
    if let Some((_, label)) = &conn.client_id
        && let Ok(v) = http::HeaderValue::from_str(label.as_str())
    {
        req.headers_mut().insert(CLIENT_ID_HEADER, v);
    }
    let client_id = conn.client_id.as_ref().map(|(_, label)| label.clone());
    let started = Instant::now();
    let authority = conn
        .metrics
        .authorities
        .value(&authority_of(&req, conn.target));
    let dest = conn.destination();
    let dst_namespace = dest.as_ref().map(|d| Value(d.dst_namespace.clone()));
    let dst_service = dest.as_ref().map(|d| Value(d.dst_service.clone()));
    conn.metrics
        .requests
        .get_or_create(&RequestLabels {
            direction: conn.direction,
            authority: authority.clone(),
            tls: conn.tls,
            client_id: client_id.clone(),
            dst_namespace: dst_namespace.clone(),
            dst_service: dst_service.clone(),
        })
        .inc();
    let downstream = req.version();
    let grpc = is_grpc(&req);
    // Before anything is forwarded: the trace context the next hop sees
    // names this proxy's span.
    let mut telemetry = conn.telemetry.start(
        conn.direction,
        conn.client,
        client_id.as_ref(),
        &authority,
        &mut req,
    );
    let mut routed = Routed::default();

    let refused = conn.authz.as_ref().and_then(|a| {
        let id = conn.client_id.as_ref().map(|(id, _)| &**id);
        a.check(conn.target.port(), id, conn.client.ip(), authz::Kind::Http)
            .err()
    });
    let result = if slot.is_none() {
        Err(ProxyError::Overloaded)
    } else if ambiguous_length(&req)
        || conn.ambiguous.load(std::sync::atomic::Ordering::Acquire) == index
    {
        conn.metrics.abuse(conn.direction, "ambiguous_length");
        Err(ProxyError::AmbiguousLength)
    } else if let Some(refused) = refused {
        Err(ProxyError::Refused(refused))
    } else if is_upgrade(&req) {
        match conn.upstream(dest.as_deref(), &req) {
            Ok(upstream) => upgrade::proxy(conn, upstream, req).await,
            Err(e) => Err(e),
        }
    } else if let Some(d) = dest.as_deref() {
        routed::send(conn, d, req, &mut routed).await
    } else {
        send_once(conn, Target::plain(conn.target), req.map(Body::Incoming)).await
    };
    let (mut rsp, error) = match result {
        Ok(rsp) => (rsp, None),
        Err(e) => {
            tracing::info!(direction = conn.direction.as_str(), target = %conn.target, error = %e, "request failed");
            (e.to_response(), Some(e.kind()))
        }
    };

    let switching = rsp.status() == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(rsp.headers_mut(), switching);
    if matches!(error, Some("ambiguous_length")) {
        // The body's framing is unknowable: the connection cannot go on.
        rsp.headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    *rsp.version_mut() = downstream;

    let status_code = rsp.status().as_u16();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let route = dest
        .as_ref()
        .zip(routed.route.clone())
        .map(|(d, route)| RouteLabels {
            dst_namespace: Value(d.dst_namespace.clone()),
            dst_service: Value(d.dst_service.clone()),
            route: Value(route),
        });
    if let Some(r) = &route {
        conn.metrics.route_requests.get_or_create(r).inc();
        conn.metrics
            .route_response_latency
            .get_or_create(&RouteLatencyLabels {
                dst_namespace: r.dst_namespace.clone(),
                dst_service: r.dst_service.clone(),
                route: r.route.clone(),
                status_code,
            })
            .observe(latency_ms);
    }
    if let Some(t) = telemetry.as_mut() {
        t.routed = routed;
    }
    conn.metrics
        .response_latency
        .get_or_create(&LatencyLabels {
            direction: conn.direction,
            authority: authority.clone(),
            tls: conn.tls,
            client_id: client_id.clone(),
            dst_namespace: dst_namespace.clone(),
            dst_service: dst_service.clone(),
            status_code,
        })
        .observe(latency_ms);
    let record = ResponseRecord {
        metrics: conn.metrics.clone(),
        labels: ResponseLabels {
            direction: conn.direction,
            authority,
            tls: conn.tls,
            client_id: client_id.clone(),
            dst_namespace,
            dst_service,
            status_code,
            classification: Classification::Success,
            // A trailers-only gRPC response carries its status in the headers.
            grpc_status: if grpc {
                grpc_status(rsp.headers())
            } else {
                None
            },
            error,
        },
        grpc,
        route,
        telemetry,
    };
    rsp.map(|body| body.with_record(record).with_slot(slot))
}

/// An HTTP/1 request with both Content-Length and Transfer-Encoding (or
/// more than one Content-Length) frames its body two ways: the classic
/// request smuggling setup. Refused, never forwarded (RFC 9112 6.3).
fn ambiguous_length<B>(req: &Request<B>) -> bool {
    if req.version() >= Version::HTTP_2 {
        return false;
    }
    let lengths = req.headers().get_all(header::CONTENT_LENGTH).iter().count();
    lengths > 1 || (lengths == 1 && req.headers().contains_key(header::TRANSFER_ENCODING))
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Sends a request to one upstream address, once.
pub async fn send_once(
    conn: &HttpConn,
    upstream: Target,
    mut req: Request<Body>,
) -> Result<Response<ResponseBody>, ProxyError> {
    // Only a proxy sets this header, and only on the mesh hop: believed
    // from an authenticated peer only.
    let was_http1 =
        req.headers_mut().remove(ORIG_PROTO_HEADER).is_some() && conn.client_id.is_some();
    let mesh = upstream.identity.is_some();
    let version = if mesh {
        Version::HTTP_2
    } else if was_http1 {
        Version::HTTP_11
    } else {
        conn.upstream_version(&req).await?
    };
    strip_hop_by_hop(req.headers_mut(), false);
    if mesh && req.version() != Version::HTTP_2 {
        req.headers_mut().insert(
            ORIG_PROTO_HEADER,
            http::HeaderValue::from_static("HTTP/1.1"),
        );
    }
    convert_request(&mut req, version, conn.target);
    let (mut rsp, pooled) = conn.pool.send(&upstream, version, req).await?;
    if conn.direction == Direction::Inbound {
        // Only a proxy says it answered for the upstream: the application
        // behind this one cannot make its answer look like the proxy's.
        rsp.headers_mut()
            .remove(crate::http::error::PROXY_ERROR_HEADER);
    }
    Ok(rsp.map(|b| ResponseBody::new(Body::Incoming(b)).with_pooled(pooled)))
}
