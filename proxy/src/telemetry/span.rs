//! The proxy's spans: one per request per proxy (a client span outbound,
//! a server span inbound), recorded when the response stream ends and
//! converted to OTLP only in the exporter's task, off the request path.

use std::time::SystemTime;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1 as otlp;

use super::context::{SpanId, TraceId};
use crate::metrics::Direction;

/// A finished span.
#[derive(Clone, Debug)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub direction: Direction,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Attr)>,
    /// Set when the request failed (5xx, gRPC error, proxy error).
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
}

impl From<String> for Attr {
    fn from(s: String) -> Self {
        Attr::Str(s)
    }
}

impl From<&str> for Attr {
    fn from(s: &str) -> Self {
        Attr::Str(s.to_string())
    }
}

impl From<i64> for Attr {
    fn from(n: i64) -> Self {
        Attr::Int(n)
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub fn key_value(key: &str, value: Attr) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(match value {
                Attr::Str(s) => any_value::Value::StringValue(s),
                Attr::Int(n) => any_value::Value::IntValue(n),
            }),
        }),
        ..Default::default()
    }
}

impl SpanRecord {
    pub fn attribute(&self, key: &str) -> Option<&Attr> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// The OTLP span: named `<direction> <method>` (low cardinality, as
    /// OpenTelemetry's HTTP conventions ask), server kind inbound, client
    /// kind outbound.
    pub fn to_otlp(self) -> otlp::Span {
        let method = match self.attribute("http.request.method") {
            Some(Attr::Str(m)) => m.clone(),
            _ => "HTTP".to_string(),
        };
        let (kind, direction) = match self.direction {
            Direction::Inbound => (otlp::span::SpanKind::Server, "inbound"),
            Direction::Outbound => (otlp::span::SpanKind::Client, "outbound"),
        };
        let status = match &self.error {
            Some(message) => otlp::Status {
                message: message.clone(),
                code: otlp::status::StatusCode::Error as i32,
            },
            None => otlp::Status::default(),
        };
        otlp::Span {
            trace_id: self.trace_id.0.to_vec(),
            span_id: self.span_id.0.to_vec(),
            parent_span_id: self.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
            // Sampled (only sampled spans are recorded).
            flags: 1,
            name: format!("{direction} {method}"),
            kind: kind as i32,
            start_time_unix_nano: nanos(self.start),
            end_time_unix_nano: nanos(self.end),
            attributes: self
                .attributes
                .into_iter()
                .map(|(k, v)| key_value(k, v))
                .collect(),
            status: Some(status),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_ids_kind_name_and_status() {
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(10);
        let span = SpanRecord {
            trace_id: TraceId([7; 16]),
            span_id: SpanId([1; 8]),
            parent: Some(SpanId([2; 8])),
            direction: Direction::Outbound,
            start: t0,
            end: t0 + std::time::Duration::from_millis(3),
            attributes: vec![
                ("http.request.method", "GET".into()),
                ("http.response.status_code", 503i64.into()),
            ],
            error: Some("status 503".into()),
        };
        let o = span.to_otlp();
        assert_eq!(o.name, "outbound GET");
        assert_eq!(o.kind, otlp::span::SpanKind::Client as i32);
        assert_eq!(o.trace_id, vec![7; 16]);
        assert_eq!(o.parent_span_id, vec![2; 8]);
        assert_eq!(o.end_time_unix_nano - o.start_time_unix_nano, 3_000_000);
        assert_eq!(
            o.status.unwrap().code,
            otlp::status::StatusCode::Error as i32
        );
        assert_eq!(o.attributes.len(), 2);
    }
}
