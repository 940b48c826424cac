//! Making and reading folder trees on disk, as a source's owner would.
//!
//! Must not: know about the agent; these are plain file operations and a plain `lstat` walk.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Kind of an item, numbered as the `items.kind` column numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File = 0,
    Directory = 1,
    Symlink = 2,
}

impl Kind {
    /// The kind with this `items.kind` code, if any.
    pub fn from_code(code: i64) -> Option<Kind> {
        match code {
            0 => Some(Kind::File),
            1 => Some(Kind::Directory),
            2 => Some(Kind::Symlink),
            _ => None,
        }
    }
}

/// What `lstat` says about one item on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Length of a file; 0 for folders and symlinks (as the prior state records them).
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
}

/// Writes a file, creating its parent folders.
pub fn write(path: &Path, contents: impl AsRef<[u8]>) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    }
    fs::write(path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Overwrites a file from its start without truncating it first, in one write: the watcher
/// sees one modification, never an empty file. `contents` must be at least as long as the
/// file, so nothing of the old contents is left at the end.
pub fn overwrite_in_place(path: &Path, contents: &[u8]) {
    let old = fs::metadata(path)
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()))
        .len();
    assert!(
        u64::try_from(contents.len()).is_ok_and(|n| n >= old),
        "overwrite_in_place needs at least {old} bytes for {}",
        path.display()
    );
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {} for writing: {e}", path.display()));
    file.write_all(contents)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Every item under `root` (not `root` itself), by item path ('/'-separated, relative).
pub fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Entry>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        let name = entry.file_name();
        let name = name
            .to_str()
            .unwrap_or_else(|| panic!("non-UTF-8 name in {}", dir.display()));
        let item = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        let m = fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
        let kind = if m.file_type().is_dir() {
            Kind::Directory
        } else if m.file_type().is_symlink() {
            Kind::Symlink
        } else {
            Kind::File
        };
        out.insert(
            item.clone(),
            Entry {
                kind,
                size: if kind == Kind::File { m.len() } else { 0 },
                mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                inode: m.ino(),
            },
        );
        if kind == Kind::Directory {
            walk(&path, &item, out);
        }
    }
}

/// A listing of everything under `root` for failure reports, at most `max` lines.
pub fn listing(root: &Path, max: usize) -> String {
    let mut lines = Vec::new();
    list(root, root, &mut lines);
    let total = lines.len();
    let mut s = String::new();
    for line in lines.iter().take(max) {
        s.push_str(line);
        s.push('\n');
    }
    if total > max {
        // Writing to a String cannot fail.
        let _ = writeln!(s, "… and {} more", total - max);
    }
    s
}

fn list(root: &Path, dir: &Path, lines: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        lines.push(format!("{} (cannot list)", dir.display()));
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let shown = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                lines.push(format!("{shown}/"));
                list(root, &path, lines);
            }
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                lines.push(format!("{shown} -> {target}"));
            }
            Ok(m) => lines.push(format!("{shown}  {} bytes  mode {:o}", m.len(), m.mode())),
            Err(e) => lines.push(format!("{shown}  ({e})")),
        }
    }
}
