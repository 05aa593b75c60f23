//! A response on its way to the client, and what waits for its end: the
//! HTTP/1 connection that goes back to its pool, the endpoint's load (for
//! balancing and failure accrual), the request's place among those in
//! flight, and its record (metrics, spans, access log, tap), which counts
//! the response with the gRPC status its trailers carry.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::http::body::{Body, BoxError};
use crate::http::headers::grpc_status;
use crate::metrics::{
    Classification, Metrics, ResponseLabels, RouteError, RouteLabels, RouteRef,
    RouteResponseLabels, RouteStatusLabels,
};
use crate::overload::RequestSlot;
use crate::telemetry::{Ending, RequestTelemetry};
use crate::upstream::endpoint::InFlight;
use crate::upstream::pool::Pooled;

/// Counts a response in `response_total` (and, routed, in
/// `route_response_total`) once its stream ends, and ends its telemetry.
#[derive(Debug)]
pub struct ResponseRecord {
    pub metrics: Arc<Metrics>,
    pub labels: ResponseLabels,
    pub grpc: bool,
    pub route: Option<RouteLabels>,
    /// Linkerd's route metrics: the route, and when the request came.
    pub linkerd_route: Option<(RouteRef, Instant)>,
    pub telemetry: Option<Box<RequestTelemetry>>,
}

impl ResponseRecord {
    fn finish(mut self, trailers: Option<&HeaderMap>, stream_ok: bool, bytes: u64) {
        if self.grpc
            && let Some(code) = trailers.and_then(grpc_status)
        {
            self.labels.grpc_status = Some(code);
        }
        let failed = !stream_ok
            || self.labels.status_code >= 500
            || self.labels.grpc_status.is_some_and(|c| c != 0);
        if failed {
            self.labels.classification = Classification::Failure;
        }
        self.metrics.responses.get_or_create(&self.labels).inc();
        if let Some((route, started)) = self.linkerd_route {
            let families = self.metrics.route(&route);
            families
                .duration
                .get_or_create(&route)
                .observe(started.elapsed().as_secs_f64());
            families
                .statuses
                .get_or_create(&RouteStatusLabels {
                    error: RouteError::from_proxy(self.labels.error, !stream_ok),
                    route,
                    http_status: self.labels.status_code,
                    grpc_status: self.labels.grpc_status,
                })
                .inc();
        }
        if let Some(r) = self.route {
            self.metrics
                .route_responses
                .get_or_create(&RouteResponseLabels {
                    dst_namespace: r.dst_namespace,
                    dst_service: r.dst_service,
                    route: r.route,
                    status_code: self.labels.status_code,
                    classification: self.labels.classification,
                })
                .inc();
        }
        if let Some(t) = self.telemetry {
            t.finish(Ending {
                status: self.labels.status_code,
                grpc_status: self.labels.grpc_status,
                response_bytes: bytes,
                error: self.labels.error,
                broken: !stream_ok,
            });
        }
    }
}

pin_project! {
    /// A response body on its way to the client.
    #[derive(Debug)]
    pub struct ResponseBody {
        #[pin]
        inner: Body,
        record: Option<ResponseRecord>,
        pooled: Option<Pooled>,
        // The request's load on its endpoint lasts until the response ends.
        inflight: Option<InFlight>,
        // Data bytes sent so far (for access logs and tap).
        bytes: u64,
        // The request's place among those in flight, until the response ends.
        slot: Option<RequestSlot>,
    }

    impl PinnedDrop for ResponseBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // Dropped before its end: the client went away or the stream
            // broke. The upstream connection cannot be reused.
            this.pooled.take();
            if let Some(record) = this.record.take() {
                record.finish(None, false, *this.bytes);
            }
        }
    }
}

impl ResponseBody {
    pub fn new(inner: Body) -> Self {
        Self {
            inner,
            record: None,
            pooled: None,
            inflight: None,
            bytes: 0,
            slot: None,
        }
    }

    pub fn with_inflight(mut self, inflight: InFlight) -> Self {
        if !self.inner.is_end_stream() {
            self.inflight = Some(inflight);
        }
        self
    }

    pub fn with_record(mut self, record: ResponseRecord) -> Self {
        if self.inner.is_end_stream() {
            record.finish(None, true, 0);
        } else {
            self.record = Some(record);
        }
        self
    }

    /// Holds the request's place until the response ends.
    pub fn with_slot(mut self, slot: Option<RequestSlot>) -> Self {
        if !self.inner.is_end_stream() {
            self.slot = slot;
        }
        self
    }

    pub fn with_pooled(mut self, pooled: Option<Pooled>) -> Self {
        match pooled {
            Some(p) if self.inner.is_end_stream() => p.release(),
            other => self.pooled = other,
        }
        self
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(d) = f.data_ref()
        {
            *this.bytes += d.len() as u64;
        }
        let ended = match &frame {
            None | Some(Err(_)) => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
        };
        if ended {
            this.slot.take();
        }
        match &frame {
            None => {
                this.inflight.take();
                if let Some(p) = this.pooled.take() {
                    p.release();
                }
                if let Some(r) = this.record.take() {
                    r.finish(None, true, *this.bytes);
                }
            }
            Some(Ok(f)) if f.is_trailers() || this.inner.is_end_stream() => {
                if let Some(r) = this.record.take() {
                    r.finish(f.trailers_ref(), true, *this.bytes);
                }
                if this.inner.is_end_stream()
                    && let Some(p) = this.pooled.take()
                {
                    p.release();
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) => {
                this.inflight.take();
                this.pooled.take();
                if let Some(r) = this.record.take() {
                    r.finish(None, false, *this.bytes);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
