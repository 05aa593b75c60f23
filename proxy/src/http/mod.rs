//! HTTP, proxied per request.
//!
//! In the order a request meets them: [`server`] (hyper serves the client's
//! connection, under [`guard`]: HTTP/2 flood limits, idle timeout; and
//! [`framing`]: HTTP/1 request smuggling) -> [`forward`] (count, pick the upstream version, send) ->
//! [`routed`] (with a known destination: route, split and balance per try,
//! [`retry`] with a [`replay`]able body, timeouts) ->
//! [`headers`] (hop-by-hop headers, HTTP/1 <-> HTTP/2 rewriting) ->
//! [`pool`] (pooled upstream connections); [`upgrade`] takes WebSocket and
//! CONNECT tunnels; [`app_protocol`] learns which version an inbound
//! application speaks; [`error`] turns failures into 502/503/504.

pub mod app_protocol;
pub mod body;
pub mod error;
pub mod forward;
pub mod framing;
pub mod guard;
pub mod headers;
pub mod pool;
pub mod replay;
pub mod retry;
pub mod routed;
pub mod server;
pub mod upgrade;

pub use error::{PROXY_ERROR_HEADER, ProxyError};
pub use forward::HttpConn;
