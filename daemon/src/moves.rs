//! Folder moves in the index exchange: a folder renamed whole goes to a peer as one operation
//! instead of a deletion and an addition per item under it.
//!
//! The sender's scan recorded those entries as usual (see `source::move_finder`), numbered
//! together. [`announce`] turns them into a [`FolderMove`] whose digest covers every entry as
//! the peer would receive it; the peer's [`derive`] rebuilds the same entries from its own prior
//! state of the old folder (a deletion: its version with the author's counter bumped; an
//! addition: the same metadata, content and chunks, its own version of the new path bumped)
//! and uses them only if their digest is the same. So a move carries nothing a peer could not
//! have received entry by entry: when the peer's state differs it asks for the entries.
//!
//! Must not: do I/O, or trust a move whose digest does not match.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::Xxh3Default;

use crate::chunker::Hash128;
use crate::index::{ShortId, VersionVector};
use crate::item::{Body, Header, ItemKind, Metadata};
use crate::store::{IndexEntry, MoveNote};
use crate::universal::{FolderMove, ItemPath, RemoteFile, RemoteItem};

/// Why a move's entries cannot be derived here; the peer is asked for them instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("{from:?} is not a folder here")]
    NoFolder { from: String },
    #[error("{from:?} holds {here} items here, {there} on the sender")]
    Count {
        from: String,
        here: usize,
        there: u32,
    },
    #[error("{path:?} exists here already")]
    TargetExists { path: String },
    #[error("{path:?} is not a file, folder or symlink here")]
    NotFile { path: String },
    #[error("{path:?} cannot be named under the new folder")]
    BadPath { path: String },
    #[error("the items under {from:?} differ here from the sender's")]
    Digest { from: String },
}

/// One entry as the peer receives it, the fields a digest covers (a deletion carries no size,
/// hash or link target; the inode is never sent; the mtime of a folder or a link is each
/// device's own, set when it writes them, so it is left out too).
struct Wire<'a> {
    /// Path relative to the moved folder ("" for the folder itself).
    rel: &'a str,
    deleted: bool,
    version: &'a VersionVector,
    kind: ItemKind,
    size: u64,
    mtime_ns: i64,
    mode: u32,
    target: Option<&'a str>,
    hash: Option<Hash128>,
    modified_by: Option<&'a str>,
}

impl<'a> Wire<'a> {
    fn new(
        rel: &'a str,
        header: &'a Header,
        meta: &'a Metadata,
        hash: Option<Hash128>,
    ) -> Wire<'a> {
        let live = !header.deleted;
        Wire {
            rel,
            deleted: header.deleted,
            version: &header.version,
            kind: meta.kind,
            size: if live { meta.size } else { 0 },
            mtime_ns: if meta.kind == ItemKind::File {
                meta.mtime_ns
            } else {
                0
            },
            mode: meta.mode,
            target: meta
                .symlink_target
                .as_deref()
                .filter(|_| live && meta.kind == ItemKind::Symlink),
            hash: hash.filter(|_| live && meta.kind == ItemKind::File),
            modified_by: header.modified_by.as_deref(),
        }
    }
}

/// The digest of a move's entries: additions then deletions, each in path order, every field
/// length-prefixed so no two lists hash alike by accident.
fn digest(mut entries: Vec<Wire<'_>>) -> Hash128 {
    entries.sort_by(|a, b| (a.deleted, a.rel).cmp(&(b.deleted, b.rel)));
    let mut h = Xxh3Default::new();
    let mut bytes = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    for e in &entries {
        bytes(e.rel.as_bytes());
        bytes(&[u8::from(e.deleted)]);
        bytes(&e.version.encode());
        bytes(&e.kind.code().to_le_bytes());
        bytes(&e.size.to_le_bytes());
        bytes(&e.mtime_ns.to_le_bytes());
        bytes(&e.mode.to_le_bytes());
        bytes(e.target.unwrap_or("\0").as_bytes());
        bytes(e.hash.as_ref().map_or(&[][..], |h| &h.0[..]));
        bytes(e.modified_by.unwrap_or("\0").as_bytes());
    }
    Hash128(h.digest128().to_be_bytes())
}

/// `key` relative to `folder`: "" for the folder itself, `None` when it is not at or under it.
pub fn relative<'a>(key: &'a str, folder: &str) -> Option<&'a str> {
    if key == folder {
        Some("")
    } else if crate::layout::is_under(key, folder) {
        Some(&key[folder.len() + 1..])
    } else {
        None
    }
}

/// The device whose change a version is: the counter a bump made larger than all others.
fn author_of(v: &VersionVector) -> Option<ShortId> {
    let top = v.iter().map(|(_, c)| c).max()?;
    let mut at_top = v.iter().filter(|(_, c)| *c == top);
    let (id, _) = at_top.next()?;
    at_top.next().is_none().then_some(id)
}

/// The move a scan noted (or a peer's move applied here), as one operation for `peer`, if its
/// range is still exactly the deletions and additions it numbered (nothing in it changed again
/// since) and none of them came from `peer` itself.
pub fn announce(note: &MoveNote, entries: &[IndexEntry], peer: &str) -> Option<FolderMove> {
    let items = usize::try_from(note.items).ok()?;
    if entries.len() != 2 * items || items == 0 {
        return None;
    }
    let mut wires = Vec::with_capacity(entries.len());
    let (mut deleted, mut added) = (0usize, 0usize);
    let mut folder = None;
    for e in entries {
        let file = e.item.file()?;
        let (rel, want_deleted) = match (
            relative(&e.item.key, &note.from),
            relative(&e.item.key, &note.to),
        ) {
            (Some(rel), None) => (rel, true),
            (None, Some(rel)) => (rel, false),
            _ => return None,
        };
        if e.item.header.deleted != want_deleted || e.item.header.origin.as_deref() == Some(peer) {
            return None;
        }
        if want_deleted {
            deleted += 1;
        } else {
            added += 1;
            if rel.is_empty() {
                folder = Some((&e.item.header, &file.meta));
            }
        }
        wires.push(Wire::new(rel, &e.item.header, &file.meta, file.hash));
    }
    let (header, meta) = folder?;
    if deleted != items || added != items || meta.kind != ItemKind::Directory {
        return None;
    }
    let modified_by = header.modified_by.clone();
    if wires
        .iter()
        .any(|w| w.modified_by != modified_by.as_deref())
    {
        return None;
    }
    let author = author_of(&header.version)?;
    Some(FolderMove {
        from: ItemPath::parse(&note.from).ok()?,
        to: ItemPath::parse(&note.to).ok()?,
        first_sequence: note.first_sequence,
        last_sequence: note.last_sequence,
        items: note.items,
        digest: digest(wires),
        folder: Metadata {
            inode: 0,
            ..meta.clone()
        },
        author,
        modified_by: modified_by.unwrap_or_default(),
    })
}

/// The entries a move stands for, rebuilt from this device's prior state of the old folder
/// (`from_tree`: every item at and under it) and of the new name (`to_tree`), checked against
/// the move's digest. Additions come first, parents before children (each still able to
/// take its content from its old copy), then the deletions, children before parents.
///
/// # Errors
/// [`Mismatch`] when this device's state differs from the sender's: the caller asks for the
/// entries instead.
pub fn derive(
    mv: &FolderMove,
    from_tree: &[IndexEntry],
    to_tree: &[IndexEntry],
) -> Result<Vec<RemoteItem>, Mismatch> {
    let from = mv.from.as_str();
    let to = mv.to.as_str();
    if let Some(live) = to_tree.iter().find(|e| !e.item.header.deleted) {
        return Err(Mismatch::TargetExists {
            path: live.item.key.clone(),
        });
    }
    let tombstones: BTreeMap<&str, &VersionVector> = to_tree
        .iter()
        .filter_map(|e| Some((relative(&e.item.key, to)?, &e.item.header.version)))
        .collect();
    let live: Vec<&IndexEntry> = from_tree
        .iter()
        .filter(|e| !e.item.header.deleted && relative(&e.item.key, from).is_some())
        .collect();
    let is_folder = live.iter().any(|e| {
        e.item.key == from
            && e.item
                .file()
                .is_some_and(|f| f.meta.kind == ItemKind::Directory)
    });
    if !is_folder {
        return Err(Mismatch::NoFolder { from: from.into() });
    }
    if live.len() != usize::try_from(mv.items).unwrap_or(usize::MAX) {
        return Err(Mismatch::Count {
            from: from.into(),
            here: live.len(),
            there: mv.items,
        });
    }
    let modified_by = (!mv.modified_by.is_empty()).then(|| mv.modified_by.clone());
    let header = |mut version: VersionVector, deleted: bool| {
        version.bump(mv.author);
        Header {
            version,
            sequence: mv.first_sequence,
            deleted,
            origin: None,
            modified_by: modified_by.clone(),
        }
    };
    let mut added = Vec::with_capacity(live.len());
    let mut removed = Vec::with_capacity(live.len());
    for e in &live {
        let Body::File(file) = &e.item.body else {
            return Err(Mismatch::NotFile {
                path: e.item.key.clone(),
            });
        };
        let rel = relative(&e.item.key, from).unwrap_or_default();
        let old = ItemPath::parse(&e.item.key).map_err(|_| Mismatch::BadPath {
            path: e.item.key.clone(),
        })?;
        let new_key = if rel.is_empty() {
            to.to_owned()
        } else {
            format!("{to}/{rel}")
        };
        let new = ItemPath::parse(&new_key).map_err(|_| Mismatch::BadPath { path: new_key })?;
        let meta = Metadata {
            inode: 0,
            symlink_target: file
                .meta
                .symlink_target
                .clone()
                .filter(|_| file.meta.kind == ItemKind::Symlink),
            ..file.meta.clone()
        };
        let is_file = meta.kind == ItemKind::File;
        let prior_new = tombstones
            .get(rel)
            .map(|v| (*v).clone())
            .unwrap_or_default();
        added.push(RemoteItem {
            path: new,
            header: header(prior_new, false),
            body: Body::File(RemoteFile {
                meta: if rel.is_empty() {
                    mv.folder.clone()
                } else {
                    meta.clone()
                },
                hash: file.hash.filter(|_| is_file),
                chunks: if is_file {
                    e.chunks.clone()
                } else {
                    Vec::new()
                },
                inline: None,
            }),
        });
        removed.push(RemoteItem {
            path: old,
            header: header(e.item.header.version.clone(), true),
            body: Body::File(RemoteFile {
                meta: Metadata {
                    size: 0,
                    symlink_target: None,
                    ..meta
                },
                hash: None,
                chunks: Vec::new(),
                inline: None,
            }),
        });
    }
    let wires = added
        .iter()
        .zip(std::iter::repeat(to))
        .chain(removed.iter().zip(std::iter::repeat(from)))
        .map(|(item, folder)| {
            let rel = relative(item.path.as_str(), folder).unwrap_or_default();
            let file = item.file();
            let meta = file.map(|f| &f.meta).unwrap_or(&mv.folder);
            Wire::new(rel, &item.header, meta, file.and_then(|f| f.hash))
        })
        .collect();
    if digest(wires) != mv.digest {
        return Err(Mismatch::Digest { from: from.into() });
    }
    added.sort_by(|a, b| a.path.cmp(&b.path));
    removed.sort_by(|a, b| b.path.cmp(&a.path));
    added.extend(removed);
    Ok(added)
}

/// What a sender's scan records for the live items of `tree` (a folder and everything under
/// it, as recorded) renamed from `from` to `to` by `author` (short name `by`), numbered from
/// `first`: each addition, then its old name's deletion. For tests on either side.
#[cfg(test)]
pub(crate) fn recorded_move(
    tree: &[IndexEntry],
    (from, to): (&str, &str),
    (author, by): (ShortId, &str),
    first: u64,
) -> (MoveNote, Vec<IndexEntry>) {
    let mut entries = Vec::new();
    for e in tree.iter().filter(|e| !e.item.header.deleted) {
        let Some(rel) = relative(&e.item.key, from) else {
            continue;
        };
        let mut added = e.clone();
        added.item.key = if rel.is_empty() {
            to.to_owned()
        } else {
            format!("{to}/{rel}")
        };
        added.item.header.version = VersionVector::new();
        added.item.header.version.bump(author);
        let mut gone = e.clone();
        gone.item.header.version.bump(author);
        gone.item.header.deleted = true;
        if let Body::File(f) = &mut gone.item.body {
            f.meta.size = 0;
            f.hash = None;
        }
        gone.chunks.clear();
        for entry in [&mut added, &mut gone] {
            entry.item.header.modified_by = Some(by.to_owned());
            entry.item.header.origin = None;
        }
        entries.push(added);
        entries.push(gone);
    }
    for (seq, e) in (first..).zip(entries.iter_mut()) {
        e.item.header.sequence = seq;
    }
    let note = MoveNote {
        first_sequence: first,
        last_sequence: first + entries.len() as u64 - 1,
        from: from.into(),
        to: to.into(),
        items: u32::try_from(entries.len() / 2).unwrap_or(u32::MAX),
    };
    (note, entries)
}

#[cfg(test)]
mod tests;
