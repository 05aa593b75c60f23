//! Watching an HTTP connection's bytes, under hyper:
//!
//! - [`FrameGuard`] reads the HTTP/2 frame headers a client sends (nothing
//!   else of the frames) and closes a connection that floods the frames
//!   that cost the server work but carry no request: PING, SETTINGS,
//!   RST_STREAM (rapid reset, CVE-2023-44487), PRIORITY, CONTINUATION and
//!   empty DATA. A rate limit (crate::limit) allows bursts (two seconds'
//!   worth) and a steady rate; past it the read fails and hyper drops the
//!   connection.
//! - [`Activity`] notes when bytes last moved either way, for the idle
//!   timeout of HTTP connections.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::limit::{self, Limiter};

const PREFACE_LEN: usize = 24;
const HEADER_LEN: usize = 9;

/// Where the frame parser is in the client's byte stream.
#[derive(Debug)]
enum At {
    /// Skipping this many bytes of the connection preface.
    Preface(usize),
    /// Collecting a frame header.
    Header { buf: [u8; HEADER_LEN], have: usize },
    /// Skipping this many payload bytes.
    Payload(usize),
}

/// Whether a frame (type, flags, length) is of the flood-prone kinds.
fn costly(kind: u8, flags: u8, len: usize) -> bool {
    const ACK: u8 = 0x1;
    const END_STREAM: u8 = 0x1;
    match kind {
        // DATA, empty and not ending the stream.
        0 => len == 0 && flags & END_STREAM == 0,
        // PRIORITY, RST_STREAM, CONTINUATION.
        2 | 3 | 9 => true,
        // SETTINGS and PING, not their acks.
        4 | 6 => flags & ACK == 0,
        _ => false,
    }
}

/// Counts a client's flood-prone HTTP/2 frames (see the module docs).
#[derive(Debug)]
pub struct FrameCounter {
    at: At,
    limit: Limiter,
}

impl FrameCounter {
    pub fn new(per_second: u32) -> Self {
        Self {
            at: At::Preface(PREFACE_LEN),
            limit: limit::limiter(limit::quota(per_second, per_second.saturating_mul(2))),
        }
    }

    /// Feeds the bytes just read; false once the client is over its budget.
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match &mut self.at {
                At::Preface(left) | At::Payload(left) => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.at = At::Header {
                            buf: [0; HEADER_LEN],
                            have: 0,
                        };
                    }
                }
                At::Header { buf, have } => {
                    let n = (HEADER_LEN - *have).min(bytes.len());
                    buf[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == HEADER_LEN {
                        let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                        let (kind, flags) = (buf[3], buf[4]);
                        if costly(kind, flags, len) && self.limit.check().is_err() {
                            return false;
                        }
                        self.at = if len == 0 {
                            At::Header {
                                buf: [0; HEADER_LEN],
                                have: 0,
                            }
                        } else {
                            At::Payload(len)
                        };
                    }
                }
            }
        }
        true
    }
}

/// An HTTP/2 server connection's IO, its reads counted by a
/// [`FrameCounter`]; a flood fails the read.
pub type FrameGuard<I> = crate::io::Inspected<I, FloodCheck>;

/// The [`FrameCounter`] of a [`FrameGuard`], and what to do on a flood.
pub struct FloodCheck {
    counter: FrameCounter,
    on_flood: Option<Box<dyn FnOnce() + Send>>,
}

impl FloodCheck {
    pub fn new(per_second: u32, on_flood: impl FnOnce() + Send + 'static) -> Self {
        Self {
            counter: FrameCounter::new(per_second),
            on_flood: Some(Box::new(on_flood)),
        }
    }
}

impl crate::io::ReadInspector for FloodCheck {
    fn inspect(&mut self, read: &[u8]) -> io::Result<()> {
        if self.counter.feed(read) {
            return Ok(());
        }
        if let Some(f) = self.on_flood.take() {
            f();
        }
        Err(io::Error::other(
            "HTTP/2 client flooded control frames; connection closed",
        ))
    }
}

/// When bytes last moved on a connection, in milliseconds since `epoch`.
#[derive(Debug, Clone)]
pub struct LastActive {
    epoch: Instant,
    ms: Arc<AtomicU64>,
}

impl LastActive {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            ms: Arc::default(),
        }
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.ms.store(ms, Ordering::Relaxed);
    }

    /// How long since bytes last moved.
    pub fn idle(&self) -> std::time::Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        std::time::Duration::from_millis(now.saturating_sub(self.ms.load(Ordering::Relaxed)))
    }
}

impl Default for LastActive {
    fn default() -> Self {
        Self::new()
    }
}

pin_project! {
    /// IO that updates a [`LastActive`] whenever bytes move.
    pub struct Activity<I> {
        #[pin]
        inner: I,
        last: LastActive,
    }
}

impl<I> Activity<I> {
    pub fn new(inner: I, last: LastActive) -> Self {
        Self { inner, last }
    }
}

impl<I: AsyncRead> AsyncRead for Activity<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last.touch();
        }
        res
    }
}

impl<I: AsyncWrite> AsyncWrite for Activity<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write(cx, b);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.last.touch();
        }
        res
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.last.touch();
        }
        res
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags, 0, 0, 0, 1]);
        f.extend_from_slice(payload);
        f
    }

    fn stream(frames: impl IntoIterator<Item = Vec<u8>>) -> Vec<u8> {
        let mut s = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for f in frames {
            s.extend(f);
        }
        s
    }

    #[tokio::test(start_paused = true)]
    async fn requests_and_data_pass_a_ping_flood_does_not() {
        let mut c = FrameCounter::new(10);
        // Headers and data frames of any number cost nothing.
        let normal = stream((0..1000).flat_map(|_| [frame(1, 0x4, b"hdrs"), frame(0, 1, b"body")]));
        assert!(c.feed(&normal));
        // A burst of 20 pings (2 s at 10/s) passes, the 21st does not.
        let pings: Vec<u8> = (0..20).flat_map(|_| frame(6, 0, &[0; 8])).collect();
        assert!(c.feed(&pings));
        assert!(!c.feed(&frame(6, 0, &[0; 8])));
        // Acks are free.
        let mut c = FrameCounter::new(10);
        let acks: Vec<u8> = (0..1000).flat_map(|_| frame(6, 1, &[0; 8])).collect();
        assert!(c.feed(&stream([acks])));
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_refills_and_split_reads_are_followed() {
        let mut c = FrameCounter::new(10);
        let resets: Vec<u8> = stream((0..20).map(|_| frame(3, 0, &[0, 0, 0, 8])));
        assert!(c.feed(&resets));
        // One second later ten more are allowed, fed a byte at a time.
        tokio::time::advance(Duration::from_secs(1)).await;
        let ten: Vec<u8> = (0..10).flat_map(|_| frame(3, 0, &[0, 0, 0, 8])).collect();
        for b in &ten {
            assert!(c.feed(std::slice::from_ref(b)));
        }
        assert!(!c.feed(&frame(3, 0, &[0, 0, 0, 8])));
    }

    #[test]
    fn flood_prone_kinds() {
        assert!(costly(0, 0, 0), "empty DATA");
        assert!(!costly(0, 1, 0), "empty DATA ending the stream");
        assert!(!costly(0, 0, 10));
        assert!(costly(9, 0, 100) && costly(2, 0, 5) && costly(3, 0, 4));
        assert!(costly(4, 0, 0) && !costly(4, 1, 0));
        assert!(
            !costly(1, 0, 10) && !costly(8, 0, 4),
            "HEADERS, WINDOW_UPDATE"
        );
    }
}
