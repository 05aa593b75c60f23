//! Mesh TLS between two proxies' TLS configs, in memory: what a good
//! handshake establishes (identities both ways, ALPN, post-quantum key
//! exchange), and each certificate problem refused.

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use weft_proto::mesh_tls::{TrustAnchors, dns_name, spiffe_id_of};
use weft_proto::spiffe::SpiffeId;
use weft_proxy::identity::LocalIdentity;
use weft_proxy::tls::{ALPN_H2, MeshTls};

/// A root CA (anchor) that signs leaves directly.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", sa)
}

/// A proxy identity trusting `anchors`, holding a leaf for `sa` from `ca`
/// valid between the given years.
fn proxy(anchors: &Ca, ca: &Ca, sa: &str, years: (i32, i32)) -> MeshTls {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(id(sa).to_string().try_into().unwrap())];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = rcgen::date_time_ymd(years.0, 1, 1);
    p.not_after = rcgen::date_time_ymd(years.1, 1, 1);
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der).unwrap();
    let identity = Arc::new(LocalIdentity::new(
        id(sa),
        Arc::new(TrustAnchors::from_pem(&anchors.pem).unwrap()),
        Gauge::default(),
    ));
    identity.set(CertifiedKey::new(vec![cert.der().clone()], signer), 0);
    MeshTls::new(identity)
}

/// What a successful handshake established.
#[derive(Debug)]
struct Established {
    client_id_seen_by_server: SpiffeId,
    alpn: Vec<u8>,
    kx_group: String,
}

/// `client` connects to `server` expecting identity `expect`; Ok with what
/// was established, or the error of whichever side refused.
async fn handshake(
    client: &MeshTls,
    server: &MeshTls,
    expect: &SpiffeId,
) -> Result<Established, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (c, s) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server.clone());
    let connector = tokio_rustls::TlsConnector::from(client.client_h2.clone());
    let name = ServerName::try_from(dns_name(expect)).unwrap();
    let server_side = tokio::spawn(async move {
        let mut tls = acceptor
            .accept(s)
            .await
            .map_err(|e| format!("server: {e}"))?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(spiffe_id_of)
            .ok_or("server: no client identity")?;
        tls.write_all(b"ok")
            .await
            .map_err(|e| format!("server: {e}"))?;
        tls.flush().await.map_err(|e| format!("server: {e}"))?;
        Ok::<_, String>(peer)
    });
    let client_side = async move {
        let mut tls = connector
            .connect(name, c)
            .await
            .map_err(|e| format!("client: {e}"))?;
        // TLS 1.3: a refused client certificate shows at the first read.
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf)
            .await
            .map_err(|e| format!("client read: {e}"))?;
        let conn = tls.get_ref().1;
        Ok::<_, String>((
            conn.alpn_protocol().unwrap_or_default().to_vec(),
            format!(
                "{:?}",
                conn.negotiated_key_exchange_group().map(|g| g.name())
            ),
        ))
    };
    let client_result = client_side.await;
    let server_result = server_side.await.unwrap();
    let (alpn, kx_group) = client_result?;
    Ok(Established {
        client_id_seen_by_server: server_result?,
        alpn,
        kx_group,
    })
}

const VALID: (i32, i32) = (2020, 2099);

#[tokio::test]
async fn a_good_handshake_authenticates_both_sides_with_post_quantum_key_exchange() {
    let mesh = ca("mesh root");
    let (web, frontend) = (
        proxy(&mesh, &mesh, "web", VALID),
        proxy(&mesh, &mesh, "frontend", VALID),
    );
    let e = handshake(&frontend, &web, &id("web")).await.unwrap();
    assert_eq!(e.client_id_seen_by_server, id("frontend"));
    assert_eq!(e.alpn, ALPN_H2);
    assert!(e.kx_group.contains("X25519MLKEM768"), "{}", e.kx_group);
}

#[tokio::test]
async fn servers_with_a_foreign_ca_an_expired_cert_or_another_identity_are_refused() {
    let (mesh, foreign) = (ca("mesh root"), ca("foreign root"));
    let frontend = proxy(&mesh, &mesh, "frontend", VALID);
    let cases = [
        (
            proxy(&mesh, &foreign, "web", VALID),
            id("web"),
            "UnknownIssuer",
        ),
        (
            proxy(&mesh, &mesh, "web", (2020, 2021)),
            id("web"),
            "Expired",
        ),
        (
            proxy(&mesh, &mesh, "batch", VALID),
            id("web"),
            "not valid for name",
        ),
    ];
    for (server, expect, error) in cases {
        let err = handshake(&frontend, &server, &expect).await.unwrap_err();
        assert!(err.starts_with("client: ") && err.contains(error), "{err}");
    }
}

#[tokio::test]
async fn clients_with_a_foreign_ca_or_an_expired_cert_are_refused() {
    let (mesh, foreign) = (ca("mesh root"), ca("foreign root"));
    let web = proxy(&mesh, &mesh, "web", VALID);
    for (client, error) in [
        // The server's alert, as the client reads it.
        (proxy(&mesh, &foreign, "frontend", VALID), "UnknownCA"),
        (
            proxy(&mesh, &mesh, "frontend", (2020, 2021)),
            "CertificateExpired",
        ),
    ] {
        let err = handshake(&client, &web, &id("web")).await.unwrap_err();
        assert!(err.contains(error), "{err}");
    }
}
