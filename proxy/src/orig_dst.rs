//! Recovering where an accepted connection was going.
//!
//! In a pod, iptables' REDIRECT rewrites the destination to the proxy's
//! listener; conntrack remembers the original, which `SO_ORIGINAL_DST`
//! (IPv4) and `IP6T_SO_ORIGINAL_DST` (IPv6) return. Without iptables (the
//! loopback demo, a proxy in front of one upstream) a listener can instead
//! be told that everything it accepts was going to one address.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

/// How one listener learns its connections' original destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OrigDst {
    /// The kernel's record of the iptables redirect (the default).
    #[default]
    Redirected,
    /// Every connection was going to this address.
    Fixed(SocketAddr),
}

impl OrigDst {
    pub fn of(&self, conn: &TcpStream) -> io::Result<SocketAddr> {
        match self {
            OrigDst::Redirected => redirected(conn),
            OrigDst::Fixed(addr) => Ok(*addr),
        }
    }

    /// `redirect`, or an IP:PORT for [`OrigDst::Fixed`].
    pub fn parse(value: &str) -> Result<Self, std::net::AddrParseError> {
        match value.trim() {
            "" | "redirect" => Ok(OrigDst::Redirected),
            addr => addr.parse().map(OrigDst::Fixed),
        }
    }
}

fn redirected(conn: &TcpStream) -> io::Result<SocketAddr> {
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

fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |ip: IpAddr| ip.to_canonical();
    a.port() == b.port() && canon(a.ip()) == canon(b.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn accepted() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (listener.accept().await.unwrap().0, client)
    }

    #[tokio::test]
    async fn unredirected_connections_are_refused_not_looped() {
        let (accepted, _client) = accepted().await;
        // No iptables rule redirected this connection: the kernel either has
        // no record (ENOENT) or reports the listener itself.
        assert!(OrigDst::Redirected.of(&accepted).is_err());
    }

    #[tokio::test]
    async fn a_fixed_listener_reports_its_address_for_every_connection() {
        let (accepted, _client) = accepted().await;
        let to: SocketAddr = "127.0.0.9:8080".parse().unwrap();
        assert_eq!(OrigDst::Fixed(to).of(&accepted).unwrap(), to);
    }

    #[test]
    fn parses_redirect_or_an_address() {
        assert_eq!(OrigDst::parse("redirect").unwrap(), OrigDst::Redirected);
        assert_eq!(OrigDst::parse("").unwrap(), OrigDst::Redirected);
        assert_eq!(
            OrigDst::parse("198.19.0.10:80").unwrap(),
            OrigDst::Fixed("198.19.0.10:80".parse().unwrap())
        );
        assert!(OrigDst::parse("web:80").is_err());
    }

    #[test]
    fn mapped_and_plain_v4_are_the_same_socket() {
        let a: SocketAddr = "127.0.0.1:4140".parse().unwrap();
        let b: SocketAddr = "[::ffff:127.0.0.1]:4140".parse().unwrap();
        assert!(same_socket(a, b));
        assert!(!same_socket(a, "127.0.0.1:4141".parse().unwrap()));
    }
}
