//! The tap relay: `GET /tap?namespace=N&pod=P&<filters>` on the admin
//! port streams that pod's live requests. Proxies serve tap only to
//! localhost and to the controller's identity over mesh TLS, so the relay
//! is how `weft tap` reaches a pod in a cluster (through the API server's
//! proxy to the controller): it connects to the pod's admin port with
//! mutual TLS as `spiffe://<td>/ns/<controller ns>/sa/weft-controller`,
//! verifies the pod's own identity, and passes the stream through.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use weft_proto::mesh_tls::{ServerVerifier, TrustAnchors, dns_name};
use weft_proto::spiffe::SpiffeId;

use crate::identity::service::OwnCert;
use crate::index::PodDirectory;

/// The proxies' admin port, where tap is served.
pub const PROXY_ADMIN_PORT: u16 = 4191;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct TapRelay {
    pods: watch::Receiver<Arc<PodDirectory>>,
    /// Mesh TLS as the controller; `None` without identity.
    tls: Option<Arc<rustls::ClientConfig>>,
    trust_domain: String,
}

/// Why a relay could not start: an HTTP status and what to tell the user.
#[derive(Debug, PartialEq, Eq)]
pub struct RelayError(pub StatusCode, pub String);

#[derive(Debug)]
struct Own(Arc<OwnCert>);

impl ResolvesClientCert for Own {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.0.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl TapRelay {
    /// Without `identity` (the controller's certificate and the trust
    /// anchors) the relay answers that it needs mesh identity.
    pub fn new(
        pods: watch::Receiver<Arc<PodDirectory>>,
        identity: Option<(Arc<OwnCert>, Arc<TrustAnchors>)>,
        trust_domain: String,
    ) -> Self {
        let tls = identity.map(|(own, anchors)| {
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 is supported")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier(anchors)))
            .with_client_cert_resolver(Arc::new(Own(own)));
            config.alpn_protocols = vec![b"weft.http1".to_vec()];
            Arc::new(config)
        });
        Self {
            pods,
            tls,
            trust_domain,
        }
    }

    /// Opens the tap of the pod `namespace`/`pod` with the query's other
    /// parameters as its filters, and returns its body.
    pub async fn open(&self, query: &str) -> Result<hyper::body::Incoming, RelayError> {
        let mut pod = (None, None);
        let filters: Vec<&str> = query
            .split('&')
            .filter(|kv| match kv.split_once('=') {
                Some(("namespace", v)) => {
                    pod.0 = Some(v.to_string());
                    false
                }
                Some(("pod", v)) => {
                    pod.1 = Some(v.to_string());
                    false
                }
                _ => !kv.is_empty(),
            })
            .collect();
        let (Some(ns), Some(name)) = pod else {
            return Err(RelayError(
                StatusCode::BAD_REQUEST,
                "tap needs namespace= and pod=".into(),
            ));
        };
        let Some(tls) = &self.tls else {
            return Err(RelayError(
                StatusCode::SERVICE_UNAVAILABLE,
                "tap through the controller needs mesh identity: start it with --trust-anchors, --issuer-cert and --issuer-key (the chart does)".into(),
            ));
        };
        let entry = self.pods.borrow().get(&format!("{ns}/{name}")).cloned();
        let entry = entry.ok_or_else(|| {
            RelayError(
                StatusCode::NOT_FOUND,
                format!("the controller knows no pod {ns}/{name}"),
            )
        })?;
        let (Some(ip), true) = (entry.ip, entry.meshed) else {
            return Err(RelayError(
                StatusCode::BAD_REQUEST,
                format!(
                    "{ns}/{name} has no address yet or is not meshed (no weft.dev/proxy-version)"
                ),
            ));
        };
        let expected = SpiffeId::new(&self.trust_domain, &ns, &entry.service_account);
        let addr = std::net::SocketAddr::new(ip, PROXY_ADMIN_PORT);
        let unreachable = |e: String| {
            RelayError(
                StatusCode::BAD_GATEWAY,
                format!("cannot reach {ns}/{name}'s proxy at {addr}: {e}"),
            )
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let name_for_sni = rustls_pki_types::ServerName::try_from(dns_name(&expected))
            .map_err(|e| unreachable(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name_for_sni, tcp)
            .await
            .map_err(|e| unreachable(format!("mesh TLS: {e}")))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let req = http::Request::get(format!("/tap?{}", filters.join("&")))
            .header(http::header::HOST, addr.to_string())
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("a valid request");
        let rsp = send
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if rsp.status() != StatusCode::OK {
            let status = rsp.status();
            let body = http_body_util::BodyExt::collect(rsp.into_body())
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
                .unwrap_or_default();
            return Err(RelayError(
                status,
                format!("{ns}/{name}'s proxy refused tap: {body}"),
            ));
        }
        Ok(rsp.into_body())
    }
}
