//! Whether a pod gets the sidecar.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{INIT_CONTAINER, INJECT_ANNOTATION, PROXY_CONTAINER, PROXY_VERSION_ANNOTATION};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Inject,
    /// Left alone, and why (for the webhook's log and `weft inject`'s report).
    Skip(String),
}

/// Decides for a pod (or a workload's pod template: `{metadata, spec}`) in a
/// namespace with these annotations. The pod's own `weft.dev/inject` wins
/// over the namespace's.
pub fn decide(pod: &Value, namespace_annotations: &BTreeMap<String, String>) -> Decision {
    let skip = |why: &str| Decision::Skip(why.to_string());
    let spec = &pod["spec"];
    if spec["hostNetwork"].as_bool() == Some(true) {
        return skip(
            "the pod uses the host's network (redirecting it would capture the node's traffic)",
        );
    }
    if already_injected(pod) {
        return skip("already injected");
    }
    let pod_says = pod["metadata"]["annotations"][INJECT_ANNOTATION].as_str();
    let ns_says = namespace_annotations
        .get(INJECT_ANNOTATION)
        .map(String::as_str);
    match (pod_says, ns_says) {
        (Some("enabled"), _) => Decision::Inject,
        (Some("disabled"), _) => skip("the pod's weft.dev/inject is disabled"),
        (Some(other), _) => Decision::Skip(format!(
            "the pod's weft.dev/inject is '{other}' (expected enabled or disabled)"
        )),
        (None, Some("enabled")) => Decision::Inject,
        (None, _) => skip("neither the pod nor its namespace has weft.dev/inject: enabled"),
    }
}

/// True when the pod carries the version annotation or a container of ours.
pub fn already_injected(pod: &Value) -> bool {
    if pod["metadata"]["annotations"][PROXY_VERSION_ANNOTATION].is_string() {
        return true;
    }
    ["containers", "initContainers"].iter().any(|list| {
        pod["spec"][list].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| matches!(c["name"].as_str(), Some(PROXY_CONTAINER | INIT_CONTAINER)))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ns(inject: Option<&str>) -> BTreeMap<String, String> {
        inject
            .map(|v| (INJECT_ANNOTATION.to_string(), v.to_string()))
            .into_iter()
            .collect()
    }

    fn pod(annotations: Value, spec: Value) -> Value {
        json!({"metadata": {"annotations": annotations}, "spec": spec})
    }

    #[test]
    fn the_pod_annotation_wins_over_the_namespace() {
        let plain = pod(json!({}), json!({"containers": [{"name": "app"}]}));
        assert_eq!(decide(&plain, &ns(Some("enabled"))), Decision::Inject);
        assert!(matches!(decide(&plain, &ns(None)), Decision::Skip(_)));
        assert!(matches!(
            decide(&plain, &ns(Some("disabled"))),
            Decision::Skip(_)
        ));

        let opted_out = pod(json!({"weft.dev/inject": "disabled"}), json!({}));
        assert!(matches!(
            decide(&opted_out, &ns(Some("enabled"))),
            Decision::Skip(_)
        ));
        let opted_in = pod(json!({"weft.dev/inject": "enabled"}), json!({}));
        assert_eq!(decide(&opted_in, &ns(None)), Decision::Inject);
        let odd = pod(json!({"weft.dev/inject": "yes"}), json!({}));
        match decide(&odd, &ns(Some("enabled"))) {
            Decision::Skip(why) => assert!(why.contains("'yes'"), "{why}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn host_network_and_injected_pods_are_skipped() {
        let host = pod(json!({}), json!({"hostNetwork": true}));
        match decide(&host, &ns(Some("enabled"))) {
            Decision::Skip(why) => assert!(why.contains("host"), "{why}"),
            d => panic!("{d:?}"),
        }
        let annotated = pod(json!({"weft.dev/proxy-version": "0.1.0"}), json!({}));
        assert_eq!(
            decide(&annotated, &ns(Some("enabled"))),
            Decision::Skip("already injected".into())
        );
        let by_hand = pod(
            json!({}),
            json!({"initContainers": [{"name": "weft-proxy"}], "containers": [{"name": "app"}]}),
        );
        assert!(already_injected(&by_hand));
    }
}
