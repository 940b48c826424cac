//! Stories of two or three devices keeping a source the same: each agent is a real `tandemd`
//! with its own home, listening on 127.0.0.1; they meet through `peer add`, share a source
//! with `source add --peer`, and are waited on with `tandemctl wait`.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_tests::tree::{self, PseudoRandom};
use tandem_tests::{Agent, EVENT_DEADLINE, backoff, num, pair, prior};

/// Longest two small sources may take to agree.
const SYNC: Duration = Duration::from_secs(60);

fn two_sharing(
    fill_a: impl FnOnce(&Path),
    fill_b: impl FnOnce(&Path),
) -> (Agent, PathBuf, Agent, PathBuf) {
    tandem_tests::two_sharing(fill_a, fill_b)
}

fn settle(first: &Agent, second: &Agent) {
    tandem_tests::settle(first, second, SYNC);
}

fn names(root: &Path) -> BTreeSet<String> {
    tree::snapshot(root).into_keys().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// 2001-09-09T01:46:40.123456789Z: an mtime no test run could give a file by accident.
const OLD_MTIME_NS: i64 = 1_000_000_000_123_456_789;

#[test]
fn first_sync_merges_two_different_trees_into_the_same_tree() {
    let (a, da, b, db) = two_sharing(
        |d| {
            tree::write(&d.join("a-only/report.txt"), "written on A");
            tree::set_mtime(&d.join("a-only/report.txt"), OLD_MTIME_NS);
            tree::write(&d.join("a-only/run.sh"), "#!/bin/sh\necho hi\n");
            tree::set_mode(&d.join("a-only/run.sh"), 0o755);
            // A folder's own permissions travel too, also when it holds files.
            tree::set_mode(&d.join("a-only"), 0o750);
            // Several chunks (FastCDC's average is 64 KiB).
            tree::write(
                &d.join("a-only/nested/deep/data.bin"),
                PseudoRandom::new(1).bytes(700_000),
            );
            fs::create_dir_all(d.join("a-empty/inner")).expect("mkdir -p a-empty/inner");
            symlink("a-only/report.txt", d.join("a-link")).expect("symlink a-link");
        },
        |d| {
            tree::write(&d.join("b-only/notes.md"), "# written on B\n");
            tree::write(&d.join("b-only/secret.txt"), "only the owner reads this");
            tree::set_mode(&d.join("b-only/secret.txt"), 0o600);
            tree::write(&d.join("b-big.bin"), PseudoRandom::new(2).bytes(1_000_000));
            tree::write(&d.join("b-empty-file"), "");
            fs::create_dir(d.join("b-empty")).expect("mkdir b-empty");
            symlink("does/not/exist", d.join("b-dangling")).expect("symlink b-dangling");
        },
    );
    // The same file, byte for byte and to the nanosecond, on both sides before they meet.
    for d in [&da, &db] {
        let same = d.join("same/shared.txt");
        tree::write(&same, "the same bytes on both devices");
        tree::set_mtime(&same, OLD_MTIME_NS + 1);
    }

    settle(&a, &b);

    tree::assert_same_trees(&da, &db);
    let expected = set(&[
        "a-empty",
        "a-empty/inner",
        "a-link",
        "a-only",
        "a-only/nested",
        "a-only/nested/deep",
        "a-only/nested/deep/data.bin",
        "a-only/report.txt",
        "a-only/run.sh",
        "b-big.bin",
        "b-dangling",
        "b-empty",
        "b-empty-file",
        "b-only",
        "b-only/notes.md",
        "b-only/secret.txt",
        "same",
        "same/shared.txt",
    ]);
    // Nothing more: the file both had is not a conflict, so no conflict copy appears.
    assert_eq!(names(&db), expected);
    let report = fs::metadata(db.join("a-only/report.txt")).expect("stat report.txt on B");
    assert_eq!(
        std::os::unix::fs::MetadataExt::mtime_nsec(&report),
        OLD_MTIME_NS % 1_000_000_000,
        "the mtime travels to the nanosecond"
    );
    for (agent, dir) in [(&a, &da), (&b, &db)] {
        prior::assert_matches_tree(&agent.prior_state("docs"), dir);
        let s = agent.source("docs");
        assert_eq!(num(&s, "files"), 8, "{s:#}");
        assert_eq!(num(&s, "symlinks"), 2, "{s:#}");
    }
}

#[test]
fn every_kind_of_change_on_one_side_reaches_the_other_and_back() {
    let (a, da, b, db) = two_sharing(
        |d| {
            for (path, contents) in [
                ("base/one.txt", "one"),
                ("base/two.txt", "two"),
                ("base/three.txt", "three"),
                ("photos/a.jpg", "not really a jpeg"),
                ("photos/sub/b.jpg", "nor this"),
                ("photos/sub/c.txt", "a caption"),
                ("trash/t1.txt", "1"),
                ("trash/deep/t2.txt", "22"),
            ] {
                tree::write(&d.join(path), contents);
            }
        },
        |_| {},
    );
    settle(&a, &b);
    tree::assert_same_trees(&da, &db);

    // On A: every kind of change, each seen by A's watcher before the next.
    let mut watch = a.watch("docs");
    tree::write(&da.join("new file.txt"), "a name with spaces");
    watch.expect("added", "new file.txt", EVENT_DEADLINE);
    tree::write(&da.join("naïve café/日本語 ✓.txt"), "unicode names");
    watch.expect_all(
        &[
            ("added", "naïve café"),
            ("added", "naïve café/日本語 ✓.txt"),
        ],
        EVENT_DEADLINE,
    );
    tree::write(&da.join("line\nbreak.txt"), "a newline in the name");
    watch.expect("added", "line\nbreak.txt", EVENT_DEADLINE);
    tree::write(&da.join("base/one.txt"), "one, and then some more");
    watch.expect("modified", "base/one.txt", EVENT_DEADLINE);
    fs::remove_file(da.join("base/two.txt")).expect("delete base/two.txt");
    watch.expect("deleted", "base/two.txt", EVENT_DEADLINE);
    fs::rename(da.join("base/three.txt"), da.join("base/3.txt")).expect("rename three.txt");
    watch.expect_all(
        &[("deleted", "base/three.txt"), ("added", "base/3.txt")],
        EVENT_DEADLINE,
    );
    fs::rename(da.join("photos"), da.join("pictures")).expect("rename photos/");
    watch.expect_all(
        &[
            ("deleted", "photos"),
            ("deleted", "photos/a.jpg"),
            ("deleted", "photos/sub"),
            ("deleted", "photos/sub/b.jpg"),
            ("deleted", "photos/sub/c.txt"),
            ("added", "pictures"),
            ("added", "pictures/a.jpg"),
            ("added", "pictures/sub"),
            ("added", "pictures/sub/b.jpg"),
            ("added", "pictures/sub/c.txt"),
        ],
        EVENT_DEADLINE,
    );
    fs::create_dir_all(da.join("empty/deeper")).expect("mkdir -p empty/deeper");
    watch.expect_all(
        &[("added", "empty"), ("added", "empty/deeper")],
        EVENT_DEADLINE,
    );
    symlink("pictures/a.jpg", da.join("shortcut")).expect("symlink shortcut");
    watch.expect("added", "shortcut", EVENT_DEADLINE);
    fs::remove_dir_all(da.join("trash")).expect("rm -r trash");
    watch.expect_all(
        &[
            ("deleted", "trash"),
            ("deleted", "trash/t1.txt"),
            ("deleted", "trash/deep"),
            ("deleted", "trash/deep/t2.txt"),
        ],
        EVENT_DEADLINE,
    );

    settle(&a, &b);
    tree::assert_same_trees(&da, &db);
    assert_eq!(
        names(&db),
        set(&[
            "base",
            "base/3.txt",
            "base/one.txt",
            "empty",
            "empty/deeper",
            "line\nbreak.txt",
            "naïve café",
            "naïve café/日本語 ✓.txt",
            "new file.txt",
            "pictures",
            "pictures/a.jpg",
            "pictures/sub",
            "pictures/sub/b.jpg",
            "pictures/sub/c.txt",
            "shortcut",
        ])
    );
    assert_eq!(
        fs::read_link(db.join("shortcut")).expect("B's shortcut is a symlink"),
        Path::new("pictures/a.jpg")
    );
    prior::assert_matches_tree(&b.prior_state("docs"), &db);

    // Then on B: changes flow the other way.
    let mut watch = b.watch("docs");
    tree::write(
        &db.join("line\nbreak.txt"),
        "edited on B, longer than before",
    );
    watch.expect("modified", "line\nbreak.txt", EVENT_DEADLINE);
    fs::remove_dir_all(db.join("pictures")).expect("rm -r pictures");
    watch.expect_all(
        &[
            ("deleted", "pictures"),
            ("deleted", "pictures/a.jpg"),
            ("deleted", "pictures/sub"),
            ("deleted", "pictures/sub/b.jpg"),
            ("deleted", "pictures/sub/c.txt"),
        ],
        EVENT_DEADLINE,
    );
    fs::rename(db.join("naïve café"), db.join("café renamed")).expect("rename naïve café/");
    watch.expect_all(
        &[
            ("deleted", "naïve café"),
            ("deleted", "naïve café/日本語 ✓.txt"),
            ("added", "café renamed"),
            ("added", "café renamed/日本語 ✓.txt"),
        ],
        EVENT_DEADLINE,
    );
    fs::remove_file(db.join("shortcut")).expect("remove shortcut");
    symlink("base/3.txt", db.join("shortcut")).expect("symlink shortcut again");
    // One "modified", or a delete and an add if a scan fell between the two steps.
    watch.expect_where("modified or added \"shortcut\"", EVENT_DEADLINE, |e| {
        e["item"] == "shortcut" && (e["kind"] == "modified" || e["kind"] == "added")
    });
    tree::write(&db.join("from-b/ünïcødé name.txt"), "made on B");
    watch.expect_all(
        &[("added", "from-b"), ("added", "from-b/ünïcødé name.txt")],
        EVENT_DEADLINE,
    );
    fs::remove_dir(db.join("empty/deeper")).expect("rmdir empty/deeper");
    watch.expect("deleted", "empty/deeper", EVENT_DEADLINE);

    settle(&b, &a);
    tree::assert_same_trees(&db, &da);
    assert_eq!(
        names(&da),
        set(&[
            "base",
            "base/3.txt",
            "base/one.txt",
            "café renamed",
            "café renamed/日本語 ✓.txt",
            "empty",
            "from-b",
            "from-b/ünïcødé name.txt",
            "line\nbreak.txt",
            "new file.txt",
            "shortcut",
        ])
    );
    assert_eq!(
        fs::read_link(da.join("shortcut")).expect("A's shortcut is a symlink"),
        Path::new("base/3.txt")
    );
    prior::assert_matches_tree(&a.prior_state("docs"), &da);
}

#[test]
fn changes_relay_along_a_chain_of_three_devices() {
    let a = Agent::start();
    let b = Agent::start();
    let c = Agent::start();
    let (da, db, dc) = (a.data_dir("docs"), b.data_dir("docs"), c.data_dir("docs"));
    tree::write(&da.join("start.txt"), "on A from the start");
    // A – B – C: B knows both, A and C never meet.
    pair(&a, &b);
    pair(&b, &c);
    a.share("docs", &da, &[&b]);
    b.share("docs", &db, &[&a, &c]);
    c.share("docs", &dc, &[&b]);
    let forward = || {
        a.sync_with(&[&b], SYNC);
        b.sync_with(&[&a, &c], SYNC);
        c.sync_with(&[&b], SYNC);
    };
    let backward = || {
        c.sync_with(&[&b], SYNC);
        b.sync_with(&[&a, &c], SYNC);
        a.sync_with(&[&b], SYNC);
    };
    forward();
    tree::assert_same_trees(&da, &dc);

    let mut watch = a.watch("docs");
    tree::write(&da.join("made on A.txt"), "travels A → B → C");
    watch.expect("added", "made on A.txt", EVENT_DEADLINE);
    forward();
    assert_eq!(
        fs::read_to_string(dc.join("made on A.txt")).expect("C has A's file"),
        "travels A → B → C"
    );
    tree::assert_same_trees(&da, &dc);

    let mut watch = c.watch("docs");
    tree::write(&dc.join("deep/made on C.txt"), "travels C → B → A");
    watch.expect_all(
        &[("added", "deep"), ("added", "deep/made on C.txt")],
        EVENT_DEADLINE,
    );
    backward();
    assert_eq!(
        fs::read_to_string(da.join("deep/made on C.txt")).expect("A has C's file"),
        "travels C → B → A"
    );
    tree::assert_same_trees(&dc, &da);
    tree::assert_same_trees(&dc, &db);

    // A folder renamed on A is one operation on each leg: B renames it and passes it on so.
    fs::rename(da.join("deep"), da.join("deeper")).expect("rename deep/");
    forward();
    tree::assert_same_trees(&da, &dc);
    for (on, from) in [(&b, &a), (&c, &b)] {
        let progress = on.progress("docs", from);
        assert_eq!(num(&progress, "moved_folders"), 1, "{progress:#}");
        assert_eq!(num(&progress, "expanded_moves"), 0, "{progress:#}");
    }

    // A and C only ever talked to B.
    let c_id = c.device_id();
    let a_peers = a.status()["peers"].clone();
    assert!(
        a_peers
            .as_array()
            .is_some_and(|all| all.iter().all(|p| p["device_id"] != c_id.as_str())),
        "{a_peers:#}"
    );
}

#[test]
fn a_restarted_device_resumes_from_its_cursor_without_a_full_resend() {
    let (a, da, mut b, db) = two_sharing(
        |d| {
            for i in 0..200u32 {
                tree::write(
                    &d.join(format!("dir{}/file{i:03}.txt", i % 10)),
                    format!("file {i}\n").repeat(10),
                );
            }
        },
        |_| {},
    );
    settle(&a, &b);
    tree::assert_same_trees(&da, &db);
    let sent_before = num(&a.progress("docs", &b), "sent_items");
    assert!(
        sent_before >= 210,
        "200 files and 10 folders were sent: {sent_before}"
    );

    b.kill();
    let mut watch = a.watch("docs");
    let changed = ["dir0/file000.txt", "dir5/file105.txt", "dir9/file199.txt"];
    for path in changed {
        tree::write(&da.join(path), "changed while B was away");
        watch.expect("modified", path, EVENT_DEADLINE);
    }
    b.start_again();
    settle(&a, &b);
    tree::assert_same_trees(&da, &db);
    for path in changed {
        assert_eq!(
            fs::read_to_string(db.join(path)).expect("read on B"),
            "changed while B was away"
        );
    }

    // B is a new process, so what it received since starting is this connection's alone.
    let received = num(&b.progress("docs", &a), "done_items");
    let sent_after = num(&a.progress("docs", &b), "sent_items");
    eprintln!(
        "after the restart: A sent {sent_after} items in all ({sent_before} before), \
         B received {received}"
    );
    assert!(
        (3..20).contains(&received),
        "B should receive the 3 changed items (and a few echoes), not all 210: {received}"
    );
    let sent_now = sent_after.checked_sub(sent_before).unwrap_or_else(|| {
        panic!("A's sent_items went down ({sent_before} → {sent_after}); count this connection from {sent_after}")
    });
    assert!(
        (3..20).contains(&sent_now),
        "A should send the 3 changed items (and a few echoes), not all 210: {sent_now}"
    );
}

#[test]
fn two_devices_writing_different_files_at_once_end_with_all_of_them() {
    let (a, da, b, db) = two_sharing(|d| tree::write(&d.join("readme.txt"), "start"), |_| {});
    settle(&a, &b);
    let mut watch_a = a.watch("docs");
    let mut watch_b = b.watch("docs");

    // Both make the same new folder and fill it, interleaved, without waiting in between.
    let mut expected = BTreeSet::new();
    for i in 0..50 {
        for (side, dir) in [("a", &da), ("b", &db)] {
            let item = format!("inbox/{side}-{i:02}.txt");
            tree::write(
                &dir.join(&item),
                format!("{item} written on {side}\n").repeat(i + 1),
            );
            expected.insert(item);
        }
    }
    let own = |side: &str| -> Vec<(&'static str, String)> {
        expected
            .iter()
            .filter(|item| item.starts_with(&format!("inbox/{side}-")))
            .map(|item| ("added", item.clone()))
            .collect()
    };
    for (watch, side) in [(&mut watch_a, "a"), (&mut watch_b, "b")] {
        let events = own(side);
        let events: Vec<(&str, &str)> = events.iter().map(|(k, i)| (*k, i.as_str())).collect();
        watch.expect_all(&events, Duration::from_secs(10));
    }

    settle(&a, &b);
    tree::assert_same_trees(&da, &db);
    expected.insert("inbox".to_owned());
    expected.insert("readme.txt".to_owned());
    assert_eq!(names(&da), expected);
    for (agent, dir) in [(&a, &da), (&b, &db)] {
        prior::assert_matches_tree(&agent.prior_state("docs"), dir);
    }
}

#[test]
fn an_unknown_device_is_refused_until_it_is_added() {
    let a = Agent::start();
    let c = Agent::start();
    let (da, dc) = (a.data_dir("docs"), c.data_dir("docs"));
    tree::write(&da.join("a.txt"), "A's own file");
    tree::write(&dc.join("intruder.txt"), "C's file, which A must not take");
    let c_id = c.device_id();
    // A shares the source with C's device ID but never pins C with `peer add`.
    a.share("docs", &da, &[&c]);
    c.add_peer(&a);
    c.share("docs", &dc, &[&a]);

    let mut last = serde_json::Value::Null;
    let refused = backoff::retry_with_backoff(SYNC, || {
        last = a.status();
        last["refused_devices"]
            .as_array()
            .is_some_and(|all| all.iter().any(|d| *d == c_id.as_str()))
            .then_some(())
    });
    assert!(refused.is_some(), "A never listed C as refused:\n{last:#}");
    assert!(
        last["peers"]
            .as_array()
            .is_some_and(|all| all.iter().all(|p| p["device_id"] != c_id.as_str())),
        "{last:#}"
    );
    // C is not a peer of A, so only the connected-devices meaning of `wait` can end.
    a.wait_connected(SYNC);
    assert_eq!(names(&da), set(&["a.txt"]));
    assert!(!a.prior_state("docs").contains_key("intruder.txt"));
    let seen_by_c = c.progress("docs", &a);
    assert_eq!(seen_by_c["connected"], false, "{seen_by_c:#}");

    // Once A pins C (and dials it), they connect and the two folders become one.
    a.add_peer(&c);
    settle(&c, &a);
    tree::assert_same_trees(&da, &dc);
    assert_eq!(names(&da), set(&["a.txt", "intruder.txt"]));
    let status = a.status();
    assert!(
        status["refused_devices"]
            .as_array()
            .is_some_and(|all| all.iter().all(|d| *d != c_id.as_str())),
        "{status:#}"
    );
}

#[test]
fn a_newcomer_fetches_one_file_from_every_peer_that_has_it() {
    const SIZE: u64 = 24 << 20;
    let a = Agent::start();
    let b = Agent::start();
    let c = Agent::start();
    let (da, db, dc) = (a.data_dir("docs"), b.data_dir("docs"), c.data_dir("docs"));
    tree::write_pseudo_random(&da.join("big.bin"), 11, SIZE);
    // All three trust each other; A and B share with C from the start, C joins later.
    pair(&a, &b);
    pair(&a, &c);
    pair(&b, &c);
    a.share("docs", &da, &[&b, &c]);
    b.share("docs", &db, &[&a, &c]);
    a.sync_with(&[&b], SYNC);
    b.sync_with(&[&a], SYNC);
    tree::assert_same_trees(&da, &db);

    c.share("docs", &dc, &[&a, &b]);
    c.sync_with(&[&a, &b], SYNC);
    a.sync_with(&[&b, &c], SYNC);
    b.sync_with(&[&a, &c], SYNC);
    tree::assert_same_trees(&da, &dc);

    let from_a = num(&c.progress("docs", &a), "fetched_bytes");
    let from_b = num(&c.progress("docs", &b), "fetched_bytes");
    assert_eq!(
        from_a + from_b,
        SIZE,
        "every byte came over the network once: {from_a} + {from_b}"
    );
    // Both holders served a real share of the chunks, not a stray one.
    assert!(
        from_a >= SIZE / 5 && from_b >= SIZE / 5,
        "chunk requests were not spread: {from_a} bytes from A, {from_b} from B"
    );
}

#[test]
fn a_source_that_loses_its_marker_or_its_root_deletes_nothing_on_the_peer() {
    let (a, da, b, db) = two_sharing(
        |d| {
            tree::write(&d.join("keep/one.txt"), "one");
            tree::write(&d.join("two.txt"), "two");
        },
        |_| {},
    );
    settle(&a, &b);
    tree::assert_same_trees(&da, &db);
    let before = num(&a.source("docs"), "sequence");

    // The marker goes, as when a disk is unmounted and its empty mount point stays behind;
    // then the content "goes" too.
    let mut watch = a.watch("docs");
    fs::remove_dir_all(da.join(".tandem")).expect("remove the marker");
    fs::remove_dir_all(da.join("keep")).expect("remove keep/");
    fs::remove_file(da.join("two.txt")).expect("remove two.txt");
    a.ctl(&["rescan", "docs"]);
    let event = watch.expect_where("source-error of docs", EVENT_DEADLINE, |e| {
        e["kind"] == "source-error"
    });
    assert!(
        event["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("marker"),
        "{event}"
    );
    let s = a.source("docs");
    assert_eq!(s["state"], "error", "{s:#}");
    assert_eq!(num(&s, "sequence"), before, "nothing was recorded: {s:#}");
    assert!(a.prior_state("docs").values().all(|r| !r.deleted));

    // The whole root goes as well: still nothing recorded, and B keeps every file.
    fs::remove_dir_all(&da).expect("remove the root");
    a.ctl(&["rescan", "docs"]);
    assert_eq!(num(&a.source("docs"), "sequence"), before);
    b.sync_with(&[&a], SYNC);
    assert_eq!(
        fs::read_to_string(db.join("keep/one.txt")).expect("B keeps keep/one.txt"),
        "one"
    );
    assert_eq!(
        fs::read_to_string(db.join("two.txt")).expect("B keeps two.txt"),
        "two"
    );
}

#[test]
fn ignored_items_are_neither_sent_nor_written() {
    let (a, da, b, db) = two_sharing(
        |d| {
            tree::write(&d.join(".tandemignore"), "*.tmp\nbuild/\n");
            tree::write(&d.join("keep.txt"), "keep");
            tree::write(&d.join("scratch.tmp"), "scratch");
            tree::write(&d.join("build/out.o"), "object");
            tree::write(&d.join("private/diary.txt"), "dear diary");
        },
        |d| tree::write(&d.join(".tandemignore"), "private/\n"),
    );
    settle(&a, &b);
    assert_eq!(
        fs::read_to_string(db.join("keep.txt")).expect("keep.txt on B"),
        "keep"
    );
    // A ignores these: they are not recorded, so never sent.
    assert!(!db.join("scratch.tmp").exists() && !db.join("build").exists());
    let rows = a.prior_state("docs");
    for ignored in ["scratch.tmp", "build", "build/out.o", ".tandemignore"] {
        assert!(!rows.contains_key(ignored), "A recorded {ignored}");
    }
    // B ignores private/: A sends it, B does not write it.
    assert!(rows.contains_key("private/diary.txt"));
    assert!(!db.join("private").exists());
    // Each device keeps its own patterns and its own ignored files.
    assert_eq!(
        fs::read_to_string(db.join(".tandemignore")).expect("B's patterns"),
        "private/\n"
    );
    assert!(da.join("scratch.tmp").exists() && da.join("build/out.o").exists());
}

/// Conflict copies of `name` in `dir` (`stem.sync-conflict-….ext`).
fn conflict_copies(dir: &Path, stem: &str) -> Vec<String> {
    let mut found: Vec<String> = fs::read_dir(dir)
        .expect("list the folder")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("{stem}.sync-conflict-")))
        .collect();
    found.sort();
    found
}

#[test]
fn concurrent_edits_end_with_the_same_winner_and_one_conflict_copy_everywhere() {
    let (a, da, mut b, db) = two_sharing(|d| tree::write(&d.join("doc.txt"), "base"), |_| {});
    settle(&a, &b);
    tree::assert_same_trees(&da, &db);

    // Apart, both edit the same file; B's edit is the later one.
    b.kill();
    let mut watch = a.watch("docs");
    tree::write(&da.join("doc.txt"), "edited on A");
    tree::set_mtime(&da.join("doc.txt"), OLD_MTIME_NS);
    watch.expect("modified", "doc.txt", EVENT_DEADLINE);
    tree::write(&db.join("doc.txt"), "edited on B");
    tree::set_mtime(&db.join("doc.txt"), OLD_MTIME_NS + 1_000_000_000);
    b.start_again();

    // Meeting again: the same winner on both, and A's version kept once as a conflict copy.
    settle(&a, &b);
    settle(&b, &a);
    for d in [&da, &db] {
        assert_eq!(
            fs::read_to_string(d.join("doc.txt")).expect("doc.txt"),
            "edited on B",
            "the later edit wins in {}",
            d.display()
        );
    }
    let (on_a, on_b) = (conflict_copies(&da, "doc"), conflict_copies(&db, "doc"));
    assert_eq!(on_a.len(), 1, "one conflict copy on A: {on_a:?}");
    assert_eq!(on_a, on_b, "the same conflict copy on both");
    assert!(on_a[0].ends_with(".txt"), "{on_a:?}");
    assert_eq!(
        fs::read_to_string(da.join(&on_a[0])).expect("conflict copy"),
        "edited on A"
    );
    tree::assert_same_trees(&da, &db);
    // `tandemctl conflicts` lists it on both devices, naming what it lost to.
    for agent in [&a, &b] {
        let list = agent.json(&["conflicts", "docs"]);
        let all = list["conflicts"].as_array().expect("a conflict list");
        assert_eq!(all.len(), 1, "{list:#}");
        assert_eq!(all[0]["path"], on_a[0].as_str(), "{list:#}");
        assert_eq!(all[0]["original"], "doc.txt", "{list:#}");
    }
    assert!(a.fails(&["conflicts", "nope"], 1).contains("source list"));
}

#[test]
fn replaced_and_deleted_files_are_kept_as_versions_and_can_be_restored() {
    let (a, da, b, db) = two_sharing(
        |d| {
            tree::write(&d.join("notes.txt"), "version one");
            tree::write(&d.join("dir/old.txt"), "soon deleted");
        },
        |_| {},
    );
    settle(&a, &b);

    let mut watch = a.watch("docs");
    tree::write(&da.join("notes.txt"), "version two");
    fs::remove_file(da.join("dir/old.txt")).expect("delete on A");
    watch.expect_all(
        &[("modified", "notes.txt"), ("deleted", "dir/old.txt")],
        EVENT_DEADLINE,
    );
    settle(&a, &b);
    assert_eq!(
        fs::read_to_string(db.join("notes.txt")).expect("notes on B"),
        "version two"
    );
    assert!(!db.join("dir/old.txt").exists());

    // B kept what A's changes replaced and deleted.
    let list = b.json(&["versions", "list", "docs"]);
    let kept: Vec<&str> = list["versions"]
        .as_array()
        .expect("a version list")
        .iter()
        .filter_map(|v| v["path"].as_str())
        .collect();
    assert_eq!(kept, ["dir/old.txt", "notes.txt"], "{list:#}");
    let one = b.json(&["versions", "list", "docs", "notes.txt"]);
    assert_eq!(one["versions"][0]["size"], "version one".len(), "{one:#}");

    // Restoring on B is a local change there, and reaches A.
    let mut watch = b.watch("docs");
    b.json(&["versions", "restore", "docs", "dir/old.txt"]);
    watch.expect("added", "dir/old.txt", EVENT_DEADLINE);
    settle(&b, &a);
    assert_eq!(
        fs::read_to_string(da.join("dir/old.txt")).expect("restored on A"),
        "soon deleted"
    );
    let err = b.fails(&["versions", "restore", "docs", "never.txt"], 1);
    assert!(err.contains("versions list"), "{err}");
    let err = b.fails(&["versions", "restore", "docs", "../escape"], 1);
    assert!(err.contains("not allowed"), "{err}");
}

#[test]
fn three_devices_editing_apart_agree_on_the_winner_and_keep_each_loser_once() {
    let (a, mut b, mut c) = (Agent::start(), Agent::start(), Agent::start());
    let (da, db, dc) = (a.data_dir("docs"), b.data_dir("docs"), c.data_dir("docs"));
    tree::write(&da.join("doc.txt"), "base");
    pair(&a, &b);
    pair(&b, &c);
    pair(&a, &c);
    a.share("docs", &da, &[&b, &c]);
    b.share("docs", &db, &[&a, &c]);
    c.share("docs", &dc, &[&a, &b]);
    let all_agree = |a: &Agent, b: &Agent, c: &Agent| {
        // Twice round: a change one device makes while settling (a merged conflict version)
        // reaches the others on the second pass.
        for _ in 0..2 {
            a.sync_with(&[b, c], SYNC);
            b.sync_with(&[a, c], SYNC);
            c.sync_with(&[a, b], SYNC);
        }
    };
    all_agree(&a, &b, &c);
    tree::assert_same_trees(&da, &dc);

    // All three edit doc.txt apart: A while the others are down, B and C while they are down
    // (each scans its edit at start). C's edit is the latest, then B's, then A's.
    b.kill();
    c.kill();
    let mut watch = a.watch("docs");
    tree::write(&da.join("doc.txt"), "edited on A");
    tree::set_mtime(&da.join("doc.txt"), OLD_MTIME_NS);
    watch.expect("modified", "doc.txt", EVENT_DEADLINE);
    tree::write(&db.join("doc.txt"), "edited on B");
    tree::set_mtime(&db.join("doc.txt"), OLD_MTIME_NS + 1_000_000_000);
    tree::write(&dc.join("doc.txt"), "edited on C");
    tree::set_mtime(&dc.join("doc.txt"), OLD_MTIME_NS + 2_000_000_000);
    b.start_again();
    c.start_again();
    // B and C listen on new ports now; A's address did not change.
    b.add_peer(&c);
    c.add_peer(&b);
    all_agree(&a, &b, &c);

    // The same winner everywhere, and each losing version kept exactly once, under the same
    // name on every device: named after the device that wrote it and when.
    let short = |agent: &Agent| agent.device_id()[..7].to_owned();
    let expected = vec![
        format!("doc.sync-conflict-20010909-014640-{}.txt", short(&a)),
        format!("doc.sync-conflict-20010909-014641-{}.txt", short(&b)),
    ];
    for d in [&da, &db, &dc] {
        assert_eq!(
            fs::read_to_string(d.join("doc.txt")).expect("doc.txt"),
            "edited on C",
            "the latest edit wins in {}",
            d.display()
        );
        assert_eq!(conflict_copies(d, "doc"), expected, "in {}", d.display());
        assert_eq!(
            fs::read_to_string(d.join(&expected[0])).expect("A's copy"),
            "edited on A"
        );
        assert_eq!(
            fs::read_to_string(d.join(&expected[1])).expect("B's copy"),
            "edited on B"
        );
    }
    tree::assert_same_trees(&da, &db);
    tree::assert_same_trees(&da, &dc);
    for agent in [&a, &b, &c] {
        let list = agent.json(&["conflicts", "docs"]);
        let all = list["conflicts"].as_array().expect("a conflict list");
        assert_eq!(all.len(), 2, "{list:#}");
    }
}

#[test]
fn an_edit_beats_a_concurrent_deletion_and_the_file_comes_back() {
    let (a, da, mut b, db) = two_sharing(
        |d| {
            tree::write(&d.join("deleted on A.txt"), "base 1");
            tree::write(&d.join("deleted on B.txt"), "base 2");
        },
        |_| {},
    );
    settle(&a, &b);
    tree::assert_same_trees(&da, &db);

    // Apart: each side deletes one file the other edits. The deletions happen last in time,
    // so it is not the later change that wins but the edit.
    b.kill();
    // Watched before the edit, so the edit's event cannot come before the watch starts.
    let mut watch = a.watch("docs");
    tree::write(&db.join("deleted on A.txt"), "edited on B");
    tree::write(&da.join("deleted on B.txt"), "edited on A");
    watch.expect("modified", "deleted on B.txt", EVENT_DEADLINE);
    fs::remove_file(da.join("deleted on A.txt")).expect("delete on A");
    watch.expect("deleted", "deleted on A.txt", EVENT_DEADLINE);
    fs::remove_file(db.join("deleted on B.txt")).expect("delete on B");
    b.start_again();

    settle(&a, &b);
    settle(&b, &a);
    for d in [&da, &db] {
        assert_eq!(
            fs::read_to_string(d.join("deleted on A.txt")).expect("B's edit is back"),
            "edited on B",
            "in {}",
            d.display()
        );
        assert_eq!(
            fs::read_to_string(d.join("deleted on B.txt")).expect("A's edit is back"),
            "edited on A",
            "in {}",
            d.display()
        );
        assert!(conflict_copies(d, "deleted on A").is_empty());
        assert!(conflict_copies(d, "deleted on B").is_empty());
    }
    tree::assert_same_trees(&da, &db);
}

#[test]
fn a_file_and_a_folder_made_apart_under_one_name_both_survive() {
    let (a, da, mut b, db) = two_sharing(
        |d| {
            tree::write(&d.join("y/old.txt"), "in y from the start");
        },
        |_| {},
    );
    settle(&a, &b);

    // Apart: A makes a file "x" where B makes a folder "x" with something in it; and A
    // replaces folder "y" by a file while B adds to the folder.
    b.kill();
    let mut watch = a.watch("docs");
    tree::write(&da.join("x"), "file x from A");
    fs::remove_dir_all(da.join("y")).expect("remove y on A");
    tree::write(&da.join("y"), "file y from A");
    watch.expect_all(&[("added", "x"), ("modified", "y")], EVENT_DEADLINE);
    tree::write(&db.join("x/inner.txt"), "inside folder x on B");
    tree::write(&db.join("y/new.txt"), "added to folder y on B");
    b.start_again();

    settle(&a, &b);
    settle(&b, &a);
    settle(&a, &b);
    tree::assert_same_trees(&da, &db);
    // Nothing either side wrote is lost: the folders' new files are there, and each file
    // that had to give way to a folder is kept as a conflict copy beside it.
    for d in [&da, &db] {
        assert_eq!(
            fs::read_to_string(d.join("x/inner.txt")).expect("B's file in folder x"),
            "inside folder x on B"
        );
        let everything: Vec<String> = tree::snapshot(d).into_keys().collect();
        let holds = |text: &str| {
            everything
                .iter()
                .any(|p| fs::read_to_string(d.join(p)).is_ok_and(|c| c == text))
        };
        for text in ["file x from A", "file y from A", "added to folder y on B"] {
            assert!(
                holds(text),
                "{text:?} is lost in {}: {everything:?}",
                d.display()
            );
        }
        // Where each ended up: folder x won (a folder beats a file), A's file x is a conflict
        // copy; A's file y replaced the folder it had seen, whose unseen addition moved aside
        // with the folder.
        assert_eq!(
            fs::read_to_string(d.join("y")).expect("file y"),
            "file y from A"
        );
        let x_copies = conflict_copies(d, "x");
        assert_eq!(x_copies.len(), 1, "{everything:?}");
        assert_eq!(
            fs::read_to_string(d.join(&x_copies[0])).expect("x's copy"),
            "file x from A"
        );
        let y_copies = conflict_copies(d, "y");
        assert_eq!(y_copies.len(), 1, "{everything:?}");
        assert_eq!(
            fs::read_to_string(d.join(&y_copies[0]).join("new.txt")).expect("moved aside"),
            "added to folder y on B"
        );
        assert!(
            !d.join(&y_copies[0]).join("old.txt").exists(),
            "what A deleted stays deleted"
        );
    }
}

#[test]
fn a_folder_renamed_whole_goes_as_one_move_and_comes_back_as_one() {
    let (a, da, b, db) = two_sharing(
        |d| {
            for i in 0..300 {
                tree::write(
                    &d.join(format!("album/{:02}/photo {i}.txt", i % 7)),
                    format!("photo {i}"),
                );
            }
            // Big enough to be copied by chunk from its old name, not read whole.
            tree::write(
                &d.join("album/big.bin"),
                PseudoRandom::new(9).bytes(300_000),
            );
            symlink("big.bin", d.join("album/latest")).expect("symlink album/latest");
            tree::write(&d.join("elsewhere.txt"), "not moved");
        },
        |_| {},
    );
    settle(&a, &b);
    tree::assert_same_trees(&da, &db);
    let fetched = |on: &Agent, from: &Agent| num(&on.progress("docs", from), "fetched_bytes");
    let fetched_before = fetched(&b, &a);
    let inode =
        |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::symlink_metadata(p).expect("stat"));
    let inodes_before: Vec<u64> = ["album", "album/00/photo 0.txt", "album/big.bin"]
        .iter()
        .map(|p| inode(&db.join(p)))
        .collect();

    fs::rename(da.join("album"), da.join("pictures")).expect("rename album/");
    settle(&a, &b);
    tree::assert_same_trees(&da, &db);
    assert!(db.join("pictures/big.bin").is_file() && !db.join("album").exists());
    let inodes_after: Vec<u64> = ["pictures", "pictures/00/photo 0.txt", "pictures/big.bin"]
        .iter()
        .map(|p| inode(&db.join(p)))
        .collect();
    assert_eq!(
        inodes_before, inodes_after,
        "B renamed its folder once: the same files under the new name"
    );
    assert!(
        !db.join(".tandem/versions/album").exists(),
        "nothing was deleted on B, so nothing was kept as a version"
    );
    let progress = b.progress("docs", &a);
    assert_eq!(num(&progress, "moved_folders"), 1, "{progress:#}");
    assert_eq!(num(&progress, "expanded_moves"), 0, "{progress:#}");
    assert_eq!(
        fetched(&b, &a),
        fetched_before,
        "no content crossed the network: B had it all under the old name"
    );
    for agent in [&a, &b] {
        prior::assert_matches_tree(
            &agent.prior_state("docs"),
            if std::ptr::eq(agent, &a) { &da } else { &db },
        );
    }

    // And back, from B, into a folder of its own.
    fs::create_dir(db.join("archive")).expect("mkdir archive");
    settle(&a, &b);
    fs::rename(db.join("pictures"), db.join("archive/2026")).expect("rename pictures/");
    settle(&a, &b);
    tree::assert_same_trees(&da, &db);
    let progress = a.progress("docs", &b);
    assert_eq!(num(&progress, "moved_folders"), 1, "{progress:#}");
    assert_eq!(num(&progress, "expanded_moves"), 0, "{progress:#}");
    prior::assert_matches_tree(&a.prior_state("docs"), &da);
    prior::assert_matches_tree(&b.prior_state("docs"), &db);
}
