//! `weft identity`: the files the controller's identity service needs.
//!
//! - `init`: a new trust anchor (root, `ca.crt`/`ca.key`) and an issuer
//!   signed by it (`issuer.crt`/`issuer.key`).
//! - `issuer`: a new issuer signed by an existing anchor, for rotating the
//!   issuer without touching what proxies trust.
//! - `webhook`: a CA and the injector webhook's serving certificate
//!   (`ca.crt`, `tls.crt`, `tls.key`) for the chart.
//!
//! Keys are written with mode 0600; existing files are never overwritten.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use weft_controller::identity::ca::{self, CertAndKey};
use weft_proto::duration;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a trust anchor and an issuer signed by it.
    Init {
        /// Directory to write ca.crt, ca.key, issuer.crt and issuer.key to.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        common: Common,
        /// How long the trust anchor is valid.
        #[arg(long, default_value = "87600h", value_parser = duration::parse)]
        anchor_validity: Duration,
    },
    /// Create a new issuer signed by an existing trust anchor (rotation).
    Issuer {
        /// The trust anchor's certificate (PEM).
        #[arg(long)]
        anchor_cert: PathBuf,
        /// The trust anchor's private key (PEM).
        #[arg(long)]
        anchor_key: PathBuf,
        /// Directory to write issuer.crt and issuer.key to.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Create the injector webhook's serving certificate and the CA that
    /// signed it (the chart's webhook.caBundlePEM).
    Webhook {
        /// The namespace the controller runs in.
        #[arg(long, default_value = "weft")]
        namespace: String,
        /// The cluster's DNS domain.
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
        /// Directory to write ca.crt, tls.crt and tls.key to.
        #[arg(long)]
        out: PathBuf,
        /// How long the certificate is valid.
        #[arg(long, default_value = "8760h", value_parser = duration::parse)]
        validity: Duration,
    },
}

#[derive(Args, Debug)]
pub struct Common {
    /// The SPIFFE trust domain the certificates are for.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// How long the issuer is valid.
    #[arg(long, default_value = "8760h", value_parser = duration::parse)]
    issuer_validity: Duration,
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Webhook {
            namespace,
            cluster_domain,
            out,
            validity,
        } => webhook(&namespace, &cluster_domain, &out, validity),
        Command::Init {
            out,
            common,
            anchor_validity,
        } => {
            let anchor = ca::new_trust_anchor(&common.trust_domain, anchor_validity)?;
            let issuer = ca::new_issuer(&anchor, &common.trust_domain, common.issuer_validity)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            for name in ["ca.crt", "ca.key", "issuer.crt", "issuer.key"] {
                refuse_existing(&out.join(name))?;
            }
            write_pair(&out, "ca", &anchor)?;
            write_pair(&out, "issuer", &issuer)?;
            println!(
                "wrote {dir}/ca.crt (trust anchor: give it to the controller's --trust-anchors and to every proxy), \
                 {dir}/ca.key (keep offline), {dir}/issuer.crt and {dir}/issuer.key (the controller's --issuer-cert/--issuer-key)",
                dir = out.display()
            );
            Ok(())
        }
        Command::Issuer {
            anchor_cert,
            anchor_key,
            out,
            common,
        } => {
            let read = |p: &Path| {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
            };
            let anchor = CertAndKey {
                cert_pem: read(&anchor_cert)?,
                key_pem: read(&anchor_key)?,
            };
            let issuer = ca::new_issuer(&anchor, &common.trust_domain, common.issuer_validity)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            for name in ["issuer.crt", "issuer.key"] {
                refuse_existing(&out.join(name))?;
            }
            write_pair(&out, "issuer", &issuer)?;
            println!(
                "wrote {dir}/issuer.crt and {dir}/issuer.key; replace the controller's issuer files with them \
                 (it reloads them without a restart)",
                dir = out.display()
            );
            Ok(())
        }
    }
}

fn webhook(
    namespace: &str,
    cluster_domain: &str,
    out: &Path,
    validity: Duration,
) -> anyhow::Result<()> {
    let service = format!("weft-webhook.{namespace}.svc");
    let names = vec![service.clone(), format!("{service}.{cluster_domain}")];
    let (ca, serving) = ca::new_serving_pair("weft-webhook-ca", &names, validity)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for name in ["ca.crt", "tls.crt", "tls.key"] {
        refuse_existing(&out.join(name))?;
    }
    write(&out.join("ca.crt"), &ca.cert_pem, 0o644)?;
    write(&out.join("tls.crt"), &serving.cert_pem, 0o644)?;
    write(&out.join("tls.key"), &serving.key_pem, 0o600)?;
    println!(
        "wrote {dir}/tls.crt and {dir}/tls.key (the webhook's certificate for {service}) and {dir}/ca.crt          (the chart's webhook.caBundlePEM); the CA's key was not kept: make a new pair to renew",
        dir = out.display()
    );
    Ok(())
}

fn refuse_existing(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        bail!("{} exists; not overwriting it", path.display());
    }
    Ok(())
}

fn write_pair(dir: &Path, name: &str, pair: &CertAndKey) -> anyhow::Result<()> {
    write(&dir.join(format!("{name}.crt")), &pair.cert_pem, 0o644)?;
    write(&dir.join(format!("{name}.key")), &pair.key_pem, 0o600)
}

fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
