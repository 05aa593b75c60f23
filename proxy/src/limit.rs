//! Rate limits: governor's GCRA (the token bucket's steady rate and burst,
//! lock-free for one bucket) read on tokio's clock, so that tests on a
//! paused clock control them. The HTTP/2 flood guard (http/guard.rs) keeps
//! one per connection; authorization's per-client limits
//! (authz/rate_limit.rs), one keyed by client per policy.

use std::num::NonZeroU32;
use std::ops::Add;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::HashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// tokio's clock, as governor reads it.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

/// A reading of [`TokioClock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tick(tokio::time::Instant);

impl Add<Nanos> for Tick {
    type Output = Tick;

    fn add(self, n: Nanos) -> Tick {
        Tick(self.0 + std::time::Duration::from(n))
    }
}

impl Reference for Tick {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        Tick(self.0.checked_sub(duration.into()).unwrap_or(self.0))
    }
}

impl Clock for TokioClock {
    type Instant = Tick;

    fn now(&self) -> Tick {
        Tick(tokio::time::Instant::now())
    }
}

/// One bucket.
pub type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Tick>>;
/// A bucket per key.
pub type KeyedLimiter<K> = RateLimiter<K, HashMapStateStore<K>, TokioClock, NoOpMiddleware<Tick>>;

/// `per_second` on average, bursts of `burst` (each at least 1).
pub fn quota(per_second: u32, burst: u32) -> Quota {
    let nz = |n: u32| NonZeroU32::new(n.max(1)).expect("at least 1");
    Quota::per_second(nz(per_second)).allow_burst(nz(burst))
}

pub fn limiter(quota: Quota) -> Limiter {
    RateLimiter::new(quota, InMemoryState::default(), TokioClock)
}

pub fn keyed<K: Clone + std::hash::Hash + Eq>(quota: Quota) -> KeyedLimiter<K> {
    RateLimiter::new(quota, HashMapStateStore::default(), TokioClock)
}
