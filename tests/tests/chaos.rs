//! Chaos under constant load: a client pod calls `web` (three meshed web
//! pods behind a TrafficSplit, with a RetryPolicy and mesh TLS) at a fixed
//! rate while, one after another, the controller is killed and restarted,
//! partitioned away for 30 s, a web pod is killed, an endpoint comes and
//! goes 100 times, the split's weights change 1,000 times, the issuer
//! certificate rotates, and a proxy is drained with POST /shutdown. No
//! request may fail in any of them (every failure a dead endpoint could
//! cause is retried), and the proxies' memory must come back to its
//! baseline. Needs root.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Request;
use weft_tests::apps::{self, HttpVersions};
use weft_tests::client::{self, Conn};
use weft_tests::mesh::{Identity, MeshLab};
use weft_tests::yaml::{NAMESPACE, pod, service};

const WEB: &str = "198.19.0.10:80";

fn labelled_pod(name: &str, version: &str, ip: &str) -> String {
    // web pods carry app: web and their version, for the split's services.
    pod(name, "web", "web", ip).replace(
        "labels: {app: web}",
        &format!("labels: {{app: web, version: {version}}}"),
    )
}

fn world(with_d: bool) -> String {
    let mut w = format!(
        "{NAMESPACE}{}{}{}{}{}{}{}",
        service("web", "198.19.0.10", 80, 8080, "web"),
        service("web-v1", "198.19.0.11", 80, 8080, "web")
            .replace("selector: {app: web}", "selector: {version: v1}"),
        service("web-v2", "198.19.0.12", 80, 8080, "web")
            .replace("selector: {app: web}", "selector: {version: v2}"),
        pod("client", "client", "client", "198.18.0.2"),
        labelled_pod("web-a", "v1", "198.18.0.3"),
        labelled_pod("web-b", "v1", "198.18.0.4"),
        labelled_pod("web-c", "v2", "198.18.0.5"),
    );
    if with_d {
        w += &labelled_pod("web-d", "v1", "198.18.0.6");
    }
    w
}

fn split(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: web-split, namespace: shop}}\nspec: {{service: web, backends: [{{service: web-v1, weight: {v1}}}, {{service: web-v2, weight: {v2}}}]}}\n"
    )
}

const RETRY: &str = "apiVersion: weft.dev/v1alpha1\nkind: RetryPolicy\nmetadata: {name: web, namespace: shop}\nspec: {targetRef: {kind: Service, name: web}, retryOn: [connect-failure, reset, gateway-error], maxRetries: 5, policy: constant, duration: 10ms, budget: {ratio: 1.0, minRetriesPerSecond: 100, ttl: 10s}}\n";

/// Failures so far, per phase.
struct Load {
    phase: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<(usize, String)>>>,
    sent: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// 100 requests a second over 4 connections, each failure noted with the
/// phase it happened in.
fn start_load(mesh: &MeshLab) -> Load {
    let phase = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let (p, f, n) = (phase.clone(), failures.clone(), sent.clone());
    let task = mesh.pod("client").rt.spawn(async move {
        let workers = (0..4).map(|_| {
            let (p, f, n) = (p.clone(), f.clone(), n.clone());
            async move {
                let addr: SocketAddr = WEB.parse().unwrap();
                let mut conn = None;
                let mut tick = tokio::time::interval(Duration::from_millis(40));
                loop {
                    tick.tick().await;
                    if conn.is_none() {
                        conn = Conn::http1(addr).await.ok();
                    }
                    let Some(c) = conn.as_mut() else {
                        f.lock()
                            .unwrap()
                            .push((p.load(Ordering::Acquire), "connect".into()));
                        continue;
                    };
                    let req = Request::get("/hello")
                        .header("host", "web.shop.svc.cluster.local")
                        .body(client::empty())
                        .unwrap();
                    n.fetch_add(1, Ordering::Relaxed);
                    match c.fetch(req).await {
                        Ok(r) if r.status() == 200 => {}
                        Ok(r) => {
                            let why =
                                format!("{} {:?}", r.status(), r.headers().get("weft-proxy-error"));
                            f.lock().unwrap().push((p.load(Ordering::Acquire), why));
                        }
                        Err(e) => {
                            f.lock()
                                .unwrap()
                                .push((p.load(Ordering::Acquire), e.to_string()));
                            conn = None;
                        }
                    }
                }
            }
        });
        futures_util::future::join_all(workers).await;
    });
    Load {
        phase,
        failures,
        sent,
        task,
    }
}

impl Load {
    /// Runs `what` as phase `n`, with a second of load before and after.
    async fn phase<F: std::future::Future<Output = ()>>(&self, n: usize, name: &str, what: F) {
        self.phase.store(n, Ordering::Release);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sent = self.sent.load(Ordering::Relaxed);
        let t = Instant::now();
        what.await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let failed: Vec<String> = self
            .failures
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| *p == n)
            .map(|(_, w)| w.clone())
            .collect();
        let during = self.sent.load(Ordering::Relaxed) - sent;
        eprintln!(
            "phase {n} ({name}): {during} requests in {:?}, {} failed",
            t.elapsed(),
            failed.len()
        );
        assert_eq!(
            failed,
            Vec::<String>::new(),
            "phase {n} ({name}): requests failed"
        );
        assert!(
            during > 50,
            "phase {n} ({name}): the load stalled ({during} requests)"
        );
    }
}

/// A metric of the controller (its admin port in its own namespace).
async fn controller_metric(mesh: &MeshLab, name: &'static str) -> f64 {
    let text = mesh
        .ctl_rt
        .run(async { weft_tests::client::metrics("127.0.0.1:9990").await })
        .await;
    weft_tests::pod::sum_metric(&text, name, &[])
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn rss(mesh: &MeshLab, pod: &str) -> u64 {
    mesh.pod(pod).proxy_rss_kib().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_rides_out_chaos_without_failing_a_request() {
    let files = [
        ("world.yaml", world(false)),
        ("split.yaml", split(50, 50)),
        ("retry.yaml", RETRY.to_string()),
    ];
    let identity = Identity {
        service_accounts: vec!["web".into(), "client".into()],
        leaf_lifetime: "20s",
    };
    let Some(mut mesh) = MeshLab::start_with("chaos", &files, Some(identity)).await else {
        return;
    };
    for (name, octet, sa) in [
        ("web-a", 3, "web"),
        ("web-b", 4, "web"),
        ("web-c", 5, "web"),
        ("web-d", 6, "web"),
        ("client", 2, "client"),
    ] {
        let apps = async move {
            if sa == "web" {
                let any = SocketAddr::from(([0, 0, 0, 0], 8080));
                apps::http_app(any, "web", HttpVersions::Both)
                    .await
                    .unwrap();
            }
        };
        mesh.add_pod_as(name, octet, sa, apps).await;
    }
    let load = start_load(&mesh);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline: Vec<(&str, u64)> = ["client", "web-a"]
        .iter()
        .map(|p| (*p, rss(&mesh, p)))
        .collect();

    // 1. The controller dies and comes back: proxies keep their config.
    load.phase(1, "controller killed and restarted", async {
        mesh.lab.kill(mesh.ctl_pid);
        tokio::time::sleep(Duration::from_secs(3)).await;
        mesh.restart_controller().await;
    })
    .await;

    // 2. The controller is unreachable for 30 s (packets dropped, no
    // resets), then reachable again; a change made afterwards arrives.
    load.phase(2, "controller partitioned for 30 s", async {
        let rule = [
            "INPUT",
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            "8086,8080",
            "-j",
            "DROP",
        ];
        let mut add = vec!["-A"];
        add.extend(rule);
        mesh.ctl.run("iptables", &add);
        tokio::time::sleep(Duration::from_secs(30)).await;
        let mut del = vec!["-D"];
        del.extend(rule);
        mesh.ctl.run("iptables", &del);
    })
    .await;
    // The feed works again: a change made now reaches the client's proxy.
    let client = mesh.pod("client");
    let version = client.metric("config_version", &[]).await;
    mesh.write("split.yaml", &split(51, 49));
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.metric("config_version", &[]).await <= version {
        assert!(
            Instant::now() < deadline,
            "no config reached the client after the partition"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The 20 s test certificates ran out during the 30 s partition, as any
    // would in a partition longer than their last 30%; each proxy renews
    // once the identity service is back. Phases below need valid ones.
    for name in ["client", "web-a", "web-b", "web-c", "web-d"] {
        let pod = mesh.pod(name);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = unix_now();
            if pod
                .metric("identity_cert_expiry_timestamp_seconds", &[])
                .await
                > now + 5.0
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}'s proxy did not renew after the partition"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // 3. A web pod dies (process killed), then leaves the endpoints.
    load.phase(3, "an endpoint killed", async {
        mesh.kill_pod("web-b");
        tokio::time::sleep(Duration::from_millis(500)).await;
        mesh.write(
            "world.yaml",
            &world(false).replace(&labelled_pod("web-b", "v1", "198.18.0.4"), ""),
        );
    })
    .await;

    // 4. An endpoint comes and goes 100 times.
    load.phase(4, "an endpoint added and removed 100 times", async {
        let without_b = |d: bool| world(d).replace(&labelled_pod("web-b", "v1", "198.18.0.4"), "");
        for i in 0..100 {
            mesh.write("world.yaml", &without_b(i % 2 == 0));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        mesh.write("world.yaml", &without_b(false));
    })
    .await;

    // 5. The split's weights change 1,000 times.
    load.phase(5, "split weights changed 1,000 times", async {
        for i in 0..1000u32 {
            mesh.write("split.yaml", &split(i % 101, 100 - i % 101));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        mesh.write("split.yaml", &split(50, 50));
    })
    .await;

    // 6. A new issuer (same trust anchor) replaces the old one; the 20 s
    // certificates renew from it while traffic flows.
    let pki = mesh.pki.clone().unwrap();
    let issued_before = controller_metric(&mesh, "identity_certificates_issued_total").await;
    let issuer_expiry = controller_metric(&mesh, "identity_issuer_expiry_timestamp_seconds").await;
    load.phase(6, "issuer rotated", async {
        let fresh = pki.with_extension("rotated");
        let _ = std::fs::remove_dir_all(&fresh);
        let out = std::process::Command::new(weft_tests::bins::path("weft"))
            .args(["identity", "issuer", "--anchor-cert"])
            .arg(pki.join("ca.crt"))
            .arg("--anchor-key")
            .arg(pki.join("ca.key"))
            .arg("--out")
            .arg(&fresh)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for f in ["issuer.key", "issuer.crt"] {
            std::fs::rename(fresh.join(f), pki.join(f)).unwrap();
        }
        let _ = std::fs::remove_dir_all(&fresh);
        // The controller takes the new issuer in (its expiry changes)...
        let deadline = Instant::now() + Duration::from_secs(30);
        while controller_metric(&mesh, "identity_issuer_expiry_timestamp_seconds").await
            == issuer_expiry
        {
            assert!(
                Instant::now() < deadline,
                "the controller kept the old issuer"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // ...and every live proxy then renews from it (at 70% of 20 s): a
        // certificate issued after the new issuer was in use expires more
        // than 20 s after that moment (less a second of rounding).
        let loaded = unix_now();
        for name in ["client", "web-a", "web-c", "web-d"] {
            let pod = mesh.pod(name);
            let deadline = Instant::now() + Duration::from_secs(30);
            while pod
                .metric("identity_cert_expiry_timestamp_seconds", &[])
                .await
                < loaded + 19.0
            {
                assert!(
                    Instant::now() < deadline,
                    "{name}'s proxy did not renew from the new issuer"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
    .await;
    let issued_after = controller_metric(&mesh, "identity_certificates_issued_total").await;
    assert!(
        issued_after >= issued_before + 4.0,
        "proxies renewed from the new issuer: {issued_before} -> {issued_after}"
    );

    // 7. web-c's proxy is drained (POST /shutdown), as a terminating pod's
    // is, after the pod left the endpoints.
    load.phase(7, "a proxy drained with POST /shutdown", async {
        let without = world(false)
            .replace(&labelled_pod("web-b", "v1", "198.18.0.4"), "")
            .replace(&labelled_pod("web-c", "v2", "198.18.0.5"), "");
        mesh.write("world.yaml", &without);
        mesh.write("split.yaml", &split(100, 0));
        // The client's proxy no longer balances to web-c, nor splits to v2.
        let client = mesh.pod("client");
        let deadline = Instant::now() + Duration::from_secs(15);
        while client.admin_get("/config").await.contains("198.18.0.5") {
            assert!(
                Instant::now() < deadline,
                "web-c stayed in the client's endpoints"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let c = mesh.pod("web-c");
        let admin = SocketAddr::from(([127, 0, 0, 1], 4191));
        let status =
            c.rt.run(async move {
                let mut conn = Conn::http1(admin).await.unwrap();
                let req = Request::post("/shutdown")
                    .header("host", "x")
                    .body(client::empty())
                    .unwrap();
                conn.fetch(req).await.unwrap().status()
            })
            .await;
        assert_eq!(status, 200);
        let pid = c.proxy_pid.unwrap();
        assert_eq!(
            mesh.lab.wait_exit(pid, Duration::from_secs(15)),
            Some(0),
            "drained and exited 0"
        );
    })
    .await;

    load.task.abort();
    // Memory back to its baseline (the pods that lived through it all),
    // once the aborted load's connections have closed.
    for (pod, before) in baseline {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut after = rss(&mesh, pod);
        while after > before + 4 * 1024 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            after = rss(&mesh, pod);
        }
        assert!(
            after <= before + 4 * 1024,
            "{pod}'s proxy: {before} KiB at the start, {after} KiB after the chaos"
        );
        eprintln!("{pod}'s proxy RSS: {before} -> {after} KiB");
    }
}
