//! Kubernetes YAML (or JSON) into index objects: every document of a file,
//! `List`s included; kinds the mesh does not read are skipped.

use serde::Deserialize;
use serde_json::Value;

use crate::crd::smi;
use crate::index::Object;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("document {doc}: not YAML: {reason}")]
    Yaml { doc: usize, reason: String },
    #[error("document {doc} ({kind} {name}): {reason}")]
    Object {
        doc: usize,
        kind: String,
        name: String,
        reason: String,
    },
}

/// Every object in a multi-document YAML text. One bad document fails the
/// whole text, so that a half-read file never replaces a good one.
pub fn parse_documents(text: &str) -> Result<Vec<Object>, ParseError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| ParseError::Yaml {
            doc: i + 1,
            reason: e.to_string(),
        })?;
        collect(value, i + 1, &mut out)?;
    }
    Ok(out)
}

fn collect(value: Value, doc: usize, out: &mut Vec<Object>) -> Result<(), ParseError> {
    if value.is_null() {
        return Ok(());
    }
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if kind.ends_with("List") && value.get("items").is_some() {
        for item in value["items"].as_array().into_iter().flatten() {
            collect(item.clone(), doc, out)?;
        }
        return Ok(());
    }
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let err = |reason: String| ParseError::Object {
        doc,
        kind: kind.clone(),
        name: name.clone(),
        reason,
    };
    if kind.is_empty() || api_version.is_empty() {
        return Err(err("apiVersion and kind are required".into()));
    }
    if name.is_empty() {
        return Err(err("metadata.name is required".into()));
    }
    fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }
    let obj = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => Object::Namespace(typed(value).map_err(err)?),
        ("v1", "Service") => Object::Service(typed(value).map_err(err)?),
        ("v1", "Pod") => Object::Pod(typed(value).map_err(err)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            Object::EndpointSlice(typed(value).map_err(err)?)
        }
        // Every served SMI version, converted to v1alpha4 as the API
        // server's conversion webhook would.
        (av, "TrafficSplit" | "HTTPRouteGroup")
            if av.starts_with("split.smi-spec.io/") || av.starts_with("specs.smi-spec.io/") =>
        {
            let group = av.split('/').next().unwrap_or_default();
            let hub = smi::convert::convert(value, &format!("{group}/v1alpha4"))
                .map_err(|e| err(e.to_string()))?;
            match kind.as_str() {
                "TrafficSplit" => Object::TrafficSplit(typed(hub).map_err(err)?),
                _ => Object::HTTPRouteGroup(typed(hub).map_err(err)?),
            }
        }
        ("gateway.networking.k8s.io/v1", "HTTPRoute") => {
            Object::HTTPRoute(typed(value).map_err(err)?)
        }
        ("gateway.networking.k8s.io/v1", "GRPCRoute") => {
            Object::GRPCRoute(typed(value).map_err(err)?)
        }
        ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant") => {
            Object::ReferenceGrant(typed(value).map_err(err)?)
        }
        ("weft.dev/v1alpha1", "RetryPolicy") => Object::RetryPolicy(typed(value).map_err(err)?),
        ("weft.dev/v1alpha1", "AuthorizationPolicy") => {
            Object::AuthorizationPolicy(typed(value).map_err(err)?)
        }
        ("split.smi-spec.io", _) | ("weft.dev", _) => {
            return Err(err(format!("{api_version} is not a served version")));
        }
        (av, k)
            if av.starts_with("split.smi-spec.io/")
                || av.starts_with("weft.dev/")
                || av.starts_with("specs.smi-spec.io/") =>
        {
            return Err(err(format!("{k} is not served at {av}")));
        }
        _ => {
            tracing::debug!(%api_version, %kind, %name, "skipping a kind the mesh does not read");
            return Ok(());
        }
    };
    out.push(obj);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_files_and_lists() {
        let objs = parse_documents(
            r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 198.19.0.10, ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: shop}
---
"#,
        )
        .unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].object_ref().to_string(), "Service shop/web");
        assert_eq!(objs[1].object_ref().to_string(), "Namespace shop");
    }

    #[test]
    fn negative_and_fractional_weights_are_refused() {
        for weight in ["-1", "0.5"] {
            let err = parse_documents(&format!(
                "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: s}}\nspec: {{service: web, backends: [{{service: v1, weight: {weight}}}]}}"
            ))
            .unwrap_err();
            assert!(
                matches!(&err, ParseError::Object { kind, name, .. } if kind == "TrafficSplit" && name == "s"),
                "{err}"
            );
        }
    }

    #[test]
    fn every_smi_version_is_read_as_v1alpha4() {
        let objs = parse_documents(
            "apiVersion: split.smi-spec.io/v1alpha1\nkind: TrafficSplit\nmetadata: {name: s, namespace: shop}\nspec: {service: web, backends: [{service: v1, weight: 500m}, {service: v2, weight: \"1\"}]}\n---\napiVersion: specs.smi-spec.io/v1alpha2\nkind: HTTPRouteGroup\nmetadata: {name: g, namespace: shop}\nmatches: [{name: m, pathRegex: /api}]\n",
        )
        .unwrap();
        let [Object::TrafficSplit(ts), Object::HTTPRouteGroup(g)] = &objs[..] else {
            panic!("{objs:?}")
        };
        let weights: Vec<u32> = ts.spec.backends.iter().map(|b| b.weight).collect();
        assert_eq!(weights, [1, 2]);
        assert_eq!(g.spec.matches[0].path_regex.as_deref(), Some("/api"));
        let err = parse_documents(
            "apiVersion: split.smi-spec.io/v1alpha9\nkind: TrafficSplit\nmetadata: {name: s}\nspec: {service: web, backends: []}",
        )
        .unwrap_err();
        assert!(err.to_string().contains("v1alpha9"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_document() {
        let err = parse_documents(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\nkind: [unclosed\n",
        )
        .unwrap_err();
        assert!(matches!(err, ParseError::Yaml { doc: 2, .. }), "{err}");
    }

    #[test]
    fn unknown_versions_of_our_groups_are_errors_not_skips() {
        let err = parse_documents(
            "apiVersion: weft.dev/v9\nkind: RetryPolicy\nmetadata: {name: r}\nspec: {}",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("RetryPolicy is not served at weft.dev/v9"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod examples {
    use super::*;
    use crate::index::{Index, IndexConfig};

    /// The sample mesh in examples/shop parses, and resolves with no problems.
    #[test]
    fn the_shop_example_is_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop");
        let mut index = Index::new(IndexConfig {
            derive_endpoints_from_pods: true,
            ..IndexConfig::default()
        });
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                for o in parse_documents(&std::fs::read_to_string(&path).unwrap()).unwrap() {
                    index.apply(o);
                }
            }
        }
        assert!(
            index.problems().values().all(|p| p.is_empty()),
            "{:?}",
            index.problems()
        );
        match index.destination("198.19.0.10:80") {
            weft_proto::model::Body::Destination(d) => {
                assert_eq!(d.routes[0].backends.len(), 2);
                assert!(d.routes[0].backends.iter().all(|b| b.endpoints.len() == 1));
                assert!(d.retry.is_some());
            }
            other => panic!("{other:?}"),
        }
    }
}
