//! A request to a destination discovery knows: every try picks its
//! endpoint afresh (route -> split -> balancer, so a retry may land on
//! another endpoint or backend), is judged for the endpoint's failure
//! accrual, and, under a RetryPolicy, is retried when its outcome calls for
//! it, the budget allows, and the body can be replayed. The policy's
//! timeout bounds the whole exchange, retries included.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::http::body::{Body, ResponseBody, grpc_status};
use crate::http::error::ProxyError;
use crate::http::forward::{HttpConn, send_once};
use crate::http::replay::ReplayBody;
use crate::http::retry::{CompiledRetry, Outcome};
use crate::metrics::{DstLabels, RetryLabels, TryLabels, Value};
use crate::routing::{DestinationConfig, InFlight};
use crate::telemetry::Routed;

type Result<T> = std::result::Result<T, ProxyError>;

/// Sends `req` to `d`; `routed` learns where its last try went and how
/// many retries there were.
pub async fn send(
    conn: &HttpConn,
    d: &DestinationConfig,
    req: Request<Incoming>,
    routed: &mut Routed,
) -> Result<Response<ResponseBody>> {
    let Some(retry) = &d.retry else {
        let (rsp, _) = try_once(conn, d, req.map(Body::Incoming), None, routed).await;
        return rsp;
    };
    let with_retries = send_with_retries(conn, d, retry, req, routed);
    match retry.policy.timeout {
        Some(t) => tokio::time::timeout(t, with_retries)
            .await
            .unwrap_or(Err(ProxyError::Timeout(t))),
        None => with_retries.await,
    }
}

/// One try: pick an endpoint, send, judge the outcome for failure accrual.
/// The endpoint's load lasts until the response body ends.
async fn try_once(
    conn: &HttpConn,
    d: &DestinationConfig,
    req: Request<Body>,
    per_try: Option<Duration>,
    routed: &mut Routed,
) -> (Result<Response<ResponseBody>>, Outcome) {
    let pick = match d.pick_for_request(&req) {
        Ok(p) => p,
        Err(e) => return (Err(e.into()), Outcome::NoEndpoint),
    };
    conn.metrics.record_split(d, &pick);
    let (target, mut inflight) = (conn.target_of(&pick), pick.start());
    routed.route = Some(pick.route.name.clone());
    routed.backend = Some(pick.backend.service.clone());
    routed.endpoint = Some(target.addr);
    routed.server_id = target.identity.as_ref().map(|id| Arc::from(id.to_string()));
    let attempt = send_once(conn, target, req);
    let result = match per_try {
        Some(t) => tokio::time::timeout(t, attempt)
            .await
            .unwrap_or(Err(ProxyError::PerTryTimeout(t))),
        None => attempt.await,
    };
    let outcome = outcome_of(&result);
    judge(&mut inflight, outcome);
    conn.metrics
        .request_tries
        .get_or_create(&TryLabels {
            dst_namespace: Value(d.dst_namespace.clone()),
            dst_service: Value(d.dst_service.clone()),
            outcome: outcome.as_str(),
        })
        .inc();
    (
        result.map(|r| r.map(|b| b.with_inflight(inflight))),
        outcome,
    )
}

fn outcome_of(result: &Result<Response<ResponseBody>>) -> Outcome {
    match result {
        Ok(rsp) => Outcome::Response {
            status: rsp.status(),
            grpc: grpc_status(rsp.headers()),
        },
        Err(ProxyError::Connect(_)) => Outcome::ConnectFailure,
        Err(ProxyError::PerTryTimeout(_)) => Outcome::Timeout,
        Err(_) => Outcome::Reset,
    }
}

/// Failure accrual counts connect failures, resets, timeouts and 5xx.
fn judge(inflight: &mut InFlight, outcome: Outcome) {
    match outcome {
        Outcome::Response { status, .. } => {
            inflight.answered(!status.is_server_error());
        }
        _ => {
            inflight.failed();
        }
    }
}

async fn send_with_retries(
    conn: &HttpConn,
    d: &DestinationConfig,
    retry: &CompiledRetry,
    req: Request<Incoming>,
    routed: &mut Routed,
) -> Result<Response<ResponseBody>> {
    retry.budget.deposit(Instant::now());
    let (parts, body) = req.into_parts();
    let template = Request::from_parts(parts, ());
    let (mut body, replay) = ReplayBody::new(body);
    let dst = || DstLabels {
        dst_namespace: Value(d.dst_namespace.clone()),
        dst_service: Value(d.dst_service.clone()),
    };
    let mut retries = 0;
    loop {
        let (result, outcome) = try_once(
            conn,
            d,
            with_body(&template, Body::Replay(body)),
            retry.policy.per_try_timeout,
            routed,
        )
        .await;
        let Some(reason) = retry.retry_reason(outcome, template.method()) else {
            return result;
        };
        if retries >= retry.max_retries() {
            return result;
        }
        let Some(next) = replay.retry() else {
            // The body outgrew what is kept for replay.
            return result;
        };
        if !retry.budget.try_withdraw(Instant::now()) {
            conn.metrics
                .retry_budget_exhausted
                .get_or_create(&dst())
                .inc();
            return result;
        }
        let DstLabels {
            dst_namespace,
            dst_service,
        } = dst();
        conn.metrics
            .retries
            .get_or_create(&RetryLabels {
                dst_namespace,
                dst_service,
                reason,
            })
            .inc();
        drop(result);
        retries += 1;
        routed.retries = retries;
        tokio::time::sleep(retry.backoff(retries, fastrand::f64())).await;
        body = next;
    }
}

/// A try's request: the client's method, URI, version and headers.
fn with_body(template: &Request<()>, body: Body) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = template.method().clone();
    *req.uri_mut() = template.uri().clone();
    *req.version_mut() = template.version();
    *req.headers_mut() = template.headers().clone();
    req
}
