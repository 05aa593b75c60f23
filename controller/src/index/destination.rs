//! Resolving a destination a proxy met (a cluster IP and port, or an
//! authority) to what its requests should do: routes from the TrafficSplit
//! whose apex it is, backends with weights and their live endpoints, and the
//! RetryPolicy for its clients.

use std::net::{IpAddr, SocketAddr};

use weft_proto::model::{
    Backend, Body, Destination, Endpoint, HeaderMatch, Protocol, Route, RouteMatch, RouteSource,
    ServiceRef,
};
use weft_proto::ports::parse_port_list;

use super::objects::{Aged, ServicePortInfo, TargetPort};
use super::{Index, NsName};
use crate::crd::retry::ServiceKind;
use crate::crd::{HTTPRouteGroup, RetryPolicy, TrafficSplit};

impl Index {
    /// What a proxy should do with connections to `key`.
    pub fn destination(&self, key: &str) -> Body {
        match self.find_service(key) {
            Ok((svc, port)) => Body::Destination(self.resolve(&svc, port)),
            Err(reason) => match key
                .parse::<SocketAddr>()
                .ok()
                .and_then(|a| self.pod_destination(a))
            {
                Some(d) => Body::Destination(d),
                None => Body::Unknown { reason },
            },
        }
    }

    /// Traffic addressed to a pod's own IP (a headless service's DNS
    /// answer, a StatefulSet peer): one endpoint, that pod, with its
    /// identity when meshed, so it is mutual TLS like service traffic. No
    /// routes, splits or retries: those belong to services.
    fn pod_destination(&self, addr: SocketAddr) -> Option<Destination> {
        let (ns, name) = self.by_pod_ip.get(&addr.ip())?;
        let endpoint = self.endpoint(ns, addr.ip(), addr.port(), Some(name), None);
        // Not a service: named `pod:<name>` (no Service can have a colon in
        // its name), which is what metrics show as its dst_service.
        let owner = ServiceRef {
            namespace: ns.clone(),
            name: format!("pod:{name}"),
        };
        Some(Destination {
            service: owner.clone(),
            port: addr.port(),
            protocol: endpoint.protocol,
            routes: vec![Route {
                name: "pod".to_string(),
                backends: vec![Backend {
                    service: owner,
                    weight: 1,
                    endpoints: vec![endpoint],
                    unresolved: None,
                }],
                ..Route::default()
            }],
            retry: None,
        })
    }

    /// The Service (and its port) a destination names.
    pub(crate) fn find_service(&self, key: &str) -> Result<(NsName, u16), String> {
        let (svc, port) = if let Ok(addr) = key.parse::<SocketAddr>() {
            let Some(svc) = self.by_cluster_ip.get(&addr.ip()) else {
                return Err(format!("{} is not a service's cluster IP", addr.ip()));
            };
            (svc.clone(), addr.port())
        } else {
            let (host, port) = key
                .rsplit_once(':')
                .ok_or_else(|| format!("'{key}' is neither IP:port nor host:port"))?;
            let port: u16 = port
                .parse()
                .map_err(|_| format!("'{port}' is not a port"))?;
            (self.service_by_host(host)?, port)
        };
        let info = self
            .services
            .get(&svc)
            .ok_or_else(|| format!("service {}/{} is gone", svc.0, svc.1))?;
        if !info.ports.iter().any(|p| p.port == port) {
            return Err(format!(
                "service {}/{} has no TCP port {port}",
                svc.0, svc.1
            ));
        }
        Ok((svc, port))
    }

    /// `name.ns.svc.<cluster domain>`, `name.ns.svc` or `name.ns`.
    fn service_by_host(&self, host: &str) -> Result<NsName, String> {
        let host = host.trim_end_matches('.');
        let suffix = format!(".svc.{}", self.config.cluster_domain);
        let short = host
            .strip_suffix(&suffix)
            .or_else(|| host.strip_suffix(".svc"))
            .unwrap_or(host);
        let mut labels = short.split('.');
        match (labels.next(), labels.next(), labels.next()) {
            (Some(name), Some(ns), None)
                if self.services.contains_key(&(ns.into(), name.into())) =>
            {
                Ok((ns.to_string(), name.to_string()))
            }
            _ => Err(format!("'{host}' does not name a known service")),
        }
    }

    fn resolve(&self, apex: &NsName, port: u16) -> Destination {
        let info = &self.services[apex];
        let sp = info
            .ports
            .iter()
            .find(|p| p.port == port)
            .expect("port checked by find_service");
        // Gateway API routes first; a producer route replaces the
        // TrafficSplit and the default route (unmatched requests: 404).
        let mut routes = self.gateway_routes(apex, port);
        if !self.has_producer_routes(apex) {
            routes.extend(self.smi_routes(apex, port));
        }
        Destination {
            service: ServiceRef {
                namespace: apex.0.clone(),
                name: apex.1.clone(),
            },
            port,
            protocol: self.protocol(apex, sp),
            routes,
            retry: self
                .active_retry(apex)
                .and_then(|(key, rp)| rp.spec.resolve(format!("{}/{}", key.0, key.1)).ok()),
        }
    }

    /// The TrafficSplit's route (if a split is in force), then the default
    /// route unless the split takes every request.
    fn smi_routes(&self, apex: &NsName, port: u16) -> Vec<Route> {
        let default_route = || Route {
            name: "default".to_string(),
            backends: vec![self.backend(apex, port, 1)],
            ..Route::default()
        };
        let mut routes = Vec::new();
        if let Some((split_key, split)) = self.active_split(apex) {
            let name = format!("{}/{}", split_key.0, split_key.1);
            let backends: Vec<Backend> = split
                .spec
                .backends
                .iter()
                .filter(|b| {
                    self.services
                        .contains_key(&(apex.0.clone(), b.service.clone()))
                })
                .map(|b| self.backend(&(apex.0.clone(), b.service.clone()), port, b.weight))
                .collect();
            match &split.spec.matches {
                _ if backends.is_empty() => {}
                None => routes.push(Route {
                    name,
                    backends,
                    source: Some(split_source(split_key)),
                    ..Route::default()
                }),
                Some(refs) => {
                    let matches: Vec<RouteMatch> = refs
                        .iter()
                        .filter_map(|m| self.route_groups.get(&(apex.0.clone(), m.name.clone())))
                        .flat_map(|g| route_matches(&g.resource))
                        .collect();
                    // A split whose route groups are all missing matches nothing.
                    if !matches.is_empty() {
                        routes.push(Route {
                            name,
                            matches,
                            backends,
                            source: Some(split_source(split_key)),
                            ..Route::default()
                        });
                    }
                }
            }
        }
        if routes.is_empty() || routes.iter().all(|r| !r.matches.is_empty()) {
            routes.push(default_route());
        }
        routes
    }

    pub(crate) fn backend(&self, svc: &NsName, port: u16, weight: u32) -> Backend {
        Backend {
            unresolved: None,
            service: ServiceRef {
                namespace: svc.0.clone(),
                name: svc.1.clone(),
            },
            weight,
            endpoints: self.endpoints(svc, port),
        }
    }

    /// The TrafficSplit in force for an apex service: the oldest one naming
    /// it (others are conflicts, reported in their status).
    pub(crate) fn active_split(&self, apex: &NsName) -> Option<(&NsName, &TrafficSplit)> {
        self.splits
            .iter()
            .filter(|((ns, _), s)| {
                *ns == apex.0 && service_name(&s.resource.spec.service) == apex.1
            })
            .min_by(oldest)
            .map(|(k, s)| (k, &s.resource))
    }

    /// The RetryPolicy in force for a service: the oldest one targeting it.
    pub(crate) fn active_retry(&self, svc: &NsName) -> Option<(&NsName, &RetryPolicy)> {
        self.retry_policies
            .iter()
            .filter(|((ns, _), p)| {
                let t = &p.resource.spec.target_ref;
                *ns == svc.0 && t.kind == ServiceKind::Service && t.name == svc.1
            })
            .min_by(oldest)
            .map(|(k, p)| (k, &p.resource))
    }

    /// How traffic to a service port is treated: opaque when the Service
    /// (or else its namespace) lists the port as opaque, otherwise by the
    /// port's `appProtocol`, otherwise detected.
    fn protocol(&self, svc: &NsName, sp: &ServicePortInfo) -> Protocol {
        let opaque = self.services[svc]
            .opaque_ports
            .as_deref()
            .or_else(|| self.namespaces.get(&svc.0)?.opaque_ports.as_deref());
        if opaque.is_some_and(|list| port_listed(list, sp.port)) {
            return Protocol::Opaque;
        }
        match sp.app_protocol.as_deref() {
            Some("http") | Some("kubernetes.io/ws") => Protocol::Http1,
            Some("kubernetes.io/h2c") | Some("http2") => Protocol::Http2,
            Some("grpc") => Protocol::Grpc,
            Some("tcp") | Some("mysql") | Some("postgresql") | Some("redis") => Protocol::Opaque,
            _ => Protocol::Detect,
        }
    }

    /// A service port's endpoints: from its EndpointSlices (ready ones; the
    /// serving terminating ones only when none is ready, as kube-proxy
    /// does), or, in directory mode without slices, from the Pods its
    /// selector picks.
    pub(crate) fn endpoints(&self, svc: &NsName, port: u16) -> Vec<Endpoint> {
        let Some(sp) = self
            .services
            .get(svc)
            .and_then(|s| s.ports.iter().find(|p| p.port == port))
        else {
            return vec![];
        };
        let mut eps = match self.slices_by_service.get(svc) {
            Some(slices) => {
                let (mut ready, mut terminating) = (Vec::new(), Vec::new());
                for name in slices {
                    let slice = &self.slices[&(svc.0.clone(), name.clone())];
                    let Some(&(_, target)) = slice.ports.iter().find(|(n, _)| *n == sp.name) else {
                        continue;
                    };
                    for e in &slice.endpoints {
                        let into = if e.ready {
                            &mut ready
                        } else if e.serving && e.terminating {
                            &mut terminating
                        } else {
                            continue;
                        };
                        for ip in &e.addresses {
                            into.push(self.endpoint(
                                &svc.0,
                                *ip,
                                target,
                                e.pod.as_deref(),
                                e.zone.clone(),
                            ));
                        }
                    }
                }
                if ready.is_empty() { terminating } else { ready }
            }
            None => self.endpoints_from_pods(svc, sp),
        };
        eps.sort_by_key(|e| e.address);
        eps.dedup_by(|a, b| a.address == b.address);
        eps
    }

    fn endpoints_from_pods(&self, svc: &NsName, sp: &ServicePortInfo) -> Vec<Endpoint> {
        let selector = match &self.services[svc].selector {
            Some(s) if self.config.derive_endpoints_from_pods && !s.is_empty() => s,
            _ => return vec![],
        };
        self.pods
            .range((svc.0.clone(), String::new())..)
            .take_while(|((ns, _), _)| *ns == svc.0)
            .filter(|(_, p)| p.ready && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
            .filter_map(|((ns, name), p)| {
                let port = match &sp.target_port {
                    TargetPort::Number(n) => *n,
                    TargetPort::Name(n) => p.named_ports.iter().find(|(pn, _)| pn == n)?.1,
                };
                let ip = *p.ips.first()?;
                Some(self.endpoint(ns, ip, port, Some(name), None))
            })
            .collect()
    }

    fn endpoint(
        &self,
        ns: &str,
        ip: IpAddr,
        port: u16,
        pod: Option<&str>,
        zone: Option<String>,
    ) -> Endpoint {
        let info = pod.and_then(|p| self.pods.get(&(ns.to_string(), p.to_string())));
        let meshed = info.is_some_and(|p| p.meshed);
        let opaque = info
            .and_then(|p| p.opaque_ports.as_deref())
            .or_else(|| self.namespaces.get(ns)?.opaque_ports.as_deref())
            .is_some_and(|list| port_listed(list, port));
        Endpoint {
            address: SocketAddr::new(ip, port),
            meshed,
            identity: info
                .filter(|p| p.meshed)
                .map(|p| self.spiffe_id(ns, &p.service_account)),
            protocol: if opaque {
                Protocol::Opaque
            } else {
                Protocol::Detect
            },
            zone,
            pod: pod.map(|p| format!("{ns}/{p}")),
        }
    }

    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`
    pub fn spiffe_id(&self, ns: &str, sa: &str) -> String {
        format!("spiffe://{}/ns/{ns}/sa/{sa}", self.config.trust_domain)
    }
}

/// Orders objects by age, then by namespace/name: of several objects
/// claiming the same thing, the first is the one in force.
pub(crate) fn oldest<T>(
    (ka, a): &(&NsName, &Aged<T>),
    (kb, b): &(&NsName, &Aged<T>),
) -> std::cmp::Ordering {
    (a.created, *ka).cmp(&(b.created, *kb))
}

fn split_source((namespace, name): &NsName) -> RouteSource {
    RouteSource {
        kind: "TrafficSplit".to_string(),
        namespace: namespace.clone(),
        name: name.clone(),
    }
}

/// A TrafficSplit's `spec.service` may be a name or a DNS name.
pub(crate) fn service_name(s: &str) -> &str {
    s.split('.').next().unwrap_or(s)
}

fn port_listed(list: &str, port: u16) -> bool {
    parse_port_list(list).is_ok_and(|ranges| ranges.iter().any(|r| r.contains(port)))
}

/// An HTTPRouteGroup's matches as route matches. `*` among the methods
/// means any; each header map's entries must all match.
pub(crate) fn route_matches(group: &HTTPRouteGroup) -> Vec<RouteMatch> {
    group
        .spec
        .matches
        .iter()
        .map(|m| {
            let methods = m
                .methods
                .iter()
                .flatten()
                .map(|m| m.name())
                .collect::<Option<Vec<_>>>();
            RouteMatch {
                path_regex: m.path_regex.clone().filter(|r| !r.is_empty()),
                methods: methods
                    .unwrap_or_default()
                    .into_iter()
                    .map(String::from)
                    .collect(),
                headers: m
                    .headers
                    .iter()
                    .flatten()
                    .flat_map(|h| h.iter())
                    .map(|(name, value)| HeaderMatch {
                        name: name.to_ascii_lowercase(),
                        value_regex: value.clone(),
                    })
                    .collect(),
                ..RouteMatch::default()
            }
        })
        .collect()
}
