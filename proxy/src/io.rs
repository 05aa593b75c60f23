//! I/O adapters for accepted connections: replaying the bytes read during
//! detection, and counting bytes for the `tcp_*_bytes_total` metrics.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pin_project! {
    /// Reads `prefix` first, then the inner stream; writes go straight through.
    #[derive(Debug)]
    pub struct PrefixedIo<T> {
        prefix: BytesMut,
        #[pin]
        inner: T,
    }
}

impl<T> PrefixedIo<T> {
    pub fn new(prefix: BytesMut, inner: T) -> Self {
        Self { prefix, inner }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The bytes not yet replayed, and the inner stream.
    pub fn into_parts(self) -> (BytesMut, T) {
        (self.prefix, self.inner)
    }
}

impl<T: AsyncRead> AsyncRead for PrefixedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // Free the detection buffer (1-5 KiB) rather than keep it
                // for the rest of a long-lived connection.
                *this.prefix = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for PrefixedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// Byte counters of one connection's label set, shared with the registry.
#[derive(Clone, Debug, Default)]
pub struct ByteCounters {
    pub read: Counter,
    pub write: Counter,
}

pin_project! {
    /// Counts the bytes read from and written to the inner stream.
    #[derive(Debug)]
    pub struct Counted<T> {
        #[pin]
        inner: T,
        counters: ByteCounters,
    }
}

impl<T> Counted<T> {
    pub fn new(inner: T, counters: ByteCounters) -> Self {
        Self { inner, counters }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    pub fn into_parts(self) -> (T, ByteCounters) {
        (self.inner, self.counters)
    }

    /// Counts from now on into `counters`, adding the `already_read` bytes
    /// read before (when the label set was not known yet).
    pub fn count_into(&mut self, counters: ByteCounters, already_read: usize) {
        counters.read.inc_by(already_read as u64);
        self.counters = counters;
    }
}

impl<T: AsyncRead> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.counters.read.inc_by(n as u64);
        }
        res
    }
}

impl<T: AsyncWrite> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.counters.write.inc_by(n as u64);
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            this.counters.write.inc_by(n as u64);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// Looks at every byte read from a connection, and may fail the read (a
/// flood, say); writes pass through untouched.
pub trait ReadInspector {
    fn inspect(&mut self, read: &[u8]) -> io::Result<()>;
}

pin_project! {
    /// `inner`, its reads shown to an inspector ([`ReadInspector`]).
    pub struct Inspected<I, R> {
        #[pin]
        inner: I,
        inspector: R,
    }
}

impl<I, R> Inspected<I, R> {
    pub fn new(inner: I, inspector: R) -> Self {
        Self { inner, inspector }
    }
}

impl<I: AsyncRead, R: ReadInspector> AsyncRead for Inspected<I, R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            this.inspector.inspect(&buf.filled()[before..])?;
        }
        res
    }
}

impl<I: AsyncWrite, R> AsyncWrite for Inspected<I, R> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, b)
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
        self.project().inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn prefix_is_replayed_before_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut io = PrefixedIo::new(BytesMut::from(&b"hello"[..]), server);
        let mut out = String::new();
        io.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn prefix_buffer_is_freed_once_replayed() {
        let (_client, server) = tokio::io::duplex(64);
        let mut prefix = BytesMut::with_capacity(1024);
        prefix.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut io = PrefixedIo::new(prefix, server);
        let mut buf = [0u8; 4];
        io.read_exact(&mut buf).await.unwrap();
        assert!(io.prefix.capacity() > 0, "still replaying");
        let mut rest = [0u8; 12];
        io.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"/ HTTP/1.1\r\n");
        assert_eq!(io.prefix.capacity(), 0, "the buffer was kept");
    }

    #[tokio::test]
    async fn counts_both_directions() {
        let (mut client, server) = tokio::io::duplex(64);
        let counters = ByteCounters::default();
        let mut io = Counted::new(server, counters.clone());
        client.write_all(b"abc").await.unwrap();
        let mut buf = [0u8; 3];
        io.read_exact(&mut buf).await.unwrap();
        io.write_all(b"12345").await.unwrap();
        assert_eq!(counters.read.get(), 3);
        assert_eq!(counters.write.get(), 5);
    }
}
