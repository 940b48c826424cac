//! The agent's numbers in Prometheus text format on `GET /metrics`, an HTTP endpoint served
//! only when `[metrics] listen` in `config.toml` names an address.
//!
//! Every scrape takes the snapshots `status` shows (sources, the peer board, the hub board,
//! conflicts) through [`Gather`] and encodes them with `prometheus-client`; counters are
//! numbers the agent keeps cumulatively since it started, everything else is a gauge.
//! Must not: keep numbers of its own; listen beyond loopback unless configured.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use crate::hub_client::HubBoard;
use crate::identity::DeviceId;
use crate::peer::Board;
use crate::source::{SourceStatus, State};

/// The path scrapes ask for; anything else is not found.
pub const PATH: &str = "/metrics";
/// Scrapes served at once; a scraper is one process on a timer, so more means something is
/// misbehaving, and those connections are closed at once.
const MAX_CONNECTIONS: usize = 8;
/// Longest a client may take to send a request's headers before its connection is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot serve metrics on {addr}: {source}; pick another address for metrics.listen in config.toml, or remove it"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What one scrape reads: the snapshots `status` shows.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every source, in id order.
    pub sources: Vec<SourceStatus>,
    /// Conflicts per source id, as `tandemctl conflicts` lists them.
    pub conflicts: BTreeMap<String, u64>,
    /// The peer side's board.
    pub peers: Board,
    /// The hub links' board.
    pub hubs: HubBoard,
}

/// Where a scrape takes its snapshot from (the agent implements it).
pub trait Gather: Send + Sync + 'static {
    /// The numbers as they are now, or why they cannot be had (the agent is stopping).
    fn gather(&self) -> Pin<Box<dyn Future<Output = Result<Snapshot, String>> + Send + '_>>;
}

/// A running endpoint: where it listens, and the tasks [`Endpoint::stopped`] waits for.
pub struct Endpoint {
    addr: SocketAddr,
    tasks: TaskTracker,
}

impl Endpoint {
    /// The address actually bound (port 0 resolved).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the listener and every connection have ended (they end once the token
    /// given to [`serve`] is cancelled).
    pub async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Binds `listen` (before anything else starts, so a taken port stops the start-up); the
/// returned address is the one actually bound (port 0 resolved).
///
/// # Errors
/// [`Error::Bind`] when the address cannot be listened on.
pub async fn bind(listen: SocketAddr) -> Result<(TcpListener, SocketAddr), Error> {
    let err = |source| Error::Bind {
        addr: listen,
        source,
    };
    let listener = TcpListener::bind(listen).await.map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    Ok((listener, addr))
}

/// Serves scrapes on `listener` (bound to `addr`) from `gather` until `cancel`.
pub fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    gather: Arc<dyn Gather>,
    cancel: CancellationToken,
) -> Endpoint {
    if !addr.ip().is_loopback() {
        // Allowed, since the user asked for it; said, because source ids and device names are
        // then readable from other machines.
        warn!(address = %addr, "metrics endpoint reachable beyond this machine");
    }
    info!(address = %addr, "metrics endpoint listening");
    let tasks = TaskTracker::new();
    tasks.spawn(
        accept(listener, gather, cancel, tasks.clone()).instrument(tracing::info_span!("metrics")),
    );
    Endpoint { addr, tasks }
}

async fn accept(
    listener: TcpListener,
    gather: Arc<dyn Gather>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, from) = tokio::select! {
            () = cancel.cancelled() => break,
            res = listener.accept() => match res {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    warn!(error = %e, "accepting a metrics connection failed");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(from = %from, "too many metrics connections; closed this one");
            continue;
        };
        let (gather, cancel) = (gather.clone(), cancel.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let gather = gather.clone();
                async move { Ok::<_, Infallible>(respond(&req, gather.as_ref()).await) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            // A scrape cut short by shutdown is simply not answered; the scraper tries again.
            tokio::select! {
                () = cancel.cancelled() => {}
                res = conn => if let Err(e) = res {
                    debug!(from = %from, error = %e, "metrics connection ended");
                },
            }
        });
    }
}

/// The answer to one request: the metrics for `GET /metrics`, 405 for another method on it,
/// 404 for any other path.
async fn respond(req: &Request<Incoming>, gather: &dyn Gather) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut res = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
        res.headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return res;
    }
    let snapshot = match gather.gather().await {
        Ok(s) => s,
        Err(e) => return plain(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
    };
    match encode(&snapshot) {
        Ok(text) => {
            let mut res = Response::new(Full::new(Bytes::from(text)));
            res.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            );
            res
        }
        Err(e) => {
            warn!(error = %e, "encoding metrics failed");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
        }
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(text.to_owned())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    source: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourcePeerLabels {
    source: String,
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HubLabels {
    hub: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HubSourceLabels {
    hub: String,
    source: String,
}

type Gauges<L> = Family<L, Gauge<u64, AtomicU64>>;
type Counters<L> = Family<L, Counter<u64>>;

/// A fresh registry per scrape: the families are filled from the snapshot and dropped after
/// encoding, so nothing here outlives the scrape.
struct Families {
    registry: Registry,
}

impl Families {
    fn gauges<L>(&mut self, name: &str, help: &str) -> Gauges<L>
    where
        L: EncodeLabelSet + Clone + std::fmt::Debug + std::hash::Hash + Eq + Send + Sync + 'static,
    {
        let family = Gauges::<L>::default();
        self.registry.register(name, help, family.clone());
        family
    }

    /// `name` without `_total`: the encoder adds it.
    fn counters<L>(&mut self, name: &str, help: &str) -> Counters<L>
    where
        L: EncodeLabelSet + Clone + std::fmt::Debug + std::hash::Hash + Eq + Send + Sync + 'static,
    {
        let family = Counters::<L>::default();
        self.registry.register(name, help, family.clone());
        family
    }
}

/// A device as `status` names it in logs and events: the first group of its ID.
fn short(device: &str) -> String {
    device
        .parse::<DeviceId>()
        .map_or_else(|_| device.to_owned(), |d| d.short_string())
}

fn flag(b: bool) -> u64 {
    u64::from(b)
}

/// The snapshot in Prometheus text format (version 0.0.4).
///
/// # Errors
/// Only what writing into a `String` can return, which is nothing in practice.
pub fn encode(snap: &Snapshot) -> Result<String, std::fmt::Error> {
    let mut f = Families {
        registry: Registry::default(),
    };
    let items = f.gauges::<SourceLabels>(
        "tandem_source_items",
        "Live items (files, folders, links, records) of the source",
    );
    let bytes = f.gauges::<SourceLabels>("tandem_source_bytes", "Bytes of the source's files");
    let item_errors = f.gauges::<SourceLabels>(
        "tandem_source_item_errors",
        "Items that could not be read at the last scan",
    );
    let conflicts = f.gauges::<SourceLabels>(
        "tandem_source_conflicts",
        "Conflict copies and conflicting record values, as tandemctl conflicts lists them",
    );
    let pending = f.gauges::<SourceLabels>(
        "tandem_source_pending",
        "1 while local changes wait to be scanned (events or rechecks queued)",
    );
    let sequence = f.gauges::<SourceLabels>(
        "tandem_source_sequence",
        "Highest local sequence numbered in the source",
    );
    let state = f.gauges::<StateLabels>(
        "tandem_source_state",
        "1 for the state the source is in (scanning, idle, paused, error)",
    );
    let hashed = f.counters::<SourceLabels>(
        "tandem_source_hashed_bytes",
        "Bytes hashed by scans since the agent started",
    );
    let scans = f.counters::<SourceLabels>(
        "tandem_source_scans",
        "Full scans finished since the agent started",
    );
    let connected = f.gauges::<PeerLabels>(
        "tandem_peer_connected",
        "1 while a connection with the device is up",
    );
    let sent = f.counters::<PeerLabels>(
        "tandem_peer_bytes_sent",
        "Bytes of exchange frames sent to the device since the agent started",
    );
    let received = f.counters::<PeerLabels>(
        "tandem_peer_bytes_received",
        "Bytes of exchange frames received from the device since the agent started",
    );
    let refused = f.counters::<PeerLabels>(
        "tandem_peer_refused",
        "Frames or items refused from the device since the agent started",
    );
    let fetched = f.counters::<SourcePeerLabels>(
        "tandem_peer_fetched_bytes",
        "Chunk bytes of the source fetched from the device since the agent started",
    );
    let reused = f.counters::<SourcePeerLabels>(
        "tandem_peer_reused_bytes",
        "Chunk bytes the device's changes needed that were copied from local files instead",
    );
    let items_sent = f.counters::<SourcePeerLabels>(
        "tandem_peer_items_sent",
        "Items of the source's index sent to the device since the agent started",
    );
    let items_applied = f.counters::<SourcePeerLabels>(
        "tandem_peer_items_applied",
        "Items from the device applied (or found present) since the agent started",
    );
    let needed_items = f.gauges::<SourcePeerLabels>(
        "tandem_peer_needed_items",
        "Items from the device queued to fetch or apply",
    );
    let needed_bytes = f.gauges::<SourcePeerLabels>(
        "tandem_peer_needed_bytes",
        "Bytes of the items from the device queued to fetch or apply",
    );
    let in_flight = f.gauges::<SourcePeerLabels>(
        "tandem_peer_chunks_in_flight",
        "Chunk requests to the device on the wire",
    );
    let in_sync = f.gauges::<SourcePeerLabels>(
        "tandem_peer_in_sync",
        "1 when the source is in sync with the device, as tandemctl wait decides",
    );
    let hub_connected =
        f.gauges::<HubLabels>("tandem_hub_connected", "1 while the link to the hub is up");
    let hub_uploaded = f.counters::<HubSourceLabels>(
        "tandem_hub_uploaded_bytes",
        "Bytes of bundles and chunks uploaded to the hub since the agent started",
    );

    for s in &snap.sources {
        let l = SourceLabels {
            source: s.id.clone(),
        };
        let t = &s.totals;
        items
            .get_or_create(&l)
            .set(t.files + t.directories + t.symlinks);
        bytes.get_or_create(&l).set(t.bytes);
        item_errors
            .get_or_create(&l)
            .set(u64::try_from(s.item_errors.len()).unwrap_or(u64::MAX));
        conflicts
            .get_or_create(&l)
            .set(snap.conflicts.get(&s.id).copied().unwrap_or(0));
        pending.get_or_create(&l).set(flag(s.pending));
        sequence.get_or_create(&l).set(t.sequence);
        hashed.get_or_create(&l).inc_by(s.hashed_bytes);
        scans.get_or_create(&l).inc_by(s.scans);
        for st in [State::Scanning, State::Idle, State::Paused, State::Error] {
            let sl = StateLabels {
                source: s.id.clone(),
                state: st.as_str().to_owned(),
            };
            state.get_or_create(&sl).set(flag(s.state == st));
        }
        // Every device the source is shared with, reached or not, as `status` lists them.
        for device in &s.peers {
            let l = SourcePeerLabels {
                source: s.id.clone(),
                peer: short(device),
            };
            let p = snap
                .peers
                .peers
                .get(device)
                .and_then(|p| p.sources.get(&s.id))
                .cloned()
                .unwrap_or_default();
            fetched.get_or_create(&l).inc_by(p.fetched_bytes);
            reused.get_or_create(&l).inc_by(p.reused_bytes);
            items_sent.get_or_create(&l).inc_by(p.sent_items);
            items_applied.get_or_create(&l).inc_by(p.done_items);
            needed_items.get_or_create(&l).set(p.needed_items);
            needed_bytes.get_or_create(&l).set(p.needed_bytes);
            in_flight.get_or_create(&l).set(p.in_flight);
            let synced = crate::sync_state::in_sync_with(s, device, &snap.peers, &snap.hubs);
            in_sync.get_or_create(&l).set(flag(synced));
        }
    }
    for (device, p) in &snap.peers.peers {
        let l = PeerLabels {
            peer: short(device),
        };
        connected.get_or_create(&l).set(flag(p.connected));
        sent.get_or_create(&l).inc_by(p.bytes_sent);
        received.get_or_create(&l).inc_by(p.bytes_received);
        refused.get_or_create(&l).inc_by(p.refused);
    }
    for (device, h) in &snap.hubs.hubs {
        let hub = short(device);
        hub_connected
            .get_or_create(&HubLabels { hub: hub.clone() })
            .set(flag(h.connected));
        for (source, s) in &h.sources {
            let l = HubSourceLabels {
                hub: hub.clone(),
                source: source.clone(),
            };
            hub_uploaded.get_or_create(&l).inc_by(s.uploaded_bytes);
        }
    }
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &f.registry)?;
    Ok(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::peer::{PeerSourceStatus, PeerState};

    fn snapshot() -> Snapshot {
        let peer = "P".to_owned();
        let mut board = Board::default();
        let mut state = PeerState {
            connected: true,
            bytes_sent: 1234,
            bytes_received: 56,
            ..Default::default()
        };
        state.sources.insert(
            "docs".into(),
            PeerSourceStatus {
                fetched_bytes: 99,
                needed_items: 3,
                ..Default::default()
            },
        );
        board.peers.insert(peer.clone(), state);
        Snapshot {
            sources: vec![SourceStatus {
                id: "docs".into(),
                path: PathBuf::from("/x"),
                format: "files".into(),
                state: State::Idle,
                error: None,
                totals: crate::store::Totals {
                    files: 2,
                    directories: 1,
                    symlinks: 0,
                    bytes: 300,
                    sequence: 7,
                },
                hashed_bytes: 300,
                scans: 1,
                last_scan_unix_ms: 0,
                item_errors: BTreeMap::from([("a".into(), "unreadable".into())]),
                peers: vec![peer],
                pending: false,
                ignores: Arc::default(),
                started: true,
            }],
            conflicts: BTreeMap::from([("docs".into(), 2)]),
            peers: board,
            hubs: HubBoard::default(),
        }
    }

    #[test]
    fn the_text_holds_each_number_under_its_labels() {
        let text = encode(&snapshot()).unwrap();
        for line in [
            "tandem_source_items{source=\"docs\"} 3",
            "tandem_source_bytes{source=\"docs\"} 300",
            "tandem_source_item_errors{source=\"docs\"} 1",
            "tandem_source_conflicts{source=\"docs\"} 2",
            "tandem_source_pending{source=\"docs\"} 0",
            "tandem_source_state{source=\"docs\",state=\"idle\"} 1",
            "tandem_source_state{source=\"docs\",state=\"error\"} 0",
            "tandem_peer_connected{peer=\"P\"} 1",
            "tandem_peer_bytes_sent_total{peer=\"P\"} 1234",
            "tandem_peer_bytes_received_total{peer=\"P\"} 56",
            "tandem_peer_fetched_bytes_total{source=\"docs\",peer=\"P\"} 99",
            "tandem_peer_needed_items{source=\"docs\",peer=\"P\"} 3",
            "# TYPE tandem_peer_bytes_sent_total counter",
            "# TYPE tandem_source_items gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }

    struct Fixed;

    impl Gather for Fixed {
        fn gather(&self) -> Pin<Box<dyn Future<Output = Result<Snapshot, String>> + Send + '_>> {
            Box::pin(async { Ok(snapshot()) })
        }
    }

    /// One HTTP/1.0 request on a fresh connection; the whole answer.
    async fn ask(addr: SocketAddr, request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn get_metrics_is_served_and_nothing_else() {
        let (listener, addr) = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let cancel = CancellationToken::new();
        let endpoint = serve(listener, addr, Arc::new(Fixed), cancel.clone());
        let ok = ask(addr, "GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.0 200"), "{ok}");
        assert!(ok.contains("version=0.0.4"), "{ok}");
        assert!(
            ok.contains("\ntandem_peer_bytes_sent_total{peer=\"P\"} 1234\n"),
            "{ok}"
        );
        let post = ask(addr, "POST /metrics HTTP/1.0\r\ncontent-length: 0\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.0 405"), "{post}");
        let other = ask(addr, "GET / HTTP/1.0\r\n\r\n").await;
        assert!(other.starts_with("HTTP/1.0 404"), "{other}");
        cancel.cancel();
        endpoint.stopped().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[test]
    fn an_empty_agent_encodes_without_samples() {
        let text = encode(&Snapshot::default()).unwrap();
        assert!(text.lines().all(|l| l.starts_with('#')), "{text}");
    }
}
