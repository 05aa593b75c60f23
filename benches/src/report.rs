//! Summaries of the runs: medians over repeats, latency added over each
//! scenario's baseline, and the spread.

use std::fmt::Write as _;

use crate::Settings;
use crate::lab::{BenchLab, OpenRss, Run};
use crate::scenarios::SCENARIOS;

#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub scenario: &'static str,
    pub baseline: &'static str,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// Median over repeats of (this p - baseline p) in the same repeat.
    pub added_p50_us: i64,
    pub added_p90_us: i64,
    pub added_p99_us: i64,
    pub added_p999_us: i64,
    /// Lowest and highest p99 over the repeats.
    pub p99_spread_us: (u64, u64),
    pub max_rps: f64,
    pub proxy_cpu_s_per_10k: Option<f64>,
    pub proxy_rss_kib: Vec<u64>,
    pub errors: u64,
}

#[derive(Debug, serde::Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub machine: Machine,
    pub settings: Settings,
    pub idle_rss_kib: u64,
    /// Peer proxies found (their version lines) or skipped (and why).
    pub peers: Vec<String>,
    pub summaries: Vec<Summary>,
    pub open_connections: Vec<OpenRss>,
    pub runs: Vec<Run>,
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    v[v.len() / 2]
}

impl Report {
    pub fn new(settings: &Settings, runs: Vec<Run>, open: Vec<OpenRss>, lab: &BenchLab) -> Self {
        let summaries = SCENARIOS
            .iter()
            .filter(|s| settings.selected(s) && runs.iter().any(|r| r.scenario == s.name))
            .map(|s| {
                let mine: Vec<&Run> = runs.iter().filter(|r| r.scenario == s.name).collect();
                let base = |repeat| {
                    runs.iter()
                        .find(|r| r.scenario == s.baseline && r.repeat == repeat)
                };
                let added = |f: fn(&Run) -> u64| {
                    median(
                        mine.iter()
                            .filter_map(|r| base(r.repeat).map(|b| f(r) as i64 - f(b) as i64))
                            .collect(),
                    )
                };
                let p99s: Vec<u64> = mine.iter().map(|r| r.p99_us).collect();
                Summary {
                    scenario: s.name,
                    baseline: s.baseline,
                    p50_us: median(mine.iter().map(|r| r.p50_us).collect()),
                    p90_us: median(mine.iter().map(|r| r.p90_us).collect()),
                    p99_us: median(p99s.clone()),
                    p999_us: median(mine.iter().map(|r| r.p999_us).collect()),
                    added_p50_us: added(|r| r.p50_us),
                    added_p90_us: added(|r| r.p90_us),
                    added_p99_us: added(|r| r.p99_us),
                    added_p999_us: added(|r| r.p999_us),
                    p99_spread_us: (*p99s.iter().min().unwrap(), *p99s.iter().max().unwrap()),
                    max_rps: median(mine.iter().map(|r| r.max_rps).collect()),
                    proxy_cpu_s_per_10k: mine
                        .iter()
                        .map(|r| r.proxy_cpu_s_per_10k)
                        .collect::<Option<Vec<f64>>>()
                        .map(median),
                    proxy_rss_kib: mine
                        .last()
                        .map(|r| r.proxy_rss_kib.clone())
                        .unwrap_or_default(),
                    errors: mine.iter().map(|r| r.errors).sum(),
                }
            })
            .collect();
        Report {
            machine: machine(),
            settings: settings.clone(),
            idle_rss_kib: lab.idle_rss_kib,
            peers: lab.peers_found.clone(),
            summaries,
            open_connections: open,
            runs,
        }
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let s = &self.settings;
        let mut out = format!(
            "Machine: {} CPUs ({}), Linux {}. Fixed rate {} req/s over {} connections for {} s, \
             max throughput {} connections for {} s, {} repeat(s); medians shown, \
             p99 spread is min-max over repeats. Proxy idle RSS: {} KiB. Peers: {}.\n\n",
            m.cpus,
            m.cpu_model,
            m.kernel,
            s.rate,
            s.connections,
            s.duration,
            s.connections,
            s.throughput_duration,
            s.repeat,
            self.idle_rss_kib,
            self.peers.join("; ")
        );
        out.push_str(
            "| scenario | p50 | p90 | p99 | p99.9 | added p50 | added p99 | added p99.9 | p99 spread | max req/s | proxy CPU s / 10k req | proxy RSS KiB | errors |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in &self.summaries {
            let added = |v: i64| {
                if r.scenario == r.baseline {
                    "-".to_string()
                } else {
                    format!("{v} us")
                }
            };
            let _ = writeln!(
                out,
                "| {} | {} us | {} us | {} us | {} us | {} | {} | {} | {}-{} us | {:.0} | {} | {} | {} |",
                r.scenario,
                r.p50_us,
                r.p90_us,
                r.p99_us,
                r.p999_us,
                added(r.added_p50_us),
                added(r.added_p99_us),
                added(r.added_p999_us),
                r.p99_spread_us.0,
                r.p99_spread_us.1,
                r.max_rps,
                r.proxy_cpu_s_per_10k
                    .map_or("-".into(), |c| format!("{c:.3}")),
                if r.proxy_rss_kib.is_empty() {
                    "-".to_string()
                } else {
                    r.proxy_rss_kib
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(" + ")
                },
                r.errors
            );
        }
        if !self.open_connections.is_empty() {
            out.push_str(
                "\nMemory with connections held open (each made one call, then idles):\n\n\
                 | path | open connections | RSS before KiB | RSS with them open KiB | KiB per connection |\n\
                 |---|---|---|---|---|\n",
            );
            for o in &self.open_connections {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {:.1} |",
                    o.path,
                    o.connections,
                    o.before_kib,
                    o.open_kib,
                    (o.open_kib as f64 - o.before_kib as f64) / o.connections.max(1) as f64
                );
            }
        }
        out
    }
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        kernel,
    }
}
