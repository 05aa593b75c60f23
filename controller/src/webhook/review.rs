//! One AdmissionReview in, one out: the webhook's logic without the server.
//! A pod is never refused: anything the injector cannot handle is allowed
//! unchanged, with a warning that `kubectl` shows the user.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Value, json};

use crate::inject::{self, Decision, InjectorConfig, Layout};

/// What the webhook knows besides the request.
pub struct Context<'a> {
    pub config: &'a InjectorConfig,
    pub layout: Layout,
    /// The pod's namespace's `weft.dev/` annotations.
    pub namespace_annotations: &'a BTreeMap<String, String>,
}

/// The request could not be answered at all (no uid to answer to): the
/// server says 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not an admission.k8s.io/v1 AdmissionReview with a request: {0}")]
pub struct BadReview(pub String);

/// What became of the pod, for logs and metrics.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Injected,
    Skipped(String),
    /// Allowed unchanged because injecting failed.
    Failed(String),
}

/// The pod's namespace: the request's (a pod made by a controller has no
/// namespace in its own metadata yet).
pub fn namespace_of(review: &Value) -> Option<&str> {
    review["request"]["namespace"]
        .as_str()
        .or_else(|| review["request"]["object"]["metadata"]["namespace"].as_str())
}

pub fn parse(body: &[u8]) -> Result<Value, BadReview> {
    let review: Value =
        serde_json::from_slice(body).map_err(|e| BadReview(format!("invalid JSON: {e}")))?;
    if review["apiVersion"] != "admission.k8s.io/v1" || review["kind"] != "AdmissionReview" {
        return Err(BadReview(format!(
            "apiVersion {} kind {}",
            review["apiVersion"], review["kind"]
        )));
    }
    if !review["request"]["uid"].is_string() {
        return Err(BadReview("request.uid is missing".into()));
    }
    Ok(review)
}

/// Answers a parsed review (see [`parse`]).
pub fn answer(review: &Value, ctx: &Context<'_>) -> (Value, Verdict) {
    let request = &review["request"];
    let mut response = json!({"uid": request["uid"], "allowed": true});
    let pod = &request["object"];
    let verdict = if request["kind"]["kind"] != "Pod" || request["operation"] != "CREATE" {
        Verdict::Skipped(format!(
            "{} of a {}: only new pods are injected",
            request["operation"].as_str().unwrap_or("?"),
            request["kind"]["kind"].as_str().unwrap_or("?")
        ))
    } else if !pod.is_object() {
        Verdict::Failed("request.object is not a pod".into())
    } else {
        match inject::decide(pod, ctx.namespace_annotations) {
            Decision::Skip(why) => Verdict::Skipped(why),
            Decision::Inject => {
                let mut injected = pod.clone();
                match inject::inject(
                    &mut injected,
                    ctx.config,
                    ctx.layout,
                    ctx.namespace_annotations,
                ) {
                    Ok(()) => {
                        let patch = json_patch::diff(pod, &injected);
                        let bytes = serde_json::to_vec(&patch).expect("a patch serializes");
                        response["patchType"] = json!("JSONPatch");
                        response["patch"] =
                            json!(base64::engine::general_purpose::STANDARD.encode(bytes));
                        Verdict::Injected
                    }
                    Err(e) => Verdict::Failed(e.to_string()),
                }
            }
        }
    };
    if let Verdict::Failed(why) = &verdict {
        response["warnings"] = json!([format!("weft: the pod was not meshed: {why}")]);
    }
    let out = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    });
    (out, verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(pod: Value) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE",
                "namespace": "shop",
                "object": pod,
            }
        })
    }

    fn ctx<'a>(config: &'a InjectorConfig, ns: &'a BTreeMap<String, String>) -> Context<'a> {
        Context {
            config,
            layout: Layout::Native,
            namespace_annotations: ns,
        }
    }

    fn apply_patch(pod: &Value, response: &Value) -> Value {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        let mut out = pod.clone();
        json_patch::patch(&mut out, &patch).unwrap();
        out
    }

    #[test]
    fn an_enabled_namespace_gets_a_patch_that_injects() {
        let config = InjectorConfig::default();
        let ns: BTreeMap<_, _> = [("weft.dev/inject".to_string(), "enabled".to_string())].into();
        let pod = json!({"metadata": {"name": "web-1", "labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": "nginx"}]}});
        let (out, verdict) = answer(&review(pod.clone()), &ctx(&config, &ns));
        assert_eq!(verdict, Verdict::Injected);
        let response = &out["response"];
        assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        let patched = apply_patch(&pod, response);
        let mut expected = pod.clone();
        inject::inject(&mut expected, &config, Layout::Native, &ns).unwrap();
        assert_eq!(
            patched, expected,
            "the patch makes exactly the injected pod"
        );
        assert_eq!(patched["spec"]["initContainers"][1]["name"], "weft-proxy");
    }

    #[test]
    fn skips_and_failures_are_allowed_unchanged() {
        let config = InjectorConfig::default();
        let none = BTreeMap::new();
        let pod = json!({"metadata": {"name": "a"}, "spec": {"containers": []}});
        let (out, verdict) = answer(&review(pod), &ctx(&config, &none));
        assert!(matches!(verdict, Verdict::Skipped(_)), "{verdict:?}");
        assert_eq!(out["response"]["allowed"], true);
        assert!(out["response"].get("patch").is_none());

        let bad = json!({"metadata": {"annotations": {
            "weft.dev/inject": "enabled", "weft.dev/skip-inbound-ports": "80,http"}},
            "spec": {"containers": []}});
        let (out, verdict) = answer(&review(bad), &ctx(&config, &none));
        assert!(
            matches!(&verdict, Verdict::Failed(w) if w.contains("skip-inbound-ports")),
            "{verdict:?}"
        );
        assert_eq!(out["response"]["allowed"], true);
        assert!(out["response"].get("patch").is_none());
        let warning = out["response"]["warnings"][0].as_str().unwrap();
        assert!(
            warning.contains("not meshed") && warning.contains("80,http"),
            "{warning}"
        );

        let odd = json!({"metadata": {"annotations": {"weft.dev/inject": "enabled"}},
                         "spec": {"containers": "web"}});
        let (out, verdict) = answer(&review(odd), &ctx(&config, &none));
        assert!(matches!(verdict, Verdict::Failed(_)), "{verdict:?}");
        assert_eq!(out["response"]["allowed"], true);
    }

    #[test]
    fn requests_without_a_uid_are_errors() {
        assert!(parse(b"{").unwrap_err().0.contains("invalid JSON"));
        let e = parse(br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#);
        assert!(e.unwrap_err().0.contains("v1beta1"));
        let e =
            parse(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#);
        assert!(e.unwrap_err().0.contains("uid"));
    }
}
