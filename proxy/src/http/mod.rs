//! HTTP mechanics, below routing: [`server`] (hyper serves a client's
//! connection, each request handed to a handler, under [`guard`]: HTTP/2
//! flood limits, idle timeout; and [`framing`]: HTTP/1 request smuggling),
//! [`headers`] (hop-by-hop headers, HTTP/1 <-> HTTP/2 rewriting) and
//! [`body`] (bodies as the proxy forwards them). What happens to each
//! request is [`crate::forward`].

pub mod body;
pub mod framing;
pub mod guard;
pub mod headers;
pub mod server;

/// The header that names why the proxy, not the application, answered.
pub const PROXY_ERROR_HEADER: &str = "weft-proxy-error";
