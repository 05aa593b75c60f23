//! Header and URI rewriting between the client's HTTP version and the
//! upstream's: hop-by-hop headers stay on their hop, and the authority moves
//! between the `Host` header (HTTP/1) and the `:authority` pseudo-header
//! (HTTP/2).

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Request, Version};

/// Headers that describe one connection, never the message (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
];

/// Whether the request asks to switch protocols (WebSocket and the like) or
/// to open a tunnel (`CONNECT`).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        || (req.headers().contains_key(header::UPGRADE) && connection_has(req.headers(), "upgrade"))
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, and those the `Connection` header names.
/// With `keep_upgrade`, `Upgrade` and `Connection: upgrade` survive so the
/// upstream sees the protocol switch the client asked for. `TE: trailers`
/// is end-to-end in practice (gRPC requires it) and is kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if !(keep_upgrade && name == header::UPGRADE) && name != header::TE {
                headers.remove(&name);
            }
        }
    }
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for name in &HOP_BY_HOP {
        if keep_upgrade && (name == header::UPGRADE || name == header::CONNECTION) {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade && headers.contains_key(header::UPGRADE) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The authority a request names: the URI's, else the Host header, else the
/// address it was going to.
pub fn authority_of<B>(req: &Request<B>, target: SocketAddr) -> String {
    if let Some(a) = req.uri().authority() {
        return a.as_str().to_string();
    }
    if let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        && !host.is_empty()
    {
        return host.to_string();
    }
    target.to_string()
}

/// Rewrites a request received as `from` so it can be sent as `to`.
pub fn convert_request<B>(req: &mut Request<B>, to: Version, target: SocketAddr) {
    let from = req.version();
    if to == Version::HTTP_2 {
        to_h2(req, target);
    } else if from == Version::HTTP_2 {
        to_h1(req);
    } else {
        // HTTP/1 on both sides: keep the request line as the client wrote it
        // (origin or absolute form; 1.0 stays 1.0).
        return;
    }
    *req.version_mut() = if to == Version::HTTP_2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
}

/// HTTP/2 wants an absolute URI (`:scheme`, `:authority`) and no Host.
fn to_h2<B>(req: &mut Request<B>, target: SocketAddr) {
    if req.uri().scheme().is_some() && req.uri().authority().is_some() {
        req.headers_mut().remove(header::HOST);
        return;
    }
    let authority = authority_of(req, target);
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Authority::try_from(authority.as_str())
        .or_else(|_| Authority::try_from(target.to_string().as_str()))
        .ok();
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
        req.headers_mut().remove(header::HOST);
    }
}

/// HTTP/1.1 wants the origin form (`/path?query`) and a Host header.
fn to_h1<B>(req: &mut Request<B>) {
    if let Some(authority) = req.uri().authority()
        && !req.headers().contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    if req.method() == Method::CONNECT {
        return;
    }
    let origin = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(origin);
}

/// Whether a request is gRPC (by its content type).
pub fn is_grpc<B>(req: &http::Request<B>) -> bool {
    has_grpc_content_type(req.headers())
}

/// Whether a request's or response's content type is gRPC's.
pub fn has_grpc_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A request with `from`'s method, URI, version and headers, and `body`:
/// a retry's try, a mirror's copy.
pub fn with_head_of<B, C>(from: &http::Request<B>, body: C) -> http::Request<C> {
    let mut req = http::Request::new(body);
    *req.method_mut() = from.method().clone();
    *req.uri_mut() = from.uri().clone();
    *req.version_mut() = from.version();
    *req.headers_mut() = from.headers().clone();
    req
}

/// The `grpc-status` code in a header map (trailers, or the headers of a
/// trailers-only response).
pub fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> SocketAddr {
        "198.18.0.2:8080".parse().unwrap()
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("te", "trailers, deflate".parse().unwrap());
        h.insert("x-end-to-end", "kept".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["te", "x-end-to-end"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn upgrade_headers_survive_when_upgrading() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("sec-websocket-key", "abc".parse().unwrap());
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "abc");
    }

    #[test]
    fn recognises_upgrades_and_connect() {
        let ws = Request::get("/")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(is_upgrade(&ws));
        let connect = Request::connect("db:5432").body(()).unwrap();
        assert!(is_upgrade(&connect));
        let plain = Request::get("/").header("upgrade", "h2c").body(()).unwrap();
        assert!(!is_upgrade(&plain));
    }

    #[test]
    fn authority_from_uri_then_host_then_target() {
        let r = Request::get("http://a.example:81/x")
            .header("host", "b")
            .body(())
            .unwrap();
        assert_eq!(authority_of(&r, target()), "a.example:81");
        let r = Request::get("/x")
            .header("host", "web.shop")
            .body(())
            .unwrap();
        assert_eq!(authority_of(&r, target()), "web.shop");
        let r = Request::get("/x").body(()).unwrap();
        assert_eq!(authority_of(&r, target()), "198.18.0.2:8080");
    }

    #[test]
    fn h2_request_to_h1_upstream() {
        let mut r = Request::post("http://web.shop:8080/api?q=1")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        convert_request(&mut r, Version::HTTP_11, target());
        assert_eq!(r.uri(), "/api?q=1");
        assert_eq!(r.headers()["host"], "web.shop:8080");
        assert_eq!(r.version(), Version::HTTP_11);
    }

    #[test]
    fn h1_request_to_h2_upstream() {
        let mut r = Request::get("/api")
            .header("host", "web.shop")
            .body(())
            .unwrap();
        convert_request(&mut r, Version::HTTP_2, target());
        assert_eq!(r.uri(), "http://web.shop/api");
        assert!(!r.headers().contains_key("host"));
        assert_eq!(r.version(), Version::HTTP_2);

        let mut no_host = Request::get("/").body(()).unwrap();
        convert_request(&mut no_host, Version::HTTP_2, target());
        assert_eq!(no_host.uri(), "http://198.18.0.2:8080/");
    }

    #[test]
    fn h1_to_h1_is_left_as_written() {
        let mut r = Request::get("http://proxy.example/x")
            .version(Version::HTTP_10)
            .body(())
            .unwrap();
        convert_request(&mut r, Version::HTTP_11, target());
        assert_eq!(r.uri(), "http://proxy.example/x");
        assert_eq!(r.version(), Version::HTTP_10);
    }
}
