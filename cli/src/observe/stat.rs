//! `weft stat` (golden metrics over a window) and `weft top` (the same,
//! refreshed in place).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use clap::Args;

use super::mesh::{Mesh, MeshArgs, Target};
use super::prom;
use super::stats::{self, Golden, Scrape, Stat};

/// What to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Resource {
    Deployments,
    Services,
    Routes,
    Edges,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct StatArgs {
    /// deployments (what each workload serves), services (what clients
    /// send each service), routes, edges (who calls whom), or all.
    #[arg(value_enum, default_value = "deployments")]
    pub resource: Resource,
    /// The window rates and percentiles are computed over.
    #[arg(long, default_value = "5s", value_parser = weft_proto::duration::parse)]
    pub window: Duration,
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Output,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

#[derive(Args, Debug)]
pub struct TopArgs {
    /// How often the view refreshes (and the window it shows).
    #[arg(long, default_value = "2s", value_parser = weft_proto::duration::parse)]
    pub interval: Duration,
    /// Stop after this many refreshes (default: until Ctrl-C).
    #[arg(long)]
    pub count: Option<u64>,
    /// Print each refresh below the last instead of redrawing the screen.
    #[arg(long)]
    pub plain: bool,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

/// Scrapes every target's /metrics; a pod that cannot be read is left out
/// (with a note on stderr).
pub async fn scrape(mesh: &Mesh, targets: &[Target]) -> Vec<Scrape> {
    let reads = targets.iter().map(|t| async move {
        match mesh.get(t, "/metrics").await {
            Ok(text) => Some(Scrape {
                pod: t.pod.clone(),
                samples: prom::parse(&text),
            }),
            Err(e) => {
                eprintln!("weft: skipping {}/{}: {e:#}", t.pod.namespace, t.pod.name);
                None
            }
        }
    });
    futures_util::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Golden metrics over `window`: two scrapes, that far apart.
pub async fn measure(mesh: &Mesh, window: Duration) -> anyhow::Result<Stat> {
    let targets = mesh.targets().await?;
    anyhow::ensure!(!targets.is_empty(), "no meshed pods found");
    let before = scrape(mesh, &targets).await;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let after = scrape(mesh, &targets).await;
    Ok(stats::compute(
        &before,
        &after,
        started.elapsed().as_secs_f64(),
        mesh.name(),
        now(),
    ))
}

pub fn run_stat(args: StatArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mesh = Mesh::open(&args.mesh).await?;
        let stat = measure(&mesh, args.window).await?;
        match args.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&stat)?),
            Output::Table => print!("{}", render(&stat, args.resource)),
        }
        Ok(())
    })
}

pub fn run_top(args: TopArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mesh = Mesh::open(&args.mesh).await?;
        let mut targets = mesh.targets().await?;
        let mut before = scrape(&mesh, &targets).await;
        let mut since = Instant::now();
        let mut shown = 0;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = tokio::time::sleep(args.interval) => {}
            }
            let after = scrape(&mesh, &targets).await;
            let stat = stats::compute(
                &before,
                &after,
                since.elapsed().as_secs_f64(),
                mesh.name(),
                now(),
            );
            let mut screen = String::new();
            if !args.plain {
                screen.push_str("\x1b[2J\x1b[H");
            }
            let _ = writeln!(
                screen,
                "weft top  mesh {}  {} pods  window {:.1}s  {}  (Ctrl-C quits)\n",
                stat.mesh,
                targets.len(),
                stat.window_seconds,
                stat.generated_at
            );
            screen.push_str(&render(&stat, Resource::All));
            print!("{screen}");
            shown += 1;
            if args.count.is_some_and(|c| shown >= c) {
                return Ok(());
            }
            // Pods come and go.
            targets = mesh.targets().await.unwrap_or(targets);
            before = after;
            since = Instant::now();
        }
    })
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}%", v * 100.0))
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}ms"))
}

/// Rows as aligned columns.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        let cells: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    };
    line(&mut out, header.to_vec());
    for r in &rows {
        line(&mut out, r.iter().map(String::as_str).collect());
    }
    out
}

fn golden_cells(g: &Golden) -> Vec<String> {
    vec![
        pct(g.success_rate),
        format!("{:.1}", g.rps),
        ms(g.p50_ms),
        ms(g.p95_ms),
        ms(g.p99_ms),
    ]
}

/// The tables `resource` asks for.
pub fn render(s: &Stat, resource: Resource) -> String {
    let golden = ["SUCCESS", "RPS", "P50", "P95", "P99"];
    let mut out = String::new();
    let want = |r| resource == r || resource == Resource::All;
    if want(Resource::Deployments) {
        let mut header = vec!["NAMESPACE", "DEPLOYMENT", "PODS"];
        header.extend(golden);
        header.push("MTLS");
        let rows = s
            .deployments
            .iter()
            .map(|d| {
                let mut r = vec![d.namespace.clone(), d.name.clone(), d.pods.to_string()];
                r.extend(golden_cells(&d.golden));
                r.push(pct(d.mtls_share));
                r
            })
            .collect();
        out.push_str(&table(&header, rows));
    }
    if want(Resource::Services) {
        out.push('\n');
        let mut header = vec!["NAMESPACE", "SERVICE"];
        header.extend(golden);
        let rows = s
            .services
            .iter()
            .map(|d| {
                let mut r = vec![d.namespace.clone(), d.name.clone()];
                r.extend(golden_cells(&d.golden));
                r
            })
            .collect();
        out.push_str(&table(&header, rows));
    }
    if want(Resource::Routes) {
        out.push('\n');
        let mut header = vec!["NAMESPACE", "SERVICE", "ROUTE"];
        header.extend(golden);
        let rows = s
            .routes
            .iter()
            .map(|d| {
                let mut r = vec![d.namespace.clone(), d.service.clone(), d.route.clone()];
                r.extend(golden_cells(&d.golden));
                r
            })
            .collect();
        out.push_str(&table(&header, rows));
    }
    if want(Resource::Edges) {
        out.push('\n');
        let mut header = vec!["FROM", "TO"];
        header.extend(golden);
        header.push("MTLS");
        let rows = s
            .edges
            .iter()
            .map(|e| {
                let mut r = vec![e.from.clone(), e.to.clone()];
                r.extend(golden_cells(&e.golden));
                r.push(if e.mtls { "yes" } else { "no" }.into());
                r
            })
            .collect();
        out.push_str(&table(&header, rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::stats::{EdgeRow, WorkloadRow};

    #[test]
    fn tables_align_and_say_dash_for_no_data() {
        let s = Stat {
            deployments: vec![WorkloadRow {
                namespace: "shop".into(),
                name: "frontend".into(),
                pods: 1,
                golden: Golden::default(),
                mtls_share: None,
            }],
            edges: vec![EdgeRow {
                from: "shop/frontend".into(),
                to: "shop/web-v1".into(),
                golden: Golden {
                    rps: 48.25,
                    success_rate: Some(0.99),
                    p50_ms: Some(1.25),
                    p95_ms: Some(3.0),
                    p99_ms: Some(9.5),
                },
                mtls: true,
            }],
            ..Default::default()
        };
        let t = render(&s, Resource::Deployments);
        assert_eq!(
            t,
            "NAMESPACE  DEPLOYMENT  PODS  SUCCESS  RPS  P50  P95  P99  MTLS\n\
             shop       frontend    1     -        0.0  -    -    -    -\n"
        );
        let e = render(&s, Resource::Edges);
        assert!(
            e.contains("shop/frontend  shop/web-v1  99.00%   48.2  1.2ms  3.0ms  9.5ms  yes"),
            "{e}"
        );
    }
}
