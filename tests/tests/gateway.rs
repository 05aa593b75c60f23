//! Gateway API routes (GAMMA) end to end, with the real controller and
//! proxies in network namespaces: weights stepping as a canary tool steps
//! them, header/query/method matches, a route's timeout and retries,
//! filters seen by the app and the client, consumer routes. Needs root.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use http::{Request, StatusCode};
use weft_tests::apps::{self, Behaviour};
use weft_tests::client::{self, Conn};
use weft_tests::echo::{self, echo_client::EchoClient};
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
    // Linkerd's route metrics: 80 requests on the HTTPRoute, each try
    // counted at its backend.
    let route = "route_kind=\"HTTPRoute\",route_namespace=\"shop\",route_name=\"ab\"";
    let ok = client
        .metric(
            "outbound_http_route_request_statuses_total",
            &[route, "parent_name=\"web\"", "http_status=\"200\""],
        )
        .await;
    assert_eq!(ok, 80.0);
    for backend in ["web-v1", "web-v2"] {
        let b = format!("backend_name=\"{backend}\"");
        let tries = client
            .metric("outbound_http_route_backend_requests_total", &[route, &b])
            .await;
        assert_eq!(tries, 40.0, "{backend}");
    }
    // Weft's own route metrics (what `weft stat routes`, `weft top` and the
    // dashboard read) have a row per rule, named <namespace>/<route>/<rule>.
    for rule in ["shop/ab/0", "shop/ab/1"] {
        let r = format!("route=\"{rule}\"");
        let n = client.metric("route_response_total", &[&r]).await;
        assert_eq!(n, 40.0, "{rule}");
    }
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
    // Linkerd's route retry metrics agree with Weft's own.
    let client = m.pod("client-0");
    let route = "route_name=\"flaky\"";
    let retried = client.metric("retry_total", &[]).await;
    let linkerd = client
        .metric("outbound_http_route_retry_requests_total", &[route])
        .await;
    assert_eq!(linkerd, retried);
    // ~ 400 x 0.25 requests needed a retry; nearly all of them succeeded.
    let saved = client
        .metric("outbound_http_route_retry_successes_total", &[route])
        .await;
    assert!((50.0..=160.0).contains(&saved), "{saved} saved by a retry");
    let ok = client
        .metric(
            "outbound_http_route_request_statuses_total",
            &[route, "http_status=\"200\""],
        )
        .await;
    assert_eq!(ok, (n - failed) as f64);
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

/// A mirror that is slow and fails every request: the client sees only
/// the real backend's answers, none of them delayed by the mirror, while
/// the mirror gets a copy of each request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_gets_copies_and_the_client_sees_only_the_primary() {
    const N: usize = 40;
    const MIRROR_DELAY: Duration = Duration::from_millis(100);
    let routes = route(
        "mirrored",
        "shop",
        "  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: web-v2, port: 80}}}]\n    backendRefs: [{name: web-v1, port: 80}]\n",
    );
    let slow_and_broken = Behaviour {
        delay: MIRROR_DELAY,
        fail_ratio: 1.0,
    };
    let Some(m) = mesh(
        "a_mirror_gets_copies_and_the_client_sees_only_the_primary",
        Behaviour::default(),
        slow_and_broken,
        &routes,
    )
    .await
    else {
        return;
    };
    let client = m.pod("client-0");
    let started = std::time::Instant::now();
    let answers = get(client, N, "/hello", &[]).await;
    let took = started.elapsed();
    assert!(all_from(&answers, "v1"), "{answers:?}");
    // Waiting on the mirror would take N x 100 ms = 4 s; a quarter of
    // that is far above what the real backend takes, far below the mirror.
    assert!(
        took < MIRROR_DELAY * N as u32 / 4,
        "{N} requests took {took:?}: the mirror slowed them"
    );
    let copies = async || {
        client
            .metric(
                "route_mirror_requests_total",
                &["backend=\"web-v2\"", "outcome=\"answered\""],
            )
            .await
    };
    wait::until(
        "every copy is answered by the mirror",
        Duration::from_secs(20),
        async || copies().await == N as f64,
    )
    .await;
    // The mirror's own proxy saw the copies, and failed them all.
    let mirror = m.pod("v2");
    let failed = mirror
        .metric(
            "response_total",
            &["direction=\"inbound\"", "status_code=\"503\""],
        )
        .await;
    assert_eq!(failed, N as f64);
    let v1 = m.pod("v1");
    let served = v1
        .metric(
            "response_total",
            &["direction=\"inbound\"", "status_code=\"200\""],
        )
        .await;
    assert_eq!(served, N as f64, "the real backend got each request once");
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

/// A GRPCRoute sends one method to another backend; the rest of the
/// service's calls, streaming ones included, stay; Linkerd's gRPC route
/// metrics count the calls by gRPC status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_route_sends_one_method_elsewhere() {
    let world = http_service("echo", "198.19.0.20", "app: echo")
        + &http_service("echo-v1", "198.19.0.21", "track: v1")
        + &http_service("echo-v2", "198.19.0.22", "track: v2")
        + &labelled_pod("g1", "app: echo, track: v1", "198.18.0.5")
        + &labelled_pod("g2", "app: echo, track: v2", "198.18.0.6");
    let routes = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: echo, namespace: shop}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 80}]\n  rules:\n  - matches: [{method: {service: weft.test.echo.Echo, method: Unary}}]\n    backendRefs: [{name: echo-v2, port: 80}]\n  - backendRefs: [{name: echo-v1, port: 80}]\n";
    let test = "a_grpc_route_sends_one_method_elsewhere";
    let Some(mut m) = MeshLab::start(
        test,
        &[("world.yaml", world), ("routes.yaml", routes.into())],
    )
    .await
    else {
        return;
    };
    m.add_pod("client-0", 2, async {}, &[]).await;
    for (name, octet, app) in [("g1", 5, "v1"), ("g2", 6, "v2")] {
        let serve = async move {
            let any = SocketAddr::from(([0, 0, 0, 0], 8080));
            apps::grpc_app(any, app).await.unwrap();
        };
        m.add_pod(name, octet, serve, &[]).await;
    }
    let client = m.pod("client-0");
    let servers = client
        .rt
        .run(async {
            let channel = tonic::transport::Endpoint::from_static("http://198.19.0.20:80")
                .connect()
                .await
                .expect("a gRPC channel through the mesh");
            let mut c = EchoClient::new(channel);
            let msg = |code: tonic::Code| echo::EchoRequest {
                message: "hi".into(),
                code: code as i32,
            };
            let mut unary = Vec::new();
            for _ in 0..10 {
                unary.push(
                    c.unary(msg(tonic::Code::Ok))
                        .await
                        .unwrap()
                        .into_inner()
                        .server,
                );
            }
            let mut chat = c
                .chat(tokio_stream::iter(vec![msg(tonic::Code::Ok)]))
                .await
                .unwrap()
                .into_inner();
            let chatted = chat.next().await.unwrap().unwrap().server;
            let denied = c
                .fail(msg(tonic::Code::PermissionDenied))
                .await
                .unwrap_err();
            assert_eq!(denied.code(), tonic::Code::PermissionDenied);
            (unary, chatted)
        })
        .await;
    assert_eq!(servers.0, vec!["v2"; 10], "Unary goes to echo-v2");
    assert_eq!(servers.1, "v1", "other methods stay on echo-v1");
    let route = "route_kind=\"GRPCRoute\",route_name=\"echo\",parent_name=\"echo\"";
    let count = async |status: &str| {
        let s = format!("grpc_status=\"{status}\"");
        client
            .metric("outbound_grpc_route_request_statuses_total", &[route, &s])
            .await
    };
    wait::until(
        "the calls are counted by gRPC status",
        Duration::from_secs(5),
        async || count("OK").await == 11.0 && count("PERMISSION_DENIED").await == 1.0,
    )
    .await;
    let to_v2 = client
        .metric(
            "outbound_grpc_route_backend_requests_total",
            &[route, "backend_name=\"echo-v2\""],
        )
        .await;
    assert_eq!(to_v2, 10.0);
}
