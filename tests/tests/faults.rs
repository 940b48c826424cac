//! Stories of a bad network between two devices ("never lose a byte"): every connection
//! between A and B crosses the harness's [`Proxy`], which cuts it mid-stream, slows it down,
//! flips bytes in it, or turns new connections away. The agents reconnect on their own and
//! converge, and no corrupted or partial content ever lands in a source.
//!
//! Each agent dials the other through its own route of one proxy, so whichever side dials
//! (both do; the dial rule keeps one connection), the bytes cross the same faults. Each story
//! also asserts, from the proxy's counters, that its faults hit real traffic.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_tests::proxy::Proxy;
use tandem_tests::tree::{self, PseudoRandom};
use tandem_tests::{Agent, EVENT_DEADLINE, backoff, num, settle};

/// Longest a source may take to agree over a faulty link (debug build, two shared cores).
const SYNC: Duration = Duration::from_secs(90);
/// Longest the agents may take to notice a cut link, or to be turned away once.
const NOTICE: Duration = Duration::from_secs(30);

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Two agents sharing source `docs`, every connection between them through one proxy.
struct Linked {
    a: Agent,
    da: PathBuf,
    b: Agent,
    db: PathBuf,
    proxy: Proxy,
}

/// Starts A and B, fills their folders, and links them through a fresh proxy; `arm` switches
/// faults on before the agents are introduced, so they hit the first connection too.
fn linked(
    fill_a: impl FnOnce(&Path),
    fill_b: impl FnOnce(&Path),
    arm: impl FnOnce(&Proxy),
) -> Linked {
    let (a, b) = (Agent::start(), Agent::start());
    let (da, db) = (a.data_dir("docs"), b.data_dir("docs"));
    fill_a(&da);
    fill_b(&db);
    let mut proxy = Proxy::new();
    let to_a = proxy.route(&a.listen());
    let to_b = proxy.route(&b.listen());
    arm(&proxy);
    a.add_peer_at(&b, &to_b);
    b.add_peer_at(&a, &to_a);
    a.share("docs", &da, &[&b]);
    b.share("docs", &db, &[&a]);
    Linked {
        a,
        da,
        b,
        db,
        proxy,
    }
}

/// Writes `count` files of pseudo-random bytes, `len(i)` bytes each, and returns their bytes
/// by item path.
fn fill(
    root: &Path,
    seed: u64,
    count: usize,
    len: impl Fn(usize) -> usize,
) -> BTreeMap<String, Vec<u8>> {
    let mut rng = PseudoRandom::new(seed);
    (0..count)
        .map(|i| {
            let path = format!("d{}/f{i:03}.bin", i % 5);
            let bytes = rng.bytes(len(i));
            tree::write(&root.join(&path), &bytes);
            (path, bytes)
        })
        .collect()
}

/// Fails if a file in `root` holds anything but the whole content it has in `expected` (or
/// one that is not expected at all). Temp files are the agent's business and skipped. Made
/// for a tree the agent is writing to: a name that vanishes between listing and reading (a
/// temp renamed into place, say) is passed over, not an error. Returns how many files it
/// checked.
fn assert_only_whole_files(root: &Path, expected: &BTreeMap<String, Vec<u8>>, when: &str) -> usize {
    let mut checked = 0;
    let mut folders = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = folders.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tandem") {
                // The agent's own folder at the root, and its temp files anywhere.
                continue;
            }
            let path = format!("{prefix}{name}");
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                folders.push((entry.path(), format!("{path}/")));
                continue;
            }
            let Some(want) = expected.get(&path) else {
                panic!(
                    "{when}: {path} is in {} but was never written",
                    root.display()
                );
            };
            if let Ok(got) = fs::read(entry.path()) {
                assert!(
                    got == *want,
                    "{when}: {path} holds {} bytes that are not its content ({} bytes)",
                    got.len(),
                    want.len()
                );
                checked += 1;
            }
        }
    }
    checked
}

/// The status entry of `peer` on `agent`.
fn peer_status(agent: &Agent, peer: &Agent) -> Value {
    let device = peer.device_id();
    let status = agent.status();
    status["peers"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["device_id"] == device.as_str()))
        .cloned()
        .unwrap_or_else(|| panic!("no peer {device} in status:\n{status:#}"))
}

/// Fails unless neither agent refused anything from the other and neither has item errors:
/// whatever the network did, nothing bad got past the transport.
fn assert_nothing_refused(l: &Linked) {
    for (agent, other) in [(&l.a, &l.b), (&l.b, &l.a)] {
        let p = peer_status(agent, other);
        assert_eq!(num(&p, "refused"), 0, "{p:#}");
        let s = agent.source("docs");
        assert_eq!(s["item_errors"].as_array().map(Vec::len), Some(0), "{s:#}");
    }
}

/// Lines of the agent's log that say a peer connection ended, and why.
fn disconnects(agent: &Agent) -> Vec<String> {
    let log = agent.home().join("logs").join("tandemd.log");
    fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", log.display()))
        .lines()
        .filter(|l| l.contains("peer disconnected"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn connections_cut_mid_transfer_again_and_again_and_the_agents_converge() {
    const CUTS: u64 = 5;
    let started = Instant::now();
    // 37 small files and 3 of 3 MiB (dozens of chunks each): about 9.5 MiB to move.
    let mut on_a = BTreeMap::new();
    let l = linked(
        |d| {
            on_a = fill(d, 1, 37, |i| 1 + i * 997 % (40 * KIB));
            for i in 0..3 {
                let path = format!("big/{i}.bin");
                tree::write_pseudo_random(&d.join(&path), 100 + i, 3 * MIB as u64);
                on_a.insert(path.clone(), fs::read(d.join(&path)).expect("read it back"));
            }
        },
        |_| {},
        // Every MiB on the wire, CUTS times: all land while the transfer runs, as it needs
        // more than CUTS MiB however often it restarts.
        |p| p.cut_every(MIB as u64, CUTS),
    );

    // While the cuts come, every file that appears on B is whole.
    let cut = backoff::retry_with_backoff(SYNC, || {
        assert_only_whole_files(&l.db, &on_a, "while connections were being cut");
        (l.proxy.counts().cuts >= CUTS).then_some(())
    });
    assert!(
        cut.is_some(),
        "not cut {CUTS} times: {:?}",
        l.proxy.counts()
    );
    settle(&l.b, &l.a, SYNC);
    settle(&l.a, &l.b, SYNC);
    eprintln!("cut {CUTS} times: in sync after {:?}", started.elapsed());

    tree::assert_same_trees(&l.da, &l.db);
    assert_only_whole_files(&l.db, &on_a, "after the cuts");
    let counts = l.proxy.counts();
    eprintln!("proxy: {counts:?}");
    assert_eq!(
        counts.cuts, CUTS,
        "every planned cut hit a live connection: {counts:?}"
    );
    assert!(counts.connections_cut >= CUTS, "{counts:?}");
    // Each cut fell on the connection carrying the transfer, about a MiB into it.
    assert!(
        counts.bytes_before_cuts >= CUTS * MIB as u64 / 2,
        "the cut connections carried data: {counts:?}"
    );
    // One connection at the start, at least one more after each cut.
    assert!(counts.accepted > CUTS, "{counts:?}");
    let fetched = num(&l.b.progress("docs", &l.a), "fetched_bytes");
    assert!(fetched >= 9 * MIB as u64, "B fetched {fetched} bytes");
    assert!(!disconnects(&l.b).is_empty(), "B logged no disconnect");
    assert_nothing_refused(&l);
}

#[test]
fn a_slow_link_delays_every_read_and_both_sides_still_converge() {
    let started = Instant::now();
    let l = linked(
        |d| {
            fill(d, 2, 20, |i| 1 + i * 3001 % (30 * KIB));
            tree::write_pseudo_random(&d.join("big.bin"), 7, MIB as u64);
        },
        |d| {
            tree::write(&d.join("from-b/notes.txt"), "written on B");
            tree::write(
                &d.join("from-b/data.bin"),
                PseudoRandom::new(3).bytes(200 * KIB),
            );
        },
        |p| p.delay(Duration::from_millis(40)),
    );

    settle(&l.b, &l.a, SYNC);
    settle(&l.a, &l.b, SYNC);
    eprintln!("40 ms a read: in sync after {:?}", started.elapsed());

    tree::assert_same_trees(&l.da, &l.db);
    let counts = l.proxy.counts();
    eprintln!("proxy: {counts:?}");
    // The whole exchange (over 1.2 MiB) crossed the delay, in many reads.
    assert!(counts.forwarded > MIB as u64, "{counts:?}");
    assert!(counts.delayed >= 20, "{counts:?}");
    assert_nothing_refused(&l);
}

#[test]
fn flipped_bytes_break_connections_but_never_land_in_a_file() {
    const FLIPS: u64 = 6;
    let started = Instant::now();
    // 400 files of up to 60 KiB (most one or two chunks), about 12 MiB: more than the
    // flipping phase lets through (about FLIPS × 1 MiB), so flips keep coming until there
    // have been FLIPS of them, and plenty is left to move once the link is clean again.
    let mut on_a = BTreeMap::new();
    let l = linked(
        |d| on_a = fill(d, 4, 400, |i| 1 + i * 7919 % (60 * KIB)),
        |_| {},
        // About one byte in a MiB: every connection breaks soon, most after moving some files
        // first.
        |p| p.flip_randomly(0xF11F, MIB as u64),
    );

    // While bytes are being flipped, every file that appears on B is whole and right.
    let mut polls = 0u64;
    let flipped = backoff::retry_with_backoff(SYNC, || {
        polls += 1;
        assert_only_whole_files(&l.db, &on_a, "while bytes were being flipped");
        let counts = l.proxy.counts();
        (counts.flipped >= FLIPS).then_some(counts)
    });
    let during = flipped.unwrap_or_else(|| {
        panic!(
            "fewer than {FLIPS} bytes flipped within {SYNC:?}: {:?}",
            l.proxy.counts()
        )
    });
    l.proxy.stop_flipping();
    let arrived = assert_only_whole_files(&l.db, &on_a, "when the flipping stopped");
    eprintln!(
        "{during:?} after {:?}, {polls} polls of B, {arrived} files on B",
        started.elapsed()
    );

    settle(&l.b, &l.a, SYNC);
    settle(&l.a, &l.b, SYNC);
    eprintln!("{FLIPS} flips: in sync after {:?}", started.elapsed());

    tree::assert_same_trees(&l.da, &l.db);
    assert_only_whole_files(&l.db, &on_a, "in the end");
    let counts = l.proxy.counts();
    eprintln!("proxy: {counts:?}");
    // Each flip broke the connection it hit (TLS refuses a record that fails its check), and
    // the agents dialled again.
    assert!(counts.accepted > FLIPS / 2, "{counts:?}");
    // And the agents say why the link broke: TLS turned a record down.
    let logged = [disconnects(&l.a), disconnects(&l.b)].concat();
    assert!(
        logged
            .iter()
            .any(|l| l.contains("cannot decrypt") || l.contains("BadRecordMac")),
        "no disconnect names the refused record:\n{}",
        logged.join("\n")
    );
    // Nothing a flip touched got past TLS: not one chunk failed its hash.
    assert_nothing_refused(&l);
}

#[test]
fn both_sides_edit_while_the_link_is_down_and_converge_when_it_returns() {
    let started = Instant::now();
    let l = linked(
        |d| {
            for name in ["edit-on-a", "edit-on-b", "delete-on-b", "both-edit"] {
                tree::write(&d.join(format!("{name}.txt")), format!("{name}: base"));
            }
        },
        |_| {},
        |_| {},
    );
    let (a, b, da, db) = (&l.a, &l.b, &l.da, &l.db);
    settle(b, a, SYNC);
    tree::assert_same_trees(da, db);

    // The link goes down: live connections cut, new ones turned away.
    l.proxy.refuse_new(true);
    assert!(l.proxy.cut_all() >= 1, "a connection was up");
    for (agent, other) in [(a, b), (b, a)] {
        let down = backoff::retry_with_backoff(NOTICE, || {
            (peer_status(agent, other)["connected"] == false).then_some(())
        });
        assert!(
            down.is_some(),
            "still connected: {:#}",
            peer_status(agent, other)
        );
    }

    // Both sides change things, each change recorded while apart.
    let mut watch_a = a.watch("docs");
    tree::write(&da.join("edit-on-a.txt"), "edited on A while apart");
    tree::write(&da.join("new-on-a/one.txt"), "made on A while apart");
    tree::write(&da.join("both-edit.txt"), "both-edit: A's side");
    tree::set_mtime(&da.join("both-edit.txt"), 1_000_000_000_000_000_000);
    watch_a.expect_all(
        &[
            ("modified", "edit-on-a.txt"),
            ("added", "new-on-a/one.txt"),
            ("modified", "both-edit.txt"),
        ],
        EVENT_DEADLINE,
    );
    let mut watch_b = b.watch("docs");
    tree::write(&db.join("edit-on-b.txt"), "edited on B while apart");
    fs::remove_file(db.join("delete-on-b.txt")).expect("delete on B");
    tree::write(&db.join("new-on-b.txt"), "made on B while apart");
    tree::write(
        &db.join("both-edit.txt"),
        "both-edit: B's side, the later edit",
    );
    tree::set_mtime(&db.join("both-edit.txt"), 1_000_000_001_000_000_000);
    watch_b.expect_all(
        &[
            ("modified", "edit-on-b.txt"),
            ("deleted", "delete-on-b.txt"),
            ("added", "new-on-b.txt"),
            ("modified", "both-edit.txt"),
        ],
        EVENT_DEADLINE,
    );
    // They kept trying to meet, and were turned away.
    let refused = backoff::retry_with_backoff(NOTICE, || {
        let counts = l.proxy.counts();
        (counts.refused >= 2).then_some(counts)
    });
    assert!(
        refused.is_some(),
        "no dial was turned away: {:?}",
        l.proxy.counts()
    );
    for (agent, other) in [(a, b), (b, a)] {
        let p = peer_status(agent, other);
        assert_eq!(p["connected"], false, "{p:#}");
    }

    // The link comes back.
    let healed = Instant::now();
    l.proxy.refuse_new(false);
    settle(a, b, SYNC);
    settle(b, a, SYNC);
    eprintln!(
        "apart, then in sync {:?} after the link returned ({:?} in all)",
        healed.elapsed(),
        started.elapsed()
    );

    tree::assert_same_trees(da, db);
    let read = |name: &str| fs::read_to_string(da.join(name)).expect("read on A");
    assert_eq!(read("edit-on-a.txt"), "edited on A while apart");
    assert_eq!(read("edit-on-b.txt"), "edited on B while apart");
    assert_eq!(read("new-on-a/one.txt"), "made on A while apart");
    assert_eq!(read("new-on-b.txt"), "made on B while apart");
    assert!(!da.join("delete-on-b.txt").exists());
    // Edited on both: the later edit wins everywhere, the other is kept as a conflict copy.
    assert_eq!(read("both-edit.txt"), "both-edit: B's side, the later edit");
    let copies: Vec<String> = fs::read_dir(da)
        .expect("list A's folder")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("both-edit.sync-conflict-"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(read(&copies[0]), "both-edit: A's side");
    assert_nothing_refused(&l);
}
