//! Choosing an endpoint of a backend: round robin (an atomic counter, no
//! lock).

use std::sync::atomic::{AtomicUsize, Ordering};

use weft_proto::model::Endpoint;

#[derive(Debug)]
pub struct Endpoints {
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
}

impl Endpoints {
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        Self {
            // Start each proxy at a different place so that proxies do not
            // all hit the first endpoint together.
            next: AtomicUsize::new(if endpoints.is_empty() {
                0
            } else {
                fastrand::usize(..endpoints.len())
            }),
            endpoints,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn all(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The next endpoint in turn.
    pub fn next(&self) -> Option<&Endpoint> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        Some(&self.endpoints[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::model::Protocol;

    #[test]
    fn round_robin_visits_every_endpoint_equally() {
        let eps = Endpoints::new(
            (2..5)
                .map(|i| Endpoint {
                    address: format!("198.18.0.{i}:80").parse().unwrap(),
                    meshed: false,
                    identity: None,
                    protocol: Protocol::Detect,
                    zone: None,
                    pod: None,
                })
                .collect(),
        );
        let mut counts = std::collections::HashMap::new();
        for _ in 0..300 {
            *counts.entry(eps.next().unwrap().address).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|&c| c == 100), "{counts:?}");
        assert!(Endpoints::new(vec![]).next().is_none());
    }
}
