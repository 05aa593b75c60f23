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
//!
//! ```text
//! mod.rs            the hub: applies source events to the index, runs the loop
//! subscriptions.rs  discovery streams and the resources they subscribed to
//! recompute.rs      after a batch: what it may have changed, new versions, pushes
//! publish.rs        problems (for status), pod directory, namespace annotations,
//!                   index metrics
//! ```
//!
//! The hub turns each resource into its wire form once (weft_proto's
//! convert) and versions it by a hash of those bytes, so every stream that
//! holds it shares one encoding.

mod publish;
mod recompute;
mod subscriptions;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use weft_proto::model::Key;
use weft_proto::pb::discovery as pb;

use crate::index::problems::Problem;
use crate::index::{Index, Kind, NamespaceAnnotations, ObjectRef, PodDirectory};
use crate::metrics::{Metrics, SourceLabel};
use crate::source::Event;
use recompute::Touched;
pub use recompute::version_of;
use subscriptions::{Stream, Subscribed};

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
    use weft_proto::convert::body_to_pb;

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
        hub.handle_event(Event::Synced(Kind::ALL[Kind::ALL.len() - 1]));
        assert!(hub.ready.load(Ordering::Acquire));
    }
}
