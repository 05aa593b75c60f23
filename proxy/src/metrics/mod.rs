//! The proxy's metrics: Linkerd-compatible names and labels (see
//! DESIGN.md's metrics section), registered once and recorded lock-free on
//! the hot path (counters and histograms are atomics; families are looked up
//! once per connection or request).

pub mod labels;
pub mod route;

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{prometheus_text, text as openmetrics_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use labels::{
    AuthzLabels, Bounded, Classification, DetectLabels, Direction, DropLabels, DstLabels,
    LatencyLabels, MirrorLabels, Peer, ProtectLabels, RequestLabels, ResponseLabels, ResultLabels,
    RetryLabels, RouteLabels, RouteLatencyLabels, RouteResponseLabels, SplitLabels, TcpCloseLabels,
    TcpLabels, Tls, TryLabels, Value,
};

pub use route::{BackendRef, RouteBackendLabels, RouteError, RouteRef, RouteStatusLabels};

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

/// Linkerd's route request duration buckets, in seconds.
fn route_duration_histogram() -> Histogram {
    Histogram::new([0.05, 0.5, 1.0, 10.0])
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Declares [`Metrics`]: one line per metric, in exposition order: field,
/// type, how it is made, name (Prometheus adds `_total` to counters), help.
macro_rules! metrics {
    ($( $field:ident: $ty:ty = $init:expr, $name:literal, $help:literal; )*) => {
        /// Every metric the proxy records, and the label values it bounds.
        #[derive(Debug)]
        pub struct Metrics {
            $( pub $field: $ty, )*
            pub authorities: Bounded,
            pub targets: Bounded,
            /// `client_id` values (verified mesh identities).
            pub client_ids: Bounded,
            pub policies: Bounded,
            registry: Registry,
        }

        impl Metrics {
            pub fn new() -> Self {
                let mut registry = Registry::default();
                $(
                    let $field: $ty = $init;
                    registry.register($name, $help, $field.clone());
                )*
                registry.register(
                    "process_start_time_seconds",
                    "When the proxy started, in seconds since the Unix epoch",
                    start_time(),
                );
                Self {
                    $( $field, )*
                    authorities: Bounded::new(MAX_LABEL_VALUES),
                    targets: Bounded::new(MAX_LABEL_VALUES),
                    client_ids: Bounded::new(MAX_LABEL_VALUES),
                    policies: Bounded::new(MAX_LABEL_VALUES),
                    registry,
                }
            }
        }
    };
}

metrics! {
    // Traffic: Linkerd's names and labels.
    requests: Family<RequestLabels, Counter> = Family::default(),
        "request", "HTTP requests received";
    responses: Family<ResponseLabels, Counter> = Family::default(),
        "response", "HTTP responses sent, at the end of the response stream";
    response_latency: HistogramFamily<LatencyLabels> = Family::new_with_constructor(latency_histogram),
        "response_latency_ms", "Time from receiving a request's headers to sending the response headers, in milliseconds";
    tcp_open: Family<TcpLabels, Counter> = Family::default(),
        "tcp_open", "TCP connections opened";
    tcp_close: Family<TcpCloseLabels, Counter> = Family::default(),
        "tcp_close", "TCP connections closed";
    tcp_open_connections: Family<TcpLabels, Gauge> = Family::default(),
        "tcp_open_connections", "TCP connections currently open";
    tcp_read_bytes: Family<TcpLabels, Counter> = Family::default(),
        "tcp_read_bytes", "Bytes read from peers";
    tcp_write_bytes: Family<TcpLabels, Counter> = Family::default(),
        "tcp_write_bytes", "Bytes written to peers";
    detect: Family<DetectLabels, Counter> = Family::default(),
        "protocol_detect", "Protocol detection outcomes; reason=first_byte_timeout counts server-speaks-first fallbacks";
    // Routing: routes, splits, retries, failure accrual.
    route_requests: Family<RouteLabels, Counter> = Family::default(),
        "route_request", "Routed outbound HTTP requests, by destination service and route";
    route_responses: Family<RouteResponseLabels, Counter> = Family::default(),
        "route_response", "Responses to routed outbound requests, by route, status and classification (after retries)";
    route_response_latency: HistogramFamily<RouteLatencyLabels> = Family::new_with_constructor(latency_histogram),
        "route_response_latency_ms", "Time from a routed request's headers to its response headers (retries included), in milliseconds";
    http_route_duration: HistogramFamily<RouteRef> = Family::new_with_constructor(route_duration_histogram),
        "outbound_http_route_request_duration_seconds", "Linkerd's: time from a request's headers to the end of its response, per HTTPRoute (and TrafficSplit or default) route";
    http_route_statuses: Family<RouteStatusLabels, Counter> = Family::default(),
        "outbound_http_route_request_statuses", "Linkerd's: requests per HTTPRoute (and TrafficSplit or default) route, by how they ended";
    http_route_backend_requests: Family<RouteBackendLabels, Counter> = Family::default(),
        "outbound_http_route_backend_requests", "Linkerd's: tries sent to each backend of a HTTPRoute (and TrafficSplit or default) route";
    http_route_retry_requests: Family<RouteRef, Counter> = Family::default(),
        "outbound_http_route_retry_requests", "Linkerd's: retries sent per HTTPRoute (and TrafficSplit or default) route";
    http_route_retry_successes: Family<RouteRef, Counter> = Family::default(),
        "outbound_http_route_retry_successes", "Linkerd's: requests per HTTPRoute (and TrafficSplit or default) route that succeeded after a retry";
    http_route_retry_limit_exceeded: Family<RouteRef, Counter> = Family::default(),
        "outbound_http_route_retry_limit_exceeded", "Linkerd's: requests per HTTPRoute (and TrafficSplit or default) route that wanted a retry past the retry count";
    http_route_retry_overflow: Family<RouteRef, Counter> = Family::default(),
        "outbound_http_route_retry_overflow", "Linkerd's: requests per HTTPRoute (and TrafficSplit or default) route that wanted a retry past the budget or the replayable body size";
    grpc_route_duration: HistogramFamily<RouteRef> = Family::new_with_constructor(route_duration_histogram),
        "outbound_grpc_route_request_duration_seconds", "Linkerd's: time from a request's headers to the end of its response, per GRPCRoute";
    grpc_route_statuses: Family<RouteStatusLabels, Counter> = Family::default(),
        "outbound_grpc_route_request_statuses", "Linkerd's: requests per GRPCRoute, by how they ended";
    grpc_route_backend_requests: Family<RouteBackendLabels, Counter> = Family::default(),
        "outbound_grpc_route_backend_requests", "Linkerd's: tries sent to each backend of a GRPCRoute";
    grpc_route_retry_requests: Family<RouteRef, Counter> = Family::default(),
        "outbound_grpc_route_retry_requests", "Linkerd's: retries sent per GRPCRoute";
    grpc_route_retry_successes: Family<RouteRef, Counter> = Family::default(),
        "outbound_grpc_route_retry_successes", "Linkerd's: requests per GRPCRoute that succeeded after a retry";
    grpc_route_retry_limit_exceeded: Family<RouteRef, Counter> = Family::default(),
        "outbound_grpc_route_retry_limit_exceeded", "Linkerd's: requests per GRPCRoute that wanted a retry past the retry count";
    grpc_route_retry_overflow: Family<RouteRef, Counter> = Family::default(),
        "outbound_grpc_route_retry_overflow", "Linkerd's: requests per GRPCRoute that wanted a retry past the budget or the replayable body size";
    split_backend_requests: Family<SplitLabels, Counter> = Family::default(),
        "split_backend_requests", "Requests (or TCP connections) sent to each TrafficSplit backend";
    route_mirror_requests: Family<MirrorLabels, Counter> = Family::default(),
        "route_mirror_requests", "Copies of requests sent by a route's RequestMirror filter, by mirror backend and what each came to";
    retries: Family<RetryLabels, Counter> = Family::default(),
        "retry", "Retries sent, by the condition that triggered them";
    retry_budget_exhausted: Family<DstLabels, Counter> = Family::default(),
        "retry_budget_exhausted", "Retries not sent because the retry budget was spent";
    request_tries: Family<TryLabels, Counter> = Family::default(),
        "request_try", "Tries of routed requests (first tries and retries), by outcome";
    endpoint_ejections: Counter = Counter::default(),
        "endpoint_ejections", "Endpoints ejected by failure accrual (consecutive failures)";
    // Config from the controller.
    config_updates: Family<ResultLabels, Counter> = Family::default(),
        "config_updates", "Config updates from the controller, accepted or rejected (NACKed, last good config kept)";
    config_version: Gauge = Gauge::default(),
        "config_version", "Generation of the config in force: increments with every accepted update";
    discovery_fallbacks: Counter = Counter::default(),
        "discovery_fallbacks", "Connections forwarded as addressed because their destination's config did not arrive in time";
    discovery_connected: Gauge = Gauge::default(),
        "discovery_connected", "1 while the discovery stream to the controller is open";
    // Identity and authorization.
    identity_cert_expiry: Gauge = Gauge::default(),
        "identity_cert_expiry_timestamp_seconds", "When the proxy's certificate expires (Unix seconds; 0 before the first)";
    authz_allow: Family<AuthzLabels, Counter> = Family::default(),
        "authz_allow", "Inbound requests (kind=http) and connections (kind=tcp) admitted, by the policy that admitted them";
    authz_denied: Family<AuthzLabels, Counter> = Family::default(),
        "authz_denied", "Inbound requests and connections refused, by policy and reason (forbidden, rate_limited)";
    // Limits and abuse.
    overload_shed: Family<ProtectLabels, Counter> = Family::default(),
        "overload_shed", "Connections closed on arrival (reason=connections) and requests answered 503 overloaded (reason=requests) because a limit was reached";
    protocol_abuse: Family<ProtectLabels, Counter> = Family::default(),
        "protocol_abuse", "Clients cut off: h2_flood (HTTP/2 control frame flood), header_timeout (request head too slow), header_too_large, ambiguous_length (conflicting Content-Length/Transfer-Encoding)";
    idle_closed: Family<DstDirection, Counter> = Family::default(),
        "http_idle_closed", "HTTP connections closed after the idle timeout with no request in flight";
    // Telemetry's own health.
    trace_spans_exported: Counter = Counter::default(),
        "trace_spans_exported", "Spans the collector accepted";
    trace_spans_dropped: Family<DropLabels, Counter> = Family::default(),
        "trace_spans_dropped", "Spans dropped: queue_full (export fell behind) or export_failed (the collector refused, timed out or is down)";
    access_log_dropped: Counter = Counter::default(),
        "access_log_dropped", "Access log lines dropped because stdout could not keep up";
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Now, in seconds since the Unix epoch, as a gauge.
fn start_time() -> Gauge<f64, std::sync::atomic::AtomicU64> {
    let start = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    start.set(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default(),
    );
    start
}

impl Metrics {
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

/// Linkerd's route metrics of one protocol.
pub struct RouteFamilies<'a> {
    pub duration: &'a HistogramFamily<RouteRef>,
    pub statuses: &'a Family<RouteStatusLabels, Counter>,
    pub backend_requests: &'a Family<RouteBackendLabels, Counter>,
    pub retry_requests: &'a Family<RouteRef, Counter>,
    pub retry_successes: &'a Family<RouteRef, Counter>,
    pub retry_limit_exceeded: &'a Family<RouteRef, Counter>,
    pub retry_overflow: &'a Family<RouteRef, Counter>,
}

impl Metrics {
    /// The `outbound_grpc_route_*` families for a GRPCRoute, the
    /// `outbound_http_route_*` ones for any other route.
    pub fn route(&self, r: &RouteRef) -> RouteFamilies<'_> {
        if r.is_grpc() {
            RouteFamilies {
                duration: &self.grpc_route_duration,
                statuses: &self.grpc_route_statuses,
                backend_requests: &self.grpc_route_backend_requests,
                retry_requests: &self.grpc_route_retry_requests,
                retry_successes: &self.grpc_route_retry_successes,
                retry_limit_exceeded: &self.grpc_route_retry_limit_exceeded,
                retry_overflow: &self.grpc_route_retry_overflow,
            }
        } else {
            RouteFamilies {
                duration: &self.http_route_duration,
                statuses: &self.http_route_statuses,
                backend_requests: &self.http_route_backend_requests,
                retry_requests: &self.http_route_retry_requests,
                retry_successes: &self.http_route_retry_successes,
                retry_limit_exceeded: &self.http_route_retry_limit_exceeded,
                retry_overflow: &self.http_route_retry_overflow,
            }
        }
    }
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
