//! Hosts for running Weft without a cluster, shared by `weft demo`, the
//! benchmarks and the tests: network-namespace hosts ([`netns`]), meshed
//! pods on them ([`pod`]), a controller-driven mesh of them ([`mesh`]), the
//! same mesh on loopback addresses for machines without root
//! ([`loopback`]), the applications put behind the proxies ([`apps`]),
//! simple HTTP clients ([`client`]), the workspace's binaries ([`bins`]) and
//! Kubernetes objects as YAML for the directory source ([`yaml`]). What only
//! tests need (a fake API server, hostile clients, rogue peers) is in
//! `weft-tests`.

pub mod apps;
pub mod bins;
pub mod client;
pub mod loopback;
pub mod mesh;
pub mod netns;
pub mod pod;
pub mod yaml;

/// The gRPC echo service (lab/proto/echo.proto).
pub mod echo {
    tonic::include_proto!("weft.test.echo");
}

/// Says that something was skipped, where a reader of a test run sees it:
/// on the process's stderr itself, which the test harness does not
/// capture (it captures `eprintln!`, so a passing test's message would
/// vanish).
pub fn skip_loudly(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED {message} ***\n");
}
