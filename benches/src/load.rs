//! Load generators: open-loop at a fixed rate (latency without coordinated
//! omission), and closed-loop at maximum throughput.

use std::net::SocketAddr;
use std::time::Duration;

use hdrhistogram::Histogram;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use weft_lab::client::{self, Conn};

/// What one call is.
#[derive(Clone, Copy, Debug)]
pub enum Workload {
    /// HTTP/1.1 GET of a small response, keep-alive.
    Http1Get,
    /// HTTP/2 (prior knowledge) GET of a small response, one connection per worker.
    Http2Get,
    /// 64 bytes written, 64 bytes echoed back, on a persistent TCP connection.
    TcpEcho,
    /// 1 MiB written while 1 MiB is echoed back (bulk throughput).
    TcpBulk,
    /// A new TCP connection per call: connect, 64 bytes echoed, close.
    /// Through mesh TLS, every call is one handshake.
    TcpConnect,
}

const BULK_SIZE: usize = 1024 * 1024;

const ECHO_SIZE: usize = 64;

enum Session {
    Http(Conn, SocketAddr),
    Tcp(TcpStream, Workload),
    Connect(SocketAddr),
}

impl Session {
    async fn open(addr: SocketAddr, workload: Workload) -> Result<Self, client::Error> {
        Ok(match workload {
            Workload::Http1Get => Session::Http(Conn::http1(addr).await?, addr),
            Workload::Http2Get => Session::Http(Conn::http2(addr).await?, addr),
            Workload::TcpConnect => Session::Connect(addr),
            Workload::TcpEcho | Workload::TcpBulk => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Session::Tcp(s, workload)
            }
        })
    }

    async fn call(&mut self) -> Result<(), client::Error> {
        match self {
            Session::Http(conn, addr) => {
                // HTTP/1.1 in origin form with Host (proxies that check
                // refuse a request without one); HTTP/2 with :authority.
                let req = match conn {
                    Conn::Http1(_) => Request::get("/hello")
                        .header(http::header::HOST, addr.to_string())
                        .version(http::Version::HTTP_11),
                    Conn::Http2(_) => {
                        Request::get(format!("http://{addr}/hello")).version(http::Version::HTTP_2)
                    }
                }
                .body(client::empty())?;
                let rsp = conn.fetch(req).await?;
                if !rsp.status().is_success() {
                    return Err(format!("status {}", rsp.status()).into());
                }
                Ok(())
            }
            Session::Tcp(s, Workload::TcpBulk) => {
                let out = vec![7u8; BULK_SIZE];
                let mut back = vec![0u8; BULK_SIZE];
                let (mut r, mut w) = s.split();
                tokio::try_join!(w.write_all(&out), r.read_exact(&mut back))?;
                Ok(())
            }
            Session::Tcp(s, _) => echo(s).await,
            Session::Connect(addr) => {
                let mut s = TcpStream::connect(*addr).await?;
                s.set_nodelay(true)?;
                echo(&mut s).await
            }
        }
    }
}

async fn echo(s: &mut TcpStream) -> Result<(), client::Error> {
    let msg = [7u8; ECHO_SIZE];
    s.write_all(&msg).await?;
    let mut back = [0u8; ECHO_SIZE];
    s.read_exact(&mut back).await?;
    Ok(())
}

/// Opens `n` connections to `addr` one after another, makes one call on
/// each, and returns them open with the number that failed; dropping them
/// closes them.
pub async fn hold_open(addr: SocketAddr, workload: Workload, n: usize) -> (Vec<Held>, usize) {
    let mut held = Vec::with_capacity(n);
    let mut errors = 0;
    for _ in 0..n {
        let opened = async {
            let mut s = Session::open(addr, workload).await?;
            s.call().await?;
            Ok::<_, client::Error>(s)
        };
        match opened.await {
            Ok(s) => held.push(Held(s)),
            Err(_) => errors += 1,
        }
    }
    (held, errors)
}

/// An open connection kept by [`hold_open`]; dropping it closes it.
pub struct Held(#[allow(dead_code)] Session);

/// What a run measured.
#[derive(Debug)]
pub struct Sample {
    /// Latency in microseconds.
    pub latency_us: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Sample {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// One connection's loop state: its session (reopened after an error) and
/// what it measured.
struct Worker {
    addr: SocketAddr,
    workload: Workload,
    session: Option<Session>,
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
}

impl Worker {
    async fn open(addr: SocketAddr, workload: Workload) -> Self {
        Self {
            addr,
            workload,
            session: Session::open(addr, workload).await.ok(),
            hist: histogram(),
            ok: 0,
            errors: 0,
        }
    }

    /// Makes one call and records its latency counted from `from`.
    async fn call(&mut self, from: Instant) {
        let result = match self.session.as_mut() {
            Some(s) => s.call().await,
            None => Err("no connection".into()),
        };
        match result {
            Ok(()) => self.ok += 1,
            Err(_) => {
                self.errors += 1;
                self.session = Session::open(self.addr, self.workload).await.ok();
            }
        }
        let _ = self.hist.record(from.elapsed().as_micros().max(1) as u64);
    }

    fn done(self) -> (Histogram<u64>, u64, u64) {
        (self.hist, self.ok, self.errors)
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Sends `rate` calls per second spread over `connections` connections for
/// `duration`. Each call has an intended start time; when the previous call
/// on its connection ran late, latency counts from the intended time (no
/// coordinated omission). A call that starts on time counts from when it
/// actually started, so timer granularity is not charged to the proxy.
pub async fn fixed_rate(
    addr: SocketAddr,
    workload: Workload,
    rate: u32,
    connections: usize,
    duration: Duration,
) -> Sample {
    let interval = Duration::from_secs_f64(connections as f64 / rate as f64);
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + duration;
    let workers: Vec<_> = (0..connections)
        .map(|k| {
            tokio::spawn(async move {
                let mut w = Worker::open(addr, workload).await;
                let mut intended = start + interval.mul_f64(k as f64 / connections as f64);
                while intended < end {
                    let now = Instant::now();
                    let from = if now > intended {
                        intended
                    } else {
                        tokio::time::sleep_until(intended).await;
                        Instant::now()
                    };
                    w.call(from).await;
                    intended += interval;
                }
                w.done()
            })
        })
        .collect();
    collect(workers, duration).await
}

/// Calls as fast as `connections` sequential clients can for `duration`.
pub async fn max_throughput(
    addr: SocketAddr,
    workload: Workload,
    connections: usize,
    duration: Duration,
) -> Sample {
    let end = Instant::now() + duration;
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            tokio::spawn(async move {
                let mut w = Worker::open(addr, workload).await;
                while Instant::now() < end {
                    w.call(Instant::now()).await;
                }
                w.done()
            })
        })
        .collect();
    collect(workers, duration).await
}

async fn collect(
    workers: Vec<tokio::task::JoinHandle<(Histogram<u64>, u64, u64)>>,
    duration: Duration,
) -> Sample {
    let mut sample = Sample {
        latency_us: histogram(),
        ok: 0,
        errors: 0,
        elapsed: duration,
    };
    for w in workers {
        if let Ok((h, ok, errors)) = w.await {
            let _ = sample.latency_us.add(&h);
            sample.ok += ok;
            sample.errors += errors;
        }
    }
    sample
}
