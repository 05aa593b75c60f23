//! Where an outbound request or connection goes, from the destination's
//! config, in the order a request meets them: [`route`] (which route
//! matches the request) -> [`filter`] (what the route changes or answers
//! itself) and [`mirror`] (copies sent elsewhere) -> [`split`] (which backend, by weight) ->
//! [`attempt`] (each try, under the [`retry`] policy and its timeouts, with
//! the body kept for [`replay`]) -> [`balance`] (which endpoint of the
//! backend, picked afresh for every try) -> [`crate::upstream`].
//!
//! A [`DestinationConfig`] is compiled once when the config arrives (regexes
//! built, backends without endpoints set aside) and read without locks by
//! every request.

pub mod attempt;
pub mod balance;
pub mod filter;
pub mod mirror;
pub mod peek;
pub mod replay;
pub mod retry;
pub mod route;
pub mod split;

use std::sync::Arc;

use http::Request;
use weft_proto::model::{self, Destination, Protocol};

use crate::metrics::{BackendRef, Metrics, SplitLabels, Value};
use crate::upstream::endpoint::{EndpointRegistry, EndpointState, InFlight};
use balance::Endpoints;
use retry::{Budgets, CompiledRetry};
pub use route::CompiledRoute;
use split::Split;

/// What the data path keeps across config versions, so that a new version
/// does not forget it: each endpoint's state (latency, load, failure
/// accrual) and each RetryPolicy's budget; and the namespace of the pod
/// the proxy serves, which picks its consumer routes.
#[derive(Debug, Default)]
pub struct State {
    pub endpoints: EndpointRegistry,
    pub budgets: Budgets,
    pub namespace: Option<String>,
}

impl State {
    pub fn new(endpoints: EndpointRegistry) -> Self {
        Self {
            endpoints,
            budgets: Budgets::default(),
            namespace: None,
        }
    }

    pub fn in_namespace(mut self, namespace: Option<&str>) -> Self {
        self.namespace = namespace.map(str::to_string);
        self
    }
}

/// A destination's config, ready for the data path.
#[derive(Debug)]
pub struct DestinationConfig {
    pub model: Destination,
    pub routes: Vec<CompiledRoute>,
    /// Retries for this service's clients, if a RetryPolicy targets it.
    pub retry: Option<CompiledRetry>,
    /// The service as metric labels.
    pub dst_namespace: Arc<str>,
    pub dst_service: Arc<str>,
}

/// Where one request or connection is sent.
#[derive(Debug)]
pub struct Pick<'a> {
    pub route: &'a CompiledRoute,
    pub backend: &'a split::Backend,
    pub endpoint: &'a model::Endpoint,
    pub state: &'a Arc<EndpointState>,
    /// For a meshed endpoint, the identity to expect of it.
    pub identity: Option<&'a Arc<weft_proto::spiffe::SpiffeId>>,
    /// This request probes an ejected endpoint.
    pub probe: bool,
}

impl Pick<'_> {
    /// Marks the request in flight to the endpoint (for load and failure
    /// accrual) until the guard is dropped.
    pub fn start(&self) -> InFlight {
        let mut f = self.state.start(tokio::time::Instant::now());
        f.probe = self.probe;
        f
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoEndpoint {
    #[error("no route of {service} matches the request")]
    NoRoute { service: String },
    #[error("{service} has no ready endpoints")]
    NoEndpoints { service: String },
    /// A Gateway API rule without backends, or a share of requests whose
    /// backend reference is invalid: the spec's 500.
    #[error("route {route} of {service}: {reason}")]
    Unresolved {
        service: String,
        route: String,
        reason: String,
    },
}

impl DestinationConfig {
    /// Compiles a destination; an invalid one is an error (the proxy NACKs
    /// it and keeps what it had).
    pub fn compile(model: Destination, state: &State) -> Result<Self, String> {
        let namespace = state.namespace.as_deref();
        let consumer = route::has_consumer_routes(&model.routes, namespace);
        let routes = model
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| route::serves(r, namespace, consumer))
            .map(|(i, r)| {
                CompiledRoute::compile(r, &model.service, model.port, state)
                    .map_err(|e| format!("routes[{i}]: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let retry = model
            .retry
            .clone()
            .map(|p| CompiledRetry::compile(p, &state.budgets))
            .transpose()
            .map_err(|e| format!("retry: {e}"))?;
        Ok(Self {
            retry,
            dst_namespace: Arc::from(model.service.namespace.as_str()),
            dst_service: Arc::from(model.service.name.as_str()),
            routes,
            model,
        })
    }

    /// Counts a request or connection sent to a split's backend
    /// (`split_backend_requests_total`).
    pub fn record_split(&self, metrics: &Metrics, pick: &Pick<'_>) {
        metrics
            .split_backend_requests
            .get_or_create(&SplitLabels {
                dst_namespace: Value(self.dst_namespace.clone()),
                dst_service: Value(self.dst_service.clone()),
                route: Value(pick.route.name.clone()),
                backend: Value(pick.backend.service.clone()),
            })
            .inc();
    }

    pub fn is_opaque(&self) -> bool {
        self.model.protocol == Protocol::Opaque
    }

    /// The first route that takes an HTTP request.
    pub fn route_for<B>(&self, req: &Request<B>) -> Result<&CompiledRoute, NoEndpoint> {
        self.routes
            .iter()
            .find(|r| r.matches(req))
            .ok_or_else(|| NoEndpoint::NoRoute {
                service: self.model.service.to_string(),
            })
    }

    /// Picks the endpoint for an HTTP request: first matching route, then a
    /// backend by weight, then an endpoint.
    pub fn pick_for_request<B>(&self, req: &Request<B>) -> Result<Pick<'_>, NoEndpoint> {
        self.pick_in(self.route_for(req)?)
    }

    /// Picks the endpoint for a TCP connection: the route for every
    /// request (the last, catch-all one), by weight, per connection.
    pub fn pick_for_connection(&self) -> Result<Pick<'_>, NoEndpoint> {
        let route = self
            .routes
            .iter()
            .find(|r| r.matches_everything())
            .or(self.routes.last())
            .ok_or_else(|| NoEndpoint::NoRoute {
                service: self.model.service.to_string(),
            })?;
        self.pick_in(route)
    }

    /// Picks a backend of `route` by weight, then one of its endpoints.
    pub fn pick_in<'a>(&'a self, route: &'a CompiledRoute) -> Result<Pick<'a>, NoEndpoint> {
        let no_endpoints = || NoEndpoint::NoEndpoints {
            service: self.model.service.to_string(),
        };
        let unresolved = |reason: &str| NoEndpoint::Unresolved {
            service: self.model.service.to_string(),
            route: route.name.to_string(),
            reason: reason.to_string(),
        };
        if route.split.backends().is_empty() {
            return Err(unresolved("the rule has no backends"));
        }
        if route.gateway && route.split.weightless() {
            return Err(unresolved("every backend of the rule weighs 0"));
        }
        let now = tokio::time::Instant::now();
        let backend = route
            .split
            .pick(fastrand::u32(..), now)
            .ok_or_else(no_endpoints)?;
        if let Some(reason) = &backend.unresolved {
            return Err(unresolved(reason));
        }
        let chosen = backend.endpoints.pick(now).ok_or_else(no_endpoints)?;
        Ok(Pick {
            route,
            backend,
            endpoint: chosen.endpoint,
            state: chosen.state,
            identity: chosen.identity,
            probe: chosen.probe,
        })
    }
}

/// An endpoint at 198.18.0.`i + 2`:80, for tests.
#[cfg(test)]
pub(crate) fn test_endpoint(i: usize) -> model::Endpoint {
    model::Endpoint {
        address: format!("198.18.0.{}:80", i + 2).parse().unwrap(),
        meshed: false,
        identity: None,
        protocol: Protocol::Detect,
        zone: None,
        pod: None,
    }
}

/// Builds a route's split from its backends.
fn split_of(backends: &[model::Backend], registry: &EndpointRegistry) -> Split {
    Split::new(
        backends
            .iter()
            .map(|b| split::Backend {
                service: Arc::from(b.service.name.as_str()),
                labels: BackendRef::new(&b.service),
                weight: b.weight,
                endpoints: Endpoints::new(b.endpoints.clone(), registry),
                unresolved: b.unresolved.clone(),
            })
            .collect(),
    )
}
