//! Weft's images under a real container runtime (podman, runc), each pod
//! run from exactly the spec the injector writes (containers/podman.rs
//! turns it into podman flags): weft-init installs its rules with the
//! securityContext it is given, weft-proxy runs as 2102 on a read-only
//! root filesystem and becomes ready, and an app in one pod calls another
//! pod through both proxies with mTLS issued by a controller that also
//! runs from its image. A broken spec fails with the runtime's own error.
//!
//! Needs root, podman and the images (`scripts/images`); skips loudly
//! without them, unless WEFT_REQUIRE_IMAGES=1 (CI) makes that a failure.

#[path = "containers/podman.rs"]
mod podman;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use podman::{PodInfo, Podman, http_get, image};
use serde_json::{Value, json};
use weft_cli::chart::{self, Release};
use weft_controller::identity::ca;
use weft_controller::inject::{InjectorConfig, Layout, inject};

const SUBNET: &str = "198.18.200.0/24";
const CONTROLLER_IP: &str = "198.18.200.2";
const WEB_IP: &str = "198.18.200.11";
const CLIENT_IP: &str = "198.18.200.12";
/// web.shop's cluster IP: nothing answers there; the client's proxy
/// resolves it through the controller.
const WEB_CLUSTER_IP: &str = "198.19.200.10";

fn skip() -> bool {
    let Some(why) = podman::unavailable() else {
        return false;
    };
    if std::env::var_os("WEFT_REQUIRE_IMAGES").is_some() {
        panic!("WEFT_REQUIRE_IMAGES is set but the container suite cannot run: {why}");
    }
    weft_tests::skip_loudly(&format!(
        "the container suite: it needs root, podman and the images: {why}"
    ));
    true
}

/// The mesh's CA (trust anchor, issuer) and the ServiceAccount tokens the
/// controller accepts instead of TokenReview.
fn write_pki(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let anchor = ca::new_trust_anchor("cluster.local", Duration::from_secs(3600)).unwrap();
    let issuer = ca::new_issuer(&anchor, "cluster.local", Duration::from_secs(3600)).unwrap();
    for (file, text) in [
        ("ca.crt", &anchor.cert_pem),
        ("issuer.crt", &issuer.cert_pem),
        ("issuer.key", &issuer.key_pem),
    ] {
        std::fs::write(dir.join(file), text).unwrap();
    }
    std::fs::write(
        dir.join("tokens.yaml"),
        "- {token: web-token, namespace: shop, serviceAccount: web}\n\
         - {token: client-token, namespace: shop, serviceAccount: client}\n",
    )
    .unwrap();
    // Readable by the controller's UID (2103), as the chart's fsGroup makes them.
    for f in ["ca.crt", "issuer.crt", "issuer.key", "tokens.yaml"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    anchor.cert_pem
}

/// What the controller reads from its directory source: the namespace,
/// the web Service and both pods, as the API server would have them.
fn write_mesh(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let pod = |name: &str, app: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {app}}}, annotations: {{weft.dev/proxy-version: v0.1.0}}}}\n\
             spec: {{serviceAccountName: {app}, containers: [{{name: {app}, image: x, ports: [{{name: http, containerPort: 8080}}]}}]}}\n\
             status: {{phase: Running, podIP: {ip}}}\n"
        )
    };
    let objects = [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n".to_string(),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\n\
             spec: {{clusterIP: {WEB_CLUSTER_IP}, selector: {{app: web}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n"
        ),
        pod("web-0", "web", WEB_IP),
        pod("client-0", "client", CLIENT_IP),
    ];
    std::fs::write(dir.join("mesh.yaml"), objects.join("---\n")).unwrap();
}

/// The chart rendered with its defaults: the injector's settings and the
/// controller's container, as a cluster would get them.
fn chart_objects() -> Vec<Value> {
    let mut values = chart::default_values();
    let pem = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n";
    for path in [
        "identity.trustAnchorsPEM",
        "identity.issuer.certPEM",
        "identity.issuer.keyPEM",
        "webhook.certPEM",
        "webhook.keyPEM",
        "webhook.caBundlePEM",
    ] {
        chart::set_path(&mut values, path, json!(pem)).unwrap();
    }
    let release = Release {
        name: "weft".into(),
        namespace: "weft".into(),
    };
    let stream = chart::to_stream(&chart::render(&values, &release).unwrap());
    serde_yaml_ng::Deserializer::from_str(&stream)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the chart renders no {kind}/{name}"))
}

/// The chart's injector settings, pointed at the controller's container.
fn injector(objs: &[Value], anchors_pem: &str) -> InjectorConfig {
    let text = find(objs, "ConfigMap", "weft-injector")["data"]["config.yaml"]
        .as_str()
        .unwrap();
    let mut config = InjectorConfig::parse(text).unwrap();
    config.controller_addr = format!("{CONTROLLER_IP}:8086");
    config.identity_addr = format!("{CONTROLLER_IP}:8080");
    config.complete("cluster.local", "weft", Some(anchors_pem.into()));
    config
}

/// The controller, from its image, with the chart's securityContext.
fn start_controller(p: &mut Podman, objs: &[Value], pki: &Path, mesh: &Path) -> String {
    let deployment = find(objs, "Deployment", "weft-controller");
    let chart_container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let container = json!({
        "name": "weft-controller",
        "image": image("weft-controller"),
        "securityContext": chart_container["securityContext"],
        "volumeMounts": [
            {"name": "pki", "mountPath": "/pki", "readOnly": true},
            {"name": "mesh", "mountPath": "/mesh", "readOnly": true},
        ],
        "args": [
            "--source=dir:/mesh", "--discovery-addr=0.0.0.0:8086", "--identity-addr=0.0.0.0:8080",
            "--admin-addr=0.0.0.0:9990", "--trust-anchors=/pki/ca.crt", "--issuer-cert=/pki/issuer.crt",
            "--issuer-key=/pki/issuer.key", "--static-tokens=/pki/tokens.yaml",
        ],
    });
    let info = PodInfo {
        namespace: "weft".into(),
        name: "weft-controller".into(),
        token: String::new(),
        ip: CONTROLLER_IP.into(),
    };
    let volumes = vec![
        ("pki".to_string(), pki.to_path_buf()),
        ("mesh".to_string(), mesh.to_path_buf()),
    ];
    let args = podman::container_args(&container, &json!({}), &info, &volumes).unwrap();
    let id = p.run_detached(CONTROLLER_IP, &args);
    until("the controller is ready", Duration::from_secs(30), || {
        podman::http_ok(CONTROLLER_IP, 9990, "/ready")
    });
    id
}

/// A pod of the test app, injected by the injector as the webhook would.
fn injected_pod(name: &str, sa: &str, args: &[&str], config: &InjectorConfig) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "annotations": {"weft.dev/inject": "enabled"}},
        "spec": {
            "serviceAccountName": sa,
            "containers": [{
                "name": "app",
                "image": image("weft-testapp"),
                "args": args,
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "securityContext": {"runAsUser": 1000, "runAsNonRoot": true, "readOnlyRootFilesystem": true,
                                    "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    });
    inject(&mut pod, config, Layout::Native, &BTreeMap::new()).unwrap();
    pod
}

fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The Uid and CapEff lines of a process.
fn credentials(pid: u32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    (field("Uid:"), field("CapEff:"))
}

/// The nat table of a process's network namespace.
fn nat_rules(pid: u32) -> String {
    let out = std::process::Command::new("nsenter")
        .args([
            &format!("--net=/proc/{pid}/ns/net"),
            "iptables-nft-save",
            "-t",
            "nat",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sum_metric(text: &str, name: &str, parts: &[&str]) -> f64 {
    weft_tests::pod::sum_metric(text, name, parts)
}

#[test]
fn meshed_pods_run_from_the_injectors_spec_with_mtls() {
    if skip() {
        return;
    }
    let mut p = Podman::new(SUBNET);
    let (pki, mesh) = (p.dir().join("pki"), p.dir().join("mesh"));
    let anchors = write_pki(&pki);
    write_mesh(&mesh);
    let objs = chart_objects();
    let config = injector(&objs, &anchors);
    let controller = start_controller(&mut p, &objs, &pki, &mesh);
    let (uid, _) = credentials(p.pid(&controller));
    assert_eq!(uid, "2103", "the controller runs as the chart's UID");

    let web_spec = injected_pod(
        "web-0",
        "web",
        &["serve", "--addr", "0.0.0.0:8080"],
        &config,
    );
    let info = |name: &str, ip: &str, token: &str| PodInfo {
        namespace: "shop".into(),
        name: name.into(),
        token: token.into(),
        ip: ip.into(),
    };
    let web = p
        .start_pod(&web_spec, info("web-0", WEB_IP, "web-token"))
        .unwrap_or_else(|e| panic!("the web pod did not start: {e}"));
    let url = format!("http://{WEB_CLUSTER_IP}/hello");
    let client_spec = injected_pod(
        "client-0",
        "client",
        &["load", "--url", &url, "--rate", "20"],
        &config,
    );
    let client = p
        .start_pod(&client_spec, info("client-0", CLIENT_IP, "client-token"))
        .unwrap_or_else(|e| panic!("the client pod did not start: {e}"));

    // weft-init ran (as 65534, NET_ADMIN and NET_RAW only) and left its rules.
    let init = &web_spec["spec"]["initContainers"][0];
    assert_eq!(init["name"], "weft-init");
    assert_eq!(init["securityContext"]["runAsUser"], 65534);
    let rules = nat_rules(p.pid(&p.infra(&web)));
    assert!(
        rules.contains("-j WEFT_OUTBOUND")
            && rules.contains("--uid-owner 2102")
            && rules.contains("--to-ports 4143"),
        "weft-init's rules are not in the pod:\n{rules}"
    );
    // weft-proxy: UID 2102, no capabilities, read-only root, ready.
    for pod in [&web, &client] {
        let proxy = pod.container("weft-proxy");
        let (uid, caps) = credentials(p.pid(proxy));
        assert_eq!((uid.as_str(), caps.as_str()), ("2102", "0000000000000000"));
        assert_eq!(p.inspect(proxy, "{{.HostConfig.ReadonlyRootfs}}"), "true");
        assert!(podman::http_ok(&pod.info.ip, 4191, "/ready"));
    }
    let (_, identity) = http_get(WEB_IP, 4191, "/identity").unwrap();
    assert!(
        identity.contains("spiffe://cluster.local/ns/shop/sa/web"),
        "{identity}"
    );

    // The client's app calls web.shop's cluster IP; both proxies carry it.
    let stats = |_: ()| -> Value {
        let (_, body) = http_get(CLIENT_IP, 9000, "/stats").expect("the load app's stats");
        serde_json::from_str(&body).unwrap()
    };
    until(
        "40 answers through the mesh",
        Duration::from_secs(60),
        || stats(())["total"].as_u64().unwrap_or(0) >= 40,
    );
    let s = stats(());
    assert_eq!(s["failed"], 0, "failed requests: {s}");
    assert_eq!(
        s["byBackend"],
        json!({"web-0": s["total"]}),
        "every answer from the web pod: {s}"
    );
    // The web app saw the client's identity, which only mTLS can carry.
    assert_eq!(
        s["byClientId"],
        json!({"spiffe://cluster.local/ns/shop/sa/client": s["total"]}),
        "{s}"
    );
    let (_, metrics) = http_get(WEB_IP, 4191, "/metrics").unwrap();
    let mtls = sum_metric(
        &metrics,
        "request_total",
        &[
            "direction=\"inbound\"",
            "tls=\"true\"",
            "client_id=\"spiffe://cluster.local/ns/shop/sa/client\"",
        ],
    );
    assert!(
        mtls >= 40.0,
        "inbound mTLS requests counted: {mtls}\n{metrics}"
    );
    let logs = p.logs(client.container("app"));
    assert!(logs.contains("calling"), "{logs}");
}

/// The ways a spec can be wrong that only a real runtime shows: each one
/// fails to start, with the runtime's (or iptables') own words.
#[test]
fn a_broken_spec_fails_with_the_runtimes_error() {
    if skip() {
        return;
    }
    let mut p = Podman::new("198.18.201.0/24");
    let mut config = injector(&chart_objects(), "");
    config.identity_addr.clear();
    // No controller: the proxies are ready once their listeners are up.
    config.controller_addr.clear();
    let info = |name: &str, ip: &str| PodInfo {
        namespace: "shop".into(),
        name: name.into(),
        token: "t".into(),
        ip: ip.into(),
    };
    let good = injected_pod("good", "web", &["serve"], &config);

    // weft-init without NET_ADMIN and NET_RAW: its file capabilities
    // exceed what the container may have, and the runtime refuses to start it.
    let mut no_caps = good.clone();
    no_caps["spec"]["initContainers"][0]["securityContext"]["capabilities"]["add"] = json!([]);
    let err = p
        .start_pod(&no_caps, info("no-caps", "198.18.201.11"))
        .err()
        .expect("weft-init without capabilities must fail");
    assert!(
        err.contains("weft-init failed") && err.contains("operation not permitted"),
        "{err}"
    );

    // iptables-legacy needs a writable /run for its lock; without the
    // emptyDir the injector mounts there, the read-only root refuses it.
    let mut no_run = good.clone();
    let init = &mut no_run["spec"]["initContainers"][0];
    init["volumeMounts"] = json!([]);
    let args = init["args"].as_array_mut().unwrap();
    let mode = args.iter().position(|a| a == "--iptables-mode").unwrap();
    args[mode + 1] = json!("legacy");
    let err = p
        .start_pod(&no_run, info("no-run", "198.18.201.12"))
        .err()
        .expect("legacy iptables without /run must fail");
    assert!(
        err.contains("weft-init failed") && err.contains("Read-only file system"),
        "{err}"
    );

    // The same pod with its spec intact starts (so the failures above are
    // the changes' doing).
    let pod = p
        .start_pod(&good, info("good", "198.18.201.13"))
        .unwrap_or_else(|e| panic!("the intact spec must start: {e}"));
    let rules = nat_rules(p.pid(&p.infra(&pod)));
    assert!(rules.contains("WEFT_INBOUND"), "{rules}");
}
