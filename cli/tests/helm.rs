//! The chart under real Helm (Helm's Go engine, from the helm-python-sdk
//! package; tests/cluster/helm.py): `helm lint --strict` passes, and Helm
//! renders the same objects as `weft install` for default and non-default
//! values. Skips loudly without python3 and helm-python-sdk, unless
//! WEFT_REQUIRE_HELM=1 (CI) makes that a failure.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use weft_cli::chart::{self, Release};

const HELM_PY: &str = "../tests/cluster/helm.py";

fn skip() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import helm_python"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return false;
    }
    if std::env::var_os("WEFT_REQUIRE_HELM").is_some() {
        panic!(
            "WEFT_REQUIRE_HELM is set but python3 cannot import helm_python (pip install helm-python-sdk)"
        );
    }
    weft_tests::skip_loudly(
        "the Helm tests: real Helm needs python3 with helm-python-sdk (pip install helm-python-sdk)",
    );
    true
}

fn helm(args: &[&str]) -> (bool, String) {
    let out = Command::new("python3")
        .arg(HELM_PY)
        .args(args)
        .output()
        .expect("python3");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The stand-in PEMs every install needs, as a values file.
const PEMS: &str = r#"
identity:
  trustAnchorsPEM: "-----BEGIN CERTIFICATE-----\nanchor\n-----END CERTIFICATE-----\n"
  issuer:
    certPEM: "-----BEGIN CERTIFICATE-----\nissuer\n-----END CERTIFICATE-----\n"
    keyPEM: "-----BEGIN PRIVATE KEY-----\nkey\n-----END PRIVATE KEY-----\n"
webhook:
  certPEM: "-----BEGIN CERTIFICATE-----\nhook\n-----END CERTIFICATE-----\n"
  keyPEM: "-----BEGIN PRIVATE KEY-----\nhook-key\n-----END PRIVATE KEY-----\n"
  caBundlePEM: "-----BEGIN CERTIFICATE-----\nhook-ca\n-----END CERTIFICATE-----\n"
"#;

/// Every value that changes what the templates write.
const NON_DEFAULT: &str = r#"
image: {registry: "registry.example:5000/mesh/", tag: "1.2.3-rc.1", pullPolicy: Always}
clusterDomain: corp.local
defaultInboundPolicy: cluster-authenticated
controller:
  replicas: 3
  logLevel: "debug,kube=info"
  podDisruptionBudget: {enabled: false, minAvailable: "50%"}
  resources: {requests: {cpu: 250m, memory: 128Mi}, limits: {cpu: "1", memory: 512Mi}}
  nodeSelector: {kubernetes.io/os: linux, node-role/mesh: "true"}
  tolerations: [{key: dedicated, operator: Equal, value: mesh, effect: NoSchedule}]
identity: {trustDomain: corp.example, leafLifetime: 12h, existingSecret: my-issuer}
webhook: {failurePolicy: Fail, timeoutSeconds: 5, existingSecret: my-webhook}
proxy:
  logLevel: "debug"
  nativeSidecars: never
  resources: {requests: {cpu: 50m, memory: 32Mi}, limits: {memory: 128Mi}}
  tracing: {collector: "grpc://otel.monitoring:4317", sampling: "0.5"}
  accessLog: json
  tap: {enabled: true}
init: {iptablesMode: legacy, ipv6: true, runAsRoot: true, ignoreSubnets: [10.0.0.0/8, "fd00::/8"]}
prometheus:
  podMonitor: {enabled: true, interval: 30s, labels: {release: kube-prometheus}}
  scrapeConfig: {enabled: true}
"#;

/// Objects of a multi-document YAML stream, keyed by kind/namespace/name.
/// ConfigMap data that is YAML is compared as data: `toYaml` may lay out
/// the same data differently (docs/install.md, "Template subset").
fn objects(stream: &str) -> BTreeMap<String, Value> {
    serde_yaml_ng::Deserializer::from_str(stream)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .map(|mut v: Value| {
            if v["kind"] == "ConfigMap"
                && let Some(data) = v["data"].as_object_mut()
            {
                for (k, text) in data.iter_mut() {
                    if k.ends_with(".yaml") || k.ends_with(".yml") {
                        let parsed: Value =
                            serde_yaml_ng::from_str(text.as_str().unwrap()).unwrap();
                        *text = parsed;
                    }
                }
            }
            let key = format!(
                "{}/{}/{}",
                v["kind"].as_str().unwrap_or(""),
                v["metadata"]["namespace"].as_str().unwrap_or(""),
                v["metadata"]["name"].as_str().unwrap_or("")
            );
            (key, v)
        })
        .collect()
}

fn weft_render(files: &[&Path], namespace: &str) -> BTreeMap<String, Value> {
    let mut values = chart::default_values();
    for f in files {
        let overlay: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        chart::merge(&mut values, overlay);
    }
    let release = Release {
        name: "weft".into(),
        namespace: namespace.into(),
    };
    objects(&chart::to_stream(
        &chart::render(&values, &release).unwrap(),
    ))
}

fn helm_render(files: &[&Path], namespace: &str) -> BTreeMap<String, Value> {
    let mut args = vec!["template", "-n", namespace];
    for f in files {
        args.extend(["-f", f.to_str().unwrap()]);
    }
    let (ok, out) = helm(&args);
    assert!(ok, "helm template: {out}");
    objects(&out)
}

fn same(files: &[&Path], namespace: &str) {
    let ours = weft_render(files, namespace);
    let helms = helm_render(files, namespace);
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        helms.keys().collect::<Vec<_>>(),
        "weft install and Helm render different objects"
    );
    for (key, object) in &ours {
        assert_eq!(
            object, &helms[key],
            "{key} differs between weft install (left) and Helm (right)"
        );
    }
}

#[test]
fn helm_renders_what_weft_install_renders() {
    if skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("weft-helm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pems = dir.join("pems.yaml");
    let non_default = dir.join("non-default.yaml");
    std::fs::write(&pems, PEMS).unwrap();
    std::fs::write(&non_default, NON_DEFAULT).unwrap();
    same(&[&pems], "weft");
    same(&[&pems, &non_default], "mesh-system");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn helm_lint_strict_passes_and_helm_checks_the_schema() {
    if skip() {
        return;
    }
    let (ok, out) = helm(&["lint", "--strict"]);
    assert!(ok, "helm lint --strict: {out}");
    assert!(out.contains("no failures"), "{out}");
    // Helm refuses what the schema refuses, as weft install does.
    let dir = std::env::temp_dir().join(format!("weft-helm-lint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, format!("{PEMS}\ninit: {{iptablesMode: xtables}}\n")).unwrap();
    let (ok, out) = helm(&["template", "-f", bad.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok && out.contains("iptablesMode"), "{out}");
}
