//! `weft-proxy`: the transparent sidecar of a meshed pod.
//!
//! A connection meets the modules in this order (ARCHITECTURE.md has the
//! full map):
//!
//! ```text
//! app::accept_loop (inbound 4143 / outbound 4140)
//!   -> connection::serve
//!        -> orig_dst      where was it going (SO_ORIGINAL_DST, or fixed per listener)
//!        -> discovery     outbound: the destination's config (routes, splits, endpoints)
//!        -> detect        HTTP/1, HTTP/2, TLS or opaque, from the first bytes
//!        -> tls::accept   inbound: mesh TLS from another proxy is terminated here
//!                         (client SPIFFE ID; ALPN says what it carries)
//!        -> http          hyper serves the connection (framing and flood guards)
//!             -> forward  per request: admit -> observe -> authorize (authz)
//!                         -> dispatch -> respond
//!             -> routing  route match -> split -> attempt (retry, timeout,
//!                         replay) -> balance
//!             -> upstream endpoint (load, failure accrual) -> send -> pool
//!                         -> connect (plain TCP, or mesh TLS to a meshed endpoint)
//!        -> connection::opaque -> tcp   or bytes both ways (opaque TCP,
//!                         application TLS), authorized once inbound
//! ```
//!
//! Beside the data path: [`config`] (settings from the environment),
//! [`shared`] (what every connection shares, built once), [`overload`]
//! (connections and requests admitted: load shedding), [`limit`] (token
//! buckets), [`backoff`], [`identity`] (key in memory, certificate from
//! the controller, renewal), [`metrics`] (Linkerd-compatible Prometheus
//! metrics), [`telemetry`] (spans over OTLP, access logs, tap), [`admin`]
//! (4191: health, metrics, config, identity, tap, shutdown), [`drain`]
//! (graceful shutdown).

pub mod admin;
pub mod app;
pub mod authz;
pub mod backoff;
pub mod config;
pub mod connection;
pub mod detect;
pub mod discovery;
pub mod drain;
pub mod forward;
pub mod http;
pub mod identity;
pub mod io;
pub mod limit;
pub mod metrics;
pub mod orig_dst;
pub mod overload;
pub mod routing;
pub mod runtime;
pub mod shared;
pub mod tcp;
pub mod telemetry;
pub mod tls;
pub mod upstream;

pub use app::{Proxy, StartError, Stopped};
pub use config::Config;
