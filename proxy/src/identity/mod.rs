//! The proxy's own workload identity: a certificate for
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`, obtained
//! from the controller ([`certify`]) for a key generated here (the private
//! key never leaves the process, and is never written anywhere), renewed
//! before it expires without touching open connections: the TLS configs
//! (crate::tls) read the current certificate on every handshake.

pub mod certify;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::gauge::Gauge;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::Notify;
use weft_proto::mesh_tls::TrustAnchors;
use weft_proto::spiffe::SpiffeId;

#[derive(Debug)]
pub struct LocalIdentity {
    pub id: SpiffeId,
    pub anchors: Arc<TrustAnchors>,
    current: ArcSwapOption<CertifiedKey>,
    /// Unix seconds; 0 until the first certificate.
    expiry: AtomicI64,
    pub expiry_gauge: Gauge,
    arrived: Notify,
}

impl LocalIdentity {
    pub fn new(id: SpiffeId, anchors: Arc<TrustAnchors>, expiry_gauge: Gauge) -> Self {
        Self {
            id,
            anchors,
            current: ArcSwapOption::empty(),
            expiry: AtomicI64::new(0),
            expiry_gauge,
            arrived: Notify::new(),
        }
    }

    pub fn has_certificate(&self) -> bool {
        self.current.load().is_some()
    }

    pub fn expiry(&self) -> Option<i64> {
        match self.expiry.load(Ordering::Acquire) {
            0 => None,
            t => Some(t),
        }
    }

    /// Installs a new certificate; handshakes from now on present it.
    pub fn set(&self, key: CertifiedKey, valid_until: i64) {
        self.current.store(Some(Arc::new(key)));
        self.expiry.store(valid_until, Ordering::Release);
        self.expiry_gauge.set(valid_until);
        self.arrived.notify_waiters();
    }

    /// Waits for the first certificate.
    pub async fn ready(&self) {
        let arrived = self.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        if !self.has_certificate() {
            arrived.await;
        }
    }

    /// The `/identity` document.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "identity": self.id.to_string(),
            "certificate": if self.has_certificate() { "issued" } else { "pending" },
            "certificate_expiry": self.expiry(),
            "trust_anchor_fingerprints": self.anchors.fingerprints(),
        })
    }
}

impl ResolvesServerCert for LocalIdentity {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

impl ResolvesClientCert for LocalIdentity {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }

    fn has_certs(&self) -> bool {
        self.has_certificate()
    }
}
