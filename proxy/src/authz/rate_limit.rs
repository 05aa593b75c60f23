//! Per-source rate limits of AuthorizationPolicies: a token bucket per
//! (policy, source), refilled continuously at `requestsPerSecond` up to
//! `burst`. A source is the client's identity, or its IP address when it
//! has none.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock;
use weft_proto::model::RateLimit;
use weft_proto::spiffe::SpiffeId;

use crate::limit::{self, KeyedLimiter, TokioClock};

/// Past this many sources under one policy, those quiet long enough to be
/// back to a full bucket are dropped: recreated, they behave the same.
const MAX_SOURCES: usize = 10_000;

/// Who a limit counts: the client's identity, or its IP address when it
/// has none. Cloning one is a reference count, not an allocation.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Source {
    Identity(Arc<SpiffeId>),
    Ip(IpAddr),
}

/// One policy's limit: its settings, and a bucket per source.
struct PolicyLimit {
    limit: RateLimit,
    buckets: KeyedLimiter<Source>,
}

#[derive(Default)]
pub struct RateLimits {
    policies: Mutex<HashMap<String, Arc<PolicyLimit>>>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits").finish_non_exhaustive()
    }
}

impl RateLimits {
    /// Takes a token for `source` under `policy`; when none is left, how
    /// long until one is.
    pub fn take(&self, policy: &str, source: &Source, limit: RateLimit) -> Result<(), Duration> {
        let buckets = self.of(policy, limit);
        if buckets.buckets.len() >= MAX_SOURCES {
            buckets.buckets.retain_recent();
        }
        buckets
            .buckets
            .check_key(source)
            .map_err(|not_until| not_until.wait_time_from(TokioClock.now()))
    }

    /// The policy's buckets; new ones when its limit changed.
    fn of(&self, policy: &str, limit: RateLimit) -> Arc<PolicyLimit> {
        let mut policies = self.policies.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = policies.get(policy)
            && p.limit == limit
        {
            return p.clone();
        }
        let p = Arc::new(PolicyLimit {
            limit,
            buckets: limit::keyed(limit::quota(limit.requests_per_second, limit.burst)),
        });
        policies.insert(policy.to_string(), p.clone());
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(name: &str) -> Source {
        Source::Identity(Arc::new(SpiffeId::new("cluster.local", "shop", name)))
    }

    fn limit(rps: u32, burst: u32) -> RateLimit {
        RateLimit {
            requests_per_second: rps,
            burst,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_the_configured_rate() {
        let limits = RateLimits::default();
        let l = limit(10, 5);
        let admitted = (0..20)
            .filter(|_| limits.take("p", &src("a"), l).is_ok())
            .count();
        assert_eq!(admitted, 5, "a burst of 5 at once");
        let wait = limits.take("p", &src("a"), l).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );

        // Offered 100 rps for 10 s: 10 rps get through (one per 100 ms).
        let mut admitted = 0;
        for _ in 0..1000 {
            tokio::time::advance(Duration::from_millis(10)).await;
            admitted += limits.take("p", &src("a"), l).is_ok() as usize;
        }
        assert!(
            (99..=101).contains(&admitted),
            "{admitted} in 10 s at 10 rps"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sources_and_policies_have_their_own_buckets() {
        let limits = RateLimits::default();
        let l = limit(1, 1);
        assert!(limits.take("p", &src("a"), l).is_ok());
        assert!(limits.take("p", &src("a"), l).is_err());
        assert!(limits.take("p", &src("b"), l).is_ok(), "another source");
        assert!(limits.take("q", &src("a"), l).is_ok(), "another policy");
    }
}
