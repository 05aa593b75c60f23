//! The demo's mesh, built one of two ways: as network namespaces with
//! weft-init's iptables rules (root), or on loopback addresses with the
//! proxies told where their connections go (anyone). Both run the same
//! controller, proxies, apps and files; the rest of the demo does not
//! know which it has.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use weft_lab::apps::{self, Behaviour, HttpVersions};
use weft_lab::loopback::LoopbackMesh;
use weft_lab::mesh::{Identity, MeshLab};
use weft_lab::pod::sum_metric;

use super::load::{self, Stats};
use crate::observe::mesh::{DemoPod, DemoState};
use crate::observe::stats::PodInfo;

/// How the demo builds its pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Network namespaces when this process may build them (root, iproute2,
    /// iptables), else loopback.
    Auto,
    /// Pods as network namespaces on a bridge, traffic redirected by
    /// weft-init's iptables rules, as in a cluster. Needs root.
    Netns,
    /// Pods as loopback addresses, no iptables: each proxy is told where
    /// its listeners' connections go. Needs nothing.
    Loopback,
}

/// The backend pods: name, number (last octet), share of failed answers.
pub const BACKENDS: &[(&str, u8, f64)] = &[
    ("web-v1-a", 3, 0.0),
    ("web-v2-a", 4, 0.0),
    ("web-v1-b", 5, super::FLAKY_RATIO),
];
pub const FRONTEND: (&str, u8) = ("frontend", 2);
/// web.shop's cluster IP (examples/shop/services.yaml) and port.
const WEB: ([u8; 4], u16) = ([198, 19, 0, 10], 80);
const APP_PORT: u16 = 8080;

pub enum DemoMesh {
    Netns(MeshLab),
    Loopback(LoopbackMesh),
}

impl DemoMesh {
    /// Which mode `Auto` means here, and why (for the start-up line).
    pub fn resolve(mode: Mode) -> anyhow::Result<(Mode, String)> {
        let why_not = weft_lab::netns::unavailable();
        match (mode, why_not) {
            (Mode::Netns, Some(why)) => anyhow::bail!(
                "--mode netns builds the pods as network namespaces with iptables, which needs root: {why}.\n\
                 Run it as root (e.g. `sudo ./scripts/demo`), or use --mode loopback."
            ),
            (Mode::Netns, None) | (Mode::Auto, None) => Ok((
                Mode::Netns,
                "network namespaces on a bridge, traffic redirected by weft-init's iptables rules"
                    .into(),
            )),
            (Mode::Loopback, _) => Ok((
                Mode::Loopback,
                "loopback addresses, no iptables (--mode loopback)".into(),
            )),
            (Mode::Auto, Some(why)) => Ok((
                Mode::Loopback,
                format!(
                    "loopback addresses, no iptables ({why}; as root the pods are network namespaces with weft-init's rules)"
                ),
            )),
        }
    }

    /// Starts the controller over `files` and every pod with its app.
    pub async fn start(mode: Mode, files: &[(&str, String)]) -> anyhow::Result<Self> {
        let identity = || Identity {
            service_accounts: vec!["web".into(), "frontend".into()],
            leaf_lifetime: "1h",
        };
        match mode {
            Mode::Netns | Mode::Auto => start_netns(files, identity()).await.map(Self::Netns),
            Mode::Loopback => start_loopback(files, identity()).await.map(Self::Loopback),
        }
    }

    /// Starts the frontend's load generator: `rate` requests a second to
    /// web.shop, through the frontend's proxy.
    pub fn spawn_load(&self, rate: u32, stats: Arc<Stats>) -> tokio::task::JoinHandle<()> {
        match self {
            // In the frontend's namespace the app dials the cluster IP and
            // iptables hands the connection to the proxy.
            DemoMesh::Netns(m) => {
                let web = SocketAddr::from(WEB);
                m.pod(FRONTEND.0).rt.spawn(load::run(web, rate, stats))
            }
            // On loopback the app dials its proxy's outbound listener,
            // which treats every connection as addressed to web.shop.
            DemoMesh::Loopback(m) => {
                tokio::spawn(load::run(m.outbound_of(FRONTEND.1), rate, stats))
            }
        }
    }

    /// Sums metric `name` of `pod`'s proxy over the series containing
    /// every one of `parts`.
    pub async fn metric(&self, pod: &str, name: &str, parts: &[&str]) -> f64 {
        match self {
            DemoMesh::Netns(m) => m.pod(pod).metric(name, parts).await,
            DemoMesh::Loopback(m) => m.metric(number_of(pod), name, parts).await,
        }
    }

    /// Requests the backends' proxies received: (over mesh TLS, in all).
    pub async fn inbound_requests(&self) -> Result<(f64, f64), String> {
        let (mut tls, mut all) = (0.0, 0.0);
        for (pod, _, _) in BACKENDS {
            // One scrape for both sums: requests still in flight would
            // otherwise land between them.
            let text = self.metrics_text(pod).await?;
            let inbound = "direction=\"inbound\"";
            tls += sum_metric(&text, "request_total", &[inbound, "tls=\"true\""]);
            all += sum_metric(&text, "request_total", &[inbound]);
        }
        Ok((tls, all))
    }

    /// A pod's proxy metrics; an error when its proxy does not answer (a
    /// SIGTERM sent to the whole process group stops the proxies too).
    async fn metrics_text(&self, pod: &str) -> Result<String, String> {
        let text = match self {
            DemoMesh::Netns(m) => m.pod(pod).try_admin_get("/metrics").await,
            DemoMesh::Loopback(m) => weft_lab::client::get(m.admin_of(number_of(pod)), "/metrics")
                .await
                .map(|r| String::from_utf8_lossy(r.body()).into_owned())
                .map_err(|e| e.to_string()),
        };
        text.map_err(|e| format!("{pod}'s proxy: {e}"))
    }

    /// The series behind inbound requests that were not mesh TLS (and the
    /// detection outcomes), per backend pod: what to look at when
    /// [`DemoMesh::inbound_requests`] says not everything was.
    pub async fn plaintext_report(&self) -> String {
        let mut out = String::new();
        for (pod, _, _) in BACKENDS {
            let Ok(text) = self.metrics_text(pod).await else {
                continue;
            };
            for line in text.lines().filter(|l| {
                (l.starts_with("request_total{direction=\"inbound\"")
                    && !l.contains("tls=\"true\""))
                    || l.starts_with("protocol_detect_total{direction=\"inbound\"")
                    || l.starts_with("tcp_open_total{direction=\"inbound\",peer=\"src\"")
            }) {
                out.push_str(&format!("    {pod}: {line}\n"));
            }
        }
        out
    }

    /// Replaces a file of the controller's directory.
    pub fn write(&self, file: &str, text: &str) {
        match self {
            DemoMesh::Netns(m) => m.write(file, text),
            DemoMesh::Loopback(m) => m.write(file, text),
        }
    }

    /// The pods as `weft stat`, `weft tap` and `weft dashboard` find them.
    pub fn state(&self) -> DemoState {
        let pods = BACKENDS
            .iter()
            .map(|(name, n, _)| (*name, *n, "web"))
            .chain([(FRONTEND.0, FRONTEND.1, "frontend")])
            .map(|(name, n, sa)| {
                let info = PodInfo {
                    namespace: "shop".into(),
                    name: name.into(),
                    // web-v1-a -> web-v1, as a Deployment's pods are named.
                    workload: name
                        .rsplit_once('-')
                        .filter(|_| sa == "web")
                        .map_or(name, |(w, _)| w)
                        .into(),
                    service_account: sa.into(),
                };
                match self {
                    DemoMesh::Netns(m) => DemoPod {
                        info,
                        admin: SocketAddr::from(([127, 0, 0, 1], 4191)),
                        netns: Some(m.pod(name).host.ns.clone()),
                    },
                    DemoMesh::Loopback(m) => DemoPod {
                        info,
                        admin: m.admin_of(n),
                        netns: None,
                    },
                }
            })
            .collect();
        DemoState {
            pid: std::process::id(),
            pods,
        }
    }

    /// Where web.shop is, as the view names it.
    pub fn web_addr(&self) -> String {
        match self {
            DemoMesh::Netns(_) => SocketAddr::from(WEB).to_string(),
            DemoMesh::Loopback(m) => format!("{}:{}", m.service_ip(WEB.0[3]), WEB.1),
        }
    }
}

fn number_of(pod: &str) -> u8 {
    BACKENDS
        .iter()
        .map(|(n, o, _)| (*n, *o))
        .chain([FRONTEND])
        .find(|(n, _)| *n == pod)
        .map(|(_, o)| o)
        .unwrap_or_else(|| panic!("the demo has no pod {pod}"))
}

fn app(name: &str, fail_ratio: f64, addr: SocketAddr) -> impl Future<Output = ()> + Send + 'static {
    let name: &'static str = Box::leak(name.to_string().into_boxed_str());
    let behaviour = Behaviour {
        fail_ratio,
        ..Behaviour::default()
    };
    async move {
        apps::http_app_with(addr, name, HttpVersions::Both, behaviour)
            .await
            .expect("the web app listens");
    }
}

/// The demo's proxies serve tap (to localhost, which `weft tap` and
/// `weft dashboard` are on this machine).
const PROXY_ENV: &[(&str, &str)] = &[("WEFT_PROXY_TAP", "true")];

async fn start_netns(files: &[(&str, String)], identity: Identity) -> anyhow::Result<MeshLab> {
    let mut mesh = MeshLab::start_with("weft-demo", files, Some(identity))
        .await
        .context("network namespaces are unavailable")?;
    let any = SocketAddr::from(([0, 0, 0, 0], APP_PORT));
    let pods = BACKENDS
        .iter()
        .map(|&(name, n, fail)| (name, n, "web", Some(fail)))
        .chain([(FRONTEND.0, FRONTEND.1, "frontend", None)]);
    for (name, n, sa, fail) in pods {
        let mut env = mesh.identity_env(sa);
        env.extend(
            PROXY_ENV
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        match fail {
            Some(ratio) => mesh.add_pod(name, n, app(name, ratio, any), &env).await,
            None => mesh.add_pod(name, n, async {}, &env).await,
        }
    }
    Ok(mesh)
}

async fn start_loopback(
    files: &[(&str, String)],
    identity: Identity,
) -> anyhow::Result<LoopbackMesh> {
    // The lab's files, moved onto this process's loopback addresses.
    let mut mesh = LoopbackMesh::start("weft-demo", files, Some(identity))
        .await
        .map_err(anyhow::Error::msg)?;
    for &(name, n, fail_ratio) in BACKENDS {
        let addr = SocketAddr::from((mesh.app_ip(n), APP_PORT));
        app(name, fail_ratio, addr).await;
        mesh.add_pod(name, n, "web", APP_PORT, None, PROXY_ENV)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    let web = SocketAddr::from((mesh.service_ip(WEB.0[3]), WEB.1));
    mesh.add_pod(
        FRONTEND.0,
        FRONTEND.1,
        "frontend",
        4143,
        Some(web),
        PROXY_ENV,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    Ok(mesh)
}
