//! The agent's side of its hubs. Per hub, a link: it joins each keyed source's space, uploads
//! this device's index as sealed bundles with the chunks the hub does not have yet, and pulls
//! the other members' bundles into the receiving pipeline as one more feed (`feed`). Members
//! connected directly are left to the direct path, so nothing is applied by two receivers at
//! once; both paths move the same cursor, so what one delivered the other skips.
//!
//! Must not: send a source id, a path or content to a hub unsealed; apply anything itself
//! (the receiving pipeline does); hold a member's bundle that does not open as the one asked
//! for.

mod feed;
mod keys;
mod link;
mod objects;
mod upload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::identity::Identity;
use crate::peer::{PeerHandle, Sources};
use crate::store::StoreHandle;

/// How often a link looks for new local changes and new bundles.
const POLL: Duration = Duration::from_millis(250);

/// What the agent's hubs are doing, for `status` and `wait`.
#[derive(Debug, Clone, Default)]
pub struct HubBoard {
    /// By hub device ID.
    pub hubs: BTreeMap<String, HubState>,
}

/// One hub.
#[derive(Debug, Clone, Default)]
pub struct HubState {
    pub address: String,
    pub connected: bool,
    /// The last thing that went wrong with the hub as a whole.
    pub last_error: String,
    /// By source id.
    pub sources: BTreeMap<String, HubSource>,
}

/// One source at one hub.
#[derive(Debug, Clone, Default)]
pub struct HubSource {
    /// This device's index is uploaded through this local sequence.
    pub uploaded: u64,
    /// Bundles and chunks this link uploaded, and their bytes (sealed, as stored).
    pub uploaded_bundles: u64,
    pub uploaded_bytes: u64,
    /// Bytes moved straight to and from the hub's store with presigned URLs, past the hub.
    pub direct_bytes: u64,
    /// By member device ID (members other than this device).
    pub members: BTreeMap<String, HubMember>,
    /// The last thing that went wrong with the source at this hub.
    pub error: String,
}

/// One other member of a source, as seen through one hub.
#[derive(Debug, Clone, Default)]
pub struct HubMember {
    /// The newest of its bundles on the hub: its sequence it covers.
    pub latest: u64,
    /// Its bundles are handed to the receiver through this sequence.
    pub fed: u64,
    /// Applied here through this sequence.
    pub applied: u64,
    /// Items received and not yet dealt with.
    pub needed_items: u64,
    /// When the last listing of its bundles that was gone through began.
    pub listed_at: Option<std::time::Instant>,
    /// Reached directly right now: its bundles are left to the direct path.
    pub direct: bool,
}

impl HubBoard {
    /// Whether `member`'s changes to `source` are all applied here through some connected
    /// hub, as far as a listing of its bundles begun at or after `since` showed them (a
    /// `wait` must not take an older look for the latest), and this device's changes through
    /// `local` are uploaded there.
    #[must_use]
    pub fn in_sync(
        &self,
        source: &str,
        member: &str,
        local: u64,
        since: Option<std::time::Instant>,
    ) -> bool {
        self.hubs.values().filter(|h| h.connected).any(|h| {
            h.sources.get(source).is_some_and(|s| {
                s.uploaded >= local
                    && s.members.get(member).is_some_and(|m| {
                        m.listed_at
                            .is_some_and(|at| since.is_none_or(|since| at >= since))
                            && m.applied >= m.latest
                            && m.needed_items == 0
                    })
            })
        })
    }

    /// Why this device's changes to `source` through `local` are not all at every hub it
    /// uses, if they are not: a hub not reached (only with `all`), or one still uploading.
    #[must_use]
    pub fn not_uploaded(&self, source: &str, local: u64, all: bool) -> Option<String> {
        for (id, h) in &self.hubs {
            if !h.connected {
                if all {
                    let why = if h.last_error.is_empty() {
                        "not connected yet"
                    } else {
                        h.last_error.as_str()
                    };
                    return Some(format!("hub {id} not reached: {why}"));
                }
                continue;
            }
            let Some(s) = h.sources.get(source) else {
                // Every keyed source is joined at every hub the device uses.
                return Some(format!("hub {id}: the source is not joined there yet"));
            };
            if s.uploaded < local {
                let error = if s.error.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", s.error)
                };
                return Some(format!(
                    "hub {id} has this device's changes through {} of {local}{error}",
                    s.uploaded
                ));
            }
        }
        None
    }

    /// Whether any connected hub serves `source` with `member` in it.
    #[must_use]
    pub fn reaches(&self, source: &str, member: &str) -> bool {
        self.hubs.values().filter(|h| h.connected).any(|h| {
            h.sources
                .get(source)
                .is_some_and(|s| s.members.contains_key(member))
        })
    }
}

/// What every link needs.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub identity: Arc<Identity>,
    pub store: StoreHandle,
    pub sources: Arc<dyn Sources>,
    pub peers: PeerHandle,
    pub board: Arc<watch::Sender<HubBoard>>,
    /// Woken when this board changes, for `wait`.
    pub changed: Arc<Notify>,
    pub cancel: CancellationToken,
    pub tasks: TaskTracker,
    /// For presigned URLs into a hub's S3 store.
    pub http: Option<reqwest::Client>,
}

impl Ctx {
    fn update(&self, hub: &str, f: impl FnOnce(&mut HubState)) {
        self.board
            .send_modify(|b| f(b.hubs.entry(hub.to_owned()).or_default()));
        self.changed.notify_waiters();
    }

    fn update_source(&self, hub: &str, source: &str, f: impl FnOnce(&mut HubSource)) {
        self.update(hub, |h| f(h.sources.entry(source.to_owned()).or_default()));
    }
}

/// A handle on the agent's hub links.
#[derive(Clone)]
pub struct HubClients {
    board: Arc<watch::Sender<HubBoard>>,
    wake: Arc<Notify>,
    tasks: TaskTracker,
}

impl HubClients {
    /// The latest board.
    #[must_use]
    pub fn board(&self) -> HubBoard {
        self.board.borrow().clone()
    }

    /// The hubs or the sources changed: links are started and stopped to match at once.
    pub fn changed(&self) {
        self.wake.notify_one();
    }

    /// Waits until every link has ended (they stop when the agent's cancellation fires).
    pub async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Starts the links to every hub in the store, and keeps them in step with it.
pub fn start(
    identity: Arc<Identity>,
    store: StoreHandle,
    sources: Arc<dyn Sources>,
    peers: PeerHandle,
    changed: Arc<Notify>,
    cancel: CancellationToken,
) -> HubClients {
    let board = Arc::new(watch::Sender::new(HubBoard::default()));
    let wake = Arc::new(Notify::new());
    let tasks = TaskTracker::new();
    // reqwest's TLS takes the process's provider: ring, as everywhere else here (an error
    // only means one is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(300))
        .build()
        .map_err(|e| tracing::warn!(error = %e, "no HTTP client; hub objects go through the hubs"))
        .ok();
    let ctx = Ctx {
        identity,
        store,
        sources,
        peers,
        board: board.clone(),
        changed,
        cancel,
        tasks: tasks.clone(),
        http,
    };
    let woken = wake.clone();
    tasks.spawn(async move { supervise(ctx, woken).await }.instrument(tracing::info_span!("hubs")));
    HubClients { board, wake, tasks }
}

/// Keeps one link per hub in the store: started for a new hub, stopped for one removed or
/// readdressed.
async fn supervise(ctx: Ctx, wake: Arc<Notify>) {
    let mut links: BTreeMap<String, (String, CancellationToken)> = BTreeMap::new();
    loop {
        let hubs = ctx.store.hubs().await.unwrap_or_default();
        let wanted: BTreeMap<String, String> =
            hubs.into_iter().map(|h| (h.device_id, h.address)).collect();
        links.retain(|id, (address, token)| {
            let keep = wanted.get(id) == Some(address);
            if !keep {
                token.cancel();
                ctx.board.send_modify(|b| {
                    b.hubs.remove(id);
                });
            }
            keep
        });
        for (id, address) in wanted {
            if links.contains_key(&id) {
                continue;
            }
            let token = ctx.cancel.child_token();
            let (link_ctx, hub, addr, stop) =
                (ctx.clone(), id.clone(), address.clone(), token.clone());
            ctx.tasks.spawn(
                async move { link::run(link_ctx, hub, addr, stop).await }
                    .instrument(tracing::info_span!("hub", hub = %short(&id))),
            );
            links.insert(id, (address, token));
        }
        tokio::select! {
            () = ctx.cancel.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// The first group of a device ID, for logs.
fn short(device: &str) -> &str {
    device.split('-').next().unwrap_or(device)
}
