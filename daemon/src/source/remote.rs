//! The local half of applying a peer's differences: check each against this device's state,
//! journal the ones to write, write them, and record them with their batch.
//!
//! Order of one batch: every item is checked (and staged) first; then the staged items go in
//! parts: a part's intents are recorded in the apply journal in one transaction (a numbered
//! journal batch), then it is written (conflict copy, versions folder, rename into place),
//! then it commits, which clears its journal batch. The next part is journaled while one is
//! written, and a written part commits while the next is written. A crash between a rename
//! and the commit leaves a journal entry, and [`SourceTask::recover_intents`] at the next
//! start records the item as applied when it is on disk exactly as intended, instead of the
//! scanner taking it for a local change. Must not: fetch content (the peer module does), or
//! write anything before its intent is journaled.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use tracing::{debug, info, warn};

use super::{AppliedRecord, SourceTask, TotalsDelta, check_marker};
use crate::apply::{self, ApplyError, Disk};
use crate::events::{Event, EventKind};
use crate::formats::{Loser, Write, WriteJob, WriteResult, Written};
use crate::index::{Decision, VersionVector};
use crate::item::{Body, Content, Difference, FileChange, Header, ItemKind, Metadata, PriorItem};
use crate::scanner::Scope;
use crate::source::{ApplyFailure, ApplyOutcome, RemoteApply};
use crate::universal::{ItemPath, RemoteFile};

/// A remote difference that passed every check and waits to be written with its stage.
struct Staged {
    /// Position in the batch, for its outcome.
    index: usize,
    req: RemoteApply,
    prior: Option<PriorItem>,
    /// Concurrent with the local version, and the peer's wins.
    conflict: bool,
    /// The recorded content is already what the peer has (a metadata-only change).
    same_content: bool,
    /// The version to record: the peer's, merged with the local one after a conflict.
    version: VersionVector,
}

impl Staged {
    /// What the journal records before the write: the difference as it will be committed,
    /// with the metadata the write is meant to leave on disk. (A record is journaled as it
    /// came; a files source's writer refuses it.)
    fn intent(&self) -> Difference {
        let item = &self.req.item;
        let body = match &item.body {
            Body::File(file) => {
                let meta = self.intended_meta(file);
                Body::File(FileChange {
                    content: content_of(item.header.deleted, file, meta.kind),
                    meta,
                })
            }
            Body::Record(record) => Body::Record(record.clone()),
        };
        Difference {
            key: item.path.to_string(),
            header: Header {
                version: self.version.clone(),
                sequence: 0,
                deleted: item.header.deleted,
                origin: self.origin(),
                modified_by: self.modified_by(),
            },
            body,
        }
    }

    /// The metadata writing `file` is meant to leave on disk (a deletion keeps what was
    /// recorded, with no size).
    fn intended_meta(&self, file: &RemoteFile) -> Metadata {
        let deleted = self.req.item.header.deleted;
        let mut meta = if deleted {
            self.prior
                .as_ref()
                .and_then(PriorItem::file)
                .map_or_else(|| file.meta.clone(), |p| p.meta.clone())
        } else {
            file.meta.clone()
        };
        meta.inode = 0;
        if deleted {
            meta.size = 0;
        }
        meta
    }

    /// The winning version's author; a peer too old to say is taken to be the author.
    fn modified_by(&self) -> Option<String> {
        let item = &self.req.item;
        item.header
            .modified_by
            .clone()
            .or_else(|| Some(self.req.from.clone()))
    }

    /// A merged conflict version is news to the sender too, so it is echoed back.
    fn origin(&self) -> Option<String> {
        (!self.conflict).then(|| self.req.from_device.clone())
    }
}

/// Most items journaled, written and committed together (a part of a batch).
const WRITE_PART: usize = 256;

/// A journaled part of a batch being written on the blocking pool.
struct Writing {
    part: Vec<Staged>,
    /// Its number in the apply journal.
    batch: u64,
    task: tokio::task::JoinHandle<Vec<WriteResult>>,
}

/// After a failed commit: what was written is not on record, so nothing counts as applied
/// (it is tried again).
fn fail_applied(outcomes: &mut [ApplyOutcome], e: &ApplyFailure) {
    warn!(error = %e, "cannot record applied differences");
    for o in outcomes {
        if o.is_applied() {
            *o = ApplyOutcome::Failed(e.clone());
        }
    }
}

/// The content a difference records for a peer's file, of `kind` on disk.
fn content_of(deleted: bool, file: &RemoteFile, kind: ItemKind) -> Content {
    match (kind, file.hash) {
        (ItemKind::File, Some(hash)) if !deleted => Content::Replace {
            hash,
            chunks: file.chunks.clone(),
        },
        _ => Content::Empty,
    }
}

/// What the disk says about an item's target before a remote difference is applied.
enum OnDisk {
    /// As the prior state recorded it (or scanned just now).
    AsRecorded,
    /// Changed since its last scan: scan first.
    ChangedHere,
    /// Behind a symlink or a file: not part of the source.
    Blocked,
}

/// An item's prior state, or why it could not be read.
type PriorLook = Result<Option<PriorItem>, String>;
/// What the disk holds at an item's path, or why it could not be looked at.
type DiskLook = Result<OnDisk, String>;

/// Looks at an item's target on disk (run on the blocking pool). Behind a symlink (or a file)
/// above the item lies nothing of the source: no check, version keeping or deletion may look
/// or reach through it.
fn look_at_disk(
    disk: &dyn Disk,
    root: &Path,
    path: &ItemPath,
    prior: Option<&PriorItem>,
    scanned: bool,
    real: &mut apply::RealFolders,
) -> DiskLook {
    if real.blocked_parent(root, path).is_some() {
        return Ok(OnDisk::Blocked);
    }
    if scanned || apply::unchanged_since_scan(disk, root, path, prior).map_err(|e| e.to_string())? {
        Ok(OnDisk::AsRecorded)
    } else {
        Ok(OnDisk::ChangedHere)
    }
}

/// What checking one remote difference came to.
enum Check {
    Done(ApplyOutcome),
    /// To be written: the state it was checked against, and what to record.
    Stage {
        prior: Option<PriorItem>,
        conflict: bool,
        same_content: bool,
        version: VersionVector,
    },
    /// The target changed since its last scan: scan it first, then check again.
    ScanFirst,
}

impl SourceTask {
    /// Applies a batch of remote differences and commits them together.
    pub(super) async fn apply_batch(&mut self, batch: Vec<RemoteApply>) -> Vec<ApplyOutcome> {
        if self.format.records().is_some() {
            return self.apply_records(batch).await;
        }
        let started = std::time::Instant::now();
        let items = batch.len();
        let mut outcomes = vec![ApplyOutcome::Skipped; batch.len()];
        let mut stage: Vec<Staged> = Vec::new();
        // Deletions first, deepest first: a folder the peer replaced by a file is emptied of
        // what the peer saw before the file comes, so only what it never saw is moved aside.
        // (Content was fetched before the batch came here, so order costs no reuse.)
        let mut ordered: Vec<(usize, RemoteApply)> = batch.into_iter().enumerate().collect();
        ordered.sort_by_key(|(i, r)| {
            let depth = r.item.path.as_str().matches('/').count();
            (
                !r.item.header.deleted,
                std::cmp::Reverse(if r.item.header.deleted { depth } else { 0 }),
                *i,
            )
        });
        // Every item's prior state and disk look in one trip each, rather than two per item:
        // they hold until this batch writes or scans something, after which items are
        // looked up one by one again.
        let mut looked_up = self.look_up(&ordered).await;
        let mut staged_paths: HashSet<ItemPath> = HashSet::new();
        for (index, req) in ordered {
            // The same path twice in one batch: the second is checked against the first's
            // result, so the first is written before.
            if staged_paths.contains(&req.item.path) {
                self.write_stage(&mut stage, &mut outcomes).await;
                staged_paths.clear();
                looked_up.clear();
            }
            let mut scanned = false;
            loop {
                let found = if scanned {
                    None
                } else {
                    looked_up.remove(&index)
                };
                let checked = match found {
                    Some((prior, disk)) => self.decide(&req, prior, disk),
                    None => self.check(&req, scanned).await,
                };
                match checked {
                    Check::Done(outcome) => {
                        outcomes[index] = self.finish(&req, outcome);
                        break;
                    }
                    Check::Stage {
                        prior,
                        conflict,
                        same_content,
                        version,
                    } => {
                        staged_paths.insert(req.item.path.clone());
                        stage.push(Staged {
                            index,
                            req,
                            prior,
                            conflict,
                            same_content,
                            version,
                        });
                        break;
                    }
                    Check::ScanFirst => {
                        // Something changed here that the scanner has not seen yet: record
                        // it first, so it is compared (and kept) rather than overwritten.
                        // What this batch already wrote must be on record before the
                        // scanner looks.
                        self.write_stage(&mut stage, &mut outcomes).await;
                        staged_paths.clear();
                        looked_up.clear();
                        if let Err(e) = self.flush_applied().await {
                            outcomes[index] = self.finish(&req, ApplyOutcome::Failed(e));
                            break;
                        }
                        // Boxed: a scan may handle a pause, which is how this async call
                        // graph loops.
                        let under = vec![req.item.path.to_string()];
                        Box::pin(self.scan(Scope::Under(under), HashSet::new())).await;
                        scanned = true;
                    }
                }
            }
        }
        let checked_ms = started.elapsed().as_millis();
        self.write_stage(&mut stage, &mut outcomes).await;
        let written_ms = started.elapsed().as_millis();
        if let Err(e) = self.flush_applied().await {
            fail_applied(&mut outcomes, &e);
        }
        if !self.disturbed.is_empty() {
            // Written to by someone else right after the agent wrote it: hash it again now,
            // so that write is a local change like any other.
            let paths: Vec<String> = self.disturbed.iter().cloned().collect();
            let force = std::mem::take(&mut self.disturbed);
            Box::pin(self.scan(Scope::Under(paths), force)).await;
        }
        debug!(
            items,
            checked_ms,
            written_ms,
            ms = started.elapsed().as_millis(),
            "applied a batch"
        );
        outcomes
    }

    /// Prior state and disk look of every item of a batch, by batch position.
    ///
    /// A new item (no live prior state, not a deletion) is not looked at here: the writer
    /// looks at its target right before writing anyway, and what it can find there (a parent
    /// that is a link or a file: refused; something at the path: scanned, then checked again)
    /// ends as finding it now would. In an initial sync that is every item.
    async fn look_up(
        &self,
        ordered: &[(usize, RemoteApply)],
    ) -> HashMap<usize, (PriorLook, DiskLook)> {
        let paths: Vec<String> = ordered
            .iter()
            .map(|(_, r)| r.item.path.to_string())
            .collect();
        let priors = match self.store.prior_items_at(self.cfg.id.clone(), paths).await {
            Ok(p) => p,
            // Each item asks again on its own and reports its own error.
            Err(_) => return HashMap::new(),
        };
        // By position in `ordered`: the items to look at, with their prior state.
        let jobs: Vec<(usize, ItemPath, Option<PriorItem>)> = ordered
            .iter()
            .zip(&priors)
            .enumerate()
            .filter(|(_, ((_, r), p))| {
                r.item.header.deleted || p.as_ref().is_some_and(|p| !p.header.deleted)
            })
            .map(|(at, ((_, r), p))| (at, r.item.path.clone(), p.clone()))
            .collect();
        let mut disks: Vec<DiskLook> = priors.iter().map(|_| Ok(OnDisk::AsRecorded)).collect();
        if !jobs.is_empty() {
            let root = self.cfg.root.clone();
            let disk = self.cfg.disk.clone();
            let looked = tokio::task::spawn_blocking(move || {
                let mut real = apply::RealFolders::for_looking();
                jobs.into_iter()
                    .map(|(at, path, prior)| {
                        let look =
                            look_at_disk(&*disk, &root, &path, prior.as_ref(), false, &mut real);
                        (at, look)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
            let Ok(looked) = looked else {
                return HashMap::new();
            };
            for (at, look) in looked {
                disks[at] = look;
            }
        }
        ordered
            .iter()
            .map(|(i, _)| *i)
            .zip(priors.into_iter().map(Ok).zip(disks))
            .collect()
    }

    /// Looks up one remote difference's prior state and disk on their own (outside a batch
    /// lookup), then decides what to do with it.
    async fn check(&mut self, req: &RemoteApply, scanned: bool) -> Check {
        let item = &req.item;
        let prior = self
            .store
            .prior_item(self.cfg.id.clone(), item.path.to_string())
            .await
            .map_err(|e| e.to_string());
        let disk = match &prior {
            Ok(p) => {
                let (root, item_path, p) = (self.cfg.root.clone(), item.path.clone(), p.clone());
                let disk = self.cfg.disk.clone();
                tokio::task::spawn_blocking(move || {
                    let real = &mut apply::RealFolders::default();
                    look_at_disk(&*disk, &root, &item_path, p.as_ref(), scanned, real)
                })
                .await
                .unwrap_or_else(|e| Err(format!("apply task failed: {e}")))
            }
            // Not looked at: the prior state's error decides first.
            Err(e) => Err(e.clone()),
        };
        self.decide(req, prior, disk)
    }

    /// Decides what to do with one remote difference, given the item's prior state and what
    /// the disk holds at its path.
    fn decide(&self, req: &RemoteApply, prior: PriorLook, disk: DiskLook) -> Check {
        let item = &req.item;
        if self.cfg.paused {
            return Check::Done(ApplyOutcome::Failed(ApplyFailure::Paused));
        }
        if let Some(error) = self.status.borrow().error.clone() {
            return Check::Done(ApplyOutcome::Failed(ApplyFailure::SourceStopped(error)));
        }
        // A files source holds files only: a record (or a record recorded here) is refused,
        // and nothing of it is written.
        let not_a_file = || {
            Check::Done(ApplyOutcome::Failed(ApplyFailure::Write(Arc::new(
                ApplyError::NotAFile {
                    key: item.path.to_string(),
                },
            ))))
        };
        let Some(file) = item.file() else {
            return not_a_file();
        };
        let ignored = self
            .status
            .borrow()
            .ignores
            .is_ignored(item.path.as_str(), file.meta.kind == ItemKind::Directory);
        if ignored {
            return Check::Done(ApplyOutcome::Skipped);
        }
        let prior = match prior {
            Ok(p) => p,
            Err(e) => return Check::Done(ApplyOutcome::Failed(ApplyFailure::Lookup(e))),
        };
        if prior.as_ref().is_some_and(|p| p.file().is_none()) {
            return not_a_file();
        }
        match disk {
            Ok(OnDisk::AsRecorded) => {}
            Ok(OnDisk::ChangedHere) => return Check::ScanFirst,
            // Nothing of the source is there to delete.
            Ok(OnDisk::Blocked) if item.header.deleted => {
                return Check::Done(ApplyOutcome::Skipped);
            }
            Ok(OnDisk::Blocked) => {
                let refused = ApplyError::BadParent {
                    path: item.path.to_string(),
                };
                return Check::Done(ApplyOutcome::Failed(ApplyFailure::Write(Arc::new(refused))));
            }
            Err(e) => return Check::Done(ApplyOutcome::Failed(ApplyFailure::Lookup(e))),
        }
        let conflict = match item.decide(prior.as_ref()) {
            Decision::Apply => false,
            Decision::Conflict { keep_local } => keep_local,
            Decision::Equal | Decision::Dominated => return Check::Done(ApplyOutcome::Skipped),
            Decision::LocalWins => {
                info!(item = %item.path, peer = %req.from, "conflict: the local version wins");
                return Check::Done(ApplyOutcome::Skipped);
            }
        };
        let same_content = prior
            .as_ref()
            .filter(|p| !p.header.deleted)
            .and_then(PriorItem::file)
            .is_some_and(|p| {
                p.meta.kind == ItemKind::File
                    && p.hash == file.hash
                    && file.meta.kind == ItemKind::File
            });
        if file.meta.kind == ItemKind::File
            && !item.header.deleted
            && req.temp.is_none()
            && !same_content
        {
            // The content was found here when the item was prepared, but what is here now is
            // something else (changed meanwhile, or replaced by a link that only metadata
            // would then be written through): fetch it on the next try.
            return Check::Done(ApplyOutcome::Failed(ApplyFailure::ChangedWhilePrepared {
                item: item.path.to_string(),
            }));
        }
        let version = match (&prior, conflict) {
            (Some(p), true) => item.header.version.merge(&p.header.version),
            _ => item.header.version.clone(),
        };
        Check::Stage {
            prior,
            conflict,
            same_content,
            version,
        }
    }

    /// Journals, writes and queues for the commit everything staged so far. An item whose
    /// target changed on this device between its check and its write is scanned and checked
    /// once more.
    async fn write_stage(&mut self, stage: &mut Vec<Staged>, outcomes: &mut [ApplyOutcome]) {
        let changed = self.write_staged(std::mem::take(stage), outcomes).await;
        for (index, req) in changed {
            if let Err(e) = self.flush_applied().await {
                outcomes[index] = self.finish(&req, ApplyOutcome::Failed(e));
                continue;
            }
            let under = vec![req.item.path.to_string()];
            Box::pin(self.scan(Scope::Under(under), HashSet::new())).await;
            match self.check(&req, true).await {
                Check::Done(outcome) => outcomes[index] = self.finish(&req, outcome),
                Check::ScanFirst => {
                    outcomes[index] = self.finish(&req, ApplyOutcome::Failed(ApplyFailure::Busy));
                }
                Check::Stage {
                    prior,
                    conflict,
                    same_content,
                    version,
                } => {
                    let again = Staged {
                        index,
                        req,
                        prior,
                        conflict,
                        same_content,
                        version,
                    };
                    for (index, req) in Box::pin(self.write_staged(vec![again], outcomes)).await {
                        outcomes[index] =
                            self.finish(&req, ApplyOutcome::Failed(ApplyFailure::Busy));
                    }
                }
            }
        }
    }

    /// Journals, writes and records `staged` in parts of [`WRITE_PART`]: the next part is
    /// journaled while one is written, and a written part is committed while the next is
    /// written, so the store thread and the disk work at once. Gives back the items whose
    /// target changed meanwhile.
    async fn write_staged(
        &mut self,
        staged: Vec<Staged>,
        outcomes: &mut [ApplyOutcome],
    ) -> Vec<(usize, RemoteApply)> {
        let mut changed = Vec::new();
        let mut writing: Option<Writing> = None;
        let mut rest = staged.into_iter().peekable();
        while rest.peek().is_some() {
            let part: Vec<Staged> = rest.by_ref().take(WRITE_PART).collect();
            let journaled = self.journal(part, outcomes).await;
            let Some(done) = writing.take() else {
                writing = journaled.map(|(part, batch)| self.start_write(part, batch));
                continue;
            };
            let results = done.task.await;
            writing = journaled.map(|(part, batch)| self.start_write(part, batch));
            changed.extend(self.written(done.part, done.batch, results, outcomes));
            if writing.is_some()
                && let Err(e) = self.flush_applied().await
            {
                fail_applied(outcomes, &e);
            }
        }
        if let Some(done) = writing {
            let results = done.task.await;
            changed.extend(self.written(done.part, done.batch, results, outcomes));
        }
        changed
    }

    /// Records a part's intents in the apply journal, as one batch; gives back the part and
    /// the batch's number, or nothing when the journal could not be written (every item of
    /// the part then fails, unwritten).
    async fn journal(
        &self,
        part: Vec<Staged>,
        outcomes: &mut [ApplyOutcome],
    ) -> Option<(Vec<Staged>, u64)> {
        let intents: Vec<Difference> = part.iter().map(Staged::intent).collect();
        match self
            .store
            .record_intents(self.cfg.id.clone(), intents)
            .await
        {
            Ok(batch) => Some((part, batch)),
            Err(e) => {
                let failure = ApplyFailure::Store {
                    action: "journaling the write",
                    source: Arc::new(e),
                };
                for s in part {
                    outcomes[s.index] = self.finish(&s.req, ApplyOutcome::Failed(failure.clone()));
                }
                None
            }
        }
    }

    /// Starts writing a journaled part on the blocking pool.
    fn start_write(&self, part: Vec<Staged>, batch: u64) -> Writing {
        let root = self.cfg.root.clone();
        let disk = self.cfg.disk.clone();
        // Content built for an item whose recorded content is the same already (its content
        // came inline, unasked): only its metadata is written, and the temp goes.
        let unneeded: Vec<std::path::PathBuf> = part
            .iter()
            .filter(|s| s.same_content)
            .filter_map(|s| s.req.temp.clone())
            .collect();
        let jobs: Vec<WriteJob> = part
            .iter()
            .map(|s| WriteJob {
                item: s.req.item.clone(),
                temp: s.req.temp.clone().filter(|_| !s.same_content),
                conflict: s.conflict,
                same_content: s.same_content,
                prior: s.prior.clone(),
                loser: s.prior.as_ref().map(|p| Loser {
                    // Named after the losing version itself (its author and time), so every
                    // device that keeps the same loser gives it the same name.
                    by: p
                        .header
                        .modified_by
                        .clone()
                        .unwrap_or_else(|| self.cfg.local_short_name.clone()),
                    unix_secs: u64::try_from(
                        p.file()
                            .map_or(0, |f| f.meta.mtime_ns)
                            .div_euclid(1_000_000_000),
                    )
                    .unwrap_or(0),
                }),
            })
            .collect();
        let format = self.format;
        let task = tokio::task::spawn_blocking(move || {
            unneeded.iter().for_each(|t| apply::remove_temp(t));
            format.write(&*disk, &root, jobs)
        });
        Writing { part, batch, task }
    }

    /// Takes in what writing a part did: each written item is queued for the commit (which
    /// settles the part's journal batch), each failure reported; gives back the items whose
    /// target changed meanwhile. A write task that died leaves its batch in the journal, for
    /// the next start to compare with the disk.
    fn written(
        &mut self,
        part: Vec<Staged>,
        batch: u64,
        results: Result<Vec<WriteResult>, tokio::task::JoinError>,
        outcomes: &mut [ApplyOutcome],
    ) -> Vec<(usize, RemoteApply)> {
        let written = match results {
            Ok(w) => w,
            Err(e) => {
                let failure = ApplyFailure::Task {
                    what: "writing",
                    error: e.to_string(),
                };
                for s in part {
                    outcomes[s.index] = self.finish(&s.req, ApplyOutcome::Failed(failure.clone()));
                }
                return Vec::new();
            }
        };
        self.written_batches.push(batch);
        let mut changed = Vec::new();
        for (s, result) in part.into_iter().zip(written) {
            let outcome = match result {
                Ok(Write::Done(written)) => {
                    if written.disturbed {
                        self.disturbed.insert(s.req.item.path.to_string());
                    }
                    self.queue_record(&s, written)
                }
                Ok(Write::ChangedMeanwhile) => {
                    changed.push((s.index, s.req));
                    continue;
                }
                Err(e) => ApplyOutcome::Failed(ApplyFailure::Write(Arc::new(e))),
            };
            outcomes[s.index] = self.finish(&s.req, outcome);
        }
        changed
    }

    /// Queues the record of a written item for the batch's commit.
    fn queue_record(&mut self, s: &Staged, written: Written) -> ApplyOutcome {
        let item = &s.req.item;
        let path = item.path.to_string();
        let Some(file) = item.file() else {
            // Refused by the writer already; nothing of a record is recorded here.
            return ApplyOutcome::Failed(ApplyFailure::Write(Arc::new(ApplyError::NotAFile {
                key: path,
            })));
        };
        if let Some(copy) = &written.conflict_copy {
            info!(item = %path, copy = %copy, peer = %s.req.from, "conflict: kept the local version as a copy");
        }
        self.own_writes.note(&path, written.meta.as_ref());
        let meta = match written.meta {
            // A folder the peer deleted still holds things it has not seen; they sync and
            // bring it back there.
            Some(_) if item.header.deleted => return ApplyOutcome::Skipped,
            Some(meta) => meta,
            None => s.intended_meta(file),
        };
        let diff = Difference {
            key: path,
            header: Header {
                version: s.version.clone(),
                sequence: 0,
                deleted: item.header.deleted,
                origin: s.origin(),
                modified_by: s.modified_by(),
            },
            body: Body::File(FileChange {
                meta: meta.clone(),
                content: content_of(item.header.deleted, file, meta.kind),
            }),
        };
        let live_prior = s.prior.as_ref().filter(|p| !p.header.deleted);
        let kind = if item.header.deleted {
            EventKind::Deleted
        } else if live_prior.is_some() {
            EventKind::Modified
        } else {
            EventKind::Added
        };
        let mut delta = TotalsDelta::default();
        if let Some(p) = live_prior.and_then(PriorItem::file) {
            delta.remove(&p.meta);
        }
        if !item.header.deleted {
            delta.add(&meta);
        }
        self.applied_records.push(AppliedRecord {
            diff,
            kind,
            delta,
            from: s.req.from.clone(),
        });
        ApplyOutcome::Applied
    }

    /// Cleans up after one outcome: an unused temp file goes, a failure is reported.
    fn finish(&self, req: &RemoteApply, outcome: ApplyOutcome) -> ApplyOutcome {
        if let Some(temp) = &req.temp
            && !outcome.is_applied()
        {
            // Not used: do not leave it lying in the source. Off the runtime's threads, and
            // not waited for: nothing reuses a temp file's name.
            let temp = temp.clone();
            drop(tokio::task::spawn_blocking(move || {
                apply::remove_temp(&temp)
            }));
        }
        if let ApplyOutcome::Failed(failure) = &outcome {
            let message = failure.to_string();
            let path = req.item.path.to_string();
            warn!(item = %path, error = %message, peer = %req.from, "cannot apply");
            self.events.emit(
                Event::now(&self.cfg.id, EventKind::ItemError)
                    .item(&path)
                    .detail(message.clone()),
            );
            let message = message.clone();
            self.publish(|s| {
                s.item_errors.insert(path, message);
            });
        }
        outcome
    }

    /// Finishes what a crash interrupted: journaled items found on disk exactly as intended
    /// are recorded as applied; the rest were never written and their peer sends them again
    /// (its cursor did not move).
    pub(super) async fn recover_intents(&mut self) {
        let id = self.cfg.id.clone();
        let intents = match self.store.intents(id.clone()).await {
            Ok(intents) if intents.is_empty() => return,
            Ok(intents) => intents,
            Err(e) => {
                warn!(error = %e, "cannot read the apply journal");
                return;
            }
        };
        let root = self.cfg.root.clone();
        let looked = root.clone();
        let here =
            tokio::task::spawn_blocking(move || looked.is_dir() && check_marker(&looked).is_ok())
                .await
                .unwrap_or(false);
        if !here {
            // Not the source's folder right now (an unmounted disk?): nothing to compare with.
            // The first scan reports why; the journal waits.
            return;
        }
        let found = tokio::task::spawn_blocking(move || {
            intents
                .into_iter()
                .filter_map(|intent| landed(&root, intent))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let n = found.len();
        // Committing also clears the journal, the entries that never landed with it.
        if let Err(e) = self
            .store
            .commit(id.clone(), found, crate::store::Settles::All)
            .await
        {
            warn!(error = %e, "cannot record what the apply journal found");
            return;
        }
        if n > 0 {
            info!(
                items = n,
                "recorded items a crash left written but unrecorded"
            );
        }
        if let Ok(totals) = self.store.totals(id).await {
            self.publish(|s| s.totals = totals);
        }
    }
}

/// The journaled difference, with the metadata now on disk, when the write it announced
/// reached the disk whole; `None` when it did not (or the item changed since).
fn landed(root: &Path, mut intent: Difference) -> Option<Difference> {
    let path = crate::universal::ItemPath::parse(&intent.key).ok()?;
    // A files source never writes a record, so none can have landed.
    let want = intent.file()?;
    let full = root.join(path.as_str());
    if intent.header.deleted {
        return match std::fs::symlink_metadata(&full) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(intent),
            _ => None,
        };
    }
    let on_disk = apply::stat(root, &path).ok()?;
    let (want, content) = (&want.meta, &want.content);
    let same = on_disk.kind == want.kind
        && match want.kind {
            // Mode and mtime are set before the rename, so a file that made it has both.
            ItemKind::File => {
                on_disk.size == want.size
                    && on_disk.mtime_ns == want.mtime_ns
                    && on_disk.mode == want.mode
                    && match content {
                        Content::Replace { hash, .. } => apply::verify(&full, &path, *hash).is_ok(),
                        Content::Keep | Content::Empty => on_disk.size == 0,
                    }
            }
            ItemKind::Directory => on_disk.mode == want.mode,
            ItemKind::Symlink => on_disk.symlink_target == want.symlink_target,
        };
    if !same {
        return None;
    }
    if let Some(file) = intent.body.file_mut() {
        file.meta = on_disk;
    }
    Some(intent)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::chunker::chunk_bytes;
    use crate::index::ShortId;
    use crate::item::Metadata;

    fn file_intent(path: &str, data: &[u8], mtime_ns: i64, mode: u32) -> Difference {
        let hashed = chunk_bytes(data);
        let mut version = VersionVector::new();
        version.bump(ShortId(3));
        Difference {
            key: path.into(),
            header: Header {
                version,
                sequence: 0,
                deleted: false,
                origin: Some("PEER".into()),
                modified_by: Some("PEER".into()),
            },
            body: Body::File(FileChange {
                meta: Metadata {
                    kind: ItemKind::File,
                    size: data.len() as u64,
                    mtime_ns,
                    inode: 0,
                    mode,
                    symlink_target: None,
                },
                content: Content::Replace {
                    hash: hashed.hash,
                    chunks: hashed.chunks,
                },
            }),
        }
    }

    fn write_file(root: &Path, path: &str, data: &[u8], mtime_ns: i64, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let full = root.join(path);
        std::fs::write(&full, data).unwrap();
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).unwrap();
        let f = std::fs::File::options().write(true).open(&full).unwrap();
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(mtime_ns as u64);
        f.set_times(std::fs::FileTimes::new().set_modified(when))
            .unwrap();
    }

    #[test]
    fn a_file_renamed_into_place_before_the_crash_has_landed() {
        let dir = tempfile::tempdir().unwrap();
        let mtime = 1_700_000_000_000_000_000;
        write_file(dir.path(), "a", b"peer content", mtime, 0o640);
        let found = landed(dir.path(), file_intent("a", b"peer content", mtime, 0o640)).unwrap();
        assert_eq!(found.file().unwrap().meta.size, 12);
        assert_ne!(
            found.file().unwrap().meta.inode,
            0,
            "recorded with what is on disk"
        );
    }

    #[test]
    fn an_old_or_changed_file_has_not_landed() {
        let dir = tempfile::tempdir().unwrap();
        let mtime = 1_700_000_000_000_000_000;
        // The rename never happened: the old content is still there.
        write_file(dir.path(), "a", b"old content!", mtime - 5, 0o640);
        assert!(landed(dir.path(), file_intent("a", b"peer content", mtime, 0o640)).is_none());
        // Same size, mtime and mode, other bytes: only the hash tells.
        write_file(dir.path(), "b", b"peer c0ntent", mtime, 0o640);
        assert!(landed(dir.path(), file_intent("b", b"peer content", mtime, 0o640)).is_none());
        // Missing altogether.
        assert!(landed(dir.path(), file_intent("c", b"x", mtime, 0o640)).is_none());
    }

    #[test]
    fn a_deletion_has_landed_when_the_item_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let mut gone = file_intent("a", b"", 1, 0o644);
        gone.header.deleted = true;
        gone.body.file_mut().unwrap().content = Content::Empty;
        assert!(landed(dir.path(), gone.clone()).is_some());
        std::fs::write(dir.path().join("a"), b"still here").unwrap();
        assert!(landed(dir.path(), gone).is_none());
    }

    #[test]
    fn paths_from_the_journal_are_checked_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut escape = file_intent("../x", b"", 1, 0o644);
        escape.header.deleted = true;
        assert!(landed(dir.path(), escape).is_none());
    }
}
