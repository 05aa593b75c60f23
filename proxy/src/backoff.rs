//! How long to wait before trying again: one backoff for the discovery
//! stream's reconnects, certificate renewal retries, and RetryPolicy's
//! retries.
//!
//! Delays grow from `base` (exponentially, or stay constant) up to `cap`,
//! with jitter so that many clients do not retry in step: *full* jitter
//! waits a uniformly random time up to the delay (RetryPolicy's
//! exponential backoff); *equal* jitter waits half the delay plus a random
//! half (reconnects, and RetryPolicy's constant backoff). A cap is a hard
//! cap: no delay is longer. Hand-written on purpose: `backon`, the
//! maintained crate, adds its jitter on top of the delay (up to twice it),
//! so `maxInterval` would not bound the wait as RetryPolicy's documentation
//! says it does.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Growth {
    Constant,
    Exponential,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform from zero to the delay.
    Full,
    /// Half the delay, plus a uniform half.
    Equal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub growth: Growth,
    pub jitter: Jitter,
}

impl Backoff {
    /// Doubling from `base` to `cap`, equal jitter: for reconnecting.
    pub fn reconnect(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            growth: Growth::Exponential,
            jitter: Jitter::Equal,
        }
    }

    /// The wait before try number `attempt` + 1 (`attempt` counts from 1:
    /// the first retry), with `rand` uniform in 0..=1.
    pub fn delay(&self, attempt: u32, rand: f64) -> Duration {
        let grown = match self.growth {
            Growth::Constant => self.base,
            Growth::Exponential => self.base.saturating_mul(
                1u32.checked_shl(attempt.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            ),
        };
        let d = grown.min(self.cap);
        match self.jitter {
            Jitter::Full => d.mul_f64(rand),
            Jitter::Equal => d / 2 + (d / 2).mul_f64(rand),
        }
    }
}

/// A backoff in use: counts the attempts since the last success.
#[derive(Debug)]
pub struct Attempts {
    backoff: Backoff,
    attempt: u32,
}

impl Attempts {
    pub fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            attempt: 0,
        }
    }

    /// It worked: the next failure waits the least again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The wait after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        self.backoff.delay(self.attempt, fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_up_to_the_doubled_delay_capped() {
        let b = Backoff {
            base: Duration::from_millis(25),
            cap: Duration::from_secs(1),
            growth: Growth::Exponential,
            jitter: Jitter::Full,
        };
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(25));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(3, 0.5), Duration::from_millis(50));
        assert_eq!(b.delay(10, 1.0), Duration::from_secs(1));
        assert_eq!(b.delay(40, 1.0), Duration::from_secs(1));
        assert_eq!(b.delay(2, 0.0), Duration::ZERO);
    }

    #[test]
    fn equal_jitter_keeps_half() {
        let b = Backoff {
            growth: Growth::Constant,
            ..Backoff::reconnect(Duration::from_millis(25), Duration::from_secs(1))
        };
        assert_eq!(b.delay(5, 0.0), Duration::from_micros(12_500));
        assert_eq!(b.delay(5, 1.0), Duration::from_millis(25));
    }

    #[test]
    fn attempts_grow_with_jitter_and_reset() {
        let mut b = Attempts::new(Backoff::reconnect(
            Duration::from_millis(100),
            Duration::from_secs(10),
        ));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..20 {
            b.next_delay();
        }
        let capped = b.next_delay();
        assert!(
            capped >= Duration::from_secs(5) && capped <= Duration::from_secs(10),
            "{capped:?}"
        );
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
