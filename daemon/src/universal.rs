//! The universal difference format: protobuf messages ⇄ domain types, and the one place where
//! anything a peer sends is checked (paths, sizes, counts, hashes).
//!
//! Must not: do I/O, or let a raw prost type or an unchecked path past it.

use std::fmt;

use bytes::Bytes;
use tandem_proto::peer as pb;

use crate::chunker::{ChunkRef, Hash128, MAX_CHUNK_SIZE};
use crate::index::{self, Contender, Decision, VersionVector};
use crate::item::{self, Body, Header, ItemKind, Metadata};
use crate::layout::{AGENT_DIR, TEMP_PREFIX};

/// Longest item path accepted, in bytes (Linux PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest single path component, in bytes (NAME_MAX).
pub const MAX_NAME_BYTES: usize = 255;
/// Most chunks one item may list (about 30 GiB at the average chunk size).
pub const MAX_CHUNKS_PER_ITEM: usize = 500_000;
/// Most items one index update may carry.
pub const MAX_ITEMS_PER_UPDATE: usize = 5_000;
/// Longest symlink target accepted, in bytes.
pub const MAX_LINK_BYTES: usize = 4096;
/// Most devices one version vector may name.
pub const MAX_VERSION_COUNTERS: usize = 1_000;
/// Longest short device ID an item may name as its modifier.
pub const MAX_DEVICE_SHORT: usize = 16;
/// Largest content a peer may send inline with an item (senders inline far less).
pub const MAX_INLINE_BYTES: usize = 1 << 20;
/// Most items (a folder and everything under it) one folder move may stand for.
pub const MAX_MOVE_ITEMS: u32 = 50_000;
/// Longest record UID accepted, in bytes.
pub const MAX_UID_BYTES: usize = 1024;
/// Largest record accepted from a peer, encoded (a contact with a large photo fits).
pub const MAX_RECORD_BYTES: usize = 4 << 20;
/// Most values one field of a record from a peer may hold.
pub const MAX_RECORD_VALUES: usize = 10_000;
/// Most folder moves one index update may carry.
pub const MAX_MOVES_PER_UPDATE: usize = 64;

/// Why something from a peer was refused. Nothing of a refused item is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("path {path:?} is not allowed: {reason}")]
    Path { path: String, reason: &'static str },
    #[error("item {path:?}: {reason}")]
    Item { path: String, reason: String },
    #[error(
        "index update for source {source_id:?} has {count} items, more than the limit of {MAX_ITEMS_PER_UPDATE}"
    )]
    TooManyItems { source_id: String, count: usize },
    #[error("folder move {from:?} -> {to:?}: {reason}")]
    Move {
        from: String,
        to: String,
        reason: String,
    },
}

/// A relative item path that is safe to join to a source root: no `..`, no absolute path,
/// no empty or `.` components, no NUL, not the agent's own folder or temp files.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ItemPath(String);

impl ItemPath {
    /// Checks a path from a peer (or anywhere else untrusted).
    ///
    /// # Errors
    /// [`Refused::Path`] naming the path and what is wrong with it.
    pub fn parse(path: &str) -> Result<ItemPath, Refused> {
        let refuse = |reason| {
            Err(Refused::Path {
                path: path.to_owned(),
                reason,
            })
        };
        if path.is_empty() {
            return refuse("it is empty");
        }
        if path.len() > MAX_PATH_BYTES {
            return refuse("it is longer than 4096 bytes");
        }
        if path.contains('\0') {
            return refuse("it contains a NUL byte");
        }
        if path.starts_with('/') {
            return refuse("it is absolute");
        }
        for name in path.split('/') {
            match name {
                "" => return refuse("it has an empty component (leading, trailing or double '/')"),
                "." | ".." => return refuse("it has a '.' or '..' component"),
                _ if name.len() > MAX_NAME_BYTES => {
                    return refuse("a component is longer than 255 bytes");
                }
                _ if name.starts_with(TEMP_PREFIX) => return refuse("it names an agent temp file"),
                _ => {}
            }
        }
        if path == AGENT_DIR || path.starts_with(&format!("{AGENT_DIR}/")) {
            return refuse("it is inside the agent's own folder");
        }
        Ok(ItemPath(path.to_owned()))
    }

    /// Checks a record's key (its UID) from a peer. It is never joined to a path: the record
    /// formats choose their own file names. It must be a short line of text.
    ///
    /// # Errors
    /// [`Refused::Item`] naming the key and what is wrong with it.
    pub fn record_key(uid: &str) -> Result<ItemPath, Refused> {
        let refuse = |reason: &str| {
            Err(Refused::Item {
                path: format!("record {}", uid.chars().take(64).collect::<String>()),
                reason: reason.to_owned(),
            })
        };
        if uid.is_empty() {
            return refuse("its UID is empty");
        }
        if uid.len() > MAX_UID_BYTES {
            return refuse("its UID is longer than 1024 bytes");
        }
        if uid.chars().any(char::is_control) {
            return refuse("its UID has a control character");
        }
        Ok(ItemPath(uid.to_owned()))
    }

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ItemPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A file's part of a peer's item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub meta: Metadata,
    /// Whole-content hash, for a live regular file.
    pub hash: Option<Hash128>,
    pub chunks: Vec<ChunkRef>,
    /// The whole content, sent with the entry (small files only), checked against `hash`.
    pub inline: Option<Bytes>,
}

/// One item's state as a peer announced it, after every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteItem {
    pub path: ItemPath,
    /// `sequence` is the sender's local sequence for this item; `origin` is `None` (a peer
    /// never sends it).
    pub header: Header,
    pub body: Body<RemoteFile>,
}

impl RemoteItem {
    /// The file part; `None` for a record.
    pub fn file(&self) -> Option<&RemoteFile> {
        self.body.file()
    }

    /// Lets go of content that came inline (once it is in a temp file).
    pub fn drop_inline(&mut self) {
        if let Body::File(file) = &mut self.body {
            file.inline = None;
        }
    }

    /// This version as the conflict rule sees it.
    pub fn contender(&self) -> Contender<'_> {
        item::contender(&self.header, self.file().map(|f| &f.meta))
    }

    /// The one decision ([`index::decide`]) on this item against its prior state here.
    pub fn decide(&self, prior: Option<&crate::item::PriorItem>) -> Decision {
        index::decide(
            self.contender(),
            prior.map(crate::item::PriorItem::contender),
        )
    }
}

/// Encodes a version vector.
pub fn version_to_pb(v: &VersionVector) -> pb::Version {
    pb::Version {
        counters: v
            .iter()
            .map(|(id, value)| pb::Counter {
                device: id.0,
                value,
            })
            .collect(),
    }
}

/// Decodes a version vector, refusing duplicates, zeros and oversized vectors.
pub fn version_from_pb(path: &str, v: Option<&pb::Version>) -> Result<VersionVector, Refused> {
    let item = |reason: String| Refused::Item {
        path: path.to_owned(),
        reason,
    };
    let Some(v) = v else {
        return Err(item("it has no version".into()));
    };
    if v.counters.len() > MAX_VERSION_COUNTERS {
        return Err(item(format!(
            "its version names {} devices",
            v.counters.len()
        )));
    }
    let mut pairs: Vec<(u64, u64)> = v.counters.iter().map(|c| (c.device, c.value)).collect();
    pairs.sort_unstable();
    let mut bytes = Vec::with_capacity(pairs.len() * 16);
    for (device, value) in pairs {
        bytes.extend_from_slice(&device.to_be_bytes());
        bytes.extend_from_slice(&value.to_be_bytes());
    }
    let version = VersionVector::decode(&bytes).map_err(|e| item(format!("bad version: {e}")))?;
    if version.is_empty() {
        return Err(item("its version is empty".into()));
    }
    Ok(version)
}

/// Encodes an item for a peer. A record goes with its UID as the key and its universal record
/// (a stored record's place on this device stays here).
pub fn item_to_pb(item: &RemoteItem) -> pb::Item {
    let key = item.path.as_str().to_owned();
    let (key, body) = match &item.body {
        Body::File(file) => (
            pb::item::Key::Path(key),
            pb::item::Body::File(file_body_to_pb(file)),
        ),
        Body::Record(bytes) => (
            pb::item::Key::Uid(key),
            pb::item::Body::Record(
                <pb::StoredRecord as prost::Message>::decode(bytes.as_slice())
                    .ok()
                    .and_then(|s| s.body)
                    .unwrap_or_default(),
            ),
        ),
    };
    pb::Item {
        key: Some(key),
        header: Some(pb::Header {
            version: Some(version_to_pb(&item.header.version)),
            sequence: item.header.sequence,
            deleted: item.header.deleted,
            modified_by: item.header.modified_by.clone().unwrap_or_default(),
        }),
        body: Some(body),
    }
}

fn file_body_to_pb(file: &RemoteFile) -> pb::FileBody {
    pb::FileBody {
        kind: match file.meta.kind {
            ItemKind::File => pb::ItemKind::File,
            ItemKind::Directory => pb::ItemKind::Directory,
            ItemKind::Symlink => pb::ItemKind::Symlink,
        } as i32,
        size: file.meta.size,
        mtime_ns: file.meta.mtime_ns,
        mode: file.meta.mode,
        hash: file.hash.map(|h| h.0.to_vec()).unwrap_or_default(),
        chunks: file
            .chunks
            .iter()
            .map(|c| pb::ChunkInfo {
                hash: c.hash.0.to_vec(),
                len: c.len,
            })
            .collect(),
        symlink_target: file.meta.symlink_target.clone().unwrap_or_default(),
        inline: file.inline.clone().unwrap_or_default(),
    }
}

/// A device short ID a peer may name as an author: it becomes part of a file name (conflict
/// copies), so only a short plain word will do (or nothing).
fn is_short_id(by: &str) -> bool {
    by.len() <= MAX_DEVICE_SHORT && by.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Checks and decodes a record from a peer: its UID, header and record, within bounds. Whether
/// its kind is the one the source keeps is the source's check.
fn record_from_pb(uid: &str, item: &pb::Item) -> Result<RemoteItem, Refused> {
    let path = ItemPath::record_key(uid)?;
    let bad = |reason: String| Refused::Item {
        path: format!("record {}", uid.chars().take(64).collect::<String>()),
        reason,
    };
    let Some(header) = &item.header else {
        return Err(bad("it has no header".into()));
    };
    let Some(pb::item::Body::Record(body)) = &item.body else {
        return Err(bad("a record key with a file body".into()));
    };
    let Some(record) = &body.record else {
        return Err(bad("it has no record".into()));
    };
    let size = prost::Message::encoded_len(body);
    if size > MAX_RECORD_BYTES {
        return Err(bad(format!(
            "{size} bytes is more than the limit for a record"
        )));
    }
    let (record_uid, widest) = match record {
        pb::record_body::Record::Contact(c) => (
            &c.uid,
            [
                c.nicknames.len(),
                c.emails.len(),
                c.phones.len(),
                c.addresses.len(),
                c.notes.len(),
                c.urls.len(),
                c.categories.len(),
                c.raw.len(),
            ]
            .into_iter()
            .max()
            .unwrap_or(0),
        ),
        pb::record_body::Record::Calendar(c) => (
            &c.uid,
            c.components
                .iter()
                .map(|x| {
                    [
                        x.rdates.len(),
                        x.exdates.len(),
                        x.attendees.len(),
                        x.raw.len(),
                    ]
                    .into_iter()
                    .max()
                    .unwrap_or(0)
                })
                .chain([c.components.len(), c.timezones.len()])
                .max()
                .unwrap_or(0),
        ),
    };
    if record_uid != uid {
        return Err(bad(format!(
            "its record's UID is {record_uid:?}, not its key"
        )));
    }
    if widest > MAX_RECORD_VALUES {
        return Err(bad(format!(
            "a field holds {widest} values, more than the limit"
        )));
    }
    let version = version_from_pb(uid, header.version.as_ref())?;
    if !header.modified_by.is_empty() && !is_short_id(&header.modified_by) {
        return Err(bad("its author is not a short device ID".into()));
    }
    let stored = pb::StoredRecord {
        body: Some(body.clone()),
        ..pb::StoredRecord::default()
    };
    Ok(RemoteItem {
        path,
        header: Header {
            version,
            sequence: header.sequence,
            deleted: header.deleted,
            origin: None,
            modified_by: (!header.modified_by.is_empty()).then(|| header.modified_by.clone()),
        },
        body: Body::Record(prost::Message::encode_to_vec(&stored)),
    })
}

/// Checks and decodes one item from a peer.
///
/// # Errors
/// [`Refused`] naming the item and what is wrong; nothing of it may be used.
pub fn item_from_pb(item: &pb::Item) -> Result<RemoteItem, Refused> {
    let key = match &item.key {
        Some(pb::item::Key::Path(path)) => path,
        Some(pb::item::Key::Uid(uid)) => return record_from_pb(uid, item),
        None => {
            return Err(Refused::Item {
                path: String::new(),
                reason: "an item with no key".into(),
            });
        }
    };
    let path = ItemPath::parse(key)?;
    let bad = |reason: String| Refused::Item {
        path: key.clone(),
        reason,
    };
    let Some(header) = &item.header else {
        return Err(bad("it has no header".into()));
    };
    let Some(pb::item::Body::File(body)) = &item.body else {
        return Err(bad("it has no file body".into()));
    };
    let kind = match pb::ItemKind::try_from(body.kind) {
        Ok(pb::ItemKind::File) => ItemKind::File,
        Ok(pb::ItemKind::Directory) => ItemKind::Directory,
        Ok(pb::ItemKind::Symlink) => ItemKind::Symlink,
        Err(_) => return Err(bad(format!("unknown kind {}", body.kind))),
    };
    let version = version_from_pb(key, header.version.as_ref())?;
    if body.mode > 0o7777 {
        return Err(bad(format!(
            "mode {:o} has bits beyond permissions",
            body.mode
        )));
    }
    let mut hash = None;
    let mut chunks = Vec::new();
    let mut inline = None;
    let symlink_target = match kind {
        ItemKind::Symlink if !header.deleted => {
            let t = &body.symlink_target;
            if t.is_empty() || t.len() > MAX_LINK_BYTES || t.contains('\0') {
                return Err(bad(
                    "symlink target is empty, too long or has a NUL byte".into()
                ));
            }
            Some(t.clone())
        }
        _ => None,
    };
    if kind == ItemKind::File && !header.deleted {
        if body.inline.len() > MAX_INLINE_BYTES {
            return Err(bad(format!(
                "{} bytes of inline content is more than the limit",
                body.inline.len()
            )));
        }
        hash = Some(
            Hash128::from_slice(&body.hash)
                .ok_or_else(|| bad("content hash is not 16 bytes".into()))?,
        );
        if body.chunks.len() > MAX_CHUNKS_PER_ITEM {
            return Err(bad(format!(
                "{} chunks is more than the limit",
                body.chunks.len()
            )));
        }
        let mut offset: u64 = 0;
        chunks.reserve(body.chunks.len());
        for (i, c) in body.chunks.iter().enumerate() {
            let h = Hash128::from_slice(&c.hash)
                .ok_or_else(|| bad(format!("chunk {i} hash is not 16 bytes")))?;
            if c.len == 0 || c.len > MAX_CHUNK_SIZE {
                return Err(bad(format!("chunk {i} has length {}", c.len)));
            }
            chunks.push(ChunkRef {
                offset,
                len: c.len,
                hash: h,
            });
            offset += u64::from(c.len);
        }
        if offset != body.size {
            return Err(bad(format!(
                "chunks add up to {offset} bytes but the size is {}",
                body.size
            )));
        }
        if !body.inline.is_empty() {
            // Checked here, so nothing past this point ever holds content that is not what
            // the entry says.
            let fits = u64::try_from(body.inline.len()).is_ok_and(|n| n == body.size);
            if !fits || hash != Some(Hash128::of(&body.inline)) {
                return Err(bad(
                    "its inline content does not match its size and hash".into()
                ));
            }
            inline = Some(body.inline.clone());
        }
    } else if !body.chunks.is_empty()
        || !body.inline.is_empty()
        || (body.size != 0 && kind != ItemKind::File)
    {
        return Err(bad("only a live file may carry content".into()));
    }
    let by = &header.modified_by;
    if !is_short_id(by) {
        return Err(bad(
            "the modifying device's short ID is not a short alphanumeric word".into(),
        ));
    }
    Ok(RemoteItem {
        path,
        header: Header {
            version,
            sequence: header.sequence,
            deleted: header.deleted,
            origin: None,
            modified_by: (!by.is_empty()).then(|| by.clone()),
        },
        body: Body::File(RemoteFile {
            meta: Metadata {
                kind,
                size: if header.deleted { 0 } else { body.size },
                mtime_ns: body.mtime_ns,
                inode: 0,
                mode: body.mode,
                symlink_target,
            },
            hash,
            chunks,
            inline,
        }),
    })
}

/// A folder renamed whole on the sender, announced instead of its entries: the deletions of
/// `items` items at and under `from` and their additions under `to`, numbered
/// `first_sequence..=last_sequence` there. The receiver derives them (see `moves`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderMove {
    pub from: ItemPath,
    pub to: ItemPath,
    pub first_sequence: u64,
    pub last_sequence: u64,
    pub items: u32,
    /// Of the entries the move stands for, as `moves::digest` puts them.
    pub digest: Hash128,
    /// The folder's own metadata under its new name (a rename may change its mtime).
    pub folder: Metadata,
    /// The device whose counter each derived version bumps.
    pub author: index::ShortId,
    /// Short ID of that device, as its entries name it (empty if they name none).
    pub modified_by: String,
}

/// Encodes a folder move for a peer.
pub fn move_to_pb(mv: &FolderMove) -> pb::FolderMove {
    let folder = RemoteFile {
        meta: mv.folder.clone(),
        hash: None,
        chunks: Vec::new(),
        inline: None,
    };
    pb::FolderMove {
        from: mv.from.as_str().to_owned(),
        to: mv.to.as_str().to_owned(),
        first_sequence: mv.first_sequence,
        last_sequence: mv.last_sequence,
        items: mv.items,
        digest: mv.digest.0.to_vec(),
        folder: Some(file_body_to_pb(&folder)),
        author: mv.author.0,
        modified_by: mv.modified_by.clone(),
    }
}

/// Checks and decodes a folder move from a peer.
///
/// # Errors
/// [`Refused`] naming the move and what is wrong with it; nothing of it may be used.
pub fn move_from_pb(m: &pb::FolderMove) -> Result<FolderMove, Refused> {
    let from = ItemPath::parse(&m.from)?;
    let to = ItemPath::parse(&m.to)?;
    let bad = |reason: String| Refused::Move {
        from: m.from.clone(),
        to: m.to.clone(),
        reason,
    };
    let nested = |a: &str, b: &str| a == b || crate::layout::is_under(a, b);
    if nested(&m.from, &m.to) || nested(&m.to, &m.from) {
        return Err(bad("a folder cannot move onto or into itself".into()));
    }
    if m.items == 0 || m.items > MAX_MOVE_ITEMS {
        return Err(bad(format!(
            "it moves {} items; a move holds 1 to {MAX_MOVE_ITEMS}",
            m.items
        )));
    }
    let span = m
        .last_sequence
        .checked_sub(m.first_sequence)
        .and_then(|d| d.checked_add(1));
    if m.first_sequence == 0 || span != Some(2 * u64::from(m.items)) {
        return Err(bad(format!(
            "sequences {}..={} do not number {} deletions and as many additions",
            m.first_sequence, m.last_sequence, m.items
        )));
    }
    let digest =
        Hash128::from_slice(&m.digest).ok_or_else(|| bad("its digest is not 16 bytes".into()))?;
    let Some(body) = &m.folder else {
        return Err(bad("it has no folder metadata".into()));
    };
    if body.kind != pb::ItemKind::Directory as i32 {
        return Err(bad("what it moves is not a folder".into()));
    }
    if body.mode > 0o7777 || body.size != 0 || !body.chunks.is_empty() || !body.inline.is_empty() {
        return Err(bad("its folder metadata is not a folder's".into()));
    }
    let by = &m.modified_by;
    if !is_short_id(by) {
        return Err(bad(
            "the modifying device's short ID is not a short alphanumeric word".into(),
        ));
    }
    Ok(FolderMove {
        from,
        to,
        first_sequence: m.first_sequence,
        last_sequence: m.last_sequence,
        items: m.items,
        digest,
        folder: Metadata {
            kind: ItemKind::Directory,
            size: 0,
            mtime_ns: body.mtime_ns,
            inode: 0,
            mode: body.mode,
            symlink_target: None,
        },
        author: index::ShortId(m.author),
        modified_by: by.clone(),
    })
}

/// Checks and decodes an update's folder moves; refuses them all if there are too many.
pub fn moves_from_pb(msg: &pb::IndexUpdate) -> Result<Vec<Result<FolderMove, Refused>>, Refused> {
    if msg.moves.len() > MAX_MOVES_PER_UPDATE {
        return Err(Refused::Item {
            path: format!("index update for source {:?}", msg.source),
            reason: format!(
                "{} folder moves, more than the limit of {MAX_MOVES_PER_UPDATE}",
                msg.moves.len()
            ),
        });
    }
    Ok(msg.moves.iter().map(move_from_pb).collect())
}

/// Checks and decodes a whole index update; refuses it whole if it is oversized, and
/// reports bad items one by one so the good ones still apply.
pub fn update_from_pb(msg: &pb::IndexUpdate) -> Result<Vec<Result<RemoteItem, Refused>>, Refused> {
    if msg.items.len() > MAX_ITEMS_PER_UPDATE {
        return Err(Refused::TooManyItems {
            source_id: msg.source.clone(),
            count: msg.items.len(),
        });
    }
    Ok(msg.items.iter().map(item_from_pb).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::index::ShortId;
    use proptest::prelude::*;

    fn check_path(path: &str, expect: Result<(), &str>) {
        match (ItemPath::parse(path), expect) {
            (Ok(p), Ok(())) => assert_eq!(p.as_str(), path),
            (Err(Refused::Path { reason, .. }), Err(want)) => {
                assert!(
                    reason.contains(want),
                    "{path:?}: {reason:?} should mention {want:?}"
                )
            }
            (got, want) => panic!("{path:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn paths_from_peers_are_checked() {
        check_path("a/b c/ü.txt", Ok(()));
        check_path("name\nwith newline", Ok(()));
        check_path(".tandemx", Ok(()));
        check_path("", Err("empty"));
        check_path("/etc/passwd", Err("absolute"));
        check_path("../x", Err("'..'"));
        check_path("a/../../x", Err("'..'"));
        check_path("a/./b", Err("'.'"));
        check_path("a//b", Err("empty component"));
        check_path("a/", Err("empty component"));
        check_path("a\0b", Err("NUL"));
        check_path(".tandem", Err("agent's own folder"));
        check_path(".tandem/db", Err("agent's own folder"));
        check_path("d/.tandem-tmp-1", Err("temp file"));
        check_path(&"x".repeat(256), Err("255"));
        check_path(&"a/".repeat(2100), Err("4096"));
    }

    fn file_item() -> RemoteItem {
        let mut version = VersionVector::new();
        version.bump(ShortId(42));
        RemoteItem {
            path: ItemPath::parse("docs/a.txt").unwrap(),
            header: Header {
                version,
                sequence: 9,
                deleted: false,
                origin: None,
                modified_by: Some("ABCDEFG".into()),
            },
            body: Body::File(RemoteFile {
                meta: Metadata {
                    kind: ItemKind::File,
                    size: 30,
                    mtime_ns: -5,
                    inode: 0,
                    mode: 0o640,
                    symlink_target: None,
                },
                hash: Some(Hash128([7; 16])),
                chunks: vec![
                    ChunkRef {
                        offset: 0,
                        len: 10,
                        hash: Hash128([1; 16]),
                    },
                    ChunkRef {
                        offset: 10,
                        len: 20,
                        hash: Hash128([2; 16]),
                    },
                ],
                inline: None,
            }),
        }
    }

    type Mutation = Box<dyn Fn(&mut pb::FileBody, &mut pb::Header)>;

    /// Each mutation of `good` is refused, naming the item and what the case expects.
    fn each_is_refused(good: &pb::Item, cases: Vec<(&str, Mutation)>) {
        for (want, mutate) in cases {
            let mut m = good.clone();
            let (Some(pb::item::Body::File(body)), Some(header)) = (&mut m.body, &mut m.header)
            else {
                panic!("a file item has a file body and a header");
            };
            mutate(body, header);
            let err = item_from_pb(&m).unwrap_err().to_string();
            assert!(
                err.contains(want) && err.contains("docs/a.txt"),
                "{want}: {err}"
            );
        }
    }

    /// A small file sent with its content.
    fn inline_item(content: &[u8]) -> RemoteItem {
        let mut item = file_item();
        let Body::File(file) = &mut item.body else {
            unreachable!("a file item")
        };
        file.meta.size = content.len() as u64;
        file.hash = Some(Hash128::of(content));
        file.chunks = vec![ChunkRef {
            offset: 0,
            len: u32::try_from(content.len()).unwrap(),
            hash: Hash128::of(content),
        }];
        file.inline = Some(Bytes::copy_from_slice(content));
        item
    }

    #[test]
    fn inline_content_round_trips_and_must_match_the_entry() {
        let item = inline_item(b"small file content");
        assert_eq!(item_from_pb(&item_to_pb(&item)).unwrap(), item);
        let good = item_to_pb(&item);
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "inline content",
                Box::new(|b, _| {
                    let mut flipped = b.inline.to_vec();
                    flipped[0] ^= 1;
                    b.inline = flipped.into();
                }),
            ),
            (
                "inline content",
                Box::new(|b, _| {
                    let mut longer = b.inline.to_vec();
                    longer.push(0);
                    b.inline = longer.into();
                }),
            ),
            (
                "more than the limit",
                Box::new(|b, _| {
                    b.inline = vec![0; MAX_INLINE_BYTES + 1].into();
                    b.size = b.inline.len() as u64;
                }),
            ),
            (
                "only a live file",
                Box::new(|b, h| {
                    h.deleted = true;
                    b.chunks.clear();
                    b.size = 0;
                }),
            ),
        ];
        each_is_refused(&good, cases);
    }

    #[test]
    fn items_round_trip() {
        let item = file_item();
        assert_eq!(item_from_pb(&item_to_pb(&item)).unwrap(), item);
        let mut link = file_item();
        link.body = Body::File(RemoteFile {
            meta: Metadata {
                kind: ItemKind::Symlink,
                size: 0,
                mtime_ns: 1,
                inode: 0,
                mode: 0o777,
                symlink_target: Some("../elsewhere".into()),
            },
            hash: None,
            chunks: Vec::new(),
            inline: None,
        });
        assert_eq!(item_from_pb(&item_to_pb(&link)).unwrap(), link);
    }

    fn record_item(uid: &str) -> RemoteItem {
        let contact = pb::Contact {
            uid: uid.into(),
            formatted_name: Some(pb::Text {
                value: "Ana Lima".into(),
                ..pb::Text::default()
            }),
            ..pb::Contact::default()
        };
        let stored = pb::StoredRecord {
            body: Some(pb::RecordBody {
                record: Some(pb::record_body::Record::Contact(contact)),
            }),
            ..pb::StoredRecord::default()
        };
        let mut item = file_item();
        item.path = ItemPath::record_key(uid).unwrap();
        item.body = Body::Record(prost::Message::encode_to_vec(&stored));
        item
    }

    #[test]
    fn a_record_goes_by_its_uid_with_its_record_and_never_its_place() {
        let mut record = record_item("ana@example/1");
        let m = item_to_pb(&record);
        assert_eq!(m.key, Some(pb::item::Key::Uid("ana@example/1".into())));
        assert_eq!(item_from_pb(&m).unwrap(), record);
        // A place on this device stays here.
        if let Body::Record(bytes) = &mut record.body {
            let mut stored =
                <pb::StoredRecord as prost::Message>::decode(bytes.as_slice()).unwrap();
            stored.file = "ana.vcf".into();
            *bytes = prost::Message::encode_to_vec(&stored);
        }
        let back = item_from_pb(&item_to_pb(&record)).unwrap();
        assert_eq!(back, record_item("ana@example/1"));
    }

    #[test]
    fn records_without_a_record_or_with_another_uid_or_too_many_values_are_refused() {
        let good = item_to_pb(&record_item("ana"));
        let mut empty = good.clone();
        empty.body = Some(pb::item::Body::Record(pb::RecordBody { record: None }));
        let mut other_uid = good.clone();
        other_uid.key = Some(pb::item::Key::Uid("bob".into()));
        let mut control = good.clone();
        control.key = Some(pb::item::Key::Uid("a\nb".into()));
        let mut no_uid = good.clone();
        no_uid.key = Some(pb::item::Key::Uid(String::new()));
        let mut wide = good.clone();
        if let Some(pb::item::Body::Record(pb::RecordBody {
            record: Some(pb::record_body::Record::Contact(c)),
        })) = &mut wide.body
        {
            c.emails = vec![pb::Text::default(); MAX_RECORD_VALUES + 1];
        }
        let mut file_body = good.clone();
        file_body.body = item_to_pb(&file_item()).body;
        for (m, want) in [
            (empty, "no record"),
            (other_uid, "not its key"),
            (control, "control character"),
            (no_uid, "empty"),
            (wide, "more than the limit"),
            (file_body, "file body"),
        ] {
            let err = item_from_pb(&m).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn items_without_a_key_header_or_file_body_are_refused() {
        let good = item_to_pb(&file_item());
        let mut no_key = good.clone();
        no_key.key = None;
        let mut no_header = good.clone();
        no_header.header = None;
        let mut no_body = good.clone();
        no_body.body = None;
        for (m, want) in [
            (no_key, "no key"),
            (no_header, "no header"),
            (no_body, "no file body"),
        ] {
            let err = item_from_pb(&m).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn inconsistent_items_are_refused() {
        let good = item_to_pb(&file_item());
        let cases: Vec<(&str, Mutation)> = vec![
            ("size", Box::new(|b, _| b.size += 1)),
            ("16 bytes", Box::new(|b, _| b.hash.truncate(3))),
            ("chunk 1 hash", Box::new(|b, _| b.chunks[1].hash.push(0))),
            ("length 0", Box::new(|b, _| b.chunks[0].len = 0)),
            ("no version", Box::new(|_, h| h.version = None)),
            (
                "empty",
                Box::new(|_, h| h.version = Some(pb::Version::default())),
            ),
            ("unknown kind", Box::new(|b, _| b.kind = 9)),
            ("mode", Box::new(|b, _| b.mode = 0o170000)),
            (
                "only a live file",
                Box::new(|b, _| b.kind = pb::ItemKind::Directory as i32),
            ),
            (
                "twice",
                Box::new(|_, h| {
                    let c = h.version.as_ref().unwrap().counters[0];
                    h.version.as_mut().unwrap().counters.push(c);
                }),
            ),
            ("short ID", Box::new(|_, h| h.modified_by = "../x".into())),
            ("short ID", Box::new(|_, h| h.modified_by = "A".repeat(17))),
        ];
        each_is_refused(&good, cases);
    }

    #[test]
    fn oversized_updates_are_refused_whole() {
        let update = pb::IndexUpdate {
            source: "s".into(),
            items: vec![pb::Item::default(); MAX_ITEMS_PER_UPDATE + 1],
            caught_up: false,
            through_sequence: 0,
            ..Default::default()
        };
        assert!(matches!(
            update_from_pb(&update),
            Err(Refused::TooManyItems { .. })
        ));
        let mut bad = item_to_pb(&file_item());
        bad.key = Some(pb::item::Key::Path("../escape".into()));
        let update = pb::IndexUpdate {
            source: "s".into(),
            items: vec![item_to_pb(&file_item()), bad],
            caught_up: true,
            through_sequence: 0,
            ..Default::default()
        };
        let results = update_from_pb(&update).unwrap();
        assert!(
            results[0].is_ok() && results[1].is_err(),
            "one bad item does not spoil the rest"
        );
    }

    proptest! {
        #[test]
        fn parsed_paths_never_escape(path in "[a-z./\\\\]{0,12}") {
            if let Ok(p) = ItemPath::parse(&path) {
                let joined = std::path::Path::new("/root").join(p.as_str());
                prop_assert!(joined.starts_with("/root"));
                prop_assert!(joined.components().all(|c| matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_))));
            }
        }
    }
}
