//! Weft's test kit: what only tests need, a fake Kubernetes API server
//! speaking the real list/watch protocol ([`fake_api`]), hostile clients
//! ([`abuse`]), peers that are not what they claim ([`rogue`]) and OTLP
//! receivers ([`otlp`]), and polling for a condition ([`wait`]); and, re-exported from `weft-lab`, the hosts,
//! meshes, applications and clients the tests share with `weft demo` and
//! the benchmarks. The end-to-end tests themselves are in `tests/tests/`.

pub mod abuse;
pub mod fake_api;
pub mod otlp;
pub mod rogue;
pub mod wait;

pub use weft_lab::{apps, bins, client, echo, loopback, mesh, netns, pod, skip_loudly, yaml};
