//! The Helm chart rendered with default and non-default values; every
//! object parsed into its Kubernetes type and the fields that matter
//! checked: webhook, RBAC, Deployment, Secrets, the injector's settings.

use std::collections::BTreeSet;

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde_json::{Value, json};
use weft_cli::chart::{self, Release, RenderError};
use weft_controller::inject::InjectorConfig;

const ANCHOR: &str = "-----BEGIN CERTIFICATE-----\nanchor\n-----END CERTIFICATE-----\n";
const ISSUER: &str = "-----BEGIN CERTIFICATE-----\nissuer\n-----END CERTIFICATE-----\n";
const ISSUER_KEY: &str = "-----BEGIN PRIVATE KEY-----\nissuer-key\n-----END PRIVATE KEY-----\n";
const WEBHOOK: &str = "-----BEGIN CERTIFICATE-----\nwebhook\n-----END CERTIFICATE-----\n";
const WEBHOOK_KEY: &str = "-----BEGIN PRIVATE KEY-----\nwebhook-key\n-----END PRIVATE KEY-----\n";
const WEBHOOK_CA: &str = "-----BEGIN CERTIFICATE-----\nwebhook-ca\n-----END CERTIFICATE-----\n";

/// Every PEM value the chart needs, with a stand-in.
const PEMS: [(&str, &str); 6] = [
    ("identity.trustAnchorsPEM", ANCHOR),
    ("identity.issuer.certPEM", ISSUER),
    ("identity.issuer.keyPEM", ISSUER_KEY),
    ("webhook.certPEM", WEBHOOK),
    ("webhook.keyPEM", WEBHOOK_KEY),
    ("webhook.caBundlePEM", WEBHOOK_CA),
];

fn with_pems() -> Value {
    let mut v = chart::default_values();
    for (path, pem) in PEMS {
        chart::set_path(&mut v, path, json!(pem)).unwrap();
    }
    v
}

/// Every object the chart renders, parsed.
fn objects(values: &Value, namespace: &str) -> Vec<Value> {
    let release = Release {
        name: "weft".into(),
        namespace: namespace.into(),
    };
    let manifests = chart::render(values, &release).unwrap();
    let stream = chart::to_stream(&manifests);
    serde_yaml_ng::Deserializer::from_str(&stream)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn one<T: serde::de::DeserializeOwned>(objs: &[Value], kind: &str, name: &str) -> T {
    let found: Vec<&Value> = objs
        .iter()
        .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "{kind}/{name}: {} found", found.len());
    serde_json::from_value(found[0].clone())
        .unwrap_or_else(|e| panic!("{kind}/{name} is not a valid {kind}: {e}"))
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn every_template_is_embedded() {
    let on_disk: BTreeSet<String> = std::fs::read_dir("../charts/weft/templates")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let embedded: BTreeSet<String> = chart::TEMPLATES
        .iter()
        .map(|(f, _)| f.to_string())
        .collect();
    assert_eq!(on_disk, embedded, "add new templates to chart::TEMPLATES");
    let crds: BTreeSet<String> = std::fs::read_dir("../charts/weft/crds")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        crds,
        chart::CRDS.iter().map(|(f, _)| f.to_string()).collect()
    );
}

#[test]
fn defaults_render_a_complete_control_plane() {
    let objs = objects(&with_pems(), "weft");
    let kinds: BTreeSet<String> = objs
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    let expected: BTreeSet<String> = [
        "ServiceAccount/weft-controller",
        "ClusterRole/weft-controller",
        "ClusterRoleBinding/weft-controller",
        "Role/weft-controller",
        "RoleBinding/weft-controller",
        "Secret/weft-identity-issuer",
        "Secret/weft-webhook-tls",
        "ConfigMap/weft-injector",
        "ConfigMap/weft-webhook-ca",
        "Service/weft-discovery",
        "Service/weft-identity",
        "Service/weft-webhook",
        "Deployment/weft-controller",
        "PodDisruptionBudget/weft-controller",
        "MutatingWebhookConfiguration/weft-injector",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(kinds, expected);

    let _: ServiceAccount = one(&objs, "ServiceAccount", "weft-controller");
    let pdb: PodDisruptionBudget = one(&objs, "PodDisruptionBudget", "weft-controller");
    assert_eq!(
        pdb.spec.unwrap().min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );

    let webhook: MutatingWebhookConfiguration =
        one(&objs, "MutatingWebhookConfiguration", "weft-injector");
    let hooks = webhook.webhooks.unwrap();
    assert_eq!(hooks.len(), 1);
    let h = &hooks[0];
    let svc = h.client_config.service.as_ref().unwrap();
    assert_eq!(
        (
            svc.name.as_str(),
            svc.namespace.as_str(),
            svc.path.as_deref(),
            svc.port
        ),
        ("weft-webhook", "weft", Some("/inject"), Some(443))
    );
    assert_eq!(
        h.client_config.ca_bundle.as_ref().unwrap().0,
        WEBHOOK_CA.as_bytes(),
        "caBundle is the CA's PEM"
    );
    assert_eq!(h.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(h.timeout_seconds, Some(10));
    assert_eq!(h.side_effects, "None");
    assert_eq!(h.admission_review_versions, ["v1"]);
    let rule = &h.rules.as_ref().unwrap()[0];
    assert_eq!(
        rule.operations.as_deref(),
        Some(&["CREATE".to_string()][..])
    );
    assert_eq!(rule.resources.as_deref(), Some(&["pods".to_string()][..]));
    let excluded = &h
        .namespace_selector
        .as_ref()
        .unwrap()
        .match_expressions
        .as_ref()
        .unwrap()[0];
    assert_eq!(excluded.key, "kubernetes.io/metadata.name");
    assert_eq!(excluded.operator, "NotIn");
    let values = excluded.values.as_ref().unwrap();
    assert!(
        values.contains(&"kube-system".to_string()) && values.contains(&"weft".to_string()),
        "{values:?}"
    );

    let issuer: Secret = one(&objs, "Secret", "weft-identity-issuer");
    let data = issuer.data.unwrap();
    assert_eq!(data["ca.crt"].0, ANCHOR.as_bytes());
    assert_eq!(data["tls.key"].0, ISSUER_KEY.as_bytes());
    let tls: Secret = one(&objs, "Secret", "weft-webhook-tls");
    assert_eq!(tls.data.unwrap()["tls.crt"].0, WEBHOOK.as_bytes());
    let _ = b64("");

    for name in ["weft-discovery", "weft-identity", "weft-webhook"] {
        let s: Service = one(&objs, "Service", name);
        let spec = s.spec.unwrap();
        assert_eq!(
            spec.selector.unwrap()["app.kubernetes.io/name"],
            "weft-controller",
            "{name}"
        );
    }
    let hook_svc: Service = one(&objs, "Service", "weft-webhook");
    let port = &hook_svc.spec.unwrap().ports.unwrap()[0];
    assert_eq!(port.port, 443);
}

#[test]
fn rbac_grants_only_what_the_controller_uses() {
    let objs = objects(&with_pems(), "weft");
    let role: ClusterRole = one(&objs, "ClusterRole", "weft-controller");
    let mut grants = BTreeSet::new();
    for r in role.rules.clone().unwrap() {
        for g in r.api_groups.unwrap_or_default() {
            for res in r.resources.clone().unwrap_or_default() {
                for v in &r.verbs {
                    grants.insert(format!("{g}/{res}:{v}"));
                }
            }
        }
    }
    let read = |g: &str, r: &str| ["get", "list", "watch"].map(|v| format!("{g}/{r}:{v}"));
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for (g, r) in [
        ("", "namespaces"),
        ("", "services"),
        ("", "pods"),
        ("discovery.k8s.io", "endpointslices"),
        ("split.smi-spec.io", "trafficsplits"),
        ("specs.smi-spec.io", "httproutegroups"),
        ("weft.dev", "retrypolicies"),
        ("weft.dev", "authorizationpolicies"),
        ("gateway.networking.k8s.io", "httproutes"),
        ("gateway.networking.k8s.io", "grpcroutes"),
        ("gateway.networking.k8s.io", "referencegrants"),
    ] {
        expected.extend(read(g, r));
    }
    for s in [
        "split.smi-spec.io/trafficsplits/status:patch",
        "specs.smi-spec.io/httproutegroups/status:patch",
        "weft.dev/retrypolicies/status:patch",
        "weft.dev/authorizationpolicies/status:patch",
        "gateway.networking.k8s.io/httproutes/status:patch",
        "gateway.networking.k8s.io/grpcroutes/status:patch",
        "authentication.k8s.io/tokenreviews:create",
        "apiextensions.k8s.io/customresourcedefinitions:get",
        "apiextensions.k8s.io/customresourcedefinitions:patch",
    ] {
        expected.insert(s.to_string());
    }
    assert_eq!(
        grants, expected,
        "no verb or resource beyond what the controller calls"
    );
    // CRDs: only the two whose conversion the controller sets.
    let crd_rule = role
        .rules
        .iter()
        .flatten()
        .find(|r| r.api_groups.as_deref() == Some(&["apiextensions.k8s.io".to_string()][..]))
        .unwrap();
    assert_eq!(
        crd_rule.resource_names.as_deref(),
        Some(
            &[
                "trafficsplits.split.smi-spec.io".to_string(),
                "httproutegroups.specs.smi-spec.io".to_string()
            ][..]
        )
    );
    let lease: Role = one(&objs, "Role", "weft-controller");
    assert_eq!(lease.metadata.namespace.as_deref(), Some("weft"));
    let rules = lease.rules.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["leases".to_string()][..])
    );
    assert!(!rules[0].verbs.iter().any(|v| v == "delete" || v == "*"));
    let binding: ClusterRoleBinding = one(&objs, "ClusterRoleBinding", "weft-controller");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (
            subject.kind.as_str(),
            subject.name.as_str(),
            subject.namespace.as_deref()
        ),
        ("ServiceAccount", "weft-controller", Some("weft"))
    );
    let _: RoleBinding = one(&objs, "RoleBinding", "weft-controller");
}

#[test]
fn the_deployment_runs_locked_down_with_probes_on_the_admin_port() {
    let objs = objects(&with_pems(), "weft");
    let d: Deployment = one(&objs, "Deployment", "weft-controller");
    let spec = d.spec;
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("weft-controller"));
    assert!(
        pod.affinity.unwrap().pod_anti_affinity.is_some(),
        "replicas spread over nodes"
    );
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(
            format!(
                "ghcr.io/weft-mesh/weft-controller:{}",
                env!("CARGO_PKG_VERSION")
            )
            .as_str()
        )
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let g = p.as_ref().unwrap().http_get.as_ref().unwrap();
        (g.path.clone().unwrap(), g.port.clone())
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let admin = |port: &IntOrString| {
        matches!(port, IntOrString::Int(9990))
            || matches!(port, IntOrString::String(s) if s == "admin")
    };
    let (live, port) = probe_path(&c.liveness_probe);
    assert!(live == "/live" && admin(&port));
    let (ready, port) = probe_path(&c.readiness_probe);
    assert!(ready == "/ready" && admin(&port));
    assert!(c.resources.as_ref().unwrap().requests.is_some());
    let args = c.args.clone().unwrap();
    for flag in [
        "--webhook-cert=",
        "--webhook-ca=",
        "--injector-config=",
        "--trust-anchors=",
        "--source=kubernetes",
    ] {
        assert!(
            args.iter().any(|a| a.starts_with(flag)),
            "{flag} in {args:?}"
        );
    }
    // Every flag the chart passes is one the controller knows (clap stops
    // at the first unknown flag; --help last succeeds only if all parse).
    let controller = weft_tests::bins::path("weft-controller");
    let out = std::process::Command::new(controller)
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the controller refuses the chart's args: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The mounted files are where the args say.
    let mounts: Vec<String> = c
        .volume_mounts
        .clone()
        .unwrap()
        .iter()
        .map(|m| m.mount_path.clone())
        .collect();
    for dir in [
        "/var/run/weft/identity",
        "/var/run/weft/webhook",
        "/var/run/weft/injector",
    ] {
        assert!(mounts.iter().any(|m| m == dir), "{dir} mounted: {mounts:?}");
    }
}

#[test]
fn the_injector_config_is_what_the_controller_reads() {
    let objs = objects(&with_pems(), "weft");
    let cm: ConfigMap = one(&objs, "ConfigMap", "weft-injector");
    let text = &cm.data.unwrap()["config.yaml"];
    let config = InjectorConfig::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let v = env!("CARGO_PKG_VERSION");
    assert_eq!(
        config.proxy_image,
        format!("ghcr.io/weft-mesh/weft-proxy:{v}")
    );
    assert_eq!(
        config.init_image,
        format!("ghcr.io/weft-mesh/weft-init:{v}")
    );
    assert_eq!(
        config.controller_addr,
        "weft-discovery.weft.svc.cluster.local:8086"
    );
    assert_eq!(
        config.identity_addr,
        "weft-identity.weft.svc.cluster.local:8080"
    );
    assert_eq!(config.resources["limits"]["memory"], "250Mi");
}

#[test]
fn non_default_values_change_what_they_should() {
    let mut v = with_pems();
    for (path, value) in [
        ("controller.replicas", json!(3)),
        ("controller.podDisruptionBudget.enabled", json!(false)),
        (
            "controller.nodeSelector",
            json!({"kubernetes.io/os": "linux"}),
        ),
        ("identity.existingSecret", json!("my-issuer")),
        ("webhook.existingSecret", json!("my-webhook-tls")),
        ("webhook.failurePolicy", json!("Fail")),
        ("image.registry", json!("registry.example/mesh/")),
        ("image.tag", json!("v9")),
        ("proxy.nativeSidecars", json!("never")),
        ("clusterDomain", json!("corp.local")),
    ] {
        chart::set_path(&mut v, path, value).unwrap();
    }
    let objs = objects(&v, "mesh-system");
    assert!(!objs.iter().any(|o| o["kind"] == "PodDisruptionBudget"));
    assert!(
        !objs.iter().any(|o| o["kind"] == "Secret"),
        "existing Secrets are used, none created"
    );
    let d: Deployment = one(&objs, "Deployment", "weft-controller");
    let spec = d.spec;
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(
        spec.template.metadata.unwrap().labels.unwrap()["app.kubernetes.io/name"],
        "weft-controller"
    );
    let pod = spec.template.spec.unwrap();
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.example/mesh/weft-controller:v9")
    );
    assert_eq!(pod.node_selector.unwrap()["kubernetes.io/os"], "linux");
    let secrets: Vec<String> = pod
        .volumes
        .unwrap()
        .iter()
        .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
        .collect();
    assert_eq!(
        secrets.iter().collect::<BTreeSet<_>>(),
        ["my-issuer".to_string(), "my-webhook-tls".to_string()]
            .iter()
            .collect()
    );
    let webhook: MutatingWebhookConfiguration =
        one(&objs, "MutatingWebhookConfiguration", "weft-injector");
    let h = &webhook.webhooks.unwrap()[0];
    assert_eq!(h.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(
        h.client_config.service.as_ref().unwrap().namespace,
        "mesh-system"
    );
    let excluded = h
        .namespace_selector
        .as_ref()
        .unwrap()
        .match_expressions
        .as_ref()
        .unwrap()[0]
        .values
        .clone()
        .unwrap();
    assert!(excluded.contains(&"mesh-system".to_string()));
    let cm: ConfigMap = one(&objs, "ConfigMap", "weft-injector");
    let config = InjectorConfig::parse(&cm.data.unwrap()["config.yaml"]).unwrap();
    assert_eq!(config.proxy_image, "registry.example/mesh/weft-proxy:v9");
    assert_eq!(
        config.controller_addr,
        "weft-discovery.mesh-system.svc.corp.local:8086"
    );
    assert_eq!(
        config.native_sidecars,
        weft_controller::inject::NativeSidecars::Never
    );
}

#[test]
fn missing_certificates_and_bad_values_fail_with_a_hint() {
    let release = Release {
        name: "weft".into(),
        namespace: "weft".into(),
    };
    let e = chart::render(&chart::default_values(), &release).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, RenderError::Template { .. }), "{msg}");
    assert!(
        msg.contains("weft identity"),
        "the error says how to make the files: {msg}"
    );

    let mut bad = with_pems();
    chart::set_path(&mut bad, "defaultInboundPolicy", json!("allow-all")).unwrap();
    let msg = chart::render(&bad, &release).unwrap_err().to_string();
    assert!(msg.contains("defaultInboundPolicy"), "{msg}");
}

#[test]
fn weft_install_prints_the_namespace_crds_and_chart() {
    let dir = std::env::temp_dir().join(format!("weft-install-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut set_file = Vec::new();
    for (path, pem) in PEMS {
        let f = dir.join(path);
        std::fs::write(&f, pem).unwrap();
        set_file.push(format!("{path}={}", f.display()));
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "install",
            "--namespace",
            "mesh",
            "--set",
            "controller.replicas=1",
        ])
        .args(set_file.iter().flat_map(|s| ["--set-file", s.as_str()]))
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect();
    assert_eq!(docs[0]["kind"], "Namespace");
    assert_eq!(docs[0]["metadata"]["name"], "mesh");
    assert_eq!(
        docs.iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition")
            .count(),
        4
    );
    let d = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["metadata"]["namespace"], "mesh");

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["install", "--set", "controller.replicas=0"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("controller.replicas"), "{err}");
}

#[test]
fn telemetry_values_reach_the_injector() {
    let mut v = with_pems();
    for (path, value) in [
        (
            "proxy.tracing.collector",
            json!("grpc://otel.monitoring:4317"),
        ),
        ("proxy.tracing.sampling", json!("0.25")),
        ("proxy.accessLog", json!("json")),
        ("proxy.tap.enabled", json!(true)),
    ] {
        chart::set_path(&mut v, path, value).unwrap();
    }
    let objs = objects(&v, "weft");
    let cm: ConfigMap = one(&objs, "ConfigMap", "weft-injector");
    let text = &cm.data.unwrap()["config.yaml"];
    let config = InjectorConfig::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(config.trace_collector, "grpc://otel.monitoring:4317");
    assert_eq!(config.trace_sampling, "0.25");
    assert_eq!(config.access_log, "json");
    assert!(config.tap);
    // Defaults: all off.
    let objs = objects(&with_pems(), "weft");
    let cm: ConfigMap = one(&objs, "ConfigMap", "weft-injector");
    let config = InjectorConfig::parse(&cm.data.unwrap()["config.yaml"]).unwrap();
    assert_eq!(
        (
            config.trace_collector.as_str(),
            config.access_log.as_str(),
            config.tap
        ),
        ("", "", false)
    );
    // Bad values fail at install.
    for (path, bad) in [
        ("proxy.accessLog", json!("xml")),
        ("proxy.tracing.collector", json!("otel:4317")),
        ("proxy.tracing.sampling", json!("2")),
    ] {
        let mut v = with_pems();
        chart::set_path(&mut v, path, bad).unwrap();
        let release = Release {
            name: "weft".into(),
            namespace: "weft".into(),
        };
        let e = chart::render(&v, &release).unwrap_err().to_string();
        assert!(e.contains(path.rsplit('.').next().unwrap()), "{path}: {e}");
    }
}

#[test]
fn prometheus_finds_proxies_and_controller_when_asked() {
    assert!(
        !objects(&with_pems(), "weft")
            .iter()
            .any(|o| o["kind"] == "PodMonitor" || o["metadata"]["name"] == "weft-prometheus-scrape"),
        "off by default"
    );
    let mut v = with_pems();
    chart::set_path(&mut v, "prometheus.podMonitor.enabled", json!(true)).unwrap();
    chart::set_path(
        &mut v,
        "prometheus.podMonitor.labels",
        json!({"release": "kube-prometheus"}),
    )
    .unwrap();
    chart::set_path(&mut v, "prometheus.scrapeConfig.enabled", json!(true)).unwrap();
    let objs = objects(&v, "weft");
    let proxies = objs
        .iter()
        .find(|o| o["kind"] == "PodMonitor" && o["metadata"]["name"] == "weft-proxies")
        .expect("the proxies' PodMonitor");
    assert_eq!(proxies["metadata"]["labels"]["release"], "kube-prometheus");
    assert_eq!(proxies["spec"]["namespaceSelector"]["any"], true);
    let ep = &proxies["spec"]["podMetricsEndpoints"][0];
    // The port name the injector gives the proxy's admin server.
    assert_eq!(ep["port"], "weft-admin");
    assert_eq!(ep["relabelings"][0]["targetLabel"], "workload");
    let controller = objs
        .iter()
        .find(|o| o["kind"] == "PodMonitor" && o["metadata"]["name"] == "weft-controller")
        .expect("the controller's PodMonitor");
    assert_eq!(
        controller["spec"]["podMetricsEndpoints"][0]["port"],
        "admin"
    );
    assert_eq!(
        controller["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["replacement"],
        "weft-controller",
        "job=weft-controller, as the control-plane dashboard selects"
    );
    let cm: ConfigMap = one(&objs, "ConfigMap", "weft-prometheus-scrape");
    let jobs: Vec<Value> =
        serde_yaml_ng::from_str(&cm.data.unwrap()["scrape-configs.yaml"]).unwrap();
    let names: Vec<&str> = jobs
        .iter()
        .map(|j| j["job_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["weft-proxies", "weft-controller"]);
    assert_eq!(jobs[0]["relabel_configs"][0]["regex"], "weft-admin");
    assert_eq!(
        jobs[1]["kubernetes_sd_configs"][0]["namespaces"]["names"][0],
        "weft"
    );
}

/// Runs `weft install` with HOME in `home`; returns (stdout docs, stderr).
fn install_in_home(home: &std::path::Path, args: &[&str]) -> (Vec<Value>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("install")
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    let docs = serde_yaml_ng::Deserializer::from_str(&String::from_utf8(out.stdout).unwrap())
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect();
    (docs, err)
}

fn secret_data(docs: &[Value], name: &str, key: &str) -> String {
    let s: Secret = one(docs, "Secret", name);
    String::from_utf8(s.data.unwrap()[key].0.clone()).unwrap()
}

/// As `linkerd install`, a bare `weft install` prints a working install:
/// the certificates are generated, kept in ~/.config/weft/pki/<ns> (the
/// stderr note says so) and reused by the next run, so an upgrade keeps
/// the trust anchor.
#[test]
fn weft_install_with_no_flags_generates_certificates_and_reuses_them() {
    use std::os::unix::fs::PermissionsExt;
    let home = std::env::temp_dir().join(format!("weft-install-home-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    let (docs, err) = install_in_home(&home, &[]);
    let dir = home.join(".config/weft/pki/weft");
    assert!(
        err.contains("generated") && err.contains(&dir.display().to_string()),
        "{err}"
    );
    for (file, mode) in [
        ("ca.crt", 0o644),
        ("ca.key", 0o600),
        ("issuer.crt", 0o644),
        ("issuer.key", 0o600),
        ("webhook/ca.crt", 0o644),
        ("webhook/tls.crt", 0o644),
        ("webhook/tls.key", 0o600),
    ] {
        let meta = std::fs::metadata(dir.join(file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let anchors = secret_data(&docs, "weft-identity-issuer", "ca.crt");
    assert_eq!(anchors, read("ca.crt"));
    // The issuer is a CA signed by the anchor, and its key is the issuer's.
    weft_controller::identity::ca::Ca::from_pem(
        &anchors,
        &secret_data(&docs, "weft-identity-issuer", "tls.crt"),
        &secret_data(&docs, "weft-identity-issuer", "tls.key"),
    )
    .unwrap();
    let hook: MutatingWebhookConfiguration =
        one(&docs, "MutatingWebhookConfiguration", "weft-injector");
    let ca_bundle = hook.webhooks.unwrap()[0]
        .client_config
        .ca_bundle
        .clone()
        .unwrap();
    assert_eq!(
        String::from_utf8(ca_bundle.0).unwrap(),
        read("webhook/ca.crt")
    );
    let serving = secret_data(&docs, "weft-webhook-tls", "tls.crt");
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(serving.as_bytes())
        .map(|c: rustls_pki_types::CertificateDer| c.to_vec())
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let sans = format!(
        "{:?}",
        cert.subject_alternative_name().unwrap().unwrap().value
    );
    assert!(sans.contains("weft-webhook.weft.svc"), "{sans}");

    // The next install (an upgrade) reuses every file.
    let (again, err) = install_in_home(&home, &[]);
    assert!(err.contains("using the trust anchor and issuer"), "{err}");
    for (name, key) in [
        ("weft-identity-issuer", "ca.crt"),
        ("weft-identity-issuer", "tls.key"),
        ("weft-webhook-tls", "tls.crt"),
    ] {
        assert_eq!(
            secret_data(&docs, name, key),
            secret_data(&again, name, key)
        );
    }
    // Certificates given as values are used, and nothing is written.
    let other = home.join("given");
    let pems = dir.display().to_string();
    let (given, err) = install_in_home(
        &home,
        &[
            "--pki-dir",
            other.to_str().unwrap(),
            "--set-file",
            &format!("identity.trustAnchorsPEM={pems}/ca.crt"),
            "--set-file",
            &format!("identity.issuer.certPEM={pems}/issuer.crt"),
            "--set-file",
            &format!("identity.issuer.keyPEM={pems}/issuer.key"),
            "--set-file",
            &format!("webhook.certPEM={pems}/webhook/tls.crt"),
            "--set-file",
            &format!("webhook.keyPEM={pems}/webhook/tls.key"),
            "--set-file",
            &format!("webhook.caBundlePEM={pems}/webhook/ca.crt"),
        ],
    );
    assert!(err.is_empty(), "{err}");
    assert!(!other.exists());
    assert_eq!(
        secret_data(&given, "weft-identity-issuer", "ca.crt"),
        anchors
    );
    // A half-kept directory is an error, not a silent new trust anchor.
    std::fs::remove_file(dir.join("issuer.key")).unwrap();
    let broken = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("install")
        .env("HOME", &home)
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .unwrap();
    assert!(!broken.status.success());
    let err = String::from_utf8_lossy(&broken.stderr);
    assert!(err.contains("issuer.key is missing"), "{err}");
    std::fs::remove_dir_all(&home).unwrap();
}

#[test]
fn init_values_reach_the_injector() {
    let injector = |values: &Value| {
        let objs = objects(values, "weft");
        let cm: ConfigMap = one(&objs, "ConfigMap", "weft-injector");
        let text = cm.data.unwrap()["config.yaml"].clone();
        InjectorConfig::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    };
    let defaults = injector(&with_pems());
    assert_eq!(
        (
            defaults.iptables_mode.as_str(),
            defaults.ipv6,
            defaults.init_run_as_root,
            defaults.ignore_subnets.len()
        ),
        ("nft", false, false, 0)
    );
    let mut v = with_pems();
    for (path, value) in [
        ("init.iptablesMode", json!("legacy")),
        ("init.ipv6", json!(true)),
        ("init.runAsRoot", json!(true)),
        ("init.ignoreSubnets", json!(["10.0.0.0/8", "fd00::/8"])),
    ] {
        chart::set_path(&mut v, path, value).unwrap();
    }
    let set = injector(&v);
    assert_eq!(
        (set.iptables_mode.as_str(), set.ipv6, set.init_run_as_root),
        ("legacy", true, true)
    );
    assert_eq!(set.ignore_subnets, ["10.0.0.0/8", "fd00::/8"]);
    // The schema refuses what weft-init would refuse.
    let release = Release {
        name: "weft".into(),
        namespace: "weft".into(),
    };
    for (path, value) in [
        ("init.iptablesMode", json!("xtables")),
        ("init.ignoreSubnets", json!(["10.0.0.0"])),
    ] {
        let mut bad = with_pems();
        chart::set_path(&mut bad, path, value).unwrap();
        let e = chart::render(&bad, &release).unwrap_err().to_string();
        assert!(
            e.contains(path.split('.').next_back().unwrap()),
            "{path}: {e}"
        );
    }
}
