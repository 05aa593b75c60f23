//! `weft inject FILE|-` and `weft uninject FILE|-`: the same change the
//! webhook makes, applied to workloads in YAML (Deployments, StatefulSets,
//! DaemonSets, ReplicaSets, Jobs, CronJobs, Pods, and Lists of them).
//! Documents without a workload come out byte for byte; running it twice
//! changes nothing the second time.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use weft_controller::inject::{self, InjectorConfig, NativeSidecars, workload};

#[derive(Args, Debug)]
pub struct InjectArgs {
    /// YAML file, or `-` for stdin.
    pub file: PathBuf,
    /// The injector settings (the chart's weft-injector ConfigMap's
    /// config.yaml); defaults to the chart's defaults.
    #[arg(long)]
    pub injector_config: Option<PathBuf>,
    /// Trust anchors (PEM) the proxies verify peers with; without them the
    /// proxies run without mesh identity.
    #[arg(long)]
    pub trust_anchors: Option<PathBuf>,
    /// The mesh's SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// The namespace the controller runs in.
    #[arg(long, default_value = "weft")]
    pub controller_namespace: String,
    /// Native sidecars (Kubernetes >= 1.29): auto (= always, offline), always, never.
    #[arg(long)]
    pub native_sidecars: Option<NativeSidecars>,
}

#[derive(Args, Debug)]
pub struct UninjectArgs {
    /// YAML file, or `-` for stdin.
    pub file: PathBuf,
}

fn read_input(file: &PathBuf) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    }
}

/// The injector config as the webhook would have it.
pub fn config(args: &InjectArgs) -> anyhow::Result<InjectorConfig> {
    let mut config = match &args.injector_config {
        Some(p) => InjectorConfig::load(p).map_err(anyhow::Error::msg)?,
        None => InjectorConfig::default(),
    };
    if let Some(n) = args.native_sidecars {
        config.native_sidecars = n;
    }
    let anchors = match &args.trust_anchors {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => {
            eprintln!(
                "weft inject: no --trust-anchors: the proxies will run without mesh identity (plaintext)"
            );
            None
        }
    };
    config.complete(&args.trust_domain, &args.controller_namespace, anchors);
    Ok(config)
}

/// Injects every workload in `text`; returns the new text and a report line
/// per workload.
pub fn inject_text(text: &str, config: &InjectorConfig) -> anyhow::Result<(String, Vec<String>)> {
    let layout = config.native_sidecars.layout(None);
    let ns = workload::no_namespace();
    let (out, outcomes) = workload::edit_documents(text, |pod| {
        if inject::decide::already_injected(pod) {
            return Ok(Some("already injected".into()));
        }
        if pod["spec"]["hostNetwork"].as_bool() == Some(true) {
            return Ok(Some("uses the host network".into()));
        }
        inject::inject(pod, config, layout, &ns).map_err(|e| e.to_string())?;
        Ok(None)
    })?;
    Ok((out, report(&outcomes, "injected")))
}

/// Removes the sidecar from every workload in `text`.
pub fn uninject_text(text: &str) -> anyhow::Result<(String, Vec<String>)> {
    let (out, outcomes) = workload::edit_documents(text, |pod| {
        Ok(if inject::uninject(pod) {
            None
        } else {
            Some("not injected".into())
        })
    })?;
    Ok((out, report(&outcomes, "uninjected")))
}

fn report(outcomes: &[workload::Outcome], done: &str) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match &o.skipped {
            None => format!("{} {done}", o.workload.to_lowercase()),
            Some(why) => format!("{} skipped: {why}", o.workload.to_lowercase()),
        })
        .collect()
}

pub fn run_inject(args: InjectArgs) -> anyhow::Result<()> {
    let text = read_input(&args.file)?;
    let (out, report) = inject_text(&text, &config(&args)?)?;
    print!("{out}");
    for line in report {
        eprintln!("{line}");
    }
    Ok(())
}

pub fn run_uninject(args: UninjectArgs) -> anyhow::Result<()> {
    let text = read_input(&args.file)?;
    let (out, report) = uninject_text(&text)?;
    print!("{out}");
    for line in report {
        eprintln!("{line}");
    }
    Ok(())
}
