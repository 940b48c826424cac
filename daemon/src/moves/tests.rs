//! A move announced from the sender's records and derived from the receiver's prior state:
//! the same entries when the states agree, a named mismatch when they do not, and the wire
//! checks a hostile move meets.

#![allow(clippy::unwrap_used)]

use tandem_proto::peer as pb;

use super::*;
use crate::chunker::{ChunkRef, Hash128};
use crate::item::{PriorFile, PriorItem};
use crate::universal::{self, Refused};

const A: ShortId = ShortId(0xA);
const B: ShortId = ShortId(0xB);

fn version(counters: &[(ShortId, u64)]) -> VersionVector {
    let mut v = VersionVector::new();
    for (id, n) in counters {
        for _ in 0..*n {
            v.bump(*id);
        }
    }
    v
}

fn meta(kind: ItemKind, size: u64, inode: u64) -> Metadata {
    Metadata {
        kind,
        size,
        mtime_ns: 1_700_000_000_000_000_000 + i64::try_from(size).unwrap(),
        inode,
        mode: if kind == ItemKind::Directory {
            0o755
        } else {
            0o644
        },
        symlink_target: (kind == ItemKind::Symlink).then(|| "target".to_owned()),
    }
}

/// One recorded item: its key, kind and size (content named after the size), version.
fn record(key: &str, kind: ItemKind, size: u64, v: VersionVector, inode: u64) -> IndexEntry {
    let file = kind == ItemKind::File;
    let hash = Hash128([u8::try_from(size % 251).unwrap(); 16]);
    IndexEntry {
        item: PriorItem {
            key: key.into(),
            header: Header {
                version: v,
                sequence: 1,
                deleted: false,
                origin: None,
                modified_by: Some("BBBB".into()),
            },
            body: Body::File(PriorFile {
                meta: meta(kind, size, inode),
                hash: file.then_some(hash),
            }),
        },
        chunks: if file && size > 0 {
            vec![ChunkRef {
                offset: 0,
                len: u32::try_from(size).unwrap(),
                hash,
            }]
        } else {
            Vec::new()
        },
    }
}

/// The folder `docs` as both devices recorded it before the move.
fn before(inode_base: u64) -> Vec<IndexEntry> {
    let v = version(&[(A, 1), (B, 2)]);
    vec![
        record("docs", ItemKind::Directory, 0, v.clone(), inode_base),
        record("docs/a.txt", ItemKind::File, 10, v.clone(), inode_base + 1),
        record("docs/link", ItemKind::Symlink, 0, v.clone(), inode_base + 2),
        record(
            "docs/sub",
            ItemKind::Directory,
            0,
            v.clone(),
            inode_base + 3,
        ),
        record(
            "docs/sub/b.bin",
            ItemKind::File,
            9000,
            version(&[(B, 5)]),
            inode_base + 4,
        ),
    ]
}

/// What device A's scan records for `docs` renamed to `papers`, numbered from `first`.
fn moved_on_a(first: u64) -> (MoveNote, Vec<IndexEntry>) {
    let (note, mut entries) = recorded_move(&before(100), ("docs", "papers"), (A, "AAAA"), first);
    for e in &mut entries {
        if let (true, Body::File(f)) = (e.item.key == "papers", &mut e.item.body) {
            // A rename may touch the folder's own mtime.
            f.meta.mtime_ns += 5;
        }
    }
    (note, entries)
}

#[test]
fn a_receiver_in_the_same_state_derives_exactly_the_senders_entries() {
    let (note, entries) = moved_on_a(40);
    let mv = announce(&note, &entries, "PEER-C").expect("a whole move is announced");
    assert_eq!(mv.author, A);
    assert_eq!(mv.items, 5);
    assert_eq!(mv.modified_by, "AAAA");
    // Over the wire and back, as a peer gets it.
    let mv = universal::move_from_pb(&universal::move_to_pb(&mv)).unwrap();
    // B recorded the same items under other inodes, and once had a `papers/a.txt`.
    let mut tombstone = record("papers/a.txt", ItemKind::File, 3, version(&[(B, 7)]), 9);
    tombstone.item.header.deleted = true;
    let tomb_version = tombstone.item.header.version.clone();
    // The sender's record of it was the same tombstone.
    let (note, mut entries) = moved_on_a(40);
    for e in &mut entries {
        if e.item.key == "papers/a.txt" {
            e.item.header.version = tomb_version.clone();
            e.item.header.version.bump(A);
        }
    }
    let mv_with_tomb = announce(&note, &entries, "PEER-C").unwrap();
    assert_ne!(mv_with_tomb.digest, mv.digest);

    let derived = derive(&mv, &before(500), &[]).unwrap();
    let paths: Vec<&str> = derived.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "papers",
            "papers/a.txt",
            "papers/link",
            "papers/sub",
            "papers/sub/b.bin",
            "docs/sub/b.bin",
            "docs/sub",
            "docs/link",
            "docs/a.txt",
            "docs"
        ],
        "additions parents first, then deletions children first"
    );
    for item in &derived {
        let want = entries
            .iter()
            .find(|e| e.item.key == item.path.as_str())
            .unwrap();
        assert_eq!(item.header.deleted, want.item.header.deleted);
        assert_eq!(item.header.sequence, 40);
        if item.path.as_str() != "papers/a.txt" {
            assert_eq!(
                item.header.version, want.item.header.version,
                "{}",
                item.path
            );
        }
        let file = item.file().unwrap();
        let want_file = want.item.file().unwrap();
        if !item.header.deleted {
            assert_eq!(file.hash, want_file.hash, "{}", item.path);
            assert_eq!(file.chunks, want.chunks, "{}", item.path);
            assert_eq!(file.meta.mtime_ns, want_file.meta.mtime_ns, "{}", item.path);
        }
    }
    let with_tomb = derive(&mv_with_tomb, &before(500), &[tombstone]).unwrap();
    let a = with_tomb
        .iter()
        .find(|i| i.path.as_str() == "papers/a.txt")
        .unwrap();
    assert!(a.header.version.compare(&tomb_version) == crate::index::Ordering::Dominates);
}

#[test]
fn a_receiver_whose_state_differs_asks_instead() {
    let (note, entries) = moved_on_a(1);
    let mv = announce(&note, &entries, "PEER-C").unwrap();

    // An older version of one file here.
    let mut older = before(500);
    older[1].item.header.version = version(&[(A, 1)]);
    assert!(matches!(
        derive(&mv, &older, &[]),
        Err(Mismatch::Digest { .. })
    ));
    // Other content.
    let mut other = before(500);
    if let Body::File(f) = &mut other[1].item.body {
        f.hash = Some(Hash128([42; 16]));
    }
    assert!(matches!(
        derive(&mv, &other, &[]),
        Err(Mismatch::Digest { .. })
    ));
    // One more item here.
    let mut more = before(500);
    more.push(record(
        "docs/extra",
        ItemKind::File,
        1,
        version(&[(B, 1)]),
        9,
    ));
    assert!(matches!(
        derive(&mv, &more, &[]),
        Err(Mismatch::Count {
            here: 6,
            there: 5,
            ..
        })
    ));
    // A deleted item here is not moved: it does not count.
    let mut gone = more.clone();
    gone[5].item.header.deleted = true;
    assert!(derive(&mv, &gone, &[]).is_ok());
    // The new name is taken here.
    let taken = record("papers/x", ItemKind::File, 1, version(&[(B, 1)]), 9);
    assert!(matches!(
        derive(&mv, &before(500), &[taken]),
        Err(Mismatch::TargetExists { .. })
    ));
    // Nothing of the folder here.
    assert!(matches!(
        derive(&mv, &[], &[]),
        Err(Mismatch::NoFolder { .. })
    ));
}

#[test]
fn a_range_that_changed_since_the_scan_or_came_from_the_peer_is_not_announced() {
    let (note, entries) = moved_on_a(1);
    // One entry changed again: its sequence left the range.
    assert!(announce(&note, &entries[1..], "PEER-C").is_none());
    // An entry under the old name that is live again.
    let mut revived = entries.clone();
    revived[1].item.header.deleted = false;
    assert!(announce(&note, &revived, "PEER-C").is_none());
    // A move applied here from another device is passed on as one; not back to that device,
    // which has it.
    let mut applied = entries.clone();
    for e in &mut applied {
        e.item.header.origin = Some("PEER-A".into());
    }
    assert!(announce(&note, &applied, "PEER-C").is_some());
    assert!(announce(&note, &applied, "PEER-A").is_none());
    // One outside both names.
    let mut elsewhere = entries;
    elsewhere[0].item.key = "other".into();
    assert!(announce(&note, &elsewhere, "PEER-C").is_none());
}

#[test]
fn a_hostile_move_is_refused_naming_what_is_wrong() {
    let (note, entries) = moved_on_a(1);
    let good = universal::move_to_pb(&announce(&note, &entries, "PEER-C").unwrap());
    assert!(universal::move_from_pb(&good).is_ok());
    type Spoil = Box<dyn Fn(&mut pb::FolderMove)>;
    let cases: Vec<(&str, Spoil)> = vec![
        ("'..'", Box::new(|m| m.to = "../etc".into())),
        ("absolute", Box::new(|m| m.from = "/etc".into())),
        (
            "agent's own folder",
            Box::new(|m| m.to = ".tandem/x".into()),
        ),
        ("into itself", Box::new(|m| m.to = "docs/inner".into())),
        ("into itself", Box::new(|m| m.to = "docs".into())),
        ("1 to", Box::new(|m| m.items = 0)),
        (
            "1 to",
            Box::new(|m| m.items = universal::MAX_MOVE_ITEMS + 1),
        ),
        ("do not number", Box::new(|m| m.last_sequence += 1)),
        (
            "do not number",
            Box::new(|m| m.first_sequence = m.last_sequence + 1),
        ),
        ("16 bytes", Box::new(|m| m.digest.truncate(8))),
        (
            "not a folder",
            Box::new(|m| m.folder.as_mut().unwrap().kind = 0),
        ),
        ("no folder", Box::new(|m| m.folder = None)),
        ("short ID", Box::new(|m| m.modified_by = "../x".into())),
    ];
    for (want, spoil) in cases {
        let mut bad = good.clone();
        spoil(&mut bad);
        let refused = universal::move_from_pb(&bad).unwrap_err();
        let text = refused.to_string();
        assert!(
            text.contains(want),
            "{text:?} should say {want:?} ({refused:?})"
        );
        assert!(matches!(
            refused,
            Refused::Move { .. } | Refused::Path { .. }
        ));
    }
    let too_many = pb::IndexUpdate {
        moves: vec![good; universal::MAX_MOVES_PER_UPDATE + 1],
        ..Default::default()
    };
    assert!(universal::moves_from_pb(&too_many).is_err());
}
