//! Route matching: a request takes the first route any of whose matches
//! accepts it (path exact, by prefix or by regex; methods; headers; query
//! parameters; all anchored); a route without matches takes every request.
//! A route also carries what it does to the requests it takes: its
//! filters ([`super::filter`]), timeouts and retries.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, Request};
use regex::Regex;
use weft_proto::model::{self, Route, RouteMatch, ServiceRef};

use super::filter::Filters;
use super::mirror::Mirror;
use super::retry::CompiledRetry;
use super::split::Split;
use super::{State, split_of};
use crate::metrics::RouteRef;

#[derive(Debug)]
enum PathMatch {
    Any,
    Exact(String),
    /// By whole segments; stored without a trailing `/`.
    Prefix(String),
    Regex(Regex),
}

impl PathMatch {
    fn accepts(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            PathMatch::Regex(re) => re.is_match(path),
        }
    }
}

#[derive(Debug)]
pub struct CompiledMatch {
    path: PathMatch,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, Regex)>,
    query: Vec<(String, Regex)>,
}

#[derive(Debug)]
pub struct CompiledRoute {
    pub name: Arc<str>,
    matches: Vec<CompiledMatch>,
    pub split: Split,
    pub filters: Filters,
    /// RequestMirror filters: where copies of requests go.
    pub mirrors: Vec<Mirror>,
    /// The whole request, retries included.
    pub timeout: Option<Duration>,
    /// Each try.
    pub try_timeout: Option<Duration>,
    /// The route's own retries (a Gateway API rule's); `None`: the
    /// destination's.
    pub retry: Option<CompiledRetry>,
    /// A Gateway API route: all backends weighing 0 is a 500, not a
    /// fallback to any backend.
    pub gateway: bool,
    /// Its labels in Linkerd's route metrics.
    pub labels: RouteRef,
}

/// Whether a proxy in `namespace` uses `route` of a destination whose
/// routes include consumer routes for that namespace or not
/// ([`has_consumer_routes`]): consumer routes (a Gateway API route in the
/// client's namespace) replace every other route for their namespace's
/// clients.
pub fn serves(route: &Route, namespace: Option<&str>, has_consumer_routes: bool) -> bool {
    match &route.consumer_namespace {
        Some(ns) => Some(ns.as_str()) == namespace,
        None => !has_consumer_routes,
    }
}

/// Whether `routes` has consumer routes for clients in `namespace`.
pub fn has_consumer_routes(routes: &[Route], namespace: Option<&str>) -> bool {
    namespace.is_some_and(|ns| {
        routes
            .iter()
            .any(|r| r.consumer_namespace.as_deref() == Some(ns))
    })
}

/// SMI and Gateway API regexes match the whole value.
fn anchored(re: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{re})$"))
        .map_err(|e| format!("'{re}' is not a regular expression: {e}"))
}

fn value_matches(ms: &[weft_proto::model::HeaderMatch]) -> Result<Vec<(String, Regex)>, String> {
    ms.iter()
        .map(|h| Ok((h.name.clone(), anchored(&h.value_regex)?)))
        .collect()
}

impl CompiledMatch {
    fn compile(m: &RouteMatch) -> Result<Self, String> {
        let path = match (&m.path_exact, &m.path_prefix, &m.path_regex) {
            (Some(p), _, _) => PathMatch::Exact(p.clone()),
            (None, Some(p), _) if p.trim_end_matches('/').is_empty() => PathMatch::Any,
            (None, Some(p), _) => PathMatch::Prefix(p.trim_end_matches('/').to_string()),
            (None, None, Some(re)) => PathMatch::Regex(anchored(re)?),
            (None, None, None) => PathMatch::Any,
        };
        Ok(Self {
            path,
            methods: m
                .methods
                .iter()
                .map(|s| {
                    Method::from_bytes(s.as_bytes()).map_err(|_| format!("'{s}' is not a method"))
                })
                .collect::<Result<_, _>>()?,
            headers: value_matches(&m.headers)?
                .into_iter()
                .map(|(name, re)| {
                    let name = HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("'{name}' is not a header name"))?;
                    Ok((name, re))
                })
                .collect::<Result<_, String>>()?,
            query: value_matches(&m.query)?,
        })
    }

    fn accepts<B>(&self, req: &Request<B>) -> bool {
        self.path.accepts(req.uri().path())
            && (self.methods.is_empty() || self.methods.contains(req.method()))
            && self.headers.iter().all(|(name, re)| {
                req.headers()
                    .get_all(name)
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|v| re.is_match(v)))
            })
            && (self.query.is_empty() || self.query_accepts(req.uri().query().unwrap_or("")))
    }

    /// Each parameter's first value must match (the Gateway API's rule for
    /// repeated parameters).
    fn query_accepts(&self, query: &str) -> bool {
        self.query.iter().all(|(name, re)| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == name)
                .is_some_and(|(_, v)| re.is_match(&v))
        })
    }

    /// The path prefix this match takes, for `ReplacePrefixMatch`.
    pub fn prefix(&self) -> Option<&str> {
        match &self.path {
            PathMatch::Prefix(p) => Some(p),
            PathMatch::Any => Some(""),
            _ => None,
        }
    }
}

impl CompiledRoute {
    /// Compiles `r`, a route of the destination `parent:port`.
    pub fn compile(
        r: &Route,
        parent: &ServiceRef,
        port: u16,
        state: &State,
    ) -> Result<Self, String> {
        let matches: Vec<CompiledMatch> = r
            .matches
            .iter()
            .map(CompiledMatch::compile)
            .collect::<Result<_, _>>()?;
        let prefix = matches.first().and_then(|m| m.prefix()).map(str::to_string);
        Ok(Self {
            name: Arc::from(r.name.as_str()),
            split: split_of(&r.backends, &state.endpoints),
            filters: Filters::compile(&r.filters, prefix).map_err(|e| format!("filters: {e}"))?,
            mirrors: r
                .filters
                .iter()
                .filter_map(|f| match f {
                    model::Filter::Mirror(m) => Some(Mirror::compile(m, &state.endpoints)),
                    _ => None,
                })
                .collect(),
            timeout: r.timeout,
            try_timeout: r.try_timeout,
            retry: r
                .retry
                .clone()
                .map(|p| CompiledRetry::compile(p, &state.budgets))
                .transpose()
                .map_err(|e| format!("retry: {e}"))?,
            gateway: r.source.as_ref().is_some_and(|s| s.kind.ends_with("Route")),
            labels: RouteRef::new(parent, port, r),
            matches,
        })
    }

    pub fn matches_everything(&self) -> bool {
        self.matches.is_empty() || self.matches.iter().all(|m| m.is_everything())
    }

    pub fn matches<B>(&self, req: &Request<B>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.accepts(req))
    }
}

impl CompiledMatch {
    fn is_everything(&self) -> bool {
        matches!(self.path, PathMatch::Any)
            && self.methods.is_empty()
            && self.headers.is_empty()
            && self.query.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::model::HeaderMatch;

    fn route(matches: Vec<RouteMatch>) -> CompiledRoute {
        CompiledRoute::compile(
            &Route {
                name: "r".into(),
                matches,
                backends: vec![weft_proto::model::Backend {
                    service: ServiceRef {
                        namespace: "shop".into(),
                        name: "web".into(),
                    },
                    weight: 1,
                    ..Default::default()
                }],
                ..Default::default()
            },
            &parent(),
            80,
            &State::default(),
        )
        .unwrap()
    }

    fn parent() -> ServiceRef {
        ServiceRef {
            namespace: "shop".into(),
            name: "web".into(),
        }
    }

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn path_regex_is_anchored() {
        let r = route(vec![RouteMatch {
            path_regex: Some("/api/.*".into()),
            ..RouteMatch::default()
        }]);
        assert!(r.matches(&req("GET", "/api/users", &[])));
        assert!(!r.matches(&req("GET", "/v2/api/users", &[])));
    }

    #[test]
    fn methods_and_headers_must_all_hold_within_a_match() {
        let r = route(vec![RouteMatch {
            methods: vec!["POST".into()],
            headers: vec![HeaderMatch {
                name: "x-canary".into(),
                value_regex: "true|yes".into(),
            }],
            ..RouteMatch::default()
        }]);
        assert!(r.matches(&req("POST", "/", &[("x-canary", "yes")])));
        assert!(!r.matches(&req("GET", "/", &[("x-canary", "yes")])));
        assert!(!r.matches(&req("POST", "/", &[("x-canary", "yesterday")])));
        assert!(!r.matches(&req("POST", "/", &[])));
    }

    #[test]
    fn any_match_selects_and_no_matches_means_everything() {
        let r = route(vec![
            RouteMatch {
                path_regex: Some("/a".into()),
                ..RouteMatch::default()
            },
            RouteMatch {
                path_regex: Some("/b".into()),
                ..RouteMatch::default()
            },
        ]);
        assert!(r.matches(&req("GET", "/b", &[])));
        assert!(!r.matches(&req("GET", "/c", &[])));
        assert!(route(vec![]).matches(&req("DELETE", "/anything", &[])));
    }

    #[test]
    fn invalid_regex_fails_compilation() {
        let err = CompiledRoute::compile(
            &Route {
                name: "r".into(),
                matches: vec![RouteMatch {
                    path_regex: Some("/(unclosed".into()),
                    ..RouteMatch::default()
                }],
                ..Default::default()
            },
            &parent(),
            80,
            &State::default(),
        )
        .unwrap_err();
        assert!(
            err.contains("'/(unclosed' is not a regular expression"),
            "{err}"
        );
    }
}
