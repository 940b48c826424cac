//! Devices talking to devices: the TLS listener and dialers, one exchange per device pair,
//! and the board of per-peer progress that `status` and `wait` read.
//!
//! Must not: write files or SQL directly (remote differences go to the source task; reads go
//! through the store handle).

mod connection;
mod hello;
pub mod io;
mod receiving;
mod sender;
mod serve;
pub mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tandem_proto::peer::Frame;
use tandem_proto::peer::peer_server::{Peer, PeerServer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, warn};

use crate::identity::{DeviceId, Identity};
pub use crate::source::SharedSource;
use crate::store::{PeerRow, StoreHandle};

pub use connection::MAX_FRAME_BYTES;
use io::PeerConnInfo;
pub(crate) use sender::remote_item;

/// Progress of one source with one peer, as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSourceStatus {
    /// Items of the peer's index still to fetch or apply here.
    pub needed_items: u64,
    pub needed_bytes: u64,
    /// Chunk requests on the wire.
    pub in_flight: u64,
    /// Remote items applied (or found already present) since the agent started.
    pub done_items: u64,
    /// Chunk bytes received over the network since the agent started.
    pub fetched_bytes: u64,
    /// Chunk bytes copied from files already on this device instead.
    pub reused_bytes: u64,
    /// Items of this device's index sent to the peer since the agent started.
    pub sent_items: u64,
    /// Highest local sequence sent to the peer.
    pub sent_sequence: u64,
    /// The peer's folder moves derived here as one operation each.
    pub moved_folders: u64,
    /// The peer's folder moves asked for entry by entry instead.
    pub expanded_moves: u64,
    /// Highest local sequence the peer says it has applied.
    pub peer_applied: u64,
    /// The peer's own local sequence, as last announced.
    pub peer_sequence: u64,
    /// Highest sequence of the peer's index applied here.
    pub applied: u64,
    /// Nothing waits in the receive queue and nothing is being fetched.
    pub receiving_idle: bool,
    /// The peer said it shares this source too.
    pub shared_by_peer: bool,
    /// The peer's last index update said it had sent everything, with nothing left to scan.
    pub peer_caught_up: bool,
    /// Why this source is not exchanged with the peer (it keeps another kind of data); empty
    /// when it is.
    pub refused: String,
    pub last_error: String,
}

impl PeerSourceStatus {
    /// In sync with a connected peer: it has applied everything this device numbered, it has
    /// sent its whole index (settled, not scanning), this device has applied all of it, and
    /// nothing is being fetched.
    pub fn in_sync(&self, local_sequence: u64) -> bool {
        self.peer_caught_up
            && self.peer_applied >= local_sequence
            && self.applied >= self.peer_sequence
            && self.receiving_idle
            && self.needed_items == 0
            && self.in_flight == 0
    }
}

/// One peer as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerState {
    pub address: Option<String>,
    /// Where LAN discovery last heard it (dialled when no address was given).
    pub discovered: Option<String>,
    /// How far its clock is ahead of this device's (negative: behind), as its last hello
    /// said.
    pub clock_skew_ms: Option<i64>,
    pub connected: bool,
    /// A connection has been made since the agent started.
    pub ever_connected: bool,
    pub remote_addr: String,
    pub last_error: String,
    /// Why the last connection was refused for speaking an incompatible protocol (empty
    /// when it was not).
    pub incompatible: String,
    pub sources: BTreeMap<String, PeerSourceStatus>,
    /// Frames or items refused from this peer (bad paths, unshared sources, bad chunks).
    pub refused: u64,
    /// The manager's id of the live connection: a replaced connection that ends later must
    /// not mark the device disconnected.
    pub conn: u64,
    /// Bytes of exchange frames sent to the peer since the agent started (as encoded, before
    /// HTTP/2 and TLS framing), over every connection.
    pub bytes_sent: u64,
    /// Bytes of exchange frames received from the peer since the agent started.
    pub bytes_received: u64,
}

/// Everything the peer side publishes for `status` and `wait`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Board {
    pub peers: BTreeMap<String, PeerState>,
    /// Devices that tried to connect without being added, with where and when they were last
    /// seen (`peer pending`, and `status`'s refused devices).
    pub pending: BTreeMap<String, PendingDevice>,
    /// Sources a connected peer shares with this device that this device does not share
    /// with it, by (source, device) (`source pending`).
    pub offers: BTreeMap<(String, String), Offer>,
}

impl Board {
    /// Devices that tried to connect without being added, the one seen last, last.
    pub fn refused_devices(&self) -> Vec<String> {
        let mut seen: Vec<(&String, u64)> = self
            .pending
            .iter()
            .map(|(d, p)| (d, p.last_seen_unix_ms))
            .collect();
        seen.sort_by_key(|(d, at)| (*at, (*d).clone()));
        seen.into_iter().map(|(d, _)| d.clone()).collect()
    }
}

/// A device that tried to connect without being added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingDevice {
    pub address: String,
    pub last_seen_unix_ms: u64,
}

/// A source a peer offers: shared with this device there, not here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offer {
    /// What it holds there ("files", "contacts", "calendar") and in which format.
    pub kind: String,
    pub format: String,
    pub last_seen_unix_ms: u64,
}

/// What the peer side asks of the agent.
pub trait Sources: Send + Sync + 'static {
    /// Sources shared with this device, right now.
    fn shared_with(
        &self,
        device: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<SharedSource>> + Send + '_>>;
}

enum Msg {
    Added(PeerRow),
    Discovered {
        device: String,
        address: String,
    },
    Removed(String),
    Register {
        device: String,
        dialed_by_me: bool,
        reply: oneshot::Sender<Option<(u64, CancellationToken)>>,
    },
    Unregister {
        device: String,
        conn: u64,
    },
}

/// Cloneable handle to the peer manager.
#[derive(Clone)]
pub struct PeerHandle {
    tx: mpsc::Sender<Msg>,
    board: Arc<watch::Sender<Board>>,
    generation: Arc<watch::Sender<u64>>,
    tasks: TaskTracker,
    claims: crate::feed::Claims,
}

impl PeerHandle {
    /// Content being fetched right now, shared with the hubs' feeds so two paths do not fetch
    /// the same content at once.
    pub fn claims(&self) -> crate::feed::Claims {
        self.claims.clone()
    }

    /// The latest board.
    pub fn board(&self) -> Board {
        self.board.borrow().clone()
    }

    /// A peer was added (or its address changed): dial it if it has an address.
    pub async fn added(&self, row: PeerRow) {
        let _ = self.tx.send(Msg::Added(row)).await;
    }

    /// LAN discovery heard `device` announce itself at `address`: a peer added without an
    /// address is dialled there.
    pub async fn discovered(&self, device: String, address: String) {
        let _ = self.tx.send(Msg::Discovered { device, address }).await;
    }

    /// A peer was removed: drop its connection and stop dialling it.
    pub async fn removed(&self, device: String) {
        let _ = self.tx.send(Msg::Removed(device)).await;
    }

    /// Waits until every task of the peer side has ended (they stop once the cancellation
    /// token given to [`start`] fires).
    pub async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// The set of sources or their sharing changed: every connection says hello again.
    pub fn sources_changed(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

/// How to ask one connected peer for chunks, and which sources it exchanges with us.
#[derive(Clone)]
struct PeerFetch {
    /// The connection this entry belongs to (see [`PeerState::conn`]).
    conn: u64,
    tx: mpsc::Sender<connection::Fetch>,
    sources: BTreeSet<String>,
}

/// Shared pieces every connection needs.
#[derive(Clone)]
struct Ctx {
    identity: Arc<Identity>,
    store: StoreHandle,
    sources: Arc<dyn Sources>,
    board: Arc<watch::Sender<Board>>,
    generation: Arc<watch::Sender<u64>>,
    changed: Arc<Notify>,
    manager: mpsc::Sender<Msg>,
    cancel: CancellationToken,
    /// Every live connection's chunk channel, so a file can be fetched from several peers.
    fetchers: Arc<watch::Sender<BTreeMap<String, PeerFetch>>>,
    /// Items being fetched right now, so two peers announcing the same content do not both
    /// send it.
    claims: crate::feed::Claims,
    /// Every task of the peer side, so shutdown can wait for them to end.
    tasks: TaskTracker,
}

/// Changes one source's progress with one peer on the board, and wakes `wait`.
fn board_update(ctx: &Ctx, device: &str, source: &str, f: impl FnOnce(&mut PeerSourceStatus)) {
    ctx.board.send_modify(|b| {
        let p = b.peers.entry(device.to_owned()).or_default();
        f(p.sources.entry(source.to_owned()).or_default());
    });
    ctx.changed.notify_waiters();
}

/// Adds to the bytes moved with a peer. Nobody waits on these numbers (only metrics read
/// them), so the board's watchers are not woken for every frame. A device no longer on the
/// board (removed while a connection drains) is not added back.
fn count_bytes(board: &watch::Sender<Board>, device: &str, sent: u64, received: u64) {
    board.send_if_modified(|b| {
        if let Some(p) = b.peers.get_mut(device) {
            p.bytes_sent = p.bytes_sent.saturating_add(sent);
            p.bytes_received = p.bytes_received.saturating_add(received);
        }
        false
    });
}

/// An error with every cause under it: a transport error alone says "transport error",
/// its causes say whether the certificate did not match or the other side refused this one.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
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

/// Binds the peer listener; the returned address is the one actually bound (port 0 resolved).
pub async fn bind(listen: SocketAddr) -> Result<(TcpListener, SocketAddr), std::io::Error> {
    let listener = TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Starts the peer side: listener, manager, a dialer per peer with an address.
pub fn start(
    listener: TcpListener,
    identity: Arc<Identity>,
    store: StoreHandle,
    sources: Arc<dyn Sources>,
    peers: Vec<PeerRow>,
    changed: Arc<Notify>,
    cancel: CancellationToken,
) -> Result<PeerHandle, tls::TlsError> {
    let (tx, rx) = mpsc::channel(64);
    let board = Arc::new(watch::Sender::new(Board::default()));
    let generation = Arc::new(watch::Sender::new(0u64));
    let ctx = Ctx {
        identity: identity.clone(),
        store,
        sources,
        board: board.clone(),
        generation: generation.clone(),
        changed,
        manager: tx.clone(),
        cancel: cancel.clone(),
        fetchers: Arc::new(watch::Sender::new(BTreeMap::new())),
        claims: crate::feed::Claims::new(),
        tasks: TaskTracker::new(),
    };
    let known: watch::Sender<Arc<BTreeSet<String>>> = watch::Sender::new(Arc::new(
        peers.iter().map(|p| p.device_id.clone()).collect(),
    ));
    let server_config = tls::server_config(&identity)?;
    ctx.tasks.spawn(
        serve(listener, server_config, known.subscribe(), ctx.clone())
            .instrument(tracing::info_span!("peer-listener")),
    );
    let tasks = ctx.tasks.clone();
    let claims = ctx.claims.clone();
    let manager = Manager {
        ctx,
        rx,
        known,
        dialers: BTreeMap::new(),
        live: BTreeMap::new(),
        next_conn: 0,
        heard: BTreeMap::new(),
    };
    let handle = PeerHandle {
        tx,
        board,
        generation,
        tasks: tasks.clone(),
        claims,
    };
    tasks.spawn(manager.run(peers));
    Ok(handle)
}

struct Manager {
    ctx: Ctx,
    rx: mpsc::Receiver<Msg>,
    known: watch::Sender<Arc<BTreeSet<String>>>,
    dialers: BTreeMap<String, CancellationToken>,
    /// The live connection per device: its id, who dialled, and how to close it.
    live: BTreeMap<String, (u64, bool, CancellationToken)>,
    next_conn: u64,
    /// Where LAN discovery last heard each device, added or not.
    heard: BTreeMap<String, String>,
}

impl Manager {
    async fn run(mut self, peers: Vec<PeerRow>) {
        for p in peers {
            self.add(p);
        }
        loop {
            tokio::select! {
                () = self.ctx.cancel.cancelled() => break,
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
            }
        }
    }

    fn add(&mut self, row: PeerRow) {
        let device = row.device_id.clone();
        self.known.send_modify(|k| {
            Arc::make_mut(k).insert(device.clone());
        });
        self.ctx.board.send_modify(|b| {
            let entry = b.peers.entry(device.clone()).or_default();
            entry.address.clone_from(&row.address);
            b.pending.remove(&device);
        });
        if let Some(old) = self.dialers.remove(&device) {
            old.cancel();
        }
        if row.address.is_none()
            && let Some(heard) = self.heard.get(&device).cloned()
        {
            self.ctx.board.send_modify(|b| {
                if let Some(p) = b.peers.get_mut(&device) {
                    p.discovered = None;
                }
            });
            self.discovered(device.clone(), heard);
            return;
        }
        if let (Some(address), Ok(id)) = (row.address.clone(), device.parse::<DeviceId>()) {
            let token = self.ctx.cancel.child_token();
            self.dialers.insert(device.clone(), token.clone());
            let span = tracing::info_span!("peer", device = %id.short_string());
            self.ctx
                .tasks
                .spawn(dial_loop(self.ctx.clone(), id, address, token).instrument(span));
        }
    }

    /// Dials a peer added without an address where discovery heard it (again when it moved).
    fn discovered(&mut self, device: String, address: String) {
        // Kept for a device not added yet: `peer add` without an address dials it at once.
        self.heard.insert(device.clone(), address.clone());
        if !self.known.borrow().contains(&device) {
            return;
        }
        let board = self.ctx.board.borrow();
        let Some(peer) = board.peers.get(&device) else {
            return;
        };
        // An address the user gave wins over one heard on the LAN.
        if peer.address.is_some() || peer.discovered.as_deref() == Some(address.as_str()) {
            return;
        }
        drop(board);
        let Ok(id) = device.parse::<DeviceId>() else {
            return;
        };
        self.ctx.board.send_modify(|b| {
            if let Some(p) = b.peers.get_mut(&device) {
                p.discovered = Some(address.clone());
            }
        });
        if let Some(old) = self.dialers.remove(&device) {
            old.cancel();
        }
        info!(device = %id.short_string(), address = %address, "dialling a peer found on the LAN");
        let token = self.ctx.cancel.child_token();
        self.dialers.insert(device, token.clone());
        let span = tracing::info_span!("peer", device = %id.short_string());
        self.ctx
            .tasks
            .spawn(dial_loop(self.ctx.clone(), id, address, token).instrument(span));
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Added(row) => self.add(row),
            Msg::Discovered { device, address } => self.discovered(device, address),
            Msg::Removed(device) => {
                self.known.send_modify(|k| {
                    Arc::make_mut(k).remove(&device);
                });
                if let Some(d) = self.dialers.remove(&device) {
                    d.cancel();
                }
                if let Some((_, _, c)) = self.live.remove(&device) {
                    c.cancel();
                }
                self.ctx.board.send_modify(|b| {
                    b.peers.remove(&device);
                });
                self.ctx.changed.notify_waiters();
            }
            Msg::Register {
                device,
                dialed_by_me,
                reply,
            } => {
                if !self.known.borrow().contains(&device) {
                    let _ = reply.send(None);
                    return;
                }
                // When both sides dial at once, both keep the connection dialled by the
                // smaller device ID, so they agree without talking about it.
                let me = self.ctx.identity.device_id.to_string();
                let prefer_mine = me < device;
                if let Some((_, existing_mine, _)) = self.live.get(&device) {
                    let keep_existing =
                        *existing_mine == prefer_mine || *existing_mine == dialed_by_me;
                    if keep_existing {
                        let _ = reply.send(None);
                        return;
                    }
                    if let Some((_, _, old)) = self.live.remove(&device) {
                        old.cancel();
                    }
                }
                self.next_conn += 1;
                let token = self.ctx.cancel.child_token();
                self.live
                    .insert(device, (self.next_conn, dialed_by_me, token.clone()));
                let _ = reply.send(Some((self.next_conn, token)));
            }
            Msg::Unregister { device, conn } => {
                if self.live.get(&device).is_some_and(|(id, _, _)| *id == conn) {
                    self.live.remove(&device);
                }
            }
        }
    }
}

/// Asks the manager for a slot for a new connection; `None` means drop it.
async fn register(ctx: &Ctx, device: &str, dialed_by_me: bool) -> Option<(u64, CancellationToken)> {
    let (reply, rx) = oneshot::channel();
    ctx.manager
        .send(Msg::Register {
            device: device.to_owned(),
            dialed_by_me,
            reply,
        })
        .await
        .ok()?;
    rx.await.ok()?
}

async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    known: watch::Receiver<Arc<BTreeSet<String>>>,
    ctx: Ctx,
) {
    let admit_ctx = ctx.clone();
    let conn_rx = io::accept(
        listener,
        config,
        &ctx.tasks,
        ctx.cancel.clone(),
        move |info| {
            let id = info.device.to_string();
            if known.borrow().contains(&id) {
                return true;
            }
            warn!(device = %id, peer_addr = %info.addr, "refused a device that was not added; add it with `tandemctl peer add {id}` to trust it");
            admit_ctx.board.send_modify(|b| {
                b.pending.insert(
                    id.clone(),
                    PendingDevice {
                        address: info.addr.to_string(),
                        last_seen_unix_ms: crate::events::unix_ms_now(),
                    },
                );
            });
            false
        },
    );
    let service = PeerService { ctx: ctx.clone() };
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(
            PeerServer::new(service)
                .max_decoding_message_size(MAX_FRAME_BYTES)
                .max_encoding_message_size(MAX_FRAME_BYTES),
        )
        .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), ctx.cancel.cancelled())
        .await;
    if let Err(e) = result {
        warn!(error = %e, "peer service stopped");
    }
}

struct PeerService {
    ctx: Ctx,
}

type FrameStream = ReceiverStream<Result<Frame, Status>>;

#[tonic::async_trait]
impl Peer for PeerService {
    type ExchangeStream = FrameStream;

    async fn exchange(
        &self,
        req: Request<Streaming<Frame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let info = req
            .extensions()
            .get::<PeerConnInfo>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no peer certificate"))?;
        let device = info.device.to_string();
        let Some((conn, token)) = register(&self.ctx, &device, false).await else {
            return Err(Status::already_exists(
                "a connection with this device is already up",
            ));
        };
        let (out_tx, out_rx) = mpsc::channel::<Result<Frame, Status>>(64);
        let inbound = req.into_inner();
        let span = tracing::info_span!("peer", device = %info.device.short_string());
        let ctx = self.ctx.clone();
        self.ctx.tasks.spawn(
            async move {
                info!(peer_addr = %info.addr, "peer connected (incoming)");
                connection::run(
                    ctx.clone(),
                    info.device,
                    conn,
                    info.addr.to_string(),
                    inbound,
                    connection::Channel::Server(out_tx),
                    token,
                )
                .await;
                let _ = ctx.manager.send(Msg::Unregister { device, conn }).await;
            }
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }
}

/// Keeps one outgoing connection to a peer up, with backoff between attempts.
async fn dial_loop(ctx: Ctx, device: DeviceId, address: String, cancel: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let connected_already = ctx
            .board
            .borrow()
            .peers
            .get(&device.to_string())
            .is_some_and(|p| p.connected);
        if !connected_already {
            match dial_once(&ctx, device, &address).await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(e) => {
                    debug!(error = %e, address = %address, "cannot reach peer");
                    ctx.board.send_modify(|b| {
                        if let Some(p) = b.peers.get_mut(&device.to_string()) {
                            p.last_error = e.clone();
                        }
                    });
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(if connected_already { Duration::from_secs(2) } else { backoff }) => {}
        }
    }
}

async fn dial_once(ctx: &Ctx, device: DeviceId, address: &str) -> Result<(), String> {
    let config = tls::client_config(&ctx.identity, device).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let addr = address.to_owned();
    let endpoint = tonic::transport::Endpoint::from_static("http://tandem.peer")
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20));
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let (connector, addr) = (connector.clone(), addr.clone());
            async move {
                let tcp = TcpStream::connect(&addr).await?;
                let _ = tcp.set_nodelay(true);
                let tls = connector.connect(tls::server_name(), tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| format!("cannot connect to {address}: {}", error_chain(&e)))?;
    let device_text = device.to_string();
    let Some((conn, token)) = register(ctx, &device_text, true).await else {
        return Ok(());
    };
    let (out_tx, out_rx) = mpsc::channel::<Frame>(64);
    let mut client = tandem_proto::peer::peer_client::PeerClient::new(channel)
        .max_decoding_message_size(MAX_FRAME_BYTES)
        .max_encoding_message_size(MAX_FRAME_BYTES);
    let response = client.exchange(ReceiverStream::new(out_rx)).await;
    let inbound = match response {
        Ok(r) => r.into_inner(),
        Err(e) => {
            let _ = ctx
                .manager
                .send(Msg::Unregister {
                    device: device_text,
                    conn,
                })
                .await;
            token.cancel();
            return Err(format!("{address} refused the exchange: {}", e.message()));
        }
    };
    // The connection outlives this dialer: re-adding the peer (a new address) restarts the
    // dialer but must not cut a working connection. Removing the peer or shutting down closes
    // it through the manager's token.
    info!(address = %address, "peer connected (outgoing)");
    connection::run(
        ctx.clone(),
        device,
        conn,
        address.to_owned(),
        inbound,
        connection::Channel::Client(out_tx),
        token,
    )
    .await;
    let _ = ctx
        .manager
        .send(Msg::Unregister {
            device: device_text,
            conn,
        })
        .await;
    Ok(())
}
