//! A request to a destination discovery knows: the route that takes it
//! (once) and its filters, then its tries. Every try picks its endpoint
//! afresh (split -> balancer, so a retry may land on another endpoint or
//! backend), is judged for the endpoint's failure accrual, and, under the
//! route's retries or the destination's RetryPolicy, is retried when its
//! outcome calls for it, the budget allows, and the body can be replayed.
//! A per-try timeout bounds each try, a timeout the whole exchange,
//! retries included; the route's win over the RetryPolicy's.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::http::body::{Body, BoxError};
use crate::http::headers::{grpc_status, with_head_of};
use crate::metrics::{
    DstLabels, Metrics, RetryLabels, RouteBackendLabels, RouteRef, TryLabels, Value,
};
use crate::routing::replay::ReplayBody;
use crate::routing::retry::{CompiledRetry, Outcome};
use crate::routing::{CompiledRoute, DestinationConfig, NoEndpoint};
use crate::routing::{mirror, peek};
use crate::telemetry::Routed;
use crate::upstream::{self, Hop, InFlight, ResponseBody};

/// Why a routed request got no response.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    NoEndpoint(#[from] NoEndpoint),
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
    #[error("request timed out after {0:?} (the route's or RetryPolicy's timeout)")]
    Timeout(Duration),
    #[error("no response within the per-try timeout of {0:?}")]
    PerTryTimeout(Duration),
}

type Result<T> = std::result::Result<T, RouteError>;

/// Sends `req` to `d`: the route that takes it, its filters, then its
/// tries under the route's retries and timeouts (or the destination's
/// RetryPolicy). `routed` learns where its last try went and how many
/// retries there were.
pub async fn send(
    hop: &Hop<'_>,
    metrics: &Arc<Metrics>,
    d: &DestinationConfig,
    mut req: Request<Incoming>,
    routed: &mut Routed,
) -> Result<Response<ResponseBody>> {
    let route = d.route_for(&req)?;
    routed.route = Some(route.name.clone());
    routed.labels = Some(route.labels.clone());
    if let Some(redirect) = route.filters.on_request(&mut req, d.model.port) {
        return Ok(redirect.map(|()| ResponseBody::new(Body::Empty)));
    }
    let mut rsp = if route.mirrors.is_empty() {
        exchange(hop, metrics, d, route, req, routed).await?
    } else {
        let counted = mirror::Counted {
            metrics: metrics.clone(),
            dst_namespace: d.dst_namespace.clone(),
            dst_service: d.dst_service.clone(),
            route: route.name.clone(),
        };
        let req = mirror::send_copies(hop, &counted, &route.mirrors, req);
        // Boxed: only mirrored routes pay for the teed body's future.
        Box::pin(exchange(hop, metrics, d, route, req, routed)).await?
    };
    route.filters.on_response(&mut rsp);
    Ok(rsp)
}

/// A request body as the tries take it: the client's, or the client's
/// teed to a route's mirrors.
trait RequestBody: HttpBody<Data = Bytes, Error = hyper::Error> + Send + Sync + 'static {
    fn into_body(self) -> Body;
}

impl RequestBody for Incoming {
    fn into_body(self) -> Body {
        Body::Incoming(self)
    }
}

impl RequestBody for mirror::Tee<Incoming> {
    fn into_body(self) -> Body {
        Body::Boxed(Box::pin(self.map_err(BoxError::from)))
    }
}

/// The tries of `req` under the route's retries and timeouts (or the
/// destination's RetryPolicy).
async fn exchange<B: RequestBody>(
    hop: &Hop<'_>,
    metrics: &Metrics,
    d: &DestinationConfig,
    route: &CompiledRoute,
    req: Request<B>,
    routed: &mut Routed,
) -> Result<Response<ResponseBody>> {
    let retry = route.retry.as_ref().or(d.retry.as_ref());
    let tries = Tries {
        hop,
        metrics,
        d,
        route,
        per_try: route
            .try_timeout
            .or(retry.and_then(|r| r.policy.per_try_timeout)),
        peek_grpc: retry.is_some_and(CompiledRetry::retries_grpc_codes),
    };
    let exchange = async {
        match retry {
            None => tries.once(req.map(B::into_body), routed).await.0,
            // Boxed: its future holds a try and the replay state; without
            // the box every request's future would too.
            Some(retry) => Box::pin(tries.with_retries(retry, req, routed)).await,
        }
    };
    match route.timeout.or(retry.and_then(|r| r.policy.timeout)) {
        Some(t) => tokio::time::timeout(t, exchange)
            .await
            .unwrap_or(Err(RouteError::Timeout(t))),
        None => exchange.await,
    }
}

/// What every try of one request shares.
struct Tries<'a> {
    hop: &'a Hop<'a>,
    metrics: &'a Metrics,
    d: &'a DestinationConfig,
    route: &'a CompiledRoute,
    per_try: Option<Duration>,
    /// Read a gRPC status from the trailers before judging a try.
    peek_grpc: bool,
}

impl Tries<'_> {
    /// One try: pick an endpoint, send, judge the outcome for failure
    /// accrual. The endpoint's load lasts until the response body ends.
    async fn once(
        &self,
        req: Request<Body>,
        routed: &mut Routed,
    ) -> (Result<Response<ResponseBody>>, Outcome) {
        let (d, per_try) = (self.d, self.per_try);
        let pick = match d.pick_in(self.route) {
            Ok(p) => p,
            Err(e) => return (Err(e.into()), Outcome::NoEndpoint),
        };
        d.record_split(self.metrics, &pick);
        self.metrics
            .route(&self.route.labels)
            .backend_requests
            .get_or_create(&RouteBackendLabels {
                route: self.route.labels.clone(),
                backend: pick.backend.labels.clone(),
            })
            .inc();
        let target = self.hop.target(pick.endpoint.address, pick.identity);
        let mut inflight = pick.start();
        routed.backend = Some(pick.backend.service.clone());
        routed.endpoint = Some(target.addr);
        routed.server_id = target.identity.as_ref().map(|id| Arc::from(id.to_string()));
        let attempt = async {
            let rsp = upstream::send::send(self.hop, target, req).await?;
            if self.peek_grpc && peek::needs_peek(&rsp) {
                // Boxed: only tries that retry on gRPC codes pay for it.
                let (rsp, grpc) = Box::pin(peek::grpc_status_of(rsp))
                    .await
                    // Broken before its first frame: as good as a reset.
                    .map_err(|_| RouteError::Upstream(upstream::Error::Reset))?;
                return Ok((rsp, grpc));
            }
            let grpc = grpc_status(rsp.headers());
            Ok((rsp, grpc))
        };
        let result = match per_try {
            Some(t) => tokio::time::timeout(t, attempt)
                .await
                .unwrap_or(Err(RouteError::PerTryTimeout(t))),
            None => attempt.await,
        };
        let outcome = outcome_of(&result);
        judge(&mut inflight, outcome);
        self.metrics
            .request_tries
            .get_or_create(&TryLabels {
                dst_namespace: Value(d.dst_namespace.clone()),
                dst_service: Value(d.dst_service.clone()),
                outcome: outcome.as_str(),
            })
            .inc();
        (
            result.map(|(r, _)| r.map(|b| b.with_inflight(inflight))),
            outcome,
        )
    }

    /// Tries until one is not to be retried, or no retry is left (by
    /// count, budget, or a body too large to replay).
    async fn with_retries<B: RequestBody>(
        &self,
        retry: &CompiledRetry,
        req: Request<B>,
        routed: &mut Routed,
    ) -> Result<Response<ResponseBody>> {
        let (d, metrics) = (self.d, self.metrics);
        retry.budget.deposit();
        let (parts, body) = req.into_parts();
        let template = Request::from_parts(parts, ());
        let (mut body, replay) = ReplayBody::new(body);
        let dst = || DstLabels {
            dst_namespace: Value(d.dst_namespace.clone()),
            dst_service: Value(d.dst_service.clone()),
        };
        let linkerd = metrics.route(&self.route.labels);
        let count = |family: &Family<RouteRef, Counter>| {
            family.get_or_create(&self.route.labels).inc();
        };
        let mut retries = 0;
        loop {
            let (result, outcome) = self
                .once(with_head_of(&template, Body::Boxed(Box::pin(body))), routed)
                .await;
            let Some(reason) = retry.retry_reason(outcome, template.method()) else {
                if retries > 0 && outcome.as_str() == "success" {
                    count(linkerd.retry_successes);
                }
                return result;
            };
            if retries >= retry.max_retries() {
                count(linkerd.retry_limit_exceeded);
                return result;
            }
            let Some(next) = replay.retry() else {
                // The body outgrew what is kept for replay.
                count(linkerd.retry_overflow);
                return result;
            };
            if !retry.budget.try_withdraw() {
                metrics.retry_budget_exhausted.get_or_create(&dst()).inc();
                count(linkerd.retry_overflow);
                return result;
            }
            let DstLabels {
                dst_namespace,
                dst_service,
            } = dst();
            metrics
                .retries
                .get_or_create(&RetryLabels {
                    dst_namespace,
                    dst_service,
                    reason,
                })
                .inc();
            count(linkerd.retry_requests);
            drop(result);
            retries += 1;
            routed.retries = retries;
            tokio::time::sleep(retry.backoff(retries, fastrand::f64())).await;
            body = next;
        }
    }
}

fn outcome_of(result: &Result<(Response<ResponseBody>, Option<u16>)>) -> Outcome {
    match result {
        Ok((rsp, grpc)) => Outcome::Response {
            status: rsp.status(),
            grpc: *grpc,
        },
        Err(RouteError::Upstream(upstream::Error::Connect(_))) => Outcome::ConnectFailure,
        Err(RouteError::PerTryTimeout(_)) => Outcome::Timeout,
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
