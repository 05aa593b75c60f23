//! The change made to a pod (or a workload's pod template), and its undoing.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use weft_proto::ports::parse_port_list;

use super::config::{InjectorConfig, IptablesMode, Layout};
use super::*;

/// The mesh's audience on the projected ServiceAccount token: the token
/// proves the pod's identity to Weft's identity service and nothing else.
pub const TOKEN_AUDIENCE: &str = "identity.weft.dev";
/// Where the token is mounted (the proxy's WEFT_PROXY_TOKEN_FILE default).
const TOKEN_DIR: &str = "/var/run/secrets/tokens";
const TOKEN_FILE: &str = "weft-identity";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    #[error("annotation {annotation}: '{value}' is not a port list ({problem})")]
    BadPorts {
        annotation: &'static str,
        value: String,
        problem: String,
    },
    #[error("annotation {annotation}: '{value}' is not {expected}")]
    BadValue {
        annotation: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{what} is not {expected}")]
    Shape {
        what: &'static str,
        expected: &'static str,
    },
}

/// Adds weft-init, weft-proxy, the token volume and the version annotation.
/// Annotations are read from the pod first, then the namespace. The caller
/// decides first ([`super::decide`]); on an error the pod is unchanged.
pub fn inject(
    pod: &mut Value,
    config: &InjectorConfig,
    layout: Layout,
    namespace_annotations: &BTreeMap<String, String>,
) -> Result<(), InjectError> {
    check_shape(pod)?;
    let pod_annotations = pod["metadata"]["annotations"].clone();
    let annotation = |key: &str| -> Option<String> {
        pod_annotations[key]
            .as_str()
            .map(String::from)
            .or_else(|| namespace_annotations.get(key).cloned())
            .filter(|v| !v.trim().is_empty())
    };
    let ports = |key: &'static str| -> Result<Option<String>, InjectError> {
        let Some(value) = annotation(key) else {
            return Ok(None);
        };
        parse_port_list(&value).map_err(|e| InjectError::BadPorts {
            annotation: key,
            value: value.clone(),
            problem: e.to_string(),
        })?;
        Ok(Some(value.split_whitespace().collect()))
    };
    let redirect = Redirect {
        skip_inbound: ports(SKIP_INBOUND_PORTS_ANNOTATION)?,
        skip_outbound: ports(SKIP_OUTBOUND_PORTS_ANNOTATION)?,
        skip_subnets: skip_subnets(config, &annotation)?,
        mode: match annotation(IPTABLES_MODE_ANNOTATION) {
            None => config.iptables_mode,
            Some(v) => v.trim().parse().map_err(|_| InjectError::BadValue {
                annotation: IPTABLES_MODE_ANNOTATION,
                value: v,
                expected: "nft or legacy",
            })?,
        },
    };
    let opaque = ports(OPAQUE_PORTS_ANNOTATION)?;
    let log = annotation(PROXY_LOG_LEVEL_ANNOTATION).unwrap_or_else(|| config.log_level.clone());
    let resources = resources(config, &annotation);
    let telemetry = telemetry_env(config, &annotation)?;

    let init = init_container(config, redirect);
    let mut proxy = proxy_container(config, log, opaque, resources);
    if let Some(env) = proxy["env"].as_array_mut() {
        env.extend(telemetry);
    }
    let spec = object(&mut pod["spec"], "spec")?;
    let init_containers = array(spec, "initContainers");
    // weft-init runs first, before any other init container opens a
    // connection; a native proxy right after it, so later init containers
    // already go through the mesh.
    init_containers.insert(0, init);
    match layout {
        Layout::Native => {
            proxy["restartPolicy"] = json!("Always");
            proxy["startupProbe"] = json!({
                "httpGet": {"path": "/ready", "port": 4191},
                "periodSeconds": 1,
                "failureThreshold": 120,
            });
            init_containers.insert(1, proxy);
        }
        Layout::Classic => {
            // The kubelet starts containers in order and waits for each
            // postStart hook: the app starts once its proxy is ready.
            proxy["lifecycle"] = json!({
                "postStart": {"exec": {"command": ["weft-proxy", "await-ready"]}}
            });
            array(spec, "containers").insert(0, proxy);
        }
    }
    let volumes = array(spec, "volumes");
    volumes.push(json!({
        "name": TOKEN_VOLUME,
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": TOKEN_AUDIENCE,
            "expirationSeconds": 86400,
            "path": TOKEN_FILE,
        }}]},
    }));
    volumes.push(json!({"name": XTABLES_VOLUME, "emptyDir": {}}));

    let metadata = object(&mut pod["metadata"], "metadata")?;
    let annotations = object(
        metadata.entry("annotations").or_insert_with(|| json!({})),
        "metadata.annotations",
    )?;
    annotations.insert(PROXY_VERSION_ANNOTATION.into(), json!(PROXY_VERSION));
    Ok(())
}

/// Removes everything [`inject`] added. Returns whether anything was there.
pub fn uninject(pod: &mut Value) -> bool {
    let mut changed = false;
    let ours = |v: &Value, names: &[&str]| v["name"].as_str().is_some_and(|n| names.contains(&n));
    if let Some(spec) = pod["spec"].as_object_mut() {
        for (list, names) in [
            ("initContainers", &[INIT_CONTAINER, PROXY_CONTAINER][..]),
            ("containers", &[PROXY_CONTAINER][..]),
            ("volumes", &[TOKEN_VOLUME, XTABLES_VOLUME][..]),
        ] {
            if let Some(items) = spec.get_mut(list).and_then(Value::as_array_mut) {
                let before = items.len();
                items.retain(|v| !ours(v, names));
                changed |= items.len() != before;
                if items.is_empty() && before != 0 {
                    spec.remove(list);
                }
            }
        }
    }
    if let Some(metadata) = pod.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(annotations) = metadata
            .get_mut("annotations")
            .and_then(Value::as_object_mut)
            && annotations.remove(PROXY_VERSION_ANNOTATION).is_some()
        {
            changed = true;
            // inject created what it needed to hold the annotation.
            if annotations.is_empty() {
                metadata.remove("annotations");
            }
        }
        if changed && metadata.is_empty() {
            pod.as_object_mut()
                .expect("has metadata")
                .remove("metadata");
        }
    }
    changed
}

/// What weft-init is told about this pod's redirection.
struct Redirect {
    skip_inbound: Option<String>,
    skip_outbound: Option<String>,
    /// The chart's subnets and the annotation's, comma-separated.
    skip_subnets: Option<String>,
    mode: IptablesMode,
}

/// The chart's `init.ignoreSubnets` and the `weft.dev/skip-subnets`
/// annotation together, each a CIDR.
fn skip_subnets(
    config: &InjectorConfig,
    annotation: &impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, InjectError> {
    let mut subnets: Vec<String> = config
        .ignore_subnets
        .iter()
        .map(|s| s.trim().into())
        .collect();
    if let Some(value) = annotation(SKIP_SUBNETS_ANNOTATION) {
        for cidr in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if cidr.parse::<ipnet::IpNet>().is_err() {
                return Err(InjectError::BadValue {
                    annotation: SKIP_SUBNETS_ANNOTATION,
                    value: value.clone(),
                    expected: "a comma-separated list of CIDRs (e.g. 10.0.0.0/8,fd00::/8)",
                });
            }
            subnets.push(cidr.into());
        }
    }
    subnets.dedup();
    Ok((!subnets.is_empty()).then(|| subnets.join(",")))
}

fn init_container(config: &InjectorConfig, redirect: Redirect) -> Value {
    let mut args = vec![
        "--incoming-proxy-port".to_string(),
        "4143".into(),
        "--outgoing-proxy-port".into(),
        "4140".into(),
        "--proxy-uid".into(),
        config.proxy_uid.to_string(),
    ];
    if let Some(p) = redirect.skip_inbound {
        args.extend(["--inbound-ports-to-ignore".into(), p]);
    }
    if let Some(p) = redirect.skip_outbound {
        args.extend(["--outbound-ports-to-ignore".into(), p]);
    }
    if let Some(s) = redirect.skip_subnets {
        args.extend(["--subnets-to-ignore".into(), s]);
    }
    args.extend(["--iptables-mode".into(), redirect.mode.as_str().into()]);
    if config.ipv6 {
        args.push("--ipv6".into());
    }
    let (uid, non_root) = if config.init_run_as_root {
        (0, false)
    } else {
        (65534, true)
    };
    json!({
        "name": INIT_CONTAINER,
        "image": config.init_image,
        "imagePullPolicy": config.image_pull_policy,
        "args": args,
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": non_root,
            "runAsUser": uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": {
            "requests": {"cpu": "10m", "memory": "10Mi"},
            "limits": {"memory": "50Mi"},
        },
        // iptables takes its lock in /run; the root filesystem is read-only.
        "volumeMounts": [{"name": XTABLES_VOLUME, "mountPath": "/run"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

fn proxy_container(
    config: &InjectorConfig,
    log: String,
    opaque: Option<String>,
    resources: Value,
) -> Value {
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let value = |name: &str, value: &str| json!({"name": name, "value": value});
    let mut env = vec![
        field("WEFT_PROXY_NAMESPACE", "metadata.namespace"),
        field("WEFT_PROXY_POD_NAME", "metadata.name"),
        field("WEFT_PROXY_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        value("WEFT_PROXY_CONTROLLER_ADDR", &config.controller_addr),
        value("WEFT_PROXY_LOG", &log),
    ];
    if !config.identity_addr.is_empty() {
        env.extend([
            value("WEFT_PROXY_IDENTITY_ADDR", &config.identity_addr),
            value("WEFT_PROXY_TRUST_DOMAIN", &config.trust_domain),
            value("WEFT_PROXY_IDENTITY_SERVER_ID", &config.identity_server_id),
            value("WEFT_PROXY_TRUST_ANCHORS", &config.trust_anchors_pem),
            value(
                "WEFT_PROXY_TOKEN_FILE",
                &format!("{TOKEN_DIR}/{TOKEN_FILE}"),
            ),
        ]);
    }
    if let Some(ports) = opaque {
        env.push(value("WEFT_PROXY_OPAQUE_PORTS", &ports));
    }
    if config.ipv6 {
        // ip6tables redirects inbound to [::]:4143 (a dual-stack socket
        // serves IPv4 too) and outbound to [::1]:4140, beside 127.0.0.1.
        env.push(value("WEFT_PROXY_INBOUND_ADDR", "[::]:4143"));
        env.push(value("WEFT_PROXY_OUTBOUND_IPV6_ADDR", "[::1]:4140"));
    }
    json!({
        "name": PROXY_CONTAINER,
        "image": config.proxy_image,
        "imagePullPolicy": config.image_pull_policy,
        "env": env,
        "ports": [
            {"name": "weft-proxy", "containerPort": 4143},
            {"name": "weft-admin", "containerPort": 4191},
        ],
        "livenessProbe": {"httpGet": {"path": "/live", "port": 4191}, "initialDelaySeconds": 10},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 4191}, "initialDelaySeconds": 2},
        "resources": resources,
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": config.proxy_uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

/// Tracing, access log and tap settings of the proxy: the chart's, with
/// the pod's (or namespace's) annotations on top. Bad values are errors
/// (the pod is then admitted unchanged, with a warning).
fn telemetry_env(
    config: &InjectorConfig,
    annotation: &impl Fn(&str) -> Option<String>,
) -> Result<Vec<Value>, InjectError> {
    let value = |name: &str, value: &str| json!({"name": name, "value": value});
    let bad =
        |annotation: &'static str, value: String, expected: &'static str| InjectError::BadValue {
            annotation,
            value,
            expected,
        };
    let mut env = Vec::new();
    let collector =
        annotation(TRACE_COLLECTOR_ANNOTATION).unwrap_or_else(|| config.trace_collector.clone());
    if !collector.is_empty() {
        if !(collector.starts_with("http://") || collector.starts_with("grpc://")) {
            return Err(bad(
                TRACE_COLLECTOR_ANNOTATION,
                collector,
                "an OTLP endpoint (http://host:4318 or grpc://host:4317)",
            ));
        }
        let sampling =
            annotation(TRACE_SAMPLING_ANNOTATION).unwrap_or_else(|| config.trace_sampling.clone());
        if !sampling
            .parse::<f64>()
            .is_ok_and(|r| (0.0..=1.0).contains(&r))
        {
            return Err(bad(
                TRACE_SAMPLING_ANNOTATION,
                sampling,
                "a ratio from 0.0 to 1.0",
            ));
        }
        env.push(value("WEFT_PROXY_TRACE_COLLECTOR", &collector));
        env.push(value("WEFT_PROXY_TRACE_SAMPLING", &sampling));
    }
    let log = annotation(ACCESS_LOG_ANNOTATION).unwrap_or_else(|| config.access_log.clone());
    match log.as_str() {
        "" | "off" => {}
        "json" | "apache" => env.push(value("WEFT_PROXY_ACCESS_LOG", &log)),
        _ => return Err(bad(ACCESS_LOG_ANNOTATION, log, "json, apache or off")),
    }
    let tap = match annotation(TAP_ANNOTATION).as_deref() {
        None => config.tap,
        Some("enabled") => true,
        Some("disabled") => false,
        Some(other) => return Err(bad(TAP_ANNOTATION, other.into(), "enabled or disabled")),
    };
    if tap {
        env.push(value("WEFT_PROXY_TAP", "true"));
    }
    Ok(env)
}

/// The configured resources, with any proxy-cpu/memory annotation on top.
fn resources(config: &InjectorConfig, annotation: &impl Fn(&str) -> Option<String>) -> Value {
    let mut r = config.resources.clone();
    for (key, section, resource) in [
        (PROXY_CPU_REQUEST_ANNOTATION, "requests", "cpu"),
        (PROXY_MEMORY_REQUEST_ANNOTATION, "requests", "memory"),
        (PROXY_CPU_LIMIT_ANNOTATION, "limits", "cpu"),
        (PROXY_MEMORY_LIMIT_ANNOTATION, "limits", "memory"),
    ] {
        if let Some(v) = annotation(key) {
            if !r[section].is_object() {
                r[section] = json!({});
            }
            r[section][resource] = json!(v);
        }
    }
    r
}

/// Everything [`inject`] writes into must be an object or array (or
/// missing), so that it changes all or nothing.
fn check_shape(pod: &Value) -> Result<(), InjectError> {
    let ok =
        |v: &Value, object: bool| v.is_null() || if object { v.is_object() } else { v.is_array() };
    let checks: [(&Value, bool, &'static str); 7] = [
        (pod, true, "the pod"),
        (&pod["spec"], true, "spec"),
        (&pod["metadata"], true, "metadata"),
        (
            &pod["metadata"]["annotations"],
            true,
            "metadata.annotations",
        ),
        (&pod["spec"]["containers"], false, "spec.containers"),
        (&pod["spec"]["initContainers"], false, "spec.initContainers"),
        (&pod["spec"]["volumes"], false, "spec.volumes"),
    ];
    match checks.iter().find(|(v, object, _)| !ok(v, *object)) {
        Some((_, object, what)) => Err(InjectError::Shape {
            what,
            expected: if *object { "an object" } else { "a list" },
        }),
        None if pod.is_null() => Err(InjectError::Shape {
            what: "the pod",
            expected: "an object",
        }),
        None => Ok(()),
    }
}

fn object<'a>(
    v: &'a mut Value,
    what: &'static str,
) -> Result<&'a mut Map<String, Value>, InjectError> {
    if v.is_null() {
        *v = json!({});
    }
    v.as_object_mut().ok_or(InjectError::Shape {
        what,
        expected: "an object",
    })
}

/// The array at `key`, created when missing or null (check_shape has
/// refused anything else).
fn array<'a>(obj: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = obj.entry(key).or_insert_with(|| json!([]));
    if slot.is_null() {
        *slot = json!([]);
    }
    slot.as_array_mut().expect("check_shape: an array")
}
