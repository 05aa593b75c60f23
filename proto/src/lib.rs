//! `weft-proto`: the contracts between Weft's parts.
//!
//! - [`pb`]: the wire types and gRPC services (`weft.discovery.v1`,
//!   `weft.identity.v1`), generated at build time by protox and tonic (no
//!   system protoc).
//! - [`model`]: the configuration model the controller computes and the
//!   proxy applies; [`convert`] moves it on and off the wire, validating.
//! - [`mesh_tls`] (feature `tls`): the certificate checks of mesh TLS.
//! - [`metrics_text`] (feature `metrics-text`): the proxies' and the
//!   controller's `/metrics`, read back.
//! - [`duration`]: Go-style durations, and [`ports`]: port lists, as users
//!   write them in annotations, flags and CRDs.

pub mod convert;
pub mod duration;
#[cfg(feature = "tls")]
pub mod mesh_tls;
#[cfg(feature = "metrics-text")]
pub mod metrics_text;
pub mod model;
pub mod ports;
pub mod spiffe;

/// Generated protobuf and gRPC code.
pub mod pb {
    pub mod discovery {
        tonic::include_proto!("weft.discovery.v1");
    }
    pub mod identity {
        tonic::include_proto!("weft.identity.v1");
    }
}
