//! Applications the tests put behind the proxies. Each binds a real socket
//! and runs until its task is dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::echo;

type AppBody = BoxBody<Bytes, hyper::Error>;

fn full(data: impl Into<Bytes>) -> AppBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Which HTTP versions an HTTP app accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersions {
    /// HTTP/1.1 only: an HTTP/2 preface is an error, as with most apps.
    Http1Only,
    /// HTTP/1.1 and HTTP/2 with prior knowledge.
    Both,
}

/// FNV-1a, to check large bodies arrived intact without keeping them.
pub fn fnv1a(hash: u64, data: &[u8]) -> u64 {
    data.iter()
        .fold(hash, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}
pub const FNV_OFFSET: u64 = 0xcbf29ce484222325;

/// The byte pattern `/bytes` returns and the tests send: byte i is i % 251.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Serves the test HTTP app on `addr`:
///
/// - every response has `x-app-name`, `x-app-version` (the HTTP version the
///   app saw), `x-app-host` (the authority it saw), `x-app-path` (the path
///   and query it saw) and, as `x-app-saw-x-test-...`, every `x-test-...`
///   request header it got;
/// - `GET /hello` -> `hello from NAME`;
/// - `POST /echo` -> the request body, streamed back;
/// - `POST /count` -> `LEN HASH` of the request body;
/// - `GET /bytes?n=N` -> N bytes of [`pattern`];
/// - `GET /slow?ms=N` -> waits N ms, then `slow done`;
/// - `GET /status/N` -> status N;
/// - `GET /forge` -> 200 with a forged `weft-proxy-error` header;
/// - `GET /ws` -> a WebSocket echoing every message.
///
/// Every answer names the app (`x-app-name`), the HTTP version it saw
/// (`x-app-version`), the `x-weft-client-id` it got
/// (`x-app-saw-client-id`), and any trace context headers it got
/// (`x-app-saw-traceparent`, ...).
pub async fn http_app(
    addr: SocketAddr,
    name: &'static str,
    versions: HttpVersions,
) -> std::io::Result<SocketAddr> {
    http_app_with(addr, name, versions, Behaviour::default()).await
}

/// How an app's `/hello` misbehaves, for traffic-management tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct Behaviour {
    /// Waits this long before answering.
    pub delay: Duration,
    /// Answers 503 to this share of requests (at random).
    pub fail_ratio: f64,
}

/// [`http_app`] whose `/hello` (and `/echo`) follow `behaviour`.
pub async fn http_app_with(
    addr: SocketAddr,
    name: &'static str,
    versions: HttpVersions,
    behaviour: Behaviour,
) -> std::io::Result<SocketAddr> {
    serve_tcp(addr, move |stream| async move {
        let svc = service_fn(move |req: Request<Incoming>| async move {
            let path = req.uri().path();
            if path == "/hello" || path == "/echo" {
                if !behaviour.delay.is_zero() {
                    tokio::time::sleep(behaviour.delay).await;
                }
                if behaviour.fail_ratio > 0.0 && fastrand::f64() < behaviour.fail_ratio {
                    let mut rsp = status(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("{name} failed on purpose"),
                    );
                    rsp.headers_mut()
                        .insert("x-app-name", name.parse().unwrap());
                    return Ok::<_, Infallible>(rsp);
                }
            }
            Ok::<_, Infallible>(handle(name, req).await)
        });
        let io = TokioIo::new(stream);
        let _ = match versions {
            HttpVersions::Http1Only => hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .with_upgrades()
                .await
                .map_err(|e| e.to_string()),
            HttpVersions::Both => {
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(io, svc)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
    })
    .await
}

async fn handle(name: &'static str, mut req: Request<Incoming>) -> Response<AppBody> {
    let version = format!("{:?}", req.version());
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(String::from)
        })
        .unwrap_or_default();
    // What the inbound proxy said about the client, shown back to the test.
    let client_id = req.headers().get("x-weft-client-id").cloned();
    // The trace context the app received, shown back as x-app-saw-<header>.
    let trace_headers: Vec<(http::HeaderName, http::HeaderValue)> = TRACE_HEADERS
        .iter()
        .filter_map(|h| {
            let v = req.headers().get(*h)?.clone();
            Some((format!("x-app-saw-{h}").parse().ok()?, v))
        })
        .collect();
    // Headers a test set on the way (x-test-...), shown back likewise.
    let test_headers: Vec<(http::HeaderName, http::HeaderValue)> = req
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-test-"))
        .filter_map(|(k, v)| Some((format!("x-app-saw-{k}").parse().ok()?, v.clone())))
        .collect();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let query = req.uri().query().unwrap_or("").to_string();
    let param = |key: &str| -> Option<u64> {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    };
    let path = req.uri().path().to_string();
    let mut rsp = match (req.method().clone(), path.as_str()) {
        (Method::GET, "/hello") => Response::new(full(format!("hello from {name}"))),
        (Method::POST, "/echo") => {
            let body = req.into_body();
            Response::new(body.boxed())
        }
        (Method::POST, "/count") => {
            let mut body = req.into_body();
            let (mut len, mut hash) = (0u64, FNV_OFFSET);
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            len += d.len() as u64;
                            hash = fnv1a(hash, d);
                        }
                    }
                    Err(e) => return status(StatusCode::BAD_REQUEST, format!("body error: {e}")),
                }
            }
            Response::new(full(format!("{len} {hash:016x}")))
        }
        (Method::GET, "/bytes") => Response::new(full(pattern(param("n").unwrap_or(0) as usize))),
        (Method::GET, "/slow") => {
            tokio::time::sleep(Duration::from_millis(param("ms").unwrap_or(100))).await;
            Response::new(full("slow done"))
        }
        (Method::GET, "/ws") => return websocket(name, &mut req),
        // An app pretending to be the proxy (the proxy must strip it).
        (Method::GET, "/forge") => {
            let mut rsp = Response::new(full("forged"));
            rsp.headers_mut()
                .insert("weft-proxy-error", "forged".parse().unwrap());
            rsp
        }
        (_, p) if p.starts_with("/status/") => {
            let code = p["/status/".len()..].parse().unwrap_or(500);
            status(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                format!("status {code}"),
            )
        }
        _ => status(StatusCode::NOT_FOUND, "no such test endpoint".into()),
    };
    let h = rsp.headers_mut();
    h.insert("x-app-name", name.parse().unwrap());
    h.insert("x-app-version", version.parse().unwrap());
    if let Ok(v) = host.parse() {
        h.insert("x-app-host", v);
    }
    if let Some(id) = client_id {
        h.insert("x-app-saw-client-id", id);
    }
    for (k, v) in trace_headers.into_iter().chain(test_headers) {
        h.insert(k, v);
    }
    if let Ok(v) = path_and_query.parse() {
        h.insert("x-app-path", v);
    }
    rsp
}

/// Trace context headers the app echoes back (`x-app-saw-<name>`).
pub const TRACE_HEADERS: [&str; 6] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
];

fn status(code: StatusCode, body: String) -> Response<AppBody> {
    let mut rsp = Response::new(full(body));
    *rsp.status_mut() = code;
    rsp
}

fn websocket(name: &'static str, req: &mut Request<Incoming>) -> Response<AppBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return status(StatusCode::BAD_REQUEST, "not a websocket request".into());
    };
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match msg {
                Message::Text(t) => Message::text(format!("{name}: {}", t.as_str())),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(full(Bytes::new()))
        .unwrap()
}

/// A TCP app that reads until the client half-closes, then answers
/// `received N bytes: ` followed by the bytes, and closes.
pub async fn tcp_half_close_app(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    serve_tcp(addr, |mut s| async move {
        let mut data = Vec::new();
        if s.read_to_end(&mut data).await.is_err() {
            return;
        }
        let mut reply = format!("received {} bytes: ", data.len()).into_bytes();
        reply.extend_from_slice(&data);
        let _ = s.write_all(&reply).await;
        let _ = s.shutdown().await;
    })
    .await
}

/// The greeting a server-speaks-first app sends on accept.
pub const GREETING: &str = "220 weft-test ready\r\n";

/// A server-speaks-first app (like SMTP or MySQL): greets at once, then
/// echoes each line back.
pub async fn greeting_app(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    serve_tcp(addr, |mut s| async move {
        if s.write_all(GREETING.as_bytes()).await.is_err() {
            return;
        }
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    })
    .await
}

/// An HTTP CONNECT proxy app: answers `CONNECT host:port` with 200, then
/// tunnels to that address.
pub async fn connect_proxy_app(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    serve_tcp(addr, |stream| async move {
        let svc = service_fn(|mut req: Request<Incoming>| async move {
            let target = req.uri().authority().map(|a| a.to_string());
            let rsp = match (req.method() == Method::CONNECT, target) {
                (true, Some(target)) => {
                    let on_upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let (Ok(up), Ok(mut remote)) =
                            (on_upgrade.await, TcpStream::connect(&target).await)
                        else {
                            return;
                        };
                        let _ =
                            tokio::io::copy_bidirectional(&mut TokioIo::new(up), &mut remote).await;
                    });
                    Response::new(full(Bytes::new()))
                }
                _ => status(StatusCode::METHOD_NOT_ALLOWED, "CONNECT only".into()),
            };
            Ok::<_, Infallible>(rsp)
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades()
            .await;
    })
    .await
}

/// The gRPC echo service.
#[derive(Clone, Debug)]
pub struct EchoService {
    pub name: &'static str,
}

type ChatStream = Pin<Box<dyn Stream<Item = Result<echo::EchoReply, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl echo::echo_server::Echo for EchoService {
    async fn unary(
        &self,
        req: tonic::Request<echo::EchoRequest>,
    ) -> Result<tonic::Response<echo::EchoReply>, tonic::Status> {
        Ok(tonic::Response::new(echo::EchoReply {
            message: req.into_inner().message,
            seq: 0,
            server: self.name.to_string(),
        }))
    }

    type ChatStream = ChatStream;

    async fn chat(
        &self,
        req: tonic::Request<tonic::Streaming<echo::EchoRequest>>,
    ) -> Result<tonic::Response<ChatStream>, tonic::Status> {
        let name = self.name;
        let mut inbound = req.into_inner();
        let replies = async_stream(move |tx| async move {
            let mut seq = 0;
            while let Some(msg) = inbound.next().await {
                let reply = msg.map(|m| {
                    seq += 1;
                    echo::EchoReply {
                        message: m.message,
                        seq,
                        server: name.to_string(),
                    }
                });
                if tx.send(reply).await.is_err() {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(replies)))
    }

    async fn fail(
        &self,
        req: tonic::Request<echo::EchoRequest>,
    ) -> Result<tonic::Response<echo::EchoReply>, tonic::Status> {
        let req = req.into_inner();
        Err(tonic::Status::new(tonic::Code::from(req.code), req.message))
    }
}

/// A stream fed by a task through a channel.
fn async_stream<T, F, Fut>(f: F) -> impl Stream<Item = T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Serves the gRPC echo service on `addr`.
pub async fn grpc_app(addr: SocketAddr, name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(echo::echo_server::EchoServer::new(EchoService { name }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok(local)
}

/// Serves the gRPC echo service's `Unary` the way servers fail after
/// their headers: every call gets its reply message, then `grpc-status`
/// in the trailers, 14 (UNAVAILABLE) for `fail_ratio` of calls (at random)
/// and 0 otherwise. No `grpc-status` is ever in the headers. HTTP/2 only.
pub async fn grpc_trailers_app(
    addr: SocketAddr,
    name: &'static str,
    fail_ratio: f64,
) -> std::io::Result<SocketAddr> {
    serve_tcp(addr, move |stream| async move {
        let svc = service_fn(move |req: Request<Incoming>| async move {
            use prost::Message as _;
            // A gRPC server reads the call's message before answering.
            let _ = req.into_body().collect().await;
            let reply = echo::EchoReply {
                message: "hi".into(),
                seq: 1,
                server: name.into(),
            }
            .encode_to_vec();
            // A gRPC message: uncompressed flag, big-endian length, bytes.
            let mut message = vec![0u8];
            message.extend_from_slice(&(reply.len() as u32).to_be_bytes());
            message.extend_from_slice(&reply);
            let code = if fastrand::f64() < fail_ratio {
                "14"
            } else {
                "0"
            };
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", code.parse().unwrap());
            let frames = [Frame::data(Bytes::from(message)), Frame::trailers(trailers)];
            let body = StreamBody::new(futures_util::stream::iter(
                frames.into_iter().map(Ok::<_, hyper::Error>),
            ));
            let mut rsp = Response::new(BodyExt::boxed(body));
            rsp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/grpc"),
            );
            rsp.headers_mut()
                .insert("x-app-name", header::HeaderValue::from_static(name));
            Ok::<_, Infallible>(rsp)
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    })
    .await
}

/// A streaming body for tests that send large requests: `len` bytes of
/// [`pattern`] in chunks of `chunk`.
pub fn pattern_body(
    len: usize,
    chunk: usize,
) -> StreamBody<impl Stream<Item = Result<Frame<Bytes>, Infallible>> + Send> {
    let data = Bytes::from(pattern(len));
    let chunks = (0..len.div_ceil(chunk)).map(move |i| {
        let end = ((i + 1) * chunk).min(len);
        Ok(Frame::data(data.slice(i * chunk..end)))
    });
    StreamBody::new(futures_util::stream::iter(chunks))
}

/// A TCP app that says its name and closes (to see where a connection went).
pub async fn tcp_name_app(addr: SocketAddr, name: &'static str) -> std::io::Result<SocketAddr> {
    serve_tcp(addr, move |mut s| async move {
        let _ = s.write_all(name.as_bytes()).await;
        let _ = s.shutdown().await;
    })
    .await
}

/// A TCP app that echoes bytes as they arrive, until the client closes.
pub async fn tcp_echo_app(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    serve_tcp(addr, |s| async move {
        let (mut r, mut w) = s.into_split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

/// Binds `addr` and runs `conn` on a task for every accepted connection.
async fn serve_tcp<F, Fut>(addr: SocketAddr, conn: F) -> std::io::Result<SocketAddr>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = listener.accept().await {
                let _ = s.set_nodelay(true);
                tokio::spawn(conn(s));
            }
        }
    });
    Ok(local)
}
