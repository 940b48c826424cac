//! Preparing one remote item: decide whether it is needed, claim its content so only one
//! receiver fetches it, build it in a temp file beside its target from chunks, and verify it.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::providers::{ChunkChain, ChunkWanted};
use super::{Feed, Progress};
use crate::apply::{self, ApplyError, Disk};
use crate::chunker::{ChunkRef, Hash128};
use crate::item::{ItemKind, PriorItem};
use crate::source::SharedSource;
use crate::store::StoreHandle;
use crate::universal::{ItemPath, RemoteItem};

/// Chunk requests in flight per file being built.
const CHUNK_WINDOW: usize = 16;

/// Items whose content is being fetched right now, by any receiver of any feed: two peers
/// announcing the same content for the same item must not both send it.
#[derive(Clone, Default)]
pub struct Claims {
    building: Arc<watch::Sender<BTreeSet<BuildKey>>>,
}

impl Claims {
    /// An empty set, shared by every receiver that clones it.
    pub fn new() -> Claims {
        Claims::default()
    }

    /// Claims `key`; `None` when another fetch holds it.
    fn claim(&self, key: BuildKey) -> Option<Claim> {
        self.building
            .send_if_modified(|set| set.insert(key.clone()))
            .then(|| Claim {
                building: self.building.clone(),
                key,
            })
    }

    /// A receiver that sees every change of the set, to retry items set aside for a claim.
    pub(super) fn subscribe(&self) -> watch::Receiver<BTreeSet<BuildKey>> {
        self.building.subscribe()
    }
}

/// A claimed fetch of one item's content; dropping it (once applied, or on failure) lets
/// other fetches of the same content decide again.
pub(super) struct Claim {
    building: Arc<watch::Sender<BTreeSet<BuildKey>>>,
    key: BuildKey,
}

/// Source, item path and content hash of an item being fetched.
pub type BuildKey = (String, String, Option<Hash128>);

impl Drop for Claim {
    fn drop(&mut self) {
        self.building.send_modify(|set| {
            set.remove(&self.key);
        });
    }
}

/// What preparing a remote item came to.
pub(super) enum Prepared {
    /// This device already has it (or something newer).
    Skip,
    /// Ready for the source task, with built content if it needed any (and the claim on
    /// that content, released once applied).
    Apply(Option<BuiltTemp>, Option<Claim>),
    /// Content could not be fetched now.
    Retry(NotBuilt),
    /// Another receiver is fetching the same content for the same item.
    Busy(BuildKey),
}

/// A temp file being built or built for an item, removed when dropped before the source task
/// took it over: a fetch abandoned half way (its connection dropped) or an item never applied
/// must not leave its temp in the source.
pub(super) struct BuiltTemp {
    pub(super) path: std::path::PathBuf,
}

impl BuiltTemp {
    /// The source task owns the file from now on.
    pub(super) fn hand_over(mut self) {
        self.path = std::path::PathBuf::new();
    }
}

impl Drop for BuiltTemp {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            // One unlink, only on the path that abandons the content: cheap enough to do
            // here rather than on the blocking pool.
            apply::remove_temp(&self.path);
        }
    }
}

/// Everything needed to fetch an item's content, cloneable into a task.
#[derive(Clone)]
pub(super) struct Fetcher {
    pub(super) src: SharedSource,
    pub(super) feed: Arc<dyn Feed>,
    pub(super) chunks: ChunkChain,
    pub(super) claims: Claims,
    pub(super) store: StoreHandle,
}

impl Fetcher {
    /// Prepares a run of items of one update, in the sender's order: one look at the prior
    /// state for all of them, the small files built from their inline content in one trip to
    /// the blocking pool, the others fetched by chunks, several at once.
    pub(super) async fn prepare_all(
        self,
        mut items: Vec<RemoteItem>,
    ) -> (Vec<RemoteItem>, Vec<Prepared>) {
        // Temp files are only built once the source has removed the stale ones of an earlier
        // run, which would otherwise include these.
        self.src.started().await;
        // An item whose content came with it costs nothing to fetch: it is not looked up
        // here (the source task decides on it, with the state at apply time, as on every
        // item), and in the rare case it is not wanted its temp file goes again.
        let looked: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].file().is_none_or(|f| f.inline.is_none()))
            .collect();
        let paths = looked.iter().map(|&i| items[i].path.to_string()).collect();
        let mut priors: Vec<Option<PriorItem>> = vec![None; items.len()];
        if !looked.is_empty()
            && let Ok(found) = self.store.prior_items_at(self.src.id.clone(), paths).await
        {
            // On an error nothing is skipped: the source task decides again.
            for (i, prior) in looked.into_iter().zip(found) {
                priors[i] = prior;
            }
        }
        let mut prepared: Vec<Option<Prepared>> = Vec::with_capacity(items.len());
        let mut wanted: Vec<Wanted> = Vec::new();
        for (i, (item, prior)) in items.iter().zip(priors).enumerate() {
            match self.decide(item, prior.as_ref()) {
                Some(done) => prepared.push(Some(done)),
                None => {
                    // When several peers announce the same content for the same item, only
                    // one fetch runs. The others are set aside, not awaited here: waiting
                    // would stall this receiver's in-order pipeline behind another's, and two
                    // receivers that each hold a claim the other's next item waits for would
                    // stall for good. Set aside, they are retried when the claim goes, and
                    // then find the item applied.
                    let key = (
                        self.src.id.clone(),
                        item.path.to_string(),
                        item.file().and_then(|f| f.hash),
                    );
                    // Held until the item is applied, so the set-aside fetches then skip it.
                    match self.claims.claim(key.clone()) {
                        None => prepared.push(Some(Prepared::Busy(key))),
                        Some(claim) => {
                            prepared.push(None);
                            wanted.push(Wanted { at: i, claim });
                        }
                    }
                }
            }
        }
        if !wanted.is_empty() {
            let started = self.start_builds(&items, &wanted).await;
            let mut fetches = JoinSet::new();
            let mut fetching = Vec::new();
            for (want, start) in wanted.into_iter().zip(started) {
                let item = &items[want.at];
                match start {
                    Started::Built(temp) => {
                        prepared[want.at] = Some(Prepared::Apply(Some(temp), Some(want.claim)));
                    }
                    Started::NotBuilt(why) => prepared[want.at] = Some(Prepared::Retry(why)),
                    Started::Fetch => {
                        let (fetcher, item) = (self.clone(), item.clone());
                        let at = want.at;
                        fetches.spawn(async move { (at, fetcher.build(&item).await) });
                        fetching.push(want);
                        while fetches.len() >= BUILDS_AT_ONCE {
                            if let Some(Ok((at, built))) = fetches.join_next().await {
                                self.land(&mut prepared, &mut fetching, at, built);
                            }
                        }
                    }
                }
            }
            while let Some(joined) = fetches.join_next().await {
                if let Ok((at, built)) = joined {
                    self.land(&mut prepared, &mut fetching, at, built);
                }
            }
        }
        // Content in a temp file is not held a second time: the frame it came in goes now,
        // not once the batch is applied (a retry, if one is needed, asks for the chunks).
        for (item, prepared) in items.iter_mut().zip(&prepared) {
            if let Some(Prepared::Apply(Some(_), _)) = prepared {
                item.drop_inline();
            }
        }
        let prepared = prepared
            .into_iter()
            .map(|p| {
                p.unwrap_or_else(|| Prepared::Retry(NotBuilt::Fetch("preparing failed".into())))
            })
            .collect();
        (items, prepared)
    }

    /// Puts a fetched item's outcome in its place, with its claim.
    fn land(
        &self,
        prepared: &mut [Option<Prepared>],
        fetching: &mut Vec<Wanted>,
        at: usize,
        built: Result<BuiltTemp, NotBuilt>,
    ) {
        let Some(pos) = fetching.iter().position(|w| w.at == at) else {
            return;
        };
        let want = fetching.swap_remove(pos);
        prepared[at] = Some(match built {
            Ok(temp) => Prepared::Apply(Some(temp), Some(want.claim)),
            Err(why) => Prepared::Retry(why),
        });
    }

    /// `Some` when the item needs no fetch (skip, or apply without content).
    fn decide(&self, item: &RemoteItem, prior: Option<&PriorItem>) -> Option<Prepared> {
        // A record has no content to fetch; the source task refuses it and says so.
        let Some(file) = item.file() else {
            return Some(Prepared::Apply(None, None));
        };
        let ignored = self
            .src
            .status
            .borrow()
            .ignores
            .is_ignored(item.path.as_str(), file.meta.kind == ItemKind::Directory);
        if ignored {
            return Some(Prepared::Skip);
        }
        // When this device's version wins (or is the same or newer), the peer's is never
        // fetched; the source task decides again at apply time, with the state then.
        if !item.decide(prior).applies() {
            return Some(Prepared::Skip);
        }
        if item.header.deleted {
            // Whatever stands in the way, a deletion writes nothing: the source task decides.
            return Some(Prepared::Apply(None, None));
        }
        let needs_content = file.meta.kind == ItemKind::File
            && !prior
                .filter(|p| !p.header.deleted)
                .and_then(PriorItem::file)
                .is_some_and(|p| p.hash == file.hash && p.meta.kind == ItemKind::File);
        if !needs_content {
            return Some(Prepared::Apply(None, None));
        }
        None
    }

    /// For every item that needs content, in one trip to the blocking pool: checks that its
    /// path leads somewhere (only after the version check, so an outdated item never waits
    /// on its path), and builds it at once when its content came inline.
    async fn start_builds(&self, items: &[RemoteItem], wanted: &[Wanted]) -> Vec<Started> {
        let jobs: Vec<BuildJob> = wanted
            .iter()
            .map(|w| {
                let item = &items[w.at];
                (
                    item.path.clone(),
                    item.file().and_then(|f| f.inline.clone()),
                    Finish::of(item),
                )
            })
            .collect();
        let (disk, root) = (self.src.disk.clone(), self.src.root.clone());
        let n = jobs.len();
        // Several threads at once: each small file's fsync is paid here, before the source
        // task sees the file, and fsyncs issued together are committed together.
        let started = tokio::task::spawn_blocking(move || {
            apply::in_parallel(
                &jobs,
                |part| {
                    let mut real = apply::RealFolders::for_looking();
                    part.iter()
                        .map(|(path, inline, finish)| {
                            start_build(&*disk, &root, &mut real, path, inline.as_deref(), *finish)
                        })
                        .collect()
                },
                |(path, _, _)| {
                    Early::Failed(ApplyError::Io {
                        path: path.to_string(),
                        action: "building the temp file",
                        source: std::io::Error::other("the building thread failed"),
                    })
                },
            )
        })
        .await;
        let Ok(started) = started else {
            let why = || Started::NotBuilt(NotBuilt::Fetch("building temp files failed".into()));
            return (0..n).map(|_| why()).collect();
        };
        started
            .into_iter()
            .zip(wanted)
            .map(|(early, w)| {
                let item = &items[w.at];
                match early {
                    Early::Built(temp) => Started::Built(temp),
                    Early::Fetch => Started::Fetch,
                    Early::Failed(e) => Started::NotBuilt(self.write_failed(item, e)),
                    Early::Blocked { parent, link } => {
                        let why = format!(
                            "path {:?} goes through {parent:?}, which is not a folder here",
                            item.path.as_str()
                        );
                        if link {
                            // Like `..`, a path through a symlink (which the peer may have made
                            // itself) would reach out of the source.
                            self.feed.refused(&why);
                        }
                        // Nothing is fetched now, but the item is not dropped either: a file
                        // here where the peer has a folder is a conflict in flight, which the
                        // folder wins, and then the item has somewhere to go.
                        Started::NotBuilt(NotBuilt::Fetch(why))
                    }
                }
            })
            .collect()
    }

    /// Builds the item's content in a temp file from its chunks, verifies it, gives it the
    /// item's metadata and makes it durable.
    async fn build(&self, item: &RemoteItem) -> Result<BuiltTemp, NotBuilt> {
        // A file of one chunk is fetched first and then created, written and checked in one
        // trip to the blocking pool: each trip is two thread switches.
        let Some(body) = item.file() else {
            return Err(NotBuilt::Fetch(format!(
                "{}: a record has no content to fetch",
                item.path
            )));
        };
        let first = match body.chunks.as_slice() {
            [only] => Some((
                *only,
                self.chunk(item.path.as_str(), *only)
                    .await
                    .map_err(NotBuilt::Fetch)?,
            )),
            _ => None,
        };
        let (disk, root) = (self.src.disk.clone(), self.src.root.clone());
        let path = item.path.clone();
        let (size, hash) = (body.meta.size, body.hash);
        let finish = Finish::of(item);
        let made = tokio::task::spawn_blocking(move || -> Result<Made, ApplyError> {
            let real = &mut apply::RealFolders::default();
            match first {
                // A one-chunk file's hash is its chunk's hash, checked on arrival.
                Some((chunk, data)) => {
                    let check = hash.filter(|h| *h != chunk.hash);
                    build_from(&*disk, &root, &path, real, &data, check, finish).map(Made::Done)
                }
                None => {
                    let (temp, file) = apply::create_temp(&*disk, &root, &path, Some(size), real)?;
                    Ok(Made::Open {
                        temp: BuiltTemp { path: temp },
                        file,
                    })
                }
            }
        })
        .await
        .map_err(|e| NotBuilt::Fetch(format!("building the temp file failed: {e}")))?
        .map_err(|e| self.write_failed(item, e))?;
        let (temp, file) = match made {
            Made::Done(temp) => return Ok(temp),
            Made::Open { temp, file } => (temp, Arc::new(file)),
        };
        self.fill(item, file.clone()).await?;
        let (disk, root) = (self.src.disk.clone(), self.src.root.clone());
        let (at, path) = (temp.path.clone(), item.path.clone());
        tokio::task::spawn_blocking(move || {
            if let Some(hash) = hash {
                apply::verify(&at, &path, hash)?;
            }
            let target = root.join(path.as_str());
            apply::finish_temp(&*disk, &file, &target, &path, finish.mode, finish.mtime_ns)
        })
        .await
        .map_err(|e| NotBuilt::Fetch(format!("checking the temp file failed: {e}")))?
        .map_err(|e| self.write_failed(item, e))?;
        Ok(temp)
    }

    /// What a failed write or check of an item's temp file means for it.
    fn write_failed(&self, item: &RemoteItem, e: ApplyError) -> NotBuilt {
        if let ApplyError::HashMismatch { .. } = e {
            // Every chunk matched its own hash, so the content is what the chunk list says:
            // the sender announced a list and a whole hash that disagree.
            self.feed.refused(&format!(
                "{}: its chunks do not match its content hash",
                item.path
            ));
        }
        NotBuilt::Write(e)
    }

    /// Gets one chunk of the item at `item` through the chain (local copies first).
    async fn chunk(&self, item: &str, chunk: ChunkRef) -> Result<Vec<u8>, String> {
        let want = ChunkWanted {
            source: self.src.id.clone(),
            item: item.to_owned(),
            chunk,
        };
        let served = self.chunks.get(&want).await?;
        if served.local {
            self.feed.progress(Progress::Reused(u64::from(chunk.len)));
        }
        Ok(served.data)
    }

    /// Fetches every chunk of a many-chunk item into its temp file, several at once.
    async fn fill(&self, item: &RemoteItem, file: Arc<std::fs::File>) -> Result<(), NotBuilt> {
        let mut set = JoinSet::new();
        let mut chunks = item
            .file()
            .map(|f| f.chunks.as_slice())
            .unwrap_or_default()
            .iter()
            .copied();
        let target = Arc::new(self.src.root.join(item.path.as_str()));
        loop {
            while set.len() < CHUNK_WINDOW {
                let Some(chunk) = chunks.next() else { break };
                let (fetcher, path, file) = (self.clone(), item.path.clone(), file.clone());
                let target = target.clone();
                set.spawn(async move {
                    let data = fetcher
                        .chunk(path.as_str(), chunk)
                        .await
                        .map_err(NotBuilt::Fetch)?;
                    let disk = fetcher.src.disk.clone();
                    tokio::task::spawn_blocking(move || {
                        apply::write_temp(&*disk, &file, &target, &path, &data, chunk.offset)
                    })
                    .await
                    .map_err(|e| NotBuilt::Fetch(format!("writing the temp file failed: {e}")))?
                    .map_err(NotBuilt::Write)
                });
            }
            match set.join_next().await {
                None => return Ok(()),
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(NotBuilt::Fetch(e.to_string())),
            }
        }
    }
}

/// A temp file made for an item: finished, or open for the chunks still to come.
enum Made {
    Done(BuiltTemp),
    Open {
        temp: BuiltTemp,
        file: std::fs::File,
    },
}

/// Files built from content already at hand, in one go, and fetches under way per update.
const BUILDS_AT_ONCE: usize = 64;

/// An item of a run that needs content, and its claim on that content.
struct Wanted {
    at: usize,
    claim: Claim,
}

/// An item's path and inline content, for the blocking pool.
type BuildJob = (ItemPath, Option<bytes::Bytes>, Finish);

/// What the blocking pool found for an item that needs content.
enum Early {
    Built(BuiltTemp),
    Fetch,
    Failed(ApplyError),
    Blocked { parent: String, link: bool },
}

/// How building an item's content began.
enum Started {
    Built(BuiltTemp),
    NotBuilt(NotBuilt),
    Fetch,
}

/// The blocking part of starting an item's build: its path must lead somewhere; content that
/// came inline (checked against the entry's hash when it arrived) is built at once.
fn start_build(
    disk: &dyn Disk,
    root: &std::path::Path,
    real: &mut apply::RealFolders,
    path: &ItemPath,
    inline: Option<&[u8]>,
    finish: Finish,
) -> Early {
    if let Some(parent) = real.blocked_parent(root, path) {
        let link =
            std::fs::symlink_metadata(root.join(&parent)).is_ok_and(|m| m.file_type().is_symlink());
        return Early::Blocked { parent, link };
    }
    let Some(data) = inline else {
        return Early::Fetch;
    };
    match build_from(disk, root, path, real, data, None, finish) {
        Ok(temp) => Early::Built(temp),
        Err(e) => Early::Failed(e),
    }
}

/// Creates an item's temp file and writes all its content, `data`, checking it against
/// `check` when given, then gives it the item's mode and mtime and makes it durable
/// (`finish`). Blocking; the temp goes again if anything fails.
fn build_from(
    disk: &dyn Disk,
    root: &std::path::Path,
    path: &ItemPath,
    real: &mut apply::RealFolders,
    data: &[u8],
    check: Option<Hash128>,
    finish: Finish,
) -> Result<BuiltTemp, ApplyError> {
    let (temp, file) = apply::create_temp(disk, root, path, None, real)?;
    // Removed again however this ends short of a verified file.
    let temp = BuiltTemp { path: temp };
    let target = root.join(path.as_str());
    apply::write_temp(disk, &file, &target, path, data, 0)?;
    if let Some(h) = check {
        apply::verify(&temp.path, path, h)?;
    }
    apply::finish_temp(disk, &file, &target, path, finish.mode, finish.mtime_ns)?;
    Ok(temp)
}

/// The metadata a finished temp file gets: the item's.
#[derive(Debug, Clone, Copy)]
struct Finish {
    mode: u32,
    mtime_ns: i64,
}

impl Finish {
    fn of(item: &RemoteItem) -> Finish {
        item.file().map_or(
            Finish {
                mode: 0o644,
                mtime_ns: 0,
            },
            |f| Finish {
                mode: f.meta.mode,
                mtime_ns: f.meta.mtime_ns,
            },
        )
    }
}

/// Why an item's content could not be built now; it is tried again later.
#[derive(Debug)]
pub(super) enum NotBuilt {
    /// Writing or checking its temp file failed (the message names the item and what to do).
    Write(ApplyError),
    /// A chunk could not be had, or the item cannot go where it belongs yet.
    Fetch(String),
}

impl NotBuilt {
    /// The reason as `status` shows it, naming the item.
    pub(super) fn describe(&self, item: &ItemPath) -> String {
        match self {
            NotBuilt::Write(e) => e.to_string(),
            NotBuilt::Fetch(e) => format!("{item}: {e}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_temp_is_removed_when_its_fetch_is_abandoned_and_kept_once_handed_over() {
        let dir = tempfile::tempdir().unwrap();
        let (dropped, abandoned, handed) = (
            dir.path().join("dropped"),
            dir.path().join("abandoned"),
            dir.path().join("handed"),
        );
        for p in [&dropped, &abandoned, &handed] {
            std::fs::write(p, b"built").unwrap();
        }

        drop(BuiltTemp {
            path: dropped.clone(),
        });
        assert!(!dropped.exists());

        // A fetch that never finishes, cancelled with its connection.
        let temp = BuiltTemp {
            path: abandoned.clone(),
        };
        let fetch = tokio::spawn(async move {
            let _held = temp;
            std::future::pending::<()>().await;
        });
        fetch.abort();
        assert!(fetch.await.unwrap_err().is_cancelled());
        assert!(!abandoned.exists());

        BuiltTemp {
            path: handed.clone(),
        }
        .hand_over();
        assert!(handed.exists());
    }
}
