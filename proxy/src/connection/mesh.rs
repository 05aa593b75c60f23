//! An inbound connection that starts with a TLS ClientHello: mesh TLS from
//! another proxy is terminated here (the client's SPIFFE ID verified, the
//! ALPN saying whether HTTP/2, HTTP/1 or opaque TCP is inside); any other
//! TLS is the application's own and passes through as opaque bytes.

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::{Conn, Counts, Peer, opaque};
use crate::detect::{COMPLETE_TIMEOUT, Protocol};
use crate::io::Counted;
use crate::metrics::{TcpConn, Tls};
use crate::tcp::{self, ClientIo};
use crate::tls::MeshTls;
use crate::tls::accept::{Accepted, Carries, accept};

/// Serves the connection; opens its TCP metrics (`tcp`) once the
/// ClientHello says whether it is mesh TLS.
pub(super) async fn serve(
    cx: Conn<'_>,
    mesh: &MeshTls,
    buffered: BytesMut,
    io: Counted<TcpStream>,
    counts: &Counts<'_>,
    tcp: &mut Option<TcpConn>,
) -> bool {
    let (client, target) = (cx.client, cx.target);
    let on_hello = |is_mesh: bool, read: usize, io: &mut Counted<TcpStream>| {
        let t = counts.open(if is_mesh { Tls::Yes } else { Tls::NoIdentity });
        io.count_into(t.bytes.clone(), read);
        *tcp = Some(t);
    };
    match accept(buffered, io, mesh, COMPLETE_TIMEOUT, on_hello).await {
        Ok(Accepted::Mesh {
            tls,
            client_id,
            carries,
        }) => {
            let peer = Peer {
                label: cx.shared.metrics.client_ids.value(&client_id.to_string()),
                id: client_id,
            };
            match carries {
                Carries::Http2 => Box::pin(cx.http(*tls, Protocol::Http2, Some(peer))).await,
                Carries::Http1 => Box::pin(cx.http(*tls, Protocol::Http1, Some(peer))).await,
                Carries::Opaque => {
                    let client = tcp::Client {
                        stream: ClientIo::Mesh(tls),
                        prefix: Default::default(),
                        counters: tcp.as_ref().map(|t| t.bytes.clone()).unwrap_or_default(),
                    };
                    Box::pin(opaque::serve(cx, client, Some(&peer.id))).await
                }
            }
        }
        Ok(Accepted::Passthrough(io)) => cx.serve(io, Protocol::Tls).await,
        Err(e) => {
            tracing::info!(%client, %target, error = %e, "inbound TLS failed");
            false
        }
    }
}
