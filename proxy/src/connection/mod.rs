//! What happens to each accepted connection, in order: original
//! destination -> (outbound) the destination's config from discovery ->
//! protocol detection -> (inbound) mesh TLS termination ([`mesh`]) ->
//! HTTP per request ([`crate::forward`], authorized per request inbound),
//! or opaque TCP ([`opaque`], authorized once inbound).

mod mesh;
mod opaque;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use weft_proto::model::Key;
use weft_proto::spiffe::SpiffeId;

use crate::detect::{self, Detection, Protocol, Reason};
use crate::discovery::{Resolved, Slot};
use crate::forward::{self, HttpConn};
use crate::io::{Counted, PrefixedIo};
use crate::metrics::{
    self, Classification, DetectLabels, Direction, TcpConn, TcpLabels, Tls, Value,
};
use crate::shared::Shared;
use crate::tcp::{self, ClientIo};

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
        Direction::Inbound => shared.config.listeners.inbound_orig_dst,
        Direction::Outbound => shared.config.listeners.outbound_orig_dst,
    };
    let target = match orig_dst.of(&stream) {
        Ok(target) => target,
        Err(e) => {
            tracing::warn!(%client, direction = direction.as_str(), error = %e, "dropping connection without an original destination");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let counts = Counts {
        shared: &shared,
        direction,
        target,
    };
    // An inbound connection's `tls` label comes from its ClientHello: its
    // metrics open once that is read (the bytes before are added then).
    let mut tcp = (direction == Direction::Outbound || shared.mesh.is_none())
        .then(|| counts.open(Tls::NoIdentity));
    let counters = tcp.as_ref().map(|t| t.bytes.clone()).unwrap_or_default();
    let mut io = Counted::new(stream, counters);

    let dest = destination(&shared, direction, target).await;
    let detection = match detect(&shared, direction, target, dest.as_deref(), &mut io).await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(%client, error = %e, "connection failed during detection");
            let tcp = tcp.unwrap_or_else(|| counts.open(Tls::NoIdentity));
            shared.metrics.tcp_closed(tcp, Classification::Failure);
            return;
        }
    };
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
            // Boxed: a task's future is as large as its largest path, so
            // the mesh TLS path (~3.5 KiB of TLS state) is allocated only
            // when taken.
            Box::pin(mesh::serve(
                cx,
                mesh,
                detection.buffered,
                io,
                &counts,
                &mut tcp,
            ))
            .await
        }
        (_, protocol, _) => {
            if tcp.is_none() {
                let t = counts.open(Tls::NoIdentity);
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
    shared
        .metrics
        .tcp_closed(tcp.unwrap_or_else(|| counts.open(Tls::NoIdentity)), class);
}

/// Opens a connection's TCP metrics, once its `tls` label is known.
struct Counts<'a> {
    shared: &'a Shared,
    direction: Direction,
    target: SocketAddr,
}

impl Counts<'_> {
    fn open(&self, tls: Tls) -> TcpConn {
        let metrics = &self.shared.metrics;
        metrics.tcp_opened(TcpLabels {
            direction: self.direction,
            peer: metrics::Peer::Src,
            tls,
            target_addr: metrics.targets.value(&self.target.to_string()),
        })
    }
}

/// The connection's protocol: read from its first bytes, or opaque without
/// reading when its port or service says so. Counted in `detect_total`.
async fn detect(
    shared: &Shared,
    direction: Direction,
    target: SocketAddr,
    dest: Option<&Slot>,
    io: &mut Counted<TcpStream>,
) -> std::io::Result<Detection> {
    let detection = if is_opaque(shared, direction, target, dest) {
        Detection {
            protocol: Protocol::Opaque,
            reason: Reason::ConfiguredOpaque,
            buffered: Default::default(),
        }
    } else {
        detect::detect(io, shared.config.detect_timeout).await?
    };
    shared
        .metrics
        .detect
        .get_or_create(&DetectLabels {
            direction,
            protocol: detection.protocol,
            reason: detection.reason,
        })
        .inc();
    Ok(detection)
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
                let client = tcp::Client {
                    stream: ClientIo::Plain(stream),
                    prefix,
                    counters,
                };
                Box::pin(opaque::serve(self, client, None)).await
            }
        }
    }

    /// HTTP, per request (crate::forward).
    async fn http<I>(self, io: I, protocol: Protocol, peer: Option<Peer>) -> bool
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let shared = self.shared;
        let conn = Arc::new(HttpConn::new(
            shared.clone(),
            self.direction,
            self.target,
            self.client,
            peer.map(|p| (p.id, p.label)),
            self.dest,
        ));
        let settings = crate::http::server::Connection {
            protocol,
            direction: self.direction,
            limits: &shared.config.limits,
            drain: &shared.drain,
            metrics: &shared.metrics,
            active: conn.active.clone(),
            ambiguous: conn.ambiguous.clone(),
        };
        // hyper keeps one request future per HTTP/1 connection, allocated
        // for its whole life, idle or not: boxing the request (a few KiB,
        // see forward's tests) leaves an idle connection only a pointer.
        let handler = move |req| {
            let conn = conn.clone();
            async move { Box::pin(forward::proxy(&conn, req)).await }
        };
        Box::pin(crate::http::server::serve(io, settings, handler))
            .await
            .is_ok()
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
    if shared
        .config
        .opaque_ports
        .iter()
        .any(|r| r.contains(target.port()))
    {
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
