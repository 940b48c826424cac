//! Walks a `files` source and reports what differs from its prior state.
//!
//! Stat first: an item whose kind, size, mtime and inode match its prior state is not read
//! again. Anything else is chunked and hashed, and reported as a [`Found`] for the source task
//! to turn into differences. A per-item problem is just another result. Must not: write SQL,
//! talk to peers, or follow a symlink.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::chunker;
use crate::item::{Content, ItemKind, Metadata, PriorItem};
use crate::layout::is_internal;
pub use crate::layout::is_under;

/// A file modified this recently may change again within the same mtime tick, which a stat
/// cannot see; such files are hashed once more after this long (the "racy" check).
pub const RACY_WINDOW: Duration = Duration::from_millis(50);

/// How many times a file that changes while being hashed is read again before giving up
/// for this scan (the watcher brings it back when it settles).
const CHANGING_RETRIES: usize = 3;

/// Which part of the source a scan covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The whole source.
    Full,
    /// These item paths and everything under them.
    Under(Vec<String>),
}

/// What a scan found for one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// New or changed item. `prior` is its previous record, if any (possibly a tombstone).
    Changed {
        path: String,
        meta: Metadata,
        content: Content,
        prior: Option<PriorItem>,
    },
    /// A recorded item is gone.
    Deleted { prior: PriorItem },
    /// This item could not be read; its prior state stays as it was.
    Error { path: String, message: String },
}

/// Why a whole scan could not run. Nothing is reported as deleted when this happens.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(
        "source folder {0} is missing; nothing is sent as deleted. Mount or restore it, or remove the source"
    )]
    RootMissing(PathBuf),
    #[error("source path {0} is not a folder; point the source at a folder")]
    RootNotDir(PathBuf),
    #[error("cannot read source folder {path}: {source}; give the agent's user access to it")]
    RootUnreadable { path: PathBuf, source: io::Error },
    #[error(
        "source folder {root} looks empty but {recorded} items were recorded in it; nothing is sent as deleted. \
         If a disk is not mounted, mount it; if you emptied the folder on purpose, delete the items \
         while the agent runs (it records each deletion) or remove and re-add the source"
    )]
    LooksEmpty { root: PathBuf, recorded: usize },
    #[error("scan stopped")]
    Cancelled,
}

/// One scan's settings and inputs.
pub struct ScanRequest {
    pub root: PathBuf,
    pub scope: Scope,
    /// Prior state of every item in scope, by item path.
    pub prior: HashMap<String, PriorItem>,
    /// Items to hash even if their stat matches (racy ones from an earlier scan).
    pub force_rehash: HashSet<String>,
    /// This device's `.tandemignore` patterns: ignored items are neither reported nor deleted.
    pub ignores: crate::ignores::Ignores,
}

/// Totals of one scan, for status and the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanSummary {
    /// Items looked at (stat'ed).
    pub seen: u64,
    /// Bytes read and hashed.
    pub hashed_bytes: u64,
    /// Files modified so recently that they must be hashed again shortly.
    pub racy: Vec<String>,
}

/// Receives results as the scan goes; returning `false` cancels the scan.
pub trait Sink {
    /// One result.
    fn found(&mut self, found: Found) -> bool;
    /// Bytes hashed since the last call.
    fn hashed(&mut self, bytes: u64);
}

/// Runs one scan to the end, reporting into `sink`.
pub fn scan(req: ScanRequest, sink: &mut dyn Sink) -> Result<ScanSummary, ScanError> {
    check_root(&req.root)?;
    let mut walker = Walker {
        root: &req.root,
        prior: req.prior,
        force: &req.force_rehash,
        ignores: &req.ignores,
        unreadable: Vec::new(),
        summary: ScanSummary::default(),
        sink,
    };
    match &req.scope {
        Scope::Full => {
            walker.walk(&req.root)?;
            // A folder that is suddenly empty is far more often an unmounted disk or a
            // half-restored backup than a user deleting everything at once.
            let recorded = walker.prior.values().filter(|p| !p.deleted).count();
            if walker.summary.seen == 0 && recorded > 0 {
                return Err(ScanError::LooksEmpty {
                    root: req.root.clone(),
                    recorded,
                });
            }
        }
        Scope::Under(paths) => {
            for path in minimal_roots(paths) {
                walker.scan_under(&path)?;
            }
        }
    }
    walker.report_deletions()?;
    Ok(walker.summary)
}

fn check_root(root: &Path) -> Result<(), ScanError> {
    match fs::metadata(root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(ScanError::RootNotDir(root.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ScanError::RootMissing(root.to_path_buf()));
        }
        Err(source) => {
            return Err(ScanError::RootUnreadable {
                path: root.to_path_buf(),
                source,
            });
        }
    }
    fs::read_dir(root)
        .map(drop)
        .map_err(|source| ScanError::RootUnreadable {
            path: root.to_path_buf(),
            source,
        })
}

/// Drops paths that lie under another path of the list: scanning the parent covers them.
fn minimal_roots(paths: &[String]) -> Vec<String> {
    let mut sorted: Vec<&String> = paths.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut out: Vec<String> = Vec::new();
    for p in sorted {
        let covered = out.iter().any(|q| q.is_empty() || p == q || is_under(p, q));
        if !covered {
            out.push(p.clone());
        }
    }
    out
}

struct Walker<'a> {
    root: &'a Path,
    prior: HashMap<String, PriorItem>,
    force: &'a HashSet<String>,
    ignores: &'a crate::ignores::Ignores,
    /// Folders that could not be listed: their recorded items are not gone, just unseen.
    unreadable: Vec<String>,
    summary: ScanSummary,
    sink: &'a mut dyn Sink,
}

impl Walker<'_> {
    fn emit(&mut self, found: Found) -> Result<(), ScanError> {
        if self.sink.found(found) {
            Ok(())
        } else {
            Err(ScanError::Cancelled)
        }
    }

    fn error(&mut self, path: String, message: String) -> Result<(), ScanError> {
        self.emit(Found::Error { path, message })
    }

    /// Scans one item path named by the watcher, and its subtree if it is a folder.
    fn scan_under(&mut self, item_path: &str) -> Result<(), ScanError> {
        if item_path.is_empty() {
            let root = self.root.to_path_buf();
            return self.walk(&root);
        }
        if is_internal(item_path) {
            return Ok(());
        }
        // Never look through a symlinked or replaced parent: the parent's own event covers it.
        let mut parent = PathBuf::from(self.root);
        let components: Vec<&str> = item_path.split('/').collect();
        for c in &components[..components.len().saturating_sub(1)] {
            parent.push(c);
            match fs::symlink_metadata(&parent) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) | Err(_) => {
                    // The parent is gone or is no longer a folder: its recorded subtree stays
                    // in scope and is reported deleted unless seen elsewhere in this scan.
                    return Ok(());
                }
            }
        }
        let full = self.root.join(item_path);
        match fs::symlink_metadata(&full) {
            Ok(m) if self.ignores.is_ignored(item_path, m.file_type().is_dir()) => Ok(()),
            Ok(m) if m.file_type().is_dir() => self.walk(&full),
            Ok(m) => self.visit(item_path.to_owned(), &full, &m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => {
                self.unreadable.push(item_path.to_owned());
                self.error(
                    item_path.to_owned(),
                    format!("cannot read: {e}; {}", access_hint()),
                )
            }
        }
    }

    /// Walks `dir` (the root or a folder in it), visiting every entry.
    fn walk(&mut self, dir: &Path) -> Result<(), ScanError> {
        let min_depth = usize::from(dir == self.root);
        let mut it = walkdir::WalkDir::new(dir)
            .follow_links(false)
            .min_depth(min_depth)
            .into_iter();
        while let Some(entry) = it.next() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    let path = e
                        .path()
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| dir.to_path_buf());
                    let item = self.item_path(&path).unwrap_or_default();
                    if item.is_empty() {
                        return Err(ScanError::RootUnreadable {
                            path,
                            source: e
                                .into_io_error()
                                .unwrap_or_else(|| io::Error::other("loop")),
                        });
                    }
                    self.unreadable.push(item.clone());
                    let reason = e
                        .io_error()
                        .map(ToString::to_string)
                        .unwrap_or_else(|| e.to_string());
                    self.error(item, format!("cannot read: {reason}; {}", access_hint()))?;
                    continue;
                }
            };
            let Some(item) = self.item_path(entry.path()) else {
                let shown = entry.path().strip_prefix(self.root).unwrap_or(entry.path());
                self.error(
                    shown.to_string_lossy().into_owned(),
                    "name is not valid UTF-8 and cannot be synced; rename it".to_owned(),
                )?;
                if entry.file_type().is_dir() {
                    it.skip_current_dir();
                }
                continue;
            };
            if is_internal(&item) || self.ignores.is_ignored(&item, entry.file_type().is_dir()) {
                if entry.file_type().is_dir() {
                    it.skip_current_dir();
                }
                continue;
            }
            match entry.metadata() {
                Ok(m) => self.visit(item, entry.path(), &m)?,
                Err(e) => {
                    self.unreadable.push(item.clone());
                    self.error(item, format!("cannot read: {e}; {}", access_hint()))?;
                }
            }
        }
        Ok(())
    }

    fn item_path(&self, full: &Path) -> Option<String> {
        let rel = full.strip_prefix(self.root).ok()?;
        let s = rel.to_str()?;
        Some(s.to_owned())
    }

    /// Compares one item with its prior state and reports it if it changed.
    fn visit(&mut self, item: String, full: &Path, m: &fs::Metadata) -> Result<(), ScanError> {
        self.summary.seen += 1;
        let prior = self.prior.remove(&item);
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            ItemKind::Directory
        } else if ft.is_symlink() {
            ItemKind::Symlink
        } else if ft.is_file() {
            ItemKind::File
        } else {
            // Sockets, fifos and devices have no content to sync; say so once per scan.
            return self.keep_prior(
                item,
                prior,
                "is a socket, fifo or device, which cannot be synced; move it out of the source or ignore it",
            );
        };
        let symlink_target = if kind == ItemKind::Symlink {
            match fs::read_link(full) {
                Ok(t) => match t.to_str() {
                    Some(t) => Some(t.to_owned()),
                    None => {
                        return self.keep_prior(
                            item,
                            prior,
                            "symlink target is not valid UTF-8 and cannot be synced; change the link",
                        );
                    }
                },
                Err(e) => {
                    let msg = format!("cannot read link: {e}");
                    return self.keep_prior(item, prior, &msg);
                }
            }
        } else {
            None
        };
        let meta = Metadata {
            kind,
            size: if kind == ItemKind::File { m.len() } else { 0 },
            mtime_ns: mtime_ns(m),
            inode: m.ino(),
            mode: m.mode() & 0o7777,
            symlink_target,
        };
        let live_prior = prior.as_ref().filter(|p| !p.deleted);
        let forced = self.force.contains(&item);
        if let Some(p) = live_prior {
            let unchanged_content = match kind {
                ItemKind::File => p.meta.same_stat(&meta) && !forced,
                // A folder's mtime moves with every child, so it is not compared; a new
                // inode means the folder was replaced, which peers should learn.
                ItemKind::Directory => p.meta.kind == kind && p.meta.inode == meta.inode,
                ItemKind::Symlink => {
                    p.meta.kind == kind && p.meta.symlink_target == meta.symlink_target
                }
            };
            if unchanged_content {
                if p.meta.mode != meta.mode {
                    return self.emit(Found::Changed {
                        path: item,
                        meta,
                        content: Content::Keep,
                        prior,
                    });
                }
                return Ok(());
            }
        }
        let content = if kind == ItemKind::File {
            match self.hash_file(&item, full, m)? {
                Some((meta, hashed)) => {
                    // A forced re-hash that found the same bytes and stat is no change.
                    if let Some(p) = live_prior
                        && p.hash == Some(hashed.hash)
                        && p.meta == meta
                    {
                        return Ok(());
                    }
                    return self.emit(Found::Changed {
                        path: item,
                        meta,
                        content: Content::Replace {
                            hash: hashed.hash,
                            chunks: hashed.chunks,
                        },
                        prior,
                    });
                }
                None => return Ok(()),
            }
        } else {
            Content::Empty
        };
        self.emit(Found::Changed {
            path: item,
            meta,
            content,
            prior,
        })
    }

    /// Reports an item that cannot be read, keeping whatever was recorded for it.
    fn keep_prior(
        &mut self,
        item: String,
        prior: Option<PriorItem>,
        why: &str,
    ) -> Result<(), ScanError> {
        // Put the prior record back so the final sweep does not report it deleted.
        if let Some(p) = prior {
            self.prior.insert(item.clone(), p);
            self.unreadable.push(item.clone());
        }
        self.error(item, why.to_owned())
    }

    /// Hashes a file, reading it again if it changes underneath; `None` when it could not be
    /// read consistently (the error is already reported and the prior state is kept).
    fn hash_file(
        &mut self,
        item: &str,
        full: &Path,
        first: &fs::Metadata,
    ) -> Result<Option<(Metadata, chunker::Hashed)>, ScanError> {
        let mut before = first.clone();
        for _ in 0..CHANGING_RETRIES {
            let stat_time = SystemTime::now();
            let file = match fs::File::open(full) {
                Ok(f) => f,
                Err(e) => return self.unreadable_file(item, &e).map(|()| None),
            };
            let opened = match file.metadata() {
                Ok(m) => m,
                Err(e) => return self.unreadable_file(item, &e).map(|()| None),
            };
            // The name may have been swapped for something else (even a symlink) since the
            // stat: only hash what the stat described.
            if !same_file_state(&before, &opened) {
                before = opened;
                continue;
            }
            let mut hashed_now = 0u64;
            let hashed = {
                let sink = &mut *self.sink;
                chunker::hash_reader(&file, &mut |n| {
                    hashed_now += n;
                    sink.hashed(n);
                })
            };
            self.summary.hashed_bytes += hashed_now;
            let hashed = match hashed {
                Ok(h) => h,
                Err(e) => return self.unreadable_file(item, &e).map(|()| None),
            };
            let after = match fs::symlink_metadata(full) {
                Ok(m) => m,
                // Deleted while being read: the next event for it reports the deletion.
                Err(_) => return Ok(None),
            };
            if !same_file_state(&before, &after) || hashed.size != after.len() {
                before = after;
                continue;
            }
            let mtime = mtime_ns(&after);
            if is_racy(mtime, stat_time) {
                self.summary.racy.push(item.to_owned());
            }
            let meta = Metadata {
                kind: ItemKind::File,
                size: after.len(),
                mtime_ns: mtime,
                inode: after.ino(),
                mode: after.mode() & 0o7777,
                symlink_target: None,
            };
            return Ok(Some((meta, hashed)));
        }
        self.error(
            item.to_owned(),
            "kept changing while being read; it is scanned again once it settles".to_owned(),
        )?;
        self.keep_unseen(item);
        Ok(None)
    }

    fn unreadable_file(&mut self, item: &str, e: &io::Error) -> Result<(), ScanError> {
        self.keep_unseen(item);
        self.error(
            item.to_owned(),
            format!("cannot read: {e}; {}", access_hint()),
        )
    }

    /// Marks an item as present-but-unread, so its prior state is neither changed nor deleted.
    fn keep_unseen(&mut self, item: &str) {
        self.unreadable.push(item.to_owned());
    }

    /// Everything recorded in scope that the walk did not see is gone, except what sits in
    /// or under something that could not be read.
    fn report_deletions(&mut self) -> Result<(), ScanError> {
        let mut gone: Vec<PriorItem> = std::mem::take(&mut self.prior)
            .into_values()
            .filter(|p| !p.deleted)
            // Ignoring an item leaves it alone everywhere; it does not delete it.
            .filter(|p| {
                !self
                    .ignores
                    .is_ignored(&p.path, p.meta.kind == ItemKind::Directory)
            })
            .filter(|p| {
                !self
                    .unreadable
                    .iter()
                    .any(|u| *u == p.path || is_under(&p.path, u))
            })
            .collect();
        // Children before parents, so a peer can remove folders once they are empty.
        gone.sort_by(|a, b| b.path.cmp(&a.path));
        for prior in gone {
            self.emit(Found::Deleted { prior })?;
        }
        Ok(())
    }
}

fn access_hint() -> &'static str {
    "give the agent's user read access (chmod/chown); the rest of the source still syncs"
}

/// Modification time in nanoseconds since the epoch (negative before 1970).
pub fn mtime_ns(m: &fs::Metadata) -> i64 {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

fn same_file_state(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.ino() == b.ino()
        && a.dev() == b.dev()
        && a.len() == b.len()
        && a.mtime() == b.mtime()
        && a.mtime_nsec() == b.mtime_nsec()
        && a.ctime() == b.ctime()
        && a.ctime_nsec() == b.ctime_nsec()
        && b.file_type().is_file()
}

/// True when a write right after the stat could leave the same mtime. An mtime further in
/// the future than the window (clock skew, an unpacked archive) is not racy: the next write
/// stamps the real time, which differs; treating it as racy would rehash it forever.
fn is_racy(mtime_ns: i64, stat_time: SystemTime) -> bool {
    let Ok(now) = stat_time.duration_since(SystemTime::UNIX_EPOCH) else {
        return true;
    };
    let now_ns = i64::try_from(now.as_nanos()).unwrap_or(i64::MAX);
    let window = i64::try_from(RACY_WINDOW.as_nanos()).unwrap_or(i64::MAX);
    mtime_ns > now_ns.saturating_sub(window) && mtime_ns <= now_ns.saturating_add(window)
}

#[cfg(test)]
mod tests;
