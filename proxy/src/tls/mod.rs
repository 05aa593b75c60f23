//! Mesh TLS: mutual TLS 1.3 between proxies, with workload identities as
//! SPIFFE IDs (verified by `weft_proto::mesh_tls`, shared with the
//! controller) and ALPN saying what the connection carries
//! ([`client_hello`] tells mesh TLS from an application's own).
//!
//! The wire between two proxies:
//!
//! - TLS 1.3, both sides presenting their workload certificate; key
//!   exchange offers the post-quantum hybrid X25519MLKEM768 first.
//! - SNI: the identity the client expects of the server, as
//!   `<sa>.<ns>.serviceaccount.identity.<trust-domain>`.
//! - ALPN `weft.h2`: HTTP over HTTP/2, multiplexed. Requests the client
//!   application sent as HTTP/1 carry `weft-orig-proto: HTTP/1.1` and are
//!   turned back into HTTP/1.1 on the server side.
//! - ALPN `weft.http1`: HTTP/1.1 that switches protocol (WebSocket,
//!   CONNECT), which HTTP/2 cannot carry.
//! - ALPN `weft.tcp`: opaque bytes (opaque TCP, and applications' own TLS).
//!
//! The target port is the connection's original destination (the server
//! pod's iptables redirect it to its proxy), so no header carries it.

pub mod accept;
pub mod client_hello;

pub const ALPN_H2: &[u8] = b"weft.h2";
pub const ALPN_HTTP1: &[u8] = b"weft.http1";
pub const ALPN_TCP: &[u8] = b"weft.tcp";
pub const MESH_ALPNS: [&[u8]; 3] = [ALPN_H2, ALPN_HTTP1, ALPN_TCP];

/// Marks requests the client sent as HTTP/1 when they cross on HTTP/2.
pub const ORIG_PROTO_HEADER: &str = "weft-orig-proto";
/// The authenticated client identity, as the inbound proxy tells the app.
pub const CLIENT_ID_HEADER: &str = "x-weft-client-id";

use std::sync::Arc;

use rustls::{ClientConfig, ServerConfig};
use weft_proto::mesh_tls::{ClientVerifier, ServerVerifier};

use crate::identity::LocalIdentity;
use crate::io::{Counted, PrefixedIo};

/// An accepted connection with mesh TLS terminated over it.
pub type ServerTls = tokio_rustls::server::TlsStream<PrefixedIo<Counted<tokio::net::TcpStream>>>;

/// The TLS configs of mesh TLS, built once: the certificate inside is read
/// per handshake, so renewals need no rebuild.
#[derive(Debug, Clone)]
pub struct MeshTls {
    pub identity: Arc<LocalIdentity>,
    pub server: Arc<rustls::ServerConfig>,
    pub client_h2: Arc<rustls::ClientConfig>,
    pub client_http1: Arc<rustls::ClientConfig>,
    pub client_tcp: Arc<rustls::ClientConfig>,
}

impl MeshTls {
    pub fn new(identity: Arc<LocalIdentity>) -> Self {
        Self {
            server: server_config(&identity),
            client_h2: client_config(&identity, ALPN_H2),
            client_http1: client_config(&identity, ALPN_HTTP1),
            client_tcp: client_config(&identity, ALPN_TCP),
            identity,
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // aws-lc-rs's defaults offer X25519MLKEM768 (post-quantum hybrid) first.
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server side of mesh TLS: mutual TLS 1.3, mesh ALPNs only.
fn server_config(identity: &Arc<LocalIdentity>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported")
        .with_client_cert_verifier(Arc::new(ClientVerifier(identity.anchors.clone())))
        .with_cert_resolver(identity.clone());
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec(), ALPN_TCP.to_vec()];
    Arc::new(config)
}

/// The client side of mesh TLS, offering `alpn`.
fn client_config(identity: &Arc<LocalIdentity>, alpn: &[u8]) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerVerifier(identity.anchors.clone())))
        .with_client_cert_resolver(identity.clone());
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// Whether a ClientHello asks for mesh TLS.
pub fn is_mesh(hello: &client_hello::Hello) -> bool {
    hello
        .alpn
        .iter()
        .any(|a| MESH_ALPNS.contains(&a.as_slice()))
}
