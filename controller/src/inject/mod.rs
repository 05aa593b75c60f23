//! Sidecar injection: what the mutating webhook does to a new pod and what
//! `weft inject` does to workloads in YAML, from one pure implementation.
//!
//! ```text
//! decide.rs    inject or not: the weft.dev/inject annotations, host network,
//!              already injected
//! pod.rs       the change itself: weft-init, weft-proxy (native sidecar or
//!              classic), the identity token volume, the version annotation;
//!              and its undoing
//! workload.rs  where the pod template is in each workload kind, and
//!              multi-document YAML edited without touching other documents
//! config.rs    images, addresses, resources: the injector's settings
//! ```
//!
//! Everything works on `serde_json::Value`, not typed pods, so fields this
//! version of the types does not know survive the round trip.

pub mod config;
pub mod decide;
pub mod pod;
pub mod workload;

pub use config::{InjectorConfig, Layout, NativeSidecars};
pub use decide::{Decision, decide};
pub use pod::{InjectError, inject, uninject};

/// Namespace or pod: `enabled` meshes new pods (a pod may say `disabled`).
pub const INJECT_ANNOTATION: &str = "weft.dev/inject";
pub const SKIP_INBOUND_PORTS_ANNOTATION: &str = "weft.dev/skip-inbound-ports";
pub const SKIP_OUTBOUND_PORTS_ANNOTATION: &str = "weft.dev/skip-outbound-ports";
pub const PROXY_LOG_LEVEL_ANNOTATION: &str = "weft.dev/proxy-log-level";
pub const PROXY_CPU_REQUEST_ANNOTATION: &str = "weft.dev/proxy-cpu-request";
pub const PROXY_CPU_LIMIT_ANNOTATION: &str = "weft.dev/proxy-cpu-limit";
pub const PROXY_MEMORY_REQUEST_ANNOTATION: &str = "weft.dev/proxy-memory-request";
pub const PROXY_MEMORY_LIMIT_ANNOTATION: &str = "weft.dev/proxy-memory-limit";
pub const TRACE_COLLECTOR_ANNOTATION: &str = "weft.dev/trace-collector";
pub const TRACE_SAMPLING_ANNOTATION: &str = "weft.dev/trace-sampling";
pub const ACCESS_LOG_ANNOTATION: &str = "weft.dev/access-log";
pub const TAP_ANNOTATION: &str = "weft.dev/tap";
/// weft-init's backend, `nft` or `legacy` (pod or namespace).
pub const IPTABLES_MODE_ANNOTATION: &str = "weft.dev/iptables-mode";
/// Subnets (comma-separated CIDRs) whose traffic bypasses the proxy.
pub const SKIP_SUBNETS_ANNOTATION: &str = "weft.dev/skip-subnets";
pub use crate::index::objects::{OPAQUE_PORTS_ANNOTATION, PROXY_VERSION_ANNOTATION};

/// The version written into `weft.dev/proxy-version`.
pub const PROXY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Container names: the injector recognises its own work by them.
pub const PROXY_CONTAINER: &str = "weft-proxy";
pub const INIT_CONTAINER: &str = "weft-init";
/// Volumes the injector adds.
pub const TOKEN_VOLUME: &str = "weft-identity-token";
pub const XTABLES_VOLUME: &str = "weft-init-xtables";
