//! Upstream HTTP connections, pooled per target address.
//!
//! HTTP/2 upstreams get one multiplexed connection per target, shared by
//! every request (and opened once even when many requests arrive together).
//! HTTP/1 upstreams get a pool of idle keep-alive connections: a connection
//! goes back to the pool when its response body has been read to the end,
//! and idle ones are closed after `idle_timeout`, at most
//! `max_idle_per_target` kept.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use crate::http::body::Body;
use crate::io::Counted;
use crate::metrics::{Classification, Direction, Metrics, Peer, TcpLabels, Tls};
use crate::upstream::Error;
use crate::upstream::connect::{Upstream, connect_upstream};

#[derive(Clone, Copy, Debug)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_target: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
            max_idle_per_target: 100,
        }
    }
}

#[derive(Debug)]
struct Idle {
    send: http1::SendRequest<Body>,
    since: Instant,
}

#[derive(Debug, Default)]
struct H2Entry {
    send: Option<http2::SendRequest<Body>>,
    last_used: Option<Instant>,
    /// Held while a connection is being opened, so concurrent requests wait
    /// for it instead of each opening their own.
    connecting: Arc<tokio::sync::Mutex<()>>,
}

/// Where a request goes: an address, and the identity to expect of it when
/// it is reached over mesh TLS (always HTTP/2 between proxies).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub addr: SocketAddr,
    pub identity: Option<Arc<weft_proto::spiffe::SpiffeId>>,
}

impl Target {
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            identity: None,
        }
    }
}

#[derive(Debug)]
pub struct Pool {
    settings: PoolSettings,
    direction: Direction,
    metrics: Arc<Metrics>,
    mesh: Option<crate::tls::MeshTls>,
    h1_idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    h2: Mutex<HashMap<Target, H2Entry>>,
}

/// An HTTP/1 connection lent to one request; [`Pooled::release`] returns it
/// once the response has been read to its end. Dropped unreleased, the
/// connection closes.
#[derive(Debug)]
pub struct Pooled {
    pool: Arc<Pool>,
    target: SocketAddr,
    send: http1::SendRequest<Body>,
}

impl Pooled {
    pub fn release(self) {
        self.pool.put_idle(self.target, self.send);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    pub fn new(
        settings: PoolSettings,
        direction: Direction,
        metrics: Arc<Metrics>,
        mesh: Option<crate::tls::MeshTls>,
    ) -> Self {
        Self {
            settings,
            direction,
            metrics,
            mesh,
            h1_idle: Mutex::default(),
            h2: Mutex::default(),
        }
    }

    /// Sends `req` to `target` over HTTP/1.1 or HTTP/2 (`version`); a mesh
    /// target always gets HTTP/2 over mesh TLS.
    pub async fn send(
        self: &Arc<Self>,
        target: &Target,
        version: Version,
        req: Request<Body>,
    ) -> Result<(Response<Incoming>, Option<Pooled>), Error> {
        if version == Version::HTTP_2 || target.identity.is_some() {
            self.send_h2(target, req).await.map(|rsp| (rsp, None))
        } else {
            self.send_h1(target.addr, req).await
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        target: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, Option<Pooled>), Error> {
        // An idle connection may have been closed by the server meanwhile;
        // hyper then hands the unsent request back and we try the next.
        while let Some(mut send) = self.checkout_h1(target) {
            if send.ready().await.is_err() {
                continue;
            }
            match send.try_send_request(req).await {
                Ok(rsp) => return Ok((rsp, Some(self.lend(target, send)))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(Error::from_hyper(e.into_error())),
                },
            }
        }
        // Connecting is rare (connections are pooled) and its future large:
        // boxed, so that every request's future (which hyper keeps per idle
        // HTTP/1 connection) does not carry it.
        let mut send = Box::pin(self.connect_h1(&Target::plain(target), false)).await?;
        let rsp = send.send_request(req).await.map_err(Error::from_hyper)?;
        Ok((rsp, Some(self.lend(target, send))))
    }

    fn lend(self: &Arc<Self>, target: SocketAddr, send: http1::SendRequest<Body>) -> Pooled {
        Pooled {
            pool: self.clone(),
            target,
            send,
        }
    }

    fn checkout_h1(&self, target: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let mut idle = lock(&self.h1_idle);
        let conns = idle.get_mut(&target)?;
        let now = Instant::now();
        while let Some(c) = conns.pop() {
            if !c.send.is_closed() && now.duration_since(c.since) < self.settings.idle_timeout {
                return Some(c.send);
            }
        }
        None
    }

    fn put_idle(&self, target: SocketAddr, send: http1::SendRequest<Body>) {
        if send.is_closed() {
            return;
        }
        let mut idle = lock(&self.h1_idle);
        let conns = idle.entry(target).or_default();
        if conns.len() < self.settings.max_idle_per_target {
            conns.push(Idle {
                send,
                since: Instant::now(),
            });
        }
    }

    /// Opens an HTTP/1 connection. With `upgrades`, the connection can be
    /// taken over by an `Upgrade`/`CONNECT` tunnel (and is never pooled).
    pub async fn connect_h1(
        &self,
        target: &Target,
        upgrades: bool,
    ) -> Result<http1::SendRequest<Body>, Error> {
        let (io, tcp) = self.open(target, |m| &m.client_http1).await?;
        let (send, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(Error::from_hyper)?;
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let ok = if upgrades {
                conn.with_upgrades().await.is_ok()
            } else {
                conn.await.is_ok()
            };
            metrics.tcp_closed(tcp, classification(ok));
        });
        Ok(send)
    }

    async fn send_h2(
        &self,
        target: &Target,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, Error> {
        let mut send = match self.cached_h2(target) {
            Some(send) => send,
            // Boxed: see send_h1.
            None => Box::pin(self.connect_h2(target)).await?,
        };
        match send.try_send_request(req).await {
            Ok(rsp) => Ok(rsp),
            Err(mut e) => match e.take_message() {
                // The shared connection was going away: open a new one.
                Some(unsent) => {
                    self.forget_h2(target);
                    let mut send = Box::pin(self.connect_h2(target)).await?;
                    send.send_request(unsent).await.map_err(Error::from_hyper)
                }
                None => Err(Error::from_hyper(e.into_error())),
            },
        }
    }

    fn cached_h2(&self, target: &Target) -> Option<http2::SendRequest<Body>> {
        let mut h2 = lock(&self.h2);
        let entry = h2.get_mut(target)?;
        let send = entry.send.as_ref().filter(|s| !s.is_closed())?.clone();
        entry.last_used = Some(Instant::now());
        Some(send)
    }

    fn forget_h2(&self, target: &Target) {
        if let Some(entry) = lock(&self.h2).get_mut(target) {
            entry.send = None;
        }
    }

    async fn connect_h2(&self, target: &Target) -> Result<http2::SendRequest<Body>, Error> {
        let connecting = lock(&self.h2)
            .entry(target.clone())
            .or_default()
            .connecting
            .clone();
        let _one_at_a_time = connecting.lock().await;
        if let Some(send) = self.cached_h2(target) {
            return Ok(send);
        }
        let (io, tcp) = self.open(target, |m| &m.client_h2).await?;
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(Error::from_hyper)?;
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let ok = conn.await.is_ok();
            metrics.tcp_closed(tcp, classification(ok));
        });
        let mut h2 = lock(&self.h2);
        let entry = h2.entry(target.clone()).or_default();
        entry.send = Some(send.clone());
        entry.last_used = Some(Instant::now());
        Ok(send)
    }

    /// Connects to a target: plain, or mesh TLS with the ALPN `config`
    /// picks when the target expects an identity.
    async fn open(
        &self,
        target: &Target,
        config: fn(&crate::tls::MeshTls) -> &Arc<rustls::ClientConfig>,
    ) -> Result<(TokioIo<Counted<Upstream>>, crate::metrics::TcpConn), Error> {
        let tls = match (&target.identity, &self.mesh) {
            (Some(id), Some(mesh)) => Some((config(mesh), id.as_ref())),
            _ => None,
        };
        let upstream = connect_upstream(target.addr, self.settings.connect_timeout, tls).await?;
        let conn = self.metrics.tcp_opened(TcpLabels {
            direction: self.direction,
            peer: Peer::Dst,
            tls: if matches!(upstream, Upstream::Tls(_)) {
                Tls::Yes
            } else {
                Tls::NoIdentity
            },
            target_addr: self.metrics.targets.value(&target.addr.to_string()),
        });
        Ok((
            TokioIo::new(Counted::new(upstream, conn.bytes.clone())),
            conn,
        ))
    }

    /// Closes idle connections past their idle timeout. Run periodically.
    pub fn sweep(&self) {
        let now = Instant::now();
        let timeout = self.settings.idle_timeout;
        lock(&self.h1_idle).retain(|_, conns| {
            conns.retain(|c| !c.send.is_closed() && now.duration_since(c.since) < timeout);
            !conns.is_empty()
        });
        lock(&self.h2).retain(|_, entry| {
            let fresh = entry
                .last_used
                .is_some_and(|t| now.duration_since(t) < timeout);
            if !fresh || entry.send.as_ref().is_some_and(|s| s.is_closed()) {
                entry.send = None;
            }
            entry.send.is_some() || Arc::strong_count(&entry.connecting) > 1
        });
    }

    /// Idle HTTP/1 connections and open HTTP/2 connections (for tests).
    pub fn idle_counts(&self) -> (usize, usize) {
        let h1 = lock(&self.h1_idle).values().map(Vec::len).sum();
        let h2 = lock(&self.h2).values().filter(|e| e.send.is_some()).count();
        (h1, h2)
    }
}

fn classification(ok: bool) -> Classification {
    if ok {
        Classification::Success
    } else {
        Classification::Failure
    }
}
