//! The `weft` command line, as a library so its pieces are tested directly.
//!
//! ```text
//! identity.rs  weft identity init|issuer|webhook: CA and certificate files
//! chart/       the embedded Helm chart and its renderer (weft install)
//! install.rs   weft install: the chart's manifests to stdout
//! inject.rs    weft inject / uninject: the sidecar in workload YAML
//! check.rs     weft check: is the cluster ready, is the mesh healthy
//! demo/        weft demo: a local mesh with sample services, no cluster
//! observe/     weft stat / top / tap: golden metrics and live requests
//! dashboard/   weft dashboard: the same in a browser (service graph, tap)
//! ```

pub mod chart;
pub mod check;
pub mod dashboard;
pub mod demo;
pub mod identity;
pub mod inject;
pub mod install;
pub mod observe;
