//! The index: pure state, no I/O. Sources apply, delete and reset objects;
//! the index answers what a proxy should know about a destination
//! ([`destination`]) or its own pod ([`inbound`]), and what is wrong with
//! the user's objects ([`problems`]).

pub mod destination;
pub mod gateway;
#[cfg(test)]
mod gateway_tests;
pub mod inbound;
pub mod objects;
pub mod problems;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use weft_proto::model::{self, DefaultPolicy, Key};

use crate::crd::{
    AuthorizationPolicy, GRPCRoute, HTTPRoute, HTTPRouteGroup, ReferenceGrant, RetryPolicy,
    TrafficSplit,
};
/// Namespace name -> its `weft.dev/` annotations.
pub type NamespaceAnnotations = BTreeMap<String, BTreeMap<String, String>>;

/// Where each pod is and who it runs as ("namespace/name" -> entry), for
/// the controller's tap relay.
pub type PodDirectory = BTreeMap<String, PodEntry>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEntry {
    pub ip: Option<std::net::IpAddr>,
    pub service_account: String,
    pub meshed: bool,
}

use objects::{Aged, NamespaceInfo, PodInfo, ServiceInfo, SliceInfo};
pub use objects::{Kind, Object, ObjectRef};

/// (namespace, name)
pub type NsName = (String, String);

/// Settings of resolution that do not come from objects.
#[derive(Clone, Debug)]
pub struct IndexConfig {
    /// SPIFFE trust domain of workload identities.
    pub trust_domain: String,
    /// The cluster's DNS suffix (`svc.<this>`), for authorities.
    pub cluster_domain: String,
    /// Compute endpoints from Pods and Service selectors when a Service has
    /// no EndpointSlices (directory mode, where no endpoints controller runs).
    pub derive_endpoints_from_pods: bool,
    /// Inbound policy where no annotation says otherwise.
    pub default_policy: DefaultPolicy,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            derive_endpoints_from_pods: false,
            default_policy: DefaultPolicy::AllUnauthenticated,
        }
    }
}

#[derive(Debug, Default)]
pub struct Index {
    pub(crate) config: IndexConfig,
    pub(crate) namespaces: BTreeMap<String, NamespaceInfo>,
    pub(crate) services: BTreeMap<NsName, ServiceInfo>,
    pub(crate) by_cluster_ip: HashMap<IpAddr, NsName>,
    /// Pod IP -> pod, for traffic addressed to a pod (headless services,
    /// StatefulSet peers).
    pub(crate) by_pod_ip: HashMap<IpAddr, NsName>,
    pub(crate) slices: BTreeMap<NsName, SliceInfo>,
    pub(crate) slices_by_service: HashMap<NsName, BTreeSet<String>>,
    pub(crate) pods: BTreeMap<NsName, PodInfo>,
    pub(crate) splits: BTreeMap<NsName, Aged<TrafficSplit>>,
    pub(crate) route_groups: BTreeMap<NsName, Aged<HTTPRouteGroup>>,
    pub(crate) retry_policies: BTreeMap<NsName, Aged<RetryPolicy>>,
    pub(crate) authz_policies: BTreeMap<NsName, Aged<AuthorizationPolicy>>,
    pub(crate) http_routes: BTreeMap<NsName, Aged<HTTPRoute>>,
    pub(crate) grpc_routes: BTreeMap<NsName, Aged<GRPCRoute>>,
    pub(crate) grants: BTreeMap<NsName, Aged<ReferenceGrant>>,
}

impl Index {
    pub fn new(config: IndexConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    /// Adds or replaces an object.
    pub fn apply(&mut self, obj: Object) {
        let r = obj.object_ref();
        let key = (r.namespace.clone(), r.name.clone());
        match obj {
            Object::Namespace(ns) => {
                self.namespaces.insert(r.name, NamespaceInfo::from(&ns));
            }
            Object::Service(svc) => {
                self.remove_service(&key);
                let info = ServiceInfo::from(&svc);
                for ip in &info.cluster_ips {
                    self.by_cluster_ip.insert(*ip, key.clone());
                }
                self.services.insert(key, info);
            }
            Object::EndpointSlice(slice) => {
                self.remove_slice(&key);
                if let Some(info) = SliceInfo::from(&slice) {
                    self.slices_by_service
                        .entry((key.0.clone(), info.service.clone()))
                        .or_default()
                        .insert(key.1.clone());
                    self.slices.insert(key, info);
                }
            }
            Object::Pod(pod) => {
                self.remove_pod(&key);
                let info = PodInfo::from(&pod);
                for ip in &info.ips {
                    self.by_pod_ip.insert(*ip, key.clone());
                }
                self.pods.insert(key, info);
            }
            Object::TrafficSplit(o) => {
                self.splits.insert(key, Aged::new(o));
            }
            Object::HTTPRouteGroup(o) => {
                self.route_groups.insert(key, Aged::new(o));
            }
            Object::RetryPolicy(o) => {
                self.retry_policies.insert(key, Aged::new(o));
            }
            Object::AuthorizationPolicy(o) => {
                self.authz_policies.insert(key, Aged::new(o));
            }
            Object::HTTPRoute(o) => {
                self.http_routes.insert(key, Aged::new(o));
            }
            Object::GRPCRoute(o) => {
                self.grpc_routes.insert(key, Aged::new(o));
            }
            Object::ReferenceGrant(o) => {
                self.grants.insert(key, Aged::new(o));
            }
        }
    }

    /// Removes an object (absent objects are fine).
    pub fn delete(&mut self, r: &ObjectRef) {
        let key = (r.namespace.clone(), r.name.clone());
        match r.kind {
            Kind::Namespace => {
                self.namespaces.remove(&r.name);
            }
            Kind::Service => self.remove_service(&key),
            Kind::EndpointSlice => self.remove_slice(&key),
            Kind::Pod => self.remove_pod(&key),
            Kind::TrafficSplit => {
                self.splits.remove(&key);
            }
            Kind::HTTPRouteGroup => {
                self.route_groups.remove(&key);
            }
            Kind::RetryPolicy => {
                self.retry_policies.remove(&key);
            }
            Kind::AuthorizationPolicy => {
                self.authz_policies.remove(&key);
            }
            Kind::HTTPRoute => {
                self.http_routes.remove(&key);
            }
            Kind::GRPCRoute => {
                self.grpc_routes.remove(&key);
            }
            Kind::ReferenceGrant => {
                self.grants.remove(&key);
            }
        }
    }

    /// Replaces every object of `kind` with `objs` (after a relist).
    pub fn reset(&mut self, kind: Kind, objs: Vec<Object>) {
        for r in self.refs(kind) {
            self.delete(&r);
        }
        for o in objs.into_iter().filter(|o| o.kind() == kind) {
            self.apply(o);
        }
    }

    fn refs(&self, kind: Kind) -> Vec<ObjectRef> {
        let mk = |(ns, name): &NsName| ObjectRef {
            kind,
            namespace: ns.clone(),
            name: name.clone(),
        };
        match kind {
            Kind::Namespace => self
                .namespaces
                .keys()
                .map(|n| ObjectRef {
                    kind,
                    namespace: String::new(),
                    name: n.clone(),
                })
                .collect(),
            Kind::Service => self.services.keys().map(mk).collect(),
            Kind::EndpointSlice => self.slices.keys().map(mk).collect(),
            Kind::Pod => self.pods.keys().map(mk).collect(),
            Kind::TrafficSplit => self.splits.keys().map(mk).collect(),
            Kind::HTTPRouteGroup => self.route_groups.keys().map(mk).collect(),
            Kind::RetryPolicy => self.retry_policies.keys().map(mk).collect(),
            Kind::AuthorizationPolicy => self.authz_policies.keys().map(mk).collect(),
            Kind::HTTPRoute => self.http_routes.keys().map(mk).collect(),
            Kind::GRPCRoute => self.grpc_routes.keys().map(mk).collect(),
            Kind::ReferenceGrant => self.grants.keys().map(mk).collect(),
        }
    }

    fn remove_service(&mut self, key: &NsName) {
        if let Some(old) = self.services.remove(key) {
            for ip in old.cluster_ips {
                if self.by_cluster_ip.get(&ip) == Some(key) {
                    self.by_cluster_ip.remove(&ip);
                }
            }
        }
    }

    fn remove_pod(&mut self, key: &NsName) {
        if let Some(old) = self.pods.remove(key) {
            for ip in old.ips {
                if self.by_pod_ip.get(&ip) == Some(key) {
                    self.by_pod_ip.remove(&ip);
                }
            }
        }
    }

    fn remove_slice(&mut self, key: &NsName) {
        if let Some(old) = self.slices.remove(key) {
            let svc = (key.0.clone(), old.service);
            if let Some(set) = self.slices_by_service.get_mut(&svc) {
                set.remove(&key.1);
                if set.is_empty() {
                    self.slices_by_service.remove(&svc);
                }
            }
        }
    }

    /// What a proxy should hold for `key`.
    pub fn resource(&self, key: &Key) -> model::Body {
        match key {
            Key::Destination(d) => self.destination(d),
            Key::Inbound(pod) => self.inbound(pod),
        }
    }

    /// How many objects of each kind the index holds.
    /// Each namespace's `weft.dev/` annotations (for the injector).
    pub fn namespace_annotations(&self) -> NamespaceAnnotations {
        self.namespaces
            .iter()
            .map(|(name, ns)| (name.clone(), ns.weft_annotations.clone()))
            .collect()
    }

    pub fn pod_directory(&self) -> PodDirectory {
        self.pods
            .iter()
            .map(|((ns, name), p)| {
                (
                    format!("{ns}/{name}"),
                    PodEntry {
                        ip: p.ips.first().copied(),
                        service_account: p.service_account.clone(),
                        meshed: p.meshed,
                    },
                )
            })
            .collect()
    }

    pub fn sizes(&self) -> Vec<(Kind, usize)> {
        vec![
            (Kind::Namespace, self.namespaces.len()),
            (Kind::Service, self.services.len()),
            (Kind::EndpointSlice, self.slices.len()),
            (Kind::Pod, self.pods.len()),
            (Kind::TrafficSplit, self.splits.len()),
            (Kind::HTTPRouteGroup, self.route_groups.len()),
            (Kind::RetryPolicy, self.retry_policies.len()),
            (Kind::AuthorizationPolicy, self.authz_policies.len()),
            (Kind::HTTPRoute, self.http_routes.len()),
            (Kind::GRPCRoute, self.grpc_routes.len()),
            (Kind::ReferenceGrant, self.grants.len()),
        ]
    }
}
