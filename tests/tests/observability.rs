//! Observability end to end, in a mesh of two pods with identity (the
//! frontend calls web over mTLS): spans exported by both proxies to real
//! OTLP receivers (gRPC and HTTP/protobuf) nesting under the caller's
//! span, in W3C and B3; parent-based and ratio sampling; a collector that
//! never answers costing requests nothing; access logs in JSON and Apache
//! format; tap streaming what matches to localhost only. Needs root.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use weft_tests::apps::{self, HttpVersions};
use weft_tests::client::{self, Conn};
use weft_tests::mesh::{Identity, MeshLab};
use weft_tests::otlp::{self, Received, Spans};
use weft_tests::yaml::{NAMESPACE, id, pod, service};

const WEB: &str = "198.19.0.10:80";
const COLLECTOR_GRPC: &str = "198.18.0.100:4317";
const COLLECTOR_HTTP: &str = "198.18.0.100:4318";

fn files() -> Vec<(&'static str, String)> {
    vec![(
        "mesh.yaml",
        format!(
            "{NAMESPACE}{}{}{}",
            service("web", "198.19.0.10", 80, 8080, "web"),
            pod("web", "web", "web", "198.18.0.3"),
            pod("frontend", "frontend", "frontend", "198.18.0.2"),
        ),
    )]
}

/// The lab: the controller (with identity), then web and frontend with
/// `web_env` / `frontend_env` on top of their identity, their stdout to
/// the given files.
async fn mesh(
    test: &str,
    web_env: &[(&str, &str)],
    frontend_env: &[(&str, &str)],
    stdout: [Option<&Path>; 2],
) -> Option<MeshLab> {
    let identity = Identity {
        service_accounts: vec!["web".into(), "frontend".into()],
        leaf_lifetime: "1h",
    };
    let mut mesh = MeshLab::start_with(test, &files(), Some(identity)).await?;
    for (name, octet, env, out) in [
        ("web", 3, web_env, stdout[0]),
        ("frontend", 2, frontend_env, stdout[1]),
    ] {
        let mut all = mesh.identity_env(name);
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let apps = async move {
            if name == "web" {
                let any = SocketAddr::from(([0, 0, 0, 0], 8080));
                apps::http_app(any, "web", HttpVersions::Both)
                    .await
                    .unwrap();
            }
        };
        mesh.add_pod_logged(name, octet, apps, &all, out).await;
    }
    Some(mesh)
}

/// The collectors on the controller's host: OTLP/gRPC and OTLP/HTTP.
async fn collectors(mesh: &MeshLab) -> (Spans, Spans) {
    mesh.ctl_rt
        .run(async {
            let grpc = otlp::grpc_receiver(COLLECTOR_GRPC.parse().unwrap()).await.1;
            let http = otlp::http_receiver(COLLECTOR_HTTP.parse().unwrap()).await.1;
            (grpc, http)
        })
        .await
}

/// One request from the frontend's app to web.shop with `headers`: the
/// status and the headers the answer carried.
async fn call(mesh: &MeshLab, path: &str, headers: &[(&str, String)]) -> (u16, http::HeaderMap) {
    let mut req = Request::get(path).header("host", "web.shop.svc.cluster.local");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req.body(client::empty()).unwrap();
    mesh.pod("frontend")
        .rt
        .run(async move {
            let mut conn = Conn::http1(WEB.parse().unwrap()).await.expect("connect");
            let rsp = conn.fetch(req).await.expect("an answer");
            (rsp.status().as_u16(), rsp.headers().clone())
        })
        .await
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn of_trace<'a>(spans: &'a [Received], trace: &str) -> Vec<&'a Received> {
    spans
        .iter()
        .filter(|s| hex(&s.span.trace_id) == trace)
        .collect()
}

const CLIENT: i32 = 3; // SpanKind::Client
const SERVER: i32 = 2; // SpanKind::Server

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_from_both_proxies_nest_under_the_callers_in_w3c_and_b3() {
    // The frontend exports over gRPC, web over HTTP/protobuf; neither
    // samples on its own, so only the callers' sampled traces are recorded.
    let grpc = format!("grpc://{COLLECTOR_GRPC}");
    let http = format!("http://{COLLECTOR_HTTP}");
    let no_ratio = ("WEFT_PROXY_TRACE_SAMPLING", "0");
    let Some(mesh) = mesh(
        "traces-nest",
        &[("WEFT_PROXY_TRACE_COLLECTOR", &http), no_ratio],
        &[("WEFT_PROXY_TRACE_COLLECTOR", &grpc), no_ratio],
        [None, None],
    )
    .await
    else {
        return;
    };
    let (from_frontend, from_web) = collectors(&mesh).await;

    // Not sampled by the caller: passed through untouched, nothing recorded.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let tp = format!("00-{unsampled}-b7ad6b7169203331-00");
    let (status, saw) = call(&mesh, "/hello", &[("traceparent", tp.clone())]).await;
    assert_eq!(status, 200);
    assert_eq!(saw["x-app-saw-traceparent"], tp.as_str());

    // W3C, sampled.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let tp = format!("00-{trace}-{caller}-01");
    let (status, saw) = call(
        &mesh,
        "/hello",
        &[("traceparent", tp), ("tracestate", "vendor=1".into())],
    )
    .await;
    assert_eq!(status, 200);
    let wait = Duration::from_secs(10);
    let out = from_frontend
        .wait_for(wait, "the frontend's client span", |s| {
            !of_trace(s, trace).is_empty()
        })
        .await;
    let inb = from_web
        .wait_for(wait, "web's server span", |s| {
            !of_trace(s, trace).is_empty()
        })
        .await;
    let (out, inb) = (of_trace(&out, trace)[0], of_trace(&inb, trace)[0]);
    assert_eq!((out.span.kind, inb.span.kind), (CLIENT, SERVER));
    assert_eq!(
        hex(&out.span.parent_span_id),
        caller,
        "under the caller's span"
    );
    assert_eq!(out.span.parent_span_id.len(), 8);
    assert_eq!(
        inb.span.parent_span_id, out.span.span_id,
        "server under client"
    );
    // The app's spans would nest under web's proxy.
    assert_eq!(
        saw["x-app-saw-traceparent"],
        format!("00-{trace}-{}-01", hex(&inb.span.span_id)).as_str()
    );
    assert_eq!(saw["x-app-saw-tracestate"], "vendor=1");
    assert!(inb.span.start_time_unix_nano >= out.span.start_time_unix_nano);
    assert!(out.span.end_time_unix_nano >= inb.span.end_time_unix_nano);
    assert_eq!(
        (out.service.as_str(), out.pod.as_str()),
        ("frontend.shop", "frontend")
    );
    assert_eq!(
        (inb.service.as_str(), inb.pod.as_str()),
        ("web.shop", "web")
    );
    assert_eq!(out.attr("weft.direction").as_deref(), Some("outbound"));
    assert_eq!(inb.attr("weft.direction").as_deref(), Some("inbound"));
    assert_eq!(out.attr("weft.server_id"), Some(id("web")), "identities");
    assert_eq!(inb.attr("weft.client_id"), Some(id("frontend")));
    assert_eq!(out.attr("weft.backend").as_deref(), Some("web"));
    assert!(out.attr("weft.route").is_some());
    assert_eq!(
        out.attr("weft.endpoint").as_deref(),
        Some("198.18.0.3:8080")
    );
    assert_eq!(out.attr("weft.retries").as_deref(), Some("0"));
    for s in [out, inb] {
        assert_eq!(s.attr("http.response.status_code").as_deref(), Some("200"));
        assert_eq!(s.attr("http.request.method").as_deref(), Some("GET"));
        assert_eq!(s.attr("url.path").as_deref(), Some("/hello"));
    }

    // B3, multi header: stays B3 (no traceparent appears), nests the same.
    let trace = "463ac35c9f6413ad48485a3953bb6124";
    let caller = "a2fb4a1d1a96d312";
    let (status, saw) = call(
        &mesh,
        "/status/503",
        &[
            ("x-b3-traceid", trace.into()),
            ("x-b3-spanid", caller.into()),
            ("x-b3-sampled", "1".into()),
        ],
    )
    .await;
    assert_eq!(status, 503);
    let out = from_frontend
        .wait_for(wait, "the B3 client span", |s| {
            !of_trace(s, trace).is_empty()
        })
        .await;
    let inb = from_web
        .wait_for(wait, "the B3 server span", |s| {
            !of_trace(s, trace).is_empty()
        })
        .await;
    let (out, inb) = (of_trace(&out, trace)[0], of_trace(&inb, trace)[0]);
    assert_eq!(hex(&out.span.parent_span_id), caller);
    assert_eq!(inb.span.parent_span_id, out.span.span_id);
    assert!(!saw.contains_key("x-app-saw-traceparent"), "{saw:?}");
    assert_eq!(saw["x-app-saw-x-b3-traceid"], trace);
    assert_eq!(
        saw["x-app-saw-x-b3-spanid"],
        hex(&inb.span.span_id).as_str()
    );
    assert_eq!(
        saw["x-app-saw-x-b3-parentspanid"],
        hex(&out.span.span_id).as_str()
    );
    // A 503 is an error span.
    assert_eq!(
        inb.attr("http.response.status_code").as_deref(),
        Some("503")
    );
    assert_eq!(inb.span.status.as_ref().unwrap().code, 2);

    // Spans queue in order: the unsampled trace, sent first, never came.
    assert!(of_trace(&from_frontend.all(), unsampled).is_empty());
    assert!(of_trace(&from_web.all(), unsampled).is_empty());

    // No context and no sampling of its own: the outbound proxy starts one,
    // marked not sampled, so the hops after agree.
    let (_, saw) = call(&mesh, "/hello", &[]).await;
    let tp = saw["x-app-saw-traceparent"].to_str().unwrap().to_string();
    assert!(tp.starts_with("00-") && tp.ends_with("-00"), "{tp}");
    let exported = mesh
        .pod("frontend")
        .metric("trace_spans_exported_total", &[])
        .await;
    assert!(exported >= 2.0, "{exported}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_ratio_and_a_silent_collector_costs_requests_nothing() {
    // web's collector accepts connections and never answers.
    let silent = "198.18.0.100:4999";
    let grpc = format!("grpc://{COLLECTOR_GRPC}");
    let dead = format!("grpc://{silent}");
    let Some(mesh) = mesh(
        "traces-sampling",
        &[("WEFT_PROXY_TRACE_COLLECTOR", &dead)],
        &[
            ("WEFT_PROXY_TRACE_COLLECTOR", &grpc),
            ("WEFT_PROXY_TRACE_SAMPLING", "0.5"),
        ],
        [None, None],
    )
    .await
    else {
        return;
    };
    let (from_frontend, _) = collectors(&mesh).await;
    mesh.ctl_rt
        .run(async move {
            let l = tokio::net::TcpListener::bind(silent).await.unwrap();
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((s, _)) = l.accept().await {
                    held.push(s);
                }
            });
        })
        .await;

    const N: usize = 400;
    let slowest = mesh
        .pod("frontend")
        .rt
        .run(async move {
            let mut conn = Conn::http1(WEB.parse().unwrap()).await.unwrap();
            let mut slowest = Duration::ZERO;
            for _ in 0..N {
                let req = Request::get("/hello")
                    .header("host", "web.shop.svc.cluster.local")
                    .body(client::empty())
                    .unwrap();
                let t = Instant::now();
                let rsp = conn.fetch(req).await.unwrap();
                assert_eq!(rsp.status(), 200);
                slowest = slowest.max(t.elapsed());
            }
            slowest
        })
        .await;
    // Exports time out after 5 s; requests never waited for one.
    assert!(
        slowest < Duration::from_secs(1),
        "slowest request {slowest:?}"
    );

    // Half the new traces sampled: binomial(400, 0.5) has a standard
    // deviation of 10; 4 of them either side fails once in ~16,000 runs.
    let frontend = mesh.pod("frontend");
    let deadline = Instant::now() + Duration::from_secs(10);
    let exported = loop {
        let e = frontend.metric("trace_spans_exported_total", &[]).await;
        let sampled = from_frontend.all().len() as f64;
        if e > 0.0 && e == sampled || Instant::now() > deadline {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        (160.0..=240.0).contains(&exported),
        "{exported} of {N} sampled"
    );
    assert!(from_frontend.all().iter().all(|s| s.span.kind == CLIENT));
    // web honours each decision: it recorded exactly the sampled requests,
    // and dropped them all when its exports timed out.
    let web = mesh.pod("web");
    let failed = ["reason=\"export_failed\""];
    let deadline = Instant::now() + Duration::from_secs(20);
    while web.metric("trace_spans_dropped_total", &failed).await < exported {
        assert!(Instant::now() < deadline, "web's spans were not dropped");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        web.metric("trace_spans_dropped_total", &failed).await,
        exported
    );
    assert_eq!(web.metric("trace_spans_exported_total", &[]).await, 0.0);
}

/// Waits until `file` has `n` lines and returns them.
async fn lines(file: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(String::from).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} lines: {text}",
            file.display(),
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_logs_in_json_and_apache_combined() {
    let dir = std::env::temp_dir().join(format!("weft-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (web_log, frontend_log): (PathBuf, PathBuf) = (dir.join("web"), dir.join("frontend"));
    let Some(mesh) = mesh(
        "access-logs",
        &[("WEFT_PROXY_ACCESS_LOG", "apache")],
        &[("WEFT_PROXY_ACCESS_LOG", "json")],
        [Some(&web_log), Some(&frontend_log)],
    )
    .await
    else {
        return;
    };
    assert_eq!(
        call(&mesh, "/hello", &[("user-agent", "probe/1".into())])
            .await
            .0,
        200
    );
    assert_eq!(call(&mesh, "/status/503", &[]).await.0, 503);

    let json: Vec<serde_json::Value> = lines(&frontend_log, 2)
        .await
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let hello = &json[0];
    assert_eq!(hello["direction"], "outbound");
    assert_eq!(hello["method"], "GET");
    assert_eq!(hello["authority"], "web.shop.svc.cluster.local");
    assert_eq!(hello["path"], "/hello");
    assert_eq!(hello["protocol"], "HTTP/1.1");
    assert_eq!(hello["status"], 200);
    assert_eq!(hello["response_bytes"], "hello from web".len());
    assert_eq!(hello["server_id"], id("web"));
    assert_eq!(hello["backend"], "web");
    assert_eq!(hello["endpoint"], "198.18.0.3:8080");
    assert_eq!(hello["retries"], 0);
    assert!(hello["route"].is_string());
    assert!(hello["error"].is_null());
    assert!(hello["time"].as_str().unwrap().ends_with('Z'));
    assert!(hello["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(
        hello["client_addr"]
            .as_str()
            .unwrap()
            .starts_with("198.18.0.2:")
    );
    assert_eq!(json[1]["status"], 503);
    assert_eq!(json[1]["path"], "/status/503");

    let apache = lines(&web_log, 2).await;
    let prefix = format!("198.18.0.2 - {} [", id("frontend"));
    assert!(apache[0].starts_with(&prefix), "{}", apache[0]);
    assert!(apache[0].contains("] \"GET /hello HTTP/"), "{}", apache[0]);
    assert!(
        apache[0].ends_with(&format!(
            " 200 {} \"-\" \"probe/1\"",
            "hello from web".len()
        )),
        "{}",
        apache[0]
    );
    assert!(
        apache[1].contains("\"GET /status/503 HTTP/") && apache[1].contains(" 503 "),
        "{}",
        apache[1]
    );
    drop(mesh);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Opens `GET /tap?<query>` on `admin` and returns its status and, for a
/// 200, a receiver of its lines.
async fn tap(
    admin: SocketAddr,
    query: &str,
) -> (u16, Option<tokio::sync::mpsc::UnboundedReceiver<String>>) {
    let mut conn = Conn::http1(admin).await.expect("connect to admin");
    let req = Request::get(format!("/tap?{query}"))
        .header("host", "admin")
        .body(client::empty())
        .unwrap();
    let rsp = conn.send(req).await.expect("tap answer");
    let status = rsp.status().as_u16();
    if status != 200 {
        return (status, None);
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut body = rsp.into_body();
    tokio::spawn(async move {
        let _conn = conn;
        let mut buf = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(d) = frame.data_ref() {
                buf.extend_from_slice(d);
                while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                    let line: Bytes = buf.drain(..=i).collect();
                    let _ = tx.send(String::from_utf8_lossy(&line).trim().to_string());
                }
            }
        }
    });
    (status, Some(rx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_streams_what_matches_to_localhost_only() {
    let Some(mesh) = mesh("tap", &[("WEFT_PROXY_TAP", "true")], &[], [None, None]).await else {
        return;
    };
    let local = SocketAddr::from(([127, 0, 0, 1], 4191));
    let web = mesh.pod("web");
    let mut events = web
        .rt
        .run(async move {
            let (status, rx) = tap(local, "direction=inbound&path=/hello").await;
            assert_eq!(status, 200);
            rx.unwrap()
        })
        .await;
    for path in ["/hello", "/status/404", "/hello", "/hello?x=1"] {
        call(&mesh, path, &[]).await;
    }
    let mut got = Vec::new();
    while got.len() < 6 {
        let line = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("tap events")
            .expect("the stream stays open");
        got.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
    }
    let paths: Vec<&str> = got.iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(paths.iter().all(|p| p.starts_with("/hello")), "{paths:?}");
    let requests: Vec<_> = got.iter().filter(|e| e["type"] == "request").collect();
    let responses: Vec<_> = got.iter().filter(|e| e["type"] == "response").collect();
    assert_eq!((requests.len(), responses.len()), (3, 3), "{got:#?}");
    for r in &responses {
        assert_eq!(r["status"], 200);
        assert_eq!(r["pod"], "shop/web");
        assert_eq!(r["direction"], "inbound");
        assert_eq!(r["client_id"], id("frontend"));
        assert!(requests.iter().any(|q| q["id"] == r["id"]), "paired by id");
    }
    // Nothing else arrived (the 404 did not match).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.recv())
            .await
            .is_err()
    );

    // From another meshed pod (its proxy reaches web's admin port over
    // mesh TLS, as the frontend's identity): metrics yes, tap no. Where tap
    // is off: not served.
    let web_admin = SocketAddr::from(([198, 18, 0, 3], 4191));
    let (metrics, from_peer, off) = mesh
        .pod("frontend")
        .rt
        .run(async move {
            let metrics = client::get(web_admin, "/metrics").await.unwrap();
            (
                metrics.status().as_u16(),
                tap(web_admin, "").await.0,
                tap(local, "").await.0,
            )
        })
        .await;
    assert_eq!((metrics, from_peer, off), (200, 403, 404));
    // A bad filter is a 400.
    let bad = web
        .rt
        .run(async move { tap(local, "colour=red").await.0 })
        .await;
    assert_eq!(bad, 400);
}
