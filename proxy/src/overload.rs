//! Load shedding: how many connections and HTTP requests the proxy serves
//! at once. Past a limit, a new connection is closed as it arrives and a
//! new request is answered 503 (`weft-proxy-error: overloaded`), so what
//! is already admitted keeps its latency instead of everything slowing
//! down together. Two atomics; no locks.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct Load {
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    max_connections: usize,
    max_requests: usize,
}

/// An admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An admitted request; dropped when its response ends. It also counts
/// toward its connection's requests in flight (idle detection).
#[derive(Debug)]
pub struct RequestSlot {
    proxy: Arc<AtomicUsize>,
    connection: Arc<AtomicUsize>,
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.proxy.fetch_sub(1, Ordering::AcqRel);
        self.connection.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes a place under `max`, or none.
fn take(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl Load {
    pub fn new(max_connections: usize, max_requests: usize) -> Self {
        Self {
            connections: Arc::default(),
            requests: Arc::default(),
            max_connections,
            max_requests,
        }
    }

    pub fn admit_connection(&self) -> Option<ConnectionSlot> {
        take(&self.connections, self.max_connections)
            .then(|| ConnectionSlot(self.connections.clone()))
    }

    /// A place for a request of the connection whose in-flight count is
    /// `connection`.
    pub fn admit_request(&self, connection: &Arc<AtomicUsize>) -> Option<RequestSlot> {
        if !take(&self.requests, self.max_requests) {
            return None;
        }
        connection.fetch_add(1, Ordering::AcqRel);
        Some(RequestSlot {
            proxy: self.requests.clone(),
            connection: connection.clone(),
        })
    }

    pub fn requests_in_flight(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    pub fn connections_open(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_taken_up_to_the_limit_and_given_back_on_drop() {
        let load = Load::new(2, 3);
        let a = load.admit_connection().unwrap();
        let _b = load.admit_connection().unwrap();
        assert!(load.admit_connection().is_none());
        drop(a);
        assert!(load.admit_connection().is_some());

        let conn = Arc::new(AtomicUsize::new(0));
        let r: Vec<_> = (0..3).map(|_| load.admit_request(&conn).unwrap()).collect();
        assert!(load.admit_request(&conn).is_none());
        assert_eq!(
            (load.requests_in_flight(), conn.load(Ordering::Acquire)),
            (3, 3)
        );
        drop(r);
        assert_eq!(
            (load.requests_in_flight(), conn.load(Ordering::Acquire)),
            (0, 0)
        );
    }

    #[test]
    fn concurrent_admission_never_overshoots() {
        let load = Arc::new(Load::new(1, 50));
        let conn = Arc::new(AtomicUsize::new(0));
        let held: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (load, conn) = (load.clone(), conn.clone());
                    s.spawn(move || {
                        (0..100)
                            .filter_map(|_| load.admit_request(&conn))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(held.len(), 50);
        assert_eq!(load.requests_in_flight(), 50);
    }
}
