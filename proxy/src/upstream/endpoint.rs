//! What the proxy learns about each endpoint, kept across config versions:
//! its latency (peak-EWMA), requests in flight, and consecutive failures
//! (failure accrual: ejection with a jittered exponential penalty, then one
//! probe request to see whether it is back). Everything is atomics: read on
//! every pick, written on every response, never locked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

pub use crate::config::balancer::{BalanceMode, BalancerSettings};
use tokio::time::Instant;

/// The latency a connection-level failure counts as (peak-EWMA takes it at
/// once; it decays as good answers come in).
pub const FAILURE_RTT: Duration = Duration::from_secs(1);

/// One endpoint's state.
#[derive(Debug)]
pub struct EndpointState {
    pub addr: SocketAddr,
    settings: BalancerSettings,
    epoch: Instant,
    in_flight: AtomicU32,
    /// Latency estimate, f64 nanoseconds as bits; 0 = none yet.
    rtt_ns: AtomicU64,
    /// When the estimate was last updated, ns since `epoch`.
    rtt_at: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Ejected until this many ns since `epoch`; 0 = not ejected.
    ejected_until: AtomicU64,
    /// The current penalty, ns (0 until the first ejection).
    penalty: AtomicU64,
    /// A probe request is out to an ejected endpoint.
    probing: AtomicBool,
    /// Ejections so far (shared with the registry's metric).
    pub ejections: Counter,
}

/// Availability of an endpoint for a new request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Available,
    /// Its penalty is over: one probe may go.
    Probe,
    Ejected,
}

impl EndpointState {
    pub fn new(addr: SocketAddr, settings: BalancerSettings, epoch: Instant) -> Self {
        Self {
            addr,
            settings,
            epoch,
            in_flight: AtomicU32::new(0),
            rtt_ns: AtomicU64::new(0),
            rtt_at: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            penalty: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            ejections: Counter::default(),
        }
    }

    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The latency estimate, decayed toward nothing-known as time passes
    /// without measurements.
    pub fn rtt_estimate(&self) -> Duration {
        match f64::from_bits(self.rtt_ns.load(Ordering::Relaxed)) {
            0.0 => self.settings.default_rtt,
            ns => Duration::from_nanos(ns as u64),
        }
    }

    /// Load: latency estimate weighted by requests in flight (plus one, so
    /// that an idle fast endpoint beats an idle slow one).
    pub fn cost(&self) -> f64 {
        self.rtt_estimate().as_nanos() as f64 * (self.in_flight() as f64 + 1.0)
    }

    /// Peak-EWMA: a slower measurement replaces the estimate at once; a
    /// faster one moves it by a weight that grows with the time since the
    /// last measurement (decay).
    pub fn observe_rtt(&self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let old = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let now_ns = self.ns(now);
        let elapsed = now_ns.saturating_sub(self.rtt_at.load(Ordering::Relaxed)) as f64;
        let new = if old == 0.0 || rtt > old {
            rtt
        } else {
            let w = (-elapsed / self.settings.decay.as_nanos() as f64).exp();
            old * w + rtt * (1.0 - w)
        };
        self.rtt_ns.store(new.max(1.0).to_bits(), Ordering::Relaxed);
        self.rtt_at.store(now_ns, Ordering::Relaxed);
    }

    pub fn availability(&self, now: Instant) -> Availability {
        let until = self.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            Availability::Available
        } else if self.ns(now) < until || self.probing.load(Ordering::Acquire) {
            Availability::Ejected
        } else {
            Availability::Probe
        }
    }

    /// Claims the single probe of an ejected endpoint whose penalty is over.
    pub fn try_probe(&self) -> bool {
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// When an ejection ends (for choosing among only-ejected endpoints).
    pub fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Ordering::Acquire)
    }

    pub fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if self.ejected_until.load(Ordering::Acquire) != 0 {
            self.ejected_until.store(0, Ordering::Release);
            self.penalty.store(0, Ordering::Relaxed);
            self.probing.store(false, Ordering::Release);
            tracing::info!(endpoint = %self.addr, "endpoint is back");
        }
    }

    /// Counts a failure; returns whether it ejected the endpoint.
    pub fn record_failure(&self, now: Instant) -> bool {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let probing = self.probing.load(Ordering::Acquire);
        if !probing && failures < self.settings.failure_threshold {
            return false;
        }
        if !probing && self.ejected_until.load(Ordering::Acquire) != 0 {
            return false; // already ejected (a request that was in flight)
        }
        let s = &self.settings;
        let previous = self.penalty.load(Ordering::Relaxed);
        let penalty = if previous == 0 {
            s.base_penalty.as_nanos() as u64
        } else {
            (previous * 2).min(s.max_penalty.as_nanos() as u64)
        };
        self.penalty.store(penalty, Ordering::Relaxed);
        // Jitter: between half and all of the penalty, so that proxies
        // ejecting the same endpoint do not all probe it at once.
        let jittered = penalty / 2 + fastrand::u64(..=penalty / 2);
        self.ejected_until
            .store(self.ns(now) + jittered.max(1), Ordering::Release);
        self.probing.store(false, Ordering::Release);
        self.ejections.inc();
        tracing::info!(endpoint = %self.addr, failures, penalty = ?Duration::from_nanos(jittered), "endpoint ejected");
        true
    }

    /// Marks a request in flight until the returned guard is dropped.
    pub fn start(self: &Arc<Self>, now: Instant) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self.clone(),
            started: now,
            probe: false,
            judged: false,
        }
    }
}

/// A request in flight to an endpoint.
#[derive(Debug)]
pub struct InFlight {
    pub endpoint: Arc<EndpointState>,
    started: Instant,
    /// This request is the probe of an ejected endpoint.
    pub probe: bool,
    judged: bool,
}

impl InFlight {
    /// The endpoint answered (headers arrived): its latency, and whether the
    /// answer was a success for failure accrual.
    pub fn answered(&mut self, ok: bool) -> bool {
        self.judged = true;
        let now = Instant::now();
        self.endpoint
            .observe_rtt(now.saturating_duration_since(self.started), now);
        if ok {
            self.endpoint.record_success();
            false
        } else {
            self.endpoint.record_failure(now)
        }
    }

    /// The endpoint could not be reached, reset the request or did not
    /// answer in time. Besides counting toward ejection, this counts as a
    /// very slow answer, so that the balancer steers the next requests (and
    /// the retry of this one) elsewhere at once.
    pub fn failed(&mut self) -> bool {
        self.judged = true;
        let now = Instant::now();
        self.endpoint.observe_rtt(FAILURE_RTT, now);
        self.endpoint.record_failure(now)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        // A probe that ended without a verdict (cancelled) frees the slot
        // for another probe.
        if self.probe && !self.judged {
            self.endpoint.probing.store(false, Ordering::Release);
        }
    }
}

/// Endpoint states by address, shared by every destination config, so that
/// what is known about an endpoint survives config updates.
#[derive(Debug)]
pub struct EndpointRegistry {
    pub settings: BalancerSettings,
    epoch: Instant,
    states: Mutex<HashMap<SocketAddr, Weak<EndpointState>>>,
    /// Counts every ejection (the `endpoint_ejections_total` metric).
    pub ejections: Counter,
}

impl EndpointRegistry {
    pub fn new(settings: BalancerSettings) -> Self {
        Self {
            settings,
            epoch: Instant::now(),
            states: Mutex::default(),
            ejections: Counter::default(),
        }
    }

    pub fn with_ejection_counter(mut self, c: Counter) -> Self {
        self.ejections = c;
        self
    }

    /// The state of `addr`: the existing one while any config holds it.
    pub fn get(&self, addr: SocketAddr) -> Arc<EndpointState> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = states.get(&addr).and_then(Weak::upgrade) {
            return s;
        }
        let mut s = EndpointState::new(addr, self.settings, self.epoch);
        s.ejections = self.ejections.clone();
        let s = Arc::new(s);
        states.insert(addr, Arc::downgrade(&s));
        if states.len() > 1024 {
            states.retain(|_, w| w.strong_count() > 0);
        }
        s
    }
}

impl Default for EndpointRegistry {
    fn default() -> Self {
        Self::new(BalancerSettings::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Arc<EndpointState> {
        EndpointRegistry::default().get("198.18.0.3:80".parse().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_takes_peaks_at_once_and_decays_toward_faster() {
        let e = ep();
        assert_eq!(
            e.rtt_estimate(),
            Duration::from_millis(30),
            "default before any measurement"
        );
        let now = Instant::now();
        e.observe_rtt(Duration::from_millis(10), now);
        assert_eq!(e.rtt_estimate(), Duration::from_millis(10));
        e.observe_rtt(Duration::from_millis(100), now);
        assert_eq!(
            e.rtt_estimate(),
            Duration::from_millis(100),
            "a peak is taken at once"
        );
        // One decay period later, a 10 ms sample moves it by 1 - e^-1 = 63%.
        tokio::time::advance(Duration::from_secs(10)).await;
        e.observe_rtt(Duration::from_millis(10), Instant::now());
        let expected = 100.0 * (-1f64).exp() + 10.0 * (1.0 - (-1f64).exp());
        let got = e.rtt_estimate().as_secs_f64() * 1000.0;
        assert!((got - expected).abs() < 0.01, "{got} vs {expected}");
    }

    #[tokio::test(start_paused = true)]
    async fn cost_grows_with_requests_in_flight() {
        let e = ep();
        e.observe_rtt(Duration::from_millis(10), Instant::now());
        let idle = e.cost();
        let a = e.start(Instant::now());
        let _b = e.start(Instant::now());
        assert_eq!(e.cost(), idle * 3.0);
        drop(a);
        assert_eq!(e.cost(), idle * 2.0);
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_with_jittered_exponential_penalty() {
        let e = ep();
        for _ in 0..6 {
            assert!(!e.record_failure(Instant::now()));
        }
        // A success in between resets the count.
        e.record_success();
        for _ in 0..6 {
            assert!(!e.record_failure(Instant::now()));
        }
        assert!(e.record_failure(Instant::now()), "the 7th in a row ejects");
        assert_eq!(e.availability(Instant::now()), Availability::Ejected);
        // The penalty is 0.5-1 s: ejected at 499 ms, probe-able after 1 s.
        tokio::time::advance(Duration::from_millis(499)).await;
        assert_eq!(e.availability(Instant::now()), Availability::Ejected);
        tokio::time::advance(Duration::from_millis(502)).await;
        assert_eq!(e.availability(Instant::now()), Availability::Probe);
        assert!(e.try_probe());
        assert!(!e.try_probe(), "one probe at a time");
        assert_eq!(e.availability(Instant::now()), Availability::Ejected);
        // The probe fails: ejected again for 1-2 s.
        assert!(e.record_failure(Instant::now()));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(e.availability(Instant::now()), Availability::Ejected);
        tokio::time::advance(Duration::from_millis(1002)).await;
        assert_eq!(e.availability(Instant::now()), Availability::Probe);
        // The next probe succeeds: back in rotation.
        assert!(e.try_probe());
        e.record_success();
        assert_eq!(e.availability(Instant::now()), Availability::Available);
        assert_eq!(e.ejections.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn penalty_is_capped() {
        let e = ep();
        for _ in 0..7 {
            e.record_failure(Instant::now());
        }
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(61)).await;
            assert!(e.try_probe());
            e.record_failure(Instant::now());
        }
        tokio::time::advance(Duration::from_secs(60) + Duration::from_millis(1)).await;
        assert_eq!(e.availability(Instant::now()), Availability::Probe);
    }

    #[test]
    fn the_registry_keeps_state_while_a_config_holds_it() {
        let r = EndpointRegistry::default();
        let addr: SocketAddr = "198.18.0.3:80".parse().unwrap();
        let a = r.get(addr);
        a.observe_rtt(Duration::from_millis(5), Instant::now());
        assert_eq!(r.get(addr).rtt_estimate(), Duration::from_millis(5));
        drop(a);
        assert_eq!(
            r.get(addr).rtt_estimate(),
            Duration::from_millis(30),
            "forgotten once unused"
        );
    }
}
