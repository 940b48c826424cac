//! Typed SQL for the store thread. Every function takes the connection the thread owns.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Error, Result, UNINDEXED_MAX, indexed_by_chunk};
use crate::chunker::{self, Hash128};
use crate::index::VersionVector;
use crate::item::{
    Body, Content, Difference, FileChange, Header, ItemKind, Metadata, PathRange, PriorFile,
    PriorItem,
};

/// A source as recorded in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRow {
    pub id: String,
    /// The source's local folder, as the user gave it (absolute).
    pub path: String,
    pub format: String,
    pub paused: bool,
    /// Highest local sequence given so far.
    pub sequence: u64,
    pub created_unix_ms: u64,
    /// Device IDs the source is shared with.
    pub peers: Vec<String>,
}

/// A device this device talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRow {
    /// The peer's device ID, in its canonical grouped form.
    pub device_id: String,
    /// host:port to dial, if known.
    pub address: Option<String>,
    pub added_unix_ms: u64,
}

/// Which batches of the apply journal a commit settles: those whose writes it records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settles {
    /// None (a scan's commit).
    Nothing,
    /// These batches, each numbered by [`record_intents`].
    Batches(Vec<u64>),
    /// Every batch of the source (recovery at start, which has looked at them all).
    All,
}

/// Live (not deleted) items of a source, by kind, and its local sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub sequence: u64,
}

fn sql(doing: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::Sqlite {
        doing,
        reason: e.to_string(),
    }
}

// SQLite integers are signed 64-bit; sizes, inodes and sequences beyond i64::MAX cannot occur
// on real filesystems, so they are clamped rather than wrapped into negative numbers.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn add_source(c: &mut Connection, row: &SourceRow) -> Result<()> {
    let tx = c.transaction().map_err(sql("adding a source"))?;
    let exists: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sources WHERE id = ?1)",
            [&row.id],
            |r| r.get(0),
        )
        .map_err(sql("adding a source"))?;
    if exists {
        return Err(Error::SourceExists(row.id.clone()));
    }
    tx.execute(
        "INSERT INTO sources (id, path, format, paused, sequence, created_unix_ms)
         VALUES (?1, ?2, ?3, ?4, 0, ?5)",
        params![
            row.id,
            row.path,
            row.format,
            row.paused,
            to_i64(row.created_unix_ms)
        ],
    )
    .map_err(sql("adding a source"))?;
    for peer in &row.peers {
        tx.execute(
            "INSERT OR IGNORE INTO source_peers (source_id, device_id) VALUES (?1, ?2)",
            params![row.id, peer],
        )
        .map_err(sql("adding a source's peers"))?;
    }
    tx.commit().map_err(sql("adding a source"))
}

pub(super) fn remove_source(c: &mut Connection, id: &str) -> Result<()> {
    let n = c
        .execute("DELETE FROM sources WHERE id = ?1", [id])
        .map_err(sql("removing a source"))?;
    if n == 0 {
        return Err(Error::UnknownSource(id.to_owned()));
    }
    Ok(())
}

pub(super) fn set_paused(c: &mut Connection, id: &str, paused: bool) -> Result<()> {
    let n = c
        .execute(
            "UPDATE sources SET paused = ?2 WHERE id = ?1",
            params![id, paused],
        )
        .map_err(sql("pausing a source"))?;
    if n == 0 {
        return Err(Error::UnknownSource(id.to_owned()));
    }
    Ok(())
}

pub(super) fn sources(c: &mut Connection) -> Result<Vec<SourceRow>> {
    let err = sql("listing sources");
    let mut stmt = c
        .prepare_cached(
            "SELECT id, path, format, paused, sequence, created_unix_ms FROM sources ORDER BY id",
        )
        .map_err(&err)?;
    let mut rows = stmt
        .query_map([], |r| {
            Ok(SourceRow {
                id: r.get(0)?,
                path: r.get(1)?,
                format: r.get(2)?,
                paused: r.get(3)?,
                sequence: to_u64(r.get(4)?),
                created_unix_ms: to_u64(r.get(5)?),
                peers: Vec::new(),
            })
        })
        .map_err(&err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(&err)?;
    let mut peers = c
        .prepare_cached(
            "SELECT device_id FROM source_peers WHERE source_id = ?1 ORDER BY device_id",
        )
        .map_err(&err)?;
    for row in &mut rows {
        row.peers = peers
            .query_map([&row.id], |r| r.get(0))
            .map_err(&err)?
            .collect::<rusqlite::Result<Vec<String>>>()
            .map_err(&err)?;
    }
    Ok(rows)
}

const ITEM_COLUMNS: &str = "key, kind, size, mtime_ns, inode, mode, version, sequence, hash, symlink_target, deleted, \
     modified_by, origin, record";

type RawItem = (
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    Vec<u8>,
    i64,
    Option<Vec<u8>>,
    Option<String>,
    bool,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
);

fn raw_item(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawItem> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
        r.get(13)?,
    ))
}

fn decode_item(source_id: &str, raw: RawItem) -> Result<PriorItem> {
    let (
        key,
        kind,
        size,
        mtime_ns,
        inode,
        mode,
        version,
        sequence,
        hash,
        target,
        deleted,
        by,
        origin,
        record,
    ) = raw;
    let corrupt = |reason: String| Error::Corrupt {
        source_id: source_id.to_owned(),
        path: key.clone(),
        reason,
    };
    let version = VersionVector::decode(&version).map_err(|e| corrupt(e.to_string()))?;
    // A record is the row whose `record` is set; its file columns hold only placeholders.
    let body = match record {
        Some(record) => Body::Record(record),
        None => {
            let kind =
                ItemKind::from_code(kind).ok_or_else(|| corrupt(format!("unknown kind {kind}")))?;
            let hash = match hash {
                Some(bytes) => Some(
                    Hash128::from_slice(&bytes)
                        .ok_or_else(|| corrupt("hash is not 16 bytes".into()))?,
                ),
                None => None,
            };
            Body::File(PriorFile {
                meta: Metadata {
                    kind,
                    size: to_u64(size),
                    mtime_ns,
                    inode: to_u64(inode),
                    mode: u32::try_from(mode).unwrap_or(0),
                    symlink_target: target,
                },
                hash,
            })
        }
    };
    Ok(PriorItem {
        key,
        header: Header {
            version,
            sequence: to_u64(sequence),
            deleted,
            origin,
            modified_by: by,
        },
        body,
    })
}

/// The file columns of an item or journal row: a record's are placeholders (they are NOT
/// NULL since 0001), and `record` set is what marks the row as a record.
struct FileColumns<'a> {
    kind: i64,
    size: i64,
    mtime_ns: i64,
    inode: i64,
    mode: i64,
    symlink_target: Option<&'a str>,
    record: Option<&'a [u8]>,
}

impl<'a> FileColumns<'a> {
    fn of(body: &'a Body<FileChange>) -> FileColumns<'a> {
        match body {
            Body::File(f) => FileColumns {
                kind: f.meta.kind.code(),
                size: to_i64(f.meta.size),
                mtime_ns: f.meta.mtime_ns,
                inode: to_i64(f.meta.inode),
                mode: i64::from(f.meta.mode),
                symlink_target: f.meta.symlink_target.as_deref(),
                record: None,
            },
            Body::Record(r) => FileColumns {
                kind: ItemKind::File.code(),
                size: 0,
                mtime_ns: 0,
                inode: 0,
                mode: 0,
                symlink_target: None,
                record: Some(r),
            },
        }
    }
}

pub(super) fn prior_items(
    c: &mut Connection,
    source_id: &str,
    under: Option<&[String]>,
) -> Result<Vec<PriorItem>> {
    let err = sql("reading prior state");
    let mut raws = Vec::new();
    match under {
        None => {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {ITEM_COLUMNS} FROM items WHERE source_id = ?1 ORDER BY key"
                ))
                .map_err(&err)?;
            for raw in stmt.query_map([source_id], raw_item).map_err(&err)? {
                raws.push(raw.map_err(&err)?);
            }
        }
        Some(prefixes) if prefixes.iter().any(String::is_empty) => {
            // The root itself: everything.
            return prior_items(c, source_id, None);
        }
        Some(prefixes) => {
            // Two plain index lookups per path: the item itself, then its subtree. Item paths
            // use '/', and '0' is the byte after '/', so [p/, p0) is exactly the subtree under
            // SQLite's binary collation. (One query with an OR of both made SQLite scan the
            // whole source for every path.)
            let mut exact = c
                .prepare_cached(&format!(
                    "SELECT {ITEM_COLUMNS} FROM items WHERE source_id = ?1 AND key = ?2"
                ))
                .map_err(&err)?;
            for prefix in prefixes {
                for raw in exact
                    .query_map(params![source_id, prefix], raw_item)
                    .map_err(&err)?
                {
                    raws.push(raw.map_err(&err)?);
                }
            }
            let mut range = c
                .prepare_cached(&format!(
                    "SELECT {ITEM_COLUMNS} FROM items WHERE source_id = ?1 AND key >= ?2 AND key < ?3"
                ))
                .map_err(&err)?;
            for prefix in prefixes {
                let (lo, hi) = (format!("{prefix}/"), format!("{prefix}0"));
                for raw in range
                    .query_map(params![source_id, lo, hi], raw_item)
                    .map_err(&err)?
                {
                    raws.push(raw.map_err(&err)?);
                }
            }
        }
    }
    raws.into_iter()
        .map(|raw| decode_item(source_id, raw))
        .collect()
}

/// Up to `limit` items of `range` whose paths sort after `after`, in path order: one page of a
/// keyset pagination, so a scan holds a page of the prior state at a time, never all of it.
/// Each page is one range lookup on the primary key `(source_id, key)`, however deep into
/// the source it starts.
/// The first page (up to `limit` items) of each range, in one read transaction.
pub(super) fn first_pages(
    c: &mut Connection,
    source_id: &str,
    ranges: &[PathRange],
    limit: usize,
) -> Result<Vec<Vec<PriorItem>>> {
    let err = sql("reading prior state");
    let tx = c.transaction().map_err(&err)?;
    let pages = ranges
        .iter()
        .map(|range| prior_batch(&tx, source_id, range, None, limit))
        .collect::<Result<Vec<_>>>()?;
    tx.finish().map_err(&err)?;
    Ok(pages)
}

pub(super) fn prior_batch(
    c: &Connection,
    source_id: &str,
    range: &PathRange,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<PriorItem>> {
    let err = sql("reading prior state");
    let (low, low_included, high) = match range {
        PathRange::Item(p) => {
            // One item: nothing sorts after it within the range.
            if after.is_some_and(|a| a >= p.as_str()) {
                return Ok(Vec::new());
            }
            return Ok(prior_item(c, source_id, p)?.into_iter().collect());
        }
        PathRange::All => match after {
            Some(a) => (a.to_owned(), false, None),
            None => (String::new(), true, None),
        },
        PathRange::Under(p) => {
            let (first, end) = (format!("{p}/"), format!("{p}0"));
            match after {
                Some(a) if a >= first.as_str() => (a.to_owned(), false, Some(end)),
                _ => (first, true, Some(end)),
            }
        }
    };
    let op = if low_included { ">=" } else { ">" };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut raws = Vec::new();
    match high {
        None => {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {ITEM_COLUMNS} FROM items WHERE source_id = ?1 AND key {op} ?2
                     ORDER BY key LIMIT ?3"
                ))
                .map_err(&err)?;
            for raw in stmt
                .query_map(params![source_id, low, limit], raw_item)
                .map_err(&err)?
            {
                raws.push(raw.map_err(&err)?);
            }
        }
        Some(high) => {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {ITEM_COLUMNS} FROM items WHERE source_id = ?1 AND key {op} ?2
                     AND key < ?3 ORDER BY key LIMIT ?4"
                ))
                .map_err(&err)?;
            for raw in stmt
                .query_map(params![source_id, low, high, limit], raw_item)
                .map_err(&err)?
            {
                raws.push(raw.map_err(&err)?);
            }
        }
    }
    raws.into_iter()
        .map(|raw| decode_item(source_id, raw))
        .collect()
}

/// Most folder moves noted per source: older notes go (their entries still go one by one).
const MOVES_KEPT: i64 = 1000;

pub(super) fn commit(
    c: &mut Connection,
    source_id: &str,
    diffs: &[Difference],
    settles: &Settles,
    moved: Option<(&str, &str, u32)>,
) -> Result<Vec<u64>> {
    let err = sql("committing differences");
    let tx = c.transaction().map_err(&err)?;
    let mut seq = numbered(&tx, source_id)
        .map_err(&err)?
        .ok_or_else(|| Error::UnknownSource(source_id.to_owned()))?;
    let mut seqs = Vec::with_capacity(diffs.len());
    {
        let mut upsert_keep = tx
            .prepare_cached(
                "INSERT INTO items (source_id, key, kind, size, mtime_ns, inode, mode, version,
                                    sequence, hash, chunks, symlink_target, deleted, origin,
                                    modified_by, record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?15, ?16, ?10, ?11, ?12, ?13, ?14)
                 ON CONFLICT (source_id, key) DO UPDATE SET
                    kind = excluded.kind, size = excluded.size, mtime_ns = excluded.mtime_ns,
                    inode = excluded.inode, mode = excluded.mode, version = excluded.version,
                    sequence = excluded.sequence, symlink_target = excluded.symlink_target,
                    deleted = excluded.deleted, origin = excluded.origin,
                    modified_by = excluded.modified_by, record = excluded.record,
                    hash = CASE WHEN ?17 THEN items.hash ELSE excluded.hash END,
                    chunks = CASE WHEN ?17 THEN items.chunks ELSE excluded.chunks END",
            )
            .map_err(&err)?;
        let mut drop_locations = tx
            .prepare_cached("DELETE FROM chunk_locations WHERE source_id = ?1 AND path = ?2")
            .map_err(&err)?;
        let mut add_location = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO chunk_locations (hash, source_id, path, offset, len)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(&err)?;
        for d in diffs {
            seq += 1;
            seqs.push(seq);
            let cols = FileColumns::of(&d.body);
            // A record has no content of a file's kind: none is kept, and no chunk lives in it.
            let content = d.file().map_or(&Content::Empty, |f| &f.content);
            // Hash and chunk list go in with the row (one statement per item, not two).
            let (hash, chunks) = match content {
                Content::Replace { hash, chunks } => (
                    Some(hash.0.to_vec()),
                    Some(chunker::encode_chunk_list(chunks)),
                ),
                Content::Keep | Content::Empty => (None, None),
            };
            upsert_keep
                .execute(params![
                    source_id,
                    d.key,
                    cols.kind,
                    cols.size,
                    cols.mtime_ns,
                    cols.inode,
                    cols.mode,
                    d.header.version.encode(),
                    to_i64(seq),
                    cols.symlink_target,
                    d.header.deleted,
                    d.header.origin,
                    d.header.modified_by,
                    cols.record,
                    hash,
                    chunks,
                    matches!(content, Content::Keep),
                ])
                .map_err(&err)?;
            if let Content::Empty | Content::Replace { .. } = content {
                drop_locations
                    .execute(params![source_id, d.key])
                    .map_err(&err)?;
            }
            // (The old locations go all the same: the item may have been larger before.)
            let indexed = indexed_by_chunk(to_u64(cols.size));
            if let (true, Content::Replace { chunks, .. }) = (indexed, content) {
                for ch in chunks {
                    add_location
                        .execute(params![
                            ch.hash.0.as_slice(),
                            source_id,
                            d.key,
                            to_i64(ch.offset),
                            i64::from(ch.len)
                        ])
                        .map_err(&err)?;
                }
            }
        }
    }
    tx.execute(
        "UPDATE sources SET sequence = ?2 WHERE id = ?1",
        params![source_id, to_i64(seq)],
    )
    .map_err(&err)?;
    if let (Some((from, to, items)), Some(first), Some(last)) = (moved, seqs.first(), seqs.last()) {
        tx.execute(
            "INSERT INTO folder_moves (source_id, first_sequence, last_sequence, from_key,
                                       to_key, items)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![source_id, to_i64(*first), to_i64(*last), from, to, items],
        )
        .map_err(&err)?;
        tx.execute(
            "DELETE FROM folder_moves WHERE source_id = ?1 AND first_sequence <
                (SELECT first_sequence FROM folder_moves WHERE source_id = ?1
                 ORDER BY first_sequence DESC LIMIT 1 OFFSET ?2)",
            params![source_id, MOVES_KEPT - 1],
        )
        .map_err(&err)?;
    }
    // Every write the settled batches announced is either recorded by this transaction or
    // never happened.
    match settles {
        Settles::Nothing => {}
        Settles::Batches(batches) => {
            let mut clear = tx
                .prepare_cached("DELETE FROM apply_intents WHERE source_id = ?1 AND batch = ?2")
                .map_err(&err)?;
            for batch in batches {
                clear
                    .execute(params![source_id, to_i64(*batch)])
                    .map_err(&err)?;
            }
        }
        Settles::All => {
            tx.execute(
                "DELETE FROM apply_intents WHERE source_id = ?1",
                [source_id],
            )
            .map_err(&err)?;
        }
    }
    tx.commit().map_err(&err)?;
    Ok(seqs)
}

pub(super) fn record_intents(
    c: &mut Connection,
    source_id: &str,
    intents: &[Difference],
) -> Result<u64> {
    let err = sql("recording the apply journal");
    let tx = c.transaction().map_err(&err)?;
    // Above every batch still journaled, a crash's included, so no commit clears another's.
    let batch: i64 = tx
        .prepare_cached(
            "SELECT COALESCE(MAX(batch), 0) + 1 FROM apply_intents WHERE source_id = ?1",
        )
        .map_err(&err)?
        .query_row([source_id], |r| r.get(0))
        .map_err(&err)?;
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO apply_intents (source_id, key, kind, size, mtime_ns,
                    mode, version, hash, chunks, symlink_target, deleted, origin, modified_by,
                    record, batch)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )
            .map_err(&err)?;
        for d in intents {
            let (hash, chunks) = match d.file().map(|f| &f.content) {
                Some(Content::Replace { hash, chunks }) => (
                    Some(hash.0.to_vec()),
                    Some(chunker::encode_chunk_list(chunks)),
                ),
                Some(Content::Keep | Content::Empty) | None => (None, None),
            };
            let cols = FileColumns::of(&d.body);
            insert
                .execute(params![
                    source_id,
                    d.key,
                    cols.kind,
                    cols.size,
                    cols.mtime_ns,
                    cols.mode,
                    d.header.version.encode(),
                    hash,
                    chunks,
                    cols.symlink_target,
                    d.header.deleted,
                    d.header.origin,
                    d.header.modified_by,
                    cols.record,
                    batch,
                ])
                .map_err(&err)?;
        }
    }
    tx.commit().map_err(&err)?;
    Ok(to_u64(batch))
}

type RawIntent = (
    String,
    i64,
    i64,
    i64,
    i64,
    Vec<u8>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<String>,
    bool,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
);

pub(super) fn intents(c: &mut Connection, source_id: &str) -> Result<Vec<Difference>> {
    let err = sql("reading the apply journal");
    let mut stmt = c
        .prepare_cached(
            "SELECT key, kind, size, mtime_ns, mode, version, hash, chunks, symlink_target,
                    deleted, origin, modified_by, record
             FROM apply_intents WHERE source_id = ?1 ORDER BY key",
        )
        .map_err(&err)?;
    let raws = stmt
        .query_map([source_id], |r| -> rusqlite::Result<RawIntent> {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
                r.get(10)?,
                r.get(11)?,
                r.get(12)?,
            ))
        })
        .map_err(&err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(&err)?;
    raws.into_iter()
        .map(|raw| decode_intent(source_id, raw))
        .collect()
}

fn decode_intent(source_id: &str, raw: RawIntent) -> Result<Difference> {
    let (
        key,
        kind,
        size,
        mtime_ns,
        mode,
        version,
        hash,
        chunks,
        target,
        deleted,
        origin,
        by,
        record,
    ) = raw;
    let corrupt = |reason: String| Error::Corrupt {
        source_id: source_id.to_owned(),
        path: key.clone(),
        reason,
    };
    let version = VersionVector::decode(&version).map_err(|e| corrupt(e.to_string()))?;
    let body = match record {
        Some(record) => Body::Record(record),
        None => {
            let kind =
                ItemKind::from_code(kind).ok_or_else(|| corrupt(format!("unknown kind {kind}")))?;
            let content = match (hash, chunks) {
                (Some(hash), Some(chunks)) => Content::Replace {
                    hash: Hash128::from_slice(&hash)
                        .ok_or_else(|| corrupt("hash is not 16 bytes".into()))?,
                    chunks: chunker::decode_chunk_list(&chunks)
                        .map_err(|e| corrupt(e.to_string()))?,
                },
                _ => Content::Empty,
            };
            Body::File(FileChange {
                meta: Metadata {
                    kind,
                    size: to_u64(size),
                    mtime_ns,
                    inode: 0,
                    mode: u32::try_from(mode).unwrap_or(0),
                    symlink_target: target,
                },
                content,
            })
        }
    };
    Ok(Difference {
        key,
        header: Header {
            version,
            // Not recorded in the journal: `commit` gives the next local sequence.
            sequence: 0,
            deleted,
            origin,
            modified_by: by,
        },
        body,
    })
}

/// The last sequence a source numbered; `None` for a source that is not there.
fn numbered(c: &Connection, source_id: &str) -> rusqlite::Result<Option<u64>> {
    c.query_row(
        "SELECT sequence FROM sources WHERE id = ?1",
        [source_id],
        |r| r.get(0),
    )
    .optional()
    .map(|n| n.map(to_u64))
}

pub(super) fn totals(c: &mut Connection, source_id: &str) -> Result<Totals> {
    let err = sql("counting items");
    let sequence = numbered(c, source_id)
        .map_err(&err)?
        .ok_or_else(|| Error::UnknownSource(source_id.to_owned()))?;
    let mut totals = Totals {
        sequence,
        ..Totals::default()
    };
    let mut stmt = c
        .prepare_cached(
            "SELECT kind, COUNT(*), COALESCE(SUM(size), 0) FROM items
             WHERE source_id = ?1 AND deleted = 0 GROUP BY kind",
        )
        .map_err(&err)?;
    let rows = stmt
        .query_map([source_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(&err)?;
    for row in rows {
        let (kind, count, bytes) = row.map_err(&err)?;
        match ItemKind::from_code(kind) {
            Some(ItemKind::File) => {
                totals.files = to_u64(count);
                totals.bytes = to_u64(bytes);
            }
            Some(ItemKind::Directory) => totals.directories = to_u64(count),
            Some(ItemKind::Symlink) => totals.symlinks = to_u64(count),
            None => {}
        }
    }
    Ok(totals)
}

/// Runs upgrade work a migration asked for but SQL alone cannot do.
pub(super) fn run_pending_maintenance(c: &mut Connection) -> Result<()> {
    let err = sql("upgrading the database");
    let pending: bool = c
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM pending_maintenance WHERE task = 'rebuild_chunk_locations')",
            [],
            |r| r.get(0),
        )
        .map_err(&err)?;
    if !pending {
        return Ok(());
    }
    tracing::info!("indexing the chunks of items recorded before the chunk index existed");
    let tx = c.transaction().map_err(&err)?;
    {
        let mut read = tx
            .prepare(
                "SELECT source_id, key, chunks FROM items
                 WHERE chunks IS NOT NULL AND deleted = 0 AND size > ?1",
            )
            .map_err(&err)?;
        let mut add = tx
            .prepare(
                "INSERT OR REPLACE INTO chunk_locations (hash, source_id, path, offset, len)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(&err)?;
        let rows = read
            .query_map([to_i64(UNINDEXED_MAX)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(&err)?;
        for row in rows {
            let (source_id, path, blob) = row.map_err(&err)?;
            // A damaged chunk list is not fatal here: the item is simply not a local chunk
            // source until its next scan rewrites it.
            let Ok(chunks) = chunker::decode_chunk_list(&blob) else {
                tracing::warn!(source = %source_id, item = %path, "unreadable chunk list skipped");
                continue;
            };
            for ch in chunks {
                add.execute(params![
                    ch.hash.0.as_slice(),
                    source_id,
                    path,
                    to_i64(ch.offset),
                    i64::from(ch.len)
                ])
                .map_err(&err)?;
            }
        }
    }
    tx.execute(
        "DELETE FROM pending_maintenance WHERE task = 'rebuild_chunk_locations'",
        [],
    )
    .map_err(&err)?;
    tx.commit().map_err(&err)
}

pub(super) fn add_peer(c: &mut Connection, peer: &PeerRow) -> Result<()> {
    c.execute(
        "INSERT INTO peers (device_id, address, added_unix_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (device_id) DO UPDATE SET address = COALESCE(excluded.address, peers.address)",
        params![peer.device_id, peer.address, to_i64(peer.added_unix_ms)],
    )
    .map_err(sql("adding a peer"))?;
    Ok(())
}

pub(super) fn remove_peer(c: &mut Connection, device_id: &str) -> Result<()> {
    let n = c
        .execute("DELETE FROM peers WHERE device_id = ?1", [device_id])
        .map_err(sql("removing a peer"))?;
    if n == 0 {
        return Err(Error::UnknownPeer(device_id.to_owned()));
    }
    Ok(())
}

pub(super) fn peers(c: &mut Connection) -> Result<Vec<PeerRow>> {
    let err = sql("listing peers");
    let mut stmt = c
        .prepare_cached("SELECT device_id, address, added_unix_ms FROM peers ORDER BY device_id")
        .map_err(&err)?;
    stmt.query_map([], |r| {
        Ok(PeerRow {
            device_id: r.get(0)?,
            address: r.get(1)?,
            added_unix_ms: to_u64(r.get(2)?),
        })
    })
    .map_err(&err)?
    .collect::<rusqlite::Result<Vec<_>>>()
    .map_err(&err)
}

/// One item of a source's index as a peer is sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub item: PriorItem,
    pub chunks: Vec<chunker::ChunkRef>,
}

/// How much of the index one read takes: at most `items` entries, and no more once their
/// estimated size on the wire reaches `bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPage {
    /// Most entries read.
    pub items: usize,
    /// Estimated bytes on the wire after which no more entries are read.
    pub bytes: usize,
    /// Content up to this size is counted in an entry's size (it may travel with it).
    pub with_content_up_to: u64,
    /// Items whose current version came from this device are left out: it has them.
    pub except_from: Option<String>,
    /// Stop before the first folder move noted after `moves_after` (a sequence), and when
    /// nothing comes before it, give the move and its entries ([`IndexRead::at_move`]).
    /// `None`: the peer cannot take moves; every entry goes one by one.
    pub moves_after: Option<u64>,
}

/// A folder move a scan noted: the entries numbered `first_sequence..=last_sequence` are the
/// deletions of `items` items at and under `from` and their additions under `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveNote {
    pub first_sequence: u64,
    pub last_sequence: u64,
    pub from: String,
    pub to: String,
    pub items: u32,
}

/// A noted folder move that comes next in the index, with the current entries of its range
/// (fewer than twice its items, or others, once anything in it changed again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveAt {
    pub note: MoveNote,
    pub entries: Vec<IndexEntry>,
}

/// One read of a source's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRead {
    /// The entries, in sequence order.
    pub entries: Vec<IndexEntry>,
    /// Every sequence up to this one was read or left out on purpose.
    pub through: u64,
    /// The noted folder move that comes next, when no entry comes before it.
    pub at_move: Option<MoveAt>,
}

impl IndexPage {
    /// An entry's estimated size on the wire: its key, header and chunk list, and its content
    /// when that is small enough to go along.
    fn estimate(&self, item: &PriorItem, chunks: usize) -> usize {
        let content = item
            .file()
            .filter(|f| !item.header.deleted && f.meta.kind == ItemKind::File)
            .map(|f| f.meta.size)
            .filter(|size| *size <= self.with_content_up_to)
            .map_or(0, |size| usize::try_from(size).unwrap_or(usize::MAX));
        64 + item.key.len() + chunks * 28 + content
    }
}

/// A place on this device where a chunk's bytes were found at the last scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSource {
    /// The source's folder.
    pub root: String,
    /// Item path of the file holding the chunk.
    pub path: String,
    pub offset: u64,
    pub len: u32,
}

pub(super) fn items_since(
    c: &mut Connection,
    source_id: &str,
    after: u64,
    page: &IndexPage,
) -> Result<IndexRead> {
    let err = sql("reading the index");
    let tx = c.transaction().map_err(&err)?;
    let numbered = numbered(&tx, source_id).map_err(&err)?.unwrap_or(0);
    let next_move = match page.moves_after {
        Some(skip) => next_move(&tx, source_id, after.max(skip))?,
        None => None,
    };
    // Entries before the next move only: the move itself goes as one operation.
    let before = next_move.as_ref().map(|m| m.first_sequence);
    let mut entries = Vec::new();
    let mut full = false;
    {
        let mut stmt = tx
            .prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS}, chunks FROM items
                 WHERE source_id = ?1 AND sequence > ?2 AND (?4 IS NULL OR origin IS NOT ?4)
                   AND (?5 IS NULL OR sequence < ?5)
                 ORDER BY sequence LIMIT ?3"
            ))
            .map_err(&err)?;
        // Rows are stepped one at a time, so those past the page's bytes are never read.
        let rows = stmt
            .query_map(
                params![
                    source_id,
                    to_i64(after),
                    i64::try_from(page.items).unwrap_or(i64::MAX),
                    page.except_from,
                    before.map(to_i64),
                ],
                entry_row,
            )
            .map_err(&err)?;
        let mut bytes = 0usize;
        for row in rows {
            let (raw, chunks) = row.map_err(&err)?;
            let entry = index_entry(source_id, raw, chunks)?;
            bytes += page.estimate(&entry.item, entry.chunks.len());
            entries.push(entry);
            if bytes >= page.bytes {
                full = true;
                break;
            }
        }
    }
    // A page that ended early covers up to its last entry; one that ran out covers every
    // sequence numbered so far (up to the next move), the items left out included.
    let through = if full || entries.len() >= page.items {
        entries.last().map_or(after, |e| e.item.header.sequence)
    } else {
        let end = before.map_or(numbered, |b| numbered.min(b.saturating_sub(1)));
        end.max(after)
    };
    let at_move = match next_move {
        Some(note) if entries.is_empty() && through + 1 >= note.first_sequence => {
            let entries = entries_between(&tx, source_id, note.first_sequence, note.last_sequence)?;
            Some(MoveAt { note, entries })
        }
        _ => None,
    };
    tx.finish().map_err(&err)?;
    Ok(IndexRead {
        entries,
        through,
        at_move,
    })
}

/// The first folder move noted after sequence `after`.
fn next_move(c: &Connection, source_id: &str, after: u64) -> Result<Option<MoveNote>> {
    let err = sql("reading folder moves");
    c.prepare_cached(
        "SELECT first_sequence, last_sequence, from_key, to_key, items FROM folder_moves
         WHERE source_id = ?1 AND first_sequence > ?2 ORDER BY first_sequence LIMIT 1",
    )
    .map_err(&err)?
    .query_row(params![source_id, to_i64(after)], |r| {
        Ok(MoveNote {
            first_sequence: to_u64(r.get(0)?),
            last_sequence: to_u64(r.get(1)?),
            from: r.get(2)?,
            to: r.get(3)?,
            items: u32::try_from(r.get::<_, i64>(4)?).unwrap_or(u32::MAX),
        })
    })
    .optional()
    .map_err(&err)
}

/// The current entries numbered `first..=last` (a folder move's range), in sequence order.
pub(super) fn entries_between(
    c: &Connection,
    source_id: &str,
    first: u64,
    last: u64,
) -> Result<Vec<IndexEntry>> {
    let err = sql("reading a folder move's entries");
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {ITEM_COLUMNS}, chunks FROM items
             WHERE source_id = ?1 AND sequence >= ?2 AND sequence <= ?3 ORDER BY sequence"
        ))
        .map_err(&err)?;
    let rows = stmt
        .query_map(params![source_id, to_i64(first), to_i64(last)], entry_row)
        .map_err(&err)?;
    let mut entries = Vec::new();
    for row in rows {
        let (raw, chunks) = row.map_err(&err)?;
        entries.push(index_entry(source_id, raw, chunks)?);
    }
    Ok(entries)
}

/// A row of `SELECT {ITEM_COLUMNS}, chunks`: the item's columns and its encoded chunk list.
fn entry_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(RawItem, Option<Vec<u8>>)> {
    Ok((raw_item(r)?, r.get(14)?))
}

fn index_entry(source_id: &str, raw: RawItem, chunks: Option<Vec<u8>>) -> Result<IndexEntry> {
    let item = decode_item(source_id, raw)?;
    let chunks = match chunks {
        Some(blob) => chunker::decode_chunk_list(&blob).map_err(|e| Error::Corrupt {
            source_id: source_id.to_owned(),
            path: item.key.clone(),
            reason: e.to_string(),
        })?,
        None => Vec::new(),
    };
    Ok(IndexEntry { item, chunks })
}

/// For each new folder (path, inode): the live recorded folder with that inode under another
/// name, if any (its old name, if it was renamed). One read transaction.
pub(super) fn live_folders_with_inodes(
    c: &mut Connection,
    source_id: &str,
    folders: &[(String, u64)],
) -> Result<Vec<(String, String)>> {
    let err = sql("looking up folders by inode");
    let tx = c.transaction().map_err(&err)?;
    let mut found = Vec::new();
    {
        let mut stmt = tx
            .prepare_cached(
                "SELECT key FROM items
                 WHERE source_id = ?1 AND inode = ?2 AND kind = 1 AND deleted = 0 AND key != ?3
                 LIMIT 1",
            )
            .map_err(&err)?;
        for (path, inode) in folders {
            let old: Option<String> = stmt
                .query_row(params![source_id, to_i64(*inode), path], |r| r.get(0))
                .optional()
                .map_err(&err)?;
            if let Some(old) = old {
                found.push((path.clone(), old));
            }
        }
    }
    tx.finish().map_err(&err)?;
    Ok(found)
}

/// Every item at and under each of `keys`, with its chunk list, in one read transaction.
pub(super) fn subtrees(
    c: &mut Connection,
    source_id: &str,
    keys: &[String],
) -> Result<Vec<Vec<IndexEntry>>> {
    let err = sql("reading prior state");
    let tx = c.transaction().map_err(&err)?;
    let mut trees = Vec::with_capacity(keys.len());
    {
        // Two lookups per key, the item and its subtree [k/, k0): one query with an OR of
        // both made SQLite scan the whole source.
        let mut exact = tx
            .prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS}, chunks FROM items WHERE source_id = ?1 AND key = ?2"
            ))
            .map_err(&err)?;
        let mut under = tx
            .prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS}, chunks FROM items
                 WHERE source_id = ?1 AND key >= ?2 AND key < ?3 ORDER BY key"
            ))
            .map_err(&err)?;
        for key in keys {
            let mut tree = Vec::new();
            for found in exact
                .query_map(params![source_id, key], entry_row)
                .map_err(&err)?
            {
                let (raw, chunks) = found.map_err(&err)?;
                tree.push(index_entry(source_id, raw, chunks)?);
            }
            let (lo, hi) = (format!("{key}/"), format!("{key}0"));
            for found in under
                .query_map(params![source_id, lo, hi], entry_row)
                .map_err(&err)?
            {
                let (raw, chunks) = found.map_err(&err)?;
                tree.push(index_entry(source_id, raw, chunks)?);
            }
            trees.push(tree);
        }
    }
    tx.finish().map_err(&err)?;
    Ok(trees)
}

pub(super) fn chunk_sources(c: &mut Connection, hash: &[u8]) -> Result<Vec<ChunkSource>> {
    let err = sql("looking up a chunk");
    let mut stmt = c
        .prepare_cached(
            "SELECT s.path, l.path, l.offset, l.len FROM chunk_locations l
             JOIN sources s ON s.id = l.source_id WHERE l.hash = ?1 LIMIT 8",
        )
        .map_err(&err)?;
    stmt.query_map([hash], |r| {
        Ok(ChunkSource {
            root: r.get(0)?,
            path: r.get(1)?,
            offset: to_u64(r.get(2)?),
            len: u32::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
        })
    })
    .map_err(&err)?
    .collect::<rusqlite::Result<Vec<_>>>()
    .map_err(&err)
}

/// For each item (its key and chunk hashes): whether every one of its chunks is also held by
/// another item of the same source. One read transaction for the lot.
pub(super) fn held_elsewhere(
    c: &mut Connection,
    source_id: &str,
    items: &[(String, Vec<[u8; 16]>)],
) -> Result<Vec<bool>> {
    let err = sql("looking up chunks");
    let tx = c.transaction().map_err(&err)?;
    let mut found = Vec::with_capacity(items.len());
    {
        let mut stmt = tx
            .prepare_cached(
                "SELECT 1 FROM chunk_locations
                 WHERE hash = ?1 AND source_id = ?2 AND path != ?3 LIMIT 1",
            )
            .map_err(&err)?;
        for (key, hashes) in items {
            let mut all = !hashes.is_empty();
            for hash in hashes {
                if !stmt
                    .exists(params![hash.as_slice(), source_id, key])
                    .map_err(&err)?
                {
                    all = false;
                    break;
                }
            }
            found.push(all);
        }
    }
    tx.finish().map_err(&err)?;
    Ok(found)
}

pub(super) fn prior_item(c: &Connection, source_id: &str, path: &str) -> Result<Option<PriorItem>> {
    let err = sql("reading prior state");
    let raw = c
        .prepare_cached(&format!(
            "SELECT {ITEM_COLUMNS} FROM items WHERE source_id = ?1 AND key = ?2"
        ))
        .map_err(&err)?
        .query_row(params![source_id, path], raw_item)
        .optional()
        .map_err(&err)?;
    raw.map(|raw| decode_item(source_id, raw)).transpose()
}

/// The prior state of several items, in one read transaction: outside one, every query
/// would take and drop the database's read lock on its own.
pub(super) fn prior_items_at(
    c: &mut Connection,
    source_id: &str,
    paths: &[String],
) -> Result<Vec<Option<PriorItem>>> {
    let err = sql("reading prior state");
    let tx = c.transaction().map_err(&err)?;
    let found = paths
        .iter()
        .map(|path| prior_item(&tx, source_id, path))
        .collect::<Result<Vec<_>>>()?;
    tx.finish().map_err(&err)?;
    Ok(found)
}

pub(super) fn live_keys_containing(
    c: &mut Connection,
    source_id: &str,
    part: &str,
) -> Result<Vec<String>> {
    let err = sql("listing items by name");
    // instr, not LIKE: the part is the caller's text, with no wildcards to escape.
    let mut stmt = c
        .prepare_cached(
            "SELECT key FROM items WHERE source_id = ?1 AND deleted = 0
             AND instr(key, ?2) > 0 ORDER BY key",
        )
        .map_err(&err)?;
    stmt.query_map(params![source_id, part], |r| r.get(0))
        .map_err(&err)?
        .collect::<rusqlite::Result<Vec<String>>>()
        .map_err(&err)
}

pub(super) fn cursor(c: &mut Connection, device_id: &str, source_id: &str) -> Result<u64> {
    let v: Option<i64> = c
        .query_row(
            "SELECT sequence FROM peer_cursors WHERE device_id = ?1 AND source_id = ?2",
            params![device_id, source_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql("reading a cursor"))?;
    Ok(v.map(to_u64).unwrap_or(0))
}

pub(super) fn set_cursor(
    c: &mut Connection,
    device_id: &str,
    source_id: &str,
    seq: u64,
) -> Result<()> {
    c.execute(
        "INSERT INTO peer_cursors (device_id, source_id, sequence) VALUES (?1, ?2, ?3)
         ON CONFLICT (device_id, source_id) DO UPDATE SET sequence = excluded.sequence",
        params![device_id, source_id, to_i64(seq)],
    )
    .map_err(sql("saving a cursor"))?;
    Ok(())
}

/// Replaces the stored body of live records in place, keeping their version and sequence:
/// where a record lies on this device changed (a renamed file, a file's other line ends), not
/// what it holds, so peers need not hear of it.
pub(super) fn set_record_places(
    c: &mut Connection,
    source_id: &str,
    places: &[(String, Vec<u8>)],
) -> Result<()> {
    let err = sql("recording where records lie");
    let tx = c.transaction().map_err(&err)?;
    {
        let mut stmt = tx
            .prepare_cached(
                "UPDATE items SET record = ?3
                 WHERE source_id = ?1 AND key = ?2 AND deleted = 0 AND record IS NOT NULL",
            )
            .map_err(&err)?;
        for (key, record) in places {
            stmt.execute(params![source_id, key, record])
                .map_err(&err)?;
        }
    }
    tx.commit().map_err(&err)?;
    Ok(())
}

/// A hub this device uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRow {
    pub device_id: String,
    /// host:port to dial.
    pub address: String,
    pub added_unix_ms: u64,
}

pub(super) fn add_hub(c: &mut Connection, hub: &HubRow) -> Result<()> {
    c.execute(
        "INSERT INTO hubs (device_id, address, added_unix_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (device_id) DO UPDATE SET address = excluded.address",
        params![hub.device_id, hub.address, to_i64(hub.added_unix_ms)],
    )
    .map_err(sql("adding a hub"))?;
    Ok(())
}

pub(super) fn remove_hub(c: &mut Connection, device_id: &str) -> Result<bool> {
    let n = c
        .execute("DELETE FROM hubs WHERE device_id = ?1", [device_id])
        .map_err(sql("removing a hub"))?;
    Ok(n > 0)
}

pub(super) fn hubs(c: &mut Connection) -> Result<Vec<HubRow>> {
    let err = sql("listing hubs");
    let mut stmt = c
        .prepare_cached("SELECT device_id, address, added_unix_ms FROM hubs ORDER BY device_id")
        .map_err(&err)?;
    stmt.query_map([], |r| {
        Ok(HubRow {
            device_id: r.get(0)?,
            address: r.get(1)?,
            added_unix_ms: to_u64(r.get(2)?),
        })
    })
    .map_err(&err)?
    .collect::<rusqlite::Result<Vec<_>>>()
    .map_err(&err)
}

pub(super) fn add_source_key(
    c: &mut Connection,
    source_id: &str,
    generation: u32,
    key: &[u8],
) -> Result<()> {
    c.execute(
        "INSERT INTO source_keys (source_id, generation, key) VALUES (?1, ?2, ?3)
         ON CONFLICT (source_id, generation) DO NOTHING",
        params![source_id, i64::from(generation), key],
    )
    .map_err(sql("keeping a source key"))?;
    Ok(())
}

/// A source's keys, oldest generation first.
pub(super) fn source_keys(c: &mut Connection, source_id: &str) -> Result<Vec<(u32, Vec<u8>)>> {
    let err = sql("reading a source's keys");
    let mut stmt = c
        .prepare_cached(
            "SELECT generation, key FROM source_keys WHERE source_id = ?1 ORDER BY generation",
        )
        .map_err(&err)?;
    stmt.query_map([source_id], |r| {
        let generation: i64 = r.get(0)?;
        Ok((u32::try_from(generation).unwrap_or(0), r.get(1)?))
    })
    .map_err(&err)?
    .collect::<rusqlite::Result<Vec<_>>>()
    .map_err(&err)
}

pub(super) fn hub_uploaded(c: &mut Connection, hub_id: &str, source_id: &str) -> Result<u64> {
    let v: Option<i64> = c
        .query_row(
            "SELECT sequence FROM hub_uploads WHERE hub_id = ?1 AND source_id = ?2",
            params![hub_id, source_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql("reading how far a hub has this device's index"))?;
    Ok(v.map(to_u64).unwrap_or(0))
}

pub(super) fn set_hub_uploaded(
    c: &mut Connection,
    hub_id: &str,
    source_id: &str,
    seq: u64,
) -> Result<()> {
    c.execute(
        "INSERT INTO hub_uploads (hub_id, source_id, sequence) VALUES (?1, ?2, ?3)
         ON CONFLICT (hub_id, source_id) DO UPDATE SET sequence = excluded.sequence",
        params![hub_id, source_id, to_i64(seq)],
    )
    .map_err(sql("saving how far a hub has this device's index"))?;
    Ok(())
}

/// Puts `key` as the source's key of `generation`, replacing one of that generation, and
/// forgets how far each hub has the source (a new key is a new space there).
pub(super) fn replace_source_key(
    c: &mut Connection,
    source_id: &str,
    generation: u32,
    key: &[u8],
) -> Result<()> {
    let tx = c.transaction().map_err(sql("replacing a source key"))?;
    tx.execute(
        "INSERT INTO source_keys (source_id, generation, key) VALUES (?1, ?2, ?3)
         ON CONFLICT (source_id, generation) DO UPDATE SET key = excluded.key",
        params![source_id, i64::from(generation), key],
    )
    .map_err(sql("replacing a source key"))?;
    tx.execute("DELETE FROM hub_uploads WHERE source_id = ?1", [source_id])
        .map_err(sql("replacing a source key"))?;
    tx.commit().map_err(sql("replacing a source key"))
}

/// Whether a source of that id is recorded.
fn source_exists(c: &Connection, source_id: &str) -> Result<bool> {
    c.query_row("SELECT 1 FROM sources WHERE id = ?1", [source_id], |_| {
        Ok(())
    })
    .optional()
    .map(|found| found.is_some())
    .map_err(sql("looking a source up"))
}

/// Shares a source with one more device (and forgets a removal of it); false if the source
/// is not there.
pub(super) fn share_source(c: &mut Connection, source_id: &str, device_id: &str) -> Result<bool> {
    let tx = c.transaction().map_err(sql("sharing a source"))?;
    if !source_exists(&tx, source_id)? {
        return Ok(false);
    }
    tx.execute(
        "INSERT OR IGNORE INTO source_peers (source_id, device_id) VALUES (?1, ?2)",
        params![source_id, device_id],
    )
    .map_err(sql("sharing a source"))?;
    tx.execute(
        "DELETE FROM source_removals WHERE source_id = ?1 AND device_id = ?2",
        params![source_id, device_id],
    )
    .map_err(sql("sharing a source"))?;
    tx.commit().map_err(sql("sharing a source"))?;
    Ok(true)
}

/// Stops sharing a source with a device; with `removal`, records it as removed (this device
/// removed it, and tells its hubs). False if the source is not there.
pub(super) fn unshare_source(
    c: &mut Connection,
    source_id: &str,
    device_id: &str,
    removal: bool,
) -> Result<bool> {
    let tx = c.transaction().map_err(sql("unsharing a source"))?;
    if !source_exists(&tx, source_id)? {
        return Ok(false);
    }
    tx.execute(
        "DELETE FROM source_peers WHERE source_id = ?1 AND device_id = ?2",
        params![source_id, device_id],
    )
    .map_err(sql("unsharing a source"))?;
    if removal {
        tx.execute(
            "INSERT OR IGNORE INTO source_removals (source_id, device_id) VALUES (?1, ?2)",
            params![source_id, device_id],
        )
        .map_err(sql("unsharing a source"))?;
    }
    tx.commit().map_err(sql("unsharing a source"))?;
    Ok(true)
}

/// The devices this device removed from a source.
pub(super) fn removals(c: &mut Connection, source_id: &str) -> Result<Vec<String>> {
    let err = sql("reading a source's removed devices");
    let mut stmt = c
        .prepare_cached(
            "SELECT device_id FROM source_removals WHERE source_id = ?1 ORDER BY device_id",
        )
        .map_err(&err)?;
    stmt.query_map([source_id], |r| r.get(0))
        .map_err(&err)?
        .collect::<rusqlite::Result<Vec<String>>>()
        .map_err(&err)
}
