//! Opaque TCP (and applications' own TLS): authorized once per connection
//! inbound, then connected to the original destination or, when discovery
//! knows it, to an endpoint picked by weight per connection; then bytes
//! both ways (crate::tcp).

use std::net::SocketAddr;
use std::sync::Arc;

use weft_proto::spiffe::SpiffeId;

use super::Conn;
use crate::authz;
use crate::discovery::{Resolved, Slot};
use crate::metrics::Direction;
use crate::shared::Shared;
use crate::tcp;
use crate::upstream::InFlight;
use crate::upstream::connect::{Upstream, connect_upstream as connect_to};

pub(super) async fn serve(
    cx: Conn<'_>,
    client_io: tcp::Client,
    client_id: Option<&Arc<SpiffeId>>,
) -> bool {
    let (shared, client, target) = (cx.shared, cx.client, cx.target);
    if cx.direction == Direction::Inbound
        && let Some(authz) = &shared.authz
        && let Err(e) = authz.check(target.port(), client_id, client.ip(), authz::Kind::Tcp)
    {
        tracing::info!(%client, %target, error = %e, "closing unauthorized TCP connection");
        return false;
    }
    match Box::pin(connect_upstream(shared, target, cx.dest.as_deref())).await {
        Ok((upstream, addr, _inflight)) => {
            let settings = tcp::Settings {
                splice: shared.config.splice,
                idle_timeout: shared.config.tcp_idle_timeout,
            };
            let res = Box::pin(tcp::forward(
                client_io,
                upstream,
                addr,
                cx.direction,
                settings,
                &shared.metrics,
            ))
            .await;
            if let Err(e) = &res {
                tracing::info!(%client, %target, upstream = %addr, error = %e, "TCP connection ended with an error");
            }
            res.is_ok()
        }
        Err(e) => {
            // Tell the client the way the upstream told us: a reset.
            tracing::info!(%client, %target, error = %e, "no upstream for TCP connection; resetting it");
            let _ = client_io.stream.tcp().set_zero_linger();
            false
        }
    }
}

/// Tries to connect an opaque connection: as addressed, or to an endpoint
/// of the destination's default route (by weight, per connection), over
/// mesh TLS when the endpoint is meshed and this proxy has an identity. A
/// refused endpoint counts toward its ejection and the next pick is tried,
/// up to three, since nothing was sent yet. The returned guard keeps the
/// endpoint's load for the connection's life.
async fn connect_upstream(
    shared: &Shared,
    target: SocketAddr,
    dest: Option<&Slot>,
) -> Result<(Upstream, SocketAddr, Option<InFlight>), String> {
    let timeout = shared.config.connect_timeout;
    let d = match dest.map(|s| s.load_full()).as_deref() {
        Some(Resolved::Destination(d)) => d.clone(),
        _ => {
            let s = connect_to(target, timeout, None)
                .await
                .map_err(|e| e.to_string())?;
            return Ok((s, target, None));
        }
    };
    let mut last = String::new();
    for _ in 0..3 {
        let pick = d.pick_for_connection().map_err(|e| e.to_string())?;
        d.record_split(&shared.metrics, &pick);
        let (addr, mut inflight) = (pick.endpoint.address, pick.start());
        let tls = match (&shared.mesh, pick.identity) {
            (Some(mesh), Some(id)) => Some((&mesh.client_tcp, &**id)),
            _ => None,
        };
        match connect_to(addr, timeout, tls).await {
            Ok(s) => {
                inflight.answered(true);
                return Ok((s, addr, Some(inflight)));
            }
            Err(e) => {
                inflight.failed();
                last = e.to_string();
            }
        }
    }
    Err(last)
}
