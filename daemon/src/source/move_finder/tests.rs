//! What a scan holds back for a folder move, and when it is one.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::chunker::Hash128;
use crate::index::{ShortId, VersionVector};
use crate::item::{Body, Header, PriorFile};

fn meta(kind: ItemKind, size: u64, inode: u64) -> Metadata {
    Metadata {
        kind,
        size,
        mtime_ns: 1_000 + i64::try_from(size).unwrap(),
        inode,
        mode: 0o644,
        symlink_target: None,
    }
}

fn hash_of(size: u64) -> Hash128 {
    Hash128([u8::try_from(size % 251).unwrap(); 16])
}

/// A found new item under the new name.
fn added(path: &str, kind: ItemKind, size: u64, inode: u64) -> Found {
    Found::Changed {
        path: path.into(),
        meta: meta(kind, size, inode),
        content: if kind == ItemKind::File {
            Content::Replace {
                hash: hash_of(size),
                chunks: Vec::new(),
            }
        } else {
            Content::Empty
        },
        prior: None,
    }
}

/// A recorded item found gone.
fn deleted(key: &str, kind: ItemKind, size: u64, inode: u64) -> Found {
    let mut v = VersionVector::new();
    v.bump(ShortId(1));
    Found::Deleted {
        prior: PriorItem {
            key: key.into(),
            header: Header {
                version: v,
                sequence: 1,
                deleted: false,
                origin: None,
                modified_by: None,
            },
            body: Body::File(PriorFile {
                meta: meta(kind, size, inode),
                hash: (kind == ItemKind::File).then(|| hash_of(size)),
            }),
        },
    }
}

fn tree(name: &str, make: fn(&str, ItemKind, u64, u64) -> Found) -> Vec<Found> {
    vec![
        make(name, ItemKind::Directory, 0, 7),
        make(&format!("{name}/a"), ItemKind::File, 10, 8),
        make(&format!("{name}/sub"), ItemKind::Directory, 0, 9),
        make(&format!("{name}/sub/b"), ItemKind::File, 20, 10),
    ]
}

/// Runs a scan's batches through a finder that learned `old` → `new`.
fn scan(adds: Vec<Found>, dels: Vec<Found>) -> (Vec<Found>, Vec<Outcome>) {
    let mut finder = MoveFinder::default();
    let other = added("elsewhere.txt", ItemKind::File, 3, 50);
    let batch: Vec<Found> = adds.into_iter().chain([other]).collect();
    let tops = finder.new_folders(&batch);
    assert_eq!(
        tops,
        [("new".to_owned(), 7)],
        "only the top new folder is looked up"
    );
    finder.follow("old".into(), "new".into());
    let mut rest = finder.sort(batch);
    // Deletions come at the scan's end, children first.
    rest.extend(finder.sort(dels.into_iter().rev().collect()));
    (rest, finder.finish())
}

fn paths(found: &[Found]) -> Vec<String> {
    found
        .iter()
        .map(|f| match f {
            Found::Changed { path, .. } | Found::Error { path, .. } => path.clone(),
            Found::Deleted { prior } => prior.key.clone(),
        })
        .collect()
}

#[test]
fn a_folder_renamed_whole_is_one_move() {
    let (rest, outcomes) = scan(tree("new", added), tree("old", deleted));
    assert_eq!(paths(&rest), ["elsewhere.txt"], "the rest goes on at once");
    let [
        Outcome::Moved {
            from,
            to,
            items,
            found,
        },
    ] = outcomes.as_slice()
    else {
        panic!("{outcomes:?}");
    };
    assert_eq!((from.as_str(), to.as_str(), *items), ("old", "new", 4));
    assert_eq!(
        paths(found),
        [
            "new",
            "new/a",
            "new/sub",
            "new/sub/b",
            "old/sub/b",
            "old/sub",
            "old/a",
            "old"
        ]
    );
}

#[test]
fn anything_else_is_committed_as_usual() {
    let plain = |adds: Vec<Found>, dels: Vec<Found>| {
        let (_, outcomes) = scan(adds, dels);
        let [Outcome::Plain(found)] = outcomes.as_slice() else {
            panic!("not a move: {outcomes:?}");
        };
        found.len()
    };
    // Other content under the new name.
    let mut adds = tree("new", added);
    adds[1] = added("new/a", ItemKind::File, 11, 8);
    assert_eq!(plain(adds, tree("old", deleted)), 8);
    // One more item under the new name.
    let mut adds = tree("new", added);
    adds.push(added("new/c", ItemKind::File, 1, 11));
    assert_eq!(plain(adds, tree("old", deleted)), 9);
    // One item left behind under the old name (not found gone).
    let mut dels = tree("old", deleted);
    dels.pop();
    assert_eq!(plain(tree("new", added), dels), 7);
    // A file whose mtime changed.
    let mut adds = tree("new", added);
    if let Found::Changed { meta, .. } = &mut adds[3] {
        meta.mtime_ns += 1;
    }
    assert_eq!(plain(adds, tree("old", deleted)), 8);
    // A file whose mode changed.
    let mut adds = tree("new", added);
    if let Found::Changed { meta, .. } = &mut adds[1] {
        meta.mode = 0o600;
    }
    assert_eq!(plain(adds, tree("old", deleted)), 8);
    // Something under the new name could not be read.
    let mut adds = tree("new", added);
    adds.push(Found::Error {
        path: "new/locked".into(),
        message: "permission denied".into(),
    });
    let (rest, outcomes) = scan(adds, tree("old", deleted));
    assert!(paths(&rest).contains(&"new/locked".to_owned()));
    assert!(matches!(outcomes.as_slice(), [Outcome::Plain(_)]));
}

#[test]
fn folder_mtimes_may_differ() {
    let mut adds = tree("new", added);
    for i in [0, 2] {
        if let Found::Changed { meta, .. } = &mut adds[i] {
            meta.mtime_ns += 99;
        }
    }
    let (_, outcomes) = scan(adds, tree("old", deleted));
    assert!(matches!(outcomes.as_slice(), [Outcome::Moved { .. }]));
}

#[test]
fn overlapping_candidates_are_not_followed() {
    let mut finder = MoveFinder::default();
    finder.follow("a".into(), "b".into());
    finder.follow("a/x".into(), "c".into());
    finder.follow("d".into(), "d/e".into());
    assert_eq!(finder.candidates.len(), 1);
}
