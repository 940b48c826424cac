//! The source task's side of a record source: a read of the native data turned into
//! differences (value by value, against the prior record), and a peer's batch merged into
//! the local records and written back in this device's format.
//!
//! Must not: write before deciding on the state it checked against, or take a record that
//! could not be read for deleted.

use std::collections::{HashMap, HashSet};

use tracing::{debug, warn};

use super::{
    AppliedRecord, ApplyFailure, ApplyOutcome, RemoteApply, SourceTask, Stop, TotalsDelta,
};
use crate::events::{Event, EventKind, unix_ms_now};
use crate::formats::Layout;
use crate::formats::native::{Record, Stamp};
use crate::formats::record_io::{Known, Place, RecordJob, RecordRead, RecordSource, RecordWritten};
use crate::index::{Ordering, VersionVector};
use crate::item::{Body, Difference, Header, PriorItem};
use crate::records::{self, stamp_all};
use crate::scanner::ScanSummary;
use tandem_proto::peer as pb;

/// Why a record source cannot be read as a whole.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error(transparent)]
    Source(#[from] crate::formats::record_io::RecordSourceError),
    #[error("{0}")]
    Stored(#[from] records::BadStoredRecord),
}

/// A prior item with its stored record decoded: whole, or (for a scan, which needs the body
/// only of the few records that changed) just its place until [`Prior::full`] is asked.
struct Prior {
    item: PriorItem,
    place: Place,
    stored: Option<pb::StoredRecord>,
}

impl Prior {
    /// The stored record whole (empty when its body cannot be decoded: it is read again).
    fn full(&self) -> std::borrow::Cow<'_, pb::StoredRecord> {
        use std::borrow::Cow;
        if let Some(s) = &self.stored {
            return Cow::Borrowed(s);
        }
        let decoded = self
            .item
            .body
            .record()
            .map(|bytes| records::decode_stored(&self.item.key, bytes));
        match decoded {
            Some(Ok(s)) => Cow::Owned(s),
            Some(Err(e)) => {
                warn!(error = %e, "a stored record cannot be read");
                Cow::Owned(pb::StoredRecord::default())
            }
            None => Cow::Owned(pb::StoredRecord::default()),
        }
    }
}

fn place_of(stored: &pb::StoredRecord) -> Place {
    Place {
        file: stored.file.clone(),
        size: stored.size,
        mtime_ns: stored.mtime_ns,
        inode: stored.inode,
        keyed_here: stored.keyed_here,
        native_hash: stored.native_hash.clone(),
        ordinal: stored.ordinal,
    }
}

fn place_from(p: pb::StoredPlace) -> Place {
    Place {
        file: p.file,
        size: p.size,
        mtime_ns: p.mtime_ns,
        inode: p.inode,
        keyed_here: p.keyed_here,
        native_hash: p.native_hash,
        ordinal: p.ordinal,
    }
}

fn stored(record: Record, place: &Place) -> pb::StoredRecord {
    let mut stored = pb::StoredRecord {
        body: Some(pb::RecordBody {
            record: Some(record),
        }),
        ..pb::StoredRecord::default()
    };
    set_place(&mut stored, place);
    stored
}

/// Puts a place into a stored record.
fn set_place(stored: &mut pb::StoredRecord, place: &Place) {
    stored.file.clone_from(&place.file);
    stored.size = place.size;
    stored.mtime_ns = place.mtime_ns;
    stored.inode = place.inode;
    stored.keyed_here = place.keyed_here;
    stored.native_hash.clone_from(&place.native_hash);
    stored.ordinal = place.ordinal;
}

fn now_s() -> i64 {
    i64::try_from(unix_ms_now() / 1000).unwrap_or(i64::MAX)
}

impl SourceTask {
    /// The open record source, opened on first use.
    fn record_source(&mut self) -> Option<Box<dyn RecordSource>> {
        if let Some(open) = self.record_source.take() {
            return Some(open);
        }
        let io = self.format.records()?;
        let settings = crate::formats::native::WriteSettings {
            vcard_version: self.cfg.vcard_version.clone(),
        };
        Some(io.open(&self.cfg.root, settings))
    }

    /// The prior records of the source (all, only their places; or those of `keys`, whole),
    /// by key.
    async fn prior_records(
        &self,
        keys: Option<Vec<String>>,
    ) -> Result<HashMap<String, Prior>, Stop> {
        let light = keys.is_none();
        let items = match keys {
            None => self.store.prior_items(self.cfg.id.clone(), None).await,
            // A peer's batch needs only its own items: one lookup each, in one trip.
            Some(keys) => self
                .store
                .prior_items_at(self.cfg.id.clone(), keys)
                .await
                .map(|found| found.into_iter().flatten().collect()),
        }
        .map_err(|e| Stop::Source(e.into()))?;
        let mut out = HashMap::with_capacity(items.len());
        for item in items {
            let Some(bytes) = item.body.record() else {
                continue;
            };
            let decoded = if light {
                records::decode_place(&item.key, bytes).map(|place| (place_from(place), None))
            } else {
                records::decode_stored(&item.key, bytes).map(|s| (place_of(&s), Some(s)))
            };
            match decoded {
                Ok((place, stored)) => {
                    out.insert(
                        item.key.clone(),
                        Prior {
                            item,
                            place,
                            stored,
                        },
                    );
                }
                // One bad row must not stop the source: its record is read again.
                Err(e) => warn!(error = %e, "a stored record cannot be read"),
            }
        }
        Ok(out)
    }

    /// Reads a record source and commits what changed, value by value.
    pub(super) async fn scan_records(&mut self) -> Result<ScanSummary, Stop> {
        if self.format.layout() == Layout::Folder {
            let root = self.cfg.root.clone();
            tokio::task::spawn_blocking(move || super::check_marker(&root))
                .await
                .map_err(|e| Stop::Source(super::SourceError::Crashed(e.to_string())))?
                .map_err(Stop::Source)?;
        }
        let Some(io) = self.format.records() else {
            return Ok(ScanSummary::default());
        };
        let codec = io.codec();
        let started = std::time::Instant::now();
        let Some(mut source) = self.record_source() else {
            return Ok(ScanSummary::default());
        };
        // The file is read while the store reads the prior state; the read waits for it only
        // once it needs it.
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Known>>();
        let reading = tokio::task::spawn_blocking(move || {
            let mut later = || {
                rx.recv().map_err(|_| {
                    crate::formats::record_io::RecordSourceError::Prior(
                        "the store did not answer".into(),
                    )
                })
            };
            let read = source.read(&mut later);
            (source, read)
        });
        let priors = self.prior_records(None).await;
        let priors_ms = started.elapsed().as_millis();
        if let Ok(priors) = &priors {
            let known: Vec<Known> = priors
                .values()
                .filter(|p| !p.item.header.deleted)
                .map(|p| Known {
                    key: p.item.key.clone(),
                    place: p.place.clone(),
                })
                .collect();
            // A read that needs no prior state has gone already.
            let _ = tx.send(known);
        }
        drop(tx);
        let (source, read) = reading
            .await
            .map_err(|e| Stop::Source(super::SourceError::Crashed(e.to_string())))?;
        self.record_source = Some(source);
        let priors = priors?;
        let outcome =
            read.map_err(|e| Stop::Source(super::SourceError::Records(Box::new(e.into()))))?;
        let read_ms = started.elapsed().as_millis() - priors_ms;
        let mut summary = ScanSummary::default();
        if outcome.unchanged {
            return Ok(summary);
        }
        let id = self.cfg.id.clone();
        let kind = self.format.kind();
        let mut seen: HashSet<String> = HashSet::new();
        let mut held: HashSet<String> = HashSet::new();
        let mut errors: Vec<(String, String)> = Vec::new();
        let mut diffs: Vec<Difference> = Vec::new();
        let mut kinds: Vec<EventKind> = Vec::new();
        let mut places: Vec<(String, Vec<u8>)> = Vec::new();
        for found in outcome.found {
            summary.seen += 1;
            match found {
                RecordRead::Unchanged(key) => {
                    seen.insert(key);
                }
                RecordRead::Placed(key, place) => {
                    if let Some(p) = priors.get(&key).filter(|p| !p.item.header.deleted) {
                        let mut moved = p.full().into_owned();
                        set_place(&mut moved, &place);
                        places.push((key.clone(), records::encode_stored(&moved)));
                    }
                    seen.insert(key);
                }
                RecordRead::Error {
                    item,
                    message,
                    holds,
                } => {
                    held.extend(holds);
                    errors.push((item, message));
                }
                RecordRead::Record(read) => {
                    seen.insert(read.key.clone());
                    if crate::formats::kind_of_record(&read.record) != kind {
                        continue;
                    }
                    let prior = priors.get(&read.key);
                    let live = prior.filter(|p| !p.item.header.deleted);
                    let mut version = prior
                        .map(|p| p.item.header.version.clone())
                        .unwrap_or_default();
                    version.bump(self.cfg.local);
                    let dot = Stamp {
                        device: self.cfg.local.0,
                        counter: version.counter(self.cfg.local),
                        unix_s: if read.changed_unix_s > 0 {
                            read.changed_unix_s
                        } else {
                            now_s()
                        },
                    };
                    let prior_stored = live.map(Prior::full);
                    let prior_record = prior_stored.as_deref().and_then(records::record_of);
                    let new = match prior_record {
                        None => Some(stamp_all(read.record, &dot)),
                        Some(old) => records::restamp(old, &read.record, &|r| codec.holds(r), &dot),
                    };
                    let header =
                        |version: VersionVector, modified_by: Option<String>, origin| Header {
                            version,
                            sequence: 0,
                            deleted: false,
                            origin,
                            modified_by,
                        };
                    match (new, live) {
                        (Some(record), _) => {
                            kinds.push(if live.is_some() {
                                EventKind::Modified
                            } else {
                                EventKind::Added
                            });
                            diffs.push(Difference {
                                key: read.key,
                                header: header(
                                    version,
                                    Some(self.cfg.local_short_name.clone()),
                                    None,
                                ),
                                body: Body::Record(records::encode_stored(&stored(
                                    record,
                                    &read.place,
                                ))),
                            });
                        }
                        // The same values in another place (a renamed file, other line ends):
                        // recorded here only, under the same version and sequence.
                        (None, Some(p)) if p.place != read.place => {
                            let mut moved = p.full().into_owned();
                            set_place(&mut moved, &read.place);
                            places.push((read.key, records::encode_stored(&moved)));
                        }
                        (None, _) => {}
                    }
                }
            }
        }
        if !outcome.hold_deletions {
            for p in priors.values() {
                let gone = !p.item.header.deleted
                    && !seen.contains(&p.item.key)
                    && !held.contains(&p.item.key);
                if !gone {
                    continue;
                }
                let mut version = p.item.header.version.clone();
                version.bump(self.cfg.local);
                kinds.push(EventKind::Deleted);
                diffs.push(Difference {
                    key: p.item.key.clone(),
                    header: Header {
                        version,
                        sequence: 0,
                        deleted: true,
                        origin: None,
                        modified_by: Some(self.cfg.local_short_name.clone()),
                    },
                    // The last record goes with its tombstone: a peer that edited it at the
                    // same time merges against it.
                    body: Body::Record(records::encode_stored(&pb::StoredRecord {
                        body: p.full().into_owned().body,
                        ..pb::StoredRecord::default()
                    })),
                });
            }
        }
        let seqs = if diffs.is_empty() {
            Vec::new()
        } else {
            self.store
                .commit(id.clone(), diffs.clone(), crate::store::Settles::Nothing)
                .await
                .map_err(|e| Stop::Source(e.into()))?
        };
        for ((diff, kind), seq) in diffs.iter().zip(kinds).zip(&seqs) {
            debug!(item = %diff.key, seq, kind = kind.as_str(), "recorded");
            self.events
                .emit_with(|| Event::now(&id, kind).item(&diff.key).sequence(*seq));
        }
        let last = seqs.last().copied();
        debug!(
            priors_ms,
            read_ms,
            ms = started.elapsed().as_millis(),
            changed = seqs.len(),
            "records read"
        );
        for (item, message) in &errors {
            let known = self.status.borrow().item_errors.get(item) == Some(message);
            if !known {
                warn!(item = %item, error = %message, "cannot read record");
                self.events.emit(
                    Event::now(&id, EventKind::ItemError)
                        .item(item)
                        .detail(message.clone()),
                );
            }
        }
        let totals = if last.is_some() {
            self.store.totals(id.clone()).await.ok()
        } else {
            None
        };
        self.publish(|s| {
            if let Some(totals) = totals {
                s.totals = totals;
            }
            s.item_errors = errors.into_iter().collect();
        });
        // After the differences are out (peers wait for those): places are this device's own.
        if !places.is_empty() {
            self.store
                .set_record_places(id.clone(), places)
                .await
                .map_err(|e| Stop::Source(e.into()))?;
        }
        Ok(summary)
    }

    /// Merges a peer's batch of records into this source and writes what changed.
    pub(super) async fn apply_records(&mut self, batch: Vec<RemoteApply>) -> Vec<ApplyOutcome> {
        let started = std::time::Instant::now();
        let mut outcomes = vec![ApplyOutcome::Skipped; batch.len()];
        let keys = batch.iter().map(|r| r.item.path.to_string()).collect();
        let priors = match self.prior_records(Some(keys)).await {
            Ok(p) => p,
            Err(_) => {
                return vec![
                    ApplyOutcome::Failed(ApplyFailure::Lookup(
                        "the prior records cannot be read".into()
                    ));
                    batch.len()
                ];
            }
        };
        let kind = self.format.kind();
        let codec = self.format.records().map(|io| io.codec());
        // What each job will record once written: (index, difference, event kind, from).
        let mut planned: Vec<(usize, Difference, EventKind, String)> = Vec::new();
        let mut jobs: Vec<RecordJob> = Vec::new();
        let mut unwritten: Vec<(usize, Difference, EventKind, String)> = Vec::new();
        for (i, req) in batch.into_iter().enumerate() {
            let key = req.item.path.to_string();
            let remote = req
                .item
                .body
                .record()
                .and_then(|b| records::decode_stored(&key, b).ok());
            let Some(remote_record) = remote.as_ref().and_then(records::record_of) else {
                outcomes[i] = refuse(&key, "it is not a record");
                continue;
            };
            if crate::formats::kind_of_record(remote_record) != kind {
                outcomes[i] = refuse(
                    &key,
                    &format!(
                        "it is {} where this source keeps {kind}",
                        crate::formats::kind_of_record(remote_record)
                    ),
                );
                continue;
            }
            let prior = priors.get(&key);
            let remote_version = &req.item.header.version;
            let order = prior.map(|p| remote_version.compare(&p.item.header.version));
            let local_live = prior.filter(|p| !p.item.header.deleted);
            let (version, record, deleted) = match order {
                Some(Ordering::Equal | Ordering::Dominated) => continue,
                None | Some(Ordering::Dominates) => {
                    if req.item.header.deleted {
                        (remote_version.clone(), None, true)
                    } else {
                        let record = match local_live
                            .and_then(|p| p.stored.as_ref().and_then(records::record_of))
                        {
                            // Local places kept for what both hold.
                            Some(local) => records::merge(
                                local,
                                &local_live
                                    .map(|p| p.item.header.version.clone())
                                    .unwrap_or_default(),
                                remote_record,
                                remote_version,
                            ),
                            None => remote_record.clone(),
                        };
                        (remote_version.clone(), Some(record), false)
                    }
                }
                Some(Ordering::Concurrent) => match local_live {
                    // Deleted here, edited there: the edit wins.
                    None if req.item.header.deleted => continue,
                    None => {
                        let merged_version = prior
                            .map(|p| p.item.header.version.merge(remote_version))
                            .unwrap_or_else(|| remote_version.clone());
                        (merged_version, Some(remote_record.clone()), false)
                    }
                    // Edited here, deleted there: the edit wins, and the peer takes it.
                    Some(_) if req.item.header.deleted => continue,
                    Some(local) => {
                        let Some(local_record) = local.stored.as_ref().and_then(records::record_of)
                        else {
                            continue;
                        };
                        let merged = records::merge(
                            local_record,
                            &local.item.header.version,
                            remote_record,
                            remote_version,
                        );
                        let merged_version = local.item.header.version.merge(remote_version);
                        (merged_version, Some(merged), false)
                    }
                },
            };
            let event = match (deleted, local_live.is_some()) {
                (true, _) => EventKind::Deleted,
                (false, true) => EventKind::Modified,
                (false, false) => EventKind::Added,
            };
            let place = local_live.map(|p| p.place.clone());
            let diff = |record: Option<Record>, place: &Place| Difference {
                key: key.clone(),
                header: Header {
                    version: version.clone(),
                    sequence: 0,
                    deleted,
                    origin: Some(req.from_device.clone()),
                    modified_by: req.item.header.modified_by.clone(),
                },
                body: Body::Record(records::encode_stored(&match record {
                    Some(r) => stored(r, place),
                    None => pb::StoredRecord {
                        body: remote.as_ref().and_then(|r| r.body.clone()),
                        ..pb::StoredRecord::default()
                    },
                })),
            };
            // A record whose values this format holds did not change is not rewritten.
            let unchanged_here = match (&record, local_live, codec) {
                (Some(new), Some(p), Some(codec)) => p
                    .stored
                    .as_ref()
                    .and_then(records::record_of)
                    .is_some_and(|old| {
                        records::normalized(&codec.holds(old))
                            == records::normalized(&codec.holds(new))
                    }),
                (None, None, _) => true,
                _ => false,
            };
            if unchanged_here {
                let place = place.clone().unwrap_or_default();
                unwritten.push((i, diff(record, &place), event, req.from.clone()));
                continue;
            }
            let d = diff(record.clone(), &place.clone().unwrap_or_default());
            planned.push((i, d, event, req.from.clone()));
            jobs.push(RecordJob {
                key: key.clone(),
                record,
                place,
            });
        }
        let mut rescan = false;
        if !jobs.is_empty() {
            let Some(mut source) = self.record_source() else {
                return outcomes;
            };
            let written = tokio::task::spawn_blocking(move || {
                let results = source.write(jobs);
                (source, results)
            })
            .await;
            let results = match written {
                Ok((source, results)) => {
                    self.record_source = Some(source);
                    results
                }
                Err(e) => {
                    let failure = ApplyFailure::Task {
                        what: "writing records",
                        error: e.to_string(),
                    };
                    for (i, ..) in &planned {
                        outcomes[*i] = ApplyOutcome::Failed(failure.clone());
                    }
                    return outcomes;
                }
            };
            for ((i, mut diff, event, from), result) in planned.into_iter().zip(results) {
                match result {
                    Ok(RecordWritten::Done(place)) => {
                        if !diff.header.deleted
                            && let Body::Record(bytes) = &diff.body
                            && let Ok(mut s) = records::decode_stored(&diff.key, bytes)
                        {
                            set_place(&mut s, &place);
                            diff.body = Body::Record(records::encode_stored(&s));
                        }
                        self.queue_applied(diff, event, from);
                        outcomes[i] = ApplyOutcome::Applied;
                    }
                    Ok(RecordWritten::ChangedMeanwhile) => {
                        rescan = true;
                        outcomes[i] = ApplyOutcome::Failed(ApplyFailure::Busy);
                    }
                    Err(e) => {
                        warn!(item = %diff.key, error = %e, "cannot write record");
                        outcomes[i] = ApplyOutcome::Failed(ApplyFailure::Write(e.into()));
                    }
                }
            }
        }
        for (i, diff, event, from) in unwritten {
            self.queue_applied(diff, event, from);
            outcomes[i] = ApplyOutcome::Applied;
        }
        let written_ms = started.elapsed().as_millis();
        if let Err(failure) = self.flush_applied().await {
            for o in &mut outcomes {
                if o.is_applied() {
                    *o = ApplyOutcome::Failed(failure.clone());
                }
            }
        }
        if outcomes.iter().any(ApplyOutcome::is_applied)
            && let Ok(totals) = self.store.totals(self.cfg.id.clone()).await
        {
            self.publish(|s| s.totals = totals);
        }
        debug!(
            items = outcomes.len(),
            written_ms,
            ms = started.elapsed().as_millis(),
            "records applied"
        );
        if rescan {
            // Someone changed the file since it was read: it is read first, then the items
            // come again.
            self.debouncer.push_full(tokio::time::Instant::now());
            self.publish_pending();
        }
        outcomes
    }

    fn queue_applied(&mut self, diff: Difference, kind: EventKind, from: String) {
        self.applied_records.push(AppliedRecord {
            diff,
            kind,
            delta: TotalsDelta::default(),
            from,
        });
    }
}

/// A peer's record that this source cannot take: skipped, and said why.
fn refuse(key: &str, why: &str) -> ApplyOutcome {
    warn!(item = %key, why, "record refused");
    ApplyOutcome::Skipped
}
