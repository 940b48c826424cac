//! Reading the agent's prior state straight from `<home>/tandem.db`, read-only, and comparing
//! it with a tree on disk.
//!
//! The one place tests look behind `tandemctl`: the database is the agent's record of what it
//! last knew, and checking it against the disk is the point of several stories. Must not:
//! write to the database.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::tree::{self, Kind};

/// One row of the `items` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub path: String,
    pub kind: Kind,
    pub size: i64,
    pub mtime_ns: i64,
    pub inode: i64,
    pub sequence: i64,
    pub has_hash: bool,
    pub deleted: bool,
}

/// Every item row of `source` in the database at `db`, by item path.
pub fn read(db: &Path, source: &str) -> BTreeMap<String, Row> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("cannot open {} read-only: {e}", db.display()));
    conn.busy_timeout(Duration::from_secs(10))
        .expect("set a busy timeout");
    let mut stmt = conn
        .prepare(
            "SELECT key, kind, size, mtime_ns, inode, sequence, hash IS NOT NULL, deleted
             FROM items WHERE source_id = ?1 ORDER BY key",
        )
        .expect("the items table has the documented columns");
    let rows = stmt
        .query_map([source], |r| {
            let code: i64 = r.get(1)?;
            Ok(Row {
                path: r.get(0)?,
                kind: Kind::from_code(code)
                    .unwrap_or_else(|| panic!("items.kind {code} is not 0, 1 or 2")),
                size: r.get(2)?,
                mtime_ns: r.get(3)?,
                inode: r.get(4)?,
                sequence: r.get(5)?,
                has_hash: r.get(6)?,
                deleted: r.get(7)?,
            })
        })
        .expect("query the items table");
    rows.map(|row| {
        let row = row.expect("read an items row");
        (row.path.clone(), row)
    })
    .collect()
}

/// How much of a folder's row [`assert_matches_tree`] compares with the disk.
///
/// Fails unless the live rows and the tree under `root` describe the same items: every live
/// row exists on disk with the same kind, size, inode and mtime (folders: not mtime, which moves with every child), every live file has a content hash, and every item on disk has a live row.
pub fn assert_matches_tree(rows: &BTreeMap<String, Row>, root: &Path) {
    let disk = tree::snapshot(root);
    let mut problems = String::new();
    // Writing to a String cannot fail.
    for row in rows.values().filter(|r| !r.deleted) {
        let Some(entry) = disk.get(&row.path) else {
            let _ = writeln!(problems, "{}: live row, but not on disk", row.path);
            continue;
        };
        let inode = i64::try_from(entry.inode).unwrap_or(-1);
        let size = i64::try_from(entry.size).unwrap_or(-1);
        let is_folder = entry.kind == Kind::Directory;
        if row.kind != entry.kind
            || row.size != size
            || row.inode != inode
            || (!is_folder && row.mtime_ns != entry.mtime_ns)
        {
            let _ = writeln!(
                problems,
                "{}: row has {:?} size {} inode {} mtime_ns {}; disk has {:?} size {size} inode {inode} mtime_ns {}",
                row.path, row.kind, row.size, row.inode, row.mtime_ns, entry.kind, entry.mtime_ns
            );
        }
        if (row.kind == Kind::File) != row.has_hash {
            let _ = writeln!(
                problems,
                "{}: {:?} row {} a content hash",
                row.path,
                row.kind,
                if row.has_hash { "has" } else { "lacks" }
            );
        }
    }
    for (path, entry) in &disk {
        if rows.get(path).is_none_or(|r| r.deleted) {
            let _ = writeln!(
                problems,
                "{path}: {:?} on disk, but no live row",
                entry.kind
            );
        }
    }
    assert!(
        problems.is_empty(),
        "prior state and disk differ under {}:\n{problems}",
        root.display()
    );
}

/// Fails unless every path in `paths` has a tombstone (`deleted = 1`) row.
pub fn assert_deleted(rows: &BTreeMap<String, Row>, paths: &[&str]) {
    let wrong: Vec<String> = paths
        .iter()
        .filter(|p| rows.get(**p).is_none_or(|r| !r.deleted))
        .map(|p| match rows.get(*p) {
            Some(_) => format!("{p}: row is live"),
            None => format!("{p}: no row at all"),
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "expected tombstones:\n{}",
        wrong.join("\n")
    );
}
