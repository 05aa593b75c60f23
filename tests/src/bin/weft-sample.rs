//! A sample of the transparent data plane, until `weft demo` exists: two
//! pods (network namespaces) with weft-init's rules and weft-proxy, an HTTP
//! app in one and a client in the other, requests for a few seconds, then
//! what the proxies counted. Needs root. Cleans up on exit.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Request;
use weft_tests::apps::{self, HttpVersions};
use weft_tests::client::{self, Conn};
use weft_tests::netns::Lab;
use weft_tests::pod::{Pod, sum_metric};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let Some(lab) = Lab::new("weft-sample") else {
        std::process::exit(1);
    };
    let mut client_pod = Pod::new(&lab, "client", 2);
    let mut server_pod = Pod::new(&lab, "server", 3);
    server_pod
        .rt
        .run(async {
            apps::http_app(
                SocketAddr::from(([0, 0, 0, 0], 8080)),
                "server",
                HttpVersions::Both,
            )
            .await
        })
        .await
        .expect("server app");
    client_pod.mesh(&[("WEFT_PROXY_LOG", "warn")]).await;
    server_pod.mesh(&[("WEFT_PROXY_LOG", "warn")]).await;
    let target = server_pod.addr(8080);
    println!(
        "pods: client 198.18.0.2 -> server {target}, both meshed (weft-init + weft-proxy as uid 2102)"
    );

    let traffic = client_pod.rt.spawn(async move {
        let mut conn = Conn::http1(target).await.expect("connect");
        let until = Instant::now() + Duration::from_secs(seconds);
        let mut n = 0;
        while Instant::now() < until {
            let req = Request::get("/hello")
                .header("host", "server:8080")
                .body(client::empty())
                .unwrap();
            let started = Instant::now();
            match conn.fetch(req).await {
                Ok(rsp) => println!(
                    "GET http://server:8080/hello -> {} {:?} in {:?}",
                    rsp.status(),
                    String::from_utf8_lossy(rsp.body()),
                    started.elapsed()
                ),
                Err(e) => println!("GET failed: {e}"),
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        n
    });
    // Ctrl-C ends early but still cleans up (the lab is dropped on return).
    let results = tokio::select! {
        n = traffic => n.unwrap_or(0),
        _ = tokio::signal::ctrl_c() => {
            println!("interrupted");
            0
        }
    };

    for (pod, direction) in [(&client_pod, "outbound"), (&server_pod, "inbound")] {
        let text = pod.admin_get("/metrics").await;
        let dir = format!("direction=\"{direction}\"");
        println!(
            "{} proxy ({direction}): request_total={} success={} tcp_open_total={}",
            pod.host.ns,
            sum_metric(&text, "request_total", &[&dir]),
            sum_metric(
                &text,
                "response_total",
                &[&dir, "classification=\"success\""]
            ),
            sum_metric(&text, "tcp_open_total", &[&dir]),
        );
    }
    println!("sent {results} requests; cleaning up");
}
