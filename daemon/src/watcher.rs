//! `notify` events → debounced "these item paths may have changed", per source.
//!
//! Must not: read file contents or decide what changed (the scanner does). When events are
//! lost (kernel queue overflow, a full channel, a watch that fails) it asks for a full rescan.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notify::event::EventKindMask;
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::layout::{is_internal, marker_path};

/// What the watcher tells the source task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// These item paths (relative, '/'-separated; "" is the root) may have changed.
    Paths(Vec<String>),
    /// Events were lost or cannot be trusted: scan everything.
    Rescan { reason: String },
}

/// A live watch on one source root; dropping it stops the watch.
pub struct Watcher {
    _inner: notify::RecommendedWatcher,
    overflow: Arc<AtomicBool>,
}

impl Watcher {
    /// True (once) if events were dropped because the source task fell behind.
    pub fn take_overflow(&self) -> bool {
        self.overflow.swap(false, Ordering::Relaxed)
    }
}

/// Starts watching `root` recursively; events arrive on `tx`.
///
/// # Errors
/// When the OS refuses the watch (for example the inotify watch limit is reached).
pub fn watch(root: &Path, tx: mpsc::Sender<WatchEvent>) -> Result<Watcher, notify::Error> {
    let overflow = Arc::new(AtomicBool::new(false));
    let flag = overflow.clone();
    let base = root.to_path_buf();
    let mut pace = Pace::default();
    let handler = move |res: notify::Result<notify::Event>| {
        let msg = match res {
            Ok(event) if event.need_rescan() => WatchEvent::Rescan {
                reason: "the OS dropped file events (queue overflow)".into(),
            },
            // Opening and reading (our own scanner does both) changes nothing.
            Ok(event) if is_read_only(&event.kind) => return,
            Ok(event) => {
                let paths: Vec<String> = event
                    .paths
                    .iter()
                    .filter_map(|p| item_path(&base, p))
                    .collect();
                if paths.is_empty() {
                    return;
                }
                WatchEvent::Paths(paths)
            }
            Err(e) => WatchEvent::Rescan {
                reason: format!("the file watch failed: {e}"),
            },
        };
        // Never block the OS watcher thread: when the source task is behind, remember that
        // events were dropped and let it rescan.
        if tx.try_send(msg).is_err() {
            flag.store(true, Ordering::Relaxed);
        }
        // After the event is passed on, so the pause delays only those that follow it.
        if let Some(pause) = pace.event(std::time::Instant::now()) {
            std::thread::sleep(pause);
        }
    };
    // Changes only: no event for opening or reading a file. On Linux the kernel then never
    // queues one, and every file the agent reads or writes itself would otherwise raise an
    // open event to carry to this thread and drop.
    let kinds = EventKindMask::CORE | EventKindMask::ACCESS_CLOSE;
    let mut inner = notify::RecommendedWatcher::new(
        handler,
        notify::Config::default().with_event_kinds(kinds),
    )?;
    inner.watch(root, RecursiveMode::Recursive)?;
    // The agent's own folder holds the temp files received content is built in: each would
    // raise several events (create, write, close, attributes, move) only to be dropped. A
    // backend that cannot leave out part of a recursive watch (FSEvents) still works: those
    // events are dropped as internal paths below.
    if let Err(e) = inner.unwatch(&marker_path(root)) {
        tracing::debug!(error = %e, "the agent's folder stays watched");
    }
    Ok(Watcher {
        _inner: inner,
        overflow,
    })
}

/// Watches one file (a single-file source) through its folder, which is watched alone, not
/// its subfolders: a file replaced by rename (as editors and this agent do) stays watched.
/// Every change of the file is reported as a change of the whole source.
///
/// # Errors
/// The OS watch cannot be set up.
pub fn watch_file(file: &Path, tx: mpsc::Sender<WatchEvent>) -> Result<Watcher, notify::Error> {
    let overflow = Arc::new(AtomicBool::new(false));
    let flag = overflow.clone();
    let name = file.file_name().map(std::ffi::OsStr::to_os_string);
    let dir = file
        .parent()
        .map_or_else(|| Path::new(".").to_path_buf(), Path::to_path_buf);
    let handler = move |res: notify::Result<notify::Event>| {
        let msg = match res {
            Ok(event) if event.need_rescan() => WatchEvent::Rescan {
                reason: "the OS dropped file events (queue overflow)".into(),
            },
            Ok(event) if is_read_only(&event.kind) => return,
            Ok(event) => {
                let ours = event
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(std::ffi::OsStr::to_os_string) == name);
                if !ours {
                    return;
                }
                WatchEvent::Paths(vec![String::new()])
            }
            Err(e) => WatchEvent::Rescan {
                reason: format!("the file watch failed: {e}"),
            },
        };
        if tx.try_send(msg).is_err() {
            flag.store(true, Ordering::Relaxed);
        }
    };
    let kinds = EventKindMask::CORE | EventKindMask::ACCESS_CLOSE;
    let mut inner = notify::RecommendedWatcher::new(
        handler,
        notify::Config::default().with_event_kinds(kinds),
    )?;
    inner.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(Watcher {
        _inner: inner,
        overflow,
    })
}

/// Keeps the OS watcher thread from being woken once per event during a burst of changes
/// (a sync writing thousands of files). Each wake-up is paid by the process that made the
/// change, and by another core. While events keep coming less than [`BURST`] apart, the
/// thread pauses for [`PAUSE`] once every [`PAUSE`] + [`BURST`] at most: meanwhile the kernel
/// queues what follows without waking anyone, and the thread then takes it all in a few
/// reads. Events wait at most [`PAUSE`] more (the debounce is tens of milliseconds), and a
/// backlog is taken in at no less than a third of the thread's full speed, far above what a
/// disk can change.
#[derive(Default)]
struct Pace {
    /// When the event before this one was taken in.
    last_event: Option<std::time::Instant>,
    /// When the last pause ended.
    last_pause: Option<std::time::Instant>,
}

/// Events closer than this are a burst.
const BURST: Duration = Duration::from_millis(1);
/// How long the thread pauses in a burst.
const PAUSE: Duration = Duration::from_millis(2);

impl Pace {
    /// Takes note of an event that came at `now`; gives the pause to take before the next.
    fn event(&mut self, now: std::time::Instant) -> Option<Duration> {
        let in_burst = self
            .last_event
            .is_some_and(|last| now.duration_since(last) < BURST);
        let rested = self
            .last_pause
            .is_none_or(|last| now.duration_since(last) >= BURST);
        if in_burst && rested {
            let after = now + PAUSE;
            self.last_pause = Some(after);
            self.last_event = Some(after);
            Some(PAUSE)
        } else {
            self.last_event = Some(now);
            None
        }
    }
}

fn is_read_only(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(kind, notify::EventKind::Access(a) if *a != AccessKind::Close(AccessMode::Write))
}

/// The item path of an absolute event path, or `None` for paths outside the root or the
/// agent's own files.
fn item_path(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let s = match rel.to_str() {
        Some(s) => s.to_owned(),
        // Non-UTF-8 names are reported by the scanner of their (UTF-8) parent.
        None => rel.parent()?.to_str()?.to_owned(),
    };
    if is_internal(&s) {
        return None;
    }
    Some(s)
}

/// What the debouncer hands over when its deadline passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// Scan the whole source.
    Full,
    /// Scan these item paths.
    Paths(Vec<String>),
}

/// Collects bursts of events and releases them once quiet, or after a maximum delay.
#[derive(Debug)]
pub struct Debouncer {
    quiet: Duration,
    max: Duration,
    paths: HashSet<String>,
    full: bool,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debouncer {
    /// Waits `quiet` after the last event, but never more than `max` after the first.
    pub fn new(quiet: Duration, max: Duration) -> Debouncer {
        Debouncer {
            quiet,
            max,
            paths: HashSet::new(),
            full: false,
            first: None,
            last: None,
        }
    }

    fn touch(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// Adds an event.
    pub fn push(&mut self, now: Instant, event: WatchEvent) {
        self.touch(now);
        match event {
            WatchEvent::Paths(paths) if !self.full => self.paths.extend(paths),
            WatchEvent::Paths(_) => {}
            WatchEvent::Rescan { .. } => {
                self.full = true;
                self.paths.clear();
            }
        }
    }

    /// Asks for a full scan at the next deadline.
    pub fn push_full(&mut self, now: Instant) {
        self.push(
            now,
            WatchEvent::Rescan {
                reason: String::new(),
            },
        );
    }

    /// True while something waits to be scanned.
    pub fn is_pending(&self) -> bool {
        self.first.is_some()
    }

    /// When the pending work should be released, if any.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.quiet).min(first + self.max))
    }

    /// Takes the pending work, leaving the debouncer empty.
    pub fn take(&mut self) -> Option<Pending> {
        self.first?;
        self.first = None;
        self.last = None;
        if std::mem::take(&mut self.full) {
            self.paths.clear();
            return Some(Pending::Full);
        }
        let mut paths: Vec<String> = self.paths.drain().collect();
        paths.sort();
        if paths.iter().any(String::is_empty) {
            return Some(Pending::Full);
        }
        Some(Pending::Paths(paths))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn paths(p: &[&str]) -> WatchEvent {
        WatchEvent::Paths(p.iter().map(|s| s.to_string()).collect())
    }

    /// Pauses a run of events would cause, given when each came after the first (the clock
    /// moves on by each pause taken, as on the watcher thread).
    fn pauses(gaps: impl Iterator<Item = Duration>) -> usize {
        let mut pace = Pace::default();
        let mut now = std::time::Instant::now();
        let mut taken = 0;
        for gap in gaps {
            now += gap;
            if let Some(pause) = pace.event(now) {
                now += pause;
                taken += 1;
            }
        }
        taken
    }

    #[test]
    fn the_watcher_thread_pauses_in_a_burst_but_not_per_event_of_a_backlog() {
        // A trickle: no pause at all.
        assert_eq!(
            pauses(std::iter::repeat_n(Duration::from_millis(10), 100)),
            0
        );
        // A sync writing a file every 25 µs: after each millisecond of events, one pause
        // (1,200 events: 30 ms of them, 30 pauses), so wake-ups stop two thirds of the time.
        let burst = pauses(std::iter::repeat_n(Duration::from_micros(25), 1200));
        assert!((25..=30).contains(&burst), "{burst} pauses");
        // A backlog of 1,000 queued events taken in 2 µs apart (2 ms of work): a pause per
        // millisecond of work at most, not one per event.
        let backlog = pauses(std::iter::repeat_n(Duration::from_micros(2), 1000));
        assert!(backlog <= 2, "{backlog} pauses");
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_period_restarts_with_each_event_up_to_the_maximum() {
        let mut d = Debouncer::new(Duration::from_millis(100), Duration::from_millis(250));
        let t0 = Instant::now();
        assert_eq!(d.deadline(), None);
        d.push(t0, paths(&["a"]));
        assert_eq!(d.deadline(), Some(t0 + Duration::from_millis(100)));
        tokio::time::advance(Duration::from_millis(80)).await;
        d.push(Instant::now(), paths(&["b"]));
        assert_eq!(d.deadline(), Some(t0 + Duration::from_millis(180)));
        tokio::time::advance(Duration::from_millis(90)).await;
        d.push(Instant::now(), paths(&["a"]));
        // 170 + 100 would pass the 250 ms cap measured from the first event.
        assert_eq!(d.deadline(), Some(t0 + Duration::from_millis(250)));
        assert_eq!(d.take(), Some(Pending::Paths(vec!["a".into(), "b".into()])));
        assert!(!d.is_pending());
        assert_eq!(d.take(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rescan_swallows_paths() {
        let mut d = Debouncer::new(Duration::from_millis(10), Duration::from_millis(20));
        let now = Instant::now();
        d.push(now, paths(&["x"]));
        d.push(
            now,
            WatchEvent::Rescan {
                reason: "overflow".into(),
            },
        );
        d.push(now, paths(&["y"]));
        assert_eq!(d.take(), Some(Pending::Full));
        d.push(now, paths(&["", "z"]));
        assert_eq!(
            d.take(),
            Some(Pending::Full),
            "an event on the root means everything"
        );
    }

    #[test]
    fn event_paths_become_item_paths() {
        let root = Path::new("/data/src");
        assert_eq!(
            item_path(root, Path::new("/data/src/a/b.txt")),
            Some("a/b.txt".into())
        );
        assert_eq!(item_path(root, Path::new("/data/src")), Some(String::new()));
        assert_eq!(item_path(root, Path::new("/elsewhere/x")), None);
        assert_eq!(item_path(root, Path::new("/data/src/.tandem/db")), None);
        assert_eq!(
            item_path(root, Path::new("/data/src/d/.tandem-tmp-123")),
            None
        );
    }
}
