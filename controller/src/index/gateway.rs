//! Gateway API routes (the GAMMA mesh profile) as a destination's routes:
//! every HTTPRoute and GRPCRoute whose parentRef names the Service (and
//! its port, if it names one). Each (rule, match) becomes one proxy route,
//! ordered by the spec's precedence, so the proxy's "first route that
//! matches" is the spec's "most specific match wins":
//!
//! 1. an exact path before a prefix, a longer prefix before a shorter one
//!    (regexes, whose order the spec leaves open, after prefixes, longer
//!    first);
//! 2. a method match before none;
//! 3. more header matches, then more query parameter matches, first;
//! 4. ties: the older route, then by namespace/name; then rule order, then
//!    match order within the rule.
//!
//! A route in the Service's namespace is a producer route (every client);
//! in another namespace, a consumer route (only that namespace's clients,
//! who then use no producer route). The proxy picks by its own namespace.
//!
//! What cannot be applied is reported ([`RouteProblem`]) and left out: a
//! rule with an invalid regex or an unsupported filter is dropped, an
//! invalid backend reference answers its share of requests with 500, and
//! the Service's other traffic is untouched.

use std::cmp::Reverse;

use weft_proto::model::{
    Backend, Filter, Header, HeaderMatch, HeaderModifier, Mirror, PathModifier, Redirect, Rewrite,
    Route, RouteMatch, RouteSource, ServiceRef,
};
use weft_proto::{duration, model};

use super::objects::Aged;
use super::problems::Problem;
use super::{Index, Kind, NsName};
use crate::crd::gateway::{
    BackendRef, GRPCRouteMatch, HTTPRouteFilter, HTTPRouteMatch, ParentRef, PathMatch, ValueMatch,
};

/// The spec's `Accepted` and `ResolvedRefs` condition types.
pub const ACCEPTED: &str = "Accepted";
pub const RESOLVED_REFS: &str = "ResolvedRefs";

/// One rule of either route kind, as far as translation needs.
struct Rule<'a> {
    name: String,
    matches: Vec<RouteMatch>,
    filters: &'a [HTTPRouteFilter],
    backends: &'a [BackendRef],
    timeouts: Option<&'a crate::crd::gateway::Timeouts>,
    retry: Option<&'a crate::crd::gateway::Retry>,
}

/// A route attached to a Service: its kind, key and rules.
struct Attached<'a> {
    kind: Kind,
    key: &'a NsName,
    created: Option<k8s_openapi::jiff::Timestamp>,
    rules: Vec<Rule<'a>>,
}

/// The precedence of one match (smaller sorts first).
type Precedence = (u8, Reverse<usize>, bool, Reverse<usize>, Reverse<usize>);

fn precedence(m: &RouteMatch) -> Precedence {
    let (rank, len) = match (&m.path_exact, &m.path_prefix, &m.path_regex) {
        (Some(p), _, _) => (0, p.len()),
        (None, Some(p), _) => (1, p.len()),
        (None, None, Some(r)) => (2, r.len()),
        (None, None, None) => (1, 1),
    };
    (
        rank,
        Reverse(len),
        m.methods.is_empty(),
        Reverse(m.headers.len()),
        Reverse(m.query.len()),
    )
}

impl Index {
    /// Whether a producer route (in the Service's namespace) attaches to
    /// any port of the Service: then no TrafficSplit applies to it.
    pub(crate) fn has_producer_routes(&self, apex: &NsName) -> bool {
        let names = |ns: &str, parents: &[ParentRef]| {
            ns == apex.0
                && parents
                    .iter()
                    .any(|p| p.is_service() && p.namespace_or(ns) == apex.0 && p.name == apex.1)
        };
        self.http_routes
            .iter()
            .any(|((ns, _), r)| names(ns, &r.resource.spec.parent_refs))
            || self
                .grpc_routes
                .iter()
                .any(|((ns, _), r)| names(ns, &r.resource.spec.parent_refs))
    }

    /// The Gateway API routes of a Service port, in precedence order.
    pub(crate) fn gateway_routes(&self, apex: &NsName, port: u16) -> Vec<Route> {
        let mut ordered: Vec<(Precedence, _, usize, usize, Route)> = Vec::new();
        for a in self.attached(apex, port) {
            for (i, rule) in a.rules.iter().enumerate() {
                let Ok(base) = self.rule_route(&a, rule, apex, port) else {
                    continue;
                };
                for (j, m) in rule.matches.iter().enumerate() {
                    let mut route = base.clone();
                    route.matches = vec![m.clone()];
                    ordered.push((precedence(m), (a.created, a.key.clone()), i, j, route));
                }
            }
        }
        ordered.sort_by(|x, y| (&x.0, &x.1, x.2, x.3).cmp(&(&y.0, &y.1, y.2, y.3)));
        ordered.into_iter().map(|(.., r)| r).collect()
    }

    /// Routes attached to a Service port.
    fn attached(&self, apex: &NsName, port: u16) -> Vec<Attached<'_>> {
        let names = |ns: &str, parents: &[ParentRef]| {
            parents.iter().any(|p| {
                p.is_service()
                    && p.namespace_or(ns) == apex.0
                    && p.name == apex.1
                    && p.port.is_none_or(|p| p == port)
            })
        };
        let mut out = Vec::new();
        for (key, r) in &self.http_routes {
            if names(&key.0, &r.resource.spec.parent_refs) {
                out.push(Attached {
                    kind: Kind::HTTPRoute,
                    key,
                    created: r.created,
                    rules: http_rules(r),
                });
            }
        }
        for (key, r) in &self.grpc_routes {
            if names(&key.0, &r.resource.spec.parent_refs) {
                out.push(Attached {
                    kind: Kind::GRPCRoute,
                    key,
                    created: r.created,
                    rules: grpc_rules(r),
                });
            }
        }
        out
    }

    /// A rule as a proxy route (without its matches); an error when the
    /// rule cannot be applied.
    fn rule_route(
        &self,
        a: &Attached<'_>,
        rule: &Rule<'_>,
        apex: &NsName,
        port: u16,
    ) -> Result<Route, Vec<Problem>> {
        let mut problems = Vec::new();
        for m in &rule.matches {
            for re in m
                .path_regex
                .iter()
                .chain(m.headers.iter().map(|h| &h.value_regex))
                .chain(m.query.iter().map(|q| &q.value_regex))
            {
                if let Err(e) = regex::Regex::new(re) {
                    problems.push(Problem::route(
                        ACCEPTED,
                        "UnsupportedValue",
                        format!(
                            "rule {}: '{re}' is not a regular expression: {e}",
                            rule.name
                        ),
                    ));
                }
            }
        }
        let mirror = |b: &BackendRef| self.backend_of(a.key, b, port).0;
        let filters = translate_filters(rule, &mirror, &mut problems);
        let timeouts = rule.timeouts.cloned().unwrap_or_default();
        let mut timeout = |field: &str, v: &Option<String>| match v.as_deref().map(duration::parse)
        {
            // "0s" turns a timeout off.
            Some(Ok(d)) if !d.is_zero() => Some(d),
            Some(Err(e)) => {
                problems.push(Problem::route(
                    ACCEPTED,
                    "UnsupportedValue",
                    format!("rule {}: timeouts.{field}: {e}", rule.name),
                ));
                None
            }
            _ => None,
        };
        let request_timeout = timeout("request", &timeouts.request);
        let try_timeout = timeout("backendRequest", &timeouts.backend_request);
        let retry = self.rule_retry(a, rule, &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        let backends = rule
            .backends
            .iter()
            .map(|b| self.backend_of(a.key, b, port).0)
            .collect();
        Ok(Route {
            name: format!("{}/{}/{}", a.key.0, a.key.1, rule.name),
            matches: vec![],
            backends,
            consumer_namespace: (a.key.0 != apex.0).then(|| a.key.0.clone()),
            filters,
            timeout: request_timeout,
            try_timeout,
            retry,
            source: Some(RouteSource {
                kind: a.kind.as_str().to_string(),
                namespace: a.key.0.clone(),
                name: a.key.1.clone(),
            }),
        })
    }

    /// The rule's retries: its own `retry`, on top of a RetryPolicy that
    /// targets the route (the route's fields win; the policy adds budget,
    /// backoff shape and timeouts the route cannot say).
    fn rule_retry(
        &self,
        a: &Attached<'_>,
        rule: &Rule<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<model::RetryPolicy> {
        let policy = self
            .route_retry_policy(a.kind, a.key)
            .and_then(|(key, rp)| rp.spec.resolve(format!("{}/{}", key.0, key.1)).ok());
        let Some(r) = rule.retry else {
            return policy;
        };
        let mut p = policy.unwrap_or_else(|| model::RetryPolicy {
            name: format!("{}/{}/{}", a.key.0, a.key.1, rule.name),
            retry_on: crate::crd::retry::DEFAULT_RETRY_ON
                .iter()
                .map(|s| s.to_string())
                .collect(),
            max_retries: 1,
            policy: model::Backoff::Constant,
            duration: std::time::Duration::ZERO,
            max_interval: None,
            per_try_timeout: None,
            timeout: None,
            budget: model::RetryBudget::default(),
            retry_non_idempotent: false,
        });
        if !r.codes.is_empty() {
            p.retry_on = r.codes.iter().map(u16::to_string).collect();
        }
        if let Some(n) = r.attempts {
            p.max_retries = n.min(i32::MAX as u32) as i32;
        }
        match r.backoff.as_deref().map(duration::parse) {
            Some(Ok(d)) => p.duration = d,
            Some(Err(e)) => problems.push(Problem::route(
                ACCEPTED,
                "UnsupportedValue",
                format!("rule {}: retry.backoff: {e}", rule.name),
            )),
            None => {}
        }
        Some(p)
    }

    /// The RetryPolicy targeting a route: the oldest one.
    fn route_retry_policy(
        &self,
        kind: Kind,
        route: &NsName,
    ) -> Option<(&NsName, &crate::crd::RetryPolicy)> {
        self.retry_policies
            .iter()
            .filter(|((ns, _), p)| {
                let t = &p.resource.spec.target_ref;
                *ns == route.0 && t.name == route.1 && t.kind.as_str() == kind.as_str()
            })
            .min_by(super::destination::oldest)
            .map(|(k, p)| (k, &p.resource))
    }

    /// A backendRef as a backend; an invalid one is still a backend (its
    /// share answered 500), with the problem.
    fn backend_of(
        &self,
        route: &NsName,
        b: &BackendRef,
        parent_port: u16,
    ) -> (Backend, Option<Problem>) {
        let ns = b.namespace.clone().unwrap_or_else(|| route.0.clone());
        let svc = (ns, b.name.clone());
        let port = b.port.unwrap_or(parent_port);
        let weight = b.weight.unwrap_or(1);
        let invalid = |reason: &'static str, message: String| {
            (
                Backend {
                    service: ServiceRef {
                        namespace: svc.0.clone(),
                        name: svc.1.clone(),
                    },
                    weight,
                    endpoints: vec![],
                    unresolved: Some(message.clone()),
                },
                Some(Problem::route(RESOLVED_REFS, reason, message)),
            )
        };
        if !b.is_service() {
            return invalid(
                "InvalidKind",
                format!("backendRef {}: only Services are supported", b.name),
            );
        }
        if svc.0 != route.0 && !self.granted(route, &svc) {
            return invalid(
                "RefNotPermitted",
                format!(
                    "backendRef {}/{}: no ReferenceGrant in {} lets routes of {} refer to it",
                    svc.0, svc.1, svc.0, route.0
                ),
            );
        }
        match self.services.get(&svc) {
            None => invalid(
                "BackendNotFound",
                format!("backendRef {}/{}: the Service does not exist", svc.0, svc.1),
            ),
            // Port 0: no port to check (a backendRef without one, checked
            // for every parent at once).
            Some(info) if port != 0 && !info.ports.iter().any(|p| p.port == port) => invalid(
                "BackendNotFound",
                format!(
                    "backendRef {}/{}: the Service has no port {port}",
                    svc.0, svc.1
                ),
            ),
            Some(_) => (self.backend(&svc, port, weight), None),
        }
    }

    /// Whether a ReferenceGrant in the backend's namespace lets HTTPRoutes
    /// or GRPCRoutes of `route`'s namespace refer to the Service.
    fn granted(&self, route: &NsName, svc: &NsName) -> bool {
        self.grants
            .iter()
            .filter(|((ns, _), _)| *ns == svc.0)
            .any(|(_, g)| {
                let spec = &g.resource.spec;
                spec.from.iter().any(|f| {
                    f.group == "gateway.networking.k8s.io"
                        && (f.kind == "HTTPRoute" || f.kind == "GRPCRoute")
                        && f.namespace == route.0
                }) && spec.to.iter().any(|t| {
                    t.group.is_empty()
                        && t.kind == "Service"
                        && t.name.as_ref().is_none_or(|n| *n == svc.1)
                })
            })
    }

    /// What is wrong with each Gateway API route: per Service parent, the
    /// parent (`Accepted`); for all parents, its rules (`Accepted`) and
    /// backend references (`ResolvedRefs`).
    pub(crate) fn gateway_route_problems(&self) -> Vec<(Kind, &NsName, Vec<Problem>)> {
        let mut out = Vec::new();
        let routes = self
            .http_routes
            .iter()
            .map(|(k, r)| {
                (
                    Kind::HTTPRoute,
                    k,
                    &r.resource.spec.parent_refs,
                    http_rules(r),
                )
            })
            .chain(self.grpc_routes.iter().map(|(k, r)| {
                (
                    Kind::GRPCRoute,
                    k,
                    &r.resource.spec.parent_refs,
                    grpc_rules(r),
                )
            }));
        for (kind, key, parents, rules) in routes {
            let mut ps: Vec<Problem> = parents
                .iter()
                .filter(|p| p.is_service())
                .map(|p| Problem::parent_listed(p.clone()))
                .collect();
            for p in parents.iter().filter(|p| p.is_service()) {
                let svc = (p.namespace_or(&key.0).to_string(), p.name.clone());
                let reason = match self.services.get(&svc) {
                    None => Some(format!("Service {}/{} does not exist", svc.0, svc.1)),
                    Some(info) => p
                        .port
                        .filter(|port| !info.ports.iter().any(|sp| sp.port == *port))
                        .map(|port| format!("Service {}/{} has no port {port}", svc.0, svc.1)),
                };
                if let Some(message) = reason {
                    let mut problem = Problem::route(ACCEPTED, "NoMatchingParent", message);
                    problem.parent = Some(p.clone());
                    ps.push(problem);
                }
            }
            let a = Attached {
                kind,
                key,
                created: None,
                rules,
            };
            for rule in &a.rules {
                if let Err(errs) = self.rule_route(&a, rule, &(String::new(), String::new()), 0) {
                    ps.extend(errs);
                }
                let mirrors = rule
                    .filters
                    .iter()
                    .filter_map(|f| f.request_mirror.as_ref());
                for b in rule.backends.iter().chain(mirrors.map(|m| &m.backend_ref)) {
                    ps.extend(self.backend_of(key, b, 0).1);
                }
            }
            out.push((kind, key, ps));
        }
        out
    }
}

fn http_rules(r: &Aged<crate::crd::HTTPRoute>) -> Vec<Rule<'_>> {
    r.resource
        .spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| Rule {
            name: rule.name.clone().unwrap_or_else(|| i.to_string()),
            matches: match &rule.matches {
                None => vec![http_match(&HTTPRouteMatch::default())],
                Some(ms) if ms.is_empty() => vec![http_match(&HTTPRouteMatch::default())],
                Some(ms) => ms.iter().map(http_match).collect(),
            },
            filters: &rule.filters,
            backends: &rule.backend_refs,
            timeouts: rule.timeouts.as_ref(),
            retry: rule.retry.as_ref(),
        })
        .collect()
}

fn grpc_rules(r: &Aged<crate::crd::GRPCRoute>) -> Vec<Rule<'_>> {
    r.resource
        .spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| Rule {
            name: rule.name.clone().unwrap_or_else(|| i.to_string()),
            matches: if rule.matches.is_empty() {
                vec![grpc_match(&GRPCRouteMatch::default())]
            } else {
                rule.matches.iter().map(grpc_match).collect()
            },
            filters: &rule.filters,
            backends: &rule.backend_refs,
            timeouts: None,
            retry: None,
        })
        .collect()
}

fn value_match(v: &ValueMatch, lowercase_name: bool) -> HeaderMatch {
    let value_regex = match v.type_.as_deref() {
        Some("RegularExpression") => v.value.clone(),
        _ => regex::escape(&v.value),
    };
    HeaderMatch {
        name: if lowercase_name {
            v.name.to_ascii_lowercase()
        } else {
            v.name.clone()
        },
        value_regex,
    }
}

/// An HTTPRoute match; no path means the prefix `/`.
fn http_match(m: &HTTPRouteMatch) -> RouteMatch {
    let default = PathMatch::default();
    let path = m.path.as_ref().unwrap_or(&default);
    let value = path.value.clone().unwrap_or_else(|| "/".to_string());
    let mut out = RouteMatch {
        methods: m.method.iter().cloned().collect(),
        headers: m.headers.iter().map(|h| value_match(h, true)).collect(),
        query: m
            .query_params
            .iter()
            .map(|q| value_match(q, false))
            .collect(),
        ..RouteMatch::default()
    };
    match path.type_.as_deref() {
        Some("Exact") => out.path_exact = Some(value),
        Some("RegularExpression") => out.path_regex = Some(value),
        _ => out.path_prefix = Some(value),
    }
    out
}

/// A GRPCRoute match as a match on the request path `/<service>/<method>`
/// of a POST (every gRPC call is one).
fn grpc_match(m: &GRPCRouteMatch) -> RouteMatch {
    let mut out = RouteMatch {
        headers: m.headers.iter().map(|h| value_match(h, true)).collect(),
        methods: vec!["POST".to_string()],
        ..RouteMatch::default()
    };
    let Some(method) = &m.method else {
        out.path_prefix = Some("/".to_string());
        return out;
    };
    let regex = method.type_.as_deref() == Some("RegularExpression");
    match (method.service.as_deref(), method.method.as_deref(), regex) {
        (Some(s), Some(m), false) => out.path_exact = Some(format!("/{s}/{m}")),
        (Some(s), None, false) => out.path_prefix = Some(format!("/{s}")),
        (s, m, _) => {
            let part = |p: Option<&str>| match (p, regex) {
                (None, _) => "[^/]+".to_string(),
                (Some(p), true) => p.to_string(),
                (Some(p), false) => regex::escape(p),
            };
            out.path_regex = Some(format!("/{}/{}", part(s), part(m)));
        }
    }
    out
}

/// The rule's filters, as the proxy applies them, a RequestMirror's
/// backend resolved by `mirror`. Extension filters are not supported:
/// reported, and the rule dropped.
fn translate_filters(
    rule: &Rule<'_>,
    mirror: &dyn Fn(&BackendRef) -> Backend,
    problems: &mut Vec<Problem>,
) -> Vec<Filter> {
    let headers = |m: &crate::crd::gateway::HeaderModifier| HeaderModifier {
        set: m
            .set
            .iter()
            .map(|h| Header {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect(),
        add: m
            .add
            .iter()
            .map(|h| Header {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect(),
        remove: m.remove.clone(),
    };
    let path = |p: &Option<crate::crd::gateway::PathModifier>| {
        let p = p.as_ref()?;
        match p.type_.as_str() {
            "ReplaceFullPath" => p.replace_full_path.clone().map(PathModifier::Full),
            _ => p.replace_prefix_match.clone().map(PathModifier::Prefix),
        }
    };
    let mut out = Vec::new();
    for f in rule.filters {
        let unsupported = |what: &str| {
            Problem::route(
                ACCEPTED,
                "UnsupportedValue",
                format!("rule {}: the {what} filter is not supported", rule.name),
            )
        };
        match (f.type_.as_str(), f) {
            (
                "RequestHeaderModifier",
                HTTPRouteFilter {
                    request_header_modifier: Some(m),
                    ..
                },
            ) => out.push(Filter::RequestHeaders(headers(m))),
            (
                "ResponseHeaderModifier",
                HTTPRouteFilter {
                    response_header_modifier: Some(m),
                    ..
                },
            ) => out.push(Filter::ResponseHeaders(headers(m))),
            (
                "RequestRedirect",
                HTTPRouteFilter {
                    request_redirect: Some(r),
                    ..
                },
            ) => out.push(Filter::Redirect(Redirect {
                scheme: r.scheme.clone(),
                hostname: r.hostname.clone(),
                path: path(&r.path),
                port: r.port,
                status: r.status_code.unwrap_or(302),
            })),
            (
                "URLRewrite",
                HTTPRouteFilter {
                    url_rewrite: Some(r),
                    ..
                },
            ) => out.push(Filter::Rewrite(Rewrite {
                hostname: r.hostname.clone(),
                path: path(&r.path),
            })),
            (
                "RequestMirror",
                HTTPRouteFilter {
                    request_mirror: Some(m),
                    ..
                },
            ) => out.push(Filter::Mirror(Mirror {
                backend: mirror(&m.backend_ref),
                per_million: mirrored_share(m),
            })),
            (other, _) => problems.push(unsupported(other)),
        }
    }
    let replaces_prefix = out.iter().any(|f| {
        matches!(
            f,
            Filter::Redirect(Redirect {
                path: Some(PathModifier::Prefix(_)),
                ..
            }) | Filter::Rewrite(Rewrite {
                path: Some(PathModifier::Prefix(_)),
                ..
            })
        )
    });
    if replaces_prefix && rule.matches.iter().any(|m| m.path_prefix.is_none()) {
        problems.push(Problem::route(
            ACCEPTED,
            "UnsupportedValue",
            format!(
                "rule {}: ReplacePrefixMatch needs every match of the rule to be a PathPrefix",
                rule.name
            ),
        ));
    }
    out
}

/// The share of requests a RequestMirror copies, in millionths: its
/// `percent` or `fraction`, all of them when it says neither.
fn mirrored_share(m: &crate::crd::gateway::RequestMirror) -> u32 {
    match (m.percent, &m.fraction) {
        (Some(p), _) => p.min(100) * 10_000,
        (None, Some(f)) if f.denominator > 0 => {
            (u64::from(f.numerator.min(f.denominator)) * 1_000_000 / u64::from(f.denominator))
                as u32
        }
        _ => 1_000_000,
    }
}
