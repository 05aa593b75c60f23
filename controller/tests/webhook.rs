//! The injector webhook over HTTPS against a running controller (directory
//! source): AdmissionReviews answered with a patch that injects, namespace
//! annotations followed as they change, bad requests refused with proper
//! statuses, outcomes counted, and the serving certificate reloaded when
//! its files change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use weft_controller::app::{Controller, IdentitySettings, Settings, Source, WebhookSettings};
use weft_controller::identity::ca;
use weft_tests::pod::sum_metric;

const HOST: &str = "weft-webhook.weft.svc";

fn namespace(name: &str, inject: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  annotations:\n    weft.dev/inject: {inject}\n"
    )
}

struct Setup {
    dir: PathBuf,
    webhook_ca: String,
    anchor: String,
}

fn setup(name: &str) -> Setup {
    let dir = std::env::temp_dir().join(format!("weft-webhook-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("world")).unwrap();
    std::fs::write(dir.join("world/shop.yaml"), namespace("shop", "enabled")).unwrap();
    let webhook_ca = write_serving_pair(&dir);
    let anchor = ca::new_trust_anchor("cluster.local", Duration::from_secs(86400)).unwrap();
    let issuer = ca::new_issuer(&anchor, "cluster.local", Duration::from_secs(3600)).unwrap();
    std::fs::write(dir.join("ca.crt"), &anchor.cert_pem).unwrap();
    std::fs::write(dir.join("issuer.crt"), &issuer.cert_pem).unwrap();
    std::fs::write(dir.join("issuer.key"), &issuer.key_pem).unwrap();
    std::fs::write(dir.join("tokens.yaml"), "[]\n").unwrap();
    std::fs::write(
        dir.join("injector.yaml"),
        "proxyImage: registry.test/weft-proxy:t1\nnativeSidecars: auto\n",
    )
    .unwrap();
    Setup {
        dir,
        webhook_ca,
        anchor: anchor.cert_pem,
    }
}

/// A new CA and serving certificate for the webhook; returns the CA's PEM.
fn write_serving_pair(dir: &Path) -> String {
    let (ca, pair) = ca::new_serving_pair(
        "test-webhook-ca",
        &[HOST.to_string()],
        Duration::from_secs(3600),
    )
    .unwrap();
    // Key first: a reader between the two writes sees a mismatched pair and
    // must keep the old one.
    std::fs::write(dir.join("tls.key"), &pair.key_pem).unwrap();
    std::fs::write(dir.join("tls.crt"), &pair.cert_pem).unwrap();
    ca.cert_pem
}

async fn start(s: &Setup) -> (String, String) {
    let c = Controller::bind(Settings {
        identity: Some(IdentitySettings {
            addr: "127.0.0.1:0".parse().unwrap(),
            trust_anchors: s.dir.join("ca.crt"),
            issuer_cert: s.dir.join("issuer.crt"),
            issuer_key: s.dir.join("issuer.key"),
            static_tokens: Some(s.dir.join("tokens.yaml")),
            leaf_lifetime: Duration::from_secs(3600),
        }),
        webhook: Some(WebhookSettings {
            addr: "127.0.0.1:0".parse().unwrap(),
            cert: s.dir.join("tls.crt"),
            key: s.dir.join("tls.key"),
            ca: None,
            injector_config: Some(s.dir.join("injector.yaml")),
        }),
        ..Settings::loopback(Source::Dir(s.dir.join("world")))
    })
    .await
    .unwrap();
    let addrs = (
        c.webhook_addr().unwrap().to_string(),
        c.admin_addr().to_string(),
    );
    tokio::spawn(c.run(std::future::pending()));
    addrs
}

/// One HTTPS request to the webhook, trusting `ca_pem` only.
async fn call(
    addr: &str,
    ca_pem: &str,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", HOST)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let rsp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = rsp.status().as_u16();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body.to_vec()))
}

fn review(namespace: &str, pod: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "b2f6e3a1-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": namespace,
            "object": pod,
        }
    }))
    .unwrap()
}

fn web_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"generateName": "web-", "labels": {"app": "web"}},
           "spec": {"serviceAccountName": "web", "containers": [{"name": "web", "image": "nginx"}]}})
}

/// The pod after the response's patch (the pod unchanged without one).
fn patched(pod: &Value, response: &Value) -> Value {
    let mut out = pod.clone();
    if let Some(p) = response["patch"].as_str() {
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut out, &patch).unwrap();
    }
    out
}

async fn ask(addr: &str, ca: &str, namespace: &str) -> Value {
    let (status, body) = call(addr, ca, "POST", "/inject", review(namespace, web_pod()))
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let out: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(
        out["response"]["uid"],
        "b2f6e3a1-0000-4000-8000-000000000001"
    );
    assert_eq!(out["response"]["allowed"], true);
    out["response"].clone()
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One counter series of the controller's metrics.
async fn metric(admin: &str, series: &str) -> f64 {
    let text = weft_tests::client::metrics(admin).await;
    let (name, labels) = series.split_once('{').unwrap_or((series, ""));
    sum_metric(&text, name, &[labels.trim_end_matches('}')])
}

#[tokio::test]
async fn pods_in_enabled_namespaces_are_injected() {
    let s = setup("inject");
    let (addr, admin) = start(&s).await;
    until("the shop namespace in the index", || async {
        ask(&addr, &s.webhook_ca, "shop")
            .await
            .get("patch")
            .is_some()
    })
    .await;
    let response = ask(&addr, &s.webhook_ca, "shop").await;
    let pod = patched(&web_pod(), &response);
    let inits = pod["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(inits[0]["name"], "weft-init");
    assert_eq!(
        inits[1]["name"], "weft-proxy",
        "a directory source has no server version: native sidecars"
    );
    assert_eq!(
        inits[1]["image"], "registry.test/weft-proxy:t1",
        "the injector config file is used"
    );
    let env = |name: &str| {
        inits[1]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        env("WEFT_PROXY_TRUST_ANCHORS"),
        Some(json!(s.anchor)),
        "the controller's trust anchors, inline"
    );
    assert_eq!(
        env("WEFT_PROXY_IDENTITY_SERVER_ID"),
        Some(json!("spiffe://cluster.local/ns/weft/sa/weft-controller"))
    );
    assert_eq!(
        pod["metadata"]["annotations"]["weft.dev/proxy-version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        pod["spec"]["containers"][0]["name"], "web",
        "the app is untouched"
    );

    // Not enabled: allowed, unchanged.
    let other = ask(&addr, &s.webhook_ca, "other").await;
    assert!(other.get("patch").is_none(), "{other}");

    // The namespace turns injection off: new pods are left alone.
    std::fs::write(s.dir.join("world/shop.yaml"), namespace("shop", "disabled")).unwrap();
    until("the annotation change", || async {
        ask(&addr, &s.webhook_ca, "shop")
            .await
            .get("patch")
            .is_none()
    })
    .await;

    assert!(metric(&admin, "webhook_reviews_total{outcome=\"injected\"}").await >= 1.0);
    assert!(metric(&admin, "webhook_reviews_total{outcome=\"skipped\"}").await >= 2.0);
    std::fs::remove_dir_all(&s.dir).unwrap();
}

#[tokio::test]
async fn bad_requests_get_http_errors_and_bad_pods_a_warning() {
    let s = setup("bad");
    let (addr, admin) = start(&s).await;
    let (status, _) = call(&addr, &s.webhook_ca, "GET", "/inject", vec![])
        .await
        .unwrap();
    assert_eq!(status, 405);
    let (status, _) = call(&addr, &s.webhook_ca, "POST", "/mutate", vec![])
        .await
        .unwrap();
    assert_eq!(status, 404);
    let (status, body) = call(
        &addr,
        &s.webhook_ca,
        "POST",
        "/inject",
        b"{not json".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("invalid JSON"));
    let no_uid =
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#.to_vec();
    let (status, body) = call(&addr, &s.webhook_ca, "POST", "/inject", no_uid)
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("uid"));

    // A pod the injector cannot handle is admitted unchanged, with a warning.
    let bad_pod = json!({"metadata": {"name": "x", "annotations": {"weft.dev/inject": "enabled", "weft.dev/skip-outbound-ports": "99999"}},
                         "spec": {"containers": [{"name": "x"}]}});
    let (status, body) = call(
        &addr,
        &s.webhook_ca,
        "POST",
        "/inject",
        review("other", bad_pod),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let out: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(out["response"]["allowed"], true);
    assert!(out["response"].get("patch").is_none());
    assert!(
        out["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("99999"),
        "{out}"
    );
    assert_eq!(
        metric(&admin, "webhook_reviews_total{outcome=\"bad_request\"}").await,
        2.0
    );
    assert_eq!(
        metric(&admin, "webhook_reviews_total{outcome=\"failed\"}").await,
        1.0
    );
    std::fs::remove_dir_all(&s.dir).unwrap();
}

/// The API server's ConversionReview for the SMI CRDs, over the same
/// HTTPS server: a TrafficSplit v1alpha1 with quantity weights back at
/// v1alpha4, and a review that cannot be converted failed with its reason.
#[tokio::test]
async fn smi_objects_are_converted_over_https() {
    let s = setup("convert");
    let (webhook, admin) = start(&s).await;
    let review = |weight: &str| {
        serde_json::to_vec(&json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "ConversionReview",
            "request": {
                "uid": "c0nvert-0000-4000-8000-000000000001",
                "desiredAPIVersion": "split.smi-spec.io/v1alpha4",
                "objects": [{
                    "apiVersion": "split.smi-spec.io/v1alpha1",
                    "kind": "TrafficSplit",
                    "metadata": {"name": "web", "namespace": "shop"},
                    "spec": {"service": "web", "backends": [
                        {"service": "web-primary", "weight": weight},
                        {"service": "web-canary", "weight": "250m"},
                    ]},
                }],
            },
        }))
        .unwrap()
    };
    let (status, body) = call(&webhook, &s.webhook_ca, "POST", "/convert", review("750m"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let out: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(out["kind"], "ConversionReview");
    let r = &out["response"];
    assert_eq!(r["uid"], "c0nvert-0000-4000-8000-000000000001");
    assert_eq!(r["result"]["status"], "Success");
    let split = &r["convertedObjects"][0];
    assert_eq!(split["apiVersion"], "split.smi-spec.io/v1alpha4");
    assert_eq!(split["spec"]["backends"][0]["weight"], 3);
    assert_eq!(split["spec"]["backends"][1]["weight"], 1);

    let (status, body) = call(&webhook, &s.webhook_ca, "POST", "/convert", review("many"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let out: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(out["response"]["result"]["status"], "Failure");
    let (status, _) = call(&webhook, &s.webhook_ca, "POST", "/convert", b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!(status, 400);
    for (outcome, n) in [("converted", 1.0), ("failed", 1.0), ("bad_request", 1.0)] {
        let series = format!("webhook_conversions_total{{outcome=\"{outcome}\"}}");
        assert_eq!(metric(&admin, &series).await, n, "{outcome}");
    }
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let s = setup("reload");
    let (addr, _) = start(&s).await;
    assert!(
        call(
            &addr,
            &s.webhook_ca,
            "POST",
            "/inject",
            review("other", web_pod())
        )
        .await
        .is_ok()
    );
    let new_ca = write_serving_pair(&s.dir);
    until("the new certificate", || async {
        call(
            &addr,
            &new_ca,
            "POST",
            "/inject",
            review("other", web_pod()),
        )
        .await
        .is_ok()
    })
    .await;
    let old = call(
        &addr,
        &s.webhook_ca,
        "POST",
        "/inject",
        review("other", web_pod()),
    )
    .await;
    assert!(
        old.unwrap_err().contains("TLS"),
        "the old certificate is no longer served"
    );
    std::fs::remove_dir_all(&s.dir).unwrap();
}

#[tokio::test]
async fn a_bad_certificate_is_an_error_at_start() {
    let s = setup("badcert");
    std::fs::write(s.dir.join("tls.crt"), "not a certificate").unwrap();
    let e = Controller::bind(Settings {
        webhook: Some(WebhookSettings {
            addr: "127.0.0.1:0".parse().unwrap(),
            cert: s.dir.join("tls.crt"),
            key: s.dir.join("tls.key"),
            ca: None,
            injector_config: None,
        }),
        ..Settings::loopback(Source::Dir(s.dir.join("world")))
    })
    .await
    .err()
    .expect("a bad certificate is refused");
    assert!(format!("{e:#}").contains("--webhook-cert"), "{e:#}");
    std::fs::remove_dir_all(&s.dir).unwrap();
}
