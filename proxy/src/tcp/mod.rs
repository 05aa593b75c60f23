//! Opaque TCP: bytes copied both ways until both sides are done. A side's
//! EOF is passed on as a half-close (shutdown of the other side's write),
//! so request/response protocols that close their sending side still get
//! their answer. By default the bytes move with splice(2), never entering
//! user space ([`splice`]); a reset by either side is passed on to the
//! other as a reset, and a connection idle (no bytes either way) longer
//! than the idle timeout is closed. When either side is mesh TLS the bytes
//! are copied through user space, where they are encrypted or decrypted.

pub mod splice;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::io::{ByteCounters, Counted};
use crate::metrics::{Classification, Direction, Metrics, Peer, TcpLabels, Tls};
use crate::tls::ServerTls;
use crate::upstream::connect::Upstream;

/// Copy buffer per direction when not splicing: larger than tokio's 8 KiB
/// default, which halves the syscalls for bulk transfers.
const BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("copying between client and {target} failed: {source}")]
    Copy {
        target: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("idle for {0:?}: closed")]
    Idle(Duration),
}

/// An accepted client connection handed to opaque forwarding.
#[derive(Debug)]
pub struct Client {
    pub stream: ClientIo,
    /// Bytes read during detection, to be sent upstream first.
    pub prefix: BytesMut,
    /// The client side's byte counters.
    pub counters: ByteCounters,
}

/// The client side: the accepted socket, or mesh TLS terminated over it
/// (which counts its own wire bytes).
#[derive(Debug)]
pub enum ClientIo {
    Plain(TcpStream),
    Mesh(Box<ServerTls>),
}

impl ClientIo {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ClientIo::Plain(s) => s,
            ClientIo::Mesh(t) => t.get_ref().0.get_ref().get_ref(),
        }
    }
}

/// How to forward.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub splice: bool,
    /// Zero: never.
    pub idle_timeout: Duration,
}

/// Copies bytes between the client and a connected upstream until both are
/// done. On an error both sides are reset.
pub async fn forward(
    mut client: Client,
    mut upstream: Upstream,
    target: SocketAddr,
    direction: Direction,
    settings: Settings,
    metrics: &Metrics,
) -> Result<(), TcpError> {
    let conn = metrics.tcp_opened(TcpLabels {
        direction,
        peer: Peer::Dst,
        tls: match upstream {
            Upstream::Tls(_) => Tls::Yes,
            Upstream::Plain(_) => Tls::NoIdentity,
        },
        target_addr: metrics.targets.value(&target.to_string()),
    });
    let counters = [client.counters.read.clone(), client.counters.write.clone()];
    let copy = copy(&mut client, &mut upstream, &conn.bytes, settings.splice);
    let res = tokio::select! {
        res = copy => res.map_err(|source| TcpError::Copy { target, source }),
        idle = idle(counters, settings.idle_timeout) => Err(idle),
    };
    if res.is_err() {
        // A reset on one side is passed on as a reset to the other.
        let _ = upstream.tcp().set_zero_linger();
        let _ = client.stream.tcp().set_zero_linger();
    }
    let class = if res.is_ok() {
        Classification::Success
    } else {
        Classification::Failure
    };
    metrics.tcp_closed(conn, class);
    res
}

/// Resolves once no byte has moved either way for `timeout` (never, for zero).
async fn idle(
    counters: [prometheus_client::metrics::counter::Counter; 2],
    timeout: Duration,
) -> TcpError {
    if timeout.is_zero() {
        return std::future::pending().await;
    }
    let moved = || counters.iter().map(|c| c.get()).sum::<u64>();
    let check = (timeout / 4).max(Duration::from_millis(10));
    let (mut last, mut since) = (moved(), tokio::time::Instant::now());
    loop {
        tokio::time::sleep(check).await;
        let now = moved();
        if now != last {
            (last, since) = (now, tokio::time::Instant::now());
        } else if since.elapsed() >= timeout {
            return TcpError::Idle(timeout);
        }
    }
}

async fn copy(
    client: &mut Client,
    upstream: &mut Upstream,
    up: &ByteCounters,
    splice: bool,
) -> std::io::Result<()> {
    if !client.prefix.is_empty() {
        upstream.write_all(&client.prefix).await?;
        up.write.inc_by(client.prefix.len() as u64);
    }
    let down = &client.counters;
    match (&mut client.stream, upstream) {
        (ClientIo::Plain(c), Upstream::Plain(u)) if splice => {
            splice::copy_bidirectional(c, u, [&down.read, &up.write], [&up.read, &down.write])
                .await
                .map(drop)
        }
        (ClientIo::Plain(c), u) => {
            let mut c = Counted::new(c, down.clone());
            let mut u = Counted::new(u, up.clone());
            tokio::io::copy_bidirectional_with_sizes(&mut c, &mut u, BUFFER, BUFFER)
                .await
                .map(drop)
        }
        (ClientIo::Mesh(c), u) => {
            let mut u = Counted::new(u, up.clone());
            tokio::io::copy_bidirectional_with_sizes(c.as_mut(), &mut u, BUFFER, BUFFER)
                .await
                .map(drop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[tokio::test(start_paused = true)]
    async fn idle_fires_only_without_traffic() {
        let c = [Counter::default(), Counter::default()];
        let (a, b) = (c[0].clone(), c[1].clone());
        let watcher = tokio::spawn(idle([a, b], Duration::from_secs(4)));
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            c[0].inc();
        }
        assert!(
            !watcher.is_finished(),
            "traffic every 2 s keeps a 4 s idle timeout away"
        );
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(watcher.is_finished());
    }
}
