//! Stories: every kind of change to files and folders shows up in `tandemctl watch` within a
//! second, and afterwards the prior state in SQLite matches the tree exactly.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use tandem_tests::prior::{self};
use tandem_tests::{Agent, EVENT_DEADLINE, Watch, num, tree};

/// Starts an agent with source `docs` holding `files`, scanned and watched.
fn watched_source(files: &[(&str, &str)]) -> (Agent, std::path::PathBuf, Watch) {
    let agent = Agent::start();
    let data = agent.data_dir("docs");
    for (path, contents) in files {
        tree::write(&data.join(path), contents);
    }
    agent.add_source("docs", &data);
    agent.wait(Duration::from_secs(30));
    let watch = agent.watch("docs");
    (agent, data, watch)
}

/// After `wait`: the database matches the tree, `deleted` are tombstones, and the events seen
/// carry strictly increasing sequences up to the source's own.
fn check_recorded(agent: &Agent, data: &Path, watch: &mut Watch, deleted: &[&str]) {
    agent.wait(Duration::from_secs(30));
    let s = agent.source("docs");
    assert_eq!(s["state"], "idle", "{s:#}");
    let last = num(&s, "sequence");
    // Events are printed after their commit; this one is the last, so all are in by then.
    watch.expect_sequence("docs", last, EVENT_DEADLINE);
    let seqs: Vec<u64> = watch
        .events()
        .filter_map(|e| e["sequence"].as_u64())
        .filter(|&n| n > 0)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "event sequences are not increasing: {seqs:?}"
    );

    let rows = agent.prior_state("docs");
    prior::assert_matches_tree(&rows, data);
    prior::assert_deleted(&rows, deleted);
    let disk = tree::snapshot(data);
    assert_eq!(num(&s, "files"), count(&disk, tree::Kind::File), "{s:#}");
    assert_eq!(
        num(&s, "directories"),
        count(&disk, tree::Kind::Directory),
        "{s:#}"
    );
    assert_eq!(
        num(&s, "symlinks"),
        count(&disk, tree::Kind::Symlink),
        "{s:#}"
    );
    let bytes: u64 = disk.values().map(|e| e.size).sum();
    assert_eq!(num(&s, "bytes"), bytes, "{s:#}");
}

fn count(disk: &std::collections::BTreeMap<String, tree::Entry>, kind: tree::Kind) -> u64 {
    u64::try_from(disk.values().filter(|e| e.kind == kind).count()).expect("small")
}

#[test]
fn file_creates_edits_deletes_and_renames_are_seen_within_a_second_and_recorded() {
    let (agent, data, mut watch) = watched_source(&[
        ("notes/a.txt", "alpha"),
        ("notes/b.txt", "bravo"),
        ("keep.txt", "kept under another name"),
        ("link-me.txt", "target"),
    ]);

    tree::write(&data.join("new.txt"), "a new file");
    watch.expect("added", "new.txt", EVENT_DEADLINE);

    tree::write(&data.join("notes/a.txt"), "alpha, longer now");
    watch.expect("modified", "notes/a.txt", EVENT_DEADLINE);

    fs::remove_file(data.join("notes/b.txt")).expect("delete notes/b.txt");
    watch.expect("deleted", "notes/b.txt", EVENT_DEADLINE);

    fs::rename(data.join("keep.txt"), data.join("notes/kept.txt")).expect("rename keep.txt");
    watch.expect_all(
        &[("deleted", "keep.txt"), ("added", "notes/kept.txt")],
        EVENT_DEADLINE,
    );

    symlink("link-me.txt", data.join("link")).expect("create a symlink");
    watch.expect("added", "link", EVENT_DEADLINE);

    // An empty file, then the same name replaced by a folder.
    tree::write(&data.join("empty"), "");
    watch.expect("added", "empty", EVENT_DEADLINE);
    fs::remove_file(data.join("empty")).expect("delete empty");
    fs::create_dir(data.join("empty")).expect("mkdir empty");
    // Usually one "modified"; a scan that falls between the two steps sees a delete and an add.
    watch.expect_where("modified or added \"empty\"", EVENT_DEADLINE, |e| {
        e["item"] == "empty" && (e["kind"] == "modified" || e["kind"] == "added")
    });

    check_recorded(&agent, &data, &mut watch, &["notes/b.txt", "keep.txt"]);
    let rows = agent.prior_state("docs");
    assert_eq!(rows["empty"].kind, tree::Kind::Directory);
    assert_eq!(rows["link"].kind, tree::Kind::Symlink);
}

#[test]
fn folder_creates_renames_and_tree_deletes_are_seen_within_a_second_and_recorded() {
    let (agent, data, mut watch) = watched_source(&[
        ("old/x.txt", "x"),
        ("old/sub/y.txt", "why"),
        ("trash/t1.txt", "1"),
        ("trash/deep/t2.txt", "22"),
        ("trash/deep/deeper/t3.txt", "333"),
        ("stays.txt", "stays"),
    ]);

    fs::create_dir(data.join("single")).expect("mkdir single");
    watch.expect("added", "single", EVENT_DEADLINE);

    fs::create_dir_all(data.join("p/q/r")).expect("mkdir -p p/q/r");
    watch.expect_all(
        &[("added", "p"), ("added", "p/q"), ("added", "p/q/r")],
        EVENT_DEADLINE,
    );

    tree::write(&data.join("p/q/r/deep.txt"), "deep down");
    watch.expect("added", "p/q/r/deep.txt", EVENT_DEADLINE);

    fs::rename(data.join("old"), data.join("renamed")).expect("rename old/ to renamed/");
    watch.expect_all(
        &[
            ("deleted", "old"),
            ("deleted", "old/x.txt"),
            ("deleted", "old/sub"),
            ("deleted", "old/sub/y.txt"),
            ("added", "renamed"),
            ("added", "renamed/x.txt"),
            ("added", "renamed/sub"),
            ("added", "renamed/sub/y.txt"),
        ],
        EVENT_DEADLINE,
    );

    // The watch follows the folder to its new name.
    tree::write(&data.join("renamed/sub/y.txt"), "why not, after the rename");
    watch.expect("modified", "renamed/sub/y.txt", EVENT_DEADLINE);
    tree::write(&data.join("renamed/sub/z.txt"), "zed");
    watch.expect("added", "renamed/sub/z.txt", EVENT_DEADLINE);

    fs::remove_dir_all(data.join("trash")).expect("rm -r trash");
    watch.expect_all(
        &[
            ("deleted", "trash"),
            ("deleted", "trash/t1.txt"),
            ("deleted", "trash/deep"),
            ("deleted", "trash/deep/t2.txt"),
            ("deleted", "trash/deep/deeper"),
            ("deleted", "trash/deep/deeper/t3.txt"),
        ],
        EVENT_DEADLINE,
    );

    fs::remove_dir(data.join("single")).expect("rmdir single");
    watch.expect("deleted", "single", EVENT_DEADLINE);

    check_recorded(
        &agent,
        &data,
        &mut watch,
        &[
            "old",
            "old/x.txt",
            "old/sub",
            "old/sub/y.txt",
            "trash",
            "trash/t1.txt",
            "trash/deep",
            "trash/deep/t2.txt",
            "trash/deep/deeper",
            "trash/deep/deeper/t3.txt",
            "single",
        ],
    );
    // A renamed file keeps its inode: the prior state at the new name is the same file.
    let rows = agent.prior_state("docs");
    let disk = tree::snapshot(&data);
    assert_eq!(
        u64::try_from(rows["renamed/x.txt"].inode).ok(),
        Some(disk["renamed/x.txt"].inode)
    );
}
