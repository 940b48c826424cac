//! The one owner of the SQLite database: migrations, typed queries, one transaction per batch.
//!
//! A dedicated thread owns the `Connection`; everyone else holds a cheap [`StoreHandle`] and
//! awaits replies. Must not: expose `rusqlite` types, know protobuf, or touch paths on disk
//! (item paths are just keys here).

mod migrations;
mod queries;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

pub use queries::{
    ChunkSource, HubRow, IndexEntry, IndexPage, IndexRead, MoveAt, MoveNote, PeerRow, Settles,
    SourceRow, Totals,
};

/// Files of at most this many bytes are not indexed by chunk, so no local copy of their
/// content is ever looked for: each indexed chunk is an insert at a random place in the chunk
/// index (a database page written per file), while content this small travels inline with its
/// entry for about the cost of the entry itself.
pub const UNINDEXED_MAX: u64 = 4096;

/// Whether a file of `size` bytes has its chunks indexed (and can be found as a local copy).
pub fn indexed_by_chunk(size: u64) -> bool {
    size > UNINDEXED_MAX
}

/// A failure of the store; each names what was being done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "database {path}: {reason}; if it is damaged, move it aside and restart (sources are rescanned)"
    )]
    Open { path: PathBuf, reason: String },
    #[error("database error while {doing}: {reason}")]
    Sqlite { doing: &'static str, reason: String },
    #[error("a source with id {0:?} already exists; pick another id or remove it first")]
    SourceExists(String),
    #[error("no source with id {0:?}; `tandemctl source list` shows the ids")]
    UnknownSource(String),
    #[error("no peer with device ID {0}; `tandemctl peer list` shows the known devices")]
    UnknownPeer(String),
    #[error(
        "prior state of {path:?} in source {source_id:?} is unreadable ({reason}); rescan the source"
    )]
    Corrupt {
        source_id: String,
        path: String,
        reason: String,
    },
    #[error("the store has shut down")]
    Closed,
}

/// Result type of every store call.
pub type Result<T> = std::result::Result<T, Error>;

type Job = Box<dyn FnOnce(&mut rusqlite::Connection) + Send>;

/// Cloneable handle to the store thread.
#[derive(Clone)]
pub struct StoreHandle {
    jobs: std_mpsc::SyncSender<Job>,
}

/// An answer of the store thread that a blocking thread waits for.
#[must_use = "the answer is only read by waiting for it"]
pub struct Reply<T>(oneshot::Receiver<Result<T>>);

impl<T> Reply<T> {
    /// Waits for the answer. Blocks the thread: never call it from async code.
    ///
    /// # Errors
    /// The store's own error, or [`Error::Closed`] when the store shut down first.
    pub fn wait(self) -> Result<T> {
        self.0.blocking_recv().map_err(|_| Error::Closed)?
    }
}

/// The store thread; [`StoreThread::join`] closes the database cleanly.
pub struct StoreThread {
    thread: JoinHandle<()>,
    jobs: std_mpsc::SyncSender<Job>,
    closing: Arc<AtomicBool>,
}

impl StoreThread {
    /// Lets the store thread finish the work queued so far, then closes the database and
    /// waits for it. Handles still held elsewhere (a control call cut at shutdown, say) get
    /// [`Error::Closed`] from then on instead of keeping the database open. Blocking.
    pub fn join(self) {
        let closing = self.closing.clone();
        // Queued behind every job sent before; its sender may be gone already if every
        // handle was dropped, and then the thread ends by itself.
        let _ = self
            .jobs
            .send(Box::new(move |_| closing.store(true, Ordering::SeqCst)));
        drop(self.jobs);
        // A panic in the store thread was already reported by the panic hook.
        let _ = self.thread.join();
    }
}

/// Opens (creating if needed) the database and migrates it to the latest schema.
pub fn open(path: &Path) -> Result<(StoreHandle, StoreThread)> {
    let open_err = |reason: String| Error::Open {
        path: path.to_path_buf(),
        reason,
    };
    let mut conn = rusqlite::Connection::open(path).map_err(|e| open_err(e.to_string()))?;
    configure(&conn).map_err(|e| open_err(e.to_string()))?;
    migrations::to_latest(&mut conn).map_err(open_err)?;
    queries::run_pending_maintenance(&mut conn).map_err(|e| open_err(e.to_string()))?;
    Ok(spawn(conn))
}

/// An in-memory store for unit tests and benchmarks.
pub fn open_in_memory() -> Result<(StoreHandle, StoreThread)> {
    let open_err = |reason: String| Error::Open {
        path: PathBuf::from(":memory:"),
        reason,
    };
    let mut conn = rusqlite::Connection::open_in_memory().map_err(|e| open_err(e.to_string()))?;
    configure(&conn).map_err(|e| open_err(e.to_string()))?;
    migrations::to_latest(&mut conn).map_err(open_err)?;
    Ok(spawn(conn))
}

fn configure(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    // WAL lets tests and `doctor` read while the agent writes; NORMAL sync is durable against
    // a crashed process, and a lost last transaction after power loss only means a rescan.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(())
}

fn spawn(mut conn: rusqlite::Connection) -> (StoreHandle, StoreThread) {
    // Bounded so a flood of callers waits instead of growing memory.
    let (tx, rx) = std_mpsc::sync_channel::<Job>(256);
    let span = tracing::info_span!("store");
    let closing = Arc::new(AtomicBool::new(false));
    let closed = closing.clone();
    let thread = std::thread::Builder::new()
        .name("tandem-store".into())
        .spawn(move || {
            let _enter = span.enter();
            while let Ok(job) = rx.recv() {
                job(&mut conn);
                if closed.load(Ordering::SeqCst) {
                    break;
                }
            }
            drop(conn);
            tracing::debug!("store closed");
        })
        .expect("the OS refused to start the store thread");
    (
        StoreHandle { jobs: tx.clone() },
        StoreThread {
            thread,
            jobs: tx,
            closing,
        },
    )
}

impl StoreHandle {
    /// Runs `f` on the store thread and returns its result.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            // The caller may have gone away; its answer is then not needed.
            let _ = reply.send(f(conn));
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(std_mpsc::TrySendError::Disconnected(_)) => return Err(Error::Closed),
            Err(std_mpsc::TrySendError::Full(job)) => {
                // The queue is full: wait for room on the blocking pool, never on a runtime
                // worker.
                let jobs = self.jobs.clone();
                tokio::task::spawn_blocking(move || jobs.send(job))
                    .await
                    .map_err(|_| Error::Closed)?
                    .map_err(|_| Error::Closed)?;
            }
        }
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Queues `f` for the store thread from a blocking thread; the answer comes through the
    /// returned [`Reply`].
    fn send_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<T> + Send + 'static,
    ) -> Reply<T> {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            // The caller may have gone away; its answer is then not needed.
            let _ = reply.send(f(conn));
        });
        // When the store has shut down the job, and with it the reply's sender, is dropped
        // here, and waiting on the reply says so.
        let _ = self.jobs.send(job);
        Reply(rx)
    }

    /// Records a new source.
    pub async fn add_source(&self, row: SourceRow) -> Result<()> {
        self.call(move |c| queries::add_source(c, &row)).await
    }

    /// Forgets a source and the prior state of all its items.
    pub async fn remove_source(&self, id: String) -> Result<()> {
        self.call(move |c| queries::remove_source(c, &id)).await
    }

    /// All sources, in id order.
    pub async fn sources(&self) -> Result<Vec<SourceRow>> {
        self.call(queries::sources).await
    }

    /// Remembers whether a source is paused, so a restart keeps it paused.
    pub async fn set_paused(&self, id: String, paused: bool) -> Result<()> {
        self.call(move |c| queries::set_paused(c, &id, paused))
            .await
    }

    /// Prior state of a source's items: all of them, or those at or under the given paths,
    /// at once. Scans do not use it (they read pages with [`StoreHandle::prior_batch`], so
    /// their memory does not grow with the source); it is for tests and tools.
    pub async fn prior_items(
        &self,
        source_id: String,
        under: Option<Vec<String>>,
    ) -> Result<Vec<crate::item::PriorItem>> {
        self.call(move |c| queries::prior_items(c, &source_id, under.as_deref()))
            .await
    }

    /// Asks for up to `limit` prior items of `range` whose paths sort after `after`, in path
    /// order (fewer than `limit` means the range has no more), without waiting for them.
    ///
    /// For the blocking scan thread, which reads the prior state a page at a time while it
    /// walks: sending blocks while the store's queue is full, and so does [`Reply::wait`], so
    /// never call either from async code.
    pub fn prior_batch(
        &self,
        source_id: String,
        range: crate::item::PathRange,
        after: Option<String>,
        limit: usize,
    ) -> Reply<Vec<crate::item::PriorItem>> {
        self.send_blocking(move |c| {
            queries::prior_batch(c, &source_id, &range, after.as_deref(), limit)
        })
    }

    /// The first page of each of several ranges in one trip, for a scan of many small scopes
    /// (the paths of a burst of file events). Blocking, like [`StoreHandle::prior_batch`].
    pub fn first_pages(
        &self,
        source_id: String,
        ranges: Vec<crate::item::PathRange>,
        limit: usize,
    ) -> Reply<Vec<Vec<crate::item::PriorItem>>> {
        self.send_blocking(move |c| queries::first_pages(c, &source_id, &ranges, limit))
    }

    /// Commits a batch of differences in one transaction; returns the sequence given to each.
    pub async fn commit(
        &self,
        source_id: String,
        diffs: Vec<crate::item::Difference>,
        settles: Settles,
    ) -> Result<Vec<u64>> {
        self.call(move |c| queries::commit(c, &source_id, &diffs, &settles, None))
            .await
    }

    /// Commits a folder move's deletions and additions (a scan's, or a peer's applied as one
    /// rename, which settles its journal batches) in one transaction, numbered together, and
    /// notes it so senders may announce it as one operation.
    pub async fn commit_move(
        &self,
        source_id: String,
        diffs: Vec<crate::item::Difference>,
        (from, to, items): (String, String, u32),
        settles: Settles,
    ) -> Result<Vec<u64>> {
        self.call(move |c| {
            let moved = Some((from.as_str(), to.as_str(), items));
            queries::commit(c, &source_id, &diffs, &settles, moved)
        })
        .await
    }

    /// The current entries numbered `first..=last` (a folder move's range), in order.
    pub async fn entries_in(
        &self,
        source_id: String,
        first: u64,
        last: u64,
    ) -> Result<Vec<IndexEntry>> {
        self.call(move |c| queries::entries_between(c, &source_id, first, last))
            .await
    }

    /// For each new folder (path, inode), the live folder recorded with that inode under
    /// another name: `(new path, old key)` pairs, in one trip.
    pub async fn live_folders_with_inodes(
        &self,
        source_id: String,
        folders: Vec<(String, u64)>,
    ) -> Result<Vec<(String, String)>> {
        self.call(move |c| queries::live_folders_with_inodes(c, &source_id, &folders))
            .await
    }

    /// Every item at and under each key, with chunk lists, in one trip.
    pub async fn subtrees(
        &self,
        source_id: String,
        keys: Vec<String>,
    ) -> Result<Vec<Vec<IndexEntry>>> {
        self.call(move |c| queries::subtrees(c, &source_id, &keys))
            .await
    }

    /// Journals remote differences about to be written, before any of them touches the disk,
    /// as one batch; gives its number, for the [`StoreHandle::commit`] that settles it.
    pub async fn record_intents(
        &self,
        source_id: String,
        intents: Vec<crate::item::Difference>,
    ) -> Result<u64> {
        self.call(move |c| queries::record_intents(c, &source_id, &intents))
            .await
    }

    /// The apply journal of a source: differences whose write a crash may have interrupted.
    pub async fn intents(&self, source_id: String) -> Result<Vec<crate::item::Difference>> {
        self.call(move |c| queries::intents(c, &source_id)).await
    }

    /// Records a peer, or updates its address if it is known already.
    pub async fn add_peer(&self, peer: PeerRow) -> Result<()> {
        self.call(move |c| queries::add_peer(c, &peer)).await
    }

    /// Forgets a peer and its cursors.
    pub async fn remove_peer(&self, device_id: String) -> Result<()> {
        self.call(move |c| queries::remove_peer(c, &device_id))
            .await
    }

    /// All peers, in device ID order.
    pub async fn peers(&self) -> Result<Vec<PeerRow>> {
        self.call(queries::peers).await
    }

    /// Adds a hub, or changes its address.
    pub async fn add_hub(&self, hub: HubRow) -> Result<()> {
        self.call(move |c| queries::add_hub(c, &hub)).await
    }

    /// Forgets a hub and how far it has this device's index; false if it was not there.
    pub async fn remove_hub(&self, device_id: String) -> Result<bool> {
        self.call(move |c| queries::remove_hub(c, &device_id)).await
    }

    /// All hubs, in device ID order.
    pub async fn hubs(&self) -> Result<Vec<HubRow>> {
        self.call(queries::hubs).await
    }

    /// Keeps a key of a source (a generation already kept is left as it is).
    pub async fn add_source_key(
        &self,
        source_id: String,
        generation: u32,
        key: Vec<u8>,
    ) -> Result<()> {
        self.call(move |c| queries::add_source_key(c, &source_id, generation, &key))
            .await
    }

    /// Puts a key of a source in place of the one of its generation (a member's, preferred to
    /// the one made here); the hubs get the source again under it.
    pub async fn replace_source_key(
        &self,
        source_id: String,
        generation: u32,
        key: Vec<u8>,
    ) -> Result<()> {
        self.call(move |c| queries::replace_source_key(c, &source_id, generation, &key))
            .await
    }

    /// Shares a source with one more device; false if there is no such source.
    pub async fn share_source(&self, source_id: String, device_id: String) -> Result<bool> {
        self.call(move |c| queries::share_source(c, &source_id, &device_id))
            .await
    }

    /// Stops sharing a source with a device, recording a removal when `removal`; false if
    /// there is no such source.
    pub async fn unshare_source(
        &self,
        source_id: String,
        device_id: String,
        removal: bool,
    ) -> Result<bool> {
        self.call(move |c| queries::unshare_source(c, &source_id, &device_id, removal))
            .await
    }

    /// The devices this device removed from a source.
    pub async fn removals(&self, source_id: String) -> Result<Vec<String>> {
        self.call(move |c| queries::removals(c, &source_id)).await
    }

    /// A source's keys, oldest generation first.
    pub async fn source_keys(&self, source_id: String) -> Result<Vec<(u32, Vec<u8>)>> {
        self.call(move |c| queries::source_keys(c, &source_id))
            .await
    }

    /// How far this device's index of a source is uploaded to a hub.
    pub async fn hub_uploaded(&self, hub_id: String, source_id: String) -> Result<u64> {
        self.call(move |c| queries::hub_uploaded(c, &hub_id, &source_id))
            .await
    }

    /// Records how far this device's index of a source is uploaded to a hub.
    pub async fn set_hub_uploaded(
        &self,
        hub_id: String,
        source_id: String,
        seq: u64,
    ) -> Result<()> {
        self.call(move |c| queries::set_hub_uploaded(c, &hub_id, &source_id, seq))
            .await
    }

    /// Up to `limit` items of a source changed after local sequence `after`, in order, with
    /// their chunk lists and the peer each was applied from: what a peer still needs.
    pub async fn items_since(
        &self,
        source_id: String,
        after: u64,
        page: IndexPage,
    ) -> Result<IndexRead> {
        self.call(move |c| queries::items_since(c, &source_id, after, &page))
            .await
    }

    /// Local files that held a chunk with this hash at their last scan (none of at most
    /// [`UNINDEXED_MAX`] bytes).
    pub async fn chunk_sources(&self, hash: crate::chunker::Hash128) -> Result<Vec<ChunkSource>> {
        self.call(move |c| queries::chunk_sources(c, &hash.0)).await
    }

    /// For each item (key and chunk hashes): whether another item of the source holds every
    /// one of its chunks, so a peer in sync most likely has its content already.
    pub async fn held_elsewhere(
        &self,
        source_id: String,
        items: Vec<(String, Vec<[u8; 16]>)>,
    ) -> Result<Vec<bool>> {
        self.call(move |c| queries::held_elsewhere(c, &source_id, &items))
            .await
    }

    /// The prior state of exactly one item.
    pub async fn prior_item(
        &self,
        source_id: String,
        path: String,
    ) -> Result<Option<crate::item::PriorItem>> {
        self.call(move |c| queries::prior_item(c, &source_id, &path))
            .await
    }

    /// The prior state of each of `paths`, in their order: one trip for a whole batch.
    pub async fn prior_items_at(
        &self,
        source_id: String,
        paths: Vec<String>,
    ) -> Result<Vec<Option<crate::item::PriorItem>>> {
        self.call(move |c| queries::prior_items_at(c, &source_id, &paths))
            .await
    }

    /// Keys of a source's live items that contain `part` (the caller knows what it means).
    pub async fn live_keys_containing(
        &self,
        source_id: String,
        part: String,
    ) -> Result<Vec<String>> {
        self.call(move |c| queries::live_keys_containing(c, &source_id, &part))
            .await
    }

    /// Highest sequence of a peer's index of a source applied here (0 if none).
    pub async fn cursor(&self, device_id: String, source_id: String) -> Result<u64> {
        self.call(move |c| queries::cursor(c, &device_id, &source_id))
            .await
    }

    /// Records where live records lie now, keeping their versions and sequences (nothing a
    /// peer is sent).
    pub async fn set_record_places(
        &self,
        source_id: String,
        places: Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        self.call(move |c| queries::set_record_places(c, &source_id, &places))
            .await
    }

    /// Moves the cursor of a peer's index of a source.
    pub async fn set_cursor(&self, device_id: String, source_id: String, seq: u64) -> Result<()> {
        self.call(move |c| queries::set_cursor(c, &device_id, &source_id, seq))
            .await
    }

    /// Counts of live items and bytes in a source, and its local sequence.
    pub async fn totals(&self, source_id: String) -> Result<Totals> {
        self.call(move |c| queries::totals(c, &source_id)).await
    }
}

#[cfg(test)]
mod tests;
