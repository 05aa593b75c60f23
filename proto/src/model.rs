//! The configuration model both ends share: what the controller computes
//! for a proxy and what the proxy applies. It is what the discovery feed
//! carries (converted to and from the wire types in [`crate::convert`]) and
//! what a static config file (`WEFT_PROXY_CONFIG`) holds, as YAML.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;
pub use crate::ports::PortRange;

/// A Kubernetes Service, by namespace and name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How traffic to a port is to be treated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Detect from the first bytes.
    #[default]
    Detect,
    Http1,
    Http2,
    Grpc,
    /// Opaque TCP, no detection.
    Opaque,
}

/// What a subscription is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Key {
    /// A destination as the proxy met it: "IP:port" or "host:port".
    Destination(String),
    /// The inbound policy of the pod "namespace/name".
    Inbound(String),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Destination(d) => write!(f, "destination {d}"),
            Key::Inbound(p) => write!(f, "inbound {p}"),
        }
    }
}

/// The content of a resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Body {
    Destination(Destination),
    Inbound(InboundPolicy),
    /// Not a destination the mesh knows: forward as addressed.
    Unknown {
        reason: String,
    },
}

/// A service port as its clients see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Destination {
    pub service: ServiceRef,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// In order; the first route whose matches accept a request takes it.
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub name: String,
    /// Any matching selects the route; empty means every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Empty: the route answers itself (a redirect), or with 500.
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// A Gateway API consumer route: only clients in this namespace use
    /// it, and they use no route without it. `None`: every client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_namespace: Option<String>,
    /// Applied to requests that take the route, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// The whole request, retries included.
    #[serde(
        default,
        with = "duration::serde_opt_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Each try.
    #[serde(
        default,
        with = "duration::serde_opt_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub try_timeout: Option<Duration>,
    /// The route's retries; `None`: the destination's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// The object the route comes from, for metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RouteSource>,
}

/// The object a route comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSource {
    /// `HTTPRoute`, `GRPCRoute` or `TrafficSplit`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// What a route does to the requests it takes (the Gateway API's filters).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    /// Answer with a redirect instead of forwarding.
    Redirect(Redirect),
    Rewrite(Rewrite),
    /// Copies of requests go to this backend too; answers are dropped.
    Mirror(Mirror),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<Header>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<Header>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Redirect {
    /// `None`: the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// `None`: the scheme's default port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301 or 302.
    pub status: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathModifier {
    Full(String),
    /// Replaces the route match's path prefix.
    Prefix(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mirror {
    pub backend: Backend,
    /// Share of requests mirrored, in millionths.
    pub per_million: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteMatch {
    /// Anchored regular expression on the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// Empty: every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// All must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Query parameters; all must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<HeaderMatch>,
    /// The whole path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_exact: Option<String>,
    /// A path prefix by whole segments: `/a` matches `/a` and `/a/b`, not `/ab`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeaderMatch {
    pub name: String,
    /// Anchored regular expression on the value.
    pub value_regex: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Backend {
    pub service: ServiceRef,
    pub weight: u32,
    pub endpoints: Vec<Endpoint>,
    /// Why the route's reference to this backend is invalid: its share of
    /// requests is answered 500 (the Gateway API's rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unresolved: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: SocketAddr,
    #[serde(default)]
    pub meshed: bool,
    /// The SPIFFE ID to expect, when meshed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// "namespace/name" of the pod, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    #[default]
    Constant,
    Exponential,
}

/// How clients of a service retry (the RetryPolicy resource, resolved).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// "namespace/name" of the RetryPolicy.
    pub name: String,
    pub retry_on: Vec<String>,
    /// -1: unbounded (still capped by the budget).
    pub max_retries: i32,
    #[serde(default)]
    pub policy: Backoff,
    #[serde(with = "duration::serde_str")]
    pub duration: Duration,
    #[serde(
        default,
        with = "duration::serde_opt_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_interval: Option<Duration>,
    #[serde(
        default,
        with = "duration::serde_opt_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    #[serde(
        default,
        with = "duration::serde_opt_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    pub budget: RetryBudget,
    #[serde(default)]
    pub retry_non_idempotent: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    pub ratio: f64,
    pub min_retries_per_second: u32,
    #[serde(with = "duration::serde_str")]
    pub ttl: Duration,
}

impl Default for RetryBudget {
    /// Linkerd's defaults: 20% extra load, at least 10 retries a second,
    /// over a 10 s window.
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_retries_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    #[default]
    AllUnauthenticated,
    AllAuthenticated,
    ClusterAuthenticated,
    Deny,
}

/// How a pod's proxy treats traffic to the pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundPolicy {
    #[serde(default)]
    pub default_policy: DefaultPolicy,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<PortRange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthorizationRule>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRule {
    pub name: String,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    pub from: Vec<Source>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub unauthenticated: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    pub requests_per_second: u32,
    pub burst: u32,
}
