//! One exchange with one device: hello, an index sender and a receiver per shared source,
//! chunk requests both ways. Symmetric: the same code runs whoever dialled.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tandem_proto::peer::{self as pb, Frame, frame::Body};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use super::{Ctx, PeerSourceStatus, SharedSource};
use crate::apply;
use crate::chunker::{ChunkRef, Hash128, MAX_CHUNK_SIZE};
use crate::formats::{self, Kind};
use crate::identity::DeviceId;
use crate::item::ItemKind;
use crate::source::{ApplyOutcome, RemoteApply};
use crate::universal::{self, ItemPath, RemoteItem};

/// Largest frame accepted or sent; anything bigger is refused before it is allocated.
pub const MAX_FRAME_BYTES: usize = 16 << 20;
/// Index updates are cut well below the frame limit.
const UPDATE_BUDGET: usize = 4 << 20;
/// Unacknowledged index updates in flight per source (flow control).
const INDEX_WINDOW: usize = 8;
/// Chunk requests in flight per file being built.
const CHUNK_WINDOW: usize = 16;
/// Items prepared (fetched) ahead of the one being applied.
const PIPELINE: usize = 64;
/// Most remote items applied in one source-task transaction.
const APPLY_BATCH: usize = 256;
/// Chunk requests served at once for one peer.
const SERVE_CONCURRENCY: usize = 16;
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);
/// Failed items are tried again this often.
const RETRY_EVERY: Duration = Duration::from_secs(5);

/// Where outgoing frames go: the response stream (accepted) or the request stream (dialled).
#[derive(Clone)]
pub enum Outbound {
    Server(mpsc::Sender<Result<Frame, Status>>),
    Client(mpsc::Sender<Frame>),
}

impl Outbound {
    async fn send(&self, body: Body) -> bool {
        let frame = Frame { body: Some(body) };
        match self {
            Outbound::Server(tx) => tx.send(Ok(frame)).await.is_ok(),
            Outbound::Client(tx) => tx.send(frame).await.is_ok(),
        }
    }
}

/// A chunk wanted from the peer.
pub(super) struct Fetch {
    req: pb::ChunkRequest,
    reply: oneshot::Sender<Result<Vec<u8>, String>>,
}

struct Conn {
    ctx: Ctx,
    device: DeviceId,
    device_text: String,
    out: Outbound,
    cancel: CancellationToken,
    shared: BTreeMap<String, SharedSource>,
    senders: BTreeMap<String, watch::Sender<u64>>,
    receivers: BTreeMap<String, mpsc::Sender<pb::IndexUpdate>>,
    pending: BTreeMap<u64, oneshot::Sender<Result<Vec<u8>, String>>>,
    next_request: u64,
    fetch_tx: mpsc::Sender<Fetch>,
    serving: Arc<Semaphore>,
    /// The peer's latest hello, matched again whenever our own shared set changes.
    peer_hello: Option<pb::Hello>,
}

/// Runs the exchange until either side hangs up or `cancel` fires.
pub async fn run(
    ctx: Ctx,
    device: DeviceId,
    conn_id: u64,
    remote_addr: String,
    mut inbound: Streaming<Frame>,
    out: Outbound,
    cancel: CancellationToken,
) {
    let device_text = device.to_string();
    ctx.board.send_modify(|b| {
        let p = b.peers.entry(device_text.clone()).or_default();
        p.connected = true;
        p.ever_connected = true;
        p.conn = conn_id;
        p.remote_addr = remote_addr;
        p.last_error.clear();
        p.incompatible.clear();
        // What the peer shares is known again only from its hello on this connection.
        for s in p.sources.values_mut() {
            s.shared_by_peer = false;
        }
    });
    ctx.changed.notify_waiters();
    let (fetch_tx, mut fetch_rx) = mpsc::channel(256);
    let mut generation = ctx.generation.subscribe();
    let mut conn = Conn {
        ctx: ctx.clone(),
        device,
        device_text: device_text.clone(),
        out,
        cancel: cancel.child_token(),
        shared: BTreeMap::new(),
        senders: BTreeMap::new(),
        receivers: BTreeMap::new(),
        pending: BTreeMap::new(),
        next_request: 0,
        fetch_tx,
        serving: Arc::new(Semaphore::new(SERVE_CONCURRENCY)),
        peer_hello: None,
    };
    ctx.fetchers.send_modify(|f| {
        f.insert(
            device_text.clone(),
            super::PeerFetch {
                conn: conn_id,
                tx: conn.fetch_tx.clone(),
                sources: Default::default(),
            },
        );
    });
    conn.say_hello().await;
    let why = loop {
        tokio::select! {
            () = cancel.cancelled() => break "closed".to_owned(),
            frame = inbound.message() => match frame {
                Ok(Some(frame)) => {
                    if let Err(e) = conn.on_frame(frame).await {
                        break e;
                    }
                }
                Ok(None) => break "the peer closed the connection".to_owned(),
                // tonic refuses a frame over the decoding limit before allocating it; after
                // that the stream cannot be resynchronised, so the connection goes too.
                Err(e) if e.code() == tonic::Code::OutOfRange => {
                    let what = format!("a frame over the {MAX_FRAME_BYTES}-byte limit");
                    refuse(&ctx, &device_text, &what);
                    break format!("dropped: the peer sent {what}");
                }
                Err(e) => break format!("connection lost: {}", with_root_cause(&e)),
            },
            fetch = fetch_rx.recv() => if let Some(fetch) = fetch {
                conn.next_request += 1;
                let id = conn.next_request;
                conn.pending.insert(id, fetch.reply);
                let mut req = fetch.req;
                req.request_id = id;
                if !conn.out.send(Body::ChunkRequest(req)).await {
                    break "the connection closed".to_owned();
                }
            },
            changed = generation.changed() => {
                if changed.is_err() {
                    break "shutting down".to_owned();
                }
                conn.say_hello().await;
            }
        }
    };
    info!(reason = %why, "peer disconnected");
    // A connection that replaced this one owns the entries now.
    ctx.fetchers.send_modify(|f| {
        if f.get(&device_text).is_some_and(|e| e.conn == conn_id) {
            f.remove(&device_text);
        }
    });
    conn.cancel.cancel();
    for (_, reply) in std::mem::take(&mut conn.pending) {
        let _ = reply.send(Err("the connection closed".into()));
    }
    ctx.board.send_modify(|b| {
        if let Some(p) = b.peers.get_mut(&device_text)
            && p.conn == conn_id
        {
            p.connected = false;
            p.last_error = why;
            for s in p.sources.values_mut() {
                s.in_flight = 0;
                s.receiving_idle = true;
            }
        }
    });
    ctx.changed.notify_waiters();
}

/// Optional features this build offers in its hello: the kinds of data it can keep.
const CAPABILITIES: &[&str] = &["kind:files"];

/// The kind of data a source kept in `format` holds; `None` for a format this build lacks.
fn kind_of(format: &str) -> Option<Kind> {
    formats::by_name(format).ok().map(|f| f.kind())
}

/// Why a source cannot be exchanged with a peer that keeps it as another kind of data.
fn kind_mismatch(theirs: &pb::SourceCursor, our_format: &str, device: &DeviceId) -> Option<String> {
    let ours = kind_of(our_format)?;
    if Kind::parse(&theirs.kind) == Some(ours) {
        return None;
    }
    let their_kind = if theirs.kind.is_empty() {
        "an unknown kind"
    } else {
        theirs.kind.as_str()
    };
    Some(format!(
        "source {:?}: device {} keeps it as {their_kind} ({}), this device as {ours} ({our_format}); \
         a source holds one kind of data everywhere, so share it only between devices that keep \
         the same kind",
        theirs.source,
        device.short_string(),
        if theirs.format.is_empty() {
            "?"
        } else {
            &theirs.format
        },
    ))
}

/// A status's message and, in brackets, the innermost error under it: the message alone
/// ("error reading a body from connection") hides what broke the link, such as a TLS record
/// that failed its check ("cannot decrypt peer's message").
fn with_root_cause(status: &Status) -> String {
    let mut root = None;
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        root = Some(e);
        cause = e.source();
    }
    let message = status.message();
    match root.map(ToString::to_string) {
        Some(root) if !message.contains(&root) => format!("{message} ({root})"),
        _ => message.to_owned(),
    }
}

fn board_update(ctx: &Ctx, device: &str, source: &str, f: impl FnOnce(&mut PeerSourceStatus)) {
    ctx.board.send_modify(|b| {
        let p = b.peers.entry(device.to_owned()).or_default();
        f(p.sources.entry(source.to_owned()).or_default());
    });
    ctx.changed.notify_waiters();
}

/// Counts and logs something refused from a peer, naming the peer's device ID (connection
/// tasks do not all run inside the peer's span).
fn refuse(ctx: &Ctx, device: &str, what: &str) {
    warn!(device = %device, refused = %what, "refused from peer");
    ctx.board.send_modify(|b| {
        let p = b.peers.entry(device.to_owned()).or_default();
        p.refused += 1;
        p.last_error = format!("refused: {what}");
    });
}

impl Conn {
    async fn say_hello(&mut self) {
        self.shared = self
            .ctx
            .sources
            .shared_with(self.device_text.clone())
            .await
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let mut sources = Vec::new();
        for (id, s) in &self.shared {
            let applied = self
                .ctx
                .store
                .cursor(self.device_text.clone(), id.clone())
                .await
                .unwrap_or(0);
            let (local, format) = {
                let status = s.status.borrow();
                (status.totals.sequence, status.format.clone())
            };
            sources.push(pb::SourceCursor {
                source: id.clone(),
                applied,
                local,
                kind: kind_of(&format)
                    .map(Kind::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                format,
            });
        }
        let hello = pb::Hello {
            device_id: self.ctx.identity.device_id.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            sources,
            protocol: tandem_proto::PEER_PROTOCOL,
            capabilities: CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
        };
        self.out.send(Body::Hello(hello)).await;
        if let Some(hello) = self.peer_hello.clone() {
            self.start_exchanges(hello).await;
        }
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<(), String> {
        match frame.body {
            Some(Body::Hello(hello)) => self.on_hello(hello).await?,
            Some(Body::Index(update)) => {
                let Some(tx) = self.receivers.get(&update.source) else {
                    refuse(
                        &self.ctx,
                        &self.device_text,
                        &format!(
                            "index update for source {:?}, which is not shared with it",
                            update.source
                        ),
                    );
                    return Ok(());
                };
                // The peer keeps at most INDEX_WINDOW updates unacknowledged; more is abuse.
                if tx.try_send(update).is_err() {
                    return Err(
                        "the peer sent more index updates than it may have in flight".into(),
                    );
                }
            }
            Some(Body::Applied(a)) => {
                if let Some(tx) = self.senders.get(&a.source) {
                    // A peer older than `received` leaves it 0: fall back to what it applied.
                    let through = a.sequence.max(a.received);
                    tx.send_modify(|v| *v = (*v).max(through));
                }
                board_update(&self.ctx, &self.device_text, &a.source, |s| {
                    s.peer_applied = s.peer_applied.max(a.sequence)
                });
            }
            Some(Body::ChunkRequest(req)) => self.serve_chunk(req),
            Some(Body::ChunkData(data)) => {
                if let Some(reply) = self.pending.remove(&data.request_id) {
                    let result = if data.error.is_empty() {
                        Ok(data.data)
                    } else {
                        Err(data.error)
                    };
                    let _ = reply.send(result);
                }
            }
            None => refuse(&self.ctx, &self.device_text, "an empty frame"),
        }
        Ok(())
    }

    /// Checks the peer's hello; an incompatible protocol ends the connection.
    async fn on_hello(&mut self, hello: pb::Hello) -> Result<(), String> {
        if hello.device_id != self.device_text {
            refuse(
                &self.ctx,
                &self.device_text,
                "a hello naming another device",
            );
            return Ok(());
        }
        if hello.protocol != tandem_proto::PEER_PROTOCOL {
            let why = format!(
                "device {} speaks peer protocol {} (tandem {}), this device speaks protocol {} \
                 (tandem {}); install the same Tandem release on both",
                self.device.short_string(),
                hello.protocol,
                if hello.version.is_empty() {
                    "?"
                } else {
                    &hello.version
                },
                tandem_proto::PEER_PROTOCOL,
                env!("CARGO_PKG_VERSION"),
            );
            warn!(device = %self.device_text, error = %why, "refused an incompatible peer");
            self.ctx.board.send_modify(|b| {
                if let Some(p) = b.peers.get_mut(&self.device_text) {
                    p.incompatible.clone_from(&why);
                }
            });
            return Err(format!("refused: {why}"));
        }
        self.peer_hello = Some(hello.clone());
        self.start_exchanges(hello).await;
        Ok(())
    }

    /// Starts a sender and a receiver for every source both sides share and not yet running.
    async fn start_exchanges(&mut self, hello: pb::Hello) {
        for c in hello.sources {
            let Some(src) = self.shared.get(&c.source).cloned() else {
                debug!(source = %c.source, "peer shares a source we do not share with it");
                continue;
            };
            let (local, format) = {
                let status = src.status.borrow();
                (status.totals.sequence, status.format.clone())
            };
            if let Some(why) = kind_mismatch(&c, &format, &self.device) {
                // Both devices see the other's hello, so both refuse, each with this message.
                warn!(source = %c.source, device = %self.device_text, error = %why, "refused a source");
                board_update(&self.ctx, &self.device_text, &c.source, |s| {
                    s.refused.clone_from(&why);
                    s.shared_by_peer = false;
                });
                continue;
            }
            // A cursor beyond what this device ever numbered means its database was reset:
            // start over so the peer sees everything again.
            let from = if c.applied > local { 0 } else { c.applied };
            let applied = self
                .ctx
                .store
                .cursor(self.device_text.clone(), c.source.clone())
                .await
                .unwrap_or(0);
            board_update(&self.ctx, &self.device_text, &c.source, |s| {
                s.refused.clear();
                s.shared_by_peer = true;
                s.peer_sequence = c.local;
                s.peer_applied = from;
                s.applied = applied;
                s.receiving_idle = true;
                s.peer_caught_up = false;
            });
            if !self.senders.contains_key(&c.source) {
                let (tx, rx) = watch::channel(from);
                self.senders.insert(c.source.clone(), tx);
                let task = Sender {
                    ctx: self.ctx.clone(),
                    device: self.device_text.clone(),
                    src: src.clone(),
                    out: self.out.clone(),
                    from,
                    acked: rx,
                };
                let cancel = self.cancel.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = task.run() => {}
                    }
                });
            }
            if !self.receivers.contains_key(&c.source) {
                let (tx, rx) = mpsc::channel(INDEX_WINDOW * 2);
                self.receivers.insert(c.source.clone(), tx);
                let (device, source) = (self.device_text.clone(), c.source.clone());
                self.ctx.fetchers.send_modify(|f| {
                    if let Some(entry) = f.get_mut(&device) {
                        entry.sources.insert(source);
                    }
                });
                let needed = Needed::new(&self.ctx, &self.device_text, &c.source);
                let task = Receiver {
                    ctx: self.ctx.clone(),
                    device: self.device,
                    device_text: self.device_text.clone(),
                    src,
                    needed,
                    out: self.out.clone(),
                    fetch: self.fetch_tx.clone(),
                    applied,
                    seen: applied,
                    retry: Vec::new(),
                };
                let cancel = self.cancel.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = task.run(rx) => {}
                    }
                });
            }
        }
    }

    fn serve_chunk(&mut self, req: pb::ChunkRequest) {
        let (ctx, out, device) = (self.ctx.clone(), self.out.clone(), self.device_text.clone());
        let src = self.shared.get(&req.source).cloned();
        let serving = self.serving.clone();
        tokio::spawn(async move {
            let Ok(_permit) = serving.acquire_owned().await else {
                return;
            };
            let id = req.request_id;
            let answer = match src {
                None => {
                    refuse(
                        &ctx,
                        &device,
                        &format!(
                            "a chunk request for source {:?}, which is not shared with it",
                            req.source
                        ),
                    );
                    Err("source not shared".to_owned())
                }
                Some(src) => read_chunk(&ctx, &src, &req).await,
            };
            let data = match answer {
                Ok(data) => pb::ChunkData {
                    request_id: id,
                    data,
                    error: String::new(),
                },
                Err(error) => pb::ChunkData {
                    request_id: id,
                    data: Vec::new(),
                    error,
                },
            };
            out.send(Body::ChunkData(data)).await;
        });
    }
}

/// A write failure in the source, with what to do about it.
fn write_failed(action: &str, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::StorageFull {
        format!(
            "{action} failed: no space left on the device holding the source; free some space \
             (the item is retried automatically and the other items keep syncing)"
        )
    } else {
        format!(
            "{action} failed: {e}; check permissions and free space (the item is retried \
             automatically)"
        )
    }
}

/// Reads a chunk a peer asked for from the named item, or any local copy in the same source.
async fn read_chunk(
    ctx: &Ctx,
    src: &SharedSource,
    req: &pb::ChunkRequest,
) -> Result<Vec<u8>, String> {
    let hash = Hash128::from_slice(&req.hash).ok_or("chunk hash is not 16 bytes")?;
    if req.len == 0 || req.len > MAX_CHUNK_SIZE {
        return Err(format!("chunk length {} is out of range", req.len));
    }
    let path = ItemPath::parse(&req.path).map_err(|e| e.to_string())?;
    // The named item almost always still has it; other local copies are looked up (a trip to
    // the store) only when it does not.
    if let Some(data) = read_verified(&src.root, path, req.offset, req.len, hash).await {
        return Ok(data);
    }
    let root_text = src.root.to_string_lossy().into_owned();
    if let Ok(others) = ctx.store.chunk_sources(hash).await {
        for o in others.into_iter().filter(|o| o.root == root_text) {
            if let Ok(p) = ItemPath::parse(&o.path)
                && let Some(data) = read_verified(&src.root, p, o.offset, o.len, hash).await
            {
                return Ok(data);
            }
        }
    }
    Err(format!("chunk {hash} of {} is no longer here", req.path))
}

/// A range of an item's file, if it is there and hashes to `hash`. Never through a symlink:
/// the peer may have made links here itself, and an answer (even only "found" for a hash it
/// guessed) would tell it what lies outside.
async fn read_verified(
    root: &std::path::Path,
    item: ItemPath,
    offset: u64,
    len: u32,
    hash: Hash128,
) -> Option<Vec<u8>> {
    let root = root.to_path_buf();
    let read =
        tokio::task::spawn_blocking(move || apply::read_range(&root, &item, offset, len)).await;
    match read {
        Ok(Ok(data)) if Hash128::of(&data) == hash => Some(data),
        _ => None,
    }
}

/// Streams this device's index of one source to the peer, from its cursor on, then live.
struct Sender {
    ctx: Ctx,
    device: String,
    src: SharedSource,
    out: Outbound,
    from: u64,
    acked: watch::Receiver<u64>,
}

impl Sender {
    async fn run(mut self) {
        let mut status = self.src.status.clone();
        let mut unacked: VecDeque<u64> = VecDeque::new();
        let mut told_caught_up = false;
        loop {
            let acked = *self.acked.borrow_and_update();
            while unacked.front().is_some_and(|s| *s <= acked) {
                unacked.pop_front();
            }
            if unacked.len() >= INDEX_WINDOW {
                if self.acked.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let items = match self
                .ctx
                .store
                .items_since(self.src.id.clone(), self.from, 1000)
                .await
            {
                Ok(items) => items,
                Err(e) => {
                    warn!(error = %e, source = %self.src.id, "cannot read the index to send");
                    return;
                }
            };
            if items.is_empty() {
                // "Caught up" promises the receiver there is nothing more to come: not while
                // this device is still scanning, which would number more changes.
                if !self.src.status.borrow().settled() {
                    let from = self.from;
                    if status
                        .wait_for(|s| s.totals.sequence > from || s.settled())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                if !told_caught_up {
                    let update = pb::IndexUpdate {
                        source: self.src.id.clone(),
                        items: Vec::new(),
                        caught_up: true,
                        through_sequence: self.from,
                    };
                    if !self.out.send(Body::Index(update)).await {
                        return;
                    }
                    told_caught_up = true;
                    unacked.push_back(self.from);
                }
                // Sleep until this device numbers something new.
                let from = self.from;
                if status.wait_for(|s| s.totals.sequence > from).await.is_err() {
                    return;
                }
                continue;
            }
            let mut batch = Vec::new();
            let mut size = 0usize;
            let mut last = self.from;
            for entry in items {
                let (prior, chunks, origin) = (entry.item, entry.chunks, entry.origin);
                if origin.as_deref() == Some(self.device.as_str()) {
                    // The peer sent us exactly this version: echoing it back is wasted bytes.
                    last = prior.sequence;
                    continue;
                }
                let Ok(path) = ItemPath::parse(&prior.path) else {
                    last = prior.sequence;
                    continue;
                };
                let item = RemoteItem {
                    path,
                    meta: prior.meta.clone(),
                    version: prior.version.clone(),
                    hash: prior.hash,
                    chunks,
                    deleted: prior.deleted,
                    sequence: prior.sequence,
                    modified_by: prior.modified_by.clone(),
                };
                let msg = universal::item_to_pb(&item);
                let len = msg.encoded_len();
                if !batch.is_empty() && size + len > UPDATE_BUDGET {
                    break;
                }
                size += len;
                last = prior.sequence;
                batch.push(msg);
            }
            let n = batch.len() as u64;
            let update = pb::IndexUpdate {
                source: self.src.id.clone(),
                items: batch,
                caught_up: false,
                through_sequence: last,
            };
            if !self.out.send(Body::Index(update)).await {
                return;
            }
            self.from = last;
            told_caught_up = false;
            unacked.push_back(last);
            board_update(&self.ctx, &self.device, &self.src.id, |s| {
                s.sent_items += n;
                s.sent_sequence = last;
            });
        }
    }
}

/// Applies the peer's index of one source: fetches what is missing, hands each item to the
/// source task, acknowledges, and moves the cursor.
struct Receiver {
    ctx: Ctx,
    device: DeviceId,
    device_text: String,
    src: SharedSource,
    out: Outbound,
    fetch: mpsc::Sender<Fetch>,
    applied: u64,
    /// Highest sequence received, applied or not.
    seen: u64,
    retry: Vec<Retry>,
    /// This receiver's share of the board's `needed_*` counts.
    needed: Needed,
}

/// An item set aside to be tried again.
struct Retry {
    item: RemoteItem,
    /// Set aside because another receiver was fetching the same content: tried again as soon
    /// as that fetch ends, rather than after [`RETRY_EVERY`].
    busy: Option<BuildKey>,
}

/// What one receiver has added to the board's `needed_items` and `needed_bytes` and not yet
/// taken out. A receiver stops wherever it is when its connection drops, in the middle of an
/// update; whatever it still counted is taken out when it is dropped, since the next
/// connection asks for those items again and counts them afresh (left in, they would keep
/// `wait` from ever calling the peers in sync).
struct Needed {
    ctx: Ctx,
    device: String,
    source: String,
    items: u64,
    bytes: u64,
}

impl Needed {
    fn new(ctx: &Ctx, device: &str, source: &str) -> Needed {
        Needed {
            ctx: ctx.clone(),
            device: device.to_owned(),
            source: source.to_owned(),
            items: 0,
            bytes: 0,
        }
    }

    /// Counts items just received; the receiver is busy until it has dealt with them.
    fn add(&mut self, items: u64, bytes: u64) {
        self.items += items;
        self.bytes += bytes;
        board_update(&self.ctx, &self.device, &self.source, |s| {
            s.needed_items += items;
            s.needed_bytes += bytes;
            s.receiving_idle = false;
        });
    }

    /// Takes out items dealt with (applied, skipped, refused or put aside for a retry).
    fn done(&mut self, items: u64, bytes: u64) {
        // Never more than this receiver put in, so other receivers' counts stay whole.
        let (items, bytes) = (items.min(self.items), bytes.min(self.bytes));
        self.items -= items;
        self.bytes -= bytes;
        board_update(&self.ctx, &self.device, &self.source, |s| {
            s.needed_items = s.needed_items.saturating_sub(items);
            s.needed_bytes = s.needed_bytes.saturating_sub(bytes);
        });
    }
}

impl Drop for Needed {
    fn drop(&mut self) {
        if self.items > 0 || self.bytes > 0 {
            let (items, bytes) = (self.items, self.bytes);
            self.done(items, bytes);
        }
    }
}

impl Receiver {
    async fn run(mut self, mut updates: mpsc::Receiver<pb::IndexUpdate>) {
        let mut building = self.ctx.building.subscribe();
        loop {
            let update = if self.retry.is_empty() {
                updates.recv().await
            } else {
                let waits_for_fetch = self.retry.iter().any(|r| r.busy.is_some());
                tokio::select! {
                    u = updates.recv() => u,
                    () = tokio::time::sleep(RETRY_EVERY) => {
                        self.retry_failed(updates.is_empty()).await;
                        continue;
                    }
                    Ok(()) = building.changed(), if waits_for_fetch => {
                        let released = {
                            let set = building.borrow_and_update();
                            self.retry
                                .iter()
                                .any(|r| r.busy.as_ref().is_some_and(|k| !set.contains(k)))
                        };
                        if released {
                            self.retry_failed(updates.is_empty()).await;
                        }
                        continue;
                    }
                }
            };
            let Some(update) = update else { return };
            self.on_update(update, updates.is_empty()).await;
        }
    }

    async fn retry_failed(&mut self, queue_empty: bool) {
        for r in std::mem::take(&mut self.retry) {
            let again = self.process(r.item).await;
            self.retry.extend(again);
        }
        self.acknowledge(queue_empty).await;
    }

    async fn on_update(&mut self, update: pb::IndexUpdate, queue_empty: bool) {
        let items = match universal::update_from_pb(&update) {
            Ok(items) => items,
            Err(e) => {
                refuse(&self.ctx, &self.device_text, &e.to_string());
                return;
            }
        };
        // A newer version of an item waiting for a retry replaces it: the old one may never
        // be applicable (its content gone, its folder replaced), and the new one decides.
        if !self.retry.is_empty() {
            let newer: BTreeSet<&str> = items
                .iter()
                .filter_map(|i| i.as_ref().ok().map(|i| i.path.as_str()))
                .collect();
            self.retry.retain(|r| !newer.contains(r.item.path.as_str()));
        }
        // Counted as they are taken out again below: a refused item counts no bytes.
        let needed_bytes: u64 = items
            .iter()
            .map(|i| i.as_ref().map_or(0, |i| i.meta.size))
            .sum();
        self.needed.add(items.len() as u64, needed_bytes);
        let mut max_seq = self.seen.max(update.through_sequence);
        // Content is fetched for several items at once (small files are mostly round trips),
        // and applied strictly in the peer's order.
        let mut pending: VecDeque<(RemoteItem, tokio::task::JoinHandle<Prepared>)> =
            VecDeque::new();
        let mut items = items.into_iter();
        loop {
            while pending.len() < PIPELINE {
                match items.next() {
                    None => break,
                    Some(Err(refused)) => {
                        refuse(&self.ctx, &self.device_text, &refused.to_string());
                        self.needed.done(1, 0);
                    }
                    Some(Ok(item)) => {
                        max_seq = max_seq.max(item.sequence);
                        let job = tokio::spawn(self.fetcher().prepare(item.clone()));
                        pending.push_back((item, job));
                    }
                }
            }
            // Everything already fetched goes to the source task as one batch (one
            // transaction), waiting only for the oldest.
            let Some((item, job)) = pending.pop_front() else {
                break;
            };
            let failed =
                |e: tokio::task::JoinError| Prepared::Retry(format!("preparing failed: {e}"));
            let mut batch = vec![(item, job.await.unwrap_or_else(failed))];
            while batch.len() < APPLY_BATCH && pending.front().is_some_and(|(_, j)| j.is_finished())
            {
                if let Some((item, job)) = pending.pop_front() {
                    batch.push((item, job.await.unwrap_or_else(failed)));
                }
            }
            let n = batch.len() as u64;
            let size: u64 = batch.iter().map(|(i, _)| i.meta.size).sum();
            let to_retry = self.finish(batch).await;
            self.retry.extend(to_retry);
            self.needed.done(n, size);
            board_update(&self.ctx, &self.device_text, &self.src.id, |s| {
                s.done_items += n
            });
        }
        self.seen = self.seen.max(max_seq);
        // The peer's word that it has sent everything it had numbered, scanned and settled.
        let caught_up = update.caught_up;
        board_update(&self.ctx, &self.device_text, &self.src.id, |s| {
            s.peer_caught_up = caught_up;
        });
        self.acknowledge(queue_empty).await;
    }

    /// Moves the cursor and tells the peer how far its index is applied here: up to just
    /// before the first item still waiting for a retry, so neither side calls it in sync and
    /// a restart asks for that item again.
    async fn acknowledge(&mut self, queue_empty: bool) {
        let held_back = self.retry.iter().map(|r| r.item.sequence).min();
        let applied = match held_back {
            Some(first) => self.seen.min(first.saturating_sub(1)),
            None => self.seen,
        };
        if applied != self.applied {
            self.applied = applied;
            if let Err(e) = self
                .ctx
                .store
                .set_cursor(self.device_text.clone(), self.src.id.clone(), applied)
                .await
            {
                warn!(error = %e, "cannot save the cursor; the peer resends after a restart");
            }
        }
        self.out
            .send(Body::Applied(pb::Applied {
                source: self.src.id.clone(),
                sequence: applied,
                received: self.seen,
            }))
            .await;
        let idle = queue_empty && self.retry.is_empty();
        let seen = self.seen;
        board_update(&self.ctx, &self.device_text, &self.src.id, |s| {
            s.applied = applied;
            s.peer_sequence = s.peer_sequence.max(seen);
            s.receiving_idle = idle;
        });
    }

    fn fetcher(&self) -> Fetcher {
        Fetcher {
            ctx: self.ctx.clone(),
            device_text: self.device_text.clone(),
            src: self.src.clone(),
            fetch: self.fetch.clone(),
        }
    }

    /// Applies one item; gives it back if it should be tried again later.
    async fn process(&mut self, item: RemoteItem) -> Option<Retry> {
        let prepared = self.fetcher().prepare(item.clone()).await;
        self.finish(vec![(item, prepared)]).await.pop()
    }

    /// The local step of prepared items: hand them to the source task as one batch. Gives
    /// back the items to try again later.
    async fn finish(&mut self, batch: Vec<(RemoteItem, Prepared)>) -> Vec<Retry> {
        let id = self.src.id.clone();
        let mut retry = Vec::new();
        let mut claims = Vec::new();
        let mut temps = Vec::new();
        let mut items = Vec::with_capacity(batch.len());
        let mut reqs = Vec::with_capacity(batch.len());
        for (item, prepared) in batch {
            match prepared {
                Prepared::Skip => {}
                Prepared::Busy(key) => retry.push(Retry {
                    item,
                    busy: Some(key),
                }),
                Prepared::Retry(e) => {
                    warn!(item = %item.path, error = %e, "cannot fetch content; retrying later");
                    board_update(&self.ctx, &self.device_text, &id, |s| {
                        s.last_error = format!("{}: {e}", item.path)
                    });
                    retry.push(Retry { item, busy: None });
                }
                Prepared::Apply(temp, claim) => {
                    claims.extend(claim);
                    reqs.push(RemoteApply {
                        item: item.clone(),
                        temp: temp.as_ref().map(|t| t.path.clone()),
                        from: self.device.short_string(),
                        from_device: self.device_text.clone(),
                    });
                    temps.extend(temp);
                    items.push(item);
                }
            }
        }
        if reqs.is_empty() {
            return retry;
        }
        // From here the source task owns the temp files: it renames each into place or
        // removes it. The hand-over runs in its own task, so a connection dropping while the
        // batch waits for the source task neither strands the temps nor pulls them from
        // under an apply already under way.
        for temp in temps {
            temp.hand_over();
        }
        let commander = self.src.commander.clone();
        let applying = tokio::spawn(async move {
            let outcomes = commander.apply(reqs).await;
            drop(claims);
            outcomes
        });
        let outcomes = match applying.await {
            Ok(outcomes) => outcomes,
            Err(e) => vec![ApplyOutcome::Failed(format!("applying failed: {e}")); items.len()],
        };
        for (item, outcome) in items.into_iter().zip(outcomes) {
            if let ApplyOutcome::Failed(e) = outcome {
                board_update(&self.ctx, &self.device_text, &id, |s| s.last_error = e);
                retry.push(Retry { item, busy: None });
            }
        }
        retry
    }
}

/// A claimed fetch of one item's content; dropping it (once applied, or on failure) lets
/// other fetches of the same content decide again.
struct Claim {
    building: Arc<watch::Sender<BTreeSet<BuildKey>>>,
    key: BuildKey,
}

/// Source, item path and content hash of an item being fetched.
pub(super) type BuildKey = (String, String, Option<Hash128>);

impl Drop for Claim {
    fn drop(&mut self) {
        self.building.send_modify(|set| {
            set.remove(&self.key);
        });
    }
}

/// What preparing a remote item came to.
enum Prepared {
    /// This device already has it (or something newer).
    Skip,
    /// Ready for the source task, with built content if it needed any (and the claim on
    /// that content, released once applied).
    Apply(Option<BuiltTemp>, Option<Claim>),
    /// Content could not be fetched now.
    Retry(String),
    /// Another receiver is fetching the same content for the same item.
    Busy(BuildKey),
}

/// A temp file being built or built for an item, removed when dropped before the source task
/// took it over: a fetch abandoned half way (its connection dropped) or an item never applied
/// must not leave its temp in the source.
struct BuiltTemp {
    path: std::path::PathBuf,
}

impl BuiltTemp {
    /// The source task owns the file from now on.
    fn hand_over(mut self) {
        self.path = std::path::PathBuf::new();
    }
}

impl Drop for BuiltTemp {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            // One unlink, only on the path that abandons the content: cheap enough to do
            // here rather than on the blocking pool. Gone already is fine too.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Everything needed to fetch an item's content, cloneable into a task.
#[derive(Clone)]
struct Fetcher {
    ctx: Ctx,
    device_text: String,
    src: SharedSource,
    fetch: mpsc::Sender<Fetch>,
}

impl Fetcher {
    /// Decides whether the item is needed and builds its content if so.
    async fn prepare(self, item: RemoteItem) -> Prepared {
        // When several peers announce the same content for the same item, only one fetch runs.
        // The others are set aside, not awaited here: waiting would stall this receiver's
        // in-order pipeline behind another's, and two receivers that each hold a claim the
        // other's next item waits for would stall for good. Set aside, they are retried when
        // the claim goes, and then find the item applied.
        let key = (self.src.id.clone(), item.path.to_string(), item.hash);
        if let Some(done) = self.decide(&item).await {
            return done;
        }
        let claimed = self
            .ctx
            .building
            .send_if_modified(|set| set.insert(key.clone()));
        if !claimed {
            return Prepared::Busy(key);
        }
        // Held until the item is applied, so the set-aside fetches then skip it.
        let claim = Claim {
            building: self.ctx.building.clone(),
            key,
        };
        match self.build(&item).await {
            Ok(temp) => Prepared::Apply(Some(temp), Some(claim)),
            Err(e) => Prepared::Retry(e),
        }
    }

    /// `Some` when the item needs no fetch (skip, or apply without content).
    async fn decide(&self, item: &RemoteItem) -> Option<Prepared> {
        let ignored = self
            .src
            .status
            .borrow()
            .ignores
            .is_ignored(item.path.as_str(), item.meta.kind == ItemKind::Directory);
        if ignored {
            return Some(Prepared::Skip);
        }
        let prior = self
            .ctx
            .store
            .prior_item(self.src.id.clone(), item.path.to_string())
            .await
            .ok()
            .flatten();
        // When this device's version wins (or is the same or newer), the peer's is never
        // fetched; the source task decides again at apply time, with the state then.
        if !item.decide(prior.as_ref()).applies() {
            return Some(Prepared::Skip);
        }
        if item.deleted {
            // Whatever stands in the way, a deletion writes nothing: the source task decides.
            return Some(Prepared::Apply(None, None));
        }
        let (root, path) = (self.src.root.clone(), item.path.clone());
        // Only after the version check, so an outdated item never waits on its path.
        // A failed check lets the item through to the source task, which checks again
        // before it touches anything.
        let blocked = tokio::task::spawn_blocking(move || {
            apply::blocked_parent(&root, &path).map(|parent| {
                let link = std::fs::symlink_metadata(root.join(&parent))
                    .is_ok_and(|m| m.file_type().is_symlink());
                (parent, link)
            })
        })
        .await
        .unwrap_or(None);
        if let Some((parent, link)) = blocked {
            let why = format!(
                "path {:?} goes through {parent:?}, which is not a folder here",
                item.path.as_str()
            );
            if link {
                // Like `..`, a path through a symlink (which the peer may have made itself)
                // would reach out of the source.
                refuse(&self.ctx, &self.device_text, &why);
            }
            // Nothing is fetched now, but the item is not dropped either: a file here where
            // the peer has a folder is a conflict in flight, which the folder wins, and then
            // the item has somewhere to go.
            return Some(Prepared::Retry(why));
        }
        let needs_content = item.meta.kind == ItemKind::File
            && !item.deleted
            && !prior.as_ref().is_some_and(|p| {
                !p.deleted && p.hash == item.hash && p.meta.kind == ItemKind::File
            });
        if !needs_content {
            return Some(Prepared::Apply(None, None));
        }
        None
    }

    /// Builds the item's content in a temp file beside its target and verifies it.
    async fn build(&self, item: &RemoteItem) -> Result<BuiltTemp, String> {
        // A file of one chunk (most small files) is fetched first and then created, written,
        // flushed and checked in one trip to the blocking pool: each trip is two thread
        // switches, and those dominated syncing many small files.
        let first = match item.chunks.as_slice() {
            [only] => Some((*only, self.getter(item).get(*only).await?)),
            _ => None,
        };
        let root = self.src.root.clone();
        let path = item.path.clone();
        let (size, hash) = (item.meta.size, item.hash);
        let one_chunk = first.is_some();
        let made = tokio::task::spawn_blocking(move || -> Result<Made, String> {
            // Beside the target when its folder exists; otherwise in the source root, so
            // folders are only ever made by applying their own items (a folder made early
            // would look like a local change to the scanner).
            let temp = if apply::parents_exist(&root, &path) {
                apply::temp_path(&root, &path)
            } else {
                apply::temp_path_in_root(&root)
            };
            let f = std::fs::File::create(&temp)
                .map_err(|e| write_failed("creating a temp file", &e))?;
            let filled = f
                .set_len(size)
                .map_err(|e| write_failed("sizing the temp file", &e))
                .and_then(|()| match first {
                    Some((chunk, data)) => {
                        f.write_all_at(&data, chunk.offset)
                            .map_err(|e| write_failed("writing the temp file", &e))?;
                        // A one-chunk file's hash is its chunk's hash, checked on arrival.
                        let whole_checked = hash == Some(chunk.hash);
                        flush_and_verify(&f, &temp, &path, hash.filter(|_| !whole_checked))
                    }
                    None => Ok(Ok(())),
                });
            match filled {
                Ok(verified) => Ok(Made {
                    temp,
                    file: f,
                    verified,
                }),
                Err(e) => {
                    let _ = std::fs::remove_file(&temp);
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| e.to_string())??;
        // Removed again however this ends short of a verified file, cancellation included.
        let temp = BuiltTemp { path: made.temp };
        let verified = if one_chunk {
            made.verified
        } else {
            let file = Arc::new(made.file);
            self.fill(item, file.clone()).await?;
            let (temp2, path) = (temp.path.clone(), item.path.clone());
            tokio::task::spawn_blocking(move || flush_and_verify(&file, &temp2, &path, hash))
                .await
                .map_err(|e| e.to_string())??
        };
        match verified {
            Ok(()) => Ok(temp),
            Err(e @ apply::ApplyError::HashMismatch { .. }) => {
                // Every chunk matched its own hash, so the content is what the chunk list
                // says: the peer announced a list and a whole hash that disagree.
                refuse(
                    &self.ctx,
                    &self.device_text,
                    &format!("{}: its chunks do not match its content hash", item.path),
                );
                Err(e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Gets one chunk of `item`'s content, from here or from a peer.
    fn getter(&self, item: &RemoteItem) -> ChunkGetter {
        ChunkGetter {
            ctx: self.ctx.clone(),
            device: self.device_text.clone(),
            source: self.src.id.clone(),
            path: item.path.to_string(),
            fetch: self.fetch.clone(),
        }
    }

    async fn fill(&self, item: &RemoteItem, file: Arc<std::fs::File>) -> Result<(), String> {
        let mut set = JoinSet::new();
        let mut chunks = item.chunks.iter().copied();
        loop {
            while set.len() < CHUNK_WINDOW {
                let Some(chunk) = chunks.next() else { break };
                let getter = self.getter(item);
                let file = file.clone();
                set.spawn(async move {
                    let data = getter.get(chunk).await?;
                    tokio::task::spawn_blocking(move || file.write_all_at(&data, chunk.offset))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| write_failed("writing the temp file", &e))
                });
            }
            match set.join_next().await {
                None => return Ok(()),
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(e.to_string()),
            }
        }
    }
}

/// A temp file made for an item, and whether its content checked out (when it was filled
/// in the same trip).
struct Made {
    temp: std::path::PathBuf,
    file: std::fs::File,
    verified: Result<(), apply::ApplyError>,
}

/// Flushes a filled temp file to disk and checks its whole hash, when one is to be checked.
/// The outer error is a failed write; the inner one what the check found.
fn flush_and_verify(
    file: &std::fs::File,
    temp: &std::path::Path,
    path: &ItemPath,
    hash: Option<Hash128>,
) -> Result<Result<(), apply::ApplyError>, String> {
    file.sync_all()
        .map_err(|e| write_failed("flushing the temp file", &e))?;
    Ok(match hash {
        Some(h) => apply::verify(temp, path, h),
        None => Ok(()),
    })
}

/// One chunk request on the wire, for the board's in-flight count.
struct InFlight<'a> {
    ctx: &'a Ctx,
    device: &'a str,
    source: &'a str,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        board_update(self.ctx, self.device, self.source, |s| {
            s.in_flight = s.in_flight.saturating_sub(1)
        });
    }
}

struct ChunkGetter {
    ctx: Ctx,
    device: String,
    source: String,
    path: String,
    fetch: mpsc::Sender<Fetch>,
}

impl ChunkGetter {
    /// A chunk's bytes: from any local file that has it, else from the peer; always verified.
    async fn get(&self, chunk: ChunkRef) -> Result<Vec<u8>, String> {
        if let Ok(locals) = self.ctx.store.chunk_sources(chunk.hash).await {
            for loc in locals {
                let Ok(p) = ItemPath::parse(&loc.path) else {
                    continue;
                };
                let root = std::path::PathBuf::from(&loc.root);
                let read = tokio::task::spawn_blocking(move || {
                    apply::read_range(&root, &p, loc.offset, loc.len)
                })
                .await;
                if let Ok(Ok(data)) = read
                    && Hash128::of(&data) == chunk.hash
                {
                    let n = u64::from(chunk.len);
                    board_update(&self.ctx, &self.device, &self.source, |s| {
                        s.reused_bytes += n
                    });
                    return Ok(data);
                }
            }
        }
        // Spread requests over every connected peer that shares the source (the chunk is
        // asked for by hash, so any of them may have it); the peer that announced the item is
        // the fallback.
        let mut holders: Vec<(String, mpsc::Sender<Fetch>)> = self
            .ctx
            .fetchers
            .borrow()
            .iter()
            .filter(|(d, f)| **d != self.device && f.sources.contains(&self.source))
            .map(|(d, f)| (d.clone(), f.tx.clone()))
            .collect();
        holders.sort_by(|a, b| a.0.cmp(&b.0));
        let mut order = vec![(self.device.clone(), self.fetch.clone())];
        if !holders.is_empty() {
            let slot = usize::try_from(chunk.offset / u64::from(MAX_CHUNK_SIZE / 4)).unwrap_or(0)
                % (holders.len() + 1);
            if slot > 0 {
                order.insert(0, holders.swap_remove(slot - 1));
            }
        }
        let mut last_error = String::new();
        for (device, fetch) in order {
            match self.ask(&device, &fetch, chunk).await {
                Ok(data) => return Ok(data),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    /// Asks one peer for a chunk and verifies the answer.
    async fn ask(
        &self,
        device: &str,
        fetch: &mpsc::Sender<Fetch>,
        chunk: ChunkRef,
    ) -> Result<Vec<u8>, String> {
        let (reply, rx) = oneshot::channel();
        let req = pb::ChunkRequest {
            request_id: 0,
            source: self.source.clone(),
            path: self.path.clone(),
            offset: chunk.offset,
            len: chunk.len,
            hash: chunk.hash.0.to_vec(),
        };
        fetch
            .send(Fetch { req, reply })
            .await
            .map_err(|_| "the connection closed".to_owned())?;
        board_update(&self.ctx, device, &self.source, |s| s.in_flight += 1);
        // Counted down however this ends, even when the file's other chunks failed and this
        // request is abandoned mid-flight.
        let in_flight = InFlight {
            ctx: &self.ctx,
            device,
            source: &self.source,
        };
        let answer = tokio::time::timeout(CHUNK_TIMEOUT, rx).await;
        drop(in_flight);
        let data = match answer {
            Ok(Ok(Ok(data))) => data,
            Ok(Ok(Err(e))) => return Err(format!("the peer could not send a chunk: {e}")),
            Ok(Err(_)) => return Err("the connection closed".into()),
            Err(_) => return Err("a chunk request timed out".into()),
        };
        if Hash128::of(&data) != chunk.hash || data.len() != usize::try_from(chunk.len).unwrap_or(0)
        {
            refuse(
                &self.ctx,
                device,
                &format!("a chunk of {} that does not match its hash", self.path),
            );
            return Err("the peer sent a chunk that does not match its hash".into());
        }
        let n = u64::from(chunk.len);
        board_update(&self.ctx, device, &self.source, |s| s.fetched_bytes += n);
        Ok(data)
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
