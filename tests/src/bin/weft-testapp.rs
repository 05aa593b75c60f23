//! `weft-testapp`: the application the container and cluster suites run in
//! pods, from the `weft-testapp` image. It knows nothing of the mesh.
//!
//! - `serve`: the test kit's HTTP app ([`weft_tests::apps::http_app_with`]):
//!   `/hello` names the pod and echoes what the proxy said of the client.
//! - `load`: calls a URL at a steady rate and counts the answers per
//!   backend, per status and per client identity the backends saw; `GET
//!   /stats` on its own port shows them as JSON, `POST /reset` starts over.
//! - `call`: N requests, then exit 0 if every one succeeded (a Job).
//! - `pause`: the pod sandbox's process (podman's infra containers and the
//!   local cluster's pause image); also what `/pause`, a link to this
//!   binary in the image, runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use weft_tests::apps::{self, Behaviour, HttpVersions};
use weft_tests::client::{self, Conn};

#[derive(Parser)]
#[command(name = "weft-testapp", about = "Weft's test application")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the test HTTP app.
    Serve {
        #[arg(long, default_value = "0.0.0.0:8080")]
        addr: SocketAddr,
        /// The name answers carry (x-app-name); default: $POD_NAME, then $HOSTNAME.
        #[arg(long)]
        name: Option<String>,
        /// Share of /hello answered 503 on purpose.
        #[arg(long, default_value_t = 0.0)]
        fail_ratio: f64,
    },
    /// Call a URL at a steady rate and count the answers.
    Load {
        /// e.g. http://web.shop.svc.cluster.local/hello
        #[arg(long)]
        url: String,
        /// Requests per second.
        #[arg(long, default_value_t = 20)]
        rate: u32,
        /// Where /stats and /reset are served.
        #[arg(long, default_value = "0.0.0.0:9000")]
        listen: SocketAddr,
    },
    /// Make COUNT requests; exit 0 only if every one got a 2xx.
    Call {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 10)]
        count: u32,
    },
    /// Sleep until SIGTERM or SIGINT.
    Pause,
}

fn main() -> std::process::ExitCode {
    let invoked_as_pause = std::env::args_os()
        .next()
        .is_some_and(|a| std::path::Path::new(&a).file_name() == Some("pause".as_ref()));
    let cli = if invoked_as_pause {
        Cli {
            command: Command::Pause,
        }
    } else {
        Cli::parse()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve {
                addr,
                name,
                fail_ratio,
            } => serve(addr, name, fail_ratio).await,
            Command::Load { url, rate, listen } => load(url, rate, listen).await,
            Command::Call { url, count } => call(url, count).await,
            Command::Pause => {
                terminated().await;
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-testapp: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn serve(addr: SocketAddr, name: Option<String>, fail_ratio: f64) -> Result<(), Error> {
    let name = name
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "weft-testapp".into());
    let name: &'static str = Box::leak(name.into_boxed_str());
    let behaviour = Behaviour {
        fail_ratio,
        ..Behaviour::default()
    };
    let bound = apps::http_app_with(addr, name, HttpVersions::Both, behaviour).await?;
    eprintln!("weft-testapp: {name} serving on {bound}");
    terminated().await;
    Ok(())
}

/// A parsed `http://host[:port]/path` URL.
struct Target {
    host: String,
    port: u16,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, Error> {
        let rest = url
            .strip_prefix("http://")
            .ok_or("only http:// URLs (the mesh adds TLS)")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse()?),
            None => (authority.to_string(), 80),
        };
        Ok(Target { host, port, path })
    }

    async fn resolve(&self) -> Result<SocketAddr, Error> {
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .next()
            .ok_or_else(|| format!("{} has no address", self.host).into())
    }

    fn request(&self) -> Request<client::Body> {
        Request::get(&self.path)
            .header(http::header::HOST, &self.host)
            .body(client::empty())
            .expect("a valid request")
    }
}

/// One answer, as counted.
struct Answer {
    status: u16,
    backend: String,
    client_id: String,
}

/// Sends one request on `conn`, opening a connection first when needed
/// (kept alive between requests, as an app's HTTP client does).
async fn once(target: &Target, conn: &mut Option<Conn>) -> Result<Answer, Error> {
    if conn.as_ref().is_none_or(Conn::is_closed) {
        *conn = Some(Conn::http1(target.resolve().await?).await?);
    }
    let c = conn.as_mut().expect("connected");
    let rsp = match c.fetch(target.request()).await {
        Ok(rsp) => rsp,
        Err(e) => {
            *conn = None;
            return Err(e);
        }
    };
    let header = |name: &str| {
        rsp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    Ok(Answer {
        status: rsp.status().as_u16(),
        backend: header("x-app-name"),
        client_id: header("x-app-saw-client-id"),
    })
}

#[derive(Default)]
struct Stats {
    total: u64,
    ok: u64,
    failed: u64,
    by_backend: BTreeMap<String, u64>,
    by_status: BTreeMap<String, u64>,
    by_client_id: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

impl Stats {
    fn count(&mut self, result: Result<Answer, Error>) {
        self.total += 1;
        match result {
            Ok(a) => {
                if (200..300).contains(&a.status) {
                    self.ok += 1;
                } else {
                    self.failed += 1;
                }
                *self.by_status.entry(a.status.to_string()).or_default() += 1;
                *self.by_backend.entry(a.backend).or_default() += 1;
                *self.by_client_id.entry(a.client_id).or_default() += 1;
            }
            Err(e) => {
                self.failed += 1;
                *self.errors.entry(e.to_string()).or_default() += 1;
            }
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "total": self.total, "ok": self.ok, "failed": self.failed,
            "byBackend": self.by_backend, "byStatus": self.by_status,
            "byClientId": self.by_client_id, "errors": self.errors,
        })
    }
}

async fn load(url: String, rate: u32, listen: SocketAddr) -> Result<(), Error> {
    let target = Target::parse(&url)?;
    let stats = Arc::new(Mutex::new(Stats::default()));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tokio::spawn(serve_stats(listener, stats.clone()));
    eprintln!("weft-testapp: calling {url} {rate} times a second; stats on {listen}");
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = terminated() => return Ok(()),
        }
        let result = tokio::time::timeout(Duration::from_secs(10), once(&target, &mut conn))
            .await
            .unwrap_or_else(|_| Err("timed out after 10 s".into()));
        if result.is_err() {
            conn = None;
        }
        stats.lock().unwrap().count(result);
    }
}

async fn serve_stats(listener: tokio::net::TcpListener, stats: Arc<Mutex<Stats>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let stats = stats.clone();
                async move {
                    let mut st = stats.lock().unwrap();
                    let (code, body) = match (req.method().as_str(), req.uri().path()) {
                        ("GET", "/stats") => (StatusCode::OK, st.json().to_string()),
                        ("POST", "/reset") => {
                            *st = Stats::default();
                            (StatusCode::OK, "{}".to_string())
                        }
                        _ => (
                            StatusCode::NOT_FOUND,
                            "{\"error\":\"GET /stats or POST /reset\"}".into(),
                        ),
                    };
                    let rsp = Response::builder()
                        .status(code)
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(Full::new(Bytes::from(body)))
                        .expect("a valid response");
                    Ok::<_, std::convert::Infallible>(rsp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn call(url: String, count: u32) -> Result<(), Error> {
    let target = Target::parse(&url)?;
    let mut stats = Stats::default();
    let mut conn = None;
    for _ in 0..count {
        stats.count(once(&target, &mut conn).await);
    }
    println!("{}", stats.json());
    if stats.ok == u64::from(count) {
        Ok(())
    } else {
        Err(format!("{} of {count} requests failed", stats.failed).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let t = Target::parse("http://web.shop.svc.cluster.local/hello").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("web.shop.svc.cluster.local", 80, "/hello")
        );
        let t = Target::parse("http://10.0.0.1:8080").unwrap();
        assert_eq!((t.port, t.path.as_str()), (8080, "/"));
        assert!(Target::parse("https://x/").is_err());
    }

    #[test]
    fn answers_are_counted_by_backend_status_and_client() {
        let mut s = Stats::default();
        let answer = |status, backend: &str| -> Result<Answer, Error> {
            Ok(Answer {
                status,
                backend: backend.into(),
                client_id: "spiffe://cluster.local/ns/shop/sa/load".into(),
            })
        };
        s.count(answer(200, "web-a"));
        s.count(answer(503, "web-b"));
        s.count(Err("connection refused".into()));
        let j = s.json();
        assert_eq!(
            (j["total"].as_u64(), j["ok"].as_u64(), j["failed"].as_u64()),
            (Some(3), Some(1), Some(2))
        );
        assert_eq!(j["byBackend"]["web-a"], 1);
        assert_eq!(j["byStatus"]["503"], 1);
        assert_eq!(j["byClientId"]["spiffe://cluster.local/ns/shop/sa/load"], 2);
        assert_eq!(j["errors"]["connection refused"], 1);
    }
}
