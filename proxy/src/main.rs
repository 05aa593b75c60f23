//! `weft-proxy`: configured by WEFT_PROXY_* variables (or --flags).

use std::process::ExitCode;

use weft_proxy::config::{self, Config, ConfigError, Env};
use weft_proxy::{Proxy, runtime};

mod await_ready;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("await-ready") {
        return await_ready::run(std::env::args().nth(2));
    }
    let config = match Config::from_args(std::env::args().skip(1), &Env) {
        Ok(c) => c,
        Err(ConfigError::Help) => {
            print!("{}", config::help());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("weft-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log).unwrap_or_else(|e| {
        eprintln!(
            "weft-proxy: WEFT_PROXY_LOG={:?} is not a log filter ({e}); using info",
            config.log
        );
        tracing_subscriber::EnvFilter::new("info")
    });
    // Colours only on a terminal: a pod's log is a file.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    runtime::raise_fd_limit();

    let cores = config.cores.unwrap_or_else(runtime::default_cores);
    // One core: everything on this thread, with no cross-thread wake-ups,
    // work stealing or atomics on the task queue (as Linkerd's proxy does).
    let mut builder = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cores).thread_name("weft-proxy");
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let proxy = match Proxy::bind(config).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            inbound = %proxy.inbound_addr(),
            outbound = %proxy.outbound_addr(),
            admin = %proxy.admin_addr(),
            cores,
            version = env!("CARGO_PKG_VERSION"),
            "weft-proxy starting"
        );
        let stopped = proxy.run(termination()).await;
        tracing::info!(cut_off = stopped.cut_off, "weft-proxy stopped");
        ExitCode::SUCCESS
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot listen for signals; only POST /shutdown stops the proxy");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
