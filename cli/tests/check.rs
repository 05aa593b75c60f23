//! `weft check` against a fake API server holding what the chart installs
//! (rendered by the real renderer with real certificates): every check
//! passes on a healthy mesh, and each way it can be unhealthy fails the
//! right check with a hint.

use std::time::Duration;

use serde_json::{Value, json};
use weft_cli::chart::{self, Release};
use weft_cli::check::{self, Outcome};
use weft_controller::identity::ca;
use weft_tests::fake_api::FakeApi;

const DAY: u64 = 86400;
const WARNING: Duration = Duration::from_secs(30 * DAY);

/// Chart values with fresh certificates: an issuer valid `issuer_days`.
fn values(issuer_days: u64) -> Value {
    let anchor = ca::new_trust_anchor("cluster.local", Duration::from_secs(3650 * DAY)).unwrap();
    let issuer = ca::new_issuer(
        &anchor,
        "cluster.local",
        Duration::from_secs(issuer_days * DAY),
    )
    .unwrap();
    let (hook_ca, hook) = ca::new_serving_pair(
        "hook-ca",
        &["weft-webhook.weft.svc".to_string()],
        Duration::from_secs(365 * DAY),
    )
    .unwrap();
    let mut v = chart::default_values();
    for (path, pem) in [
        ("identity.trustAnchorsPEM", anchor.cert_pem),
        ("identity.issuer.certPEM", issuer.cert_pem),
        ("identity.issuer.keyPEM", issuer.key_pem),
        ("webhook.certPEM", hook.cert_pem),
        ("webhook.keyPEM", hook.key_pem),
        ("webhook.caBundlePEM", hook_ca.cert_pem),
    ] {
        chart::set_path(&mut v, path, json!(pem)).unwrap();
    }
    v
}

fn store(api: &FakeApi, obj: &Value) {
    api.apply(&serde_yaml_ng::to_string(obj).unwrap());
}

/// A cluster after `helm install` with healthy controllers and `meshed`
/// running meshed pods of which `connected` have a stream open.
async fn installed(issuer_days: u64, meshed: usize, connected: usize) -> FakeApi {
    let api = FakeApi::start().await;
    let release = Release {
        name: "weft".into(),
        namespace: "weft".into(),
    };
    let mut manifests = chart::crds();
    manifests.extend(chart::render(&values(issuer_days), &release).unwrap());
    for m in manifests {
        for doc in serde_yaml_ng::Deserializer::from_str(&m.text) {
            let mut obj: Value = serde::Deserialize::deserialize(doc).unwrap();
            if obj.is_null() {
                continue;
            }
            match obj["kind"].as_str() {
                Some("CustomResourceDefinition") => {
                    obj["status"] =
                        json!({"conditions": [{"type": "Established", "status": "True"}]});
                }
                Some("Deployment") => {
                    obj["status"] = json!({"replicas": 2, "availableReplicas": 2})
                }
                _ => {}
            }
            store(&api, &obj);
        }
    }
    for i in 0..2 {
        store(
            &api,
            &json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("weft-controller-{i}"), "namespace": "weft", "labels": {"app.kubernetes.io/name": "weft-controller"}},
            "spec": {"containers": []}, "status": {"phase": "Running"}}),
        );
        // The proxies spread over the two replicas.
        let streams = connected / 2 + if i == 0 { connected % 2 } else { 0 };
        api.proxy_answer("weft", "pods", &format!("weft-controller-{i}:9990"), "/metrics", 200,
            &format!("# HELP discovery_streams x\ndiscovery_streams {streams}\ndiscovery_pushes_total 9\n"));
    }
    for i in 0..meshed {
        store(
            &api,
            &json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("web-{i}"), "namespace": "shop", "annotations": {"weft.dev/proxy-version": "0.1.0"}},
            "spec": {"containers": []}, "status": {"phase": "Running"}}),
        );
    }
    store(
        &api,
        &json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "unmeshed", "namespace": "shop"}, "spec": {"containers": []}, "status": {"phase": "Running"}}),
    );
    api.proxy_answer(
        "weft",
        "services",
        "https:weft-webhook:443",
        "/inject",
        405,
        "POST an AdmissionReview\n",
    );
    api.set_injects(true);
    api
}

fn failed(outcomes: &[Outcome]) -> Vec<&'static str> {
    outcomes.iter().filter(|o| !o.ok).map(|o| o.name).collect()
}

#[tokio::test]
async fn a_healthy_mesh_passes_every_check() {
    let api = installed(365, 3, 3).await;
    let outcomes = check::post_install(&api.client(), "weft", WARNING).await;
    assert_eq!(failed(&outcomes), Vec::<&str>::new(), "{outcomes:#?}");
    assert_eq!(outcomes.len(), 10, "{outcomes:#?}");
    let proxies = outcomes
        .iter()
        .find(|o| o.name.contains("proxy is connected"))
        .unwrap();
    assert!(
        proxies
            .detail
            .contains("3 meshed pods, 3 streams open to 2 controller(s)"),
        "{proxies:?}"
    );
}

#[tokio::test]
async fn each_problem_fails_its_check_with_a_hint() {
    // Issuer expiring in 10 days, one proxy not connected, webhook down.
    let api = installed(10, 3, 2).await;
    api.set_injects(false);
    api.proxy_answer(
        "weft",
        "services",
        "https:weft-webhook:443",
        "/inject",
        503,
        "no endpoints available",
    );
    let outcomes = check::post_install(&api.client(), "weft", WARNING).await;
    assert_eq!(
        failed(&outcomes),
        [
            "the injector webhook answers",
            "the injector webhook meshes new pods",
            "the identity issuer and trust anchors are valid",
            "every meshed pod's proxy is connected"
        ],
        "{outcomes:#?}"
    );
    for o in outcomes.iter().filter(|o| !o.ok) {
        assert!(!o.hint.is_empty(), "{o:?}");
    }
    let issuer = outcomes.iter().find(|o| o.name.contains("issuer")).unwrap();
    assert!(issuer.detail.contains("expires in"), "{issuer:?}");

    // The controller gone and a CRD missing.
    api.delete("apps/v1", "Deployment", "weft", "weft-controller");
    api.delete(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "",
        "retrypolicies.weft.dev",
    );
    let outcomes = check::post_install(&api.client(), "weft", WARNING).await;
    let names = failed(&outcomes);
    assert!(
        names.contains(&"the controller is ready") && names.contains(&"the CRDs are installed"),
        "{outcomes:#?}"
    );
    let crds = outcomes
        .iter()
        .find(|o| o.name == "the CRDs are installed")
        .unwrap();
    assert!(
        crds.detail.contains("retrypolicies.weft.dev is missing"),
        "{crds:?}"
    );
}

#[tokio::test]
async fn pre_install_checks_version_rights_and_crds() {
    let api = FakeApi::start().await;
    let outcomes = check::pre_install(&api.client(), "weft").await;
    assert_eq!(failed(&outcomes), Vec::<&str>::new(), "{outcomes:#?}");

    api.deny(
        "create",
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
    );
    // A CRD of the same name that serves other versions.
    api.apply("apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: trafficsplits.split.smi-spec.io\nspec:\n  group: split.smi-spec.io\n  scope: Namespaced\n  names: {kind: TrafficSplit, plural: trafficsplits}\n  versions:\n  - {name: v1alpha2, served: true, storage: true}\n");
    let outcomes = check::pre_install(&api.client(), "weft").await;
    assert_eq!(
        failed(&outcomes),
        [
            "you may create everything the chart installs",
            "the CRDs are absent or compatible"
        ],
        "{outcomes:#?}"
    );
    let rights = outcomes.iter().find(|o| !o.ok).unwrap();
    assert!(
        rights.detail.contains("mutatingwebhookconfigurations"),
        "{rights:?}"
    );

    api.set_version("1", "25");
    let outcomes = check::pre_install(&api.client(), "weft").await;
    assert_eq!(
        failed(&outcomes),
        ["Kubernetes is 1.26 or newer"],
        "{outcomes:#?}"
    );
}
