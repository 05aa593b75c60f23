//! What happens to each accepted connection, in order:
//! original destination -> (outbound) the destination's config from
//! discovery -> protocol detection -> HTTP per request, or opaque TCP.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use weft_proto::model::Key;

use crate::config::Config;
use crate::connect::connect;
use crate::detect::{self, Detection, Protocol, Reason};
use crate::discovery::{Resolved, Slot, Store};
use crate::drain::Drain;
use crate::http::app_protocol::AppProtocols;
use crate::http::pool::Pool;
use crate::http::{self, HttpConn};
use crate::io::{Counted, PrefixedIo};
use crate::metrics::{Classification, DetectLabels, Direction, Metrics, Peer, TcpLabels, Tls};
use crate::orig_dst::SharedOrigDst;
use crate::routing::InFlight;
use crate::tcp;

/// What every connection of the proxy shares.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub orig_dst: SharedOrigDst,
    pub drain: Drain,
    pub inbound_pool: Arc<Pool>,
    pub outbound_pool: Arc<Pool>,
    pub app_protocols: Arc<AppProtocols>,
    /// Config from the controller or a static file; `None`: pass-through.
    pub discovery: Option<Arc<Store>>,
}

/// Proxies one accepted connection until it ends.
pub async fn serve(
    stream: TcpStream,
    client: SocketAddr,
    direction: Direction,
    shared: Arc<Shared>,
) {
    let target = match shared.orig_dst.orig_dst(&stream) {
        Ok(target) => target,
        Err(e) => {
            tracing::warn!(%client, direction = direction.as_str(), error = %e, "dropping connection without an original destination");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let metrics = &shared.metrics;
    let tcp = metrics.tcp_opened(TcpLabels {
        direction,
        peer: Peer::Src,
        tls: Tls::NoIdentity,
        target_addr: metrics.targets.value(&target.to_string()),
    });
    let mut io = Counted::new(stream, tcp.bytes.clone());

    let dest = destination(&shared, direction, target).await;
    let detection = if is_opaque(&shared, direction, target, dest.as_deref()) {
        Detection {
            protocol: Protocol::Opaque,
            reason: Reason::ConfiguredOpaque,
            buffered: Default::default(),
        }
    } else {
        match detect::detect(&mut io, shared.config.detect_timeout).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%client, error = %e, "connection failed during detection");
                metrics.tcp_closed(tcp, Classification::Failure);
                return;
            }
        }
    };
    metrics
        .detect
        .get_or_create(&DetectLabels {
            direction,
            protocol: detection.protocol,
            reason: detection.reason,
        })
        .inc();
    tracing::debug!(%client, %target, protocol = detection.protocol.as_str(), reason = detection.reason.as_str(), "accepted");

    let io = PrefixedIo::new(detection.buffered, io);
    let ok = match detection.protocol {
        Protocol::Http1 | Protocol::Http2 => {
            let conn = HttpConn {
                direction,
                target,
                tls: Tls::NoIdentity,
                metrics: metrics.clone(),
                pool: match direction {
                    Direction::Inbound => shared.inbound_pool.clone(),
                    Direction::Outbound => shared.outbound_pool.clone(),
                },
                app_protocols: (direction == Direction::Inbound)
                    .then(|| shared.app_protocols.clone()),
                drain: shared.drain.clone(),
                dest,
            };
            http::server::serve(io, detection.protocol, conn)
                .await
                .is_ok()
        }
        Protocol::Tls | Protocol::Opaque => {
            let (prefix, counted) = io.into_parts();
            let (stream, counters) = counted.into_parts();
            let opaque = tcp::Client {
                stream,
                prefix,
                counters,
            };
            match connect_upstream(&shared, target, dest.as_deref()).await {
                Ok((upstream, addr, _inflight)) => {
                    let settings = tcp::Settings {
                        splice: shared.config.splice,
                        idle_timeout: shared.config.tcp_idle_timeout,
                    };
                    let res =
                        tcp::forward(opaque, upstream, addr, direction, settings, metrics).await;
                    if let Err(e) = &res {
                        tracing::info!(%client, %target, upstream = %addr, error = %e, "TCP connection ended with an error");
                    }
                    res.is_ok()
                }
                Err(e) => {
                    // Tell the client the way the upstream told us: a reset.
                    tracing::info!(%client, %target, error = %e, "no upstream for TCP connection; resetting it");
                    let _ = opaque.stream.set_zero_linger();
                    false
                }
            }
        }
    };
    let class = if ok {
        Classification::Success
    } else {
        Classification::Failure
    };
    metrics.tcp_closed(tcp, class);
}

/// Outbound with discovery: the slot holding the destination's config
/// (waiting, the first time, up to the discovery bound).
async fn destination(
    shared: &Shared,
    direction: Direction,
    target: SocketAddr,
) -> Option<Arc<Slot>> {
    match (direction, &shared.discovery) {
        (Direction::Outbound, Some(store)) => {
            store.resolve(Key::Destination(target.to_string())).await
        }
        _ => None,
    }
}

/// Whether to skip detection: the port is listed opaque (settings, the
/// pod's inbound policy), or the destination's service says so.
fn is_opaque(
    shared: &Shared,
    direction: Direction,
    target: SocketAddr,
    dest: Option<&Slot>,
) -> bool {
    if is_opaque_port(&shared.config, target.port()) {
        return true;
    }
    let resolved = match direction {
        Direction::Outbound => dest.map(|s| s.load_full()),
        Direction::Inbound => inbound_policy(shared),
    };
    match resolved.as_deref() {
        Some(Resolved::Destination(d)) => d.is_opaque(),
        Some(Resolved::Inbound(p)) => p.opaque_ports.iter().any(|r| r.contains(target.port())),
        _ => false,
    }
}

/// The pod's own inbound policy, when discovery has it.
fn inbound_policy(shared: &Shared) -> Option<Arc<Resolved>> {
    let store = shared.discovery.as_ref()?;
    let slot = store.slot(Key::Inbound(shared.config.pod()?))?;
    Some(slot.load_full())
}

/// Tries to connect an opaque connection: as addressed, or to an endpoint
/// of the destination's default route (by weight, per connection). A
/// refused endpoint counts toward its ejection and the next pick is tried,
/// up to three, since nothing was sent yet. The returned guard keeps the
/// endpoint's load for the connection's life.
async fn connect_upstream(
    shared: &Shared,
    target: SocketAddr,
    dest: Option<&Slot>,
) -> Result<(TcpStream, SocketAddr, Option<InFlight>), String> {
    let timeout = shared.config.connect_timeout;
    let d = match dest.map(|s| s.load_full()).as_deref() {
        Some(Resolved::Destination(d)) => d.clone(),
        _ => {
            let s = connect(target, timeout).await.map_err(|e| e.to_string())?;
            return Ok((s, target, None));
        }
    };
    let mut last = String::new();
    for _ in 0..3 {
        let pick = d.pick_for_connection().map_err(|e| e.to_string())?;
        shared.metrics.record_split(&d, &pick);
        let (addr, mut inflight) = (pick.endpoint.address, pick.start());
        match connect(addr, timeout).await {
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

fn is_opaque_port(config: &Config, port: u16) -> bool {
    config.opaque_ports.iter().any(|r| r.contains(port))
}
