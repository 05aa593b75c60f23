//! What every connection of the proxy shares, built once at start-up and
//! passed by reference (an `Arc`) to each connection and request.

use std::sync::Arc;

use crate::authz::Authorizer;
use crate::config::Config;
use crate::discovery::Store;
use crate::drain::Drain;
use crate::metrics::{Direction, Metrics};
use crate::overload::Load;
use crate::telemetry::Telemetry;
use crate::tls::MeshTls;
use crate::upstream::Pool;
use crate::upstream::app_protocol::AppProtocols;

#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub drain: Drain,
    pub inbound_pool: Arc<Pool>,
    pub outbound_pool: Arc<Pool>,
    pub app_protocols: Arc<AppProtocols>,
    /// Config from the controller or a static file; `None`: pass-through.
    pub discovery: Option<Arc<Store>>,
    /// Mesh identity and TLS; `None`: plaintext.
    pub mesh: Option<MeshTls>,
    /// Inbound authorization; `None`: everyone is admitted.
    pub authz: Option<Arc<Authorizer>>,
    /// Spans, access logs and tap.
    pub telemetry: Arc<Telemetry>,
    /// Connections and requests admitted (load shedding).
    pub load: Arc<Load>,
}

impl Shared {
    /// The pool of upstream connections of a direction.
    pub fn pool(&self, direction: Direction) -> &Arc<Pool> {
        match direction {
            Direction::Inbound => &self.inbound_pool,
            Direction::Outbound => &self.outbound_pool,
        }
    }
}
