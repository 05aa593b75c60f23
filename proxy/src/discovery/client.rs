//! The discovery client: one stream to the controller, reopened with
//! jittered exponential backoff. On (re)connect it says who it is and what
//! versions it holds, and subscribes to every key it knows; new keys are
//! subscribed as connections meet them. Each push is validated whole: if
//! anything in it is invalid, the proxy NACKs it (with the reason) and
//! keeps what it had; otherwise it applies it and ACKs.

use crate::backoff::{Attempts, Backoff};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::transport::Endpoint;
use weft_proto::convert::{body_from_pb, key_from_pb, key_to_pb};
use weft_proto::model::{Body, Key};
use weft_proto::pb::discovery::{self as pb, discovery_client::DiscoveryClient, stream_request};

use super::store::{Resolved, Store, Update};
use crate::routing::{self, DestinationConfig};

#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// The controller's discovery address, host:port.
    pub addr: String,
    pub node: pb::Node,
}

/// Runs the client for the life of the proxy.
pub async fn run(
    settings: ClientSettings,
    store: Arc<Store>,
    mut subscriptions: mpsc::UnboundedReceiver<Key>,
) {
    let mut backoff = Attempts::new(Backoff::reconnect(
        Duration::from_millis(100),
        Duration::from_secs(10),
    ));
    loop {
        match session(&settings, &store, &mut subscriptions, &mut backoff).await {
            Ok(()) => {
                tracing::info!(controller = %settings.addr, "discovery stream closed by the controller")
            }
            Err(e) => {
                tracing::warn!(controller = %settings.addr, error = %e, "discovery stream failed; serving with the last config")
            }
        }
        store.metrics.connected.set(0);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn session(
    settings: &ClientSettings,
    store: &Store,
    subscriptions: &mut mpsc::UnboundedReceiver<Key>,
    backoff: &mut Attempts,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let channel = Endpoint::from_shared(format!("http://{}", settings.addr))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await?;
    let (tx, rx) = mpsc::channel(64);
    let held = store
        .held()
        .into_iter()
        .map(|(key, version)| pb::Held {
            key: Some(key_to_pb(&key)),
            version,
        })
        .collect();
    tx.send(request(stream_request::Request::Hello(pb::Hello {
        node: Some(settings.node.clone()),
        held,
    })))
    .await?;
    let keys = store.keys();
    let nothing_to_wait_for = keys.is_empty();
    if !keys.is_empty() {
        tx.send(subscribe(keys)).await?;
    }
    let mut responses = DiscoveryClient::new(channel)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    store.metrics.connected.set(1);
    if nothing_to_wait_for {
        // Nothing to wait for (a proxy that does not know its pod): the open
        // stream is the first config.
        store
            .first_applied
            .store(true, std::sync::atomic::Ordering::Release);
    }
    backoff.reset();
    tracing::info!(controller = %settings.addr, "discovery stream open");
    loop {
        tokio::select! {
            key = subscriptions.recv() => match key {
                Some(key) => tx.send(subscribe(vec![key])).await?,
                None => return Ok(()),
            },
            rsp = responses.message() => match rsp? {
                Some(rsp) => {
                    let reply = apply(store, rsp);
                    tx.send(reply).await?;
                }
                None => return Ok(()),
            },
        }
    }
}

fn request(r: stream_request::Request) -> pb::StreamRequest {
    pb::StreamRequest { request: Some(r) }
}

fn subscribe(keys: Vec<Key>) -> pb::StreamRequest {
    request(stream_request::Request::Subscribe(pb::Subscribe {
        keys: keys.iter().map(key_to_pb).collect(),
    }))
}

/// Validates a push whole, applies it if valid, and says so.
fn apply(store: &Store, rsp: pb::StreamResponse) -> pb::StreamRequest {
    match validate(rsp.resources, &store.routing) {
        Ok(updates) => {
            tracing::debug!(nonce = %rsp.nonce, resources = updates.len(), "config update applied");
            store.apply(updates);
            request(stream_request::Request::Ack(pb::Ack { nonce: rsp.nonce }))
        }
        Err(error) => {
            tracing::warn!(nonce = %rsp.nonce, %error, "rejecting a config update; keeping the last good config");
            store.metrics.rejected.inc();
            request(stream_request::Request::Nack(pb::Nack {
                nonce: rsp.nonce,
                error,
            }))
        }
    }
}

/// Converts and compiles every resource; the first problem fails them all.
pub fn validate(
    resources: Vec<pb::Resource>,
    routing: &routing::State,
) -> Result<Vec<Update>, String> {
    resources
        .into_iter()
        .map(|r| {
            let key = r
                .key
                .as_ref()
                .ok_or("a resource without a key")
                .map_err(String::from)
                .and_then(|k| key_from_pb(k).map_err(|e| e.to_string()))?;
            let body = body_from_pb(r.body.as_ref()).map_err(|e| format!("{key}: {e}"))?;
            let value = resolved(&key, body, routing).map_err(|e| format!("{key}: {e}"))?;
            Ok((key, r.version, value))
        })
        .collect()
}

/// A model body as the store keeps it, checked against its key.
pub fn resolved(key: &Key, body: Body, routing: &routing::State) -> Result<Resolved, String> {
    Ok(match (key, body) {
        (_, Body::Unknown { reason }) => Resolved::Unknown(reason),
        (Key::Destination(_), Body::Destination(d)) => {
            Resolved::Destination(Arc::new(DestinationConfig::compile(d, routing)?))
        }
        (Key::Inbound(_), Body::Inbound(i)) => Resolved::Inbound(Arc::new(i)),
        _ => return Err("the resource does not fit its key".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::convert::body_to_pb;
    use weft_proto::model::{Backend, Destination, Protocol, Route, RouteMatch, ServiceRef};

    fn destination(path_regex: &str) -> pb::Resource {
        let d = Destination {
            service: ServiceRef {
                namespace: "shop".into(),
                name: "web".into(),
            },
            port: 80,
            protocol: Protocol::Detect,
            routes: vec![Route {
                name: "r".into(),
                matches: vec![RouteMatch {
                    path_regex: Some(path_regex.into()),
                    ..RouteMatch::default()
                }],
                backends: vec![Backend {
                    service: ServiceRef {
                        namespace: "shop".into(),
                        name: "web".into(),
                    },
                    weight: 1,
                    endpoints: vec![],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            retry: None,
        };
        pb::Resource {
            key: Some(key_to_pb(&Key::Destination("198.19.0.10:80".into()))),
            version: "v".into(),
            body: Some(body_to_pb(&Body::Destination(d))),
        }
    }

    #[test]
    fn a_push_is_valid_whole_or_rejected_whole() {
        let r = routing::State::default();
        assert_eq!(validate(vec![destination("/ok")], &r).unwrap().len(), 1);
        let err = validate(vec![destination("/ok"), destination("/(bad")], &r).unwrap_err();
        assert!(
            err.contains("destination 198.19.0.10:80") && err.contains("not a regular expression"),
            "{err}"
        );
    }

    #[test]
    fn rejected_pushes_leave_the_store_as_it_was() {
        let store = Store::new(None, Duration::from_secs(1), "test".into());
        let ok = apply(
            &store,
            pb::StreamResponse {
                nonce: "1".into(),
                resources: vec![destination("/ok")],
            },
        );
        assert!(matches!(ok.request, Some(stream_request::Request::Ack(_))));
        let bad = apply(
            &store,
            pb::StreamResponse {
                nonce: "2".into(),
                resources: vec![destination("/(bad")],
            },
        );
        match bad.request {
            Some(stream_request::Request::Nack(n)) => assert_eq!(n.nonce, "2"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            store.held(),
            vec![(Key::Destination("198.19.0.10:80".into()), "v".into())]
        );
        assert_eq!(
            (store.metrics.accepted.get(), store.metrics.rejected.get()),
            (1, 1)
        );
    }
}
