//! The cluster suite: Weft installed on a real Kubernetes cluster (the one
//! in KUBECONFIG), as an operator does it, and checked end to end. See
//! tests/cluster/README.md for what it needs and how to run it.
//!
//! 1. Install with Helm, check, mesh a namespace, uninstall; then install
//!    with `weft install | kubectl apply -f -`.
//! 2. Mesh a namespace by annotation and roll out the test app.
//! 3. Assert: pods injected and Running (native sidecars on >= 1.29, the
//!    classic layout before); each app started after its proxy; a Job
//!    completes; traffic is mTLS (proxy metrics and `weft tap`); a
//!    TrafficSplit and a RetryPolicy change traffic within seconds; the
//!    SMI versions convert; with the Gateway API's CRDs
//!    (WEFT_GATEWAY_API_CRDS), an HTTPRoute on a Service wins over the
//!    split and gets its status.parents; an AuthorizationPolicy denies; `weft check` passes, and names the cause
//!    when the controller and its webhook are down; deleting the
//!    controller loses no request; uninstalling leaves nothing behind.
//!
//! It changes the cluster (CRDs, a webhook, namespaces weft, weft-e2e and
//! weft-e2e-helm), so it runs only when asked: WEFT_CLUSTER_SUITE=1.

#[path = "kube.rs"]
mod kube;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube::*;
use serde_json::Value;

const NS: &str = "weft-e2e";
const HELM_NS: &str = "weft-e2e-helm";
const MINUTE: Duration = Duration::from_secs(60);

/// Where the images come from: the chart's registry and tag unless
/// WEFT_IMAGE_REGISTRY / WEFT_IMAGE_TAG say otherwise.
struct Images {
    registry: String,
    tag: String,
    pull_policy: String,
    /// Whether any differs from the chart's defaults.
    custom: bool,
}

impl Images {
    fn from_env() -> Self {
        let chart: Value =
            serde_yaml_ng::from_str(include_str!("../../charts/weft/Chart.yaml")).unwrap();
        let values: Value =
            serde_yaml_ng::from_str(include_str!("../../charts/weft/values.yaml")).unwrap();
        let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
        let custom = [
            "WEFT_IMAGE_REGISTRY",
            "WEFT_IMAGE_TAG",
            "WEFT_IMAGE_PULL_POLICY",
        ]
        .iter()
        .any(|k| std::env::var_os(k).is_some());
        Images {
            custom,
            registry: env(
                "WEFT_IMAGE_REGISTRY",
                values["image"]["registry"].as_str().unwrap(),
            ),
            tag: env("WEFT_IMAGE_TAG", chart["appVersion"].as_str().unwrap()),
            pull_policy: env("WEFT_IMAGE_PULL_POLICY", "IfNotPresent"),
        }
    }

    /// `--set` flags for what differs from the chart's defaults.
    fn set_args(&self) -> Vec<String> {
        if !self.custom {
            return Vec::new();
        }
        [
            format!("image.registry={}", self.registry),
            format!("image.tag={}", self.tag),
            format!("image.pullPolicy={}", self.pull_policy),
        ]
        .into_iter()
        .flat_map(|s| ["--set".to_string(), s])
        .collect()
    }

    fn testapp(&self) -> String {
        format!("{}/weft-testapp:{}", self.registry, self.tag)
    }
}

fn skip() -> bool {
    if std::env::var_os("WEFT_CLUSTER_SUITE").is_none() {
        weft_tests::skip_loudly(
            "the cluster suite: it installs Weft into the cluster in KUBECONFIG; \
             set WEFT_CLUSTER_SUITE=1 to run it (tests/cluster/README.md)",
        );
        return true;
    }
    let reachable = kubectl(&["version", "-o", "json"]);
    assert!(
        reachable.ok,
        "WEFT_CLUSTER_SUITE is set but no cluster answers (KUBECONFIG={:?}): {}",
        std::env::var("KUBECONFIG").ok(),
        reachable.both()
    );
    false
}

fn step(what: &str) {
    eprintln!("\n=== cluster suite: {what}");
}

/// Undoes what the suite made, whatever happened (best effort).
struct Cleanup {
    manifest: Option<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in [NS, HELM_NS] {
            let _ = kubectl(&[
                "delete",
                "namespace",
                ns,
                "--ignore-not-found",
                "--wait=false",
            ]);
        }
        if std::thread::panicking() {
            let _ = helm(&["uninstall", "-n", "weft"]);
            if let Some(m) = &self.manifest {
                let _ = kubectl(&[
                    "delete",
                    "-f",
                    m.to_str().unwrap(),
                    "--ignore-not-found",
                    "--wait=false",
                ]);
            }
        }
    }
}

#[test]
fn weft_on_a_real_cluster() {
    if skip() {
        return;
    }
    let weft_bin = weft_tests::bins::path("weft");
    let images = Images::from_env();
    let dir = scratch();
    let mut cleanup = Cleanup { manifest: None };
    let version = server_version();
    let native = version >= (1, 29);
    eprintln!(
        "cluster: Kubernetes {}.{}; images from {}",
        version.0, version.1, images.registry
    );

    // The Gateway API's CRDs are the user's: installed first when given,
    // so that both installs below watch the routes.
    let gateway_crds = std::env::var("WEFT_GATEWAY_API_CRDS").ok();
    match &gateway_crds {
        Some(path) => {
            step("install the Gateway API CRDs (standard channel)");
            let r = kubectl(&["apply", "--server-side", "-f", path]);
            assert!(r.ok, "the Gateway API CRDs: {}", r.both());
        }
        None => weft_tests::skip_loudly(
            "the cluster suite's Gateway API steps: set WEFT_GATEWAY_API_CRDS to the \
             standard channel's CRDs (a file or directory, v1.2 or newer)",
        ),
    }

    step("weft check --pre");
    let pre = weft(&weft_bin, &["check", "--pre"]);
    assert!(pre.ok, "weft check --pre:\n{}", pre.both());

    step("a controller that cannot write its status Lease refuses to start");
    controller_refuses_without_its_lease(&dir);

    step("install with Helm, mesh a namespace, uninstall");
    helm_install_and_uninstall(&weft_bin, &images, &dir);

    step("install with weft install | kubectl apply -f - (no flags)");
    let manifest = dir.join("install.yaml");
    let mut args = vec!["install"];
    let set = images.set_args();
    args.extend(set.iter().map(String::as_str));
    // A HOME of its own: the generated certificates land in it.
    let install = weft_in_home(&weft_bin, &args, &dir);
    assert!(
        install.stderr.contains("generated"),
        "weft install should say what it generated: {}",
        install.stderr
    );
    std::fs::write(&manifest, install.expect("weft install")).unwrap();
    cleanup.manifest = Some(manifest.clone());
    let kept = dir.join(".config/weft/pki/weft");
    assert!(
        kept.join("ca.key").exists() && kept.join("webhook/tls.crt").exists(),
        "weft install should keep its certificates in {}",
        kept.display()
    );
    let applied = kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(applied.ok, "kubectl apply: {}", applied.both());
    assert!(
        !applied.stderr.contains("Warning"),
        "applying the install warned:\n{}",
        applied.stderr
    );
    ready_pods(
        "weft",
        "app.kubernetes.io/name=weft-controller",
        2,
        3 * MINUTE,
    );
    check_passes(&weft_bin);

    step("mesh namespace weft-e2e and roll out the test app");
    // The backends first: the load app, started once they are ready,
    // must see no failure from its first request on.
    apply(&workloads(&images, NS));
    let web = ready_pods(NS, "app=web", 3, 3 * MINUTE);
    ready_pods(NS, "app=web-flaky", 1, 3 * MINUTE);
    apply(&load_deployment(&images, NS));
    let load = ready_pods(NS, "app=load", 1, 3 * MINUTE)[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    for pod in web.iter() {
        assert_injected(pod, native);
        assert_app_started_after_proxy(pod, native);
        assert_init_ran_as(pod, 65534);
    }
    eprintln!(
        "{} web pods Running, {} layout, weft-init as 65534 with file capabilities",
        web.len(),
        if native { "native sidecar" } else { "classic" }
    );
    // The load app's first request went out at its start: none failed.
    let first = until("the load app's first answers", MINUTE, || {
        let s = load_stats(NS, &load).ok_or("no stats yet")?;
        if s["total"].as_u64().unwrap_or(0) >= 20 {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    assert_eq!(
        first["failed"], 0,
        "requests failed from the app's start: {first}"
    );

    step("a Job completes");
    job_completes(&images);

    step("traffic between pods is mTLS (metrics and weft tap)");
    traffic_is_mtls(&weft_bin, &web);

    step("a TrafficSplit moves traffic within seconds");
    split_moves_traffic(&load);

    step("every SMI version is served and converts without loss");
    smi_versions_convert();

    if gateway_crds.is_some() {
        step("an HTTPRoute on a Service wins over the TrafficSplit, with its status");
        http_route_wins_with_status(&load);
    }

    step("a RetryPolicy hides a failing backend");
    retries_hide_failures(&load);

    step("an AuthorizationPolicy denies");
    authorization_denies(&load);

    step("weft check names the cause when the controller is down");
    check_names_a_down_controller(&weft_bin);

    step("deleting the controller loses no request");
    controller_deletion_loses_nothing(&load);

    step("uninstall leaves nothing behind");
    kubectl(&["delete", "namespace", NS, "--wait=true", "--timeout=180s"]);
    let deleted = kubectl(&["delete", "-f", manifest.to_str().unwrap(), "--wait=true"]);
    assert!(deleted.ok, "kubectl delete -f: {}", deleted.both());
    namespace_gone("weft", 3 * MINUTE);
    nothing_left(true);
    if let Some(path) = &gateway_crds {
        kubectl(&["delete", "-f", path, "--ignore-not-found"]);
    }
    cleanup.manifest = None;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Helm: install with certificates given as values, see the controller
/// ready, `weft check` pass and a pod injected, then uninstall.
fn helm_install_and_uninstall(weft_bin: &Path, images: &Images, dir: &Path) {
    let pki = dir.join("helm-pki");
    weft(
        weft_bin,
        &["identity", "init", "--out", pki.to_str().unwrap()],
    )
    .expect("identity init");
    let hook = pki.join("webhook");
    weft(
        weft_bin,
        &[
            "identity",
            "webhook",
            "--namespace",
            "weft",
            "--out",
            hook.to_str().unwrap(),
        ],
    )
    .expect("identity webhook");
    let file = |p: &Path| p.to_str().unwrap().to_string();
    let mut args: Vec<String> = vec!["install".into(), "-n".into(), "weft".into()];
    for (key, path) in [
        ("identity.trustAnchorsPEM", pki.join("ca.crt")),
        ("identity.issuer.certPEM", pki.join("issuer.crt")),
        ("identity.issuer.keyPEM", pki.join("issuer.key")),
        ("webhook.certPEM", hook.join("tls.crt")),
        ("webhook.keyPEM", hook.join("tls.key")),
        ("webhook.caBundlePEM", hook.join("ca.crt")),
    ] {
        args.extend(["--set-file".into(), format!("{key}={}", file(&path))]);
    }
    args.extend(images.set_args());
    // The other layout and init mode than the main install: the proxy as
    // an ordinary first container (the classic layout of clusters before
    // 1.29), weft-init as root.
    for set in ["proxy.nativeSidecars=never", "init.runAsRoot=true"] {
        args.extend(["--set".into(), set.into()]);
    }
    args.extend(["--wait".into(), "300".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    helm(&refs).expect("helm install");
    ready_pods(
        "weft",
        "app.kubernetes.io/name=weft-controller",
        2,
        3 * MINUTE,
    );
    check_passes(weft_bin);

    apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {HELM_NS}, annotations: {{weft.dev/inject: enabled}}}}\n---\n{}",
        web_deployment(images, HELM_NS, "web-v1", "v1", 1, 0.0)
    ));
    let pods = ready_pods(HELM_NS, "app=web", 1, 3 * MINUTE);
    assert_injected(&pods[0], false);
    assert_app_started_after_proxy(&pods[0], false);
    assert_init_ran_as(&pods[0], 0);
    eprintln!(
        "classic layout, weft-init as root: {} Running",
        pods[0]["metadata"]["name"]
    );
    kubectl(&[
        "delete",
        "namespace",
        HELM_NS,
        "--wait=true",
        "--timeout=180s",
    ]);

    helm(&["uninstall", "-n", "weft"]).expect("helm uninstall");
    until("the controller pods to go", 2 * MINUTE, || {
        let pods = get(&["pods", "-n", "weft"]);
        if pods["items"].as_array().unwrap().is_empty() {
            Ok(())
        } else {
            Err(format!("{} left", pods["items"].as_array().unwrap().len()))
        }
    });
    // Helm keeps CRDs and the namespace it created, by design
    // (docs/install.md says how to remove them); so does this.
    nothing_left(false);
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/weft/crds");
    kubectl(&["delete", "-f", crds.to_str().unwrap(), "--wait=true"]).expect("deleting the CRDs");
    kubectl(&[
        "delete",
        "namespace",
        "weft",
        "--wait=true",
        "--timeout=120s",
    ]);
    namespace_gone("weft", 2 * MINUTE);
    nothing_left(true);
}

/// weft-controller run outside the cluster (KUBECONFIG): with a namespace
/// that does not exist, then as a ServiceAccount without the Role, it
/// exits at once naming what to fix.
fn controller_refuses_without_its_lease(dir: &Path) {
    let bin = weft_tests::bins::path("weft-controller");
    let run = |namespace: &str, kubeconfig: Option<&Path>| -> Ran {
        let mut cmd = std::process::Command::new(&bin);
        cmd.args([
            "--source=kubernetes",
            "--discovery-addr=127.0.0.1:0",
            "--admin-addr=127.0.0.1:0",
            &format!("--namespace={namespace}"),
        ]);
        if let Some(k) = kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        let started = Instant::now();
        let out = kube::run_with_timeout(cmd, Duration::from_secs(60));
        eprintln!("weft-controller exited after {:?}", started.elapsed());
        out
    };
    let missing = run("weft-no-such-namespace", None);
    assert!(
        !missing.ok
            && missing
                .stderr
                .contains("namespace weft-no-such-namespace does not exist"),
        "{}",
        missing.both()
    );
    eprintln!("{}", missing.stderr.lines().last().unwrap_or(""));

    // A ServiceAccount with no rights at all, through a token kubeconfig.
    kubectl(&[
        "create",
        "serviceaccount",
        "weft-suite-norights",
        "-n",
        "default",
    ])
    .expect("create sa");
    let token =
        kubectl(&["create", "token", "weft-suite-norights", "-n", "default"]).expect("token");
    let base: Value = serde_json::from_str(
        &kubectl(&["config", "view", "--raw", "--minify", "-o", "json"]).expect("kubeconfig"),
    )
    .unwrap();
    let cluster = &base["clusters"][0]["cluster"];
    let kubeconfig = dir.join("norights.kubeconfig");
    std::fs::write(
        &kubeconfig,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "u", "user": {"token": token.trim()}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "c",
        })
        .to_string(),
    )
    .unwrap();
    let forbidden = run("default", Some(&kubeconfig));
    kubectl(&[
        "delete",
        "serviceaccount",
        "weft-suite-norights",
        "-n",
        "default",
    ]);
    assert!(
        !forbidden.ok
            && forbidden
                .stderr
                .contains("may not get, create, update Lease default/weft-controller-status"),
        "{}",
        forbidden.both()
    );
    eprintln!("{}", forbidden.stderr.lines().last().unwrap_or(""));
}

fn check_passes(weft_bin: &Path) {
    until("weft check to pass", 3 * MINUTE, || {
        let r = weft(weft_bin, &["check"]);
        if r.ok { Ok(()) } else { Err(r.both()) }
    });
}

/// Objects of Weft's left in the cluster: none labelled part-of=weft,
/// no webhook, no ClusterRole; with `crds`, no CRD either.
fn nothing_left(crds: bool) {
    let mut left = Vec::new();
    for kind in [
        "mutatingwebhookconfigurations",
        "clusterroles",
        "clusterrolebindings",
        "deployments",
        "services",
        "secrets",
        "configmaps",
        "serviceaccounts",
        "roles",
        "rolebindings",
        "poddisruptionbudgets",
    ] {
        let items = get(&[kind, "-A", "-l", "app.kubernetes.io/part-of=weft"]);
        for i in items["items"].as_array().unwrap() {
            left.push(format!(
                "{kind}/{}",
                i["metadata"]["name"].as_str().unwrap_or("")
            ));
        }
    }
    for name in ["weft-controller"] {
        if kubectl(&["get", "clusterrole", name]).ok {
            left.push(format!("clusterrole/{name}"));
        }
    }
    if crds {
        for crd in [
            "trafficsplits.split.smi-spec.io",
            "httproutegroups.specs.smi-spec.io",
            "retrypolicies.weft.dev",
            "authorizationpolicies.weft.dev",
        ] {
            if kubectl(&["get", "crd", crd]).ok {
                left.push(format!("crd/{crd}"));
            }
        }
    }
    assert!(left.is_empty(), "left behind after uninstalling: {left:?}");
}

fn web_deployment(
    images: &Images,
    ns: &str,
    name: &str,
    version: &str,
    replicas: u32,
    fail_ratio: f64,
) -> String {
    let app = if name == "web-flaky" {
        "web-flaky"
    } else {
        "web"
    };
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {app}, version: {version}}}}}
  template:
    metadata:
      labels: {{app: {app}, version: {version}}}
      annotations: {{weft.dev/tap: enabled}}
    spec:
      serviceAccountName: web
      containers:
      - name: app
        image: {image}
        imagePullPolicy: {pull}
        args: [serve, --addr, "0.0.0.0:8080", --fail-ratio, "{fail_ratio}"]
        env: [{{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /status/200, port: 8080}}, periodSeconds: 2}}
        securityContext: {{runAsUser: 1000, runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: web, namespace: {ns}}}
"#,
        image = images.testapp(),
        pull = images.pull_policy,
    )
}

fn service(ns: &str, name: &str, selector: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{selector: {selector}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n"
    )
}

/// The meshed namespace: web (v1 x2, v2 x1), web-flaky (fails 30%), their
/// Services and ServiceAccount.
fn workloads(images: &Images, ns: &str) -> String {
    let docs = [
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, annotations: {{weft.dev/inject: enabled}}}}\n"
        ),
        web_deployment(images, ns, "web-v1", "v1", 2, 0.0),
        web_deployment(images, ns, "web-v2", "v2", 1, 0.0),
        web_deployment(images, ns, "web-flaky", "v1", 1, 0.3),
        service(ns, "web", "{app: web}"),
        service(ns, "web-v1", "{app: web, version: v1}"),
        service(ns, "web-v2", "{app: web, version: v2}"),
        service(ns, "web-flaky", "{app: web-flaky}"),
    ];
    docs.join("---\n")
}

/// A load generator calling web at 20 requests a second.
fn load_deployment(images: &Images, ns: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: load, namespace: {ns}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: load, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: load}}}}
  template:
    metadata: {{labels: {{app: load}}}}
    spec:
      serviceAccountName: load
      containers:
      - name: app
        image: {image}
        imagePullPolicy: {pull}
        args: [load, --url, "http://web.{ns}.svc.cluster.local/hello", --rate, "20"]
        ports: [{{name: stats, containerPort: 9000}}]
        securityContext: {{runAsUser: 1000, runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
"#,
        image = images.testapp(),
        pull = images.pull_policy,
    )
}

fn containers<'a>(pod: &'a Value, list: &str) -> Vec<&'a Value> {
    pod["spec"][list].as_array().into_iter().flatten().collect()
}

/// weft-init first; weft-proxy a native sidecar (>= 1.29) or the first
/// container; every container Running.
fn assert_injected(pod: &Value, native: bool) {
    let name = pod["metadata"]["name"].as_str().unwrap();
    let inits = containers(pod, "initContainers");
    assert_eq!(inits[0]["name"], "weft-init", "{name}: weft-init first");
    if native {
        assert_eq!(inits[1]["name"], "weft-proxy", "{name}: native sidecar");
        assert_eq!(inits[1]["restartPolicy"], "Always", "{name}");
    } else {
        assert_eq!(
            containers(pod, "containers")[0]["name"],
            "weft-proxy",
            "{name}: classic"
        );
    }
    assert!(
        pod["metadata"]["annotations"]["weft.dev/proxy-version"].is_string(),
        "{name}: not marked meshed"
    );
    assert_eq!(pod["status"]["phase"], "Running", "{name}");
}

fn started_at(pod: &Value, list: &str, container: &str) -> String {
    pod["status"][list]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == container)
        .and_then(|s| s["state"]["running"]["startedAt"].as_str())
        .unwrap_or_else(|| panic!("{container} is not running: {}", pod["status"]))
        .to_string()
}

/// The app container started no earlier than the proxy (RFC 3339 times
/// compare as text).
fn assert_app_started_after_proxy(pod: &Value, native: bool) {
    let list = if native {
        "initContainerStatuses"
    } else {
        "containerStatuses"
    };
    let proxy = started_at(pod, list, "weft-proxy");
    let app = started_at(pod, "containerStatuses", "app");
    assert!(
        app >= proxy,
        "app started at {app}, before its proxy ({proxy})"
    );
}

/// weft-init ran as `uid` and exited 0.
fn assert_init_ran_as(pod: &Value, uid: u64) {
    let name = pod["metadata"]["name"].as_str().unwrap();
    assert_eq!(
        containers(pod, "initContainers")[0]["securityContext"]["runAsUser"],
        uid,
        "{name}"
    );
    let status = pod["status"]["initContainerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == "weft-init")
        .unwrap_or_else(|| panic!("{name}: no weft-init status"));
    assert_eq!(
        status["state"]["terminated"]["exitCode"], 0,
        "{name}: {status}"
    );
}

fn job_completes(images: &Images) {
    apply(&format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: call, namespace: {NS}}}
spec:
  backoffLimit: 0
  template:
    spec:
      serviceAccountName: load
      restartPolicy: Never
      containers:
      - name: app
        image: {image}
        imagePullPolicy: {pull}
        args: [call, --url, "http://web.{NS}.svc.cluster.local/hello", --count, "20"]
"#,
        image = images.testapp(),
        pull = images.pull_policy,
    ));
    let done = kubectl(&[
        "wait",
        "-n",
        NS,
        "job/call",
        "--for=condition=Complete",
        "--timeout=180s",
    ]);
    let job = get(&["job", "call", "-n", NS]);
    assert!(
        done.ok,
        "the Job did not complete: {}\n{}",
        done.both(),
        job["status"]
    );
    assert_eq!(job["status"]["succeeded"], 1);
    eprintln!("the Job completed: {}", job["status"]["conditions"]);
}

fn sum_metric(text: &str, name: &str, parts: &[&str]) -> f64 {
    weft_tests::pod::sum_metric(text, name, parts)
}

fn traffic_is_mtls(weft_bin: &Path, web: &[Value]) {
    let client = format!("client_id=\"spiffe://cluster.local/ns/{NS}/sa/load\"");
    let total: f64 = web
        .iter()
        .map(|p| {
            let m = proxy_metrics(NS, p["metadata"]["name"].as_str().unwrap());
            sum_metric(
                &m,
                "request_total",
                &["direction=\"inbound\"", "tls=\"true\"", &client],
            )
        })
        .sum();
    assert!(
        total > 0.0,
        "no inbound mTLS requests from the load pod counted"
    );
    eprintln!("{total} inbound mTLS requests from the load pod counted by the web proxies");
    let tap = weft(
        weft_bin,
        &[
            "tap",
            "web-v1",
            "-n",
            NS,
            "--mesh",
            "kubernetes",
            // The load app's requests, not the kubelet's probes (which
            // come from the node, without a mesh identity).
            "--path",
            "/hello",
            "--max",
            "3",
            "-o",
            "json",
        ],
    );
    let out = tap.expect("weft tap");
    let events: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        events.len() >= 3,
        "weft tap showed {} events:\n{out}",
        events.len()
    );
    eprintln!("weft tap: {}", events[0]);
    for e in &events {
        let text = e.to_string();
        assert!(
            text.contains(&format!("spiffe://cluster.local/ns/{NS}/sa/load")),
            "a tapped request without the client's mesh identity: {e}"
        );
    }
}

/// Counts over a fresh window of the load app: resets, waits `secs`.
fn window(load: &str, secs: u64) -> Value {
    reset_load(NS, load);
    std::thread::sleep(Duration::from_secs(secs));
    load_stats(NS, load).expect("the load app's stats")
}

fn backends(stats: &Value) -> Vec<String> {
    stats["byBackend"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn split(to: &[(&str, u32)]) {
    let backends: Vec<String> = to
        .iter()
        .map(|(s, w)| format!("{{service: {s}, weight: {w}}}"))
        .collect();
    apply(&format!(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: web, namespace: {NS}}}\n\
         spec: {{service: web, backends: [{}]}}\n",
        backends.join(", ")
    ));
}

fn split_moves_traffic(load: &str) {
    let before = window(load, 3);
    assert_eq!(before["failed"], 0, "{before}");
    assert!(
        backends(&before).iter().any(|b| b.starts_with("web-v1")),
        "before the split, web-v1 serves: {before}"
    );
    let applied = Instant::now();
    split(&[("web-v1", 0), ("web-v2", 100)]);
    let moved = until(
        "the split to take effect",
        30 * Duration::from_secs(1),
        || {
            let s = window(load, 1);
            let b = backends(&s);
            if !b.is_empty() && b.iter().all(|b| b.starts_with("web-v2")) {
                Ok(applied.elapsed())
            } else {
                Err(s.to_string())
            }
        },
    );
    eprintln!("the split took effect within {moved:?}");
    assert!(moved < Duration::from_secs(10), "took {moved:?}");
    let after = window(load, 5);
    assert_eq!(after["failed"], 0, "{after}");
    assert!(
        backends(&after).iter().all(|b| b.starts_with("web-v2")),
        "{after}"
    );
}

/// The controller points the SMI CRDs' conversion at its webhook; then a
/// TrafficSplit written at v1alpha1 (quantity weights) reads back at
/// v1alpha4 as whole weights in proportion and at v1alpha1 as written, one
/// written at v1alpha3 keeps its matches through v1alpha2, and what a
/// version's schema forbids is refused.
fn smi_versions_convert() {
    until(
        "the conversion webhook to be set on the CRD",
        MINUTE,
        || {
            let crd = get(&["crd", "trafficsplits.split.smi-spec.io"]);
            match crd["spec"]["conversion"]["strategy"].as_str() {
                Some("Webhook") => Ok(()),
                other => Err(format!("strategy {other:?}")),
            }
        },
    );
    let at = |version: &str, name: &str| {
        get(&[
            "-n",
            NS,
            &format!("trafficsplits.{version}.split.smi-spec.io"),
            name,
        ])
    };
    apply(&format!(
        "apiVersion: split.smi-spec.io/v1alpha1\nkind: TrafficSplit\nmetadata: {{name: conv-v1alpha1, namespace: {NS}}}\n\
         spec: {{service: web, backends: [{{service: web-v1, weight: 500m}}, {{service: web-v2, weight: \"1\"}}]}}\n"
    ));
    let hub = at("v1alpha4", "conv-v1alpha1");
    let weights: Vec<&Value> = hub["spec"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| &b["weight"])
        .collect();
    assert_eq!(weights, [&Value::from(1), &Value::from(2)], "{hub}");
    let v1 = at("v1alpha1", "conv-v1alpha1");
    assert_eq!(v1["spec"]["backends"][0]["weight"], "500m", "{v1}");

    apply(&format!(
        "apiVersion: split.smi-spec.io/v1alpha3\nkind: TrafficSplit\nmetadata: {{name: conv-v1alpha3, namespace: {NS}}}\n\
         spec: {{service: web, matches: [{{kind: HTTPRouteGroup, name: ab}}], backends: [{{service: web-v1, weight: 1}}]}}\n"
    ));
    let v2 = at("v1alpha2", "conv-v1alpha3");
    assert!(v2["spec"].get("matches").is_none(), "{v2}");
    let v4 = at("v1alpha4", "conv-v1alpha3");
    assert_eq!(v4["spec"]["matches"][0]["name"], "ab", "{v4}");

    let refused = kubectl_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {{name: conv-bad, namespace: {NS}}}\n\
             spec: {{service: web, backends: [{{service: web-v1, weight: -1}}]}}\n"
        ),
    );
    assert!(
        !refused.ok && refused.stderr.contains("weight"),
        "{}",
        refused.both()
    );
    kubectl(&[
        "-n",
        NS,
        "delete",
        "trafficsplits.split.smi-spec.io",
        "conv-v1alpha1",
        "conv-v1alpha3",
    ]);
}

/// With the split sending everything to web-v2, an HTTPRoute whose parent
/// is the Service `web` sends it to web-v1: the route wins, the split says
/// so, the route's status.parents entry is Accepted with its refs
/// resolved; a route with a missing backend says BackendNotFound, one the
/// CRD's schema forbids is refused; deleting the route gives the traffic
/// back to the split.
fn http_route_wins_with_status(load: &str) {
    let route = |name: &str, backend: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {NS}}}\n\
             spec:\n  parentRefs: [{{group: \"\", kind: Service, name: web, port: 80}}]\n  rules:\n  - backendRefs: [{{name: {backend}, port: 80}}]\n"
        )
    };
    apply(&route("web-route", "web-v1"));
    let moved = until(
        "the route to take the traffic",
        30 * Duration::from_secs(1),
        || {
            let s = window(load, 1);
            let b = backends(&s);
            if !b.is_empty() && b.iter().all(|b| b.starts_with("web-v1")) {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        },
    );
    assert_eq!(moved["failed"], 0, "{moved}");
    let condition = |kind: &str, name: &str, path: &str, ty: &str| -> Option<(String, String)> {
        let o = get(&["-n", NS, kind, name]);
        let conditions = o.pointer(path)?.as_array()?.clone();
        let c = conditions.iter().find(|c| c["type"] == ty)?;
        Some((
            c["status"].as_str()?.to_string(),
            c["reason"].as_str()?.to_string(),
        ))
    };
    let parent = |name: &str, ty: &str| {
        let o = get(&["-n", NS, "httproutes.gateway.networking.k8s.io", name]);
        let parents = o["status"]["parents"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ours = parents
            .iter()
            .find(|p| p["controllerName"] == "weft.dev/controller")?
            .clone();
        let c = ours["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == ty)?
            .clone();
        Some((
            c["status"].as_str()?.to_string(),
            c["reason"].as_str()?.to_string(),
        ))
    };
    until("the route's status.parents", MINUTE, || {
        match (
            parent("web-route", "Accepted"),
            parent("web-route", "ResolvedRefs"),
        ) {
            (Some(a), Some(r)) if a.0 == "True" && r.0 == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    until(
        "the split to say the route overrides it",
        MINUTE,
        || match condition(
            "trafficsplits.split.smi-spec.io",
            "web",
            "/status/conditions",
            "Accepted",
        ) {
            Some((_, reason)) if reason == "OverriddenByRoute" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    apply(&route("web-missing", "no-such-service"));
    until(
        "a missing backend to be reported",
        MINUTE,
        || match parent("web-missing", "ResolvedRefs") {
            Some((status, reason)) if status == "False" && reason == "BackendNotFound" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let refused = kubectl_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: web-bad, namespace: {NS}}}\n\
             spec:\n  parentRefs: [{{group: \"\", kind: Service, name: web}}]\n  rules:\n  - matches: [{{path: {{type: Bogus, value: /}}}}]\n    backendRefs: [{{name: web-v1, port: 80}}]\n"
        ),
    );
    assert!(!refused.ok, "a path match of type Bogus was accepted");
    kubectl(&[
        "-n",
        NS,
        "delete",
        "httproutes.gateway.networking.k8s.io",
        "web-route",
        "web-missing",
    ]);
    until(
        "the split to take the traffic back",
        30 * Duration::from_secs(1),
        || {
            let s = window(load, 1);
            let b = backends(&s);
            if !b.is_empty() && b.iter().all(|b| b.starts_with("web-v2")) {
                Ok(())
            } else {
                Err(s.to_string())
            }
        },
    );
}

/// web-flaky fails 30% of requests. Without retries, over n = 60 the
/// failures are Binomial(60, 0.3): mean 18, and fewer than 5 has
/// probability < 1e-4. With up to 3 retries a request fails with
/// p = 0.3^4 = 0.0081: over n = 200 the mean is 1.6, and more than 10
/// failures has probability < 1e-5.
fn retries_hide_failures(load: &str) {
    split(&[("web-flaky", 100)]);
    until(
        "all traffic on web-flaky",
        30 * Duration::from_secs(1),
        || {
            let s = window(load, 1);
            let b = backends(&s);
            if !b.is_empty() && b.iter().all(|b| b.starts_with("web-flaky")) {
                Ok(())
            } else {
                Err(s.to_string())
            }
        },
    );
    let without = window(load, 3);
    let (n, failed) = (
        without["total"].as_u64().unwrap(),
        without["failed"].as_u64().unwrap(),
    );
    assert!(
        n >= 50 && failed >= 5,
        "without retries, failures should show: {without}"
    );
    eprintln!("without retries: {failed} of {n} failed");
    apply(&format!(
        "apiVersion: weft.dev/v1alpha1\nkind: RetryPolicy\nmetadata: {{name: web, namespace: {NS}}}\n\
         spec: {{targetRef: {{kind: Service, name: web}}, retryOn: [5xx], maxRetries: 3, policy: constant, duration: 5ms}}\n"
    ));
    // The policy reaches the load pod's proxy within seconds; then count
    // a fresh window of ~240 requests (20 a second).
    std::thread::sleep(Duration::from_secs(3));
    let with = window(load, 12);
    let (n, failed) = (
        with["total"].as_u64().unwrap(),
        with["failed"].as_u64().unwrap(),
    );
    assert!(n >= 200 && failed <= 10, "with retries: {with}");
    eprintln!("with the RetryPolicy: {failed} of {n} failed");
    kubectl(&["delete", "retrypolicy", "web", "-n", NS]);
    kubectl(&["delete", "trafficsplit", "web", "-n", NS]);
}

fn authorization_denies(load: &str) {
    until("traffic back on web without failures", MINUTE, || {
        let s = window(load, 2);
        if s["failed"] == 0 && backends(&s).iter().all(|b| !b.starts_with("web-flaky")) {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    apply(&format!(
        "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: web-only-admin, namespace: {NS}}}\n\
         spec: {{targetRef: {{kind: Service, name: web}}, action: ALLOW, from: [{{serviceAccounts: [\"{NS}/admin\"]}}]}}\n"
    ));
    let denied = until(
        "the policy to deny the load app",
        30 * Duration::from_secs(1),
        || {
            let s = window(load, 1);
            if s["byStatus"]["403"].as_u64().unwrap_or(0) > 0 && s["byStatus"]["200"].is_null() {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        },
    );
    eprintln!("denied: {denied}");
    kubectl(&["delete", "authorizationpolicy", "web-only-admin", "-n", NS]);
    until(
        "the load app allowed again",
        30 * Duration::from_secs(1),
        || {
            let s = window(load, 2);
            if s["failed"] == 0 && s["ok"].as_u64().unwrap_or(0) > 0 {
                Ok(())
            } else {
                Err(s.to_string())
            }
        },
    );
}

fn check_names_a_down_controller(weft_bin: &Path) {
    kubectl(&[
        "scale",
        "-n",
        "weft",
        "deployment/weft-controller",
        "--replicas=0",
    ])
    .expect("scale down");
    let failed = until("weft check to fail", 2 * MINUTE, || {
        let r = weft(weft_bin, &["check"]);
        if r.ok {
            Err("still passing".into())
        } else {
            Ok(r.both())
        }
    });
    assert!(
        failed.contains("weft-controller") && failed.contains("webhook"),
        "weft check should name the controller and its webhook:\n{failed}"
    );
    kubectl(&[
        "scale",
        "-n",
        "weft",
        "deployment/weft-controller",
        "--replicas=2",
    ])
    .expect("scale up");
    ready_pods(
        "weft",
        "app.kubernetes.io/name=weft-controller",
        2,
        3 * MINUTE,
    );
    check_passes(weft_bin);
}

fn controller_deletion_loses_nothing(load: &str) {
    reset_load(NS, load);
    let deleted = kubectl(&[
        "delete",
        "pod",
        "-n",
        "weft",
        "-l",
        "app.kubernetes.io/name=weft-controller",
        "--wait=false",
    ]);
    assert!(deleted.ok, "{}", deleted.both());
    ready_pods(
        "weft",
        "app.kubernetes.io/name=weft-controller",
        2,
        3 * MINUTE,
    );
    std::thread::sleep(Duration::from_secs(10));
    let s = load_stats(NS, load).expect("stats");
    assert!(s["total"].as_u64().unwrap() >= 100, "{s}");
    assert_eq!(
        s["failed"], 0,
        "requests failed while the controller was replaced: {s}"
    );
    eprintln!(
        "while both controller pods were replaced: {} requests, 0 failed",
        s["total"]
    );
}
