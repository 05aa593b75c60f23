//! Peers that are not what they claim: TLS servers and clients with
//! certificates from a foreign CA, expired, or for the wrong identity, to
//! check that the mesh refuses them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const MESH_ALPNS: [&[u8]; 3] = [b"weft.h2", b"weft.http1", b"weft.tcp"];

/// A certificate chain and its key.
pub struct Credentials {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// A workload certificate for `spiffe_id`, signed by the issuer in
/// `issuer_cert_pem`/`issuer_key_pem`, valid between the given years.
pub fn workload_cert(
    issuer_cert_pem: &str,
    issuer_key_pem: &str,
    spiffe_id: &str,
    valid_years: (i32, i32),
) -> Credentials {
    let issuer_key = KeyPair::from_pem(issuer_key_pem).expect("issuer key");
    let issuer = Issuer::from_ca_cert_pem(issuer_cert_pem, issuer_key).expect("issuer cert");
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().expect("URI"))];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = rcgen::date_time_ymd(valid_years.0, 1, 1);
    p.not_after = rcgen::date_time_ymd(valid_years.1, 1, 1);
    let cert = p.signed_by(&key, &issuer).expect("sign");
    let issuer_der = rustls::pki_types::pem::PemObject::from_pem_slice(issuer_cert_pem.as_bytes())
        .expect("issuer PEM");
    Credentials {
        chain: vec![cert.der().clone(), issuer_der],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A TLS server offering the mesh ALPNs with `creds`, asking nothing of
/// clients. Returns the number of handshakes completed so far: a client
/// that refuses the certificate never completes one.
pub async fn tls_server(addr: SocketAddr, creds: Credentials) -> Arc<AtomicUsize> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(creds.chain, creds.key)
        .expect("server config");
    config.alpn_protocols = MESH_ALPNS.iter().map(|a| a.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(addr).await.expect("bind rogue server");
    let done = Arc::new(AtomicUsize::new(0));
    let count = done.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    count.fetch_add(1, Ordering::SeqCst);
                    let mut buf = [0u8; 1024];
                    let _ = tls.read(&mut buf).await;
                }
            });
        }
    });
    done
}

/// Accepts any server certificate: the rogue client only cares whether
/// the server accepts *its* certificate.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects to a proxy's inbound as a mesh client presenting `creds`
/// (ALPN `weft.http1`) and sends an HTTP/1 GET; the response bytes, or the
/// error that ended the exchange.
pub async fn mesh_client_get(
    addr: SocketAddr,
    server_name: &str,
    creds: Credentials,
) -> std::io::Result<Vec<u8>> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
        .with_client_auth_cert(creds.chain, creds.key)
        .expect("client config");
    config.alpn_protocols = vec![b"weft.http1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_string()).expect("server name");
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(b"GET /hello HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await?;
    Ok(out)
}
