//! The certificate authority: trust anchors (the roots every proxy trusts),
//! and the issuer (an intermediate CA signed by an anchor) that signs
//! workload certificates. Also what `weft identity init` uses to create
//! them.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;
use weft_proto::spiffe::SpiffeId;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Workload certificates start this far in the past, so that a proxy whose
/// clock is a little behind still accepts them.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {problem}")]
    Invalid { what: String, problem: String },
    #[error("certificate signing request: {0}")]
    Csr(String),
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

fn invalid(what: impl Into<String>, problem: impl Into<String>) -> CaError {
    CaError::Invalid {
        what: what.into(),
        problem: problem.into(),
    }
}

fn offset(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

fn ca_params(common_name: String, validity: Duration, path_len: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - offset(CLOCK_SKEW);
    p.not_after = now + offset(validity);
    p
}

/// PEM certificate and private key.
#[derive(Debug, Clone)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A new self-signed trust anchor (root CA).
pub fn new_trust_anchor(trust_domain: &str, validity: Duration) -> Result<CertAndKey, CaError> {
    let key = KeyPair::generate()?;
    let cert = ca_params(format!("root.{trust_domain}"), validity, Some(1)).self_signed(&key)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A new issuer (intermediate CA) signed by the trust anchor.
pub fn new_issuer(
    anchor: &CertAndKey,
    trust_domain: &str,
    validity: Duration,
) -> Result<CertAndKey, CaError> {
    let anchor_key = KeyPair::from_pem(&anchor.key_pem)
        .map_err(|e| invalid("trust anchor key", e.to_string()))?;
    let anchor_issuer = Issuer::from_ca_cert_pem(&anchor.cert_pem, anchor_key)
        .map_err(|e| invalid("trust anchor", e.to_string()))?;
    let key = KeyPair::generate()?;
    let cert = ca_params(format!("issuer.{trust_domain}"), validity, Some(0))
        .signed_by(&key, &anchor_issuer)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A self-signed CA and a serving certificate it signed for `dns_names`
/// (the injector webhook's: the API server verifies it against the CA in
/// the MutatingWebhookConfiguration's caBundle).
pub fn new_serving_pair(
    ca_name: &str,
    dns_names: &[String],
    validity: Duration,
) -> Result<(CertAndKey, CertAndKey), CaError> {
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params(ca_name.to_string(), validity, Some(0)).self_signed(&ca_key)?;
    let ca = CertAndKey {
        cert_pem: ca_cert.pem(),
        key_pem: ca_key.serialize_pem(),
    };
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)
        .map_err(|e| invalid("serving CA", e.to_string()))?;
    let mut p = CertificateParams::new(dns_names.to_vec())?;
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        dns_names.first().cloned().unwrap_or_default(),
    );
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - offset(CLOCK_SKEW);
    p.not_after = now + offset(validity);
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    Ok((
        ca,
        CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
    ))
}

/// Every certificate in a PEM bundle.
pub fn parse_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(what, "holds no certificate"));
    }
    Ok(certs)
}

fn x509<'a>(der: &'a CertificateDer<'_>, what: &str) -> Result<X509Certificate<'a>, CaError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| invalid(what, format!("not an X.509 certificate: {e}")))
}

/// The loaded issuer and anchors.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub issuer_der: CertificateDer<'static>,
    pub issuer_not_after: OffsetDateTime,
    pub anchors: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("issuer_not_after", &self.issuer_not_after)
            .finish()
    }
}

impl Ca {
    /// Loads and checks the CA material: the issuer must be a CA, not
    /// expired, and signed by one of the anchors.
    pub fn from_pem(
        anchors_pem: &str,
        issuer_cert_pem: &str,
        issuer_key_pem: &str,
    ) -> Result<Self, CaError> {
        let anchors = parse_certs(anchors_pem, "trust anchors")?;
        let issuer_der = parse_certs(issuer_cert_pem, "issuer certificate")?.remove(0);
        let issuer_cert = x509(&issuer_der, "issuer certificate")?;
        if !issuer_cert.is_ca() {
            return Err(invalid("issuer certificate", "is not a CA certificate"));
        }
        let not_after = issuer_cert.validity().not_after.to_datetime();
        if not_after <= OffsetDateTime::now_utc() {
            return Err(invalid(
                "issuer certificate",
                format!("expired at {not_after}"),
            ));
        }
        let signed_by_anchor = anchors.iter().any(|a| {
            x509(a, "trust anchor").is_ok_and(|anchor| {
                issuer_cert
                    .verify_signature(Some(anchor.public_key()))
                    .is_ok()
            })
        });
        if !signed_by_anchor {
            return Err(invalid(
                "issuer certificate",
                "is not signed by any of the trust anchors",
            ));
        }
        let key =
            KeyPair::from_pem(issuer_key_pem).map_err(|e| invalid("issuer key", e.to_string()))?;
        if key.public_key_raw() != issuer_cert.public_key().subject_public_key.data.as_ref() {
            return Err(invalid(
                "issuer key",
                "does not belong to the issuer certificate",
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&issuer_der, key)
            .map_err(|e| invalid("issuer certificate", e.to_string()))?;
        Ok(Self {
            issuer,
            issuer_der,
            issuer_not_after: not_after,
            anchors,
        })
    }

    fn leaf_params(
        id: &SpiffeId,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<CertificateParams, CaError> {
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(
            id.to_string()
                .try_into()
                .map_err(|_| invalid("identity", "not a URI"))?,
        )];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = now - offset(CLOCK_SKEW);
        p.not_after = (now + offset(lifetime)).min(self_cap(now));
        Ok(p)
    }

    /// Signs a workload's CSR: only its public key is taken; the identity
    /// and validity are the controller's.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<(CertificateDer<'static>, OffsetDateTime), CaError> {
        let mut csr = CertificateSigningRequestParams::from_der(
            &CertificateSigningRequestDer::from(csr_der.to_vec()),
        )
        .map_err(|e| CaError::Csr(e.to_string()))?;
        let now = OffsetDateTime::now_utc();
        csr.params = Self::leaf_params(id, lifetime, now)?;
        // A leaf never outlives its issuer.
        csr.params.not_after = csr.params.not_after.min(self.issuer_not_after);
        let not_after = csr.params.not_after;
        let cert = csr.signed_by(&self.issuer)?;
        Ok((cert.der().clone(), not_after))
    }

    /// A certificate and key for the controller itself (its identity
    /// endpoint's TLS), signed by the issuer.
    pub fn issue_own(
        &self,
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, KeyPair), CaError> {
        let key = KeyPair::generate()?;
        let mut params = Self::leaf_params(id, lifetime, OffsetDateTime::now_utc())?;
        params.not_after = params.not_after.min(self.issuer_not_after);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((vec![cert.der().clone(), self.issuer_der.clone()], key))
    }
}

/// No leaf lives beyond a year, whatever is asked.
fn self_cap(now: OffsetDateTime) -> OffsetDateTime {
    now + time::Duration::days(366)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (CertAndKey, CertAndKey, Ca) {
        let anchor = new_trust_anchor("cluster.local", Duration::from_secs(86400 * 365)).unwrap();
        let issuer = new_issuer(&anchor, "cluster.local", Duration::from_secs(86400 * 30)).unwrap();
        let ca = Ca::from_pem(&anchor.cert_pem, &issuer.cert_pem, &issuer.key_pem).unwrap();
        (anchor, issuer, ca)
    }

    fn csr(id: &str) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        p.serialize_request(&key).unwrap().der().to_vec()
    }

    #[test]
    fn signs_a_csr_with_the_controllers_identity_and_lifetime() {
        let (_, _, ca) = ca();
        let id = SpiffeId::new("cluster.local", "shop", "web");
        // The CSR asks for another identity: ignored, the controller decides.
        let (der, not_after) = ca
            .sign_csr(
                &csr("spiffe://cluster.local/ns/kube-system/sa/admin"),
                &id,
                Duration::from_secs(86400),
            )
            .unwrap();
        let cert = x509(&der, "leaf").unwrap();
        let uris: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(uris, vec!["URI(spiffe://cluster.local/ns/shop/sa/web)"]);
        assert!(!cert.is_ca());
        let lifetime = not_after - OffsetDateTime::now_utc();
        assert!(
            lifetime > time::Duration::hours(23) && lifetime <= time::Duration::hours(24),
            "{lifetime}"
        );
        assert!(
            cert.validity().not_before.to_datetime()
                < OffsetDateTime::now_utc() - time::Duration::seconds(50)
        );
    }

    #[test]
    fn a_tampered_csr_is_refused() {
        let (_, _, ca) = ca();
        let mut bad = csr("spiffe://cluster.local/ns/shop/sa/web");
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(matches!(
            ca.sign_csr(
                &bad,
                &SpiffeId::new("cluster.local", "shop", "web"),
                Duration::from_secs(60)
            ),
            Err(CaError::Csr(_))
        ));
        assert!(matches!(
            ca.sign_csr(
                b"garbage",
                &SpiffeId::new("cluster.local", "shop", "web"),
                Duration::from_secs(60)
            ),
            Err(CaError::Csr(_))
        ));
    }

    #[test]
    fn an_issuer_from_another_root_is_refused() {
        let (anchor, issuer, _) = ca();
        let other = new_trust_anchor("cluster.local", Duration::from_secs(86400)).unwrap();
        let err = Ca::from_pem(&other.cert_pem, &issuer.cert_pem, &issuer.key_pem).unwrap_err();
        assert!(
            err.to_string()
                .contains("not signed by any of the trust anchors"),
            "{err}"
        );
        // Two anchors during a rotation: either may have signed the issuer.
        let bundle = format!("{}{}", other.cert_pem, anchor.cert_pem);
        assert!(Ca::from_pem(&bundle, &issuer.cert_pem, &issuer.key_pem).is_ok());
        // A key that is not the issuer's.
        let err = Ca::from_pem(&anchor.cert_pem, &issuer.cert_pem, &other.key_pem).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }
}
