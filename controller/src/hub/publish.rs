//! What the hub publishes after each batch besides pushes: every custom
//! resource's problems (for status conditions and logs), the pod directory
//! (for tap), each namespace's annotations (for the injector), and the
//! index's sizes as metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;

use super::Hub;
use crate::index::Kind;
use crate::index::problems::Problem;
use crate::metrics::KindLabel;

impl Hub {
    /// Everything the hub publishes after a batch.
    pub(super) fn report(&mut self) {
        self.count_objects();
        self.publish_problems();
        if std::mem::take(&mut self.pods_changed) {
            let pods = self.index.pod_directory();
            publish_if_changed(&self.pods, pods);
        }
        if std::mem::take(&mut self.namespaces_changed) {
            let namespaces = self.index.namespace_annotations();
            publish_if_changed(&self.namespaces, namespaces);
        }
    }

    /// The index's objects by kind (`index_objects`).
    fn count_objects(&self) {
        for (kind, n) in self.index.sizes() {
            self.metrics
                .index_objects
                .get_or_create(&KindLabel {
                    kind: kind.as_str(),
                })
                .set(n as i64);
        }
    }

    /// Each custom resource's problems: logged when they change, counted
    /// (`objects_with_problems`), and sent to the status writer. Not before
    /// every source has synced: a half-listed cluster shows problems that
    /// are not there (a split whose Service is not listed yet), and their
    /// status would be written only to be taken back.
    fn publish_problems(&self) {
        if !self.ready.load(Ordering::Acquire) {
            return;
        }
        let problems = self.index.problems();
        let old = self.problems.borrow().clone();
        let mut counts: HashMap<Kind, i64> = HashMap::new();
        let wrong = |ps: &[Problem]| ps.iter().any(Problem::is_problem);
        for (r, ps) in &problems {
            if wrong(ps) {
                *counts.entry(r.kind).or_default() += 1;
            }
            if old.get(r) != Some(ps) {
                for p in ps.iter().filter(|p| p.is_problem()) {
                    tracing::warn!(object = %r, reason = p.reason, "{}", p.message);
                }
                if !wrong(ps) && old.get(r).is_some_and(|o| wrong(o)) {
                    tracing::info!(object = %r, "accepted");
                }
            }
        }
        for kind in Kind::ALL.into_iter().filter(|k| k.reports_status()) {
            self.metrics
                .objects_with_problems
                .get_or_create(&KindLabel {
                    kind: kind.as_str(),
                })
                .set(counts.get(&kind).copied().unwrap_or(0));
        }
        if *old != problems {
            let _ = self.problems.send(Arc::new(problems));
        }
    }
}

/// Sends `value` to the watchers when it differs from what they have.
fn publish_if_changed<T: PartialEq>(sender: &watch::Sender<Arc<T>>, value: T) {
    sender.send_if_modified(|current| {
        let changed = **current != value;
        if changed {
            *current = Arc::new(value);
        }
        changed
    });
}
