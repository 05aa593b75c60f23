//! `weft install`: the chart's manifests on stdout, for clusters without
//! Helm (`weft install ... | kubectl apply -f -`). Same templates, same
//! values, same schema as `helm install`; the namespace comes first.
//! Certificates that are not given are generated and kept ([`pki`]).

pub mod pki;

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use crate::chart::{self, Release, values};

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// The namespace to install the control plane into.
    #[arg(long, short = 'n', default_value = "weft")]
    pub namespace: String,
    /// A values file (repeatable; later ones win), as helm -f.
    #[arg(long = "values", short = 'f')]
    pub values: Vec<PathBuf>,
    /// key.path=value (repeatable), as helm --set.
    #[arg(long)]
    pub set: Vec<String>,
    /// key.path=FILE: the file's content as the value (repeatable), as
    /// helm --set-file; e.g. identity.trustAnchorsPEM=pki/ca.crt.
    #[arg(long)]
    pub set_file: Vec<String>,
    /// Leave the CRDs out (they are already installed).
    #[arg(long)]
    pub skip_crds: bool,
    /// Where the identity and webhook certificates that no value gives are
    /// kept: read from here when present, generated and written here when
    /// not. Default: ~/.config/weft/pki/<namespace>.
    #[arg(long, value_name = "DIR")]
    pub pki_dir: Option<PathBuf>,
}

/// The merged values: defaults, then files, then --set, then --set-file.
pub fn values_from(args: &InstallArgs) -> anyhow::Result<Value> {
    let mut v = chart::default_values();
    for f in &args.values {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let overlay: Value =
            serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
        chart::merge(&mut v, overlay);
    }
    for s in &args.set {
        let (path, value) = values::parse_set(s)?;
        chart::set_path(&mut v, &path, value)?;
    }
    for s in &args.set_file {
        let (path, file) = s
            .split_once('=')
            .ok_or_else(|| values::ValuesError::BadSet(s.clone()))?;
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("--set-file {path}: reading {file}"))?;
        chart::set_path(&mut v, path, Value::String(text))?;
    }
    Ok(v)
}

/// Everything `weft install` prints, and the note for stderr about the
/// certificates it generated or reused.
pub fn manifests(args: &InstallArgs) -> anyhow::Result<(String, Option<String>)> {
    let mut values = values_from(args)?;
    // A bad value is reported before any certificate is made.
    values::validate(&values)?;
    let dir = match &args.pki_dir {
        Some(d) => d.clone(),
        None => pki::default_dir(&args.namespace)?,
    };
    let (identity, webhook) = pki::fill_missing(&mut values, &dir, &args.namespace)?;
    let note = pki::note(&dir, identity, webhook);
    let release = Release {
        name: "weft".into(),
        namespace: args.namespace.clone(),
    };
    let mut all = vec![chart::Manifest {
        source: "weft install (namespace)".into(),
        text: format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n  labels:\n    app.kubernetes.io/part-of: weft\n",
            args.namespace
        ),
    }];
    if !args.skip_crds {
        all.extend(chart::crds());
    }
    all.extend(chart::render(&values, &release)?);
    Ok((chart::to_stream(&all), note))
}

pub fn run(args: InstallArgs) -> anyhow::Result<()> {
    let (manifests, note) = manifests(&args)?;
    print!("{manifests}");
    if let Some(note) = note {
        eprintln!("{note}");
    }
    Ok(())
}
