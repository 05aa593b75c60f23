//! Labels of Linkerd's per-route metrics (`outbound_http_route_*`,
//! `outbound_grpc_route_*`), so that dashboards and alerts written for
//! Linkerd's proxy read Weft's: the parent Service (`parent_*`), the route
//! (`route_*`) and, per try, the backend (`backend_*`).
//!
//! A route's labels are built once per config version and shared by every
//! request it takes ([`RouteRef`] is an `Arc`); their hash is computed
//! then, so a family lookup on the hot path hashes one integer.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder};
use weft_proto::model::{self, ServiceRef};

/// What a route is, as Linkerd's route metrics label it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct RouteIds {
    parent_namespace: String,
    parent_name: String,
    parent_port: u16,
    route_group: &'static str,
    route_kind: String,
    route_namespace: String,
    route_name: String,
    /// A GRPCRoute: counted in the `outbound_grpc_route_*` families.
    grpc: bool,
}

/// A route's labels, shared by its requests.
#[derive(Clone, Debug)]
pub struct RouteRef {
    ids: Arc<RouteIds>,
    hash: u64,
}

impl RouteRef {
    /// The labels of `route` of the destination `parent:port`. A Gateway
    /// API route is itself; a TrafficSplit's is the split; any other is
    /// Linkerd's default route (`route_kind="default"`, `route_name="http"`).
    pub fn new(parent: &ServiceRef, port: u16, route: &model::Route) -> Self {
        let (group, kind, namespace, name) = match &route.source {
            Some(s) if s.kind.ends_with("Route") => (
                "gateway.networking.k8s.io",
                s.kind.clone(),
                s.namespace.clone(),
                s.name.clone(),
            ),
            Some(s) => (
                "split.smi-spec.io",
                s.kind.clone(),
                s.namespace.clone(),
                s.name.clone(),
            ),
            None => ("", "default".into(), String::new(), "http".into()),
        };
        let ids = RouteIds {
            parent_namespace: parent.namespace.clone(),
            parent_name: parent.name.clone(),
            parent_port: port,
            route_group: group,
            grpc: kind == "GRPCRoute",
            route_kind: kind,
            route_namespace: namespace,
            route_name: name,
        };
        // A fixed hasher: equal labels must hash alike in every version.
        let mut h = std::hash::DefaultHasher::new();
        ids.hash(&mut h);
        let hash = h.finish();
        Self {
            ids: Arc::new(ids),
            hash,
        }
    }

    /// Counted in the `outbound_grpc_route_*` families.
    pub fn is_grpc(&self) -> bool {
        self.ids.grpc
    }

    fn encode_into(&self, enc: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        let i = &*self.ids;
        let port = i.parent_port.to_string();
        for (k, v) in [
            ("parent_group", "core"),
            ("parent_kind", "Service"),
            ("parent_namespace", i.parent_namespace.as_str()),
            ("parent_name", i.parent_name.as_str()),
            ("parent_port", port.as_str()),
            ("parent_section_name", ""),
            ("route_group", i.route_group),
            ("route_kind", i.route_kind.as_str()),
            ("route_namespace", i.route_namespace.as_str()),
            ("route_name", i.route_name.as_str()),
        ] {
            EncodeLabel::encode(&(k, v), enc.encode_label())?;
        }
        Ok(())
    }
}

// Two versions of a config compile equal labels into distinct `Arc`s: they
// must be one series, so equality is by content (pointer first, as most
// lookups find the same `Arc`), and the hash is the content's.
impl PartialEq for RouteRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.ids, &other.ids) || (self.hash == other.hash && self.ids == other.ids)
    }
}

impl Eq for RouteRef {}

impl Hash for RouteRef {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl EncodeLabelSet for RouteRef {
    fn encode(&self, enc: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        self.encode_into(enc)
    }
}

/// A backend of a route, as Linkerd labels it (`backend_*`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BackendRef(Arc<(String, String)>);

impl BackendRef {
    pub fn new(service: &ServiceRef) -> Self {
        Self(Arc::new((service.namespace.clone(), service.name.clone())))
    }
}

/// Requests of a route sent to one of its backends.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteBackendLabels {
    pub route: RouteRef,
    pub backend: BackendRef,
}

impl EncodeLabelSet for RouteBackendLabels {
    fn encode(&self, enc: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        self.route.encode_into(enc)?;
        let (ns, name) = &*self.backend.0;
        for (k, v) in [
            ("backend_group", "core"),
            ("backend_kind", "Service"),
            ("backend_namespace", ns.as_str()),
            ("backend_name", name.as_str()),
            // The proxy knows the backend's endpoints, not its Service port.
            ("backend_port", ""),
            ("backend_section_name", ""),
        ] {
            EncodeLabel::encode(&(k, v), enc.encode_label())?;
        }
        Ok(())
    }
}

/// How a routed request ended: its HTTP status (or, for a GRPCRoute, its
/// gRPC status by name) and the proxy's error, if it answered itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteStatusLabels {
    pub route: RouteRef,
    pub http_status: u16,
    pub grpc_status: Option<u16>,
    pub error: Option<RouteError>,
}

impl EncodeLabelSet for RouteStatusLabels {
    fn encode(&self, enc: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        self.route.encode_into(enc)?;
        if self.route.is_grpc() {
            // Linkerd's: no status known is UNKNOWN.
            let name = grpc_code_name(self.grpc_status.unwrap_or(2));
            EncodeLabel::encode(&("grpc_status", name), enc.encode_label())?;
        } else {
            EncodeLabel::encode(&("http_status", self.http_status), enc.encode_label())?;
        }
        EncodeLabel::encode(&("error", self.error), enc.encode_label())
    }
}

/// Linkerd's `error` values for what the proxy answered itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteError {
    /// No endpoint or no route: Linkerd's fail-fast.
    FailFast,
    LoadShed,
    RequestTimeout,
    ResponseHeadersTimeout,
    Reset,
    Unknown,
}

impl RouteError {
    /// From the proxy's own `error` label (`forward::error`), or the
    /// stream breaking.
    pub fn from_proxy(error: Option<&str>, broken: bool) -> Option<Self> {
        Some(match error {
            Some("timeout") => RouteError::RequestTimeout,
            Some("per_try_timeout") => RouteError::ResponseHeadersTimeout,
            Some("no_endpoints" | "no_route" | "unresolved_backend") => RouteError::FailFast,
            Some("overloaded" | "draining") => RouteError::LoadShed,
            Some("upstream_reset") => RouteError::Reset,
            Some(_) => RouteError::Unknown,
            None if broken => RouteError::Reset,
            None => return None,
        })
    }
}

impl EncodeLabelValue for RouteError {
    fn encode(
        &self,
        enc: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> std::fmt::Result {
        use std::fmt::Write;
        enc.write_str(match self {
            RouteError::FailFast => "FAIL_FAST",
            RouteError::LoadShed => "LOAD_SHED",
            RouteError::RequestTimeout => "REQUEST_TIMEOUT",
            RouteError::ResponseHeadersTimeout => "RESPONSE_HEADERS_TIMEOUT",
            RouteError::Reset => "RESET",
            RouteError::Unknown => "UNKNOWN",
        })
    }
}

/// gRPC's name for a status code, as Linkerd labels it.
fn grpc_code_name(code: u16) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::registry::Registry;

    /// The text exposition of one family registered as `name`.
    fn exposition<L, M>(name: &str, family: Family<L, M>) -> String
    where
        Family<L, M>: prometheus_client::registry::Metric,
    {
        let mut registry = Registry::default();
        registry.register(name, "", family);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    fn svc(name: &str) -> ServiceRef {
        ServiceRef {
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    fn gateway_route(kind: &str) -> model::Route {
        model::Route {
            name: "shop/web/0".into(),
            source: Some(model::RouteSource {
                kind: kind.into(),
                namespace: "shop".into(),
                name: "web".into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn equal_labels_from_two_config_versions_are_one_series() {
        let family = Family::<RouteStatusLabels, Counter>::default();
        for _ in 0..2 {
            let r = RouteRef::new(&svc("web"), 80, &gateway_route("HTTPRoute"));
            family
                .get_or_create(&RouteStatusLabels {
                    route: r,
                    http_status: 200,
                    grpc_status: None,
                    error: None,
                })
                .inc();
        }
        let text = exposition("outbound_http_route_request_statuses", family);
        let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            series,
            [
                "outbound_http_route_request_statuses_total{parent_group=\"core\",parent_kind=\"Service\",parent_namespace=\"shop\",parent_name=\"web\",parent_port=\"80\",parent_section_name=\"\",route_group=\"gateway.networking.k8s.io\",route_kind=\"HTTPRoute\",route_namespace=\"shop\",route_name=\"web\",http_status=\"200\",error=\"\"} 2"
            ]
        );
    }

    #[test]
    fn grpc_routes_are_labelled_by_grpc_status_name() {
        let r = RouteRef::new(&svc("cart"), 50051, &gateway_route("GRPCRoute"));
        assert!(r.is_grpc());
        let family = Family::<RouteStatusLabels, Counter>::default();
        family
            .get_or_create(&RouteStatusLabels {
                route: r,
                http_status: 200,
                grpc_status: Some(14),
                error: None,
            })
            .inc();
        let text = exposition("outbound_grpc_route_request_statuses", family);
        assert!(
            text.contains("grpc_status=\"UNAVAILABLE\",error=\"\"} 1"),
            "{text}"
        );
        assert!(!text.contains("http_status"), "{text}");
    }

    #[test]
    fn other_routes_are_linkerds_default_route() {
        let r = RouteRef::new(&svc("web"), 80, &model::Route::default());
        let labels = RouteBackendLabels {
            route: r,
            backend: BackendRef::new(&svc("web-v2")),
        };
        let family = Family::<RouteBackendLabels, Counter>::default();
        family.get_or_create(&labels).inc();
        let text = exposition("outbound_http_route_backend_requests", family);
        assert!(
            text.contains("route_group=\"\",route_kind=\"default\",route_namespace=\"\",route_name=\"http\",backend_group=\"core\",backend_kind=\"Service\",backend_namespace=\"shop\",backend_name=\"web-v2\""),
            "{text}"
        );
    }
}
