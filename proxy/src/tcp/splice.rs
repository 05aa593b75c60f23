//! Zero-copy forwarding between two TCP sockets with splice(2): bytes move
//! socket -> pipe -> socket inside the kernel, never through user space.
//! Each direction has its own pipe; an EOF is passed on as a shutdown of
//! the other socket's write side (half-close).

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use prometheus_client::metrics::counter::Counter;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The most moved per splice call: the default pipe capacity.
const CHUNK: usize = 64 * 1024;

fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
}

/// Copies both ways until both directions have ended; returns the bytes
/// moved (a to b, b to a). Each direction's bytes are also added to its
/// counters (typically: read from one side, written to the other) as they
/// move.
pub async fn copy_bidirectional(
    a: &TcpStream,
    b: &TcpStream,
    a_to_b: [&Counter; 2],
    b_to_a: [&Counter; 2],
) -> io::Result<(u64, u64)> {
    tokio::try_join!(one_way(a, b, a_to_b), one_way(b, a, b_to_a))
}

async fn one_way(from: &TcpStream, to: &TcpStream, moved: [&Counter; 2]) -> io::Result<u64> {
    let (pipe_out, pipe_in): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let mut total = 0u64;
    loop {
        let n = from
            .async_io(Interest::READABLE, || {
                splice(from.as_fd(), None, pipe_in.as_fd(), None, CHUNK, flags())
                    .map_err(io::Error::from)
            })
            .await?;
        if n == 0 {
            socket2::SockRef::from(to)
                .shutdown(std::net::Shutdown::Write)
                .or_else(ignore_not_connected)?;
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            let m = to
                .async_io(Interest::WRITABLE, || {
                    splice(pipe_out.as_fd(), None, to.as_fd(), None, left, flags())
                        .map_err(io::Error::from)
                })
                .await?;
            left -= m;
        }
        total += n as u64;
        for c in moved {
            c.inc_by(n as u64);
        }
    }
}

/// The peer may already be gone when we pass on an EOF.
fn ignore_not_connected(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotConnected {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn moves_bytes_both_ways_with_half_close() {
        let (mut client, proxy_client_side) = pair().await;
        let (proxy_upstream_side, mut upstream) = pair().await;
        let (up, down) = (Counter::default(), Counter::default());
        let (up2, down2) = (up.clone(), down.clone());
        let proxy = tokio::spawn(async move {
            copy_bidirectional(
                &proxy_client_side,
                &proxy_upstream_side,
                [&up2, &up2],
                [&down2, &down2],
            )
            .await
        });

        let request = vec![7u8; 1_000_000];
        client.write_all(&request).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, request);
        // The client half-closed; the upstream can still answer.
        upstream.write_all(b"answer").await.unwrap();
        upstream.shutdown().await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "answer");

        assert_eq!(proxy.await.unwrap().unwrap(), (1_000_000, 6));
        // Each direction's two counters are the same one here: counted twice.
        assert_eq!((up.get(), down.get()), (2_000_000, 12));
    }
}
