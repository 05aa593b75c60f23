//! Hostile clients against a meshed server's inbound proxy, from a host
//! outside the mesh, while a meshed victim keeps calling the same server:
//! HTTP/2 rapid reset, CONTINUATION, SETTINGS and PING floods, oversized
//! headers; slow and idle HTTP/1 clients; request smuggling; spoofed mesh
//! headers; load shedding; 10,000 idle connections. The proxy must stay up
//! with bounded memory, cut the abuser off, and keep the victim's requests
//! succeeding and fast. Needs root.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http::Request;
use weft_tests::abuse::{self, Ended, H2Attacker};
use weft_tests::apps::{self, HttpVersions};
use weft_tests::client::{self, Conn};
use weft_tests::netns::{Host, Lab, NsRuntime};
use weft_tests::pod::Pod;
use weft_tests::wait;

const SERVER: &str = "198.18.0.3:8080";

struct Setup {
    _lab: Arc<Lab>,
    server: Pod,
    victim: Pod,
    attacker: Host,
    attacker_rt: NsRuntime,
}

/// A meshed server (its proxy with `env`), a meshed victim client, and an
/// attacker host outside the mesh.
async fn setup(test: &str, env: &[(&str, &str)]) -> Option<Setup> {
    let lab = Lab::new(test)?;
    let mut server = Pod::new(&lab, "server", 3);
    let mut victim = Pod::with_threads(&lab, "victim", 2, 2);
    server
        .rt
        .run(async {
            let any = SocketAddr::from(([0, 0, 0, 0], 8080));
            apps::http_app(any, "server", HttpVersions::Both)
                .await
                .unwrap();
        })
        .await;
    server.mesh(env).await;
    victim.mesh(&[]).await;
    let attacker = lab.host("attacker", 9);
    // The attacker would be another machine; here it shares two CPUs with
    // the proxy under test and the victim, so it runs at the lowest
    // priority: what is measured is the proxy's isolation, not the
    // scheduler's.
    let attacker_rt = attacker.rt();
    attacker_rt
        .run(async {
            // SAFETY: setpriority on the calling thread (0) has no preconditions.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
        })
        .await;
    Some(Setup {
        _lab: lab,
        server,
        victim,
        attacker,
        attacker_rt,
    })
}

/// The victim's latency (µs) and failures at 200 requests a second for
/// `secs`, on 4 keep-alive connections.
async fn victim_load(victim: &Pod, secs: u64) -> (Histogram<u64>, u64) {
    victim
        .rt
        .run(async move {
            let mut tasks = Vec::new();
            for _ in 0..4 {
                tasks.push(tokio::spawn(async move {
                    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                    let mut failed = 0;
                    let mut conn = Conn::http1(SERVER.parse().unwrap()).await.unwrap();
                    let end = Instant::now() + Duration::from_secs(secs);
                    let mut tick = tokio::time::interval(Duration::from_millis(20));
                    while Instant::now() < end {
                        tick.tick().await;
                        let req = Request::get("/hello")
                            .header("host", "server")
                            .body(client::empty())
                            .unwrap();
                        let t = Instant::now();
                        match conn.fetch(req).await {
                            Ok(r) if r.status() == 200 => {
                                let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                            }
                            _ => {
                                failed += 1;
                                conn = Conn::http1(SERVER.parse().unwrap()).await.unwrap();
                            }
                        }
                    }
                    (h, failed)
                }));
            }
            let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut failed = 0;
            for t in tasks {
                let (h, f) = t.await.unwrap();
                all.add(&h).unwrap();
                failed += f;
            }
            (all, failed)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_floods_are_cut_off_and_the_victim_does_not_notice() {
    let Some(s) = setup("h2-abuse", &[]).await else {
        return;
    };
    let (normal, failed) = victim_load(&s.victim, 3).await;
    assert_eq!(failed, 0);
    let normal_p99 = normal.value_at_quantile(0.99);
    let rss_before = s.server.proxy_rss_kib().unwrap();

    type Attack = fn() -> Box<dyn FnMut(u64) -> Vec<u8> + Send>;
    let attacks: [(&str, bool, Attack); 4] = [
        ("rapid reset", true, || {
            Box::new(abuse::rapid_reset("server"))
        }),
        ("CONTINUATION flood", true, || {
            Box::new(abuse::continuation_flood("server"))
        }),
        ("SETTINGS flood", true, || Box::new(abuse::settings_flood())),
        // A client that never reads the PING acks it asks for.
        ("PING flood", false, || Box::new(abuse::ping_flood())),
    ];
    for (name, reads, attack) in attacks {
        // The attack is cut off within milliseconds, so the victim's p99
        // over four seconds mostly measures the shared 2-CPU host, whose
        // steal time alone can triple it. A round that misses the bound is
        // repeated against a fresh baseline, up to three times: an attack
        // that really slowed the victim misses every round.
        let mut baseline = normal_p99;
        let mut rounds = Vec::new();
        for round in 1..=3 {
            let before = s
                .server
                .metric("protocol_abuse_total", &["reason=\"h2_flood\""])
                .await;
            let victim = victim_load(&s.victim, 4);
            let flood = s.attacker_rt.run(async move {
                let mut a = H2Attacker::connect(SERVER.parse().unwrap(), reads)
                    .await
                    .unwrap();
                a.run(1_000_000, Duration::from_secs(4), attack()).await
            });
            let ((during, failed), ended) = tokio::join!(victim, flood);
            // Every round: the attacker is cut off and no victim request fails.
            assert!(
                matches!(ended, Ended::CutOff { .. }),
                "{name}: the attacker was not cut off: {ended:?}"
            );
            assert_eq!(failed, 0, "{name}: the victim's requests failed");
            let after = s
                .server
                .metric("protocol_abuse_total", &["reason=\"h2_flood\""])
                .await;
            let p99 = during.value_at_quantile(0.99);
            eprintln!(
                "{name} (round {round}): {ended:?}; victim p99 {p99} us (normal {baseline}); h2_flood {before} -> {after}"
            );
            rounds.push((p99, baseline));
            // Within twice the normal p99, plus a millisecond of scheduling.
            if p99 <= 2 * baseline + 1000 {
                break;
            }
            let (fresh, failed) = victim_load(&s.victim, 3).await;
            assert_eq!(failed, 0);
            baseline = fresh.value_at_quantile(0.99);
        }
        assert!(
            rounds.iter().any(|&(p99, normal)| p99 <= 2 * normal + 1000),
            "{name}: the victim was slowed in every round (p99, normal p99 in us): {rounds:?}"
        );
    }

    // One request with a 1 MiB header block: refused, never forwarded.
    let big = s
        .attacker_rt
        .run(async {
            let mut a = H2Attacker::connect(SERVER.parse().unwrap(), true)
                .await
                .unwrap();
            let frames = abuse::oversized_headers("big.example", 1 << 20);
            let mut sent = false;
            a.run(1, Duration::from_secs(3), move |_| {
                if sent {
                    Vec::new()
                } else {
                    sent = true;
                    frames.clone()
                }
            })
            .await
        })
        .await;
    assert!(
        matches!(big, Ended::CutOff { .. }),
        "oversized headers: {big:?}"
    );
    assert_eq!(
        s.server
            .metric("request_total", &["authority=\"big.example\""])
            .await,
        0.0,
        "the oversized request reached no one"
    );

    // Still up, memory back in bounds.
    let live = s
        .server
        .rt
        .run(async {
            client::get(SocketAddr::from(([127, 0, 0, 1], 4191)), "/live")
                .await
                .map(|r| r.status())
        })
        .await
        .unwrap();
    assert_eq!(live, 200);
    let rss_after = s.server.proxy_rss_kib().unwrap();
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS {rss_before} KiB before the attacks, {rss_after} KiB after"
    );
}

/// Sends raw bytes from the attacker; what came back.
async fn raw(s: &Setup, bytes: &'static [u8]) -> String {
    s.attacker_rt
        .run(async move {
            abuse::http1_raw(SERVER.parse().unwrap(), bytes, Duration::from_secs(3))
                .await
                .unwrap()
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_idle_smuggling_spoofing_and_shedding_are_handled() {
    let env = [
        ("WEFT_PROXY_HEADER_READ_TIMEOUT", "2s"),
        ("WEFT_PROXY_HTTP_IDLE_TIMEOUT", "2s"),
        ("WEFT_PROXY_TCP_IDLE_TIMEOUT", "3s"),
        ("WEFT_PROXY_MAX_HEADER_BYTES", "16384"),
        ("WEFT_PROXY_MAX_IN_FLIGHT_REQUESTS", "5"),
    ];
    let Some(s) = setup("h1-abuse", &env).await else {
        return;
    };
    let addr: SocketAddr = SERVER.parse().unwrap();

    // Slowloris: the request line at once, then headers a byte every
    // 300 ms: cut off after the 2 s header timeout, not at the end.
    let (held, closed) = s
        .attacker_rt
        .run(async move {
            abuse::slowloris(
                addr,
                b"GET /hello HTTP/1.1\r\n",
                b"Host: server\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
                Duration::from_millis(300),
            )
            .await
            .unwrap()
        })
        .await;
    assert!(
        closed && held < Duration::from_secs(6),
        "slowloris held the connection {held:?}"
    );
    assert!(
        s.server
            .metric("protocol_abuse_total", &["reason=\"header_timeout\""])
            .await
            >= 1.0
    );

    // Idle keep-alive connections are closed: HTTP/1 when the header
    // clock runs out waiting for the next request, HTTP/2 after the idle
    // timeout; a silent connection (server-speaks-first, to the proxy)
    // after the TCP idle timeout.
    let (h1, h2, silent) = s
        .attacker_rt
        .run(async move {
            let keepalive = |h2: bool| async move {
                let mut c = if h2 {
                    Conn::http2(addr).await.unwrap()
                } else {
                    Conn::http1(addr).await.unwrap()
                };
                let req = Request::get("http://server/hello")
                    .header("host", "server")
                    .body(client::empty())
                    .unwrap();
                assert_eq!(c.fetch(req).await.unwrap().status(), 200);
                let t = Instant::now();
                while !c.is_closed() {
                    assert!(
                        t.elapsed() < Duration::from_secs(10),
                        "idle connection never closed"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                t.elapsed()
            };
            let silent = async {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                let t = Instant::now();
                let mut buf = [0u8; 16];
                use tokio::io::AsyncReadExt;
                let _ = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
                t.elapsed()
            };
            tokio::join!(keepalive(false), keepalive(true), silent)
        })
        .await;
    for (what, t) in [("HTTP/1", h1), ("HTTP/2", h2)] {
        assert!(
            t >= Duration::from_millis(1500) && t < Duration::from_secs(5),
            "{what} idle: {t:?}"
        );
    }
    assert!(
        silent >= Duration::from_millis(2500) && silent < Duration::from_secs(7),
        "{silent:?}"
    );
    assert_eq!(
        s.server
            .metric("http_idle_closed_total", &["direction=\"inbound\""])
            .await,
        2.0
    );

    // Request smuggling: two framings of one body are refused, and the
    // request hidden in the body never runs.
    let cl_te = raw(
        &s,
        b"POST /echo HTTP/1.1\r\nHost: server\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /status/418 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(cl_te.starts_with("HTTP/1.1 400"), "CL + TE: {cl_te}");
    assert!(!cl_te.contains("418"), "the smuggled request ran: {cl_te}");
    let cl_cl = raw(
        &s,
        b"POST /echo HTTP/1.1\r\nHost: server\r\nContent-Length: 5\r\nContent-Length: 45\r\n\r\nhello",
    )
    .await;
    assert!(
        cl_cl.starts_with("HTTP/1.1 400"),
        "two Content-Lengths: {cl_cl}"
    );
    let te_not_last = raw(
        &s,
        b"POST /echo HTTP/1.1\r\nHost: server\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        te_not_last.starts_with("HTTP/1.1 400"),
        "chunked not last: {te_not_last}"
    );

    // A header block over the limit: 431.
    let big = s
        .attacker_rt
        .run(async move {
            let mut req = b"GET /hello HTTP/1.1\r\nHost: server\r\nX-Big: ".to_vec();
            req.extend(std::iter::repeat_n(b'a', 20_000));
            req.extend_from_slice(b"\r\n\r\n");
            let req: &'static [u8] = Box::leak(req.into_boxed_slice());
            abuse::http1_raw(addr, req, Duration::from_secs(3))
                .await
                .unwrap()
        })
        .await;
    assert!(
        big.starts_with("HTTP/1.1 431"),
        "{}",
        &big[..big.len().min(100)]
    );

    // Spoofed mesh headers: a client cannot claim an identity, and an app
    // cannot answer as the proxy.
    let (saw_id, forged) = s
        .victim
        .rt
        .run(async move {
            let mut c = Conn::http1(addr).await.unwrap();
            let req = Request::get("/hello")
                .header("host", "server")
                .header(
                    "x-weft-client-id",
                    "spiffe://cluster.local/ns/kube-system/sa/admin",
                )
                .header("weft-orig-proto", "HTTP/1.1")
                .body(client::empty())
                .unwrap();
            let saw = c
                .fetch(req)
                .await
                .unwrap()
                .headers()
                .get("x-app-saw-client-id")
                .cloned();
            let req = Request::get("/forge")
                .header("host", "server")
                .body(client::empty())
                .unwrap();
            let forged = c
                .fetch(req)
                .await
                .unwrap()
                .headers()
                .get("weft-proxy-error")
                .cloned();
            (saw, forged)
        })
        .await;
    assert_eq!(saw_id, None, "the forged client identity reached the app");
    assert_eq!(
        forged, None,
        "the app's forged weft-proxy-error reached the client"
    );

    // Load shedding: 5 requests in flight at most; 10 slow ones at once.
    let answers = s
        .victim
        .rt
        .run(async move {
            let calls = (0..10).map(|_| async move {
                let mut c = Conn::http1(addr).await.unwrap();
                let req = Request::get("/slow?ms=1500")
                    .header("host", "server")
                    .body(client::empty())
                    .unwrap();
                let r = c.fetch(req).await.unwrap();
                let err = r
                    .headers()
                    .get("weft-proxy-error")
                    .map(|v| v.to_str().unwrap().to_string());
                (r.status().as_u16(), err)
            });
            futures_util::future::join_all(calls).await
        })
        .await;
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    let shed: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    assert_eq!((ok, shed.len()), (5, 5), "{answers:?}");
    assert!(
        shed.iter()
            .all(|a| a.1.as_deref().is_some_and(|e| e.starts_with("overloaded"))),
        "{answers:?}"
    );
    assert_eq!(
        s.server
            .metric("overload_shed_total", &["reason=\"requests\""])
            .await,
        5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_fit_and_more_are_refused() {
    const IDLE: usize = 10_000;
    let max = (IDLE + 10).to_string();
    let Some(s) = setup("idle-10k", &[("WEFT_PROXY_MAX_CONNECTIONS", &max)]).await else {
        return;
    };
    let rss_before = s.server.proxy_rss_kib().unwrap();
    let addr: SocketAddr = SERVER.parse().unwrap();
    // Raise this process's open-files limit for the attacker's sockets.
    let _ =
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 65536, 65536)
            .or_else(|_| {
                let (_, hard) =
                    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_NOFILE,
                    hard,
                    hard,
                )
            });
    let held = s
        .attacker_rt
        .run(async move {
            let mut held = Vec::with_capacity(IDLE);
            for _ in 0..IDLE {
                let mut c = Conn::http1(addr).await.expect("connect");
                let req = Request::get("/hello")
                    .header("host", "server")
                    .body(client::empty())
                    .unwrap();
                assert_eq!(c.fetch(req).await.unwrap().status(), 200);
                held.push(c);
            }
            held
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = s.server.proxy_rss_kib().unwrap();
    let per_conn = (rss.saturating_sub(rss_before)) as f64 / IDLE as f64;
    eprintln!(
        "{IDLE} idle connections: proxy RSS {rss_before} -> {rss} KiB ({per_conn:.1} KiB each)"
    );
    // The documented budget (docs/security.md): 25 KiB of proxy memory per
    // idle HTTP/1 connection. This debug build measures ~15 (release ~15)
    // since every request's future is boxed; it measured 25 when hyper
    // kept a large request future per connection, 28 when every
    // connection's task carried every path.
    assert!(per_conn < 25.0, "{rss} KiB for {IDLE} idle connections");

    // 20 more: 10 fit under the limit, 10 are refused at once.
    let refused = s
        .attacker_rt
        .run(async move {
            let mut refused = 0;
            let mut extra = Vec::new();
            for _ in 0..20 {
                match Conn::http1(addr).await {
                    Ok(mut c) => {
                        let req = Request::get("/hello")
                            .header("host", "server")
                            .body(client::empty())
                            .unwrap();
                        match c.fetch(req).await {
                            Ok(r) if r.status() == 200 => extra.push(c),
                            _ => refused += 1,
                        }
                    }
                    Err(_) => refused += 1,
                }
            }
            refused
        })
        .await;
    assert_eq!(refused, 10);
    assert_eq!(
        s.server
            .metric("overload_shed_total", &["reason=\"connections\""])
            .await,
        10.0
    );
    drop(held);
    // Once the proxy has seen the attacker's connections close (until
    // then it is still at its limit and sheds new ones, as it should),
    // the victim is served.
    wait::until(
        "the proxy sees the 10,000 connections closed",
        Duration::from_secs(60),
        async || {
            s.server
                .metric(
                    "tcp_open_connections",
                    &["direction=\"inbound\",peer=\"src\""],
                )
                .await
                < 1.0
        },
    )
    .await;
    let (_, failed) = victim_load(&s.victim, 1).await;
    assert_eq!(failed, 0);
    let _ = &s.attacker;
}
