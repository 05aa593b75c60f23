//! The frontend's load: `rate` requests a second to web.shop (its cluster
//! IP, which the frontend's proxy intercepts; on loopback, the proxy's
//! outbound listener), each answer attributed to the backend pod that sent
//! it (`x-app-name`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;
use weft_lab::client::{self, Conn};

const WORKERS: u32 = 8;

/// Per backend: answers, and (in a window) their latencies in milliseconds.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub ok: u64,
    pub failed: u64,
    pub latencies_ms: Vec<f64>,
}

/// Answers by backend (`error` for requests that got no answer from any
/// backend).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub by_backend: BTreeMap<String, Counts>,
}

impl Snapshot {
    pub fn ok(&self) -> u64 {
        self.by_backend.values().map(|c| c.ok).sum()
    }

    pub fn failed(&self) -> u64 {
        self.by_backend.values().map(|c| c.failed).sum()
    }
}

/// Totals since the start (counts only), and the window since the view
/// last took it (with latencies), so memory stays bounded however long the
/// demo runs.
#[derive(Debug, Default)]
pub struct Stats(Mutex<(Snapshot, Snapshot)>);

impl Stats {
    fn record(&self, backend: &str, ok: bool, latency: Duration) {
        let mut s = self.0.lock().expect("not poisoned");
        let (total, window) = &mut *s;
        for (c, latency) in [(total, None), (window, Some(latency))] {
            let c = c.by_backend.entry(backend.to_string()).or_default();
            if ok {
                c.ok += 1;
            } else {
                c.failed += 1;
            }
            if let Some(l) = latency {
                c.latencies_ms.push(l.as_secs_f64() * 1000.0);
            }
        }
    }

    /// What happened since the last call.
    pub fn take_window(&self) -> Snapshot {
        std::mem::take(&mut self.0.lock().expect("not poisoned").1)
    }

    /// Counts since the start.
    pub fn totals(&self) -> Snapshot {
        self.0.lock().expect("not poisoned").0.clone()
    }

    pub fn total_ok(&self) -> u64 {
        self.0.lock().expect("not poisoned").0.ok()
    }
}

/// Runs until aborted: `WORKERS` connections to `web` sharing `rate`.
pub async fn run(web: SocketAddr, rate: u32, stats: Arc<Stats>) {
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
                    conn = Conn::http1(web).await.ok();
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
