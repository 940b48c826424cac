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
use crate::chunker::{Hash128, chunk_bytes};
use crate::events::EventBus;
use crate::index::{ShortId, VersionVector};
use crate::item::{ItemKind, Metadata};
use crate::source::{self, SharedSource, SourceConfig};
use crate::store::{self, PeerRow, SourceRow};
use crate::universal::ItemPath;

const LOCAL: ShortId = ShortId(1);
const PEER: ShortId = ShortId(2);
const SOURCE: &str = "docs";
const LIMIT: Duration = Duration::from_secs(20);

/// A feed whose acknowledgements, progress and refusals are kept for the test to read.
struct MemoryFeed {
    origin: Origin,
    acked: Mutex<Vec<(u64, u64)>>,
    refusals: Mutex<Vec<String>>,
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

    fn progress(&self, _: Progress) {}

    fn refused(&self, what: &str) {
        self.refusals.lock().unwrap().push(what.to_owned());
    }
}

/// Chunks the test put there, by hash.
struct MemoryChunks(HashMap<Hash128, Vec<u8>>);

impl ChunkProvider for MemoryChunks {
    fn is_local(&self) -> bool {
        false
    }

    fn get<'a>(&'a self, want: &'a ChunkWanted) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        let found = self.0.get(&want.chunk.hash).cloned();
        Box::pin(async move { found.ok_or_else(|| "not in memory".to_owned()) })
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
        meta: Metadata {
            kind: ItemKind::File,
            size: data.len() as u64,
            mtime_ns,
            inode: 0,
            mode: 0o644,
            symlink_target: None,
        },
        version: v,
        hash: Some(hashed.hash),
        chunks: hashed.chunks,
        deleted: false,
        sequence: seq,
        modified_by: Some("PEERPEE".into()),
    }
}

fn write_at(root: &Path, path: &str, data: &[u8], mtime_ns: i64) {
    let full = root.join(path);
    std::fs::write(&full, data).unwrap();
    let when = std::time::UNIX_EPOCH + Duration::from_nanos(u64::try_from(mtime_ns).unwrap());
    std::fs::File::options()
        .write(true)
        .open(&full)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(when))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differences_from_an_in_memory_feed_are_applied_conflicts_included() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("docs");
    std::fs::create_dir(&root).unwrap();
    crate::layout::create_marker(&root).unwrap();
    // Local edits the feed will conflict with: one older than the peer's, one newer.
    let (old, new) = (1_700_000_000_000_000_000, 1_750_000_000_000_000_000);
    write_at(&root, "loses.txt", b"local, older", old);
    write_at(&root, "wins.txt", b"local, newer", new);

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
    let cancel = CancellationToken::new();
    let handle = source::spawn(
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
        },
        store.clone(),
        EventBus::new(64),
        Arc::new(Notify::new()),
        cancel.clone(),
    );
    let mut status = handle.subscribe();
    let scanned = tokio::time::timeout(LIMIT, status.wait_for(|s| s.scans >= 1 && s.settled()))
        .await
        .is_ok();
    assert!(scanned, "not scanned: {:?}", handle.status());

    // The peer edited both files apart from this device (concurrent versions), and added one.
    let items = vec![
        file(
            "new.txt",
            b"made by the peer",
            version(&[(PEER, 1)]),
            old,
            1,
        ),
        file("loses.txt", b"peer, newer", version(&[(PEER, 1)]), new, 2),
        file("wins.txt", b"peer, older", version(&[(PEER, 1)]), old, 3),
    ];
    let mut chunks = HashMap::new();
    for (data, item) in [
        (&b"made by the peer"[..], &items[0]),
        (b"peer, newer", &items[1]),
        (b"peer, older", &items[2]),
    ] {
        for c in &item.chunks {
            chunks.insert(c.hash, data.to_vec());
        }
    }
    let feed = Arc::new(MemoryFeed {
        origin: Origin {
            device: "PEER".into(),
            short: "PEERPEE".into(),
        },
        acked: Mutex::new(Vec::new()),
        refusals: Mutex::new(Vec::new()),
        changed: Notify::new(),
    });
    let receiver = Receiver::new(
        SharedSource {
            id: SOURCE.into(),
            root: root.clone(),
            commander: handle.commander(),
            status: handle.subscribe(),
        },
        feed.clone(),
        ChunkChain::new(vec![Arc::new(MemoryChunks(chunks))]),
        Claims::new(),
        store.clone(),
        0,
    );
    let (tx, rx) = mpsc::channel(4);
    let running = tokio::spawn(receiver.run(rx));
    tx.send(Update {
        items: items.into_iter().map(Ok).collect(),
        through: 3,
        caught_up: true,
    })
    .await
    .unwrap();

    let acked_all = async {
        loop {
            let notified = feed.changed.notified();
            if feed.acked.lock().unwrap().iter().any(|(a, _)| *a >= 3) {
                return;
            }
            notified.await;
        }
    };
    tokio::time::timeout(LIMIT, acked_all).await.unwrap();

    let read = |p: &str| std::fs::read(root.join(p)).unwrap();
    assert_eq!(read("new.txt"), b"made by the peer");
    assert_eq!(read("loses.txt"), b"peer, newer", "the later write wins");
    assert_eq!(
        read("wins.txt"),
        b"local, newer",
        "the local later write stays"
    );
    let copies: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("sync-conflict"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(copies[0].starts_with("loses.sync-conflict-"), "{copies:?}");
    assert_eq!(
        read(&copies[0]),
        b"local, older",
        "the losing local edit is kept"
    );
    assert!(feed.refusals.lock().unwrap().is_empty());
    // The merged version is recorded for the conflict, the peer's for the plain apply.
    let prior = store
        .prior_item(SOURCE.into(), "loses.txt".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        prior.version.compare(&version(&[(PEER, 1)])),
        crate::index::Ordering::Dominates
    );
    let cursor = store.cursor("PEER".into(), SOURCE.into()).await.unwrap();
    assert_eq!(cursor, 3, "the cursor moved past what was applied");

    drop(tx);
    running.await.unwrap();
    handle.stop().await;
}
