//! The SMI CRDs' conversion webhook: `POST /convert` answers a
//! ConversionReview (apiextensions.k8s.io/v1) with the objects in the
//! version asked for ([`crate::crd::smi::convert`]). One object that cannot
//! be converted fails the review with its reason, as the API server wants:
//! it then refuses the request that needed it, and nothing is stored half
//! converted.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::crd::smi::convert::convert;
use crate::crd::smi::versions::conversion_patch;

/// The CRDs whose versions this webhook converts.
pub const CRDS: [&str; 2] = [
    "trafficsplits.split.smi-spec.io",
    "httproutegroups.specs.smi-spec.io",
];

/// Points the SMI CRDs' conversion at this controller's webhook
/// (`weft-webhook` in `namespace`), trusting `ca_pem`; retried every 30 s
/// until it holds. A CRD that is not installed is left alone.
pub async fn point_crds_here(client: kube::Client, namespace: String, ca_pem: String) {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let patch = conversion_patch(&namespace, &ca_pem);
    let mut pending: Vec<&str> = CRDS.to_vec();
    loop {
        let mut failed = Vec::new();
        for name in pending {
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => tracing::info!(
                    crd = name,
                    "conversion webhook set: v1alpha1 to v1alpha4 served"
                ),
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    tracing::info!(crd = name, "not installed; its conversion is not set")
                }
                Err(kube::Error::Api(e)) if e.code == 403 => {
                    tracing::error!(crd = name, error = %e.message, "cannot set the conversion webhook: the controller's ClusterRole needs get and patch on customresourcedefinitions {name} (the chart's RBAC has it)");
                    failed.push(name);
                }
                Err(e) => {
                    tracing::warn!(crd = name, error = %e, "cannot set the conversion webhook yet; retrying");
                    failed.push(name);
                }
            }
        }
        if failed.is_empty() {
            return;
        }
        pending = failed;
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

/// The answer to a ConversionReview, and whether it succeeded; `Err` when
/// the body is not a ConversionReview at all (a 400).
pub fn answer(body: &[u8]) -> Result<(Value, bool), String> {
    let review: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if review["kind"] != "ConversionReview" {
        return Err("not a ConversionReview".into());
    }
    let request = &review["request"];
    let uid = request["uid"].as_str().ok_or("request.uid is missing")?;
    let desired = request["desiredAPIVersion"]
        .as_str()
        .ok_or("request.desiredAPIVersion is missing")?;
    let objects = request["objects"]
        .as_array()
        .ok_or("request.objects is missing")?;
    let converted: Result<Vec<Value>, String> = objects
        .iter()
        .map(|o| {
            convert(o.clone(), desired).map_err(|e| {
                let name = o["metadata"]["name"].as_str().unwrap_or("?");
                format!("{}/{name}: {e}", o["kind"].as_str().unwrap_or("?"))
            })
        })
        .collect();
    let ok = converted.is_ok();
    let response = match converted {
        Ok(objects) => json!({
            "uid": uid,
            "result": {"status": "Success"},
            "convertedObjects": objects,
        }),
        Err(message) => json!({
            "uid": uid,
            "result": {"status": "Failure", "message": message},
        }),
    };
    Ok((
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "ConversionReview",
            "response": response,
        }),
        ok,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(desired: &str, weight: &str) -> Vec<u8> {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "ConversionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "desiredAPIVersion": desired,
                "objects": [{
                    "apiVersion": "split.smi-spec.io/v1alpha1",
                    "kind": "TrafficSplit",
                    "metadata": {"name": "web", "namespace": "shop"},
                    "spec": {"service": "web", "backends": [
                        {"service": "web-primary", "weight": weight},
                        {"service": "web-canary", "weight": "500m"},
                    ]},
                }],
            },
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn objects_come_back_in_the_version_asked_for() {
        let (out, ok) = answer(&review("split.smi-spec.io/v1alpha4", "1")).unwrap();
        assert!(ok);
        let r = &out["response"];
        assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(r["result"]["status"], "Success");
        let o = &r["convertedObjects"][0];
        assert_eq!(o["apiVersion"], "split.smi-spec.io/v1alpha4");
        assert_eq!(o["spec"]["backends"][0]["weight"], 2);
        assert_eq!(o["spec"]["backends"][1]["weight"], 1);
    }

    #[test]
    fn an_object_that_cannot_be_converted_fails_the_review_with_its_reason() {
        let (out, ok) = answer(&review("split.smi-spec.io/v1alpha4", "lots")).unwrap();
        assert!(!ok);
        let r = &out["response"];
        assert_eq!(r["result"]["status"], "Failure");
        let message = r["result"]["message"].as_str().unwrap();
        assert!(
            message.contains("TrafficSplit/web: spec.backends[0].weight: 'lots'"),
            "{message}"
        );
        assert!(r.get("convertedObjects").is_none());
    }

    #[test]
    fn what_is_not_a_review_is_a_bad_request() {
        assert!(answer(b"{}").is_err());
        assert!(answer(b"nope").is_err());
    }
}
