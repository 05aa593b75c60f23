//! What the load harness measures: each scenario is a workload over a
//! path, compared with the direct path of the same workload.

use crate::load::Workload;
use crate::peers::Peer;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Direct,
    OneHop,
    TwoHops,
    /// Two hops to the server's Service (cluster IP): discovery, route,
    /// split, P2C balancer and a RetryPolicy on the path.
    Routed,
    /// Two hops between proxies with identity: mutual TLS between them.
    TwoHopsTls,
    /// One hop through a peer proxy (HAProxy, nginx) configured as a
    /// reverse proxy in the client's pod, like weft's outbound hop.
    Peer(Peer),
    /// One hop through weft-proxy configured as the peers are: an explicit
    /// listener with a fixed destination, no iptables redirect.
    Explicit,
}

/// One configuration under test.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    /// The scenario whose latency this one's is compared with.
    pub baseline: &'static str,
    pub workload: Workload,
    pub path: Path,
}

const fn sc(
    name: &'static str,
    baseline: &'static str,
    workload: Workload,
    path: Path,
) -> Scenario {
    Scenario {
        name,
        baseline,
        workload,
        path,
    }
}

use Path::*;
use Workload::*;

pub const SCENARIOS: &[Scenario] = &[
    sc("http1 direct", "http1 direct", Http1Get, Direct),
    sc("http1 1 hop", "http1 direct", Http1Get, OneHop),
    sc("http1 1 hop explicit", "http1 direct", Http1Get, Explicit),
    sc(
        "http1 1 hop haproxy",
        "http1 direct",
        Http1Get,
        Peer(Peer::Haproxy),
    ),
    sc(
        "http1 1 hop nginx",
        "http1 direct",
        Http1Get,
        Peer(Peer::Nginx),
    ),
    sc("http1 2 hops", "http1 direct", Http1Get, TwoHops),
    sc("http1 2 hops routed", "http1 direct", Http1Get, Routed),
    sc("http1 2 hops mtls", "http1 direct", Http1Get, TwoHopsTls),
    sc("http2 direct", "http2 direct", Http2Get, Direct),
    sc("http2 1 hop", "http2 direct", Http2Get, OneHop),
    sc("http2 1 hop explicit", "http2 direct", Http2Get, Explicit),
    sc(
        "http2 1 hop haproxy",
        "http2 direct",
        Http2Get,
        Peer(Peer::Haproxy),
    ),
    sc(
        "http2 1 hop nginx",
        "http2 direct",
        Http2Get,
        Peer(Peer::Nginx),
    ),
    sc("http2 2 hops", "http2 direct", Http2Get, TwoHops),
    sc("http2 2 hops mtls", "http2 direct", Http2Get, TwoHopsTls),
    sc("tcp direct", "tcp direct", TcpEcho, Direct),
    sc("tcp 1 hop", "tcp direct", TcpEcho, OneHop),
    sc("tcp 1 hop explicit", "tcp direct", TcpEcho, Explicit),
    sc(
        "tcp 1 hop haproxy",
        "tcp direct",
        TcpEcho,
        Peer(Peer::Haproxy),
    ),
    sc("tcp 1 hop nginx", "tcp direct", TcpEcho, Peer(Peer::Nginx)),
    sc("tcp 2 hops", "tcp direct", TcpEcho, TwoHops),
    sc("tcp 2 hops mtls", "tcp direct", TcpEcho, TwoHopsTls),
    sc("connect direct", "connect direct", TcpConnect, Direct),
    sc("connect 2 hops", "connect direct", TcpConnect, TwoHops),
    sc(
        "connect 2 hops mtls",
        "connect direct",
        TcpConnect,
        TwoHopsTls,
    ),
    sc("bulk direct", "bulk direct", TcpBulk, Direct),
    sc("bulk 2 hops", "bulk direct", TcpBulk, TwoHops),
    sc("bulk 2 hops mtls", "bulk direct", TcpBulk, TwoHopsTls),
];

impl Scenario {
    pub fn is_tcp(&self) -> bool {
        matches!(self.workload, TcpEcho | TcpBulk | TcpConnect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_baseline_is_a_direct_scenario_of_the_same_workload() {
        for s in SCENARIOS {
            let base = SCENARIOS
                .iter()
                .find(|b| b.name == s.baseline)
                .unwrap_or_else(|| panic!("{}: no baseline {}", s.name, s.baseline));
            assert_eq!(base.path, Direct, "{}", s.name);
            assert_eq!(
                std::mem::discriminant(&base.workload),
                std::mem::discriminant(&s.workload),
                "{}",
                s.name
            );
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = SCENARIOS.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len());
    }
}
