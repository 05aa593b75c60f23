//! Golden metrics from two scrapes of every proxy: request rate, success
//! rate, latency percentiles and mTLS share, per workload (what its pods'
//! inbound side served), per service and per route (what clients' outbound
//! side sent), and per edge (who called whom, from the callee's side,
//! where the caller's identity is verified). Pure: the scraping is
//! elsewhere.

use std::collections::{BTreeMap, HashMap};

use super::prom::Sample;

/// A meshed pod and what it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// The Deployment (StatefulSet, ...) it belongs to.
    pub workload: String,
    pub service_account: String,
}

/// One scrape of one pod's proxy.
#[derive(Clone, Debug)]
pub struct Scrape {
    pub pod: PodInfo,
    pub samples: Vec<Sample>,
}

/// Rate, success, latency and mTLS over the window.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Golden {
    pub rps: f64,
    /// `None` without responses in the window.
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct WorkloadRow {
    pub namespace: String,
    pub name: String,
    pub pods: usize,
    #[serde(flatten)]
    pub golden: Golden,
    pub mtls_share: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ServiceRow {
    pub namespace: String,
    pub name: String,
    #[serde(flatten)]
    pub golden: Golden,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RouteRow {
    pub namespace: String,
    pub service: String,
    pub route: String,
    #[serde(flatten)]
    pub golden: Golden,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EdgeRow {
    /// The caller: `namespace/workload`, `namespace/sa:<name>` when its
    /// service account is not one workload's, or `unmeshed`.
    pub from: String,
    pub to: String,
    #[serde(flatten)]
    pub golden: Golden,
    /// Every request of the edge was mutual TLS.
    pub mtls: bool,
}

/// Everything `weft stat`, `weft top` and the dashboard show.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Stat {
    pub mesh: String,
    pub window_seconds: f64,
    pub generated_at: String,
    pub deployments: Vec<WorkloadRow>,
    pub services: Vec<ServiceRow>,
    pub routes: Vec<RouteRow>,
    pub edges: Vec<EdgeRow>,
}

/// One series of one pod: (namespace, pod, labels).
type SeriesKey<'a> = (&'a str, &'a str, &'a [(String, String)]);

/// Per-series increase between two scrapes, summed by a key.
struct Window<'a> {
    before: &'a [Scrape],
    after: &'a [Scrape],
}

impl Window<'_> {
    /// Sum of increases of `name` over series passing `pick`, by the key
    /// `pick` gives. A counter that went down (a restarted proxy) counts
    /// from zero.
    fn increase<K: Ord>(
        &self,
        name: &str,
        pick: impl Fn(&PodInfo, &Sample) -> Option<K>,
    ) -> BTreeMap<K, f64> {
        let mut earlier: HashMap<SeriesKey<'_>, f64> = HashMap::new();
        for scrape in self.before {
            for s in scrape.samples.iter().filter(|s| s.name == name) {
                earlier.insert(
                    (&scrape.pod.namespace, &scrape.pod.name, &s.labels),
                    s.value,
                );
            }
        }
        let mut out = BTreeMap::new();
        for scrape in self.after {
            for s in scrape.samples.iter().filter(|s| s.name == name) {
                let Some(key) = pick(&scrape.pod, s) else {
                    continue;
                };
                let was = earlier
                    .get(&(&scrape.pod.namespace, &scrape.pod.name, &s.labels))
                    .copied()
                    .unwrap_or(0.0);
                let d = if s.value >= was {
                    s.value - was
                } else {
                    s.value
                };
                *out.entry(key).or_insert(0.0) += d;
            }
        }
        out
    }
}

/// The latency histogram's increase by key, then the quantile per key.
fn quantiles<K: Ord + Clone>(
    w: &Window<'_>,
    name: &str,
    pick: impl Fn(&PodInfo, &Sample) -> Option<K>,
) -> BTreeMap<K, [Option<f64>; 3]> {
    let buckets = w.increase(name, |p, s| {
        let le = match s.label("le") {
            "+Inf" => f64::INFINITY,
            v => v.parse::<f64>().ok()?,
        };
        Some((pick(p, s)?, OrdF64(le)))
    });
    let mut by_key: BTreeMap<K, Vec<(f64, f64)>> = BTreeMap::new();
    for ((k, le), n) in buckets {
        by_key.entry(k).or_default().push((le.0, n));
    }
    by_key
        .into_iter()
        .map(|(k, b)| (k, [0.5, 0.95, 0.99].map(|q| quantile(q, &b))))
        .collect()
}

/// A bucket bound, ordered (`+Inf` last).
#[derive(Clone, Copy, Debug, PartialEq)]
struct OrdF64(f64);
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Prometheus's `histogram_quantile`: linear within the bucket the rank
/// falls in; the highest finite bound when it falls in `+Inf`.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut b: Vec<(f64, f64)> = buckets.to_vec();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in &b {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            let frac = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return Some(lower + (le - lower) * frac);
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

fn golden(
    requests: f64,
    ok: f64,
    responses: f64,
    q: Option<&[Option<f64>; 3]>,
    secs: f64,
) -> Golden {
    let [p50, p95, p99] = q.copied().unwrap_or([None; 3]);
    Golden {
        rps: requests / secs,
        success_rate: (responses > 0.0).then(|| ok / responses),
        p50_ms: p50,
        p95_ms: p95,
        p99_ms: p99,
    }
}

fn workload_key(p: &PodInfo) -> (String, String) {
    (p.namespace.clone(), p.workload.clone())
}

/// The caller of an inbound request, from its verified identity.
fn caller(client_id: &str, pods: &[PodInfo]) -> String {
    let Some(rest) = client_id.split_once("/ns/").map(|(_, r)| r) else {
        return "unmeshed".to_string();
    };
    let Some((ns, sa)) = rest.split_once("/sa/") else {
        return client_id.to_string();
    };
    let mut workloads: Vec<&str> = pods
        .iter()
        .filter(|p| p.namespace == ns && p.service_account == sa)
        .map(|p| p.workload.as_str())
        .collect();
    workloads.sort_unstable();
    workloads.dedup();
    match workloads.as_slice() {
        [one] => format!("{ns}/{one}"),
        _ => format!("{ns}/sa:{sa}"),
    }
}

/// Golden metrics over the window between `before` and `after`, `secs`
/// seconds apart.
pub fn compute(before: &[Scrape], after: &[Scrape], secs: f64, mesh: &str, now: String) -> Stat {
    let w = Window { before, after };
    let secs = secs.max(0.001);
    let inbound = |s: &Sample| s.label("direction") == "inbound";
    let outbound = |s: &Sample| s.label("direction") == "outbound";
    let ok = |s: &Sample| s.label("classification") == "success";
    let pods: Vec<PodInfo> = after.iter().map(|s| s.pod.clone()).collect();

    // Workloads: their pods' inbound side.
    let by_wl =
        |f: fn(&Sample) -> bool| move |p: &PodInfo, s: &Sample| f(s).then(|| workload_key(p));
    let req = w.increase(
        "request_total",
        by_wl(|s| s.label("direction") == "inbound"),
    );
    let tls = w.increase(
        "request_total",
        by_wl(|s| s.label("direction") == "inbound" && s.label("tls") == "true"),
    );
    let rsp = w.increase(
        "response_total",
        by_wl(|s| s.label("direction") == "inbound"),
    );
    let rsp_ok = w.increase(
        "response_total",
        by_wl(|s| s.label("direction") == "inbound" && s.label("classification") == "success"),
    );
    let lat = quantiles(&w, "response_latency_ms_bucket", |p, s| {
        inbound(s).then(|| workload_key(p))
    });
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for p in &pods {
        *counts.entry(workload_key(p)).or_default() += 1;
    }
    let get = |m: &BTreeMap<(String, String), f64>, k: &(String, String)| {
        m.get(k).copied().unwrap_or(0.0)
    };
    let deployments = counts
        .iter()
        .map(|(k, n)| {
            let requests = get(&req, k);
            WorkloadRow {
                namespace: k.0.clone(),
                name: k.1.clone(),
                pods: *n,
                golden: golden(requests, get(&rsp_ok, k), get(&rsp, k), lat.get(k), secs),
                mtls_share: (requests > 0.0).then(|| get(&tls, k) / requests),
            }
        })
        .collect();

    // Services: every client's outbound side, by destination.
    let dst = |s: &Sample| {
        let (ns, svc) = (s.label("dst_namespace"), s.label("dst_service"));
        (!svc.is_empty()).then(|| (ns.to_string(), svc.to_string()))
    };
    let req = w.increase("request_total", |_, s| {
        outbound(s).then(|| dst(s)).flatten()
    });
    let rsp = w.increase("response_total", |_, s| {
        outbound(s).then(|| dst(s)).flatten()
    });
    let rsp_ok = w.increase("response_total", |_, s| {
        (outbound(s) && ok(s)).then(|| dst(s)).flatten()
    });
    let lat = quantiles(&w, "response_latency_ms_bucket", |_, s| {
        outbound(s).then(|| dst(s)).flatten()
    });
    let services = req
        .iter()
        .map(|(k, r)| ServiceRow {
            namespace: k.0.clone(),
            name: k.1.clone(),
            golden: golden(*r, get(&rsp_ok, k), get(&rsp, k), lat.get(k), secs),
        })
        .collect();

    // Routes.
    let route = |s: &Sample| {
        Some((
            s.label("dst_namespace").to_string(),
            s.label("dst_service").to_string(),
            s.label("route").to_string(),
        ))
    };
    let req = w.increase("route_request_total", |_, s| route(s));
    let rsp = w.increase("route_response_total", |_, s| route(s));
    let rsp_ok = w.increase("route_response_total", |_, s| {
        ok(s).then(|| route(s)).flatten()
    });
    let lat = quantiles(&w, "route_response_latency_ms_bucket", |_, s| route(s));
    let get3 = |m: &BTreeMap<(String, String, String), f64>, k: &(String, String, String)| {
        m.get(k).copied().unwrap_or(0.0)
    };
    let routes = req
        .iter()
        .map(|(k, r)| RouteRow {
            namespace: k.0.clone(),
            service: k.1.clone(),
            route: k.2.clone(),
            golden: golden(*r, get3(&rsp_ok, k), get3(&rsp, k), lat.get(k), secs),
        })
        .collect();

    // Edges: the callee's inbound side, by verified caller.
    let edge = |p: &PodInfo, s: &Sample| {
        inbound(s).then(|| {
            let (ns, wl) = workload_key(p);
            (caller(s.label("client_id"), &pods), format!("{ns}/{wl}"))
        })
    };
    let req = w.increase("request_total", edge);
    let tls = w.increase("request_total", |p, s| {
        (s.label("tls") == "true").then(|| edge(p, s)).flatten()
    });
    let rsp = w.increase("response_total", edge);
    let rsp_ok = w.increase("response_total", |p, s| ok(s).then(|| edge(p, s)).flatten());
    let lat = quantiles(&w, "response_latency_ms_bucket", edge);
    let edges = req
        .iter()
        .filter(|(_, r)| **r > 0.0)
        .map(|(k, r)| EdgeRow {
            from: k.0.clone(),
            to: k.1.clone(),
            golden: golden(
                *r,
                rsp_ok.get(k).copied().unwrap_or(0.0),
                rsp.get(k).copied().unwrap_or(0.0),
                lat.get(k),
                secs,
            ),
            mtls: tls.get(k).copied().unwrap_or(0.0) >= *r,
        })
        .collect();

    Stat {
        mesh: mesh.to_string(),
        window_seconds: (secs * 10.0).round() / 10.0,
        generated_at: now,
        deployments,
        services,
        routes,
        edges,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::prom::parse;

    fn pod(name: &str, workload: &str, sa: &str) -> PodInfo {
        PodInfo {
            namespace: "shop".into(),
            name: name.into(),
            workload: workload.into(),
            service_account: sa.into(),
        }
    }

    fn scrape(pod: &PodInfo, text: &str) -> Scrape {
        Scrape {
            pod: pod.clone(),
            samples: parse(text),
        }
    }

    const FRONTEND_ID: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

    /// web's inbound side after `n` requests from the frontend (mTLS), of
    /// which `failed` failed, `fast` answered within 1 ms and the rest
    /// within 5 ms.
    fn web_metrics(n: u32, failed: u32, fast: u32) -> String {
        let l = format!("direction=\"inbound\",tls=\"true\",client_id=\"{FRONTEND_ID}\"");
        format!(
            "request_total{{{l}}} {n}\n\
             response_total{{{l},status_code=\"200\",classification=\"success\"}} {}\n\
             response_total{{{l},status_code=\"503\",classification=\"failure\"}} {failed}\n\
             response_latency_ms_bucket{{{l},status_code=\"200\",le=\"1\"}} {fast}\n\
             response_latency_ms_bucket{{{l},status_code=\"200\",le=\"5\"}} {n}\n\
             response_latency_ms_bucket{{{l},status_code=\"200\",le=\"+Inf\"}} {n}\n",
            n - failed
        )
    }

    #[test]
    fn workloads_services_routes_and_edges_over_a_window() {
        let (web_a, web_b, front) = (
            pod("web-a", "web", "web"),
            pod("web-b", "web", "web"),
            pod("frontend-1", "frontend", "frontend"),
        );
        let out = |n: u32, failed: u32| {
            format!(
                "request_total{{direction=\"outbound\",tls=\"no_identity\",dst_namespace=\"shop\",dst_service=\"web\"}} {n}\n\
                 response_total{{direction=\"outbound\",dst_namespace=\"shop\",dst_service=\"web\",classification=\"success\"}} {}\n\
                 response_total{{direction=\"outbound\",dst_namespace=\"shop\",dst_service=\"web\",classification=\"failure\"}} {failed}\n\
                 route_request_total{{dst_namespace=\"shop\",dst_service=\"web\",route=\"shop/split\"}} {n}\n\
                 route_response_total{{dst_namespace=\"shop\",dst_service=\"web\",route=\"shop/split\",classification=\"success\"}} {}\n",
                n - failed,
                n - failed
            )
        };
        let before = [
            scrape(&web_a, &web_metrics(100, 0, 100)),
            scrape(&web_b, &web_metrics(50, 0, 50)),
            scrape(&front, &out(150, 0)),
        ];
        // In 10 s: web-a served 100 more (2 failed, half slow), web-b 100
        // more, all fast; the frontend sent 200, 2 failed.
        let after = [
            scrape(&web_a, &web_metrics(200, 2, 150)),
            scrape(&web_b, &web_metrics(150, 0, 150)),
            scrape(&front, &out(350, 2)),
        ];
        let s = compute(&before, &after, 10.0, "test", "now".into());
        let web = s.deployments.iter().find(|d| d.name == "web").unwrap();
        assert_eq!(web.pods, 2);
        assert_eq!(web.golden.rps, 20.0);
        assert_eq!(web.golden.success_rate, Some(198.0 / 200.0));
        assert_eq!(web.mtls_share, Some(1.0));
        // 150 of 200 within 1 ms: the median is in the first bucket.
        let p50 = web.golden.p50_ms.unwrap();
        assert!((p50 - 100.0 / 150.0).abs() < 1e-9, "{p50}");
        assert!(web.golden.p99_ms.unwrap() > 4.0);
        let frontend = s.deployments.iter().find(|d| d.name == "frontend").unwrap();
        assert_eq!(
            (frontend.golden.rps, frontend.golden.success_rate),
            (0.0, None)
        );

        assert_eq!(s.services.len(), 1);
        assert_eq!(s.services[0].golden.rps, 20.0);
        assert_eq!(s.services[0].golden.success_rate, Some(0.99));
        assert_eq!(s.routes[0].route, "shop/split");
        assert_eq!(s.routes[0].golden.rps, 20.0);

        assert_eq!(s.edges.len(), 1);
        let e = &s.edges[0];
        assert_eq!(
            (e.from.as_str(), e.to.as_str()),
            ("shop/frontend", "shop/web")
        );
        assert!(e.mtls);
        assert_eq!(e.golden.rps, 20.0);
    }

    #[test]
    fn a_restarted_proxy_counts_from_zero_and_new_pods_count_whole() {
        let web = pod("web-a", "web", "web");
        let before = [scrape(&web, &web_metrics(1000, 0, 1000))];
        let after = [scrape(&web, &web_metrics(30, 0, 30))];
        let s = compute(&before, &after, 10.0, "t", String::new());
        assert_eq!(s.deployments[0].golden.rps, 3.0);
        let s = compute(&[], &after, 10.0, "t", String::new());
        assert_eq!(s.deployments[0].golden.rps, 3.0);
    }

    #[test]
    fn callers_are_workloads_when_their_service_account_says_which() {
        let pods = [
            pod("a-1", "a", "shared"),
            pod("b-1", "b", "shared"),
            pod("c-1", "c", "c"),
        ];
        assert_eq!(
            caller("spiffe://cluster.local/ns/shop/sa/c", &pods),
            "shop/c"
        );
        assert_eq!(
            caller("spiffe://cluster.local/ns/shop/sa/shared", &pods),
            "shop/sa:shared"
        );
        assert_eq!(
            caller("spiffe://cluster.local/ns/batch/sa/x", &pods),
            "batch/sa:x"
        );
        assert_eq!(caller("", &pods), "unmeshed");
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let b = [
            (1.0, 50.0),
            (2.0, 90.0),
            (5.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(quantile(0.5, &b), Some(1.0));
        assert_eq!(quantile(0.7, &b), Some(1.5));
        assert_eq!(quantile(0.95, &b), Some(3.5));
        assert_eq!(quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]), None);
        // Past the last finite bound: that bound.
        assert_eq!(
            quantile(0.99, &[(1.0, 1.0), (f64::INFINITY, 10.0)]),
            Some(1.0)
        );
    }
}
