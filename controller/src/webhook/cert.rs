//! The webhook's serving certificate, from PEM files that are re-read when
//! they change (a renewed Secret shows up in the mounted files without a
//! restart). A bad new pair is logged and the last good one kept.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How often the files are looked at.
const POLL: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct FileCert {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    loaded: std::sync::Mutex<(String, String)>,
}

impl FileCert {
    /// Loads the pair now: a bad one is an error at start-up.
    pub fn load(cert: PathBuf, key: PathBuf) -> Result<Arc<Self>, String> {
        let (cert_pem, key_pem) = read(&cert, &key)?;
        let ck = parse(&cert_pem, &key_pem)
            .map_err(|e| format!("{} / {}: {e}", cert.display(), key.display()))?;
        Ok(Arc::new(Self {
            cert,
            key,
            current: ArcSwap::from_pointee(ck),
            loaded: std::sync::Mutex::new((cert_pem, key_pem)),
        }))
    }

    /// Re-reads the files if they changed; returns whether a new pair is in
    /// use.
    pub fn reload(&self) -> bool {
        let Ok((cert_pem, key_pem)) = read(&self.cert, &self.key) else {
            return false;
        };
        let mut loaded = self.loaded.lock().expect("not poisoned");
        if loaded.0 == cert_pem && loaded.1 == key_pem {
            return false;
        }
        match parse(&cert_pem, &key_pem) {
            Ok(ck) => {
                self.current.store(Arc::new(ck));
                *loaded = (cert_pem, key_pem);
                tracing::info!(cert = %self.cert.display(), "webhook certificate reloaded");
                true
            }
            Err(e) => {
                // Often the moment between the two files' updates.
                tracing::warn!(cert = %self.cert.display(), error = %e, "new webhook certificate is not usable yet; keeping the current one");
                false
            }
        }
    }

    /// Polls the files until the process ends.
    pub async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(POLL).await;
            self.reload();
        }
    }
}

impl ResolvesServerCert for FileCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read(cert: &PathBuf, key: &PathBuf) -> Result<(String, String), String> {
    let r = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    Ok((r(cert)?, r(key)?))
}

fn parse(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate PEM: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in the PEM".into());
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("key PEM: {e}"))?;
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| format!("key: {e}"))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()
        .map_err(|e| format!("the key does not match the certificate: {e}"))?;
    Ok(ck)
}
