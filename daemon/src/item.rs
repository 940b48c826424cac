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

/// What every item carries, whatever its kind: `peer.proto`'s `Header`, and the header columns
/// of `items` (migration 0007).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: VersionVector,
    /// The local sequence this version is recorded under here (a [`Difference`]'s is not used:
    /// `commit` gives it the next one), or the sender's, for a peer's item.
    pub sequence: u64,
    /// A tombstone, kept so peers learn of the deletion.
    pub deleted: bool,
    /// The peer this exact version was applied from (not echoed back to it); `None` for
    /// local changes, and for a peer's item as it arrives (a peer never sends it).
    pub origin: Option<String>,
    /// Short ID of the device whose change made this version (`None` if recorded before
    /// that was kept).
    pub modified_by: Option<String>,
}

/// What an item holds beyond its header: a file's part (of the shape each item type keeps)
/// or a record, encoded (opaque bytes until the first record format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<F> {
    File(F),
    Record(Vec<u8>),
}

impl<F> Body<F> {
    /// The file part; `None` for a record.
    pub fn file(&self) -> Option<&F> {
        match self {
            Body::File(f) => Some(f),
            Body::Record(_) => None,
        }
    }

    /// The file part, to change in place; `None` for a record.
    pub fn file_mut(&mut self) -> Option<&mut F> {
        match self {
            Body::File(f) => Some(f),
            Body::Record(_) => None,
        }
    }

    /// The encoded record; `None` for a file.
    pub fn record(&self) -> Option<&[u8]> {
        match self {
            Body::File(_) => None,
            Body::Record(r) => Some(r),
        }
    }
}

/// A file's part of its prior state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorFile {
    pub meta: Metadata,
    /// Whole-content hash, for a live regular file.
    pub hash: Option<Hash128>,
}

/// The prior state of one item: what the agent last recorded for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorItem {
    /// The item's path (files) or UID (records).
    pub key: String,
    pub header: Header,
    pub body: Body<PriorFile>,
}

impl PriorItem {
    /// The file part; `None` for a record.
    pub fn file(&self) -> Option<&PriorFile> {
        self.body.file()
    }

    /// This version as the conflict rule sees it.
    pub fn contender(&self) -> Contender<'_> {
        contender(&self.header, self.file().map(|f| &f.meta))
    }
}

/// The conflict rule's view of a header and, for a file, its metadata. A record has no
/// modification time or folder kind, so the rule falls through to the author and the vector.
pub fn contender<'a>(header: &'a Header, meta: Option<&Metadata>) -> Contender<'a> {
    Contender {
        deleted: header.deleted,
        is_dir: meta.is_some_and(|m| m.kind == ItemKind::Directory),
        mtime_ns: meta.map_or(0, |m| m.mtime_ns),
        modified_by: header.modified_by.as_deref().unwrap_or_default(),
        version: &header.version,
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

/// A file's part of a difference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    pub meta: Metadata,
    pub content: Content,
}

/// One item's change, ready to be committed with the next local sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The item's path (files) or UID (records).
    pub key: String,
    pub header: Header,
    pub body: Body<FileChange>,
}

impl Difference {
    /// The file part; `None` for a record.
    pub fn file(&self) -> Option<&FileChange> {
        self.body.file()
    }
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
