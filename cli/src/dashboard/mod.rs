//! `weft dashboard`: a web page (index.html, bundled into the binary) with
//! the mesh's service graph, per-workload, service and route tables, and
//! live tap. The server scrapes every proxy every two seconds and serves
//! golden metrics over a rolling window (`/api/stat`, the same computation
//! as `weft stat`) and the proxies' tap streams merged as Server-Sent
//! Events (`/api/tap`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::observe::mesh::{Mesh, MeshArgs};
use crate::observe::stat::{runtime, scrape};
use crate::observe::stats::{self, Scrape};

const PAGE: &str = include_str!("index.html");
const SCRAPE_EVERY: Duration = Duration::from_secs(2);

#[derive(Args, Debug)]
pub struct DashboardArgs {
    /// Where to serve the page.
    #[arg(long, default_value = "127.0.0.1:50750")]
    pub addr: SocketAddr,
    /// The window rates and percentiles are computed over.
    #[arg(long, default_value = "10s", value_parser = weft_proto::duration::parse)]
    pub window: Duration,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

type Body = BoxBody<Bytes, Infallible>;

struct State {
    mesh: Mesh,
    window: Duration,
    /// Recent scrapes, oldest first.
    scrapes: Mutex<VecDeque<(Instant, Vec<Scrape>)>>,
}

pub fn run(args: DashboardArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mesh = Mesh::open(&args.mesh).await?;
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.addr))?;
        let state = Arc::new(State {
            mesh,
            window: args.window,
            scrapes: Mutex::default(),
        });
        tokio::spawn(scrape_loop(state.clone()));
        eprintln!(
            "weft dashboard: the {} mesh at http://{}/ (Ctrl-C stops)",
            state.mesh.name(),
            listener.local_addr()?
        );
        loop {
            let (stream, _) = tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                a = listener.accept() => a?,
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

/// Scrapes every proxy every two seconds, keeping a window's worth.
async fn scrape_loop(state: Arc<State>) {
    let mut every = tokio::time::interval(SCRAPE_EVERY);
    loop {
        every.tick().await;
        let targets = match state.mesh.targets().await {
            Ok(t) => t,
            Err(e) => {
                eprintln!("weft dashboard: {e:#}");
                continue;
            }
        };
        let scraped = scrape(&state.mesh, &targets).await;
        let mut all = state.scrapes.lock().expect("not poisoned");
        all.push_back((Instant::now(), scraped));
        // Keep one scrape older than the window, to span it.
        while all.len() > 2 && all[1].0.elapsed() >= state.window {
            all.pop_front();
        }
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Full::new(body.into()).boxed())
        .expect("static response")
}

async fn handle(state: &State, req: Request<hyper::body::Incoming>) -> Response<Body> {
    if req.method() != http::Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match req.uri().path() {
        "/" | "/index.html" => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        "/api/stat" => stat(state),
        "/api/tap" => tap(state, req.uri().query().unwrap_or("")).await,
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

fn stat(state: &State) -> Response<Body> {
    let all = state.scrapes.lock().expect("not poisoned");
    let (Some((t0, before)), Some((t1, after))) = (all.front(), all.back()) else {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "warming up\n",
        );
    };
    if all.len() < 2 {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "warming up\n",
        );
    }
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let s = stats::compute(
        before,
        after,
        t1.duration_since(*t0).as_secs_f64(),
        state.mesh.name(),
        now,
    );
    reply(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec(&s).unwrap_or_default(),
    )
}

/// Every proxy's tap with the page's filters, as one event stream.
async fn tap(state: &State, query: &str) -> Response<Body> {
    let targets = match state.mesh.targets().await {
        Ok(t) => t,
        Err(e) => {
            return reply(StatusCode::BAD_GATEWAY, "text/plain", format!("{e:#}\n"));
        }
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut opened = 0;
    let mut last_error = None;
    for t in &targets {
        match state.mesh.tap(t, query).await {
            Ok(mut lines) => {
                opened += 1;
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Some(l) = lines.recv().await {
                        if tx.send(l).is_err() {
                            return;
                        }
                    }
                });
            }
            Err(e) => last_error = Some(format!("{e:#}")),
        }
    }
    if opened == 0 {
        let why = last_error.unwrap_or_else(|| "no meshed pods".into());
        return reply(StatusCode::BAD_GATEWAY, "text/plain", format!("{why}\n"));
    }
    drop(tx);
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        let event = Frame::data(Bytes::from(format!("data: {line}\n\n")));
        Some((Ok::<_, Infallible>(event), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(StreamBody::new(events).boxed())
        .expect("static response")
}
