//! What the proxy tells about each HTTP request besides metrics: a span
//! (exported over OTLP), an access log line, and tap events. All three are
//! decided when the request arrives ([`Telemetry::start`]) and written when
//! its response stream ends ([`RequestTelemetry::finish`]); a request that
//! needs none of them (no collector, no access log, nobody tapping) carries
//! nothing and costs a few branches.
//!
//! ```text
//! context.rs     W3C traceparent and B3 headers: read, and rewritten for the next hop
//! span.rs        the span of one request at one proxy, and its OTLP form
//! export.rs      bounded queue -> batches -> OTLP/gRPC or OTLP/HTTP; drops counted
//! access_log.rs  JSON or Apache combined lines to stdout, through a bounded queue
//! tap.rs         live request events for watchers, with filters
//! ```

pub mod access_log;
pub mod context;
pub mod export;
pub mod span;
pub mod tap;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::Request;
use tokio::time::Instant;

pub use crate::config::telemetry::TelemetrySettings;
use crate::metrics::{Direction, Value};
use access_log::AccessLog;
use context::{SpanId, TraceId};
use export::Exporter;
use span::{Attr, SpanRecord};
use tap::{Tap, Watcher};

/// The proxy's telemetry, shared by every request.
#[derive(Debug)]
pub struct Telemetry {
    exporter: Option<Exporter>,
    sampling: f64,
    access_log: Option<AccessLog>,
    pub tap: Arc<Tap>,
    pub tap_enabled: bool,
    /// "namespace/pod", in tap events.
    pod: Arc<str>,
}

/// Where a routed request went (filled in by the router).
#[derive(Clone, Debug, Default)]
pub struct Routed {
    pub route: Option<Arc<str>>,
    /// The route's labels in Linkerd's route metrics.
    pub labels: Option<crate::metrics::RouteRef>,
    pub backend: Option<Arc<str>>,
    pub endpoint: Option<SocketAddr>,
    /// The identity the endpoint proved (mesh TLS).
    pub server_id: Option<Arc<str>>,
    pub retries: u32,
}

/// How a response ended.
#[derive(Debug, Default)]
pub struct Ending<'a> {
    pub status: u16,
    pub grpc_status: Option<u16>,
    pub response_bytes: u64,
    /// The proxy's own error (it answered for the upstream).
    pub error: Option<&'a str>,
    /// The stream broke before its end.
    pub broken: bool,
}

/// One request's telemetry, from its arrival to the end of its response.
#[derive(Debug)]
pub struct RequestTelemetry {
    telemetry: Arc<Telemetry>,
    direction: Direction,
    arrived: SystemTime,
    started: Instant,
    method: http::Method,
    authority: Value,
    path: String,
    version: http::Version,
    client: SocketAddr,
    client_id: Option<Value>,
    referer: Option<String>,
    user_agent: Option<String>,
    /// (trace, this span, its parent) when this request is traced.
    span: Option<(TraceId, SpanId, Option<SpanId>)>,
    tap: Option<(u64, Vec<Arc<Watcher>>)>,
    pub routed: Routed,
}

impl Telemetry {
    pub fn new(
        settings: &TelemetrySettings,
        pod: Option<String>,
        resource: Vec<(&'static str, String)>,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        let exporter = settings
            .collector
            .clone()
            .map(|c| Exporter::start(c, resource, export::ExportMetrics::of(metrics)));
        let access_log = settings.access_log.map(|f| {
            AccessLog::start(
                f,
                metrics.access_log_dropped.clone(),
                Box::new(std::io::stdout()),
            )
        });
        Self {
            exporter,
            sampling: settings.sampling.clamp(0.0, 1.0),
            access_log,
            tap: Arc::default(),
            tap_enabled: settings.tap,
            pod: Arc::from(pod.unwrap_or_default()),
        }
    }

    /// Off: no tracing, access log or tap.
    pub fn off() -> Self {
        Self::new(
            &TelemetrySettings::default(),
            None,
            vec![],
            &crate::metrics::Metrics::new(),
        )
    }

    /// A request arrived: reads (and, when traced, rewrites) its trace
    /// context, and notes what the end will need. `None` when nothing
    /// about this request will be told.
    pub fn start<B>(
        self: &Arc<Self>,
        direction: Direction,
        client: SocketAddr,
        client_id: Option<&Value>,
        authority: &Value,
        req: &mut Request<B>,
    ) -> Option<Box<RequestTelemetry>> {
        let span = self
            .exporter
            .as_ref()
            .and_then(|_| self.trace(req.headers_mut()));
        let path = req.uri().path();
        let tap = if self.tap_enabled {
            self.tap
                .matching(direction, req.method().as_str(), authority.as_str(), path)
        } else {
            None
        };
        if span.is_none() && tap.is_none() && self.access_log.is_none() {
            return None;
        }
        let header = |h: http::header::HeaderName| {
            req.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let apache = self
            .access_log
            .as_ref()
            .is_some_and(|l| l.format == access_log::Format::Apache);
        let rt = Box::new(RequestTelemetry {
            telemetry: self.clone(),
            direction,
            arrived: SystemTime::now(),
            started: Instant::now(),
            method: req.method().clone(),
            authority: authority.clone(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
            version: req.version(),
            client,
            client_id: client_id.cloned(),
            referer: if apache {
                header(http::header::REFERER)
            } else {
                None
            },
            user_agent: if apache {
                header(http::header::USER_AGENT)
            } else {
                None
            },
            span,
            tap,
            routed: Routed::default(),
        });
        if let Some((id, watchers)) = &rt.tap {
            let line = rt.tap_request(*id);
            for w in watchers {
                w.send(&line);
            }
        }
        Some(rt)
    }

    /// Parent-based sampling: the caller's decision when it made one,
    /// else a new decision with the configured ratio. A traced request's
    /// headers then name this proxy's span as the next hop's parent; a
    /// request without context gets one (sampled or not), so the hops
    /// after agree on the decision.
    fn trace(&self, headers: &mut http::HeaderMap) -> Option<(TraceId, SpanId, Option<SpanId>)> {
        let ratio = || self.sampling > 0.0 && fastrand::f64() < self.sampling;
        match context::extract(headers) {
            Some(c) => {
                if !c.sampled.unwrap_or_else(ratio) {
                    return None;
                }
                let ours = SpanId::random();
                context::inject(headers, c.trace_id, ours, Some(c.span_id), true, c.formats);
                Some((c.trace_id, ours, Some(c.span_id)))
            }
            None => {
                let (trace, ours, sampled) = (TraceId::random(), SpanId::random(), ratio());
                context::inject(headers, trace, ours, None, sampled, Default::default());
                sampled.then_some((trace, ours, None))
            }
        }
    }
}

fn version_str(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_09 => "HTTP/0.9",
        _ => "HTTP/1.1",
    }
}

impl RequestTelemetry {
    fn tap_request(&self, id: u64) -> Bytes {
        let event = serde_json::json!({
            "type": "request",
            "id": id,
            "pod": &*self.telemetry.pod,
            "time": access_log::rfc3339(self.arrived),
            "direction": self.direction.as_str(),
            "method": self.method.as_str(),
            "authority": self.authority.as_str(),
            "path": self.path,
            "client_addr": self.client.to_string(),
            "client_id": self.client_id.as_ref().map(|c| c.as_str()),
        });
        line(&event)
    }

    /// The response stream ended: the span is exported, the access log
    /// line written, the tap watchers told.
    pub fn finish(self, end: Ending<'_>) {
        let duration = self.started.elapsed();
        let failed = end.broken
            || end.status >= 500
            || end.error.is_some()
            || end.grpc_status.is_some_and(|c| c != 0);
        self.export_span(&end, duration, failed);
        let duration_ms = duration.as_secs_f64() * 1000.0;
        self.log(&end, duration_ms);
        self.tap_response(&end, duration_ms, failed);
    }

    /// The request's span, to the exporter, when it is sampled.
    fn export_span(&self, end: &Ending<'_>, duration: std::time::Duration, failed: bool) {
        let (Some((trace_id, span_id, parent)), Some(exporter)) =
            (self.span, &self.telemetry.exporter)
        else {
            return;
        };
        let r = &self.routed;
        let mut attributes: Vec<(&'static str, Attr)> = vec![
            ("weft.direction", self.direction.as_str().into()),
            ("http.request.method", self.method.as_str().into()),
            ("server.address", self.authority.as_str().into()),
            ("url.path", self.path.as_str().into()),
            ("http.response.status_code", i64::from(end.status).into()),
            ("client.address", self.client.ip().to_string().into()),
            ("weft.retries", i64::from(r.retries).into()),
        ];
        let mut add = |k, v: Option<&str>| {
            if let Some(v) = v {
                attributes.push((k, v.into()));
            }
        };
        add(
            "weft.client_id",
            self.client_id.as_ref().map(|c| c.as_str()),
        );
        add("weft.server_id", r.server_id.as_deref());
        add("weft.route", r.route.as_deref());
        add("weft.backend", r.backend.as_deref());
        add("weft.error", end.error);
        if let Some(e) = r.endpoint {
            attributes.push(("weft.endpoint", e.to_string().into()));
        }
        if let Some(g) = end.grpc_status {
            attributes.push(("rpc.grpc.status_code", i64::from(g).into()));
        }
        exporter.export(SpanRecord {
            trace_id,
            span_id,
            parent,
            direction: self.direction,
            start: self.arrived,
            end: self.arrived + duration,
            attributes,
            error: failed.then(|| match end.error {
                Some(e) => e.to_string(),
                None if end.broken => "the response stream broke".to_string(),
                None => format!("status {}", end.status),
            }),
        });
    }

    /// The request's access log line, when the access log is on.
    fn log(&self, end: &Ending<'_>, duration_ms: f64) {
        let Some(log) = &self.telemetry.access_log else {
            return;
        };
        let r = &self.routed;
        log.log(&access_log::Entry {
            time: access_log::rfc3339(self.arrived),
            direction: self.direction.as_str(),
            client_addr: self.client.to_string(),
            method: self.method.as_str(),
            authority: self.authority.as_str(),
            path: &self.path,
            protocol: version_str(self.version),
            status: end.status,
            grpc_status: end.grpc_status,
            duration_ms,
            response_bytes: end.response_bytes,
            client_id: self.client_id.as_ref().map(|c| c.as_str()),
            server_id: r.server_id.as_deref(),
            route: r.route.as_deref(),
            backend: r.backend.as_deref(),
            endpoint: r.endpoint.map(|e| e.to_string()),
            retries: r.retries,
            error: end.error,
            trace_id: self.span.map(|(t, _, _)| context::hex(&t.0)),
            referer: self.referer.as_deref(),
            user_agent: self.user_agent.as_deref(),
            started: Some(self.arrived),
        });
    }

    /// The response's tap event, to the watchers that saw its request.
    fn tap_response(&self, end: &Ending<'_>, duration_ms: f64, failed: bool) {
        let Some((id, watchers)) = &self.tap else {
            return;
        };
        let r = &self.routed;
        let event = serde_json::json!({
            "type": "response",
            "id": id,
            "pod": &*self.telemetry.pod,
            "direction": self.direction.as_str(),
            "method": self.method.as_str(),
            "authority": self.authority.as_str(),
            "path": self.path,
            "status": end.status,
            "grpc_status": end.grpc_status,
            "duration_ms": duration_ms,
            "response_bytes": end.response_bytes,
            "route": r.route.as_deref(),
            "backend": r.backend.as_deref(),
            "endpoint": r.endpoint.map(|e| e.to_string()),
            "server_id": r.server_id.as_deref(),
            "client_id": self.client_id.as_ref().map(|c| c.as_str()),
            "retries": r.retries,
            "error": end.error,
            "success": !failed,
        });
        let line = line(&event);
        for w in watchers {
            w.send(&line);
        }
    }
}

fn line(v: &serde_json::Value) -> Bytes {
    let mut s = serde_json::to_vec(v).unwrap_or_default();
    s.push(b'\n');
    Bytes::from(s)
}
