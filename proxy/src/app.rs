//! The proxy assembled: listeners bound, the connection pipeline
//! ([`connection::serve`]) behind each, the admin server beside them, and
//! the drain that ends it all gracefully.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::connection;
use crate::discovery::store::DiscoveryMetrics;
use crate::discovery::{Store, client, static_file};
use crate::drain::Drain;
use crate::metrics::{Direction, Metrics};
use crate::shared::Shared;
use crate::upstream::EndpointRegistry;
use crate::upstream::app_protocol::AppProtocols;
use crate::upstream::pool::{Pool, PoolSettings};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("WEFT_PROXY_CONFIG: {0}")]
    StaticConfig(String),
    #[error("WEFT_PROXY_TRUST_ANCHORS: {0}")]
    TrustAnchors(String),
    #[error("cannot listen on {addr} (set by {var}): {source}")]
    Bind {
        addr: SocketAddr,
        var: &'static str,
        #[source]
        source: io::Error,
    },
}

/// How the proxy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Connections still open when the grace period ran out.
    pub cut_off: usize,
}

/// A bound, not yet running, proxy.
#[derive(Debug)]
pub struct Proxy {
    inbound: TcpListener,
    outbound: TcpListener,
    /// The IPv6 outbound listener of a dual-stack pod.
    outbound_ipv6: Option<TcpListener>,
    admin: TcpListener,
    shared: Arc<Shared>,
    admin_state: Arc<AdminState>,
    /// The discovery client, started by `run`.
    discovery_client: Option<(
        client::ClientSettings,
        tokio::sync::mpsc::UnboundedReceiver<weft_proto::model::Key>,
    )>,
}

impl Proxy {
    /// Binds every listener, so that any address problem is reported before
    /// the proxy claims to be up.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let inbound = listen(config.listeners.inbound_addr, "WEFT_PROXY_INBOUND_ADDR")?;
        let outbound = listen(config.listeners.outbound_addr, "WEFT_PROXY_OUTBOUND_ADDR")?;
        let outbound_ipv6 = config
            .listeners
            .outbound_ipv6_addr
            .map(|a| listen(a, "WEFT_PROXY_OUTBOUND_IPV6_ADDR"))
            .transpose()?;
        let admin = listen(config.listeners.admin_addr, "WEFT_PROXY_ADMIN_ADDR")?;

        let metrics = Arc::new(Metrics::new());
        let drain = Drain::new();
        let (discovery, discovery_client) = discovery(&config, &metrics)?;
        let mesh = mesh_identity(&config, &metrics)?;
        let pool = |direction| {
            let settings = PoolSettings {
                connect_timeout: config.connect_timeout,
                ..PoolSettings::default()
            };
            let mesh_out = match direction {
                Direction::Outbound => mesh.clone(),
                Direction::Inbound => None,
            };
            Arc::new(Pool::new(settings, direction, metrics.clone(), mesh_out))
        };
        let telemetry = Arc::new(crate::telemetry::Telemetry::new(
            &config.telemetry,
            config.pod(),
            trace_resource(&config),
            &metrics,
        ));
        let admin_state = Arc::new(AdminState {
            metrics: metrics.clone(),
            drain: drain.clone(),
            ready: Default::default(),
            discovery: discovery.clone(),
            config: pass_through_config(&config),
            identity: mesh.as_ref().map(|m| m.identity.clone()),
            telemetry: telemetry.clone(),
            mesh: mesh.clone(),
            tap_identity: config.identity.as_ref().map(|i| i.server_id.clone()),
        });
        // Authorization reads the pod's inbound policy slot per request.
        let inbound_policy = discovery
            .as_ref()
            .zip(config.pod())
            .and_then(|(store, pod)| store.slot(weft_proto::model::Key::Inbound(pod)));
        let trust_domain = config
            .identity
            .as_ref()
            .map_or_else(|| "cluster.local".to_string(), |i| i.trust_domain.clone());
        let authz = Arc::new(crate::authz::Authorizer::new(
            inbound_policy,
            trust_domain,
            metrics.clone(),
        ));
        let load = Arc::new(crate::overload::Load::new(
            config.limits.max_connections,
            config.limits.max_in_flight_requests,
        ));
        let shared = Arc::new(Shared {
            load,
            telemetry: telemetry.clone(),
            authz: Some(authz),
            inbound_pool: pool(Direction::Inbound),
            outbound_pool: pool(Direction::Outbound),
            app_protocols: Arc::new(AppProtocols::new(config.connect_timeout)),
            config,
            metrics,
            drain,
            discovery,
            mesh,
        });
        Ok(Self {
            inbound,
            outbound,
            outbound_ipv6,
            admin,
            shared,
            admin_state,
            discovery_client,
        })
    }

    pub fn inbound_addr(&self) -> SocketAddr {
        self.inbound.local_addr().expect("bound listener")
    }

    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound.local_addr().expect("bound listener")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("bound listener")
    }

    /// The IPv6 outbound listener's address, when there is one.
    pub fn outbound_ipv6_addr(&self) -> Option<SocketAddr> {
        self.outbound_ipv6
            .as_ref()
            .map(|l| l.local_addr().expect("bound listener"))
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// The switch that drains the proxy (what SIGTERM and POST /shutdown do).
    pub fn drain(&self) -> Drain {
        self.shared.drain.clone()
    }

    /// Serves until `shutdown` resolves or a drain is requested, then stops
    /// accepting, lets in-flight work finish within the grace period, and
    /// returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Stopped {
        let Proxy {
            inbound,
            outbound,
            outbound_ipv6,
            admin,
            shared,
            admin_state,
            discovery_client,
        } = self;
        let certify_task = shared
            .config
            .identity
            .as_ref()
            .zip(shared.mesh.as_ref())
            .map(|(c, m)| {
                let settings = crate::identity::certify::Settings {
                    addr: c.addr.clone(),
                    server_id: c.server_id.clone(),
                    token_file: c.token_file.clone(),
                };
                tokio::spawn(crate::identity::certify::run(settings, m.identity.clone()))
            });
        let discovery_task = discovery_client.map(|(settings, subscriptions)| {
            let store = shared.discovery.clone().expect("a client has a store");
            tokio::spawn(client::run(settings, store, subscriptions))
        });
        let drain = shared.drain.clone();
        let admin_task = tokio::spawn(admin::serve(admin, admin_state.clone()));
        let sweeper = tokio::spawn(sweep_pools(shared.clone()));
        let mut listeners = vec![
            tokio::spawn(accept_loop(inbound, Direction::Inbound, shared.clone())),
            tokio::spawn(accept_loop(outbound, Direction::Outbound, shared.clone())),
        ];
        if let Some(l) = outbound_ipv6 {
            listeners.push(tokio::spawn(accept_loop(
                l,
                Direction::Outbound,
                shared.clone(),
            )));
        }
        admin_state.ready.store(true, Ordering::Release);
        tracing::info!("proxy ready");

        tokio::select! {
            _ = shutdown => {}
            _ = drain.signaled() => {}
        }
        drain.start();
        for l in listeners {
            let _ = l.await;
        }
        let grace = shared.config.shutdown_grace_period;
        tracing::info!(in_flight = drain.in_flight(), ?grace, "draining");
        let cut_off = if drain.wait(grace).await {
            0
        } else {
            drain.in_flight()
        };
        if cut_off > 0 {
            tracing::warn!(cut_off, "grace period over; closing remaining connections");
        }
        admin_task.abort();
        sweeper.abort();
        for t in [discovery_task, certify_task].into_iter().flatten() {
            t.abort();
        }
        Stopped { cut_off }
    }
}

/// The mesh identity and its TLS configs, when configured; the trust
/// anchors are read now, so a bad file stops the proxy at start.
/// WEFT_PROXY_TRUST_ANCHORS: the PEM itself (the injector passes it inline,
/// so no volume is mounted per pod), or the path of a PEM file.
fn trust_anchors_pem(setting: &std::path::Path) -> Result<String, StartError> {
    if let Some(pem) = setting.to_str().filter(|v| v.starts_with("-----BEGIN")) {
        return Ok(pem.to_owned());
    }
    std::fs::read_to_string(setting)
        .map_err(|e| StartError::TrustAnchors(format!("cannot read {}: {e}", setting.display())))
}

fn mesh_identity(
    config: &Config,
    metrics: &Metrics,
) -> Result<Option<crate::tls::MeshTls>, StartError> {
    let Some(c) = &config.identity else {
        return Ok(None);
    };
    let pem = trust_anchors_pem(&c.trust_anchors)?;
    let anchors =
        weft_proto::mesh_tls::TrustAnchors::from_pem(&pem).map_err(StartError::TrustAnchors)?;
    let w = &config.workload;
    let id = weft_proto::spiffe::SpiffeId::new(
        &c.trust_domain,
        w.namespace.as_deref().unwrap_or_default(),
        w.service_account.as_deref().unwrap_or_default(),
    );
    let identity = Arc::new(crate::identity::LocalIdentity::new(
        id,
        Arc::new(anchors),
        metrics.identity_cert_expiry.clone(),
    ));
    Ok(Some(crate::tls::MeshTls::new(identity)))
}

type DiscoveryParts = (
    Option<Arc<Store>>,
    Option<(
        client::ClientSettings,
        tokio::sync::mpsc::UnboundedReceiver<weft_proto::model::Key>,
    )>,
);

/// The config source: a controller (its client started by `run`), a static
/// file (loaded now, so a bad one stops the proxy at start), or neither.
fn discovery(config: &Config, metrics: &Metrics) -> Result<DiscoveryParts, StartError> {
    let dm = DiscoveryMetrics::from_registry(metrics);
    let routing = Arc::new(
        crate::routing::State::new(
            EndpointRegistry::new(config.balancer)
                .with_ejection_counter(metrics.endpoint_ejections.clone()),
        )
        .in_namespace(config.workload.namespace.as_deref()),
    );
    if let Some(addr) = &config.discovery.controller_addr {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let store = Arc::new(
            Store::new(
                Some(tx),
                config.discovery.wait,
                format!("controller {addr}"),
            )
            .with_metrics(dm)
            .with_routing(routing.clone()),
        );
        if let Some(pod) = config.pod() {
            store.slot(weft_proto::model::Key::Inbound(pod));
        }
        let w = &config.workload;
        let node = weft_proto::pb::discovery::Node {
            namespace: w.namespace.clone().unwrap_or_default(),
            pod: w.pod_name.clone().unwrap_or_default(),
            service_account: w.service_account.clone().unwrap_or_default(),
            proxy_version: env!("CARGO_PKG_VERSION").to_string(),
            node_name: w.node_name.clone().unwrap_or_default(),
        };
        let settings = client::ClientSettings {
            addr: addr.clone(),
            node,
        };
        return Ok((Some(store), Some((settings, rx))));
    }
    if let Some(path) = &config.discovery.config_file {
        let updates = static_file::load(path, config.pod().as_deref(), &routing)
            .map_err(StartError::StaticConfig)?;
        let store = Arc::new(
            Store::new(
                None,
                config.discovery.wait,
                format!("file {}", path.display()),
            )
            .with_metrics(dm)
            .with_routing(routing.clone()),
        );
        store.apply(updates);
        return Ok((Some(store), None));
    }
    Ok((None, None))
}

fn listen(addr: SocketAddr, var: &'static str) -> Result<TcpListener, StartError> {
    let bind = || -> io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(4096)
    };
    bind().map_err(|source| StartError::Bind { addr, var, source })
}

async fn accept_loop(listener: TcpListener, direction: Direction, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.drain.signaled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, client)) => {
                let Some(slot) = shared.load.admit_connection() else {
                    // Over the limit: refuse it at once (a reset, so the
                    // client does not wait), rather than slow everyone.
                    shared.metrics.shed(direction, "connections");
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    drop(stream);
                    continue;
                };
                let shared2 = shared.clone();
                shared
                    .drain
                    .spawn(connection::serve(stream, client, direction, shared2, slot));
            }
            Err(e) => {
                // Out of file descriptors, most likely: back off briefly
                // rather than spin.
                tracing::warn!(direction = direction.as_str(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn sweep_pools(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        shared.inbound_pool.sweep();
        shared.outbound_pool.sweep();
    }
}

/// Who the proxy's spans come from: `service.name` is the workload
/// (`<service account>.<namespace>`), as tracing UIs group by it.
fn trace_resource(config: &Config) -> Vec<(&'static str, String)> {
    let w = &config.workload;
    let mut r = vec![(
        "service.name",
        match (&w.service_account, &w.namespace) {
            (Some(sa), Some(ns)) => format!("{sa}.{ns}"),
            _ => "weft-proxy".to_string(),
        },
    )];
    r.push(("weft.proxy.version", env!("CARGO_PKG_VERSION").to_string()));
    if let Some(ns) = &w.namespace {
        r.push(("k8s.namespace.name", ns.clone()));
    }
    if let Some(pod) = &w.pod_name {
        r.push(("k8s.pod.name", pod.clone()));
    }
    r
}

/// `/config` when no controller or config file is in use.
fn pass_through_config(config: &Config) -> serde_json::Value {
    let opaque: Vec<String> = config
        .opaque_ports
        .iter()
        .map(|r| r.to_list_syntax())
        .collect();
    serde_json::json!({
        "version": null,
        "source": "none",
        "mode": "pass-through",
        "note": "no controller and no config file: every connection goes to its original destination",
        "opaque_ports": opaque,
        "routes": [],
        "splits": [],
        "retry_policies": [],
        "endpoints": [],
        "authorization": [],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With WEFT_PROXY_OUTBOUND_IPV6_ADDR (a dual-stack pod), connections
    /// to the second listener are outbound traffic like the first's.
    #[tokio::test]
    async fn the_ipv6_outbound_listener_serves_outbound_traffic() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "*** SKIPPED: no IPv6 loopback here ***");
            return;
        };
        drop(probe);
        let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app_addr = app.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = app.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        let config = Config::load(&[
            ("WEFT_PROXY_INBOUND_ADDR", "127.0.0.1:0"),
            ("WEFT_PROXY_OUTBOUND_ADDR", "127.0.0.1:0"),
            ("WEFT_PROXY_OUTBOUND_IPV6_ADDR", "[::1]:0"),
            ("WEFT_PROXY_ADMIN_ADDR", "127.0.0.1:0"),
            ("WEFT_PROXY_OUTBOUND_ORIG_DST", app_addr.as_str()),
        ])
        .unwrap();
        let proxy = Proxy::bind(config).await.unwrap();
        let v6 = proxy.outbound_ipv6_addr().expect("a second listener");
        assert!(v6.is_ipv6());
        let metrics = proxy.metrics();
        tokio::spawn(proxy.run(std::future::pending()));
        let mut c = tokio::net::TcpStream::connect(v6).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut rsp = String::new();
        c.read_to_string(&mut rsp).await.unwrap();
        assert!(
            rsp.starts_with("HTTP/1.1 200") && rsp.ends_with("ok"),
            "{rsp}"
        );
        let text = metrics.encode_prometheus();
        assert!(
            text.lines().any(|l| l.starts_with("request_total{")
                && l.contains("direction=\"outbound\"")
                && l.ends_with(" 1")),
            "{text}"
        );
    }

    #[test]
    fn trust_anchors_come_inline_or_from_a_file() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert_eq!(trust_anchors_pem(std::path::Path::new(pem)).unwrap(), pem);
        let file = std::env::temp_dir().join(format!("weft-anchors-{}", std::process::id()));
        std::fs::write(&file, pem).unwrap();
        assert_eq!(trust_anchors_pem(&file).unwrap(), pem);
        std::fs::remove_file(&file).unwrap();
        let e = trust_anchors_pem(&file).unwrap_err().to_string();
        assert!(e.contains("cannot read"), "{e}");
    }
}
