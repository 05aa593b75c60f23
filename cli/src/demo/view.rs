//! What the demo shows each second.

use std::fmt::Write;
use std::time::Duration;

use super::FLAKY_RATIO;
use super::load::{Snapshot, Stats};
use super::scenario::Step;

pub struct Frame<'a> {
    pub elapsed: Duration,
    pub step: &'a Step,
    /// The last second.
    pub window: Snapshot,
    pub total: &'a Snapshot,
    /// The frontend proxy's retry_total.
    pub retries: f64,
    /// 503s web-v1-b's app answered (its proxy's inbound response_total).
    pub flaky_503: f64,
}

pub struct View {
    plain: bool,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

impl View {
    pub fn new(plain: bool) -> Self {
        Self { plain }
    }

    pub fn draw(&mut self, f: &Frame<'_>) {
        let mut s = String::new();
        if !self.plain {
            s.push_str("\x1b[2J\x1b[H");
        }
        let _ = writeln!(
            s,
            "weft demo  {:>4}s   split web-v1 {}% / web-v2 {}%   ({})",
            f.elapsed.as_secs(),
            f.step.v1,
            f.step.v2,
            f.step.note
        );
        let _ = writeln!(
            s,
            "  {:<10} {:>7} {:>9} {:>9} {:>9}",
            "backend", "req/s", "success", "p50 ms", "p99 ms"
        );
        for (name, c) in &f.window.by_backend {
            let n = c.ok + c.failed;
            if n == 0 {
                continue;
            }
            let mut l = c.latencies_ms.clone();
            l.sort_by(f64::total_cmp);
            let _ = writeln!(
                s,
                "  {:<10} {:>7} {:>8.1}% {:>9.2} {:>9.2}",
                name,
                n,
                100.0 * c.ok as f64 / n as f64,
                percentile(&l, 0.5),
                percentile(&l, 0.99)
            );
        }
        let (ok, failed) = (f.total.ok(), f.total.failed());
        let _ = writeln!(
            s,
            "  frontend saw {} ok / {} failed ({:.2}% success); web-v1-b's app failed {} times ({:.0}% on purpose), the frontend's proxy retried {}",
            ok,
            failed,
            100.0 * ok as f64 / (ok + failed).max(1) as f64,
            f.flaky_503,
            FLAKY_RATIO * 100.0,
            f.retries
        );
        if !self.plain {
            s.push_str("  Ctrl-C stops the demo and removes everything it started.\n");
        }
        print!("{s}");
        if self.plain {
            println!();
        }
    }
}

/// The closing lines: totals per backend, and how many of the requests
/// the backends' proxies received came over mesh TLS.
pub fn summary(stats: &Stats, inbound: &Result<(f64, f64), String>) -> String {
    let total = stats.totals();
    let mut s = String::from("weft demo summary:\n");
    for (name, c) in &total.by_backend {
        let _ = writeln!(s, "  {name}: {} ok, {} failed", c.ok, c.failed);
    }
    let (ok, failed) = (total.ok(), total.failed());
    let _ = writeln!(
        s,
        "  total: {ok} ok, {failed} failed, success {:.2}%",
        100.0 * ok as f64 / (ok + failed).max(1) as f64,
    );
    let _ = match inbound {
        Ok((mtls, all)) => write!(
            s,
            "  mesh TLS: {mtls} of the {all} requests the web pods' proxies received ({:.1}%)",
            100.0 * mtls / all.max(1.0)
        ),
        Err(e) => write!(s, "  mesh TLS: not known, the proxies stopped first ({e})"),
    };
    s
}
