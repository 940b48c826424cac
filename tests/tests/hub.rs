//! Stories of devices that are never online together, syncing through a hub
//! (`tandemd --role hub`): every device knows the others without an address, so the hub is
//! the only path; each waits with `tandemctl wait`, which counts a device reached through a
//! hub as in sync once its bundles are applied and this device's changes are uploaded.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_tests::records::{edit_text as edit, read_text as read};
use tandem_tests::tree;
use tandem_tests::{Agent, backoff};

/// Longest a small source may take to go through the hub.
const SYNC: Duration = Duration::from_secs(60);

/// Where a test's hub keeps its objects: a folder under its home, or a moto S3 bucket.
enum Store {
    Local,
    S3(tandem_tests::s3::S3),
}

impl Store {
    /// A hub on this store.
    fn hub(&self) -> Agent {
        self.hub_with("")
    }

    /// A hub on this store with more `[hub]` settings (`key = value` lines).
    fn hub_with(&self, hub_lines: &str) -> Agent {
        match self {
            Store::Local if hub_lines.is_empty() => Agent::start_hub(),
            Store::Local => Agent::start_hub_with_config(&format!("[hub]\n{hub_lines}")),
            Store::S3(s3) => Agent::start_hub_with_config(&s3.hub_config_with(hub_lines)),
        }
    }

    /// How many chunks the store holds.
    fn chunk_count(&self, hub: &Agent) -> usize {
        match self {
            Store::Local => chunk_count(hub),
            Store::S3(s3) => s3.keys().iter().filter(|k| k.contains("/chunks/")).count(),
        }
    }

    /// How many bundles of `device` the store holds.
    fn bundle_count(&self, hub: &Agent, device: &str) -> usize {
        match self {
            Store::Local => bundle_files(hub, device).len(),
            Store::S3(s3) => {
                let folder = format!("/devices/{device}/bundles/");
                s3.keys().iter().filter(|k| k.contains(&folder)).count()
            }
        }
    }

    /// The bytes of `device`'s bundles on the store, oldest first.
    fn bundles(&self, hub: &Agent, device: &str) -> Vec<Vec<u8>> {
        match self {
            Store::Local => bundle_files(hub, device)
                .iter()
                .map(|p| fs::read(p).expect("read a bundle"))
                .collect(),
            Store::S3(s3) => {
                let folder = format!("/devices/{device}/bundles/");
                let mut keys: Vec<String> = s3
                    .keys()
                    .into_iter()
                    .filter(|k| k.contains(&folder))
                    .collect();
                keys.sort();
                keys.iter().map(|k| s3.object(k)).collect()
            }
        }
    }
}

/// A and B, both using `hub`, knowing each other without an address, sharing `docs` (A's
/// folder filled by `fill_a` first) with A's key; both waited on.
fn two_through(hub: &Agent, fill_a: impl FnOnce(&Path)) -> (Agent, Agent, PathBuf, PathBuf) {
    let a = Agent::start();
    let b = Agent::start();
    a.use_hub(hub);
    b.use_hub(hub);
    a.know(&b);
    b.know(&a);
    let a_docs = a.data_dir("docs");
    fill_a(&a_docs);
    a.share_keyed("docs", &a_docs, "files", &[&b], "");
    let key = a.source_key("docs");
    let b_docs = b.data_dir("docs");
    b.share_keyed("docs", &b_docs, "files", &[&a], &key);
    a.wait(SYNC);
    b.wait(SYNC);
    (a, b, a_docs, b_docs)
}

/// A story run twice: on a hub's local folder, and on a moto S3 bucket (skipped, with the
/// reason, where moto cannot run).
macro_rules! on_both_stores {
    ($story:ident, $local:ident, $s3:ident) => {
        #[test]
        fn $local() {
            $story(&Store::Local);
        }

        #[test]
        fn $s3() {
            let Some(s3) = s3_or_skip() else {
                return;
            };
            $story(&Store::S3(s3));
        }
    };
}

on_both_stores!(
    converges_through_the_hub_alone,
    a_device_converges_through_the_hub_alone_after_the_other_stopped,
    a_device_converges_through_the_hub_alone_after_the_other_stopped_on_s3
);

fn converges_through_the_hub_alone(store: &Store) {
    let hub = store.hub();
    let (a, mut b, a_docs, b_docs) = two_through(&hub, |a_docs| {
        tree::write(&a_docs.join("notes/plan.txt"), b"first plan\n");
        tree::write_pseudo_random(&a_docs.join("big.bin"), 7, 3 << 20);
    });
    tree::assert_same_trees(&a_docs, &b_docs);

    // B is off while A changes things; then A is off and B comes back: only the hub has them.
    b.kill();
    tree::write(&a_docs.join("notes/plan.txt"), b"second plan\n");
    tree::write(&a_docs.join("notes/new.txt"), b"added while B was away\n");
    tree::write_pseudo_random(&a_docs.join("big.bin"), 8, 3 << 20);
    fs::remove_file(a_docs.join("notes/plan.txt")).expect("delete plan");
    tree::write(&a_docs.join("notes/plan2.txt"), b"the plan, renamed\n");
    a.wait(SYNC);
    let mut a = a;
    a.kill();
    b.start_again();
    b.wait(SYNC);
    tree::assert_same_trees(&a_docs, &b_docs);
    assert!(!b_docs.join("notes/plan.txt").exists());
    assert_eq!(
        fs::read(b_docs.join("notes/new.txt")).expect("new.txt on B"),
        b"added while B was away\n"
    );
}

/// Every byte string of `needles` that occurs in any file under `root`, with the file.
fn plaintext_under(root: &Path, needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in walk(root) {
        let Ok(bytes) = fs::read(&entry) else {
            continue;
        };
        for needle in needles {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                found.push(format!("{needle:?} in {}", entry.display()));
            }
        }
        let name = entry.to_string_lossy();
        for needle in needles {
            if name.contains(needle) {
                found.push(format!("{needle:?} in the name {name}"));
            }
        }
    }
    found
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn the_hub_holds_no_name_path_source_id_or_content_in_plaintext() {
    let hub = Agent::start_hub();
    let a = Agent::start();
    let b = Agent::start();
    a.use_hub(&hub);
    b.use_hub(&hub);
    a.know(&b);
    b.know(&a);
    let source = "ledger-source-q7x";
    let a_docs = a.data_dir("ledger");
    let secret = "the secret figure is 4242-ALPHA-BRAVO";
    tree::write(
        &a_docs.join("accounts-folder-zz/quarterly-report-x9.txt"),
        format!("{secret}\n"),
    );
    // A larger file goes by sealed chunks, not inline.
    let mut big = Vec::new();
    while big.len() < 600_000 {
        big.extend_from_slice(format!("{secret} row {}\n", big.len()).as_bytes());
    }
    tree::write(&a_docs.join("blueprint-omega.dat"), &big);
    a.share_keyed(source, &a_docs, "files", &[&b], "");
    let key = a.source_key(source);
    let b_docs = b.data_dir("ledger");
    b.share_keyed(source, &b_docs, "files", &[&a], &key);
    a.wait(SYNC);
    b.wait(SYNC);
    tree::assert_same_trees(&a_docs, &b_docs);

    let needles = [
        source,
        "accounts-folder-zz",
        "quarterly-report-x9",
        "blueprint-omega",
        "4242-ALPHA-BRAVO",
        &key,
    ];
    let found = plaintext_under(hub.home(), &needles);
    assert!(
        found.is_empty(),
        "the hub holds plaintext:\n{}",
        found.join("\n")
    );
    // The check itself finds what is there: the agents' own homes hold the source id.
    assert!(!plaintext_under(a.home(), &[source]).is_empty());
}

/// The files of `device`'s bundles in a hub's local storage, oldest first.
fn bundle_files(hub: &Agent, device: &str) -> Vec<PathBuf> {
    let spaces = hub.home().join("storage/spaces");
    let mut files: Vec<PathBuf> = walk(&spaces)
        .into_iter()
        .filter(|p| {
            p.parent()
                .is_some_and(|d| d.ends_with(format!("{device}/bundles")))
        })
        .collect();
    files.sort();
    files
}

/// Waits until `agent`'s status shows an error for `source` at its hub that contains `text`.
fn await_hub_error(agent: &Agent, source: &str, text: &str) {
    let mut last = serde_json::Value::Null;
    let seen = backoff::retry_with_backoff(SYNC, || {
        last = agent.status();
        let errors: Vec<String> = last["hubs"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|h| h["sources"].as_array().into_iter().flatten())
            .filter(|s| s["id"] == source)
            .filter_map(|s| s["error"].as_str().map(str::to_owned))
            .collect();
        errors.iter().any(|e| e.contains(text)).then_some(())
    });
    assert!(
        seen.is_some(),
        "no hub error with {text:?} for {source}; status:\n{last:#}"
    );
}

#[test]
fn a_hostile_hub_that_changes_replays_or_swaps_bundles_lands_nothing() {
    let hub = Agent::start_hub();
    let a = Agent::start();
    let mut b = Agent::start();
    let c = Agent::start();
    for agent in [&a, &b, &c] {
        agent.use_hub(&hub);
    }
    for (x, y) in [(&a, &b), (&a, &c), (&b, &c)] {
        x.know(y);
        y.know(x);
    }
    let a_docs = a.data_dir("docs");
    tree::write(&a_docs.join("start.txt"), b"start\n");
    a.share_keyed("docs", &a_docs, "files", &[&b, &c], "");
    let key = a.source_key("docs");
    let b_docs = b.data_dir("docs");
    b.share_keyed("docs", &b_docs, "files", &[&a, &c], &key);
    let c_docs = c.data_dir("docs");
    c.share_keyed("docs", &c_docs, "files", &[&a, &b], &key);
    tree::write(&c_docs.join("from-c.txt"), b"written on C\n");
    c.wait(SYNC);
    a.wait(SYNC);
    b.wait(SYNC);

    // B is away while A writes twice: two bundles.
    b.kill();
    tree::write(&a_docs.join("first.txt"), b"first\n");
    a.wait(SYNC);
    tree::write(&a_docs.join("second.txt"), b"second\n");
    a.wait(SYNC);
    let a_id = a.device_id();
    let bundles = bundle_files(&hub, &a_id);
    assert!(bundles.len() >= 3, "{bundles:?}");
    let newest = bundles.last().expect("a bundle").clone();
    let older = bundles[bundles.len() - 2].clone();
    let original = fs::read(&newest).expect("read the newest bundle");
    let c_bundle = bundle_files(&hub, &c.device_id())
        .last()
        .map(|p| fs::read(p).expect("read C's bundle"))
        .expect("C has a bundle");

    // A flipped byte, an older bundle under the newer name, C's bundle under A's name.
    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let older_bytes = fs::read(&older).expect("read the older bundle");
    for forged in [flipped, older_bytes, c_bundle] {
        fs::write(&newest, &forged).expect("forge the newest bundle");
        b.start_again();
        await_hub_error(&b, "docs", "fails authentication");
        assert!(
            !b_docs.join("second.txt").exists(),
            "a refused bundle landed"
        );
        b.kill();
    }
    // The hub serves the real bundle again: B takes it.
    fs::write(&newest, &original).expect("restore the bundle");
    b.start_again();
    b.wait(SYNC);
    assert_eq!(
        fs::read(b_docs.join("second.txt")).expect("second.txt"),
        b"second\n"
    );
    tree::assert_same_trees(&a_docs, &b_docs);
}

/// A, B and C know each other only through the hub, and share `docs` with A's key.
fn three_through_a_hub(store: &Store) -> (Agent, Agent, Agent, Agent, [PathBuf; 3]) {
    let hub = store.hub();
    let (a, b, c) = (Agent::start(), Agent::start(), Agent::start());
    for agent in [&a, &b, &c] {
        agent.use_hub(&hub);
    }
    for (x, y) in [(&a, &b), (&a, &c), (&b, &c)] {
        x.know(y);
        y.know(x);
    }
    let dirs = [a.data_dir("docs"), b.data_dir("docs"), c.data_dir("docs")];
    a.share_keyed("docs", &dirs[0], "files", &[&b, &c], "");
    let key = a.source_key("docs");
    b.share_keyed("docs", &dirs[1], "files", &[&a, &c], &key);
    c.share_keyed("docs", &dirs[2], "files", &[&a, &b], &key);
    for agent in [&a, &b, &c] {
        agent.wait(SYNC);
    }
    (hub, a, b, c, dirs)
}

on_both_stores!(
    three_never_online_in_pairs,
    three_devices_never_online_in_pairs_converge_through_the_hub,
    three_devices_never_online_in_pairs_converge_through_the_hub_on_s3
);

fn three_never_online_in_pairs(store: &Store) {
    let (_hub, mut a, mut b, mut c, [a_docs, b_docs, c_docs]) = three_through_a_hub(store);
    b.kill();
    c.kill();
    tree::write(&a_docs.join("from-a.txt"), b"A was here\n");
    a.wait(SYNC);
    a.kill();

    b.start_again();
    b.wait(SYNC);
    assert!(b_docs.join("from-a.txt").exists());
    tree::write(&b_docs.join("from-b.txt"), b"B was here\n");
    tree::write(&b_docs.join("from-a.txt"), b"A was here, B edited\n");
    b.wait(SYNC);
    b.kill();

    c.start_again();
    c.wait(SYNC);
    tree::write(&c_docs.join("from-c.txt"), b"C was here\n");
    fs::remove_file(c_docs.join("from-b.txt")).expect("C deletes B's file");
    c.wait(SYNC);
    c.kill();

    a.start_again();
    a.wait(SYNC);
    b.start_again();
    b.wait(SYNC);
    tree::assert_same_trees(&a_docs, &c_docs);
    tree::assert_same_trees(&b_docs, &c_docs);
    assert_eq!(
        fs::read(a_docs.join("from-a.txt")).expect("from-a.txt"),
        b"A was here, B edited\n"
    );
    assert!(!a_docs.join("from-b.txt").exists());
}

on_both_stores!(
    meeting_directly_applies_once,
    devices_that_also_meet_directly_apply_every_file_once,
    devices_that_also_meet_directly_apply_every_file_once_on_s3
);

fn meeting_directly_applies_once(store: &Store) {
    let hub = store.hub();
    let a = Agent::start();
    let b = Agent::start();
    a.use_hub(&hub);
    b.use_hub(&hub);
    tandem_tests::pair(&a, &b);
    let a_docs = a.data_dir("docs");
    for i in 0..40 {
        tree::write(
            &a_docs.join(format!("d{}/f{i}.txt", i % 4)),
            format!("file {i}\n"),
        );
    }
    a.share_keyed("docs", &a_docs, "files", &[&b], "");
    let key = a.source_key("docs");
    let b_docs = b.data_dir("docs");
    b.share_keyed("docs", &b_docs, "files", &[&a], &key);
    a.sync_with(&[&b], SYNC);
    b.sync_with(&[&a], SYNC);
    tree::assert_same_trees(&a_docs, &b_docs);
    // Applied once each: B numbered one change per item, and replaced nothing.
    let a_seq = tandem_tests::num(&a.source("docs"), "sequence");
    let b_seq = tandem_tests::num(&b.source("docs"), "sequence");
    assert_eq!(b_seq, a_seq, "B: {:#}", b.source("docs"));
    let versions = b_docs.join(".tandem/versions");
    let kept = walk(&versions);
    assert!(kept.is_empty(), "B kept versions of: {kept:?}");
    // And the hub has A's index too, for a device that is away.
    assert!(!store.bundles(&hub, &a.device_id()).is_empty());
}

/// A moto S3 server, or the test is skipped with the reason.
fn s3_or_skip() -> Option<tandem_tests::s3::S3> {
    match tandem_tests::s3::S3::start() {
        Ok(s3) => Some(s3),
        Err(why) => {
            tandem_tests::skip(&why);
            None
        }
    }
}

#[test]
fn two_hubs_over_one_s3_bucket_carry_a_and_b_to_the_same_tree() {
    let Some(s3) = s3_or_skip() else {
        return;
    };
    let config = s3.hub_config();
    let hub_one = Agent::start_hub_with_config(&config);
    let hub_two = Agent::start_hub_with_config(&config);
    let mut a = Agent::start();
    let b = Agent::start();
    // A uses one hub, B the other; both hubs serve both (the allowed list is in the bucket).
    a.use_hub(&hub_one);
    b.use_hub(&hub_two);
    a.know(&b);
    b.know(&a);
    let a_docs = a.data_dir("docs");
    tree::write(&a_docs.join("notes/one.txt"), b"one\n");
    tree::write_pseudo_random(&a_docs.join("big.bin"), 11, 2 << 20);
    a.share_keyed("docs", &a_docs, "files", &[&b], "");
    let key = a.source_key("docs");
    let b_docs = b.data_dir("docs");
    tree::write(&b_docs.join("from-b.txt"), b"B's own\n");
    b.share_keyed("docs", &b_docs, "files", &[&a], &key);
    a.wait(SYNC);
    b.wait(SYNC);
    a.wait(SYNC);
    tree::assert_same_trees(&a_docs, &b_docs);

    // A is away; B's change reaches A through the other hub when it is back.
    a.kill();
    tree::write(&b_docs.join("notes/one.txt"), b"one, edited on B\n");
    b.wait(SYNC);
    a.start_again();
    a.wait(SYNC);
    tree::assert_same_trees(&a_docs, &b_docs);

    // The bulk went straight between the agents and the bucket, past the hubs: B fetched
    // A's big file that way (A's counter started again with its restart).
    for (agent, least) in [(&b, 1 << 20), (&a, 1)] {
        let status = agent.status();
        let direct = status["hubs"][0]["sources"][0]["direct_bytes"]
            .as_u64()
            .unwrap_or(0);
        assert!(direct >= least, "{status:#}");
    }
    // The bucket holds no plaintext either.
    let objects = s3.objects();
    assert!(
        objects
            .iter()
            .any(|(k, b)| k.contains("/chunks/") && !b.is_empty()),
        "no chunk read back from the bucket"
    );
    let key_text = key.clone();
    for (k, body) in &objects {
        for needle in ["docs", "notes", "one.txt", "from-b"] {
            assert!(!k.contains(needle), "object name {k} holds {needle:?}");
        }
        for needle in [&b"B's own\n"[..], b"one, edited", key_text.as_bytes()] {
            assert!(
                !body.windows(needle.len()).any(|w| w == needle),
                "object {k} holds {:?}",
                String::from_utf8_lossy(needle)
            );
        }
    }
}

on_both_stores!(
    contacts_through_the_hub,
    contacts_in_three_formats_meet_only_through_the_hub,
    contacts_in_three_formats_meet_only_through_the_hub_on_s3
);

fn contacts_through_the_hub(store: &Store) {
    let hub = store.hub();
    let (a, b, mut c) = (Agent::start(), Agent::start(), Agent::start());
    for agent in [&a, &b, &c] {
        agent.use_hub(&hub);
    }
    for (x, y) in [(&a, &b), (&a, &c), (&b, &c)] {
        x.know(y);
        y.know(x);
    }
    let dir_a = a.data_dir("book");
    fs::write(
        dir_a.join("ana.vcf"),
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:ana-0001\r\nFN:Ana Lima\r\nN:Lima;Ana;;;\r\n\
         TEL;TYPE=CELL:+1 555 0100\r\nPHOTO;ENCODING=b;TYPE=JPEG:/9j/4AAQSkZJRgABAgMEBQYH\r\n\
         END:VCARD\r\n",
    )
    .expect("write ana.vcf");
    let csv_b = b.data_dir("exports").join("contacts.csv");
    let vcf_c = c.data_dir("phone").join("contacts.vcf");
    a.share_keyed("book", &dir_a, "vcard-dir", &[&b, &c], "");
    let key = a.source_key("book");
    b.share_keyed("book", &csv_b, "csv-contacts", &[&a, &c], &key);
    c.share_keyed("book", &vcf_c, "vcard-file", &[&a, &b], &key);
    for agent in [&a, &b, &c, &a] {
        agent.wait(SYNC);
    }
    assert!(read(&csv_b).contains("+1 555 0100"), "{}", read(&csv_b));
    assert!(read(&vcf_c).contains("Ana Lima"));

    // B edits the phone in its CSV while C is away; C gets it from the hub later, and A's
    // photo (which a CSV cannot hold) stays.
    c.kill();
    edit(&csv_b, "+1 555 0100", "+1 555 0199");
    b.wait(SYNC);
    a.wait(SYNC);
    c.start_again();
    c.wait(SYNC);
    let on_c = read(&vcf_c);
    assert!(on_c.contains("+1 555 0199"), "{on_c}");
    assert!(on_c.contains("PHOTO"), "{on_c}");
    let on_a = read(&dir_a.join("ana.vcf"));
    assert!(
        on_a.contains("+1 555 0199") && on_a.contains("PHOTO"),
        "{on_a}"
    );
}

/// How many chunks a hub's local storage holds.
fn chunk_count(hub: &Agent) -> usize {
    walk(&hub.home().join("storage/spaces"))
        .iter()
        .filter(|p| p.parent().is_some_and(|d| d.ends_with("chunks")))
        .count()
}

on_both_stores!(
    restarted_mid_upload,
    a_hub_restarted_in_the_middle_of_an_upload_loses_nothing,
    a_hub_restarted_in_the_middle_of_an_upload_loses_nothing_on_s3
);

fn restarted_mid_upload(store: &Store) {
    let mut hub = store.hub();
    let (a, b, a_docs, b_docs) = two_through(&hub, |a_docs| {
        tree::write(&a_docs.join("small.txt"), b"small\n");
    });
    let a_id = a.device_id();
    let bundles_before = store.bundle_count(&hub, &a_id);
    let chunks_before = store.chunk_count(&hub);

    // A large file goes up chunk by chunk (through the hub, or straight into the bucket with
    // URLs the hub signs); the hub dies once some chunks are in and before the bundle that
    // names them.
    tree::write_pseudo_random(&a_docs.join("large.bin"), 5, 96 << 20);
    let some = backoff::retry_with_backoff(SYNC, || {
        (store.chunk_count(&hub) >= chunks_before + 8).then_some(())
    });
    assert!(some.is_some(), "no chunk reached the hub");
    hub.crash();
    assert_eq!(
        store.bundle_count(&hub, &a_id),
        bundles_before,
        "the upload finished before the hub was stopped"
    );

    // Back at a new address: the agents are told, and the upload goes on.
    hub.start_again();
    a.use_hub(&hub);
    b.use_hub(&hub);
    a.wait(Duration::from_secs(180));
    b.wait(Duration::from_secs(180));
    tree::assert_same_trees(&a_docs, &b_docs);
}

/// Waits until `agent`'s status shows an error for the hub itself or for `source` at it
/// that contains `text`.
fn await_hub_refusal(agent: &Agent, source: &str, text: &str) {
    let mut last = serde_json::Value::Null;
    let seen = backoff::retry_with_backoff(SYNC, || {
        last = agent.status();
        let hubs = last["hubs"].as_array().cloned().unwrap_or_default();
        let found = hubs.iter().any(|h| {
            h["last_error"].as_str().is_some_and(|e| e.contains(text))
                || h["sources"].as_array().into_iter().flatten().any(|s| {
                    s["id"] == source && s["error"].as_str().is_some_and(|e| e.contains(text))
                })
        });
        found.then_some(())
    });
    assert!(
        seen.is_some(),
        "no hub refusal with {text:?}; status:\n{last:#}"
    );
}

on_both_stores!(
    refuses_unknown_and_non_members,
    the_hub_refuses_an_unknown_device_and_a_device_that_is_not_a_member,
    the_hub_refuses_an_unknown_device_and_a_device_that_is_not_a_member_on_s3
);

fn refuses_unknown_and_non_members(store: &Store) {
    let hub = store.hub();
    let (a, _b, _, _) = two_through(&hub, |a_docs| {
        tree::write(&a_docs.join("private.txt"), b"for A and B only\n");
    });
    let key = a.source_key("docs");

    // Unknown: a device the hub's operator never allowed, even with the key.
    let stranger = Agent::start();
    let hub_id = hub.json(&["id"]);
    stranger.json(&[
        "hub",
        "add",
        hub_id["listen"].as_str().expect("listen"),
        hub_id["device_id"].as_str().expect("device_id"),
    ]);
    stranger.know(&a);
    let s_docs = stranger.data_dir("docs");
    stranger.share_keyed("docs", &s_docs, "files", &[&a], &key);
    await_hub_refusal(&stranger, "docs", "does not serve device");

    // Not a member: allowed at the hub and holding the key, but no member added it.
    let outsider = Agent::start();
    outsider.use_hub(&hub);
    outsider.know(&a);
    let o_docs = outsider.data_dir("docs");
    outsider.share_keyed("docs", &o_docs, "files", &[&a], &key);
    await_hub_refusal(&outsider, "docs", "not a member");

    for dir in [&s_docs, &o_docs] {
        assert!(
            !dir.join("private.txt").exists(),
            "{} got A's file",
            dir.display()
        );
    }
}

on_both_stores!(
    own_keys_become_one,
    members_that_made_their_own_keys_take_one_key_when_they_meet_and_then_use_the_hub,
    members_that_made_their_own_keys_take_one_key_when_they_meet_and_then_use_the_hub_on_s3
);

fn own_keys_become_one(store: &Store) {
    let hub = store.hub();
    let mut a = Agent::start();
    let mut b = Agent::start();
    a.use_hub(&hub);
    b.use_hub(&hub);
    // They meet directly first, each with a key of its own (no --key).
    tandem_tests::pair(&a, &b);
    let a_docs = a.data_dir("docs");
    let b_docs = b.data_dir("docs");
    tree::write(&a_docs.join("met.txt"), b"we met\n");
    a.share_keyed("docs", &a_docs, "files", &[&b], "");
    b.share_keyed("docs", &b_docs, "files", &[&a], "");
    a.sync_with(&[&b], SYNC);
    b.sync_with(&[&a], SYNC);
    assert_eq!(
        a.source_key("docs"),
        b.source_key("docs"),
        "one key after they met"
    );
    a.wait(SYNC);
    b.wait(SYNC);

    // Then never online together: only the hub carries A's change to B.
    b.kill();
    tree::write(&a_docs.join("later.txt"), b"through the hub\n");
    a.wait(SYNC);
    a.kill();
    b.start_again();
    b.wait(SYNC);
    assert_eq!(
        fs::read(b_docs.join("later.txt")).expect("later.txt on B"),
        b"through the hub\n"
    );
}

/// Bytes of every object in a hub's local storage whose folder ends with `folder`.
fn stored_bytes(hub: &Agent, folder: &str) -> u64 {
    walk(&hub.home().join("storage/spaces"))
        .iter()
        .filter(|p| p.parent().is_some_and(|d| d.ends_with(folder)))
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// A hub that collects every second, with a second's grace for chunks, and an 8 s retention
/// (members write their cursors every 2 s and renew snapshots after 1 s).
const FAST_GC_LINES: &str = "gc_interval_s = 1\nchunk_grace_s = 1\nretention_s = 8\n";
const FAST_GC: &str = "[hub]\ngc_interval_s = 1\nchunk_grace_s = 1\nretention_s = 8\n";

#[test]
fn once_every_member_caught_up_the_hub_keeps_only_what_is_still_needed() {
    let hub = Agent::start_hub_with_config(FAST_GC);
    let (a, b, a_docs, b_docs) = two_through(&hub, |_| {});
    // Five versions of a 2 MiB file, each synced: the hub gets every version's chunks.
    for seed in 0..5 {
        tree::write_pseudo_random(&a_docs.join("big.bin"), 100 + seed, 2 << 20);
        a.wait(SYNC);
        b.wait(SYNC);
    }
    tree::assert_same_trees(&a_docs, &b_docs);
    // What is still needed: the current version's chunks (sealed: padded into buckets).
    let needed = 2u64 << 20;
    let mut last = 0;
    let shrunk = backoff::retry_with_backoff(SYNC, || {
        last = stored_bytes(&hub, "chunks");
        (last <= needed + needed / 4).then_some(())
    });
    assert!(
        shrunk.is_some(),
        "chunks on the hub: {last} bytes for {needed} bytes of data"
    );
    let bundles = bundle_files(&hub, &a.device_id());
    assert!(bundles.len() <= 1, "bundles of A left: {bundles:?}");
    // And what is left still serves a newcomer's needs: B, restarted, is still in sync.
    b.wait(SYNC);
}

on_both_stores!(
    catches_up_from_a_snapshot,
    a_member_away_past_the_retention_catches_up_from_a_snapshot,
    a_member_away_past_the_retention_catches_up_from_a_snapshot_on_s3
);

fn catches_up_from_a_snapshot(store: &Store) {
    let hub = store.hub_with(FAST_GC_LINES);
    let (a, b, mut c) = (Agent::start(), Agent::start(), Agent::start());
    for agent in [&a, &b, &c] {
        agent.use_hub(&hub);
    }
    for (x, y) in [(&a, &b), (&a, &c), (&b, &c)] {
        x.know(y);
        y.know(x);
    }
    let dirs = [a.data_dir("docs"), b.data_dir("docs"), c.data_dir("docs")];
    tree::write(&dirs[0].join("first.txt"), b"before C left\n");
    a.share_keyed("docs", &dirs[0], "files", &[&b, &c], "");
    let key = a.source_key("docs");
    b.share_keyed("docs", &dirs[1], "files", &[&a, &c], &key);
    c.share_keyed("docs", &dirs[2], "files", &[&a, &b], &key);
    for agent in [&a, &b, &c] {
        agent.wait(SYNC);
    }
    let a_id = a.device_id();
    c.kill();
    // While C is away (past the eight seconds of retention), A writes; once B has it, the
    // hub collects every bundle of A, even those C never saw.
    for i in 0..3 {
        tree::write(
            &dirs[0].join(format!("while-away-{i}.txt")),
            format!("{i}\n"),
        );
        a.wait(SYNC);
        b.wait(SYNC);
    }
    let gone =
        backoff::retry_with_backoff(SYNC, || store.bundles(&hub, &a_id).is_empty().then_some(()));
    assert!(
        gone.is_some(),
        "A's bundles were not collected: {} left",
        store.bundles(&hub, &a_id).len()
    );
    c.start_again();
    c.wait(SYNC);
    tree::assert_same_trees(&dirs[0], &dirs[2]);
}

on_both_stores!(
    removed_member_refused_and_rekeyed,
    a_removed_member_is_refused_and_what_follows_uses_a_key_it_never_gets,
    a_removed_member_is_refused_and_what_follows_uses_a_key_it_never_gets_on_s3
);

fn removed_member_refused_and_rekeyed(store: &Store) {
    let (hub, a, b, c, [a_docs, b_docs, c_docs]) = three_through_a_hub(store);
    tree::write(&a_docs.join("before.txt"), b"all three\n");
    for agent in [&a, &b, &c] {
        agent.wait(SYNC);
    }
    let c_id = c.device_id();
    a.json(&["source", "unshare", "docs", &c_id]);
    await_hub_refusal(&c, "docs", "removed");
    tree::write(&a_docs.join("after.txt"), b"A and B only\n");
    a.wait(SYNC);
    b.wait(SYNC);
    assert_eq!(
        fs::read(b_docs.join("after.txt")).expect("after.txt on B"),
        b"A and B only\n"
    );
    assert!(c_docs.join("before.txt").exists());
    assert!(
        !c_docs.join("after.txt").exists(),
        "the removed member got it"
    );
    // B took the new key (handed over at the hub, sealed for B alone); C has only the old.
    let generation = |agent: &Agent| agent.json(&["source", "key", "docs"])["generation"].as_u64();
    assert_eq!(generation(&a), Some(1));
    assert_eq!(generation(&b), Some(1));
    assert_eq!(generation(&c).unwrap_or(0), 0);
    // A's newest bundle is sealed under generation 1 (bytes 1..5 of a sealed object).
    let newest = store
        .bundles(&hub, &a.device_id())
        .pop()
        .expect("A has a bundle");
    assert_eq!(
        u32::from_be_bytes([newest[1], newest[2], newest[3], newest[4]]),
        1
    );
    // B no longer counts C among the source's devices.
    let peers = b.source("docs")["peers"].clone();
    assert!(
        !peers
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p == c_id.as_str()),
        "{peers:#}"
    );
}

#[test]
fn bad_keys_and_hub_addresses_are_refused_with_what_to_do() {
    let a = Agent::start();
    let docs = a.data_dir("docs");
    let path = docs.to_str().expect("utf-8");
    let bad_key = a.fails(&["source", "add", "docs", path, "--key", "tk1-nonsense"], 1);
    assert!(
        bad_key.contains("not a source key") && bad_key.contains("source key"),
        "{bad_key}"
    );
    // Nothing was added by the refused command.
    assert!(a.fails(&["source", "key", "docs"], 1).contains("docs"));
    let me = a.device_id();
    let own = a.fails(&["hub", "add", "127.0.0.1:1", &me], 1);
    assert!(own.contains("own ID"), "{own}");
    let hub = Agent::start_hub();
    let hub_id = hub.device_id();
    let no_port = a.fails(&["hub", "add", "nowhere", &hub_id], 1);
    assert!(no_port.contains("host:port"), "{no_port}");
    let not_agent = hub.fails(&["source", "add", "docs", path], 1);
    assert!(not_agent.contains("hub"), "{not_agent}");
}
