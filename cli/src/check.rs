//! `weft check`: is the cluster ready for Weft (`--pre`), and is the
//! installed mesh healthy. Each check prints what it found, and a hint when
//! it fails; the exit status is non-zero when any check fails.

use std::collections::BTreeSet;
use std::time::Duration;

use clap::Args;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use serde_json::Value;
use weft_controller::identity::ca::Ca;
use weft_proto::duration;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::chart;

/// The oldest Kubernetes the chart supports (its kubeVersion).
pub const MIN_VERSION: (u32, u32) = (1, 26);

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Before installing: can this cluster and this user install Weft?
    #[arg(long)]
    pub pre: bool,
    /// The namespace Weft is (to be) installed in.
    #[arg(long, short = 'n', default_value = "weft")]
    pub namespace: String,
    /// Certificates expiring sooner than this fail the check.
    #[arg(long, default_value = "720h", value_parser = duration::parse)]
    pub expiry_warning: Duration,
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub name: &'static str,
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do about a failure.
    pub hint: &'static str,
}

fn pass(name: &'static str, detail: impl Into<String>) -> Outcome {
    Outcome {
        name,
        ok: true,
        detail: detail.into(),
        hint: "",
    }
}

fn fail(name: &'static str, detail: impl Into<String>, hint: &'static str) -> Outcome {
    Outcome {
        name,
        ok: false,
        detail: detail.into(),
        hint,
    }
}

/// The API server is there, and new enough.
pub async fn api_checks(client: &kube::Client) -> Vec<Outcome> {
    let info = match client.apiserver_version().await {
        Ok(i) => i,
        Err(e) => {
            return vec![fail(
                "the Kubernetes API is reachable",
                e.to_string(),
                "check KUBECONFIG and the current context (kubectl cluster-info)",
            )];
        }
    };
    let mut out = vec![pass(
        "the Kubernetes API is reachable",
        info.git_version.clone(),
    )];
    let version = weft_controller::inject::config::parse_server_version(&info.major, &info.minor);
    out.push(match version {
        Some(v) if v >= MIN_VERSION => {
            let layout = if v >= (1, 29) {
                "native sidecars"
            } else {
                "classic sidecars (native ones need 1.29)"
            };
            pass(
                "Kubernetes is 1.26 or newer",
                format!("{}.{}: {layout}", v.0, v.1),
            )
        }
        _ => fail(
            "Kubernetes is 1.26 or newer",
            format!("the API server says {}.{}", info.major, info.minor),
            "upgrade the cluster: Weft needs Kubernetes 1.26 or newer",
        ),
    });
    out
}

/// Before installing: rights to create what the chart creates, and no
/// incompatible CRDs in the way.
pub async fn pre_install(client: &kube::Client, namespace: &str) -> Vec<Outcome> {
    let mut out = api_checks(client).await;
    if out.iter().any(|o| !o.ok) {
        return out;
    }
    let needed: &[(&str, &str, bool)] = &[
        ("", "namespaces", false),
        ("", "serviceaccounts", true),
        ("", "services", true),
        ("", "secrets", true),
        ("", "configmaps", true),
        ("apps", "deployments", true),
        ("policy", "poddisruptionbudgets", true),
        ("rbac.authorization.k8s.io", "clusterroles", false),
        ("rbac.authorization.k8s.io", "clusterrolebindings", false),
        ("rbac.authorization.k8s.io", "roles", true),
        ("rbac.authorization.k8s.io", "rolebindings", true),
        ("apiextensions.k8s.io", "customresourcedefinitions", false),
        (
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            false,
        ),
    ];
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut missing = Vec::new();
    for (group, resource, namespaced) in needed {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some("create".into()),
                    group: Some(group.to_string()),
                    resource: Some(resource.to_string()),
                    namespace: namespaced.then(|| namespace.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        match reviews.create(&PostParams::default(), &review).await {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(_) => missing.push(format!("create {resource}")),
            Err(e) => missing.push(format!("create {resource} (cannot ask: {e})")),
        }
    }
    out.push(if missing.is_empty() {
        pass("you may create everything the chart installs", format!("{} kinds of object", needed.len()))
    } else {
        fail(
            "you may create everything the chart installs",
            format!("not allowed: {}", missing.join(", ")),
            "install as a cluster administrator (the chart creates cluster-wide RBAC, CRDs and a webhook)",
        )
    });
    out.push(crds_compatible(client).await);
    out
}

/// Our CRDs: name -> served version names.
fn our_crds() -> Vec<(String, BTreeSet<String>)> {
    chart::CRDS
        .iter()
        .map(|(_, text)| {
            let v: Value = serde_yaml_ng::from_str(text).expect("our CRDs are YAML");
            let versions = v["spec"]["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v["name"].as_str().map(String::from))
                .collect();
            (
                v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                versions,
            )
        })
        .collect()
}

fn served_versions(crd: &CustomResourceDefinition) -> BTreeSet<String> {
    crd.spec
        .versions
        .iter()
        .filter(|v| v.served)
        .map(|v| v.name.clone())
        .collect()
}

async fn crds_compatible(client: &kube::Client) -> Outcome {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut problems = Vec::new();
    let mut present = 0;
    for (name, ours) in our_crds() {
        match api.get_opt(&name).await {
            Ok(None) => {}
            Ok(Some(crd)) => {
                present += 1;
                let theirs = served_versions(&crd);
                if !ours.is_subset(&theirs) {
                    problems.push(format!("{name} serves {theirs:?}, Weft needs {ours:?}"));
                }
            }
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    if problems.is_empty() {
        pass(
            "the CRDs are absent or compatible",
            format!("{present} of 4 already installed, all compatible"),
        )
    } else {
        fail(
            "the CRDs are absent or compatible",
            problems.join("; "),
            "another SMI implementation owns these CRDs with other versions; install with --skip-crds only if they serve Weft's versions",
        )
    }
}

/// After installing: CRDs, controller, webhook, certificates, proxies.
pub async fn post_install(
    client: &kube::Client,
    namespace: &str,
    expiry_warning: Duration,
) -> Vec<Outcome> {
    let mut out = api_checks(client).await;
    if out.iter().any(|o| !o.ok) {
        return out;
    }
    out.push(crds_installed(client).await);
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get_opt("weft-controller")
        .await;
    out.push(controller_ready(&deployment, namespace));
    out.push(webhook_registered(client, namespace).await);
    out.push(webhook_reachable(client, namespace).await);
    out.push(webhook_injects(client).await);
    let secret_of = |volume: &str, default: &str| -> String {
        secret_volume(&deployment, volume).unwrap_or_else(|| default.to_string())
    };
    out.push(
        identity_certificates(
            client,
            namespace,
            &secret_of("identity", "weft-identity-issuer"),
            expiry_warning,
        )
        .await,
    );
    out.push(
        webhook_certificate(
            client,
            namespace,
            &secret_of("webhook", "weft-webhook-tls"),
            expiry_warning,
        )
        .await,
    );
    out.push(proxies_connected(client, namespace).await);
    out
}

async fn crds_installed(client: &kube::Client) -> Outcome {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut problems = Vec::new();
    for (name, ours) in our_crds() {
        match api.get_opt(&name).await {
            Ok(Some(crd)) => {
                let established = crd
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    });
                if !established {
                    problems.push(format!("{name} is not established"));
                } else if !ours.is_subset(&served_versions(&crd)) {
                    problems.push(format!("{name} does not serve {ours:?}"));
                }
            }
            Ok(None) => problems.push(format!("{name} is missing")),
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    if problems.is_empty() {
        pass("the CRDs are installed", "4 of 4, established")
    } else {
        fail(
            "the CRDs are installed",
            problems.join("; "),
            "install the chart (or weft install) with its CRDs",
        )
    }
}

fn controller_ready(d: &kube::Result<Option<Deployment>>, namespace: &str) -> Outcome {
    const NAME: &str = "the controller is ready";
    const HINT: &str =
        "kubectl -n <namespace> describe deployment weft-controller, and its pods' logs";
    match d {
        Err(e) => fail(NAME, e.to_string(), HINT),
        Ok(None) => fail(
            NAME,
            format!("no Deployment weft-controller in {namespace}"),
            "install Weft (helm install or weft install), or pass --namespace",
        ),
        Ok(Some(d)) => {
            let want = d.spec.replicas.unwrap_or(1);
            let available = d
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            if available >= 1 {
                pass(NAME, format!("{available} of {want} replicas available"))
            } else {
                fail(NAME, format!("0 of {want} replicas available"), HINT)
            }
        }
    }
}

/// The Secret a volume of the controller's pod mounts.
fn secret_volume(d: &kube::Result<Option<Deployment>>, volume: &str) -> Option<String> {
    let d = d.as_ref().ok()?.as_ref()?;
    let volumes = d.spec.template.spec.as_ref()?.volumes.as_ref()?;
    volumes
        .iter()
        .find(|v| v.name == volume)?
        .secret
        .as_ref()?
        .secret_name
        .clone()
}

async fn webhook_registered(client: &kube::Client, namespace: &str) -> Outcome {
    const NAME: &str = "the injector webhook is registered";
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let hint = "install the chart; the MutatingWebhookConfiguration weft-injector must point at weft-webhook in Weft's namespace with the webhook CA as caBundle";
    match api.get_opt("weft-injector").await {
        Err(e) => fail(NAME, e.to_string(), hint),
        Ok(None) => fail(NAME, "no MutatingWebhookConfiguration weft-injector", hint),
        Ok(Some(c)) => {
            let hooks = c.webhooks.unwrap_or_default();
            let Some(h) = hooks.first() else {
                return fail(NAME, "weft-injector has no webhook", hint);
            };
            let svc = h.client_config.service.as_ref();
            let right_service =
                svc.is_some_and(|s| s.name == "weft-webhook" && s.namespace == namespace);
            let has_ca = h
                .client_config
                .ca_bundle
                .as_ref()
                .is_some_and(|b| !b.0.is_empty());
            match (right_service, has_ca) {
                (true, true) => pass(
                    NAME,
                    format!(
                        "weft-webhook.{namespace}, failurePolicy {}",
                        h.failure_policy.as_deref().unwrap_or("Fail")
                    ),
                ),
                (false, _) => fail(
                    NAME,
                    format!("it calls {:?}", svc.map(|s| (&s.name, &s.namespace))),
                    hint,
                ),
                (_, false) => fail(NAME, "its caBundle is empty", hint),
            }
        }
    }
}

/// GET /inject through the API server's service proxy: the webhook answers
/// 405 (it takes POSTs), which proves the Service routes to it over TLS.
async fn webhook_reachable(client: &kube::Client, namespace: &str) -> Outcome {
    const NAME: &str = "the injector webhook answers";
    let path =
        format!("/api/v1/namespaces/{namespace}/services/https:weft-webhook:443/proxy/inject");
    let req = http::Request::get(path)
        .body(Vec::new())
        .expect("a valid request");
    let hint = "the controller's webhook port (8443) is not reachable through Service weft-webhook: check the controller pods and the Service's endpoints";
    match client.send(req.map(kube::client::Body::from)).await {
        Ok(rsp) if rsp.status() == http::StatusCode::METHOD_NOT_ALLOWED => {
            pass(NAME, "over HTTPS through Service weft-webhook")
        }
        Ok(rsp) => fail(
            NAME,
            format!("HTTP {} instead of the webhook's answer", rsp.status()),
            hint,
        ),
        Err(e) => fail(NAME, e.to_string(), hint),
    }
}

/// A server-side dry run of a meshed pod in `default`: the API server
/// calls the webhook as it does for every new pod (through the Service's
/// cluster IP, which the service proxy above does not use), and answers
/// with the pod as admitted. Nothing is created.
async fn webhook_injects(client: &kube::Client) -> Outcome {
    const NAME: &str = "the injector webhook meshes new pods";
    let hint = "the API server cannot call the webhook through Service weft-webhook's cluster IP \
        (kube-proxy or the CNI has not programmed it yet, or a NetworkPolicy blocks port 8443): \
        pods created now start without a proxy (failurePolicy Ignore); wait, check kube-proxy, and restart them";
    let pod: Pod = match serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": "weft-check-", "annotations": {"weft.dev/inject": "enabled"}},
        "spec": {"containers": [{"name": "check", "image": "weft-check"}]},
    })) {
        Ok(p) => p,
        Err(e) => return fail(NAME, e.to_string(), hint),
    };
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let admitted = Api::<Pod>::namespaced(client.clone(), "default")
        .create(&params, &pod)
        .await;
    let proxied = |p: &Pod| {
        p.spec.as_ref().is_some_and(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .any(|c| c.name == "weft-proxy")
        })
    };
    match admitted {
        Ok(p) if proxied(&p) => pass(NAME, "a dry-run pod in default came back with weft-proxy"),
        Ok(_) => fail(
            NAME,
            "a dry-run pod in default came back without weft-proxy",
            hint,
        ),
        Err(e) => fail(
            NAME,
            format!("a dry-run pod in default: {e}"),
            "weft check needs create on pods in namespace default (a server-side dry run creates nothing)",
        ),
    }
}

async fn secret_data(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no Secret {name} in {namespace}"))?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect())
}

/// Seconds until the first certificate of a PEM expires, and its subject.
fn expiry(pem: &str) -> Result<(i64, String), String> {
    let der = weft_controller::identity::ca::parse_certs(pem, "certificate")
        .map_err(|e| e.to_string())?;
    let (_, cert) = X509Certificate::from_der(&der[0]).map_err(|e| e.to_string())?;
    let left = cert.validity().not_after.timestamp() - time_now();
    Ok((left, cert.subject().to_string()))
}

fn time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn days(secs: i64) -> String {
    format!("{:.1} days", secs as f64 / 86400.0)
}

async fn identity_certificates(
    client: &kube::Client,
    namespace: &str,
    secret: &str,
    warning: Duration,
) -> Outcome {
    const NAME: &str = "the identity issuer and trust anchors are valid";
    let hint = "rotate with weft identity issuer (docs/identity.md, Rotating) and update the issuer Secret";
    let data = match secret_data(client, namespace, secret).await {
        Ok(d) => d,
        Err(e) => {
            return fail(
                NAME,
                e,
                "install the chart with the identity values, or create the issuer Secret",
            );
        }
    };
    let get = |k: &str| data.get(k).cloned().unwrap_or_default();
    if let Err(e) = Ca::from_pem(&get("ca.crt"), &get("tls.crt"), &get("tls.key")) {
        return fail(NAME, format!("Secret {secret}: {e}"), hint);
    }
    let mut soonest = i64::MAX;
    let mut which = String::new();
    for key in ["ca.crt", "tls.crt"] {
        match expiry(&get(key)) {
            Ok((left, subject)) if left < soonest => {
                soonest = left;
                which = subject;
            }
            Ok(_) => {}
            Err(e) => return fail(NAME, format!("Secret {secret} {key}: {e}"), hint),
        }
    }
    if soonest < warning.as_secs() as i64 {
        fail(NAME, format!("{which} expires in {}", days(soonest)), hint)
    } else {
        pass(
            NAME,
            format!(
                "the issuer chains to the anchors; the first to expire ({which}) has {} left",
                days(soonest)
            ),
        )
    }
}

async fn webhook_certificate(
    client: &kube::Client,
    namespace: &str,
    secret: &str,
    warning: Duration,
) -> Outcome {
    const NAME: &str = "the webhook certificate is valid";
    let hint =
        "make a new one with weft identity webhook and update the Secret and webhook.caBundlePEM";
    let data = match secret_data(client, namespace, secret).await {
        Ok(d) => d,
        Err(e) => {
            return fail(
                NAME,
                e,
                "install the chart with the webhook values, or create the Secret",
            );
        }
    };
    let cert = data.get("tls.crt").cloned().unwrap_or_default();
    let (left, _) = match expiry(&cert) {
        Ok(x) => x,
        Err(e) => return fail(NAME, format!("Secret {secret} tls.crt: {e}"), hint),
    };
    let der =
        weft_controller::identity::ca::parse_certs(&cert, "certificate").map_err(|e| e.to_string());
    let wanted = format!("weft-webhook.{namespace}.svc");
    let names_ok = der.ok().is_some_and(|der| {
        X509Certificate::from_der(&der[0]).ok().is_some_and(|(_, c)| {
            c.subject_alternative_name().ok().flatten().is_some_and(|san| {
                san.value.general_names.iter().any(|n| matches!(n, x509_parser::extensions::GeneralName::DNSName(d) if *d == wanted))
            })
        })
    });
    if !names_ok {
        fail(NAME, format!("it is not for {wanted}"), hint)
    } else if left < warning.as_secs() as i64 {
        fail(NAME, format!("it expires in {}", days(left)), hint)
    } else {
        pass(NAME, format!("for {wanted}, {} left", days(left)))
    }
}

/// Every running meshed pod has a discovery stream open to a controller.
async fn proxies_connected(client: &kube::Client, namespace: &str) -> Outcome {
    const NAME: &str = "every meshed pod's proxy is connected";
    let hint = "look at the weft-proxy logs of pods that are not connected; they keep their last config until they reconnect";
    let pods: Api<Pod> = Api::all(client.clone());
    let all = match pods.list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(e) => return fail(NAME, e.to_string(), hint),
    };
    let running = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    let meshed = all
        .iter()
        .filter(|p| {
            running(p)
                && p.metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key("weft.dev/proxy-version"))
        })
        .count();
    let controllers: Vec<String> = all
        .iter()
        .filter(|p| {
            running(p)
                && p.metadata.namespace.as_deref() == Some(namespace)
                && p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("app.kubernetes.io/name"))
                    .map(String::as_str)
                    == Some("weft-controller")
        })
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let mut streams = 0.0;
    for pod in &controllers {
        let path = format!("/api/v1/namespaces/{namespace}/pods/{pod}:9990/proxy/metrics");
        let req = http::Request::get(path)
            .body(Vec::new())
            .expect("a valid request");
        match client.request_text(req).await {
            Ok(text) => streams += crate::observe::prom::sum(&text, "discovery_streams", &[]),
            Err(e) => return fail(NAME, format!("cannot read {pod}'s metrics: {e}"), hint),
        }
    }
    if streams >= meshed as f64 {
        pass(
            NAME,
            format!(
                "{meshed} meshed pods, {streams} streams open to {} controller(s)",
                controllers.len()
            ),
        )
    } else {
        fail(
            NAME,
            format!("{meshed} meshed pods running but only {streams} streams open"),
            hint,
        )
    }
}

/// Prints the outcomes; true when all passed.
pub fn print(outcomes: &[Outcome]) -> bool {
    for o in outcomes {
        if o.ok {
            println!("ok    {}: {}", o.name, o.detail);
        } else {
            println!("FAIL  {}: {}", o.name, o.detail);
            println!("      hint: {}", o.hint);
        }
    }
    outcomes.iter().all(|o| o.ok)
}

pub fn run(args: CheckArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let all_ok = rt.block_on(async {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        // A 503 from a proxied Service is what a check reports, not something
        // to retry for minutes.
        let client = match kube::Config::infer()
            .await
            .map_err(|e| e.to_string())
            .and_then(|mut c| {
                c.default_retry = false;
                kube::Client::try_from(c).map_err(|e| e.to_string())
            }) {
            Ok(c) => c,
            Err(e) => {
                return print(&[fail(
                    "the Kubernetes API is reachable",
                    format!("no usable kubeconfig: {e}"),
                    "set KUBECONFIG or run inside a cluster",
                )]);
            }
        };
        let outcomes = if args.pre {
            pre_install(&client, &args.namespace).await
        } else {
            post_install(&client, &args.namespace, args.expiry_warning).await
        };
        print(&outcomes)
    });
    anyhow::ensure!(all_ok, "some checks failed");
    Ok(())
}
