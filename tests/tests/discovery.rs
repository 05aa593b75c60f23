//! The control plane end to end: the real weft-controller with a directory
//! source, three meshed pods (client, v1, v2) whose real proxies stream
//! their config from it, and a TrafficSplit moving traffic between versions.
//! Needs root (network namespaces); skips loudly otherwise.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Request;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use weft_tests::apps::{self, HttpVersions};
use weft_tests::client::{self, Conn};
use weft_tests::mesh::MeshLab;
use weft_tests::pod::Pod;
use weft_tests::wait;

const WORLD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 198.19.0.10, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v1, namespace: shop}
spec: {clusterIP: 198.19.0.11, selector: {version: v1}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: shop}
spec: {clusterIP: 198.19.0.12, selector: {version: v2}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: 198.19.0.20, selector: {app: web}, ports: [{port: 5432, targetPort: 7000}]}
---
apiVersion: v1
kind: Service
metadata: {name: db-v1, namespace: shop}
spec: {clusterIP: 198.19.0.21, selector: {version: v1}, ports: [{port: 5432, targetPort: 7000}]}
---
apiVersion: v1
kind: Service
metadata: {name: db-v2, namespace: shop}
spec: {clusterIP: 198.19.0.22, selector: {version: v2}, ports: [{port: 5432, targetPort: 7000}]}
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: db-split, namespace: shop}
spec: {service: db, backends: [{service: db-v1, weight: 1}, {service: db-v2, weight: 1}]}
"#;

fn pod_yaml(name: &str, version: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: web, version: {version}}}, annotations: {{weft.dev/proxy-version: test}}}}\nspec: {{serviceAccountName: web-{version}, containers: [{{name: app, image: x}}]}}\nstatus: {{podIP: {ip}, phase: Running}}\n"
    )
}

fn split(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: web-split, namespace: shop}}\nspec: {{service: web, backends: [{{service: web-v1, weight: {v1}}}, {{service: web-v2, weight: {v2}}}]}}\n"
    )
}

/// The shop mesh: a client pod and two versions of the web app.
async fn mesh(test: &str) -> Option<MeshLab> {
    let mut world = WORLD.to_string();
    world += &pod_yaml("v1-a", "v1", "198.18.0.3");
    world += &pod_yaml("v2-a", "v2", "198.18.0.4");
    let files = [("world.yaml", world), ("split.yaml", split(80, 20))];
    let mut m = MeshLab::start(test, &files).await?;
    m.add_pod("client-0", 2, async {}, &[]).await;
    for (name, octet, version) in [("v1-a", 3, "v1"), ("v2-a", 4, "v2")] {
        let apps = async move {
            let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
            apps::http_app(any(8080), version, HttpVersions::Both)
                .await
                .unwrap();
            apps::tcp_name_app(any(7000), version).await.unwrap();
        };
        m.add_pod(name, octet, apps, &[]).await;
    }
    Some(m)
}

const WEB: &str = "198.19.0.10:80";

/// Sends `n` requests over one keep-alive connection; the app name of each.
async fn hellos(client: &Pod, n: usize) -> Vec<Result<String, String>> {
    client
        .rt
        .run(async move {
            let addr: SocketAddr = WEB.parse().unwrap();
            let mut conn = Conn::http1(addr).await.map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for _ in 0..n {
                let req = Request::get("/hello")
                    .header("host", "web.shop.svc.cluster.local")
                    .body(client::empty())
                    .unwrap();
                out.push(match conn.fetch(req).await {
                    Ok(r) if r.status().is_success() => {
                        Ok(String::from_utf8_lossy(r.body()).replace("hello from ", ""))
                    }
                    Ok(r) => Err(format!(
                        "status {}: {:?}",
                        r.status(),
                        r.headers().get("weft-proxy-error")
                    )),
                    Err(e) => Err(e.to_string()),
                });
            }
            Ok::<_, String>(out)
        })
        .await
        .expect("a connection to the service")
}

type Outcomes = Vec<(Instant, Result<String, String>)>;

/// Requests every 10 ms until stopped: (when, result).
fn traffic(
    client: &Pod,
) -> (
    tokio::task::JoinHandle<Outcomes>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = client.rt.spawn(async move {
        let addr: SocketAddr = WEB.parse().unwrap();
        let mut out = Vec::new();
        let mut conn = Conn::http1(addr).await.unwrap();
        loop {
            if stopped.try_recv().is_ok() {
                return out;
            }
            let req = Request::get("/hello")
                .header("host", "web.shop.svc.cluster.local")
                .body(client::empty())
                .unwrap();
            let r = match conn.fetch(req).await {
                Ok(r) if r.status().is_success() => {
                    Ok(String::from_utf8_lossy(r.body()).replace("hello from ", ""))
                }
                Ok(r) => Err(format!(
                    "status {}: {:?}",
                    r.status(),
                    r.headers().get("weft-proxy-error")
                )),
                Err(e) => Err(e.to_string()),
            };
            out.push((Instant::now(), r));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (task, stop)
}

/// The first moment in [since, until) from which every response in that
/// window came from `to`.
fn moved_at(
    results: &[(Instant, Result<String, String>)],
    since: Instant,
    until: Instant,
    to: &str,
) -> Option<Instant> {
    let after: Vec<_> = results
        .iter()
        .filter(|(t, _)| *t >= since && *t < until)
        .collect();
    let last_other = after.iter().rposition(|(_, r)| r.as_deref() != Ok(to));
    let first_stable = match last_other {
        Some(i) => after.get(i + 1)?,
        None => after.first()?,
    };
    Some(first_stable.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_controller_edits_and_restarts() {
    let Some(mut m) = mesh("split_controller_edits_and_restarts").await else {
        return;
    };

    // 80/20 on 400 requests over one connection (split per request): v2 is
    // Binomial(400, 0.2): mean 80, sd 8; accept 4 sd either way.
    let results = hellos(m.pod("client-0"), 400).await;
    assert!(
        results.iter().all(|r| r.is_ok()),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    let v2 = results.iter().filter(|r| r.as_deref() == Ok("v2")).count();
    assert!((48..=112).contains(&v2), "v2 got {v2} of 400");

    // Editing the split moves traffic within 2 s, failing no request.
    let (task, stop) = traffic(m.pod("client-0"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let edited = Instant::now();
    m.write("split.yaml", &split(0, 100));
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // The controller dies: the proxies keep the last config.
    m.lab.kill(m.ctl_pid);
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // It comes back; the proxies reconnect and follow new edits.
    m.restart_controller().await;
    let mut connected = 0.0;
    for _ in 0..100 {
        connected = m.pod("client-0").metric("discovery_connected", &[]).await;
        if connected == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(connected, 1.0, "the client's proxy reconnected");
    let edited_again = Instant::now();
    m.write("split.yaml", &split(100, 0));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.send(()).unwrap();
    let results = task.await.unwrap();

    let failures: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        results.len(),
        failures.first()
    );
    let moved = moved_at(&results, edited, edited_again, "v2").expect("traffic moved to v2");
    assert!(
        moved.duration_since(edited) <= Duration::from_secs(2),
        "moved after {:?}",
        moved.duration_since(edited)
    );
    let during_outage: Vec<_> = results
        .iter()
        .filter(|(t, _)| *t > killed && *t < edited_again)
        .collect();
    assert!(
        during_outage.len() > 50,
        "requests flowed while the controller was down"
    );
    let back =
        moved_at(&results, edited_again, Instant::now(), "v1").expect("traffic moved back to v1");
    assert!(back.duration_since(edited_again) <= Duration::from_secs(2));

    // The proxy shows what it holds.
    let config = m.pod("client-0").admin_get("/config").await;
    assert!(
        config.contains("\"destination 198.19.0.10:80\"") || config.contains("198.19.0.10:80"),
        "{config}"
    );
    assert!(
        config.contains("web-v1") && config.contains("\"version\""),
        "{config}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_are_split_per_connection() {
    let Some(m) = mesh("tcp_connections_are_split_per_connection").await else {
        return;
    };
    let names = m
        .pod("client-0")
        .rt
        .run(async move {
            let mut names = Vec::new();
            for _ in 0..100 {
                let mut s = TcpStream::connect("198.19.0.20:5432").await.unwrap();
                let mut name = String::new();
                s.read_to_string(&mut name).await.unwrap();
                names.push(name);
            }
            names
        })
        .await;
    let v1 = names.iter().filter(|n| *n == "v1").count();
    let v2 = names.iter().filter(|n| *n == "v2").count();
    assert_eq!(v1 + v2, 100, "{names:?}");
    // Binomial(100, 0.5): sd 5; accept 4 sd.
    assert!((30..=70).contains(&v1), "v1 got {v1} of 100");
    assert!(
        m.pod("client-0")
            .metric("split_backend_requests_total", &["dst_service=\"db\""])
            .await
            >= 100.0
    );
}

/// The errors the controller's directory source has met.
async fn source_errors(m: &MeshLab) -> f64 {
    let text = m
        .ctl_rt
        .run(async { client::metrics("127.0.0.1:9990").await })
        .await;
    weft_tests::pod::sum_metric(&text, "source_errors_total", &["source=\"dir\""])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_file_keeps_the_last_good_config() {
    let Some(m) = mesh("a_malformed_file_keeps_the_last_good_config").await else {
        return;
    };
    m.write("split.yaml", &split(0, 100));
    let client = m.pod("client-0");
    wait::until("all traffic on v2", Duration::from_secs(10), async || {
        hellos(client, 10)
            .await
            .iter()
            .all(|r| r.as_deref() == Ok("v2"))
    })
    .await;
    // Broken YAML, then a negative weight (refused like the API server
    // would): each is counted as the directory source's error once the
    // controller has read it.
    let before = source_errors(&m).await;
    m.write("split.yaml", "kind: [broken");
    wait::until(
        "the broken file counted",
        Duration::from_secs(10),
        async || source_errors(&m).await > before,
    )
    .await;
    let before = source_errors(&m).await;
    m.write(
        "split.yaml",
        &split(100, 0).replace("weight: 100", "weight: -100"),
    );
    wait::until(
        "the negative weight counted",
        Duration::from_secs(10),
        async || source_errors(&m).await > before,
    )
    .await;
    let results = hellos(client, 50).await;
    assert!(
        results.iter().all(|r| r.as_deref() == Ok("v2")),
        "{results:?}"
    );
}
