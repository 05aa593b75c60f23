//! Identity and mTLS end to end: the real controller issues certificates
//! (CA files from the real `weft identity init`, static tokens), real
//! proxies get them and speak mesh TLS between pods. The wire is captured
//! on the lab's switch; rogue peers (foreign CA, expired certificate,
//! wrong identity) are refused both ways. Needs root; skips loudly
//! otherwise.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_tests::apps::{self, HttpVersions};
use weft_tests::client::{self, Conn};
use weft_tests::mesh::{Identity, MeshLab, identity_init};
use weft_tests::netns::NsRuntime;
use weft_tests::pod::Pod;
use weft_tests::rogue::{self, Credentials};
use weft_tests::wait;

use weft_tests::yaml::{NAMESPACE, id, pod, service};

const WEB: &str = "198.19.0.10:80";
const ECHO: &str = "198.19.0.20:7000";
const WEB_POD: &str = "198.18.0.3:8080";

fn any(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

async fn web_apps() {
    apps::http_app(any(8080), "web", HttpVersions::Both)
        .await
        .unwrap();
    apps::tcp_echo_app(any(7000)).await.unwrap();
}

/// Result of one request: status, `weft-proxy-error`, the client id the
/// app saw, the body.
#[derive(Debug)]
struct Answer {
    status: u16,
    proxy_error: Option<String>,
    saw_client_id: Option<String>,
    body: String,
    retry_after: Option<String>,
}

async fn send(conn: &mut Conn, req: Request<client::Body>) -> Answer {
    let rsp = conn.fetch(req).await.expect("a response");
    let header = |name: &str| {
        rsp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_string())
    };
    Answer {
        status: rsp.status().as_u16(),
        proxy_error: header("weft-proxy-error"),
        saw_client_id: header("x-app-saw-client-id"),
        retry_after: header("retry-after"),
        body: String::from_utf8_lossy(rsp.body()).into_owned(),
    }
}

fn get(path: &str) -> Request<client::Body> {
    Request::get(path)
        .header("host", "web.shop.svc.cluster.local")
        .body(client::empty())
        .unwrap()
}

fn post(path: &str, body: &'static str) -> Request<client::Body> {
    Request::post(path)
        .header("host", "web.shop.svc.cluster.local")
        .body(client::full(body))
        .unwrap()
}

/// One request on a new HTTP/1 connection from `rt`'s namespace.
async fn once(rt: &NsRuntime, addr: &str, req: Request<client::Body>) -> Answer {
    let addr: SocketAddr = addr.parse().unwrap();
    rt.run(async move {
        let mut conn = Conn::http1(addr).await.expect("connect");
        send(&mut conn, req).await
    })
    .await
}

/// Sends `line` over a TCP connection and reads the echo; `None` when the
/// connection was closed or reset instead.
async fn tcp_echo(rt: &NsRuntime, addr: &str, line: &'static [u8]) -> Option<Vec<u8>> {
    let addr: SocketAddr = addr.parse().unwrap();
    rt.run(async move {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(line).await.ok()?;
        let mut got = vec![0u8; line.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .ok()?
            .ok()?;
        Some(got)
    })
    .await
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_to_pod_traffic_is_mutual_tls_and_rogue_peers_are_refused() {
    let test = "identity-wire";
    let mut world = NAMESPACE.to_string();
    world += &service("web", "198.19.0.10", 80, 8080, "web");
    world += &service("echo", "198.19.0.20", 7000, 7000, "web");
    world += &service("rogue", "198.19.0.30", 80, 8080, "rogue");
    world += &service("expired", "198.19.0.31", 80, 8080, "expired");
    world += &service("impostor", "198.19.0.32", 80, 8080, "impostor");
    world += &pod("client", "client", "frontend", "198.18.0.2");
    world += &pod("web", "web", "web", "198.18.0.3");
    world += &pod("rogue", "rogue", "rogue", "198.18.0.6");
    world += &pod("expired", "expired", "expired", "198.18.0.7");
    // The impostor's spec says `impostor`, but its proxy runs as `batch`.
    world += &pod("impostor", "impostor", "impostor", "198.18.0.8");
    let identity = Identity {
        service_accounts: ["frontend", "web", "batch"].map(String::from).to_vec(),
        leaf_lifetime: "1h",
    };
    let Some(mut m) = MeshLab::start_with(test, &[("world.yaml", world)], Some(identity)).await
    else {
        return;
    };
    m.add_pod_as("client", 2, "frontend", async {}).await;
    m.add_pod_as("web", 3, "web", web_apps()).await;
    m.add_pod_as("impostor", 8, "batch", async {
        apps::http_app(any(8080), "impostor", HttpVersions::Both)
            .await
            .unwrap();
    })
    .await;
    let plain = Pod::new(&m.lab, "plain", 5);

    // Rogue servers: right identity from a foreign CA; the real issuer's
    // signature on an expired certificate.
    let pki = m.pki.clone().unwrap();
    let foreign = pki.with_extension("foreign");
    let _ = std::fs::remove_dir_all(&foreign);
    identity_init(&foreign);
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
    let foreign_cert = |sa: &str| {
        rogue::workload_cert(
            &read(foreign.join("issuer.crt")),
            &read(foreign.join("issuer.key")),
            &id(sa),
            (2020, 2099),
        )
    };
    let real_cert = |sa: &str, years| {
        rogue::workload_cert(
            &read(pki.join("issuer.crt")),
            &read(pki.join("issuer.key")),
            &id(sa),
            years,
        )
    };
    let rogue_host = Pod::new(&m.lab, "rogue", 6);
    let creds = foreign_cert("rogue");
    let rogue_done = rogue_host
        .rt
        .run(async move { rogue::tls_server(any(8080), creds).await })
        .await;
    let expired_host = Pod::new(&m.lab, "expired", 7);
    let creds = real_cert("expired", (2020, 2021));
    let expired_done = expired_host
        .rt
        .run(async move { rogue::tls_server(any(8080), creds).await })
        .await;

    // --- The wire carries only TLS between meshed pods.
    let capture_file = pki.join("wire.pcap");
    let capture = m.lab.capture(&capture_file);
    let client = m.pod("client");
    let a = once(&client.rt, WEB, {
        let mut r = post("/echo", "MARKER-HTTP1-c0ffee");
        r.headers_mut().insert(
            "x-weft-client-id",
            "spiffe://cluster.local/ns/shop/sa/admin".parse().unwrap(),
        );
        r
    })
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body, "MARKER-HTTP1-c0ffee");
    assert_eq!(
        a.saw_client_id.as_deref(),
        Some(id("frontend").as_str()),
        "the app sees the verified client identity, never the client's own header"
    );
    let h2 = client
        .rt
        .run(async {
            let mut conn = Conn::http2(WEB.parse().unwrap()).await.unwrap();
            let mut req = post("/echo", "MARKER-HTTP2-beef01");
            *req.uri_mut() = "http://web.shop.svc.cluster.local/echo".parse().unwrap();
            send(&mut conn, req).await
        })
        .await;
    assert_eq!(
        (h2.status, h2.body.as_str()),
        (200, "MARKER-HTTP2-beef01"),
        "{h2:?}"
    );
    assert_eq!(
        tcp_echo(&client.rt, ECHO, b"MARKER-TCP-feed02\n")
            .await
            .as_deref(),
        Some(&b"MARKER-TCP-feed02\n"[..]),
        "opaque TCP crosses the mesh"
    );
    // Addressed to the pod itself (a headless service's answer): mTLS too.
    let direct = once(&client.rt, WEB_POD, post("/echo", "MARKER-PODIP-d1rec7")).await;
    assert_eq!(direct.status, 200, "{direct:?}");
    assert_eq!(
        direct.saw_client_id.as_deref(),
        Some(id("frontend").as_str()),
        "pod-IP traffic is authenticated like service traffic"
    );
    // Control: an unmeshed client's plaintext is visible in the capture.
    let p = once(&plain.rt, WEB_POD, post("/echo", "MARKER-PLAIN-0ff1ce")).await;
    assert_eq!((p.status, p.saw_client_id.as_deref()), (200, None), "{p:?}");
    m.lab.terminate(capture, Duration::from_secs(5));
    let wire = std::fs::read(&capture_file).expect("capture file");
    assert!(
        contains(&wire, b"MARKER-PLAIN-0ff1ce"),
        "the capture sees plaintext ({} bytes captured)",
        wire.len()
    );
    for marker in [
        "MARKER-PODIP-d1rec7",
        "MARKER-HTTP1-c0ffee",
        "MARKER-HTTP2-beef01",
        "MARKER-TCP-feed02",
    ] {
        assert!(
            !contains(&wire, marker.as_bytes()),
            "{marker} crossed the wire in clear"
        );
    }
    let web = m.pod("web");
    let mtls = web
        .metric(
            "request_total",
            &[
                "direction=\"inbound\"",
                "tls=\"true\"",
                &format!("client_id=\"{}\"", id("frontend")),
            ],
        )
        .await;
    assert!(
        mtls >= 2.0,
        "inbound requests counted with tls and client_id: {mtls}"
    );
    // The connections themselves are labelled by what their ClientHello
    // asked for, with the bytes before the label was known included.
    let src = ["direction=\"inbound\"", "peer=\"src\""];
    let tls_conns = web
        .metric("tcp_open_total", &[src[0], src[1], "tls=\"true\""])
        .await;
    assert!(
        tls_conns >= 2.0,
        "mesh TLS connections counted as tls=true: {tls_conns}"
    );
    let tls_bytes = web
        .metric("tcp_read_bytes_total", &[src[0], src[1], "tls=\"true\""])
        .await;
    assert!(
        tls_bytes > 500.0,
        "their bytes too (ClientHello included): {tls_bytes}"
    );

    // --- Rogue servers are refused by the client's proxy.
    for (service, done, what) in [
        ("198.19.0.30:80", &rogue_done, "a foreign CA"),
        ("198.19.0.31:80", &expired_done, "an expired certificate"),
    ] {
        let a = once(&client.rt, service, get("/hello")).await;
        assert_eq!(a.status, 502, "a server with {what}: {a:?}");
        assert!(
            a.proxy_error
                .as_deref()
                .is_some_and(|e| e.contains("mesh TLS")),
            "{a:?}"
        );
        assert_eq!(
            done.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "no handshake with {what} completed"
        );
    }
    let a = once(&client.rt, "198.19.0.32:80", get("/hello")).await;
    assert_eq!(
        a.status, 502,
        "a proxy certified as another identity: {a:?}"
    );
    assert!(
        a.proxy_error
            .as_deref()
            .is_some_and(|e| e.contains(&id("impostor"))),
        "{a:?}"
    );

    // --- Rogue clients are refused by the server's proxy; a good
    // certificate over the same path is served (the control).
    let sni = "web.shop.serviceaccount.identity.cluster.local";
    let attempts: [(Credentials, bool, &str); 3] = [
        (foreign_cert("frontend"), false, "a foreign CA"),
        (
            real_cert("frontend", (2020, 2021)),
            false,
            "an expired certificate",
        ),
        (
            real_cert("frontend", (2020, 2099)),
            true,
            "a valid certificate",
        ),
    ];
    for (creds, served, what) in attempts {
        let got = plain
            .rt
            .run(async move { rogue::mesh_client_get(WEB_POD.parse().unwrap(), sni, creds).await })
            .await;
        let ok = got.as_ref().is_ok_and(|b| b.starts_with(b"HTTP/1.1 200"));
        assert_eq!(ok, served, "a client with {what}: {got:?}");
    }
    let _ = std::fs::remove_dir_all(&foreign);
}

fn policy(name: &str, action: &str, from: &str, rate_limit: Option<(u32, u32)>) -> String {
    let limit = rate_limit
        .map(|(rps, burst)| format!(", rateLimit: {{requestsPerSecond: {rps}, burst: {burst}}}"))
        .unwrap_or_default();
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{targetRef: {{kind: Service, name: web}}, action: {action}, from: [{from}]{limit}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_policies_allow_deny_and_rate_limit() {
    let test = "identity-authz";
    let mut world = service("web", "198.19.0.10", 80, 8080, "web");
    world += &service("echo", "198.19.0.20", 7000, 7000, "web");
    world += &pod("client", "client", "frontend", "198.18.0.2");
    world += &pod("web", "web", "web", "198.18.0.3");
    world += &pod("batch", "batch", "batch", "198.18.0.4");
    let identity = Identity {
        service_accounts: ["frontend", "web", "batch"].map(String::from).to_vec(),
        leaf_lifetime: "1h",
    };
    let files = [("ns.yaml", NAMESPACE.to_string()), ("world.yaml", world)];
    let Some(mut m) = MeshLab::start_with(test, &files, Some(identity)).await else {
        return;
    };
    m.add_pod_as("client", 2, "frontend", async {}).await;
    m.add_pod_as("web", 3, "web", web_apps()).await;
    m.add_pod_as("batch", 4, "batch", async {}).await;
    let plain = Pod::new(&m.lab, "plain", 5);
    let (client, batch) = (m.pod("client"), m.pod("batch"));

    // --- Default inbound policy: all-unauthenticated serves an unmeshed
    // client; all-authenticated refuses it (also on its open connection)
    // and still serves meshed clients.
    let mut kept = plain
        .rt
        .run(async { Conn::http1(WEB_POD.parse().unwrap()).await.unwrap() })
        .await;
    let first = plain.rt.run(async move {
        let a = send(&mut kept, get("/hello")).await;
        (a, kept)
    });
    let (a, mut kept) = first.await;
    assert_eq!(a.status, 200, "served under the default: {a:?}");
    m.write(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, annotations: {weft.dev/default-inbound-policy: all-authenticated}}\n",
    );
    wait::until(
        "the unmeshed client is refused",
        Duration::from_secs(10),
        async || once(&plain.rt, WEB_POD, get("/hello")).await.status == 403,
    )
    .await;
    let (a, _) = plain
        .rt
        .run(async move {
            let a = send(&mut kept, get("/hello")).await;
            (a, kept)
        })
        .await;
    assert_eq!(
        a.status, 403,
        "the next request on an open connection: {a:?}"
    );
    assert!(
        a.proxy_error
            .as_deref()
            .is_some_and(|e| e.contains("default:all-authenticated")),
        "{a:?}"
    );
    assert_eq!(once(&client.rt, WEB, get("/hello")).await.status, 200);
    m.write("ns.yaml", NAMESPACE);

    // --- DENY for a service account: 403 for it (and its TCP closed),
    // others served; removed: served again.
    m.write(
        "deny.yaml",
        &policy("deny-batch", "DENY", "{serviceAccounts: [batch]}", None),
    );
    wait::until("batch is denied", Duration::from_secs(10), async || {
        once(&batch.rt, WEB, get("/hello")).await.status == 403
    })
    .await;
    let a = once(&batch.rt, WEB, get("/hello")).await;
    assert!(
        a.proxy_error
            .as_deref()
            .is_some_and(|e| e.contains("shop/deny-batch")),
        "{a:?}"
    );
    assert_eq!(once(&client.rt, WEB, get("/hello")).await.status, 200);
    assert_eq!(
        tcp_echo(&batch.rt, ECHO, b"denied?\n").await,
        None,
        "TCP is closed"
    );
    assert_eq!(
        tcp_echo(&client.rt, ECHO, b"allowed\n").await.as_deref(),
        Some(&b"allowed\n"[..])
    );
    std::fs::remove_file(m.dir.join("deny.yaml")).unwrap();
    wait::until(
        "batch is served again",
        Duration::from_secs(10),
        async || once(&batch.rt, WEB, get("/hello")).await.status == 200,
    )
    .await;
    let web = m.pod("web");
    let denied = web
        .metric(
            "authz_denied_total",
            &["policy=\"shop/deny-batch\"", "kind=\"http\""],
        )
        .await;
    let tcp_denied = web
        .metric(
            "authz_denied_total",
            &["policy=\"shop/deny-batch\"", "kind=\"tcp\""],
        )
        .await;
    assert!(denied >= 2.0 && tcp_denied >= 1.0, "{denied} {tcp_denied}");

    // --- Rate limit: an ALLOW for frontend at 10 rps, burst 5. Offered
    // as fast as one connection goes for ~3 s, the admitted count is the
    // burst plus 10 per second elapsed (the bucket refills continuously).
    let (rps, burst) = (10.0, 5.0);
    m.write(
        "allow.yaml",
        &policy(
            "frontend-limited",
            "ALLOW",
            "{serviceAccounts: [frontend]}",
            Some((10, 5)),
        ),
    );
    // Once the ALLOW is in force, batch (not allowed) is refused.
    wait::until(
        "the ALLOW policy is in force",
        Duration::from_secs(10),
        async || once(&batch.rt, WEB, get("/hello")).await.status == 403,
    )
    .await;
    let (ok, limited, elapsed, retry_after) = client
        .rt
        .run(async {
            let mut conn = Conn::http1(WEB.parse().unwrap()).await.unwrap();
            let (mut ok, mut limited, mut retry_after) = (0u32, 0u32, None);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(3) {
                let a = send(&mut conn, get("/hello")).await;
                match a.status {
                    200 => ok += 1,
                    429 => {
                        limited += 1;
                        retry_after = a.retry_after.clone();
                    }
                    other => panic!("unexpected {other}: {a:?}"),
                }
            }
            (ok, limited, start.elapsed().as_secs_f64(), retry_after)
        })
        .await;
    let expected = burst + rps * elapsed;
    assert!(
        (f64::from(ok) - expected).abs() <= 2.0,
        "{ok} admitted in {elapsed:.2} s; expected {expected:.1} (burst 5 + 10/s)"
    );
    assert!(limited > 0, "requests beyond the rate get 429");
    assert_eq!(retry_after.as_deref(), Some("1"), "429 says when to retry");
    let limited_metric = web
        .metric(
            "authz_denied_total",
            &[
                "policy=\"shop/frontend-limited\"",
                "reason=\"rate_limited\"",
            ],
        )
        .await;
    assert_eq!(limited_metric, f64::from(limited));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_renewal_under_load_drops_nothing() {
    let test = "identity-renewal";
    let mut world = NAMESPACE.to_string();
    world += &service("web", "198.19.0.10", 80, 8080, "web");
    world += &service("echo", "198.19.0.20", 7000, 7000, "web");
    world += &pod("client", "client", "frontend", "198.18.0.2");
    world += &pod("web", "web", "web", "198.18.0.3");
    // Certificates of 6 s, renewed every ~4 s.
    let identity = Identity {
        service_accounts: ["frontend", "web"].map(String::from).to_vec(),
        leaf_lifetime: "6s",
    };
    let Some(mut m) = MeshLab::start_with(test, &[("world.yaml", world)], Some(identity)).await
    else {
        return;
    };
    m.add_pod_as("client", 2, "frontend", async {}).await;
    m.add_pod_as("web", 3, "web", web_apps()).await;
    let client = m.pod("client");
    const EXPIRY: &str = "identity_cert_expiry_timestamp_seconds";
    let client_expiry = client.metric(EXPIRY, &[]).await;
    let web_expiry = m.pod("web").metric(EXPIRY, &[]).await;

    // For 14 s: requests on a kept connection, requests on new
    // connections, and a long-lived TCP stream, all through the mesh.
    let load = client.rt.spawn(async {
        let web: SocketAddr = WEB.parse().unwrap();
        let mut kept = Conn::http1(web).await.unwrap();
        let mut stream = TcpStream::connect(ECHO.parse::<SocketAddr>().unwrap())
            .await
            .unwrap();
        let (mut sent, mut failures) = (0u32, Vec::new());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(14) {
            let a = send(&mut kept, get("/hello")).await;
            let b = match Conn::http1(web).await {
                Ok(mut fresh) => send(&mut fresh, get("/hello")).await.status,
                Err(_) => 0,
            };
            let line = format!("line {sent:06}\n");
            stream.write_all(line.as_bytes()).await.unwrap();
            let mut got = vec![0u8; line.len()];
            let echoed = stream.read_exact(&mut got).await.is_ok() && got == line.as_bytes();
            if a.status != 200 || b != 200 || !echoed {
                failures.push((sent, a.status, b, echoed));
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (sent, failures)
    });
    let (sent, failures) = load.await.unwrap();
    assert!(sent > 100, "{sent} rounds");
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );
    let client_after = client.metric(EXPIRY, &[]).await;
    let web_after = m.pod("web").metric(EXPIRY, &[]).await;
    assert!(
        client_after - client_expiry >= 6.0 && web_after - web_expiry >= 6.0,
        "both proxies renewed at least twice: client {client_expiry} -> {client_after}, web {web_expiry} -> {web_after}"
    );
}
