//! Recovering where a redirected connection was going.
//!
//! iptables' REDIRECT rewrites the destination to the proxy's listener;
//! conntrack remembers the original, which `SO_ORIGINAL_DST` (IPv4) and
//! `IP6T_SO_ORIGINAL_DST` (IPv6) return. Tests inject [`Fixed`] instead.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

/// Finds the original destination of an accepted connection.
pub trait OrigDst: std::fmt::Debug + Send + Sync + 'static {
    fn orig_dst(&self, conn: &TcpStream) -> io::Result<SocketAddr>;
}

/// The kernel's record, via `SO_ORIGINAL_DST`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SoOriginalDst;

impl OrigDst for SoOriginalDst {
    fn orig_dst(&self, conn: &TcpStream) -> io::Result<SocketAddr> {
        let local = conn.local_addr()?;
        let addr = match local {
            SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_none() => {
                let sa = getsockopt(conn, sockopt::Ip6tOriginalDst).map_err(io::Error::from)?;
                SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sa.sin6_addr.s6_addr),
                    u16::from_be(sa.sin6_port),
                    sa.sin6_flowinfo,
                    sa.sin6_scope_id,
                ))
            }
            _ => {
                let sa = getsockopt(conn, sockopt::OriginalDst).map_err(io::Error::from)?;
                SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                    u16::from_be(sa.sin_port),
                ))
            }
        };
        // Without a REDIRECT the "original" destination is the listener
        // itself; forwarding there would loop.
        if same_socket(addr, local) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "connection was not redirected (its destination is the proxy's own listener)",
            ));
        }
        Ok(addr)
    }
}

fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |ip: IpAddr| ip.to_canonical();
    a.port() == b.port() && canon(a.ip()) == canon(b.ip())
}

/// Every connection "was going" to one address: for tests and for running
/// the proxy in front of a single upstream without iptables.
#[derive(Clone, Copy, Debug)]
pub struct Fixed(pub SocketAddr);

impl OrigDst for Fixed {
    fn orig_dst(&self, _: &TcpStream) -> io::Result<SocketAddr> {
        Ok(self.0)
    }
}

pub type SharedOrigDst = Arc<dyn OrigDst>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unredirected_connections_are_refused_not_looped() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        // No iptables rule redirected this connection: the kernel either has
        // no record (ENOENT) or reports the listener itself.
        assert!(SoOriginalDst.orig_dst(&accepted).is_err());
    }

    #[test]
    fn mapped_and_plain_v4_are_the_same_socket() {
        let a: SocketAddr = "127.0.0.1:4140".parse().unwrap();
        let b: SocketAddr = "[::ffff:127.0.0.1]:4140".parse().unwrap();
        assert!(same_socket(a, b));
        assert!(!same_socket(a, "127.0.0.1:4141".parse().unwrap()));
    }
}
