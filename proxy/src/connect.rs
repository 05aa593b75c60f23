//! Connecting to upstreams: TCP with a timeout and no Nagle delay. (Mesh
//! TLS is originated here once identities exist.)

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection to {0} refused")]
    Refused(SocketAddr),
    #[error("connecting to {0} timed out after {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("connecting to {addr} failed: {source}")]
    Other {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

impl ConnectError {
    /// A short, stable name for metric labels and error headers.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::Refused(_) => "connect_refused",
            ConnectError::Timeout(..) => "connect_timeout",
            ConnectError::Other { .. } => "connect_failed",
        }
    }
}

pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout(addr, timeout)),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(ConnectError::Refused(addr));
        }
        Ok(Err(source)) => return Err(ConnectError::Other { addr, source }),
        Ok(Ok(s)) => s,
    };
    // Proxied requests are latency-sensitive and already batched by the
    // sender; Nagle would only add delay.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_is_told_apart() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = connect(addr, Duration::from_secs(1)).await.unwrap_err();
        assert!(
            matches!(err, ConnectError::Refused(a) if a == addr),
            "{err}"
        );
        assert_eq!(err.kind(), "connect_refused");
    }
}
