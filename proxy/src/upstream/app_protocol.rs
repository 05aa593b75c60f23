//! Which HTTP version the local application speaks, for inbound HTTP/2
//! requests.
//!
//! A client may speak HTTP/2 to an application that only knows HTTP/1.1
//! (its own proxy may have chosen HTTP/2, or the client simply prefers it).
//! Rather than fail, the inbound proxy asks the application once per port:
//! it opens a connection and sends the HTTP/2 preface and an empty SETTINGS
//! frame. An HTTP/2 server answers with its SETTINGS frame; anything else
//! (an HTTP/1 error, a close, silence) means HTTP/1.1. The answer is cached
//! for `ttl`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use http::Version;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::detect::H2_PREFACE;
use crate::upstream::Error;
use crate::upstream::connect::connect;

/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
const FRAME_TYPE_SETTINGS: u8 = 4;

#[derive(Debug)]
pub struct AppProtocols {
    connect_timeout: Duration,
    answer_timeout: Duration,
    ttl: Duration,
    known: Mutex<HashMap<SocketAddr, (Version, Instant)>>,
}

impl AppProtocols {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            answer_timeout: Duration::from_secs(1),
            ttl: Duration::from_secs(60),
            known: Mutex::default(),
        }
    }

    /// The version to speak to the application at `target`.
    pub async fn version(&self, target: SocketAddr) -> Result<Version, Error> {
        let now = Instant::now();
        if let Some(&(v, at)) = self.lock().get(&target)
            && now.duration_since(at) < self.ttl
        {
            return Ok(v);
        }
        let v = self.probe(target).await?;
        tracing::debug!(%target, version = ?v, "probed application protocol");
        self.lock().insert(target, (v, Instant::now()));
        Ok(v)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, (Version, Instant)>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn probe(&self, target: SocketAddr) -> Result<Version, Error> {
        let mut conn = connect(target, self.connect_timeout).await?;
        let mut hello = Vec::with_capacity(H2_PREFACE.len() + EMPTY_SETTINGS.len());
        hello.extend_from_slice(H2_PREFACE);
        hello.extend_from_slice(&EMPTY_SETTINGS);
        if conn.write_all(&hello).await.is_err() {
            return Ok(Version::HTTP_11);
        }
        let mut header = [0u8; 9];
        let answer = tokio::time::timeout(self.answer_timeout, conn.read_exact(&mut header)).await;
        let is_h2 = matches!(answer, Ok(Ok(_)))
            && header[3] == FRAME_TYPE_SETTINGS
            && header[5..9] == [0; 4];
        Ok(if is_h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        })
    }
}
