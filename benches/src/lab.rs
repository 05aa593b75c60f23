//! The benchmark lab: one upstream pod, reached three ways.
//!
//! ```text
//! plain client  ---------------------------------> server:8081 / :7001   direct
//! meshed client -> outbound proxy ---------------> server:8081 / :7001   one hop
//! meshed client -> outbound proxy -> inbound proxy -> server:8080 / :7000 two hops
//! ```
//!
//! The server pod is meshed but exempts ports 8081 and 7001 from
//! redirection, so every scenario reaches the same application process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use weft_tests::apps::{self, HttpVersions};
use weft_tests::netns::Lab;
use weft_tests::pod::{DISCOVERY_PORT, Pod, start_controller};

use crate::Settings;
use crate::load::{self, Workload};
use crate::procstat;

const PROXIED_HTTP: u16 = 8080;
const DIRECT_HTTP: u16 = 8081;
const PROXIED_TCP: u16 = 7000;
const DIRECT_TCP: u16 = 7001;
/// The server's Service, for the routed scenario.
const SERVICE: &str = "198.19.0.10:80";

/// The controller's view of the lab: the server pod behind a Service with a
/// RetryPolicy (which never fires: the app does not fail).
const MESH: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: server, namespace: bench}
spec: {clusterIP: 198.19.0.10, selector: {app: server}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: bench, labels: {app: server}, annotations: {weft.dev/proxy-version: bench}}
spec: {containers: [{name: app, image: x}]}
status: {podIP: 198.18.0.4, phase: Running}
---
apiVersion: weft.dev/v1alpha1
kind: RetryPolicy
metadata: {name: server, namespace: bench}
spec: {targetRef: {kind: Service, name: server}, retryOn: [5xx, connect-failure], maxRetries: 2}
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Direct,
    OneHop,
    TwoHops,
    /// Two hops to the server's Service (cluster IP): discovery, route,
    /// split, P2C balancer and a RetryPolicy on the path.
    Routed,
}

/// One configuration under test.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    /// The scenario whose latency this one's is compared with.
    pub baseline: &'static str,
    workload: Workload,
    path: Path,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "http1 direct",
        baseline: "http1 direct",
        workload: Workload::Http1Get,
        path: Path::Direct,
    },
    Scenario {
        name: "http1 1 hop",
        baseline: "http1 direct",
        workload: Workload::Http1Get,
        path: Path::OneHop,
    },
    Scenario {
        name: "http1 2 hops",
        baseline: "http1 direct",
        workload: Workload::Http1Get,
        path: Path::TwoHops,
    },
    Scenario {
        name: "http1 2 hops routed",
        baseline: "http1 direct",
        workload: Workload::Http1Get,
        path: Path::Routed,
    },
    Scenario {
        name: "http2 direct",
        baseline: "http2 direct",
        workload: Workload::Http2Get,
        path: Path::Direct,
    },
    Scenario {
        name: "http2 1 hop",
        baseline: "http2 direct",
        workload: Workload::Http2Get,
        path: Path::OneHop,
    },
    Scenario {
        name: "http2 2 hops",
        baseline: "http2 direct",
        workload: Workload::Http2Get,
        path: Path::TwoHops,
    },
    Scenario {
        name: "tcp direct",
        baseline: "tcp direct",
        workload: Workload::TcpEcho,
        path: Path::Direct,
    },
    Scenario {
        name: "tcp 2 hops",
        baseline: "tcp direct",
        workload: Workload::TcpEcho,
        path: Path::TwoHops,
    },
    Scenario {
        name: "bulk direct",
        baseline: "bulk direct",
        workload: Workload::TcpBulk,
        path: Path::Direct,
    },
    Scenario {
        name: "bulk 2 hops",
        baseline: "bulk direct",
        workload: Workload::TcpBulk,
        path: Path::TwoHops,
    },
];

/// One measurement of one scenario.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Run {
    pub scenario: &'static str,
    pub repeat: usize,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub fixed_rate_rps: f64,
    pub errors: u64,
    pub max_rps: f64,
    /// CPU seconds the proxies on the path used per 10,000 requests at the
    /// fixed rate (None for direct).
    pub proxy_cpu_s_per_10k: Option<f64>,
    /// RSS of each proxy on the path after the run, KiB.
    pub proxy_rss_kib: Vec<u64>,
}

pub struct BenchLab {
    _lab: Arc<Lab>,
    _ctl: (weft_tests::netns::Host, weft_tests::netns::NsRuntime, std::path::PathBuf),
    plain: Pod,
    meshed: Pod,
    server: Pod,
    pub idle_rss_kib: u64,
}

impl BenchLab {
    pub async fn start(proxy_env: &[(String, String)]) -> Self {
        let lab = Lab::new("weft-bench").expect("checked by the caller");
        let dir = std::env::temp_dir().join(format!("weft-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mesh.yaml"), MESH).unwrap();
        let ctl = lab.host("ctl", 100);
        let ctl_rt = ctl.rt();
        start_controller(&ctl, &ctl_rt, &dir).await;
        let plain = Pod::with_threads(&lab, "plain", 2, 2);
        let mut meshed = Pod::with_threads(&lab, "meshed", 3, 2);
        let mut server = Pod::new(&lab, "server", 4);
        server
            .rt
            .run(async {
                let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
                for port in [PROXIED_HTTP, DIRECT_HTTP] {
                    apps::http_app(any(port), "server", HttpVersions::Both)
                        .await
                        .unwrap();
                }
                for port in [PROXIED_TCP, DIRECT_TCP] {
                    apps::tcp_echo_app(any(port)).await.unwrap();
                }
            })
            .await;
        let controller = format!("198.18.0.100:{DISCOVERY_PORT}");
        let mut env = vec![
            ("WEFT_PROXY_LOG", "warn"),
            ("WEFT_PROXY_CORES", "1"),
            ("WEFT_PROXY_CONTROLLER_ADDR", controller.as_str()),
            ("WEFT_PROXY_NAMESPACE", "bench"),
        ];
        env.extend(proxy_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        meshed.mesh(&env).await;
        server.init(&[
            "--inbound-ports-to-ignore",
            &format!("{DIRECT_HTTP},{DIRECT_TCP}"),
        ]);
        server.start_proxy(&env).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let idle_rss_kib = procstat::rss_kib(meshed.proxy_pid.unwrap()).unwrap_or(0);
        Self {
            _lab: lab,
            _ctl: (ctl, ctl_rt, dir),
            plain,
            meshed,
            server,
            idle_rss_kib,
        }
    }

    fn proxies(&self, path: Path) -> Vec<u32> {
        match path {
            Path::Direct => vec![],
            Path::OneHop => vec![self.meshed.proxy_pid.unwrap()],
            Path::TwoHops | Path::Routed => vec![
                self.meshed.proxy_pid.unwrap(),
                self.server.proxy_pid.unwrap(),
            ],
        }
    }

    async fn run(&self, s: &Scenario, settings: &Settings, repeat: usize) -> Run {
        let tcp = matches!(s.workload, Workload::TcpEcho | Workload::TcpBulk);
        let (client, port) = match (s.path, tcp) {
            (Path::Direct, true) => (&self.plain, DIRECT_TCP),
            (Path::Direct, false) => (&self.plain, DIRECT_HTTP),
            (Path::OneHop, true) => (&self.meshed, DIRECT_TCP),
            (Path::OneHop, false) => (&self.meshed, DIRECT_HTTP),
            (Path::TwoHops, true) => (&self.meshed, PROXIED_TCP),
            (Path::TwoHops, false) => (&self.meshed, PROXIED_HTTP),
            (Path::Routed, _) => (&self.meshed, PROXIED_HTTP),
        };
        let addr = match s.path {
            Path::Routed => SERVICE.parse().unwrap(),
            _ => self.server.addr(port),
        };
        let (workload, mut rate, mut conns) = (s.workload, settings.rate, settings.connections);
        if matches!(workload, Workload::TcpBulk) {
            // Each call moves 1 MiB each way: 100 calls/s over 4 connections.
            (rate, conns) = (100, 4);
        }
        let proxies = self.proxies(s.path);

        // Warm up connections and pools, then measure.
        let warmup = Duration::from_millis(if settings.quick { 200 } else { 1000 });
        client
            .rt
            .run(load::fixed_rate(addr, workload, rate, conns, warmup))
            .await;
        let cpu_before: f64 = proxies
            .iter()
            .filter_map(|&p| procstat::cpu_seconds(p))
            .sum();
        let fixed = client
            .rt
            .run(load::fixed_rate(
                addr,
                workload,
                rate,
                conns,
                settings.fixed(),
            ))
            .await;
        let cpu_after: f64 = proxies
            .iter()
            .filter_map(|&p| procstat::cpu_seconds(p))
            .sum();
        let proxy_rss_kib = proxies
            .iter()
            .filter_map(|&p| procstat::rss_kib(p))
            .collect();
        let max = client
            .rt
            .run(load::max_throughput(
                addr,
                workload,
                conns,
                settings.throughput(),
            ))
            .await;

        let h = &fixed.latency_us;
        Run {
            scenario: s.name,
            repeat,
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            fixed_rate_rps: fixed.rps(),
            errors: fixed.errors + max.errors,
            max_rps: max.rps(),
            proxy_cpu_s_per_10k: (!proxies.is_empty() && fixed.ok > 0)
                .then(|| (cpu_after - cpu_before) / fixed.ok as f64 * 10_000.0),
            proxy_rss_kib,
        }
    }

    /// Every scenario, `repeat` times, alternating so drift hits all alike.
    pub async fn run_all(&self, settings: &Settings) -> Vec<Run> {
        let mut runs = Vec::new();
        for repeat in 0..settings.repeat {
            for s in SCENARIOS.iter().filter(|s| settings.selected(s)) {
                let run = self.run(s, settings, repeat).await;
                eprintln!(
                    "  [{}/{}] {:<14} p50 {:>6}us p99 {:>6}us max {:>8.0} req/s errors {}",
                    repeat + 1,
                    settings.repeat,
                    run.scenario,
                    run.p50_us,
                    run.p99_us,
                    run.max_rps,
                    run.errors
                );
                runs.push(run);
            }
        }
        runs
    }
}
