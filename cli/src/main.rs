//! `weft`: the mesh's command line.

use clap::{Parser, Subcommand};
use weft_cli::observe::{stat, tap};
use weft_cli::{check, dashboard, demo, identity, inject, install};

#[derive(Parser, Debug)]
#[command(name = "weft", version, about = "Weft service mesh command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a local mesh (controller, meshed pods, load) and show it live; no cluster needed.
    Demo(demo::DemoArgs),
    /// Print the control plane's manifests (the Helm chart, rendered) for kubectl apply.
    Install(install::InstallArgs),
    /// Add the sidecar to the workloads in a YAML file (or - for stdin).
    Inject(inject::InjectArgs),
    /// Remove the sidecar from the workloads in a YAML file (or - for stdin).
    Uninject(inject::UninjectArgs),
    /// Check that the cluster is ready for Weft (--pre) or that the mesh is healthy.
    Check(check::CheckArgs),
    /// Create the mesh's trust anchor, issuer, or the webhook's certificate.
    #[command(subcommand)]
    Identity(identity::Command),
    /// Golden metrics (success rate, RPS, latency, mTLS) per deployment, service, route or edge.
    Stat(stat::StatArgs),
    /// Golden metrics of the whole mesh, refreshed live.
    Top(stat::TopArgs),
    /// Live requests through the proxies, with filters.
    Tap(tap::TapArgs),
    /// Serve a web page with the service graph, golden metrics and live tap.
    Dashboard(dashboard::DashboardArgs),
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Check(a) => check::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Install(a) => install::run(a),
        Command::Inject(a) => inject::run_inject(a),
        Command::Uninject(a) => inject::run_uninject(a),
        Command::Identity(c) => identity::run(c),
        Command::Stat(a) => stat::run_stat(a),
        Command::Top(a) => stat::run_top(a),
        Command::Tap(a) => tap::run(a),
        Command::Dashboard(a) => dashboard::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
