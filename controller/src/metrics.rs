//! The controller's metrics (served on the admin port's /metrics).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    /// Proxies connected to the discovery feed now.
    pub streams: Gauge,
    /// Resources pushed to proxies.
    pub pushes: Counter,
    pub acks: Counter,
    pub nacks: Counter,
    /// From the change reaching the controller to the proxy's ACK.
    pub push_latency: Histogram,
    /// Objects held by the index, per kind.
    pub index_objects: Family<KindLabel, Gauge>,
    /// Objects with problems (reported in their status), per kind.
    pub objects_with_problems: Family<KindLabel, Gauge>,
    /// Problems the sources met (malformed files, failed watches).
    pub source_errors: Family<SourceLabel, Counter>,
    /// Destinations and inbound policies proxies subscribe to now.
    pub subscribed_resources: Gauge,
    /// Subscribed resources recomputed after a batch of changes.
    pub recomputed_resources: Counter,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            streams: Gauge::default(),
            pushes: Counter::default(),
            acks: Counter::default(),
            nacks: Counter::default(),
            push_latency: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            index_objects: Family::default(),
            objects_with_problems: Family::default(),
            source_errors: Family::default(),
            subscribed_resources: Gauge::default(),
            recomputed_resources: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "discovery_streams",
            "Proxies connected to the discovery feed",
            m.streams.clone(),
        );
        registry.register(
            "discovery_pushes",
            "Resources pushed to proxies",
            m.pushes.clone(),
        );
        registry.register(
            "discovery_recomputed_resources",
            "Subscribed resources recomputed after changes (those of the namespaces the changes touched)",
            m.recomputed_resources.clone(),
        );
        registry.register("discovery_acks", "Pushes proxies accepted", m.acks.clone());
        registry.register(
            "discovery_nacks",
            "Pushes proxies rejected (they keep their last good config)",
            m.nacks.clone(),
        );
        registry.register(
            "discovery_push_latency_seconds",
            "Time from a change reaching the controller to the proxy's ACK of it",
            m.push_latency.clone(),
        );
        registry.register(
            "index_objects",
            "Objects the index holds",
            m.index_objects.clone(),
        );
        registry.register(
            "objects_with_problems",
            "Objects the controller could not fully apply (see their status or the log)",
            m.objects_with_problems.clone(),
        );
        registry.register(
            "source_errors",
            "Problems met by the sources",
            m.source_errors.clone(),
        );
        registry.register(
            "discovery_subscribed_resources",
            "Distinct resources proxies subscribe to",
            m.subscribed_resources.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}
