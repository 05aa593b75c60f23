//! The identity service end to end in one process: a real controller with
//! CA files and static tokens, served over TLS on loopback, and the real
//! proxy certify client (key generated in memory, CSR, verification of
//! what comes back) plus raw Certify calls for each way to be refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::gauge::Gauge;
use tonic::Code;
use weft_controller::app::{Controller, IdentitySettings, Settings, Source};
use weft_controller::identity::ca;
use weft_proto::mesh_tls::TrustAnchors;
use weft_proto::pb::identity::{CertifyRequest, identity_client::IdentityClient};
use weft_proto::spiffe::SpiffeId;
use weft_proxy::identity::LocalIdentity;
use weft_proxy::identity::certify::{self, Settings as CertifySettings};
use weft_tests::pod::sum_metric;

const TOKENS: &str = "- {token: web-token, namespace: shop, serviceAccount: web}\n- {token: batch-token, namespace: shop, serviceAccount: batch}\n";

struct Pki {
    dir: PathBuf,
    anchor_pem: String,
}

fn pki(name: &str) -> Pki {
    let dir = std::env::temp_dir().join(format!("weft-identity-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("world")).unwrap();
    let anchor = ca::new_trust_anchor("cluster.local", Duration::from_secs(86400 * 365)).unwrap();
    let issuer = ca::new_issuer(&anchor, "cluster.local", Duration::from_secs(86400 * 30)).unwrap();
    std::fs::write(dir.join("ca.crt"), &anchor.cert_pem).unwrap();
    std::fs::write(dir.join("issuer.crt"), &issuer.cert_pem).unwrap();
    std::fs::write(dir.join("issuer.key"), &issuer.key_pem).unwrap();
    std::fs::write(dir.join("tokens.yaml"), TOKENS).unwrap();
    std::fs::write(dir.join("token-web"), "web-token\n").unwrap();
    std::fs::write(dir.join("token-batch"), "batch-token").unwrap();
    std::fs::write(dir.join("token-unknown"), "who-am-i").unwrap();
    Pki {
        dir,
        anchor_pem: anchor.cert_pem,
    }
}

/// A running controller with identity on; its identity and admin addresses.
async fn controller(dir: &Path, leaf_lifetime: Duration) -> (String, String) {
    let c = Controller::bind(Settings {
        identity: Some(IdentitySettings {
            addr: "127.0.0.1:0".parse().unwrap(),
            trust_anchors: dir.join("ca.crt"),
            issuer_cert: dir.join("issuer.crt"),
            issuer_key: dir.join("issuer.key"),
            static_tokens: Some(dir.join("tokens.yaml")),
            leaf_lifetime,
        }),
        ..Settings::loopback(Source::Dir(dir.join("world")))
    })
    .await
    .unwrap();
    let addrs = (
        c.identity_addr().unwrap().to_string(),
        c.admin_addr().to_string(),
    );
    tokio::spawn(c.run(std::future::pending()));
    addrs
}

fn local_identity(anchor_pem: &str, sa: &str) -> Arc<LocalIdentity> {
    Arc::new(LocalIdentity::new(
        SpiffeId::new("cluster.local", "shop", sa),
        Arc::new(TrustAnchors::from_pem(anchor_pem).unwrap()),
        Gauge::default(),
    ))
}

fn settings(addr: &str, dir: &Path, token: &str) -> CertifySettings {
    CertifySettings {
        addr: addr.to_string(),
        server_id: "spiffe://cluster.local/ns/weft/sa/weft-controller"
            .parse()
            .unwrap(),
        token_file: dir.join(token),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn a_proxy_is_certified_and_renews_before_expiry() {
    let pki = pki("renew");
    let (addr, admin) = controller(&pki.dir, Duration::from_secs(4)).await;
    let identity = local_identity(&pki.anchor_pem, "web");
    let task = tokio::spawn(certify::run(
        settings(&addr, &pki.dir, "token-web"),
        identity.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(10), identity.ready())
        .await
        .expect("a certificate within 10 s");
    let first = identity.expiry().unwrap();
    assert!(
        (first - now() - 4).abs() <= 1,
        "valid for the leaf lifetime: expires {first}, now {}",
        now()
    );
    // Renewed at 70%: within ~3 s a later certificate is in place.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while identity.expiry() == Some(first) {
        assert!(tokio::time::Instant::now() < deadline, "not renewed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(identity.expiry().unwrap() > first);
    task.abort();
    let text = weft_tests::client::metrics(&admin).await;
    let issued = sum_metric(&text, "identity_certificates_issued_total", &[]);
    assert!(issued >= 2.0, "{issued}");
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[tokio::test]
async fn refusals_are_clear_grpc_errors() {
    let pki = pki("refusals");
    let (addr, admin) = controller(&pki.dir, Duration::from_secs(3600)).await;
    let identity = local_identity(&pki.anchor_pem, "web");
    let channel = certify::channel(&settings(&addr, &pki.dir, "token-web"), &identity)
        .await
        .unwrap();
    let mut client = IdentityClient::new(channel);
    let csr = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://cluster.local/ns/shop/sa/web".try_into().unwrap(),
        )];
        p.serialize_request(&key).unwrap().der().to_vec()
    };
    let request = |identity: &str, token: &str, csr: &[u8]| CertifyRequest {
        identity: identity.into(),
        token: token.into(),
        certificate_signing_request: csr.to_vec(),
    };
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    let cases = [
        (
            request(web, "who-am-i", &csr),
            Code::Unauthenticated,
            "token",
        ),
        (request(web, "", &csr), Code::Unauthenticated, "no_token"),
        (
            request(web, "batch-token", &csr),
            Code::PermissionDenied,
            "identity_mismatch",
        ),
        (
            request("spiffe://other.example/ns/shop/sa/web", "web-token", &csr),
            Code::PermissionDenied,
            "trust_domain",
        ),
        (
            request("spiffe://cluster.local/shop/web", "web-token", &csr),
            Code::InvalidArgument,
            "invalid_identity",
        ),
        (
            request(web, "web-token", b"not a CSR"),
            Code::InvalidArgument,
            "invalid_csr",
        ),
    ];
    for (req, code, reason) in cases {
        let err = client.certify(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{reason}: {err:?}");
        assert!(!err.message().is_empty());
        let text = weft_tests::client::metrics(&admin).await;
        assert!(
            text.contains(&format!(
                "identity_rejections_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason} counted"
        );
    }
    // The right token for the right identity is issued a chain that the
    // anchors verify, for exactly that identity.
    let ok = client
        .certify(request(web, "web-token", &csr))
        .await
        .unwrap()
        .into_inner();
    let leaf = rustls_pki_types::CertificateDer::from(ok.leaf_certificate);
    let chain: Vec<_> = ok
        .intermediate_certificates
        .into_iter()
        .map(rustls_pki_types::CertificateDer::from)
        .collect();
    let got = identity
        .anchors
        .verify(
            &leaf,
            &chain,
            rustls_pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
        )
        .unwrap();
    assert_eq!(got.to_string(), web);

    // The proxy's own client, with a token for another account, never
    // installs a certificate.
    let impostor = local_identity(&pki.anchor_pem, "web");
    let task = tokio::spawn(certify::run(
        settings(&addr, &pki.dir, "token-batch"),
        impostor.clone(),
    ));
    // Wait until the controller has refused it (a second identity
    // mismatch), so the check below follows a certification attempt.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = weft_tests::client::metrics(&admin).await;
        let refused = sum_metric(
            &text,
            "identity_rejections_total",
            &["reason=\"identity_mismatch\""],
        );
        if refused >= 2.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the impostor's certification was never attempted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!impostor.has_certificate());
    task.abort();
    let _ = std::fs::remove_dir_all(&pki.dir);
}
