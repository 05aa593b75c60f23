//! The discovery stream against a real controller (directory source, real
//! gRPC over loopback), driven by a scripted proxy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use weft_controller::app::{Controller, Settings, Source};
use weft_proto::convert::key_to_pb;
use weft_proto::model::Key;
use weft_proto::pb::discovery::{
    self as pb, discovery_client::DiscoveryClient, stream_request::Request,
};

const WORLD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 198.19.0.10, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: shop}
spec: {clusterIP: 198.19.0.12, selector: {app: web, version: v2}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: v1-a, namespace: shop, labels: {app: web, version: v1}, annotations: {weft.dev/proxy-version: test}}
spec: {containers: [{name: app, image: x}]}
status: {podIP: 198.18.0.3}
"#;

const SPLIT: &str = r#"
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: web-split, namespace: shop}
spec: {service: web, backends: [{service: web, weight: WEIGHT}, {service: web-v2, weight: 10}]}
"#;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weft-stream-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("world.yaml"), WORLD).unwrap();
    std::fs::write(d.join("split.yaml"), SPLIT.replace("WEIGHT", "90")).unwrap();
    d
}

/// Starts a controller on loopback; returns its discovery and admin addresses
/// and a handle that stops it when sent to.
async fn controller(dir: &Path) -> (String, String, tokio::sync::oneshot::Sender<()>) {
    let c = Controller::bind(Settings::loopback(Source::Dir(dir.to_path_buf())))
        .await
        .unwrap();
    let (discovery, admin) = (c.discovery_addr().to_string(), c.admin_addr().to_string());
    let (stop, stopped) = tokio::sync::oneshot::channel();
    tokio::spawn(c.run(async {
        let _ = stopped.await;
    }));
    (discovery, admin, stop)
}

/// A scripted proxy's end of a stream.
struct Proxy {
    tx: mpsc::Sender<pb::StreamRequest>,
    rx: Streaming<pb::StreamResponse>,
}

fn req(r: Request) -> pb::StreamRequest {
    pb::StreamRequest { request: Some(r) }
}

impl Proxy {
    async fn connect(addr: &str, held: Vec<(Key, String)>) -> Self {
        let mut client = loop {
            match DiscoveryClient::connect(format!("http://{addr}")).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let (tx, rx) = mpsc::channel(16);
        tx.send(req(Request::Hello(pb::Hello {
            node: Some(pb::Node {
                namespace: "shop".into(),
                pod: "client-0".into(),
                ..Default::default()
            }),
            held: held
                .iter()
                .map(|(k, v)| pb::Held {
                    key: Some(key_to_pb(k)),
                    version: v.clone(),
                })
                .collect(),
        })))
        .await
        .unwrap();
        let rx = client
            .stream(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Self { tx, rx }
    }

    async fn subscribe(&self, keys: &[Key]) {
        self.tx
            .send(req(Request::Subscribe(pb::Subscribe {
                keys: keys.iter().map(key_to_pb).collect(),
            })))
            .await
            .unwrap();
    }

    /// The next push, as (key, version, kind of body).
    async fn next(&mut self) -> (String, Vec<(Key, String, &'static str)>) {
        let rsp = tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a push within 5s")
            .unwrap()
            .unwrap();
        let resources = rsp
            .resources
            .iter()
            .map(|r| {
                let key = weft_proto::convert::key_from_pb(r.key.as_ref().unwrap()).unwrap();
                let kind = match r.body {
                    Some(pb::resource::Body::Destination(_)) => "destination",
                    Some(pb::resource::Body::Inbound(_)) => "inbound",
                    Some(pb::resource::Body::Unknown(_)) => "unknown",
                    None => "none",
                };
                (key, r.version.clone(), kind)
            })
            .collect();
        (rsp.nonce, resources)
    }

    async fn nothing_for(&mut self, d: Duration) {
        if let Ok(m) = tokio::time::timeout(d, self.rx.message()).await {
            panic!("expected no push, got {m:?}");
        }
    }

    async fn ack(&self, nonce: String) {
        self.tx
            .send(req(Request::Ack(pb::Ack { nonce })))
            .await
            .unwrap();
    }
}

fn web() -> Key {
    Key::Destination("198.19.0.10:80".into())
}

#[tokio::test]
async fn subscribe_ack_nack_and_incremental_pushes() {
    let dir = tmpdir("incremental");
    let (addr, admin, _stop) = controller(&dir).await;
    let mut p = Proxy::connect(&addr, vec![]).await;
    // No service and no pod has this address.
    let nowhere = Key::Destination("198.18.0.250:8080".into());
    let inbound = Key::Inbound("shop/client-0".into());
    p.subscribe(&[web(), nowhere.clone(), inbound.clone()])
        .await;
    let (nonce, mut first) = p.next().await;
    first.sort_by(|a, b| a.0.cmp(&b.0));
    let kinds: Vec<_> = first
        .iter()
        .map(|(k, _, kind)| (k.clone(), *kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (nowhere.clone(), "unknown"),
            (web(), "destination"),
            (inbound, "inbound")
        ]
    );
    let web_version = first[1].1.clone();
    p.ack(nonce).await;

    // On demand: a new key later is answered alone.
    let v2 = Key::Destination("web-v2.shop.svc.cluster.local:80".into());
    p.subscribe(std::slice::from_ref(&v2)).await;
    let (nonce, only) = p.next().await;
    assert_eq!(only.iter().map(|r| &r.0).collect::<Vec<_>>(), vec![&v2]);
    p.tx.send(req(Request::Nack(pb::Nack {
        nonce,
        error: "scripted rejection".into(),
    })))
    .await
    .unwrap();

    // A change to the split pushes the apex only.
    std::fs::write(dir.join("split.yaml"), SPLIT.replace("WEIGHT", "50")).unwrap();
    let (_, changed) = p.next().await;
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].0, web());
    assert_ne!(changed[0].1, web_version, "a new version");

    // A change nobody subscribed to pushes nothing.
    std::fs::write(dir.join("other.yaml"), "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: shop}\nspec: {clusterIP: 198.19.0.50, ports: [{port: 80}]}\n").unwrap();
    p.nothing_for(Duration::from_millis(500)).await;

    let m = weft_tests::client::metrics(&admin).await;
    assert!(m.contains("discovery_acks_total 1"), "{m}");
    assert!(m.contains("discovery_nacks_total 1"), "{m}");
    assert!(m.contains("discovery_streams 1"), "{m}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn reconnecting_with_versions_resends_only_what_changed_even_across_restarts() {
    let dir = tmpdir("reconnect");
    let (addr, _admin, stop) = controller(&dir).await;
    let mut p = Proxy::connect(&addr, vec![]).await;
    let v2 = Key::Destination("198.19.0.12:80".into());
    p.subscribe(&[web(), v2.clone()]).await;
    let (_, first) = p.next().await;
    let held: Vec<(Key, String)> = first
        .iter()
        .map(|(k, v, _)| (k.clone(), v.clone()))
        .collect();
    drop(p);

    // A restarted controller computes the same versions: nothing is resent.
    stop.send(()).unwrap();
    let (addr, _admin, _stop) = controller(&dir).await;
    let mut p = Proxy::connect(&addr, held.clone()).await;
    p.subscribe(&[web(), v2.clone()]).await;
    p.nothing_for(Duration::from_millis(500)).await;

    // What changed while the proxy was away is sent, alone. The proxy that
    // stays connected tells when the controller has taken the change in.
    let mut watcher = p;
    std::fs::write(dir.join("split.yaml"), SPLIT.replace("WEIGHT", "1")).unwrap();
    let (_, seen) = watcher.next().await;
    assert_eq!(seen.iter().map(|r| &r.0).collect::<Vec<_>>(), vec![&web()]);
    let mut p = Proxy::connect(&addr, held).await;
    p.subscribe(&[web(), v2]).await;
    let (_, resent) = p.next().await;
    assert_eq!(
        resent.iter().map(|r| &r.0).collect::<Vec<_>>(),
        vec![&web()]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_stream_must_start_with_hello() {
    let dir = tmpdir("hello");
    let (addr, _admin, _stop) = controller(&dir).await;
    let mut client = loop {
        match DiscoveryClient::connect(format!("http://{addr}")).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let (tx, rx) = mpsc::channel(1);
    tx.send(req(Request::Subscribe(pb::Subscribe {
        keys: vec![key_to_pb(&web())],
    })))
    .await
    .unwrap();
    let status = client.stream(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("must be a Hello"));
    std::fs::remove_dir_all(&dir).unwrap();
}
