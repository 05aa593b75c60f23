//! Serving one detected HTTP connection with hyper: HTTP/1.1 (with
//! upgrades) or HTTP/2, each request handed to [`forward::proxy`]. When the
//! proxy drains, the connection finishes what is in flight and closes
//! (HTTP/1: after the current response; HTTP/2: GOAWAY).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::detect::Protocol;
use crate::drain::Drain;
use crate::http::forward::{self, HttpConn};

pub async fn serve<I>(io: I, protocol: Protocol, conn: HttpConn) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let drain = conn.drain.clone();
    let conn = Arc::new(conn);
    let svc = service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(forward::proxy(&conn, req).await) }
    });
    let io = TokioIo::new(io);
    if protocol == Protocol::Http2 {
        let c = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(io, svc);
        until_drained(c, &drain, |c| c.graceful_shutdown()).await
    } else {
        let c = http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(io, svc)
            .with_upgrades();
        until_drained(c, &drain, |c| c.graceful_shutdown()).await
    }
}

/// Drives a hyper server connection; once the drain starts, asks it to
/// finish gracefully and waits for it.
async fn until_drained<C>(
    conn: C,
    drain: &Drain,
    shut_down: fn(Pin<&mut C>),
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => return res,
        _ = drain.signaled() => shut_down(conn.as_mut()),
    }
    conn.await
}
