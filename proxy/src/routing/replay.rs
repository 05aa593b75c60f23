//! Request bodies that can be sent again, for retries.
//!
//! The first try streams the body as it arrives (no waiting for the whole
//! body, so streaming requests work) while keeping a copy of what passed,
//! up to a cap (64 KiB). A retry replays the copy and then continues from
//! the client. Past the cap the copy is dropped and the request can no
//! longer be retried. Earlier tries are retired when a retry starts, so a
//! connection still writing an abandoned try cannot take bytes from the
//! client that the retry needs.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::http::body::BoxError;

/// Most bytes kept for replay.
pub const MAX_REPLAY_BYTES: usize = 64 * 1024;

type Source = Pin<Box<dyn HttpBody<Data = Bytes, Error = hyper::Error> + Send>>;

struct Shared {
    source: Option<Source>,
    /// Data frames seen so far (while under the cap).
    data: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    bytes: usize,
    /// The client's body has ended.
    done: bool,
    /// Past the cap: `data` is incomplete and no new try may start.
    overflowed: bool,
    /// The current try's number; older tries read nothing more.
    generation: u64,
    hint: SizeHint,
}

/// The handle that starts retries of a body.
#[derive(Clone)]
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
}

/// One try's view of a replayable body.
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    generation: u64,
    /// Next data frame of `data` to replay.
    pos: usize,
    trailers_sent: bool,
}

impl std::fmt::Debug for ReplayBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayBody")
            .field("generation", &self.generation)
            .finish()
    }
}

impl ReplayBody {
    /// The first try's body, and the handle for retries.
    pub fn new<B>(body: B) -> (Self, Replay)
    where
        B: HttpBody<Data = Bytes, Error = hyper::Error> + Send + 'static,
    {
        let hint = body.size_hint();
        let done = body.is_end_stream();
        let first = Self {
            shared: Arc::new(Mutex::new(Shared {
                source: Some(Box::pin(body)),
                data: Vec::new(),
                trailers: None,
                bytes: 0,
                done,
                overflowed: hint.lower() as usize > MAX_REPLAY_BYTES,
                generation: 0,
                hint,
            })),
            generation: 0,
            pos: 0,
            trailers_sent: false,
        };
        let replay = Replay {
            shared: first.shared.clone(),
        };
        (first, replay)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Replay")
    }
}

impl Replay {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A body for the next try, replaying from the start; `None` when the
    /// body outgrew the cap.
    pub fn retry(&self) -> Option<ReplayBody> {
        let mut s = self.lock();
        if s.overflowed {
            return None;
        }
        s.generation += 1;
        Some(ReplayBody {
            shared: self.shared.clone(),
            generation: s.generation,
            pos: 0,
            trailers_sent: false,
        })
    }

    /// Whether a retry could still replay the body.
    pub fn is_replayable(&self) -> bool {
        !self.lock().overflowed
    }
}

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut s = this.shared.lock().unwrap_or_else(|p| p.into_inner());
        if s.generation != this.generation {
            // A newer try took over; this one is abandoned.
            return Poll::Ready(None);
        }
        if this.pos < s.data.len() && !s.overflowed {
            let d = s.data[this.pos].clone();
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if s.done {
            if !this.trailers_sent
                && let Some(t) = s.trailers.clone()
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            return Poll::Ready(None);
        }
        loop {
            let Some(source) = s.source.as_mut() else {
                return Poll::Ready(None);
            };
            let frame = match source.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    s.done = true;
                    s.source = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    s.source = None;
                    s.overflowed = true;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            // The source's end is known as soon as its last frame is read,
            // so that the frame goes out with END_STREAM: an HTTP/2 peer
            // counts empty DATA frames without it as abuse (h2 closes the
            // connection after 100).
            if source.is_end_stream() {
                s.done = true;
                s.source = None;
            }
            if let Some(d) = frame.data_ref() {
                if d.is_empty() {
                    // Nothing to send (the client's END_STREAM, seen above).
                    continue;
                }
                s.bytes += d.len();
                if s.bytes > MAX_REPLAY_BYTES {
                    s.overflowed = true;
                    s.data.clear();
                } else {
                    s.data.push(d.clone());
                    this.pos = s.data.len();
                }
            } else if let Some(t) = frame.trailers_ref() {
                s.trailers = Some(t.clone());
                s.done = true;
                this.trailers_sent = true;
            }
            return Poll::Ready(Some(Ok(frame)));
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.lock();
        s.generation == self.generation
            && s.done
            && self.pos >= s.data.len()
            && (s.trailers.is_none() || self.trailers_sent)
    }

    fn size_hint(&self) -> SizeHint {
        self.lock().hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    /// An hyper-error-typed body from chunks.
    fn body(
        chunks: Vec<&'static [u8]>,
    ) -> impl HttpBody<Data = Bytes, Error = hyper::Error> + Send + 'static {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(c))));
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn read(b: ReplayBody) -> Vec<u8> {
        b.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_retry_replays_what_the_first_try_read() {
        let (_first, replay) = ReplayBody::new(body(vec![b"hello ", b"world"]));
        let retry = replay.retry().unwrap();
        // The first try was retired by the retry; read the retry fully.
        assert_eq!(read(retry).await, b"hello world");
        let again = replay.retry().unwrap();
        assert_eq!(read(again).await, b"hello world");
    }

    #[tokio::test]
    async fn a_retry_continues_a_body_the_first_try_did_not_finish() {
        let (mut first, replay) = ReplayBody::new(body(vec![b"a", b"b", b"c"]));
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "a");
        let retry = replay.retry().unwrap();
        assert_eq!(read(retry).await, b"abc");
        // The retired try reads nothing more.
        assert!(first.frame().await.is_none());
    }

    #[tokio::test]
    async fn past_the_cap_there_is_no_retry() {
        static BIG: [u8; 40 * 1024] = [7; 40 * 1024];
        let (_first, replay) = ReplayBody::new(body(vec![&BIG, &BIG]));
        assert!(replay.is_replayable());
        assert_eq!(read(replay.retry().unwrap()).await.len(), 80 * 1024);
        assert!(!replay.is_replayable());
        assert!(replay.retry().is_none());
        // A declared length over the cap is known at once.
        let (_d, declared) = ReplayBody::new(
            Full::new(Bytes::from(vec![0u8; 100 * 1024])).map_err(|never| match never {}),
        );
        assert!(!declared.is_replayable());
    }

    #[tokio::test]
    async fn empty_bodies_are_replayable_and_ended() {
        let (first, replay) =
            ReplayBody::new(http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}));
        assert!(first.is_end_stream());
        let retry = replay.retry().unwrap();
        assert!(retry.is_end_stream());
        assert!(read(retry).await.is_empty());
    }

    /// A body that knows its end, as hyper's HTTP/2 bodies do.
    struct Known(std::collections::VecDeque<Bytes>);

    impl HttpBody for Known {
        type Data = Bytes;
        type Error = hyper::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
            Poll::Ready(self.0.pop_front().map(|d| Ok(Frame::data(d))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    /// A gRPC client's message then its END_STREAM as an empty DATA frame:
    /// the try sends the message as the last frame and never an empty one
    /// (which the next HTTP/2 hop would count as abuse).
    #[tokio::test]
    async fn the_end_goes_with_the_last_data_and_no_empty_frame_is_sent() {
        let source = Known([Bytes::from_static(b"msg"), Bytes::new()].into());
        let (mut first, replay) = ReplayBody::new(source);
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "msg");
        assert!(first.frame().await.is_none(), "the empty frame is dropped");
        assert!(first.is_end_stream());
        let mut retry = replay.retry().unwrap();
        let f = retry.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "msg");
        assert!(retry.is_end_stream(), "ended with its last data frame");

        let (mut only, _) = ReplayBody::new(Known([Bytes::from_static(b"x")].into()));
        only.frame().await.unwrap().unwrap();
        assert!(only.is_end_stream(), "ended as soon as the source said so");
    }
}
