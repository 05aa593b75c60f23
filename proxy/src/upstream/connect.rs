//! Connecting to upstreams: TCP with a timeout and no Nagle delay, then,
//! to a meshed endpoint, mesh TLS verifying the identity discovery said to
//! expect of it.

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
    #[error("mesh TLS with {addr} (expecting {identity}) failed: {source}")]
    Tls {
        addr: SocketAddr,
        identity: String,
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
            ConnectError::Tls { .. } => "tls_failed",
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

/// A connection to an upstream: plain TCP, or mesh TLS over it.
#[derive(Debug)]
pub enum Upstream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Upstream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Upstream::Plain(s) => s,
            Upstream::Tls(t) => t.get_ref().0,
        }
    }
}

/// Connects, with mesh TLS when `tls` gives the config and the identity to
/// expect of the endpoint.
pub async fn connect_upstream(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<(
        &std::sync::Arc<rustls::ClientConfig>,
        &weft_proto::spiffe::SpiffeId,
    )>,
) -> Result<Upstream, ConnectError> {
    let tcp = connect(addr, timeout).await?;
    let Some((config, identity)) = tls else {
        return Ok(Upstream::Plain(tcp));
    };
    let tls_err = |source: io::Error| ConnectError::Tls {
        addr,
        identity: identity.to_string(),
        source,
    };
    let name = rustls_pki_types::ServerName::try_from(weft_proto::mesh_tls::dns_name(identity))
        .map_err(|e| tls_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let handshake = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp);
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(s)) => Ok(Upstream::Tls(Box::new(s))),
        Ok(Err(e)) => Err(tls_err(e)),
        Err(_) => Err(tls_err(io::Error::new(
            io::ErrorKind::TimedOut,
            "handshake timed out",
        ))),
    }
}

impl tokio::io::AsyncRead for Upstream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Upstream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            Upstream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Upstream::Plain(s) => s.is_write_vectored(),
            Upstream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
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
