//! Workload identity: the CA ([`ca`]), ServiceAccount token checks
//! ([`tokens`]), and the `Certify` gRPC service ([`service`]) served over
//! TLS with the controller's own certificate.

pub mod ca;
pub mod service;
pub mod tokens;
