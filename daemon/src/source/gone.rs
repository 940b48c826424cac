//! Content of files this device's scans found gone lately, by hash: a file that appears with
//! that content most likely moved or was copied, and a peer in sync most likely has it still,
//! so its content need not travel inline. A hint only: forgetting costs bytes, never data.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::chunker::Hash128;

/// How long a gone file's content is remembered.
const KEEP: Duration = Duration::from_secs(600);
/// Most hashes remembered; past it the oldest are forgotten.
const MOST: usize = 65_536;

/// Hashes of content recently deleted from a source, shared by its task and its senders.
#[derive(Debug, Default)]
pub struct RecentlyGone {
    seen: Mutex<HashMap<Hash128, Instant>>,
}

impl RecentlyGone {
    /// Remembers content a scan found gone.
    pub fn note(&self, hash: Hash128) {
        let mut seen = self.lock();
        let now = Instant::now();
        if seen.len() >= MOST {
            seen.retain(|_, at| now.duration_since(*at) < KEEP);
        }
        if seen.len() >= MOST {
            // Still full of recent deletions (a mass delete): forget them rather than grow.
            seen.clear();
        }
        seen.insert(hash, now);
    }

    /// True when content with this hash was found gone lately.
    pub fn contains(&self, hash: &Hash128) -> bool {
        self.lock().get(hash).is_some_and(|at| at.elapsed() < KEEP)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Hash128, Instant>> {
        // Only plain inserts and lookups happen under the lock; a poisoned map is still whole.
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gone_content_is_remembered_and_the_map_stays_bounded() {
        let gone = RecentlyGone::default();
        gone.note(Hash128([1; 16]));
        assert!(gone.contains(&Hash128([1; 16])));
        assert!(!gone.contains(&Hash128([2; 16])));
        for i in 0..=MOST as u64 {
            let mut h = [0u8; 16];
            h[..8].copy_from_slice(&i.to_be_bytes());
            gone.note(Hash128(h));
        }
        assert!(gone.lock().len() <= MOST);
    }
}
