//! The controller's admin server: /live, /ready (sources synced),
//! /metrics, and /tap (the relay to a pod's tap, see tap.rs).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::tap::TapRelay;

type AdminBody = BoxBody<Bytes, hyper::Error>;

fn boxed(rsp: Response<Full<Bytes>>) -> Response<AdminBody> {
    rsp.map(|b| b.map_err(|never| match never {}).boxed())
}

pub async fn serve(
    listener: TcpListener,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    tap: Arc<TapRelay>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let (ready, metrics, tap) = (ready.clone(), metrics.clone(), tap.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (ready, metrics, tap) = (ready.clone(), metrics.clone(), tap.clone());
                async move { Ok::<_, Infallible>(handle(&req, &ready, &metrics, &tap).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    req: &http::Request<hyper::body::Incoming>,
    ready: &AtomicBool,
    metrics: &Metrics,
    tap: &TapRelay,
) -> Response<AdminBody> {
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
        "/tap" => {
            return match tap.open(req.uri().query().unwrap_or("")).await {
                Ok(body) => Response::builder()
                    .header(header::CONTENT_TYPE, "application/x-ndjson")
                    .header(header::CACHE_CONTROL, "no-cache")
                    .body(body.boxed())
                    .expect("static response"),
                Err(crate::tap::RelayError(status, why)) => {
                    boxed(reply(status, "text/plain", format!("{why}\n")))
                }
            };
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /live /ready /metrics /tap\n".into(),
        ),
    };
    boxed(rsp)
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
