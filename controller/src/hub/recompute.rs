//! After a batch of events: which subscribed resources it may have changed
//! (by the namespaces it touched), their new versions, and the pushes to
//! the streams holding those that changed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use prost::Message;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use weft_proto::convert::body_to_pb;
use weft_proto::model::Key;
use weft_proto::pb::discovery as pb;

use super::{Hub, ObjectRef, Push, StreamId};
use crate::index::Kind;

/// What the events of a batch touched.
#[derive(Debug, Default)]
pub(super) enum Touched {
    #[default]
    Nothing,
    Namespaces(HashSet<String>),
    Everything,
}

impl Touched {
    pub(super) fn add(&mut self, namespace: &str) {
        match self {
            Touched::Nothing => *self = Touched::Namespaces(HashSet::from([namespace.to_string()])),
            Touched::Namespaces(set) => {
                set.insert(namespace.to_string());
            }
            Touched::Everything => {}
        }
    }

    /// Whether a resource of `scope` may have changed.
    pub(super) fn covers(&self, scope: Option<&str>) -> bool {
        match (self, scope) {
            (Touched::Everything, _) | (_, None) => true,
            (Touched::Nothing, Some(_)) => false,
            (Touched::Namespaces(set), Some(ns)) => set.contains(ns),
        }
    }
}

/// The namespace a resource was computed from (see the module docs).
pub(super) fn scope_of(key: &Key, body: &pb::resource::Body) -> Option<String> {
    match (key, body) {
        (Key::Inbound(pod), _) => pod.split_once('/').map(|(ns, _)| ns.to_string()),
        (_, pb::resource::Body::Destination(d)) => d.service.as_ref().map(|s| s.namespace.clone()),
        _ => None,
    }
}

/// A stable hash of a resource's content, as its version.
pub fn version_of(body: &pb::resource::Body) -> Arc<str> {
    let bytes = pb::Resource {
        key: None,
        version: String::new(),
        body: Some(body.clone()),
    }
    .encode_to_vec();
    // The first 128 bits of the SHA-256 of the encoding, in hex.
    let hash = Sha256::digest(&bytes);
    let hex: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
    Arc::from(hex)
}

impl Hub {
    pub(super) fn touch(&mut self, r: &ObjectRef) {
        // A Gateway API route, a ReferenceGrant or a RetryPolicy (which may
        // target a route) can change destinations in other namespaces: a
        // consumer route's parent Service, a granted backend's clients.
        if r.kind.is_gateway_route() || matches!(r.kind, Kind::ReferenceGrant | Kind::RetryPolicy) {
            self.touched = Touched::Everything;
            return;
        }
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
}
