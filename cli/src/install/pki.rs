//! The certificates `weft install` needs when none are given: the mesh's
//! trust anchor and issuer, and the injector webhook's serving pair.
//!
//! Like `linkerd install`, a bare `weft install` works: what is missing is
//! generated. Unlike it, what was generated is kept in a directory
//! (`--pki-dir`, by default `~/.config/weft/pki/<namespace>`) and reused by
//! the next `weft install`, so an upgrade keeps the identity every proxy
//! trusts. The directory has the layout of `weft identity init --out DIR`
//! plus `weft identity webhook --out DIR/webhook`, so files made by hand fit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use weft_controller::identity::ca::{self, CertAndKey};

/// Trust anchor, issuer and webhook validity when generated here (those of
/// `weft identity init` and `weft identity webhook`).
const ANCHOR_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const ISSUER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
const WEBHOOK_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

const IDENTITY_FILES: [&str; 4] = ["ca.crt", "ca.key", "issuer.crt", "issuer.key"];
const WEBHOOK_FILES: [&str; 3] = ["ca.crt", "tls.crt", "tls.key"];

/// Where the certificates of an install into `namespace` are kept by
/// default: `$XDG_CONFIG_HOME/weft/pki/<namespace>` (or `~/.config/...`).
pub fn default_dir(namespace: &str) -> anyhow::Result<PathBuf> {
    let base = match (
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    ) {
        (Some(x), _) if !x.is_empty() => PathBuf::from(x),
        (_, Some(h)) if !h.is_empty() => PathBuf::from(h).join(".config"),
        _ => bail!("neither XDG_CONFIG_HOME nor HOME is set: pass --pki-dir DIR"),
    };
    Ok(base.join("weft").join("pki").join(namespace))
}

/// What was done for one set of certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Given as values (or existing Secrets): nothing done.
    Given,
    /// Read from the directory.
    Reused,
    /// Made now and written to the directory.
    Generated,
}

/// Fills in the identity and webhook certificates that the values lack,
/// from `dir` or newly generated (and written there). Values that give a
/// set partly are left alone: the chart's own error then names what is
/// missing.
pub fn fill_missing(
    values: &mut Value,
    dir: &Path,
    namespace: &str,
) -> anyhow::Result<(Outcome, Outcome)> {
    let text = |v: &Value, path: &[&str]| -> bool {
        path.iter()
            .fold(v, |v, k| &v[k])
            .as_str()
            .is_some_and(|s| !s.trim().is_empty())
    };
    let identity_absent = !text(values, &["identity", "existingSecret"])
        && !text(values, &["identity", "trustAnchorsPEM"])
        && !text(values, &["identity", "issuer", "certPEM"])
        && !text(values, &["identity", "issuer", "keyPEM"]);
    let webhook_absent = !text(values, &["webhook", "existingSecret"])
        && !text(values, &["webhook", "certPEM"])
        && !text(values, &["webhook", "keyPEM"])
        && !text(values, &["webhook", "caBundlePEM"]);

    let identity = if identity_absent {
        let trust_domain = values["identity"]["trustDomain"]
            .as_str()
            .unwrap_or("cluster.local")
            .to_string();
        let (outcome, files) = identity_files(dir, &trust_domain)?;
        values["identity"]["trustAnchorsPEM"] = files[0].clone().into();
        values["identity"]["issuer"]["certPEM"] = files[2].clone().into();
        values["identity"]["issuer"]["keyPEM"] = files[3].clone().into();
        outcome
    } else {
        Outcome::Given
    };
    let webhook = if webhook_absent {
        let domain = values["clusterDomain"]
            .as_str()
            .unwrap_or("cluster.local")
            .to_string();
        let (outcome, files) = webhook_files(&dir.join("webhook"), namespace, &domain)?;
        values["webhook"]["caBundlePEM"] = files[0].clone().into();
        values["webhook"]["certPEM"] = files[1].clone().into();
        values["webhook"]["keyPEM"] = files[2].clone().into();
        outcome
    } else {
        Outcome::Given
    };
    Ok((identity, webhook))
}

/// ca.crt, ca.key, issuer.crt, issuer.key: read, or made and written.
fn identity_files(dir: &Path, trust_domain: &str) -> anyhow::Result<(Outcome, Vec<String>)> {
    if let Some(files) = read_all(dir, &IDENTITY_FILES)? {
        return Ok((Outcome::Reused, files));
    }
    let anchor = ca::new_trust_anchor(trust_domain, ANCHOR_VALIDITY)?;
    let issuer = ca::new_issuer(&anchor, trust_domain, ISSUER_VALIDITY)?;
    let files = vec![
        anchor.cert_pem,
        anchor.key_pem,
        issuer.cert_pem,
        issuer.key_pem,
    ];
    write_all(dir, &IDENTITY_FILES, &files)?;
    Ok((Outcome::Generated, files))
}

/// ca.crt, tls.crt, tls.key for `weft-webhook.<namespace>.svc`.
fn webhook_files(
    dir: &Path,
    namespace: &str,
    cluster_domain: &str,
) -> anyhow::Result<(Outcome, Vec<String>)> {
    if let Some(files) = read_all(dir, &WEBHOOK_FILES)? {
        return Ok((Outcome::Reused, files));
    }
    let service = format!("weft-webhook.{namespace}.svc");
    let names = vec![service.clone(), format!("{service}.{cluster_domain}")];
    let (ca, CertAndKey { cert_pem, key_pem }) =
        ca::new_serving_pair("weft-webhook-ca", &names, WEBHOOK_VALIDITY)?;
    let files = vec![ca.cert_pem, cert_pem, key_pem];
    write_all(dir, &WEBHOOK_FILES, &files)?;
    Ok((Outcome::Generated, files))
}

/// Every file's text when all exist, `None` when none does; some but not
/// all is an error (a half-copied directory must not be half-replaced).
fn read_all(dir: &Path, names: &[&str]) -> anyhow::Result<Option<Vec<String>>> {
    let present: Vec<bool> = names.iter().map(|n| dir.join(n).exists()).collect();
    if present.iter().all(|p| !p) {
        return Ok(None);
    }
    if let Some(i) = present.iter().position(|p| !p) {
        bail!(
            "{} is missing but other certificate files are in {}: restore it, or move the directory \
             away to generate a new set (proxies then need the new trust anchor: restart them)",
            dir.join(names[i]).display(),
            dir.display()
        );
    }
    names
        .iter()
        .map(|n| {
            let path = dir.join(n);
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map(Some)
}

/// Writes the files (keys 0600, in a 0700 directory), never overwriting.
fn write_all(dir: &Path, names: &[&str], texts: &[String]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in names.iter().zip(texts) {
        let path = dir.join(name);
        let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The note on stderr: what was generated or reused, and where it is kept.
pub fn note(dir: &Path, identity: Outcome, webhook: Outcome) -> Option<String> {
    let dir = dir.display();
    let mut lines = Vec::new();
    match identity {
        Outcome::Generated => lines.push(format!(
            "weft install: no identity certificates were given, so a new trust anchor (valid 10 years) \
             and issuer (1 year) were generated and written to {dir} (ca.crt, ca.key, issuer.crt, issuer.key)."
        )),
        Outcome::Reused => lines.push(format!(
            "weft install: using the trust anchor and issuer in {dir}."
        )),
        Outcome::Given => {}
    }
    match webhook {
        Outcome::Generated => lines.push(format!(
            "weft install: no webhook certificate was given, so one (valid 1 year) was generated in {dir}/webhook."
        )),
        Outcome::Reused => lines.push(format!(
            "weft install: using the webhook certificate in {dir}/webhook."
        )),
        Outcome::Given => {}
    }
    if identity == Outcome::Generated || webhook == Outcome::Generated {
        lines.push(format!(
            "Keep {dir} safe and back it up: the next `weft install` (an upgrade) reuses it, so \
             meshed pods keep trusting the controller; ca.key signs the next issuer \
             (weft identity issuer). Another directory: --pki-dir DIR."
        ));
    }
    (!lines.is_empty()).then(|| lines.join("\n"))
}
