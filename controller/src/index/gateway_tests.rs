//! Gateway API routes in the index: matches, precedence, backends,
//! producer and consumer routes, and what each route's status says.

use weft_proto::model::{Body, Destination, Filter, PathModifier};

use super::gateway::{ACCEPTED, RESOLVED_REFS};
use super::problems::Problem;
use super::*;
use crate::source::parse::parse_documents;

fn index(yaml: &str) -> Index {
    let mut idx = Index::new(IndexConfig::default());
    for o in parse_documents(yaml).expect("test YAML parses") {
        idx.apply(o);
    }
    idx
}

fn dest(idx: &Index, key: &str) -> Destination {
    match idx.destination(key) {
        Body::Destination(d) => d,
        other => panic!("{key}: {other:?}"),
    }
}

fn service(ns: &str, name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n"
    )
}

fn world() -> String {
    [
        service("shop", "web", "198.19.0.10"),
        service("shop", "web-v1", "198.19.0.11"),
        service("shop", "web-v2", "198.19.0.12"),
        service("shop", "api", "198.19.0.13"),
    ]
    .concat()
}

fn route(name: &str, ns: &str, created: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{created}\"}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: web, namespace: shop, port: 80}}]\n  rules:\n{rules}---\n"
    )
}

/// (route name, backends with weights) in the destination's order.
fn routes(d: &Destination) -> Vec<(String, Vec<(String, u32)>)> {
    d.routes
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                r.backends
                    .iter()
                    .map(|b| (b.service.name.clone(), b.weight))
                    .collect(),
            )
        })
        .collect()
}

fn problems(idx: &Index, kind: Kind, name: &str, ns: &str) -> Vec<Problem> {
    idx.problems()[&ObjectRef {
        kind,
        namespace: ns.into(),
        name: name.into(),
    }]
        .iter()
        .filter(|p| p.is_problem())
        .cloned()
        .collect()
}

#[test]
fn weighted_backends_replace_the_default_route() {
    let idx = index(
        &(world()
            + &route(
                "canary",
                "shop",
                "2026-01-01T00:00:00Z",
                "  - backendRefs: [{name: web-v1, port: 80, weight: 90}, {name: web-v2, port: 80, weight: 10}]\n",
            )),
    );
    let d = dest(&idx, "198.19.0.10:80");
    assert_eq!(
        routes(&d),
        [(
            "shop/canary/0".to_string(),
            vec![("web-v1".to_string(), 90), ("web-v2".to_string(), 10)]
        )]
    );
    let r = &d.routes[0];
    assert_eq!(
        r.matches[0].path_prefix.as_deref(),
        Some("/"),
        "no match: prefix /"
    );
    assert_eq!(r.consumer_namespace, None, "a producer route");
    assert_eq!(r.source.as_ref().unwrap().kind, "HTTPRoute");
    assert!(problems(&idx, Kind::HTTPRoute, "canary", "shop").is_empty());
}

#[test]
fn matches_are_ordered_by_the_specs_precedence() {
    // Written least specific first, across two routes and rules.
    let idx = index(
        &(world()
            + &route(
                "old",
                "shop",
                "2026-01-01T00:00:00Z",
                "  - matches: [{path: {type: PathPrefix, value: /}}]\n    backendRefs: [{name: web-v1, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /api}}]\n    backendRefs: [{name: web-v1, port: 80}]\n",
            )
            + &route(
                "new",
                "shop",
                "2026-02-01T00:00:00Z",
                "  - matches:\n    - {path: {type: PathPrefix, value: /api}, headers: [{name: X-Canary, value: \"1\"}]}\n    - {path: {type: PathPrefix, value: /api}, method: POST}\n    - {path: {type: Exact, value: /api/login}}\n    - {path: {type: PathPrefix, value: /}}\n    backendRefs: [{name: web-v2, port: 80}]\n",
            )),
    );
    let d = dest(&idx, "198.19.0.10:80");
    let order: Vec<String> = d
        .routes
        .iter()
        .map(|r| {
            let m = &r.matches[0];
            format!(
                "{} {} {}{}{}",
                r.name,
                m.path_exact
                    .as_deref()
                    .or(m.path_prefix.as_deref())
                    .unwrap(),
                m.methods.join(","),
                if m.headers.is_empty() { "" } else { "h" },
                if m.path_exact.is_some() { "=" } else { "" }
            )
        })
        .collect();
    assert_eq!(order, expected_order());
}

/// The exact path first; then /api: a method first, then more headers,
/// then no more than the path; the shortest prefix last, the older route
/// first.
fn expected_order() -> Vec<String> {
    [
        "shop/new/0 /api/login =",
        "shop/new/0 /api POST",
        "shop/new/0 /api h",
        "shop/old/1 /api ",
        "shop/old/0 / ",
        "shop/new/0 / ",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn header_query_and_grpc_matches_translate() {
    let grpc = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: rpc, namespace: shop}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: web}]\n  rules:\n  - matches: [{method: {service: shop.Cart, method: Add}}]\n    backendRefs: [{name: web-v2, port: 80}]\n  - matches: [{method: {service: shop.Cart}}]\n    backendRefs: [{name: web-v1, port: 80}]\n  - matches: [{method: {type: RegularExpression, method: \"Get.*\"}}]\n    backendRefs: [{name: web-v1, port: 80}]\n---\n";
    let http = route(
        "q",
        "shop",
        "2026-01-01T00:00:00Z",
        "  - matches: [{path: {type: RegularExpression, value: \"/v[0-9]+/.*\"}, headers: [{name: X-User, value: a.b}], queryParams: [{type: RegularExpression, name: debug, value: \"1|true\"}]}]\n    backendRefs: [{name: web-v1, port: 80}]\n",
    );
    let idx = index(&(world() + grpc + &http));
    let d = dest(&idx, "198.19.0.10:80");
    let find = |name: &str| d.routes.iter().find(|r| r.name == name).unwrap().matches[0].clone();
    let add = find("shop/rpc/0");
    assert_eq!(add.path_exact.as_deref(), Some("/shop.Cart/Add"));
    assert_eq!(add.methods, ["POST"]);
    assert_eq!(
        find("shop/rpc/1").path_prefix.as_deref(),
        Some("/shop.Cart")
    );
    assert_eq!(
        find("shop/rpc/2").path_regex.as_deref(),
        Some("/[^/]+/Get.*")
    );
    let q = find("shop/q/0");
    assert_eq!(q.path_regex.as_deref(), Some("/v[0-9]+/.*"));
    assert_eq!(
        q.headers[0].name, "x-user",
        "header names are case-insensitive"
    );
    assert_eq!(
        q.headers[0].value_regex, r"a\.b",
        "an exact value is escaped"
    );
    assert_eq!(q.query[0].value_regex, "1|true");
}

#[test]
fn filters_timeouts_and_retry_reach_the_route() {
    let idx = index(
        &(world()
            + &route(
                "f",
                "shop",
                "2026-01-01T00:00:00Z",
                "  - matches: [{path: {type: PathPrefix, value: /old}}]\n    filters:\n    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-env, value: canary}], remove: [x-debug]}}\n    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}\n    - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-served-by, value: weft}]}}\n    backendRefs: [{name: web-v1, port: 80}]\n    timeouts: {request: 2s, backendRequest: 500ms}\n    retry: {codes: [503], attempts: 2, backoff: 10ms}\n",
            )),
    );
    let r = dest(&idx, "198.19.0.10:80").routes.remove(0);
    assert_eq!(r.filters.len(), 3);
    assert!(
        matches!(&r.filters[1], Filter::Rewrite(w) if w.path == Some(PathModifier::Prefix("/new".into())))
    );
    assert_eq!(r.timeout, Some(std::time::Duration::from_secs(2)));
    assert_eq!(r.try_timeout, Some(std::time::Duration::from_millis(500)));
    let retry = r.retry.unwrap();
    assert_eq!(
        (retry.retry_on, retry.max_retries),
        (vec!["503".to_string()], 2)
    );
    assert_eq!(retry.duration, std::time::Duration::from_millis(10));
}

#[test]
fn a_mirror_gets_its_backends_endpoints_and_share() {
    let idx = index(
        &(world()
            + &route(
                "m",
                "shop",
                "2026-01-01T00:00:00Z",
                "  - matches: [{path: {type: PathPrefix, value: /a}}]\n    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: web-v2, port: 80}, percent: 25}}]\n    backendRefs: [{name: web-v1, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /b}}]\n    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: web-v2, port: 80}, fraction: {numerator: 1, denominator: 3}}}]\n    backendRefs: [{name: web-v1, port: 80}]\n  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: gone, port: 80}}}]\n    backendRefs: [{name: web-v1, port: 80}]\n",
            )),
    );
    let d = dest(&idx, "198.19.0.10:80");
    let mirrors: Vec<(u32, &str, bool)> = d
        .routes
        .iter()
        .map(|r| match &r.filters[..] {
            [Filter::Mirror(m)] => (
                m.per_million,
                m.backend.service.name.as_str(),
                m.backend.unresolved.is_some(),
            ),
            other => panic!("{}: {other:?}", r.name),
        })
        .collect();
    // `gone` does not exist: the rule still routes, its mirror goes
    // nowhere and the route says so.
    assert_eq!(
        mirrors,
        [
            (250_000, "web-v2", false),
            (333_333, "web-v2", false),
            (1_000_000, "gone", true)
        ]
    );
    let ps = problems(&idx, Kind::HTTPRoute, "m", "shop");
    let reasons: Vec<_> = ps.iter().map(|p| (p.condition, p.reason)).collect();
    assert_eq!(reasons, [(RESOLVED_REFS, "BackendNotFound")]);
}

#[test]
fn a_retry_policy_targeting_the_route_adds_what_the_route_cannot_say() {
    let policy = "apiVersion: weft.dev/v1alpha1\nkind: RetryPolicy\nmetadata: {name: rp, namespace: shop}\nspec:\n  targetRef: {kind: HTTPRoute, name: r}\n  retryOn: [5xx]\n  maxRetries: 5\n  budget: {ratio: 0.5}\n  retryNonIdempotent: true\n---\n";
    let idx = index(
        &(world()
            + policy
            + &route(
                "r",
                "shop",
                "2026-01-01T00:00:00Z",
                "  - backendRefs: [{name: web-v1, port: 80}]\n    retry: {attempts: 1}\n",
            )),
    );
    let d = dest(&idx, "198.19.0.10:80");
    let retry = d.routes[0].retry.clone().unwrap();
    assert_eq!(retry.max_retries, 1, "the route's attempts win");
    assert_eq!(retry.retry_on, ["5xx"], "the policy's conditions stay");
    assert_eq!(retry.budget.ratio, 0.5);
    assert!(retry.retry_non_idempotent);
    assert!(d.retry.is_none(), "the policy is not the Service's");
    assert!(problems(&idx, Kind::RetryPolicy, "rp", "shop").is_empty());
}

#[test]
fn consumer_routes_are_marked_with_their_namespace() {
    let consumer = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: mine, namespace: batch}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: web, namespace: shop}]\n  rules:\n  - backendRefs: [{name: web-v2, namespace: shop, port: 80}]\n---\n";
    let grant = "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: batch-routes, namespace: shop}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: batch}]\n  to: [{group: \"\", kind: Service}]\n---\n";
    let idx = index(&(world() + consumer));
    let d = dest(&idx, "198.19.0.10:80");
    let names: Vec<_> = d
        .routes
        .iter()
        .map(|r| (r.name.as_str(), r.consumer_namespace.as_deref()))
        .collect();
    assert_eq!(
        names,
        [("batch/mine/0", Some("batch")), ("default", None)],
        "other namespaces keep the default route"
    );
    // Without a grant, the backend in shop is not permitted.
    assert!(d.routes[0].backends[0].unresolved.is_some());
    let ps = problems(&idx, Kind::HTTPRoute, "mine", "batch");
    assert_eq!(
        (ps[0].condition, ps[0].reason),
        (RESOLVED_REFS, "RefNotPermitted")
    );
    let idx = index(&(world() + consumer + grant));
    assert!(
        dest(&idx, "198.19.0.10:80").routes[0].backends[0]
            .unresolved
            .is_none()
    );
    assert!(problems(&idx, Kind::HTTPRoute, "mine", "batch").is_empty());
}

#[test]
fn a_route_wins_over_a_traffic_split_which_says_so() {
    let split = "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: s, namespace: shop}\nspec:\n  service: web\n  backends: [{service: web-v1, weight: 1}]\n---\n";
    let idx = index(
        &(world()
            + split
            + &route(
                "r",
                "shop",
                "2026-01-01T00:00:00Z",
                "  - backendRefs: [{name: web-v2, port: 80}]\n",
            )),
    );
    assert_eq!(routes(&dest(&idx, "198.19.0.10:80"))[0].0, "shop/r/0");
    let ps = problems(&idx, Kind::TrafficSplit, "s", "shop");
    assert_eq!(ps[0].reason, "OverriddenByRoute");
}

#[test]
fn what_cannot_be_applied_is_reported_and_the_rest_still_routes() {
    let idx = index(
        &(world()
            + &route(
                "bad",
                "shop",
                "2026-01-01T00:00:00Z",
                "  - matches: [{path: {type: RegularExpression, value: \"/(unclosed\"}}]\n    backendRefs: [{name: web-v1, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /m}}]\n    filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Fault, name: f}}]\n    backendRefs: [{name: web-v1, port: 80}]\n  - backendRefs: [{name: nowhere, port: 80}, {name: web-v2, port: 80}, {kind: Pod, name: p}]\n",
            )),
    );
    let d = dest(&idx, "198.19.0.10:80");
    assert_eq!(
        d.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["shop/bad/2"],
        "the invalid rules are left out"
    );
    let unresolved: Vec<bool> = d.routes[0]
        .backends
        .iter()
        .map(|b| b.unresolved.is_some())
        .collect();
    assert_eq!(unresolved, [true, false, true]);
    let ps = problems(&idx, Kind::HTTPRoute, "bad", "shop");
    let reasons: Vec<_> = ps.iter().map(|p| (p.condition, p.reason)).collect();
    assert_eq!(
        reasons,
        [
            (ACCEPTED, "UnsupportedValue"),
            (ACCEPTED, "UnsupportedValue"),
            (RESOLVED_REFS, "BackendNotFound"),
            (RESOLVED_REFS, "InvalidKind"),
        ]
    );
}

#[test]
fn a_parent_that_does_not_exist_is_not_accepted() {
    let r = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n  parentRefs:\n  - {group: \"\", kind: Service, name: web}\n  - {group: \"\", kind: Service, name: gone}\n  - {group: \"\", kind: Service, name: api, port: 9999}\n  - {name: edge}\n  rules:\n  - backendRefs: [{name: web-v1, port: 80}]\n---\n";
    let idx = index(&(world() + r));
    let all = &idx.problems()[&ObjectRef {
        kind: Kind::HTTPRoute,
        namespace: "shop".into(),
        name: "r".into(),
    }];
    let listed: Vec<_> = all
        .iter()
        .filter(|p| !p.is_problem())
        .map(|p| p.parent.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(
        listed,
        ["web", "gone", "api"],
        "a Gateway parent is not the mesh's"
    );
    let missing: Vec<_> = all
        .iter()
        .filter(|p| p.is_problem())
        .map(|p| (p.reason, p.parent.as_ref().unwrap().name.as_str()))
        .collect();
    assert_eq!(
        missing,
        [("NoMatchingParent", "gone"), ("NoMatchingParent", "api")]
    );
}
