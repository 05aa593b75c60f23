//! `weft.identity.v1.Identity/Certify`, served over TLS with a certificate
//! the controller issues itself. The CA files are re-read when they change,
//! so the issuer can be rotated without restarting anything.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};
use weft_proto::pb::identity::{self as pb, identity_server::Identity};
use weft_proto::spiffe::SpiffeId;

use super::ca::Ca;
use super::tokens::{Reviewer, TokenError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Default, Clone)]
pub struct IdentityMetrics {
    pub issued: Counter,
    pub rejected: Family<ReasonLabel, Counter>,
    pub issuer_expiry: Gauge,
}

impl IdentityMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "identity_certificates_issued",
            "Workload certificates issued",
            self.issued.clone(),
        );
        registry.register(
            "identity_rejections",
            "Certify requests refused, by reason",
            self.rejected.clone(),
        );
        registry.register(
            "identity_issuer_expiry_timestamp_seconds",
            "When the issuer certificate expires (Unix seconds)",
            self.issuer_expiry.clone(),
        );
    }
}

/// Where the CA comes from, and the current one.
#[derive(Debug)]
pub struct CaFiles {
    pub trust_anchors: PathBuf,
    pub issuer_cert: PathBuf,
    pub issuer_key: PathBuf,
}

impl CaFiles {
    pub fn load(&self) -> Result<Ca, String> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        Ca::from_pem(
            &read(&self.trust_anchors)?,
            &read(&self.issuer_cert)?,
            &read(&self.issuer_key)?,
        )
        .map_err(|e| e.to_string())
    }

    fn modified(&self) -> Vec<Option<SystemTime>> {
        [&self.trust_anchors, &self.issuer_cert, &self.issuer_key]
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

pub struct IdentityService {
    pub ca: Arc<ArcSwap<Ca>>,
    pub trust_domain: String,
    pub lifetime: Duration,
    pub reviewer: Reviewer,
    pub metrics: IdentityMetrics,
}

impl IdentityService {
    fn reject(&self, reason: &'static str, status: Status) -> Status {
        self.metrics
            .rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
        tracing::info!(reason, message = status.message(), "certify refused");
        status
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<pb::CertifyRequest>,
    ) -> Result<Response<pb::CertifyResponse>, Status> {
        let r = request.into_inner();
        let id: SpiffeId = r
            .identity
            .parse()
            .map_err(|e: weft_proto::spiffe::NotSpiffe| {
                self.reject("invalid_identity", Status::invalid_argument(e.to_string()))
            })?;
        if id.trust_domain != self.trust_domain {
            return Err(self.reject(
                "trust_domain",
                Status::permission_denied(format!(
                    "this controller issues identities of trust domain {}, not {}",
                    self.trust_domain, id.trust_domain
                )),
            ));
        }
        if r.certificate_signing_request.is_empty() {
            return Err(self.reject(
                "invalid_csr",
                Status::invalid_argument("no certificate signing request"),
            ));
        }
        if r.token.is_empty() {
            return Err(self.reject(
                "no_token",
                Status::unauthenticated("no ServiceAccount token"),
            ));
        }
        let account = match self.reviewer.review(&r.token).await {
            Ok(a) => a,
            Err(TokenError::Rejected(why)) => {
                return Err(self.reject("token", Status::unauthenticated(why)));
            }
            Err(TokenError::Unavailable(why)) => {
                return Err(self.reject("token_review", Status::unavailable(why)));
            }
        };
        if account.namespace != id.namespace || account.service_account != id.service_account {
            return Err(self.reject(
                "identity_mismatch",
                Status::permission_denied(format!(
                    "the token is for {}/{}; it cannot be certified as {id}",
                    account.namespace, account.service_account
                )),
            ));
        }
        let ca = self.ca.load();
        let (leaf, not_after) = ca
            .sign_csr(&r.certificate_signing_request, &id, self.lifetime)
            .map_err(|e| self.reject("invalid_csr", Status::invalid_argument(e.to_string())))?;
        self.metrics.issued.inc();
        tracing::debug!(%id, %not_after, "certificate issued");
        Ok(Response::new(pb::CertifyResponse {
            leaf_certificate: leaf.to_vec(),
            intermediate_certificates: vec![ca.issuer_der.to_vec()],
            valid_until: not_after.unix_timestamp(),
        }))
    }
}

/// The controller's own certificate for its TLS listener, swapped on
/// renewal and issuer rotation.
#[derive(Debug)]
pub struct OwnCert(pub ArcSwap<CertifiedKey>);

impl ResolvesServerCert for OwnCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

pub fn certified_key(ca: &Ca, id: &SpiffeId, lifetime: Duration) -> Result<CertifiedKey, String> {
    let (chain, key) = ca.issue_own(id, lifetime).map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer =
        rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(chain, signer))
}

/// Keeps the CA and the controller's own certificate current: re-reads the
/// CA files when they change, and re-issues the own certificate then and
/// at half its lifetime.
pub async fn maintain(
    files: CaFiles,
    ca: Arc<ArcSwap<Ca>>,
    own: Arc<OwnCert>,
    own_id: SpiffeId,
    metrics: IdentityMetrics,
) {
    let own_lifetime = Duration::from_secs(24 * 3600);
    let mut seen = files.modified();
    let mut issued_at = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = files.modified();
        let rotated = now != seen;
        if rotated {
            seen = now;
            match files.load() {
                Ok(new) => {
                    metrics
                        .issuer_expiry
                        .set(new.issuer_not_after.unix_timestamp());
                    ca.store(Arc::new(new));
                    tracing::info!("CA files changed: the new issuer and trust anchors are in use");
                }
                Err(e) => {
                    tracing::error!(error = %e, "CA files changed but cannot be used; keeping the previous issuer");
                    continue;
                }
            }
        }
        if rotated || issued_at.elapsed() > own_lifetime / 2 {
            match certified_key(&ca.load(), &own_id, own_lifetime) {
                Ok(k) => {
                    own.0.store(Arc::new(k));
                    issued_at = tokio::time::Instant::now();
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot renew the controller's own certificate")
                }
            }
        }
    }
}

/// A TLS stream that tonic can serve.
pub struct TlsConn(pub tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepts TLS connections for tonic; handshake failures are logged and
/// dropped, never ending the listener.
pub fn tls_incoming(
    listener: TcpListener,
    own: Arc<OwnCert>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3 is supported")
    .with_no_client_auth()
    .with_cert_resolver(own);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(TlsConn(tls))).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "identity TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, "identity TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
