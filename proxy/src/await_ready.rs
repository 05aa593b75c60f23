//! `weft-proxy await-ready [ADMIN_ADDR]`: waits until the proxy's `/ready`
//! answers 200. The injector runs it as the proxy container's postStart
//! hook in the classic (non-native sidecar) layout: the kubelet starts the
//! next container, the application, only once the hook has returned, so the
//! application never sends traffic before its proxy can carry it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Long enough for a first certificate and config on a busy node; a proxy
/// not ready by then is failing, and its probes say why.
const LIMIT: Duration = Duration::from_secs(120);

pub fn run(addr: Option<String>) -> ExitCode {
    let addr = addr.unwrap_or_else(|| "127.0.0.1:4191".into());
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("weft-proxy await-ready: '{addr}' is not an address: {e}");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    while start.elapsed() < LIMIT {
        if ready(addr).unwrap_or(false) {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("weft-proxy await-ready: {addr}/ready did not answer 200 within {LIMIT:?}");
    ExitCode::FAILURE
}

fn ready(addr: SocketAddr) -> std::io::Result<bool> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    Ok(head.starts_with(b"HTTP/1.1 200"))
}
