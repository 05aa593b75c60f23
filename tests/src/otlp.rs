//! An OTLP trace receiver for tests, on the official protos (the
//! `opentelemetry-proto` crate): OTLP/gRPC (`TraceService/Export`) and
//! OTLP/HTTP protobuf (`POST /v1/traces`). Every span received is kept with
//! its resource, for tests to assert on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// A span as received, with the `service.name` and pod it came from.
#[derive(Clone, Debug)]
pub struct Received {
    pub span: Span,
    pub service: String,
    pub pod: String,
}

impl Received {
    /// A string or integer attribute, as text.
    pub fn attr(&self, key: &str) -> Option<String> {
        let kv = self.span.attributes.iter().find(|kv| kv.key == key)?;
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            any_value::Value::IntValue(n) => Some(n.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

/// What the receiver has got.
#[derive(Clone, Default)]
pub struct Spans(Arc<Mutex<Vec<Received>>>);

impl Spans {
    fn add(&self, req: ExportTraceServiceRequest) {
        let mut all = self.0.lock().unwrap();
        for rs in req.resource_spans {
            let attr = |key: &str| {
                rs.resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|kv| kv.key == key))
                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        any_value::Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default()
            };
            let (service, pod) = (attr("service.name"), attr("k8s.pod.name"));
            for ss in rs.scope_spans {
                for span in ss.spans {
                    all.push(Received {
                        span,
                        service: service.clone(),
                        pod: pod.clone(),
                    });
                }
            }
        }
    }

    pub fn all(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for what has arrived (proxies export about
    /// once a second), or panics after `within`.
    pub async fn wait_for(
        &self,
        within: Duration,
        what: &str,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let all = self.all();
            if pred(&all) {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; got {all:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct Grpc(Spans);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves OTLP/gRPC on `addr` (spawned on the current runtime).
pub async fn grpc_receiver(addr: SocketAddr) -> (SocketAddr, Spans) {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind OTLP/gRPC");
    let bound = listener.local_addr().unwrap();
    let spans = Spans::default();
    let svc = TraceServiceServer::new(Grpc(spans.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (bound, spans)
}

/// Serves OTLP/HTTP protobuf (`POST /v1/traces`) on `addr`.
pub async fn http_receiver(addr: SocketAddr) -> (SocketAddr, Spans) {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind OTLP/HTTP");
    let bound = listener.local_addr().unwrap();
    let spans = Spans::default();
    let keep = spans.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let spans = keep.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let spans = spans.clone();
                    async move {
                        let ok = req.method() == http::Method::POST
                            && req.uri().path() == "/v1/traces"
                            && req
                                .headers()
                                .get(http::header::CONTENT_TYPE)
                                .is_some_and(|v| v == "application/x-protobuf");
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        let status = match (ok, body) {
                            (true, Ok(b)) => match ExportTraceServiceRequest::decode(b) {
                                Ok(r) => {
                                    spans.add(r);
                                    200
                                }
                                Err(_) => 400,
                            },
                            _ => 400,
                        };
                        let reply = ExportTraceServiceResponse::default().encode_to_vec();
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .status(status)
                                .header("content-type", "application/x-protobuf")
                                .body(Full::new(Bytes::from(reply)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (bound, spans)
}
