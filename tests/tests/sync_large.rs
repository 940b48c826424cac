//! Stories of moving a lot of data between two devices: one large file (whose rename and small
//! edit must cost next to nothing on the wire) and many small files. In their own test binary
//! so they run side by side with each other, apart from the quick stories.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tandem_tests::tree::{self, PseudoRandom};
use tandem_tests::{Agent, num};

/// Longest a large transfer may take (debug build of the daemon, two cores).
const SYNC: Duration = Duration::from_secs(300);
/// How soon a change to the large file must show up in `watch`: it is hashed whole first.
const BIG_EVENT_DEADLINE: Duration = Duration::from_secs(20);

const MIB: u64 = 1 << 20;

/// Two agents that know each other and share source `docs`; `fill_a` fills A's folder first.
fn two_sharing(fill_a: impl FnOnce(&Path)) -> (Agent, PathBuf, Agent, PathBuf) {
    tandem_tests::two_sharing(fill_a, |_| {})
}

fn settle(first: &Agent, second: &Agent) {
    tandem_tests::settle(first, second, SYNC);
}

/// Chunk bytes B has fetched from A over the network since B started.
fn fetched_by(b: &Agent, a: &Agent) -> u64 {
    num(&b.progress("docs", a), "fetched_bytes")
}

#[test]
fn a_large_file_arrives_whole_then_a_rename_and_a_small_edit_move_almost_nothing() {
    const SIZE: u64 = 200 * MIB;
    let started = Instant::now();
    let (a, da, b, db) =
        two_sharing(|d| tree::write_pseudo_random(&d.join("big.bin"), 0x7A4D_E315, SIZE));
    settle(&a, &b);
    eprintln!("200 MiB: in sync after {:?}", started.elapsed());
    tree::assert_same_trees(&da, &db);
    let first = fetched_by(&b, &a);
    assert_eq!(
        first,
        SIZE,
        "every chunk is fetched once: {:#}",
        b.progress("docs", &a)
    );

    let mut watch = a.watch("docs");
    let renamed = Instant::now();
    fs::rename(da.join("big.bin"), da.join("big, renamed.bin")).expect("rename big.bin");
    watch.expect_all(
        &[("deleted", "big.bin"), ("added", "big, renamed.bin")],
        BIG_EVENT_DEADLINE,
    );
    settle(&a, &b);
    eprintln!("200 MiB rename: in sync after {:?}", renamed.elapsed());
    tree::assert_same_trees(&da, &db);
    assert!(!db.join("big.bin").exists());
    let after_rename = fetched_by(&b, &a);
    assert!(
        after_rename - first < 64 * 1024,
        "a rename fetched {} bytes: {:#}",
        after_rename - first,
        b.progress("docs", &a)
    );

    // 4 KiB overwritten in the middle, in place.
    let edited = Instant::now();
    let file = fs::OpenOptions::new()
        .write(true)
        .open(da.join("big, renamed.bin"))
        .expect("open the large file");
    file.write_all_at(&PseudoRandom::new(99).bytes(4096), SIZE / 2 + 12_345)
        .expect("overwrite 4 KiB");
    drop(file);
    watch.expect("modified", "big, renamed.bin", BIG_EVENT_DEADLINE);
    settle(&a, &b);
    eprintln!(
        "200 MiB, 4 KiB edited: in sync after {:?}",
        edited.elapsed()
    );
    tree::assert_same_trees(&da, &db);
    let after_edit = fetched_by(&b, &a);
    eprintln!(
        "fetched by B: {first} bytes, then {} for the rename, then {} for the edit",
        after_rename - first,
        after_edit - after_rename
    );
    assert!(
        after_edit - after_rename < MIB,
        "a 4 KiB edit fetched {} bytes: {:#}",
        after_edit - after_rename,
        b.progress("docs", &a)
    );
}

#[test]
fn ten_thousand_small_files_arrive_intact() {
    let mut rng = PseudoRandom::new(10_000);
    let mut bytes = 0u64;
    let (a, da, b, db) = two_sharing(|d| {
        for folder in 0..100 {
            for file in 0..100 {
                let len = 200 + (folder * 100 + file) * 37 % 300;
                bytes += u64::try_from(len).expect("small");
                tree::write(
                    &d.join(format!("folder{folder:02}/file{file:02}.txt")),
                    rng.bytes(len),
                );
            }
        }
    });
    let started = Instant::now();
    settle(&a, &b);
    eprintln!("10,000 small files: in sync after {:?}", started.elapsed());
    tree::assert_same_trees(&da, &db);
    let s = b.source("docs");
    assert_eq!(num(&s, "files"), 10_000, "{s:#}");
    assert_eq!(num(&s, "directories"), 100, "{s:#}");
    assert_eq!(num(&s, "bytes"), bytes, "{s:#}");
    assert_eq!(s["item_errors"].as_array().map(Vec::len), Some(0), "{s:#}");
}
