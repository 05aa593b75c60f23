//! `weft inject` / `weft uninject` on every workload kind: golden output,
//! idempotency, untouched documents byte for byte, annotations honoured,
//! unknown fields kept, typed validation of the result.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use weft_cli::inject::{inject_text, uninject_text};
use weft_controller::inject::{InjectorConfig, NativeSidecars};

const INPUT: &str = include_str!("inject/workloads.yaml");
const GOLDEN: &str = "tests/inject/workloads.injected.yaml";

fn config(native: NativeSidecars) -> InjectorConfig {
    InjectorConfig {
        native_sidecars: native,
        trust_anchors_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        ..InjectorConfig::default()
    }
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not in the output"))
}

fn template(doc: &Value) -> &Value {
    match doc["kind"].as_str().unwrap() {
        "Pod" => doc,
        "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"],
        _ => &doc["spec"]["template"],
    }
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {list} container {name}: {pod}"))
}

fn env<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"].as_str()
}

#[test]
fn output_matches_the_golden_file() {
    let (out, _) = inject_text(INPUT, &config(NativeSidecars::Always)).unwrap();
    if std::env::var_os("WEFT_UPDATE_GOLDEN").is_some() {
        std::fs::write(GOLDEN, &out).unwrap();
    }
    let golden =
        std::fs::read_to_string(GOLDEN).expect("golden file (WEFT_UPDATE_GOLDEN=1 writes it)");
    assert_eq!(
        out, golden,
        "output differs from {GOLDEN}; review, then WEFT_UPDATE_GOLDEN=1"
    );
}

#[test]
fn every_workload_kind_is_injected_and_valid() {
    let (out, report) = inject_text(INPUT, &config(NativeSidecars::Always)).unwrap();
    let docs = docs(&out);
    for (kind, name) in [
        ("Deployment", "web"),
        ("StatefulSet", "db"),
        ("DaemonSet", "agent"),
        ("Job", "report"),
        ("CronJob", "nightly"),
        ("Pod", "debug"),
    ] {
        let pod = template(find(&docs, kind, name));
        assert_eq!(
            pod["metadata"]["annotations"]["weft.dev/proxy-version"],
            env!("CARGO_PKG_VERSION")
        );
        let inits = pod["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(
            inits[0]["name"], "weft-init",
            "{kind}: weft-init runs first"
        );
        assert_eq!(
            inits[1]["name"], "weft-proxy",
            "{kind}: the native sidecar right after"
        );
        assert_eq!(inits[1]["restartPolicy"], "Always");
        assert_eq!(inits[1]["startupProbe"]["httpGet"]["path"], "/ready");
        let proxy = &inits[1];
        assert_eq!(proxy["securityContext"]["runAsUser"], 2102);
        assert_eq!(
            env(proxy, "WEFT_PROXY_IDENTITY_ADDR"),
            Some("weft-identity.weft.svc.cluster.local:8080")
        );
        assert!(
            env(proxy, "WEFT_PROXY_TRUST_ANCHORS")
                .unwrap()
                .starts_with("-----BEGIN")
        );
        let token = pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "weft-identity-token")
            .unwrap();
        assert_eq!(
            token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            "identity.weft.dev"
        );
        let caps = &inits[0]["securityContext"]["capabilities"]["add"];
        assert_eq!(caps, &serde_json::json!(["NET_ADMIN", "NET_RAW"]));
        assert!(
            report.contains(&format!("{}/{name} injected", kind.to_lowercase())),
            "{report:?}"
        );
    }
    // The result is what Kubernetes' own types accept.
    let typed = |kind: &str, name: &str| find(&docs, kind, name).clone();
    serde_json::from_value::<Deployment>(typed("Deployment", "web")).unwrap();
    serde_json::from_value::<StatefulSet>(typed("StatefulSet", "db")).unwrap();
    serde_json::from_value::<DaemonSet>(typed("DaemonSet", "agent")).unwrap();
    serde_json::from_value::<Job>(typed("Job", "report")).unwrap();
    serde_json::from_value::<CronJob>(typed("CronJob", "nightly")).unwrap();
    serde_json::from_value::<Pod>(typed("Pod", "debug")).unwrap();
}

#[test]
fn annotations_are_honoured_and_unknown_fields_kept() {
    let (out, _) = inject_text(INPUT, &config(NativeSidecars::Always)).unwrap();
    let docs = docs(&out);
    let web = template(find(&docs, "Deployment", "web"));
    let init = container(web, "initContainers", "weft-init");
    let args: Vec<&str> = init["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--outbound-ports-to-ignore")
        .expect("skip ports passed on");
    assert_eq!(args[at + 1], "5432,6379");
    assert!(!args.contains(&"--inbound-ports-to-ignore"));
    let proxy = container(web, "initContainers", "weft-proxy");
    assert_eq!(env(proxy, "WEFT_PROXY_LOG"), Some("debug"));
    assert_eq!(proxy["resources"]["limits"]["cpu"], "1");
    assert_eq!(
        proxy["resources"]["requests"]["memory"], "20Mi",
        "defaults kept beside the override"
    );
    let app = container(web, "containers", "web");
    assert_eq!(
        app["futureField"]["kept"], true,
        "fields unknown to us survive"
    );
    assert_eq!(
        web["spec"]["volumes"][0]["name"], "data",
        "the pod's own volumes stay first"
    );

    let db = template(find(&docs, "StatefulSet", "db"));
    let inits: Vec<&str> = db["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        inits,
        ["weft-init", "weft-proxy", "migrate"],
        "the app's init containers run meshed"
    );
    assert_eq!(
        env(
            container(db, "initContainers", "weft-proxy"),
            "WEFT_PROXY_OPAQUE_PORTS"
        ),
        Some("5432")
    );
}

#[test]
fn other_documents_are_untouched_byte_for_byte() {
    let (out, report) = inject_text(INPUT, &config(NativeSidecars::Always)).unwrap();
    let service = INPUT.split("---\n").next().unwrap();
    assert!(
        out.starts_with(service),
        "the Service (and its comments) come out as they went in"
    );
    let configmap = INPUT.rsplit("\n---\n").next().unwrap();
    assert!(out.ends_with(configmap), "the ConfigMap is the same text");
    let host = INPUT
        .split("---\n")
        .find(|d| d.contains("node-exporter"))
        .unwrap();
    assert!(out.contains(host), "the host-network pod is left as it was");
    assert!(
        report
            .iter()
            .any(|l| l == "pod/node-exporter skipped: uses the host network"),
        "{report:?}"
    );
}

#[test]
fn injecting_twice_changes_nothing() {
    let config = config(NativeSidecars::Always);
    let (once, _) = inject_text(INPUT, &config).unwrap();
    let (twice, report) = inject_text(&once, &config).unwrap();
    assert_eq!(once, twice);
    assert!(report.iter().all(|l| l.contains("skipped")), "{report:?}");
}

#[test]
fn uninject_restores_the_workloads() {
    let (injected, _) = inject_text(INPUT, &config(NativeSidecars::Never)).unwrap();
    let (restored, report) = uninject_text(&injected).unwrap();
    assert_eq!(docs(&restored), docs(INPUT));
    assert!(
        report.contains(&"deployment/web uninjected".to_string()),
        "{report:?}"
    );
    let (again, _) = uninject_text(&restored).unwrap();
    assert_eq!(
        again, restored,
        "uninjecting an uninjected file changes nothing"
    );
}

#[test]
fn the_classic_layout_holds_the_app_until_the_proxy_is_ready() {
    let (out, _) = inject_text(INPUT, &config(NativeSidecars::Never)).unwrap();
    let docs = docs(&out);
    let web = template(find(&docs, "Deployment", "web"));
    let first = &web["spec"]["containers"][0];
    assert_eq!(first["name"], "weft-proxy");
    assert_eq!(
        first["lifecycle"]["postStart"]["exec"]["command"],
        serde_json::json!(["weft-proxy", "await-ready"])
    );
    assert_eq!(web["spec"]["containers"][1]["name"], "web");
    let inits: Vec<&str> = web["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(inits, ["weft-init"]);
}

#[test]
fn a_bad_annotation_is_an_error_naming_the_workload() {
    let bad = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {weft.dev/skip-inbound-ports: 'eighty'}\nspec:\n  containers: []\n";
    let e = inject_text(bad, &config(NativeSidecars::Always))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Pod/p") && e.contains("skip-inbound-ports") && e.contains("eighty"),
        "{e}"
    );
    let e = inject_text("a: [1\n", &config(NativeSidecars::Always))
        .unwrap_err()
        .to_string();
    assert!(e.contains("document 0"), "{e}");
}

#[test]
fn telemetry_comes_from_the_chart_and_annotations_override_it() {
    let pod = |annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {{{annotations}}}\nspec:\n  containers: [{{name: app, image: x}}]\n"
        )
    };
    let proxy_env = |text: &str, config: &InjectorConfig| {
        let (out, _) = inject_text(text, config).unwrap();
        let docs = docs(&out);
        let proxy = container(&docs[0], "initContainers", "weft-proxy").clone();
        [
            "WEFT_PROXY_TRACE_COLLECTOR",
            "WEFT_PROXY_TRACE_SAMPLING",
            "WEFT_PROXY_ACCESS_LOG",
            "WEFT_PROXY_TAP",
        ]
        .map(|k| env(&proxy, k).map(String::from))
    };
    // By default: nothing on.
    let plain = config(NativeSidecars::Always);
    assert_eq!(proxy_env(&pod(""), &plain), [None, None, None, None]);
    // The chart's values.
    let chart = InjectorConfig {
        trace_collector: "grpc://otel.monitoring:4317".into(),
        trace_sampling: "0.1".into(),
        access_log: "json".into(),
        tap: true,
        ..plain.clone()
    };
    assert_eq!(
        proxy_env(&pod(""), &chart),
        [
            Some("grpc://otel.monitoring:4317".into()),
            Some("0.1".into()),
            Some("json".into()),
            Some("true".into())
        ]
    );
    // A workload's annotations win.
    let annotated = pod(
        "weft.dev/trace-collector: 'http://jaeger.tracing:4318', weft.dev/trace-sampling: '1', weft.dev/access-log: apache, weft.dev/tap: disabled",
    );
    assert_eq!(
        proxy_env(&annotated, &chart),
        [
            Some("http://jaeger.tracing:4318".into()),
            Some("1".into()),
            Some("apache".into()),
            None
        ]
    );
    assert_eq!(
        proxy_env(&pod("weft.dev/access-log: 'off'"), &chart)[2],
        None
    );
    // Bad values name the annotation.
    for (bad, says) in [
        ("weft.dev/access-log: xml", "access-log"),
        ("weft.dev/tap: maybe", "weft.dev/tap"),
        ("weft.dev/trace-collector: 'otel:4317'", "trace-collector"),
        (
            "weft.dev/trace-collector: 'grpc://o:4317', weft.dev/trace-sampling: '2'",
            "trace-sampling",
        ),
    ] {
        let e = inject_text(&pod(bad), &plain).unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[test]
fn init_settings_come_from_the_chart_and_annotations() {
    let pod = |annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {{{annotations}}}\nspec:\n  containers: [{{name: app, image: x}}]\n"
        )
    };
    let injected = |text: &str, config: &InjectorConfig| {
        let (out, _) = inject_text(text, config).unwrap();
        let docs = docs(&out);
        (
            container(&docs[0], "initContainers", "weft-init").clone(),
            container(&docs[0], "initContainers", "weft-proxy").clone(),
        )
    };
    let args = |init: &Value| -> Vec<String> {
        init["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    let flag = |init: &Value, name: &str| -> Option<String> {
        let a = args(init);
        a.iter().position(|x| x == name).map(|i| a[i + 1].clone())
    };
    // Defaults: nft, IPv4 only, as nobody with capabilities.
    let plain = config(NativeSidecars::Always);
    let (init, proxy) = injected(&pod(""), &plain);
    assert_eq!(flag(&init, "--iptables-mode").as_deref(), Some("nft"));
    assert!(!args(&init).contains(&"--ipv6".to_string()));
    assert_eq!(flag(&init, "--subnets-to-ignore"), None);
    assert_eq!(init["securityContext"]["runAsUser"], 65534);
    assert_eq!(init["securityContext"]["runAsNonRoot"], true);
    assert_eq!(env(&proxy, "WEFT_PROXY_INBOUND_ADDR"), None);
    // The chart's values.
    let chart = InjectorConfig {
        iptables_mode: weft_controller::inject::config::IptablesMode::Legacy,
        ipv6: true,
        init_run_as_root: true,
        ignore_subnets: vec!["169.254.0.0/16".into()],
        ..plain.clone()
    };
    let (init, proxy) = injected(&pod(""), &chart);
    assert_eq!(flag(&init, "--iptables-mode").as_deref(), Some("legacy"));
    assert!(args(&init).contains(&"--ipv6".to_string()));
    assert_eq!(
        flag(&init, "--subnets-to-ignore").as_deref(),
        Some("169.254.0.0/16")
    );
    assert_eq!(init["securityContext"]["runAsUser"], 0);
    assert_eq!(init["securityContext"]["runAsNonRoot"], false);
    assert_eq!(env(&proxy, "WEFT_PROXY_INBOUND_ADDR"), Some("[::]:4143"));
    assert_eq!(
        env(&proxy, "WEFT_PROXY_OUTBOUND_IPV6_ADDR"),
        Some("[::1]:4140")
    );
    // Annotations: the mode wins, the subnets add to the chart's.
    let (init, _) = injected(
        &pod("weft.dev/iptables-mode: nft, weft.dev/skip-subnets: '10.0.0.0/8, fd00::/8'"),
        &chart,
    );
    assert_eq!(flag(&init, "--iptables-mode").as_deref(), Some("nft"));
    assert_eq!(
        flag(&init, "--subnets-to-ignore").as_deref(),
        Some("169.254.0.0/16,10.0.0.0/8,fd00::/8")
    );
    for (bad, says) in [
        ("weft.dev/iptables-mode: xtables", "iptables-mode"),
        ("weft.dev/skip-subnets: '10.0.0.0'", "skip-subnets"),
    ] {
        let e = inject_text(&pod(bad), &plain).unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}
