//! Where the proxy listens, and how each listener learns where its
//! connections were going.

use std::net::SocketAddr;

use super::ConfigError;
use super::settings::Vars;
use crate::orig_dst::OrigDst;

#[derive(Clone, Debug, PartialEq)]
pub struct Listeners {
    /// Redirected inbound traffic (`WEFT_PROXY_INBOUND_ADDR`).
    pub inbound_addr: SocketAddr,
    /// Redirected outbound traffic (`WEFT_PROXY_OUTBOUND_ADDR`).
    pub outbound_addr: SocketAddr,
    /// The outbound listener for IPv6 (`[::1]:4140` in a dual-stack pod);
    /// the IPv4 one stays on loopback.
    pub outbound_ipv6_addr: Option<SocketAddr>,
    /// How each listener finds its connections' original destination: the
    /// iptables redirect's record, or a fixed address (no iptables).
    pub inbound_orig_dst: OrigDst,
    pub outbound_orig_dst: OrigDst,
    /// Health, metrics, config, identity, tap, shutdown.
    pub admin_addr: SocketAddr,
}

impl Listeners {
    pub(super) fn load(v: &Vars) -> Result<Self, ConfigError> {
        Ok(Self {
            inbound_addr: v.addr("WEFT_PROXY_INBOUND_ADDR")?,
            outbound_addr: v.addr("WEFT_PROXY_OUTBOUND_ADDR")?,
            outbound_ipv6_addr: v.opt_addr("WEFT_PROXY_OUTBOUND_IPV6_ADDR")?,
            inbound_orig_dst: v.orig_dst("WEFT_PROXY_INBOUND_ORIG_DST")?,
            outbound_orig_dst: v.orig_dst("WEFT_PROXY_OUTBOUND_ORIG_DST")?,
            admin_addr: v.addr("WEFT_PROXY_ADMIN_ADDR")?,
        })
    }
}
