//! The per-source task: watcher → scanner → differences → store → events.
//!
//! One task owns everything about one source; others reach it through a [`SourceHandle`]
//! (commands in, a status snapshot out). Scans run on the blocking pool. Must not: own
//! sockets or block the runtime.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use crate::apply::{self, ApplyError, Disk};
use crate::events::{Event, EventBus, EventKind, unix_ms_now};
use crate::formats::{self, Format};
use crate::ignores::{IGNORE_FILE, Ignores};
use crate::index::{ShortId, VersionVector};
use crate::item::{Body, Content, Difference, FileChange, Header, PathRange, PriorItem};
use crate::layout::{create_marker, marker_path};
use crate::scanner::{self, Found, PriorCursor, PriorError, ScanError, ScanRequest, Scope, Sink};
use crate::store::{self, Reply, StoreHandle, Totals};
use crate::universal::RemoteItem;
use crate::watcher::{self, Debouncer, Pending, WatchEvent};

mod gone;
mod move_finder;
mod moved;
mod own_writes;
mod records;
mod remote;

pub use gone::RecentlyGone;
use move_finder::{MoveFinder, Outcome};
use own_writes::OwnWrites;

/// Differences committed per SQLite transaction during a scan.
const COMMIT_BATCH: usize = 1000;
/// How often a stopped source checks whether its folder is back.
const ERROR_RETRY: Duration = Duration::from_secs(5);
/// Full rescan interval when the OS refuses a file watch.
const UNWATCHED_RESCAN: Duration = Duration::from_secs(60);

/// Everything a source task needs to know at start.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub id: String,
    pub root: PathBuf,
    pub format: String,
    pub paused: bool,
    pub peers: Vec<String>,
    /// This device, whose counter a local change bumps.
    pub local: ShortId,
    /// This device's short name, for conflict copy names.
    pub local_short_name: String,
    pub debounce: Duration,
    pub debounce_max: Duration,
    pub rescan_interval: Duration,
    /// Retention of the versions folder (`None`: forever).
    pub versions_keep: Option<Duration>,
    /// The vCard version new contacts are written in (empty: the one the source uses).
    pub vcard_version: String,
    /// Where writes into the source go (the real disk, or a faulty one in tests).
    pub disk: Arc<dyn Disk>,
}

/// Coarse state of a source, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The first scan has not finished yet, or a scan is running.
    Scanning,
    /// Scanned, watching, nothing pending.
    Idle,
    /// Paused by the user: not watched, not scanned.
    Paused,
    /// Stopped because the source as a whole cannot be read.
    Error,
}

impl State {
    /// The name `status` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Scanning => "scanning",
            State::Idle => "idle",
            State::Paused => "paused",
            State::Error => "error",
        }
    }
}

/// A read-only snapshot of one source, published after every change.
#[derive(Debug, Clone)]
pub struct SourceStatus {
    pub id: String,
    pub path: PathBuf,
    pub format: String,
    pub state: State,
    pub error: Option<String>,
    pub totals: Totals,
    pub hashed_bytes: u64,
    pub scans: u64,
    pub last_scan_unix_ms: u64,
    /// Items that could not be read, with the reason, by item path.
    pub item_errors: BTreeMap<String, String>,
    pub peers: Vec<String>,
    /// Events or rechecks are waiting: not settled yet.
    pub pending: bool,
    /// This device's `.tandemignore` patterns, as of the last full scan.
    pub ignores: Arc<Ignores>,
    /// What an earlier run left is dealt with (stale temp files removed, interrupted applies
    /// recovered): content may be built for the source from now on.
    pub started: bool,
}

impl SourceStatus {
    /// True when nothing is left to do locally: scanned, nothing pending (or paused).
    pub fn settled(&self) -> bool {
        match self.state {
            State::Paused => true,
            State::Idle => !self.pending,
            State::Scanning | State::Error => false,
        }
    }
}

/// Commands a source task accepts.
#[derive(Debug)]
enum Msg {
    /// Replies once the rescan is queued and the status says so.
    Rescan(oneshot::Sender<()>),
    Pause(oneshot::Sender<()>),
    Resume(oneshot::Sender<()>),
    /// A peer's difference, content already built and verified in a temp file if it has any.
    Apply(Vec<RemoteApply>, oneshot::Sender<Vec<ApplyOutcome>>),
    /// A peer's folder move, to apply as one rename if it checks out here.
    ApplyMove(MoveApply, oneshot::Sender<MoveOutcome>),
    /// The devices the source is shared with changed (`source unshare`, or a removal seen at
    /// a hub).
    SetPeers(Vec<String>),
}

/// A peer's folder move whose entries this device derived from its own prior state, to apply
/// as one rename.
#[derive(Debug)]
pub struct MoveApply {
    pub from: crate::universal::ItemPath,
    pub to: crate::universal::ItemPath,
    /// The entries the move stands for: additions (parents first), then deletions.
    pub items: Vec<RemoteItem>,
    /// Short ID of the peer it came from, for events.
    pub peer: String,
    /// Full device ID of that peer: the items are not echoed back to it.
    pub peer_device: String,
}

/// What became of a folder move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveOutcome {
    /// Renamed, and every entry recorded.
    Moved,
    /// Not done as one rename (nothing of it was written); why. Its entries go one by one.
    ItemByItem(String),
}

/// One remote difference handed to the source task for the final, local step.
#[derive(Debug)]
pub struct RemoteApply {
    pub item: RemoteItem,
    /// Verified content beside the target (files with new content only).
    pub temp: Option<PathBuf>,
    /// Short ID of the peer it came from, for events and conflict copy names.
    pub from: String,
    /// Full device ID of that peer: the item is not echoed back to it.
    pub from_device: String,
}

/// What became of a remote difference.
#[derive(Debug, Clone)]
pub enum ApplyOutcome {
    /// Written (and recorded with the rest of its batch).
    Applied,
    /// Not needed: this device has the same or a newer version (or wins the conflict).
    Skipped,
    /// Could not be applied now; it is tried again later.
    Failed(ApplyFailure),
}

impl ApplyOutcome {
    /// True when the item was written.
    pub fn is_applied(&self) -> bool {
        matches!(self, ApplyOutcome::Applied)
    }
}

/// Why a remote difference could not be applied now. Each message says what happens next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyFailure {
    #[error("the source is paused; it applies once resumed")]
    Paused,
    #[error("the source is stopped: {0}")]
    SourceStopped(String),
    #[error("the source stopped")]
    SourceGone,
    #[error("{item}: changed here while it was being prepared; it is fetched again")]
    ChangedWhilePrepared { item: String },
    #[error("it changed on this device while being applied; it is compared again shortly")]
    Busy,
    /// Writing it failed; the error names the item and what to do.
    #[error(transparent)]
    Write(Arc<ApplyError>),
    /// Its prior state or its target could not be looked at.
    #[error("{0}")]
    Lookup(String),
    #[error("{action} failed: {source}; it is tried again")]
    Store {
        action: &'static str,
        source: Arc<store::Error>,
    },
    #[error("{what} failed: {error}; it is tried again")]
    Task { what: &'static str, error: String },
}

/// A source as the peer side and the receiving pipeline need it: where it is, how to hand it
/// differences, and its latest status.
#[derive(Debug, Clone)]
pub struct SharedSource {
    pub id: String,
    pub root: PathBuf,
    pub commander: SourceCommander,
    pub status: watch::Receiver<SourceStatus>,
    /// Where content built for it is written.
    pub disk: Arc<dyn Disk>,
    /// Content its scans found gone lately (moved, most likely).
    pub gone: Arc<RecentlyGone>,
}

impl SharedSource {
    /// Returns once the source task has dealt with what an earlier run left, so a temp file
    /// built now cannot be taken for a stale one and removed; at once if the task is gone.
    pub async fn started(&self) {
        let mut status = self.status.clone();
        let _ = status.wait_for(|s| s.started).await;
    }
}

/// Cloneable sender of commands to one source task.
#[derive(Debug, Clone)]
pub struct SourceCommander {
    tx: mpsc::Sender<Msg>,
}

impl SourceCommander {
    /// Asks for a full rescan; returns once the source shows it as pending, so a `wait`
    /// that follows cannot miss it.
    pub async fn rescan(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Rescan(tx)).await.is_ok() {
            // A task that stops first has nothing left to rescan.
            let _ = rx.await;
        }
    }

    /// Pauses watching and scanning; returns once paused.
    pub async fn pause(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Pause(tx)).await.is_ok() {
            // The task answers unless it stops first, which also means "not running".
            let _ = rx.await;
        }
    }

    /// Resumes after a pause (and rescans); returns once resumed.
    pub async fn resume(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Resume(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The devices the source is shared with are now `peers`.
    pub async fn set_peers(&self, peers: Vec<String>) {
        let _ = self.tx.send(Msg::SetPeers(peers)).await;
    }

    /// Applies a peer's folder move as one rename if it checks out here; otherwise nothing
    /// of it is written and the outcome says why.
    pub async fn apply_move(&self, mv: MoveApply) -> MoveOutcome {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::ApplyMove(mv, tx)).await.is_ok()
            && let Ok(outcome) = rx.await
        {
            return outcome;
        }
        MoveOutcome::ItemByItem("the source stopped".into())
    }

    /// Applies peers' differences in order (checks, writes) and records them in one
    /// transaction; one outcome per difference.
    pub async fn apply(&self, batch: Vec<RemoteApply>) -> Vec<ApplyOutcome> {
        let temps: Vec<PathBuf> = batch.iter().filter_map(|r| r.temp.clone()).collect();
        let n = batch.len();
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Apply(batch, tx)).await.is_ok()
            && let Ok(outcomes) = rx.await
        {
            return outcomes;
        }
        // The source is gone; nothing will use the built content.
        let removed =
            tokio::task::spawn_blocking(move || temps.iter().for_each(|t| apply::remove_temp(t)));
        if removed.await.is_err() {
            warn!("removing unused temp files failed; they go at the next start");
        }
        vec![ApplyOutcome::Failed(ApplyFailure::SourceGone); n]
    }
}

/// Handle to a running source task.
#[derive(Debug)]
pub struct SourceHandle {
    tx: mpsc::Sender<Msg>,
    disk: Arc<dyn Disk>,
    gone: Arc<RecentlyGone>,
    status: watch::Receiver<SourceStatus>,
    cancel: CancellationToken,
    join: JoinHandle<()>,
}

impl SourceHandle {
    /// The latest status snapshot.
    pub fn status(&self) -> SourceStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every new status snapshot.
    pub fn subscribe(&self) -> watch::Receiver<SourceStatus> {
        self.status.clone()
    }

    /// Where writes into this source go.
    pub fn disk(&self) -> Arc<dyn Disk> {
        self.disk.clone()
    }

    /// Content the source's scans found gone lately.
    pub fn gone(&self) -> Arc<RecentlyGone> {
        self.gone.clone()
    }

    /// A cloneable sender of commands to this source.
    pub fn commander(&self) -> SourceCommander {
        SourceCommander {
            tx: self.tx.clone(),
        }
    }

    /// Stops the task and waits for it to finish its current transaction.
    pub async fn stop(self) {
        self.cancel.cancel();
        if let Err(e) = self.join.await {
            warn!(error = %e, "source task ended abnormally");
        }
    }
}

/// Starts the task for one source.
pub fn spawn(
    cfg: SourceConfig,
    store: StoreHandle,
    events: EventBus,
    changed: Arc<Notify>,
    cancel: CancellationToken,
) -> SourceHandle {
    let status = SourceStatus {
        id: cfg.id.clone(),
        path: cfg.root.clone(),
        format: cfg.format.clone(),
        state: if cfg.paused {
            State::Paused
        } else {
            State::Scanning
        },
        error: None,
        totals: Totals::default(),
        hashed_bytes: 0,
        scans: 0,
        last_scan_unix_ms: 0,
        item_errors: BTreeMap::new(),
        peers: cfg.peers.clone(),
        pending: !cfg.paused,
        ignores: Arc::new(Ignores::default()),
        started: false,
    };
    let format = formats::by_name(&cfg.format);
    let (status_tx, status_rx) = watch::channel(status);
    let (tx, rx) = mpsc::channel(64);
    let span = tracing::info_span!("source", id = %cfg.id);
    let format = match format {
        Ok(format) => format,
        Err(e) => {
            // Recorded by a build that knew this format: keep it, do nothing with it, say why.
            let message = format!("{e} (this build cannot read the source's format)");
            warn!(source = %cfg.id, error = %message, "source not started");
            status_tx.send_modify(|s| {
                s.state = State::Error;
                s.error = Some(message);
                s.pending = false;
            });
            let stopped = cancel.clone();
            let join = tokio::spawn(async move {
                let _keep_status = status_tx;
                let _keep_inbox = rx;
                stopped.cancelled().await;
            });
            return SourceHandle {
                tx,
                disk: cfg.disk.clone(),
                gone: Arc::default(),
                status: status_rx,
                cancel,
                join,
            };
        }
    };
    let disk = cfg.disk.clone();
    let gone = Arc::new(RecentlyGone::default());
    let task = SourceTask {
        gone: gone.clone(),
        format,
        debouncer: Debouncer::new(cfg.debounce, cfg.debounce_max),
        cfg,
        store,
        events,
        changed,
        status: status_tx,
        inbox: rx,
        cancel: cancel.clone(),
        watcher: None,
        watch_rx: None,
        racy: HashSet::new(),
        racy_deadline: None,
        next_full: Instant::now(),
        retry_at: None,
        deferred: Vec::new(),
        deferred_moves: Vec::new(),
        applied_records: Vec::new(),
        written_batches: Vec::new(),
        disturbed: HashSet::new(),
        own_writes: OwnWrites::default(),
        record_source: None,
    };
    let join = tokio::spawn(task.run().instrument(span));
    SourceHandle {
        tx,
        disk,
        gone,
        status: status_rx,
        cancel,
        join,
    }
}

struct SourceTask {
    cfg: SourceConfig,
    /// How the source's data is read and written.
    format: &'static dyn Format,
    store: StoreHandle,
    events: EventBus,
    changed: Arc<Notify>,
    status: watch::Sender<SourceStatus>,
    inbox: mpsc::Receiver<Msg>,
    cancel: CancellationToken,
    watcher: Option<watcher::Watcher>,
    watch_rx: Option<mpsc::Receiver<WatchEvent>>,
    debouncer: Debouncer,
    racy: HashSet<String>,
    racy_deadline: Option<Instant>,
    next_full: Instant,
    retry_at: Option<Instant>,
    /// Remote differences that arrived during a scan.
    deferred: Vec<(Vec<RemoteApply>, oneshot::Sender<Vec<ApplyOutcome>>)>,
    /// Folder moves that arrived during a scan.
    deferred_moves: Vec<(MoveApply, oneshot::Sender<MoveOutcome>)>,
    /// Applied remote differences not yet committed.
    applied_records: Vec<AppliedRecord>,
    /// Journal batches written whose records are among `applied_records`: the commit of
    /// those records settles them.
    written_batches: Vec<u64>,
    /// Items written for a peer that someone changed right after; rehashed after the batch.
    disturbed: HashSet<String>,
    /// What this task wrote for peers, so the events of those writes cost no scan.
    own_writes: OwnWrites,
    /// Content its scans found gone, for the senders.
    gone: Arc<RecentlyGone>,
    /// A record source, open between reads and writes (record formats only).
    record_source: Option<Box<dyn formats::record_io::RecordSource>>,
}

/// Receives from an optional channel; without one, waits forever.
async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Why a scan ended early.
enum Stop {
    Cancelled,
    /// The user paused the source mid-scan; reply once paused.
    Paused(oneshot::Sender<()>),
    /// The source as a whole cannot be scanned now.
    Source(SourceError),
}

/// Why a whole source stopped. Nothing is sent as deleted while it is; the source is checked
/// again every few seconds.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "the source marker {marker} is missing, so this may not be the source's folder (an \
         unmounted disk?); nothing is sent as deleted. Mount the disk, or if this is the right \
         folder, recreate the marker with `mkdir {marker}`"
    )]
    MarkerMissing { marker: String },
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("reading or recording its state failed: {0}")]
    Store(#[from] store::Error),
    #[error("the scanner crashed: {0}; it is restarted")]
    Crashed(String),
    #[error(transparent)]
    Records(#[from] Box<records::RecordsError>),
}

impl SourceTask {
    async fn run(mut self) {
        match self.store.totals(self.cfg.id.clone()).await {
            Ok(totals) => {
                // A source that never recorded anything gets its marker now; one that has,
                // and lost it, is probably an unmounted disk and must stop instead.
                if totals.sequence == 0 {
                    let root = self.cfg.root.clone();
                    let made = tokio::task::spawn_blocking(move || {
                        if root.is_dir() {
                            create_marker(&root)
                        } else {
                            Ok(())
                        }
                    })
                    .await;
                    if let Ok(Err(e)) = made {
                        warn!(error = %e, "cannot create the source marker");
                    }
                }
                self.publish(|s| s.totals = totals)
            }
            Err(e) => warn!(error = %e, "cannot read the source's totals"),
        }
        // Patterns first: a peer's items may arrive before the first scan.
        let root = self.cfg.root.clone();
        if let Ok(Ok((ignores, _))) =
            tokio::task::spawn_blocking(move || Ignores::load(&root)).await
        {
            self.publish(|s| s.ignores = Arc::new(ignores));
        }
        self.prune_versions().await;
        // Temp files a crash left behind never hold anything the prior state relies on.
        let root = self.cfg.root.clone();
        let single = self.format.layout() == formats::Layout::SingleFile;
        let reset = tokio::task::spawn_blocking(move || {
            if single {
                // Its one temp file lies beside it; there is no temp folder.
                formats::record_file::remove_stale_temp(&root);
                return (0, Ok(()));
            }
            let removed = apply::remove_stale_temps(&root);
            (removed, apply::ensure_temp_dir(&root))
        })
        .await;
        match reset {
            Ok((removed, Ok(()))) if removed > 0 => {
                info!(removed, "removed temp files left by an earlier run");
            }
            Ok((_, Err(e))) => {
                // Temp files then go beside their targets, which works, only with more events.
                warn!(error = %e, "cannot make the source's temp folder");
            }
            _ => {}
        }
        // Before the first scan, which would take an interrupted apply for a local change.
        self.recover_intents().await;
        self.publish(|s| s.started = true);
        if !self.cfg.paused {
            self.start_watching();
            self.debouncer.push_full(Instant::now());
            self.publish(|s| s.pending = true);
        }
        loop {
            // Every event that came while the task was busy (applying a peer's batch writes
            // hundreds of files) is taken in now, at once: the select below takes one per
            // turn and prefers the inbox, so a busy sync would otherwise let them pile up
            // until the channel overflows and the whole source is rescanned.
            self.take_watch_events();
            let deadline = self.debouncer.deadline();
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                msg = self.inbox.recv() => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => break,
                },
                ev = recv_opt(&mut self.watch_rx) => match ev {
                    Some(ev) => self.on_watch(ev),
                    None => self.watch_lost("the file watch stopped"),
                },
                () = sleep_opt(deadline) => {
                    if let Some(pending) = self.debouncer.take() {
                        self.run_pending(pending).await;
                    }
                }
                () = sleep_opt(self.racy_deadline) => {
                    self.racy_deadline = None;
                    let paths: Vec<String> = self.racy.iter().cloned().collect();
                    let force = std::mem::take(&mut self.racy);
                    self.scan(Scope::Under(paths), force).await;
                }
                () = tokio::time::sleep_until(self.next_full), if !self.cfg.paused && self.retry_at.is_none() => {
                    debug!("periodic full rescan");
                    self.prune_versions().await;
                    self.debouncer.push_full(Instant::now());
                    self.next_full = Instant::now() + self.cfg.rescan_interval;
                }
                () = sleep_opt(self.retry_at) => {
                    self.retry_at = None;
                    self.start_watching();
                    self.debouncer.push_full(Instant::now());
                }
            }
            for (batch, done) in std::mem::take(&mut self.deferred) {
                let outcomes = self.apply_batch(batch).await;
                let _ = done.send(outcomes);
            }
            for (mv, done) in std::mem::take(&mut self.deferred_moves) {
                let outcome = self.apply_move(mv).await;
                let _ = done.send(outcome);
            }
            self.publish_pending();
        }
        debug!("source task stopped");
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::SetPeers(peers) => self.set_peers(peers),
            Msg::Rescan(done) => {
                if !self.cfg.paused {
                    self.events
                        .emit(Event::now(&self.cfg.id, EventKind::Rescan));
                    self.debouncer.push_full(Instant::now());
                    self.publish_pending();
                }
                let _ = done.send(());
            }
            Msg::Pause(done) => {
                if !self.cfg.paused {
                    self.cfg.paused = true;
                    self.watcher = None;
                    self.watch_rx = None;
                    self.debouncer.take();
                    self.racy.clear();
                    self.racy_deadline = None;
                    self.retry_at = None;
                    self.publish(|s| {
                        s.state = State::Paused;
                        s.pending = false;
                    });
                    self.events
                        .emit(Event::now(&self.cfg.id, EventKind::Paused));
                    info!("paused");
                }
                let _ = done.send(());
            }
            Msg::Apply(batch, done) => {
                let outcomes = self.apply_batch(batch).await;
                let _ = done.send(outcomes);
            }
            Msg::ApplyMove(mv, done) => {
                let outcome = self.apply_move(mv).await;
                let _ = done.send(outcome);
            }
            Msg::Resume(done) => {
                if self.cfg.paused {
                    self.cfg.paused = false;
                    self.start_watching();
                    // Whatever happened while paused is found by a full scan.
                    self.debouncer.push_full(Instant::now());
                    self.publish(|s| {
                        s.state = State::Scanning;
                        s.pending = true;
                    });
                    self.events
                        .emit(Event::now(&self.cfg.id, EventKind::Resumed));
                    info!("resumed");
                }
                let _ = done.send(());
            }
        }
    }

    /// Drops kept versions older than the retention period.
    async fn prune_versions(&self) {
        let Some(keep) = self.cfg.versions_keep else {
            return;
        };
        let single = self.format.layout() == formats::Layout::SingleFile;
        let base = crate::layout::versions_dir_of(&self.cfg.root, single);
        if let Ok(removed) =
            tokio::task::spawn_blocking(move || crate::versions::prune_in(&base, keep)).await
            && removed > 0
        {
            info!(removed, "removed versions past their retention");
        }
    }

    fn start_watching(&mut self) {
        if self.watcher.is_some() {
            return;
        }
        let (tx, rx) = mpsc::channel(4096);
        let watched = if self.format.layout() == formats::Layout::SingleFile {
            watcher::watch_file(&self.cfg.root, tx)
        } else {
            watcher::watch(&self.cfg.root, tx)
        };
        match watched {
            Ok(w) => {
                self.watcher = Some(w);
                self.watch_rx = Some(rx);
                self.next_full = Instant::now() + self.cfg.rescan_interval;
            }
            Err(e) => {
                warn!(
                    error = %e,
                    "cannot watch the source folder; falling back to a full rescan every {}s \
                     (on Linux, raise fs.inotify.max_user_watches)",
                    UNWATCHED_RESCAN.as_secs()
                );
                self.next_full = Instant::now() + UNWATCHED_RESCAN;
            }
        }
    }

    fn watch_lost(&mut self, why: &str) {
        warn!("{why}; rescanning and watching again");
        self.watcher = None;
        self.watch_rx = None;
        if !self.cfg.paused {
            self.start_watching();
            self.debouncer.push_full(Instant::now());
        }
    }

    /// Takes in every watcher event already queued, without waiting.
    fn take_watch_events(&mut self) {
        let mut taken = Vec::new();
        if let Some(rx) = &mut self.watch_rx {
            while let Ok(ev) = rx.try_recv() {
                taken.push(ev);
            }
        }
        for ev in taken {
            self.on_watch(ev);
        }
    }

    fn on_watch(&mut self, ev: WatchEvent) {
        if self.cfg.paused {
            return;
        }
        if let WatchEvent::Rescan { reason } = &ev {
            warn!(reason = %reason, "file events were lost; scanning the whole source");
        }
        // New patterns change what is in the source: look at all of it again.
        let patterns_changed =
            matches!(&ev, WatchEvent::Paths(p) if p.iter().any(|x| x == IGNORE_FILE));
        self.debouncer.push(Instant::now(), ev);
        if patterns_changed {
            self.debouncer.push_full(Instant::now());
        }
    }

    async fn run_pending(&mut self, pending: Pending) {
        let overflowed = self
            .watcher
            .as_ref()
            .is_some_and(watcher::Watcher::take_overflow);
        let scope = if overflowed {
            warn!("the watch queue overflowed; scanning the whole source");
            Scope::Full
        } else {
            match pending {
                Pending::Full => Scope::Full,
                Pending::Paths(paths) => {
                    let paths = self.drop_own_writes(paths).await;
                    if paths.is_empty() {
                        return;
                    }
                    debug!(paths = paths.len(), first = %paths[0], "scanning what events named");
                    Scope::Under(paths)
                }
            }
        };
        self.scan(scope, HashSet::new()).await;
    }

    /// The event paths still to scan once those that only echo this task's own writes are
    /// dropped (one trip to the blocking pool).
    async fn drop_own_writes(&mut self, paths: Vec<String>) -> Vec<String> {
        if self.own_writes.is_empty() {
            return paths;
        }
        let mut own = std::mem::take(&mut self.own_writes);
        let root = self.cfg.root.clone();
        let kept = paths.clone();
        match tokio::task::spawn_blocking(move || {
            let scan = own.worth_scanning(&root, paths);
            (own, scan)
        })
        .await
        {
            Ok((own, scan)) => {
                self.own_writes = own;
                scan
            }
            // Scanning everything is always safe.
            Err(_) => kept,
        }
    }

    /// Publishes a change to the status snapshot and wakes anyone waiting on it.
    fn set_peers(&mut self, peers: Vec<String>) {
        self.cfg.peers.clone_from(&peers);
        self.publish(|s| s.peers = peers);
    }

    fn publish(&self, f: impl FnOnce(&mut SourceStatus)) {
        self.status.send_modify(f);
        self.changed.notify_waiters();
    }

    fn publish_pending(&self) {
        let pending = self.debouncer.is_pending() || !self.racy.is_empty();
        if self.status.borrow().pending != pending {
            self.publish(|s| s.pending = pending);
        }
    }

    /// Runs one scan to the end, committing differences as they come.
    async fn scan(&mut self, scope: Scope, force: HashSet<String>) {
        let full = scope == Scope::Full;
        let id = self.cfg.id.clone();
        if full {
            self.events.emit(Event::now(&id, EventKind::ScanStarted));
        }
        self.publish(|s| s.state = State::Scanning);
        let started = Instant::now();
        let result = self.scan_inner(scope.clone(), force).await;
        match result {
            Ok(summary) => {
                let ms = started.elapsed().as_millis();
                if full {
                    info!(
                        seen = summary.seen,
                        hashed_bytes = summary.hashed_bytes,
                        ms,
                        "full scan done"
                    );
                    self.events
                        .emit(Event::now(&id, EventKind::ScanFinished).detail(format!(
                            "{} items, {} bytes hashed, {ms} ms",
                            summary.seen, summary.hashed_bytes
                        )));
                }
                if !summary.racy.is_empty() {
                    self.racy.extend(summary.racy);
                    self.racy_deadline = Some(Instant::now() + scanner::RACY_WINDOW * 2);
                }
                self.publish(|s| {
                    s.state = State::Idle;
                    s.error = None;
                    s.scans += 1;
                    s.last_scan_unix_ms = unix_ms_now();
                });
            }
            Err(Stop::Cancelled) => {}
            Err(Stop::Paused(done)) => self.handle(Msg::Pause(done)).await,
            Err(Stop::Source(error)) => {
                let message = error.to_string();
                warn!(error = %message, "source stopped");
                if self.status.borrow().error.as_deref() != Some(message.as_str()) {
                    self.events
                        .emit(Event::now(&id, EventKind::SourceError).detail(message.clone()));
                }
                self.watcher = None;
                self.watch_rx = None;
                self.debouncer.take();
                self.retry_at = Some(Instant::now() + ERROR_RETRY);
                self.publish(|s| {
                    s.state = State::Error;
                    s.error = Some(message);
                });
            }
        }
    }

    async fn scan_inner(
        &mut self,
        scope: Scope,
        force: HashSet<String>,
    ) -> Result<scanner::ScanSummary, Stop> {
        if self.format.records().is_some() {
            return self.scan_records().await;
        }
        let root = self.cfg.root.clone();
        tokio::task::spawn_blocking(move || check_marker(&root))
            .await
            .map_err(|e| Stop::Source(SourceError::Crashed(e.to_string())))?
            .map_err(Stop::Source)?;
        let mut seen_errors: BTreeMap<String, String> = BTreeMap::new();
        if scope == Scope::Full {
            let root = self.cfg.root.clone();
            match tokio::task::spawn_blocking(move || Ignores::load(&root)).await {
                Ok(Ok((ignores, bad))) => {
                    for b in bad {
                        seen_errors.insert(
                            IGNORE_FILE.to_owned(),
                            format!(
                                "line {}: {}; fix or remove the pattern (the other patterns apply)",
                                b.line, b.message
                            ),
                        );
                    }
                    self.publish(|s| s.ignores = Arc::new(ignores));
                }
                Ok(Err(e)) => {
                    seen_errors.insert(
                        IGNORE_FILE.to_owned(),
                        format!("cannot read: {e}; the previous patterns still apply"),
                    );
                }
                Err(e) => warn!(error = %e, "reading .tandemignore failed"),
            }
        }
        let ignores = self.status.borrow().ignores.as_ref().clone();
        let req = ScanRequest {
            root: self.cfg.root.clone(),
            scope: scope.clone(),
            // Streamed page by page as the walk goes, never loaded whole: memory must not grow
            // with the items that did not change.
            prior: Box::new(StorePrior {
                store: self.store.clone(),
                source_id: self.cfg.id.clone(),
                ahead: None,
                upcoming: VecDeque::new(),
                firsts: VecDeque::new(),
            }),
            force_rehash: force,
            ignores,
        };

        let (tx, mut rx) = mpsc::channel::<Batch>(4);
        let mut moves = MoveFinder::default();
        let format = self.format;
        let scan = tokio::task::spawn_blocking(move || {
            let mut sink = BatchSink {
                tx,
                batch: Batch::default(),
                last_flush: std::time::Instant::now(),
            };
            let result = format.read(req, &mut sink);
            sink.flush();
            result
        });

        loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => {
                    drop(rx);
                    // The scanner stops at its next result once the channel is closed.
                    let _ = scan.await;
                    return Err(Stop::Cancelled);
                }
                batch = rx.recv() => match batch {
                    Some(batch) => {
                        if let Err(e) = self.commit_batch(batch, &mut seen_errors, &mut moves).await {
                            drop(rx);
                            let _ = scan.await;
                            return Err(Stop::Source(e.into()));
                        }
                    }
                    None => break,
                },
                ev = recv_opt(&mut self.watch_rx) => match ev {
                    Some(ev) => self.on_watch(ev),
                    None => self.watch_lost("the file watch stopped"),
                },
                msg = self.inbox.recv() => match msg {
                    // A rescan asked for mid-scan runs after this one.
                    Some(Msg::Rescan(done)) => {
                        self.events.emit(Event::now(&self.cfg.id, EventKind::Rescan));
                        self.debouncer.push_full(Instant::now());
                        self.publish_pending();
                        let _ = done.send(());
                    }
                    Some(Msg::Resume(done)) => {
                        let _ = done.send(());
                    }
                    Some(Msg::Pause(done)) => {
                        drop(rx);
                        let _ = scan.await;
                        return Err(Stop::Paused(done));
                    }
                    // Applied once this scan is done, so the two never interleave.
                    Some(Msg::Apply(batch, done)) => self.deferred.push((batch, done)),
                    Some(Msg::ApplyMove(mv, done)) => self.deferred_moves.push((mv, done)),
                    Some(Msg::SetPeers(peers)) => self.set_peers(peers),
                    None => {}
                },
            }
        }
        let summary = match scan.await {
            Ok(Ok(summary)) => summary,
            Ok(Err(ScanError::Cancelled)) => return Err(Stop::Cancelled),
            Ok(Err(e)) => return Err(Stop::Source(e.into())),
            Err(e) => return Err(Stop::Source(SourceError::Crashed(e.to_string()))),
        };
        // What the scan held back for folder moves goes in now, as moves where they check out.
        for outcome in moves.finish() {
            let committed = match outcome {
                Outcome::Moved {
                    from,
                    to,
                    items,
                    found,
                } => {
                    info!(from = %from, to = %to, items, "folder moved");
                    let moved = Some((from, to, items));
                    self.commit_found(found, 0, &mut seen_errors, moved).await
                }
                Outcome::Plain(found) => self.commit_found(found, 0, &mut seen_errors, None).await,
            };
            committed.map_err(|e| Stop::Source(e.into()))?;
        }
        // Errors under the scanned scope are replaced by what this scan found.
        self.publish(|s| {
            match &scope {
                Scope::Full => s.item_errors.retain(|_, _| false),
                Scope::Under(paths) => s.item_errors.retain(|item, _| {
                    !paths
                        .iter()
                        .any(|p| p.is_empty() || p == item || scanner::is_under(item, p))
                }),
            }
            s.item_errors.extend(seen_errors);
        });
        Ok(summary)
    }

    /// Turns one batch of scan results into differences and commits them in one transaction,
    /// holding back what may be part of a folder move until the scan ends.
    async fn commit_batch(
        &mut self,
        batch: Batch,
        seen_errors: &mut BTreeMap<String, String>,
        moves: &mut MoveFinder,
    ) -> Result<(), store::Error> {
        let new_folders = moves.new_folders(&batch.found);
        if !new_folders.is_empty() {
            let renamed = self
                .store
                .live_folders_with_inodes(self.cfg.id.clone(), new_folders)
                .await?;
            for (to, from) in renamed {
                moves.follow(from, to);
            }
        }
        let found = moves.sort(batch.found);
        self.commit_found(found, batch.hashed_bytes, seen_errors, None)
            .await
    }

    /// Commits scan results in one transaction (as one noted folder move when `moved` says
    /// so: from, to, items).
    async fn commit_found(
        &mut self,
        found: Vec<Found>,
        hashed_bytes: u64,
        seen_errors: &mut BTreeMap<String, String>,
        moved: Option<(String, String, u32)>,
    ) -> Result<(), store::Error> {
        let id = self.cfg.id.clone();
        let mut diffs = Vec::with_capacity(found.len());
        let mut kinds = Vec::with_capacity(found.len());
        let mut delta = TotalsDelta::default();
        for found in found {
            match found {
                Found::Changed {
                    path,
                    meta,
                    content,
                    prior,
                } => {
                    let live = prior.as_ref().filter(|p| !p.header.deleted);
                    kinds.push(if live.is_some() {
                        EventKind::Modified
                    } else {
                        EventKind::Added
                    });
                    if let Some(p) = live.and_then(PriorItem::file) {
                        delta.remove(&p.meta);
                    }
                    delta.add(&meta);
                    let version = bumped(prior.as_ref(), self.cfg.local);
                    diffs.push(Difference {
                        key: path,
                        header: Header {
                            version,
                            sequence: 0,
                            deleted: false,
                            origin: None,
                            modified_by: Some(self.cfg.local_short_name.clone()),
                        },
                        body: Body::File(FileChange { meta, content }),
                    });
                }
                Found::Deleted { prior } => {
                    // The scanner reports files only; a record is never deleted by a walk.
                    let Some(file) = prior.file() else {
                        continue;
                    };
                    if let Some(hash) = file.hash {
                        self.gone.note(hash);
                    }
                    let mut meta = file.meta.clone();
                    kinds.push(EventKind::Deleted);
                    delta.remove(&meta);
                    let version = bumped(Some(&prior), self.cfg.local);
                    meta.size = 0;
                    diffs.push(Difference {
                        key: prior.key,
                        header: Header {
                            version,
                            sequence: 0,
                            deleted: true,
                            origin: None,
                            modified_by: Some(self.cfg.local_short_name.clone()),
                        },
                        body: Body::File(FileChange {
                            meta,
                            content: Content::Empty,
                        }),
                    });
                }
                Found::Error { path, message } => {
                    let known = self.status.borrow().item_errors.get(&path) == Some(&message);
                    if !known {
                        warn!(item = %path, error = %message, "cannot scan item");
                        self.events.emit(
                            Event::now(&id, EventKind::ItemError)
                                .item(&path)
                                .detail(message.clone()),
                        );
                    }
                    seen_errors.insert(path, message);
                }
            }
        }
        let seqs = match moved {
            _ if diffs.is_empty() => Vec::new(),
            Some(moved) => {
                self.store
                    .commit_move(id.clone(), diffs.clone(), moved, store::Settles::Nothing)
                    .await?
            }
            // A scan settles no journal batch: every batch written before it was committed.
            None => {
                self.store
                    .commit(id.clone(), diffs.clone(), store::Settles::Nothing)
                    .await?
            }
        };
        for ((diff, kind), seq) in diffs.iter().zip(kinds).zip(&seqs) {
            debug!(item = %diff.key, seq, kind = kind.as_str(), "recorded");
            self.events
                .emit_with(|| Event::now(&id, kind).item(&diff.key).sequence(*seq));
        }
        let last_seq = seqs.last().copied();
        let committed: Vec<String> = diffs.into_iter().map(|d| d.key).collect();
        self.publish(|s| {
            s.hashed_bytes += hashed_bytes;
            delta.apply(&mut s.totals);
            if let Some(seq) = last_seq {
                s.totals.sequence = seq;
            }
            for path in &committed {
                s.item_errors.remove(path);
            }
        });
        Ok(())
    }
}

impl SourceTask {
    /// Commits the differences applied so far in one transaction, then tells `watch`.
    async fn flush_applied(&mut self) -> Result<(), ApplyFailure> {
        self.flush_applied_noting(None).await
    }

    /// [`SourceTask::flush_applied`], noting the differences as one folder move (from, to,
    /// items) when they are one, so this device passes it on as one operation too.
    async fn flush_applied_noting(
        &mut self,
        moved: Option<(String, String, u32)>,
    ) -> Result<(), ApplyFailure> {
        if self.applied_records.is_empty() && self.written_batches.is_empty() {
            return Ok(());
        }
        let settles = store::Settles::Batches(std::mem::take(&mut self.written_batches));
        let id = self.cfg.id.clone();
        // The differences go to the store whole; only what the events and the status need
        // stays here.
        type Noted = (String, EventKind, TotalsDelta, String);
        let (diffs, records): (Vec<Difference>, Vec<Noted>) =
            std::mem::take(&mut self.applied_records)
                .into_iter()
                .map(|r| {
                    let noted = (r.diff.key.clone(), r.kind, r.delta, r.from);
                    (r.diff, noted)
                })
                .unzip();
        let committed = match moved {
            Some(moved) => {
                self.store
                    .commit_move(id.clone(), diffs, moved, settles)
                    .await
            }
            None => self.store.commit(id.clone(), diffs, settles).await,
        };
        let seqs = committed.map_err(|e| ApplyFailure::Store {
            action: "recording applied items",
            source: Arc::new(e),
        })?;
        let mut total = TotalsDelta::default();
        for ((key, kind, delta, from), seq) in records.iter().zip(&seqs) {
            total.merge(delta);
            self.events.emit_with(|| {
                Event::now(&id, *kind)
                    .item(key)
                    .sequence(*seq)
                    .detail(format!("from {from}"))
            });
        }
        let last = seqs.last().copied().unwrap_or(0);
        self.publish(|s| {
            total.apply(&mut s.totals);
            s.totals.sequence = s.totals.sequence.max(last);
            for (key, ..) in &records {
                s.item_errors.remove(key);
            }
        });
        Ok(())
    }
}

/// The store as the scanner's prior-state cursor, for the blocking scan thread. As soon as a
/// page arrives the next one is asked for, so the store thread reads it while the walk
/// compares this one.
///
/// Reading the store while the scan's own results are committed is safe: a result is only
/// committed after the walk has passed its path, and every page, this read-ahead included,
/// is asked for before the walk goes past the page before it, so it never reads a path the
/// walk has already passed.
struct StorePrior {
    store: StoreHandle,
    source_id: String,
    /// The page asked for ahead: its range, the path it starts after, its size, the reply.
    ahead: Option<ReadAhead>,
    /// Ranges the scan said it will read, whose first pages are not fetched yet.
    upcoming: VecDeque<PathRange>,
    /// First pages fetched together, in the order the ranges will be read.
    firsts: VecDeque<(PathRange, Vec<PriorItem>)>,
}

/// Ranges whose first pages are fetched in one trip, and the size of those pages: a page
/// that comes back full is asked for again at full size.
const FIRSTS_PER_TRIP: usize = 128;
const FIRST_PAGE: usize = 32;

impl StorePrior {
    /// A first page fetched together with others, if `range` is complete in it.
    fn prefetched(&mut self, range: &PathRange) -> Result<Option<Vec<PriorItem>>, PriorError> {
        if self.firsts.is_empty() {
            while self.upcoming.front().is_some_and(|r| r != range) {
                self.upcoming.pop_front();
            }
            if self.upcoming.is_empty() {
                return Ok(None);
            }
            let n = self.upcoming.len().min(FIRSTS_PER_TRIP);
            let ranges: Vec<PathRange> = self.upcoming.drain(..n).collect();
            let pages = self
                .store
                .first_pages(self.source_id.clone(), ranges.clone(), FIRST_PAGE)
                .wait()
                .map_err(|e| PriorError {
                    reason: e.to_string(),
                })?;
            self.firsts = ranges.into_iter().zip(pages).collect();
        }
        while self.firsts.front().is_some_and(|(r, _)| r != range) {
            self.firsts.pop_front();
        }
        Ok(match self.firsts.pop_front() {
            Some((_, page)) if page.len() < FIRST_PAGE => Some(page),
            _ => None,
        })
    }
}

struct ReadAhead {
    range: PathRange,
    after: String,
    limit: usize,
    reply: Reply<Vec<PriorItem>>,
}

impl PriorCursor for StorePrior {
    fn will_read(&mut self, ranges: &[PathRange]) {
        // Worth it only for many scopes; a full scan reads one range page by page.
        self.firsts.clear();
        self.upcoming = if ranges.len() > 2 {
            ranges.iter().cloned().collect()
        } else {
            VecDeque::new()
        };
    }

    fn next_batch(
        &mut self,
        range: &PathRange,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PriorItem>, PriorError> {
        if after.is_none()
            && limit >= FIRST_PAGE
            && let Some(page) = self.prefetched(range)?
        {
            return Ok(page);
        }
        let reply = match self.ahead.take() {
            Some(ahead)
                if ahead.range == *range
                    && Some(ahead.after.as_str()) == after
                    && ahead.limit == limit =>
            {
                ahead.reply
            }
            // A page read ahead that is not wanted is dropped; the store's answer goes nowhere.
            _ => self.store.prior_batch(
                self.source_id.clone(),
                range.clone(),
                after.map(str::to_owned),
                limit,
            ),
        };
        let batch = reply.wait().map_err(|e| PriorError {
            reason: e.to_string(),
        })?;
        if batch.len() == limit
            && let Some(last) = batch.last()
        {
            self.ahead = Some(ReadAhead {
                range: range.clone(),
                after: last.key.clone(),
                limit,
                reply: self.store.prior_batch(
                    self.source_id.clone(),
                    range.clone(),
                    Some(last.key.clone()),
                    limit,
                ),
            });
        }
        Ok(batch)
    }
}

/// A root that exists but lacks its marker is most likely an empty mount point: scanning it
/// would report everything deleted.
fn check_marker(root: &std::path::Path) -> Result<(), SourceError> {
    if !root.is_dir() {
        // The scanner reports a missing root in its own words.
        return Ok(());
    }
    if marker_path(root).is_dir() {
        return Ok(());
    }
    Err(SourceError::MarkerMissing {
        marker: marker_path(root).display().to_string(),
    })
}

/// The prior version with this device's counter bumped; a new item starts from empty.
fn bumped(prior: Option<&PriorItem>, local: ShortId) -> VersionVector {
    let mut v = prior.map(|p| p.header.version.clone()).unwrap_or_default();
    v.bump(local);
    v
}

/// A remote difference written to disk and waiting to be committed with its batch.
#[derive(Debug)]
struct AppliedRecord {
    diff: Difference,
    kind: EventKind,
    delta: TotalsDelta,
    from: String,
}

/// Change to a source's totals from one batch.
#[derive(Debug, Default)]
struct TotalsDelta {
    files: i64,
    directories: i64,
    symlinks: i64,
    bytes: i128,
}

impl TotalsDelta {
    fn step(&mut self, meta: &crate::item::Metadata, sign: i64) {
        use crate::item::ItemKind;
        match meta.kind {
            ItemKind::File => {
                self.files += sign;
                self.bytes += i128::from(sign) * i128::from(meta.size);
            }
            ItemKind::Directory => self.directories += sign,
            ItemKind::Symlink => self.symlinks += sign,
        }
    }
    fn merge(&mut self, other: &TotalsDelta) {
        self.files += other.files;
        self.directories += other.directories;
        self.symlinks += other.symlinks;
        self.bytes += other.bytes;
    }
    fn add(&mut self, meta: &crate::item::Metadata) {
        self.step(meta, 1);
    }
    fn remove(&mut self, meta: &crate::item::Metadata) {
        self.step(meta, -1);
    }
    fn apply(&self, t: &mut Totals) {
        fn add(v: u64, d: i128) -> u64 {
            u64::try_from((i128::from(v) + d).max(0)).unwrap_or(u64::MAX)
        }
        t.files = add(t.files, self.files.into());
        t.directories = add(t.directories, self.directories.into());
        t.symlinks = add(t.symlinks, self.symlinks.into());
        t.bytes = add(t.bytes, self.bytes);
    }
}

/// Scan results on their way from the blocking scanner to the source task.
#[derive(Debug, Default)]
struct Batch {
    found: Vec<Found>,
    hashed_bytes: u64,
}

struct BatchSink {
    tx: mpsc::Sender<Batch>,
    batch: Batch,
    last_flush: std::time::Instant,
}

impl BatchSink {
    /// Hands the batch over; false when the source task has gone away.
    fn flush(&mut self) -> bool {
        self.last_flush = std::time::Instant::now();
        if self.batch.found.is_empty() && self.batch.hashed_bytes == 0 {
            return true;
        }
        self.tx
            .blocking_send(std::mem::take(&mut self.batch))
            .is_ok()
    }

    fn due(&self) -> bool {
        // Small batches keep `watch` within a second of a change during a long scan.
        self.batch.found.len() >= COMMIT_BATCH
            || (!self.batch.found.is_empty()
                && self.last_flush.elapsed() >= Duration::from_millis(200))
    }
}

impl Sink for BatchSink {
    fn found(&mut self, found: Found) -> bool {
        self.batch.found.push(found);
        if self.due() { self.flush() } else { true }
    }

    fn hashed(&mut self, bytes: u64) {
        self.batch.hashed_bytes += bytes;
    }
}
