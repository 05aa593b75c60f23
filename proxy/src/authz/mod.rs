//! Inbound authorization: every request (HTTP) and every connection
//! (opaque TCP) arriving for the pod is checked against its inbound policy
//! ([`policy`]) as discovery holds it now, so a policy change applies to
//! the next request, on open connections too. A matching ALLOW rule with a
//! rate limit also takes a token ([`rate_limit`]).

pub mod policy;
pub mod rate_limit;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use weft_proto::model::{InboundPolicy, RateLimit};
use weft_proto::spiffe::SpiffeId;

use crate::discovery::{Resolved, Slot};
use crate::metrics::{AuthzLabels, Metrics};
use policy::{By, Client, Verdict};
use rate_limit::{RateLimits, Source};

/// What is being admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Http,
    Tcp,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Tcp => "tcp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("refused by authorization policy {policy}")]
    Forbidden { policy: String },
    #[error("rate limited by authorization policy {policy}; retry after {retry_after:?}")]
    RateLimited {
        policy: String,
        retry_after: Duration,
    },
}

#[derive(Debug)]
pub struct Authorizer {
    /// The pod's inbound policy; `None` (no discovery, or no pod name):
    /// the default, which admits everyone.
    inbound: Option<Arc<Slot>>,
    trust_domain: String,
    limits: RateLimits,
    metrics: Arc<Metrics>,
}

impl Authorizer {
    pub fn new(inbound: Option<Arc<Slot>>, trust_domain: String, metrics: Arc<Metrics>) -> Self {
        Self {
            inbound,
            trust_domain,
            limits: RateLimits::default(),
            metrics,
        }
    }

    /// Decides one request or connection to `port` of the pod, and counts
    /// the decision.
    pub fn check(
        &self,
        port: u16,
        client_id: Option<&Arc<SpiffeId>>,
        client_ip: IpAddr,
        kind: Kind,
    ) -> Result<(), Refused> {
        let current = self.inbound.as_ref().map(|s| s.load_full());
        let none = InboundPolicy::default();
        // Until the policy arrives (the proxy is not ready yet) and without
        // discovery: the mesh's default, all-unauthenticated.
        let policy = match current.as_deref() {
            Some(Resolved::Inbound(p)) => p,
            _ => &none,
        };
        let client = Client {
            id: client_id.map(|id| &**id),
            trust_domain: &self.trust_domain,
        };
        let verdict = policy::decide(policy, port, client);
        let (by, refused) = match verdict {
            Verdict::Allow(by) => (by, self.rate_limit(by, client_id, client_ip)),
            Verdict::Deny(by) => (
                by,
                Some(Refused::Forbidden {
                    policy: by.name().into_owned(),
                }),
            ),
        };
        let labels = AuthzLabels {
            policy: self.metrics.policies.value(&by.name()),
            kind: kind.as_str(),
            reason: refused.as_ref().map(|r| match r {
                Refused::Forbidden { .. } => "forbidden",
                Refused::RateLimited { .. } => "rate_limited",
            }),
        };
        match refused {
            None => {
                self.metrics.authz_allow.get_or_create(&labels).inc();
                Ok(())
            }
            Some(r) => {
                self.metrics.authz_denied.get_or_create(&labels).inc();
                Err(r)
            }
        }
    }

    fn rate_limit(&self, by: By<'_>, id: Option<&Arc<SpiffeId>>, ip: IpAddr) -> Option<Refused> {
        let By::Rule(rule) = by else { return None };
        let limit: RateLimit = rule.rate_limit?;
        let source = match id {
            Some(id) => Source::Identity(id.clone()),
            None => Source::Ip(ip),
        };
        self.limits
            .take(&rule.name, &source, limit)
            .err()
            .map(|retry_after| Refused::RateLimited {
                policy: rule.name.clone(),
                retry_after,
            })
    }
}
