//! `weft demo`: a whole mesh on one machine, no cluster. The real
//! controller (directory source: examples/shop plus a flaky pod) issues
//! identities and streams config; four pods run the real weft-proxy (as
//! network namespaces with weft-init's iptables rules when run as root,
//! else on loopback addresses); a load generator in `frontend` calls
//! `web`. Every second the terminal shows what each backend serves, the
//! success rate the frontend sees, latency, and retries, while a script
//! moves the TrafficSplit between versions. Everything started is removed
//! on exit, Ctrl-C or SIGTERM.
//!
//! ```text
//! mesh.rs      the pods: network namespaces or loopback, the same files and apps
//! scenario.rs  the timeline: which split when, and what to look for
//! load.rs      the frontend's load generator and its per-backend stats
//! view.rs      the table, redrawn in place (or printed line by line)
//! ```

mod load;
mod mesh;
mod scenario;
mod view;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use mesh::DemoMesh;
pub use mesh::Mode;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Requests per second the frontend sends.
    #[arg(long, default_value = "100")]
    pub rate: u32,
    /// Print one block per second instead of redrawing the screen (for logs).
    #[arg(long)]
    pub plain: bool,
    /// Seconds per step of the TrafficSplit script.
    #[arg(long, default_value = "15")]
    pub step: u64,
    /// How the pods are built: network namespaces with iptables (needs
    /// root), loopback addresses (needs nothing), or auto: namespaces when
    /// possible.
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: Mode,
}

const EXAMPLES: &[(&str, &str)] = &[
    (
        "namespace.yaml",
        include_str!("../../../examples/shop/namespace.yaml"),
    ),
    (
        "services.yaml",
        include_str!("../../../examples/shop/services.yaml"),
    ),
    (
        "pods.yaml",
        include_str!("../../../examples/shop/pods.yaml"),
    ),
    (
        "retry.yaml",
        include_str!("../../../examples/shop/retry.yaml"),
    ),
];

/// The demo's own pod: a second web v1 replica that fails on purpose.
const FLAKY_POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web-v1-b
  namespace: shop
  labels: {app: web, version: v1}
  annotations: {weft.dev/proxy-version: v0.1.0}
spec:
  serviceAccountName: web
  containers: [{name: web, image: web:v1, ports: [{name: http, containerPort: 8080}]}]
status: {phase: Running, podIP: 198.18.0.5}
";

/// Share of web-v1-b's answers that are 503s.
pub const FLAKY_RATIO: f64 = 0.3;

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let (mode, how) = DemoMesh::resolve(args.mode)?;
    // The proxy, init and controller binaries ship beside this one.
    let exe = std::env::current_exe().context("locating the weft binary")?;
    if let Some(dir) = exe.parent().filter(|d| d.join("weft-proxy").exists()) {
        // SAFETY: set before any thread of ours starts.
        unsafe { std::env::set_var("WEFT_BIN_DIR", dir) };
    }
    if std::env::var_os("WEFT_LAB_LOG").is_none() {
        // The pods' and controller's logs share the terminal with the view.
        // SAFETY: as above.
        unsafe { std::env::set_var("WEFT_LAB_LOG", "warn") };
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(demo(args, mode, how))
}

async fn demo(args: DemoArgs, mode: Mode, how: String) -> anyhow::Result<()> {
    let started = Instant::now();
    eprintln!("weft demo: starting the controller and four meshed pods on {how} ...");
    let mut files: Vec<(&str, String)> =
        EXAMPLES.iter().map(|(n, t)| (*n, t.to_string())).collect();
    files.push(("pods-demo.yaml", FLAKY_POD.to_string()));
    files.push(("split.yaml", scenario::STEPS[0].split_yaml()));
    let mesh = DemoMesh::start(mode, &files).await?;
    eprintln!(
        "weft demo: ready after {:.1}s; sending {} requests/s to web.shop ({})",
        started.elapsed().as_secs_f64(),
        args.rate,
        mesh.web_addr()
    );

    // For weft stat, top, tap and dashboard while the demo runs.
    let state_file = crate::observe::mesh::demo_state_path();
    std::fs::write(&state_file, serde_json::to_vec_pretty(&mesh.state())?)
        .with_context(|| format!("writing {}", state_file.display()))?;
    eprintln!(
        "weft demo: in another terminal, try `weft top`, `weft tap web-v1`, `weft stat edges` or `weft dashboard`"
    );

    let stats = Arc::new(load::Stats::default());
    let generator = mesh.spawn_load(args.rate, stats.clone());
    let outcome = scenario::play(&mesh, &args, &stats).await;
    generator.abort();
    let _ = std::fs::remove_file(&state_file);
    let inbound = mesh.inbound_requests().await;
    let summary = view::summary(&stats, &inbound);
    println!("{summary}");
    if inbound.is_ok_and(|(tls, all)| tls < all) {
        println!(
            "  not all mesh TLS; inbound series of the web pods:\n{}",
            mesh.plaintext_report().await
        );
    }
    drop(mesh);
    eprintln!("weft demo: stopped; every process (and namespace) it started is gone");
    outcome?;
    anyhow::ensure!(
        stats.total_ok() > 0,
        "no request succeeded: the mesh did not carry traffic"
    );
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
