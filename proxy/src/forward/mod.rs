//! One request through the proxy, in named stages:
//!
//! ```text
//! proxy    admit      its place among requests in flight (load shedding),
//!                     the client identity header set by this proxy only
//!          observe    its labels, request counter and telemetry, built once
//!          authorize  inbound: the pod's AuthorizationPolicies
//!          refuse     shed, framed two ways (smuggling), or not authorized
//!          dispatch   an upgrade (upgrade.rs), routed (crate::routing: route,
//!                     split, retries, balancer), or direct to the original
//!                     destination (crate::upstream)
//!          respond    an error becomes the proxy's answer (error.rs); the
//!                     record goes with the body, counted at its end
//! ```
//!
//! [`conn`] holds what every request of a connection shares; [`record`]
//! the labels and telemetry of one request.

pub mod conn;
pub mod error;
pub mod record;
pub mod upgrade;

use http::{Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;

use crate::authz;
use crate::http::body::Body;
use crate::http::headers::{is_upgrade, strip_hop_by_hop};
use crate::overload::RequestSlot;
use crate::routing::DestinationConfig;
use crate::tls::CLIENT_ID_HEADER;
use crate::upstream::{self, ResponseBody, Target};
pub use conn::HttpConn;
pub use error::ProxyError;
use record::Record;

/// Proxies one request; never fails (errors become responses).
pub async fn proxy(conn: &HttpConn, mut req: Request<Incoming>) -> Response<ResponseBody> {
    let (index, slot) = admit(conn, &mut req);
    let dest = conn.destination();
    let mut record = Record::start(conn, dest.as_deref(), &mut req);
    let authorized = authorize(conn);
    let result = match refuse(conn, slot.is_some(), index, &req, authorized) {
        Some(e) => Err(e),
        None => dispatch(conn, dest.as_deref(), req, &mut record).await,
    };
    respond(conn, result, record, slot)
}

/// The request's place among those in flight (`None`: shed), its index on
/// the connection, and the client identity header: the inbound proxy's to
/// set, never the client's.
fn admit(conn: &HttpConn, req: &mut Request<Incoming>) -> (u64, Option<RequestSlot>) {
    let shared = &*conn.shared;
    let index = conn
        .requests_seen
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let slot = shared.load.admit_request(&conn.active);
    if slot.is_none() {
        shared.metrics.shed(conn.direction, "requests");
    }
    req.headers_mut().remove(CLIENT_ID_HEADER);
    if let Some((_, label)) = &conn.client_id
        && let Ok(v) = http::HeaderValue::from_str(label.as_str())
    {
        req.headers_mut().insert(CLIENT_ID_HEADER, v);
    }
    (index, slot)
}

/// Inbound: whether the pod's policies admit this client on this port.
fn authorize(conn: &HttpConn) -> Result<(), authz::Refused> {
    let Some(a) = conn.authz() else {
        return Ok(());
    };
    let id = conn.client_id.as_ref().map(|(id, _)| id);
    a.check(conn.target.port(), id, conn.client.ip(), authz::Kind::Http)
}

/// Why the request is not forwarded, if it is not: shed, framed two ways
/// (the proxy and the upstream could disagree where it ends: smuggling),
/// or refused by the pod's policies, in that order.
fn refuse(
    conn: &HttpConn,
    admitted: bool,
    index: u64,
    req: &Request<Incoming>,
    authorized: Result<(), authz::Refused>,
) -> Option<ProxyError> {
    if !admitted {
        return Some(ProxyError::Overloaded);
    }
    if ambiguous_length(req) || conn.ambiguous.load(std::sync::atomic::Ordering::Acquire) == index {
        conn.shared
            .metrics
            .abuse(conn.direction, "ambiguous_length");
        return Some(ProxyError::AmbiguousLength);
    }
    authorized.err().map(ProxyError::Refused)
}

/// Where the request goes, and its response.
async fn dispatch(
    conn: &HttpConn,
    dest: Option<&DestinationConfig>,
    req: Request<Incoming>,
    record: &mut Record,
) -> Result<Response<ResponseBody>, ProxyError> {
    let hop = conn.hop();
    if is_upgrade(&req) {
        let target = match dest {
            None => Target::plain(conn.target),
            Some(d) => {
                let pick = d.pick_for_request(&req)?;
                d.record_split(&conn.shared.metrics, &pick);
                hop.target(pick.endpoint.address, pick.identity)
            }
        };
        // Boxed: upgrades are rare and their future large.
        return Box::pin(upgrade::proxy(conn, target, req)).await;
    }
    match dest {
        Some(d) => {
            let metrics = &conn.shared.metrics;
            Ok(crate::routing::attempt::send(&hop, metrics, d, req, &mut record.routed).await?)
        }
        None => {
            let target = Target::plain(conn.target);
            Ok(upstream::send::send(&hop, target, req.map(Body::Incoming)).await?)
        }
    }
}

/// The response the client gets: the upstream's, or the proxy's own for an
/// error, in the client's HTTP version, carrying its record and the
/// request's slot to the end of its body.
fn respond(
    conn: &HttpConn,
    result: Result<Response<ResponseBody>, ProxyError>,
    record: Record,
    slot: Option<RequestSlot>,
) -> Response<ResponseBody> {
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
    *rsp.version_mut() = record.downstream_version();
    let record = record.finish(&conn.shared.metrics, &rsp, error);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<F: std::future::Future>(_: &dyn Fn() -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every request allocates its future (connection/mod.rs boxes it, so
    /// that an idle HTTP/1 connection does not hold one): rare, large
    /// paths (connecting, upgrades, retries) are boxed on their own so
    /// that the common path stays small.
    #[test]
    #[allow(unreachable_code)]
    fn the_request_future_leaves_rare_paths_out() {
        let size = future_size(&|| proxy(todo!(), todo!()));
        let upgrade = future_size(&|| upgrade::proxy(todo!(), todo!(), todo!()));
        eprintln!("forward::proxy: {size} bytes; an upgrade alone: {upgrade}");
        // Measured 7,128 bytes (release) with connecting, retries and
        // upgrades inline, 4,960 without.
        assert!(size <= 6 * 1024, "{size}");
    }
}
