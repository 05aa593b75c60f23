//! TrafficSplit: a weighted choice among backends. Backends without ready
//! endpoints are left out of the choice (their share goes to the others);
//! only when none has endpoints is there nothing to pick.

use std::sync::Arc;

use super::balance::Endpoints;
#[cfg(test)]
use crate::upstream::endpoint::EndpointRegistry;

#[derive(Debug)]
pub struct Backend {
    pub service: Arc<str>,
    /// Its labels in Linkerd's route metrics.
    pub labels: crate::metrics::BackendRef,
    pub weight: u32,
    pub endpoints: Endpoints,
    /// An invalid backend reference: the requests it draws fail (500).
    pub unresolved: Option<String>,
}

#[derive(Debug)]
pub struct Split {
    backends: Vec<Backend>,
    /// Cumulative weights of the backends that have endpoints, for a
    /// binary search by a random number below `total`.
    cumulative: Vec<(u64, usize)>,
    total: u64,
    /// Every backend weighs 0 (a Gateway API rule answers 500 then).
    weightless: bool,
}

impl Split {
    pub fn new(backends: Vec<Backend>) -> Self {
        let mut cumulative = Vec::with_capacity(backends.len());
        let mut total = 0u64;
        for (i, b) in backends.iter().enumerate() {
            if b.weight > 0 && (!b.endpoints.is_empty() || b.unresolved.is_some()) {
                total += b.weight as u64;
                cumulative.push((total, i));
            }
        }
        Self {
            weightless: backends.iter().all(|b| b.weight == 0),
            backends,
            cumulative,
            total,
        }
    }

    pub fn weightless(&self) -> bool {
        self.weightless
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The backend for a uniformly random `r`; `None` when no backend with
    /// weight has endpoints. A backend whose endpoints are all ejected
    /// passes its turn to the next backend with weight that has one.
    pub fn pick(&self, r: u32, now: tokio::time::Instant) -> Option<&Backend> {
        let chosen = self.pick_weighted(r)?;
        if chosen.unresolved.is_some()
            || chosen.endpoints.any_available(now)
            || self.cumulative.len() < 2
        {
            return Some(chosen);
        }
        Some(
            self.cumulative
                .iter()
                .map(|(_, i)| &self.backends[*i])
                .find(|b| b.unresolved.is_none() && b.endpoints.any_available(now))
                .unwrap_or(chosen),
        )
    }

    fn pick_weighted(&self, r: u32) -> Option<&Backend> {
        if self.total == 0 {
            // Weights all zero (or their backends empty): fall back to any
            // backend with endpoints rather than fail.
            return self.backends.iter().find(|b| !b.endpoints.is_empty());
        }
        let point = (r as u64 * self.total) >> 32;
        let i = self.cumulative.partition_point(|(c, _)| *c <= point);
        self.cumulative.get(i).map(|(_, b)| &self.backends[*b])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, weight: u32, endpoints: usize) -> Backend {
        Backend {
            service: Arc::from(name),
            labels: crate::metrics::BackendRef::new(&weft_proto::model::ServiceRef {
                namespace: "shop".into(),
                name: name.into(),
            }),
            weight,
            endpoints: Endpoints::new(
                (0..endpoints).map(crate::routing::test_endpoint).collect(),
                &EndpointRegistry::default(),
            ),
            unresolved: None,
        }
    }

    /// Counts picks over `n` random draws.
    fn shares(split: &Split, n: u32) -> Vec<(String, u32)> {
        let mut counts: Vec<(String, u32)> = split
            .backends()
            .iter()
            .map(|b| (b.service.to_string(), 0))
            .collect();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..n {
            let b = split
                .pick(rng.u32(..), tokio::time::Instant::now())
                .unwrap();
            counts
                .iter_mut()
                .find(|(s, _)| **s == *b.service)
                .unwrap()
                .1 += 1;
        }
        counts
    }

    #[test]
    fn weights_are_honoured_within_binomial_bounds() {
        let split = Split::new(vec![backend("v1", 80, 1), backend("v2", 20, 1)]);
        let n = 100_000;
        let v2 = shares(&split, n)[1].1 as f64;
        // p = 0.2: mean 20,000, sd = sqrt(n p (1-p)) = 126.5; allow 5 sd.
        let sd = (n as f64 * 0.2 * 0.8).sqrt();
        assert!((v2 - 20_000.0).abs() < 5.0 * sd, "{v2}");
    }

    #[test]
    fn zero_weight_gets_nothing() {
        let split = Split::new(vec![backend("v1", 1, 1), backend("v2", 0, 1)]);
        assert_eq!(shares(&split, 10_000)[1].1, 0);
    }

    #[test]
    fn backends_without_endpoints_are_left_out() {
        let split = Split::new(vec![backend("v1", 50, 1), backend("v2", 50, 0)]);
        assert_eq!(shares(&split, 10_000)[0].1, 10_000);
        let empty = Split::new(vec![backend("v1", 50, 0)]);
        assert!(empty.pick(123, tokio::time::Instant::now()).is_none());
    }

    #[test]
    fn extreme_draws_stay_in_range() {
        let split = Split::new(vec![backend("v1", 1, 1), backend("v2", 3, 1)]);
        let now = tokio::time::Instant::now();
        assert_eq!(&*split.pick(0, now).unwrap().service, "v1");
        assert_eq!(&*split.pick(u32::MAX, now).unwrap().service, "v2");
    }
}
