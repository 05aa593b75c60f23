//! Opaque TCP: bytes copied both ways until both sides are done. A side's
//! EOF is passed on as a half-close (shutdown of the other side's write),
//! so request/response protocols that close their sending side still get
//! their answer.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::connect::{ConnectError, connect};
use crate::io::Counted;
use crate::metrics::{Classification, Direction, Metrics, Peer, TcpLabels, Tls};

/// Copy buffer per direction: larger than tokio's 8 KiB default, which
/// halves the syscalls for bulk transfers.
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

/// Connects to `target` and copies bytes between it and `client`. On an
/// error the caller should reset the client (the upstream refused or reset).
pub async fn forward<I>(
    client: &mut I,
    target: SocketAddr,
    direction: Direction,
    connect_timeout: Duration,
    metrics: &Metrics,
) -> Result<(), TcpError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let upstream = connect(target, connect_timeout).await?;
    let conn = metrics.tcp_opened(TcpLabels {
        direction,
        peer: Peer::Dst,
        tls: Tls::NoIdentity,
        target_addr: metrics.targets.value(&target.to_string()),
    });
    let mut upstream = Counted::new(upstream, conn.bytes.clone());
    let res = tokio::io::copy_bidirectional_with_sizes(client, &mut upstream, BUFFER, BUFFER).await;
    if res.is_err() {
        // A reset on one side is passed on as a reset to the other.
        let _ = upstream.get_ref().set_zero_linger();
    }
    let class = if res.is_ok() {
        Classification::Success
    } else {
        Classification::Failure
    };
    metrics.tcp_closed(conn, class);
    res.map(drop)
        .map_err(|source| TcpError::Copy { target, source })
}
