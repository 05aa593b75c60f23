//! A meshed pod on a test host: weft-init's rules installed and the real
//! weft-proxy running as UID 2102, as the injector would set it up.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::netns::{Host, Lab, NsRuntime};
use crate::{bins, client};

pub const PROXY_UID: u32 = 2102;
pub const ADMIN_PORT: u16 = 4191;

pub struct Pod {
    pub host: Host,
    /// A runtime inside the pod's network namespace: tasks spawned on it are
    /// the pod's application (and their traffic is redirected).
    pub rt: NsRuntime,
    pub proxy_pid: Option<u32>,
    /// Where the proxy's stdout goes (its access log); inherited if unset.
    pub proxy_stdout: Option<std::path::PathBuf>,
}

impl Pod {
    pub fn new(lab: &Arc<Lab>, name: &str, last_octet: u8) -> Self {
        Self::with_threads(lab, name, last_octet, 1)
    }

    /// A pod whose application runtime has `threads` worker threads.
    pub fn with_threads(lab: &Arc<Lab>, name: &str, last_octet: u8, threads: usize) -> Self {
        let host = lab.host(name, last_octet);
        let rt = host.rt_threads(threads);
        Self {
            host,
            rt,
            proxy_pid: None,
            proxy_stdout: None,
        }
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.host.ip, port))
    }

    /// Installs the redirect rules (weft-init with `args`).
    pub fn init(&self, args: &[&str]) -> String {
        self.host.run(bins::path("weft-init"), args)
    }

    /// Starts weft-proxy as UID 2102 with `env` on top of the defaults and
    /// waits until its /ready answers 200.
    pub async fn start_proxy(&mut self, env: &[(&str, &str)]) -> u32 {
        let mut cmd = self.host.command(bins::path("weft-proxy"), Some(PROXY_UID));
        let stdout = match &self.proxy_stdout {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("proxy stdout file")),
            None => Stdio::inherit(),
        };
        cmd.env("WEFT_PROXY_LOG", lab_log())
            .env("WEFT_PROXY_SHUTDOWN_GRACE_PERIOD", "10s")
            .stdout(stdout)
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn weft-proxy");
        let pid = self.host.lab().adopt(child);
        self.proxy_pid = Some(pid);
        self.wait_ready(Duration::from_secs(10)).await;
        pid
    }

    /// Installs the default rules and starts the proxy: a meshed pod.
    pub async fn mesh(&mut self, env: &[(&str, &str)]) -> u32 {
        self.init(&[]);
        self.start_proxy(env).await
    }

    pub async fn wait_ready(&self, within: Duration) {
        let what = format!("proxy in {}", self.host.ns);
        wait_ready(&self.rt, ADMIN_PORT, within, &what).await;
    }

    /// The proxy's resident memory, KiB.
    pub fn proxy_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proxy_pid?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// GETs a path of this pod's proxy admin server.
    pub async fn admin_get(&self, path: &'static str) -> String {
        self.try_admin_get(path).await.expect("admin request")
    }

    /// [`Pod::admin_get`], with the error when the proxy does not answer
    /// (it was stopped, say).
    pub async fn try_admin_get(&self, path: &'static str) -> Result<String, String> {
        let admin = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
        let rsp = self
            .rt
            .run(async move { client::get(admin, path).await.map_err(|e| e.to_string()) })
            .await?;
        Ok(String::from_utf8_lossy(rsp.body()).into_owned())
    }

    /// The value of one metric sample (exact series text before the value),
    /// summed over every series whose text contains all of `parts`.
    pub async fn metric(&self, name: &str, parts: &[&str]) -> f64 {
        let text = self.admin_get("/metrics").await;
        sum_metric(&text, name, parts)
    }
}

/// Sums the samples of metric `name` with every label of `parts`, each
/// written as in the exposition (`direction="inbound"`, or several joined
/// by commas); label values match exactly.
pub fn sum_metric(text: &str, name: &str, parts: &[&str]) -> f64 {
    let pairs: Vec<(&str, &str)> = parts
        .iter()
        .flat_map(|p| p.split("\","))
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim(), v.trim().trim_matches('"')))
        })
        .collect();
    weft_proto::metrics_text::sum(text, name, &pairs)
}

/// The log filter of the proxies and controllers a lab starts:
/// `WEFT_LAB_LOG` (`weft demo` sets `warn`), else `info`.
pub fn lab_log() -> String {
    std::env::var("WEFT_LAB_LOG").unwrap_or_else(|_| "info".into())
}

/// The controller's discovery port, as the proxies reach it.
pub const DISCOVERY_PORT: u16 = 8086;

/// Starts the real weft-controller in `host` with a directory source and
/// waits until its /ready answers 200. Returns its PID.
pub async fn start_controller(
    host: &crate::netns::Host,
    rt: &NsRuntime,
    dir: &std::path::Path,
    args: &[String],
) -> u32 {
    let child = host
        .command(bins::path("weft-controller"), None)
        .arg("--source")
        .arg(format!("dir:{}", dir.display()))
        .args(args)
        .env("WEFT_CONTROLLER_LOG", lab_log())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn weft-controller");
    let pid = host.lab().adopt(child);
    let what = format!("controller in {}", host.ns);
    wait_ready(rt, 9990, Duration::from_secs(10), &what).await;
    pid
}

/// Polls `/ready` on an admin port of the namespace until it answers 200.
async fn wait_ready(rt: &NsRuntime, port: u16, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    let admin = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        let ready = rt
            .run(async move {
                client::get(admin, "/ready")
                    .await
                    .map(|r| r.status().as_u16())
            })
            .await;
        if matches!(ready, Ok(200)) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} not ready: {ready:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
