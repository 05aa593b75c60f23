//! The objects the index takes in, and the compact form it keeps of each
//! (only what resolution needs: a Pod is a few fields, not its whole spec).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use crate::crd::{
    AuthorizationPolicy, GRPCRoute, HTTPRoute, HTTPRouteGroup, ReferenceGrant, RetryPolicy,
    TrafficSplit,
};

/// Annotation marking a pod as meshed (set by the injector and `weft inject`).
pub const PROXY_VERSION_ANNOTATION: &str = "weft.dev/proxy-version";
pub const OPAQUE_PORTS_ANNOTATION: &str = "weft.dev/opaque-ports";
pub const DEFAULT_POLICY_ANNOTATION: &str = "weft.dev/default-inbound-policy";
/// The EndpointSlice label naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Every kind of object the index understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Service,
    EndpointSlice,
    Pod,
    TrafficSplit,
    HTTPRouteGroup,
    RetryPolicy,
    AuthorizationPolicy,
    HTTPRoute,
    GRPCRoute,
    ReferenceGrant,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::Namespace,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::TrafficSplit,
        Kind::HTTPRouteGroup,
        Kind::RetryPolicy,
        Kind::AuthorizationPolicy,
        Kind::HTTPRoute,
        Kind::GRPCRoute,
        Kind::ReferenceGrant,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::TrafficSplit => "TrafficSplit",
            Kind::HTTPRouteGroup => "HTTPRouteGroup",
            Kind::RetryPolicy => "RetryPolicy",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::HTTPRoute => "HTTPRoute",
            Kind::GRPCRoute => "GRPCRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
        }
    }

    /// The kinds whose problems the controller reports in their status.
    pub fn reports_status(self) -> bool {
        matches!(
            self,
            Kind::TrafficSplit
                | Kind::HTTPRouteGroup
                | Kind::RetryPolicy
                | Kind::AuthorizationPolicy
                | Kind::HTTPRoute
                | Kind::GRPCRoute
        )
    }

    /// The Gateway API's route kinds.
    pub fn is_gateway_route(self) -> bool {
        matches!(self, Kind::HTTPRoute | Kind::GRPCRoute)
    }
}

/// Which object: kind, namespace ("" for cluster-scoped) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind.as_str(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
        }
    }
}

/// An object as a source delivers it. Objects are short-lived (the index
/// keeps a compact form), so their size is not worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Pod(Pod),
    TrafficSplit(TrafficSplit),
    HTTPRouteGroup(HTTPRouteGroup),
    RetryPolicy(RetryPolicy),
    AuthorizationPolicy(AuthorizationPolicy),
    HTTPRoute(HTTPRoute),
    GRPCRoute(GRPCRoute),
    ReferenceGrant(ReferenceGrant),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Pod(_) => Kind::Pod,
            Object::TrafficSplit(_) => Kind::TrafficSplit,
            Object::HTTPRouteGroup(_) => Kind::HTTPRouteGroup,
            Object::RetryPolicy(_) => Kind::RetryPolicy,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::HTTPRoute(_) => Kind::HTTPRoute,
            Object::GRPCRoute(_) => Kind::GRPCRoute,
            Object::ReferenceGrant(_) => Kind::ReferenceGrant,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::TrafficSplit(o) => &o.metadata,
            Object::HTTPRouteGroup(o) => &o.metadata,
            Object::RetryPolicy(o) => &o.metadata,
            Object::AuthorizationPolicy(o) => &o.metadata,
            Object::HTTPRoute(o) => &o.metadata,
            Object::GRPCRoute(o) => &o.metadata,
            Object::ReferenceGrant(o) => &o.metadata,
        }
    }

    pub fn object_ref(&self) -> ObjectRef {
        let meta = self.meta();
        ObjectRef {
            kind: self.kind(),
            namespace: if self.kind() == Kind::Namespace {
                String::new()
            } else {
                meta.namespace
                    .clone()
                    .unwrap_or_else(|| "default".to_string())
            },
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// What the index keeps of a Namespace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamespaceInfo {
    pub opaque_ports: Option<String>,
    pub default_policy: Option<String>,
    /// Every `weft.dev/` annotation, for the injector.
    pub weft_annotations: BTreeMap<String, String>,
}

impl NamespaceInfo {
    pub fn from(ns: &Namespace) -> Self {
        let weft_annotations = ns
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("weft.dev/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Self {
            opaque_ports: annotation(&ns.metadata, OPAQUE_PORTS_ANNOTATION).map(String::from),
            default_policy: annotation(&ns.metadata, DEFAULT_POLICY_ANNOTATION).map(String::from),
            weft_annotations,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServicePortInfo {
    pub name: String,
    pub port: u16,
    pub target_port: TargetPort,
    pub app_protocol: Option<String>,
}

/// What the index keeps of a Service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceInfo {
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePortInfo>,
    pub selector: Option<BTreeMap<String, String>>,
    pub opaque_ports: Option<String>,
}

impl ServiceInfo {
    pub fn from(svc: &Service) -> Self {
        let spec = svc.spec.clone().unwrap_or_default();
        let mut ips: Vec<IpAddr> = spec
            .cluster_ips
            .unwrap_or_default()
            .iter()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        ips.sort();
        ips.dedup();
        let ports = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                let port = u16::try_from(p.port).ok()?;
                let target_port = match p.target_port {
                    None => TargetPort::Number(port),
                    Some(IntOrString::Int(n)) => TargetPort::Number(u16::try_from(n).ok()?),
                    Some(IntOrString::String(s)) => match s.parse::<u16>() {
                        Ok(n) => TargetPort::Number(n),
                        Err(_) => TargetPort::Name(s),
                    },
                };
                Some(ServicePortInfo {
                    name: p.name.unwrap_or_default(),
                    port,
                    target_port,
                    app_protocol: p.app_protocol,
                })
            })
            .collect();
        Self {
            cluster_ips: ips,
            ports,
            selector: spec.selector,
            opaque_ports: annotation(&svc.metadata, OPAQUE_PORTS_ANNOTATION).map(String::from),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The pod's name, when the endpoint is a pod of the slice's namespace.
    pub pod: Option<String>,
    pub zone: Option<String>,
}

/// What the index keeps of an EndpointSlice.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceInfo {
    pub service: String,
    pub endpoints: Vec<SliceEndpoint>,
    /// Port name (the Service port's name) -> port number.
    pub ports: Vec<(String, u16)>,
}

impl SliceInfo {
    pub fn from(slice: &EndpointSlice) -> Option<Self> {
        let service = slice
            .metadata
            .labels
            .as_ref()?
            .get(SERVICE_NAME_LABEL)?
            .clone();
        let endpoints = slice
            .endpoints
            .iter()
            .flatten()
            .map(|e| {
                let c = e.conditions.clone().unwrap_or_default();
                // Per the EndpointSlice API: an unknown `ready` means ready,
                // and an unknown `serving` follows `ready`.
                let ready = c.ready.unwrap_or(true);
                SliceEndpoint {
                    addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                    ready,
                    serving: c.serving.unwrap_or(ready),
                    terminating: c.terminating.unwrap_or(false),
                    pod: e
                        .target_ref
                        .as_ref()
                        .filter(|r| r.kind.as_deref() == Some("Pod"))
                        .and_then(|r| r.name.clone()),
                    zone: e.zone.clone(),
                }
            })
            .collect();
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default(),
                    u16::try_from(p.port?).ok()?,
                ))
            })
            .collect();
        Some(Self {
            service,
            endpoints,
            ports,
        })
    }
}

/// What the index keeps of a Pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    pub ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub meshed: bool,
    pub ready: bool,
    /// Named container ports, for Services with named target ports.
    pub named_ports: Vec<(String, u16)>,
    pub opaque_ports: Option<String>,
    pub default_policy: Option<String>,
}

impl PodInfo {
    pub fn from(pod: &Pod) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let status = pod.status.clone().unwrap_or_default();
        let mut ips: Vec<IpAddr> = status
            .pod_ips
            .iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .chain(status.pod_ip.iter().filter_map(|ip| ip.parse().ok()))
            .collect();
        ips.sort();
        ips.dedup();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status == "True")
            // Without conditions (a pod written by hand), running counts as ready.
            .unwrap_or(status.phase.as_deref().is_none_or(|p| p == "Running"));
        let named_ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
            .collect();
        Self {
            ips,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            service_account: spec
                .service_account_name
                .unwrap_or_else(|| "default".to_string()),
            meshed: annotation(&pod.metadata, PROXY_VERSION_ANNOTATION).is_some(),
            ready,
            named_ports,
            opaque_ports: annotation(&pod.metadata, OPAQUE_PORTS_ANNOTATION).map(String::from),
            default_policy: annotation(&pod.metadata, DEFAULT_POLICY_ANNOTATION).map(String::from),
        }
    }
}

/// A custom resource with the time it was created (older wins conflicts).
#[derive(Clone, Debug, PartialEq)]
pub struct Aged<T> {
    pub created: Option<Timestamp>,
    pub resource: T,
}

impl<T: kube::Resource> Aged<T> {
    pub fn new(resource: T) -> Self {
        Self {
            created: resource.meta().creation_timestamp.as_ref().map(|t| t.0),
            resource,
        }
    }
}
