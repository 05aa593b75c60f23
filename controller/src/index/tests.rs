//! Resolution rules of the index, one test each.

use weft_proto::model::{Body, DefaultPolicy, Destination, InboundPolicy, Protocol};

use super::*;
use crate::source::parse::parse_documents;

fn index(yaml: &str) -> Index {
    index_with(IndexConfig::default(), yaml)
}

fn index_with(config: IndexConfig, yaml: &str) -> Index {
    let mut idx = Index::new(config);
    for o in parse_documents(yaml).expect("test YAML parses") {
        idx.apply(o);
    }
    idx
}

fn apply(idx: &mut Index, yaml: &str) {
    for o in parse_documents(yaml).unwrap() {
        idx.apply(o);
    }
}

fn dest(idx: &Index, key: &str) -> Destination {
    match idx.destination(key) {
        Body::Destination(d) => d,
        other => panic!("{key}: {other:?}"),
    }
}

fn inbound(idx: &Index, pod: &str) -> InboundPolicy {
    match idx.inbound(pod) {
        Body::Inbound(i) => i,
        other => panic!("{pod}: {other:?}"),
    }
}

/// (backend name, weight, endpoint addresses) of a route.
fn backends(d: &Destination, route: usize) -> Vec<(String, u32, Vec<String>)> {
    d.routes[route]
        .backends
        .iter()
        .map(|b| {
            (
                b.service.name.clone(),
                b.weight,
                b.endpoints.iter().map(|e| e.address.to_string()).collect(),
            )
        })
        .collect()
}

fn service(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  clusterIP: {ip}\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n"
    )
}

fn slice(svc: &str, endpoints: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\nmetadata:\n  name: {svc}-abc\n  namespace: shop\n  labels: {{kubernetes.io/service-name: {svc}}}\nports: [{{name: http, port: 8080}}]\nendpoints:\n{endpoints}---\n"
    )
}

fn ep(ip: &str, pod: &str) -> String {
    format!(
        "- addresses: [{ip}]\n  conditions: {{ready: true}}\n  targetRef: {{kind: Pod, name: {pod}, namespace: shop}}\n"
    )
}

fn pod(name: &str, app: &str, ip: &str, meshed: bool) -> String {
    let annotations = if meshed {
        "annotations: {weft.dev/proxy-version: v0.1.0}"
    } else {
        "annotations: {}"
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  labels: {{app: {app}}}\n  {annotations}\nspec:\n  serviceAccountName: {app}\n  containers: [{{name: app, image: x, ports: [{{name: http, containerPort: 8080}}]}}]\nstatus: {{podIP: {ip}, phase: Running}}\n---\n"
    )
}

const SPLIT: &str = r#"
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: web-split, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  service: web
  backends:
  - {service: web-v1, weight: 80}
  - {service: web-v2, weight: 20}
"#;

fn split_world() -> String {
    [
        service("web", "198.19.0.10"),
        service("web-v1", "198.19.0.11"),
        service("web-v2", "198.19.0.12"),
        slice("web-v1", &ep("198.18.0.3", "v1-a")),
        slice("web-v2", &ep("198.18.0.4", "v2-a")),
        pod("v1-a", "web-v1", "198.18.0.3", true),
        pod("v2-a", "web-v2", "198.18.0.4", false),
        SPLIT.to_string(),
    ]
    .concat()
}

#[test]
fn split_apex_resolves_to_weighted_backends() {
    let idx = index(&split_world());
    let d = dest(&idx, "198.19.0.10:80");
    assert_eq!(d.service.name, "web");
    assert_eq!(d.routes.len(), 1);
    assert_eq!(d.routes[0].name, "shop/web-split");
    assert_eq!(
        backends(&d, 0),
        vec![
            ("web-v1".into(), 80, vec!["198.18.0.3:8080".into()]),
            ("web-v2".into(), 20, vec!["198.18.0.4:8080".into()]),
        ]
    );
    // The same destination by authority, in every short form.
    for host in [
        "web.shop.svc.cluster.local:80",
        "web.shop.svc:80",
        "web.shop:80",
    ] {
        assert_eq!(dest(&idx, host), d, "{host}");
    }
}

#[test]
fn backends_without_a_split_is_the_service_itself() {
    let idx = index(&split_world());
    let d = dest(&idx, "198.19.0.11:80");
    assert_eq!(d.routes[0].name, "default");
    assert_eq!(
        backends(&d, 0),
        vec![("web-v1".into(), 1, vec!["198.18.0.3:8080".into()])]
    );
}

#[test]
fn zero_weights_are_kept() {
    let mut idx = index(&split_world());
    apply(&mut idx, &SPLIT.replace("weight: 20", "weight: 0"));
    let d = dest(&idx, "198.19.0.10:80");
    assert_eq!(backends(&d, 0)[1].1, 0);
    assert!(idx.problems()[&split_ref()].is_empty());
}

fn split_ref() -> ObjectRef {
    ObjectRef {
        kind: Kind::TrafficSplit,
        namespace: "shop".into(),
        name: "web-split".into(),
    }
}

#[test]
fn missing_backend_service_is_skipped_and_reported() {
    let mut idx = index(&split_world());
    apply(
        &mut idx,
        &SPLIT.replace("web-v2, weight: 20", "web-v3, weight: 20"),
    );
    let d = dest(&idx, "198.19.0.10:80");
    assert_eq!(backends(&d, 0).len(), 1);
    let problems = &idx.problems()[&split_ref()];
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].reason, "BackendNotFound");
    assert!(problems[0].message.contains("shop/web-v3"));
}

#[test]
fn all_backends_missing_falls_back_to_the_apex() {
    let mut idx = index(&split_world());
    apply(
        &mut idx,
        &SPLIT
            .replace("web-v1", "gone-1")
            .replace("web-v2", "gone-2"),
    );
    let d = dest(&idx, "198.19.0.10:80");
    assert_eq!(d.routes.len(), 1);
    assert_eq!(d.routes[0].name, "default");
    assert_eq!(backends(&d, 0)[0].0, "web");
}

#[test]
fn backend_without_endpoints_has_an_empty_list() {
    let mut idx = index(&split_world());
    idx.delete(&ObjectRef {
        kind: Kind::EndpointSlice,
        namespace: "shop".into(),
        name: "web-v2-abc".into(),
    });
    let d = dest(&idx, "198.19.0.10:80");
    assert_eq!(backends(&d, 0)[1], ("web-v2".into(), 20, vec![]));
}

#[test]
fn oldest_split_wins_and_the_other_is_a_conflict() {
    let mut idx = index(&split_world());
    apply(
        &mut idx,
        &SPLIT
            .replace("web-split", "newer")
            .replace("2026-01-01", "2026-02-01")
            .replace("weight: 80", "weight: 1"),
    );
    let d = dest(&idx, "198.19.0.10:80");
    assert_eq!(d.routes[0].name, "shop/web-split");
    let problems = idx.problems();
    let newer = ObjectRef {
        name: "newer".into(),
        ..split_ref()
    };
    assert_eq!(problems[&newer][0].reason, "Conflict");
    assert!(problems[&split_ref()].is_empty());
}

#[test]
fn split_matches_route_matching_requests_and_default_to_the_apex() {
    let mut idx = index(&split_world());
    apply(
        &mut idx,
        &(SPLIT.to_string()
            + "  matches: [{kind: HTTPRouteGroup, name: canary-users}]\n---\n"
            + r#"
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: canary-users, namespace: shop}
spec:
  matches:
  - name: canary
    pathRegex: /api/.*
    methods: [GET, POST]
    headers: [{X-Canary: "true"}]
  - name: any-method
    methods: ["*"]
"#),
    );
    let d = dest(&idx, "198.19.0.10:80");
    assert_eq!(d.routes.len(), 2);
    let m = &d.routes[0].matches;
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].path_regex.as_deref(), Some("/api/.*"));
    assert_eq!(m[0].methods, vec!["GET", "POST"]);
    assert_eq!(
        (
            m[0].headers[0].name.as_str(),
            m[0].headers[0].value_regex.as_str()
        ),
        ("x-canary", "true")
    );
    assert!(m[1].methods.is_empty(), "* means any method");
    assert_eq!(d.routes[1].name, "default");
    assert_eq!(backends(&d, 1)[0].0, "web");
}

#[test]
fn missing_route_group_means_the_split_matches_nothing() {
    let mut idx = index(&split_world());
    apply(
        &mut idx,
        &(SPLIT.to_string() + "  matches: [{kind: HTTPRouteGroup, name: nope}]\n"),
    );
    let d = dest(&idx, "198.19.0.10:80");
    assert_eq!(d.routes.len(), 1);
    assert_eq!(d.routes[0].name, "default");
    assert_eq!(idx.problems()[&split_ref()][0].reason, "RouteGroupNotFound");
}

#[test]
fn invalid_route_group_regex_is_reported() {
    let idx = index(
        r#"
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: bad, namespace: shop}
spec: {matches: [{name: m, pathRegex: "/(unclosed"}]}
"#,
    );
    let problems = idx.problems();
    let p = problems.values().next().unwrap();
    assert_eq!(p[0].reason, "InvalidRegex");
}

#[test]
fn retry_policy_targets_its_service_and_the_oldest_wins() {
    let mut idx = index(&split_world());
    let rp = r#"
apiVersion: weft.dev/v1alpha1
kind: RetryPolicy
metadata: {name: NAME, namespace: shop, creationTimestamp: "TIME"}
spec: {targetRef: {kind: Service, name: web}, maxRetries: RETRIES}
"#;
    apply(
        &mut idx,
        &rp.replace("NAME", "old")
            .replace("TIME", "2026-01-01T00:00:00Z")
            .replace("RETRIES", "4"),
    );
    apply(
        &mut idx,
        &rp.replace("NAME", "new")
            .replace("TIME", "2026-03-01T00:00:00Z")
            .replace("RETRIES", "9"),
    );
    let d = dest(&idx, "198.19.0.10:80");
    let retry = d.retry.unwrap();
    assert_eq!((retry.name.as_str(), retry.max_retries), ("shop/old", 4));
    // Other services are untouched.
    assert!(dest(&idx, "198.19.0.11:80").retry.is_none());
    let problems = idx.problems();
    let new = ObjectRef {
        kind: Kind::RetryPolicy,
        namespace: "shop".into(),
        name: "new".into(),
    };
    assert_eq!(problems[&new][0].reason, "Conflict");
}

#[test]
fn invalid_retry_policy_is_not_applied_and_reported() {
    let mut idx = index(&split_world());
    apply(
        &mut idx,
        "apiVersion: weft.dev/v1alpha1\nkind: RetryPolicy\nmetadata: {name: bad, namespace: shop}\nspec: {targetRef: {kind: Service, name: web}, duration: soon}",
    );
    assert!(dest(&idx, "198.19.0.10:80").retry.is_none());
    let problems = idx.problems();
    let p = problems.values().find(|p| !p.is_empty()).unwrap();
    assert_eq!(p[0].reason, "Invalid");
    assert!(p[0].message.contains("'soon' is not a duration"));
}

#[test]
fn endpoint_readiness_and_terminating_conditions() {
    let endpoints = "- addresses: [198.18.0.5]\n  conditions: {ready: true}\n\
                     - addresses: [198.18.0.6]\n  conditions: {ready: false}\n\
                     - addresses: [198.18.0.7]\n  conditions: {ready: false, serving: true, terminating: true}\n\
                     - addresses: [198.18.0.8]\n";
    let idx = index(&[service("web", "198.19.0.10"), slice("web", endpoints)].concat());
    let d = dest(&idx, "198.19.0.10:80");
    // Ready, and unknown readiness (= ready); not the unready nor the terminating.
    assert_eq!(
        backends(&d, 0)[0].2,
        vec!["198.18.0.5:8080", "198.18.0.8:8080"]
    );

    // When nothing is ready, terminating endpoints that still serve are used.
    let only_terminating = "- addresses: [198.18.0.7]\n  conditions: {ready: false, serving: true, terminating: true}\n";
    let idx = index(
        &[
            service("web", "198.19.0.10"),
            slice("web", only_terminating),
        ]
        .concat(),
    );
    assert_eq!(
        backends(&dest(&idx, "198.19.0.10:80"), 0)[0].2,
        vec!["198.18.0.7:8080"]
    );
}

#[test]
fn named_target_ports_from_slices_and_from_pods() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  clusterIP: 198.19.0.10\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n---\n";
    // EndpointSlices carry the resolved number under the service port's name.
    let idx = index(&[svc.to_string(), slice("web", &ep("198.18.0.3", "a"))].concat());
    assert_eq!(
        backends(&dest(&idx, "198.19.0.10:80"), 0)[0].2,
        vec!["198.18.0.3:8080"]
    );
    // Without slices (directory mode), the pod's named container port.
    let config = IndexConfig {
        derive_endpoints_from_pods: true,
        ..IndexConfig::default()
    };
    let idx = index_with(
        config,
        &[
            svc.to_string(),
            pod("a", "web", "198.18.0.3", true),
            pod("b", "other", "198.18.0.4", true),
        ]
        .concat(),
    );
    assert_eq!(
        backends(&dest(&idx, "198.19.0.10:80"), 0)[0].2,
        vec!["198.18.0.3:8080"]
    );
}

#[test]
fn pods_derived_only_in_directory_mode() {
    let idx = index(
        &[
            service("web", "198.19.0.10"),
            pod("a", "web", "198.18.0.3", true),
        ]
        .concat(),
    );
    assert!(backends(&dest(&idx, "198.19.0.10:80"), 0)[0].2.is_empty());
}

#[test]
fn meshed_pods_have_an_expected_identity() {
    let idx = index(&split_world());
    let d = dest(&idx, "198.19.0.10:80");
    let meshed = &d.routes[0].backends[0].endpoints[0];
    assert!(meshed.meshed);
    assert_eq!(
        meshed.identity.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/web-v1")
    );
    assert_eq!(meshed.pod.as_deref(), Some("shop/v1-a"));
    let plain = &d.routes[0].backends[1].endpoints[0];
    assert!(!plain.meshed);
    assert_eq!(plain.identity, None);
}

#[test]
fn a_pod_ip_is_that_pod_with_its_identity() {
    let mut idx = index(&split_world());
    let d = dest(&idx, "198.18.0.3:8080");
    assert_eq!(d.service.namespace, "shop");
    assert!(d.retry.is_none());
    assert_eq!(d.routes.len(), 1);
    assert_eq!(d.service.name, "pod:v1-a");
    assert_eq!(
        backends(&d, 0),
        vec![("pod:v1-a".into(), 1, vec!["198.18.0.3:8080".into()])]
    );
    let e = &d.routes[0].backends[0].endpoints[0];
    assert!(e.meshed);
    assert_eq!(
        e.identity.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/web-v1")
    );
    assert_eq!(e.pod.as_deref(), Some("shop/v1-a"));
    // An unmeshed pod: plaintext, no identity.
    let plain = &dest(&idx, "198.18.0.4:9000").routes[0].backends[0].endpoints[0];
    assert!(!plain.meshed && plain.identity.is_none());
    // Gone with its pod.
    idx.delete(&ObjectRef {
        kind: Kind::Pod,
        namespace: "shop".into(),
        name: "v1-a".into(),
    });
    assert!(matches!(
        idx.destination("198.18.0.3:8080"),
        Body::Unknown { .. }
    ));
}

#[test]
fn unknown_destinations_say_why() {
    let idx = index(&split_world());
    for (key, why) in [
        ("198.18.0.99:8080", "not a service's cluster IP"),
        ("198.19.0.10:81", "has no TCP port 81"),
        (
            "nope.shop.svc.cluster.local:80",
            "does not name a known service",
        ),
        ("garbage", "neither IP:port nor host:port"),
    ] {
        match idx.destination(key) {
            Body::Unknown { reason } => assert!(reason.contains(why), "{key}: {reason}"),
            other => panic!("{key}: {other:?}"),
        }
    }
}

#[test]
fn protocol_from_annotations_and_app_protocol() {
    let mut idx = index(&split_world());
    assert_eq!(dest(&idx, "198.19.0.10:80").protocol, Protocol::Detect);
    apply(
        &mut idx,
        "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: shop, annotations: {weft.dev/opaque-ports: \"5432,80\"}}\nspec: {clusterIP: 198.19.0.20, ports: [{port: 80}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: rpc, namespace: shop}\nspec: {clusterIP: 198.19.0.21, ports: [{port: 80, appProtocol: grpc}]}\n",
    );
    assert_eq!(dest(&idx, "198.19.0.20:80").protocol, Protocol::Opaque);
    assert_eq!(dest(&idx, "198.19.0.21:80").protocol, Protocol::Grpc);
}

#[test]
fn reset_replaces_every_object_of_a_kind() {
    let mut idx = index(&split_world());
    idx.reset(
        Kind::Service,
        parse_documents(&service("web", "198.19.0.99")).unwrap(),
    );
    assert!(matches!(
        idx.destination("198.19.0.10:80"),
        Body::Unknown { .. }
    ));
    assert!(matches!(
        idx.destination("198.19.0.11:80"),
        Body::Unknown { .. }
    ));
    assert!(matches!(
        idx.destination("198.19.0.99:80"),
        Body::Destination(_)
    ));
}

#[test]
fn inbound_policy_defaults_and_annotations() {
    let mut idx = index(&split_world());
    let i = inbound(&idx, "shop/v1-a");
    assert_eq!(i.default_policy, DefaultPolicy::AllUnauthenticated);
    assert!(i.opaque_ports.is_empty() && i.rules.is_empty());

    apply(
        &mut idx,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, annotations: {weft.dev/default-inbound-policy: all-authenticated, weft.dev/opaque-ports: \"3306\"}}",
    );
    let i = inbound(&idx, "shop/v1-a");
    assert_eq!(i.default_policy, DefaultPolicy::AllAuthenticated);
    assert_eq!(i.opaque_ports[0].to_list_syntax(), "3306");
    // A pod annotation beats the namespace's.
    apply(
        &mut idx,
        &pod("v1-a", "web-v1", "198.18.0.3", true).replace(
            "annotations: {",
            "annotations: {weft.dev/default-inbound-policy: deny, ",
        ),
    );
    assert_eq!(
        inbound(&idx, "shop/v1-a").default_policy,
        DefaultPolicy::Deny
    );
}

#[test]
fn authorization_policies_target_pods_by_service_namespace_or_selector() {
    let mut idx = index(&split_world());
    apply(
        &mut idx,
        r#"
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: by-service, namespace: shop}
spec:
  targetRef: {kind: Service, name: web-v1}
  ports: [8080]
  action: DENY
  from: [{serviceAccounts: [frontend]}]
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: by-namespace, namespace: shop}
spec:
  targetRef: {kind: Namespace}
  from: [{namespaces: [monitoring]}]
  rateLimit: {requestsPerSecond: 100}
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: by-selector, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web-v2}}
  from: [{unauthenticated: true}]
"#,
    );
    let names = |pod: &str| {
        inbound(&idx, pod)
            .rules
            .iter()
            .map(|r| r.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names("shop/v1-a"),
        vec!["shop/by-namespace", "shop/by-service"]
    );
    assert_eq!(
        names("shop/v2-a"),
        vec!["shop/by-namespace", "shop/by-selector"]
    );
    let rules = inbound(&idx, "shop/v1-a").rules;
    let deny = rules.iter().find(|r| r.name == "shop/by-service").unwrap();
    assert_eq!(deny.action, weft_proto::model::Action::Deny);
    assert_eq!(deny.ports, vec![8080]);
    assert_eq!(deny.from[0].service_accounts, vec!["shop/frontend"]);
    let limited = rules
        .iter()
        .find(|r| r.name == "shop/by-namespace")
        .unwrap();
    assert_eq!(limited.rate_limit.unwrap().burst, 100);
}
