//! `weft-bench soak`: an hour (by default) of constant load through two
//! proxies (client outbound -> server inbound, HTTP/1.1), sampled every
//! minute: latency percentiles, errors, and both proxies' RSS. Written as
//! a table, JSON, and an SVG plot (benches/results/soak.*). Not run in CI:
//! it is the check that nothing grows over time.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::lab::BenchLab;
use crate::load::{self, Workload};
use crate::procstat;

#[derive(Clone, Debug, serde::Serialize)]
pub struct SoakSettings {
    /// The run's length in seconds (`--minutes`, or `--seconds` for a
    /// quick look).
    pub seconds: u64,
    pub rate: u32,
    pub connections: usize,
    /// Seconds per sample (60; less for a quick look).
    pub sample_secs: u64,
    #[serde(skip)]
    pub out: std::path::PathBuf,
}

impl SoakSettings {
    pub fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut s = SoakSettings {
            seconds: 3600,
            rate: 1000,
            connections: 16,
            sample_secs: 60,
            out: "benches/results".into(),
        };
        while let Some(arg) = args.next() {
            let mut value = |n: &str| args.next().with_context(|| format!("{n} needs a value"));
            match arg.as_str() {
                "--minutes" => s.seconds = value("--minutes")?.parse::<u64>()? * 60,
                "--seconds" => s.seconds = value("--seconds")?.parse()?,
                "--rate" => s.rate = value("--rate")?.parse()?,
                "--connections" => s.connections = value("--connections")?.parse()?,
                "--sample-secs" => s.sample_secs = value("--sample-secs")?.parse()?,
                "--out" => s.out = value("--out")?.into(),
                "--help" | "-h" => {
                    println!(
                        "weft-bench soak [--minutes 60 | --seconds N] [--rate 1000] [--connections 16] [--sample-secs 60] [--out DIR]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other}"),
            }
        }
        if s.seconds == 0 || s.rate == 0 || s.sample_secs == 0 {
            bail!("--minutes (--seconds), --rate and --sample-secs must be at least 1");
        }
        Ok(s)
    }
}

/// One sample.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sample {
    pub minute: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub rps: f64,
    pub errors: u64,
    pub client_proxy_rss_kib: u64,
    pub server_proxy_rss_kib: u64,
}

pub async fn run(lab: &BenchLab, s: &SoakSettings) -> Vec<Sample> {
    let (client, addr, [client_pid, server_pid]) = lab.two_hops();
    let samples_wanted = s.seconds / s.sample_secs;
    let mut out = Vec::new();
    for i in 0..samples_wanted.max(1) {
        let sample = client
            .rt
            .run(load::fixed_rate(
                addr,
                Workload::Http1Get,
                s.rate,
                s.connections,
                Duration::from_secs(s.sample_secs),
            ))
            .await;
        let h = &sample.latency_us;
        let row = Sample {
            minute: ((i + 1) * s.sample_secs) as f64 / 60.0,
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            rps: sample.rps(),
            errors: sample.errors,
            client_proxy_rss_kib: procstat::rss_kib(client_pid).unwrap_or(0),
            server_proxy_rss_kib: procstat::rss_kib(server_pid).unwrap_or(0),
        };
        eprintln!(
            "  {:>6.1} min  p50 {:>5} us  p99 {:>6} us  {:>6.0} req/s  errors {}  RSS {} + {} KiB",
            row.minute,
            row.p50_us,
            row.p99_us,
            row.rps,
            row.errors,
            row.client_proxy_rss_kib,
            row.server_proxy_rss_kib
        );
        out.push(row);
    }
    out
}

/// The growth over the run: last third's mean minus first third's mean.
fn growth(v: &[f64]) -> f64 {
    let n = (v.len() / 3).max(1);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
    mean(&v[v.len() - n..]) - mean(&v[..n])
}

pub fn markdown(s: &SoakSettings, samples: &[Sample]) -> String {
    let rss: Vec<f64> = samples
        .iter()
        .map(|x| x.client_proxy_rss_kib as f64)
        .collect();
    let rss2: Vec<f64> = samples
        .iter()
        .map(|x| x.server_proxy_rss_kib as f64)
        .collect();
    let p99: Vec<f64> = samples.iter().map(|x| x.p99_us as f64).collect();
    let errors: u64 = samples.iter().map(|x| x.errors).sum();
    let machine = crate::report::machine();
    let mut out = format!(
        "Machine: {} CPUs ({}), Linux {}. {} req/s over {} connections through two proxies (HTTP/1.1), {:.1} minutes, a sample every {} s. \
         Errors: {errors}. Growth (mean of the last third minus the first third): client proxy RSS {:+.0} KiB, server proxy RSS {:+.0} KiB, p99 {:+.0} us.\n\n\
         ![soak](soak.svg)\n\n| minute | p50 us | p99 us | p99.9 us | req/s | errors | client proxy RSS KiB | server proxy RSS KiB |\n|---|---|---|---|---|---|---|---|\n",
        machine.cpus,
        machine.cpu_model,
        machine.kernel,
        s.rate,
        s.connections,
        s.seconds as f64 / 60.0,
        s.sample_secs,
        growth(&rss),
        growth(&rss2),
        growth(&p99),
    );
    for x in samples {
        let _ = writeln!(
            out,
            "| {:.1} | {} | {} | {} | {:.0} | {} | {} | {} |",
            x.minute,
            x.p50_us,
            x.p99_us,
            x.p999_us,
            x.rps,
            x.errors,
            x.client_proxy_rss_kib,
            x.server_proxy_rss_kib
        );
    }
    out
}

/// Two panels (RSS of both proxies; p50 and p99), minutes along x.
pub fn svg(samples: &[Sample]) -> String {
    let (w, h, pad) = (800.0, 240.0, 50.0);
    let max_x = samples.last().map_or(1.0, |s| s.minute).max(1.0);
    let panel = |title: &str, series: &[(&str, &str, Vec<f64>)], top: f64| -> String {
        let max_y = series
            .iter()
            .flat_map(|(_, _, v)| v.iter().copied())
            .fold(1.0f64, f64::max)
            * 1.1;
        let mut g = format!(
            "<g transform=\"translate(0,{top})\"><text x=\"{pad}\" y=\"16\" font-size=\"14\">{title}</text>\
             <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/><line x1=\"{pad}\" y1=\"24\" x2=\"{pad}\" y2=\"{}\" stroke=\"#999\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{:.0} min</text><text x=\"{}\" y=\"34\" font-size=\"11\" text-anchor=\"end\">{:.0}</text>",
            h - pad,
            w - 10.0,
            h - pad,
            h - pad,
            w - 10.0,
            h - pad + 16.0,
            max_x,
            pad - 4.0,
            max_y
        );
        for (i, (name, colour, v)) in series.iter().enumerate() {
            let points: Vec<String> = samples
                .iter()
                .zip(v)
                .map(|(s, y)| {
                    let px = pad + (w - pad - 10.0) * s.minute / max_x;
                    let py = (h - pad) - (h - pad - 24.0) * y / max_y;
                    format!("{px:.1},{py:.1}")
                })
                .collect();
            let _ = write!(
                g,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\
                 <text x=\"{}\" y=\"16\" font-size=\"12\" fill=\"{colour}\">{name}</text>",
                points.join(" "),
                w - 300.0 + 150.0 * i as f64
            );
        }
        g + "</g>"
    };
    let kib = |f: fn(&Sample) -> u64| samples.iter().map(|s| f(s) as f64).collect::<Vec<_>>();
    let rss = panel(
        "proxy RSS (KiB)",
        &[
            ("client proxy", "#1f77b4", kib(|s| s.client_proxy_rss_kib)),
            ("server proxy", "#d62728", kib(|s| s.server_proxy_rss_kib)),
        ],
        0.0,
    );
    let lat = panel(
        "latency (us)",
        &[
            ("p50", "#2ca02c", kib(|s| s.p50_us)),
            ("p99", "#ff7f0e", kib(|s| s.p99_us)),
        ],
        h,
    );
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" font-family=\"sans-serif\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>{rss}{lat}</svg>\n",
        2.0 * h
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(minute: f64, rss: u64) -> Sample {
        Sample {
            minute,
            p50_us: 100,
            p99_us: 300,
            p999_us: 900,
            rps: 1000.0,
            errors: 0,
            client_proxy_rss_kib: rss,
            server_proxy_rss_kib: rss,
        }
    }

    #[test]
    fn growth_compares_the_last_third_with_the_first() {
        assert_eq!(growth(&[10.0, 10.0, 10.0, 20.0, 20.0, 20.0]), 10.0);
        assert_eq!(growth(&[5.0]), 0.0);
    }

    #[test]
    fn the_plot_has_a_line_per_series() {
        let s: Vec<Sample> = (1..=5).map(|m| sample(m as f64, 8000 + m)).collect();
        let svg = svg(&s);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        let md = markdown(
            &SoakSettings {
                seconds: 300,
                rate: 1000,
                connections: 16,
                sample_secs: 60,
                out: Default::default(),
            },
            &s,
        );
        // 5 samples: the last (8005) minus the first (8001).
        assert!(md.contains("client proxy RSS +4 KiB"), "{md}");
    }
}
