//! Discovery streams and the resources they hold: a stream registers,
//! subscribes to keys (answered at once with what is current) and
//! unsubscribes or disconnects; a resource nobody holds is forgotten.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use weft_proto::convert::body_to_pb;
use weft_proto::model::Key;

use super::recompute::{scope_of, version_of};
use super::{Command, Hub, Push, StreamId};

#[derive(Debug)]
pub(super) struct Subscribed {
    pub(super) push: Push,
    pub(super) streams: HashSet<StreamId>,
    /// The namespace everything it was computed from lives in; `None`:
    /// it resolved to nothing.
    pub(super) scope: Option<String>,
}

/// A registered discovery stream: where its pushes go, what it holds.
#[derive(Debug)]
pub(super) struct Stream {
    pub(super) pushes: mpsc::UnboundedSender<Vec<Push>>,
    pub(super) keys: HashSet<Key>,
}

impl Hub {
    pub fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Register { stream, pushes } => {
                let keys = HashSet::new();
                self.streams.insert(stream, Stream { pushes, keys });
            }
            Command::Subscribe { stream, keys } => {
                let mut now = Vec::new();
                for key in keys {
                    let sub = self.resources.entry(key.clone()).or_insert_with(|| {
                        let body = body_to_pb(&self.index.resource(&key));
                        Subscribed {
                            scope: scope_of(&key, &body),
                            push: Push {
                                key: key.clone(),
                                version: version_of(&body),
                                body: Arc::new(body),
                                since: Instant::now(),
                            },
                            streams: HashSet::new(),
                        }
                    });
                    sub.streams.insert(stream);
                    now.push(sub.push.clone());
                    if let Some(s) = self.streams.get_mut(&stream) {
                        s.keys.insert(key);
                    }
                }
                if let Some(s) = self.streams.get(&stream) {
                    let _ = s.pushes.send(now);
                }
            }
            Command::Unsubscribe { stream, keys } => {
                for key in keys {
                    if let Some(s) = self.streams.get_mut(&stream) {
                        s.keys.remove(&key);
                    }
                    self.unsubscribe(stream, &key);
                }
            }
            Command::Disconnect { stream } => {
                let keys = self.streams.remove(&stream).map(|s| s.keys);
                for key in keys.into_iter().flatten() {
                    self.unsubscribe(stream, &key);
                }
            }
        }
        self.metrics
            .subscribed_resources
            .set(self.resources.len() as i64);
    }

    fn unsubscribe(&mut self, stream: StreamId, key: &Key) {
        if let Some(sub) = self.resources.get_mut(key) {
            sub.streams.remove(&stream);
            if sub.streams.is_empty() {
                self.resources.remove(key);
            }
        }
    }
}
