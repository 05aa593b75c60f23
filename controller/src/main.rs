//! `weft-controller`: serve the mesh's control plane, or print its CRDs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weft_controller::app::{self, Settings, Source};
use weft_controller::index::inbound::parse_default_policy;
use weft_proto::model::DefaultPolicy;

/// Weft's control plane: watches the cluster (or a directory of YAML) and
/// streams each proxy its configuration.
#[derive(Debug, Parser)]
#[command(name = "weft-controller", version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CRD manifests (or write them, one file each, to a directory).
    Crds {
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// `kubernetes` (in-cluster, or KUBECONFIG) or `dir:PATH` (a directory of YAML, watched).
    #[arg(long, default_value = "kubernetes")]
    source: Source,
    /// Discovery gRPC listen address.
    #[arg(long, default_value = "0.0.0.0:8086")]
    discovery_addr: SocketAddr,
    /// Admin (/live, /ready, /metrics) listen address.
    #[arg(long, default_value = "0.0.0.0:9990")]
    admin_addr: SocketAddr,
    /// SPIFFE trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The cluster's DNS domain (service authorities end in svc.<domain>).
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Inbound policy where no weft.dev/default-inbound-policy annotation says otherwise.
    #[arg(long, default_value = "all-unauthenticated", value_parser = default_policy)]
    default_inbound_policy: DefaultPolicy,
    /// Identity gRPC listen address (TLS); on when the CA files are given.
    #[arg(long, default_value = "0.0.0.0:8080")]
    identity_addr: SocketAddr,
    /// PEM bundle of trust anchors (one or two, during a rotation).
    #[arg(long, requires_all = ["issuer_cert", "issuer_key"])]
    trust_anchors: Option<PathBuf>,
    /// PEM issuer certificate (an intermediate CA signed by a trust anchor).
    #[arg(long, requires_all = ["trust_anchors", "issuer_key"])]
    issuer_cert: Option<PathBuf>,
    /// PEM issuer private key.
    #[arg(long, requires_all = ["trust_anchors", "issuer_cert"])]
    issuer_key: Option<PathBuf>,
    /// YAML list of {token, namespace, serviceAccount}, instead of TokenReview.
    #[arg(long)]
    static_tokens: Option<PathBuf>,
    /// Lifetime of workload certificates.
    #[arg(long, default_value = "24h", value_parser = duration)]
    leaf_lifetime: std::time::Duration,
    /// Injector webhook (HTTPS, POST /inject) listen address; on when
    /// --webhook-cert and --webhook-key are given.
    #[arg(long, default_value = "0.0.0.0:8443")]
    webhook_addr: SocketAddr,
    /// PEM certificate (chain) the webhook serves; re-read when it changes.
    #[arg(long, requires = "webhook_key")]
    webhook_cert: Option<PathBuf>,
    /// PEM private key of the webhook certificate.
    #[arg(long, requires = "webhook_cert")]
    webhook_key: Option<PathBuf>,
    /// PEM CA that signed the webhook certificate: with the Kubernetes
    /// source, the controller points the SMI CRDs' conversion (served
    /// versions v1alpha1 to v1alpha4) at its POST /convert, trusting it.
    #[arg(long, requires = "webhook_cert")]
    webhook_ca: Option<PathBuf>,
    /// YAML settings of the injector (images, addresses, resources; the
    /// chart's weft-injector ConfigMap).
    #[arg(long, requires = "webhook_cert")]
    injector_config: Option<PathBuf>,
    /// The namespace the controller runs in (for its Lease).
    #[arg(long, env = "WEFT_CONTROLLER_NAMESPACE", default_value = "weft")]
    namespace: String,
    /// Log filter.
    #[arg(long, env = "WEFT_CONTROLLER_LOG", default_value = "info")]
    log: String,
}

fn duration(s: &str) -> Result<std::time::Duration, String> {
    weft_proto::duration::parse(s).map_err(|e| format!("'{s}' is not a duration ({e}); e.g. 24h"))
}

fn default_policy(s: &str) -> Result<DefaultPolicy, String> {
    parse_default_policy(s).ok_or_else(|| {
        format!("'{s}' is not a policy; use all-unauthenticated, all-authenticated, cluster-authenticated or deny")
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Crds { write }) = args.command {
        return print_crds(write);
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&args.serve.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a pod's log is a file.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let s = args.serve;
    let settings = Settings {
        source: s.source,
        discovery_addr: s.discovery_addr,
        admin_addr: s.admin_addr,
        trust_domain: s.trust_domain,
        cluster_domain: s.cluster_domain,
        default_policy: s.default_inbound_policy,
        namespace: s.namespace,
        identity: match (s.trust_anchors, s.issuer_cert, s.issuer_key) {
            (Some(trust_anchors), Some(issuer_cert), Some(issuer_key)) => {
                Some(app::IdentitySettings {
                    addr: s.identity_addr,
                    trust_anchors,
                    issuer_cert,
                    issuer_key,
                    static_tokens: s.static_tokens,
                    leaf_lifetime: s.leaf_lifetime,
                })
            }
            _ => None,
        },
        webhook: match (s.webhook_cert, s.webhook_key) {
            (Some(cert), Some(key)) => Some(app::WebhookSettings {
                addr: s.webhook_addr,
                cert,
                key,
                ca: s.webhook_ca,
                injector_config: s.injector_config,
            }),
            _ => None,
        },
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let run = async move {
        app::Controller::bind(settings)
            .await?
            .run(termination())
            .await
    };
    match rt.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-controller: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_crds(write: Option<PathBuf>) -> ExitCode {
    let manifests = weft_controller::crd::manifests();
    match write {
        None => {
            for (_, yaml) in manifests {
                println!("---\n{yaml}");
            }
        }
        Some(dir) => {
            for (file, yaml) in manifests {
                let path = dir.join(file);
                if let Err(e) =
                    std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, yaml))
                {
                    eprintln!("weft-controller: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                println!("wrote {}", path.display());
            }
        }
    }
    ExitCode::SUCCESS
}

async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
}
