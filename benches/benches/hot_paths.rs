//! Micro benchmarks of what the proxy does on every connection or request:
//! protocol detection, route + split + endpoint selection, the balancer and
//! its bookkeeping, the retry budget, the token buckets (HTTP/2 flood
//! guard, AuthorizationPolicy rate limits), metric recording, and applying
//! a config update. `cargo bench -p weft-bench --bench hot_paths`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use weft_proto::convert::body_to_pb;
use weft_proto::model::{
    Backend, Body, Destination, Endpoint, HeaderMatch, Protocol, RateLimit, RetryBudget, Route,
    RouteMatch, ServiceRef,
};
use weft_proto::pb::discovery as pb;
use weft_proxy::authz::rate_limit::{RateLimits, Source};
use weft_proxy::config::{BalanceMode, BalancerSettings};
use weft_proxy::detect::classify;
use weft_proxy::discovery::client::validate;
use weft_proxy::http::guard::FrameCounter;
use weft_proxy::metrics::{Direction, Metrics, RequestLabels, Tls};
use weft_proxy::routing;
use weft_proxy::routing::DestinationConfig;
use weft_proxy::routing::retry::Budget;
use weft_proxy::upstream::EndpointRegistry;

fn svc(name: &str) -> ServiceRef {
    ServiceRef {
        namespace: "shop".into(),
        name: name.into(),
    }
}

fn endpoints(base: u8, n: u8) -> Vec<Endpoint> {
    (0..n)
        .map(|i| Endpoint {
            address: format!("198.18.{base}.{}:8080", i + 1).parse().unwrap(),
            meshed: true,
            identity: Some("spiffe://cluster.local/ns/shop/sa/web".into()),
            protocol: Protocol::Detect,
            zone: None,
            pod: None,
        })
        .collect()
}

/// A realistic destination: a header-matched canary route, a weighted
/// split, 10 endpoints per backend.
fn destination() -> Destination {
    Destination {
        service: svc("web"),
        port: 80,
        protocol: Protocol::Detect,
        routes: vec![
            Route {
                name: "shop/canary".into(),
                matches: vec![RouteMatch {
                    path_regex: Some("/api/.*".into()),
                    methods: vec![],
                    headers: vec![HeaderMatch {
                        name: "x-canary".into(),
                        value_regex: "true".into(),
                    }],
                    ..Default::default()
                }],
                backends: vec![Backend {
                    service: svc("web-canary"),
                    weight: 1,
                    endpoints: endpoints(1, 10),
                    ..Default::default()
                }],
                ..Default::default()
            },
            Route {
                name: "shop/web-split".into(),
                matches: vec![],
                backends: vec![
                    Backend {
                        service: svc("web-v1"),
                        weight: 80,
                        endpoints: endpoints(2, 10),
                        ..Default::default()
                    },
                    Backend {
                        service: svc("web-v2"),
                        weight: 20,
                        endpoints: endpoints(3, 10),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
        ],
        retry: None,
    }
}

fn detection(c: &mut Criterion) {
    let mut g = c.benchmark_group("detect");
    let http1 = b"GET /api/users?id=42 HTTP/1.1\r\nHost: web.shop.svc.cluster.local\r\n\r\n";
    let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let tls = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
    g.bench_function("http1 request line", |b| {
        b.iter(|| classify(black_box(http1)))
    });
    g.bench_function("http2 preface", |b| b.iter(|| classify(black_box(h2))));
    g.bench_function("tls client hello", |b| b.iter(|| classify(black_box(&tls))));
    g.finish();
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing");
    for mode in [BalanceMode::PeakEwma, BalanceMode::RoundRobin] {
        let registry = EndpointRegistry::new(BalancerSettings {
            mode,
            ..BalancerSettings::default()
        });
        let state = routing::State::new(registry);
        let d = DestinationConfig::compile(destination(), &state).unwrap();
        let req = Request::get("/checkout")
            .header("x-canary", "false")
            .body(())
            .unwrap();
        let name = format!("route + split + pick ({mode:?})");
        g.bench_function(&name, |b| {
            b.iter(|| {
                let pick = d.pick_for_request(black_box(&req)).unwrap();
                black_box(pick.endpoint.address);
            })
        });
        let name = format!("pick + in-flight + answer ({mode:?})");
        g.bench_function(&name, |b| {
            b.iter(|| {
                let pick = d.pick_for_request(black_box(&req)).unwrap();
                let mut f = pick.start();
                f.answered(true);
            })
        });
    }
    g.finish();
}

fn retry_budget(c: &mut Criterion) {
    let budget = Budget::new(RetryBudget {
        ratio: 0.2,
        min_retries_per_second: 10,
        ttl: Duration::from_secs(10),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    c.bench_function("retry budget: deposit + withdraw", |b| {
        b.iter(|| {
            budget.deposit();
            black_box(budget.try_withdraw());
        })
    });
}

/// The token buckets: the HTTP/2 flood guard counting one PING frame, and
/// an AuthorizationPolicy's rate limit taking one client's token. Limits
/// high enough never to refuse: what is measured is the bookkeeping.
fn limits(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut guard = FrameCounter::new(1_000_000_000);
    assert!(guard.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
    let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    c.bench_function("limits: h2 flood guard, one PING frame", |b| {
        b.iter(|| assert!(guard.feed(black_box(&ping))))
    });
    let limits = RateLimits::default();
    let source = Source::Ip("198.18.0.2".parse().unwrap());
    let limit = RateLimit {
        requests_per_second: 1_000_000_000,
        burst: 1_000_000_000,
    };
    c.bench_function("limits: rate limit, one client's token", |b| {
        b.iter(|| assert!(limits.take("allow-web", black_box(&source), limit).is_ok()))
    });
}

fn metrics(c: &mut Criterion) {
    let m = Metrics::new();
    let authority = m.authorities.value("web.shop.svc.cluster.local:80");
    let labels = RequestLabels {
        direction: Direction::Outbound,
        authority,
        tls: Tls::NoIdentity,
        client_id: None,
        dst_namespace: None,
        dst_service: None,
    };
    c.bench_function("metrics: request_total lookup + inc", |b| {
        b.iter(|| m.requests.get_or_create(black_box(&labels)).inc())
    });
}

fn config_update(c: &mut Criterion) {
    let state = Arc::new(routing::State::default());
    let resource = pb::Resource {
        key: Some(weft_proto::convert::key_to_pb(
            &weft_proto::model::Key::Destination("198.19.0.10:80".into()),
        )),
        version: "v1".into(),
        body: Some(body_to_pb(&Body::Destination(destination()))),
    };
    c.bench_function("config update: validate + compile (30 endpoints)", |b| {
        b.iter(|| black_box(validate(vec![resource.clone()], &state).unwrap()))
    });
}

criterion_group!(
    benches,
    detection,
    routing,
    retry_budget,
    limits,
    metrics,
    config_update
);
criterion_main!(benches);
