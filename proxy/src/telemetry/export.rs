//! Span export over OTLP, never in a request's way: finished spans go into
//! a bounded queue with `try_send` (a full queue drops the span and counts
//! it); one task takes them out in batches (up to 512, or whatever came
//! within a second) and sends each batch to the collector, OTLP/gRPC or
//! OTLP/HTTP protobuf. A failed or slow export drops its batch and counts
//! it; the queue keeps absorbing spans meanwhile.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
};
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prost::Message;
use tokio::sync::mpsc;

use super::span::{Attr, SpanRecord, key_value};
pub use crate::config::telemetry::Collector;
use crate::metrics::DropLabels;

/// Spans waiting for export at most; more are dropped.
pub const QUEUE: usize = 2048;
const BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The exporter's counters.
#[derive(Clone, Debug, Default)]
pub struct ExportMetrics {
    pub exported: Counter,
    /// By reason: `queue_full` (the exporter fell behind) or
    /// `export_failed` (the collector refused, timed out or is down).
    pub dropped: Family<DropLabels, Counter>,
}

impl ExportMetrics {
    /// The proxy's trace export counters.
    pub fn of(m: &crate::metrics::Metrics) -> Self {
        Self {
            exported: m.trace_spans_exported.clone(),
            dropped: m.trace_spans_dropped.clone(),
        }
    }

    fn drop(&self, reason: &'static str, n: usize) {
        self.dropped
            .get_or_create(&DropLabels { reason })
            .inc_by(n as u64);
    }
}

/// The request path's end of the queue.
#[derive(Clone, Debug)]
pub struct Exporter {
    tx: mpsc::Sender<SpanRecord>,
    metrics: ExportMetrics,
}

impl Exporter {
    /// Starts the export task (on the current runtime).
    pub fn start(
        collector: Collector,
        resource: Vec<(&'static str, String)>,
        metrics: ExportMetrics,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(rx, collector, resource, metrics.clone()));
        Self { tx, metrics }
    }

    /// Queues a finished span, or drops it if the queue is full.
    pub fn export(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.metrics.drop("queue_full", 1);
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<SpanRecord>,
    collector: Collector,
    resource: Vec<(&'static str, String)>,
    metrics: ExportMetrics,
) {
    let resource = Resource {
        attributes: resource
            .into_iter()
            .map(|(k, v)| key_value(k, Attr::Str(v)))
            .collect(),
        ..Default::default()
    };
    let mut grpc = match &collector {
        Collector::Grpc { authority } => {
            tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
                .ok()
                .map(|e| TraceServiceClient::new(e.connect_timeout(EXPORT_TIMEOUT).connect_lazy()))
        }
        Collector::Http { .. } => None,
    };
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // Wait for a first span, then take what else comes within a second.
        let Some(first) = rx.recv().await else {
            return;
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "weft-proxy".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: batch.drain(..).map(SpanRecord::to_otlp).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let sent = match (&collector, grpc.as_mut()) {
            (Collector::Grpc { .. }, Some(client)) => {
                tokio::time::timeout(EXPORT_TIMEOUT, client.export(request))
                    .await
                    .map_err(|_| "timed out".to_string())
                    .and_then(|r| r.map(|_| ()).map_err(|s| s.to_string()))
            }
            (Collector::Grpc { authority }, None) => Err(format!("bad collector {authority}")),
            (Collector::Http { authority, path }, _) => {
                tokio::time::timeout(EXPORT_TIMEOUT, post(authority, path, request))
                    .await
                    .unwrap_or_else(|_| Err("timed out".to_string()))
            }
        };
        match sent {
            Ok(()) => {
                metrics.exported.inc_by(n as u64);
            }
            Err(e) => {
                tracing::debug!(error = %e, spans = n, "span export failed; spans dropped");
                metrics.drop("export_failed", n);
            }
        }
    }
}

/// One OTLP/HTTP export: a POST of the protobuf request on a fresh
/// connection (exports are at most about once a second).
async fn post(
    authority: &str,
    path: &str,
    request: ExportTraceServiceRequest,
) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(request.encode_to_vec())))
        .map_err(|e| e.to_string())?;
    let rsp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = rsp.status();
    let _ = rsp.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("collector answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collectors_parse_with_their_defaults() {
        assert_eq!(
            Collector::parse("http://otel.monitoring:4318").unwrap(),
            Collector::Http {
                authority: "otel.monitoring:4318".into(),
                path: "/v1/traces".into()
            }
        );
        assert_eq!(
            Collector::parse("http://127.0.0.1:9411/custom/traces").unwrap(),
            Collector::Http {
                authority: "127.0.0.1:9411".into(),
                path: "/custom/traces".into()
            }
        );
        assert_eq!(
            Collector::parse("grpc://otel:4317").unwrap(),
            Collector::Grpc {
                authority: "otel:4317".into()
            }
        );
        for bad in [
            "otel:4317",
            "https://otel:4318",
            "grpc://otel",
            "grpc://otel:4317/x",
        ] {
            assert!(Collector::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let metrics = ExportMetrics::default();
        // A collector nobody listens on: the task is stuck connecting at
        // most EXPORT_TIMEOUT per batch, so the queue fills.
        let (tx, _rx) = mpsc::channel(2);
        let exporter = Exporter {
            tx,
            metrics: metrics.clone(),
        };
        let span = SpanRecord {
            trace_id: crate::telemetry::context::TraceId([1; 16]),
            span_id: crate::telemetry::context::SpanId([1; 8]),
            parent: None,
            direction: crate::metrics::Direction::Inbound,
            start: std::time::SystemTime::now(),
            end: std::time::SystemTime::now(),
            attributes: vec![],
            error: None,
        };
        for _ in 0..5 {
            exporter.export(span.clone());
        }
        let dropped = metrics
            .dropped
            .get_or_create(&DropLabels {
                reason: "queue_full",
            })
            .get();
        assert_eq!(dropped, 3);
    }
}
