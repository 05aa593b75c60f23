//! The controller's admin server: /live, /ready (sources synced), /metrics.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

pub async fn serve(listener: TcpListener, ready: Arc<AtomicBool>, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let (ready, metrics) = (ready.clone(), metrics.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let rsp = match req.uri().path() {
                    "/live" => reply(StatusCode::OK, "text/plain", "live\n".into()),
                    "/ready" if ready.load(Ordering::Acquire) => {
                        reply(StatusCode::OK, "text/plain", "ready\n".into())
                    }
                    "/ready" => reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "not ready: sources not synced\n".into(),
                    ),
                    "/metrics" => reply(
                        StatusCode::OK,
                        "text/plain; version=0.0.4; charset=utf-8",
                        metrics.encode(),
                    ),
                    _ => reply(
                        StatusCode::NOT_FOUND,
                        "text/plain",
                        "not found; try /live /ready /metrics\n".into(),
                    ),
                };
                async move { Ok::<_, Infallible>(rsp) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

pub(crate) fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}
