//! Certificate checks for mesh TLS: a chain up to one of the trust anchors
//! (webpki), and a SPIFFE ID in the URI SAN, which for a server must be the
//! one discovery said to expect. Peers carry no DNS names; the expected
//! identity rides in the SNI as a DNS-shaped name (see [`dns_name`]).

use std::sync::Arc;

use crate::spiffe::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The trust anchors, parsed once.
#[derive(Debug)]
pub struct TrustAnchors {
    ders: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    algs: WebPkiSupportedAlgorithms,
}

impl TrustAnchors {
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        use rustls_pki_types::pem::PemObject;
        let ders = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not PEM certificates: {e}"))?;
        if ders.is_empty() {
            return Err("no certificate in the trust anchors".into());
        }
        let anchors = ders
            .iter()
            .map(|d| {
                webpki::anchor_from_trusted_cert(d)
                    .map(|a| a.to_owned())
                    .map_err(|e| format!("a trust anchor is not usable: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            ders,
            anchors,
            algs: rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms,
        })
    }

    /// SHA-256 fingerprints (hex) of the anchors, for /identity.
    pub fn fingerprints(&self) -> Vec<String> {
        self.ders
            .iter()
            .map(|d| {
                Sha256::digest(d.as_ref())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            })
            .collect()
    }

    /// Verifies a peer's chain for `usage` and returns its SPIFFE ID.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<SpiffeId, Error> {
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        ee.verify_for_usage(
            self.algs.all,
            &self.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(pki_error)?;
        spiffe_id_of(end_entity).ok_or(Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }
}

fn pki_error(e: webpki::Error) -> Error {
    use webpki::Error as E;
    Error::InvalidCertificate(match e {
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        _ => CertificateError::Other(rustls::OtherError(Arc::new(e))),
    })
}

/// The SPIFFE ID in a certificate's URI SAN.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Option<SpiffeId> {
    let (_, x509) = X509Certificate::from_der(cert).ok()?;
    let san = x509.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => u.parse().ok(),
        _ => None,
    })
}

/// The DNS-shaped name that carries an expected identity in the SNI:
/// `<sa>.<ns>.serviceaccount.identity.<trust-domain>`.
pub fn dns_name(id: &SpiffeId) -> String {
    format!(
        "{}.{}.serviceaccount.identity.{}",
        id.service_account, id.namespace, id.trust_domain
    )
}

/// The identity a [`dns_name`] stands for.
pub fn from_dns_name(name: &str) -> Option<SpiffeId> {
    let (left, td) = name.split_once(".serviceaccount.identity.")?;
    let (sa, ns) = left.rsplit_once('.')?;
    format!("spiffe://{td}/ns/{ns}/sa/{sa}").parse().ok()
}

/// The handshake-signature methods both verifiers share: the provider's
/// algorithms, nothing of ours.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls12_signature(message, cert, dss, &self.0.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls13_signature(message, cert, dss, &self.0.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.algs.supported_schemes()
        }
    };
}

/// Client side: the server must chain to an anchor and be the identity the
/// SNI names.
#[derive(Debug)]
pub struct ServerVerifier(pub Arc<TrustAnchors>);

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let expected = match server_name {
            ServerName::DnsName(d) => from_dns_name(d.as_ref()),
            _ => None,
        }
        .ok_or_else(|| Error::General("the expected identity is not a mesh name".into()))?;
        let got = self.0.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        if got != expected {
            return Err(Error::InvalidCertificate(
                CertificateError::NotValidForNameContext {
                    expected: server_name.to_owned(),
                    presented: vec![got.to_string()],
                },
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Server side: every mesh client presents a certificate chaining to an
/// anchor with a SPIFFE ID; who may do what is authorization's business.
#[derive(Debug)]
pub struct ClientVerifier(pub Arc<TrustAnchors>);

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.0.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_round_trip() {
        let id = SpiffeId::new("cluster.local", "shop", "web.api");
        let dns = dns_name(&id);
        assert_eq!(dns, "web.api.shop.serviceaccount.identity.cluster.local");
        assert_eq!(from_dns_name(&dns), Some(id));
        assert_eq!(from_dns_name("example.com"), None);
    }
}
