//! Request smuggling, caught before hyper: an HTTP/1 request that frames
//! its body two ways (Content-Length and Transfer-Encoding) is refused
//! with a 400, never forwarded (RFC 9112 6.3 lets a server reject it;
//! hyper would instead drop the Content-Length and follow the chunking).
//!
//! [`Framing`] follows a client's byte stream message by message: it reads
//! each request head (httparse), then skips its body by Content-Length or
//! by chunks, and notes the index of the first head whose framing is
//! ambiguous. It stops following at anything it does not understand (a
//! tunnel, a malformed head): hyper rejects malformed input itself.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// `u64::MAX`: no ambiguous request seen.
pub const NONE: u64 = u64::MAX;

#[derive(Debug)]
enum State {
    /// Collecting a request head.
    Head(Vec<u8>),
    /// Skipping this many body bytes.
    Body(u64),
    /// Collecting a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    /// Collecting trailer lines until an empty one.
    Trailers(Vec<u8>),
    /// Not following any more (a tunnel, a malformed message, a head
    /// bigger than any allowed).
    Done,
}

/// Follows requests; see the module docs.
#[derive(Debug)]
pub struct Framing {
    state: State,
    /// Heads seen so far: the index of the next one.
    heads: u64,
    max_head: usize,
    ambiguous: Arc<AtomicU64>,
}

/// What a head says of its body.
enum Body {
    None,
    Length(u64),
    Chunked,
    /// A tunnel (CONNECT, Upgrade) or an unknown framing: stop following.
    Stop,
}

fn head_body(head: &[u8]) -> Option<(Body, bool)> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let (mut lengths, mut te, mut chunked, mut upgrade) = (Vec::new(), false, false, false);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            lengths.push(
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<u64>()
                    .ok()?,
            );
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
            let last = std::str::from_utf8(h.value)
                .ok()?
                .rsplit(',')
                .next()?
                .trim()
                .to_string();
            chunked = last.eq_ignore_ascii_case("chunked");
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    let ambiguous = te && !lengths.is_empty() || lengths.windows(2).any(|w| w[0] != w[1]);
    let body = if req.method == Some("CONNECT") || upgrade {
        Body::Stop
    } else if te {
        if chunked { Body::Chunked } else { Body::Stop }
    } else {
        match lengths.first() {
            Some(0) | None => Body::None,
            Some(&n) => Body::Length(n),
        }
    };
    Some((body, ambiguous))
}

impl Framing {
    /// Notes into `ambiguous` the index (0, 1, ...) of the first request
    /// whose framing is ambiguous.
    pub fn new(max_head: usize, ambiguous: Arc<AtomicU64>) -> Self {
        Self {
            state: State::Head(Vec::new()),
            heads: 0,
            max_head,
            ambiguous,
        }
    }

    fn after_head(&mut self, head: &[u8]) -> State {
        let Some((body, ambiguous)) = head_body(head) else {
            return State::Done;
        };
        if ambiguous {
            let _ = self.ambiguous.compare_exchange(
                NONE,
                self.heads,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        self.heads += 1;
        match body {
            Body::None => State::Head(Vec::new()),
            Body::Length(n) => State::Body(n),
            Body::Chunked => State::ChunkSize(Vec::new()),
            Body::Stop => State::Done,
        }
    }

    /// Follows the bytes just read.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let state = std::mem::replace(&mut self.state, State::Done);
            self.state = match state {
                State::Done => return,
                State::Head(mut buf) => {
                    // Blank lines between requests are allowed (RFC 9112 2.2).
                    if buf.is_empty() {
                        while let Some(b'\r' | b'\n') = bytes.first() {
                            bytes = &bytes[1..];
                        }
                        if bytes.is_empty() {
                            self.state = State::Head(buf);
                            return;
                        }
                    }
                    let (_, rest, done) = take_until(bytes, &mut buf, b"\r\n\r\n");
                    bytes = rest;
                    if done {
                        self.after_head(&buf)
                    } else if buf.len() > self.max_head {
                        State::Done
                    } else {
                        State::Head(buf)
                    }
                }
                State::Body(n) => {
                    let k = (n as usize).min(bytes.len());
                    bytes = &bytes[k..];
                    match n - k as u64 {
                        0 => State::Head(Vec::new()),
                        left => State::Body(left),
                    }
                }
                State::ChunkSize(mut buf) => {
                    let (_, rest, done) = take_until(bytes, &mut buf, b"\r\n");
                    bytes = rest;
                    if !done {
                        if buf.len() > 1024 {
                            State::Done
                        } else {
                            State::ChunkSize(buf)
                        }
                    } else {
                        let line = &buf[..buf.len() - 2];
                        let size = line.split(|&b| b == b';').next().unwrap_or_default();
                        match std::str::from_utf8(size)
                            .ok()
                            .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                        {
                            Some(0) => State::Trailers(Vec::new()),
                            // The chunk, then its CRLF.
                            Some(n) => State::ChunkData(n.saturating_add(2)),
                            None => State::Done,
                        }
                    }
                }
                State::ChunkData(n) => {
                    let k = (n as usize).min(bytes.len());
                    bytes = &bytes[k..];
                    match n - k as u64 {
                        0 => State::ChunkSize(Vec::new()),
                        left => State::ChunkData(left),
                    }
                }
                State::Trailers(mut buf) => {
                    let (_, rest, done) = take_until(bytes, &mut buf, b"\r\n");
                    bytes = rest;
                    match (done, buf.len()) {
                        // The empty line: the message is over.
                        (true, 2) => State::Head(Vec::new()),
                        (true, _) => State::Trailers(Vec::new()),
                        (false, n) if n > self.max_head => State::Done,
                        (false, _) => State::Trailers(buf),
                    }
                }
            };
        }
    }
}

/// Appends to `buf` up to and including the first `end` (which may span
/// calls); returns the bytes taken, the rest, and whether `end` was found.
fn take_until<'a>(bytes: &'a [u8], buf: &mut Vec<u8>, end: &[u8]) -> (usize, &'a [u8], bool) {
    for (i, &b) in bytes.iter().enumerate() {
        buf.push(b);
        if buf.ends_with(end) {
            return (i + 1, &bytes[i + 1..], true);
        }
    }
    (bytes.len(), &[], false)
}

/// An HTTP/1 server connection's IO, its reads followed by [`Framing`].
pub type Scanned<I> = crate::io::Inspected<I, Framing>;

impl crate::io::ReadInspector for Framing {
    fn inspect(&mut self, read: &[u8]) -> io::Result<()> {
        // Never fails the read: an ambiguous request is answered 400 by
        // the service, which sees the flag.
        self.feed(read);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index of the first ambiguous request in `stream` fed in pieces
    /// of `split` bytes.
    fn first_ambiguous(stream: &[u8], split: usize) -> Option<u64> {
        let flag = Arc::new(AtomicU64::new(NONE));
        let mut f = Framing::new(64 * 1024, flag.clone());
        for piece in stream.chunks(split.max(1)) {
            f.feed(piece);
        }
        Some(flag.load(Ordering::Acquire)).filter(|&i| i != NONE)
    }

    const GOOD: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
        POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
        POST /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nTrailer: t\r\n\r\n\
        \r\nGET /z HTTP/1.1\r\nHost: a\r\n\r\n";

    #[test]
    fn well_framed_requests_pass_at_every_split() {
        for split in 1..GOOD.len() {
            assert_eq!(first_ambiguous(GOOD, split), None, "split {split}");
        }
    }

    #[test]
    fn the_ambiguous_request_is_found_by_its_index_at_every_split() {
        let mut stream = GOOD.to_vec();
        // Request 4: both framings, hiding a request in its body.
        stream.extend_from_slice(
            b"POST /s HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        for split in 1..stream.len() {
            assert_eq!(first_ambiguous(&stream, split), Some(4), "split {split}");
        }
        let two_lengths =
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
        assert_eq!(first_ambiguous(two_lengths, 7), Some(0));
        // The same length twice is one framing.
        let same = b"POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(first_ambiguous(same, 3), None);
    }

    #[test]
    fn tunnels_and_garbage_stop_the_scan_without_false_alarms() {
        let upgrade = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(first_ambiguous(upgrade, 5), None);
        let garbage = b"\x16\x03\x01 not http at all\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(first_ambiguous(garbage, 4), None);
    }
}
