//! The proxy's metrics: Linkerd-compatible names and labels (see
//! DESIGN.md's metrics section), registered once and recorded lock-free on
//! the hot path (counters and histograms are atomics; families are looked up
//! once per connection or request).

pub mod labels;

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{prometheus_text, text as openmetrics_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use labels::{
    AuthzLabels, Bounded, Classification, DetectLabels, Direction, DropLabels, DstLabels,
    LatencyLabels, Peer, ProtectLabels, RequestLabels, ResponseLabels, ResultLabels, RetryLabels,
    RouteLabels, RouteLatencyLabels, RouteResponseLabels, SplitLabels, TcpCloseLabels, TcpLabels,
    Tls, TryLabels, Value,
};

use crate::io::ByteCounters;

/// Linkerd's `response_latency_ms` buckets.
const LATENCY_BUCKETS_MS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
];

/// Most distinct `authority` / `target_addr` values kept per label.
const MAX_LABEL_VALUES: usize = 512;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_MS)
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the proxy records.
#[derive(Debug)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub responses: Family<ResponseLabels, Counter>,
    pub response_latency: HistogramFamily<LatencyLabels>,
    pub tcp_open: Family<TcpLabels, Counter>,
    pub tcp_close: Family<TcpCloseLabels, Counter>,
    pub tcp_open_connections: Family<TcpLabels, Gauge>,
    pub tcp_read_bytes: Family<TcpLabels, Counter>,
    pub tcp_write_bytes: Family<TcpLabels, Counter>,
    pub detect: Family<DetectLabels, Counter>,
    pub split_backend_requests: Family<SplitLabels, Counter>,
    pub config_updates: Family<ResultLabels, Counter>,
    pub config_version: Gauge,
    pub discovery_fallbacks: Counter,
    pub discovery_connected: Gauge,
    pub retries: Family<RetryLabels, Counter>,
    pub retry_budget_exhausted: Family<DstLabels, Counter>,
    pub request_tries: Family<TryLabels, Counter>,
    pub endpoint_ejections: Counter,
    pub identity_cert_expiry: Gauge,
    pub authz_allow: Family<AuthzLabels, Counter>,
    pub authz_denied: Family<AuthzLabels, Counter>,
    pub route_requests: Family<RouteLabels, Counter>,
    pub route_responses: Family<RouteResponseLabels, Counter>,
    pub route_response_latency: HistogramFamily<RouteLatencyLabels>,
    pub trace_export: crate::telemetry::export::ExportMetrics,
    pub access_log_dropped: Counter,
    /// Connections closed and requests refused because of a limit.
    pub overload_shed: Family<ProtectLabels, Counter>,
    /// Clients cut off for abusing the protocol or taking too long.
    pub protocol_abuse: Family<ProtectLabels, Counter>,
    /// HTTP connections closed for being idle.
    pub idle_closed: Family<DstDirection, Counter>,
    pub authorities: Bounded,
    pub targets: Bounded,
    /// `client_id` values (verified mesh identities).
    pub client_ids: Bounded,
    pub policies: Bounded,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let requests = Family::default();
        let responses = Family::default();
        let response_latency: HistogramFamily<LatencyLabels> =
            Family::new_with_constructor(latency_histogram);
        let tcp_open = Family::default();
        let tcp_close = Family::default();
        let tcp_open_connections = Family::default();
        let tcp_read_bytes = Family::default();
        let tcp_write_bytes = Family::default();
        let detect = Family::default();
        let split_backend_requests = Family::default();
        let config_updates = Family::default();
        let config_version = Gauge::default();
        let discovery_fallbacks = Counter::default();
        let discovery_connected = Gauge::default();
        let retries = Family::default();
        let retry_budget_exhausted = Family::default();
        let request_tries = Family::default();
        let endpoint_ejections = Counter::default();
        let identity_cert_expiry = Gauge::default();
        let authz_allow = Family::default();
        let authz_denied = Family::default();
        let route_requests = Family::default();
        let route_responses = Family::default();
        let route_response_latency: HistogramFamily<RouteLatencyLabels> =
            Family::new_with_constructor(latency_histogram);
        let trace_export = crate::telemetry::export::ExportMetrics::default();
        let access_log_dropped = Counter::default();
        let overload_shed = Family::default();
        let protocol_abuse = Family::default();
        let idle_closed = Family::default();

        let mut registry = Registry::default();
        registry.register(
            "overload_shed",
            "Connections closed on arrival (reason=connections) and requests answered 503 overloaded (reason=requests) because a limit was reached",
            overload_shed.clone(),
        );
        registry.register(
            "protocol_abuse",
            "Clients cut off: h2_flood (HTTP/2 control frame flood), header_timeout (request head too slow), header_too_large, ambiguous_length (conflicting Content-Length/Transfer-Encoding)",
            protocol_abuse.clone(),
        );
        registry.register(
            "http_idle_closed",
            "HTTP connections closed after the idle timeout with no request in flight",
            idle_closed.clone(),
        );
        registry.register(
            "route_request",
            "Routed outbound HTTP requests, by destination service and route",
            route_requests.clone(),
        );
        registry.register(
            "route_response",
            "Responses to routed outbound requests, by route, status and classification (after retries)",
            route_responses.clone(),
        );
        registry.register(
            "route_response_latency_ms",
            "Time from a routed request's headers to its response headers (retries included), in milliseconds",
            route_response_latency.clone(),
        );
        registry.register(
            "trace_spans_exported",
            "Spans the collector accepted",
            trace_export.exported.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans dropped: queue_full (export fell behind) or export_failed (the collector refused, timed out or is down)",
            trace_export.dropped.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because stdout could not keep up",
            access_log_dropped.clone(),
        );
        registry.register(
            "authz_allow",
            "Inbound requests (kind=http) and connections (kind=tcp) admitted, by the policy that admitted them",
            authz_allow.clone(),
        );
        registry.register(
            "authz_denied",
            "Inbound requests and connections refused, by policy and reason (forbidden, rate_limited)",
            authz_denied.clone(),
        );
        registry.register(
            "split_backend_requests",
            "Requests (or TCP connections) sent to each TrafficSplit backend",
            split_backend_requests.clone(),
        );
        registry.register(
            "config_updates",
            "Config updates from the controller, accepted or rejected (NACKed, last good config kept)",
            config_updates.clone(),
        );
        registry.register(
            "config_version",
            "Generation of the config in force: increments with every accepted update",
            config_version.clone(),
        );
        registry.register(
            "discovery_fallbacks",
            "Connections forwarded as addressed because their destination's config did not arrive in time",
            discovery_fallbacks.clone(),
        );
        registry.register(
            "retry",
            "Retries sent, by the condition that triggered them",
            retries.clone(),
        );
        registry.register(
            "retry_budget_exhausted",
            "Retries not sent because the retry budget was spent",
            retry_budget_exhausted.clone(),
        );
        registry.register(
            "request_try",
            "Tries of routed requests (first tries and retries), by outcome",
            request_tries.clone(),
        );
        registry.register(
            "identity_cert_expiry_timestamp_seconds",
            "When the proxy's certificate expires (Unix seconds; 0 before the first)",
            identity_cert_expiry.clone(),
        );
        registry.register(
            "endpoint_ejections",
            "Endpoints ejected by failure accrual (consecutive failures)",
            endpoint_ejections.clone(),
        );
        registry.register(
            "discovery_connected",
            "1 while the discovery stream to the controller is open",
            discovery_connected.clone(),
        );
        registry.register("request", "HTTP requests received", requests.clone());
        registry.register(
            "response",
            "HTTP responses sent, at the end of the response stream",
            responses.clone(),
        );
        registry.register(
            "response_latency_ms",
            "Time from receiving a request's headers to sending the response headers, in milliseconds",
            response_latency.clone(),
        );
        registry.register("tcp_open", "TCP connections opened", tcp_open.clone());
        registry.register("tcp_close", "TCP connections closed", tcp_close.clone());
        registry.register(
            "tcp_open_connections",
            "TCP connections currently open",
            tcp_open_connections.clone(),
        );
        registry.register(
            "tcp_read_bytes",
            "Bytes read from peers",
            tcp_read_bytes.clone(),
        );
        registry.register(
            "tcp_write_bytes",
            "Bytes written to peers",
            tcp_write_bytes.clone(),
        );
        registry.register(
            "protocol_detect",
            "Protocol detection outcomes; reason=first_byte_timeout counts server-speaks-first fallbacks",
            detect.clone(),
        );
        let start = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        start.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default(),
        );
        registry.register(
            "process_start_time_seconds",
            "When the proxy started, in seconds since the Unix epoch",
            start,
        );

        Self {
            requests,
            responses,
            response_latency,
            tcp_open,
            tcp_close,
            tcp_open_connections,
            tcp_read_bytes,
            tcp_write_bytes,
            detect,
            split_backend_requests,
            config_updates,
            config_version,
            discovery_fallbacks,
            discovery_connected,
            retries,
            retry_budget_exhausted,
            request_tries,
            endpoint_ejections,
            identity_cert_expiry,
            authz_allow,
            authz_denied,
            route_requests,
            route_responses,
            route_response_latency,
            trace_export,
            access_log_dropped,
            overload_shed,
            protocol_abuse,
            idle_closed,
            authorities: Bounded::new(MAX_LABEL_VALUES),
            targets: Bounded::new(MAX_LABEL_VALUES),
            client_ids: Bounded::new(MAX_LABEL_VALUES),
            policies: Bounded::new(MAX_LABEL_VALUES),
            registry,
        }
    }

    /// Registers more metrics (from later parts of the proxy) in the same
    /// exposition.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Prometheus text format 0.0.4, what most scrapers ask for.
    pub fn encode_prometheus(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    /// OpenMetrics text, for scrapers that ask for it.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        openmetrics_text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    /// Opens a TCP connection's metrics: counts the open, and returns the
    /// handles its bytes and close are recorded with.
    pub fn tcp_opened(&self, labels: TcpLabels) -> TcpConn {
        self.tcp_open.get_or_create(&labels).inc();
        let open = self.tcp_open_connections.get_or_create(&labels).clone();
        open.inc();
        TcpConn {
            bytes: ByteCounters {
                read: self.tcp_read_bytes.get_or_create(&labels).clone(),
                write: self.tcp_write_bytes.get_or_create(&labels).clone(),
            },
            open,
            labels,
        }
    }

    /// Counts a request or connection sent to a split's backend.
    pub fn record_split(
        &self,
        d: &crate::routing::DestinationConfig,
        pick: &crate::routing::Pick<'_>,
    ) {
        self.split_backend_requests
            .get_or_create(&SplitLabels {
                dst_namespace: Value(d.dst_namespace.clone()),
                dst_service: Value(d.dst_service.clone()),
                route: Value(pick.route.name.clone()),
                backend: Value(pick.backend.service.clone()),
            })
            .inc();
    }

    pub fn tcp_closed(&self, conn: TcpConn, classification: Classification) {
        conn.open.dec();
        let TcpLabels {
            direction,
            peer,
            tls,
            target_addr,
        } = conn.labels;
        self.tcp_close
            .get_or_create(&TcpCloseLabels {
                direction,
                peer,
                tls,
                target_addr,
                classification,
            })
            .inc();
    }
}

/// Just the direction, as a label set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct DstDirection {
    pub direction: Direction,
}

impl Metrics {
    pub fn shed(&self, direction: Direction, reason: &'static str) {
        self.overload_shed
            .get_or_create(&ProtectLabels { direction, reason })
            .inc();
    }

    pub fn abuse(&self, direction: Direction, reason: &'static str) {
        self.protocol_abuse
            .get_or_create(&ProtectLabels { direction, reason })
            .inc();
    }
}

/// A TCP connection's metric handles.
#[derive(Debug)]
pub struct TcpConn {
    pub bytes: ByteCounters,
    open: Gauge,
    labels: TcpLabels,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_uses_linkerd_names() {
        let m = Metrics::new();
        let labels = RequestLabels {
            direction: Direction::Outbound,
            authority: m.authorities.value("web.shop.svc:80"),
            tls: Tls::NoIdentity,
            client_id: None,
            dst_namespace: None,
            dst_service: None,
        };
        m.requests.get_or_create(&labels).inc();
        let conn = m.tcp_opened(TcpLabels {
            direction: Direction::Inbound,
            peer: Peer::Src,
            tls: Tls::NoIdentity,
            target_addr: m.targets.value("198.18.0.2:8080"),
        });
        conn.bytes.read.inc_by(10);
        m.tcp_closed(conn, Classification::Success);

        let text = m.encode_prometheus();
        assert!(text.contains("# TYPE request_total counter"), "{text}");
        assert!(text.contains(
            "request_total{direction=\"outbound\",authority=\"web.shop.svc:80\",tls=\"no_identity\",client_id=\"\",dst_namespace=\"\",dst_service=\"\"} 1"
        ), "{text}");
        assert!(
            text.contains("tcp_open_total{direction=\"inbound\",peer=\"src\""),
            "{text}"
        );
        assert!(text.contains("tcp_read_bytes_total{direction=\"inbound\",peer=\"src\",tls=\"no_identity\",target_addr=\"198.18.0.2:8080\"} 10"), "{text}");
        assert!(text.contains("tcp_close_total{direction=\"inbound\",peer=\"src\",tls=\"no_identity\",target_addr=\"198.18.0.2:8080\",classification=\"success\"} 1"), "{text}");
        assert!(text.contains("tcp_open_connections{direction=\"inbound\",peer=\"src\",tls=\"no_identity\",target_addr=\"198.18.0.2:8080\"} 0"), "{text}");
        assert!(!text.contains("# EOF"));

        let om = m.encode_openmetrics();
        assert!(om.ends_with("# EOF\n"));
    }
}
