//! Workload identities: SPIFFE IDs of the form
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`.

use std::fmt;
use std::str::FromStr;

/// A workload's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{0}' is not a workload identity; expected spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>"
)]
pub struct NotSpiffe(pub String);

fn dns_label_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

impl FromStr for SpiffeId {
    type Err = NotSpiffe;

    fn from_str(s: &str) -> Result<Self, NotSpiffe> {
        let err = || NotSpiffe(s.to_string());
        let rest = s.strip_prefix("spiffe://").ok_or_else(err)?;
        let mut parts = rest.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None)
                if dns_label_ok(td) && dns_label_ok(ns) && dns_label_ok(sa) =>
            {
                Ok(SpiffeId::new(td, ns, sa))
            }
            _ => Err(err()),
        }
    }
}

/// Whether `id` matches `pattern`: equal, or a pattern ending in `*`
/// matching any rest (`spiffe://cluster.local/ns/batch/*`).
pub fn matches_pattern(pattern: &str, id: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => id.starts_with(prefix),
        None => pattern == id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects() {
        let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
        assert_eq!(id, SpiffeId::new("cluster.local", "shop", "web"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
        for bad in [
            "spiffe://cluster.local/ns/shop",
            "spiffe://cluster.local/ns/shop/sa/web/extra",
            "https://cluster.local/ns/shop/sa/web",
            "spiffe://cluster.local/ns/Shop/sa/web",
            "spiffe:///ns/shop/sa/web",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn patterns() {
        let id = "spiffe://cluster.local/ns/batch/sa/worker";
        assert!(matches_pattern("spiffe://cluster.local/ns/batch/*", id));
        assert!(matches_pattern(id, id));
        assert!(!matches_pattern("spiffe://cluster.local/ns/shop/*", id));
        assert!(!matches_pattern(
            "spiffe://cluster.local/ns/batch/sa/work",
            id
        ));
    }
}
