//! The one place the harness sleeps: a bounded retry with exponential backoff, for things
//! that give no signal when they are ready (a process starting up or exiting).
//!
//! Must not: be used to "let sync finish"; tests wait with `tandemctl wait` or on `watch`
//! events instead.

use std::time::{Duration, Instant};

/// First pause between attempts; it doubles after each failed attempt.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// Longest pause between attempts.
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// Calls `attempt` until it returns `Some`, backing off between attempts; `None` once `limit`
/// has passed without success.
pub fn retry_with_backoff<T>(limit: Duration, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    let mut pause = FIRST_PAUSE;
    loop {
        if let Some(done) = attempt() {
            return Some(done);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        std::thread::sleep(pause.min(left)); // backoff between retries
        pause = (pause * 2).min(MAX_PAUSE);
    }
}
