//! The custom resources Weft reads, as Rust types. Their OpenAPI schemas
//! (derived with schemars) are what the API server checks; the CRD YAML in
//! charts/weft/crds is generated from them ([`manifests`]) and a test fails
//! when the two drift.
//!
//! - [`smi`]: TrafficSplit (split.smi-spec.io) and HTTPRouteGroup
//!   (specs.smi-spec.io), v1alpha1 to v1alpha4 each with SMI's schema for
//!   it, converted without loss through v1alpha4 (the storage version).
//! - [`retry`]: RetryPolicy (weft.dev/v1alpha1).
//! - [`authz`]: AuthorizationPolicy (weft.dev/v1alpha1).
//! - [`gateway`]: the Gateway API's HTTPRoute, GRPCRoute and
//!   ReferenceGrant, read only: their CRDs are the user's.

pub mod authz;
pub mod gateway;
pub mod retry;
pub mod smi;
pub mod status;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use authz::AuthorizationPolicy;
pub use gateway::{GRPCRoute, HTTPRoute, ReferenceGrant};
pub use retry::RetryPolicy;
pub use smi::{HTTPRouteGroup, TrafficSplit};
pub use status::Status;

/// Every CRD, with the file name it has in charts/weft/crds.
pub fn definitions() -> Vec<(&'static str, CustomResourceDefinition)> {
    let crds = vec![
        (
            "trafficsplits.split.smi-spec.io.yaml",
            smi::versions::traffic_split(TrafficSplit::crd()),
        ),
        (
            "httproutegroups.specs.smi-spec.io.yaml",
            smi::versions::http_route_group(HTTPRouteGroup::crd()),
        ),
        ("retrypolicies.weft.dev.yaml", RetryPolicy::crd()),
        (
            "authorizationpolicies.weft.dev.yaml",
            AuthorizationPolicy::crd(),
        ),
    ];
    crds.into_iter()
        .map(|(file, crd)| (file, with_known_formats(crd)))
        .collect()
}

/// schemars names Rust's unsigned integers (`format: uint16`, `uint32`),
/// which the API server does not know: it warns at apply and ignores them.
/// They become the OpenAPI formats it checks (int32/int64), with the
/// unsigned type's range as bounds, so nothing the type allowed changes.
fn with_known_formats(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let mut value = serde_json::to_value(&crd).expect("a CRD serializes");
    rewrite_unsigned_formats(&mut value);
    serde_json::from_value(value).expect("the rewritten CRD is still a CRD")
}

fn rewrite_unsigned_formats(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let unsigned = match map.get("format").and_then(Value::as_str) {
                Some("uint8") => Some(("int32", u8::MAX as u64)),
                Some("uint16") => Some(("int32", u16::MAX as u64)),
                Some("uint32") => Some(("int64", u32::MAX as u64)),
                Some("uint64" | "uint") => Some(("int64", i64::MAX as u64)),
                _ => None,
            };
            if let Some((format, max)) = unsigned {
                map.insert("format".into(), format.into());
                let min = map.get("minimum").and_then(Value::as_f64).unwrap_or(0.0);
                map.insert("minimum".into(), min.max(0.0).into());
                let bound = map.get("maximum").and_then(Value::as_f64);
                map.insert(
                    "maximum".into(),
                    bound.unwrap_or(max as f64).min(max as f64).into(),
                );
            }
            map.values_mut().for_each(rewrite_unsigned_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_unsigned_formats),
        _ => {}
    }
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

    /// Every `format` in the CRDs is one the API server knows (its list in
    /// apiextensions-apiserver's validation/formats.go, as of 1.26): an
    /// unknown one is a warning at every apply and is not checked.
    #[test]
    fn every_schema_format_is_known_to_the_api_server() {
        const STRINGS: &[&str] = &[
            "bsonobjectid",
            "uri",
            "email",
            "hostname",
            "ipv4",
            "ipv6",
            "cidr",
            "mac",
            "uuid",
            "uuid3",
            "uuid4",
            "uuid5",
            "isbn",
            "isbn10",
            "isbn13",
            "creditcard",
            "ssn",
            "hexcolor",
            "rgbcolor",
            "byte",
            "password",
            "date",
            "duration",
            "datetime",
        ];
        fn walk(v: &serde_json::Value, at: &str, found: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(format) = map.get("format").and_then(|f| f.as_str()) {
                        let ty = map.get("type").and_then(|t| t.as_str()).unwrap_or("");
                        let known = match ty {
                            "integer" => ["int32", "int64"].contains(&format),
                            "number" => ["float", "double"].contains(&format),
                            "" | "string" => STRINGS.contains(&format.replace('-', "").as_str()),
                            _ => false,
                        };
                        if !known {
                            found.push(format!("{at}: {ty} format {format}"));
                        }
                    }
                    for (k, child) in map {
                        walk(child, &format!("{at}.{k}"), found);
                    }
                }
                serde_json::Value::Array(items) => {
                    items.iter().for_each(|c| walk(c, at, found));
                }
                _ => {}
            }
        }
        let mut unknown = Vec::new();
        for (file, crd) in definitions() {
            walk(&serde_json::to_value(&crd).unwrap(), file, &mut unknown);
        }
        assert!(
            unknown.is_empty(),
            "formats the API server warns about: {unknown:#?}"
        );
    }

    /// The rewrite keeps each unsigned type's range.
    #[test]
    fn unsigned_formats_keep_their_range() {
        let mut v = serde_json::json!({"a": {"type": "integer", "format": "uint16", "minimum": 1.0},
                                       "b": [{"type": "integer", "format": "uint32"}]});
        rewrite_unsigned_formats(&mut v);
        assert_eq!(
            v["a"],
            serde_json::json!({"type": "integer", "format": "int32", "minimum": 1.0, "maximum": 65535.0})
        );
        assert_eq!(
            v["b"][0],
            serde_json::json!({"type": "integer", "format": "int64", "minimum": 0.0, "maximum": 4294967295.0})
        );
    }

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
