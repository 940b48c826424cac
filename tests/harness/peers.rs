//! Several agents as one test sees them: introducing them to each other, sharing a source
//! with named devices, and waiting until they are connected and agree.
//!
//! Everything goes through `tandemctl --json` (`id`, `peer add`, `source add --peer`, `status`,
//! `wait`). A fresh connection gives no signal when it comes up, so [`Agent::await_connected`]
//! polls `status` with the harness's one bounded backoff; after that, [`Agent::sync_with`]
//! waits with `tandemctl wait`. Must not: sleep to "let sync finish", or look inside the agents.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Agent, backoff};

/// Shortest `--timeout` handed to one `tandemctl wait` inside [`Agent::sync_with`].
const MIN_WAIT: Duration = Duration::from_secs(1);

/// Introduces two agents to each other: each pins the other's device ID at the address it
/// listens on now.
pub fn pair(a: &Agent, b: &Agent) {
    a.add_peer(b);
    b.add_peer(a);
}

impl Agent {
    /// This agent's device ID (`tandemctl id`); the same across restarts on one home.
    pub fn device_id(&self) -> String {
        text(&self.json(&["id"]), "device_id")
    }

    /// The address the agent's peer listener is bound to now; started on `127.0.0.1:0`, it
    /// changes with every restart.
    pub fn listen(&self) -> String {
        text(&self.json(&["id"]), "listen")
    }

    /// `tandemctl peer add ID ADDR`: pins `other`, dialled at its current address.
    pub fn add_peer(&self, other: &Agent) -> Value {
        let id = other.json(&["id"]);
        self.json(&["peer", "add", &text(&id, "device_id"), &text(&id, "listen")])
    }

    /// `tandemctl peer add ID ADDR`: pins `other`, dialled at `address` (a proxy in front of
    /// it, say) instead of where it listens. Pinning a known device again only moves it.
    pub fn add_peer_at(&self, other: &Agent, address: &str) -> Value {
        self.json(&["peer", "add", &other.device_id(), address])
    }

    /// `tandemctl source add ID PATH --peer …`: a source shared with each of `peers`.
    pub fn share(&self, id: &str, path: &std::path::Path, peers: &[&Agent]) -> Value {
        let path = path.to_str().expect("temp paths are UTF-8");
        let devices: Vec<String> = peers.iter().map(|p| p.device_id()).collect();
        let mut args = vec!["source", "add", id, path];
        for device in &devices {
            args.extend(["--peer", device.as_str()]);
        }
        self.json(&args)
    }

    /// The progress of `source` with `peer`, from `status --json` (`sources[].progress[]`).
    pub fn progress(&self, source: &str, peer: &Agent) -> Value {
        let device = peer.device_id();
        let s = self.source(source);
        s["progress"]
            .as_array()
            .and_then(|all| all.iter().find(|p| p["device_id"] == device.as_str()))
            .cloned()
            .unwrap_or_else(|| panic!("source {source:?} has no progress for {device}:\n{s:#}"))
    }

    /// Waits until this agent is connected to every one of `peers`: `status --json` lists
    /// each as connected, and so does every source shared with it. Fails after `limit`,
    /// printing the last status.
    pub fn await_connected(&self, peers: &[&Agent], limit: Duration) {
        let devices: Vec<String> = peers.iter().map(|p| p.device_id()).collect();
        let mut last = Value::Null;
        let up = backoff::retry_with_backoff(limit, || {
            last = self.status();
            devices.iter().all(|d| connected(&last, d)).then_some(())
        });
        assert!(
            up.is_some(),
            "not connected to {devices:?} within {limit:?}; status then:\n{last:#}"
        );
    }

    /// Waits until this agent is connected to every one of `peers` and in sync with them:
    /// `tandemctl wait --connected` succeeds and `status --json` then shows every source
    /// shared with them `in_sync` with each. (Other devices a source is shared with may be
    /// down; `--connected` does not wait for them, and the status check names the ones that
    /// count.)
    pub fn sync_with(&self, peers: &[&Agent], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        self.await_connected(peers, timeout);
        let devices: Vec<String> = peers.iter().map(|p| p.device_id()).collect();
        let mut last = Value::Null;
        let synced = backoff::retry_with_backoff(left(deadline), || {
            self.wait_connected(left(deadline).max(MIN_WAIT));
            last = self.status();
            devices.iter().all(|d| in_sync(&last, d)).then_some(())
        });
        assert!(
            synced.is_some(),
            "`wait` passed, but status never showed every source in sync with {devices:?} \
             within {timeout:?}; status then:\n{last:#}"
        );
    }
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// A string field of a JSON object, failing with the object when it is missing.
fn text(v: &Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string in {v:#}"))
        .to_owned()
}

/// The progress entries for `device` in every source of a `status --json` reply.
fn progress_for<'a>(status: &'a Value, device: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    status["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["progress"].as_array())
        .flatten()
        .filter(move |p| p["device_id"] == device)
}

fn connected(status: &Value, device: &str) -> bool {
    let peer_up = status["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["device_id"] == device && p["connected"] == true);
    peer_up && progress_for(status, device).all(|p| p["connected"] == true)
}

fn in_sync(status: &Value, device: &str) -> bool {
    connected(status, device) && progress_for(status, device).all(|p| p["in_sync"] == true)
}

/// Two agents that know each other and share source `docs`; `fill_a` and `fill_b` put files
/// in each one's folder before it is shared. Not yet waited on.
pub fn two_sharing(
    fill_a: impl FnOnce(&std::path::Path),
    fill_b: impl FnOnce(&std::path::Path),
) -> (Agent, std::path::PathBuf, Agent, std::path::PathBuf) {
    let a = Agent::start();
    let b = Agent::start();
    let (da, db) = (a.data_dir("docs"), b.data_dir("docs"));
    fill_a(&da);
    fill_b(&db);
    pair(&a, &b);
    a.share("docs", &da, &[&b]);
    b.share("docs", &db, &[&a]);
    (a, da, b, db)
}

/// Two agents sharing source `docs` (A's folder filled by `fill_a`) that meet only through a
/// proxy holding every read back `delay`: a large sync then runs for many seconds, long
/// enough to look at it or stop an agent in the middle of it. `proxy.delay(ZERO)` ends that.
pub fn two_sharing_slowly(fill_a: impl FnOnce(&std::path::Path), delay: Duration) -> SlowPair {
    let (a, b) = (Agent::start(), Agent::start());
    let (da, db) = (a.data_dir("docs"), b.data_dir("docs"));
    fill_a(&da);
    let mut proxy = crate::proxy::Proxy::new();
    let to_a = proxy.route(&a.listen());
    let to_b = proxy.route(&b.listen());
    proxy.delay(delay);
    a.add_peer_at(&b, &to_b);
    b.add_peer_at(&a, &to_a);
    a.share("docs", &da, &[&b]);
    b.share("docs", &db, &[&a]);
    SlowPair {
        a,
        da,
        b,
        db,
        proxy,
    }
}

/// What [`two_sharing_slowly`] starts.
pub struct SlowPair {
    pub a: Agent,
    pub da: std::path::PathBuf,
    pub b: Agent,
    pub db: std::path::PathBuf,
    pub proxy: crate::proxy::Proxy,
}

/// Waits until `first` and then `second` are in sync with each other. The side that changed
/// goes first: once it is in sync, the other has applied everything it numbered.
pub fn settle(first: &Agent, second: &Agent, timeout: Duration) {
    first.sync_with(&[second], timeout);
    second.sync_with(&[first], timeout);
}
