//! `weft-bench scale`: the control plane under a large mesh. For each size
//! a fake Kubernetes API server (the real list/watch protocol) holds a
//! synthetic cluster (world.rs); the real weft-controller binary watches
//! it; `streams` simulated proxies (fleet.rs) hold discovery streams. Then
//! EndpointSlice changes are made one at a time, to the service every
//! proxy uses (hot) and to services a few use (cold), and for each the
//! harness times how long until every affected proxy has the new version
//! (and ACKed it), and counts the bytes pushed.
//!
//! ```text
//! fake API (in process) --list/watch--> weft-controller --N streams--> fleet (in process)
//!        ^ change one EndpointSlice                                     | time to the last ACK
//! ```
//!
//! No root needed: everything is on 127.0.0.1.

mod fleet;
mod world;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::Instant;
use weft_tests::fake_api::FakeApi;

use crate::procstat;
use fleet::{Fleet, Subscriptions};
pub use world::Size;

/// Settings of a scale run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ScaleSettings {
    pub quick: bool,
    pub sizes: Vec<Size>,
    /// Changes made to the hot service, and as many to cold ones.
    pub changes: usize,
    /// Cold services each proxy subscribes to (besides the hot one and
    /// its inbound policy).
    pub cold_per_proxy: usize,
    #[serde(skip)]
    pub out: PathBuf,
}

impl ScaleSettings {
    pub fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut s = ScaleSettings {
            quick: false,
            sizes: Vec::new(),
            changes: 20,
            cold_per_proxy: 4,
            out: PathBuf::from("benches/results"),
        };
        let mut per_service = 3;
        let mut sizes = None;
        while let Some(arg) = args.next() {
            let mut value =
                |name: &str| args.next().with_context(|| format!("{name} needs a value"));
            match arg.as_str() {
                "--quick" => s.quick = true,
                "--sizes" => sizes = Some(value("--sizes")?),
                "--per-service" => per_service = value("--per-service")?.parse()?,
                "--changes" => s.changes = value("--changes")?.parse()?,
                "--cold" => s.cold_per_proxy = value("--cold")?.parse()?,
                "--out" => s.out = PathBuf::from(value("--out")?),
                "--help" | "-h" => {
                    println!("{}", include_str!("usage.txt"));
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other}; see weft-bench scale --help"),
            }
        }
        let default = if s.quick {
            "20x100,50x200"
        } else {
            // Streams growing at 1,000 services, services growing at 1,000
            // streams, then the target: 5,000 streams, 10,000 services.
            "500x1000,2000x1000,5000x1000,1000x5000,1000x10000,5000x10000"
        };
        for part in sizes.as_deref().unwrap_or(default).split(',') {
            let (n, m) = part
                .split_once('x')
                .with_context(|| format!("size {part:?}: expected STREAMSxSERVICES"))?;
            let size = Size {
                streams: n.trim().parse()?,
                services: m.trim().parse()?,
                per_service,
            };
            if size.services < 2 || size.streams == 0 || size.per_service == 0 {
                bail!("size {part:?}: at least 1 stream, 2 services and 1 endpoint each");
            }
            s.sizes.push(size);
        }
        if s.quick {
            s.changes = s.changes.min(3);
        }
        Ok(s)
    }
}

/// Latencies and bytes of one kind of change.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Changes {
    pub made: usize,
    /// Proxies affected per change, on average.
    pub subscribers: f64,
    /// Change applied -> the last affected proxy has it, per change.
    pub all_acked_p50_ms: f64,
    pub all_acked_p99_ms: f64,
    /// Change applied -> each affected proxy has it, over every proxy.
    pub per_proxy_p50_ms: f64,
    pub per_proxy_p99_ms: f64,
    /// Protobuf bytes pushed per change, in all and per affected proxy.
    pub bytes_per_change: f64,
    pub bytes_per_subscriber: f64,
    /// Changes some affected proxy never received (within 30 s).
    pub timeouts: usize,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SizeResult {
    pub size: Size,
    pub endpoints: usize,
    /// Controller start -> /ready (every kind listed and indexed).
    pub ready_s: f64,
    /// First stream opened -> every proxy holds all it subscribed to.
    pub sync_s: f64,
    pub hot: Changes,
    pub cold: Changes,
    /// Controller CPU per change (both kinds, averaged).
    pub controller_cpu_ms_per_change: f64,
    /// Controller RSS with every stream synced, and its peak.
    pub controller_rss_kib: u64,
    pub controller_peak_rss_kib: u64,
    /// Streams that failed to open or ended.
    pub failed_streams: usize,
}

pub async fn run(settings: &ScaleSettings) -> anyhow::Result<Vec<SizeResult>> {
    controller_binary();
    let mut results = Vec::new();
    for &size in &settings.sizes {
        eprintln!(
            "weft-bench scale: {} streams, {} services, {} endpoints ...",
            size.streams,
            size.services,
            size.endpoints()
        );
        let r = run_size(size, settings).await?;
        eprintln!(
            "  ready {:.1}s, synced {:.1}s; hot change to all {} ACKed p50 {:.0} ms p99 {:.0} ms; cold p99 {:.0} ms; {:.0} bytes/subscriber; CPU {:.1} ms/change; RSS {} MiB",
            r.ready_s,
            r.sync_s,
            size.streams,
            r.hot.all_acked_p50_ms,
            r.hot.all_acked_p99_ms,
            r.cold.all_acked_p99_ms,
            r.cold.bytes_per_subscriber,
            r.controller_cpu_ms_per_change,
            r.controller_rss_kib / 1024
        );
        results.push(r);
    }
    Ok(results)
}

/// The controller process, stopped on drop.
struct ControllerProcess {
    child: Child,
    dir: PathBuf,
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The weft-controller binary (built once, before anything is timed).
fn controller_binary() -> PathBuf {
    weft_lab::bins::path("weft-controller")
}

async fn start_controller(api: &FakeApi) -> anyhow::Result<(ControllerProcess, u16, u16)> {
    let dir = std::env::temp_dir().join(format!("weft-bench-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: 'http://{}'}}}}]\n\
             users: [{{name: bench, user: {{}}}}]\ncontexts: [{{name: bench, context: {{cluster: fake, user: bench}}}}]\n\
             current-context: bench\n",
            api.addr
        ),
    )?;
    let (discovery, admin) = (free_port()?, free_port()?);
    let child = Command::new(controller_binary())
        .args(["--source", "kubernetes"])
        .arg(format!("--discovery-addr=127.0.0.1:{discovery}"))
        .arg(format!("--admin-addr=127.0.0.1:{admin}"))
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("WEFT_CONTROLLER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting weft-controller")?;
    Ok((ControllerProcess { child, dir }, discovery, admin))
}

async fn wait_ready(admin: u16, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
    loop {
        if let Ok(r) = weft_lab::client::get(addr, "/ready").await
            && r.status() == 200
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the controller was not ready within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run_size(size: Size, settings: &ScaleSettings) -> anyhow::Result<SizeResult> {
    let api = FakeApi::start().await;
    world::load(&api, size);
    let started = Instant::now();
    let (controller, discovery, admin) = start_controller(&api).await?;
    let pid = controller.child.id();
    wait_ready(admin, Duration::from_secs(300)).await?;
    let ready_s = started.elapsed().as_secs_f64();

    let subs = Subscriptions::new(size, settings.cold_per_proxy);
    let started = Instant::now();
    let mut fleet = Fleet::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], discovery)),
        &subs,
    );
    let deadline = started + Duration::from_secs(600);
    while fleet.synced.load(std::sync::atomic::Ordering::Relaxed) < size.streams {
        if Instant::now() > deadline {
            bail!("the fleet did not sync within 10 minutes");
        }
        if fleet.failed.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            bail!("simulated proxies failed (see above)");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sync_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let controller_rss_kib = procstat::rss_kib(pid).unwrap_or(0);

    let cpu_before = procstat::cpu_seconds(pid).unwrap_or(0.0);
    let hot = changes(&api, &mut fleet, &subs, size, settings.changes, |_| 0).await;
    // Cold changes go round the services that have subscribers.
    let mut cold_services: Vec<usize> = subs
        .subscribers
        .keys()
        .copied()
        .filter(|&j| j != 0)
        .collect();
    cold_services.sort_unstable();
    let cold = changes(&api, &mut fleet, &subs, size, settings.changes, |r| {
        cold_services[(r * 37) % cold_services.len()]
    })
    .await;
    let cpu = procstat::cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
    let made = (hot.made + cold.made).max(1);
    Ok(SizeResult {
        size,
        endpoints: size.endpoints(),
        ready_s,
        sync_s,
        hot,
        cold,
        controller_cpu_ms_per_change: cpu * 1000.0 / made as f64,
        controller_rss_kib,
        controller_peak_rss_kib: procstat::peak_rss_kib(pid).unwrap_or(0),
        failed_streams: fleet.failed.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// Makes `count` changes, one at a time, to the slice of `service(r)`,
/// each flipping its first endpoint's readiness, and waits for every
/// subscriber of that service to receive it.
async fn changes(
    api: &FakeApi,
    fleet: &mut Fleet,
    subs: &Subscriptions,
    size: Size,
    count: usize,
    service: impl Fn(usize) -> usize,
) -> Changes {
    let (mut all_acked, mut per_proxy) = (Vec::new(), Vec::new());
    let (mut bytes, mut subscribers, mut timeouts) = (0usize, 0usize, 0usize);
    // Every service starts with its first endpoint ready.
    let mut flipped: std::collections::HashMap<usize, bool> = Default::default();
    for r in 0..count {
        let j = service(r);
        let ready = flipped.get(&j).copied().unwrap_or(false);
        flipped.insert(j, !ready);
        let wanted = subs.subscribers.get(&j).map_or(0, Vec::len);
        let key = world::destination_key(j);
        while fleet.updates.try_recv().is_ok() {}
        let t0 = Instant::now();
        api.apply_object(world::endpoint_slice(j, size.per_service, ready));
        let mut got = std::collections::HashSet::new();
        let mut last = t0;
        let deadline = t0 + Duration::from_secs(30);
        while got.len() < wanted {
            match tokio::time::timeout_at(deadline, fleet.updates.recv()).await {
                Ok(Some(u)) if u.key == key => {
                    if got.insert(u.proxy) {
                        let ms = (u.at - t0).as_secs_f64() * 1000.0;
                        per_proxy.push(ms);
                        last = last.max(u.at);
                        bytes += u.bytes;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    timeouts += 1;
                    break;
                }
            }
        }
        all_acked.push((last - t0).as_secs_f64() * 1000.0);
        subscribers += wanted;
        // Let the controller settle between changes.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n = count.max(1) as f64;
    Changes {
        made: count,
        subscribers: subscribers as f64 / n,
        all_acked_p50_ms: percentile(&mut all_acked, 0.5),
        all_acked_p99_ms: percentile(&mut all_acked, 0.99),
        per_proxy_p50_ms: percentile(&mut per_proxy, 0.5),
        per_proxy_p99_ms: percentile(&mut per_proxy, 0.99),
        bytes_per_change: bytes as f64 / n,
        bytes_per_subscriber: bytes as f64 / (subscribers.max(1) as f64),
        timeouts,
    }
}

/// The nearest-rank percentile (so p99 of 20 values is the largest).
fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

pub fn markdown(settings: &ScaleSettings, results: &[SizeResult]) -> String {
    let machine = crate::report::machine();
    let mut out = format!(
        "Machine: {} CPUs ({}), Linux {}. Per size: {} changes to the hot service (every stream subscribes to it) \
         and {} to cold ones; each stream also subscribes to {} cold services and its inbound policy; \
         {} ready endpoints per service. The fake API server and the simulated proxies share the machine \
         with the controller. Latencies: change written to the API -> proxy has the new version \
         (it ACKs at once); p99 of the per-change maximum is the slowest change.\n\n",
        machine.cpus,
        machine.cpu_model,
        machine.kernel,
        settings.changes,
        settings.changes,
        settings.cold_per_proxy,
        settings.sizes.first().map_or(0, |s| s.per_service),
    );
    out.push_str(
        "| streams | services | endpoints | ready s | sync s | hot: all ACKed p50 / p99 ms | hot: per proxy p50 / p99 ms | cold: all ACKed p50 / p99 ms | cold subscribers | bytes per subscriber (hot / cold) | controller CPU ms / change | controller RSS MiB (peak) | timeouts |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {:.1} | {:.0} / {:.0} | {:.0} / {:.0} | {:.1} / {:.1} | {:.1} | {:.0} / {:.0} | {:.1} | {:.0} ({:.0}) | {} |",
            r.size.streams,
            r.size.services,
            r.endpoints,
            r.ready_s,
            r.sync_s,
            r.hot.all_acked_p50_ms,
            r.hot.all_acked_p99_ms,
            r.hot.per_proxy_p50_ms,
            r.hot.per_proxy_p99_ms,
            r.cold.all_acked_p50_ms,
            r.cold.all_acked_p99_ms,
            r.cold.subscribers,
            r.hot.bytes_per_subscriber,
            r.cold.bytes_per_subscriber,
            r.controller_cpu_ms_per_change,
            r.controller_rss_kib as f64 / 1024.0,
            r.controller_peak_rss_kib as f64 / 1024.0,
            r.hot.timeouts + r.cold.timeouts,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.5), 10.0);
        assert_eq!(percentile(&mut v, 0.99), 20.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
    }

    #[test]
    fn sizes_parse_and_bad_ones_are_refused() {
        let args = |a: &[&str]| {
            a.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .into_iter()
        };
        let s =
            ScaleSettings::parse(args(&["--sizes", "10x20,30x40", "--per-service", "2"])).unwrap();
        assert_eq!(s.sizes.len(), 2);
        assert_eq!(
            (
                s.sizes[1].streams,
                s.sizes[1].services,
                s.sizes[1].per_service
            ),
            (30, 40, 2)
        );
        assert!(ScaleSettings::parse(args(&["--sizes", "10"])).is_err());
        assert!(ScaleSettings::parse(args(&["--sizes", "10x1"])).is_err());
        let quick = ScaleSettings::parse(args(&["--quick"])).unwrap();
        assert!(quick.changes <= 3 && quick.sizes.iter().all(|s| s.streams <= 50));
    }
}
