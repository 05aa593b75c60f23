//! Protocol detection: what the client speaks, from its first bytes.
//!
//! The proxy reads (not peeks) the first bytes into a buffer, classifies
//! them, and hands the buffer on so it is replayed to whatever serves the
//! connection. Clients that say nothing within the detection window are
//! taken to be waiting for a server greeting (SMTP, MySQL, ...): the
//! connection becomes opaque TCP at once so the greeting can flow.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// What a connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    Http2,
    /// TLS that the application originated: passed through untouched.
    Tls,
    Opaque,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Tls => "tls",
            Protocol::Opaque => "opaque",
        }
    }
}

/// Why detection ended where it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The bytes said so.
    Detected,
    /// The client sent nothing in the window: server-speaks-first fallback.
    FirstByteTimeout,
    /// Bytes came, but not enough to decide before the deadline.
    IncompleteTimeout,
    /// The client closed (or half-closed) before deciding.
    Eof,
    /// The port is configured opaque; nothing was read.
    ConfiguredOpaque,
    /// The buffer filled without a decision.
    BufferFull,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Detected => "detected",
            Reason::FirstByteTimeout => "first_byte_timeout",
            Reason::IncompleteTimeout => "incomplete_timeout",
            Reason::Eof => "eof",
            Reason::ConfiguredOpaque => "opaque_port",
            Reason::BufferFull => "buffer_full",
        }
    }
}

/// The outcome of detection: the protocol, why, and the bytes read so far
/// (to be replayed).
#[derive(Debug)]
pub struct Detection {
    pub protocol: Protocol,
    pub reason: Reason,
    pub buffered: BytesMut,
}

/// The verdict on a prefix of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Is(Protocol),
    NeedMore,
}

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Enough for any request line a server would accept without a 414.
pub const MAX_DETECT_BYTES: usize = 16 * 1024;
/// After the first bytes, how long the rest of a request line may take.
pub const COMPLETE_TIMEOUT: Duration = Duration::from_secs(5);

/// Classifies the bytes a client has sent so far.
pub fn classify(buf: &[u8]) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    // HTTP/2 with prior knowledge: the fixed connection preface.
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Verdict::Is(Protocol::Http2)
        } else {
            Verdict::NeedMore
        };
    }
    if buf[0] == 0x16 {
        return classify_tls(buf);
    }
    classify_http1(buf)
}

/// A TLS record header (type 22 = handshake, version 3.x) whose handshake
/// message is a ClientHello (type 1).
fn classify_tls(buf: &[u8]) -> Verdict {
    let bad_version =
        buf.get(1).is_some_and(|&b| b != 0x03) || buf.get(2).is_some_and(|&b| b > 0x04);
    let not_hello = buf.get(5).is_some_and(|&b| b != 0x01);
    if bad_version || not_hello {
        Verdict::Is(Protocol::Opaque)
    } else if buf.len() >= 6 {
        Verdict::Is(Protocol::Tls)
    } else {
        Verdict::NeedMore
    }
}

/// An HTTP/1.x request line: `TOKEN SP TARGET SP HTTP/1.d CRLF`.
fn classify_http1(buf: &[u8]) -> Verdict {
    let opaque = Verdict::Is(Protocol::Opaque);
    // Method: 1..=32 token characters, then a space.
    let method_len = buf.iter().take_while(|&&b| is_tchar(b)).count();
    if method_len == buf.len() {
        return if method_len <= 32 {
            Verdict::NeedMore
        } else {
            opaque
        };
    }
    if method_len == 0 || method_len > 32 || buf[method_len] != b' ' {
        return opaque;
    }
    let rest = &buf[method_len + 1..];
    let Some(line_end) = rest.iter().position(|&b| b == b'\n') else {
        // No line end yet. Control characters cannot be in a request target.
        return if rest.iter().any(|&b| b.is_ascii_control() && b != b'\r') {
            opaque
        } else {
            Verdict::NeedMore
        };
    };
    let line = rest[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&rest[..line_end]);
    match line.iter().rposition(|&b| b == b' ') {
        Some(sp) if sp > 0 => {
            let version = &line[sp + 1..];
            let target = &line[..sp];
            let is_http1 = version.len() == 8
                && version.starts_with(b"HTTP/1.")
                && version[7].is_ascii_digit()
                && !target.iter().any(|b| b.is_ascii_control());
            if is_http1 {
                Verdict::Is(Protocol::Http1)
            } else {
                opaque
            }
        }
        _ => opaque,
    }
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads from `io` until the protocol is known, the client has said nothing
/// for `first_byte_timeout` (server-speaks-first), or `COMPLETE_TIMEOUT`
/// passed since the first bytes.
pub async fn detect<I>(io: &mut I, first_byte_timeout: Duration) -> io::Result<Detection>
where
    I: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let mut deadline = Instant::now() + first_byte_timeout;
    loop {
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        let done = |protocol, reason, buffered| {
            Ok(Detection {
                protocol,
                reason,
                buffered,
            })
        };
        match read {
            Err(_elapsed) => {
                let reason = if buf.is_empty() {
                    Reason::FirstByteTimeout
                } else {
                    Reason::IncompleteTimeout
                };
                return done(Protocol::Opaque, reason, buf);
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => return done(Protocol::Opaque, Reason::Eof, buf),
            Ok(Ok(n)) => {
                if buf.len() == n {
                    deadline = Instant::now() + COMPLETE_TIMEOUT;
                }
                match classify(&buf) {
                    Verdict::Is(p) => return done(p, Reason::Detected, buf),
                    Verdict::NeedMore if buf.len() >= MAX_DETECT_BYTES => {
                        return done(Protocol::Opaque, Reason::BufferFull, buf);
                    }
                    Verdict::NeedMore => buf.reserve(4096),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn is(p: Protocol) -> Verdict {
        Verdict::Is(p)
    }

    #[test]
    fn http1_request_lines() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), is(Protocol::Http1));
        assert_eq!(
            classify(b"POST /a?b=c HTTP/1.0\r\nHost: x\r\n"),
            is(Protocol::Http1)
        );
        assert_eq!(
            classify(b"CONNECT db:5432 HTTP/1.1\r\n"),
            is(Protocol::Http1)
        );
        assert_eq!(classify(b"GET http://x/y HTTP/1.1\n"), is(Protocol::Http1));
        assert_eq!(classify(b"PROPFIND /dav HTTP/1.1\r\n"), is(Protocol::Http1));
    }

    #[test]
    fn partial_http1_needs_more_at_every_split() {
        let line = b"GET /some/path HTTP/1.1\r\n";
        for cut in 1..line.len() - 1 {
            assert_eq!(classify(&line[..cut]), Verdict::NeedMore, "{cut}");
        }
    }

    #[test]
    fn h2_preface_at_every_split() {
        for cut in 1..H2_PREFACE.len() {
            assert_eq!(classify(&H2_PREFACE[..cut]), Verdict::NeedMore, "{cut}");
        }
        assert_eq!(classify(H2_PREFACE), is(Protocol::Http2));
        let mut with_settings = H2_PREFACE.to_vec();
        with_settings.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(classify(&with_settings), is(Protocol::Http2));
    }

    #[test]
    fn tls_client_hello() {
        let hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
        for cut in 1..6 {
            assert_eq!(classify(&hello[..cut]), Verdict::NeedMore, "{cut}");
        }
        assert_eq!(classify(&hello), is(Protocol::Tls));
        // A handshake record that is not a ClientHello, or a bad version.
        assert_eq!(
            classify(&[0x16, 0x03, 0x03, 0, 5, 0x02]),
            is(Protocol::Opaque)
        );
        assert_eq!(classify(&[0x16, 0x02]), is(Protocol::Opaque));
    }

    #[test]
    fn everything_else_is_opaque() {
        for bytes in [
            &b"\x00\x01binary"[..],
            b"get me something\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET / FTP/1.1\r\n",
            b"GET\t/ HTTP/1.1\r\n",
            b" GET / HTTP/1.1\r\n",
            b"GET /\x01 HTTP/1.1\r\n",
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"*3\r\n$3\r\nSET\r\n",
            b"PRI * HTTP/2.1\r\n",
        ] {
            assert_eq!(
                classify(bytes),
                is(Protocol::Opaque),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert_eq!(classify(&[b'A'; 40]), is(Protocol::Opaque));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_falls_back_after_the_window() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let started = Instant::now();
        let d = detect(&mut server, Duration::from_millis(250))
            .await
            .unwrap();
        assert_eq!(
            (d.protocol, d.reason),
            (Protocol::Opaque, Reason::FirstByteTimeout)
        );
        assert_eq!(started.elapsed(), Duration::from_millis(250));
        assert!(d.buffered.is_empty());
        client.write_all(b"x").await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn split_reads_are_joined() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            for part in [&b"GE"[..], b"T /x HT", b"TP/1.1\r", b"\nHost: a\r\n\r\n"] {
                tokio::time::sleep(Duration::from_millis(100)).await;
                client.write_all(part).await.unwrap();
            }
            client
        });
        let d = detect(&mut server, Duration::from_millis(250))
            .await
            .unwrap();
        assert_eq!((d.protocol, d.reason), (Protocol::Http1, Reason::Detected));
        assert!(d.buffered.starts_with(b"GET /x HTTP/1.1\r\n"));
        drop(writer.await);
    }

    #[tokio::test(start_paused = true)]
    async fn incomplete_line_times_out_to_opaque_with_bytes_kept() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET /slow").await.unwrap();
        let d = detect(&mut server, Duration::from_millis(250))
            .await
            .unwrap();
        assert_eq!(
            (d.protocol, d.reason),
            (Protocol::Opaque, Reason::IncompleteTimeout)
        );
        assert_eq!(&d.buffered[..], b"GET /slow");
    }

    #[tokio::test]
    async fn eof_before_any_byte_is_opaque() {
        let (client, mut server) = tokio::io::duplex(1024);
        drop(client);
        let d = detect(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!((d.protocol, d.reason), (Protocol::Opaque, Reason::Eof));
    }

    #[tokio::test]
    async fn endless_request_line_stops_at_the_buffer_cap() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let mut line = b"GET /".to_vec();
        line.resize(MAX_DETECT_BYTES + 100, b'a');
        client.write_all(&line).await.unwrap();
        let d = detect(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            (d.protocol, d.reason),
            (Protocol::Opaque, Reason::BufferFull)
        );
    }
}
