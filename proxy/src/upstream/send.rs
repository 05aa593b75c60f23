//! One request to one endpoint: the HTTP version it needs (HTTP/2 to
//! another proxy over mesh TLS, what the inbound application speaks, or
//! what the client spoke), hop-by-hop headers removed, sent on a pooled
//! connection.

use std::net::SocketAddr;

use http::{Request, Response, Version};

use crate::http::body::Body;
use crate::http::headers::{convert_request, strip_hop_by_hop};
use crate::metrics::Direction;
use crate::tls::ORIG_PROTO_HEADER;
use crate::upstream::Error;
use crate::upstream::app_protocol::AppProtocols;
use crate::upstream::pool::{Pool, Target};
use crate::upstream::response::ResponseBody;

/// What sending needs of the connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct Hop<'a> {
    pub direction: Direction,
    pub pool: &'a std::sync::Arc<Pool>,
    /// Inbound only: how to learn the application's HTTP version.
    pub app_protocols: Option<&'a AppProtocols>,
    /// Where the client's connection was going (its original destination).
    pub orig_dst: SocketAddr,
    /// The client is another proxy, authenticated by mesh TLS: only then
    /// is its `weft-orig-proto` header believed.
    pub from_mesh_peer: bool,
    /// Outbound with a mesh identity: meshed endpoints are reached over
    /// mesh TLS.
    pub mesh: bool,
}

impl Hop<'_> {
    /// Where an endpoint is reached: over mesh TLS, expecting `identity`,
    /// when it is meshed and this proxy has an identity.
    pub fn target(
        &self,
        addr: SocketAddr,
        identity: Option<&std::sync::Arc<weft_proto::spiffe::SpiffeId>>,
    ) -> Target {
        Target {
            addr,
            identity: if self.mesh { identity.cloned() } else { None },
        }
    }

    /// The HTTP version to speak upstream. HTTP/1 stays HTTP/1. HTTP/2 stays
    /// HTTP/2 outbound (the client chose it for that server); inbound, the
    /// application decides.
    async fn version<B>(&self, req: &Request<B>) -> Result<Version, Error> {
        if req.version() != Version::HTTP_2 {
            return Ok(Version::HTTP_11);
        }
        match self.app_protocols {
            // Boxed: probing the app is rare (its answer is cached) and its
            // future large (see pool.rs send_h1).
            Some(app) => Box::pin(app.version(self.orig_dst)).await,
            None => Ok(Version::HTTP_2),
        }
    }
}

/// Sends a request to one upstream address, once.
pub async fn send(
    hop: &Hop<'_>,
    upstream: Target,
    mut req: Request<Body>,
) -> Result<Response<ResponseBody>, Error> {
    // Only a proxy sets this header, and only on the mesh hop: believed
    // from an authenticated peer only.
    let was_http1 = req.headers_mut().remove(ORIG_PROTO_HEADER).is_some() && hop.from_mesh_peer;
    let mesh = upstream.identity.is_some();
    let version = if mesh {
        Version::HTTP_2
    } else if was_http1 {
        Version::HTTP_11
    } else {
        hop.version(&req).await?
    };
    strip_hop_by_hop(req.headers_mut(), false);
    if mesh && req.version() != Version::HTTP_2 {
        req.headers_mut().insert(
            ORIG_PROTO_HEADER,
            http::HeaderValue::from_static("HTTP/1.1"),
        );
    }
    convert_request(&mut req, version, hop.orig_dst);
    let (mut rsp, pooled) = hop.pool.send(&upstream, version, req).await?;
    if hop.direction == Direction::Inbound {
        // Only a proxy says it answered for the upstream: the application
        // behind this one cannot make its answer look like the proxy's.
        rsp.headers_mut().remove(crate::http::PROXY_ERROR_HEADER);
    }
    Ok(rsp.map(|b| ResponseBody::new(Body::Incoming(b)).with_pooled(pooled)))
}
