//! Waiting for a condition rather than for a time: a test that polls for
//! what it checks fails when the behaviour is missing, never because the
//! machine is slow.

use std::time::Duration;

use tokio::time::Instant;

/// How often [`until`] checks.
const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it holds; panics naming `what` if it does not within
/// `within`.
pub async fn until<F: AsyncFnMut() -> bool>(what: &str, within: Duration, mut check: F) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(POLL).await;
    }
}
