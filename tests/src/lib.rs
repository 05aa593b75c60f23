//! Weft's test kit: network-namespace hosts ([`netns`]), meshed pods on
//! them ([`pod`]), a controller-driven mesh of them ([`mesh`]), the same mesh on loopback
//! addresses for machines without root ([`loopback`]), the applications tests put behind proxies ([`apps`]),
//! simple HTTP clients ([`client`]), the real binaries ([`bins`]) and a fake
//! Kubernetes API server speaking the real list/watch protocol ([`fake_api`]).
//! The end-to-end tests themselves are in `tests/tests/`.

pub mod abuse;
pub mod apps;
pub mod bins;
pub mod client;
pub mod fake_api;
pub mod loopback;
pub mod mesh;
pub mod netns;
pub mod otlp;
pub mod pod;
pub mod rogue;
pub mod yaml;

/// The gRPC echo service (tests/proto/echo.proto).
pub mod echo {
    tonic::include_proto!("weft.test.echo");
}

/// Says that a test skipped, where a reader of the test run sees it: on
/// the process's stderr itself, which the test harness does not capture
/// (it captures `eprintln!`, so a passing test's message would vanish).
pub fn skip_loudly(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED {message} ***\n");
}
