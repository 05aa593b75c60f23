//! The synthetic cluster the controller watches: `services` Services in
//! ten namespaces, each with an EndpointSlice of `per_service` ready
//! endpoints and their meshed Pods, plus one Pod per simulated proxy.
//! Addresses stay inside 198.18.0.0/15 (they are data: nothing dials them).

use std::net::Ipv4Addr;

use serde_json::{Value, json};
use weft_tests::fake_api::FakeApi;

pub const NAMESPACES: usize = 10;

/// The size of one synthetic cluster.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Size {
    pub streams: usize,
    pub services: usize,
    pub per_service: usize,
}

impl Size {
    pub fn endpoints(&self) -> usize {
        self.services * self.per_service
    }
}

pub fn namespace_of(i: usize) -> String {
    format!("ns-{}", i % NAMESPACES)
}

/// Service `j`'s cluster IP: 198.19.0.0/16, from .0.1 on.
pub fn cluster_ip(j: usize) -> Ipv4Addr {
    nth(Ipv4Addr::new(198, 19, 0, 0), j + 1)
}

/// The discovery key a proxy subscribes to for service `j`.
pub fn destination_key(j: usize) -> String {
    format!("{}:80", cluster_ip(j))
}

/// Pod `p`'s IP: 198.18.0.0/16, from .0.1 on (endpoints first, then the
/// simulated proxies' pods).
fn pod_ip(p: usize) -> Ipv4Addr {
    nth(Ipv4Addr::new(198, 18, 0, 0), p + 1)
}

fn nth(base: Ipv4Addr, n: usize) -> Ipv4Addr {
    assert!(n < 65_535, "the synthetic cluster outgrew a /16");
    Ipv4Addr::from(u32::from(base) + n as u32)
}

/// Loads the whole cluster into `api`, with the namespace the controller
/// keeps its status Lease in.
pub fn load(api: &FakeApi, size: Size) {
    api.apply_object(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "weft"}
    }));
    for n in 0..NAMESPACES {
        api.apply_object(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": format!("ns-{n}")}
        }));
    }
    for j in 0..size.services {
        api.apply_object(service(j));
        api.apply_object(endpoint_slice(j, size.per_service, true));
        for e in 0..size.per_service {
            api.apply_object(pod(
                &format!("svc-{j}-{e}"),
                &namespace_of(j),
                &format!("svc-{j}"),
                pod_ip(j * size.per_service + e),
            ));
        }
    }
    for i in 0..size.streams {
        api.apply_object(pod(
            &format!("client-{i}"),
            &namespace_of(i),
            "client",
            pod_ip(size.endpoints() + i),
        ));
    }
    // Watches start from the lists' resourceVersion; the load's history
    // is not needed.
    api.compact_to_now();
}

fn service(j: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{j}"), "namespace": namespace_of(j)},
        "spec": {
            "clusterIP": cluster_ip(j).to_string(),
            "selector": {"app": format!("svc-{j}")},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
        }
    })
}

/// Service `j`'s slice; with `first_ready` false its first endpoint is
/// not ready (the change the harness makes, and undoes).
pub fn endpoint_slice(j: usize, per_service: usize, first_ready: bool) -> Value {
    let ns = namespace_of(j);
    let endpoints: Vec<Value> = (0..per_service)
        .map(|e| {
            json!({
                "addresses": [pod_ip(j * per_service + e).to_string()],
                "conditions": {"ready": e != 0 || first_ready},
                "targetRef": {"kind": "Pod", "name": format!("svc-{j}-{e}"), "namespace": ns}
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("svc-{j}-slice"), "namespace": ns,
            "labels": {"kubernetes.io/service-name": format!("svc-{j}")}
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

fn pod(name: &str, ns: &str, app: &str, ip: Ipv4Addr) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "labels": {"app": app},
            "annotations": {"weft.dev/proxy-version": "bench"}
        },
        "spec": {"serviceAccountName": app, "containers": [{"name": "app", "image": "x"}]},
        "status": {"phase": "Running", "podIP": ip.to_string()}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_in_the_benchmark_range() {
        assert_eq!(cluster_ip(0), Ipv4Addr::new(198, 19, 0, 1));
        assert_eq!(cluster_ip(255), Ipv4Addr::new(198, 19, 1, 0));
        assert_eq!(pod_ip(40_000), Ipv4Addr::new(198, 18, 156, 65));
        assert_eq!(destination_key(9), "198.19.0.10:80");
    }

    #[test]
    fn the_changed_slice_differs_only_in_its_first_endpoint() {
        let a = endpoint_slice(3, 3, true);
        let b = endpoint_slice(3, 3, false);
        assert_eq!(a["endpoints"][0]["conditions"]["ready"], true);
        assert_eq!(b["endpoints"][0]["conditions"]["ready"], false);
        assert_eq!(a["endpoints"][1], b["endpoints"][1]);
        assert_eq!(a["metadata"], b["metadata"]);
    }
}
