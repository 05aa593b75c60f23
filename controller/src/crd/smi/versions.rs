//! The SMI versions served beside v1alpha4, each with the schema SMI
//! published for it, derived from v1alpha4's so that they share its
//! descriptions and its one tightening (weights are non-negative):
//!
//! - TrafficSplit v1alpha3: v1alpha4's. v1alpha2: without `matches`.
//!   v1alpha1: also without `matches`, its weight a quantity (an integer or
//!   a string such as `500m`, never negative).
//! - HTTPRouteGroup v1alpha3: v1alpha4's. v1alpha2: `matches` at the top
//!   level, not under `spec`. v1alpha1: also without `headers`.
//!
//! v1alpha4 stays the storage version; the API server converts through
//! the conversion webhook, which the controller points at itself
//! ([`conversion_patch`]).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

/// Kubernetes' quantity syntax, without the sign (a weight is never
/// negative).
const QUANTITY: &str = r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// The TrafficSplit CRD serving v1alpha1 to v1alpha4.
pub fn traffic_split(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    with_older(crd, |version, schema| {
        let spec = &mut schema["properties"]["spec"];
        if version == "v1alpha3" {
            return;
        }
        remove(&mut spec["properties"], "matches");
        if version == "v1alpha1" {
            // Kubernetes' form of a quantity (the API server allows
            // nothing else in an int-or-string's anyOf): the pattern
            // checks strings, the minimum numbers.
            spec["properties"]["backends"]["items"]["properties"]["weight"] = json!({
                "description": "Traffic weight value of this backend: a quantity (such as 1 or 500m), proportional to the other backends' weights.",
                "x-kubernetes-int-or-string": true,
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                "pattern": QUANTITY,
                "minimum": 0,
            });
        }
    })
}

/// The HTTPRouteGroup CRD serving v1alpha1 to v1alpha4.
pub fn http_route_group(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    with_older(crd, |version, schema| {
        if version == "v1alpha3" {
            return;
        }
        let spec = schema["properties"]
            .as_object_mut()
            .and_then(|p| p.remove("spec"))
            .unwrap_or_default();
        let mut matches = spec["properties"]["matches"].clone();
        if version == "v1alpha1" {
            remove(&mut matches["items"]["properties"], "headers");
        }
        schema["properties"]["matches"] = matches;
        if let Some(required) = schema
            .pointer_mut("/required")
            .and_then(Value::as_array_mut)
        {
            required.retain(|r| r != "spec");
        }
        if schema
            .pointer("/required")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            remove(schema, "required");
        }
    })
}

fn remove(v: &mut Value, key: &str) {
    if let Some(o) = v.as_object_mut() {
        o.remove(key);
    }
}

/// `crd` (v1alpha4 only) with v1alpha1 to v1alpha3 added before it, each
/// v1alpha4's version entry with its schema changed by `change`.
fn with_older(
    crd: CustomResourceDefinition,
    change: impl Fn(&str, &mut Value),
) -> CustomResourceDefinition {
    let mut value = serde_json::to_value(&crd).expect("a CRD serializes");
    let versions = value["spec"]["versions"]
        .as_array_mut()
        .expect("a CRD has versions");
    let latest = versions.last().cloned().expect("v1alpha4 is there");
    let mut all = Vec::new();
    for name in ["v1alpha1", "v1alpha2", "v1alpha3"] {
        let mut v = latest.clone();
        v["name"] = Value::from(name);
        v["storage"] = Value::from(false);
        change(name, &mut v["schema"]["openAPIV3Schema"]);
        all.push(v);
    }
    all.push(latest);
    *versions = all;
    serde_json::from_value(value).expect("still a CRD")
}

/// The merge patch that points a CRD's conversion at the controller's
/// webhook (`weft-webhook` in `namespace`, `POST /convert`), trusting
/// `ca_pem`.
pub fn conversion_patch(namespace: &str, ca_pem: &str) -> Value {
    use base64::Engine as _;
    json!({"spec": {"conversion": {
        "strategy": "Webhook",
        "webhook": {
            "conversionReviewVersions": ["v1"],
            "clientConfig": {
                "service": {
                    "namespace": namespace,
                    "name": "weft-webhook",
                    "path": "/convert",
                    "port": 443,
                },
                "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
            },
        },
    }}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn schema_of(crd: &CustomResourceDefinition, version: &str) -> Value {
        let v = serde_json::to_value(crd).unwrap();
        v["spec"]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == version)
            .map(|v| v["schema"]["openAPIV3Schema"].clone())
            .unwrap()
    }

    #[test]
    fn every_version_is_served_and_v1alpha4_is_stored() {
        for crd in [
            traffic_split(super::super::TrafficSplit::crd()),
            http_route_group(super::super::HTTPRouteGroup::crd()),
        ] {
            let versions: Vec<(String, bool, bool)> = crd
                .spec
                .versions
                .iter()
                .map(|v| (v.name.clone(), v.served, v.storage))
                .collect();
            assert_eq!(
                versions,
                [
                    ("v1alpha1".into(), true, false),
                    ("v1alpha2".into(), true, false),
                    ("v1alpha3".into(), true, false),
                    ("v1alpha4".into(), true, true),
                ]
            );
        }
    }

    #[test]
    fn each_version_has_its_own_shape() {
        let ts = traffic_split(super::super::TrafficSplit::crd());
        let spec = |v| schema_of(&ts, v)["properties"]["spec"]["properties"].clone();
        assert!(spec("v1alpha3").get("matches").is_some());
        assert!(spec("v1alpha2").get("matches").is_none());
        assert_eq!(
            spec("v1alpha2")["backends"]["items"]["properties"]["weight"]["type"],
            "integer"
        );
        let w1 = &spec("v1alpha1")["backends"]["items"]["properties"]["weight"];
        assert_eq!(w1["x-kubernetes-int-or-string"], true);
        let pattern = regex::Regex::new(w1["pattern"].as_str().unwrap()).unwrap();
        for ok in ["1", "500m", "1.5", "2Ki", "1e3"] {
            assert!(pattern.is_match(ok), "{ok}");
        }
        for bad in ["-1", "half", "1x", ""] {
            assert!(!pattern.is_match(bad), "{bad}");
        }

        let rg = http_route_group(super::super::HTTPRouteGroup::crd());
        let v2 = schema_of(&rg, "v1alpha2");
        assert!(v2["properties"].get("spec").is_none());
        assert!(v2["properties"]["matches"]["items"]["properties"]["headers"].is_object());
        let v1 = schema_of(&rg, "v1alpha1");
        assert!(
            v1["properties"]["matches"]["items"]["properties"]
                .get("headers")
                .is_none()
        );
        assert!(schema_of(&rg, "v1alpha3")["properties"]["spec"].is_object());
    }

    /// Each version's schema, as data: what SMI allows at that version is
    /// accepted, what it forbids is refused (the cluster suite checks the
    /// same on a real API server).
    #[test]
    fn each_versions_schema_accepts_and_refuses_what_it_should() {
        let ts = traffic_split(super::super::TrafficSplit::crd());
        let split = |weight: Value, matches: bool| {
            let mut o = json!({
                "apiVersion": "x", "kind": "TrafficSplit", "metadata": {"name": "web"},
                "spec": {"service": "web", "backends": [{"service": "web-v1", "weight": weight}]},
            });
            if matches {
                o["spec"]["matches"] = json!([{"kind": "HTTPRouteGroup", "name": "ab"}]);
            }
            o
        };
        let valid = |crd: &CustomResourceDefinition, v: &str, o: &Value| {
            jsonschema::validator_for(&schema_of(crd, v))
                .expect("a valid schema")
                .is_valid(o)
        };
        for (version, object, ok) in [
            ("v1alpha1", split(json!("500m"), false), true),
            ("v1alpha1", split(json!("90"), false), true),
            ("v1alpha1", split(json!(90), false), true),
            ("v1alpha1", split(json!("-1"), false), false),
            ("v1alpha1", split(json!("half"), false), false),
            ("v1alpha2", split(json!(90), false), true),
            ("v1alpha2", split(json!(1.5), false), false),
            ("v1alpha2", split(json!(-1), false), false),
            ("v1alpha2", split(json!("500m"), false), false),
            ("v1alpha3", split(json!(90), true), true),
            ("v1alpha4", split(json!(90), true), true),
            ("v1alpha4", split(json!(-3), true), false),
        ] {
            assert_eq!(valid(&ts, version, &object), ok, "{version}: {object}");
        }
        let rg = http_route_group(super::super::HTTPRouteGroup::crd());
        let top = json!({"apiVersion": "x", "kind": "HTTPRouteGroup", "metadata": {"name": "ab"},
            "matches": [{"name": "m", "methods": ["GET"]}]});
        let under_spec = json!({"apiVersion": "x", "kind": "HTTPRouteGroup", "metadata": {"name": "ab"},
            "spec": {"matches": [{"name": "m", "methods": ["GET"]}]}});
        let bad_method = json!({"apiVersion": "x", "kind": "HTTPRouteGroup", "metadata": {"name": "ab"},
            "matches": [{"name": "m", "methods": ["FETCH"]}]});
        assert!(valid(&rg, "v1alpha1", &top));
        assert!(!valid(&rg, "v1alpha1", &bad_method));
        assert!(valid(&rg, "v1alpha2", &top));
        assert!(valid(&rg, "v1alpha4", &under_spec));
        assert!(!valid(&rg, "v1alpha4", &top), "v1alpha4 requires spec");
    }
}
