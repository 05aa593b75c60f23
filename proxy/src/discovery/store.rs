//! What the proxy knows from the controller (or a static file): one slot per
//! resource. Readers on the data path load a slot's current value without
//! locking (arc-swap); the discovery client replaces it when a new version
//! arrives. A slot lives as long as the proxy, so the last good config keeps
//! serving while the controller is away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use weft_proto::model::{InboundPolicy, Key};

use crate::routing::{self, DestinationConfig};

/// A resource's current value.
#[derive(Debug)]
pub enum Resolved {
    /// Asked for; no answer yet.
    Pending,
    /// Not a destination the mesh knows: forward as addressed.
    Unknown(String),
    Destination(Arc<DestinationConfig>),
    Inbound(Arc<InboundPolicy>),
}

#[derive(Debug)]
pub struct Slot {
    pub key: Key,
    current: ArcSwap<Resolved>,
    version: Mutex<Option<String>>,
    arrived: Notify,
}

impl Slot {
    fn new(key: Key) -> Self {
        Self {
            key,
            current: ArcSwap::from_pointee(Resolved::Pending),
            version: Mutex::new(None),
            arrived: Notify::new(),
        }
    }

    /// The current value (lock-free).
    pub fn load(&self) -> Guard<Arc<Resolved>> {
        self.current.load()
    }

    /// The current value, as an owned pointer.
    pub fn load_full(&self) -> Arc<Resolved> {
        self.current.load_full()
    }

    pub fn version(&self) -> Option<String> {
        self.version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, version: String, value: Resolved) {
        *self.version.lock().unwrap_or_else(|p| p.into_inner()) = Some(version);
        self.current.store(Arc::new(value));
        self.arrived.notify_waiters();
    }

    fn is_pending(&self) -> bool {
        matches!(**self.current.load(), Resolved::Pending)
    }
}

/// The discovery metrics (handles into the proxy's registry).
#[derive(Debug, Default, Clone)]
pub struct DiscoveryMetrics {
    /// Connections forwarded as addressed because their destination's
    /// config did not arrive in time.
    pub fallbacks: Counter,
    pub accepted: Counter,
    pub rejected: Counter,
    /// Increments with every accepted update.
    pub config_version: Gauge,
    pub connected: Gauge,
}

#[derive(Debug)]
pub struct Store {
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
    /// Subscriptions for the discovery client; `None` without a controller.
    subscribe: Option<mpsc::UnboundedSender<Key>>,
    /// How long a first connection waits for its destination's config.
    wait: Duration,
    /// Most destinations subscribed to (beyond: forwarded as addressed).
    max_slots: usize,
    generation: AtomicU64,
    /// Set once the first update has been applied.
    pub first_applied: AtomicBool,
    /// Where the config comes from, for /config.
    source: String,
    pub metrics: DiscoveryMetrics,
    /// What is known of each endpoint, across config versions.
    /// What the data path keeps across config versions (endpoint states,
    /// retry budgets).
    pub routing: Arc<routing::State>,
}

/// One validated resource of an update.
pub type Update = (Key, String, Resolved);

impl DiscoveryMetrics {
    pub fn from_registry(m: &crate::metrics::Metrics) -> Self {
        use crate::metrics::ResultLabels;
        // get_or_create_owned drops the family's lock before returning: two
        // guarded lookups in one expression deadlock when one must insert.
        let accepted = m
            .config_updates
            .get_or_create_owned(&ResultLabels { result: "accepted" });
        let rejected = m
            .config_updates
            .get_or_create_owned(&ResultLabels { result: "rejected" });
        Self {
            fallbacks: m.discovery_fallbacks.clone(),
            accepted,
            rejected,
            config_version: m.config_version.clone(),
            connected: m.discovery_connected.clone(),
        }
    }
}

impl Store {
    pub fn with_metrics(mut self, metrics: DiscoveryMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn new(
        subscribe: Option<mpsc::UnboundedSender<Key>>,
        wait: Duration,
        source: String,
    ) -> Self {
        Self {
            slots: Mutex::default(),
            subscribe,
            wait,
            max_slots: 10_000,
            generation: AtomicU64::new(0),
            first_applied: AtomicBool::new(false),
            source,
            metrics: DiscoveryMetrics::default(),
            routing: Arc::default(),
        }
    }

    pub fn with_routing(mut self, routing: Arc<routing::State>) -> Self {
        self.routing = routing;
        self
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot for `key`, subscribing on first use. `None` when there is
    /// no controller to ask and no static config for it, or the table is full.
    pub fn slot(&self, key: Key) -> Option<Arc<Slot>> {
        let mut slots = self.slots();
        if let Some(s) = slots.get(&key) {
            return Some(s.clone());
        }
        let tx = self.subscribe.as_ref()?;
        if slots.len() >= self.max_slots {
            return None;
        }
        let slot = Arc::new(Slot::new(key.clone()));
        slots.insert(key.clone(), slot.clone());
        let _ = tx.send(key);
        Some(slot)
    }

    /// The slot for `key`, waiting (up to the configured bound) for its
    /// first value when it is new. A wait that runs out is counted; the slot
    /// is still returned, so later requests use the config once it arrives.
    pub async fn resolve(&self, key: Key) -> Option<Arc<Slot>> {
        let slot = self.slot(key)?;
        if !slot.is_pending() {
            return Some(slot);
        }
        let timed_out = {
            let arrived = slot.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            slot.is_pending() && tokio::time::timeout(self.wait, arrived).await.is_err()
        };
        if timed_out {
            self.metrics.fallbacks.inc();
            tracing::info!(key = %slot.key, wait = ?self.wait, "no config in time; forwarding as addressed");
        }
        Some(slot)
    }

    /// Applies a validated update (every resource of it, or none was valid).
    pub fn apply(&self, updates: Vec<Update>) {
        let slots: Vec<(Arc<Slot>, String, Resolved)> = {
            let mut all = self.slots();
            updates
                .into_iter()
                .map(|(key, version, value)| {
                    let slot = all
                        .entry(key.clone())
                        .or_insert_with(|| Arc::new(Slot::new(key)))
                        .clone();
                    (slot, version, value)
                })
                .collect()
        };
        for (slot, version, value) in slots {
            slot.set(version, value);
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics.config_version.set(generation as i64);
        self.metrics.accepted.inc();
        self.first_applied.store(true, Ordering::Release);
    }

    /// (key, version) of every resource held, for a reconnect's Hello.
    pub fn held(&self) -> Vec<(Key, String)> {
        self.slots()
            .values()
            .filter_map(|s| Some((s.key.clone(), s.version()?)))
            .collect()
    }

    /// Every key the proxy has asked for.
    pub fn keys(&self) -> Vec<Key> {
        self.slots().keys().cloned().collect()
    }

    /// The `/config` document: the version in force and every resource.
    pub fn to_json(&self) -> serde_json::Value {
        let mut slots: Vec<Arc<Slot>> = self.slots().values().cloned().collect();
        slots.sort_by(|a, b| a.key.cmp(&b.key));
        let resources: Vec<serde_json::Value> = slots
            .iter()
            .map(|s| {
                let content = match &**s.load() {
                    Resolved::Pending => json!({"pending": true}),
                    Resolved::Unknown(reason) => json!({"unknown": reason}),
                    Resolved::Destination(d) => json!({"destination": d.model}),
                    Resolved::Inbound(i) => json!({"inbound": **i}),
                };
                json!({"key": s.key, "version": s.version(), "content": content})
            })
            .collect();
        json!({
            "version": self.generation.load(Ordering::Relaxed),
            "source": self.source,
            "resources": resources,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn first_use_subscribes_and_waits_up_to_the_bound() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let store = Arc::new(Store::new(Some(tx), Duration::from_secs(1), "test".into()));
        let key = Key::Destination("198.19.0.10:80".into());
        let started = tokio::time::Instant::now();
        let slot = store.resolve(key.clone()).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert!(slot.is_pending());
        assert_eq!(store.metrics.fallbacks.get(), 1);
        assert_eq!(rx.try_recv().unwrap(), key);

        // An answer arriving while a connection waits wakes it at once.
        let key2 = Key::Destination("198.19.0.11:80".into());
        let s2 = store.clone();
        let k2 = key2.clone();
        let waiter = tokio::spawn(async move { s2.resolve(k2).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        store.apply(vec![(
            key2,
            "v1".into(),
            Resolved::Unknown("pod IP".into()),
        )]);
        let slot = waiter.await.unwrap().unwrap();
        assert!(matches!(**slot.load(), Resolved::Unknown(_)));
        assert_eq!(store.metrics.fallbacks.get(), 1);
        assert_eq!(
            store.held(),
            vec![(Key::Destination("198.19.0.11:80".into()), "v1".into())]
        );
    }

    #[test]
    fn without_a_controller_nothing_is_subscribed() {
        let store = Store::new(None, Duration::from_secs(1), "none".into());
        assert!(
            store
                .slot(Key::Destination("198.19.0.10:80".into()))
                .is_none()
        );
    }
}
