//! `weft-bench`: the load harness. Builds a lab of network namespaces (root
//! needed), puts the same upstream behind each configuration, and measures
//! each scenario alternately, repeatedly: latency at a fixed rate (open
//! loop), maximum throughput (closed loop), proxy CPU per request and RSS.
//! Writes a markdown table and JSON (benches/results/).
//!
//! ```text
//! cargo run --release -p weft-bench -- [--quick] [--rate 2000] [--connections 16]
//!     [--duration 10] [--repeat 3] [--out benches/results]
//! cargo run --release -p weft-bench -- scale [--quick] [--sizes 500x1000,...]
//! ```
//!
//! `scale` (scale/) measures the control plane instead: the real controller
//! watching a fake API server, thousands of simulated proxy streams.

mod lab;
mod load;
mod peers;
mod procstat;
mod report;
mod scale;
mod scenarios;
mod soak;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

/// Harness settings.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Settings {
    pub quick: bool,
    pub rate: u32,
    pub connections: usize,
    /// Seconds per fixed-rate measurement.
    pub duration: u64,
    /// Seconds per max-throughput measurement.
    pub throughput_duration: u64,
    pub repeat: usize,
    #[serde(skip)]
    pub out: PathBuf,
    /// Only scenarios whose name contains one of these (and their baselines).
    pub only: Vec<String>,
    /// Extra environment for the proxies (`--proxy-env K=V`).
    pub proxy_env: Vec<(String, String)>,
    /// Connections held open for the memory measurement.
    pub open_connections: usize,
}

impl Settings {
    fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut s = Settings {
            quick: false,
            rate: 2000,
            connections: 16,
            duration: 10,
            throughput_duration: 5,
            repeat: 3,
            out: PathBuf::from("benches/results"),
            only: Vec::new(),
            proxy_env: Vec::new(),
            open_connections: 1000,
        };
        while let Some(arg) = args.next() {
            let mut value =
                |name: &str| args.next().with_context(|| format!("{name} needs a value"));
            match arg.as_str() {
                "--quick" => s.quick = true,
                "--rate" => s.rate = value("--rate")?.parse()?,
                "--connections" => s.connections = value("--connections")?.parse()?,
                "--duration" => s.duration = value("--duration")?.parse()?,
                "--repeat" => s.repeat = value("--repeat")?.parse()?,
                "--out" => s.out = PathBuf::from(value("--out")?),
                "--only" => s.only.push(value("--only")?),
                "--open-connections" => {
                    s.open_connections = value("--open-connections")?.parse()?
                }
                "--proxy-env" => {
                    let kv = value("--proxy-env")?;
                    let (k, v) = kv.split_once('=').context("--proxy-env takes K=V")?;
                    s.proxy_env.push((k.to_string(), v.to_string()));
                }
                "--help" | "-h" => {
                    println!("{}", include_str!("usage.txt"));
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other}; see --help"),
            }
        }
        if s.quick {
            s.duration = 1;
            s.throughput_duration = 1;
            s.repeat = 1;
            s.rate = s.rate.min(500);
            s.open_connections = s.open_connections.min(100);
        }
        if s.rate == 0 || s.connections == 0 || s.repeat == 0 {
            bail!("--rate, --connections and --repeat must be at least 1");
        }
        Ok(s)
    }

    pub fn selected(&self, s: &scenarios::Scenario) -> bool {
        self.only.is_empty()
            || self.only.iter().any(|o| {
                s.name.contains(o.as_str())
                    || scenarios::SCENARIOS
                        .iter()
                        .any(|t| t.baseline == s.name && t.name.contains(o.as_str()))
            })
    }

    pub fn fixed(&self) -> Duration {
        Duration::from_secs(self.duration)
    }

    pub fn throughput(&self) -> Duration {
        Duration::from_secs(self.throughput_duration)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().is_some_and(|a| a == "scale") {
        args.next();
        return scale_main(scale::ScaleSettings::parse(args)?).await;
    }
    if args.peek().is_some_and(|a| a == "soak") {
        args.next();
        return soak_main(soak::SoakSettings::parse(args)?).await;
    }
    let settings = Settings::parse(args)?;
    if let Some(why) = weft_lab::netns::unavailable() {
        bail!(
            "weft-bench builds network namespaces and needs root with iproute2 and iptables: {why}"
        );
    }
    eprintln!("weft-bench: {settings:?}");
    let lab = lab::BenchLab::start(&settings.proxy_env).await;
    let results = lab.run_all(&settings).await;
    let open = lab.open_connections_rss(&settings).await;
    let report = report::Report::new(&settings, results, open, &lab);
    let name = if settings.quick { "quick" } else { "latest" };
    write(&settings.out, name, &report.markdown(), &report)
}

async fn scale_main(settings: scale::ScaleSettings) -> anyhow::Result<()> {
    raise_fd_limit();
    eprintln!("weft-bench scale: {settings:?}");
    let results = scale::run(&settings).await?;
    let name = if settings.quick {
        "scale-quick"
    } else {
        "scale"
    };
    let json = serde_json::json!({
        "machine": report::machine(),
        "settings": settings,
        "results": results,
    });
    write(
        &settings.out,
        name,
        &scale::markdown(&settings, &results),
        &json,
    )
}

async fn soak_main(settings: soak::SoakSettings) -> anyhow::Result<()> {
    if let Some(why) = weft_lab::netns::unavailable() {
        bail!("weft-bench soak builds network namespaces and needs root: {why}");
    }
    eprintln!("weft-bench soak: {settings:?}");
    let lab = lab::BenchLab::start(&[]).await;
    let samples = soak::run(&lab, &settings).await;
    std::fs::create_dir_all(&settings.out)?;
    std::fs::write(settings.out.join("soak.svg"), soak::svg(&samples))?;
    let json =
        serde_json::json!({"machine": report::machine(), "settings": settings, "samples": samples});
    write(
        &settings.out,
        "soak",
        &soak::markdown(&settings, &samples),
        &json,
    )
}

/// Raises the open-files limit to the hard limit: thousands of streams.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write `lim`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Writes `<name>.md` and `<name>.json` into `out` and prints the markdown.
fn write(
    out: &std::path::Path,
    name: &str,
    md: &str,
    json: &impl serde::Serialize,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join(format!("{name}.md")), md)?;
    std::fs::write(
        out.join(format!("{name}.json")),
        serde_json::to_string_pretty(json)?,
    )?;
    println!("{md}");
    eprintln!("weft-bench: wrote {}/{name}.md and .json", out.display());
    Ok(())
}
