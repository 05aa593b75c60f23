//! Label sets, named and valued as Linkerd's proxy labels them so existing
//! dashboards and alerts keep working.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

use crate::detect::{Protocol, Reason};

macro_rules! str_label {
    ($t:ty) => {
        impl EncodeLabelValue for $t {
            fn encode(&self, e: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                e.write_str(self.as_str())
            }
        }
    };
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}
str_label!(Direction);

/// Whether the connection was mesh TLS: `true`, or `no_identity` when the
/// proxy carried it in the clear (as Linkerd reports it).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Tls {
    Yes,
    NoIdentity,
}

impl Tls {
    pub fn as_str(self) -> &'static str {
        match self {
            Tls::Yes => "true",
            Tls::NoIdentity => "no_identity",
        }
    }
}
str_label!(Tls);

/// Which end of a proxied TCP connection: the client (`src`) or upstream (`dst`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Peer {
    Src,
    Dst,
}

impl Peer {
    pub fn as_str(self) -> &'static str {
        match self {
            Peer::Src => "src",
            Peer::Dst => "dst",
        }
    }
}
str_label!(Peer);

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Classification {
    Success,
    Failure,
}

impl Classification {
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Success => "success",
            Classification::Failure => "failure",
        }
    }
}
str_label!(Classification);

str_label!(Protocol);
str_label!(Reason);

/// A label value from the outside world (an authority, an address), cheap to
/// clone. Values are bounded by a [`Bounded`] set.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Value(pub Arc<str>);

impl Value {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl EncodeLabelValue for Value {
    fn encode(&self, e: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        e.write_str(&self.0)
    }
}

/// Bounds a label's cardinality: the first `max` distinct values are kept,
/// later ones are reported as `overflow`, so a client inventing Host headers
/// cannot grow the registry without end.
#[derive(Debug)]
pub struct Bounded {
    max: usize,
    seen: Mutex<HashSet<Arc<str>>>,
    overflow: Value,
}

impl Bounded {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            seen: Mutex::new(HashSet::new()),
            overflow: Value(Arc::from("overflow")),
        }
    }

    pub fn value(&self, v: &str) -> Value {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = seen.get(v) {
            return Value(known.clone());
        }
        if seen.len() >= self.max {
            return self.overflow.clone();
        }
        let v: Arc<str> = Arc::from(v);
        seen.insert(v.clone());
        Value(v)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    pub authority: Value,
    pub tls: Tls,
    /// Inbound over mesh TLS: the client's verified identity.
    pub client_id: Option<Value>,
    /// The destination service, when discovery knows it (outbound).
    pub dst_namespace: Option<Value>,
    pub dst_service: Option<Value>,
}

/// A request's labels with its response's status (`response_latency_ms`):
/// the request's own labels moved in, not copied.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    #[prometheus(flatten)]
    pub request: RequestLabels,
    pub status_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    #[prometheus(flatten)]
    pub request: RequestLabels,
    pub status_code: u16,
    pub classification: Classification,
    /// Set for gRPC responses only.
    pub grpc_status: Option<u16>,
    /// Set when the proxy itself produced the response.
    pub error: Option<&'static str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: Direction,
    pub peer: Peer,
    pub tls: Tls,
    pub target_addr: Value,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpCloseLabels {
    pub direction: Direction,
    pub peer: Peer,
    pub tls: Tls,
    pub target_addr: Value,
    pub classification: Classification,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SplitLabels {
    pub dst_namespace: Value,
    pub dst_service: Value,
    pub route: Value,
    pub backend: Value,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub dst_namespace: Value,
    pub dst_service: Value,
    pub route: Value,
    pub backend: Value,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub dst_namespace: Value,
    pub dst_service: Value,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DstLabels {
    pub dst_namespace: Value,
    pub dst_service: Value,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TryLabels {
    pub dst_namespace: Value,
    pub dst_service: Value,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    pub policy: Value,
    /// `http` (per request) or `tcp` (per connection).
    pub kind: &'static str,
    /// Denials only: `forbidden` or `rate_limited`.
    pub reason: Option<&'static str>,
}

/// A routed request's route (outbound, with discovery).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub dst_namespace: Value,
    pub dst_service: Value,
    pub route: Value,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLatencyLabels {
    pub dst_namespace: Value,
    pub dst_service: Value,
    pub route: Value,
    pub status_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteResponseLabels {
    pub dst_namespace: Value,
    pub dst_service: Value,
    pub route: Value,
    pub status_code: u16,
    pub classification: Classification,
}

/// Why the proxy refused or closed something to protect itself.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtectLabels {
    pub direction: Direction,
    pub reason: &'static str,
}

/// Why telemetry was dropped.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectLabels {
    pub direction: Direction,
    pub protocol: Protocol,
    pub reason: Reason,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_values_overflow_past_the_limit() {
        let b = Bounded::new(2);
        assert_eq!(b.value("a").as_str(), "a");
        assert_eq!(b.value("b").as_str(), "b");
        assert_eq!(b.value("c").as_str(), "overflow");
        // Known values stay themselves.
        assert_eq!(b.value("a").as_str(), "a");
    }
}
