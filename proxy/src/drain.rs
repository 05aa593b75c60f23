//! Graceful shutdown: one signal that tells every listener to stop accepting
//! and every connection to finish what it has in flight, and a tracker that
//! lets the process wait for them, up to a grace period.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

#[derive(Clone, Debug, Default)]
pub struct Drain {
    signal: CancellationToken,
    tasks: TaskTracker,
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts draining: listeners stop, connections wind down.
    pub fn start(&self) {
        self.signal.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.signal.is_cancelled()
    }

    /// Resolves once draining has started.
    pub fn signaled(&self) -> WaitForCancellationFuture<'_> {
        self.signal.cancelled()
    }

    /// Runs a connection's task, counted until it ends.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Connections still running.
    pub fn in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// Waits for every tracked task to end, at most `grace`. Returns whether
    /// all ended in time.
    pub async fn wait(&self, grace: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_tasks_up_to_the_grace_period() {
        let drain = Drain::new();
        let d = drain.clone();
        drain.spawn(async move {
            d.signaled().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        assert!(!drain.is_draining());
        drain.start();
        assert!(drain.is_draining());
        assert!(!drain.wait(Duration::from_secs(1)).await);
        assert_eq!(drain.in_flight(), 1);
        assert!(drain.wait(Duration::from_secs(5)).await);
        assert_eq!(drain.in_flight(), 0);
    }
}
