//! RequestMirror: a copy of a share of a route's requests goes to another
//! backend, fire and forget. The copy runs on its own task; its response
//! is read and dropped, and neither its answer, its failure nor its
//! slowness reaches the real request. A request's body reaches the copy
//! as it streams to the real backend (a tee, no lock: the real request
//! owns it) and the copy leaves when the body has ended; a body over
//! [`MAX_MIRROR_BODY`] is not mirrored. Every copy is counted in
//! `route_mirror_requests_total` by what it came to.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use weft_proto::model;

use super::balance::Endpoints;
use crate::http::body::{Body, BoxBody};
use crate::http::headers::with_head_of;
use crate::metrics::{Direction, Metrics, MirrorLabels, Value};
use crate::upstream::endpoint::EndpointRegistry;
use crate::upstream::{self, Hop};

/// Largest request body copied to a mirror.
pub const MAX_MIRROR_BODY: usize = 64 * 1024;

/// Most copies in flight at once in this proxy; past it copies are
/// dropped (and counted), so a slow mirror cannot pile up tasks.
const MAX_IN_FLIGHT: usize = 256;

/// How long a copy may take before it is given up.
const COPY_TIMEOUT: Duration = Duration::from_secs(10);

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// A route's mirror, compiled.
#[derive(Debug)]
pub struct Mirror {
    pub service: Arc<str>,
    endpoints: Endpoints,
    /// Share of requests copied, in millionths.
    per_million: u32,
    unresolved: bool,
}

impl Mirror {
    pub fn compile(m: &model::Mirror, registry: &EndpointRegistry) -> Self {
        Self {
            service: Arc::from(m.backend.service.name.as_str()),
            endpoints: Endpoints::new(m.backend.endpoints.clone(), registry),
            per_million: m.per_million.min(1_000_000),
            unresolved: m.backend.unresolved.is_some(),
        }
    }
}

/// What a copy came to, for `route_mirror_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The mirror answered (any status: the copy was delivered).
    Answered,
    /// No connection, a reset, or no answer within [`COPY_TIMEOUT`].
    Failed,
    /// The mirror's Service has no ready endpoint, or its reference is
    /// invalid.
    NoEndpoint,
    /// The body was larger than [`MAX_MIRROR_BODY`], or the real request's
    /// body never ended.
    BodyNotCopied,
    /// [`MAX_IN_FLIGHT`] copies were in flight already.
    Overloaded,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Failed => "failed",
            Outcome::NoEndpoint => "no_endpoint",
            Outcome::BodyNotCopied => "body_not_copied",
            Outcome::Overloaded => "overloaded",
        }
    }
}

/// Who is counting: the destination and route a copy belongs to.
#[derive(Clone)]
pub struct Counted {
    pub metrics: Arc<Metrics>,
    pub dst_namespace: Arc<str>,
    pub dst_service: Arc<str>,
    pub route: Arc<str>,
}

impl Counted {
    fn count(&self, mirror: &Arc<str>, outcome: Outcome) {
        self.metrics
            .route_mirror_requests
            .get_or_create(&MirrorLabels {
                dst_namespace: Value(self.dst_namespace.clone()),
                dst_service: Value(self.dst_service.clone()),
                route: Value(self.route.clone()),
                backend: Value(mirror.clone()),
                outcome: outcome.as_str(),
            })
            .inc();
    }
}

/// Starts a copy of `req` to each mirror that draws it, and returns the
/// request to send for real: unchanged when nothing is copied, with its
/// body teed to the copies otherwise.
pub fn send_copies<B>(
    hop: &Hop<'_>,
    counted: &Counted,
    mirrors: &[Mirror],
    req: Request<B>,
) -> Request<Tee<B>>
where
    B: HttpBody<Data = Bytes>,
{
    let has_body = !req.body().is_end_stream();
    let too_large = req.body().size_hint().lower() > MAX_MIRROR_BODY as u64;
    let mut sinks = Vec::new();
    for m in mirrors {
        if fastrand::u32(..1_000_000) >= m.per_million {
            continue;
        }
        if too_large {
            counted.count(&m.service, Outcome::BodyNotCopied);
            continue;
        }
        let chosen = (!m.unresolved)
            .then(|| m.endpoints.pick(tokio::time::Instant::now()))
            .flatten();
        let Some(chosen) = chosen else {
            counted.count(&m.service, Outcome::NoEndpoint);
            continue;
        };
        if IN_FLIGHT.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
            IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
            counted.count(&m.service, Outcome::Overloaded);
            continue;
        }
        let target = hop.target(chosen.endpoint.address, chosen.identity);
        let copy = with_head_of(&req, ());
        let body = if has_body {
            let (tx, rx) = oneshot::channel();
            sinks.push(tx);
            Some(rx)
        } else {
            None
        };
        let task = Delivery {
            pool: hop.pool.clone(),
            orig_dst: hop.orig_dst,
            mesh: hop.mesh,
            counted: counted.clone(),
            service: m.service.clone(),
        };
        tokio::spawn(task.run(target, copy, body));
    }
    req.map(|inner| Tee {
        inner,
        sinks,
        copied: Some(Copied::default()),
    })
}

/// A copy on its way: what its task needs of the real request's hop.
struct Delivery {
    pool: Arc<upstream::pool::Pool>,
    orig_dst: std::net::SocketAddr,
    mesh: bool,
    counted: Counted,
    service: Arc<str>,
}

impl Delivery {
    async fn run(
        self,
        target: upstream::Target,
        head: Request<()>,
        body: Option<oneshot::Receiver<Copied>>,
    ) {
        let outcome = tokio::time::timeout(COPY_TIMEOUT, self.deliver(target, head, body))
            .await
            .unwrap_or(Outcome::Failed);
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        self.counted.count(&self.service, outcome);
    }

    async fn deliver(
        &self,
        target: upstream::Target,
        head: Request<()>,
        body: Option<oneshot::Receiver<Copied>>,
    ) -> Outcome {
        let body = match body {
            None => Body::Empty,
            // Sent when the real request's body ended; dropped unsent when
            // it was too large or never ended.
            Some(rx) => match rx.await {
                Ok(copied) => copied.into_body(),
                Err(_) => return Outcome::BodyNotCopied,
            },
        };
        let hop = Hop {
            direction: Direction::Outbound,
            pool: &self.pool,
            app_protocols: None,
            orig_dst: self.orig_dst,
            from_mesh_peer: false,
            mesh: self.mesh,
        };
        match upstream::send::send(&hop, target, head.map(|()| body)).await {
            Ok(rsp) => {
                // Read to its end, so that the connection can be reused.
                let _ = rsp.into_body().collect().await;
                Outcome::Answered
            }
            Err(_) => Outcome::Failed,
        }
    }
}

/// What of a body passed, kept for the copies.
#[derive(Clone, Default)]
struct Copied {
    data: Vec<Bytes>,
    bytes: usize,
    trailers: Option<HeaderMap>,
}

impl Copied {
    fn into_body(self) -> Body {
        let frames = self
            .data
            .into_iter()
            .map(Frame::data)
            .chain(self.trailers.map(Frame::trailers))
            .map(Ok);
        let stream = futures_util::stream::iter(frames);
        let body: BoxBody = Box::pin(http_body_util::StreamBody::new(stream));
        Body::Boxed(body)
    }
}

pin_project_lite::pin_project! {
    /// The real request's body, passed through unchanged while a copy of it
    /// is kept for the mirrors; handed to them when it ends.
    pub struct Tee<B> {
        #[pin]
        inner: B,
        sinks: Vec<oneshot::Sender<Copied>>,
        // None once handed over, or given up (too large).
        copied: Option<Copied>,
    }
}

impl<B: HttpBody<Data = Bytes>> HttpBody for Tee<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if this.sinks.is_empty() {
            return Poll::Ready(frame);
        }
        let ended = match &frame {
            None => true,
            Some(Err(_)) => {
                // Broken: the copies never leave (their senders drop).
                this.sinks.clear();
                false
            }
            Some(Ok(f)) => {
                if let Some(c) = this.copied.as_mut() {
                    if let Some(d) = f.data_ref() {
                        c.bytes += d.len();
                        c.data.push(d.clone());
                    } else if let Some(t) = f.trailers_ref() {
                        c.trailers = Some(t.clone());
                    }
                    if c.bytes > MAX_MIRROR_BODY {
                        *this.copied = None;
                        this.sinks.clear();
                    }
                }
                this.inner.is_end_stream()
            }
        };
        if ended && let Some(c) = this.copied.take() {
            for tx in this.sinks.drain(..) {
                let _ = tx.send(c.clone());
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    type TestBody = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>,
    >;

    fn body(frames: Vec<Frame<Bytes>>) -> TestBody {
        StreamBody::new(futures_util::stream::iter(
            frames.into_iter().map(Ok).collect::<Vec<_>>(),
        ))
    }

    fn teed(inner: TestBody) -> (Tee<TestBody>, oneshot::Receiver<Copied>) {
        let (tx, rx) = oneshot::channel();
        let tee = Tee {
            inner,
            sinks: vec![tx],
            copied: Some(Copied::default()),
        };
        (tee, rx)
    }

    #[tokio::test]
    async fn the_copy_gets_the_whole_body_once_it_has_passed() {
        let mut t = HeaderMap::new();
        t.insert("x-sum", "7".parse().unwrap());
        let frames = vec![
            Frame::data(Bytes::from_static(b"hello ")),
            Frame::data(Bytes::from_static(b"world")),
            Frame::trailers(t),
        ];
        let (tee, mut rx) = teed(body(frames));
        assert!(rx.try_recv().is_err(), "nothing before the body passes");
        let real = tee.collect().await.unwrap();
        assert_eq!(real.trailers().unwrap()["x-sum"], "7");
        assert_eq!(real.to_bytes(), "hello world");
        let copy = rx.await.unwrap().into_body().collect().await.unwrap();
        assert_eq!(copy.trailers().unwrap()["x-sum"], "7");
        assert_eq!(copy.to_bytes(), "hello world");
    }

    #[tokio::test]
    async fn a_body_too_large_is_passed_on_but_not_copied() {
        let chunk = Bytes::from(vec![1u8; 40 * 1024]);
        let (tee, rx) = teed(body(vec![Frame::data(chunk.clone()), Frame::data(chunk)]));
        let real = tee.collect().await.unwrap().to_bytes();
        assert_eq!(real.len(), 80 * 1024, "the real request loses nothing");
        assert!(rx.await.is_err(), "the copy is given up");
    }
}
