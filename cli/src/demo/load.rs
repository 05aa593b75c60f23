//! The frontend's load: `rate` requests a second to web.shop's cluster IP
//! (through the frontend's proxy, transparently), each answer attributed to
//! the backend pod that sent it (`x-app-name`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;
use weft_tests::client::{self, Conn};

/// web.shop's cluster IP and port (examples/shop/services.yaml).
const WEB: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 0, 10)),
    80,
);
const WORKERS: u32 = 8;

/// Per backend: answers and their latencies (milliseconds).
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub ok: u64,
    pub failed: u64,
    pub latencies_ms: Vec<f64>,
}

/// Everything the generator saw, by backend (`error` for requests that got
/// no answer from any backend).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub by_backend: BTreeMap<String, Counts>,
}

impl Snapshot {
    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let mut by_backend = BTreeMap::new();
        for (name, c) in &self.by_backend {
            let before = earlier.by_backend.get(name).cloned().unwrap_or_default();
            by_backend.insert(
                name.clone(),
                Counts {
                    ok: c.ok - before.ok,
                    failed: c.failed - before.failed,
                    latencies_ms: c.latencies_ms[before.latencies_ms.len()..].to_vec(),
                },
            );
        }
        Snapshot { by_backend }
    }

    pub fn ok(&self) -> u64 {
        self.by_backend.values().map(|c| c.ok).sum()
    }

    pub fn failed(&self) -> u64 {
        self.by_backend.values().map(|c| c.failed).sum()
    }
}

#[derive(Debug, Default)]
pub struct Stats(Mutex<Snapshot>);

impl Stats {
    fn record(&self, backend: &str, ok: bool, latency: Duration) {
        let mut s = self.0.lock().expect("not poisoned");
        let c = s.by_backend.entry(backend.to_string()).or_default();
        if ok {
            c.ok += 1;
        } else {
            c.failed += 1;
        }
        c.latencies_ms.push(latency.as_secs_f64() * 1000.0);
    }

    pub fn snapshot(&self) -> Snapshot {
        self.0.lock().expect("not poisoned").clone()
    }

    pub fn total_ok(&self) -> u64 {
        self.0.lock().expect("not poisoned").ok()
    }
}

/// Runs until aborted: `WORKERS` connections sharing `rate`.
pub async fn run(rate: u32, stats: Arc<Stats>) {
    let interval = Duration::from_secs_f64(f64::from(WORKERS) / f64::from(rate.max(1)));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let stats = stats.clone();
        workers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut conn = None;
            loop {
                tick.tick().await;
                if conn.is_none() {
                    conn = Conn::http1(WEB).await.ok();
                }
                let Some(c) = conn.as_mut() else {
                    stats.record("error", false, Duration::ZERO);
                    continue;
                };
                let req = Request::get("/hello")
                    .header("host", "web.shop.svc.cluster.local")
                    .body(client::empty())
                    .expect("a valid request");
                let started = Instant::now();
                match c.fetch(req).await {
                    Ok(rsp) => {
                        let backend = rsp
                            .headers()
                            .get("x-app-name")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("proxy")
                            .to_string();
                        stats.record(&backend, rsp.status().is_success(), started.elapsed());
                    }
                    Err(_) => {
                        stats.record("error", false, started.elapsed());
                        conn = None;
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
}
