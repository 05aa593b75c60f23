//! Where an outbound request or connection goes, from the destination's
//! config: [`route`] (which route matches the request) -> [`split`] (which
//! backend, by weight) -> [`balance`] (which endpoint of the backend).
//!
//! A [`DestinationConfig`] is compiled once when the config arrives (regexes
//! built, backends without endpoints set aside) and read without locks by
//! every request.

pub mod balance;
pub mod route;
pub mod split;

use std::sync::Arc;

use http::Request;
use weft_proto::model::{self, Destination, Protocol};

use balance::Endpoints;
pub use route::CompiledRoute;
use split::Split;

/// A destination's config, ready for the data path.
#[derive(Debug)]
pub struct DestinationConfig {
    pub model: Destination,
    pub routes: Vec<CompiledRoute>,
    /// The service as metric labels.
    pub dst_namespace: Arc<str>,
    pub dst_service: Arc<str>,
}

/// Where one request or connection is sent.
#[derive(Debug, Clone)]
pub struct Pick<'a> {
    pub route: &'a CompiledRoute,
    pub backend: &'a split::Backend,
    pub endpoint: &'a model::Endpoint,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoEndpoint {
    #[error("no route of {service} matches the request")]
    NoRoute { service: String },
    #[error("{service} has no ready endpoints")]
    NoEndpoints { service: String },
}

impl DestinationConfig {
    /// Compiles a destination; an invalid one is an error (the proxy NACKs
    /// it and keeps what it had).
    pub fn compile(model: Destination) -> Result<Self, String> {
        let routes = model
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| CompiledRoute::compile(r).map_err(|e| format!("routes[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            dst_namespace: Arc::from(model.service.namespace.as_str()),
            dst_service: Arc::from(model.service.name.as_str()),
            routes,
            model,
        })
    }

    pub fn is_opaque(&self) -> bool {
        self.model.protocol == Protocol::Opaque
    }

    /// Picks the endpoint for an HTTP request: first matching route, then a
    /// backend by weight, then an endpoint.
    pub fn pick_for_request<B>(&self, req: &Request<B>) -> Result<Pick<'_>, NoEndpoint> {
        let route =
            self.routes
                .iter()
                .find(|r| r.matches(req))
                .ok_or_else(|| NoEndpoint::NoRoute {
                    service: self.model.service.to_string(),
                })?;
        self.pick_in(route)
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

    fn pick_in<'a>(&'a self, route: &'a CompiledRoute) -> Result<Pick<'a>, NoEndpoint> {
        let no_endpoints = || NoEndpoint::NoEndpoints {
            service: self.model.service.to_string(),
        };
        let backend = route
            .split
            .pick(fastrand::u32(..))
            .ok_or_else(no_endpoints)?;
        let endpoint = backend.endpoints.next().ok_or_else(no_endpoints)?;
        Ok(Pick {
            route,
            backend,
            endpoint,
        })
    }
}

/// Builds a route's split from its backends.
fn split_of(backends: &[model::Backend]) -> Split {
    Split::new(
        backends
            .iter()
            .map(|b| split::Backend {
                service: Arc::from(b.service.name.as_str()),
                weight: b.weight,
                endpoints: Endpoints::new(b.endpoints.clone()),
            })
            .collect(),
    )
}
