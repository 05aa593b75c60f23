//! Between the wire types ([`crate::pb`]) and the model ([`crate::model`]).
//! Converting from the wire validates: a resource that does not convert is
//! one the proxy NACKs, keeping what it had.

use std::net::SocketAddr;
use std::time::Duration;

use crate::model::{self, Body, Key};
use crate::pb::discovery as pb;

/// What was wrong with a resource from the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Invalid {
    pub field: String,
    pub problem: String,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

pub fn key_to_pb(key: &Key) -> pb::Key {
    pb::Key {
        key: Some(match key {
            Key::Destination(d) => pb::key::Key::Destination(d.clone()),
            Key::Inbound(p) => pb::key::Key::Inbound(p.clone()),
        }),
    }
}

pub fn key_from_pb(key: &pb::Key) -> Result<Key, Invalid> {
    match &key.key {
        Some(pb::key::Key::Destination(d)) if !d.is_empty() => Ok(Key::Destination(d.clone())),
        Some(pb::key::Key::Inbound(p)) if p.contains('/') => Ok(Key::Inbound(p.clone())),
        _ => Err(invalid("key", "empty or malformed")),
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

fn opt_ms(d: Option<Duration>) -> u64 {
    d.map_or(0, ms)
}

fn from_ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

fn service_to_pb(s: &model::ServiceRef) -> pb::ServiceRef {
    pb::ServiceRef {
        namespace: s.namespace.clone(),
        name: s.name.clone(),
    }
}

fn service_from_pb(s: Option<&pb::ServiceRef>, field: &str) -> Result<model::ServiceRef, Invalid> {
    match s {
        Some(s) if !s.name.is_empty() && !s.namespace.is_empty() => Ok(model::ServiceRef {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
        }),
        _ => Err(invalid(field, "missing service")),
    }
}

fn protocol_to_pb(p: model::Protocol) -> i32 {
    (match p {
        model::Protocol::Detect => pb::Protocol::Detect,
        model::Protocol::Http1 => pb::Protocol::Http1,
        model::Protocol::Http2 => pb::Protocol::Http2,
        model::Protocol::Grpc => pb::Protocol::Grpc,
        model::Protocol::Opaque => pb::Protocol::Opaque,
    }) as i32
}

fn protocol_from_pb(v: i32, field: &str) -> Result<model::Protocol, Invalid> {
    Ok(
        match pb::Protocol::try_from(v)
            .map_err(|_| invalid(field, format!("unknown protocol {v}")))?
        {
            pb::Protocol::Detect => model::Protocol::Detect,
            pb::Protocol::Http1 => model::Protocol::Http1,
            pb::Protocol::Http2 => model::Protocol::Http2,
            pb::Protocol::Grpc => model::Protocol::Grpc,
            pb::Protocol::Opaque => model::Protocol::Opaque,
        },
    )
}

fn port(v: u32, field: &str) -> Result<u16, Invalid> {
    u16::try_from(v)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| invalid(field, format!("{v} is not a port")))
}

pub fn body_to_pb(body: &Body) -> pb::resource::Body {
    match body {
        Body::Destination(d) => pb::resource::Body::Destination(destination_to_pb(d)),
        Body::Inbound(i) => pb::resource::Body::Inbound(inbound_to_pb(i)),
        Body::Unknown { reason } => pb::resource::Body::Unknown(pb::Unknown {
            reason: reason.clone(),
        }),
    }
}

pub fn body_from_pb(body: Option<&pb::resource::Body>) -> Result<Body, Invalid> {
    match body {
        Some(pb::resource::Body::Destination(d)) => destination_from_pb(d).map(Body::Destination),
        Some(pb::resource::Body::Inbound(i)) => inbound_from_pb(i).map(Body::Inbound),
        Some(pb::resource::Body::Unknown(u)) => Ok(Body::Unknown {
            reason: u.reason.clone(),
        }),
        None => Err(invalid("body", "missing")),
    }
}

fn destination_to_pb(d: &model::Destination) -> pb::Destination {
    pb::Destination {
        service: Some(service_to_pb(&d.service)),
        port: d.port as u32,
        protocol: protocol_to_pb(d.protocol),
        routes: d.routes.iter().map(route_to_pb).collect(),
        retry: d.retry.as_ref().map(retry_to_pb),
    }
}

fn route_to_pb(r: &model::Route) -> pb::Route {
    pb::Route {
        name: r.name.clone(),
        matches: r.matches.iter().map(match_to_pb).collect(),
        backends: r.backends.iter().map(backend_to_pb).collect(),
        consumer_namespace: r.consumer_namespace.clone().unwrap_or_default(),
        filters: r.filters.iter().map(filter_to_pb).collect(),
        timeout_ms: opt_ms(r.timeout),
        try_timeout_ms: opt_ms(r.try_timeout),
        retry: r.retry.as_ref().map(retry_to_pb),
        source: r.source.as_ref().map(|s| pb::RouteSource {
            kind: s.kind.clone(),
            namespace: s.namespace.clone(),
            name: s.name.clone(),
        }),
    }
}

fn value_matches_to_pb(ms: &[model::HeaderMatch]) -> Vec<pb::HeaderMatch> {
    ms.iter()
        .map(|h| pb::HeaderMatch {
            name: h.name.clone(),
            value_regex: h.value_regex.clone(),
        })
        .collect()
}

fn match_to_pb(m: &model::RouteMatch) -> pb::RouteMatch {
    pb::RouteMatch {
        path_regex: m.path_regex.clone().unwrap_or_default(),
        methods: m.methods.clone(),
        headers: value_matches_to_pb(&m.headers),
        query: value_matches_to_pb(&m.query),
        path_exact: m.path_exact.clone().unwrap_or_default(),
        path_prefix: m.path_prefix.clone().unwrap_or_default(),
    }
}

fn backend_to_pb(b: &model::Backend) -> pb::Backend {
    pb::Backend {
        service: Some(service_to_pb(&b.service)),
        weight: b.weight,
        endpoints: b.endpoints.iter().map(endpoint_to_pb).collect(),
        unresolved: b.unresolved.clone().unwrap_or_default(),
    }
}

fn headers_to_pb(h: &model::HeaderModifier) -> pb::HeaderModifier {
    let pairs = |hs: &[model::Header]| {
        hs.iter()
            .map(|h| pb::Header {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect()
    };
    pb::HeaderModifier {
        set: pairs(&h.set),
        add: pairs(&h.add),
        remove: h.remove.clone(),
    }
}

fn path_to_pb(p: &Option<model::PathModifier>) -> Option<pb::PathModifier> {
    use pb::path_modifier::Path;
    p.as_ref().map(|p| pb::PathModifier {
        path: Some(match p {
            model::PathModifier::Full(s) => Path::Full(s.clone()),
            model::PathModifier::Prefix(s) => Path::Prefix(s.clone()),
        }),
    })
}

fn filter_to_pb(f: &model::Filter) -> pb::Filter {
    use pb::filter::Filter as F;
    let filter = match f {
        model::Filter::RequestHeaders(h) => F::RequestHeaders(headers_to_pb(h)),
        model::Filter::ResponseHeaders(h) => F::ResponseHeaders(headers_to_pb(h)),
        model::Filter::Redirect(r) => F::Redirect(pb::Redirect {
            scheme: r.scheme.clone().unwrap_or_default(),
            hostname: r.hostname.clone().unwrap_or_default(),
            path: path_to_pb(&r.path),
            port: r.port.unwrap_or(0) as u32,
            status: r.status as u32,
        }),
        model::Filter::Rewrite(r) => F::Rewrite(pb::Rewrite {
            hostname: r.hostname.clone().unwrap_or_default(),
            path: path_to_pb(&r.path),
        }),
        model::Filter::Mirror(m) => F::Mirror(pb::Mirror {
            backend: Some(backend_to_pb(&m.backend)),
            per_million: m.per_million,
        }),
    };
    pb::Filter {
        filter: Some(filter),
    }
}

fn endpoint_to_pb(e: &model::Endpoint) -> pb::Endpoint {
    pb::Endpoint {
        address: e.address.to_string(),
        meshed: e.meshed,
        identity: e.identity.clone().unwrap_or_default(),
        protocol: protocol_to_pb(e.protocol),
        zone: e.zone.clone().unwrap_or_default(),
        pod: e.pod.clone().unwrap_or_default(),
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn destination_from_pb(d: &pb::Destination) -> Result<model::Destination, Invalid> {
    let routes = d
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| route_from_pb(r, &format!("routes[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    if routes.is_empty() {
        return Err(invalid("routes", "a destination needs at least one route"));
    }
    Ok(model::Destination {
        service: service_from_pb(d.service.as_ref(), "service")?,
        port: port(d.port, "port")?,
        protocol: protocol_from_pb(d.protocol, "protocol")?,
        routes,
        retry: d.retry.as_ref().map(retry_from_pb).transpose()?,
    })
}

fn route_from_pb(r: &pb::Route, field: &str) -> Result<model::Route, Invalid> {
    let backends = r
        .backends
        .iter()
        .enumerate()
        .map(|(j, b)| backend_from_pb(b, &format!("{field}.backends[{j}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let filters = r
        .filters
        .iter()
        .enumerate()
        .map(|(j, f)| filter_from_pb(f, &format!("{field}.filters[{j}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let redirects = filters
        .iter()
        .any(|f| matches!(f, model::Filter::Redirect(_)));
    if backends.is_empty() && !redirects && r.source.is_none() {
        // Only a Gateway API rule may have no backends (it answers 500).
        return Err(invalid(field, "a route needs at least one backend"));
    }
    Ok(model::Route {
        name: r.name.clone(),
        matches: r.matches.iter().map(match_from_pb).collect(),
        backends,
        consumer_namespace: non_empty(&r.consumer_namespace),
        filters,
        timeout: from_ms(r.timeout_ms),
        try_timeout: from_ms(r.try_timeout_ms),
        retry: r.retry.as_ref().map(retry_from_pb).transpose()?,
        source: r.source.as_ref().map(|s| model::RouteSource {
            kind: s.kind.clone(),
            namespace: s.namespace.clone(),
            name: s.name.clone(),
        }),
    })
}

fn value_matches_from_pb(ms: &[pb::HeaderMatch]) -> Vec<model::HeaderMatch> {
    ms.iter()
        .map(|h| model::HeaderMatch {
            name: h.name.clone(),
            value_regex: h.value_regex.clone(),
        })
        .collect()
}

fn match_from_pb(m: &pb::RouteMatch) -> model::RouteMatch {
    model::RouteMatch {
        path_regex: non_empty(&m.path_regex),
        methods: m.methods.clone(),
        headers: value_matches_from_pb(&m.headers),
        query: value_matches_from_pb(&m.query),
        path_exact: non_empty(&m.path_exact),
        path_prefix: non_empty(&m.path_prefix),
    }
}

fn backend_from_pb(b: &pb::Backend, field: &str) -> Result<model::Backend, Invalid> {
    let endpoints = b
        .endpoints
        .iter()
        .enumerate()
        .map(|(k, e)| {
            let field = format!("{field}.endpoints[{k}]");
            let address: SocketAddr = e
                .address
                .parse()
                .map_err(|_| invalid(&field, format!("'{}' is not IP:port", e.address)))?;
            Ok(model::Endpoint {
                address,
                meshed: e.meshed,
                identity: non_empty(&e.identity),
                protocol: protocol_from_pb(e.protocol, &field)?,
                zone: non_empty(&e.zone),
                pod: non_empty(&e.pod),
            })
        })
        .collect::<Result<Vec<_>, Invalid>>()?;
    Ok(model::Backend {
        service: service_from_pb(b.service.as_ref(), field)?,
        weight: b.weight,
        endpoints,
        unresolved: non_empty(&b.unresolved),
    })
}

fn headers_from_pb(h: &pb::HeaderModifier) -> model::HeaderModifier {
    let pairs = |hs: &[pb::Header]| {
        hs.iter()
            .map(|h| model::Header {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect()
    };
    model::HeaderModifier {
        set: pairs(&h.set),
        add: pairs(&h.add),
        remove: h.remove.clone(),
    }
}

fn path_from_pb(p: &Option<pb::PathModifier>) -> Option<model::PathModifier> {
    use pb::path_modifier::Path;
    match p.as_ref()?.path.as_ref()? {
        Path::Full(s) => Some(model::PathModifier::Full(s.clone())),
        Path::Prefix(s) => Some(model::PathModifier::Prefix(s.clone())),
    }
}

fn filter_from_pb(f: &pb::Filter, field: &str) -> Result<model::Filter, Invalid> {
    use pb::filter::Filter as F;
    Ok(match f.filter.as_ref() {
        Some(F::RequestHeaders(h)) => model::Filter::RequestHeaders(headers_from_pb(h)),
        Some(F::ResponseHeaders(h)) => model::Filter::ResponseHeaders(headers_from_pb(h)),
        Some(F::Redirect(r)) => model::Filter::Redirect(model::Redirect {
            scheme: non_empty(&r.scheme),
            hostname: non_empty(&r.hostname),
            path: path_from_pb(&r.path),
            port: match r.port {
                0 => None,
                p => Some(port(p, &format!("{field}.redirect.port"))?),
            },
            status: match r.status {
                301 | 302 => r.status as u16,
                s => {
                    return Err(invalid(
                        field,
                        format!("redirect status {s} is not 301 or 302"),
                    ));
                }
            },
        }),
        Some(F::Rewrite(r)) => model::Filter::Rewrite(model::Rewrite {
            hostname: non_empty(&r.hostname),
            path: path_from_pb(&r.path),
        }),
        Some(F::Mirror(m)) => model::Filter::Mirror(model::Mirror {
            backend: backend_from_pb(
                m.backend
                    .as_ref()
                    .ok_or_else(|| invalid(field, "a mirror needs a backend"))?,
                &format!("{field}.mirror.backend"),
            )?,
            per_million: m.per_million.min(1_000_000),
        }),
        None => return Err(invalid(field, "empty filter")),
    })
}

fn retry_to_pb(r: &model::RetryPolicy) -> pb::RetryPolicy {
    pb::RetryPolicy {
        name: r.name.clone(),
        retry_on: r.retry_on.clone(),
        max_retries: r.max_retries,
        backoff: match r.policy {
            model::Backoff::Constant => pb::Backoff::Constant,
            model::Backoff::Exponential => pb::Backoff::Exponential,
        } as i32,
        duration_ms: ms(r.duration),
        max_interval_ms: opt_ms(r.max_interval),
        per_try_timeout_ms: opt_ms(r.per_try_timeout),
        timeout_ms: opt_ms(r.timeout),
        budget: Some(pb::RetryBudget {
            ratio: r.budget.ratio,
            min_retries_per_second: r.budget.min_retries_per_second,
            ttl_ms: ms(r.budget.ttl),
        }),
        retry_non_idempotent: r.retry_non_idempotent,
    }
}

fn retry_from_pb(r: &pb::RetryPolicy) -> Result<model::RetryPolicy, Invalid> {
    if r.max_retries < -1 {
        return Err(invalid(
            "retry.maxRetries",
            format!("{} is below -1", r.max_retries),
        ));
    }
    let policy = match pb::Backoff::try_from(r.backoff) {
        Ok(pb::Backoff::Constant) => model::Backoff::Constant,
        Ok(pb::Backoff::Exponential) => model::Backoff::Exponential,
        Err(_) => {
            return Err(invalid(
                "retry.policy",
                format!("unknown backoff {}", r.backoff),
            ));
        }
    };
    let budget = match &r.budget {
        Some(b) => {
            if !(0.0..=1000.0).contains(&b.ratio) || b.ratio.is_nan() {
                return Err(invalid(
                    "retry.budget.ratio",
                    format!("{} is not a ratio", b.ratio),
                ));
            }
            model::RetryBudget {
                ratio: b.ratio,
                min_retries_per_second: b.min_retries_per_second,
                ttl: from_ms(b.ttl_ms).unwrap_or(Duration::from_secs(10)),
            }
        }
        None => model::RetryBudget::default(),
    };
    Ok(model::RetryPolicy {
        name: r.name.clone(),
        retry_on: r.retry_on.clone(),
        max_retries: r.max_retries,
        policy,
        duration: Duration::from_millis(r.duration_ms),
        max_interval: from_ms(r.max_interval_ms),
        per_try_timeout: from_ms(r.per_try_timeout_ms),
        timeout: from_ms(r.timeout_ms),
        budget,
        retry_non_idempotent: r.retry_non_idempotent,
    })
}

fn inbound_to_pb(i: &model::InboundPolicy) -> pb::InboundPolicy {
    pb::InboundPolicy {
        default_policy: match i.default_policy {
            model::DefaultPolicy::AllUnauthenticated => pb::DefaultPolicy::AllUnauthenticated,
            model::DefaultPolicy::AllAuthenticated => pb::DefaultPolicy::AllAuthenticated,
            model::DefaultPolicy::ClusterAuthenticated => pb::DefaultPolicy::ClusterAuthenticated,
            model::DefaultPolicy::Deny => pb::DefaultPolicy::Deny,
        } as i32,
        opaque_ports: i
            .opaque_ports
            .iter()
            .map(|r| pb::PortRange {
                first: r.first as u32,
                last: r.last as u32,
            })
            .collect(),
        rules: i
            .rules
            .iter()
            .map(|r| pb::AuthorizationRule {
                name: r.name.clone(),
                action: match r.action {
                    model::Action::Allow => pb::Action::Allow,
                    model::Action::Deny => pb::Action::Deny,
                } as i32,
                ports: r.ports.iter().map(|p| *p as u32).collect(),
                from: r
                    .from
                    .iter()
                    .map(|s| pb::Source {
                        service_accounts: s.service_accounts.clone(),
                        identities: s.identities.clone(),
                        namespaces: s.namespaces.clone(),
                        unauthenticated: s.unauthenticated,
                    })
                    .collect(),
                rate_limit: r.rate_limit.map(|l| pb::RateLimit {
                    requests_per_second: l.requests_per_second,
                    burst: l.burst,
                }),
            })
            .collect(),
    }
}

fn inbound_from_pb(i: &pb::InboundPolicy) -> Result<model::InboundPolicy, Invalid> {
    let default_policy = match pb::DefaultPolicy::try_from(i.default_policy) {
        Ok(pb::DefaultPolicy::AllUnauthenticated) => model::DefaultPolicy::AllUnauthenticated,
        Ok(pb::DefaultPolicy::AllAuthenticated) => model::DefaultPolicy::AllAuthenticated,
        Ok(pb::DefaultPolicy::ClusterAuthenticated) => model::DefaultPolicy::ClusterAuthenticated,
        Ok(pb::DefaultPolicy::Deny) => model::DefaultPolicy::Deny,
        Err(_) => {
            return Err(invalid(
                "defaultPolicy",
                format!("unknown policy {}", i.default_policy),
            ));
        }
    };
    let ports = |ps: &[u32], field: &str| {
        ps.iter()
            .map(|p| port(*p, field))
            .collect::<Result<Vec<_>, _>>()
    };
    let mut rules = Vec::with_capacity(i.rules.len());
    for (n, r) in i.rules.iter().enumerate() {
        let field = format!("rules[{n}]");
        let action = match pb::Action::try_from(r.action) {
            Ok(pb::Action::Allow) => model::Action::Allow,
            Ok(pb::Action::Deny) => model::Action::Deny,
            Err(_) => return Err(invalid(&field, format!("unknown action {}", r.action))),
        };
        rules.push(model::AuthorizationRule {
            name: r.name.clone(),
            action,
            ports: ports(&r.ports, &field)?,
            from: r
                .from
                .iter()
                .map(|s| model::Source {
                    service_accounts: s.service_accounts.clone(),
                    identities: s.identities.clone(),
                    namespaces: s.namespaces.clone(),
                    unauthenticated: s.unauthenticated,
                })
                .collect(),
            rate_limit: r.rate_limit.as_ref().map(|l| model::RateLimit {
                requests_per_second: l.requests_per_second,
                burst: l.burst,
            }),
        });
    }
    Ok(model::InboundPolicy {
        default_policy,
        opaque_ports: i
            .opaque_ports
            .iter()
            .map(|r| {
                let (first, last) = (port(r.first, "opaquePorts")?, port(r.last, "opaquePorts")?);
                if first > last {
                    return Err(invalid(
                        "opaquePorts",
                        format!("{first}-{last} is not a range"),
                    ));
                }
                Ok(model::PortRange { first, last })
            })
            .collect::<Result<_, _>>()?,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn svc(name: &str) -> ServiceRef {
        ServiceRef {
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    fn destination() -> Destination {
        Destination {
            service: svc("web"),
            port: 80,
            protocol: Protocol::Http1,
            routes: vec![Route {
                name: "default".into(),
                matches: vec![RouteMatch {
                    path_regex: Some("/api/.*".into()),
                    methods: vec!["GET".into()],
                    headers: vec![HeaderMatch {
                        name: "x-canary".into(),
                        value_regex: "true".into(),
                    }],
                    ..Default::default()
                }],
                backends: vec![Backend {
                    service: svc("web-v1"),
                    weight: 80,
                    endpoints: vec![Endpoint {
                        address: "198.18.0.3:8080".parse().unwrap(),
                        meshed: true,
                        identity: Some("spiffe://cluster.local/ns/shop/sa/web".into()),
                        protocol: Protocol::Detect,
                        zone: Some("a".into()),
                        pod: Some("shop/web-1".into()),
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            retry: Some(RetryPolicy {
                name: "shop/web".into(),
                retry_on: vec!["5xx".into()],
                max_retries: 3,
                policy: Backoff::Exponential,
                duration: Duration::from_millis(25),
                max_interval: Some(Duration::from_secs(1)),
                per_try_timeout: Some(Duration::from_millis(500)),
                timeout: Some(Duration::from_secs(3)),
                budget: RetryBudget::default(),
                retry_non_idempotent: false,
            }),
        }
    }

    #[test]
    fn destination_round_trips() {
        let body = Body::Destination(destination());
        assert_eq!(body_from_pb(Some(&body_to_pb(&body))).unwrap(), body);
    }

    #[test]
    fn inbound_round_trips() {
        let body = Body::Inbound(InboundPolicy {
            default_policy: DefaultPolicy::ClusterAuthenticated,
            opaque_ports: vec![
                PortRange {
                    first: 3306,
                    last: 3306,
                },
                PortRange {
                    first: 5000,
                    last: 5100,
                },
            ],
            rules: vec![AuthorizationRule {
                name: "shop/readers".into(),
                action: Action::Deny,
                ports: vec![8080],
                from: vec![Source {
                    service_accounts: vec!["shop/frontend".into()],
                    ..Source::default()
                }],
                rate_limit: Some(RateLimit {
                    requests_per_second: 100,
                    burst: 200,
                }),
            }],
        });
        assert_eq!(body_from_pb(Some(&body_to_pb(&body))).unwrap(), body);
    }

    #[test]
    fn invalid_resources_say_what_is_wrong() {
        let mut pb = match body_to_pb(&Body::Destination(destination())) {
            pb::resource::Body::Destination(d) => d,
            _ => unreachable!(),
        };
        pb.routes[0].backends[0].endpoints[0].address = "nowhere".into();
        let err = body_from_pb(Some(&pb::resource::Body::Destination(pb.clone()))).unwrap_err();
        assert_eq!(err.field, "routes[0].backends[0].endpoints[0]");
        assert!(err.problem.contains("'nowhere' is not IP:port"));

        pb.routes.clear();
        let err = body_from_pb(Some(&pb::resource::Body::Destination(pb.clone()))).unwrap_err();
        assert_eq!(err.field, "routes");

        assert!(body_from_pb(None).is_err());
        assert!(key_from_pb(&pb::Key { key: None }).is_err());
    }
}
