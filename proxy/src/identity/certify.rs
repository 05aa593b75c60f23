//! Getting and renewing the proxy's certificate from the controller's
//! identity service: generate a key pair here, send a CSR with the pod's
//! ServiceAccount token over TLS (the controller's certificate must chain
//! to the trust anchors and name the expected controller identity), check
//! what comes back, install it, and renew at 70% of its lifetime, retrying
//! with backoff on failure while the current certificate stays in use.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tonic::transport::{Endpoint, Uri};
use weft_proto::pb::identity::{CertifyRequest, identity_client::IdentityClient};
use weft_proto::spiffe::SpiffeId;

use super::LocalIdentity;
use crate::backoff::{Attempts, Backoff};
use weft_proto::mesh_tls::{ServerVerifier, dns_name};

#[derive(Clone, Debug)]
pub struct Settings {
    /// The identity service, host:port.
    pub addr: String,
    /// The identity the controller's certificate must carry.
    pub server_id: SpiffeId,
    /// The projected ServiceAccount token (re-read for every request: the
    /// kubelet rotates it).
    pub token_file: PathBuf,
}

/// Share of a certificate's lifetime after which it is renewed.
const RENEW_AT: f64 = 0.7;

/// Runs for the life of the proxy.
pub async fn run(settings: Settings, identity: Arc<LocalIdentity>) {
    let mut backoff = Attempts::new(Backoff::reconnect(
        Duration::from_secs(1),
        Duration::from_secs(60),
    ));
    loop {
        match certify_once(&settings, &identity).await {
            Ok(valid_until) => {
                backoff.reset();
                let left = valid_until
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tracing::info!(identity = %identity.id, expires_in = ?left, "certificate issued");
                tokio::time::sleep(left.mul_f64(RENEW_AT)).await;
            }
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(identity = %identity.id, error = %e, retry_in = ?wait, "cannot get a certificate; keeping the current one");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

async fn certify_once(settings: &Settings, identity: &LocalIdentity) -> Result<SystemTime, String> {
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        identity
            .id
            .to_string()
            .try_into()
            .map_err(|_| "the identity is not a URI")?,
    )];
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    let token = std::fs::read_to_string(&settings.token_file).map_err(|e| {
        format!(
            "cannot read the token file {}: {e}",
            settings.token_file.display()
        )
    })?;

    let channel = channel(settings, identity).await?;
    let rsp = IdentityClient::new(channel)
        .certify(CertifyRequest {
            identity: identity.id.to_string(),
            token: token.trim().to_string(),
            certificate_signing_request: csr.der().to_vec(),
        })
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();

    let leaf = CertificateDer::from(rsp.leaf_certificate);
    let intermediates: Vec<CertificateDer<'static>> = rsp
        .intermediate_certificates
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    // What we were given must be ours and chain to the anchors.
    let got = identity
        .anchors
        .verify(
            &leaf,
            &intermediates,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
        )
        .map_err(|e| format!("the issued certificate does not verify: {e}"))?;
    if got != identity.id {
        return Err(format!(
            "the issued certificate is for {got}, not {}",
            identity.id
        ));
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer =
        rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
    let mut chain = vec![leaf];
    chain.extend(intermediates);
    identity.set(CertifiedKey::new(chain, signer), rsp.valid_until);
    Ok(UNIX_EPOCH + Duration::from_secs(rsp.valid_until.max(0) as u64))
}

/// A gRPC channel to the identity service over TLS, verifying the
/// controller's certificate against the anchors and `server_id`.
pub async fn channel(
    settings: &Settings,
    identity: &LocalIdentity,
) -> Result<tonic::transport::Channel, String> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| e.to_string())?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(ServerVerifier(identity.anchors.clone())))
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server_name =
        ServerName::try_from(dns_name(&settings.server_id)).map_err(|e| e.to_string())?;
    let addr = settings.addr.clone();
    Endpoint::from_static("http://identity.weft")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let (connector, server_name, addr) =
                (connector.clone(), server_name.clone(), addr.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| {
            format!(
                "cannot reach the identity service at {}: {e}",
                settings.addr
            )
        })
}
