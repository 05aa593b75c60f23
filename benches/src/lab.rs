//! The benchmark lab: one upstream pod, reached three ways, and a pair of
//! pods with mesh identity for the mTLS scenarios.
//!
//! ```text
//! plain client  ---------------------------------> server:8081 / :7001   direct
//! meshed client -> outbound proxy ---------------> server:8081 / :7001   one hop
//! plain client  -> HAProxy / nginx (peers.rs) ---> server:8081 / :7001   one hop, a peer
//! plain client  -> weft-proxy, explicit listener -> server:8081 / :7001   one hop, as the peers are
//! meshed client -> outbound proxy -> inbound proxy -> server:8080 / :7000 two hops
//! tls client    -> outbound proxy => inbound proxy -> tls-server:8080 / :7000 (mTLS)
//! ```
//!
//! The server pod is meshed but exempts ports 8081 and 7001 from
//! redirection, so every scenario reaches the same application process.
//! The plaintext proxies have no identity; the tls pair gets certificates
//! from the controller (CA files from `weft identity init`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use weft_lab::apps::{self, HttpVersions};
use weft_lab::netns::Lab;
use weft_lab::pod::{DISCOVERY_PORT, Pod, start_controller};

use crate::Settings;
use crate::load::{self, Workload};
use crate::peers::{self, Peer};
use crate::procstat;
use crate::scenarios::{Path, SCENARIOS, Scenario};

const PROXIED_HTTP: u16 = 8080;
const DIRECT_HTTP: u16 = 8081;
const PROXIED_TCP: u16 = 7000;
const DIRECT_TCP: u16 = 7001;
/// weft-proxy's explicit listeners in the plain pod.
const EXPLICIT_HTTP: u16 = 9380;
const EXPLICIT_TCP: u16 = 9370;

/// Starts weft-proxy in `host` (no iptables there) listening on
/// 127.0.0.1:`port` with every connection going to `to`, as HAProxy and
/// nginx are configured: the same proxy, without the redirect.
fn explicit_proxy(
    host: &weft_lab::netns::Host,
    port: u16,
    to: SocketAddr,
    extra: &[(String, String)],
) -> u32 {
    let child = host
        .command(
            weft_lab::bins::path("weft-proxy"),
            Some(weft_lab::pod::PROXY_UID),
        )
        .env("WEFT_PROXY_OUTBOUND_ADDR", format!("127.0.0.1:{port}"))
        .env("WEFT_PROXY_OUTBOUND_ORIG_DST", to.to_string())
        .env("WEFT_PROXY_INBOUND_ADDR", format!("127.0.0.1:{}", port + 1))
        .env("WEFT_PROXY_ADMIN_ADDR", format!("127.0.0.1:{}", port + 2))
        .env("WEFT_PROXY_CORES", "1")
        .env("WEFT_PROXY_LOG", "warn")
        .envs(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start weft-proxy");
    host.lab().adopt(child)
}

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
apiVersion: v1
kind: Pod
metadata: {name: tls-server, namespace: bench, labels: {app: tls-server}, annotations: {weft.dev/proxy-version: bench}}
spec: {serviceAccountName: tls-server, containers: [{name: app, image: x}]}
status: {podIP: 198.18.0.6, phase: Running}
---
apiVersion: weft.dev/v1alpha1
kind: RetryPolicy
metadata: {name: server, namespace: bench}
spec: {targetRef: {kind: Service, name: server}, retryOn: [5xx, connect-failure], maxRetries: 2}
"#;

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

/// A proxy's memory with many connections open through it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OpenRss {
    pub path: String,
    pub connections: usize,
    /// RSS of the path's processes (summed) before, and with every
    /// connection open, KiB.
    pub before_kib: u64,
    pub open_kib: u64,
    /// Connections that failed to open or to make their call.
    pub errors: usize,
}

pub struct BenchLab {
    _lab: Arc<Lab>,
    _ctl: (
        weft_lab::netns::Host,
        weft_lab::netns::NsRuntime,
        std::path::PathBuf,
    ),
    plain: Pod,
    meshed: Pod,
    server: Pod,
    tls_client: Pod,
    tls_server: Pod,
    pub idle_rss_kib: u64,
    /// The peers found, by PID (in the plain pod), and what was skipped.
    peers: BTreeMap<Peer, u32>,
    pub peers_found: Vec<String>,
    /// weft-proxy as a reverse proxy in the plain pod: (HTTP, TCP) PIDs.
    explicit: (u32, u32),
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
        let pki = dir.with_extension("pki");
        let _ = std::fs::remove_dir_all(&pki);
        weft_lab::mesh::identity_init(&pki);
        let mut tokens = String::new();
        for sa in ["tls-client", "tls-server"] {
            std::fs::write(pki.join(sa), format!("token-{sa}")).unwrap();
            tokens += &format!("- {{token: token-{sa}, namespace: bench, serviceAccount: {sa}}}\n");
        }
        std::fs::write(pki.join("tokens.yaml"), tokens).unwrap();
        let file = |name: &str| pki.join(name).display().to_string();
        let ctl_args = [
            "--trust-anchors".to_string(),
            file("ca.crt"),
            "--issuer-cert".into(),
            file("issuer.crt"),
            "--issuer-key".into(),
            file("issuer.key"),
            "--static-tokens".into(),
            file("tokens.yaml"),
        ];
        start_controller(&ctl, &ctl_rt, &dir, &ctl_args).await;
        let plain = Pod::with_threads(&lab, "plain", 2, 2);
        let mut meshed = Pod::with_threads(&lab, "meshed", 3, 2);
        let mut server = Pod::new(&lab, "server", 4);
        let mut tls_client = Pod::with_threads(&lab, "tls-client", 5, 2);
        let mut tls_server = Pod::new(&lab, "tls-server", 6);
        // Connection-per-request scenarios open thousands of connections a
        // second between the same two addresses: without reuse of
        // TIME_WAIT ports they stall on port exhaustion (SYN retries, 1 s,
        // 3 s, ...) and measure the kernel's limits, not the proxy.
        for host in [
            &plain.host,
            &meshed.host,
            &server.host,
            &tls_client.host,
            &tls_server.host,
        ] {
            host.run("sysctl", &["-q", "-w", "net.ipv4.tcp_tw_reuse=1"]);
            host.run(
                "sysctl",
                &["-q", "-w", "net.ipv4.ip_local_port_range=1024 65535"],
            );
        }
        tls_server
            .rt
            .run(async {
                let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
                apps::http_app(any(PROXIED_HTTP), "tls-server", HttpVersions::Both)
                    .await
                    .unwrap();
                apps::tcp_echo_app(any(PROXIED_TCP)).await.unwrap();
            })
            .await;
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
        let identity_addr = format!("198.18.0.100:{}", weft_lab::mesh::IDENTITY_PORT);
        let anchors = file("ca.crt");
        for (pod, sa) in [
            (&mut tls_client, "tls-client"),
            (&mut tls_server, "tls-server"),
        ] {
            let token = file(sa);
            let mut tls_env = env.clone();
            tls_env.extend([
                ("WEFT_PROXY_IDENTITY_ADDR", identity_addr.as_str()),
                ("WEFT_PROXY_TRUST_ANCHORS", anchors.as_str()),
                ("WEFT_PROXY_TOKEN_FILE", token.as_str()),
                ("WEFT_PROXY_SERVICE_ACCOUNT", sa),
            ]);
            pod.mesh(&tls_env).await;
        }
        let explicit = (
            explicit_proxy(
                &plain.host,
                EXPLICIT_HTTP,
                server.addr(DIRECT_HTTP),
                proxy_env,
            ),
            explicit_proxy(
                &plain.host,
                EXPLICIT_TCP,
                server.addr(DIRECT_TCP),
                proxy_env,
            ),
        );
        let mut peers = BTreeMap::new();
        let mut peers_found = Vec::new();
        for peer in Peer::ALL {
            match peer.find() {
                Ok(version) => {
                    eprintln!("weft-bench: peer {}: {version}", peer.name());
                    peers.insert(peer, peer.start(&plain.host, &dir, server.host.ip));
                    peers_found.push(version);
                }
                Err(why) => {
                    eprintln!("weft-bench: skipping {}'s scenarios: {why}", peer.name());
                    peers_found.push(format!("{}: skipped ({why})", peer.name()));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let idle_rss_kib = procstat::rss_kib(meshed.proxy_pid.unwrap()).unwrap_or(0);
        Self {
            _lab: lab,
            _ctl: (ctl, ctl_rt, dir),
            plain,
            meshed,
            server,
            tls_client,
            tls_server,
            idle_rss_kib,
            peers,
            peers_found,
            explicit,
        }
    }

    /// Whether this lab can run `s` (its peer, if any, is installed).
    pub fn can_run(&self, s: &Scenario) -> bool {
        match s.path {
            Path::Peer(p) => self.peers.contains_key(&p),
            _ => true,
        }
    }

    fn proxies(&self, s: &Scenario) -> Vec<u32> {
        match s.path {
            Path::Direct => vec![],
            Path::OneHop => vec![self.meshed.proxy_pid.unwrap()],
            Path::TwoHops | Path::Routed => vec![
                self.meshed.proxy_pid.unwrap(),
                self.server.proxy_pid.unwrap(),
            ],
            Path::TwoHopsTls => vec![
                self.tls_client.proxy_pid.unwrap(),
                self.tls_server.proxy_pid.unwrap(),
            ],
            Path::Peer(p) => peers::processes(self.peers[&p]),
            Path::Explicit if s.is_tcp() => vec![self.explicit.1],
            Path::Explicit => vec![self.explicit.0],
        }
    }

    /// Mesh TLS connections and requests the TLS server's proxy has taken,
    /// for the mTLS path.
    async fn mesh_tls_accepted(&self, path: Path) -> Option<(f64, f64)> {
        if !matches!(path, Path::TwoHopsTls) {
            return None;
        }
        let conns = ["direction=\"inbound\"", "peer=\"src\"", "tls=\"true\""];
        let requests = ["direction=\"inbound\"", "tls=\"true\""];
        Some((
            self.tls_server.metric("tcp_open_total", &conns).await,
            self.tls_server.metric("request_total", &requests).await,
        ))
    }

    async fn run(&self, s: &Scenario, settings: &Settings, repeat: usize) -> Run {
        let (client, addr) = self.client_and_target(s);
        let (workload, mut rate, mut conns) = (s.workload, settings.rate, settings.connections);
        if matches!(workload, Workload::TcpBulk) {
            // Each call moves 1 MiB each way: 100 calls/s over 4 connections.
            (rate, conns) = (100, 4);
        }
        let proxies = self.proxies(s);

        let tls_before = self.mesh_tls_accepted(s.path).await;
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
        // An mTLS scenario that fell back to plaintext would measure the
        // wrong thing: the server's proxy must have accepted mesh TLS, and
        // for connection-per-call, one handshake per call.
        if let (Some(before), Some(after)) = (tls_before, self.mesh_tls_accepted(s.path).await) {
            // HTTP: every request over mesh TLS (the proxies share pooled
            // connections across scenarios); TCP: new connections, one per
            // call for connection-per-call.
            let (what, got, wanted) = match workload {
                Workload::Http1Get | Workload::Http2Get => {
                    ("requests", after.1 - before.1, fixed.ok as f64)
                }
                Workload::TcpConnect => ("connections", after.0 - before.0, fixed.ok as f64),
                Workload::TcpEcho | Workload::TcpBulk => ("connections", after.0 - before.0, 1.0),
            };
            assert!(
                got >= wanted,
                "{}: the server's proxy took {got} {what} over mesh TLS, expected at least {wanted}",
                s.name
            );
        }
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

    /// RSS of weft's one hop and of each peer with
    /// `settings.open_connections` HTTP/1.1 or TCP connections held open.
    pub async fn open_connections_rss(&self, settings: &Settings) -> Vec<OpenRss> {
        let n = settings.open_connections;
        let mut out = Vec::new();
        for s in SCENARIOS.iter().filter(|s| {
            matches!(s.path, Path::OneHop | Path::Peer(_) | Path::Explicit)
                && matches!(s.workload, Workload::Http1Get | Workload::TcpEcho)
                && self.can_run(s)
        }) {
            let (client, addr) = self.client_and_target(s);
            let pids = self.proxies(s);
            let rss = || {
                pids.iter()
                    .filter_map(|&p| procstat::rss_kib(p))
                    .sum::<u64>()
            };
            let before_kib = rss();
            let workload = s.workload;
            let (held, errors) = client.rt.run(load::hold_open(addr, workload, n)).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let open_kib = rss();
            client.rt.run(async move { drop(held) }).await;
            eprintln!(
                "  {:<22} {n} open connections: {before_kib} -> {open_kib} KiB ({errors} errors)",
                s.name
            );
            out.push(OpenRss {
                path: s.name.to_string(),
                connections: n,
                before_kib,
                open_kib,
                errors,
            });
            // Let the closes settle before the next measurement.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        out
    }

    /// The two-hop path (meshed client -> both proxies -> server), with
    /// the proxies' PIDs (client side, server side), for the soak run.
    pub fn two_hops(&self) -> (&Pod, SocketAddr, [u32; 2]) {
        (
            &self.meshed,
            self.server.addr(PROXIED_HTTP),
            [
                self.meshed.proxy_pid.unwrap(),
                self.server.proxy_pid.unwrap(),
            ],
        )
    }

    /// Who calls, and where, in scenario `s`.
    fn client_and_target(&self, s: &Scenario) -> (&Pod, SocketAddr) {
        let (direct, proxied) = if s.is_tcp() {
            (DIRECT_TCP, PROXIED_TCP)
        } else {
            (DIRECT_HTTP, PROXIED_HTTP)
        };
        match s.path {
            Path::Direct => (&self.plain, self.server.addr(direct)),
            Path::OneHop => (&self.meshed, self.server.addr(direct)),
            Path::TwoHops => (&self.meshed, self.server.addr(proxied)),
            Path::Routed => (&self.meshed, SERVICE.parse().unwrap()),
            Path::TwoHopsTls => (&self.tls_client, self.tls_server.addr(proxied)),
            Path::Peer(p) => (&self.plain, p.addr(s.workload)),
            Path::Explicit => {
                let port = if s.is_tcp() {
                    EXPLICIT_TCP
                } else {
                    EXPLICIT_HTTP
                };
                (&self.plain, SocketAddr::from(([127, 0, 0, 1], port)))
            }
        }
    }

    /// Every scenario, `repeat` times, alternating so drift hits all alike.
    pub async fn run_all(&self, settings: &Settings) -> Vec<Run> {
        let mut runs = Vec::new();
        for repeat in 0..settings.repeat {
            for s in SCENARIOS
                .iter()
                .filter(|s| settings.selected(s) && self.can_run(s))
            {
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

impl Drop for BenchLab {
    fn drop(&mut self) {
        // The mesh directory, the CA files beside it and the peers'
        // configs; the lab then stops every process it started.
        let dir = &self._ctl.2;
        let _ = std::fs::remove_dir_all(dir.with_extension("pki"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
