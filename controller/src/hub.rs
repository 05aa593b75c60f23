//! The hub owns the index and knows who subscribed to what. Source events
//! change the index; after each batch the hub recomputes the subscribed
//! resources the batch may have changed and pushes to its subscribers only
//! those whose version (a hash of the content) changed. One task owns all
//! of it, so there are no locks.
//!
//! Which resources a batch may change: everything a resource is computed
//! from lives in one namespace (a destination's service, its splits,
//! retry policy, slices and pods; a pod's namespace, authorization
//! policies and services), so a resource is recomputed only when the batch
//! touched its namespace. Resources that resolved to nothing (an address
//! outside the mesh) are recomputed every batch, since any new Service or
//! Pod may claim them; a Reset (a relist) recomputes everything.

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
use crate::index::{Index, Kind, NamespaceAnnotations, ObjectRef, PodDirectory};
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
    /// The namespace everything it was computed from lives in; `None`:
    /// it resolved to nothing.
    scope: Option<String>,
}

/// A registered discovery stream: where its pushes go, what it holds.
#[derive(Debug)]
struct Stream {
    pushes: mpsc::UnboundedSender<Vec<Push>>,
    keys: HashSet<Key>,
}

/// What the events of a batch touched.
#[derive(Debug, Default)]
enum Touched {
    #[default]
    Nothing,
    Namespaces(HashSet<String>),
    Everything,
}

impl Touched {
    fn add(&mut self, namespace: &str) {
        match self {
            Touched::Nothing => *self = Touched::Namespaces(HashSet::from([namespace.to_string()])),
            Touched::Namespaces(set) => {
                set.insert(namespace.to_string());
            }
            Touched::Everything => {}
        }
    }

    /// Whether a resource of `scope` may have changed.
    fn covers(&self, scope: Option<&str>) -> bool {
        match (self, scope) {
            (Touched::Everything, _) | (_, None) => true,
            (Touched::Nothing, Some(_)) => false,
            (Touched::Namespaces(set), Some(ns)) => set.contains(ns),
        }
    }
}

/// The namespace a resource was computed from (see the module docs).
fn scope_of(key: &Key, body: &pb::resource::Body) -> Option<String> {
    match (key, body) {
        (Key::Inbound(pod), _) => pod.split_once('/').map(|(ns, _)| ns.to_string()),
        (_, pb::resource::Body::Destination(d)) => d.service.as_ref().map(|s| s.namespace.clone()),
        _ => None,
    }
}

#[derive(Debug)]
pub struct Hub {
    index: Index,
    resources: HashMap<Key, Subscribed>,
    streams: HashMap<StreamId, Stream>,
    metrics: Arc<Metrics>,
    synced: HashSet<Kind>,
    ready: Arc<AtomicBool>,
    problems: watch::Sender<Problems>,
    namespaces: watch::Sender<Arc<NamespaceAnnotations>>,
    /// A Namespace changed since the annotations were last published.
    namespaces_changed: bool,
    pods: watch::Sender<Arc<PodDirectory>>,
    /// A Pod changed since the directory was last published.
    pods_changed: bool,
    /// What the events since the last recompute touched.
    touched: Touched,
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
            pods: watch::channel(Arc::default()).0,
            pods_changed: false,
            touched: Touched::Nothing,
        };
        (hub, rx)
    }

    /// Each namespace's `weft.dev/` annotations, as they change.
    pub fn namespaces(&self) -> watch::Receiver<Arc<NamespaceAnnotations>> {
        self.namespaces.subscribe()
    }

    /// Every pod's address and service account, as they change.
    pub fn pods(&self) -> watch::Receiver<Arc<PodDirectory>> {
        self.pods.subscribe()
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Applies one source event to the index.
    pub fn handle_event(&mut self, event: Event) {
        let kind = match &event {
            Event::Apply(o) => Some(o.kind()),
            Event::Delete(r) => Some(r.kind),
            Event::Reset(kind, _) => Some(*kind),
            Event::Synced(_) | Event::Error { .. } => None,
        };
        self.namespaces_changed |= kind == Some(Kind::Namespace);
        self.pods_changed |= kind == Some(Kind::Pod);
        match &event {
            Event::Apply(o) => self.touch(&o.object_ref()),
            Event::Delete(r) => self.touch(r),
            Event::Reset(..) => self.touched = Touched::Everything,
            Event::Synced(_) | Event::Error { .. } => {}
        }
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

    fn touch(&mut self, r: &ObjectRef) {
        // A Namespace object's own name is the namespace it touches.
        let ns = if r.kind == Kind::Namespace {
            &r.name
        } else {
            &r.namespace
        };
        self.touched.add(ns);
    }

    /// After a batch of events: pushes every subscribed resource that
    /// changed, and reports objects whose problems changed.
    pub fn recompute(&mut self, since: Instant) {
        let touched = std::mem::take(&mut self.touched);
        let mut out: HashMap<StreamId, Vec<Push>> = HashMap::new();
        for (key, sub) in &mut self.resources {
            if !touched.covers(sub.scope.as_deref()) {
                continue;
            }
            self.metrics.recomputed_resources.inc();
            let body = body_to_pb(&self.index.resource(key));
            let version = version_of(&body);
            if version == sub.push.version {
                continue;
            }
            sub.scope = scope_of(key, &body);
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
            if let Some(s) = self.streams.get(&stream) {
                let _ = s.pushes.send(pushes);
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
        if std::mem::take(&mut self.pods_changed) {
            let pods = self.index.pod_directory();
            self.pods.send_if_modified(|current| {
                let changed = **current != pods;
                if changed {
                    *current = Arc::new(pods);
                }
                changed
            });
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

    fn destination_of(push: &Push) -> Option<&pb::Destination> {
        match &*push.body {
            pb::resource::Body::Destination(d) => Some(d),
            _ => None,
        }
    }

    #[test]
    fn a_change_recomputes_only_the_resources_of_its_namespace() {
        let (mut hub, mut rx) = hub();
        apply(&mut hub, WEB);
        apply(&mut hub, &API.replace("namespace: shop", "namespace: blue"));
        hub.handle_command(Command::Subscribe {
            stream: 1,
            keys: vec![
                Key::Destination("198.19.0.10:80".into()),
                Key::Destination("198.19.0.11:80".into()),
                Key::Inbound("blue/p".into()),
            ],
        });
        rx.try_recv().unwrap();
        let before = hub.metrics.recomputed_resources.get();
        apply(
            &mut hub,
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [198.18.0.3], conditions: {ready: true}}]",
        );
        assert_eq!(
            hub.metrics.recomputed_resources.get() - before,
            1,
            "only web"
        );
        let pushed = rx.try_recv().unwrap();
        assert_eq!(pushed.len(), 1);
        assert_eq!(
            destination_of(&pushed[0]).unwrap().routes[0].backends[0]
                .endpoints
                .len(),
            1
        );

        // A relist recomputes everything.
        let before = hub.metrics.recomputed_resources.get();
        hub.handle_event(Event::Reset(Kind::AuthorizationPolicy, vec![]));
        hub.recompute(Instant::now());
        assert_eq!(hub.metrics.recomputed_resources.get() - before, 3);
    }

    #[test]
    fn an_address_outside_the_mesh_is_claimed_by_a_service_of_any_namespace() {
        let (mut hub, mut rx) = hub();
        let key = Key::Destination("198.19.0.11:80".into());
        hub.handle_command(Command::Subscribe {
            stream: 1,
            keys: vec![key.clone()],
        });
        assert!(destination_of(&rx.try_recv().unwrap()[0]).is_none());
        apply(&mut hub, &API.replace("namespace: shop", "namespace: blue"));
        let pushed = rx.try_recv().unwrap();
        let d = destination_of(&pushed[0]).expect("now a destination");
        assert_eq!(d.service.as_ref().unwrap().namespace, "blue");
    }

    #[test]
    fn a_namespace_annotation_reaches_its_pods_inbound_policy() {
        let (mut hub, mut rx) = hub();
        hub.handle_command(Command::Subscribe {
            stream: 1,
            keys: vec![Key::Inbound("shop/a".into())],
        });
        rx.try_recv().unwrap();
        apply(
            &mut hub,
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, annotations: {weft.dev/default-inbound-policy: deny}}",
        );
        let pushed = rx.try_recv().unwrap();
        let pb::resource::Body::Inbound(policy) = &*pushed[0].body else {
            panic!("an inbound policy: {pushed:?}");
        };
        assert_eq!(policy.default_policy, pb::DefaultPolicy::Deny as i32);
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
