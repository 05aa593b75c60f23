//! SMI's TrafficSplit and HTTPRouteGroup (v1alpha4, the version Weft reads
//! and stores), field for field. The one tightening: weights are whole
//! non-negative numbers, as the SMI text says and its published CRD never
//! checked. A `status` subresource is added so that the controller can
//! report what it could not apply. The older versions are served too:
//! [`versions`] (their schemas), [`convert`] (to and from v1alpha4).

pub mod convert;
pub mod quantity;
pub mod versions;

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::Status;

/// Directs a share of the traffic that clients send to the apex service to
/// each backend service.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "split.smi-spec.io",
    version = "v1alpha4",
    kind = "TrafficSplit",
    namespaced,
    shortname = "ts",
    status = "Status",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Service","type":"string","description":"The apex service of this split.","jsonPath":".spec.service"}"#
)]
pub struct TrafficSplitSpec {
    /// The apex service of this split.
    pub service: String,
    /// The HTTP route groups that this traffic split should match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<Vec<TrafficSplitMatch>>,
    /// The backend services of this split.
    pub backends: Vec<TrafficSplitBackend>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct TrafficSplitMatch {
    /// Kind of the matching group.
    pub kind: MatchKind,
    /// Name of the matching group.
    pub name: String,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum MatchKind {
    HTTPRouteGroup,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct TrafficSplitBackend {
    /// Name of the Kubernetes service.
    pub service: String,
    /// Traffic weight value of this backend: a whole number, proportional
    /// to the other backends' weights.
    pub weight: u32,
}

/// Named HTTP match conditions a TrafficSplit can select requests by.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "specs.smi-spec.io",
    version = "v1alpha4",
    kind = "HTTPRouteGroup",
    namespaced,
    shortname = "htr",
    status = "Status",
    derive = "PartialEq"
)]
pub struct HTTPRouteGroupSpec {
    /// Match conditions of this route group.
    pub matches: Vec<HttpMatch>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    /// Name of the HTTP route.
    pub name: String,
    /// URI path regex of the HTTP route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// The HTTP methods of this HTTP route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<HttpMethod>>,
    /// Header match conditions of this route: each maps header names to
    /// value regexes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<BTreeMap<String, String>>>,
}

/// The HTTP method of this HTTP route.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum HttpMethod {
    #[serde(rename = "*")]
    Any,
    GET,
    HEAD,
    PUT,
    POST,
    DELETE,
    CONNECT,
    OPTIONS,
    TRACE,
    PATCH,
}

impl HttpMethod {
    /// The method's name; `None` for `*` (any).
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            HttpMethod::Any => return None,
            HttpMethod::GET => "GET",
            HttpMethod::HEAD => "HEAD",
            HttpMethod::PUT => "PUT",
            HttpMethod::POST => "POST",
            HttpMethod::DELETE => "DELETE",
            HttpMethod::CONNECT => "CONNECT",
            HttpMethod::OPTIONS => "OPTIONS",
            HttpMethod::TRACE => "TRACE",
            HttpMethod::PATCH => "PATCH",
        })
    }
}
