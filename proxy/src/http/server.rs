//! Serving one detected HTTP connection with hyper: HTTP/1.1 (with
//! upgrades) or HTTP/2, each request handed to a handler (the proxy's is
//! [`crate::forward::proxy`]). When the
//! proxy drains, or the connection has been idle too long, it finishes
//! what is in flight and closes (HTTP/1: after the current response;
//! HTTP/2: GOAWAY). Limits: the request head's size and (HTTP/1) the time
//! it may take to arrive, HTTP/2 streams at once, and HTTP/2 control frame
//! floods (guard.rs).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::Limits;
use crate::detect::Protocol;
use crate::drain::Drain;
use crate::http::body::BoxError;
use crate::http::framing::{Framing, Scanned};
use crate::http::guard::{Activity, FloodCheck, FrameGuard, LastActive};
use crate::metrics::{Direction, Metrics};

/// What serving one connection needs besides its bytes and its handler.
pub struct Connection<'a> {
    pub protocol: Protocol,
    pub direction: Direction,
    pub limits: &'a Limits,
    pub drain: &'a Drain,
    pub metrics: &'a Arc<Metrics>,
    /// Requests in flight on this connection (the idle timeout waits for
    /// none).
    pub active: Arc<AtomicUsize>,
    /// HTTP/1: where the framing check records the first ambiguous request.
    pub ambiguous: Arc<std::sync::atomic::AtomicU64>,
}

pub async fn serve<I, H, F, B>(io: I, conn: Connection<'_>, handler: H) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static,
{
    let Connection {
        protocol,
        direction,
        limits,
        drain,
        metrics,
        active,
        ambiguous,
    } = conn;
    let last = LastActive::new();
    let io = Activity::new(io, last.clone());
    let idle = idle(last.clone(), active.clone(), limits.http_idle_timeout);
    let handler = Arc::new(handler);
    let svc = service_fn(move |req| {
        let response = handler(req);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let result = if protocol == Protocol::Http2 {
        let flood_metrics = metrics.clone();
        let io = FrameGuard::new(
            io,
            FloodCheck::new(limits.h2_max_control_frames, move || {
                flood_metrics.abuse(direction, "h2_flood");
            }),
        );
        let c = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_bytes as u32)
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .serve_connection(TokioIo::new(io), svc);
        // Boxed, each protocol's connection state is allocated only when
        // used: HTTP/2's is ~1 KiB larger than HTTP/1's.
        Box::pin(until_drained(c, drain, idle, |c| c.graceful_shutdown())).await
    } else {
        let io = Scanned::new(io, Framing::new(limits.max_header_bytes, ambiguous));
        let c = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        Box::pin(until_drained(c, drain, idle, |c| c.graceful_shutdown())).await
    };
    if let Err(e) = &result {
        tracing::debug!(direction = direction.as_str(), error = %e, "HTTP connection ended with an error");
    }
    match &result {
        Ok(Outcome::Idle) => {
            metrics
                .idle_closed
                .get_or_create(&crate::metrics::DstDirection { direction })
                .inc();
        }
        // hyper's header clock runs while a keep-alive connection waits
        // for its next request too: silence since the last response is an
        // idle connection, bytes trickling in are a slow client.
        Err(e)
            if e.is_timeout()
                && active.load(Ordering::Acquire) == 0
                && last.idle() >= limits.header_read_timeout =>
        {
            metrics
                .idle_closed
                .get_or_create(&crate::metrics::DstDirection { direction })
                .inc();
        }
        Err(e) if e.is_timeout() => metrics.abuse(direction, "header_timeout"),
        Err(e) if e.is_parse_too_large() => metrics.abuse(direction, "header_too_large"),
        _ => {}
    }
    result.map(|_| ())
}

/// How a connection ended.
enum Outcome {
    Done,
    Idle,
}

/// Resolves once the connection has had no request in flight and no bytes
/// either way for `timeout` (never, with a zero timeout).
async fn idle(last: LastActive, active: Arc<AtomicUsize>, timeout: Duration) {
    if timeout.is_zero() {
        return std::future::pending().await;
    }
    let every = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        tokio::time::sleep(every).await;
        if active.load(Ordering::Acquire) == 0 && last.idle() >= timeout {
            return;
        }
    }
}

/// Drives a hyper server connection; once the drain starts (or the
/// connection has been idle too long), asks it to finish gracefully and
/// waits for it.
async fn until_drained<C>(
    conn: C,
    drain: &Drain,
    idle: impl Future<Output = ()>,
    shut_down: fn(Pin<&mut C>),
) -> Result<Outcome, hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(conn);
    tokio::pin!(idle);
    let outcome = tokio::select! {
        res = conn.as_mut() => return res.map(|()| Outcome::Done),
        _ = drain.signaled() => Outcome::Done,
        _ = &mut idle => Outcome::Idle,
    };
    shut_down(conn.as_mut());
    conn.await.map(|()| outcome)
}
