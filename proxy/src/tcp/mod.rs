//! Opaque TCP: bytes copied both ways until both sides are done. A side's
//! EOF is passed on as a half-close (shutdown of the other side's write),
//! so request/response protocols that close their sending side still get
//! their answer. By default the bytes move with splice(2), never entering
//! user space ([`splice`]); a reset or refusal by the upstream is passed on
//! to the client as a reset.

pub mod splice;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::connect::{ConnectError, connect};
use crate::io::{ByteCounters, Counted};
use crate::metrics::{Classification, Direction, Metrics, Peer, TcpLabels, Tls};

/// Copy buffer per direction when not splicing: larger than tokio's 8 KiB
/// default, which halves the syscalls for bulk transfers.
const BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("copying between client and {target} failed: {source}")]
    Copy {
        target: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// An accepted client connection handed to opaque forwarding.
#[derive(Debug)]
pub struct Client {
    pub stream: TcpStream,
    /// Bytes read during detection, to be sent upstream first.
    pub prefix: BytesMut,
    /// The client side's byte counters.
    pub counters: ByteCounters,
}

/// How to forward.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub connect_timeout: Duration,
    pub splice: bool,
}

/// Connects to `target` and copies bytes between it and the client. On an
/// error, the client is reset (as the upstream refused or reset us).
pub async fn forward(
    mut client: Client,
    target: SocketAddr,
    direction: Direction,
    settings: Settings,
    metrics: &Metrics,
) -> Result<(), TcpError> {
    let mut upstream = match connect(target, settings.connect_timeout).await {
        Ok(u) => u,
        Err(e) => {
            let _ = client.stream.set_zero_linger();
            return Err(e.into());
        }
    };
    let conn = metrics.tcp_opened(TcpLabels {
        direction,
        peer: Peer::Dst,
        tls: Tls::NoIdentity,
        target_addr: metrics.targets.value(&target.to_string()),
    });
    let res = copy(&mut client, &mut upstream, &conn.bytes, settings.splice).await;
    if res.is_err() {
        // A reset on one side is passed on as a reset to the other.
        let _ = upstream.set_zero_linger();
        let _ = client.stream.set_zero_linger();
    }
    let class = if res.is_ok() {
        Classification::Success
    } else {
        Classification::Failure
    };
    metrics.tcp_closed(conn, class);
    res.map_err(|source| TcpError::Copy { target, source })
}

async fn copy(
    client: &mut Client,
    upstream: &mut TcpStream,
    up: &ByteCounters,
    splice: bool,
) -> std::io::Result<()> {
    if !client.prefix.is_empty() {
        upstream.write_all(&client.prefix).await?;
        up.write.inc_by(client.prefix.len() as u64);
    }
    let down = &client.counters;
    if splice {
        splice::copy_bidirectional(
            &client.stream,
            upstream,
            [&down.read, &up.write],
            [&up.read, &down.write],
        )
        .await
        .map(drop)
    } else {
        let mut c = Counted::new(&mut client.stream, down.clone());
        let mut u = Counted::new(upstream, up.clone());
        tokio::io::copy_bidirectional_with_sizes(&mut c, &mut u, BUFFER, BUFFER)
            .await
            .map(drop)
    }
}
