//! Progressive delivery tools driving Weft exactly as they drive Linkerd:
//! each test replays, in order, the objects a tool writes during a canary
//! (Flagger's SMI providers, Argo Rollouts' Gateway API plugin), with the
//! real controller and proxies in network namespaces. After every write,
//! requests keep succeeding while the step propagates, then the canary's
//! share is checked against the step's weight within binomial bounds.
//! (Flagger's Gateway API provider is in gateway.rs.) Needs root.

use std::net::SocketAddr;
use std::time::Duration;

use http::Request;
use weft_tests::apps::Behaviour;
use weft_tests::client::{self, Conn};
use weft_tests::mesh::MeshLab;
use weft_tests::pod::Pod;
use weft_tests::wait;
use weft_tests::yaml::{http_service, labelled_pod};

const WEB: &str = "198.19.0.10:80";

/// `web` (the apex, pods v1 at .3 and v2 at .4), `primary` (v1) and
/// `canary` (v2) Services named as the tool names them, a client, and
/// `canary.yaml` holding `first`.
async fn mesh(test: &str, primary: &str, canary: &str, first: &str) -> Option<MeshLab> {
    let world = http_service("web", "198.19.0.10", "app: web")
        + &http_service(primary, "198.19.0.11", "track: v1")
        + &http_service(canary, "198.19.0.12", "track: v2")
        + &labelled_pod("v1", "app: web, track: v1", "198.18.0.3")
        + &labelled_pod("v2", "app: web, track: v2", "198.18.0.4");
    let mut m = MeshLab::start(
        test,
        &[("world.yaml", world), ("canary.yaml", first.to_string())],
    )
    .await?;
    m.add_pod("client-0", 2, async {}, &[]).await;
    for (name, octet) in [("v1", 3), ("v2", 4)] {
        m.add_app_pod(name, octet, Behaviour::default()).await;
    }
    Some(m)
}

/// The app that answered each of `n` GETs of /hello sent with `headers`
/// over one keep-alive connection; an error for a failed request.
async fn answered_by(
    client: &Pod,
    n: usize,
    headers: &'static [(&'static str, &'static str)],
) -> Vec<Result<String, String>> {
    client
        .rt
        .run(async move {
            let addr: SocketAddr = WEB.parse().unwrap();
            let mut conn = Conn::http1(addr).await.map_err(|e| e.to_string());
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let Ok(c) = conn.as_mut() else {
                    out.push(Err("no connection".into()));
                    continue;
                };
                let mut req = Request::get("/hello").header("host", "web.shop.svc.cluster.local");
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                let answer = c.fetch(req.body(client::full("")).unwrap()).await;
                out.push(match answer {
                    Ok(r) if r.status().is_success() => Ok(r.headers()["x-app-name"]
                        .to_str()
                        .unwrap_or_default()
                        .to_string()),
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(e.to_string()),
                });
            }
            out
        })
        .await
}

/// The backends (name, weight) of the route of `web` that splits among
/// several, sorted by name, as the client's proxy has them.
async fn split_weights(client: &Pod) -> Vec<(String, u64)> {
    let config: serde_json::Value =
        serde_json::from_str(&client.admin_get("/config").await).unwrap();
    let resources = config["resources"].as_array().cloned().unwrap_or_default();
    let Some(web) = resources.iter().find(|r| r["key"]["destination"] == WEB) else {
        return vec![];
    };
    let routes = web["content"]["destination"]["routes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut out: Vec<(String, u64)> = routes
        .iter()
        .map(|r| r["backends"].as_array().cloned().unwrap_or_default())
        .find(|b| b.len() > 1)
        .into_iter()
        .flatten()
        .map(|b| {
            (
                b["service"]["name"].as_str().unwrap_or("").to_string(),
                b["weight"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    out.sort();
    out
}

/// Writes one step of a canary (`yaml`), then checks that no request
/// fails while it propagates, that the client's proxy gets `weights`, and
/// that the canary (`v2`) takes its share (`canary_percent`) of 400
/// requests within 5 standard deviations of a binomial.
async fn step(m: &MeshLab, yaml: &str, weights: &[(&str, u64)], canary_percent: u32) {
    let client = m.pod("client-0");
    m.write("canary.yaml", yaml);
    let during = answered_by(client, 20, &[]).await;
    assert!(during.iter().all(Result::is_ok), "{during:?}");
    let mut want: Vec<(String, u64)> = weights.iter().map(|(n, w)| (n.to_string(), *w)).collect();
    want.sort();
    wait::until(
        "the step reaches the client's proxy",
        Duration::from_secs(10),
        async || split_weights(client).await == want,
    )
    .await;
    let n = 400;
    let answers = answered_by(client, n, &[]).await;
    let failed: Vec<_> = answers.iter().filter(|a| a.is_err()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let to_canary = answers.iter().filter(|a| a.as_deref() == Ok("v2")).count() as f64;
    let p = f64::from(canary_percent) / 100.0;
    let (mean, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
    assert!(
        (to_canary - mean).abs() <= 5.0 * sd,
        "step {canary_percent}%: {to_canary} of {n} to the canary, expected {mean} +- {}",
        5.0 * sd
    );
}

/// Flagger's canary analysis: 0 -> 10 -> 20 -> 30 -> 40 -> 50 (stepWeight
/// 10, maxWeight 50), then promotion: the primary runs the new version and
/// the canary goes back to 0.
const FLAGGER_STEPS: [u32; 7] = [0, 10, 20, 30, 40, 50, 0];

/// The TrafficSplit Flagger's SMI router keeps for Canary `web`: named
/// after the apex service, owned by the Canary, canary backend first.
fn flagger_split(api_version: &str, canary: &str, primary: &str) -> String {
    format!(
        "apiVersion: {api_version}\nkind: TrafficSplit\nmetadata:\n  name: web\n  namespace: shop\n  ownerReferences:\n  - apiVersion: flagger.app/v1beta1\n    kind: Canary\n    name: web\n    uid: 3f1c2a7e-5b8d-4c9e-a1f0-7d6e5c4b3a21\n    controller: true\n    blockOwnerDeletion: true\nspec:\n  service: web\n  backends:\n  - service: web-canary\n    weight: {canary}\n  - service: web-primary\n    weight: {primary}\n"
    )
}

/// Flagger's `smi:v1alpha3` provider (what it uses for any SMI mesh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagger_smi_v1alpha3_canary_moves_traffic_step_by_step() {
    let v1alpha3 = |c: u32| {
        flagger_split(
            "split.smi-spec.io/v1alpha3",
            &c.to_string(),
            &(100 - c).to_string(),
        )
    };
    let test = "flagger_smi_v1alpha3_canary_moves_traffic_step_by_step";
    let Some(m) = mesh(test, "web-primary", "web-canary", &v1alpha3(0)).await else {
        return;
    };
    for c in FLAGGER_STEPS {
        let weights = [
            ("web-canary", u64::from(c)),
            ("web-primary", u64::from(100 - c)),
        ];
        step(&m, &v1alpha3(c), &weights, c).await;
    }
}

/// Flagger's `linkerd` provider writes TrafficSplit v1alpha1, its weights
/// quantities (`"10"`, `"90"`); a hand-written split may use milli-units.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagger_linkerd_provider_v1alpha1_canary_moves_traffic_step_by_step() {
    let v1alpha1 = |c: &str, p: &str| {
        flagger_split(
            "split.smi-spec.io/v1alpha1",
            &format!("\"{c}\""),
            &format!("\"{p}\""),
        )
    };
    let test = "flagger_linkerd_provider_v1alpha1_canary_moves_traffic_step_by_step";
    let Some(m) = mesh(test, "web-primary", "web-canary", &v1alpha1("0", "100")).await else {
        return;
    };
    for c in FLAGGER_STEPS {
        let (cs, ps) = (c.to_string(), (100 - c).to_string());
        let weights = [
            ("web-canary", u64::from(c)),
            ("web-primary", u64::from(100 - c)),
        ];
        step(&m, &v1alpha1(&cs, &ps), &weights, c).await;
    }
    // 250m against 750m: a quarter, as the smallest whole weights 1 and 3.
    step(
        &m,
        &v1alpha1("250m", "750m"),
        &[("web-canary", 1), ("web-primary", 3)],
        25,
    )
    .await;
}

/// The HTTPRoute Argo Rollouts' Gateway API plugin manages for a Rollout
/// whose stable and canary Services are `web-stable` and `web-canary`, a
/// Service parent (the mesh), at `canary`% — and, after a
/// `setHeaderRoute` step, the header rule the plugin appends: the first
/// rule's matches with the step's headers, the canary alone behind it.
fn argo_route(canary: u32, header_route: bool) -> String {
    let stable = 100 - canary;
    let mut rules = format!(
        "  - matches:\n    - path: {{type: PathPrefix, value: /}}\n    backendRefs:\n    - {{group: \"\", kind: Service, name: web-stable, port: 80, weight: {stable}}}\n    - {{group: \"\", kind: Service, name: web-canary, port: 80, weight: {canary}}}\n"
    );
    if header_route {
        rules += "  - matches:\n    - path: {type: PathPrefix, value: /}\n      headers: [{name: X-Canary, type: Exact, value: \"yes\"}]\n    filters: []\n    backendRefs:\n    - {group: \"\", kind: Service, name: web-canary, port: 80}\n";
    }
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  parentRefs:\n  - {{group: \"\", kind: Service, name: web, port: 80}}\n  rules:\n{rules}"
    )
}

/// Argo Rollouts' steps: setHeaderRoute (testers reach the canary by
/// header, everyone else stays), setWeight 20, 50, the header route
/// removed, then full promotion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_rollouts_gateway_plugin_moves_weights_and_routes_by_header() {
    let test = "argo_rollouts_gateway_plugin_moves_weights_and_routes_by_header";
    let Some(m) = mesh(test, "web-stable", "web-canary", &argo_route(0, false)).await else {
        return;
    };
    let client = m.pod("client-0");
    for (canary, header_route) in [(0, true), (20, true), (50, true), (50, false), (100, false)] {
        let weights = [
            ("web-canary", u64::from(canary)),
            ("web-stable", u64::from(100 - canary)),
        ];
        step(&m, &argo_route(canary, header_route), &weights, canary).await;
        // Requests with the header: all to the canary while the header
        // route stands; by weight after it is removed.
        let tagged = answered_by(client, 50, &[("x-canary", "yes")]).await;
        assert!(tagged.iter().all(Result::is_ok), "{tagged:?}");
        let to_canary = tagged.iter().filter(|a| a.as_deref() == Ok("v2")).count();
        match (header_route, canary) {
            (true, _) | (false, 100) => assert_eq!(to_canary, 50, "header route, {canary}%"),
            (false, _) => assert!(to_canary < 50, "no header route at {canary}%: {to_canary}"),
        }
    }
}
