//! The upstream side of a request or connection: the endpoint it was sent
//! to and the connection that carries it. In the order a request meets
//! them: [`endpoint`] (what is known of each endpoint: load, latency,
//! failure accrual; the balancer reads it) -> [`send`] (one request to one
//! endpoint, in the HTTP version it needs) -> [`pool`] (pooled connections
//! per endpoint) -> [`connect`] (TCP, and mesh TLS to a meshed endpoint).
//! [`response`] carries the answer back and releases what waited for its
//! end; [`app_protocol`] learns which HTTP version the local application
//! speaks (inbound).

pub mod app_protocol;
pub mod connect;
pub mod endpoint;
pub mod pool;
pub mod response;
pub mod send;

pub use connect::ConnectError;
pub use endpoint::{EndpointRegistry, EndpointState, InFlight};
pub use pool::{Pool, Target};
pub use response::{ResponseBody, ResponseRecord};
pub use send::Hop;

/// What went wrong sending a request upstream.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("upstream reset or closed the connection")]
    Reset,
    #[error("upstream sent an invalid response: {0}")]
    Protocol(String),
    #[error("{0} is not supported over HTTP/2")]
    Unsupported(&'static str),
}

impl Error {
    /// Classifies an error hyper returned while sending a request.
    pub fn from_hyper(e: hyper::Error) -> Self {
        if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() || e.is_user() {
            return Error::Protocol(e.to_string());
        }
        Error::Reset
    }
}
