//! Per-source rate limits of AuthorizationPolicies: a token bucket per
//! (policy, source), refilled continuously at `requestsPerSecond` up to
//! `burst`. A source is the client's identity, or its IP address when it
//! has none.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use weft_proto::model::RateLimit;

/// Past this many buckets, full ones (sources quiet long enough to have
/// refilled) are dropped: they would behave the same if recreated.
const MAX_BUCKETS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

impl RateLimits {
    /// Takes a token for `source` under `policy`; when none is left, how
    /// long until one is.
    pub fn take(&self, policy: &str, source: &str, limit: RateLimit) -> Result<(), Duration> {
        let now = Instant::now();
        let rate = f64::from(limit.requests_per_second.max(1));
        let burst = f64::from(limit.burst.max(1));
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let key = (policy.to_string(), source.to_string());
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let admitted = (0..20).filter(|_| limits.take("p", "a", l).is_ok()).count();
        assert_eq!(admitted, 5, "a burst of 5 at once");
        let wait = limits.take("p", "a", l).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );

        // Offered 100 rps for 10 s: 10 rps get through (one per 100 ms).
        let mut admitted = 0;
        for _ in 0..1000 {
            tokio::time::advance(Duration::from_millis(10)).await;
            admitted += limits.take("p", "a", l).is_ok() as usize;
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
        assert!(limits.take("p", "a", l).is_ok());
        assert!(limits.take("p", "a", l).is_err());
        assert!(limits.take("p", "b", l).is_ok(), "another source");
        assert!(limits.take("q", "a", l).is_ok(), "another policy");
    }
}
