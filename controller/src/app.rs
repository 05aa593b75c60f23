//! The controller assembled: listeners bound first (so a bad address is an
//! error at start-up), then the source, the hub and the servers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use weft_proto::model::DefaultPolicy;

use crate::grpc::discovery::DiscoveryService;
use crate::hub::{self, Hub};
use crate::index::{Index, IndexConfig};
use crate::inject::InjectorConfig;
use crate::metrics::Metrics;
use crate::source::{self, dir};
use crate::webhook::cert::FileCert;

/// Where objects come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The Kubernetes API (in-cluster config, or KUBECONFIG).
    Kubernetes,
    /// A directory of YAML, watched for changes.
    Dir(PathBuf),
}

impl std::str::FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kubernetes" => Ok(Source::Kubernetes),
            _ => match s.strip_prefix("dir:") {
                Some(path) if !path.is_empty() => Ok(Source::Dir(PathBuf::from(path))),
                _ => Err(format!("'{s}' is not a source; use kubernetes or dir:PATH")),
            },
        }
    }
}

/// Everything the controller needs to run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub source: Source,
    pub discovery_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub trust_domain: String,
    pub cluster_domain: String,
    pub default_policy: DefaultPolicy,
    /// Namespace the controller runs in (for its status-writing Lease and
    /// its own identity).
    pub namespace: String,
    /// The identity service, when the CA files are given.
    pub identity: Option<IdentitySettings>,
    /// The injector webhook, when its certificate is given.
    pub webhook: Option<WebhookSettings>,
}

impl Settings {
    /// Every listener on an ephemeral loopback port, the defaults
    /// otherwise, no identity or webhook: a controller embedded in a test
    /// or a tool (addresses from `Controller::*_addr` once bound).
    pub fn loopback(source: Source) -> Self {
        let any = || SocketAddr::from(([127, 0, 0, 1], 0));
        Settings {
            source,
            discovery_addr: any(),
            admin_addr: any(),
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            default_policy: DefaultPolicy::AllUnauthenticated,
            namespace: "weft".into(),
            identity: None,
            webhook: None,
        }
    }
}

/// The injector webhook's settings.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA of the webhook certificate, for the SMI CRDs' conversion.
    pub ca: Option<PathBuf>,
    /// The injector's YAML settings (images, addresses); defaults without.
    pub injector_config: Option<PathBuf>,
}

/// The identity service's settings.
#[derive(Clone, Debug)]
pub struct IdentitySettings {
    pub addr: SocketAddr,
    pub trust_anchors: PathBuf,
    pub issuer_cert: PathBuf,
    pub issuer_key: PathBuf,
    /// Tokens from a file instead of Kubernetes TokenReview.
    pub static_tokens: Option<PathBuf>,
    /// Lifetime of workload certificates.
    pub leaf_lifetime: Duration,
}

async fn listen(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot start the {what} listener on {addr} (set by {flag})"))
}

/// A controller with its listeners bound, not yet running.
pub struct Controller {
    settings: Settings,
    discovery: TcpListener,
    admin: TcpListener,
    identity: Option<TcpListener>,
    webhook: Option<(TcpListener, Arc<FileCert>, InjectorConfig)>,
    kube: Option<kube::Client>,
}

impl Controller {
    /// Binds every listener: an address problem is an error here, at start.
    pub async fn bind(settings: Settings) -> anyhow::Result<Self> {
        // One TLS crypto provider for every client and server of the
        // process (the Kubernetes client picks the process default).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        if let Source::Dir(path) = &settings.source {
            anyhow::ensure!(
                path.is_dir(),
                "--source dir:{}: not a directory",
                path.display()
            );
        }
        let identity = match &settings.identity {
            Some(i) => Some(listen(i.addr, "identity", "--identity-addr").await?),
            None => None,
        };
        let webhook = match &settings.webhook {
            Some(w) => Some(bind_webhook(w, &settings).await?),
            None => None,
        };
        Ok(Self {
            identity,
            webhook,
            discovery: listen(settings.discovery_addr, "discovery", "--discovery-addr").await?,
            admin: listen(settings.admin_addr, "admin", "--admin-addr").await?,
            settings,
            kube: None,
        })
    }

    /// Uses this Kubernetes client instead of the in-cluster or KUBECONFIG
    /// one (tests point it at a fake API server).
    pub fn with_kube_client(mut self, client: kube::Client) -> Self {
        self.kube = Some(client);
        self
    }

    pub fn discovery_addr(&self) -> SocketAddr {
        self.discovery.local_addr().expect("bound")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("bound")
    }

    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook
            .as_ref()
            .map(|(l, _, _)| l.local_addr().expect("bound"))
    }

    pub fn identity_addr(&self) -> Option<SocketAddr> {
        self.identity
            .as_ref()
            .map(|l| l.local_addr().expect("bound"))
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Controller {
            settings,
            discovery,
            admin,
            identity,
            webhook,
            kube,
        } = self;
        let mut metrics = Metrics::new();
        let identity_metrics = crate::identity::service::IdentityMetrics::default();
        identity_metrics.register(metrics.registry_mut());
        let webhook_metrics = crate::webhook::WebhookMetrics::default();
        webhook_metrics.register(metrics.registry_mut());
        let metrics = Arc::new(metrics);
        let kube = match (&settings.source, kube) {
            (Source::Kubernetes, Some(c)) => Some(c),
            (Source::Kubernetes, None) => Some(kube::Client::try_default().await.context(
                "cannot reach the Kubernetes API (no in-cluster config and no usable KUBECONFIG)",
            )?),
            (Source::Dir(_), _) => None,
        };
        if let Some(client) = &kube {
            // Refuse to start, saying what to fix, rather than warn forever.
            crate::status::preflight(client, &settings.namespace).await?;
        }
        let own_identity = match (identity, &settings.identity) {
            (Some(listener), Some(id)) => Some(serve_identity(
                listener,
                id,
                &settings,
                kube.clone(),
                identity_metrics,
            )?),
            _ => None,
        };
        let ready = Arc::new(AtomicBool::new(false));
        let index = Index::new(IndexConfig {
            trust_domain: settings.trust_domain.clone(),
            cluster_domain: settings.cluster_domain.clone(),
            derive_endpoints_from_pods: matches!(settings.source, Source::Dir(_)),
            default_policy: settings.default_policy,
        });
        let (hub, problems) = Hub::new(index, metrics.clone(), ready.clone());
        if let (Some(client), Some(ca)) =
            (&kube, settings.webhook.as_ref().and_then(|w| w.ca.as_ref()))
        {
            let ca_pem = std::fs::read_to_string(ca)
                .with_context(|| format!("--webhook-ca {}: cannot read it", ca.display()))?;
            tokio::spawn(crate::webhook::convert::point_crds_here(
                client.clone(),
                settings.namespace.clone(),
                ca_pem,
            ));
        }
        if let Some((listener, cert, config)) = webhook {
            let server = kube_version(kube.as_ref()).await;
            let layout = config.native_sidecars.layout(server);
            tracing::info!(?layout, ?server, addr = %listener.local_addr()?, "injector webhook started");
            let injector = Arc::new(crate::webhook::Injector {
                config,
                layout,
                namespaces: hub.namespaces(),
                kube: kube.clone(),
                metrics: webhook_metrics,
            });
            tokio::spawn(cert.clone().watch());
            tokio::spawn(crate::webhook::serve(listener, cert, injector));
        }
        let pods = hub.pods();
        let (events_tx, events) = mpsc::channel(1024);
        let (commands_tx, commands) = mpsc::unbounded_channel();
        tokio::spawn(hub::run(hub, events, commands));

        match &settings.source {
            Source::Dir(path) => {
                let path = path.clone();
                tokio::spawn(async move {
                    if let Err(e) = dir::run(path.clone(), events_tx).await {
                        tracing::error!(error = %e, "watching {} failed", path.display());
                    }
                });
                drop(problems);
            }
            Source::Kubernetes => {
                let client = kube.expect("a client for the kubernetes source");
                source::kube::spawn(client.clone(), events_tx);
                tokio::spawn(crate::status::run(
                    client,
                    problems,
                    settings.namespace.clone(),
                ));
            }
        }
        let admin_addr = admin.local_addr()?;
        let tap = Arc::new(crate::tap::TapRelay::new(
            pods,
            own_identity,
            settings.trust_domain.clone(),
        ));
        tokio::spawn(crate::admin::serve(admin, ready, metrics.clone(), tap));

        tracing::info!(discovery = %discovery.local_addr()?, admin = %admin_addr, source = ?settings.source, "weft-controller started");
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(DiscoveryService::new(commands_tx, metrics).into_server())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(discovery),
                shutdown,
            )
            .await
            .context("the discovery server failed")
    }
}

/// Binds the webhook and loads what it serves with: a bad certificate or
/// injector file is an error at start-up.
async fn bind_webhook(
    w: &WebhookSettings,
    settings: &Settings,
) -> anyhow::Result<(TcpListener, Arc<FileCert>, InjectorConfig)> {
    let cert = FileCert::load(w.cert.clone(), w.key.clone()).map_err(|e| {
        anyhow::anyhow!("the webhook certificate (--webhook-cert/--webhook-key): {e}")
    })?;
    let mut config = match &w.injector_config {
        Some(path) => {
            InjectorConfig::load(path).map_err(|e| anyhow::anyhow!("--injector-config: {e}"))?
        }
        None => InjectorConfig::default(),
    };
    let anchors = match &settings.identity {
        Some(id) => Some(
            std::fs::read_to_string(&id.trust_anchors)
                .with_context(|| format!("cannot read {}", id.trust_anchors.display()))?,
        ),
        // No identity service: injected proxies run without mesh identity.
        None => None,
    };
    config.complete(&settings.trust_domain, &settings.namespace, anchors);
    let listener = listen(w.addr, "webhook", "--webhook-addr").await?;
    Ok((listener, cert, config))
}

/// The API server's (major, minor), for choosing native sidecars.
async fn kube_version(kube: Option<&kube::Client>) -> Option<(u32, u32)> {
    let info = match kube?.apiserver_version().await {
        Ok(info) => info,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the API server's version; assuming native sidecars");
            return None;
        }
    };
    crate::inject::config::parse_server_version(&info.major, &info.minor)
}

/// Starts the identity service on its TLS listener; returns the
/// controller's own certificate (renewed in the background) and the trust
/// anchors, with which it relays tap.
fn serve_identity(
    listener: TcpListener,
    id: &IdentitySettings,
    settings: &Settings,
    kube: Option<kube::Client>,
    metrics: crate::identity::service::IdentityMetrics,
) -> anyhow::Result<(
    Arc<crate::identity::service::OwnCert>,
    Arc<weft_proto::mesh_tls::TrustAnchors>,
)> {
    use crate::identity::service::{
        CaFiles, IdentityService, OwnCert, certified_key, maintain, tls_incoming,
    };
    use crate::identity::tokens::Reviewer;

    let files = CaFiles {
        trust_anchors: id.trust_anchors.clone(),
        issuer_cert: id.issuer_cert.clone(),
        issuer_key: id.issuer_key.clone(),
    };
    let ca = files.load().map_err(|e| {
        anyhow::anyhow!("identity: {e} (--trust-anchors, --issuer-cert, --issuer-key)")
    })?;
    metrics
        .issuer_expiry
        .set(ca.issuer_not_after.unix_timestamp());
    let reviewer = match (&id.static_tokens, kube) {
        (Some(path), _) => {
            Reviewer::from_file(path).map_err(|e| anyhow::anyhow!("--static-tokens: {e}"))?
        }
        (None, Some(client)) => Reviewer::Kube(client),
        (None, None) => anyhow::bail!(
            "identity with a directory source needs --static-tokens FILE (there is no TokenReview)"
        ),
    };
    let own_id = weft_proto::spiffe::SpiffeId::new(
        &settings.trust_domain,
        &settings.namespace,
        "weft-controller",
    );
    let own = Arc::new(OwnCert(arc_swap::ArcSwap::from_pointee(
        certified_key(&ca, &own_id, Duration::from_secs(24 * 3600))
            .map_err(|e| anyhow::anyhow!("identity: {e}"))?,
    )));
    let ca = Arc::new(arc_swap::ArcSwap::from_pointee(ca));
    tokio::spawn(maintain(
        files,
        ca.clone(),
        own.clone(),
        own_id.clone(),
        metrics.clone(),
    ));
    let own_for_tap = own.clone();
    let service = IdentityService {
        ca,
        trust_domain: settings.trust_domain.clone(),
        lifetime: id.leaf_lifetime,
        reviewer,
        metrics,
    };
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let res = tonic::transport::Server::builder()
            .add_service(weft_proto::pb::identity::identity_server::IdentityServer::new(service))
            .serve_with_incoming(tls_incoming(listener, own))
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "the identity server failed");
        }
    });
    tracing::info!(%addr, identity = %own_id, "identity service started (TLS)");
    let pem = std::fs::read_to_string(&id.trust_anchors)
        .with_context(|| format!("cannot read {}", id.trust_anchors.display()))?;
    let anchors = weft_proto::mesh_tls::TrustAnchors::from_pem(&pem)
        .map_err(|e| anyhow::anyhow!("--trust-anchors: {e}"))?;
    Ok((own_for_tap, Arc::new(anchors)))
}
