//! Simulated proxies: each one discovery stream, as weft-proxy holds it
//! (Hello naming its pod, Subscribe to its keys, ACK every push), that
//! reports every resource whose version changed and the bytes of the push
//! that carried it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use weft_proto::pb::discovery::{self as pb, discovery_client::DiscoveryClient};

use super::world::{self, Size};

/// A resource that changed at one simulated proxy.
#[derive(Debug)]
pub struct Update {
    pub proxy: usize,
    pub key: String,
    pub at: Instant,
    /// Encoded size of the push (StreamResponse) that carried it, shared
    /// among the resources it carried.
    pub bytes: usize,
}

/// What the fleet subscribes to: every proxy its own inbound policy, the
/// hot service (index 0) and `cold` other services spread over the mesh.
#[derive(Debug)]
pub struct Subscriptions {
    pub per_proxy: Vec<Vec<usize>>,
    /// Service -> the proxies subscribed to it.
    pub subscribers: HashMap<usize, Vec<usize>>,
}

impl Subscriptions {
    pub fn new(size: Size, cold: usize) -> Self {
        let mut per_proxy = Vec::with_capacity(size.streams);
        let mut subscribers: HashMap<usize, Vec<usize>> = HashMap::new();
        for i in 0..size.streams {
            let mut services = vec![0];
            for c in 0..cold {
                // A fixed spread (no RNG: runs are comparable), skipping
                // the hot service.
                let j = 1 + (i * 7919 + c * 104_729) % (size.services - 1).max(1);
                if !services.contains(&j) {
                    services.push(j);
                }
            }
            for &j in &services {
                subscribers.entry(j).or_default().push(i);
            }
            per_proxy.push(services);
        }
        Self {
            per_proxy,
            subscribers,
        }
    }
}

/// The running fleet: updates arrive on `updates`; `synced` counts the
/// proxies that hold every resource they subscribed to.
pub struct Fleet {
    pub updates: mpsc::UnboundedReceiver<Update>,
    pub synced: Arc<AtomicUsize>,
    pub failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// Opens every stream (a few hundred connecting at a time, as proxies
    /// of a rollout would) and returns at once; watch `synced`.
    pub fn start(addr: SocketAddr, subs: &Subscriptions) -> Fleet {
        let (tx, updates) = mpsc::unbounded_channel();
        let synced = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(200));
        let tasks = subs
            .per_proxy
            .iter()
            .enumerate()
            .map(|(i, services)| {
                let mut keys: Vec<pb::Key> = services
                    .iter()
                    .map(|&j| key(pb::key::Key::Destination(world::destination_key(j))))
                    .collect();
                keys.push(key(pb::key::Key::Inbound(format!(
                    "{}/client-{i}",
                    world::namespace_of(i)
                ))));
                let (tx, synced, failed, gate) =
                    (tx.clone(), synced.clone(), failed.clone(), gate.clone());
                tokio::spawn(async move {
                    if let Err(e) = proxy(i, addr, keys, tx, synced, gate).await {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("  simulated proxy {i}: {e}");
                    }
                })
            })
            .collect();
        Fleet {
            updates,
            synced,
            failed,
            tasks,
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn key(k: pb::key::Key) -> pb::Key {
    pb::Key { key: Some(k) }
}

fn key_text(k: &pb::Key) -> String {
    match &k.key {
        Some(pb::key::Key::Destination(d)) => d.clone(),
        Some(pb::key::Key::Inbound(i)) => format!("inbound:{i}"),
        None => String::new(),
    }
}

fn request(r: pb::stream_request::Request) -> pb::StreamRequest {
    pb::StreamRequest { request: Some(r) }
}

async fn proxy(
    i: usize,
    addr: SocketAddr,
    keys: Vec<pb::Key>,
    updates: mpsc::UnboundedSender<Update>,
    synced: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
) -> Result<(), String> {
    let permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut client = DiscoveryClient::new(channel);
    let (tx, rx) = mpsc::unbounded_channel();
    let node = pb::Node {
        namespace: world::namespace_of(i),
        pod: format!("client-{i}"),
        service_account: "client".into(),
        proxy_version: "bench".into(),
        node_name: String::new(),
    };
    let wanted = keys.len();
    let _ = tx.send(request(pb::stream_request::Request::Hello(pb::Hello {
        node: Some(node),
        held: vec![],
    })));
    let _ = tx.send(request(pb::stream_request::Request::Subscribe(
        pb::Subscribe { keys },
    )));
    let mut responses = client
        .stream(UnboundedReceiverStream::new(rx))
        .await
        .map_err(|e| format!("stream: {e}"))?
        .into_inner();
    let mut held: HashMap<String, String> = HashMap::new();
    let mut permit = Some(permit);
    while let Some(rsp) = responses.message().await.map_err(|e| e.to_string())? {
        let at = Instant::now();
        let bytes = rsp.encoded_len() / rsp.resources.len().max(1);
        let was_synced = held.len() >= wanted;
        for r in &rsp.resources {
            let k = r.key.as_ref().map(key_text).unwrap_or_default();
            let changed = held.insert(k.clone(), r.version.clone()).as_ref() != Some(&r.version);
            if was_synced && changed {
                let _ = updates.send(Update {
                    proxy: i,
                    key: k,
                    at,
                    bytes,
                });
            }
        }
        let _ = tx.send(request(pb::stream_request::Request::Ack(pb::Ack {
            nonce: rsp.nonce.clone(),
        })));
        if !was_synced && held.len() >= wanted {
            synced.fetch_add(1, Ordering::Relaxed);
            // Let the next proxy connect.
            permit = None;
        }
    }
    drop(permit);
    Err("the controller ended the stream".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_proxy_has_the_hot_service_and_its_cold_ones() {
        let size = Size {
            streams: 100,
            services: 50,
            per_service: 3,
        };
        let subs = Subscriptions::new(size, 4);
        assert_eq!(subs.subscribers[&0].len(), 100);
        for (i, s) in subs.per_proxy.iter().enumerate() {
            assert_eq!(s[0], 0);
            assert!(s.len() >= 2 && s.len() <= 5, "{i}: {s:?}");
            assert!(s[1..].iter().all(|&j| (1..50).contains(&j)));
            for &j in s {
                assert!(subs.subscribers[&j].contains(&i));
            }
        }
    }
}
