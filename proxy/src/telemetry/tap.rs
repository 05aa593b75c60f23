//! Tap: live requests for whoever watches (`GET /tap` on the admin port,
//! `weft tap`). Each watcher has a filter and a bounded queue of JSON
//! lines; a request matching no watcher costs one atomic load, and a
//! watcher that reads too slowly loses events (counted in the stream's
//! closing line) rather than slowing requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::metrics::Direction;

/// Events a watcher may have queued before new ones are dropped.
const QUEUE: usize = 1024;

/// Which requests a watcher wants (all given parts must match).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub direction: Option<Direction>,
    pub method: Option<String>,
    /// A substring of the authority (`web.shop`, `:8080`).
    pub authority: Option<String>,
    /// A prefix of the path.
    pub path: Option<String>,
}

impl Filter {
    /// From a query string: `direction=inbound|outbound`, `method=GET`,
    /// `authority=web.shop`, `path=/api` (percent-encoding decoded).
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut f = Filter::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v)?;
            match k {
                "direction" => {
                    f.direction = Some(match v.as_str() {
                        "inbound" => Direction::Inbound,
                        "outbound" => Direction::Outbound,
                        _ => return Err(format!("direction={v}: expected inbound or outbound")),
                    })
                }
                "method" => f.method = Some(v.to_ascii_uppercase()),
                "authority" => f.authority = Some(v),
                "path" => f.path = Some(v),
                other => {
                    return Err(format!(
                        "unknown filter {other:?}; filters are direction, method, authority, path"
                    ));
                }
            }
        }
        Ok(f)
    }

    pub fn matches(&self, direction: Direction, method: &str, authority: &str, path: &str) -> bool {
        self.direction.is_none_or(|d| d == direction)
            && self.method.as_deref().is_none_or(|m| m == method)
            && self
                .authority
                .as_deref()
                .is_none_or(|a| authority.contains(a))
            && self.path.as_deref().is_none_or(|p| path.starts_with(p))
    }
}

fn percent_decode(v: &str) -> Result<String, String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = v.get(i + 1..i + 3).ok_or("a truncated %-escape")?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad %-escape %{hex}"))?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "a filter is not UTF-8".to_string())
}

#[derive(Debug)]
pub struct Watcher {
    id: u64,
    filter: Filter,
    tx: mpsc::Sender<Bytes>,
    pub dropped: AtomicU64,
}

impl Watcher {
    pub fn send(&self, line: &Bytes) {
        if self.tx.try_send(line.clone()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Everyone watching this proxy.
#[derive(Debug, Default)]
pub struct Tap {
    watchers: ArcSwap<Vec<Arc<Watcher>>>,
    /// Serializes changes to the list (readers never lock).
    change: Mutex<()>,
    next_id: AtomicU64,
    /// Request ids in events.
    next_request: AtomicU64,
}

/// A watcher's end: events arrive on `events`; dropping it stops the watch.
#[derive(Debug)]
pub struct Watch {
    pub events: mpsc::Receiver<Bytes>,
    pub watcher: Arc<Watcher>,
    tap: Arc<Tap>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.tap.remove(self.watcher.id);
    }
}

impl Tap {
    pub fn watch(self: &Arc<Self>, filter: Filter) -> Watch {
        let (tx, events) = mpsc::channel(QUEUE);
        let watcher = Arc::new(Watcher {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            filter,
            tx,
            dropped: AtomicU64::new(0),
        });
        let _guard = self.change.lock().expect("not poisoned");
        let mut list = (**self.watchers.load()).clone();
        list.push(watcher.clone());
        self.watchers.store(Arc::new(list));
        Watch {
            events,
            watcher,
            tap: self.clone(),
        }
    }

    fn remove(&self, id: u64) {
        let _guard = self.change.lock().expect("not poisoned");
        let list: Vec<_> = self
            .watchers
            .load()
            .iter()
            .filter(|w| w.id != id)
            .cloned()
            .collect();
        self.watchers.store(Arc::new(list));
    }

    /// The watchers a request matches (none: nobody watches, which is one
    /// atomic load) and the request's id in their events.
    pub fn matching(
        &self,
        direction: Direction,
        method: &str,
        authority: &str,
        path: &str,
    ) -> Option<(u64, Vec<Arc<Watcher>>)> {
        let watchers = self.watchers.load();
        if watchers.is_empty() {
            return None;
        }
        let matched: Vec<_> = watchers
            .iter()
            .filter(|w| w.filter.matches(direction, method, authority, path))
            .cloned()
            .collect();
        (!matched.is_empty()).then(|| (self.next_request.fetch_add(1, Ordering::Relaxed), matched))
    }

    pub fn watchers(&self) -> usize {
        self.watchers.load().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_match() {
        let f =
            Filter::parse("direction=outbound&method=get&authority=web.shop&path=%2Fapi").unwrap();
        assert_eq!(f.method.as_deref(), Some("GET"));
        assert_eq!(f.path.as_deref(), Some("/api"));
        assert!(f.matches(Direction::Outbound, "GET", "web.shop.svc:80", "/api/v1"));
        assert!(!f.matches(Direction::Inbound, "GET", "web.shop.svc:80", "/api/v1"));
        assert!(!f.matches(Direction::Outbound, "POST", "web.shop.svc:80", "/api/v1"));
        assert!(!f.matches(Direction::Outbound, "GET", "db:5432", "/api"));
        assert!(!f.matches(Direction::Outbound, "GET", "web.shop", "/other"));
        assert!(
            Filter::parse("")
                .unwrap()
                .matches(Direction::Inbound, "PUT", "x", "/")
        );
        assert!(
            Filter::parse("colour=red")
                .unwrap_err()
                .contains("unknown filter")
        );
        assert!(Filter::parse("direction=up").is_err());
        assert!(Filter::parse("path=%zz").is_err());
        assert!(Filter::parse("path=%2").is_err());
    }

    #[tokio::test]
    async fn watchers_get_what_matches_and_leave_on_drop() {
        let tap = Arc::new(Tap::default());
        assert!(tap.matching(Direction::Inbound, "GET", "a", "/").is_none());
        let mut w = tap.watch(Filter::parse("direction=inbound").unwrap());
        let (id, matched) = tap.matching(Direction::Inbound, "GET", "a", "/").unwrap();
        assert_eq!(matched.len(), 1);
        assert!(tap.matching(Direction::Outbound, "GET", "a", "/").is_none());
        matched[0].send(&Bytes::from(format!("{id}\n")));
        assert_eq!(w.events.recv().await.unwrap(), Bytes::from("0\n"));
        drop(w);
        assert_eq!(tap.watchers(), 0);
    }

    #[tokio::test]
    async fn a_slow_watcher_loses_events_instead_of_blocking() {
        let tap = Arc::new(Tap::default());
        let w = tap.watch(Filter::default());
        let (_, matched) = tap.matching(Direction::Inbound, "GET", "a", "/").unwrap();
        for _ in 0..QUEUE + 10 {
            matched[0].send(&Bytes::from_static(b"x\n"));
        }
        assert_eq!(w.watcher.dropped.load(Ordering::Relaxed), 10);
    }
}
