//! The transparent data plane end to end: two pods as network namespaces on
//! a bridge, weft-init's real iptables rules in each, the real weft-proxy
//! running as UID 2102 in each, and applications that know nothing of the
//! mesh. Client (pod a) -> a's outbound proxy -> b's inbound proxy -> app (pod b).
//!
//! Needs root (network namespaces, iptables); skips loudly otherwise, and
//! fails instead when WEFT_REQUIRE_NETNS is set (CI).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use weft_tests::apps::{self, FNV_OFFSET, GREETING, HttpVersions, fnv1a, pattern};
use weft_tests::client::{self, Conn};
use weft_tests::echo::{self, echo_client::EchoClient};
use weft_tests::netns::Lab;
use weft_tests::pod::Pod;
use weft_tests::wait;

const HTTP_PORT: u16 = 8080;
const H1_ONLY_PORT: u16 = 8081;
const GRPC_PORT: u16 = 50051;
const HALF_CLOSE_PORT: u16 = 7000;
const GREETING_PORT: u16 = 2525;
const OPAQUE_GREETING_PORT: u16 = 3306;
const CONNECT_PROXY_PORT: u16 = 3128;
const CLOSED_PORT: u16 = 9999;

/// Pods a (client) and b (server), both meshed, with b's apps running.
struct Mesh {
    lab: Arc<Lab>,
    a: Pod,
    b: Pod,
}

async fn mesh(test: &str) -> Option<Mesh> {
    mesh_with(test, &[]).await
}

async fn mesh_with(test: &str, env: &[(&str, &str)]) -> Option<Mesh> {
    let lab = Lab::new(test)?;
    let mut a = Pod::new(&lab, "a", 2);
    let mut b = Pod::new(&lab, "b", 3);
    let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
    b.rt.run(async move {
        apps::http_app(any(HTTP_PORT), "b", HttpVersions::Both)
            .await
            .unwrap();
        apps::http_app(any(H1_ONLY_PORT), "b-h1", HttpVersions::Http1Only)
            .await
            .unwrap();
        apps::grpc_app(any(GRPC_PORT), "b").await.unwrap();
        apps::tcp_half_close_app(any(HALF_CLOSE_PORT))
            .await
            .unwrap();
        apps::greeting_app(any(GREETING_PORT)).await.unwrap();
        apps::greeting_app(any(OPAQUE_GREETING_PORT)).await.unwrap();
        apps::connect_proxy_app(any(CONNECT_PROXY_PORT))
            .await
            .unwrap();
    })
    .await;
    a.mesh(env).await;
    b.mesh(env).await;
    Some(Mesh { lab, a, b })
}

fn get(authority: SocketAddr, path: &str) -> Request<client::Body> {
    Request::get(path)
        .header("host", authority.to_string())
        .body(client::empty())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_crosses_both_proxies() {
    let Some(m) = mesh("http1_crosses_both_proxies").await else {
        return;
    };
    let b = m.b.addr(HTTP_PORT);
    let rsp =
        m.a.rt
            .run(async move {
                let mut conn = Conn::http1(b).await?;
                let first = conn.fetch(get(b, "/hello")).await?;
                // Same client connection, second request (keep-alive through the proxies).
                let second = conn.fetch(get(b, "/status/503")).await?;
                Ok::<_, client::Error>((first, second))
            })
            .await
            .expect("requests through the mesh");
    let (first, second) = rsp;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.body(), "hello from b");
    assert_eq!(first.headers()["x-app-version"], "HTTP/1.1");
    assert_eq!(first.headers()["x-app-host"], b.to_string().as_str());
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The app's own 503 is not a proxy error.
    assert!(!second.headers().contains_key("weft-proxy-error"));

    // Both proxies saw both requests, with Linkerd's names and labels.
    let authority = format!("authority=\"{b}\"");
    for (pod, direction) in [
        (&m.a, "direction=\"outbound\""),
        (&m.b, "direction=\"inbound\""),
    ] {
        assert_eq!(
            pod.metric("request_total", &[direction, &authority]).await,
            2.0,
            "{}",
            pod.host.ns
        );
        assert_eq!(
            pod.metric(
                "response_total",
                &[
                    direction,
                    "status_code=\"200\"",
                    "classification=\"success\""
                ]
            )
            .await,
            1.0
        );
        assert_eq!(
            pod.metric(
                "response_total",
                &[
                    direction,
                    "status_code=\"503\"",
                    "classification=\"failure\""
                ]
            )
            .await,
            1.0
        );
        assert_eq!(
            pod.metric("protocol_detect_total", &[direction, "protocol=\"http1\""])
                .await,
            1.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_client_reaches_an_http1_only_app() {
    let Some(m) = mesh("http2_client_reaches_an_http1_only_app").await else {
        return;
    };
    let h1_only = m.b.addr(H1_ONLY_PORT);
    let both = m.b.addr(HTTP_PORT);
    let (old_app, new_app) =
        m.a.rt
            .run(async move {
                let req = |addr: SocketAddr| {
                    Request::post(format!("http://{addr}/echo"))
                        .version(Version::HTTP_2)
                        .body(client::full("over h2"))
                        .unwrap()
                };
                let old = Conn::http2(h1_only).await?.fetch(req(h1_only)).await?;
                let new = Conn::http2(both).await?.fetch(req(both)).await?;
                Ok::<_, client::Error>((old, new))
            })
            .await
            .expect("h2 requests");
    assert_eq!(old_app.status(), StatusCode::OK);
    assert_eq!(old_app.version(), Version::HTTP_2);
    assert_eq!(old_app.body(), "over h2");
    // The inbound proxy spoke the app's protocol to each app.
    assert_eq!(old_app.headers()["x-app-version"], "HTTP/1.1");
    assert_eq!(
        old_app.headers()["x-app-host"],
        h1_only.to_string().as_str()
    );
    assert_eq!(new_app.headers()["x-app-version"], "HTTP/2.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_streaming_and_status_codes() {
    let Some(m) = mesh("grpc_unary_streaming_and_status_codes").await else {
        return;
    };
    let b = m.b.addr(GRPC_PORT);
    m.a.rt
        .run(async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{b}"))
                .unwrap()
                .connect()
                .await
                .expect("gRPC channel through the mesh");
            let mut client = EchoClient::new(channel);

            let reply = client
                .unary(echo::EchoRequest {
                    message: "hi".into(),
                    code: 0,
                })
                .await
                .expect("unary call");
            assert_eq!(reply.get_ref().message, "hi");

            // Bidirectional: each message is answered before the next is sent.
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let mut replies = client
                .chat(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .expect("chat call")
                .into_inner();
            for i in 1..=50u64 {
                tx.send(echo::EchoRequest {
                    message: format!("m{i}"),
                    code: 0,
                })
                .await
                .unwrap();
                let r = replies.next().await.expect("a reply").expect("reply ok");
                assert_eq!((r.seq, r.message.as_str()), (i, format!("m{i}").as_str()));
            }
            drop(tx);
            assert!(
                replies.next().await.is_none(),
                "stream ends after the client's end"
            );

            // The status travels in the trailers, through both proxies.
            let err = client
                .fail(echo::EchoRequest {
                    message: "nope".into(),
                    code: tonic::Code::PermissionDenied as i32,
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::PermissionDenied);
            assert_eq!(err.message(), "nope");
        })
        .await;
    // gRPC failures are classified from the grpc-status trailer.
    assert_eq!(
        m.a.metric(
            "response_total",
            &["grpc_status=\"7\"", "classification=\"failure\""]
        )
        .await,
        1.0
    );
    assert_eq!(
        m.b.metric(
            "response_total",
            &["grpc_status=\"0\"", "classification=\"success\""]
        )
        .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade() {
    let Some(m) = mesh("websocket_upgrade").await else {
        return;
    };
    let b = m.b.addr(HTTP_PORT);
    let echoed =
        m.a.rt
            .run(async move {
                let tcp = TcpStream::connect(b).await.unwrap();
                let (mut ws, rsp) = tokio_tungstenite::client_async(format!("ws://{b}/ws"), tcp)
                    .await
                    .expect("websocket handshake through the mesh");
                assert_eq!(rsp.status(), StatusCode::SWITCHING_PROTOCOLS);
                let mut got = Vec::new();
                for i in 0..10 {
                    ws.send(Message::text(format!("ping {i}"))).await.unwrap();
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => got.push(t.to_string()),
                        other => panic!("unexpected {other:?}"),
                    }
                }
                ws.send(Message::Binary(vec![0u8, 1, 2, 255].into()))
                    .await
                    .unwrap();
                let bin = ws.next().await;
                assert!(
                    matches!(bin, Some(Ok(Message::Binary(ref b))) if b[..] == [0, 1, 2, 255]),
                    "{bin:?}"
                );
                got
            })
            .await;
    assert_eq!(
        echoed,
        (0..10).map(|i| format!("b: ping {i}")).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabyte_bodies_both_ways() {
    let Some(m) = mesh("fifty_megabyte_bodies_both_ways").await else {
        return;
    };
    let b = m.b.addr(HTTP_PORT);
    const LEN: usize = 50 * 1024 * 1024;
    let (upload, download) =
        m.a.rt
            .run(async move {
                let body = http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(
                    apps::pattern_body(LEN, 64 * 1024),
                    |never| match never {},
                ));
                let req = Request::post("/count")
                    .header("host", b.to_string())
                    .body(body)
                    .unwrap();
                let upload = Conn::http1(b).await?.fetch(req).await?;
                let download = Conn::http1(b)
                    .await?
                    .fetch(get(b, &format!("/bytes?n={LEN}")))
                    .await?;
                Ok::<_, client::Error>((upload, download))
            })
            .await
            .expect("large transfers");
    let expected_hash = fnv1a(FNV_OFFSET, &pattern(LEN));
    assert_eq!(upload.body(), &format!("{LEN} {expected_hash:016x}"));
    assert_eq!(download.body().len(), LEN);
    assert_eq!(fnv1a(FNV_OFFSET, download.body()), expected_hash);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_half_close() {
    let Some(m) = mesh("opaque_tcp_half_close").await else {
        return;
    };
    let b = m.b.addr(HALF_CLOSE_PORT);
    let data = pattern(100_000);
    let sent = data.clone();
    let reply =
        m.a.rt
            .run(async move {
                let mut s = TcpStream::connect(b).await.unwrap();
                s.write_all(&sent).await.unwrap();
                // Half-close: the app answers only after seeing our EOF.
                s.shutdown().await.unwrap();
                let mut reply = Vec::new();
                s.read_to_end(&mut reply).await.unwrap();
                reply
            })
            .await;
    let header = format!("received {} bytes: ", data.len());
    assert!(
        reply.starts_with(header.as_bytes()),
        "{:?}",
        String::from_utf8_lossy(&reply[..40.min(reply.len())])
    );
    assert_eq!(&reply[header.len()..], &data[..]);
    assert_eq!(
        m.a.metric(
            "protocol_detect_total",
            &["protocol=\"opaque\"", "reason=\"detected\""]
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_speaks_first_is_answered_within_the_window() {
    let window = Duration::from_millis(200);
    let Some(m) = mesh_with(
        "server_speaks_first_is_answered_within_the_window",
        &[("WEFT_PROXY_DETECT_TIMEOUT", "200ms")],
    )
    .await
    else {
        return;
    };
    let detected = m.b.addr(GREETING_PORT);
    let opaque = m.b.addr(OPAQUE_GREETING_PORT);
    let (waited, skipped) =
        m.a.rt
            .run(async move {
                let greet = |addr| async move {
                    let started = Instant::now();
                    let mut s = TcpStream::connect(addr).await.unwrap();
                    let mut buf = vec![0u8; GREETING.len()];
                    s.read_exact(&mut buf).await.unwrap();
                    assert_eq!(buf, GREETING.as_bytes());
                    // The conversation goes on after the greeting.
                    s.write_all(b"EHLO test\r\n").await.unwrap();
                    let mut echo = [0u8; 11];
                    s.read_exact(&mut echo).await.unwrap();
                    assert_eq!(&echo, b"EHLO test\r\n");
                    started.elapsed()
                };
                (greet(detected).await, greet(opaque).await)
            })
            .await;
    // Each proxy waits one window for client bytes, then lets the server talk.
    assert!(waited >= window, "{waited:?}");
    assert!(
        waited < 2 * window + Duration::from_millis(500),
        "greeting took {waited:?}"
    );
    // A port listed as opaque skips the wait.
    assert!(skipped < window, "opaque port took {skipped:?}");
    for pod in [&m.a, &m.b] {
        assert_eq!(
            pod.metric("protocol_detect_total", &["reason=\"first_byte_timeout\""])
                .await,
            1.0
        );
        assert_eq!(
            pod.metric("protocol_detect_total", &["reason=\"opaque_port\""])
                .await,
            1.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_connections() {
    let Some(m) = mesh("five_hundred_concurrent_connections").await else {
        return;
    };
    let b = m.b.addr(HTTP_PORT);
    let statuses =
        m.a.rt
            .run(async move {
                let tasks: Vec<_> = (0..500)
                    .map(|_| {
                        tokio::spawn(async move {
                            // Each holds its connection for 500 ms: all are open at once.
                            let rsp = Conn::http1(b).await?.fetch(get(b, "/slow?ms=500")).await?;
                            match rsp.headers().get("weft-proxy-error") {
                                Some(cause) => Err(format!("{}: {cause:?}", rsp.status()).into()),
                                None => Ok::<_, client::Error>(rsp.status()),
                            }
                        })
                    })
                    .collect();
                let mut statuses = Vec::new();
                for t in tasks {
                    statuses.push(t.await.unwrap().map_err(|e| e.to_string()));
                }
                statuses
            })
            .await;
    let ok = statuses
        .iter()
        .filter(|s| matches!(s, Ok(StatusCode::OK)))
        .count();
    assert_eq!(
        ok,
        500,
        "failures: {:?}",
        statuses
            .iter()
            .filter(|s| !matches!(s, Ok(StatusCode::OK)))
            .take(5)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        m.b.metric("request_total", &["direction=\"inbound\""])
            .await,
        500.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_drain_loses_no_in_flight_request() {
    let Some(m) = mesh("graceful_drain_loses_no_in_flight_request").await else {
        return;
    };
    let b = m.b.addr(HTTP_PORT);
    let in_flight = m.a.rt.spawn(async move {
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                tokio::spawn(
                    async move { Conn::http1(b).await?.fetch(get(b, "/slow?ms=1500")).await },
                )
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(
                t.await
                    .unwrap()
                    .map(|r| (r.status(), r.body().clone()))
                    .map_err(|e| e.to_string()),
            );
        }
        out
    });
    // Once every request is in a's proxy, SIGTERM it.
    wait::until(
        "20 connections open in a's proxy",
        Duration::from_secs(10),
        async || {
            m.a.metric("tcp_open_connections", &["direction=\"outbound\""])
                .await
                >= 20.0
        },
    )
    .await;
    let pid = m.a.proxy_pid.unwrap();
    let lab = m.lab.clone();
    let exit = tokio::task::spawn_blocking(move || lab.terminate(pid, Duration::from_secs(10)));
    // While draining (the slow requests still running), new connections
    // are refused.
    m.a.rt
        .run(async move {
            let start = Instant::now();
            while Conn::http1(b).await.is_ok() {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "a draining proxy kept accepting new connections"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    assert!(
        !in_flight.is_finished(),
        "the in-flight requests ended before new connections were refused"
    );

    let results = in_flight.await.unwrap();
    for r in &results {
        assert_eq!(
            r,
            &Ok((StatusCode::OK, bytes::Bytes::from_static(b"slow done")))
        );
    }
    assert_eq!(exit.await.unwrap(), Some(0), "proxy exits 0 after draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnel_through_an_http_proxy_app() {
    let Some(m) = mesh("connect_tunnel_through_an_http_proxy_app").await else {
        return;
    };
    let proxy_app = m.b.addr(CONNECT_PROXY_PORT);
    let echo_target = m.b.addr(HALF_CLOSE_PORT);
    let reply = m
        .a
        .rt
        .run(async move {
            let mut s = TcpStream::connect(proxy_app).await.unwrap();
            s.write_all(
                format!("CONNECT {echo_target} HTTP/1.1\r\nHost: {echo_target}\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8];
                s.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            assert!(
                head.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&head)
            );
            s.write_all(b"tunnelled").await.unwrap();
            s.shutdown().await.unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).await.unwrap();
            reply
        })
        .await;
    assert_eq!(reply, "received 9 bytes: tunnelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstreams_become_502_or_reset() {
    let Some(m) = mesh("refused_upstreams_become_502_or_reset").await else {
        return;
    };
    let closed = m.b.addr(CLOSED_PORT);
    let (http, tcp) =
        m.a.rt
            .run(async move {
                let http = Conn::http1(closed)
                    .await
                    .unwrap()
                    .fetch(get(closed, "/"))
                    .await
                    .unwrap();
                // Opaque: the client is reset, as a direct connection would be.
                let mut s = TcpStream::connect(closed).await.unwrap();
                s.write_all(b"\x00\x01 not http").await.unwrap();
                let mut buf = [0u8; 16];
                let tcp = s.read(&mut buf).await;
                (http, tcp.map_err(|e| e.kind()))
            })
            .await;
    assert_eq!(http.status(), StatusCode::BAD_GATEWAY);
    let cause = http.headers()["weft-proxy-error"].to_str().unwrap();
    assert!(cause.contains("refused"), "{cause}");
    assert_eq!(tcp, Err(std::io::ErrorKind::ConnectionReset));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let Some(m) = mesh("admin_endpoints").await else {
        return;
    };
    assert_eq!(m.a.admin_get("/live").await, "live\n");
    assert_eq!(m.a.admin_get("/ready").await, "ready\n");
    let config = m.a.admin_get("/config").await;
    assert!(config.contains("\"mode\": \"pass-through\""), "{config}");
    let identity = m.a.admin_get("/identity").await;
    assert!(identity.contains("\"identity\": null"), "{identity}");
    // The injector's postStart hook for classic sidecars: returns once
    // /ready answers 200 (it is ready here); a bad address is a usage error.
    let await_ready = |args: &[&str]| {
        m.a.host
            .command(weft_tests::bins::path("weft-proxy"), None)
            .arg("await-ready")
            .args(args)
            .output()
            .unwrap()
    };
    assert!(await_ready(&[]).status.success());
    assert!(await_ready(&["127.0.0.1:4191"]).status.success());
    let bad = await_ready(&["nowhere"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an address"));
    // /shutdown is refused from another host.
    let a_admin = m.a.addr(4191);
    let remote =
        m.b.rt
            .run(async move {
                let req = Request::builder()
                    .method(Method::POST)
                    .uri("/shutdown")
                    .header("host", a_admin.to_string())
                    .body(client::empty())
                    .unwrap();
                Conn::http1(a_admin)
                    .await
                    .unwrap()
                    .fetch(req)
                    .await
                    .unwrap()
                    .status()
            })
            .await;
    assert_eq!(remote, StatusCode::FORBIDDEN);
    assert!(m.lab.is_running(m.a.proxy_pid.unwrap()));

    // From localhost it drains the proxy, which then exits 0 (for Jobs).
    let local_admin = SocketAddr::from(([127, 0, 0, 1], 4191));
    let local =
        m.a.rt
            .run(async move {
                let req = Request::post("/shutdown")
                    .header("host", "localhost")
                    .body(client::empty())
                    .unwrap();
                Conn::http1(local_admin)
                    .await
                    .unwrap()
                    .fetch(req)
                    .await
                    .unwrap()
                    .status()
            })
            .await;
    assert_eq!(local, StatusCode::OK);
    let (lab, pid) = (m.lab.clone(), m.a.proxy_pid.unwrap());
    let exit = tokio::task::spawn_blocking(move || lab.wait_exit(pid, Duration::from_secs(10)));
    assert_eq!(exit.await.unwrap(), Some(0));
}
