//! A peer's folder move applied as one rename: every entry it stands for is checked against
//! this device's state as any remote difference is (the one decision must say apply, nothing
//! may be ignored here), the folder on disk must hold exactly what is recorded, unchanged since
//! its scan, and the new name must be free. Then all entries are journaled in one
//! transaction, the format renames the folder once (durably), and the entries are recorded:
//! the moved items keep their inodes, and no deleted copy goes to the versions folder, since
//! nothing is lost. Anything that does not check out leaves the disk untouched, and the
//! receiver applies the entries one by one instead. A crash between the rename and the record
//! is finished at the next start by `recover_intents`, which finds the deletions gone and the
//! additions on disk as journaled. Must not: write before every check passed and the intents
//! are journaled.

use std::collections::HashMap;

use tracing::{info, warn};

use super::{AppliedRecord, MoveApply, MoveOutcome, SourceTask, TotalsDelta};
use crate::apply;
use crate::events::EventKind;
use crate::index::Decision;
use crate::item::{Body, Content, Difference, FileChange, Header, ItemKind, Metadata, PriorItem};
use crate::store::Settles;
use crate::universal::RemoteItem;

/// One entry of the move with the prior state it was checked against.
struct Checked<'a> {
    item: &'a RemoteItem,
    prior: Option<PriorItem>,
}

impl SourceTask {
    /// Applies a peer's folder move as one rename, or says why not (nothing written then).
    pub(super) async fn apply_move(&mut self, mv: MoveApply) -> MoveOutcome {
        match self.try_move(&mv).await {
            Ok(()) => {
                info!(from = %mv.from, to = %mv.to, items = mv.items.len() / 2, peer = %mv.peer, "moved a folder for a peer");
                MoveOutcome::Moved
            }
            Err(why) => {
                info!(from = %mv.from, to = %mv.to, why = %why, "applying a peer's folder move item by item");
                MoveOutcome::ItemByItem(why)
            }
        }
    }

    async fn try_move(&mut self, mv: &MoveApply) -> Result<(), String> {
        if self.cfg.paused {
            return Err("the source is paused".into());
        }
        if let Some(error) = self.status.borrow().error.clone() {
            return Err(format!("the source is stopped: {error}"));
        }
        // The checks read the store: what this task wrote before must be on record.
        self.flush_applied().await.map_err(|e| e.to_string())?;
        let paths = mv.items.iter().map(|i| i.path.to_string()).collect();
        let priors = self
            .store
            .prior_items_at(self.cfg.id.clone(), paths)
            .await
            .map_err(|e| e.to_string())?;
        let ignores = self.status.borrow().ignores.clone();
        let mut checked = Vec::with_capacity(mv.items.len());
        for (item, prior) in mv.items.iter().zip(priors) {
            let Some(file) = item.file() else {
                return Err(format!("{} is not a file", item.path));
            };
            if ignores.is_ignored(item.path.as_str(), file.meta.kind == ItemKind::Directory) {
                return Err(format!("{} is ignored here", item.path));
            }
            let live = prior.as_ref().is_some_and(|p| !p.header.deleted);
            if prior.as_ref().is_some_and(|p| p.file().is_none()) || live != item.header.deleted {
                return Err(format!("{} changed here", item.path));
            }
            if item.decide(prior.as_ref()) != Decision::Apply {
                return Err(format!(
                    "{} has a version here the move does not follow",
                    item.path
                ));
            }
            checked.push(Checked { item, prior });
        }
        let recorded: Vec<PriorItem> = checked
            .iter()
            .filter(|c| c.item.header.deleted)
            .filter_map(|c| c.prior.clone())
            .collect();
        let (disk, root) = (self.cfg.disk.clone(), self.cfg.root.clone());
        let (from, to) = (mv.from.clone(), mv.to.clone());
        let movable = tokio::task::spawn_blocking(move || {
            apply::folder_movable(&*disk, &root, &from, &to, &recorded)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        if !movable {
            return Err(format!(
                "{} on disk is not as recorded, or {} is taken",
                mv.from, mv.to
            ));
        }
        // The old copies' metadata by path under the folder: the same files after the rename.
        let old: HashMap<String, Metadata> = checked
            .iter()
            .filter(|c| c.item.header.deleted)
            .filter_map(|c| {
                let rel = crate::moves::relative(c.item.path.as_str(), mv.from.as_str())?;
                Some((rel.to_owned(), c.prior.as_ref()?.file()?.meta.clone()))
            })
            .collect();
        let mut diffs: Vec<Difference> = checked.iter().map(|c| record_of(c, mv, &old)).collect();
        let batch = self
            .store
            .record_intents(self.cfg.id.clone(), diffs.clone())
            .await
            .map_err(|e| e.to_string())?;
        let (disk, root, format) = (self.cfg.disk.clone(), self.cfg.root.clone(), self.format);
        let (from, to) = (mv.from.clone(), mv.to.clone());
        let moved = tokio::task::spawn_blocking(move || {
            let moved = format.move_folder(&*disk, &root, &from, &to)?;
            // The folder's own metadata as the rename left it (if it can be read back).
            Ok::<_, apply::ApplyError>(moved.then(|| apply::stat(&root, &to).ok()))
        })
        .await;
        let folder = match moved {
            Ok(Ok(Some(meta))) => meta,
            failed => {
                // Nothing moved: the journal batch announced a write that never happened.
                let why = match failed {
                    Ok(Ok(_)) => "the format cannot move a folder".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                let cleared = self
                    .store
                    .commit(
                        self.cfg.id.clone(),
                        Vec::new(),
                        Settles::Batches(vec![batch]),
                    )
                    .await;
                if let Err(e) = cleared {
                    warn!(error = %e, "cannot clear the apply journal; the next start does");
                }
                return Err(why);
            }
        };
        if let (Some(folder), Some(Body::File(f))) = (
            folder,
            diffs
                .iter_mut()
                .find(|d| d.key == mv.to.as_str())
                .map(|d| &mut d.body),
        ) {
            f.meta = folder;
        }
        for (diff, c) in diffs.into_iter().zip(&checked) {
            let meta = diff.file().map(|f| f.meta.clone());
            let mut delta = TotalsDelta::default();
            let kind = if diff.header.deleted {
                if let Some(p) = c.prior.as_ref().and_then(PriorItem::file) {
                    delta.remove(&p.meta);
                }
                self.own_writes.note(&diff.key, None);
                EventKind::Deleted
            } else {
                if let Some(meta) = &meta {
                    delta.add(meta);
                    self.own_writes.note(&diff.key, Some(meta));
                }
                EventKind::Added
            };
            self.applied_records.push(AppliedRecord {
                diff,
                kind,
                delta,
                from: mv.peer.clone(),
            });
        }
        self.written_batches.push(batch);
        // Noted as a move, so the devices this one passes it on to get one operation too.
        // Failing here leaves the journal, which the next start reads against the disk.
        let items = u32::try_from(old.len()).map_err(|e| e.to_string())?;
        let moved = (mv.from.to_string(), mv.to.to_string(), items);
        self.flush_applied_noting(Some(moved))
            .await
            .map_err(|e| e.to_string())
    }
}

/// What one entry records once the folder is renamed: a deletion keeps the metadata it had
/// (no size); an addition has the metadata its old copy had, inode and all, since it is the
/// same file, and its content.
fn record_of(c: &Checked<'_>, mv: &MoveApply, old: &HashMap<String, Metadata>) -> Difference {
    let item = c.item;
    let file = item.file();
    let recorded = if item.header.deleted {
        c.prior
            .as_ref()
            .and_then(PriorItem::file)
            .map(|p| Metadata {
                size: 0,
                ..p.meta.clone()
            })
    } else {
        crate::moves::relative(item.path.as_str(), mv.to.as_str())
            .and_then(|rel| old.get(rel))
            .cloned()
    };
    // Every entry was checked to have one; the peer's is the fallback all the same.
    let meta = recorded
        .or_else(|| file.map(|f| f.meta.clone()))
        .unwrap_or(Metadata {
            kind: ItemKind::Directory,
            size: 0,
            mtime_ns: 0,
            inode: 0,
            mode: 0,
            symlink_target: None,
        });
    let content = match (file.and_then(|f| f.hash), meta.kind) {
        (Some(hash), ItemKind::File) if !item.header.deleted => Content::Replace {
            hash,
            chunks: file.map(|f| f.chunks.clone()).unwrap_or_default(),
        },
        _ => Content::Empty,
    };
    Difference {
        key: item.path.to_string(),
        header: Header {
            version: item.header.version.clone(),
            sequence: 0,
            deleted: item.header.deleted,
            origin: Some(mv.peer_device.clone()),
            modified_by: item
                .header
                .modified_by
                .clone()
                .or_else(|| Some(mv.peer.clone())),
        },
        body: Body::File(FileChange { meta, content }),
    }
}
