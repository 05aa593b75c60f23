//! The Kubernetes source against a fake API server speaking the real
//! list/watch protocol: kube-rs's watcher lists, watches, resumes after a
//! dropped connection, relists after 410 Gone; the controller pushes what
//! changed and writes status conditions, one replica at a time.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;
use weft_controller::app::{Controller, Settings, Source};
use weft_proto::convert::{body_from_pb, key_to_pb};
use weft_proto::model::{Body, Key};
use weft_proto::pb::discovery::{
    self as pb, discovery_client::DiscoveryClient, stream_request::Request,
};
use weft_tests::fake_api::FakeApi;

const WORLD: &str = r#"apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 198.19.0.10, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [198.18.0.3], conditions: {ready: true}, targetRef: {kind: Pod, name: web-a, namespace: shop}}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-a, namespace: shop, labels: {app: web}, annotations: {weft.dev/proxy-version: test}}
spec: {serviceAccountName: web, containers: [{name: app, image: x}]}
status: {podIP: 198.18.0.3}
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: web-split, namespace: shop}
spec: {service: web, backends: [{service: web, weight: 9}, {service: web-canary, weight: 1}]}"#;

fn slice(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [{ip}], conditions: {{ready: true}}}}]"
    )
}

/// The namespace the controller keeps its status Lease in (Settings::loopback's).
const OWN_NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: weft}";

async fn controller(api: &FakeApi) -> (String, String) {
    api.apply(OWN_NAMESPACE);
    let c = Controller::bind(Settings::loopback(Source::Kubernetes))
        .await
        .unwrap()
        .with_kube_client(api.client());
    let addrs = (c.discovery_addr().to_string(), c.admin_addr().to_string());
    tokio::spawn(c.run(std::future::pending()));
    addrs
}

async fn get(addr: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    for _ in 0..150 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Subscribes to the web service; returns a receiver of its endpoint lists.
async fn watch_web(addr: &str) -> tokio::sync::mpsc::Receiver<Vec<String>> {
    let mut client = DiscoveryClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let key = Key::Destination("198.19.0.10:80".into());
    tx.send(pb::StreamRequest {
        request: Some(Request::Hello(pb::Hello::default())),
    })
    .await
    .unwrap();
    tx.send(pb::StreamRequest {
        request: Some(Request::Subscribe(pb::Subscribe {
            keys: vec![key_to_pb(&key)],
        })),
    })
    .await
    .unwrap();
    let mut stream = client
        .stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let (out_tx, out) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let _keep = tx;
        while let Ok(Some(rsp)) = stream.message().await {
            for r in rsp.resources {
                if let Ok(Body::Destination(d)) = body_from_pb(r.body.as_ref()) {
                    let mut eps: Vec<String> = d
                        .routes
                        .iter()
                        .flat_map(|r| &r.backends)
                        .flat_map(|b| &b.endpoints)
                        .map(|e| e.address.to_string())
                        .collect();
                    eps.sort();
                    eps.dedup();
                    let _ = out_tx.send(eps).await;
                }
            }
        }
    });
    out
}

async fn until_endpoints(rx: &mut tokio::sync::mpsc::Receiver<Vec<String>>, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let eps = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("endpoints in time")
            .expect("stream open");
        if eps == want {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_watch_resume_relist_and_status() {
    let api = FakeApi::start().await;
    api.apply(WORLD);
    let (discovery, admin) = controller(&api).await;
    eventually("the controller to be ready", async || {
        get(&admin, "/ready").await.contains("200 OK")
    })
    .await;

    let mut web = watch_web(&discovery).await;
    until_endpoints(&mut web, &["198.18.0.3:8080"]).await;

    // A watched change arrives.
    api.apply(&slice("web-2", "198.18.0.4"));
    until_endpoints(&mut web, &["198.18.0.3:8080", "198.18.0.4:8080"]).await;

    // The API server drops every watch; the watcher resumes and misses nothing.
    api.drop_watches();
    api.apply(&slice("web-3", "198.18.0.5"));
    until_endpoints(
        &mut web,
        &["198.18.0.3:8080", "198.18.0.4:8080", "198.18.0.5:8080"],
    )
    .await;

    // History is compacted while the watch is down: resuming gets 410 Gone,
    // the watcher relists, and a delete made in between is seen.
    api.compact();
    api.delete("discovery.k8s.io/v1", "EndpointSlice", "shop", "web-2");
    api.drop_watches();
    until_endpoints(&mut web, &["198.18.0.3:8080", "198.18.0.5:8080"]).await;

    // The split names a missing backend: reported in its status.
    eventually("the split's status", async || {
        api.get(
            "split.smi-spec.io/v1alpha4",
            "TrafficSplit",
            "shop",
            "web-split",
        )
        .and_then(|o| {
            o["status"]["conditions"][0]["reason"]
                .as_str()
                .map(String::from)
        })
        .is_some_and(|r| r == "BackendNotFound")
    })
    .await;
    let split = api
        .get(
            "split.smi-spec.io/v1alpha4",
            "TrafficSplit",
            "shop",
            "web-split",
        )
        .unwrap();
    let cond = &split["status"]["conditions"][0];
    assert_eq!(cond["type"], "Accepted");
    assert_eq!(cond["status"], "False");
    assert!(
        cond["message"]
            .as_str()
            .unwrap()
            .contains("shop/web-canary")
    );

    // Fixed, it is Accepted.
    api.apply("apiVersion: v1\nkind: Service\nmetadata: {name: web-canary, namespace: shop}\nspec: {clusterIP: 198.19.0.11, ports: [{port: 80}]}");
    eventually("the split accepted", async || {
        api.get(
            "split.smi-spec.io/v1alpha4",
            "TrafficSplit",
            "shop",
            "web-split",
        )
        .is_some_and(|o| o["status"]["conditions"][0]["status"] == "True")
    })
    .await;
    let metrics = get(&admin, "/metrics").await;
    assert!(
        metrics.contains("index_objects{kind=\"EndpointSlice\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_writes_status() {
    let api = FakeApi::start().await;
    api.apply(WORLD);
    let (_, admin_a) = controller(&api).await;
    let (_, admin_b) = controller(&api).await;
    for admin in [&admin_a, &admin_b] {
        eventually("ready", async || {
            get(admin, "/ready").await.contains("200 OK")
        })
        .await;
    }
    eventually("status written", async || {
        api.status_writes("trafficsplits", "shop", "web-split") > 0
    })
    .await;
    // Both replicas see the problem; over two more renewals of the lease
    // (5 s apart, so each replica has run its loop since) only one writes
    // it, once.
    let lease = || {
        api.get(
            "coordination.k8s.io/v1",
            "Lease",
            "weft",
            "weft-controller-status",
        )
        .unwrap()
    };
    for _ in 0..2 {
        let renewed = lease()["spec"]["renewTime"].clone();
        eventually("the lease renewed", async || {
            lease()["spec"]["renewTime"] != renewed
        })
        .await;
    }
    assert_eq!(api.status_writes("trafficsplits", "shop", "web-split"), 1);
    assert!(
        lease()["spec"]["holderIdentity"]
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );
}

/// Runs a controller to its end (it should refuse to start) and returns
/// the error it stopped with.
async fn start_up_error(api: &FakeApi) -> String {
    let c = Controller::bind(Settings::loopback(Source::Kubernetes))
        .await
        .unwrap()
        .with_kube_client(api.client());
    let ended = tokio::time::timeout(Duration::from_secs(20), c.run(std::future::pending()))
        .await
        .expect("the controller should refuse to start, not run");
    format!(
        "{:#}",
        ended.expect_err("the controller should refuse to start")
    )
}

#[tokio::test]
async fn refuses_to_start_when_it_may_not_update_its_lease() {
    let api = FakeApi::start().await;
    api.apply(WORLD);
    api.apply(OWN_NAMESPACE);
    api.deny("update", "coordination.k8s.io", "leases");
    let error = start_up_error(&api).await;
    assert!(
        error.contains("may not update Lease weft/weft-controller-status")
            && error.contains("Role and RoleBinding weft-controller"),
        "{error}"
    );
    assert!(
        api.get(
            "coordination.k8s.io/v1",
            "Lease",
            "weft",
            "weft-controller-status"
        )
        .is_none()
    );
}

#[tokio::test]
async fn refuses_to_start_when_its_namespace_is_missing() {
    let api = FakeApi::start().await;
    api.apply(WORLD);
    let error = start_up_error(&api).await;
    assert!(
        error.contains("namespace weft does not exist")
            && error.contains("WEFT_CONTROLLER_NAMESPACE"),
        "{error}"
    );
}
