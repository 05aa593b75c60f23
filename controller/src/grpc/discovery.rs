//! The discovery stream, server side: one task per proxy that turns its
//! requests into hub commands and the hub's pushes into responses. Wire
//! types live only here and in `weft_proto::convert`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};
use weft_proto::convert::{key_from_pb, key_to_pb};
use weft_proto::model::Key;
use weft_proto::pb::discovery::{self as pb, stream_request};

use crate::hub::{Command, Push, StreamId};
use crate::metrics::Metrics;

pub struct DiscoveryService {
    commands: mpsc::UnboundedSender<Command>,
    metrics: Arc<Metrics>,
    next_stream: AtomicU64,
}

impl DiscoveryService {
    pub fn new(commands: mpsc::UnboundedSender<Command>, metrics: Arc<Metrics>) -> Self {
        Self {
            commands,
            metrics,
            next_stream: AtomicU64::new(1),
        }
    }

    pub fn into_server(self) -> pb::discovery_server::DiscoveryServer<Self> {
        pb::discovery_server::DiscoveryServer::new(self)
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::StreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::discovery_server::Discovery for DiscoveryService {
    type StreamStream = ResponseStream;

    async fn stream(
        &self,
        request: Request<Streaming<pb::StreamRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::StreamRequest {
                request: Some(stream_request::Request::Hello(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a stream must be a Hello",
                ));
            }
        };
        let node = hello.node.unwrap_or_default();
        let mut held = HashMap::new();
        for h in hello.held {
            let key = h
                .key
                .as_ref()
                .map(key_from_pb)
                .transpose()
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            if let Some(key) = key {
                held.insert(key, h.version);
            }
        }
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (pushes_tx, pushes) = mpsc::unbounded_channel();
        self.commands
            .send(Command::Register {
                stream,
                pushes: pushes_tx,
            })
            .map_err(|_| Status::unavailable("the controller is shutting down"))?;
        let (out_tx, out_rx) = mpsc::channel(16);
        let session = Session {
            id: stream,
            node: format!("{}/{}", node.namespace, node.pod),
            held,
            nonce: 0,
            sent: HashMap::new(),
            commands: self.commands.clone(),
            metrics: self.metrics.clone(),
        };
        tracing::info!(stream, proxy = %session.node, version = %node.proxy_version, "proxy connected");
        tokio::spawn(session.run(inbound, pushes, out_tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out_rx),
        )))
    }
}

/// One proxy's stream.
struct Session {
    id: StreamId,
    node: String,
    /// What the proxy said it holds (after a reconnect), until first pushed.
    held: HashMap<Key, String>,
    nonce: u64,
    /// Nonces sent and not yet answered, with when their oldest change happened.
    sent: HashMap<String, Instant>,
    commands: mpsc::UnboundedSender<Command>,
    metrics: Arc<Metrics>,
}

impl Session {
    async fn run(
        mut self,
        mut inbound: Streaming<pb::StreamRequest>,
        mut pushes: mpsc::UnboundedReceiver<Vec<Push>>,
        out: mpsc::Sender<Result<pb::StreamResponse, Status>>,
    ) {
        self.metrics.streams.inc();
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        if let Err(status) = self.handle(req) {
                            let _ = out.send(Err(status)).await;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(stream = self.id, error = %e, "stream broke");
                        break;
                    }
                },
                batch = pushes.recv() => {
                    let Some(mut batch) = batch else { break };
                    // Coalesce everything queued into one response.
                    while let Ok(more) = pushes.try_recv() {
                        batch.extend(more);
                    }
                    if let Some(rsp) = self.response(batch)
                        && out.send(Ok(rsp)).await.is_err()
                    {
                        break;
                    }
                }
            }
        }
        self.metrics.streams.dec();
        let _ = self.commands.send(Command::Disconnect { stream: self.id });
        tracing::info!(stream = self.id, proxy = %self.node, "proxy disconnected");
    }

    fn handle(&mut self, req: pb::StreamRequest) -> Result<(), Status> {
        let keys = |keys: Vec<pb::Key>| -> Result<Vec<Key>, Status> {
            keys.iter()
                .map(|k| key_from_pb(k).map_err(|e| Status::invalid_argument(e.to_string())))
                .collect()
        };
        match req.request {
            Some(stream_request::Request::Subscribe(s)) => {
                let keys = keys(s.keys)?;
                let _ = self.commands.send(Command::Subscribe {
                    stream: self.id,
                    keys,
                });
            }
            Some(stream_request::Request::Unsubscribe(s)) => {
                let keys = keys(s.keys)?;
                let _ = self.commands.send(Command::Unsubscribe {
                    stream: self.id,
                    keys,
                });
            }
            Some(stream_request::Request::Ack(a)) => {
                self.metrics.acks.inc();
                if let Some(since) = self.sent.remove(&a.nonce) {
                    self.metrics
                        .push_latency
                        .observe(since.elapsed().as_secs_f64());
                }
            }
            Some(stream_request::Request::Nack(n)) => {
                self.metrics.nacks.inc();
                self.sent.remove(&n.nonce);
                tracing::warn!(stream = self.id, proxy = %self.node, nonce = %n.nonce, error = %n.error, "proxy rejected a push; it keeps its last good config");
            }
            Some(stream_request::Request::Hello(_)) => {
                return Err(Status::invalid_argument("Hello is only the first message"));
            }
            None => return Err(Status::invalid_argument("empty request")),
        }
        Ok(())
    }

    /// A response for the pushes the proxy does not hold already.
    fn response(&mut self, batch: Vec<Push>) -> Option<pb::StreamResponse> {
        let mut oldest: Option<Instant> = None;
        let mut resources = Vec::with_capacity(batch.len());
        for push in batch {
            if let Some(v) = self.held.remove(&push.key)
                && v == *push.version
            {
                continue;
            }
            oldest = Some(oldest.map_or(push.since, |o| o.min(push.since)));
            resources.push(pb::Resource {
                key: Some(key_to_pb(&push.key)),
                version: push.version.to_string(),
                body: Some((*push.body).clone()),
            });
        }
        let oldest = oldest?;
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        self.sent.insert(nonce.clone(), oldest);
        self.metrics.pushes.inc_by(resources.len() as u64);
        Some(pb::StreamResponse { nonce, resources })
    }
}
