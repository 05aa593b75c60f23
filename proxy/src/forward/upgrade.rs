//! HTTP/1 protocol switches (`Upgrade`, e.g. WebSocket) and `CONNECT`
//! tunnels: the request goes upstream on a connection of its own; if the
//! upstream agrees (101, or 2xx to CONNECT), both connections are handed
//! over from HTTP to a byte tunnel between client and upstream.

use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::forward::{HttpConn, ProxyError};
use crate::http::body::Body;
use crate::http::headers::strip_hop_by_hop;
use crate::upstream::{self, ResponseBody, Target};

pub async fn proxy(
    conn: &HttpConn,
    target: Target,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ProxyError> {
    if req.version() == Version::HTTP_2 {
        return Err(ProxyError::Unsupported("CONNECT"));
    }
    let is_connect = req.method() == Method::CONNECT;
    let client_side = hyper::upgrade::on(&mut req);
    let (parts, body) = req.into_parts();
    let mut req = Request::from_parts(parts, Body::Incoming(body));
    strip_hop_by_hop(req.headers_mut(), true);

    let pool = conn.shared.pool(conn.direction);
    let mut send = pool.connect_h1(&target, true).await?;
    let mut rsp = send
        .send_request(req)
        .await
        .map_err(upstream::Error::from_hyper)?;

    let switched = rsp.status() == StatusCode::SWITCHING_PROTOCOLS
        || (is_connect && rsp.status().is_success());
    if switched {
        let upstream_side = hyper::upgrade::on(&mut rsp);
        conn.shared.drain.spawn(async move {
            match tokio::try_join!(client_side, upstream_side) {
                Ok((client, upstream)) => {
                    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                    {
                        tracing::debug!(error = %e, "upgraded connection ended with an error");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "protocol upgrade failed"),
            }
        });
    }
    Ok(rsp.map(|b| ResponseBody::new(Body::Incoming(b))))
}
