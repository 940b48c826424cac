//! The receiving pipeline driven by an in-memory feed and an in-memory chunk provider: no
//! network, no peer module. A real source task applies what the feed delivers.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::apply::{Disk, FaultyDisk, Injected, OsDisk, Step};
use crate::chunker::{Hash128, chunk_bytes};
use crate::events::EventBus;
use crate::index::{ShortId, VersionVector};
use crate::item::{Body, Header, ItemKind, Metadata};
use crate::source::{self, SharedSource, SourceConfig};
use crate::store::{self, PeerRow, SourceRow};
use crate::universal::{ItemPath, RemoteFile};

const LOCAL: ShortId = ShortId(1);
const PEER: ShortId = ShortId(2);
const SOURCE: &str = "docs";
const LIMIT: Duration = Duration::from_secs(20);

/// A feed whose acknowledgements, errors and refusals are kept for the test to read.
struct MemoryFeed {
    origin: Origin,
    acked: Mutex<Vec<(u64, u64)>>,
    errors: Mutex<Vec<String>>,
    refusals: Mutex<Vec<String>>,
    /// First sequences of the moves the receiver asked to have expanded.
    expanded: Mutex<Vec<u64>>,
    changed: Notify,
}

impl Feed for MemoryFeed {
    fn origin(&self) -> &Origin {
        &self.origin
    }

    fn acknowledge(&self, applied: u64, received: u64) -> BoxFuture<'_, ()> {
        self.acked.lock().unwrap().push((applied, received));
        self.changed.notify_waiters();
        Box::pin(async {})
    }

    fn progress(&self, progress: Progress) {
        if let Progress::Error(e) = progress {
            self.errors.lock().unwrap().push(e);
            self.changed.notify_waiters();
        }
    }

    fn refused(&self, what: &str) {
        self.refusals.lock().unwrap().push(what.to_owned());
    }

    fn expand(&self, first_sequence: u64) -> BoxFuture<'_, ()> {
        self.expanded.lock().unwrap().push(first_sequence);
        self.changed.notify_waiters();
        Box::pin(async {})
    }
}

fn version(counters: &[(ShortId, u64)]) -> VersionVector {
    let mut v = VersionVector::new();
    for (id, n) in counters {
        for _ in 0..*n {
            v.bump(*id);
        }
    }
    v
}

/// A file item as a peer announces it.
fn file(path: &str, data: &[u8], v: VersionVector, mtime_ns: i64, seq: u64) -> RemoteItem {
    let hashed = chunk_bytes(data);
    RemoteItem {
        path: ItemPath::parse(path).unwrap(),
        header: Header {
            version: v,
            sequence: seq,
            deleted: false,
            origin: None,
            modified_by: Some("PEERPEE".into()),
        },
        body: Body::File(RemoteFile {
            meta: Metadata {
                kind: ItemKind::File,
                size: data.len() as u64,
                mtime_ns,
                inode: 0,
                mode: 0o644,
                symlink_target: None,
            },
            hash: Some(hashed.hash),
            chunks: hashed.chunks,
            inline: None,
        }),
    }
}

/// A small file as a peer announces it, its content inline.
fn inline_file(path: &str, data: &[u8], v: VersionVector, mtime_ns: i64, seq: u64) -> RemoteItem {
    let mut item = file(path, data, v, mtime_ns, seq);
    if let Body::File(f) = &mut item.body {
        f.inline = Some(bytes::Bytes::copy_from_slice(data));
    }
    item
}

fn write_at(root: &Path, path: &str, data: &[u8], mtime_ns: i64) {
    let full = root.join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(&full, data).unwrap();
    let when = std::time::UNIX_EPOCH + Duration::from_nanos(u64::try_from(mtime_ns).unwrap());
    std::fs::File::options()
        .write(true)
        .open(&full)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(when))
        .unwrap();
}

/// A real source task on a temp folder, fed by an in-memory feed through a receiver.
struct Scene {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    store: store::StoreHandle,
    source: source::SourceHandle,
    feed: Arc<MemoryFeed>,
    updates: Option<mpsc::Sender<Update>>,
    receiver: Option<tokio::task::JoinHandle<()>>,
    chunks: Arc<Mutex<HashMap<Hash128, Vec<u8>>>>,
}

/// Chunks the test put there, by hash, shared with the scene so it can add more.
struct SharedChunks(Arc<Mutex<HashMap<Hash128, Vec<u8>>>>);

impl ChunkProvider for SharedChunks {
    fn is_local(&self) -> bool {
        false
    }

    fn get<'a>(&'a self, want: &'a ChunkWanted) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        let found = self.0.lock().unwrap().get(&want.chunk.hash).cloned();
        Box::pin(async move { found.ok_or_else(|| "not in memory".to_owned()) })
    }
}

impl Scene {
    /// `local` files are written (with their mtimes) and scanned before the feed starts.
    async fn new(disk: Arc<dyn Disk>, local: &[(&str, &[u8], i64)]) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("docs");
        std::fs::create_dir(&root).unwrap();
        crate::layout::create_marker(&root).unwrap();
        for (path, data, mtime_ns) in local {
            write_at(&root, path, data, *mtime_ns);
        }
        let (store, _thread) = store::open_in_memory().unwrap();
        store
            .add_source(SourceRow {
                id: SOURCE.into(),
                path: root.to_str().unwrap().into(),
                format: "files".into(),
                paused: false,
                sequence: 0,
                created_unix_ms: 0,
                peers: vec!["PEER".into()],
            })
            .await
            .unwrap();
        // Cursors are kept per known device.
        store
            .add_peer(PeerRow {
                device_id: "PEER".into(),
                address: None,
                added_unix_ms: 0,
            })
            .await
            .unwrap();
        let source = source::spawn(
            SourceConfig {
                id: SOURCE.into(),
                root: root.clone(),
                format: "files".into(),
                paused: false,
                peers: vec!["PEER".into()],
                local: LOCAL,
                local_short_name: "LOCALLO".into(),
                debounce: Duration::from_millis(10),
                debounce_max: Duration::from_millis(50),
                rescan_interval: Duration::from_secs(3600),
                versions_keep: None,
                vcard_version: String::new(),
                disk: disk.clone(),
            },
            store.clone(),
            EventBus::new(64),
            Arc::new(Notify::new()),
            CancellationToken::new(),
        );
        let mut status = source.subscribe();
        let scanned = tokio::time::timeout(LIMIT, status.wait_for(|s| s.scans >= 1 && s.settled()))
            .await
            .is_ok();
        assert!(scanned, "not scanned: {:?}", source.status());
        let feed = Arc::new(MemoryFeed {
            origin: Origin {
                device: "PEER".into(),
                short: "PEERPEE".into(),
            },
            acked: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
            refusals: Mutex::new(Vec::new()),
            expanded: Mutex::new(Vec::new()),
            changed: Notify::new(),
        });
        let chunks = Arc::new(Mutex::new(HashMap::new()));
        let receiver = Receiver::new(
            SharedSource {
                id: SOURCE.into(),
                root: root.clone(),
                commander: source.commander(),
                status: source.subscribe(),
                disk,
                gone: source.gone(),
            },
            feed.clone(),
            ChunkChain::new(vec![Arc::new(SharedChunks(chunks.clone()))]),
            Claims::new(),
            store.clone(),
            0,
        );
        let (tx, rx) = mpsc::channel(4);
        Scene {
            _dir: dir,
            root,
            store,
            source,
            feed,
            updates: Some(tx),
            receiver: Some(tokio::spawn(receiver.run(rx))),
            chunks,
        }
    }

    /// Sends the items (their content made available by hash) as one update.
    async fn send(&self, items: Vec<(RemoteItem, &[u8])>) {
        let through = items
            .iter()
            .map(|(i, _)| i.header.sequence)
            .max()
            .unwrap_or(0);
        for (item, data) in &items {
            let hashed = chunk_bytes(data);
            let mut chunks = self.chunks.lock().unwrap();
            for c in &item.file().unwrap().chunks {
                let start = usize::try_from(c.offset).unwrap();
                let end = start + usize::try_from(c.len).unwrap();
                chunks.insert(c.hash, data[start..end].to_vec());
            }
            assert_eq!(Some(hashed.hash), item.file().unwrap().hash);
        }
        let update = Update {
            items: items.into_iter().map(|(i, _)| Ok(i)).collect(),
            through,
            caught_up: true,
            ..Update::default()
        };
        self.updates.as_ref().unwrap().send(update).await.unwrap();
    }

    /// Sends the items as one update, with no content available but what they carry.
    async fn send_bare(&self, items: Vec<RemoteItem>) {
        let through = items.iter().map(|i| i.header.sequence).max().unwrap_or(0);
        let update = Update {
            items: items.into_iter().map(Ok).collect(),
            through,
            caught_up: true,
            ..Update::default()
        };
        self.updates.as_ref().unwrap().send(update).await.unwrap();
    }

    /// Waits until the feed was told everything up to `seq` is applied.
    async fn applied_through(&self, seq: u64) {
        let acked = async {
            loop {
                let notified = self.feed.changed.notified();
                if self
                    .feed
                    .acked
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(a, _)| *a >= seq)
                {
                    return;
                }
                notified.await;
            }
        };
        let done = tokio::time::timeout(LIMIT, acked).await.is_ok();
        assert!(
            done,
            "not applied through {seq}: acks {:?}, errors {:?}, status {:?}",
            self.feed.acked.lock().unwrap(),
            self.feed.errors.lock().unwrap(),
            self.source.status()
        );
    }

    /// Waits for the first error the feed was told of that names `item`.
    async fn error_naming(&self, item: &str) -> String {
        let named = async {
            loop {
                let notified = self.feed.changed.notified();
                let errors = self.feed.errors.lock().unwrap().clone();
                if let Some(e) = errors.into_iter().find(|e| e.contains(item)) {
                    return e;
                }
                notified.await;
            }
        };
        tokio::time::timeout(LIMIT, named)
            .await
            .unwrap_or_else(|_| panic!("no error naming {item} within {LIMIT:?}"))
    }

    /// The recorded state of an item that must be recorded.
    async fn prior(&self, key: &str) -> crate::item::PriorItem {
        self.store
            .prior_item(SOURCE.into(), key.into())
            .await
            .unwrap()
            .unwrap()
    }

    fn read(&self, path: &str) -> Vec<u8> {
        std::fs::read(self.root.join(path)).unwrap()
    }

    /// Files of the source whose names contain `part`: in the source and in its temp folder
    /// (the rest of the agent's own folder left out).
    fn names_with(&self, part: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone(), crate::layout::temp_dir(&self.root)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let name = entry.file_name().into_string().unwrap();
                if name == crate::layout::AGENT_DIR {
                    continue;
                }
                if entry.file_type().unwrap().is_dir() {
                    stack.push(entry.path());
                } else if name.contains(part) {
                    out.push(name);
                }
            }
        }
        out
    }

    async fn stop(mut self) {
        drop(self.updates.take());
        if let Some(receiver) = self.receiver.take() {
            receiver.await.unwrap();
        }
        self.source.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differences_from_an_in_memory_feed_are_applied_conflicts_included() {
    // Local edits the feed will conflict with: one older than the peer's, one newer.
    let (old, new) = (1_700_000_000_000_000_000, 1_750_000_000_000_000_000);
    let s = Scene::new(
        Arc::new(OsDisk),
        &[
            ("loses.txt", b"local, older", old),
            ("wins.txt", b"local, newer", new),
        ],
    )
    .await;
    // The peer edited both files apart from this device (concurrent versions), and added one.
    let peer = version(&[(PEER, 1)]);
    s.send(vec![
        (
            file("new.txt", b"made by the peer", peer.clone(), old, 1),
            b"made by the peer",
        ),
        (
            file("loses.txt", b"peer, newer", peer.clone(), new, 2),
            b"peer, newer",
        ),
        (
            file("wins.txt", b"peer, older", peer.clone(), old, 3),
            b"peer, older",
        ),
    ])
    .await;
    s.applied_through(3).await;

    assert_eq!(s.read("new.txt"), b"made by the peer");
    assert_eq!(s.read("loses.txt"), b"peer, newer", "the later write wins");
    assert_eq!(
        s.read("wins.txt"),
        b"local, newer",
        "the local later write stays"
    );
    let copies = s.names_with("sync-conflict");
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(copies[0].starts_with("loses.sync-conflict-"), "{copies:?}");
    assert_eq!(
        s.read(&copies[0]),
        b"local, older",
        "the losing local edit is kept"
    );
    assert!(s.feed.refusals.lock().unwrap().is_empty());
    // The merged version is recorded for the conflict.
    let prior = s.prior("loses.txt").await;
    assert_eq!(
        prior.header.version.compare(&peer),
        crate::index::Ordering::Dominates
    );
    let cursor = s.store.cursor("PEER".into(), SOURCE.into()).await.unwrap();
    assert_eq!(cursor, 3, "the cursor moved past what was applied");
    s.stop().await;
}

/// A fault at `step` on `name` fails that item clearly, leaves nothing partial, lets the rest
/// sync, and the item arrives on its retry.
async fn one_item_fails_then_arrives(step: Step, name: &str, injected: Injected, want: &str) {
    let disk = Arc::new(FaultyDisk::new());
    let s = Scene::new(disk.clone(), &[]).await;
    std::fs::create_dir(s.root.join("big")).unwrap();
    s.source.commander().rescan().await;
    disk.plan(step, name, injected, 1);
    let t = 1_700_000_000_000_000_000;
    let v = |n| version(&[(PEER, n)]);
    let big = vec![7u8; 300_000];
    s.send(vec![
        (file("a.txt", b"first", v(1), t, 1), b"first"),
        (file("big/data.bin", &big, v(1), t, 2), &big),
        (file("z.txt", b"last", v(1), t, 3), b"last"),
    ])
    .await;
    // The others arrive even though one failed.
    s.applied_through(1).await;
    let error = s.error_naming("big/data.bin").await;
    assert!(error.contains(want), "{error}");
    assert_eq!(disk.pending(), 0, "the fault happened");
    // The retry brings it (every 5 s), and nothing partial was ever left behind.
    s.applied_through(3).await;
    assert_eq!(s.read("a.txt"), b"first");
    assert_eq!(s.read("z.txt"), b"last");
    assert_eq!(s.read("big/data.bin"), big);
    assert!(s.names_with(crate::layout::TEMP_PREFIX).is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_space_while_fetching_fails_one_item_and_it_arrives_on_retry() {
    one_item_fails_then_arrives(Step::Write, "/big", Injected::NoSpace, "no space left").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_io_error_while_fetching_fails_one_item_and_it_arrives_on_retry() {
    one_item_fails_then_arrives(Step::Create, "/big", Injected::Io, "creating a temp file").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_space_while_renaming_fails_one_item_and_it_arrives_on_retry() {
    one_item_fails_then_arrives(Step::Rename, "big/data.bin", Injected::NoSpace, "renaming").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_io_error_while_renaming_fails_one_item_and_it_arrives_on_retry() {
    one_item_fails_then_arrives(Step::Rename, "big/data.bin", Injected::Io, "Input/output").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_io_error_while_making_a_batch_durable_fails_one_item_and_it_arrives_on_retry() {
    one_item_fails_then_arrives(Step::Sync, "/big", Injected::Io, "flushing the temp file").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_io_error_while_flushing_a_folder_fails_its_items_and_they_arrive_on_retry() {
    one_item_fails_then_arrives(
        Step::SyncFolder,
        "/big",
        Injected::Io,
        "flushing its folder",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_arrive_with_their_content_and_need_no_chunk_request() {
    let disk = Arc::new(FaultyDisk::new());
    let s = Scene::new(disk.clone(), &[]).await;
    std::fs::create_dir(s.root.join("d")).unwrap();
    s.source.commander().rescan().await;
    let t = 1_700_000_000_000_000_000;
    let v = |n| version(&[(PEER, n)]);
    // No chunk is available anywhere: only the inline content can bring these.
    disk.plan(Step::Create, "/d", Injected::NoSpace, 1);
    let items: Vec<RemoteItem> = (1..=300)
        .map(|i| {
            let path = if i == 150 {
                "d/full.txt".to_owned()
            } else {
                format!("f{i:03}.txt")
            };
            inline_file(&path, format!("content {i}").as_bytes(), v(1), t, i)
        })
        .collect();
    s.send_bare(items).await;
    // The one that met a full disk is named and set aside; the others land meanwhile.
    let error = s.error_naming("d/full.txt").await;
    assert!(error.contains("no space left"), "{error}");
    s.applied_through(300).await;
    for i in [1, 149, 151, 300] {
        assert_eq!(
            s.read(&format!("f{i:03}.txt")),
            format!("content {i}").as_bytes()
        );
    }
    assert_eq!(
        s.read("d/full.txt"),
        b"content 150",
        "it arrived on its retry"
    );
    assert!(s.names_with(crate::layout::TEMP_PREFIX).is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_longer_than_a_part_is_written_and_recorded_part_by_part_and_leaves_no_journal() {
    let s = Scene::new(Arc::new(OsDisk), &[]).await;
    let t = 1_700_000_000_000_000_000;
    let v = |n| version(&[(PEER, n)]);
    // Several parts of one run: each is journaled while the one before is written, and
    // committed while the next is written.
    let n: u64 = 700;
    let items: Vec<RemoteItem> = (1..=n)
        .map(|i| {
            inline_file(
                &format!("f{i:04}.txt"),
                format!("content {i}").as_bytes(),
                v(i),
                t,
                i,
            )
        })
        .collect();
    s.send_bare(items).await;
    s.applied_through(n).await;
    for i in [1, 256, 257, 512, 513, 700] {
        let path = format!("f{i:04}.txt");
        assert_eq!(s.read(&path), format!("content {i}").as_bytes());
        assert_eq!(
            s.prior(&path).await.header.version,
            v(i),
            "{path} is on record"
        );
    }
    assert!(
        s.store.intents(SOURCE.into()).await.unwrap().is_empty(),
        "every part's journal batch was settled by its commit"
    );
    assert!(s.names_with(crate::layout::TEMP_PREFIX).is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_under_the_writer_is_scanned_first_and_never_overwritten() {
    let t = 1_700_000_000_000_000_000;
    let disk = Arc::new(FaultyDisk::new());
    let s = Scene::new(disk.clone(), &[("notes.txt", b"local", t)]).await;
    let local = s.prior("notes.txt").await;
    // The peer's version descends from this device's, so without the change it would apply.
    let newer = local.header.version.merge(&version(&[(PEER, 1)]));
    // Someone appends to the file just as the writer looks at it.
    disk.plan(
        Step::Look,
        "notes.txt",
        Injected::Change(b" + typed".to_vec()),
        1,
    );
    s.send(vec![(file("notes.txt", b"peer", newer, t + 1, 1), b"peer")])
        .await;
    s.applied_through(1).await;
    assert_eq!(disk.pending(), 0, "the change happened");
    // The edit made under the writer survives: in place, or as the conflict copy beside it.
    let kept: Vec<Vec<u8>> = std::iter::once("notes.txt".to_owned())
        .chain(s.names_with("sync-conflict"))
        .map(|n| s.read(&n))
        .collect();
    assert!(
        kept.iter().any(|k| k == b"local + typed"),
        "the local edit was lost: {kept:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_sent_to_a_files_source_is_refused_by_name_and_nothing_is_written() {
    let s = Scene::new(Arc::new(OsDisk), &[]).await;
    let t = 1_700_000_000_000_000_000;
    let v = |n| version(&[(PEER, n)]);
    // A file, then a record under a UID-like key, in one update.
    s.send(vec![(file("first.txt", b"a file", v(1), t, 1), b"a file")])
        .await;
    let record = RemoteItem {
        path: ItemPath::parse("ana@example.org").unwrap(),
        header: Header {
            version: v(2),
            sequence: 2,
            deleted: false,
            origin: None,
            modified_by: Some("PEERPEE".into()),
        },
        body: Body::Record(b"BEGIN:VCARD".to_vec()),
    };
    let update = Update {
        items: vec![Ok(record)],
        through: 2,
        caught_up: true,
        ..Update::default()
    };
    s.updates.as_ref().unwrap().send(update).await.unwrap();
    s.applied_through(1).await;
    let error = s.error_naming("ana@example.org").await;
    assert!(error.contains("a record"), "{error}");
    assert_eq!(
        s.read("first.txt"),
        b"a file",
        "the file beside it still lands"
    );
    assert!(
        !s.root.join("ana@example.org").exists(),
        "nothing was written"
    );
    // Held back, not acknowledged: the sender is not told it was applied.
    assert!(s.feed.acked.lock().unwrap().iter().all(|(a, _)| *a < 2));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_folder_tree_goes_in_one_batch_with_no_retry() {
    let t = 1_700_000_000_000_000_000;
    let local: Vec<(&str, &[u8], i64)> = ["d/e/f1", "d/e/f2", "d/g"]
        .iter()
        .map(|n| (*n, n.as_bytes(), t))
        .collect();
    let s = Scene::new(Arc::new(OsDisk), &local).await;
    // The peer saw every item and deleted the whole tree: deepest first, as a scan reports.
    let mut deletions = Vec::new();
    for (seq, key) in (1..).zip(["d/e/f2", "d/e/f1", "d/g", "d/e", "d"]) {
        let local = s.prior(key).await;
        let mut item = file(
            key,
            b"",
            local.header.version.merge(&version(&[(PEER, 1)])),
            t,
            seq,
        );
        item.header.deleted = true;
        if let Body::File(f) = &mut item.body {
            f.meta.kind = local.file().unwrap().meta.kind;
            f.meta.size = 0;
            f.hash = None;
            f.chunks.clear();
        }
        deletions.push(item);
    }
    s.send_bare(deletions).await;
    s.applied_through(5).await;
    assert!(!s.root.join("d").exists(), "the tree is gone");
    let errors = s.feed.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "nothing was set aside: {errors:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_change_sent_with_its_content_keeps_no_version_and_leaves_no_temp() {
    let t = 1_700_000_000_000_000_000;
    let s = Scene::new(Arc::new(OsDisk), &[("m.txt", b"same content", t)]).await;
    let local = s.prior("m.txt").await;
    // Touched on the peer: a newer version, the same bytes, which came inline anyway.
    let newer = local.header.version.merge(&version(&[(PEER, 1)]));
    s.send_bare(vec![inline_file("m.txt", b"same content", newer, t + 5, 1)])
        .await;
    s.applied_through(1).await;
    let mtime = std::fs::metadata(s.root.join("m.txt"))
        .unwrap()
        .modified()
        .unwrap();
    let want = std::time::UNIX_EPOCH + Duration::from_nanos(u64::try_from(t + 5).unwrap());
    assert_eq!(mtime, want, "the new mtime is set");
    assert_eq!(s.read("m.txt"), b"same content");
    let kept = crate::versions::list(&s.root, None);
    assert!(
        kept.is_empty(),
        "no version kept of unchanged content: {kept:?}"
    );
    assert!(s.names_with(crate::layout::TEMP_PREFIX).is_empty());
    s.stop().await;
}

/// The folder move the peer would announce for `from` renamed to `to`, numbered from
/// `first`, given that it recorded `from` exactly as this device did.
async fn peer_move(s: &Scene, from: &str, to: &str, first: u64) -> crate::universal::FolderMove {
    let trees = s
        .store
        .subtrees(SOURCE.into(), vec![from.into()])
        .await
        .unwrap();
    let (note, entries) =
        crate::moves::recorded_move(&trees[0], (from, to), (PEER, "PEERPEE"), first);
    crate::moves::announce(&note, &entries, "PEER-C").unwrap()
}

impl Scene {
    async fn send_move(&self, mv: crate::universal::FolderMove) {
        let update = Update {
            through: mv.last_sequence,
            caught_up: true,
            moves: vec![mv],
            ..Update::default()
        };
        self.updates.as_ref().unwrap().send(update).await.unwrap();
    }

    fn inode(&self, path: &str) -> u64 {
        std::os::unix::fs::MetadataExt::ino(
            &std::fs::symlink_metadata(self.root.join(path)).unwrap(),
        )
    }
}

const ALBUM: [&str; 4] = [
    "album/a.txt",
    "album/sub/b.txt",
    "album/sub/c.txt",
    "other.txt",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_folder_move_is_one_rename_here_keeping_the_same_files() {
    let t = 1_700_000_000_000_000_000;
    let local: Vec<(&str, &[u8], i64)> = ALBUM.iter().map(|n| (*n, n.as_bytes(), t)).collect();
    let s = Scene::new(Arc::new(OsDisk), &local).await;
    let inodes: Vec<u64> = ["album", "album/a.txt", "album/sub/c.txt"]
        .iter()
        .map(|p| s.inode(p))
        .collect();
    let mv = peer_move(&s, "album", "pictures", 1).await;
    let last = mv.last_sequence;
    assert_eq!(mv.items, 5);
    s.send_move(mv).await;
    s.applied_through(last).await;
    assert!(!s.root.join("album").exists());
    let moved: Vec<u64> = ["pictures", "pictures/a.txt", "pictures/sub/c.txt"]
        .iter()
        .map(|p| s.inode(p))
        .collect();
    assert_eq!(inodes, moved, "renamed once, the same files");
    assert_eq!(s.read("pictures/sub/b.txt"), b"album/sub/b.txt");
    // Recorded as the peer's: the additions with their files' inodes, the old names deleted.
    let added = s.prior("pictures/sub/c.txt").await;
    assert_eq!(added.header.origin.as_deref(), Some("PEER"));
    assert_eq!(added.header.version, version(&[(PEER, 1)]));
    assert_eq!(added.file().unwrap().meta.inode, inodes[2]);
    assert!(s.prior("album/a.txt").await.header.deleted);
    assert!(
        s.store.intents(SOURCE.into()).await.unwrap().is_empty(),
        "no journal left"
    );
    let versions = crate::layout::marker_path(&s.root).join(crate::layout::VERSIONS_DIR);
    assert!(
        !versions.join("album").exists(),
        "nothing deleted, nothing kept"
    );
    assert!(s.feed.expanded.lock().unwrap().is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_holding_what_is_not_recorded_moves_item_by_item_and_keeps_it() {
    let t = 1_700_000_000_000_000_000;
    let mut local: Vec<(&str, &[u8], i64)> = ALBUM.iter().map(|n| (*n, n.as_bytes(), t)).collect();
    // Ignored here, so not recorded: a rename would carry it along under the peer's name.
    local.push((".tandemignore", b"*.tmp\n", t));
    local.push(("album/draft.tmp", b"mine", t));
    let s = Scene::new(Arc::new(OsDisk), &local).await;
    let mv = peer_move(&s, "album", "pictures", 1).await;
    let last = mv.last_sequence;
    s.send_move(mv).await;
    s.applied_through(last).await;
    assert_eq!(s.read("pictures/a.txt"), b"album/a.txt");
    assert_eq!(s.read("pictures/sub/c.txt"), b"album/sub/c.txt");
    assert!(!s.root.join("pictures/draft.tmp").exists());
    assert_eq!(
        s.read("album/draft.tmp"),
        b"mine",
        "what the peer never saw stays"
    );
    assert!(!s.root.join("album/a.txt").exists());
    assert!(s.feed.expanded.lock().unwrap().is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_that_does_not_match_is_asked_for_and_nothing_past_it_is_acknowledged() {
    let t = 1_700_000_000_000_000_000;
    let local: Vec<(&str, &[u8], i64)> = ALBUM.iter().map(|n| (*n, n.as_bytes(), t)).collect();
    let s = Scene::new(Arc::new(OsDisk), &local).await;
    let mut mv = peer_move(&s, "album", "pictures", 3).await;
    mv.digest = Hash128([9; 16]);
    let (first, last) = (mv.first_sequence, mv.last_sequence);
    // An item before the move applies as usual.
    s.send_bare(vec![inline_file(
        "one.txt",
        b"1",
        version(&[(PEER, 1)]),
        t,
        2,
    )])
    .await;
    s.send_move(mv).await;
    let asked = async {
        loop {
            let notified = s.feed.changed.notified();
            if !s.feed.expanded.lock().unwrap().is_empty() {
                return;
            }
            notified.await;
        }
    };
    assert!(
        tokio::time::timeout(LIMIT, asked).await.is_ok(),
        "never asked"
    );
    assert_eq!(*s.feed.expanded.lock().unwrap(), [first]);
    s.applied_through(2).await;
    let acked = s.feed.acked.lock().unwrap().clone();
    assert!(
        acked.iter().all(|(applied, _)| *applied < first),
        "nothing from the move on is applied yet: {acked:?}"
    );
    assert!(s.root.join("album/a.txt").exists() && !s.root.join("pictures").exists());
    // The entries come (here: none left to apply); then the acknowledgement moves past it.
    let update = Update {
        through: last,
        caught_up: true,
        expands: Some(first),
        ..Update::default()
    };
    s.updates.as_ref().unwrap().send(update).await.unwrap();
    s.applied_through(last).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_that_cannot_be_made_durable_is_taken_back_and_the_move_goes_item_by_item() {
    let t = 1_700_000_000_000_000_000;
    let local: Vec<(&str, &[u8], i64)> = ALBUM.iter().map(|n| (*n, n.as_bytes(), t)).collect();
    let disk = Arc::new(FaultyDisk::new());
    let s = Scene::new(disk.clone(), &local).await;
    let inode = s.inode("album/a.txt");
    // The first flush of the source's root (the rename's parent) fails.
    disk.plan(Step::SyncFolder, "/docs", Injected::Io, 1);
    let mv = peer_move(&s, "album", "pictures", 1).await;
    let last = mv.last_sequence;
    s.send_move(mv).await;
    s.applied_through(last).await;
    assert_eq!(disk.pending(), 0, "the fault happened");
    assert_eq!(s.read("pictures/a.txt"), b"album/a.txt");
    assert_eq!(s.read("pictures/sub/b.txt"), b"album/sub/b.txt");
    assert!(!s.root.join("album").exists());
    assert_ne!(
        s.inode("pictures/a.txt"),
        inode,
        "written anew, not renamed"
    );
    assert!(
        s.store.intents(SOURCE.into()).await.unwrap().is_empty(),
        "no journal left"
    );
    assert_eq!(
        s.prior("pictures/a.txt").await.header.version,
        version(&[(PEER, 1)])
    );
    s.stop().await;
}
