//! Gateway API routes (GAMMA) end to end, with the real controller and
//! proxies in network namespaces: weights stepping as a canary tool steps
//! them, header/query/method matches, a route's timeout and retries,
//! filters seen by the app and the client, consumer routes. Needs root.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, StatusCode};
use weft_tests::apps::Behaviour;
use weft_tests::client::{self, Conn};
use weft_tests::mesh::MeshLab;
use weft_tests::pod::Pod;
use weft_tests::wait;
use weft_tests::yaml::{http_service, labelled_pod};

const WEB: &str = "198.19.0.10:80";

fn route(name: &str, ns: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: web, namespace: shop, port: 80}}]\n  rules:\n{rules}---\n"
    )
}

/// `web` (pods v1 at .3 and v2 at .4), `web-v1` and `web-v2` (one pod
/// each), a client in `shop`, and `routes.yaml` holding `routes`.
async fn mesh(test: &str, v1: Behaviour, v2: Behaviour, routes: &str) -> Option<MeshLab> {
    let world = http_service("web", "198.19.0.10", "app: web")
        + &http_service("web-v1", "198.19.0.11", "track: v1")
        + &http_service("web-v2", "198.19.0.12", "track: v2")
        + &labelled_pod("v1", "app: web, track: v1", "198.18.0.3")
        + &labelled_pod("v2", "app: web, track: v2", "198.18.0.4");
    let mut m = MeshLab::start(
        test,
        &[("world.yaml", world), ("routes.yaml", routes.to_string())],
    )
    .await?;
    m.add_pod("client-0", 2, async {}, &[]).await;
    for (name, octet, behaviour) in [("v1", 3, v1), ("v2", 4, v2)] {
        m.add_app_pod(name, octet, behaviour).await;
    }
    Some(m)
}

/// What one request came to: its status and response headers.
type Answer = Result<(StatusCode, http::HeaderMap), String>;

/// Sends `n` GETs of `path` with `headers`, one after another over one
/// keep-alive connection.
async fn get(
    client: &Pod,
    n: usize,
    path: &'static str,
    headers: &'static [(&str, &str)],
) -> Vec<Answer> {
    client
        .rt
        .run(async move {
            let addr: SocketAddr = WEB.parse().unwrap();
            let mut conn = Conn::http1(addr).await.map_err(|e| e.to_string());
            let mut out = Vec::new();
            for _ in 0..n {
                let Ok(c) = conn.as_mut() else {
                    out.push(Err("no connection".into()));
                    continue;
                };
                let mut req = Request::get(path).header("host", "web.shop.svc.cluster.local");
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                let req = req.body(client::full("")).unwrap();
                let answer = c.fetch(req).await.map_err(|e| e.to_string());
                out.push(answer.map(|r| (r.status(), r.headers().clone())));
            }
            out
        })
        .await
}

fn app_of(a: &Answer) -> &str {
    match a {
        Ok((_, h)) => h
            .get("x-app-name")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        Err(_) => "",
    }
}

fn all_from(answers: &[Answer], app: &str) -> bool {
    answers
        .iter()
        .all(|a| matches!(a, Ok((s, _)) if s.is_success()) && app_of(a) == app)
}

/// The weights of the first route of `web` in the client proxy's config.
async fn weights(client: &Pod) -> Vec<(String, u64)> {
    let config: serde_json::Value =
        serde_json::from_str(&client.admin_get("/config").await).unwrap();
    let resources = config["resources"].as_array().cloned().unwrap_or_default();
    let Some(web) = resources.iter().find(|r| r["key"]["destination"] == WEB) else {
        return vec![];
    };
    web["content"]["destination"]["routes"][0]["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            (
                b["service"]["name"].as_str().unwrap_or("").to_string(),
                b["weight"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The HTTPRoute Flagger's Gateway API provider keeps for a canary of
/// `web` in a mesh (a Service parent, primary and canary backends), at one
/// step of the analysis.
fn flagger_step(primary: u32, canary: u32) -> String {
    route(
        "web",
        "shop",
        &format!(
            "  - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n    backendRefs:\n    - {{group: \"\", kind: Service, name: web-v1, port: 80, weight: {primary}}}\n    - {{group: \"\", kind: Service, name: web-v2, port: 80, weight: {canary}}}\n"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_follow_every_canary_step_with_no_failed_request() {
    let test = "weights_follow_every_canary_step_with_no_failed_request";
    let Some(m) = mesh(
        test,
        Behaviour::default(),
        Behaviour::default(),
        &flagger_step(100, 0),
    )
    .await
    else {
        return;
    };
    let client = m.pod("client-0");
    // Flagger's steps: 0 -> 10 -> 20 -> 30 -> 50, then promotion (the
    // primary runs the new version; the canary goes back to 0).
    for canary in [0u32, 10, 20, 30, 50, 0] {
        m.write("routes.yaml", &flagger_step(100 - canary, canary));
        // Requests while the step propagates: none may fail.
        let during = get(client, 20, "/hello", &[]).await;
        assert!(
            during
                .iter()
                .all(|a| matches!(a, Ok((s, _)) if s.is_success())),
            "{during:?}"
        );
        let want = vec![
            ("web-v1".to_string(), (100 - canary) as u64),
            ("web-v2".to_string(), canary as u64),
        ];
        wait::until(
            "the step reaches the client's proxy",
            Duration::from_secs(10),
            async || weights(client).await == want,
        )
        .await;
        let n = 400;
        let answers = get(client, n, "/hello", &[]).await;
        assert!(
            answers
                .iter()
                .all(|a| matches!(a, Ok((s, _)) if s.is_success())),
            "{answers:?}"
        );
        let to_canary = answers.iter().filter(|a| app_of(a) == "v2").count() as f64;
        let p = canary as f64 / 100.0;
        // Binomial: mean n p, sd sqrt(n p (1-p)); 5 sd (0 when p is 0).
        let (mean, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
        assert!(
            (to_canary - mean).abs() <= 5.0 * sd,
            "step {canary}%: {to_canary} of {n} to the canary, expected {mean} +- {}",
            5.0 * sd
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_query_and_paths_pick_the_rule_and_nothing_matched_is_404() {
    let routes = route(
        "ab",
        "shop",
        // Written least specific last: on the same path, a header or query
        // match is more specific than the path alone.
        "  - matches: [{path: {type: Exact, value: /hello}}]\n    backendRefs: [{name: web-v1, port: 80}]\n  - matches: [{path: {type: Exact, value: /hello}, headers: [{name: X-Test-Canary, value: \"1\"}]}, {path: {type: Exact, value: /hello}, queryParams: [{type: RegularExpression, name: debug, value: \"1|true\"}]}]\n    backendRefs: [{name: web-v2, port: 80}]\n",
    );
    let Some(m) = mesh(
        "headers_query_and_paths_pick_the_rule_and_nothing_matched_is_404",
        Behaviour::default(),
        Behaviour::default(),
        &routes,
    )
    .await
    else {
        return;
    };
    let client = m.pod("client-0");
    assert!(all_from(
        &get(client, 20, "/hello", &[("x-test-canary", "1")]).await,
        "v2"
    ));
    assert!(all_from(
        &get(client, 20, "/hello?debug=true", &[]).await,
        "v2"
    ));
    assert!(all_from(
        &get(client, 20, "/hello?debug=no", &[]).await,
        "v1"
    ));
    assert!(all_from(
        &get(client, 20, "/hello", &[("x-test-canary", "2")]).await,
        "v1"
    ));
    let unmatched = get(client, 1, "/other", &[]).await;
    assert!(
        matches!(&unmatched[0], Ok((StatusCode::NOT_FOUND, _))),
        "{unmatched:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_timeout_answers_504() {
    let slow = Behaviour {
        delay: Duration::from_millis(1000),
        fail_ratio: 0.0,
    };
    let routes = route(
        "slow",
        "shop",
        "  - backendRefs: [{name: web-v1, port: 80}]\n    timeouts: {request: 300ms}\n",
    );
    let Some(m) = mesh("a_routes_timeout_answers_504", slow, slow, &routes).await else {
        return;
    };
    let started = std::time::Instant::now();
    let answers = get(m.pod("client-0"), 1, "/hello", &[]).await;
    let took = started.elapsed();
    match &answers[0] {
        Ok((StatusCode::GATEWAY_TIMEOUT, h)) => {
            let err = h["weft-proxy-error"].to_str().unwrap();
            assert!(err.contains("timed out after 300ms"), "{err}");
        }
        other => panic!("{other:?}"),
    }
    assert!(took < Duration::from_millis(900), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_backend_request_timeout_bounds_each_try() {
    let slow = Behaviour {
        delay: Duration::from_millis(3000),
        fail_ratio: 0.0,
    };
    // Each try may take 200ms; a try that times out counts as a 504, which
    // the route retries twice: three tries, then the client's 504.
    let routes = route(
        "per-try",
        "shop",
        "  - backendRefs: [{name: web-v1, port: 80}]\n    timeouts: {backendRequest: 200ms}\n    retry: {codes: [504], attempts: 2}\n",
    );
    let Some(m) = mesh(
        "a_routes_backend_request_timeout_bounds_each_try",
        slow,
        slow,
        &routes,
    )
    .await
    else {
        return;
    };
    let client = m.pod("client-0");
    let started = std::time::Instant::now();
    let answers = get(client, 1, "/hello", &[]).await;
    let took = started.elapsed();
    match &answers[0] {
        Ok((StatusCode::GATEWAY_TIMEOUT, h)) => {
            let err = h["weft-proxy-error"].to_str().unwrap();
            assert!(err.contains("per-try timeout of 200ms"), "{err}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        took >= Duration::from_millis(600),
        "three tries of 200ms: {took:?}"
    );
    assert!(
        took < Duration::from_millis(2500),
        "never the app's 3 s: {took:?}"
    );
    assert_eq!(
        client.metric("retry_total", &["reason=\"timeout\""]).await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_retry_hides_a_backend_failing_a_quarter_of_requests() {
    let flaky = Behaviour {
        delay: Duration::ZERO,
        fail_ratio: 0.25,
    };
    // The route says what to retry; a RetryPolicy on the route widens the
    // budget so that every failure can be retried.
    let routes = route(
        "flaky",
        "shop",
        "  - backendRefs: [{name: web-v1, port: 80}]\n    retry: {codes: [503], attempts: 4}\n",
    ) + "apiVersion: weft.dev/v1alpha1\nkind: RetryPolicy\nmetadata: {name: flaky, namespace: shop}\nspec:\n  targetRef: {kind: HTTPRoute, name: flaky}\n  budget: {ratio: 1.0}\n";
    let Some(m) = mesh(
        "a_routes_retry_hides_a_backend_failing_a_quarter_of_requests",
        flaky,
        flaky,
        &routes,
    )
    .await
    else {
        return;
    };
    let n = 400;
    let answers = get(m.pod("client-0"), n, "/hello", &[]).await;
    let failed = answers
        .iter()
        .filter(|a| !matches!(a, Ok((s, _)) if s.is_success()))
        .count();
    // Five tries all failing: p = 0.25^5 ~ 0.001, mean 0.4 of 400; more
    // than 5 has a probability below 1e-5. Without retries: ~100.
    assert!(failed <= 5, "{failed} of {n} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_rewrite_redirect_and_change_headers() {
    let routes = route(
        "filters",
        "shop",
        "  - matches: [{path: {type: PathPrefix, value: /old}}]\n    filters:\n    - {type: URLRewrite, urlRewrite: {hostname: web-v1.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /hello}}}\n    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-test-env, value: canary}], remove: [x-test-drop]}}\n    - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-served-by, value: weft}]}}\n    backendRefs: [{name: web-v1, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /moved}}]\n    filters: [{type: RequestRedirect, requestRedirect: {hostname: new.shop, statusCode: 301}}]\n",
    );
    let Some(m) = mesh(
        "filters_rewrite_redirect_and_change_headers",
        Behaviour::default(),
        Behaviour::default(),
        &routes,
    )
    .await
    else {
        return;
    };
    let client = m.pod("client-0");
    let rewritten = get(
        client,
        1,
        "/old?x=1",
        &[("x-test-drop", "1"), ("x-test-env", "prod")],
    )
    .await;
    let Ok((status, h)) = &rewritten[0] else {
        panic!("{rewritten:?}")
    };
    assert_eq!(*status, StatusCode::OK);
    assert_eq!(
        h["x-app-path"], "/hello?x=1",
        "the app sees the rewritten path"
    );
    assert_eq!(h["x-app-host"], "web-v1.internal");
    assert_eq!(h["x-app-saw-x-test-env"], "canary");
    assert!(!h.contains_key("x-app-saw-x-test-drop"));
    assert_eq!(h["x-served-by"], "weft", "the client sees the added header");
    let moved = get(client, 1, "/moved/here?y=2", &[]).await;
    let Ok((status, h)) = &moved[0] else {
        panic!("{moved:?}")
    };
    assert_eq!(*status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(h["location"], "http://new.shop/moved/here?y=2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_route_applies_only_to_its_namespace() {
    let routes = route(
        "batch-view",
        "batch",
        "  - backendRefs: [{name: web-v2, namespace: shop, port: 80}]\n    filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-route, value: batch-view}]}}]\n",
    ) + "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: batch-routes, namespace: shop}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: batch}]\n  to: [{group: \"\", kind: Service}]\n";
    let Some(mut m) = mesh(
        "a_consumer_route_applies_only_to_its_namespace",
        Behaviour::default(),
        Behaviour::default(),
        &routes,
    )
    .await
    else {
        return;
    };
    m.add_pod("batch-0", 5, async {}, &[("WEFT_PROXY_NAMESPACE", "batch")])
        .await;
    let by_route = |answers: &[Answer]| {
        answers
            .iter()
            .filter(|a| matches!(a, Ok((s, h)) if s.is_success() && h.get("x-route").is_some_and(|v| v == "batch-view")))
            .count()
    };
    let batch = get(m.pod("batch-0"), 40, "/hello", &[]).await;
    assert!(all_from(&batch, "v2"), "{batch:?}");
    assert_eq!(by_route(&batch), 40, "batch's clients take their route");
    let shop = get(m.pod("client-0"), 40, "/hello", &[]).await;
    assert!(
        shop.iter()
            .all(|a| matches!(a, Ok((s, _)) if s.is_success()))
    );
    assert_eq!(
        by_route(&shop),
        0,
        "shop's clients never take batch's route"
    );
}
