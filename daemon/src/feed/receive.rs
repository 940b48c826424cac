//! One receiver: a feed's index of one source, applied in the sender's order.

use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::fetch::{BuildKey, Claims, Fetcher, NotBuilt, Prepared};
use super::providers::ChunkChain;
use super::{Feed, Progress, Update};
use crate::chunker::Hash128;
use crate::item::{Body, ItemKind};
use crate::moves;
use crate::source::{
    ApplyFailure, ApplyOutcome, MoveApply, MoveOutcome, RemoteApply, SharedSource,
};
use crate::store::{self, StoreHandle};
use crate::universal::{FolderMove, ItemPath, RemoteItem};

/// Most remote items handed to the source task at once (a run; it commits them in parts).
const APPLY_BATCH: usize = 1024;
/// Most content bytes fetched for one run.
const RUN_BYTES: u64 = 64 << 20;
/// Most updates taken from the channel at a time (the sender's window bounds them anyway).
const MERGED_UPDATES: usize = 8;
/// Failed items are tried again this often.
const RETRY_EVERY: Duration = Duration::from_secs(5);
/// Most content read from a moved folder's old files to go with their derived entries (the
/// rest is copied by chunk, or fetched).
const MOVE_READ_BYTES: u64 = 32 << 20;

/// Applies one feed's index of one source: fetches what is missing, hands each item to the
/// source task, acknowledges through the feed, and moves the cursor.
pub struct Receiver {
    fetcher: Fetcher,
    applied: u64,
    /// Highest sequence received, applied or not.
    seen: u64,
    retry: Vec<Retry>,
    /// Folder moves asked to be sent entry by entry, by first sequence: nothing from there on
    /// is acknowledged as applied until those entries are dealt with.
    expanding: BTreeSet<u64>,
    /// This receiver's share of the feed's `needed` counts.
    needed: Needed,
}

/// What a run's preparation gives: its items, and what became of each.
type PreparedRun = (Vec<RemoteItem>, Vec<Prepared>);

/// A run being prepared: the run, and the task preparing its items (a folder move needs none).
type Preparing = (Run, Option<tokio::task::JoinHandle<PreparedRun>>);

/// Items handed to the source task together.
enum Run {
    /// Fetched and applied as a batch.
    Items(Vec<RemoteItem>),
    /// The entries of a peer's folder move, derived here: applied as one rename if the source
    /// finds that safe, else as a batch.
    Move(Box<FolderMove>, Vec<RemoteItem>),
}

impl Run {
    fn items(&self) -> &[RemoteItem] {
        match self {
            Run::Items(items) | Run::Move(_, items) => items,
        }
    }
}

/// Items received and not yet handed to the source task, in runs, and where each update
/// ends among them. Counts are over the receiver's life.
#[derive(Default)]
struct Queue {
    runs: VecDeque<Run>,
    /// Content to fetch for the last run.
    run_bytes: u64,
    /// Per update: how many items are dealt with once it is, the highest sequence it
    /// covers, whether its sender said it was caught up, and the move it expands, if any.
    ends: VecDeque<(u64, u64, bool, Option<u64>)>,
    /// Items queued so far.
    queued: u64,
    /// Items dealt with so far (applied, skipped, or set aside for a retry).
    dealt: u64,
}

/// An item set aside to be tried again.
struct Retry {
    item: RemoteItem,
    /// Set aside because another receiver was fetching the same content: tried again as soon
    /// as that fetch ends, rather than after [`RETRY_EVERY`].
    busy: Option<BuildKey>,
}

/// What one receiver has added to the board's `needed_items` and `needed_bytes` and not yet
/// taken out. A receiver stops wherever it is when its connection drops, in the middle of an
/// update; whatever it still counted is taken out when it is dropped, since the next
/// connection asks for those items again and counts them afresh (left in, they would keep
/// `wait` from ever calling the peers in sync).
struct Needed {
    feed: Arc<dyn Feed>,
    items: u64,
    bytes: u64,
}

impl Needed {
    fn new(feed: Arc<dyn Feed>) -> Needed {
        Needed {
            feed,
            items: 0,
            bytes: 0,
        }
    }

    /// Counts items just received; the receiver is busy until it has dealt with them.
    fn add(&mut self, items: u64, bytes: u64) {
        self.items += items;
        self.bytes += bytes;
        self.feed.progress(Progress::Needed { items, bytes });
    }

    /// Takes out items dealt with (applied, skipped, refused or put aside for a retry).
    fn done(&mut self, items: u64, bytes: u64) {
        // Never more than this receiver put in, so other receivers' counts stay whole.
        let (items, bytes) = (items.min(self.items), bytes.min(self.bytes));
        self.items -= items;
        self.bytes -= bytes;
        self.feed.progress(Progress::Dealt { items, bytes });
    }
}

impl Drop for Needed {
    fn drop(&mut self) {
        if self.items > 0 || self.bytes > 0 {
            let (items, bytes) = (self.items, self.bytes);
            self.done(items, bytes);
        }
    }
}

impl Receiver {
    /// A receiver for `source`'s index from `feed`, resuming after `applied` (the saved
    /// cursor), fetching through `chunks`.
    pub fn new(
        source: SharedSource,
        feed: Arc<dyn Feed>,
        chunks: ChunkChain,
        claims: Claims,
        store: StoreHandle,
        applied: u64,
    ) -> Receiver {
        Receiver {
            needed: Needed::new(feed.clone()),
            fetcher: Fetcher {
                src: source,
                feed,
                chunks,
                claims,
                store,
            },
            applied,
            seen: applied,
            retry: Vec::new(),
            expanding: BTreeSet::new(),
        }
    }

    /// Applies the updates as they come, and retries what failed, until the channel closes.
    ///
    /// One pipeline across updates: the next run is prepared (content built or fetched)
    /// while the one before it is applied, and updates that arrive meanwhile are queued
    /// behind it, so the source task does not wait for a run to be prepared after each
    /// update the sender's window lets through.
    pub async fn run(mut self, mut updates: mpsc::Receiver<Update>) {
        let mut building = self.fetcher.claims.subscribe();
        let mut queue = Queue::default();
        let mut next: Option<Preparing> = None;
        loop {
            if next.is_none() && queue.runs.is_empty() {
                let update = if self.retry.is_empty() {
                    updates.recv().await
                } else {
                    let waits_for_fetch = self.retry.iter().any(|r| r.busy.is_some());
                    tokio::select! {
                        u = updates.recv() => u,
                        () = tokio::time::sleep(RETRY_EVERY) => {
                            self.retry_failed(updates.is_empty()).await;
                            continue;
                        }
                        Ok(()) = building.changed(), if waits_for_fetch => {
                            let released = {
                                let set = building.borrow_and_update();
                                self.retry
                                    .iter()
                                    .any(|r| r.busy.as_ref().is_some_and(|k| !set.contains(k)))
                            };
                            if released {
                                self.retry_failed(updates.is_empty()).await;
                            }
                            continue;
                        }
                    }
                };
                let Some(update) = update else { return };
                self.enqueue(&mut queue, update).await;
            }
            self.take_arrived(&mut queue, &mut updates).await;
            // An update with nothing to apply (all refused, or only the word that the
            // sender is caught up) is dealt with as soon as those before it are.
            self.acknowledge_done(&mut queue, updates.is_empty()).await;
            if next.is_none() {
                next = queue.runs.pop_front().map(|run| self.prepare(run));
            }
            let Some((kept, job)) = next.take() else {
                continue;
            };
            let prepared = match job {
                Some(job) => Some(job.await),
                None => None,
            };
            // What arrived while this run was prepared is queued now, so its first run is
            // prepared while this one is applied.
            self.take_arrived(&mut queue, &mut updates).await;
            next = queue.runs.pop_front().map(|run| self.prepare(run));
            let n = kept.items().len() as u64;
            let size: u64 = kept
                .items()
                .iter()
                .map(|i| i.file().map_or(0, |f| f.meta.size))
                .sum();
            let to_retry = match (kept, prepared) {
                (Run::Move(mv, items), _) => self.apply_move(*mv, items).await,
                (Run::Items(_), Some(Ok((run, prepared)))) => {
                    self.finish(run.into_iter().zip(prepared).collect()).await
                }
                (Run::Items(kept), failed) => {
                    let e = match failed {
                        Some(Err(e)) => e.to_string(),
                        _ => "it was never started".to_owned(),
                    };
                    let why = || Prepared::Retry(NotBuilt::Fetch(format!("preparing failed: {e}")));
                    let prepared = kept.iter().map(|_| why()).collect::<Vec<_>>();
                    self.finish(kept.into_iter().zip(prepared).collect()).await
                }
            };
            self.retry.extend(to_retry);
            self.needed.done(n, size);
            self.fetcher.feed.progress(Progress::Done(n));
            queue.dealt += n;
            self.acknowledge_done(&mut queue, updates.is_empty()).await;
        }
    }

    /// Starts preparing a run in its own task. The run is kept here too (items are cheap to
    /// clone; inline content is shared), so a task that fails loses no item: each is tried
    /// again.
    fn prepare(&self, run: Run) -> Preparing {
        match run {
            Run::Items(items) => {
                let job = tokio::spawn(self.fetcher.clone().prepare_all(items.clone()));
                (Run::Items(items), Some(job))
            }
            Run::Move(..) => (run, None),
        }
    }

    /// Hands a derived folder move to the source task, to apply as one rename; when the
    /// source finds that unsafe (nothing written then), its entries go as a batch, small
    /// files taking their content from their old copies. Gives back the items to try again.
    async fn apply_move(&mut self, mv: FolderMove, items: Vec<RemoteItem>) -> Vec<Retry> {
        let origin = self.fetcher.feed.origin().clone();
        let request = MoveApply {
            from: mv.from.clone(),
            to: mv.to.clone(),
            items: items.clone(),
            peer: origin.short,
            peer_device: origin.device,
        };
        if self.fetcher.src.commander.apply_move(request).await == MoveOutcome::Moved {
            return Vec::new();
        }
        let items = with_old_content(&self.fetcher.src.root, &mv, items).await;
        let (items, prepared) = self.fetcher.clone().prepare_all(items).await;
        self.finish(items.into_iter().zip(prepared).collect()).await
    }

    /// Queues the updates that have arrived (a bounded number at a time).
    async fn take_arrived(&mut self, queue: &mut Queue, updates: &mut mpsc::Receiver<Update>) {
        for _ in 0..MERGED_UPDATES {
            match updates.try_recv() {
                Ok(update) => self.enqueue(queue, update).await,
                Err(_) => break,
            }
        }
    }

    /// The entries an update's folder moves stand for, derived from the prior state here; a
    /// move that does not match this device's state is asked for entry by entry instead.
    async fn derive_moves(&mut self, moves: Vec<FolderMove>) -> Vec<(FolderMove, Vec<RemoteItem>)> {
        let mut derived = Vec::new();
        for mv in moves {
            let keys = vec![mv.from.to_string(), mv.to.to_string()];
            let trees = self
                .fetcher
                .store
                .subtrees(self.fetcher.src.id.clone(), keys)
                .await;
            let result = match trees.as_deref() {
                Ok([from, to]) => moves::derive(&mv, from, to).map_err(|e| e.to_string()),
                Ok(_) => Err("the store gave no subtrees".to_owned()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(items) => {
                    info!(from = %mv.from, to = %mv.to, items = mv.items, "folder moved on the peer");
                    self.fetcher.feed.progress(Progress::Moved(true));
                    derived.push((mv, items));
                }
                Err(why) => {
                    info!(from = %mv.from, to = %mv.to, why = %why, "asking for a folder move's entries");
                    self.fetcher.feed.progress(Progress::Moved(false));
                    self.expanding.insert(mv.first_sequence);
                    self.fetcher.feed.expand(mv.first_sequence).await;
                }
            }
        }
        derived
    }

    async fn retry_failed(&mut self, queue_empty: bool) {
        for r in std::mem::take(&mut self.retry) {
            let again = self.process(r.item).await;
            self.retry.extend(again);
        }
        self.acknowledge(queue_empty).await;
    }

    /// Splits an update's items into runs behind those already queued (a run ends at
    /// [`APPLY_BATCH`] items or [`RUN_BYTES`] to fetch) and notes where the update ends.
    async fn enqueue(&mut self, queue: &mut Queue, update: Update) {
        let Update {
            items,
            moves,
            expands,
            through,
            caught_up,
        } = update;
        let moved = if moves.is_empty() {
            Vec::new()
        } else {
            self.derive_moves(moves).await
        };
        // A newer version of an item waiting for a retry replaces it: the old one may never
        // be applicable (its content gone, its folder replaced), and the new one decides.
        if !self.retry.is_empty() {
            let newer: BTreeSet<&str> = items
                .iter()
                .filter_map(|i| i.as_ref().ok().map(|i| i.path.as_str()))
                .chain(
                    moved
                        .iter()
                        .flat_map(|(_, m)| m.iter().map(|i| i.path.as_str())),
                )
                .collect();
            self.retry.retain(|r| !newer.contains(r.item.path.as_str()));
        }
        // Counted as they are taken out again: a refused item counts no bytes.
        let needed_bytes: u64 = items
            .iter()
            .map(|i| {
                i.as_ref()
                    .map_or(0, |i| i.file().map_or(0, |f| f.meta.size))
            })
            .sum();
        self.needed.add(items.len() as u64, needed_bytes);
        let mut max_seq = through;
        for item in items {
            match item {
                Err(refused) => {
                    self.fetcher.feed.refused(&refused.to_string());
                    self.needed.done(1, 0);
                }
                Ok(item) => {
                    max_seq = max_seq.max(item.header.sequence);
                    // Content that must be fetched bounds a run too, so a run of big files
                    // does not hold hundreds of temp files at once.
                    let fetched = item
                        .file()
                        .filter(|f| f.inline.is_none())
                        .map_or(0, |f| f.meta.size);
                    let open = match queue.runs.back_mut() {
                        Some(Run::Items(r))
                            if r.len() < APPLY_BATCH
                                && (queue.run_bytes + fetched <= RUN_BYTES || r.is_empty()) =>
                        {
                            Some(r)
                        }
                        _ => None,
                    };
                    match open {
                        Some(run) => run.push(item),
                        None => {
                            queue.runs.push_back(Run::Items(vec![item]));
                            queue.run_bytes = 0;
                        }
                    }
                    queue.run_bytes += fetched;
                    queue.queued += 1;
                }
            }
        }
        // Each move is a run of its own, after the update's items.
        for (mv, derived) in moved {
            let n = derived.len() as u64;
            let bytes = derived
                .iter()
                .map(|i| i.file().map_or(0, |f| f.meta.size))
                .sum();
            self.needed.add(n, bytes);
            queue.queued += n;
            max_seq = max_seq.max(mv.last_sequence);
            queue.runs.push_back(Run::Move(Box::new(mv), derived));
        }
        queue
            .ends
            .push_back((queue.queued, max_seq, caught_up, expands));
    }

    /// Acknowledges every update whose items are all dealt with.
    async fn acknowledge_done(&mut self, queue: &mut Queue, channel_empty: bool) {
        let mut done = None;
        while let Some(&(end, max_seq, caught_up, expands)) = queue.ends.front() {
            if end > queue.dealt {
                break;
            }
            queue.ends.pop_front();
            if let Some(first) = expands {
                self.expanding.remove(&first);
            }
            self.seen = self.seen.max(max_seq);
            done = Some(caught_up);
        }
        if let Some(caught_up) = done {
            // The sender's word that it has sent everything it had numbered, scanned and
            // settled.
            self.fetcher.feed.progress(Progress::CaughtUp(caught_up));
            self.acknowledge(channel_empty && queue.ends.is_empty())
                .await;
        }
    }

    /// Moves the cursor and tells the peer how far its index is applied here: up to just
    /// before the first item still waiting for a retry, so neither side calls it in sync and
    /// a restart asks for that item again.
    async fn acknowledge(&mut self, queue_empty: bool) {
        let held_back = self
            .retry
            .iter()
            .map(|r| r.item.header.sequence)
            .chain(self.expanding.first().copied())
            .min();
        let applied = match held_back {
            Some(first) => self.seen.min(first.saturating_sub(1)),
            None => self.seen,
        };
        if applied != self.applied {
            self.applied = applied;
            let origin = self.fetcher.feed.origin().device.clone();
            let source = self.fetcher.src.id.clone();
            if let Err(e) = self.fetcher.store.set_cursor(origin, source, applied).await {
                warn!(error = %e, "cannot save the cursor; the sender resends after a restart");
            }
        }
        self.fetcher.feed.acknowledge(applied, self.seen).await;
        let idle = queue_empty && self.retry.is_empty() && self.expanding.is_empty();
        self.fetcher.feed.progress(Progress::Acknowledged {
            applied,
            seen: self.seen,
            idle,
        });
    }

    /// Applies one item; gives it back if it should be tried again later.
    async fn process(&mut self, item: RemoteItem) -> Option<Retry> {
        let (items, prepared) = self.fetcher.clone().prepare_all(vec![item]).await;
        self.finish(items.into_iter().zip(prepared).collect())
            .await
            .pop()
    }

    /// The local step of prepared items: hand them to the source task as one batch. Gives
    /// back the items to try again later.
    async fn finish(&mut self, batch: Vec<(RemoteItem, Prepared)>) -> Vec<Retry> {
        let feed = self.fetcher.feed.clone();
        let origin = feed.origin().clone();
        let mut retry = Vec::new();
        let mut claims = Vec::new();
        let mut temps = Vec::new();
        let mut items = Vec::with_capacity(batch.len());
        let mut reqs = Vec::with_capacity(batch.len());
        for (item, prepared) in batch {
            match prepared {
                Prepared::Skip => {}
                Prepared::Busy(key) => retry.push(Retry {
                    item,
                    busy: Some(key),
                }),
                Prepared::Retry(why) => {
                    let e = why.describe(&item.path);
                    warn!(item = %item.path, error = %e, "cannot fetch content; retrying later");
                    feed.progress(Progress::Error(e));
                    retry.push(Retry { item, busy: None });
                }
                Prepared::Apply(temp, claim) => {
                    claims.extend(claim);
                    reqs.push(RemoteApply {
                        item: item.clone(),
                        temp: temp.as_ref().map(|t| t.path.clone()),
                        from: origin.short.clone(),
                        from_device: origin.device.clone(),
                    });
                    temps.extend(temp);
                    items.push(item);
                }
            }
        }
        if reqs.is_empty() {
            return retry;
        }
        // From here the source task owns the temp files: it renames each into place or
        // removes it. The hand-over runs in its own task, so a connection dropping while the
        // batch waits for the source task neither strands the temps nor pulls them from
        // under an apply already under way.
        for temp in temps {
            temp.hand_over();
        }
        let commander = self.fetcher.src.commander.clone();
        let applying = tokio::spawn(async move {
            let outcomes = commander.apply(reqs).await;
            drop(claims);
            outcomes
        });
        let outcomes = match applying.await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                let failure = ApplyFailure::Task {
                    what: "applying",
                    error: e.to_string(),
                };
                vec![ApplyOutcome::Failed(failure); items.len()]
            }
        };
        for (item, outcome) in items.into_iter().zip(outcomes) {
            if let ApplyOutcome::Failed(e) = outcome {
                feed.progress(Progress::Error(e.to_string()));
                retry.push(Retry { item, busy: None });
            }
        }
        retry
    }
}

/// Gives the derived additions of a move the content of their old copies where that is small
/// (files too small to be indexed by chunk, up to [`MOVE_READ_BYTES`] in all), checked
/// against their hash: no copy by chunk could find those, and the peer need not send them.
/// Whatever cannot be read is fetched as usual.
async fn with_old_content(
    root: &std::path::Path,
    mv: &FolderMove,
    mut items: Vec<RemoteItem>,
) -> Vec<RemoteItem> {
    let mut budget = MOVE_READ_BYTES;
    let mut wanted: Vec<(usize, ItemPath, u32, Hash128)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(file) = item.file() else { continue };
        let small = file.meta.kind == ItemKind::File
            && !item.header.deleted
            && file.meta.size > 0
            && !store::indexed_by_chunk(file.meta.size);
        let (Some(hash), true) = (file.hash, small) else {
            continue;
        };
        if file.meta.size > budget {
            break;
        }
        let Some(rel) = moves::relative(item.path.as_str(), mv.to.as_str()) else {
            continue;
        };
        let Ok(old) = ItemPath::parse(&format!("{}/{rel}", mv.from)) else {
            continue;
        };
        budget -= file.meta.size;
        let len = u32::try_from(file.meta.size).unwrap_or(u32::MAX);
        wanted.push((i, old, len, hash));
    }
    if wanted.is_empty() {
        return items;
    }
    let root: PathBuf = root.to_owned();
    let read =
        tokio::task::spawn_blocking(move || crate::apply::read_whole_files(&root, wanted)).await;
    for (i, data) in read.unwrap_or_default() {
        if let Some(Body::File(file)) = items.get_mut(i).map(|item| &mut item.body) {
            file.inline = Some(data);
        }
    }
    items
}
