//! One request's labels and telemetry, built once when it arrives: counted
//! in `request_total` then, in `response_latency_ms` (and the route's
//! metrics) when its response is known, and in `response_total` (with
//! spans, access log and tap) when the response's body ends
//! ([`ResponseRecord`], which travels with the body).

use std::sync::Arc;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::forward::HttpConn;
use crate::http::headers::{authority_of, grpc_status, is_grpc};
use crate::metrics::{
    Classification, LatencyLabels, Metrics, RequestLabels, ResponseLabels, RouteLabels,
    RouteLatencyLabels, Value,
};
use crate::routing::DestinationConfig;
use crate::telemetry::{RequestTelemetry, Routed};
use crate::upstream::{ResponseBody, ResponseRecord};

pub struct Record {
    started: Instant,
    labels: RequestLabels,
    grpc: bool,
    /// The client's HTTP version, which the response is given.
    downstream: Version,
    telemetry: Option<Box<RequestTelemetry>>,
    /// Where a routed request went, filled in by the router.
    pub routed: Routed,
}

impl Record {
    /// Counts the request, and starts its telemetry (which may rewrite its
    /// trace context headers for the next hop).
    pub fn start(
        conn: &HttpConn,
        dest: Option<&DestinationConfig>,
        req: &mut Request<Incoming>,
    ) -> Self {
        let shared = &*conn.shared;
        let labels = RequestLabels {
            direction: conn.direction,
            authority: shared
                .metrics
                .authorities
                .value(&authority_of(req, conn.target)),
            tls: conn.tls,
            client_id: conn.client_id.as_ref().map(|(_, label)| label.clone()),
            dst_namespace: dest.map(|d| Value(d.dst_namespace.clone())),
            dst_service: dest.map(|d| Value(d.dst_service.clone())),
        };
        shared.metrics.requests.get_or_create(&labels).inc();
        let telemetry = shared.telemetry.start(
            conn.direction,
            conn.client,
            labels.client_id.as_ref(),
            &labels.authority,
            req,
        );
        Self {
            started: Instant::now(),
            grpc: is_grpc(req),
            downstream: req.version(),
            labels,
            telemetry,
            routed: Routed::default(),
        }
    }

    pub fn downstream_version(&self) -> Version {
        self.downstream
    }

    /// Counts the response's latency (and, routed, its route's request and
    /// latency); returns what counts the rest when its body ends.
    pub fn finish(
        mut self,
        metrics: &Arc<Metrics>,
        rsp: &Response<ResponseBody>,
        error: Option<&'static str>,
    ) -> ResponseRecord {
        let status_code = rsp.status().as_u16();
        let latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let route = self.route();
        let linkerd_route = self.routed.labels.take().map(|l| (l, self.started));
        if let Some(r) = &route {
            metrics.route_requests.get_or_create(r).inc();
            metrics
                .route_response_latency
                .get_or_create(&RouteLatencyLabels {
                    dst_namespace: r.dst_namespace.clone(),
                    dst_service: r.dst_service.clone(),
                    route: r.route.clone(),
                    status_code,
                })
                .observe(latency_ms);
        }
        let mut telemetry = self.telemetry;
        if let Some(t) = telemetry.as_mut() {
            t.routed = self.routed;
        }
        let latency = LatencyLabels {
            request: self.labels,
            status_code,
        };
        metrics
            .response_latency
            .get_or_create(&latency)
            .observe(latency_ms);
        ResponseRecord {
            metrics: metrics.clone(),
            labels: ResponseLabels {
                request: latency.request,
                status_code,
                classification: Classification::Success,
                // A trailers-only gRPC response carries its status in the headers.
                grpc_status: if self.grpc {
                    grpc_status(rsp.headers())
                } else {
                    None
                },
                error,
            },
            grpc: self.grpc,
            route,
            linkerd_route,
            telemetry,
        }
    }

    /// The route's labels, when the request was routed.
    fn route(&self) -> Option<RouteLabels> {
        Some(RouteLabels {
            dst_namespace: self.labels.dst_namespace.clone()?,
            dst_service: self.labels.dst_service.clone()?,
            route: Value(self.routed.route.clone()?),
        })
    }
}
