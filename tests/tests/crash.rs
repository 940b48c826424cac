//! Story: the receiving agent is killed with SIGKILL at seeded random moments while it syncs a
//! few hundred files, twenty times over. Every time, no file on it holds partial content and
//! its database passes SQLite's integrity check; in the end the trees converge and no temp file
//! remains. And it dies in the middle of a batch's durability step (while its temp files are
//! flushed, and while its folders are): nothing it recorded as applied is missing from disk.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_tests::tree::{self, PseudoRandom};
use tandem_tests::{Agent, backoff, num, pair, prior};

const SYNC: Duration = Duration::from_secs(60);
const FILES: u64 = 300;
const ROUNDS: u64 = 20;

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Writes file `i` for `round` on A and remembers the version.
fn write_version(root: &Path, i: u64, round: u64, seen: &mut BTreeMap<String, BTreeSet<u64>>) {
    let mut rng = PseudoRandom::new(i * 1_000 + round + 1);
    let len = usize::try_from(1 + rng.below(150_000)).expect("small");
    let bytes = rng.bytes(len);
    let path = format!("d{}/f{i:03}.bin", i % 10);
    // Written beside the source and renamed in, so A's folder only ever holds whole versions
    // and anything else found on B is B's doing.
    let staging = root.with_extension("staging");
    tree::write(&staging, &bytes);
    let target = root.join(&path);
    fs::create_dir_all(target.parent().expect("a parent")).expect("mkdir");
    fs::rename(&staging, &target).expect("rename a version into place");
    seen.entry(path).or_default().insert(digest(&bytes));
}

/// Fails if any file on `root` is not a whole version A once wrote.
fn assert_no_partial_files(root: &Path, seen: &BTreeMap<String, BTreeSet<u64>>, when: &str) {
    for (path, entry) in tree::snapshot(root) {
        if entry.kind != tree::Kind::File || path.contains(".tandem-tmp-") {
            continue;
        }
        let bytes = fs::read(root.join(&path)).expect("read a synced file");
        // A conflict copy holds a whole version of the item it is named after.
        let original = original_of(&path);
        let known = seen
            .get(&original)
            .is_some_and(|v| v.contains(&digest(&bytes)));
        assert!(
            known,
            "{when}: {path} holds content A never wrote ({} bytes)",
            bytes.len()
        );
    }
}

/// `d/f.sync-conflict-…-DEVICE.bin` → `d/f.bin`; other paths unchanged.
fn original_of(path: &str) -> String {
    match path.split_once(".sync-conflict-") {
        Some((stem, rest)) => match rest.rsplit_once('.') {
            Some((_, ext)) => format!("{stem}.{ext}"),
            None => stem.to_owned(),
        },
        None => path.to_owned(),
    }
}

/// Starts B again without its planned faults and waits until A and B agree, with everything
/// B recorded on its disk.
fn restart_without_faults_and_converge(a: &Agent, b: &mut Agent, da: &Path, db: &Path) {
    b.clear_env();
    b.start_again();
    b.sync_with(&[a], SYNC);
    a.sync_with(&[b], SYNC);
    tree::assert_same_trees(da, db);
    assert_recorded_items_on_disk(b.home(), db, "at the end");
}

/// Conflict copies anywhere under `root`.
fn conflict_copies(root: &Path) -> Vec<String> {
    tree::snapshot(root)
        .into_keys()
        .filter(|p| p.contains(".sync-conflict-"))
        .collect()
}

fn assert_database_intact(home: &Path, when: &str) {
    let db = rusqlite::Connection::open_with_flags(
        home.join("tandem.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
    )
    .expect("open the database");
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("run the integrity check");
    assert_eq!(check, "ok", "{when}: SQLite integrity check");
}

/// Writes the first version of every file on A and shares "docs" between A and B; gives back
/// both folders and the versions written.
fn share_versions(a: &Agent, b: &Agent) -> (PathBuf, PathBuf, BTreeMap<String, BTreeSet<u64>>) {
    let (da, db) = (a.data_dir("docs"), b.data_dir("docs"));
    let mut seen = BTreeMap::new();
    for i in 0..FILES {
        write_version(&da, i, 0, &mut seen);
    }
    pair(a, b);
    a.share("docs", &da, &[b]);
    b.share("docs", &db, &[a]);
    (da, db, seen)
}

#[test]
fn sigkill_during_sync_never_leaves_partial_files_or_a_damaged_database() {
    let (a, mut b) = (Agent::start(), Agent::start());
    let (da, db, mut seen) = share_versions(&a, &b);
    let mut rng = PseudoRandom::new(42);
    for round in 1..=ROUNDS {
        // Let B get a seeded share of the way, then pull the plug.
        let target = rng.below(FILES);
        b.await_connected(&[&a], SYNC);
        let _ = backoff::retry_with_backoff(Duration::from_secs(20), || {
            let p = b.progress("docs", &a);
            (num(&p, "done_items") >= target || p["in_sync"] == true).then_some(())
        });
        b.crash();
        assert_no_partial_files(&db, &seen, &format!("after kill -9 in round {round}"));
        assert_database_intact(b.home(), &format!("after kill -9 in round {round}"));
        // Meanwhile A keeps changing: a seeded tenth of the files get a new version.
        for _ in 0..FILES / 10 {
            write_version(&da, rng.below(FILES), round, &mut seen);
        }
        b.start_again();
    }
    b.sync_with(&[&a], SYNC);
    a.sync_with(&[&b], SYNC);
    tree::assert_same_trees(&da, &db);
    assert_no_partial_files(&db, &seen, "at the end");
    // Only A ever wrote, so a conflict copy would mean a crash made B take a half-recorded
    // apply for an edit of its own (the apply journal exists to prevent that).
    let copies: Vec<String> = tree::snapshot(&db)
        .into_keys()
        .filter(|p| p.contains(".sync-conflict-"))
        .collect();
    assert!(copies.is_empty(), "spurious conflict copies: {copies:?}");
    assert_database_intact(b.home(), "at the end");
}

/// Fails if the database records a live file that is not on disk exactly as recorded; gives
/// back how many it records.
fn assert_recorded_items_on_disk(home: &Path, root: &Path, when: &str) -> usize {
    let rows = prior::read(&home.join("tandem.db"), "docs");
    let mut files = 0;
    for (path, row) in rows {
        if row.deleted || row.kind != tree::Kind::File {
            continue;
        }
        let on_disk = fs::symlink_metadata(root.join(&path));
        let Ok(meta) = on_disk else {
            panic!("{when}: {path} is recorded as applied but is not on disk");
        };
        assert_eq!(
            i64::try_from(meta.len()).expect("small files"),
            row.size,
            "{when}: {path} is recorded with another size than it has on disk"
        );
        files += 1;
    }
    files
}

#[test]
fn a_kill_during_a_batchs_durability_step_leaves_nothing_recorded_that_is_not_on_disk() {
    // Killed on the spot (as by kill -9) while temp files are flushed (as they are built,
    // several at once, while the batch before is applied), then while the folders a batch
    // renamed into are: the batch's renames may be done, but it was not recorded, so it must
    // not be found recorded.
    // A batch holds at most 256 items, so its 300 files and 11 folders (the root's too) take
    // two batches at least: the 261st file flush, and the 12th folder flush, come after the
    // first batch has begun.
    for plan in ["sync::abort:1:260", "sync-folder::abort:1:11"] {
        let a = Agent::start();
        let mut b = Agent::start_with_env(&[("TANDEM_TEST_DISK_FAULTS", plan)]);
        let (da, db, seen) = share_versions(&a, &b);
        let exit = b
            .wait_exit(SYNC)
            .unwrap_or_else(|| panic!("{plan}: B never reached the planned crash"));
        assert!(!exit.success(), "{plan}: B exited normally: {exit}");
        let when = format!("after a crash at {plan}");
        let recorded = assert_recorded_items_on_disk(b.home(), &db, &when);
        // The crash came after earlier batches were recorded, and before this one was.
        assert!(
            recorded > 0 && recorded < FILES as usize,
            "{when}: {recorded} files recorded"
        );
        assert_no_partial_files(&db, &seen, &when);
        assert_database_intact(b.home(), &when);
        // Without the fault, B finishes the job from where it stopped.
        restart_without_faults_and_converge(&a, &mut b, &da, &db);
        let mut copies = conflict_copies(&db);
        copies.extend(tree::temps(&db));
        assert!(copies.is_empty(), "{plan}: left behind: {copies:?}");
    }
}

#[test]
fn a_kill_between_a_folder_moves_rename_and_its_record_is_finished_at_the_next_start() {
    // B renames the folder for A's move in one step, then fsyncs the folder it moved into:
    // killed there, the rename is done and journaled but not recorded. The next start must
    // take the journal (the folder as moved, the same files), not rescan it as B's own change
    // or fetch it again.
    let a = Agent::start();
    let mut b =
        Agent::start_with_env(&[("TANDEM_TEST_DISK_FAULTS", "sync-folder:moved-here:abort")]);
    let (da, db) = (a.data_dir("docs"), b.data_dir("docs"));
    for i in 0..100 {
        tree::write(
            &da.join(format!("album/{}/f{i}.txt", i % 5)),
            format!("file {i}"),
        );
    }
    // Empty: B makes it without writing into it, so the planned fault waits for the move.
    fs::create_dir(da.join("moved-here")).expect("mkdir moved-here");
    pair(&a, &b);
    a.share("docs", &da, &[&b]);
    b.share("docs", &db, &[&a]);
    b.sync_with(&[&a], SYNC);
    a.sync_with(&[&b], SYNC);
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).expect("stat"));
    let before = ino(&db.join("album/0/f0.txt"));

    fs::rename(da.join("album"), da.join("moved-here/album")).expect("rename album/");
    let exit = b
        .wait_exit(SYNC)
        .unwrap_or_else(|| panic!("B never reached the planned crash"));
    assert!(!exit.success(), "B exited normally: {exit}");
    assert!(
        db.join("moved-here/album/0/f0.txt").is_file() && !db.join("album").exists(),
        "the crash came after the rename"
    );
    assert_database_intact(b.home(), "after the crash");

    restart_without_faults_and_converge(&a, &mut b, &da, &db);
    prior::assert_matches_tree(&b.prior_state("docs"), &db);
    assert_eq!(
        ino(&db.join("moved-here/album/0/f0.txt")),
        before,
        "the moved files were recorded where they are, not fetched again"
    );
    let log = fs::read_to_string(b.home().join("logs").join("tandemd.log")).unwrap_or_default();
    assert!(
        log.contains("recorded items a crash left written but unrecorded"),
        "B's start took the journal"
    );
    for dir in [&da, &db] {
        let copies = conflict_copies(dir);
        assert!(copies.is_empty(), "left behind: {copies:?}");
    }
}
