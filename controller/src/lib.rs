//! `weft-controller`: the control plane.
//!
//! The config path, in order: [`source`] (a Kubernetes watch, or a
//! directory of YAML) -> [`index`] (pure state: objects in, per-proxy views
//! out) -> [`hub`] (who subscribed to what; each changed view turned into
//! its wire form once and pushed) -> [`grpc`] (the discovery stream).
//! The index's problems go back out as [`status`] conditions.
//! Beside it: [`crd`] (the custom resources), [`identity`] (the certificate
//! authority), [`inject`] and [`webhook`] (the injector), [`admin`] (/live,
//! /ready, /metrics, /tap), [`tap`] (the relay to a pod's tap over mesh TLS).

pub mod admin;
pub mod app;
pub mod crd;
pub mod grpc;
pub mod hub;
pub mod identity;
pub mod index;
pub mod inject;
pub mod metrics;
pub mod source;
pub mod status;
pub mod tap;
pub mod webhook;
