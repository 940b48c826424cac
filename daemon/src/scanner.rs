//! Walks a `files` source and reports what differs from its prior state.
//!
//! The walk visits items in the store's order, which is bytewise by item path: in each folder,
//! an entry NAME at key NAME and, if it is a folder, its subtree at key NAME + "/" (so "a" <
//! "a.txt" < "a/b" < "a0"). The prior state streams in beside it a page at a time through a
//! [`PriorCursor`], and the two are merged like sorted lists: a recorded item the walk passes
//! without seeing is gone. Memory grows with the folders along the current path and with what
//! changed, never with the size of the source.
//!
//! Stat first: an item whose kind, size, mtime and inode match its prior state is not read
//! again. Anything else is chunked and hashed, and reported as a [`Found`] for the source task
//! to turn into differences. A per-item problem is just another result. Must not: write SQL,
//! talk to peers, or follow a symlink.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::ops::Bound;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::chunker;
use crate::item::{Content, ItemKind, Metadata, PathRange, PriorItem};
use crate::layout::is_internal;
pub use crate::layout::is_under;

/// A file modified this recently may change again within the same mtime tick, which a stat
/// cannot see; such files are hashed once more after this long (the "racy" check).
pub const RACY_WINDOW: Duration = Duration::from_millis(50);

/// How many times a file that changes while being hashed is read again before giving up
/// for this scan (the watcher brings it back when it settles).
const CHANGING_RETRIES: usize = 3;

/// Prior items asked of the cursor at a time: big enough that a page costs the store one
/// short range lookup per few thousand items, small enough to hold a page or two in memory.
pub const PRIOR_PAGE: usize = 2048;

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
    #[error("cannot read the prior state: {0}; nothing is sent as deleted")]
    Prior(#[from] PriorError),
    #[error("scan stopped")]
    Cancelled,
    #[error("{0} holds records, which the file scanner does not read")]
    NotFiles(PathBuf),
}

/// Why the prior state could not be read (the store's own words, or a broken order).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct PriorError {
    pub reason: String,
}

/// The prior state a scan compares with, read a page at a time in the store's order: the
/// scanner's narrow view of the store (after Syncthing's `CurrentFiler`, made a cursor so a
/// scan never holds all of a source).
pub trait PriorCursor: Send {
    /// Up to `limit` recorded items in `range` whose paths sort after `after` (from the start
    /// of the range when `None`), in bytewise path order; fewer than `limit` means the range
    /// holds no more.
    ///
    /// # Errors
    /// When the prior state cannot be read; the scan then stops and reports nothing deleted.
    fn next_batch(
        &mut self,
        range: &PathRange,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PriorItem>, PriorError>;

    /// The ranges about to be read, in order: a cursor may fetch their first pages together
    /// (a burst of events names many small scopes, each otherwise a trip of its own).
    fn will_read(&mut self, _ranges: &[PathRange]) {}
}

/// Prior state held in memory, by item path: for tests, benchmarks and tools that have no
/// store.
#[derive(Debug, Clone, Default)]
pub struct PriorMap(pub BTreeMap<String, PriorItem>);

impl FromIterator<PriorItem> for PriorMap {
    fn from_iter<I: IntoIterator<Item = PriorItem>>(items: I) -> Self {
        PriorMap(items.into_iter().map(|p| (p.key.clone(), p)).collect())
    }
}

impl PriorCursor for PriorMap {
    fn next_batch(
        &mut self,
        range: &PathRange,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PriorItem>, PriorError> {
        let first_under = match range {
            PathRange::Under(p) => format!("{p}/"),
            PathRange::All | PathRange::Item(_) => String::new(),
        };
        let low = match range {
            PathRange::All => after.map_or(Bound::Unbounded, Bound::Excluded),
            PathRange::Item(p) if after.is_some_and(|a| a >= p.as_str()) => return Ok(Vec::new()),
            PathRange::Item(p) => Bound::Included(p.as_str()),
            PathRange::Under(_) => match after {
                Some(a) if a >= first_under.as_str() => Bound::Excluded(a),
                _ => Bound::Included(first_under.as_str()),
            },
        };
        Ok(self
            .0
            .range::<str, _>((low, Bound::Unbounded))
            .map(|(_, p)| p)
            // A range is contiguous in path order: the first path outside it ends it.
            .take_while(|p| range.contains(&p.key))
            .take(limit)
            .cloned()
            .collect())
    }
}

/// One scan's settings and inputs.
pub struct ScanRequest {
    pub root: PathBuf,
    pub scope: Scope,
    /// The source's prior state, read a page at a time as the walk goes.
    pub prior: Box<dyn PriorCursor>,
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
        prior: PriorStream::new(req.prior),
        force: &req.force_rehash,
        ignores: &req.ignores,
        unreadable: Vec::new(),
        gone: Vec::new(),
        recorded: 0,
        summary: ScanSummary::default(),
        sink,
    };
    match &req.scope {
        Scope::Full => {
            walker.prior.start(vec![PathRange::All]);
            walker.walk_folder("")?;
            walker.pass_the_rest()?;
            // A folder that is suddenly empty is far more often an unmounted disk or a
            // half-restored backup than a user deleting everything at once.
            if walker.summary.seen == 0 && walker.recorded > 0 {
                return Err(ScanError::LooksEmpty {
                    root: req.root.clone(),
                    recorded: walker.recorded,
                });
            }
        }
        Scope::Under(paths) => {
            // Each minimal root is its own merge: its ranges are disjoint from the others'.
            for path in minimal_roots(paths) {
                walker.prior.start(PathRange::at_and_under(&path));
                walker.scan_under(&path)?;
                walker.pass_the_rest()?;
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

/// The prior state of the ranges being walked, a page at a time, in path order.
struct PriorStream {
    cursor: Box<dyn PriorCursor>,
    /// Ranges still to read; the front one is being read.
    ranges: VecDeque<PathRange>,
    /// Last path read from the front range: the next page starts after it.
    after: Option<String>,
    /// The front range has nothing beyond `page`.
    front_done: bool,
    page: VecDeque<PriorItem>,
}

impl PriorStream {
    fn new(cursor: Box<dyn PriorCursor>) -> Self {
        PriorStream {
            cursor,
            ranges: VecDeque::new(),
            after: None,
            front_done: false,
            page: VecDeque::new(),
        }
    }

    /// Streams these ranges next (the previous ones must have been read to their end).
    fn start(&mut self, ranges: Vec<PathRange>) {
        self.cursor.will_read(&ranges);
        self.ranges = ranges.into();
        self.after = None;
        self.front_done = false;
        self.page.clear();
    }

    /// The next prior item in path order, reading a page when needed.
    fn peek(&mut self) -> Result<Option<&PriorItem>, PriorError> {
        while self.page.is_empty() {
            let Some(range) = self.ranges.front() else {
                return Ok(None);
            };
            if self.front_done {
                self.ranges.pop_front();
                self.after = None;
                self.front_done = false;
                continue;
            }
            let batch = self
                .cursor
                .next_batch(range, self.after.as_deref(), PRIOR_PAGE)?;
            self.front_done = batch.len() < PRIOR_PAGE;
            // The merge takes every item it passes for gone: an item out of order or out of
            // range would turn into a false deletion, so a cursor that breaks the order stops
            // the scan instead.
            let mut last = self.after.as_deref();
            for item in &batch {
                let in_order = last.is_none_or(|a| item.key.as_str() > a);
                if !in_order || !range.contains(&item.key) {
                    return Err(PriorError {
                        reason: format!(
                            "item {:?} came out of path order (after {last:?}, in {range:?})",
                            item.key
                        ),
                    });
                }
                last = Some(item.key.as_str());
            }
            if let Some(item) = batch.last() {
                self.after = Some(item.key.clone());
            }
            self.page.extend(batch);
        }
        Ok(self.page.front())
    }

    fn pop(&mut self) -> Option<PriorItem> {
        self.page.pop_front()
    }
}

/// One step of walking a folder: an entry, or the subtree of an entry that is a folder.
struct Step {
    /// The entry's name, plus '/' for the step into its subtree: the step's place in the
    /// store's order among the folder's other steps.
    key: Vec<u8>,
    /// The step into the subtree (planned when the listing said "folder").
    into: bool,
    /// The listing said the entry is a folder (what ignore patterns are matched as).
    listed_dir: bool,
    /// Set when the entry's visit found a folder to walk into.
    go: bool,
}

impl Step {
    fn name(&self) -> &OsStr {
        let len = self.key.len() - usize::from(self.into);
        OsStr::from_bytes(&self.key[..len])
    }
}

/// A folder being walked: its steps in the store's order and how far the walk got.
struct Folder {
    /// The folder's item path plus '/' ("" for the root): what its entries' paths start with.
    prefix: String,
    /// The folder on disk.
    full: PathBuf,
    steps: Vec<Step>,
    next: usize,
}

struct Walker<'a> {
    root: &'a Path,
    prior: PriorStream,
    force: &'a HashSet<String>,
    ignores: &'a crate::ignores::Ignores,
    /// Items and folders that could not be read: their recorded items are not gone, just
    /// unseen.
    unreadable: Vec<String>,
    /// Recorded items the walk passed without seeing, reported deleted at the end.
    gone: Vec<PriorItem>,
    /// Live recorded items the walk has passed, seen or not (the "looks empty" guard).
    recorded: usize,
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

    /// The prior state of `item`, if recorded. Everything recorded before it in path order
    /// was passed without being seen: it is gone.
    fn take_prior(&mut self, item: &str) -> Result<Option<PriorItem>, ScanError> {
        loop {
            let order = match self.prior.peek()? {
                Some(p) => p.key.as_str().cmp(item),
                None => return Ok(None),
            };
            match order {
                std::cmp::Ordering::Less => {
                    if let Some(p) = self.prior.pop() {
                        self.passed_unseen(p);
                    }
                }
                std::cmp::Ordering::Equal => {
                    let p = self.prior.pop();
                    self.recorded += p.as_ref().map_or(0, |p| usize::from(!p.header.deleted));
                    return Ok(p);
                }
                std::cmp::Ordering::Greater => return Ok(None),
            }
        }
    }

    /// What is left of the streamed ranges was not seen.
    fn pass_the_rest(&mut self) -> Result<(), ScanError> {
        while self.prior.peek()?.is_some() {
            if let Some(p) = self.prior.pop() {
                self.passed_unseen(p);
            }
        }
        Ok(())
    }

    /// A recorded item the walk did not see: gone, unless it was already a tombstone, is
    /// ignored, or sits in or under something that could not be read.
    fn passed_unseen(&mut self, p: PriorItem) {
        if p.header.deleted {
            return;
        }
        self.recorded += 1;
        // A record is no file the walk could have seen: not seeing it deletes nothing.
        let Some(file) = p.file() else {
            return;
        };
        // Ignoring an item leaves it alone everywhere; it does not delete it.
        if self
            .ignores
            .is_ignored(&p.key, file.meta.kind == ItemKind::Directory)
        {
            return;
        }
        if self
            .unreadable
            .iter()
            .any(|u| *u == p.key || is_under(&p.key, u))
        {
            return;
        }
        self.gone.push(p);
    }

    /// Scans one item path named by the watcher, and its subtree if it is a folder.
    fn scan_under(&mut self, item_path: &str) -> Result<(), ScanError> {
        if item_path.is_empty() {
            return self.walk_folder("");
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
                    // in scope and is reported deleted.
                    return Ok(());
                }
            }
        }
        let full = self.root.join(item_path);
        match fs::symlink_metadata(&full) {
            Ok(m) if self.ignores.is_ignored(item_path, m.file_type().is_dir()) => Ok(()),
            Ok(m) if m.file_type().is_dir() => {
                self.visit(item_path.to_owned(), &full, &m)?;
                self.walk_folder(item_path)
            }
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

    /// Walks everything under the folder at item path `top` ("" for the root) in the store's
    /// order, visiting every entry. A stack of folders rather than recursion: a deep tree must
    /// not run the thread out of stack.
    fn walk_folder(&mut self, top: &str) -> Result<(), ScanError> {
        let mut stack: Vec<Folder> = Vec::new();
        let full = self.root.join(top);
        if let Some(folder) = self.list(top, full)? {
            stack.push(folder);
        }
        while let Some(folder) = stack.last_mut() {
            let Some(step) = folder.steps.get_mut(folder.next) else {
                stack.pop();
                continue;
            };
            folder.next += 1;
            let into = step.into;
            let listed_dir = step.listed_dir;
            let go = step.go;
            // A step is taken once: its key is not needed after this.
            let step = Step {
                key: std::mem::take(&mut step.key),
                into,
                listed_dir,
                go,
            };
            let name = step.name();
            if into {
                if !go {
                    continue;
                }
                // Its visit proved the name UTF-8.
                let Some(name) = name.to_str() else { continue };
                let item = format!("{}{name}", folder.prefix);
                let full = folder.full.join(name);
                if let Some(sub) = self.list(&item, full)? {
                    stack.push(sub);
                }
                continue;
            }
            let Some(name_str) = name.to_str() else {
                self.error(
                    format!("{}{}", folder.prefix, name.to_string_lossy()),
                    "name is not valid UTF-8 and cannot be synced; rename it".to_owned(),
                )?;
                continue;
            };
            let mut item = String::with_capacity(folder.prefix.len() + name_str.len());
            item.push_str(&folder.prefix);
            item.push_str(name_str);
            if is_internal(&item) || self.ignores.is_ignored(&item, listed_dir) {
                continue;
            }
            let full = folder.full.join(name);
            match fs::symlink_metadata(&full) {
                Ok(m) => {
                    let is_dir = m.file_type().is_dir();
                    if is_dir && !listed_dir {
                        // It became a folder after the listing, so there is no step into it
                        // in this walk: its recorded subtree is unseen, not gone. The
                        // watcher's event for it brings a scan of it.
                        self.unreadable.push(item.clone());
                    }
                    self.visit(item, &full, &m)?;
                    if is_dir && listed_dir {
                        // The step into it comes later in this folder, after the entries
                        // whose names sort between NAME and NAME + "/".
                        let mut key = step.key;
                        key.push(b'/');
                        let rest = &mut folder.steps[folder.next..];
                        if let Ok(i) = rest.binary_search_by(|s| s.key.as_slice().cmp(&key)) {
                            rest[i].go = true;
                        }
                    }
                }
                Err(e) => {
                    self.unreadable.push(item.clone());
                    self.error(item, format!("cannot read: {e}; {}", access_hint()))?;
                }
            }
        }
        Ok(())
    }

    /// Lists the folder at item path `item` ("" for the root) and orders its steps; `None`
    /// when it cannot be listed (reported, and its recorded subtree kept).
    fn list(&mut self, item: &str, full: PathBuf) -> Result<Option<Folder>, ScanError> {
        let entries = match fs::read_dir(&full) {
            Ok(entries) => entries,
            Err(e) => return self.cannot_list(item, e).map(|()| None),
        };
        let mut steps = Vec::new();
        let mut failed = None;
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            // The listing's own type (no stat); if even that fails, the entry's visit stats
            // it and reports what it finds.
            let listed_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let key = entry.file_name().into_vec();
            if listed_dir {
                let mut into = key.clone();
                into.push(b'/');
                steps.push(Step {
                    key: into,
                    into: true,
                    listed_dir,
                    go: false,
                });
            }
            steps.push(Step {
                key,
                into: false,
                listed_dir,
                go: false,
            });
        }
        // Keys are unique: names are, and only a step into a subtree ends in '/'.
        steps.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        if let Some(e) = failed {
            // Part of the listing is missing: what it held is unseen, not gone. The entries
            // read so far are still walked.
            self.cannot_list(item, e)?;
        }
        let prefix = if item.is_empty() {
            String::new()
        } else {
            format!("{item}/")
        };
        Ok(Some(Folder {
            prefix,
            full,
            steps,
            next: 0,
        }))
    }

    /// A folder that cannot be listed: the root stops the scan; any other is an item error
    /// and its recorded items are kept.
    fn cannot_list(&mut self, item: &str, e: io::Error) -> Result<(), ScanError> {
        if item.is_empty() {
            return Err(ScanError::RootUnreadable {
                path: self.root.to_path_buf(),
                source: e,
            });
        }
        self.unreadable.push(item.to_owned());
        self.error(
            item.to_owned(),
            format!("cannot read: {e}; {}", access_hint()),
        )
    }

    /// Compares one item with its prior state and reports it if it changed.
    fn visit(&mut self, item: String, full: &Path, m: &fs::Metadata) -> Result<(), ScanError> {
        self.summary.seen += 1;
        let prior = self.take_prior(&item)?;
        if prior.as_ref().is_some_and(|p| p.file().is_none()) {
            return self.keep_prior(
                item,
                prior,
                "is recorded as a record, which a files source cannot hold; nothing is synced for it",
            );
        }
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
        let live_prior = prior
            .as_ref()
            .filter(|p| !p.header.deleted)
            .and_then(PriorItem::file);
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
        // The record was taken from the stream, so it is not reported deleted; what was
        // recorded under it (it may have been a folder) is unseen too.
        if prior.is_some() {
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
                chunker::hash_reader_sized(&file, opened.len(), &mut |n| {
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

    /// Reports what the walk passed without seeing, children before parents, so a peer can
    /// remove folders once they are empty.
    fn report_deletions(&mut self) -> Result<(), ScanError> {
        let mut gone = std::mem::take(&mut self.gone);
        gone.sort_by(|a, b| b.key.cmp(&a.key));
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
