//! Live events for `tandemctl watch`: one broadcast bus per agent.
//!
//! Must not: block a sender. A slow watcher misses events (and is told how many), never the
//! source task.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

/// What happened, as `tandemctl watch` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
    ScanStarted,
    ScanFinished,
    ItemError,
    SourceError,
    Rescan,
    Paused,
    Resumed,
    SourceAdded,
    SourceRemoved,
}

impl EventKind {
    /// The stable name printed by `tandemctl watch`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Added => "added",
            EventKind::Modified => "modified",
            EventKind::Deleted => "deleted",
            EventKind::ScanStarted => "scan-started",
            EventKind::ScanFinished => "scan-finished",
            EventKind::ItemError => "item-error",
            EventKind::SourceError => "source-error",
            EventKind::Rescan => "rescan",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
            EventKind::SourceAdded => "source-added",
            EventKind::SourceRemoved => "source-removed",
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub unix_ms: u64,
    pub source: String,
    pub kind: EventKind,
    pub item: String,
    pub detail: String,
    pub sequence: u64,
}

impl Event {
    /// An event stamped with the current time.
    pub fn now(source: &str, kind: EventKind) -> Event {
        Event {
            unix_ms: unix_ms_now(),
            source: source.to_owned(),
            kind,
            item: String::new(),
            detail: String::new(),
            sequence: 0,
        }
    }

    /// The same event about one item.
    pub fn item(mut self, item: &str) -> Event {
        self.item = item.to_owned();
        self
    }

    /// The same event with a human detail.
    pub fn detail(mut self, detail: impl Into<String>) -> Event {
        self.detail = detail.into();
        self
    }

    /// The same event with the local sequence it was committed under.
    pub fn sequence(mut self, sequence: u64) -> Event {
        self.sequence = sequence;
        self
    }
}

/// Milliseconds since the Unix epoch, 0 if the clock is before it.
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `YYYYMMDD-HHMMSS` in UTC, for conflict copy names.
pub fn utc_stamp(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The agent's event bus; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
}

impl EventBus {
    /// A bus that keeps up to `capacity` events for slow subscribers.
    pub fn new(capacity: usize) -> EventBus {
        let (tx, _) = broadcast::channel(capacity);
        EventBus { tx }
    }

    /// Publishes an event; without subscribers it is simply dropped.
    pub fn emit(&self, event: Event) {
        // No subscriber is the normal case when nobody runs `tandemctl watch`.
        let _ = self.tx.send(event);
    }

    /// Emits the event `make` builds, building it only when someone listens: an event per
    /// item of a large sync is several allocations each that nobody would read.
    pub fn emit_with(&self, make: impl FnOnce() -> Event) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(make());
        }
    }

    /// A new subscription that sees every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_built_only_when_someone_listens() {
        let bus = EventBus::new(8);
        let mut built = 0;
        bus.emit_with(|| {
            built += 1;
            Event::now("s", EventKind::Added)
        });
        assert_eq!(built, 0, "no subscriber, nothing built");
        let mut rx = bus.subscribe();
        bus.emit_with(|| {
            built += 1;
            Event::now("s", EventKind::Added).item("a.txt")
        });
        assert_eq!(built, 1);
        assert_eq!(rx.try_recv().unwrap().item, "a.txt");
    }
}
