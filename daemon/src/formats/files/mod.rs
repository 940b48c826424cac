//! The `files` format: any files in a folder. Reading is the scanner's walk (stat, compare
//! with the prior state, hash what changed); writing puts a peer's verified item in place
//! through `apply` (conflict copy, versions folder, rename), a batch at a time so that the
//! fsyncs of a batch are paid together.
//!
//! Must not: decide which version wins, touch SQL, or follow a symlink.

use std::path::{Path, PathBuf};

use super::{Format, Kind, Layout, WriteResult};
use crate::apply::{self, ApplyError, Disk, Removed, Target};
use crate::item::{ItemKind, Metadata, PriorItem};
use crate::scanner::{self, ScanError, ScanRequest, ScanSummary, Sink};
use crate::universal::{ItemPath, RemoteItem};

/// Any files in a folder, synced as they are.
#[derive(Debug)]
pub struct Files;

impl Format for Files {
    fn name(&self) -> &'static str {
        "files"
    }

    fn kind(&self) -> Kind {
        Kind::Files
    }

    fn layout(&self) -> Layout {
        Layout::Folder
    }

    fn read(&self, req: ScanRequest, sink: &mut dyn Sink) -> Result<ScanSummary, ScanError> {
        scanner::scan(req, sink)
    }

    fn write(&self, disk: &dyn Disk, root: &Path, jobs: Vec<WriteJob>) -> Vec<WriteResult> {
        write_batch(disk, root, jobs)
    }

    fn move_folder(
        &self,
        disk: &dyn Disk,
        root: &Path,
        from: &ItemPath,
        to: &ItemPath,
    ) -> Result<bool, ApplyError> {
        apply::move_folder(disk, root, from, to).map(|()| true)
    }
}

/// One checked, journaled item to write into a `files` source (the disk half of applying it).
#[derive(Debug)]
pub struct WriteJob {
    pub item: RemoteItem,
    /// Verified content, with the item's mode and mtime and made durable (files with new
    /// content only).
    pub temp: Option<PathBuf>,
    /// Concurrent with the local version, and the peer's wins: the local one is kept as a copy.
    pub conflict: bool,
    /// The recorded content is already what the peer has (a metadata-only change).
    pub same_content: bool,
    /// What the item was checked against.
    pub prior: Option<PriorItem>,
    /// The local version a conflict replaces.
    pub loser: Option<Loser>,
}

/// How writing one item went, short of an error.
#[derive(Debug)]
pub enum Write {
    Done(Written),
    /// The target changed on this device after the item was checked: nothing was written.
    ChangedMeanwhile,
}

/// Who wrote a losing local version, and when: the name of its conflict copy.
#[derive(Debug, Clone)]
pub struct Loser {
    pub by: String,
    pub unix_secs: u64,
}

/// What writing an item left: its metadata on disk (`None` once deleted) and the conflict
/// copy made of the local version, if any.
#[derive(Debug)]
pub struct Written {
    pub meta: Option<Metadata>,
    pub conflict_copy: Option<String>,
    /// What is on disk now is not what was written (someone wrote right after): it is
    /// hashed again once the batch is recorded.
    pub disturbed: bool,
}

/// Writes a batch in two steps, so it pays for durability once: each item is written in order
/// (checks, conflict copy, versions folder, rename of its temp, which its builder made
/// durable); then every folder the batch changed is fsynced once. An item whose folder could
/// not be flushed fails with it.
fn write_batch(disk: &dyn Disk, root: &Path, jobs: Vec<WriteJob>) -> Vec<WriteResult> {
    let mut folders = apply::Folders::default();
    let mut real = apply::RealFolders::default();
    let mut results: Vec<(ItemPath, WriteResult)> = jobs
        .into_iter()
        .map(|job| {
            let item = job.item.path.clone();
            (item, job.run(disk, root, &mut real, &mut folders))
        })
        .collect();
    let failed = folders.flush(disk);
    if !failed.is_empty() {
        for (item, result) in results.iter_mut() {
            if !matches!(result, Ok(Write::Done(_))) {
                continue;
            }
            let folder = apply::Folders::of(root, item);
            if let Some((_, why)) = failed.iter().find(|(dir, _)| *dir == folder) {
                *result = Err(ApplyError::Io {
                    path: item.to_string(),
                    action: "flushing its folder",
                    source: std::io::Error::new(why.kind(), why.to_string()),
                });
            }
        }
    }
    results.into_iter().map(|(_, r)| r).collect()
}

impl WriteJob {
    /// Writes the item: conflict copy, versions folder, then the rename into place. Its
    /// folder is made durable by the caller, with the batch's.
    fn run(
        self,
        disk: &dyn Disk,
        root: &Path,
        real: &mut apply::RealFolders,
        folders: &mut apply::Folders,
    ) -> WriteResult {
        let item = &self.item;
        let Some(file) = item.file() else {
            return Err(ApplyError::NotAFile {
                key: item.path.to_string(),
            });
        };
        // Checked again right before writing: the batch was checked as a whole, and a user
        // may have written since. (A write in the instant between this and the rename still
        // goes to the old file, which the versions folder keeps.)
        if real.blocked_parent(root, &item.path).is_some() {
            return Err(ApplyError::BadParent {
                path: item.path.to_string(),
            });
        }
        // One look at the target serves every step below: most targets of a sync are new.
        let (unchanged, mut target) =
            apply::look_unchanged(disk, root, &item.path, self.prior.as_ref())?;
        if !unchanged {
            return Ok(Write::ChangedMeanwhile);
        }
        let mut conflict_copy = None;
        if self.conflict
            && !item.header.deleted
            && !self.same_content
            && let Some(loser) = &self.loser
        {
            conflict_copy =
                apply::keep_conflict_copy(root, &item.path, &loser.by, loser.unix_secs)?;
            if conflict_copy.is_some() {
                target = Target::Absent;
            }
        }
        let keeps = target == Target::File;
        let keep_err = |e: crate::versions::VersionsError| ApplyError::Io {
            path: item.path.to_string(),
            action: "keeping the old version",
            source: std::io::Error::other(e.to_string()),
        };
        if item.header.deleted {
            // A file deleted by a peer goes to the versions folder, not away.
            if keeps {
                crate::versions::keep(root, item.path.as_str(), true).map_err(keep_err)?;
            }
            let meta = match apply::remove(root, &item.path, folders)? {
                Removed::Yes => None,
                Removed::KeptNotEmpty => Some(apply::stat(root, &item.path)?),
            };
            return Ok(Write::Done(Written {
                meta,
                conflict_copy,
                disturbed: false,
            }));
        }
        real.ensure_parents(root, &item.path)?;
        if (file.meta.kind != ItemKind::Directory && self.temp.is_some()
            || file.meta.kind == ItemKind::Symlink)
            && target == Target::Folder
        {
            // A folder here still holding things the peer has not seen (its deletions of
            // what it did see came first in the batch) gives way, but whole: it moves aside.
            let (by, secs) = match &self.loser {
                Some(l) => (l.by.clone(), l.unix_secs),
                None => (String::new(), crate::events::unix_ms_now() / 1000),
            };
            let by = if by.is_empty() {
                "LOCAL".to_owned()
            } else {
                by
            };
            if let Some(moved) = apply::move_folder_aside(root, &item.path, &by, secs, folders)? {
                conflict_copy = Some(moved);
                target = Target::Absent;
            }
        }
        let meta = match file.meta.kind {
            ItemKind::File => match &self.temp {
                Some(temp) => {
                    // The version being replaced is kept first.
                    if keeps {
                        crate::versions::keep(root, item.path.as_str(), false).map_err(keep_err)?;
                    }
                    apply::place_file(disk, root, &item.path, temp, target, folders)?
                }
                None => apply::set_file_meta(root, &item.path, file.meta.mode, file.meta.mtime_ns)?,
            },
            ItemKind::Directory => {
                // A file a folder replaces is kept like any replaced file.
                if keeps {
                    crate::versions::keep(root, item.path.as_str(), true).map_err(keep_err)?;
                }
                apply::make_dir(root, &item.path, file.meta.mode, folders)?
            }
            ItemKind::Symlink => {
                if keeps {
                    crate::versions::keep(root, item.path.as_str(), false).map_err(keep_err)?;
                }
                apply::make_symlink(
                    root,
                    &item.path,
                    file.meta.symlink_target.as_deref().unwrap_or_default(),
                    folders,
                )?
            }
        };
        let disturbed = file.meta.kind == ItemKind::File
            && (meta.size != file.meta.size || meta.mtime_ns != file.meta.mtime_ns);
        Ok(Write::Done(Written {
            meta: Some(meta),
            conflict_copy,
            disturbed,
        }))
    }
}
