//! Where the proxy gets its certificate (mesh identity); none without
//! `WEFT_PROXY_IDENTITY_ADDR`, and the proxy then runs plaintext.

use std::path::PathBuf;

use weft_proto::spiffe::{NotSpiffe, SpiffeId};

use super::ConfigError;
use super::settings::Vars;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityConfig {
    /// The controller's identity service, host:port.
    pub addr: String,
    /// A PEM file of trust anchors, or the PEM itself.
    pub trust_anchors: PathBuf,
    /// The projected ServiceAccount token presented when certifying.
    pub token_file: PathBuf,
    pub trust_domain: String,
    /// The identity the identity service's certificate must carry.
    pub server_id: SpiffeId,
}

impl IdentityConfig {
    pub(super) fn load(v: &Vars) -> Result<Option<Self>, ConfigError> {
        let Some(addr) = v.opt("WEFT_PROXY_IDENTITY_ADDR") else {
            return Ok(None);
        };
        let missing = |var: &'static str, expected: &'static str| ConfigError::Invalid {
            var,
            value: String::new(),
            problem: "required with WEFT_PROXY_IDENTITY_ADDR".to_string(),
            expected,
        };
        let anchors = v.opt("WEFT_PROXY_TRUST_ANCHORS").ok_or_else(|| {
            missing(
                "WEFT_PROXY_TRUST_ANCHORS",
                "trust anchors: the path of a PEM file, or the PEM itself",
            )
        })?;
        for var in ["WEFT_PROXY_NAMESPACE", "WEFT_PROXY_SERVICE_ACCOUNT"] {
            if v.opt(var).is_none() {
                return Err(missing(
                    var,
                    "the pod's namespace and service account (the downward API sets them)",
                ));
            }
        }
        let server_id = v.get("WEFT_PROXY_IDENTITY_SERVER_ID");
        Ok(Some(Self {
            addr,
            trust_anchors: anchors.into(),
            token_file: v.get("WEFT_PROXY_TOKEN_FILE").into(),
            trust_domain: v.get("WEFT_PROXY_TRUST_DOMAIN"),
            server_id: server_id.parse().map_err(|e: NotSpiffe| {
                v.invalid(
                    "WEFT_PROXY_IDENTITY_SERVER_ID",
                    e.to_string(),
                    "a SPIFFE ID",
                )
            })?,
        }))
    }
}
