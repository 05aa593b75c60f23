//! What every request on one accepted HTTP connection shares: the proxy's
//! shared state (by reference) and what is known of this connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};

use weft_proto::spiffe::SpiffeId;

use crate::authz::Authorizer;
use crate::discovery::{Resolved, Slot};
use crate::metrics::{Direction, Tls, Value};
use crate::routing::DestinationConfig;
use crate::shared::Shared;
use crate::upstream::Hop;

#[derive(Debug)]
pub struct HttpConn {
    pub shared: Arc<Shared>,
    pub direction: Direction,
    /// Where the connection was going (its original destination).
    pub target: SocketAddr,
    /// Where the connection came from.
    pub client: SocketAddr,
    pub tls: Tls,
    /// Inbound over mesh TLS: the client's verified identity, and its
    /// `client_id` label value.
    pub client_id: Option<(Arc<SpiffeId>, Value)>,
    /// Outbound, with discovery: the destination's config slot. Read per
    /// request, so config changes reach open connections.
    pub dest: Option<Arc<Slot>>,
    /// This connection's requests in flight (for its idle timeout).
    pub active: Arc<AtomicUsize>,
    /// HTTP/1: the index of the first request framed two ways (see
    /// http/framing.rs), and how many requests came so far.
    pub ambiguous: Arc<AtomicU64>,
    pub requests_seen: AtomicU64,
}

impl HttpConn {
    pub fn new(
        shared: Arc<Shared>,
        direction: Direction,
        target: SocketAddr,
        client: SocketAddr,
        client_id: Option<(Arc<SpiffeId>, Value)>,
        dest: Option<Arc<Slot>>,
    ) -> Self {
        Self {
            shared,
            direction,
            target,
            client,
            tls: if client_id.is_some() {
                Tls::Yes
            } else {
                Tls::NoIdentity
            },
            client_id,
            dest,
            active: Default::default(),
            ambiguous: Arc::new(AtomicU64::new(crate::http::framing::NONE)),
            requests_seen: Default::default(),
        }
    }

    fn inbound(&self) -> bool {
        self.direction == Direction::Inbound
    }

    /// Inbound: the pod's authorization.
    pub fn authz(&self) -> Option<&Authorizer> {
        self.shared.authz.as_deref().filter(|_| self.inbound())
    }

    /// The destination's config in force, if discovery knows it.
    pub fn destination(&self) -> Option<Arc<DestinationConfig>> {
        match &**self.dest.as_ref()?.load() {
            Resolved::Destination(d) => Some(d.clone()),
            _ => None,
        }
    }

    /// What sending upstream needs of this connection.
    pub fn hop(&self) -> Hop<'_> {
        let shared = &*self.shared;
        Hop {
            direction: self.direction,
            pool: shared.pool(self.direction),
            app_protocols: self.inbound().then_some(&*shared.app_protocols),
            orig_dst: self.target,
            from_mesh_peer: self.client_id.is_some(),
            mesh: !self.inbound() && shared.mesh.is_some(),
        }
    }
}
