//! Traffic management end to end: retries (and their budget), timeouts,
//! peak-EWMA balancing, failure accrual, header-matched splits, with the
//! real controller and proxies in network namespaces. Needs root.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use weft_tests::apps::{self, Behaviour, HttpVersions};
use weft_tests::client::{self, Conn};
use weft_tests::echo::{self, echo_client::EchoClient};
use weft_tests::mesh::MeshLab;
use weft_tests::pod::Pod;
use weft_tests::yaml::{http_service, labelled_pod};

const WEB: &str = "198.19.0.10:80";

fn retry_policy(spec: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: RetryPolicy\nmetadata: {{name: web, namespace: shop}}\nspec:\n  targetRef: {{kind: Service, name: web}}\n{spec}\n"
    )
}

/// A mesh with a client pod and web pods `a` (198.18.0.3) and `b` (.4)
/// behaving as given, plus `extra` YAML.
async fn mesh(test: &str, a: Behaviour, b: Behaviour, extra: &str) -> Option<MeshLab> {
    let world = http_service("web", "198.19.0.10", "app: web")
        + &labelled_pod("a", "app: web", "198.18.0.3")
        + &labelled_pod("b", "app: web", "198.18.0.4");
    let mut m = MeshLab::start(
        test,
        &[("world.yaml", world), ("extra.yaml", extra.to_string())],
    )
    .await?;
    m.add_pod("client-0", 2, async {}, &[]).await;
    for (name, octet, behaviour) in [("a", 3, a), ("b", 4, b)] {
        m.add_app_pod(name, octet, behaviour).await;
    }
    Some(m)
}

/// What one request came to: (status, app that answered, proxy error).
type Answer = Result<(StatusCode, String, Option<String>), String>;

/// Sends `n` requests one after another over one keep-alive connection.
async fn requests(
    client: &Pod,
    n: usize,
    method: Method,
    path: &'static str,
    body: Bytes,
    headers: &'static [(&'static str, &'static str)],
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
                let mut req = Request::builder()
                    .method(method.clone())
                    .uri(path)
                    .header("host", "web.shop.svc.cluster.local");
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                let req = req.body(client::full(body.clone())).unwrap();
                out.push(c.fetch(req).await.map_err(|e| e.to_string()).map(|r| {
                    let app = r
                        .headers()
                        .get("x-app-name")
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    let err = r
                        .headers()
                        .get("weft-proxy-error")
                        .map(|v| v.to_str().unwrap().to_string());
                    (r.status(), app, err)
                }));
            }
            out
        })
        .await
}

fn gets(client: &Pod, n: usize) -> impl Future<Output = Vec<Answer>> + '_ {
    requests(client, n, Method::GET, "/hello", Bytes::new(), &[])
}

fn ok_count(answers: &[Answer]) -> usize {
    answers
        .iter()
        .filter(|a| matches!(a, Ok((s, _, _)) if s.is_success()))
        .count()
}

const FLAKY: Behaviour = Behaviour {
    delay: Duration::ZERO,
    fail_ratio: 0.25,
};
const BROKEN: Behaviour = Behaviour {
    delay: Duration::ZERO,
    fail_ratio: 1.0,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_backend_failing_a_quarter_of_requests() {
    let policy = retry_policy(
        "  retryOn: [5xx]\n  maxRetries: 4\n  duration: 5ms\n  budget: {ratio: 0.5, minRetriesPerSecond: 10, ttl: 10s}",
    );
    let Some(m) = mesh(
        "retries_hide_a_backend_failing_a_quarter_of_requests",
        FLAKY,
        FLAKY,
        &policy,
    )
    .await
    else {
        return;
    };
    let client = m.pod("client-0");
    let answers = gets(client, 600).await;
    // A request fails only if all 5 tries fail: 0.25^5 ~ 0.1%; allow 1%.
    let failed = 600 - ok_count(&answers);
    assert!(
        failed <= 6,
        "{failed} of 600 failed: {:?}",
        answers
            .iter()
            .find(|a| !matches!(a, Ok((s, _, _)) if s.is_success()))
    );
    // About a third of requests needed a retry: 600 x (0.25 + 0.25^2 + ...) ~ 200.
    let retries = client.metric("retry_total", &["reason=\"5xx\""]).await;
    assert!((120.0..=300.0).contains(&retries), "{retries} retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_a_failing_backend_stop_at_the_budget() {
    let policy = retry_policy(
        "  retryOn: [5xx]\n  maxRetries: 3\n  duration: 1ms\n  budget: {ratio: 0.2, minRetriesPerSecond: 1, ttl: 10s}",
    );
    let Some(m) = mesh(
        "retries_of_a_failing_backend_stop_at_the_budget",
        BROKEN,
        BROKEN,
        &policy,
    )
    .await
    else {
        return;
    };
    let client = m.pod("client-0");
    let started = Instant::now();
    let answers = gets(client, 500).await;
    let seconds = started.elapsed().as_secs_f64().min(10.0);
    assert_eq!(ok_count(&answers), 0);
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Ok((StatusCode::SERVICE_UNAVAILABLE, _, None)))),
        "the app's own 503 comes back"
    );
    let retries = client.metric("retry_total", &[]).await;
    let exhausted = client.metric("retry_budget_exhausted_total", &[]).await;
    // The budget: 0.2 x 500 requests + 1/s reserve for the (under 10 s) run.
    let allowed = 0.2 * 500.0 + seconds.ceil() + 10.0;
    assert!(retries <= allowed, "{retries} retries, budget {allowed}");
    assert!(
        retries >= 0.2 * 500.0 * 0.9,
        "{retries} retries: the budget's share was used"
    );
    assert!(
        exhausted >= 500.0 - retries - 1.0,
        "{exhausted} requests found the budget spent"
    );
    println!(
        "measured: {retries} retries for 500 requests ({:.3} per request) in {seconds:.1}s",
        retries / 500.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn most_requests_go_to_the_faster_endpoint() {
    let slow = Behaviour {
        delay: Duration::from_millis(150),
        fail_ratio: 0.0,
    };
    let Some(m) = mesh(
        "most_requests_go_to_the_faster_endpoint",
        slow,
        Behaviour::default(),
        "",
    )
    .await
    else {
        return;
    };
    let answers = gets(m.pod("client-0"), 100).await;
    assert_eq!(ok_count(&answers), 100);
    let fast = answers
        .iter()
        .filter(|a| matches!(a, Ok((_, app, _)) if app == "b"))
        .count();
    assert!(fast >= 90, "the fast endpoint served {fast} of 100");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_keep_succeeding_when_an_endpoint_dies() {
    let policy = retry_policy(
        "  retryOn: [connect-failure, gateway-error]\n  maxRetries: 2\n  duration: 1ms",
    );
    let Some(mut m) = mesh(
        "requests_keep_succeeding_when_an_endpoint_dies",
        Behaviour::default(),
        Behaviour::default(),
        &policy,
    )
    .await
    else {
        return;
    };
    let before = gets(m.pod("client-0"), 50).await;
    assert_eq!(ok_count(&before), 50);
    // Pod b's process dies (its proxy and app), its address stays routed.
    m.kill_pod("b");
    let after = gets(m.pod("client-0"), 300).await;
    assert_eq!(
        ok_count(&after),
        300,
        "{:?}",
        after
            .iter()
            .find(|a| !matches!(a, Ok((s, _, _)) if s.is_success()))
    );
    assert!(
        after
            .iter()
            .all(|a| matches!(a, Ok((_, app, _)) if app == "a"))
    );
    // The dead endpoint stops receiving traffic within a few requests: a
    // refused connection counts as a 1 s answer for the balancer (and 7 in a
    // row eject it).
    let client = m.pod("client-0");
    let tried_dead = client
        .metric("request_try_total", &["outcome=\"connect_failure\""])
        .await
        + client
            .metric("request_try_total", &["outcome=\"reset\""])
            .await;
    assert!(
        tried_dead <= 10.0,
        "{tried_dead} tries went to the dead endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_post_is_not_retried_a_small_one_is() {
    let policy = retry_policy(
        "  retryOn: [5xx]\n  maxRetries: 2\n  duration: 1ms\n  retryNonIdempotent: true",
    );
    let Some(m) = mesh(
        "a_large_post_is_not_retried_a_small_one_is",
        BROKEN,
        BROKEN,
        &policy,
    )
    .await
    else {
        return;
    };
    let client = m.pod("client-0");
    let big = Bytes::from(vec![b'x'; 1024 * 1024]);
    let answers = requests(client, 1, Method::POST, "/echo", big, &[]).await;
    // The app answers 503 before reading the body and closes; depending on
    // timing the client sees that 503 or the reset (502), as it would
    // without a mesh.
    assert!(
        matches!(answers[0], Ok((s, _, _)) if s == StatusCode::SERVICE_UNAVAILABLE || s == StatusCode::BAD_GATEWAY),
        "{answers:?}"
    );
    assert_eq!(
        client.metric("retry_total", &[]).await,
        0.0,
        "a 1 MiB body is beyond the replay buffer"
    );
    assert_eq!(client.metric("request_try_total", &[]).await, 1.0);

    let small = Bytes::from(vec![b'x'; 1024]);
    requests(client, 1, Method::POST, "/echo", small, &[]).await;
    assert_eq!(
        client.metric("retry_total", &[]).await,
        2.0,
        "a 1 KiB body is replayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_service_times_out_with_504() {
    let slow = Behaviour {
        delay: Duration::from_millis(1000),
        fail_ratio: 0.0,
    };
    let policy = retry_policy("  maxRetries: 0\n  timeout: 300ms");
    let Some(m) = mesh("a_slow_service_times_out_with_504", slow, slow, &policy).await else {
        return;
    };
    let started = Instant::now();
    let answers = gets(m.pod("client-0"), 1).await;
    let took = started.elapsed();
    match &answers[0] {
        Ok((StatusCode::GATEWAY_TIMEOUT, _, Some(err))) => {
            assert!(err.contains("timed out after 300ms"), "{err}")
        }
        other => panic!("{other:?}"),
    }
    assert!(took < Duration::from_millis(900), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_match_routes_to_the_canary() {
    let canary = http_service("web-stable", "198.19.0.11", "app: web")
        + &http_service("web-canary", "198.19.0.12", "track: canary")
        + &labelled_pod("c", "track: canary", "198.18.0.5")
        + r#"---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: canary-testers, namespace: shop}
spec:
  matches:
  - name: testers
    headers: [{x-canary: "true"}]
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: web-canary, namespace: shop}
spec:
  service: web
  matches: [{kind: HTTPRouteGroup, name: canary-testers}]
  backends:
  - {service: web-canary, weight: 100}
  - {service: web-stable, weight: 0}
"#;
    let Some(mut m) = mesh(
        "a_header_match_routes_to_the_canary",
        Behaviour::default(),
        Behaviour::default(),
        &canary,
    )
    .await
    else {
        return;
    };
    let app = async {
        apps::http_app(
            SocketAddr::from(([0, 0, 0, 0], 8080)),
            "c",
            HttpVersions::Both,
        )
        .await
        .unwrap();
    };
    m.add_pod("c", 5, app, &[]).await;
    let client = m.pod("client-0");
    let testers = requests(
        client,
        30,
        Method::GET,
        "/hello",
        Bytes::new(),
        &[("x-canary", "true")],
    )
    .await;
    assert!(
        testers
            .iter()
            .all(|a| matches!(a, Ok((s, app, _)) if s.is_success() && app == "c")),
        "{testers:?}"
    );
    let others = gets(client, 30).await;
    assert!(
        others
            .iter()
            .all(|a| matches!(a, Ok((s, app, _)) if s.is_success() && app != "c")),
        "{others:?}"
    );
}

/// A gRPC server that fails a quarter of calls with UNAVAILABLE in the
/// trailers (after its headers and reply message): a RetryPolicy retrying
/// `unavailable` reads the trailers and hides the failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_act_on_a_grpc_status_in_the_trailers() {
    let world = http_service("echo", "198.19.0.20", "app: echo")
        + &labelled_pod("g", "app: echo", "198.18.0.5");
    let policy = "apiVersion: weft.dev/v1alpha1\nkind: RetryPolicy\nmetadata: {name: echo, namespace: shop}\nspec:\n  targetRef: {kind: Service, name: echo}\n  retryOn: [unavailable]\n  maxRetries: 4\n  duration: 1ms\n  retryNonIdempotent: true\n  budget: {ratio: 0.5, minRetriesPerSecond: 10, ttl: 10s}\n";
    let test = "retries_act_on_a_grpc_status_in_the_trailers";
    let Some(mut m) = MeshLab::start(
        test,
        &[("world.yaml", world), ("retry.yaml", policy.into())],
    )
    .await
    else {
        return;
    };
    m.add_pod("client-0", 2, async {}, &[]).await;
    let app = async {
        let any = SocketAddr::from(([0, 0, 0, 0], 8080));
        apps::grpc_trailers_app(any, "g", 0.25).await.unwrap();
    };
    m.add_pod("g", 5, app, &[]).await;
    const CALLS: usize = 400;
    let codes = m
        .pod("client-0")
        .rt
        .run(async {
            let channel = tonic::transport::Endpoint::from_static("http://198.19.0.20:80")
                .connect()
                .await
                .expect("a gRPC channel through the mesh");
            let mut client = EchoClient::new(channel);
            let mut codes = Vec::with_capacity(CALLS);
            for _ in 0..CALLS {
                let call = client.unary(echo::EchoRequest {
                    message: "hi".into(),
                    code: 0,
                });
                codes.push(match call.await {
                    Ok(reply) => {
                        assert_eq!(reply.get_ref().server, "g");
                        tonic::Code::Ok
                    }
                    Err(status) => status.code(),
                });
            }
            codes
        })
        .await;
    // Without reading the trailers ~100 calls would fail; with retries a
    // call fails only when all 5 tries do: 0.25^5 x 400 ~ 0.4 expected,
    // so more than 4 (Poisson tail ~1e-4) means the trailers were missed.
    let failed: Vec<_> = codes.iter().filter(|c| **c != tonic::Code::Ok).collect();
    assert!(
        failed.len() <= 4,
        "{} of {CALLS} failed: {failed:?}",
        failed.len()
    );
    // Retries: 400 x (0.25 + 0.25^2 + ...) ~ 133, sd ~ 11 (each call's
    // retry count is geometric); 80..=200 is a bound of ~5 sd.
    let client = m.pod("client-0");
    let retries = client
        .metric("retry_total", &["reason=\"grpc-status\""])
        .await;
    assert!((80.0..=200.0).contains(&retries), "{retries} retries");
    // The Service has no route of its own: Linkerd's default route, with
    // the gRPC statuses the client got.
    let route = "route_kind=\"default\",route_name=\"http\",parent_name=\"echo\"";
    let linkerd = client
        .metric("outbound_http_route_retry_requests_total", &[route])
        .await;
    assert_eq!(linkerd, retries);
}
