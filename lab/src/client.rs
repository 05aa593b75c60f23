//! Plain HTTP clients for tests: one connection, HTTP/1.1 or HTTP/2 with
//! prior knowledge, opened from whatever namespace the calling task is in.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
pub type Error = Box<dyn std::error::Error + Send + Sync>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An open client connection.
pub enum Conn {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

impl Conn {
    pub async fn http1(addr: SocketAddr) -> Result<Self, Error> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (send, conn) = http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn.with_upgrades());
        Ok(Conn::Http1(send))
    }

    pub async fn http2(addr: SocketAddr) -> Result<Self, Error> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok(Conn::Http2(send))
    }

    /// Whether the server closed the connection.
    pub fn is_closed(&self) -> bool {
        match self {
            Conn::Http1(s) => s.is_closed(),
            Conn::Http2(s) => s.is_closed(),
        }
    }

    /// Sends a request and returns the response with its body unread.
    pub async fn send(
        &mut self,
        req: Request<Body>,
    ) -> Result<Response<hyper::body::Incoming>, Error> {
        Ok(match self {
            Conn::Http1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Conn::Http2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        })
    }

    /// Sends a request and reads the whole response.
    pub async fn fetch(&mut self, req: Request<Body>) -> Result<Response<Bytes>, Error> {
        let rsp = self.send(req).await?;
        let (parts, body) = rsp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Response::from_parts(parts, body))
    }
}

/// One HTTP/1.1 GET on a new connection.
/// The text of an admin server's `/metrics` (panics when it cannot be read).
pub async fn metrics(addr: impl std::fmt::Display) -> String {
    let addr: SocketAddr = addr.to_string().parse().expect("an admin address");
    let rsp = get(addr, "/metrics").await.expect("GET /metrics");
    String::from_utf8_lossy(rsp.body()).into_owned()
}

pub async fn get(addr: SocketAddr, path: &str) -> Result<Response<Bytes>, Error> {
    let req = Request::get(path)
        .header("host", addr.to_string())
        .body(empty())?;
    Conn::http1(addr).await?.fetch(req).await
}
