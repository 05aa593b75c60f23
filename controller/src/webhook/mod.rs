//! The injector webhook: `POST /inject` over HTTPS on the webhook port,
//! answering AdmissionReview v1 with a JSON patch (review.rs); and the SMI
//! CRDs' conversion webhook, `POST /convert` (convert.rs). The serving
//! certificate is re-read when its files change (cert.rs).

pub mod cert;
pub mod convert;
pub mod review;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use k8s_openapi::api::core::v1::Namespace;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::reply;
use crate::index::NamespaceAnnotations;
use crate::inject::{InjectorConfig, Layout};
use review::Verdict;

/// Pods with many containers and env vars make large reviews; the API
/// server itself caps objects at a few MB.
const MAX_BODY: usize = 8 << 20;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// `webhook_reviews_total{outcome=injected|skipped|failed|bad_request}`,
/// `webhook_conversions_total{outcome=converted|failed|bad_request}`.
#[derive(Clone, Debug, Default)]
pub struct WebhookMetrics {
    pub reviews: Family<OutcomeLabel, Counter>,
    pub conversions: Family<OutcomeLabel, Counter>,
}

impl WebhookMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "webhook_reviews",
            "AdmissionReviews answered, by outcome (failed: allowed unchanged with a warning)",
            self.reviews.clone(),
        );
        registry.register(
            "webhook_conversions",
            "ConversionReviews of the SMI CRDs answered, by outcome (failed: an object could not be converted)",
            self.conversions.clone(),
        );
    }

    fn count(&self, outcome: &'static str) {
        self.reviews.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}

/// Everything a review needs, shared by the connections.
pub struct Injector {
    pub config: InjectorConfig,
    pub layout: Layout,
    /// Namespace annotations as the controller's index knows them.
    pub namespaces: watch::Receiver<Arc<NamespaceAnnotations>>,
    /// Asked when a namespace is not (yet) in the index: a namespace created
    /// just before its first pod may not have reached the watch.
    pub kube: Option<kube::Client>,
    pub metrics: WebhookMetrics,
}

impl Injector {
    async fn namespace_annotations(&self, name: &str) -> BTreeMap<String, String> {
        if let Some(a) = self.namespaces.borrow().get(name) {
            return a.clone();
        }
        let Some(client) = &self.kube else {
            return BTreeMap::new();
        };
        let api: kube::Api<Namespace> = kube::Api::all(client.clone());
        match api.get_opt(name).await {
            Ok(Some(ns)) => ns
                .metadata
                .annotations
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| k.starts_with("weft.dev/"))
                .collect(),
            Ok(None) => BTreeMap::new(),
            Err(e) => {
                tracing::warn!(namespace = name, error = %e, "cannot read the namespace's annotations");
                BTreeMap::new()
            }
        }
    }

    /// Handles one HTTP request.
    pub async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if path != "/inject" && path != "/convert" {
            return reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found; the injector is POST /inject, the SMI conversion POST /convert\n"
                    .into(),
            );
        }
        if req.method() != Method::POST {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "POST an AdmissionReview or a ConversionReview\n".into(),
            );
        }
        let converting = path == "/convert";
        let count = |outcome: &'static str| {
            if converting {
                self.metrics
                    .conversions
                    .get_or_create(&OutcomeLabel { outcome })
                    .inc();
            } else {
                self.metrics.count(outcome);
            }
        };
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                count("bad_request");
                return reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    format!("cannot read the body: {e}\n"),
                );
            }
        };
        if converting {
            return match convert::answer(&body) {
                Ok((out, ok)) => {
                    if !ok {
                        tracing::warn!(response = %out["response"]["result"]["message"], "cannot convert an SMI object");
                    }
                    count(if ok { "converted" } else { "failed" });
                    reply(StatusCode::OK, "application/json", out.to_string())
                }
                Err(e) => {
                    count("bad_request");
                    reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n"))
                }
            };
        }
        let parsed = match review::parse(&body) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.count("bad_request");
                return reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n"));
            }
        };
        let namespace = review::namespace_of(&parsed)
            .unwrap_or_default()
            .to_string();
        let annotations = self.namespace_annotations(&namespace).await;
        let ctx = review::Context {
            config: &self.config,
            layout: self.layout,
            namespace_annotations: &annotations,
        };
        let (out, verdict) = review::answer(&parsed, &ctx);
        let pod = parsed["request"]["object"]["metadata"]["name"]
            .as_str()
            .or_else(|| parsed["request"]["object"]["metadata"]["generateName"].as_str())
            .unwrap_or("?");
        match &verdict {
            Verdict::Injected => {
                self.metrics.count("injected");
                tracing::info!(namespace, pod, "injected the sidecar");
            }
            Verdict::Skipped(why) => {
                self.metrics.count("skipped");
                tracing::debug!(namespace, pod, why, "not injected");
            }
            Verdict::Failed(why) => {
                self.metrics.count("failed");
                tracing::warn!(namespace, pod, why, "cannot inject; allowed unchanged");
            }
        }
        let json = serde_json::to_string(&out).expect("a review serializes");
        reply(StatusCode::OK, "application/json", json)
    }
}

/// Serves the webhook on `listener` with the certificate `cert` keeps.
pub async fn serve(listener: TcpListener, cert: Arc<cert::FileCert>, injector: Arc<Injector>) {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("default TLS versions")
    .with_no_client_auth()
    .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let (acceptor, injector) = (acceptor.clone(), injector.clone());
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        return tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    }
                    Err(_) => return tracing::debug!(%peer, "webhook TLS handshake timed out"),
                };
            let svc = hyper::service::service_fn(move |req| {
                let injector = injector.clone();
                async move { Ok::<_, Infallible>(injector.handle(req).await) }
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
        });
    }
}
