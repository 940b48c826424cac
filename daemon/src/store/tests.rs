#![allow(clippy::unwrap_used)]

use super::*;
use crate::chunker::{ChunkRef, Hash128};
use crate::index::{ShortId, VersionVector};
use crate::item::{Body, Content, Difference, FileChange, Header, ItemKind, Metadata, PathRange};

fn row(id: &str) -> SourceRow {
    SourceRow {
        id: id.into(),
        path: format!("/data/{id}"),
        format: "files".into(),
        paused: false,
        sequence: 0,
        created_unix_ms: 1,
        peers: vec!["PEER".into()],
    }
}

fn file(path: &str, size: u64, hash: u8) -> Difference {
    let mut version = VersionVector::new();
    version.bump(ShortId(7));
    Difference {
        key: path.into(),
        header: Header {
            version,
            sequence: 0,
            deleted: false,
            origin: None,
            modified_by: Some("SEVEN77".into()),
        },
        body: Body::File(FileChange {
            meta: Metadata {
                kind: ItemKind::File,
                size,
                mtime_ns: 5,
                inode: 9,
                mode: 0o644,
                symlink_target: None,
            },
            content: Content::Replace {
                hash: Hash128([hash; 16]),
                chunks: vec![ChunkRef {
                    offset: 0,
                    len: u32::try_from(size).unwrap(),
                    hash: Hash128([hash; 16]),
                }],
            },
        }),
    }
}

#[tokio::test]
async fn differences_round_trip_through_prior_state() {
    let (store, thread) = open_in_memory().unwrap();
    store.add_source(row("docs")).await.unwrap();
    let err = store.add_source(row("docs")).await.unwrap_err();
    assert!(matches!(err, Error::SourceExists(_)), "{err}");

    let seqs = store
        .commit(
            "docs".into(),
            vec![file("a", 3, 1), file("b/c", 4, 2)],
            Settles::Nothing,
        )
        .await
        .unwrap();
    assert_eq!(seqs, [1, 2]);
    let mut gone = file("a", 0, 0);
    gone.header.deleted = true;
    gone.body.file_mut().unwrap().content = Content::Empty;
    let seqs = store
        .commit("docs".into(), vec![gone], Settles::Nothing)
        .await
        .unwrap();
    assert_eq!(seqs, [3]);

    let all = store.prior_items("docs".into(), None).await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(
        all[0].header.deleted
            && all[0].file().unwrap().hash.is_none()
            && all[0].header.sequence == 3
    );
    assert_eq!(all[1].file().unwrap().hash, Some(Hash128([2; 16])));
    assert_eq!(all[1].header.version.counter(ShortId(7)), 1);

    let under = store
        .prior_items("docs".into(), Some(vec!["b".into()]))
        .await
        .unwrap();
    assert_eq!(
        under.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
        ["b/c"]
    );

    let totals = store.totals("docs".into()).await.unwrap();
    assert_eq!(
        totals,
        Totals {
            files: 1,
            directories: 0,
            symlinks: 0,
            bytes: 4,
            sequence: 3
        }
    );

    assert_eq!(store.sources().await.unwrap()[0].peers, ["PEER"]);
    store.set_paused("docs".into(), true).await.unwrap();
    assert!(store.sources().await.unwrap()[0].paused);
    store.remove_source("docs".into()).await.unwrap();
    assert!(
        store
            .prior_items("docs".into(), None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        store.remove_source("docs".into()).await,
        Err(Error::UnknownSource(_))
    ));
    assert!(matches!(
        store.commit("docs".into(), vec![], Settles::Nothing).await,
        Err(Error::UnknownSource(_))
    ));
    drop(store);
    thread.join();
}

#[test]
fn migrates_from_an_empty_database() {
    let mut conn = rusqlite::Connection::open_in_memory().unwrap();
    migrations::to_latest(&mut conn).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 10);
    migrations::all().validate().unwrap();
}

#[test]
fn migrates_from_the_previous_schema_keeping_prior_state() {
    let mut conn = rusqlite::Connection::open_in_memory().unwrap();
    migrations::to_version(&mut conn, 1).unwrap();
    conn.execute(
        "INSERT INTO sources (id, path, format, created_unix_ms) VALUES ('s', '/s', 'files', 1)",
        [],
    )
    .unwrap();
    let chunks = crate::chunker::encode_chunk_list(&[
        ChunkRef {
            offset: 0,
            len: 60_000,
            hash: Hash128([1; 16]),
        },
        ChunkRef {
            offset: 60_000,
            len: 40_000,
            hash: Hash128([2; 16]),
        },
    ]);
    let mut v = VersionVector::new();
    v.bump(ShortId(1));
    conn.execute(
        "INSERT INTO items (source_id, path, kind, size, mtime_ns, inode, mode, version, sequence, hash, chunks)
         VALUES ('s', 'f', 0, 100000, 1, 2, 420, ?1, 1, ?2, ?3)",
        rusqlite::params![v.encode(), [9u8; 16].as_slice(), chunks],
    )
    .unwrap();
    // Too small to be looked for by chunk: not indexed.
    let tiny = crate::chunker::encode_chunk_list(&[ChunkRef {
        offset: 0,
        len: 15,
        hash: Hash128([3; 16]),
    }]);
    conn.execute(
        "INSERT INTO items (source_id, path, kind, size, mtime_ns, inode, mode, version, sequence, hash, chunks)
         VALUES ('s', 'g', 0, 15, 1, 3, 420, ?1, 2, ?2, ?3)",
        rusqlite::params![v.encode(), [3u8; 16].as_slice(), tiny],
    )
    .unwrap();

    migrations::to_latest(&mut conn).unwrap();
    queries::run_pending_maintenance(&mut conn).unwrap();
    let items = queries::prior_items(&mut conn, "s", None).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].file().unwrap().meta.size, 100_000);
    let located: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM chunk_locations WHERE source_id = 's'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        located, 2,
        "chunks of larger files recorded before the upgrade are indexed, a tiny file's not"
    );
    // The upgrade work runs once.
    let pending: i64 = conn
        .query_row("SELECT COUNT(*) FROM pending_maintenance", [], |r| r.get(0))
        .unwrap();
    assert_eq!(pending, 0);
}

#[test]
fn items_and_the_journal_are_keyed_and_can_hold_a_record_after_the_upgrade() {
    let mut conn = rusqlite::Connection::open_in_memory().unwrap();
    migrations::to_version(&mut conn, 6).unwrap();
    queries::add_source(&mut conn, &row("s")).unwrap();
    conn.execute(
        "INSERT INTO items (source_id, path, kind, size, mtime_ns, inode, mode, version, sequence)
         VALUES ('s', 'notes.txt', 0, 1, 1, 1, 420, x'', 1)",
        [],
    )
    .unwrap();
    migrations::to_latest(&mut conn).unwrap();
    // The path became the key, the prior state is whole, and a record body has its place.
    let key: String = conn
        .query_row("SELECT key FROM items WHERE source_id = 's'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(key, "notes.txt");
    for table in ["items", "apply_intents"] {
        let columns: Vec<String> = conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        for want in ["key", "record", "version", "deleted", "modified_by"] {
            assert!(columns.iter().any(|c| c == want), "{table}: {columns:?}");
        }
        assert!(!columns.iter().any(|c| c == "path"), "{table}: {columns:?}");
    }
}

#[test]
fn a_damaged_record_is_an_error_naming_the_item() {
    let mut conn = rusqlite::Connection::open_in_memory().unwrap();
    migrations::to_latest(&mut conn).unwrap();
    queries::add_source(&mut conn, &row("s")).unwrap();
    conn.execute(
        "INSERT INTO items (source_id, key, kind, size, mtime_ns, inode, mode, version, sequence)
         VALUES ('s', 'bad', 0, 1, 1, 1, 1, x'0102', 1)",
        [],
    )
    .unwrap();
    let err = queries::prior_items(&mut conn, "s", None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"bad\"") && err.contains("rescan"), "{err}");
}

#[tokio::test]
async fn peers_are_recorded_once() {
    let (store, thread) = open_in_memory().unwrap();
    store
        .add_peer(PeerRow {
            device_id: "B".into(),
            address: Some("127.0.0.1:1".into()),
            added_unix_ms: 1,
        })
        .await
        .unwrap();
    // Adding again updates the address instead of failing: `peer add` is idempotent.
    store
        .add_peer(PeerRow {
            device_id: "B".into(),
            address: Some("127.0.0.1:2".into()),
            added_unix_ms: 2,
        })
        .await
        .unwrap();
    store
        .add_peer(PeerRow {
            device_id: "A".into(),
            address: None,
            added_unix_ms: 3,
        })
        .await
        .unwrap();
    let peers = store.peers().await.unwrap();
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0].device_id, "A");
    assert_eq!(peers[1].address.as_deref(), Some("127.0.0.1:2"));
    assert_eq!(
        peers[1].added_unix_ms, 1,
        "the first time it was added is kept"
    );
    store.remove_peer("B".into()).await.unwrap();
    assert!(matches!(
        store.remove_peer("B".into()).await,
        Err(Error::UnknownPeer(_))
    ));
    assert_eq!(store.peers().await.unwrap().len(), 1);
    drop(store);
    thread.join();
}

#[tokio::test]
async fn the_apply_journal_round_trips_and_a_commit_clears_only_the_batches_it_settles() {
    let (store, thread) = open_in_memory().unwrap();
    store.add_source(row("docs")).await.unwrap();
    store.add_source(row("other")).await.unwrap();
    let mut placed = file("a/b", 3, 1);
    placed.body.file_mut().unwrap().meta.inode = 0;
    placed.header.origin = Some("PEER".into());
    let mut gone = file("c", 0, 0);
    gone.body.file_mut().unwrap().meta.inode = 0;
    gone.header.deleted = true;
    gone.body.file_mut().unwrap().content = Content::Empty;
    let first = store
        .record_intents("docs".into(), vec![placed.clone(), gone.clone()])
        .await
        .unwrap();
    store
        .record_intents("other".into(), vec![file("x", 1, 3)])
        .await
        .unwrap();
    let journal = store.intents("docs".into()).await.unwrap();
    assert_eq!(journal, [placed.clone(), gone.clone()]);

    // The next batch is journaled while the first is still being written.
    let mut next = file("d", 2, 4);
    next.body.file_mut().unwrap().meta.inode = 0;
    let second = store
        .record_intents("docs".into(), vec![next.clone()])
        .await
        .unwrap();
    assert_ne!(first, second, "each batch has its own number");
    // A scan's commit settles no batch.
    store
        .commit("docs".into(), vec![file("e", 1, 5)], Settles::Nothing)
        .await
        .unwrap();
    assert_eq!(store.intents("docs".into()).await.unwrap().len(), 3);
    // The first batch's commit clears it, and only it.
    store
        .commit("docs".into(), vec![placed], Settles::Batches(vec![first]))
        .await
        .unwrap();
    assert_eq!(store.intents("docs".into()).await.unwrap(), [next]);
    // A batch journaled now is numbered above the one still there.
    let third = store
        .record_intents("docs".into(), vec![gone])
        .await
        .unwrap();
    assert!(third > second);
    // Recovery clears them all.
    store
        .commit("docs".into(), vec![], Settles::All)
        .await
        .unwrap();
    assert!(store.intents("docs".into()).await.unwrap().is_empty());
    // Another source's journal is its own.
    assert_eq!(store.intents("other".into()).await.unwrap().len(), 1);
    drop(store);
    thread.join();
}

#[test]
fn prior_state_pages_in_path_order_within_a_range() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (store, thread) = open_in_memory().unwrap();
    let paths = ["a", "a b", "a.txt", "a/b", "a/c/d", "a0", "b", "é"];
    rt.block_on(async {
        store.add_source(row("docs")).await.unwrap();
        store.add_source(row("other")).await.unwrap();
        // Committed out of order; read back in SQLite's bytewise order.
        let mut diffs: Vec<Difference> = paths.iter().rev().map(|p| file(p, 1, 1)).collect();
        diffs.push(file("a/old", 1, 1));
        store
            .commit("docs".into(), diffs, Settles::Nothing)
            .await
            .unwrap();
        let mut gone = file("a/old", 0, 0);
        gone.header.deleted = true;
        gone.body.file_mut().unwrap().content = Content::Empty;
        store
            .commit("docs".into(), vec![gone], Settles::Nothing)
            .await
            .unwrap();
        // Another source's items never show up.
        store
            .commit("other".into(), vec![file("a/zz", 1, 1)], Settles::Nothing)
            .await
            .unwrap();
    });
    // Called from a plain thread, as the scan thread does.
    let page = |range: PathRange, after: Option<&str>, limit: usize| -> Vec<String> {
        store
            .prior_batch("docs".into(), range, after.map(str::to_owned), limit)
            .wait()
            .unwrap()
            .into_iter()
            .map(|p| p.key)
            .collect()
    };

    // Keyset pagination over everything: pages of 3 continue after the last path.
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let got = page(PathRange::All, after.as_deref(), 3);
        all.extend(got.iter().cloned());
        if got.len() < 3 {
            break;
        }
        after = got.last().cloned();
    }
    assert_eq!(
        all,
        ["a", "a b", "a.txt", "a/b", "a/c/d", "a/old", "a0", "b", "é"],
        "tombstones included, bytewise order"
    );

    // A subtree is [p/, p0): not "a b", "a.txt" or "a0".
    assert_eq!(
        page(PathRange::Under("a".into()), None, 10),
        ["a/b", "a/c/d", "a/old"]
    );
    assert_eq!(
        page(PathRange::Under("a".into()), Some("a/b"), 1),
        ["a/c/d"]
    );
    assert!(page(PathRange::Under("b".into()), None, 10).is_empty());
    assert_eq!(page(PathRange::Item("a".into()), None, 10), ["a"]);
    assert!(page(PathRange::Item("a".into()), Some("a"), 10).is_empty());
    assert!(page(PathRange::Item("zz".into()), None, 10).is_empty());

    drop(store);
    thread.join();
}

#[tokio::test]
async fn a_record_body_round_trips_and_a_file_may_replace_it() {
    let (store, thread) = open_in_memory().unwrap();
    store.add_source(row("cards")).await.unwrap();
    let mut version = VersionVector::new();
    version.bump(ShortId(7));
    let record = Difference {
        key: "ana@example".into(),
        header: Header {
            version,
            sequence: 0,
            deleted: false,
            origin: Some("PEER".into()),
            modified_by: Some("SEVEN77".into()),
        },
        body: Body::Record(b"BEGIN:VCARD\r\nFN:Ana\r\nEND:VCARD\r\n".to_vec()),
    };
    let seqs = store
        .commit("cards".into(), vec![record.clone()], Settles::Nothing)
        .await
        .unwrap();
    let got = store
        .prior_item("cards".into(), "ana@example".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.key, record.key);
    assert_eq!(
        got.header,
        Header {
            sequence: seqs[0],
            ..record.header.clone()
        }
    );
    assert_eq!(got.body.record(), record.body.record());
    assert!(got.file().is_none(), "a record has no file part");
    let sent = store
        .items_since(
            "cards".into(),
            0,
            super::IndexPage {
                items: 10,
                bytes: 1 << 20,
                with_content_up_to: 0,
                except_from: None,
                moves_after: None,
            },
        )
        .await
        .unwrap()
        .entries;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].item, got);
    assert!(sent[0].chunks.is_empty());

    // The journal keeps a record whole too.
    store
        .record_intents("cards".into(), vec![record.clone()])
        .await
        .unwrap();
    assert_eq!(store.intents("cards".into()).await.unwrap(), [record]);

    // A file at the same key leaves no record behind.
    store
        .commit(
            "cards".into(),
            vec![file("ana@example", 3, 1)],
            Settles::Nothing,
        )
        .await
        .unwrap();
    let got = store
        .prior_item("cards".into(), "ana@example".into())
        .await
        .unwrap()
        .unwrap();
    assert!(got.body.record().is_none());
    assert_eq!(got.file().unwrap().meta.size, 3);
    drop(store);
    thread.join();
}

#[tokio::test]
async fn an_index_page_stops_once_its_entries_fill_the_bytes_it_may_take() {
    let (store, thread) = open_in_memory().unwrap();
    store.add_source(row("docs")).await.unwrap();
    // Ten small files (their content counts) and then ten large ones (it does not).
    let small = (0..10u8).map(|i| file(&format!("s{i}"), 10_000, i));
    let large = (0..10u8).map(|i| file(&format!("l{i}"), 100_000, 100 + i));
    store
        .commit(
            "docs".into(),
            small.chain(large).collect(),
            Settles::Nothing,
        )
        .await
        .unwrap();
    let page = |bytes| IndexPage {
        items: 1000,
        bytes,
        with_content_up_to: 65_536,
        except_from: None,
        moves_after: None,
    };
    let read = |after, bytes| {
        let store = store.clone();
        async move {
            store
                .items_since("docs".into(), after, page(bytes))
                .await
                .unwrap()
                .entries
                .into_iter()
                .map(|e| e.item.key)
                .collect::<Vec<_>>()
        }
    };
    // 35 kB holds four small files' content: the fourth reaches it, and the read stops.
    assert_eq!(read(0, 35_000).await, ["s0", "s1", "s2", "s3"]);
    // Large files cost only their entries, so all the rest fit.
    assert_eq!(read(10, 35_000).await.len(), 10);
    // A page always holds one entry, however small its bytes.
    assert_eq!(read(0, 1).await, ["s0"]);
    assert_eq!(read(0, usize::MAX).await.len(), 20);
    drop(store);
    thread.join();
}

#[tokio::test]
async fn a_read_for_a_peer_leaves_out_its_own_versions_and_still_covers_their_sequences() {
    let (store, thread) = open_in_memory().unwrap();
    store.add_source(row("docs")).await.unwrap();
    let from = |path: &str, origin: Option<&str>| {
        let mut d = file(path, 10, 1);
        d.header.origin = origin.map(str::to_owned);
        d
    };
    store
        .commit(
            "docs".into(),
            vec![
                from("local", None),
                from("theirs", Some("PEER")),
                from("other", Some("OTHER")),
                from("theirs-too", Some("PEER")),
            ],
            Settles::Nothing,
        )
        .await
        .unwrap();
    let read = |items, except: Option<&str>| {
        let store = store.clone();
        let page = IndexPage {
            items,
            bytes: usize::MAX,
            with_content_up_to: 0,
            except_from: except.map(str::to_owned),
            moves_after: None,
        };
        async move {
            let read = store.items_since("docs".into(), 0, page).await.unwrap();
            let keys: Vec<String> = read.entries.into_iter().map(|e| e.item.key).collect();
            (keys, read.through)
        }
    };
    assert_eq!(
        read(10, Some("PEER")).await,
        (vec!["local".into(), "other".into()], 4)
    );
    assert_eq!(read(10, None).await.0.len(), 4);
    // A page that stops at its item limit covers only up to its last entry.
    assert_eq!(read(1, Some("PEER")).await, (vec!["local".into()], 1));
    drop(store);
    thread.join();
}

#[tokio::test]
async fn tiny_files_are_not_indexed_by_chunk_and_a_file_that_shrinks_loses_its_locations() {
    let (store, thread) = open_in_memory().unwrap();
    store.add_source(row("docs")).await.unwrap();
    let big = UNINDEXED_MAX + 1;
    store
        .commit(
            "docs".into(),
            vec![
                file("tiny", UNINDEXED_MAX, 1),
                file("big", big, 2),
                file("copy", big, 2),
            ],
            Settles::Nothing,
        )
        .await
        .unwrap();
    assert!(
        store
            .chunk_sources(Hash128([1; 16]))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.chunk_sources(Hash128([2; 16])).await.unwrap().len(),
        2
    );
    let held = store
        .held_elsewhere("docs".into(), vec![("big".into(), vec![[2; 16]])])
        .await
        .unwrap();
    assert_eq!(held, [true]);
    // Rewritten tiny: its old chunk is no longer where it was.
    store
        .commit("docs".into(), vec![file("big", 10, 3)], Settles::Nothing)
        .await
        .unwrap();
    let left = store.chunk_sources(Hash128([2; 16])).await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    drop(store);
    thread.join();
}

#[tokio::test]
async fn an_index_read_stops_before_a_noted_move_and_gives_it_whole() {
    let (store, thread) = open_in_memory().unwrap();
    store.add_source(row("docs")).await.unwrap();
    let mut dir = file("old", 0, 0);
    if let Body::File(f) = &mut dir.body {
        f.meta.kind = ItemKind::Directory;
        f.meta.inode = 42;
        f.content = Content::Empty;
    }
    store
        .commit(
            "docs".into(),
            vec![file("before", 3, 1), dir.clone(), file("old/a", 3, 2)],
            Settles::Nothing,
        )
        .await
        .unwrap();
    // A new folder with the old one's inode is found by it; a dead one is not.
    let found = store
        .live_folders_with_inodes("docs".into(), vec![("new".into(), 42), ("x".into(), 7)])
        .await
        .unwrap();
    assert_eq!(found, [("new".to_owned(), "old".to_owned())]);
    // The move: two additions, two deletions, numbered 4..=7 and noted.
    let mut moved = vec![file("new", 0, 0), file("new/a", 3, 2)];
    moved[0].body = dir.body.clone();
    for key in ["old/a", "old"] {
        let mut gone = file(key, 0, 0);
        gone.header.deleted = true;
        gone.body = Body::File(FileChange {
            meta: dir.file().unwrap().meta.clone(),
            content: Content::Empty,
        });
        moved.push(gone);
    }
    let seqs = store
        .commit_move(
            "docs".into(),
            moved,
            ("old".into(), "new".into(), 2),
            Settles::Nothing,
        )
        .await
        .unwrap();
    assert_eq!(seqs, [4, 5, 6, 7]);
    store
        .commit("docs".into(), vec![file("after", 3, 3)], Settles::Nothing)
        .await
        .unwrap();
    let page = |moves_after| IndexPage {
        items: 1000,
        bytes: 1 << 20,
        with_content_up_to: 0,
        except_from: None,
        moves_after,
    };
    // A peer that takes moves: the entries before it, up to just before it (the old folder's
    // items are numbered in the move now).
    let read = store
        .items_since("docs".into(), 0, page(Some(0)))
        .await
        .unwrap();
    let keys: Vec<&str> = read.entries.iter().map(|e| e.item.key.as_str()).collect();
    assert_eq!(keys, ["before"]);
    assert_eq!(read.through, 3);
    assert!(read.at_move.is_none(), "entries come first");
    // Then the move, whole, and nothing else.
    let read = store
        .items_since("docs".into(), 3, page(Some(0)))
        .await
        .unwrap();
    assert!(read.entries.is_empty());
    let at = read.at_move.expect("the move comes next");
    assert_eq!(
        (at.note.first_sequence, at.note.last_sequence, at.note.items),
        (4, 7, 2)
    );
    assert_eq!(at.entries.len(), 4);
    // Past it, or declined, or for a peer that cannot take moves: entries one by one.
    let read = store
        .items_since("docs".into(), 7, page(Some(0)))
        .await
        .unwrap();
    assert_eq!(read.entries.len(), 1);
    assert_eq!(read.through, 8);
    let declined = store
        .items_since("docs".into(), 3, page(Some(4)))
        .await
        .unwrap();
    assert_eq!(declined.entries.len(), 5);
    assert!(declined.at_move.is_none());
    let old = store
        .items_since("docs".into(), 3, page(None))
        .await
        .unwrap();
    assert_eq!(old.entries.len(), 5);
    // Its entries, by range, for a peer that asks for them.
    let asked = store.entries_in("docs".into(), 4, 7).await.unwrap();
    assert_eq!(asked.len(), 4);
    // The subtree of a name, at and under it.
    let trees = store
        .subtrees("docs".into(), vec!["old".into(), "new".into()])
        .await
        .unwrap();
    assert_eq!(trees[0].len(), 2);
    assert!(trees[0].iter().all(|e| e.item.header.deleted));
    assert_eq!(trees[1].len(), 2);
    drop(store);
    thread.join();
}

#[tokio::test]
async fn hubs_keys_and_uploads_are_kept_and_go_with_their_source_or_hub() {
    let (store, thread) = open_in_memory().unwrap();
    store.add_source(row("docs")).await.unwrap();
    let hub = |address: &str| HubRow {
        device_id: "HUB".into(),
        address: address.into(),
        added_unix_ms: 1,
    };
    store.add_hub(hub("127.0.0.1:1")).await.unwrap();
    store.add_hub(hub("127.0.0.1:2")).await.unwrap();
    let hubs = store.hubs().await.unwrap();
    assert_eq!(hubs.len(), 1);
    assert_eq!(hubs[0].address, "127.0.0.1:2");

    store
        .add_source_key("docs".into(), 1, vec![2; 32])
        .await
        .unwrap();
    store
        .add_source_key("docs".into(), 0, vec![1; 32])
        .await
        .unwrap();
    // A generation already kept is not replaced.
    store
        .add_source_key("docs".into(), 0, vec![9; 32])
        .await
        .unwrap();
    let keys = store.source_keys("docs".into()).await.unwrap();
    assert_eq!(keys, vec![(0, vec![1; 32]), (1, vec![2; 32])]);

    assert_eq!(
        store
            .hub_uploaded("HUB".into(), "docs".into())
            .await
            .unwrap(),
        0
    );
    store
        .set_hub_uploaded("HUB".into(), "docs".into(), 42)
        .await
        .unwrap();
    assert_eq!(
        store
            .hub_uploaded("HUB".into(), "docs".into())
            .await
            .unwrap(),
        42
    );
    assert!(store.remove_hub("HUB".into()).await.unwrap());
    assert!(!store.remove_hub("HUB".into()).await.unwrap());
    assert_eq!(
        store
            .hub_uploaded("HUB".into(), "docs".into())
            .await
            .unwrap(),
        0,
        "a removed hub's mark goes with it"
    );
    store.remove_source("docs".into()).await.unwrap();
    assert!(store.source_keys("docs".into()).await.unwrap().is_empty());
    drop(store);
    thread.join();
}
