//! What happens to each accepted connection, in order:
//! original destination -> (outbound) the destination's config from
//! discovery -> protocol detection -> (inbound) mesh TLS termination ->
//! authorization (per request for HTTP, per connection for TCP) -> HTTP
//! per request, or opaque TCP.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use weft_proto::model::Key;
use weft_proto::spiffe::SpiffeId;

use crate::authz::{self, Authorizer};
use crate::config::Config;
use crate::connect::{Upstream, connect_upstream as connect_to};
use crate::detect::{self, COMPLETE_TIMEOUT, Detection, Protocol, Reason};
use crate::discovery::{Resolved, Slot, Store};
use crate::drain::Drain;
use crate::http::app_protocol::AppProtocols;
use crate::http::pool::Pool;
use crate::http::{self, HttpConn};
use crate::io::{Counted, PrefixedIo};
use crate::metrics::{
    self, Classification, DetectLabels, Direction, Metrics, TcpLabels, Tls, Value,
};
use crate::routing::InFlight;
use crate::tcp::{self, ClientIo};
use crate::tls::accept::{Accepted, Carries, accept};

/// What every connection of the proxy shares.
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
    pub mesh: Option<crate::tls::MeshTls>,
    /// Inbound authorization; `None`: everyone is admitted.
    pub authz: Option<Arc<Authorizer>>,
    /// Spans, access logs and tap.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// Connections and requests admitted (load shedding).
    pub load: Arc<crate::overload::Load>,
}

/// Proxies one accepted connection until it ends; `_slot` holds its place
/// among the connections admitted.
pub async fn serve(
    stream: TcpStream,
    client: SocketAddr,
    direction: Direction,
    shared: Arc<Shared>,
    _slot: crate::overload::ConnectionSlot,
) {
    let orig_dst = match direction {
        Direction::Inbound => shared.config.inbound_orig_dst,
        Direction::Outbound => shared.config.outbound_orig_dst,
    };
    let target = match orig_dst.of(&stream) {
        Ok(target) => target,
        Err(e) => {
            tracing::warn!(%client, direction = direction.as_str(), error = %e, "dropping connection without an original destination");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let metrics = &shared.metrics;
    let open = |tls| {
        metrics.tcp_opened(TcpLabels {
            direction,
            peer: metrics::Peer::Src,
            tls,
            target_addr: metrics.targets.value(&target.to_string()),
        })
    };
    // An inbound connection's `tls` label comes from its ClientHello: its
    // metrics open once that is read (the bytes before are added then).
    let mut tcp =
        (direction == Direction::Outbound || shared.mesh.is_none()).then(|| open(Tls::NoIdentity));
    let counters = tcp.as_ref().map(|t| t.bytes.clone()).unwrap_or_default();
    let mut io = Counted::new(stream, counters);

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
                let tcp = tcp.unwrap_or_else(|| open(Tls::NoIdentity));
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

    let cx = Conn {
        shared: &shared,
        direction,
        client,
        target,
        dest,
    };
    let ok = match (direction, detection.protocol, &shared.mesh) {
        (Direction::Inbound, Protocol::Tls, Some(mesh)) => {
            let on_hello = |is_mesh: bool, read: usize, io: &mut Counted<TcpStream>| {
                let t = open(if is_mesh { Tls::Yes } else { Tls::NoIdentity });
                io.count_into(t.bytes.clone(), read);
                tcp = Some(t);
            };
            // Boxed here and below: a task's future is as large as its
            // largest path, so each path is allocated only when taken (the
            // mesh TLS state alone is ~3.5 KiB that a plaintext connection
            // would otherwise carry).
            match Box::pin(accept(
                detection.buffered,
                io,
                mesh,
                COMPLETE_TIMEOUT,
                on_hello,
            ))
            .await
            {
                Ok(Accepted::Mesh {
                    tls,
                    client_id,
                    carries,
                }) => {
                    let peer = Peer {
                        label: metrics.client_ids.value(&client_id.to_string()),
                        id: client_id,
                    };
                    match carries {
                        Carries::Http2 => {
                            Box::pin(cx.http(*tls, Protocol::Http2, Some(peer))).await
                        }
                        Carries::Http1 => {
                            Box::pin(cx.http(*tls, Protocol::Http1, Some(peer))).await
                        }
                        Carries::Opaque => {
                            let opaque = tcp::Client {
                                stream: ClientIo::Mesh(tls),
                                prefix: Default::default(),
                                counters: tcp.as_ref().map(|t| t.bytes.clone()).unwrap_or_default(),
                            };
                            Box::pin(cx.opaque(opaque, Some(&peer.id))).await
                        }
                    }
                }
                Ok(Accepted::Passthrough(io)) => cx.serve(io, Protocol::Tls).await,
                Err(e) => {
                    tracing::info!(%client, %target, error = %e, "inbound TLS failed");
                    false
                }
            }
        }
        (_, protocol, _) => {
            if tcp.is_none() {
                let t = open(Tls::NoIdentity);
                io.count_into(t.bytes.clone(), detection.buffered.len());
                tcp = Some(t);
            }
            cx.serve(PrefixedIo::new(detection.buffered, io), protocol)
                .await
        }
    };
    let class = if ok {
        Classification::Success
    } else {
        Classification::Failure
    };
    // A connection that ended before its ClientHello was whole is counted
    // now, as plaintext.
    metrics.tcp_closed(tcp.unwrap_or_else(|| open(Tls::NoIdentity)), class);
}

/// A verified mesh client.
struct Peer {
    id: Arc<SpiffeId>,
    label: Value,
}

/// One accepted connection, past detection.
struct Conn<'a> {
    shared: &'a Arc<Shared>,
    direction: Direction,
    client: SocketAddr,
    target: SocketAddr,
    dest: Option<Arc<Slot>>,
}

impl Conn<'_> {
    /// Serves a plaintext connection (or app TLS, passed through).
    async fn serve(self, io: PrefixedIo<Counted<TcpStream>>, protocol: Protocol) -> bool {
        match protocol {
            Protocol::Http1 | Protocol::Http2 => self.http(io, protocol, None).await,
            Protocol::Tls | Protocol::Opaque => {
                let (prefix, counted) = io.into_parts();
                let (stream, counters) = counted.into_parts();
                let opaque = tcp::Client {
                    stream: ClientIo::Plain(stream),
                    prefix,
                    counters,
                };
                Box::pin(self.opaque(opaque, None)).await
            }
        }
    }

    async fn http<I>(self, io: I, protocol: Protocol, peer: Option<Peer>) -> bool
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let shared = self.shared;
        let inbound = self.direction == Direction::Inbound;
        let conn = HttpConn {
            direction: self.direction,
            target: self.target,
            tls: if peer.is_some() {
                Tls::Yes
            } else {
                Tls::NoIdentity
            },
            metrics: shared.metrics.clone(),
            pool: if inbound {
                shared.inbound_pool.clone()
            } else {
                shared.outbound_pool.clone()
            },
            app_protocols: inbound.then(|| shared.app_protocols.clone()),
            drain: shared.drain.clone(),
            dest: self.dest,
            mesh: !inbound && shared.mesh.is_some(),
            client_id: peer.map(|p| (p.id, p.label)),
            client: self.client,
            authz: if inbound { shared.authz.clone() } else { None },
            telemetry: shared.telemetry.clone(),
            load: shared.load.clone(),
            limits: shared.config.limits.clone(),
            active: Default::default(),
            ambiguous: Arc::new(std::sync::atomic::AtomicU64::new(
                crate::http::framing::NONE,
            )),
            requests_seen: Default::default(),
        };
        Box::pin(http::server::serve(io, protocol, conn))
            .await
            .is_ok()
    }

    /// Opaque TCP (and app TLS): authorized once per connection inbound,
    /// then forwarded to the original destination or a picked endpoint.
    async fn opaque(self, opaque: tcp::Client, client_id: Option<&SpiffeId>) -> bool {
        let (shared, client, target) = (self.shared, self.client, self.target);
        if self.direction == Direction::Inbound
            && let Some(authz) = &shared.authz
            && let Err(e) = authz.check(target.port(), client_id, client.ip(), authz::Kind::Tcp)
        {
            tracing::info!(%client, %target, error = %e, "closing unauthorized TCP connection");
            return false;
        }
        match Box::pin(connect_upstream(shared, target, self.dest.as_deref())).await {
            Ok((upstream, addr, _inflight)) => {
                let settings = tcp::Settings {
                    splice: shared.config.splice,
                    idle_timeout: shared.config.tcp_idle_timeout,
                };
                let res = Box::pin(tcp::forward(
                    opaque,
                    upstream,
                    addr,
                    self.direction,
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
                let _ = opaque.stream.tcp().set_zero_linger();
                false
            }
        }
    }
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
        shared.metrics.record_split(&d, &pick);
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

fn is_opaque_port(config: &Config, port: u16) -> bool {
    config.opaque_ports.iter().any(|r| r.contains(port))
}
