//! Item domain types shared by the scanner, the store and the source task.
//!
//! Must not: do I/O. These are plain values; the store persists them, the scanner fills them.

use crate::chunker::{ChunkRef, Hash128};
use crate::index::{Contender, VersionVector};

/// What kind of thing an item path names in a `files` source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemKind {
    /// A regular file; its content moves as chunks.
    File,
    /// A directory; synced so empty ones and their permissions survive.
    Directory,
    /// A symbolic link, synced as a link and never followed.
    Symlink,
}

impl ItemKind {
    /// Stable small integer used in the database.
    pub fn code(self) -> i64 {
        match self {
            ItemKind::File => 0,
            ItemKind::Directory => 1,
            ItemKind::Symlink => 2,
        }
    }

    /// Inverse of [`ItemKind::code`]; `None` for a code this build does not know.
    pub fn from_code(code: i64) -> Option<ItemKind> {
        match code {
            0 => Some(ItemKind::File),
            1 => Some(ItemKind::Directory),
            2 => Some(ItemKind::Symlink),
            _ => None,
        }
    }
}

/// What the filesystem says about an item, as compared between scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub kind: ItemKind,
    /// Size in bytes (files), 0 otherwise.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    pub inode: u64,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Link target, for symlinks.
    pub symlink_target: Option<String>,
}

impl Metadata {
    /// True when nothing the scanner compares differs: the content need not be read again.
    pub fn same_stat(&self, other: &Metadata) -> bool {
        self.kind == other.kind
            && self.size == other.size
            && self.mtime_ns == other.mtime_ns
            && self.inode == other.inode
    }
}

/// The prior state of one item: what the agent last recorded for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorItem {
    pub path: String,
    pub meta: Metadata,
    pub version: VersionVector,
    pub sequence: u64,
    pub hash: Option<Hash128>,
    pub deleted: bool,
    /// Short ID of the device whose change made this version (`None` if recorded before
    /// that was kept).
    pub modified_by: Option<String>,
}

impl PriorItem {
    /// This version as the conflict rule sees it.
    pub fn contender(&self) -> Contender<'_> {
        Contender {
            deleted: self.deleted,
            is_dir: self.meta.kind == ItemKind::Directory,
            mtime_ns: self.meta.mtime_ns,
            modified_by: self.modified_by.as_deref().unwrap_or_default(),
            version: &self.version,
        }
    }
}

/// New content for an item, as a difference carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Content unchanged (a metadata-only change): keep the recorded hash and chunks.
    Keep,
    /// New file content.
    Replace {
        hash: Hash128,
        chunks: Vec<ChunkRef>,
    },
    /// No content: directories, symlinks and tombstones.
    Empty,
}

/// One item's change, ready to be committed with the next local sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub path: String,
    pub meta: Metadata,
    pub version: VersionVector,
    pub content: Content,
    pub deleted: bool,
    /// The peer this exact version was applied from (not echoed back to it); `None` for
    /// local changes.
    pub origin: Option<String>,
    /// Short ID of the device whose change made this version.
    pub modified_by: Option<String>,
}

/// A span of item paths in the store's order, which is bytewise (SQLite's BINARY collation on
/// UTF-8 text, and `str`'s `Ord`): what a scan reads the prior state of, a batch at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRange {
    /// Every item of the source.
    All,
    /// Exactly this item.
    Item(String),
    /// Everything strictly under this folder: `[p/, p0)`, since '0' is the byte after '/'.
    Under(String),
}

impl PathRange {
    /// The ranges that together hold `path` and everything under it, in the store's order
    /// (the item sorts before its subtree); the empty path is the whole source.
    pub fn at_and_under(path: &str) -> Vec<PathRange> {
        if path.is_empty() {
            vec![PathRange::All]
        } else {
            vec![
                PathRange::Item(path.to_owned()),
                PathRange::Under(path.to_owned()),
            ]
        }
    }

    /// True when `path` lies in the range.
    pub fn contains(&self, path: &str) -> bool {
        match self {
            PathRange::All => true,
            PathRange::Item(p) => path == p,
            PathRange::Under(p) => crate::layout::is_under(path, p),
        }
    }
}
