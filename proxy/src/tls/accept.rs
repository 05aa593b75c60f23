//! The inbound side of mesh TLS: read the whole ClientHello, and when it
//! asks for a mesh ALPN terminate TLS here, learning the client's verified
//! identity; any other TLS is the application's own and passes through.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use weft_proto::spiffe::SpiffeId;

use super::client_hello::{self, record_len};
use super::{ALPN_H2, ALPN_HTTP1, ALPN_TCP, MeshTls, ServerTls};
use crate::io::{Counted, PrefixedIo};
use weft_proto::mesh_tls::spiffe_id_of;

/// The largest ClientHello record accepted (a TLS record's maximum).
const MAX_RECORD: usize = 5 + 16 * 1024;

/// What a mesh connection carries, from its negotiated ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carries {
    Http2,
    Http1,
    Opaque,
}

/// An accepted TLS connection.
#[derive(Debug)]
pub enum Accepted {
    /// Mesh TLS, terminated.
    Mesh {
        tls: Box<ServerTls>,
        client_id: Arc<SpiffeId>,
        carries: Carries,
    },
    /// The application's own TLS, untouched (the ClientHello is replayed).
    Passthrough(PrefixedIo<Counted<TcpStream>>),
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("reading the ClientHello failed: {0}")]
    Read(#[source] io::Error),
    #[error("the ClientHello did not arrive within {0:?}")]
    Timeout(Duration),
    #[error("mesh TLS handshake failed: {0}")]
    Handshake(#[source] io::Error),
    #[error("the mesh client's certificate carries no SPIFFE ID")]
    NoIdentity,
}

/// Reads the rest of the first TLS record (detection read only its start),
/// then either terminates mesh TLS or hands the bytes back for pass-through.
/// `on_hello` learns, before the handshake, whether this is mesh TLS and how
/// many bytes the ClientHello took (the connection's metrics are labelled
/// by it).
pub async fn accept(
    mut prefix: BytesMut,
    mut io: Counted<TcpStream>,
    mesh: &MeshTls,
    timeout: Duration,
    on_hello: impl FnOnce(bool, usize, &mut Counted<TcpStream>),
) -> Result<Accepted, AcceptError> {
    let read_hello = async {
        while record_len(&prefix).is_none_or(|n| prefix.len() < n.min(MAX_RECORD)) {
            if io.read_buf(&mut prefix).await.map_err(AcceptError::Read)? == 0 {
                break; // EOF: whatever came is all there is
            }
        }
        Ok(())
    };
    tokio::time::timeout(timeout, read_hello)
        .await
        .map_err(|_| AcceptError::Timeout(timeout))??;
    let is_mesh = client_hello::parse(&prefix).is_some_and(|h| super::is_mesh(&h));
    on_hello(is_mesh, prefix.len(), &mut io);
    let io = PrefixedIo::new(prefix, io);
    if !is_mesh {
        return Ok(Accepted::Passthrough(io));
    }
    let handshake = tokio_rustls::TlsAcceptor::from(mesh.server.clone()).accept(io);
    let tls = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| AcceptError::Timeout(timeout))?
        .map_err(AcceptError::Handshake)?;
    let session = tls.get_ref().1;
    let client_id = session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(spiffe_id_of)
        .ok_or(AcceptError::NoIdentity)?;
    let carries = match session.alpn_protocol() {
        Some(ALPN_H2) => Carries::Http2,
        Some(ALPN_HTTP1) => Carries::Http1,
        Some(ALPN_TCP) | Some(_) | None => Carries::Opaque,
    };
    Ok(Accepted::Mesh {
        tls: Box::new(tls),
        client_id: Arc::new(client_id),
        carries,
    })
}
