//! Writes a peer's difference into a source folder without ever losing local data: content is
//! built in a temp file (in the source's unwatched temp folder, or beside the target when that
//! is on another file system) and verified, the target must still be what the last
//! scan saw, and only then is it replaced by rename. Durability is paid once per file and once
//! per folder: a temp file is fsynced where it is built (several at once, `in_parallel`),
//! before the batch that renames it starts, and every folder the batch changed is fsynced once
//! after its last rename.
//!
//! Must not: decide which version wins (that is `index`), or follow a symlink anywhere.

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub mod disk;
mod folder_move;

pub use disk::{Disk, FaultyDisk, Injected, OsDisk, Step};
pub use folder_move::{folder_movable, move_folder};

use crate::chunker::{Hash128, hash_reader_sized};
use crate::item::{ItemKind, Metadata, PriorItem};
use crate::layout::{TEMP_PREFIX, temp_dir};
use crate::scanner::mtime_ns;
use crate::universal::ItemPath;

/// Why an item could not be applied; the target is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "{path}: {action} failed: {source}; check free space and permissions (the other items keep syncing)"
    )]
    Io {
        path: String,
        action: &'static str,
        source: io::Error,
    },
    #[error(
        "{path}: a parent folder on this device is not a folder (or is a symlink); move it aside to receive this item"
    )]
    BadParent { path: String },
    #[error("{path}: built content does not match its hash; it is fetched again")]
    HashMismatch { path: String },
    #[error(
        "{path}: {action} failed: no space left on the device holding the source; free some \
         space (the item is retried automatically and the other items keep syncing)"
    )]
    NoSpace { path: String, action: &'static str },
    #[error(
        "{key}: a record where a files source keeps only files; nothing was written (the other items keep syncing)"
    )]
    NotAFile { key: String },
}

fn io_err<'a>(
    path: &'a ItemPath,
    action: &'static str,
) -> impl FnOnce(io::Error) -> ApplyError + 'a {
    move |source| {
        if source.kind() == io::ErrorKind::StorageFull {
            ApplyError::NoSpace {
                path: path.to_string(),
                action,
            }
        } else {
            ApplyError::Io {
                path: path.to_string(),
                action,
                source,
            }
        }
    }
}

/// Creates the temp file an item's content is built in: in the source's temp folder
/// (`.tandem/tmp`, which the watcher leaves out, so building it raises no file events) when
/// that is on the same file system as the target's folder, else in the nearest existing folder
/// above the target (folders are only made by applying their own items; one made early would
/// look like a local change). It is sized up front (`presize`) when its content will come in
/// pieces. The caller removes it if it gives up.
pub fn create_temp(
    disk: &dyn Disk,
    root: &Path,
    item: &ItemPath,
    presize: Option<u64>,
    folders: &mut RealFolders,
) -> Result<(PathBuf, fs::File), ApplyError> {
    let temp = folders.temp_home(root, item).join(temp_name());
    let file = disk
        .create(&temp, &root.join(item.as_str()))
        .map_err(io_err(item, "creating a temp file"))?;
    if let Some(size) = presize
        && let Err(e) = file.set_len(size)
    {
        remove_temp(&temp);
        return Err(io_err(item, "sizing the temp file")(e));
    }
    Ok((temp, file))
}

/// Writes one verified chunk into the temp file of `item`, whose place in the source is
/// `target`.
pub fn write_temp(
    disk: &dyn Disk,
    file: &fs::File,
    target: &Path,
    item: &ItemPath,
    data: &[u8],
    offset: u64,
) -> Result<(), ApplyError> {
    disk.write_at(file, target, data, offset)
        .map_err(io_err(item, "writing the temp file"))
}

/// Removes a temp file the build gave up on; one already gone is fine.
pub fn remove_temp(temp: &Path) {
    // Nothing to report: a leftover is removed at the next start (`remove_stale_temps`).
    let _ = fs::remove_file(temp);
}

/// A fresh, unguessable temp file name.
fn temp_name() -> String {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    format!("{TEMP_PREFIX}{:016x}", h.finish())
}

/// A fresh temp file path in the same folder as the target.
pub fn temp_path(root: &Path, item: &ItemPath) -> PathBuf {
    temp_beside(&root.join(item.as_str()))
}

/// A fresh temp file path in the folder of `target` (an absolute path).
pub fn temp_beside(target: &Path) -> PathBuf {
    target.parent().unwrap_or(target).join(temp_name())
}

/// Makes the source's temp folder (owner-only) if it is missing. What a crash left in it goes
/// with the other stale temps (`remove_stale_temps`).
pub fn ensure_temp_dir(root: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(temp_dir(root)) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Folders found to be real folders (not symlinks or files) during one batch: items of a batch
/// mostly share their folders, and each would otherwise look at every folder above it again.
/// Only "real" is remembered, for the length of one trip to the blocking pool.
/// The file system each real folder is on is kept too, for where temp files can go.
#[derive(Debug, Default)]
pub struct RealFolders {
    known: std::collections::HashMap<PathBuf, u64>,
    /// The source's temp folder and its file system, looked at once per trip; `None` inside
    /// when it is missing or not a real folder.
    temp_dir: Option<Option<(PathBuf, u64)>>,
    root_dev: Option<Option<u64>>,
    /// Folders found missing, remembered only by [`RealFolders::for_looking`].
    missing: Option<std::collections::HashSet<PathBuf>>,
}

/// What is at a folder's place.
enum FolderLook {
    /// A real folder, on this file system (`st_dev`).
    Real(u64),
    NotAFolder,
    Missing(io::Error),
}

impl RealFolders {
    /// For a trip that makes no folders and replaces nothing (looking at what a batch will
    /// need, building temp files), whose findings are checked again when the batch writes:
    /// missing folders are remembered too, since every item of a folder the batch has yet to
    /// make would otherwise look for it again. Never for writing: there a folder missing a
    /// moment ago may be there now, made by the batch or by someone else.
    pub fn for_looking() -> RealFolders {
        RealFolders {
            missing: Some(std::collections::HashSet::new()),
            ..RealFolders::default()
        }
    }

    fn look(&mut self, dir: &Path) -> FolderLook {
        if let Some(dev) = self.known.get(dir) {
            return FolderLook::Real(*dev);
        }
        if self.missing.as_ref().is_some_and(|m| m.contains(dir)) {
            return FolderLook::Missing(io::ErrorKind::NotFound.into());
        }
        match fs::symlink_metadata(dir) {
            Ok(m) if m.file_type().is_dir() => {
                self.known.insert(dir.to_path_buf(), m.dev());
                FolderLook::Real(m.dev())
            }
            Ok(_) => FolderLook::NotAFolder,
            Err(e) => {
                if let Some(missing) = self.missing.as_mut()
                    && e.kind() == io::ErrorKind::NotFound
                {
                    missing.insert(dir.to_path_buf());
                }
                FolderLook::Missing(e)
            }
        }
    }

    /// Where an item's temp file goes: the source's temp folder when it is on the file system
    /// the target's nearest existing folder is on (so the final rename cannot fail with
    /// EXDEV), else that nearest folder itself.
    fn temp_home(&mut self, root: &Path, item: &ItemPath) -> PathBuf {
        let parts: Vec<&str> = item.as_str().split('/').collect();
        let mut nearest = root.to_path_buf();
        // The root may itself be a symlink to the folder the user chose.
        let mut dev = *self
            .root_dev
            .get_or_insert_with(|| fs::metadata(root).ok().map(|m| m.dev()));
        let mut dir = root.to_path_buf();
        for part in &parts[..parts.len().saturating_sub(1)] {
            dir.push(part);
            match self.look(&dir) {
                FolderLook::Real(d) => {
                    nearest.clone_from(&dir);
                    dev = Some(d);
                }
                _ => break,
            }
        }
        let temp_dir = self
            .temp_dir
            .get_or_insert_with(|| {
                let path = temp_dir(root);
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.file_type().is_dir() => Some((path, m.dev())),
                    _ => None,
                }
            })
            .as_ref();
        match (temp_dir, dev) {
            (Some((path, temp_dev)), Some(dev)) if *temp_dev == dev => path.clone(),
            _ => nearest,
        }
    }

    /// The first folder above the item that exists but is not a real folder (a symlink, or
    /// a file), as an item path. What lies behind it is not part of the source: the scanner
    /// never looks there, so nothing may be read, checked, replaced or deleted there for a
    /// peer. `None` when every existing folder above the item is real (missing ones are
    /// fine: they would be made as real folders).
    pub fn blocked_parent(&mut self, root: &Path, item: &ItemPath) -> Option<String> {
        let path = item.as_str();
        let mut dir = root.to_path_buf();
        for (at, part) in path
            .match_indices('/')
            .map(|(at, _)| at)
            .zip(path.split('/'))
        {
            dir.push(part);
            match self.look(&dir) {
                FolderLook::Real(_) => {}
                FolderLook::NotAFolder => return Some(path[..at].to_owned()),
                // Nothing below a missing (or unreadable) folder exists to be touched;
                // writing there makes real folders first (or fails).
                FolderLook::Missing(_) => return None,
            }
        }
        None
    }

    /// True when every folder above the item exists and is a real folder.
    #[cfg(test)]
    pub fn parents_exist(&mut self, root: &Path, item: &ItemPath) -> bool {
        let parts: Vec<&str> = item.as_str().split('/').collect();
        let mut dir = root.to_path_buf();
        parts[..parts.len().saturating_sub(1)].iter().all(|part| {
            dir.push(part);
            matches!(self.look(&dir), FolderLook::Real(_))
        })
    }

    /// Makes sure every folder above the item exists and is a real folder (never a
    /// symlink), so nothing is written outside the source.
    pub fn ensure_parents(&mut self, root: &Path, item: &ItemPath) -> Result<(), ApplyError> {
        let parts: Vec<&str> = item.as_str().split('/').collect();
        let mut dir = root.to_path_buf();
        for part in &parts[..parts.len().saturating_sub(1)] {
            dir.push(part);
            match self.look(&dir) {
                FolderLook::Real(_) => {}
                FolderLook::NotAFolder => {
                    return Err(ApplyError::BadParent {
                        path: item.to_string(),
                    });
                }
                FolderLook::Missing(e) if e.kind() == io::ErrorKind::NotFound => {
                    match fs::create_dir(&dir) {
                        Ok(()) => {}
                        // Another item in flight made it first; fine if it is a real folder.
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(io_err(item, "creating a parent folder")(e)),
                    }
                    if !matches!(self.look(&dir), FolderLook::Real(_)) {
                        return Err(ApplyError::BadParent {
                            path: item.to_string(),
                        });
                    }
                }
                FolderLook::Missing(e) => {
                    return Err(io_err(item, "checking a parent folder")(e));
                }
            }
        }
        Ok(())
    }
}

/// [`RealFolders::blocked_parent`] on its own.
pub fn blocked_parent(root: &Path, item: &ItemPath) -> Option<String> {
    RealFolders::default().blocked_parent(root, item)
}

/// [`RealFolders::ensure_parents`] on its own.
pub fn ensure_parents(root: &Path, item: &ItemPath) -> Result<(), ApplyError> {
    RealFolders::default().ensure_parents(root, item)
}

/// What lies at an item's path, as one look saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Absent,
    File,
    Folder,
    /// A symlink, or something that is not a file or folder.
    Other,
}

/// True when the item on disk is what the prior state says (or absent where the prior state
/// has nothing or a tombstone): only then may it be replaced without losing a local change.
pub fn unchanged_since_scan(
    disk: &dyn Disk,
    root: &Path,
    item: &ItemPath,
    prior: Option<&PriorItem>,
) -> Result<bool, ApplyError> {
    look_unchanged(disk, root, item, prior).map(|(unchanged, _)| unchanged)
}

/// [`unchanged_since_scan`], and what that one look found there.
pub fn look_unchanged(
    disk: &dyn Disk,
    root: &Path,
    item: &ItemPath,
    prior: Option<&PriorItem>,
) -> Result<(bool, Target), ApplyError> {
    let live = prior.filter(|p| !p.header.deleted);
    match (disk.symlink_metadata(&root.join(item.as_str())), live) {
        (Err(e), None) if e.kind() == io::ErrorKind::NotFound => Ok((true, Target::Absent)),
        (Err(e), Some(_)) if e.kind() == io::ErrorKind::NotFound => Ok((false, Target::Absent)),
        (Err(e), _) => Err(io_err(item, "checking the target")(e)),
        (Ok(m), live) => {
            let kind = kind_of(&m);
            let target = match kind {
                Some(ItemKind::File) => Target::File,
                Some(ItemKind::Directory) => Target::Folder,
                _ => Target::Other,
            };
            let Some(p) = live else {
                return Ok((false, target));
            };
            let Some(p) = p.file() else {
                return Err(ApplyError::NotAFile { key: p.key.clone() });
            };
            let unchanged = match kind {
                Some(ItemKind::Directory) => p.meta.kind == ItemKind::Directory,
                Some(k) => {
                    // Sizes are recorded for files only (a symlink's is its target's length).
                    k == p.meta.kind
                        && (k != ItemKind::File || m.len() == p.meta.size)
                        && mtime_ns(&m) == p.meta.mtime_ns
                        && m.ino() == p.meta.inode
                }
                None => false,
            };
            Ok((unchanged, target))
        }
    }
}

fn kind_of(m: &fs::Metadata) -> Option<ItemKind> {
    let ft = m.file_type();
    if ft.is_dir() {
        Some(ItemKind::Directory)
    } else if ft.is_symlink() {
        Some(ItemKind::Symlink)
    } else if ft.is_file() {
        Some(ItemKind::File)
    } else {
        None
    }
}

/// The local metadata of an item just written.
pub fn stat(root: &Path, item: &ItemPath) -> Result<Metadata, ApplyError> {
    let full = root.join(item.as_str());
    let m = fs::symlink_metadata(&full).map_err(io_err(item, "reading back the result"))?;
    let kind = kind_of(&m).ok_or_else(|| ApplyError::BadParent {
        path: item.to_string(),
    })?;
    let symlink_target = if kind == ItemKind::Symlink {
        fs::read_link(&full)
            .ok()
            .and_then(|t| t.to_str().map(str::to_owned))
    } else {
        None
    };
    Ok(Metadata {
        kind,
        size: if kind == ItemKind::File { m.len() } else { 0 },
        mtime_ns: mtime_ns(&m),
        inode: m.ino(),
        mode: m.mode() & 0o7777,
        symlink_target,
    })
}

/// Hashes a built temp file and compares it with the announced hash.
pub fn verify(temp: &Path, item: &ItemPath, expected: Hash128) -> Result<(), ApplyError> {
    let f = fs::File::open(temp).map_err(io_err(item, "reading the temp file"))?;
    let size = f.metadata().map_or(u64::MAX, |m| m.len());
    let hashed =
        hash_reader_sized(f, size, &mut |_| {}).map_err(io_err(item, "reading the temp file"))?;
    if hashed.hash == expected {
        Ok(())
    } else {
        Err(ApplyError::HashMismatch {
            path: item.to_string(),
        })
    }
}

fn system_time(ns: i64) -> SystemTime {
    let abs = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH + abs
    } else {
        UNIX_EPOCH - abs
    }
}

/// Temp files built and flushed at once: fsyncs issued together let the file system commit
/// them in one go, which is most of what durability costs on a disk.
pub const PARALLEL_SYNCS: usize = 8;

/// Runs `job` on every element of `items`, split over up to [`PARALLEL_SYNCS`] threads (on
/// this one when there is a single element). Results are in order; an element whose thread
/// failed gets `failed(element)`.
pub fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    job: impl Fn(&[T]) -> Vec<R> + Sync,
    failed: impl Fn(&T) -> R,
) -> Vec<R> {
    if items.len() <= 1 {
        return job(items);
    }
    let per_thread = items.len().div_ceil(PARALLEL_SYNCS);
    let job = &job;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(per_thread)
            .map(|part| scope.spawn(move || job(part)))
            .collect();
        workers
            .into_iter()
            .zip(items.chunks(per_thread))
            .flat_map(|(worker, part)| {
                worker
                    .join()
                    .unwrap_or_else(|_| part.iter().map(&failed).collect())
            })
            .collect()
    })
}

/// Gives a built and verified temp file the item's mode and mtime, and makes it durable:
/// what the source task renames into place is complete, so its batch pays for nothing but
/// the renames and one flush per folder.
pub fn finish_temp(
    disk: &dyn Disk,
    file: &fs::File,
    target: &Path,
    item: &ItemPath,
    mode: u32,
    mtime_ns: i64,
) -> Result<(), ApplyError> {
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(item, "setting permissions"))?;
    file.set_times(fs::FileTimes::new().set_modified(system_time(mtime_ns)))
        .map_err(io_err(item, "setting the modification time"))?;
    disk.sync(file, target)
        .map_err(io_err(item, "flushing the temp file"))
}

/// Renames a temp file finished by [`finish_temp`] over the target. Its folder is made
/// durable with the batch's (`folders`).
pub fn place_file(
    disk: &dyn Disk,
    root: &Path,
    item: &ItemPath,
    temp: &Path,
    was: Target,
    folders: &mut Folders,
) -> Result<Metadata, ApplyError> {
    let target = root.join(item.as_str());
    if was == Target::Folder {
        // A folder is being replaced by a file: only an empty one goes.
        fs::remove_dir(&target).map_err(io_err(item, "removing the folder the file replaces"))?;
    }
    disk.rename(temp, &target)
        .map_err(io_err(item, "renaming the temp file into place"))?;
    folders.note(root, item);
    stat(root, item)
}

/// The folders whose entries a batch changed. Each is flushed once when the batch is written,
/// not once per entry; until then nothing in it is called applied.
#[derive(Debug, Default)]
pub struct Folders {
    dirs: std::collections::BTreeSet<PathBuf>,
}

impl Folders {
    /// Notes that an entry of `item`'s folder changed.
    pub fn note(&mut self, root: &Path, item: &ItemPath) {
        self.dirs.insert(Folders::of(root, item));
    }

    /// The folder `note` files `item` under.
    pub fn of(root: &Path, item: &ItemPath) -> PathBuf {
        let target = root.join(item.as_str());
        target.parent().unwrap_or(root).to_path_buf()
    }

    /// Flushes every noted folder; gives back those that failed, with why. A folder that is
    /// gone (the batch removed it after emptying it) has nothing left to flush: its removal
    /// is an entry of its parent, which is noted too.
    pub fn flush(self, disk: &dyn Disk) -> Vec<(PathBuf, io::Error)> {
        self.dirs
            .into_iter()
            .filter_map(|dir| match disk.sync_folder(&dir) {
                Ok(()) => None,
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => Some((dir, e)),
            })
            .collect()
    }
}

/// Sets mode and mtime of a file whose content is already right.
pub fn set_file_meta(
    root: &Path,
    item: &ItemPath,
    mode: u32,
    mtime_ns: i64,
) -> Result<Metadata, ApplyError> {
    let target = root.join(item.as_str());
    let f = open_regular(&target, fs::OpenOptions::new().write(true))
        .map_err(io_err(item, "opening the file"))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(item, "setting permissions"))?;
    f.set_times(fs::FileTimes::new().set_modified(system_time(mtime_ns)))
        .map_err(io_err(item, "setting the modification time"))?;
    drop(f);
    stat(root, item)
}

/// Creates (or keeps) a folder with the given permissions.
pub fn make_dir(
    root: &Path,
    item: &ItemPath,
    mode: u32,
    folders: &mut Folders,
) -> Result<Metadata, ApplyError> {
    let target = root.join(item.as_str());
    match fs::symlink_metadata(&target) {
        Ok(m) if m.file_type().is_dir() => {}
        Ok(_) => {
            // A file or link is being replaced by a folder; the caller checked it was scanned.
            fs::remove_file(&target).map_err(io_err(item, "removing what the folder replaces"))?;
            fs::create_dir(&target).map_err(io_err(item, "creating the folder"))?;
        }
        Err(_) => match fs::create_dir(&target) {
            Ok(()) => {}
            // Made meanwhile (a parent of something in flight): fine if it is a real folder.
            Err(e)
                if e.kind() == io::ErrorKind::AlreadyExists
                    && fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_dir()) => {}
            Err(e) => return Err(io_err(item, "creating the folder")(e)),
        },
    }
    fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o700))
        .map_err(io_err(item, "setting permissions"))?;
    folders.note(root, item);
    stat(root, item)
}

/// Creates a symlink (never following it), replacing what the scan saw there.
pub fn make_symlink(
    root: &Path,
    item: &ItemPath,
    target_text: &str,
    folders: &mut Folders,
) -> Result<Metadata, ApplyError> {
    let temp = temp_path(root, item);
    symlink(target_text, &temp).map_err(io_err(item, "creating the link"))?;
    let target = root.join(item.as_str());
    if fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_dir()) {
        fs::remove_dir(&target).map_err(io_err(item, "removing the folder the link replaces"))?;
    }
    if let Err(e) = fs::rename(&temp, &target) {
        let _ = fs::remove_file(&temp);
        return Err(io_err(item, "renaming the link into place")(e));
    }
    folders.note(root, item);
    stat(root, item)
}

/// What happened to a deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// Gone (or already absent).
    Yes,
    /// A folder that still holds items this device has and the peer did not know about.
    KeptNotEmpty,
}

/// Removes a file, link or empty folder.
pub fn remove(root: &Path, item: &ItemPath, folders: &mut Folders) -> Result<Removed, ApplyError> {
    let target = root.join(item.as_str());
    let m = match fs::symlink_metadata(&target) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removed::Yes),
        Err(e) => return Err(io_err(item, "checking the target")(e)),
    };
    if m.file_type().is_dir() {
        match fs::remove_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
                return Ok(Removed::KeptNotEmpty);
            }
            Err(e) => return Err(io_err(item, "removing the folder")(e)),
        }
    } else {
        fs::remove_file(&target).map_err(io_err(item, "removing the file"))?;
    }
    folders.note(root, item);
    Ok(Removed::Yes)
}

/// What every conflict copy's name holds, between the original name and the stamp.
pub const CONFLICT_MARK: &str = ".sync-conflict-";

/// Moves a losing local file aside as `NAME.sync-conflict-YYYYMMDD-HHMMSS-DEVICE.EXT`, so a
/// concurrent remote version can take its place without losing it. Returns the copy's name.
///
/// The name comes from the losing version (its author and modification time), so devices
/// that keep the same loser agree on it. A copy of that name holding the same content
/// already keeps it: the file is left for the winner to replace. A different file of that
/// name is never overwritten; the copy gets a `-2`, `-3`… suffix instead.
pub fn keep_conflict_copy(
    root: &Path,
    item: &ItemPath,
    device_short: &str,
    unix_secs: u64,
) -> Result<Option<String>, ApplyError> {
    let target = root.join(item.as_str());
    match fs::symlink_metadata(&target) {
        Ok(m) if m.file_type().is_file() || m.file_type().is_symlink() => {}
        _ => return Ok(None),
    }
    let path = item.as_str();
    let (dir, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s, format!(".{e}")),
        _ => (name, String::new()),
    };
    let stamp = crate::events::utc_stamp(unix_secs);
    let err = |source| ApplyError::Io {
        path: item.to_string(),
        action: "keeping the local version as a conflict copy",
        source,
    };
    let base = if dir.is_empty() {
        stem.to_owned()
    } else {
        format!("{dir}/{stem}")
    };
    for copy_path in conflict_names(&base, &stamp, device_short, &ext) {
        let full = root.join(&copy_path);
        // A hard link fails rather than replace an existing name; the unlink after it makes
        // the pair a move.
        match fs::hard_link(&target, &full) {
            Ok(()) => {
                fs::remove_file(&target).map_err(&err)?;
                return Ok(Some(copy_path));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if same_entry(&target, &full).map_err(&err)? {
                    return Ok(Some(copy_path));
                }
            }
            Err(e) => return Err(err(e)),
        }
    }
    Err(err(too_many_copies()))
}

/// Conflict copies tried under one name before giving up.
const MAX_SAME_NAMED_COPIES: u32 = 1000;

/// The names a conflict copy of `base` (its path without the extension) may take, in order:
/// `BASE.sync-conflict-STAMP-DEVICE.EXT`, then with `-2`, `-3`… before the extension.
fn conflict_names<'a>(
    base: &'a str,
    stamp: &'a str,
    device_short: &'a str,
    ext: &'a str,
) -> impl Iterator<Item = String> + 'a {
    (1..=MAX_SAME_NAMED_COPIES).map(move |n| {
        let suffix = if n == 1 {
            String::new()
        } else {
            format!("-{n}")
        };
        format!("{base}{CONFLICT_MARK}{stamp}-{device_short}{suffix}{ext}")
    })
}

fn too_many_copies() -> io::Error {
    io::Error::other(format!(
        "{MAX_SAME_NAMED_COPIES} conflict copies of it from the same device and second exist \
         already; move some of them away"
    ))
}

/// Moves a folder that holds something aside as `NAME.sync-conflict-YYYYMMDD-HHMMSS-DEVICE`,
/// so a file or link from a peer can take its name without anything in it being lost (what is
/// in it syncs under the new name). An empty folder, or none, is left for the caller to
/// replace. Returns the new name.
pub fn move_folder_aside(
    root: &Path,
    item: &ItemPath,
    device_short: &str,
    unix_secs: u64,
    folders: &mut Folders,
) -> Result<Option<String>, ApplyError> {
    let target = root.join(item.as_str());
    let err = |source| ApplyError::Io {
        path: item.to_string(),
        action: "moving the folder aside as a conflict copy",
        source,
    };
    match fs::symlink_metadata(&target) {
        Ok(m) if m.file_type().is_dir() => {}
        _ => return Ok(None),
    }
    if fs::read_dir(&target).map_err(err)?.next().is_none() {
        return Ok(None);
    }
    let stamp = crate::events::utc_stamp(unix_secs);
    for copy_path in conflict_names(item.as_str(), &stamp, device_short, "") {
        let full = root.join(&copy_path);
        // Only this agent writes such names; a user racing it here loses nothing either, as
        // rename onto an existing non-empty folder fails.
        if fs::symlink_metadata(&full).is_ok() {
            continue;
        }
        fs::rename(&target, &full).map_err(err)?;
        folders.note(root, item);
        // A fetch may have been building a temp file in the folder for an item under it; that
        // item's path now ends at a file, so nothing will ever finish or remove the temp there.
        remove_stale_temps(&full);
        return Ok(Some(copy_path));
    }
    Err(err(too_many_copies()))
}

/// True when two paths hold the same symlink target or the same file bytes.
fn same_entry(a: &Path, b: &Path) -> io::Result<bool> {
    let (ma, mb) = (fs::symlink_metadata(a)?, fs::symlink_metadata(b)?);
    if ma.file_type().is_symlink() || mb.file_type().is_symlink() {
        return Ok(ma.file_type().is_symlink()
            && mb.file_type().is_symlink()
            && fs::read_link(a)? == fs::read_link(b)?);
    }
    if !ma.file_type().is_file() || !mb.file_type().is_file() || ma.len() != mb.len() {
        return Ok(false);
    }
    let ha = hash_reader_sized(fs::File::open(a)?, ma.len(), &mut |_| {})?;
    let hb = hash_reader_sized(fs::File::open(b)?, mb.len(), &mut |_| {})?;
    Ok(ha.hash == hb.hash)
}

/// A conflict copy's parts, read back from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictName {
    /// The item the copy lost to.
    pub original: String,
    /// `YYYYMMDD-HHMMSS`, UTC.
    pub when: String,
    /// Short ID of the device whose version the copy holds.
    pub device: String,
}

/// Reads `NAME.sync-conflict-YYYYMMDD-HHMMSS-DEVICE.EXT` back into its parts.
pub fn parse_conflict_name(path: &str) -> Option<ConflictName> {
    let (dir, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
    let (stem, rest) = name.split_once(CONFLICT_MARK)?;
    let (when, tail) = rest.split_at_checked(15)?;
    let tail = tail.strip_prefix('-')?;
    let (device, ext) = match tail.split_once('.') {
        Some((d, e)) => (d, format!(".{e}")),
        None => (tail, String::new()),
    };
    if stem.is_empty() || device.is_empty() || !when.chars().all(|c| c.is_ascii_digit() || c == '-')
    {
        return None;
    }
    let original = format!("{stem}{ext}");
    let original = if dir.is_empty() {
        original
    } else {
        format!("{dir}/{original}")
    };
    Some(ConflictName {
        original,
        when: when.to_owned(),
        device: device.to_owned(),
    })
}

/// Removes temp files a crash left behind anywhere in the source.
pub fn remove_stale_temps(root: &Path) -> usize {
    let mut removed = 0;
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .flatten()
    {
        let is_temp = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TEMP_PREFIX));
        if is_temp && !entry.file_type().is_dir() && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Opens `path` only if it is a regular file itself, never what a symlink there points to.
///
/// Without `O_NOFOLLOW` in std, the file is looked at without following links first, and the
/// file opened must then be that same file (a link swapped in between is caught).
fn open_regular(path: &Path, options: &fs::OpenOptions) -> io::Result<fs::File> {
    let seen = fs::symlink_metadata(path)?;
    if !seen.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a symlink is never followed)",
        ));
    }
    let f = options.open(path)?;
    let opened = f.metadata()?;
    if (opened.dev(), opened.ino()) != (seen.dev(), seen.ino()) {
        return Err(io::Error::other("the file was replaced while being opened"));
    }
    Ok(f)
}

/// Reads `len` bytes at `offset` of an item's file, for a chunk a peer asked for or one
/// reused locally: only a regular file inside the source, never through a symlink.
pub fn read_range(root: &Path, item: &ItemPath, offset: u64, len: u32) -> io::Result<Vec<u8>> {
    read_range_in(root, item, offset, len, &mut RealFolders::default())
}

/// The whole content of small files that still hold what is expected of them: for each
/// `(tag, item, size, hash)`, the bytes when the file reads back with that size and hash
/// (blocking; the rest are left out, for the caller to fetch another way).
pub fn read_whole_files<T>(
    root: &Path,
    wanted: Vec<(T, ItemPath, u32, Hash128)>,
) -> Vec<(T, bytes::Bytes)> {
    let mut folders = RealFolders::default();
    wanted
        .into_iter()
        .filter_map(|(tag, item, len, hash)| {
            let data = read_range_in(root, &item, 0, len, &mut folders).ok()?;
            (Hash128::of(&data) == hash).then(|| (tag, bytes::Bytes::from(data)))
        })
        .collect()
}

/// [`read_range`] for one of many reads in a row, remembering the real folders it passed.
pub fn read_range_in(
    root: &Path,
    item: &ItemPath,
    offset: u64,
    len: u32,
    folders: &mut RealFolders,
) -> io::Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    if let Some(parent) = folders.blocked_parent(root, item) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{parent} is not a folder of the source"),
        ));
    }
    let mut f = open_regular(&root.join(item.as_str()), fs::OpenOptions::new().read(true))?;
    if offset > 0 {
        f.seek(SeekFrom::Start(offset))?;
    }
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::item::{Body, Header, PriorFile};

    fn p(s: &str) -> ItemPath {
        ItemPath::parse(s).unwrap()
    }

    #[test]
    fn a_file_is_placed_with_its_metadata_and_no_temp_left() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let item = p("a/b/c.txt");
        ensure_parents(root, &item).unwrap();
        let temp = temp_path(root, &item);
        fs::write(&temp, b"hello").unwrap();
        verify(&temp, &item, Hash128::of(b"hello")).unwrap();
        assert!(matches!(
            verify(&temp, &item, Hash128::of(b"other")),
            Err(ApplyError::HashMismatch { .. })
        ));
        let file = fs::OpenOptions::new().write(true).open(&temp).unwrap();
        finish_temp(
            &OsDisk,
            &file,
            &root.join(item.as_str()),
            &item,
            0o640,
            1_600_000_000_123_456_789,
        )
        .unwrap();
        let mut folders = Folders::default();
        let meta = place_file(&OsDisk, root, &item, &temp, Target::Absent, &mut folders).unwrap();
        assert!(folders.flush(&OsDisk).is_empty());
        assert_eq!(fs::read(root.join("a/b/c.txt")).unwrap(), b"hello");
        assert_eq!(meta.mode, 0o640);
        assert_eq!(meta.mtime_ns, 1_600_000_000_123_456_789);
        assert_eq!(remove_stale_temps(root), 0);
    }

    #[test]
    fn temps_are_built_in_the_temp_folder_when_it_is_there_else_in_the_nearest_folder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("d")).unwrap();
        let in_folder = |item: &str| {
            let mut real = RealFolders::default();
            let (temp, _) = create_temp(&OsDisk, root, &p(item), None, &mut real).unwrap();
            let folder = temp.parent().unwrap().to_path_buf();
            fs::remove_file(&temp).unwrap();
            folder
        };
        // No temp folder (a source made before it existed, or a marker removed under us).
        assert_eq!(in_folder("d/x.txt"), root.join("d"));
        assert_eq!(in_folder("new/deeper/x.txt"), root);
        assert_eq!(in_folder("d/new/x.txt"), root.join("d"));
        fs::create_dir(root.join(crate::layout::AGENT_DIR)).unwrap();
        ensure_temp_dir(root).unwrap();
        ensure_temp_dir(root).unwrap();
        for item in ["x.txt", "d/x.txt", "new/deeper/x.txt"] {
            assert_eq!(in_folder(item), temp_dir(root), "{item}");
        }
        // Built there, renamed into place across folders, and nothing is left behind.
        let item = p("d/y.txt");
        let mut real = RealFolders::default();
        let (temp, file) = create_temp(&OsDisk, root, &item, None, &mut real).unwrap();
        write_temp(&OsDisk, &file, &root.join("d/y.txt"), &item, b"moved in", 0).unwrap();
        let mut folders = Folders::default();
        place_file(&OsDisk, root, &item, &temp, Target::Absent, &mut folders).unwrap();
        assert!(folders.flush(&OsDisk).is_empty());
        assert_eq!(fs::read(root.join("d/y.txt")).unwrap(), b"moved in");
        assert_eq!(fs::read_dir(temp_dir(root)).unwrap().count(), 0);
    }

    #[test]
    fn only_a_looking_trip_remembers_missing_folders() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let item = p("later/x.txt");
        let mut looking = RealFolders::for_looking();
        let mut writing = RealFolders::default();
        assert!(!looking.parents_exist(root, &item));
        assert!(!writing.parents_exist(root, &item));
        fs::create_dir(root.join("later")).unwrap();
        assert!(!looking.parents_exist(root, &item), "remembered as missing");
        assert!(writing.parents_exist(root, &item), "looked at again");
        writing.ensure_parents(root, &p("made/y.txt")).unwrap();
        assert!(root.join("made").is_dir());
    }

    #[test]
    fn a_folder_emptied_and_removed_in_the_batch_needs_no_flush() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("d/e")).unwrap();
        fs::write(root.join("d/e/f"), b"x").unwrap();
        let mut folders = Folders::default();
        assert_eq!(
            remove(root, &p("d/e/f"), &mut folders).unwrap(),
            Removed::Yes
        );
        assert_eq!(remove(root, &p("d/e"), &mut folders).unwrap(), Removed::Yes);
        assert_eq!(remove(root, &p("d"), &mut folders).unwrap(), Removed::Yes);
        let failed = folders.flush(&OsDisk);
        assert!(failed.is_empty(), "{failed:?}");
    }

    #[test]
    fn parents_through_symlinks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), dir.path().join("link")).unwrap();
        let err = ensure_parents(dir.path(), &p("link/x")).unwrap_err();
        assert!(matches!(err, ApplyError::BadParent { .. }), "{err}");
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
    }

    #[test]
    fn a_recorded_symlink_is_unchanged_since_scan() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        symlink("some/target", root.join("l")).unwrap();
        let prior = PriorItem {
            key: "l".into(),
            header: Header {
                version: crate::index::VersionVector::new(),
                sequence: 1,
                deleted: false,
                origin: None,
                modified_by: None,
            },
            body: Body::File(PriorFile {
                meta: stat(root, &p("l")).unwrap(),
                hash: None,
            }),
        };
        assert_eq!(prior.file().unwrap().meta.size, 0, "sizes are for files");
        assert!(unchanged_since_scan(&OsDisk, root, &p("l"), Some(&prior)).unwrap());
    }

    #[test]
    fn nothing_is_read_or_touched_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(outside.path().join("secret"), b"outside").unwrap();
        fs::set_permissions(
            outside.path().join("secret"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        symlink(outside.path(), root.join("link")).unwrap();
        symlink(outside.path().join("secret"), root.join("filelink")).unwrap();
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("d/f"), b"inside").unwrap();
        fs::write(root.join("file"), b"x").unwrap();

        assert_eq!(blocked_parent(root, &p("link/secret")), Some("link".into()));
        assert_eq!(blocked_parent(root, &p("d/f")), None);
        assert_eq!(blocked_parent(root, &p("missing/deeper/f")), None);
        assert_eq!(blocked_parent(root, &p("file/under")), Some("file".into()));
        assert_eq!(
            blocked_parent(root, &p("link")),
            None,
            "the link itself is fine"
        );

        assert_eq!(read_range(root, &p("d/f"), 0, 6).unwrap(), b"inside");
        assert!(read_range(root, &p("link/secret"), 0, 7).is_err());
        assert!(read_range(root, &p("filelink"), 0, 7).is_err());
        assert!(set_file_meta(root, &p("filelink"), 0o777, 1).is_err());
        let m = fs::metadata(outside.path().join("secret")).unwrap();
        assert_eq!(
            m.mode() & 0o777,
            0o600,
            "the link's target kept its permissions"
        );
    }

    #[test]
    fn unchanged_since_scan_sees_local_edits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let item = p("f");
        assert!(unchanged_since_scan(&OsDisk, root, &item, None).unwrap());
        fs::write(root.join("f"), b"x").unwrap();
        assert!(
            !unchanged_since_scan(&OsDisk, root, &item, None).unwrap(),
            "an unscanned new file is a local change"
        );
        let meta = stat(root, &item).unwrap();
        let prior = PriorItem {
            key: "f".into(),
            header: Header {
                version: crate::index::VersionVector::new(),
                sequence: 1,
                deleted: false,
                origin: None,
                modified_by: None,
            },
            body: Body::File(PriorFile { meta, hash: None }),
        };
        assert!(unchanged_since_scan(&OsDisk, root, &item, Some(&prior)).unwrap());
        fs::write(root.join("f"), b"xy").unwrap();
        assert!(!unchanged_since_scan(&OsDisk, root, &item, Some(&prior)).unwrap());
    }

    #[test]
    fn stale_temps_are_removed_and_non_empty_folders_kept() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("d").join(format!("{TEMP_PREFIX}x")), b"partial").unwrap();
        fs::write(root.join("d/keep"), b"mine").unwrap();
        assert_eq!(remove_stale_temps(root), 1);
        assert_eq!(
            remove(root, &p("d"), &mut Folders::default()).unwrap(),
            Removed::KeptNotEmpty
        );
        assert_eq!(
            remove(root, &p("d/keep"), &mut Folders::default()).unwrap(),
            Removed::Yes
        );
        assert_eq!(
            remove(root, &p("d"), &mut Folders::default()).unwrap(),
            Removed::Yes
        );
        assert_eq!(
            remove(root, &p("d"), &mut Folders::default()).unwrap(),
            Removed::Yes,
            "already gone is fine"
        );
    }

    #[test]
    fn conflict_names_read_back() {
        let n = parse_conflict_name("d/report.sync-conflict-20231114-221320-ABCDEFG.txt").unwrap();
        assert_eq!(n.original, "d/report.txt");
        assert_eq!(n.when, "20231114-221320");
        assert_eq!(n.device, "ABCDEFG");
        let n = parse_conflict_name("Makefile.sync-conflict-20231114-221320-ABCDEFG").unwrap();
        assert_eq!(n.original, "Makefile");
        assert!(parse_conflict_name("plain.txt").is_none());
        assert!(parse_conflict_name("x.sync-conflict-short").is_none());
    }

    #[test]
    fn conflict_copies_keep_the_extension() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("d/report.txt"), b"mine").unwrap();
        let copy = keep_conflict_copy(root, &p("d/report.txt"), "ABCDEFG", 1_700_000_000)
            .unwrap()
            .unwrap();
        assert_eq!(copy, "d/report.sync-conflict-20231114-221320-ABCDEFG.txt");
        assert_eq!(fs::read(root.join(&copy)).unwrap(), b"mine");
        assert!(!root.join("d/report.txt").exists());
    }

    #[test]
    fn only_a_folder_with_something_in_it_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("empty")).unwrap();
        assert_eq!(
            move_folder_aside(
                root,
                &p("empty"),
                "ABCDEFG",
                1_700_000_000,
                &mut Folders::default()
            )
            .unwrap(),
            None
        );
        assert!(
            root.join("empty").is_dir(),
            "left for the caller to replace"
        );
        fs::create_dir(root.join("full")).unwrap();
        fs::write(root.join("full/kept.txt"), b"unseen").unwrap();
        fs::write(root.join("full").join(format!("{TEMP_PREFIX}1")), b"half").unwrap();
        let moved = move_folder_aside(
            root,
            &p("full"),
            "ABCDEFG",
            1_700_000_000,
            &mut Folders::default(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(moved, "full.sync-conflict-20231114-221320-ABCDEFG");
        assert_eq!(
            fs::read(root.join(&moved).join("kept.txt")).unwrap(),
            b"unseen"
        );
        assert!(!root.join("full").exists());
        assert!(
            !root.join(&moved).join(format!("{TEMP_PREFIX}1")).exists(),
            "a fetch's temp file does not travel with the folder"
        );
        assert_eq!(parse_conflict_name(&moved).unwrap().original, "full");
    }

    #[test]
    fn a_conflict_copy_never_overwrites_and_is_never_made_twice() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let keep = || keep_conflict_copy(root, &p("a.txt"), "ABCDEFG", 1_700_000_000);
        fs::write(root.join("a.txt"), b"first loser").unwrap();
        let first = keep().unwrap().unwrap();
        // The same loser again (another device's copy synced here first): nothing new.
        fs::write(root.join("a.txt"), b"first loser").unwrap();
        assert_eq!(keep().unwrap().unwrap(), first);
        assert_eq!(fs::read(root.join("a.txt")).unwrap(), b"first loser");
        // Another loser under the same name: a numbered copy, and both survive.
        fs::write(root.join("a.txt"), b"second loser").unwrap();
        let second = keep().unwrap().unwrap();
        assert_eq!(second, "a.sync-conflict-20231114-221320-ABCDEFG-2.txt");
        assert_eq!(fs::read(root.join(&first)).unwrap(), b"first loser");
        assert_eq!(fs::read(root.join(&second)).unwrap(), b"second loser");
        assert!(!root.join("a.txt").exists());
        assert_eq!(
            parse_conflict_name(&second).unwrap().original,
            "a.txt",
            "a numbered copy still names its original"
        );
    }
}
