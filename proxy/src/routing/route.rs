//! Route matching: a request takes the first route any of whose matches
//! accepts it (path regex, methods, headers, all anchored); a route without
//! matches takes every request.

use std::sync::Arc;

use http::{HeaderName, Method, Request};
use regex::Regex;
use weft_proto::model::{Route, RouteMatch};

use super::split::Split;
use super::split_of;
use crate::upstream::endpoint::EndpointRegistry;

#[derive(Debug)]
pub struct CompiledMatch {
    path: Option<Regex>,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, Regex)>,
}

#[derive(Debug)]
pub struct CompiledRoute {
    pub name: Arc<str>,
    matches: Vec<CompiledMatch>,
    pub split: Split,
}

/// SMI regexes match the whole value.
fn anchored(re: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{re})$"))
        .map_err(|e| format!("'{re}' is not a regular expression: {e}"))
}

impl CompiledMatch {
    fn compile(m: &RouteMatch) -> Result<Self, String> {
        Ok(Self {
            path: m.path_regex.as_deref().map(anchored).transpose()?,
            methods: m
                .methods
                .iter()
                .map(|s| {
                    Method::from_bytes(s.as_bytes()).map_err(|_| format!("'{s}' is not a method"))
                })
                .collect::<Result<_, _>>()?,
            headers: m
                .headers
                .iter()
                .map(|h| {
                    let name = HeaderName::from_bytes(h.name.as_bytes())
                        .map_err(|_| format!("'{}' is not a header name", h.name))?;
                    Ok((name, anchored(&h.value_regex)?))
                })
                .collect::<Result<_, String>>()?,
        })
    }

    fn accepts<B>(&self, req: &Request<B>) -> bool {
        self.path
            .as_ref()
            .is_none_or(|re| re.is_match(req.uri().path()))
            && (self.methods.is_empty() || self.methods.contains(req.method()))
            && self.headers.iter().all(|(name, re)| {
                req.headers()
                    .get_all(name)
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|v| re.is_match(v)))
            })
    }
}

impl CompiledRoute {
    pub fn compile(r: &Route, registry: &EndpointRegistry) -> Result<Self, String> {
        Ok(Self {
            name: Arc::from(r.name.as_str()),
            matches: r
                .matches
                .iter()
                .map(CompiledMatch::compile)
                .collect::<Result<_, _>>()?,
            split: split_of(&r.backends, registry),
        })
    }

    pub fn matches_everything(&self) -> bool {
        self.matches.is_empty()
    }

    pub fn matches<B>(&self, req: &Request<B>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.accepts(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::model::{HeaderMatch, ServiceRef};

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
                    endpoints: vec![],
                }],
            },
            &EndpointRegistry::default(),
        )
        .unwrap()
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
            path_regex: None,
            methods: vec!["POST".into()],
            headers: vec![HeaderMatch {
                name: "x-canary".into(),
                value_regex: "true|yes".into(),
            }],
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
                backends: vec![],
            },
            &EndpointRegistry::default(),
        )
        .unwrap_err();
        assert!(
            err.contains("'/(unclosed' is not a regular expression"),
            "{err}"
        );
    }
}
