//! The hub owns the index and knows who subscribed to what. Source events
//! change the index; after each batch the hub recomputes every subscribed
//! resource and pushes to its subscribers only those whose version (a hash
//! of the content) changed. One task owns all of it, so there are no locks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use weft_proto::convert::body_to_pb;
use weft_proto::model::Key;
use weft_proto::pb::discovery as pb;

use crate::index::problems::Problem;
use crate::index::{Index, Kind, NamespaceAnnotations, ObjectRef};
use crate::metrics::{KindLabel, Metrics, SourceLabel};
use crate::source::Event;

pub type StreamId = u64;

/// A resource on its way to a proxy.
#[derive(Clone, Debug)]
pub struct Push {
    pub key: Key,
    /// Hash of the content: equal versions mean equal content.
    pub version: Arc<str>,
    pub body: Arc<pb::resource::Body>,
    /// When the change behind this version reached the controller.
    pub since: Instant,
}

/// What discovery streams ask of the hub.
#[derive(Debug)]
pub enum Command {
    Register {
        stream: StreamId,
        pushes: mpsc::UnboundedSender<Vec<Push>>,
    },
    Subscribe {
        stream: StreamId,
        keys: Vec<Key>,
    },
    Unsubscribe {
        stream: StreamId,
        keys: Vec<Key>,
    },
    Disconnect {
        stream: StreamId,
    },
}

/// The problems of every custom resource, as last computed.
pub type Problems = Arc<BTreeMap<ObjectRef, Vec<Problem>>>;

#[derive(Debug)]
struct Subscribed {
    push: Push,
    streams: HashSet<StreamId>,
}

#[derive(Debug)]
pub struct Hub {
    index: Index,
    resources: HashMap<Key, Subscribed>,
    streams: HashMap<StreamId, mpsc::UnboundedSender<Vec<Push>>>,
    metrics: Arc<Metrics>,
    synced: HashSet<Kind>,
    ready: Arc<AtomicBool>,
    problems: watch::Sender<Problems>,
    namespaces: watch::Sender<Arc<NamespaceAnnotations>>,
    /// A Namespace changed since the annotations were last published.
    namespaces_changed: bool,
}

/// A stable hash of a resource's content, as its version.
pub fn version_of(body: &pb::resource::Body) -> Arc<str> {
    let bytes = pb::Resource {
        key: None,
        version: String::new(),
        body: Some(body.clone()),
    }
    .encode_to_vec();
    let hash = bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    Arc::from(format!("{hash:016x}"))
}

impl Hub {
    pub fn new(
        index: Index,
        metrics: Arc<Metrics>,
        ready: Arc<AtomicBool>,
    ) -> (Self, watch::Receiver<Problems>) {
        let (problems, rx) = watch::channel(Problems::default());
        let hub = Hub {
            index,
            resources: HashMap::new(),
            streams: HashMap::new(),
            metrics,
            synced: HashSet::new(),
            ready,
            problems,
            namespaces: watch::channel(Arc::default()).0,
            namespaces_changed: false,
        };
        (hub, rx)
    }

    /// Each namespace's `weft.dev/` annotations, as they change.
    pub fn namespaces(&self) -> watch::Receiver<Arc<NamespaceAnnotations>> {
        self.namespaces.subscribe()
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Applies one source event to the index.
    pub fn handle_event(&mut self, event: Event) {
        self.namespaces_changed |= match &event {
            Event::Apply(o) => o.kind() == Kind::Namespace,
            Event::Delete(r) => r.kind == Kind::Namespace,
            Event::Reset(kind, _) => *kind == Kind::Namespace,
            Event::Synced(_) | Event::Error { .. } => false,
        };
        match event {
            Event::Apply(o) => self.index.apply(o),
            Event::Delete(r) => self.index.delete(&r),
            Event::Reset(kind, objs) => self.index.reset(kind, objs),
            Event::Synced(kind) => {
                self.synced.insert(kind);
                if self.synced.len() == Kind::ALL.len() && !self.ready.swap(true, Ordering::AcqRel)
                {
                    tracing::info!("all sources synced; ready");
                }
            }
            Event::Error { source, message } => {
                tracing::error!(source, "{message}");
                let source = if source == "dir" { "dir" } else { "kubernetes" };
                self.metrics
                    .source_errors
                    .get_or_create(&SourceLabel { source })
                    .inc();
            }
        }
    }

    /// After a batch of events: pushes every subscribed resource that
    /// changed, and reports objects whose problems changed.
    pub fn recompute(&mut self, since: Instant) {
        let mut out: HashMap<StreamId, Vec<Push>> = HashMap::new();
        for (key, sub) in &mut self.resources {
            let body = body_to_pb(&self.index.resource(key));
            let version = version_of(&body);
            if version == sub.push.version {
                continue;
            }
            sub.push = Push {
                key: key.clone(),
                version,
                body: Arc::new(body),
                since,
            };
            for s in &sub.streams {
                out.entry(*s).or_default().push(sub.push.clone());
            }
        }
        for (stream, pushes) in out {
            if let Some(tx) = self.streams.get(&stream) {
                let _ = tx.send(pushes);
            }
        }
        self.report();
    }

    fn report(&mut self) {
        for (kind, n) in self.index.sizes() {
            self.metrics
                .index_objects
                .get_or_create(&KindLabel {
                    kind: kind.as_str(),
                })
                .set(n as i64);
        }
        let problems = self.index.problems();
        let old = self.problems.borrow().clone();
        let mut counts: HashMap<Kind, i64> = HashMap::new();
        for (r, ps) in &problems {
            if !ps.is_empty() {
                *counts.entry(r.kind).or_default() += 1;
            }
            if old.get(r) != Some(ps) {
                for p in ps {
                    tracing::warn!(object = %r, reason = p.reason, "{}", p.message);
                }
                if ps.is_empty() && old.get(r).is_some_and(|o| !o.is_empty()) {
                    tracing::info!(object = %r, "accepted");
                }
            }
        }
        for kind in [
            Kind::TrafficSplit,
            Kind::HTTPRouteGroup,
            Kind::RetryPolicy,
            Kind::AuthorizationPolicy,
        ] {
            self.metrics
                .objects_with_problems
                .get_or_create(&KindLabel {
                    kind: kind.as_str(),
                })
                .set(counts.get(&kind).copied().unwrap_or(0));
        }
        if *old != problems {
            let _ = self.problems.send(Arc::new(problems));
        }
        if std::mem::take(&mut self.namespaces_changed) {
            let namespaces = self.index.namespace_annotations();
            self.namespaces.send_if_modified(|current| {
                let changed = **current != namespaces;
                if changed {
                    *current = Arc::new(namespaces);
                }
                changed
            });
        }
    }

    pub fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Register { stream, pushes } => {
                self.streams.insert(stream, pushes);
            }
            Command::Subscribe { stream, keys } => {
                let mut now = Vec::new();
                for key in keys {
                    let sub = self.resources.entry(key.clone()).or_insert_with(|| {
                        let body = body_to_pb(&self.index.resource(&key));
                        Subscribed {
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
                }
                if let Some(tx) = self.streams.get(&stream) {
                    let _ = tx.send(now);
                }
            }
            Command::Unsubscribe { stream, keys } => {
                for key in keys {
                    self.unsubscribe(stream, &key);
                }
            }
            Command::Disconnect { stream } => {
                self.streams.remove(&stream);
                let keys: Vec<Key> = self
                    .resources
                    .iter()
                    .filter(|(_, s)| s.streams.contains(&stream))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in keys {
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

/// Runs the hub until both channels close: events are applied in batches
/// (everything already queued), then the changes pushed once.
pub async fn run(
    mut hub: Hub,
    mut events: mpsc::Receiver<Event>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let (mut events_open, mut commands_open) = (true, true);
    while events_open || commands_open {
        tokio::select! {
            ev = events.recv(), if events_open => match ev {
                Some(ev) => {
                    let since = Instant::now();
                    hub.handle_event(ev);
                    while let Ok(ev) = events.try_recv() {
                        hub.handle_event(ev);
                    }
                    hub.recompute(since);
                }
                None => events_open = false,
            },
            cmd = commands.recv(), if commands_open => match cmd {
                Some(cmd) => hub.handle_command(cmd),
                None => commands_open = false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::IndexConfig;
    use crate::source::parse::parse_documents;

    fn hub() -> (Hub, mpsc::UnboundedReceiver<Vec<Push>>) {
        let (mut hub, _) = Hub::new(
            Index::new(IndexConfig::default()),
            Arc::new(Metrics::new()),
            Default::default(),
        );
        let (tx, rx) = mpsc::unbounded_channel();
        hub.handle_command(Command::Register {
            stream: 1,
            pushes: tx,
        });
        (hub, rx)
    }

    fn apply(hub: &mut Hub, yaml: &str) {
        for o in parse_documents(yaml).unwrap() {
            hub.handle_event(Event::Apply(o));
        }
        hub.recompute(Instant::now());
    }

    const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 198.19.0.10, ports: [{port: 80}]}\n";
    const API: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: shop}\nspec: {clusterIP: 198.19.0.11, ports: [{port: 80}]}\n";

    #[test]
    fn subscribing_answers_at_once_and_changes_push_only_what_changed() {
        let (mut hub, mut rx) = hub();
        apply(&mut hub, WEB);
        let web = Key::Destination("198.19.0.10:80".into());
        let api = Key::Destination("198.19.0.11:80".into());
        hub.handle_command(Command::Subscribe {
            stream: 1,
            keys: vec![web.clone(), api.clone()],
        });
        let first = rx.try_recv().unwrap();
        assert_eq!(first.len(), 2);
        assert!(matches!(
            *first.iter().find(|p| p.key == api).unwrap().body,
            pb::resource::Body::Unknown(_)
        ));

        // A change to api sends api, not web.
        apply(&mut hub, API);
        let second = rx.try_recv().unwrap();
        assert_eq!(
            second.iter().map(|p| &p.key).collect::<Vec<_>>(),
            vec![&api]
        );
        assert!(matches!(
            *second[0].body,
            pb::resource::Body::Destination(_)
        ));

        // A change nobody subscribed to sends nothing.
        apply(
            &mut hub,
            &API.replace("name: api", "name: other")
                .replace("198.19.0.11", "198.19.0.12"),
        );
        assert!(rx.try_recv().is_err());

        // The same content again: same version, nothing sent.
        apply(&mut hub, WEB);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn versions_are_content_hashes() {
        let (mut a, _) = hub();
        let (mut b, _) = hub();
        apply(&mut a, WEB);
        apply(&mut b, WEB);
        let key = Key::Destination("198.19.0.10:80".into());
        let body = |h: &Hub| body_to_pb(&h.index.resource(&key));
        assert_eq!(version_of(&body(&a)), version_of(&body(&b)));
        // Another port of the service is another resource: same version.
        apply(&mut b, &WEB.replace("port: 80}", "port: 80}, {port: 81}"));
        assert_eq!(version_of(&body(&a)), version_of(&body(&b)));
        // Retries for its clients change what this destination is.
        apply(
            &mut b,
            "apiVersion: weft.dev/v1alpha1\nkind: RetryPolicy\nmetadata: {name: r, namespace: shop}\nspec: {targetRef: {kind: Service, name: web}}",
        );
        assert_ne!(version_of(&body(&a)), version_of(&body(&b)));
    }

    #[test]
    fn disconnect_drops_subscriptions() {
        let (mut hub, _rx) = hub();
        hub.handle_command(Command::Subscribe {
            stream: 1,
            keys: vec![Key::Inbound("shop/a".into())],
        });
        assert_eq!(hub.resources.len(), 1);
        hub.handle_command(Command::Disconnect { stream: 1 });
        assert!(hub.resources.is_empty() && hub.streams.is_empty());
    }

    #[test]
    fn ready_once_every_kind_synced() {
        let (mut hub, _rx) = hub();
        for kind in &Kind::ALL[..Kind::ALL.len() - 1] {
            hub.handle_event(Event::Synced(*kind));
        }
        assert!(!hub.ready.load(Ordering::Acquire));
        hub.handle_event(Event::Synced(Kind::AuthorizationPolicy));
        assert!(hub.ready.load(Ordering::Acquire));
    }
}
