//! `tandemctl --json watch` as a test sees it: a stream of events with deadlines.
//!
//! A reader thread turns each line into a `serde_json::Value` on a channel; `expect` waits for
//! a matching event until its deadline (a channel receive with a timeout, not a sleep) and
//! fails listing every event seen. Must not: change the agent; the only request it makes is the
//! `rescan` of its start-up handshake.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How soon after a change on disk `watch` must report it.
pub const EVENT_DEADLINE: Duration = Duration::from_secs(1);

/// How long the start-up handshake may take in all.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(20);
/// First and longest wait for the handshake's `rescan` event before asking again.
const HANDSHAKE_FIRST_WINDOW: Duration = Duration::from_millis(50);
const HANDSHAKE_MAX_WINDOW: Duration = Duration::from_secs(1);

/// A running `tandemctl --json watch`; killed on drop.
pub struct Watch {
    child: Child,
    rx: Receiver<Value>,
    /// Every event received, and whether an expectation has claimed it.
    seen: Vec<(Value, bool)>,
    stderr: PathBuf,
    ended: bool,
}

impl Watch {
    /// Starts `cmd` (a `tandemctl --json watch` command line) and reads its events.
    pub(crate) fn spawn(mut cmd: Command, stderr: PathBuf) -> Watch {
        let err_file = File::create(&stderr)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", stderr.display()));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err_file)
            .spawn()
            .expect("start tandemctl watch");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let event = serde_json::from_str(&line).unwrap_or_else(
                    |e| serde_json::json!({"kind": "unparsable", "detail": format!("{e}: {line}")}),
                );
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        Watch {
            child,
            rx,
            seen: Vec::new(),
            stderr,
            ended: false,
        }
    }

    /// Proves the subscription is live: asks `rescan` (through `rescan_once`) until the
    /// `rescan` event of `source` comes back, waiting a little longer each time. Events before
    /// the handshake are forgotten.
    pub(crate) fn handshake(&mut self, source: &str, mut rescan_once: impl FnMut()) {
        let deadline = Instant::now() + HANDSHAKE_LIMIT;
        let mut window = HANDSHAKE_FIRST_WINDOW;
        loop {
            rescan_once();
            let is_ping = |e: &Value| e["kind"] == "rescan" && e["source"] == source;
            if self.next_where(window, is_ping).is_some() {
                break;
            }
            assert!(
                !self.ended && Instant::now() < deadline,
                "`tandemctl watch` never showed the rescan of {source:?} within {HANDSHAKE_LIMIT:?}\n{}",
                self.report()
            );
            window = (window * 2).min(HANDSHAKE_MAX_WINDOW);
        }
        for (_, claimed) in &mut self.seen {
            *claimed = true;
        }
    }

    /// Waits up to `within` for an unclaimed event of `kind` about `item` (any source), and
    /// claims it; fails listing every event seen.
    pub fn expect(&mut self, kind: &str, item: &str, within: Duration) -> Value {
        self.expect_where(&format!("{kind} {item:?}"), within, |e| {
            e["kind"] == kind && e["item"] == item
        })
    }

    /// Waits for all of `events` (kind, item), in any order, all within one deadline from now.
    pub fn expect_all(&mut self, events: &[(&str, &str)], within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        events
            .iter()
            .map(|(kind, item)| {
                let left = deadline.saturating_duration_since(Instant::now());
                self.expect_where(&format!("{kind} {item:?}"), left, |e| {
                    e["kind"] == *kind && e["item"] == *item
                })
            })
            .collect()
    }

    /// Waits up to `within` for an unclaimed event that satisfies `matches`, and claims it;
    /// fails with `what` and every event seen.
    pub fn expect_where(
        &mut self,
        what: &str,
        within: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        match self.next_where(within, matches) {
            Some(event) => event,
            None => panic!(
                "`tandemctl watch` showed no {what} event within {within:?}\n{}",
                self.report()
            ),
        }
    }

    /// Waits up to `within` until some event of `source` (claimed or not) carries local
    /// sequence `sequence` or higher: every event before it has been received by then.
    pub fn expect_sequence(&mut self, source: &str, sequence: u64, within: Duration) {
        let reached = |e: &Value| e["source"] == source && e["sequence"].as_u64() >= Some(sequence);
        if self.seen.iter().any(|(e, _)| reached(e)) {
            return;
        }
        self.expect_where(&format!("{source:?} sequence {sequence}"), within, reached);
    }

    /// Every event received so far, in order.
    pub fn events(&self) -> impl Iterator<Item = &Value> {
        self.seen.iter().map(|(e, _)| e)
    }

    fn next_where(&mut self, within: Duration, matches: impl Fn(&Value) -> bool) -> Option<Value> {
        if let Some((event, claimed)) = self.seen.iter_mut().find(|(e, c)| !*c && matches(e)) {
            *claimed = true;
            return Some(event.clone());
        }
        let deadline = Instant::now() + within;
        while !self.ended {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(event) => {
                    let hit = matches(&event);
                    self.seen.push((event.clone(), hit));
                    if hit {
                        return Some(event);
                    }
                }
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => self.ended = true,
            }
        }
        None
    }

    /// Events seen (claimed ones marked `✓`) and the watch process's stderr.
    fn report(&mut self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(s, "events seen ({}):", self.seen.len());
        for (event, claimed) in &self.seen {
            let mark = if *claimed { '✓' } else { ' ' };
            let _ = writeln!(s, " {mark} {event}");
        }
        if self.ended {
            let status = self.child.try_wait().ok().flatten();
            let _ = writeln!(s, "the watch stream ended (tandemctl status {status:?})");
        }
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        if !stderr.trim().is_empty() {
            let _ = writeln!(s, "tandemctl watch stderr:\n{}", stderr.trim_end());
        }
        s
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Already exited is fine; either way the process is reaped below.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
