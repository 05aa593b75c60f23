//! `weft identity webhook`: the webhook's serving certificate and its CA,
//! as the chart takes them.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

fn der(pem: &str) -> Vec<u8> {
    weft_controller::identity::ca::parse_certs(pem, "test").unwrap()[0].to_vec()
}

#[test]
fn webhook_certificate_is_for_the_service_and_signed_by_its_ca() {
    let dir = std::env::temp_dir().join(format!("weft-hook-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["identity", "webhook", "--namespace", "mesh", "--out"])
            .arg(&dir)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let (cert_der, ca_der) = (der(&read("tls.crt")), der(&read("ca.crt")));
    let (_, cert) = X509Certificate::from_der(&cert_der).unwrap();
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    let names: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        names,
        [
            "weft-webhook.mesh.svc",
            "weft-webhook.mesh.svc.cluster.local"
        ]
    );
    assert_eq!(cert.issuer(), ca.subject(), "signed by the CA in ca.crt");
    assert!(ca.is_ca() && !cert.is_ca());
    let mode = std::fs::metadata(dir.join("tls.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key is private");
    // Never overwrites.
    let again = run();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not overwriting"));
    std::fs::remove_dir_all(&dir).unwrap();
}
