//! One exchange with one device: hello, an index sender and a receiver per shared source,
//! chunk requests both ways. Symmetric: the same code runs whoever dialled.

use std::collections::BTreeMap;
use std::sync::Arc;

use tandem_proto::peer::{self as pb, Frame, frame::Body};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use super::hello::{self, kind_mismatch};
use super::receiving::{PeerChunks, PeerFeed};
use super::sender::{INDEX_WINDOW, Sender};
use super::{Ctx, SharedSource, board_update, refuse};
use crate::feed::{self, ChunkChain, LocalChunks, Origin};
use crate::identity::DeviceId;
use crate::universal;

/// Largest frame accepted or sent; anything bigger is refused before it is allocated.
pub const MAX_FRAME_BYTES: usize = 16 << 20;
/// Frames of chunk requests served at once for one peer.
const SERVE_CONCURRENCY: usize = 2;
/// Most chunk requests sent, or served, in one frame.
const REQUESTS_PER_FRAME: usize = 8;
/// Chunk answers are cut into frames of about this many bytes, well below the frame limit.
const ANSWER_BUDGET: usize = 1 << 20;
/// Requests to expand a folder move a peer may have unanswered per source (a move goes at
/// most once per index update, and at most a window of those is unacknowledged).
const EXPAND_QUEUE: usize = INDEX_WINDOW * universal::MAX_MOVES_PER_UPDATE;

/// Why an exchange ended, as `status` shows it in the peer's `last_error`.
#[derive(Debug, thiserror::Error)]
pub(super) enum Disconnect {
    #[error("closed")]
    Closed,
    #[error("the peer closed the connection")]
    PeerClosed,
    #[error("dropped: the peer sent {0}")]
    Oversized(String),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("the connection closed")]
    SendFailed,
    #[error("shutting down")]
    ShuttingDown,
    #[error("the peer sent more index updates than it may have in flight")]
    Flooded,
    #[error("refused: {0}")]
    Incompatible(String),
}

/// Where outgoing frames go: the response stream (accepted) or the request stream (dialled).
pub enum Channel {
    Server(mpsc::Sender<Result<Frame, Status>>),
    Client(mpsc::Sender<Frame>),
}

/// The outgoing side of one exchange: its channel, and the board that counts the bytes sent.
#[derive(Clone)]
pub struct Outbound {
    channel: Arc<Channel>,
    board: Arc<watch::Sender<super::Board>>,
    device: Arc<str>,
}

impl Outbound {
    /// Sends one frame; false once the connection is closed.
    pub(super) async fn send(&self, body: Body) -> bool {
        let frame = Frame { body: Some(body) };
        let bytes = frame_bytes(&frame);
        let sent = match &*self.channel {
            Channel::Server(tx) => tx.send(Ok(frame)).await.is_ok(),
            Channel::Client(tx) => tx.send(frame).await.is_ok(),
        };
        if sent {
            super::count_bytes(&self.board, &self.device, bytes, 0);
        }
        sent
    }
}

/// A frame's encoded size: what the exchange moves, before HTTP/2 and TLS add their framing.
fn frame_bytes(frame: &Frame) -> u64 {
    u64::try_from(prost::Message::encoded_len(frame)).unwrap_or(u64::MAX)
}

/// A chunk wanted from the peer.
pub(super) struct Fetch {
    pub(super) req: pb::ChunkRequest,
    pub(super) reply: oneshot::Sender<Result<Vec<u8>, String>>,
}

struct Conn {
    ctx: Ctx,
    device: DeviceId,
    device_text: String,
    out: Outbound,
    cancel: CancellationToken,
    shared: BTreeMap<String, SharedSource>,
    senders: BTreeMap<String, watch::Sender<u64>>,
    /// Per source, where the peer's requests to expand a folder move go (its sender).
    expanders: BTreeMap<String, mpsc::Sender<u64>>,
    receivers: BTreeMap<String, mpsc::Sender<feed::Update>>,
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
    out: Channel,
    cancel: CancellationToken,
) {
    let device_text = device.to_string();
    let out = Outbound {
        channel: Arc::new(out),
        board: ctx.board.clone(),
        device: Arc::from(device_text.as_str()),
    };
    ctx.board.send_modify(|b| {
        let p = b.peers.entry(device_text.clone()).or_default();
        // Connection numbers grow: when both sides dialled at once, the connection that
        // replaced this one may have got here first, and the board is its.
        if conn_id < p.conn {
            return;
        }
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
        expanders: BTreeMap::new(),
        receivers: BTreeMap::new(),
        pending: BTreeMap::new(),
        next_request: 0,
        fetch_tx,
        serving: Arc::new(Semaphore::new(SERVE_CONCURRENCY)),
        peer_hello: None,
    };
    ctx.fetchers.send_modify(|f| {
        if f.get(&device_text).is_some_and(|e| e.conn > conn_id) {
            return;
        }
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
            () = cancel.cancelled() => break Disconnect::Closed,
            frame = inbound.message() => match frame {
                Ok(Some(frame)) => {
                    super::count_bytes(&ctx.board, &device_text, 0, frame_bytes(&frame));
                    if let Err(e) = conn.on_frame(frame).await {
                        break e;
                    }
                }
                Ok(None) => break Disconnect::PeerClosed,
                // tonic refuses a frame over the decoding limit before allocating it; after
                // that the stream cannot be resynchronised, so the connection goes too.
                Err(e) if e.code() == tonic::Code::OutOfRange => {
                    let what = format!("a frame over the {MAX_FRAME_BYTES}-byte limit");
                    refuse(&ctx, &device_text, &what);
                    break Disconnect::Oversized(what);
                }
                Err(e) => break Disconnect::Lost(with_root_cause(&e)),
            },
            fetch = fetch_rx.recv() => if let Some(fetch) = fetch {
                // Whatever else is waiting goes in the same frame.
                let mut requests = vec![conn.pending_request(fetch)];
                while requests.len() < REQUESTS_PER_FRAME {
                    match fetch_rx.try_recv() {
                        Ok(fetch) => requests.push(conn.pending_request(fetch)),
                        Err(_) => break,
                    }
                }
                let frame = Body::ChunkRequests(pb::ChunkRequests { requests });
                if !conn.out.send(frame).await {
                    break Disconnect::SendFailed;
                }
            },
            changed = generation.changed() => {
                if changed.is_err() {
                    break Disconnect::ShuttingDown;
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
            p.last_error = why.to_string();
            for s in p.sources.values_mut() {
                s.in_flight = 0;
                s.receiving_idle = true;
            }
        }
    });
    ctx.changed.notify_waiters();
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
            let (key_generation, key) = self
                .ctx
                .store
                .source_keys(id.clone())
                .await
                .ok()
                .and_then(|keys| keys.into_iter().last())
                .unwrap_or_default();
            sources.push(pb::SourceCursor {
                source: id.clone(),
                applied,
                local,
                kind: hello::kind_of(&format)
                    .map(|k| k.as_str().to_owned())
                    .unwrap_or_default(),
                format,
                key,
                key_generation,
            });
        }
        let hello = pb::Hello {
            device_id: self.ctx.identity.device_id.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            sources,
            protocol: tandem_proto::PEER_PROTOCOL,
            capabilities: hello::capabilities(),
            unix_ms: i64::try_from(crate::events::unix_ms_now()).unwrap_or(0),
        };
        self.out.send(Body::Hello(hello)).await;
        if let Some(hello) = self.peer_hello.clone() {
            self.start_exchanges(hello).await;
        }
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<(), Disconnect> {
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
                let checked = universal::update_from_pb(&update)
                    .and_then(|items| Ok((items, universal::moves_from_pb(&update)?)));
                let (items, moves) = match checked {
                    Ok(checked) => checked,
                    Err(e) => {
                        refuse(&self.ctx, &self.device_text, &e.to_string());
                        return Ok(());
                    }
                };
                let moves = moves
                    .into_iter()
                    .filter_map(|m| {
                        m.map_err(|e| refuse(&self.ctx, &self.device_text, &e.to_string()))
                            .ok()
                    })
                    .collect();
                let update = feed::Update {
                    items,
                    moves,
                    expands: (update.expands != 0).then_some(update.expands),
                    through: update.through_sequence,
                    caught_up: update.caught_up,
                };
                // The peer keeps at most INDEX_WINDOW updates unacknowledged; more is abuse.
                if tx.try_send(update).is_err() {
                    return Err(Disconnect::Flooded);
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
            Some(Body::ExpandMove(ask)) => {
                let Some(tx) = self.expanders.get(&ask.source) else {
                    refuse(
                        &self.ctx,
                        &self.device_text,
                        &format!(
                            "a folder move asked for in source {:?}, not shared with it",
                            ask.source
                        ),
                    );
                    return Ok(());
                };
                // One ask per move announced, and at most a window of those unanswered.
                if tx.try_send(ask.first_sequence).is_err() {
                    return Err(Disconnect::Flooded);
                }
            }
            Some(Body::ChunkRequests(batch)) => self.serve_chunks(batch.requests),
            Some(Body::ChunkAnswers(batch)) => {
                for data in batch.answers {
                    if let Some(reply) = self.pending.remove(&data.request_id) {
                        let result = if data.error.is_empty() {
                            Ok(data.data)
                        } else {
                            Err(data.error)
                        };
                        let _ = reply.send(result);
                    }
                }
            }
            None => refuse(&self.ctx, &self.device_text, "an empty frame"),
        }
        Ok(())
    }

    /// Checks the peer's hello; an incompatible protocol ends the connection.
    async fn on_hello(&mut self, hello: pb::Hello) -> Result<(), Disconnect> {
        if hello.device_id != self.device_text {
            refuse(
                &self.ctx,
                &self.device_text,
                "a hello naming another device",
            );
            return Ok(());
        }
        if let Err(why) = hello::check_protocol(&hello, &self.device) {
            warn!(device = %self.device_text, error = %why, "refused an incompatible peer");
            self.ctx.board.send_modify(|b| {
                if let Some(p) = b.peers.get_mut(&self.device_text) {
                    p.incompatible.clone_from(&why);
                }
            });
            return Err(Disconnect::Incompatible(why));
        }
        if hello.unix_ms > 0 {
            // Latency is left in: on a LAN it is far below what matters here (seconds).
            let now = i64::try_from(crate::events::unix_ms_now()).unwrap_or(i64::MAX);
            let skew = hello.unix_ms.saturating_sub(now);
            self.ctx.board.send_if_modified(|b| {
                if let Some(p) = b.peers.get_mut(&self.device_text) {
                    p.clock_skew_ms = Some(skew);
                }
                false
            });
        }
        self.peer_hello = Some(hello.clone());
        self.start_exchanges(hello).await;
        Ok(())
    }

    /// Takes the peer's key of a source when both should keep it (`sealed::prefer`): a member
    /// that made its own key before it met the others seals for a hub as they do from now on.
    async fn adopt_key(&self, c: &pb::SourceCursor) {
        let Ok(bytes) = <[u8; crate::sealed::KEY_LEN]>::try_from(c.key.as_slice()) else {
            return;
        };
        let theirs = crate::sealed::SourceKey::from_bytes(c.key_generation, bytes);
        let ours = self
            .ctx
            .store
            .source_keys(c.source.clone())
            .await
            .ok()
            .and_then(|keys| keys.into_iter().last())
            .and_then(|(g, k)| Some(crate::sealed::SourceKey::from_bytes(g, k.try_into().ok()?)));
        let take = match &ours {
            None => true,
            Some(ours) => crate::sealed::prefer(ours, &theirs) == &theirs && *ours != theirs,
        };
        if !take {
            return;
        }
        match self
            .ctx
            .store
            .replace_source_key(c.source.clone(), theirs.generation, bytes.to_vec())
            .await
        {
            Ok(()) => {
                info!(source = %c.source, device = %self.device_text, generation = theirs.generation, "took the source key a member holds");
            }
            Err(e) => {
                warn!(source = %c.source, error = %e, "cannot keep the source key a member holds")
            }
        }
    }

    /// Starts a sender and a receiver for every source both sides share and not yet running.
    async fn start_exchanges(&mut self, hello: pb::Hello) {
        let moves = hello.capabilities.iter().any(|c| c == hello::FOLDER_MOVES);
        for c in hello.sources {
            let Some(src) = self.shared.get(&c.source).cloned() else {
                debug!(source = %c.source, "peer shares a source we do not share with it");
                // An offer `source pending` lists, until this device shares it back.
                self.ctx.board.send_modify(|b| {
                    b.offers.insert(
                        (c.source.clone(), self.device_text.clone()),
                        super::Offer {
                            kind: c.kind.clone(),
                            format: c.format.clone(),
                            last_seen_unix_ms: crate::events::unix_ms_now(),
                        },
                    );
                });
                continue;
            };
            self.ctx.board.send_modify(|b| {
                b.offers
                    .remove(&(c.source.clone(), self.device_text.clone()));
            });
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
            self.adopt_key(&c).await;
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
                let (expand_tx, expand_rx) = mpsc::channel(EXPAND_QUEUE);
                self.expanders.insert(c.source.clone(), expand_tx);
                let task = Sender {
                    ctx: self.ctx.clone(),
                    device: self.device_text.clone(),
                    src: src.clone(),
                    out: self.out.clone(),
                    from,
                    acked: rx,
                    moves,
                    expand: expand_rx,
                };
                let cancel = self.cancel.clone();
                self.ctx.tasks.spawn(async move {
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
                let origin = Origin {
                    device: self.device_text.clone(),
                    short: self.device.short_string(),
                };
                let feed = Arc::new(PeerFeed {
                    ctx: self.ctx.clone(),
                    origin,
                    source: c.source.clone(),
                    out: self.out.clone(),
                });
                // Local copies first, then the connected peers.
                let chunks = ChunkChain::new(vec![
                    Arc::new(LocalChunks::new(self.ctx.store.clone())),
                    Arc::new(PeerChunks {
                        ctx: self.ctx.clone(),
                        origin: self.device_text.clone(),
                        fetch: self.fetch_tx.clone(),
                    }),
                ]);
                let task = feed::Receiver::new(
                    src,
                    feed,
                    chunks,
                    self.ctx.claims.clone(),
                    self.ctx.store.clone(),
                    applied,
                );
                let cancel = self.cancel.clone();
                self.ctx.tasks.spawn(async move {
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = task.run(rx) => {}
                    }
                });
            }
        }
    }

    /// Numbers a chunk request and remembers where its answer goes.
    fn pending_request(&mut self, fetch: Fetch) -> pb::ChunkRequest {
        self.next_request += 1;
        let id = self.next_request;
        self.pending.insert(id, fetch.reply);
        let mut req = fetch.req;
        req.request_id = id;
        req
    }

    /// Answers a frame of chunk requests, in frames of at most [`ANSWER_BUDGET`] bytes.
    fn serve_chunks(&mut self, mut requests: Vec<pb::ChunkRequest>) {
        let (ctx, out, device) = (self.ctx.clone(), self.out.clone(), self.device_text.clone());
        if requests.len() > REQUESTS_PER_FRAME {
            refuse(
                &ctx,
                &device,
                &format!(
                    "{} chunk requests in one frame (at most {REQUESTS_PER_FRAME})",
                    requests.len()
                ),
            );
            requests.truncate(REQUESTS_PER_FRAME);
        }
        let mut by_source: BTreeMap<String, Vec<pb::ChunkRequest>> = BTreeMap::new();
        for req in requests {
            by_source.entry(req.source.clone()).or_default().push(req);
        }
        let shared: Vec<(Option<SharedSource>, Vec<pb::ChunkRequest>)> = by_source
            .into_iter()
            .map(|(source, reqs)| (self.shared.get(&source).cloned(), reqs))
            .collect();
        let serving = self.serving.clone();
        self.ctx.tasks.spawn(async move {
            let Ok(_permit) = serving.acquire_owned().await else {
                return;
            };
            let mut answers = Vec::new();
            for (src, reqs) in shared {
                let results = match &src {
                    None => {
                        refuse(
                            &ctx,
                            &device,
                            &format!(
                                "a chunk request for source {:?}, which is not shared with it",
                                reqs[0].source
                            ),
                        );
                        vec![Err("source not shared".to_owned()); reqs.len()]
                    }
                    Some(src) => super::serve::read_chunks(&ctx, src, &reqs).await,
                };
                answers.extend(reqs.iter().zip(results).map(|(req, result)| match result {
                    Ok(data) => pb::ChunkData {
                        request_id: req.request_id,
                        data,
                        error: String::new(),
                    },
                    Err(error) => pb::ChunkData {
                        request_id: req.request_id,
                        data: Vec::new(),
                        error,
                    },
                }));
            }
            let mut frame = Vec::new();
            let mut size = 0;
            for answer in answers {
                let len = answer.data.len() + answer.error.len() + 16;
                if !frame.is_empty() && size + len > ANSWER_BUDGET {
                    let answers = std::mem::take(&mut frame);
                    if !out
                        .send(Body::ChunkAnswers(pb::ChunkAnswers { answers }))
                        .await
                    {
                        return;
                    }
                    size = 0;
                }
                size += len;
                frame.push(answer);
            }
            out.send(Body::ChunkAnswers(pb::ChunkAnswers { answers: frame }))
                .await;
        });
    }
}
