//! The custom resources Weft reads, as Rust types. Their OpenAPI schemas
//! (derived with schemars) are what the API server checks; the CRD YAML in
//! charts/weft/crds is generated from them ([`manifests`]) and a test fails
//! when the two drift.
//!
//! - [`smi`]: TrafficSplit (split.smi-spec.io/v1alpha4) and HTTPRouteGroup
//!   (specs.smi-spec.io/v1alpha4), the SMI schema, with whole non-negative
//!   weights.
//! - [`retry`]: RetryPolicy (weft.dev/v1alpha1).
//! - [`authz`]: AuthorizationPolicy (weft.dev/v1alpha1).

pub mod authz;
pub mod retry;
pub mod smi;
pub mod status;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use authz::AuthorizationPolicy;
pub use retry::RetryPolicy;
pub use smi::{HTTPRouteGroup, TrafficSplit};
pub use status::Status;

/// Every CRD, with the file name it has in charts/weft/crds.
pub fn definitions() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("trafficsplits.split.smi-spec.io.yaml", TrafficSplit::crd()),
        (
            "httproutegroups.specs.smi-spec.io.yaml",
            HTTPRouteGroup::crd(),
        ),
        ("retrypolicies.weft.dev.yaml", RetryPolicy::crd()),
        (
            "authorizationpolicies.weft.dev.yaml",
            AuthorizationPolicy::crd(),
        ),
    ]
}

/// The CRD manifests as YAML files: (file name, content).
pub fn manifests() -> Vec<(&'static str, String)> {
    definitions()
        .into_iter()
        .map(|(file, crd)| {
            let yaml = serde_yaml_ng::to_string(&crd).expect("a CRD serializes");
            (
                file,
                format!(
                    "# Generated from controller/src/crd by `weft-controller crds --write charts/weft/crds`; do not edit.\n{yaml}"
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chart's CRDs are the generated ones. On a change to the types,
    /// regenerate: `cargo run -p weft-controller -- crds --write charts/weft/crds`.
    #[test]
    fn chart_crds_match_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/weft/crds");
        for (file, generated) in manifests() {
            let on_disk = std::fs::read_to_string(dir.join(file))
                .unwrap_or_else(|e| panic!("charts/weft/crds/{file}: {e}; regenerate the CRDs"));
            assert!(
                on_disk == generated,
                "charts/weft/crds/{file} differs from the Rust types; run `cargo run -p weft-controller -- crds --write charts/weft/crds`"
            );
        }
    }
}
