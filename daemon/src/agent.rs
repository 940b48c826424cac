//! Start-up order, the set of running sources, and shutdown.
//!
//! The agent task owns the map of sources; the control service reaches it through an
//! [`AgentHandle`]. Must not: hold sync logic (that lives in `source`, `scanner`, `store`).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::apply;
use crate::config::{Config, Home};
use crate::events::{Event, EventBus, EventKind, unix_ms_now};
use crate::identity::{DeviceId, Identity};
use crate::peer::{self, PeerHandle, SharedSource, Sources};
use crate::sealed::SourceKey;
use crate::source::{self, SourceCommander, SourceConfig, SourceHandle, SourceStatus};
use crate::store::{self, HubRow, PeerRow, SourceRow, StoreHandle};

/// Why the agent could not start, or refused a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error(transparent)]
    Identity(#[from] crate::identity::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::Error),
    #[error("no source with id {0:?}; `tandemctl source list` shows the ids")]
    UnknownSource(String),
    #[error("no peer with device ID {0}; `tandemctl peer list` shows the known devices")]
    UnknownPeer(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the agent is shutting down")]
    ShuttingDown,
}

/// Facts about this agent that never change while it runs.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub device_id: DeviceId,
    pub home: PathBuf,
    pub listen: SocketAddr,
    /// Where the metrics endpoint listens, when it serves one.
    pub metrics: Option<SocketAddr>,
    pub started: Instant,
}

/// A `source add` request as the user gave it.
#[derive(Debug, Clone)]
pub struct AddSource {
    pub id: String,
    pub path: PathBuf,
    pub format: String,
    pub peers: Vec<String>,
    /// The source key from a member (`tk1-…`); empty: this device makes one.
    pub key: String,
}

enum Msg {
    Statuses(oneshot::Sender<Vec<SourceStatus>>),
    Add(AddSource, oneshot::Sender<Result<SourceStatus, Error>>),
    Remove(String, oneshot::Sender<Result<(), Error>>),
    Targets(
        Option<String>,
        oneshot::Sender<Result<Vec<(String, SourceCommander)>, Error>>,
    ),
    Subscribe(oneshot::Sender<Vec<watch::Receiver<SourceStatus>>>),
    SharedWith(String, oneshot::Sender<Vec<SharedSource>>),
    Reload(Box<Config>, oneshot::Sender<Result<Vec<String>, Error>>),
}

/// The agent as the peer side sees it: which sources a device may exchange.
struct Directory {
    tx: mpsc::Sender<Msg>,
}

/// A conflict `tandemctl conflicts` lists: a file's conflict copy, or a record's value that
/// lost to another set at the same time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictInfo {
    pub source: String,
    /// The conflict copy's path, or the record's UID.
    pub item: String,
    /// The item the copy lost to (a record: itself).
    pub original: String,
    /// Short ID of the device whose version lost.
    pub device: String,
    /// YYYYMMDD-HHMMSS, UTC.
    pub when: String,
    /// A record's field (empty for a file).
    pub field: String,
    pub kept: String,
    pub lost: String,
}

impl Sources for Directory {
    fn shared_with(
        &self,
        device: String,
    ) -> Pin<Box<dyn Future<Output = Vec<SharedSource>> + Send + '_>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if self.tx.send(Msg::SharedWith(device, tx)).await.is_err() {
                return Vec::new();
            }
            rx.await.unwrap_or_default()
        })
    }
}

/// Cloneable handle to the agent task.
#[derive(Clone)]
pub struct AgentHandle {
    tx: mpsc::Sender<Msg>,
    store: StoreHandle,
    /// Woken whenever any source publishes a new status.
    pub changed: Arc<Notify>,
    pub events: EventBus,
    pub info: Arc<AgentInfo>,
    /// The peer side: connections and their progress.
    pub peers: PeerHandle,
    /// The hubs: links and their progress.
    pub hubs: crate::hub_client::HubClients,
}

impl AgentHandle {
    async fn ask<T>(&self, msg: impl FnOnce(oneshot::Sender<T>) -> Msg) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(msg(tx))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)
    }

    /// Status snapshots of every source, in id order.
    pub async fn statuses(&self) -> Result<Vec<SourceStatus>, Error> {
        self.ask(Msg::Statuses).await
    }

    /// Takes the settings of a `config.toml` read again (SIGHUP): sources whose settings
    /// changed are restarted with them; says what changed. The listen address is kept until
    /// the next start.
    pub async fn reload(&self, config: Config) -> Result<Vec<String>, Error> {
        self.ask(|tx| Msg::Reload(Box::new(config), tx)).await?
    }

    /// Adds and starts a source.
    pub async fn add_source(&self, req: AddSource) -> Result<SourceStatus, Error> {
        self.ask(|tx| Msg::Add(req, tx)).await?
    }

    /// Stops a source and forgets its prior state (the folder itself is left alone).
    pub async fn remove_source(&self, id: String) -> Result<(), Error> {
        self.ask(|tx| Msg::Remove(id, tx)).await?
    }

    /// Asks one source (or all) for a full rescan.
    pub async fn rescan(&self, id: Option<String>) -> Result<usize, Error> {
        let targets = self.ask(|tx| Msg::Targets(id, tx)).await??;
        for (_, t) in &targets {
            t.rescan().await;
        }
        Ok(targets.len())
    }

    /// Pauses one source (or all), remembering it across restarts.
    pub async fn pause(&self, id: Option<String>) -> Result<usize, Error> {
        let targets = self.ask(|tx| Msg::Targets(id, tx)).await??;
        for (id, t) in &targets {
            t.pause().await;
            self.store.set_paused(id.clone(), true).await?;
        }
        Ok(targets.len())
    }

    /// Resumes one source (or all).
    pub async fn resume(&self, id: Option<String>) -> Result<usize, Error> {
        let targets = self.ask(|tx| Msg::Targets(id, tx)).await??;
        for (id, t) in &targets {
            self.store.set_paused(id.clone(), false).await?;
            t.resume().await;
        }
        Ok(targets.len())
    }

    /// Pins a device, or updates the address of one already pinned.
    pub async fn add_peer(&self, device_id: &str, address: &str) -> Result<PeerRow, Error> {
        let id: DeviceId = device_id
            .parse()
            .map_err(|e: crate::identity::ParseDeviceIdError| Error::Invalid(e.to_string()))?;
        if id == self.info.device_id {
            return Err(Error::Invalid(format!(
                "{id} is this device's own ID; add the ID that `tandemctl id` prints on the other device"
            )));
        }
        let address = validate_address(address)?;
        let row = PeerRow {
            device_id: id.to_string(),
            address,
            added_unix_ms: unix_ms_now(),
        };
        self.store.add_peer(row.clone()).await?;
        info!(peer = %id.short_string(), address = ?row.address, "peer added");
        let stored = self
            .store
            .peers()
            .await?
            .into_iter()
            .find(|p| p.device_id == row.device_id)
            .ok_or(Error::ShuttingDown)?;
        self.peers.added(stored.clone()).await;
        Ok(stored)
    }

    /// The newest key of a source, to give to another member (`source add … --key`).
    pub async fn source_key(&self, id: &str) -> Result<SourceKey, Error> {
        let keys = self.store.source_keys(id.to_owned()).await?;
        if let Some((generation, bytes)) = keys.last() {
            let bytes: [u8; crate::sealed::KEY_LEN] =
                bytes.as_slice().try_into().map_err(|_| {
                    Error::Invalid(format!("the stored key of source {id:?} is damaged"))
                })?;
            return Ok(SourceKey::from_bytes(*generation, bytes));
        }
        if !self.store.sources().await?.iter().any(|s| s.id == id) {
            return Err(Error::UnknownSource(id.to_owned()));
        }
        // A source added before sources had keys gets one now, on first use.
        let key = SourceKey::generate(0).map_err(|e| Error::Invalid(e.to_string()))?;
        self.store
            .add_source_key(id.to_owned(), key.generation, key.bytes().to_vec())
            .await?;
        Ok(key)
    }

    /// Shares a source with one more device.
    pub async fn share_source(&self, id: &str, device_id: &str) -> Result<(), Error> {
        let device = canonical_device(device_id)?;
        if !self
            .store
            .share_source(id.to_owned(), device.clone())
            .await?
        {
            return Err(Error::UnknownSource(id.to_owned()));
        }
        self.peers_changed(id).await?;
        info!(source = %id, device = %device, "source shared");
        Ok(())
    }

    /// Removes a device from a source: it is refused at the source's hubs from now on, and
    /// the source gets a new key, which the members that stay get (directly, or sealed for
    /// each of them at the hubs) and the removed device does not.
    pub async fn unshare_source(&self, id: &str, device_id: &str) -> Result<(), Error> {
        let device = canonical_device(device_id)?;
        if !self
            .store
            .unshare_source(id.to_owned(), device.clone(), true)
            .await?
        {
            return Err(Error::UnknownSource(id.to_owned()));
        }
        let newest = self
            .store
            .source_keys(id.to_owned())
            .await?
            .last()
            .map_or(0, |(g, _)| *g);
        let key = SourceKey::generate(newest + 1).map_err(|e| Error::Invalid(e.to_string()))?;
        self.store
            .add_source_key(id.to_owned(), key.generation, key.bytes().to_vec())
            .await?;
        self.peers_changed(id).await?;
        info!(source = %id, device = %device, generation = key.generation, "device removed from the source; new key");
        Ok(())
    }

    /// Tells the source task, the connections and the hub links that a source's devices
    /// changed.
    async fn peers_changed(&self, id: &str) -> Result<(), Error> {
        let peers = self
            .store
            .sources()
            .await?
            .into_iter()
            .find(|s| s.id == id)
            .map(|s| s.peers)
            .unwrap_or_default();
        let targets = self
            .ask(|tx| Msg::Targets(Some(id.to_owned()), tx))
            .await??;
        for (_, t) in &targets {
            t.set_peers(peers.clone()).await;
        }
        self.peers.sources_changed();
        self.hubs.changed();
        Ok(())
    }

    /// Adds a hub (pinned to its device ID), or changes its address.
    pub async fn add_hub(&self, address: &str, device_id: &str) -> Result<HubRow, Error> {
        let id: DeviceId = device_id
            .parse()
            .map_err(|e: crate::identity::ParseDeviceIdError| Error::Invalid(e.to_string()))?;
        if id == self.info.device_id {
            return Err(Error::Invalid(format!(
                "{id} is this device's own ID; give the ID that `tandemctl --home HUB-HOME id` \
                 prints for the hub"
            )));
        }
        let address = validate_address(address)?.ok_or_else(|| {
            Error::Invalid("a hub needs an address to dial, host:port".to_owned())
        })?;
        let row = HubRow {
            device_id: id.to_string(),
            address,
            added_unix_ms: unix_ms_now(),
        };
        self.store.add_hub(row.clone()).await?;
        info!(hub = %id.short_string(), address = %row.address, "hub added");
        self.hubs.changed();
        Ok(row)
    }

    /// The hubs this device uses.
    pub async fn hubs(&self) -> Result<Vec<HubRow>, Error> {
        Ok(self.store.hubs().await?)
    }

    /// Stops using a hub.
    pub async fn remove_hub(&self, device_id: &str) -> Result<(), Error> {
        let canonical = device_id
            .parse::<DeviceId>()
            .map_err(|e| Error::Invalid(e.to_string()))?
            .to_string();
        if !self.store.remove_hub(canonical.clone()).await? {
            return Err(Error::NotFound(format!(
                "no hub with device ID {canonical}; `tandemctl hub list` shows them"
            )));
        }
        self.hubs.changed();
        Ok(())
    }

    /// Forgets a device.
    pub async fn remove_peer(&self, device_id: &str) -> Result<(), Error> {
        // Accept the ID in any spelling the user might paste; store it canonically.
        let canonical = match device_id.parse::<DeviceId>() {
            Ok(id) => id.to_string(),
            Err(e) => return Err(Error::Invalid(e.to_string())),
        };
        self.store
            .remove_peer(canonical.clone())
            .await
            .map_err(|e| match e {
                store::Error::UnknownPeer(id) => Error::UnknownPeer(id),
                other => Error::Store(other),
            })?;
        self.peers.removed(canonical).await;
        Ok(())
    }

    /// Conflict copies in one source (or all), with what they lost to.
    pub async fn conflicts(&self, id: Option<String>) -> Result<Vec<ConflictInfo>, Error> {
        let statuses = self.statuses().await?;
        let ids: Vec<(String, String)> = match id {
            Some(id) => {
                let Some(s) = statuses.iter().find(|s| s.id == id) else {
                    return Err(Error::UnknownSource(id));
                };
                vec![(id, s.format.clone())]
            }
            None => statuses.into_iter().map(|s| (s.id, s.format)).collect(),
        };
        let mut out = Vec::new();
        for (id, format) in ids {
            let records = crate::formats::by_name(&format).is_ok_and(|f| f.records().is_some());
            if records {
                // A record keeps the values that lost as notes; every live record is looked at.
                for item in self.store.prior_items(id.clone(), None).await? {
                    let Some(bytes) = item.body.record().filter(|_| !item.header.deleted) else {
                        continue;
                    };
                    let Ok(stored) = crate::records::decode_stored(&item.key, bytes) else {
                        continue;
                    };
                    let Some(record) = crate::records::record_of(&stored) else {
                        continue;
                    };
                    for c in crate::records::conflicts_in(record) {
                        out.push(ConflictInfo {
                            source: id.clone(),
                            item: item.key.clone(),
                            original: item.key.clone(),
                            device: c.device,
                            when: crate::events::utc_stamp(u64::try_from(c.unix_s).unwrap_or(0)),
                            field: c.field,
                            kept: c.kept,
                            lost: c.lost,
                        });
                    }
                }
                continue;
            }
            let copies = self
                .store
                .live_keys_containing(id.clone(), apply::CONFLICT_MARK.to_owned())
                .await?;
            for path in copies {
                if let Some(name) = apply::parse_conflict_name(&path) {
                    out.push(ConflictInfo {
                        source: id.clone(),
                        item: path,
                        original: name.original,
                        device: name.device,
                        when: name.when,
                        field: String::new(),
                        kept: String::new(),
                        lost: String::new(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// The folder of a source, or an error naming the unknown id.
    async fn source_root(&self, id: &str) -> Result<PathBuf, Error> {
        self.statuses()
            .await?
            .into_iter()
            .find(|s| s.id == id)
            .map(|s| s.path)
            .ok_or_else(|| Error::UnknownSource(id.to_owned()))
    }

    /// True when the source keeps its records in one file.
    async fn is_single_file(&self, id: &str) -> Result<bool, Error> {
        let format = self
            .statuses()
            .await?
            .into_iter()
            .find(|s| s.id == id)
            .map(|s| s.format)
            .ok_or_else(|| Error::UnknownSource(id.to_owned()))?;
        Ok(crate::formats::by_name(&format)
            .is_ok_and(|f| f.layout() == crate::formats::Layout::SingleFile))
    }

    /// Kept versions of a source (of one item path, if given).
    pub async fn versions(
        &self,
        id: &str,
        path: Option<String>,
    ) -> Result<Vec<crate::versions::Version>, Error> {
        let root = self.source_root(id).await?;
        let single = self.is_single_file(id).await?;
        let base = crate::layout::versions_dir_of(&root, single);
        tokio::task::spawn_blocking(move || crate::versions::list_in(&base, path.as_deref()))
            .await
            .map_err(|e| Error::Invalid(format!("listing versions failed: {e}")))
    }

    /// Restores a kept version of an item as a local change.
    pub async fn restore_version(
        &self,
        id: &str,
        path: String,
        at: Option<String>,
    ) -> Result<crate::versions::Version, Error> {
        crate::universal::ItemPath::parse(&path).map_err(|e| Error::Invalid(e.to_string()))?;
        if self.is_single_file(id).await? {
            return Err(Error::Invalid(format!(
                "source {id:?} is one file of records: its kept versions are the old text of \
                 single records; copy the one you want back into the file (`tandemctl versions \
                 list {id}` shows where they are)"
            )));
        }
        let root = self.source_root(id).await?;
        tokio::task::spawn_blocking(move || crate::versions::restore(&root, &path, at.as_deref()))
            .await
            .map_err(|e| Error::Invalid(format!("restoring failed: {e}")))?
            .map_err(|e| match e {
                crate::versions::VersionsError::NotFound { .. } => Error::NotFound(e.to_string()),
                other => Error::Invalid(other.to_string()),
            })
    }

    /// Every pinned device.
    pub async fn peers(&self) -> Result<Vec<PeerRow>, Error> {
        Ok(self.store.peers().await?)
    }

    /// Receivers of every source's status, for waiting on them.
    pub async fn subscribe(&self) -> Result<Vec<watch::Receiver<SourceStatus>>, Error> {
        self.ask(Msg::Subscribe).await
    }
}

/// A metrics scrape reads what `status` and `conflicts` show.
impl crate::metrics::Gather for AgentHandle {
    fn gather(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<crate::metrics::Snapshot, String>> + Send + '_>> {
        Box::pin(async move {
            let sources = self.statuses().await.map_err(|e| e.to_string())?;
            let mut conflicts = BTreeMap::new();
            for c in self.conflicts(None).await.map_err(|e| e.to_string())? {
                *conflicts.entry(c.source).or_insert(0) += 1;
            }
            Ok(crate::metrics::Snapshot {
                sources,
                conflicts,
                peers: self.peers.board(),
                hubs: self.hubs.board(),
            })
        })
    }
}

/// Longest shutdown waits for the peer side's tasks.
const PEER_STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);

/// A started agent: its handle for the control service, and what [`Running::stop`] winds down.
pub struct Running {
    handle: AgentHandle,
    peers: PeerHandle,
    hubs: crate::hub_client::HubClients,
    agent: tokio::task::JoinHandle<()>,
    cancel: CancellationToken,
    store: StoreHandle,
    store_thread: store::StoreThread,
    /// The metrics endpoint, when `[metrics] listen` asks for one.
    metrics: Option<crate::metrics::Endpoint>,
}

impl Running {
    /// A handle for the control service (or a test) to drive the agent with.
    pub fn handle(&self) -> AgentHandle {
        self.handle.clone()
    }

    /// Stops every source and peer task, waits for them, then closes the database.
    pub async fn stop(self) {
        info!("shutting down");
        self.cancel.cancel();
        drop(self.handle);
        if let Err(e) = self.agent.await {
            warn!(error = %e, "agent task ended abnormally");
        }
        // Connections notice the cancellation at their next frame or timer; a peer that stalls
        // must not hold the shutdown up for long.
        if tokio::time::timeout(PEER_STOP_LIMIT, self.peers.stopped())
            .await
            .is_err()
        {
            warn!("peer connections did not stop within {PEER_STOP_LIMIT:?}; closing anyway");
        }
        if tokio::time::timeout(PEER_STOP_LIMIT, self.hubs.stopped())
            .await
            .is_err()
        {
            warn!("hub links did not stop within {PEER_STOP_LIMIT:?}; closing anyway");
        }
        if let Some(metrics) = &self.metrics
            && tokio::time::timeout(PEER_STOP_LIMIT, metrics.stopped())
                .await
                .is_err()
        {
            warn!("the metrics endpoint did not stop within {PEER_STOP_LIMIT:?}; closing anyway");
        }
        drop(self.store);
        // Joining a thread blocks: not on the runtime's own threads.
        let thread = self.store_thread;
        if let Err(e) = tokio::task::spawn_blocking(move || thread.join()).await {
            warn!(error = %e, "closing the database failed");
        }
    }
}

/// Starts the agent in `home`: identity, database, peer listener, a task per source. The
/// caller holds the home's lock, serves the control socket, and calls [`Running::stop`].
pub async fn start(home: &Home, listen: Option<SocketAddr>) -> Result<Running, Error> {
    let home = home.clone();
    let config = Config::load(&home)?;
    let listen = listen.unwrap_or(config.listen);
    let (listener, listen) = peer::bind(listen).await.map_err(|e| {
        Error::Invalid(format!("cannot listen for peers on {listen}: {e}; pick another address with --listen or `listen` in config.toml"))
    })?;
    // Bound now, with the peer listener, so a taken port stops the start-up before anything
    // runs; served once the agent can answer.
    let metrics_listener = match config.metrics {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    let (identity, opened) = Identity::open(&home.identity_dir())?;
    if opened.created {
        info!(device = %identity.device_id, "created a new device identity");
    }
    if opened.key_mode_fixed {
        warn!("the identity key was readable by others; its mode is now 0600");
    }
    info!(device = %identity.device_id, home = %home.root().display(), "starting tandemd");
    let (store, store_thread) = store::open(&home.database())?;
    let disk = disk_from_env()?;

    let info = Arc::new(AgentInfo {
        device_id: identity.device_id,
        home: home.root().to_path_buf(),
        listen,
        metrics: metrics_listener.as_ref().map(|(_, addr)| *addr),
        started: Instant::now(),
    });
    let (tx, rx) = mpsc::channel(64);
    let sources_cancel = CancellationToken::new();
    let changed = Arc::new(Notify::new());
    let peers = peer::start(
        listener,
        Arc::new(identity.clone()),
        store.clone(),
        Arc::new(Directory { tx: tx.clone() }),
        store.peers().await?,
        changed.clone(),
        sources_cancel.clone(),
    )
    .map_err(|e| Error::Invalid(e.to_string()))?;
    info!(listen = %listen, "peer service listening");
    let hubs = crate::hub_client::start(
        Arc::new(identity.clone()),
        store.clone(),
        Arc::new(Directory { tx: tx.clone() }),
        peers.clone(),
        changed.clone(),
        sources_cancel.clone(),
    );
    let handle = AgentHandle {
        tx,
        store: store.clone(),
        changed,
        events: EventBus::new(4096),
        info,
        peers: peers.clone(),
        hubs: hubs.clone(),
    };
    let mut task = AgentTask {
        rx,
        store: store.clone(),
        config,
        home: home.clone(),
        local: identity.device_id,
        sources: BTreeMap::new(),
        changed: handle.changed.clone(),
        events: handle.events.clone(),
        cancel: sources_cancel.clone(),
        peers,
        disk,
    };
    let discovery = task.config.discovery.clone();
    task.start_recorded().await?;
    let agent = tokio::spawn(task.run());
    if discovery.enabled && std::env::var_os(crate::discovery::TEST_NO_DISCOVERY).is_none() {
        let run = crate::discovery::run(
            identity.device_id,
            listen.port(),
            discovery.port,
            handle.peers.clone(),
            sources_cancel.child_token(),
        );
        tokio::spawn(async move {
            if let Err(e) = run.await {
                warn!(error = %e, "LAN discovery is off");
            }
        });
    }
    let metrics = metrics_listener.map(|(listener, addr)| {
        crate::metrics::serve(
            listener,
            addr,
            Arc::new(handle.clone()),
            sources_cancel.child_token(),
        )
    });
    Ok(Running {
        peers: handle.peers.clone(),
        hubs,
        handle,
        agent,
        cancel: sources_cancel,
        store,
        store_thread,
        metrics,
    })
}

struct AgentTask {
    rx: mpsc::Receiver<Msg>,
    store: StoreHandle,
    config: Config,
    home: Home,
    local: DeviceId,
    sources: BTreeMap<String, SourceHandle>,
    changed: Arc<Notify>,
    events: EventBus,
    cancel: CancellationToken,
    peers: PeerHandle,
    /// Where sources write what peers send.
    disk: Arc<dyn apply::Disk>,
}

/// Environment variable that makes the agent write through a [`apply::FaultyDisk`] with this
/// plan: for black-box crash and fault tests only (see `FaultyDisk::from_plan`).
pub const TEST_DISK_FAULTS: &str = "TANDEM_TEST_DISK_FAULTS";

/// The real disk, unless a test asked for planned faults.
fn disk_from_env() -> Result<Arc<dyn apply::Disk>, Error> {
    match std::env::var(TEST_DISK_FAULTS) {
        Ok(plan) if !plan.is_empty() => {
            let disk = apply::FaultyDisk::from_plan(&plan).map_err(|e| {
                Error::Invalid(format!(
                    "{TEST_DISK_FAULTS}: {e}; it is for tests only, unset it to run normally"
                ))
            })?;
            warn!(plan = %plan, "writing through a test disk with planned faults");
            Ok(Arc::new(disk))
        }
        _ => Ok(Arc::new(apply::OsDisk)),
    }
}

impl AgentTask {
    /// Starts a task for every source recorded in the database.
    async fn start_recorded(&mut self) -> Result<(), Error> {
        for row in self.store.sources().await? {
            // A source added before sources had keys gets one (hubs need it).
            if self.store.source_keys(row.id.clone()).await?.is_empty() {
                let key = SourceKey::generate(0).map_err(|e| Error::Invalid(e.to_string()))?;
                self.store
                    .add_source_key(row.id.clone(), key.generation, key.bytes().to_vec())
                    .await?;
            }
            self.start(&row);
        }
        Ok(())
    }

    /// See [`AgentHandle::reload`].
    async fn reload(&mut self, mut config: Config) -> Result<Vec<String>, Error> {
        let mut said = Vec::new();
        if config.listen != self.config.listen {
            said.push(format!(
                "listen = {} takes effect when the agent starts again (it listens on {} until then)",
                config.listen, self.config.listen
            ));
            config.listen = self.config.listen;
        }
        if config.discovery != self.config.discovery {
            said.push("[discovery] takes effect when the agent starts again".to_owned());
            config.discovery = self.config.discovery.clone();
        }
        if config.metrics != self.config.metrics {
            said.push(
                "[metrics] listen takes effect when the agent starts again (the endpoint stays as it is until then)".to_owned(),
            );
            config.metrics = self.config.metrics;
        }
        let old = std::mem::replace(&mut self.config, config);
        let settings = |c: &Config, id: &str| {
            (
                c.debounce,
                c.debounce_max,
                c.rescan_interval,
                c.versions_keep,
                c.vcard_versions.get(id).cloned(),
            )
        };
        for row in self.store.sources().await? {
            if settings(&old, &row.id) == settings(&self.config, &row.id) {
                continue;
            }
            if let Some(handle) = self.sources.remove(&row.id) {
                handle.stop().await;
            }
            self.start(&row);
            said.push(format!("source {} restarted with the new settings", row.id));
        }
        self.changed.notify_waiters();
        Ok(said)
    }

    fn start(&mut self, row: &SourceRow) {
        let cfg = SourceConfig {
            id: row.id.clone(),
            root: PathBuf::from(&row.path),
            format: row.format.clone(),
            paused: row.paused,
            peers: row.peers.clone(),
            local: self.local.short(),
            local_short_name: self.local.short_string(),
            debounce: self.config.debounce,
            debounce_max: self.config.debounce_max,
            rescan_interval: self.config.rescan_interval,
            versions_keep: self.config.versions_keep,
            vcard_version: self
                .config
                .vcard_versions
                .get(&row.id)
                .cloned()
                .unwrap_or_default(),
            disk: self.disk.clone(),
        };
        let handle = source::spawn(
            cfg,
            self.store.clone(),
            self.events.clone(),
            self.changed.clone(),
            self.cancel.child_token(),
        );
        self.sources.insert(row.id.clone(), handle);
    }

    async fn run(mut self) {
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => break,
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => break,
                },
            }
        }
        for (_, handle) in std::mem::take(&mut self.sources) {
            handle.stop().await;
        }
    }

    async fn handle(&mut self, msg: Msg) {
        // A caller that hung up does not need its answer.
        match msg {
            Msg::Statuses(reply) => {
                let _ = reply.send(self.sources.values().map(SourceHandle::status).collect());
            }
            Msg::Add(req, reply) => {
                let _ = reply.send(self.add(req).await);
            }
            Msg::Remove(id, reply) => {
                let _ = reply.send(self.remove(id).await);
            }
            Msg::Reload(config, reply) => {
                let _ = reply.send(self.reload(*config).await);
            }
            Msg::Targets(id, reply) => {
                let targets = match id {
                    None => Ok(self
                        .sources
                        .iter()
                        .map(|(id, h)| (id.clone(), h.commander()))
                        .collect()),
                    Some(id) => match self.sources.get(&id) {
                        Some(h) => Ok(vec![(id, h.commander())]),
                        None => Err(Error::UnknownSource(id)),
                    },
                };
                let _ = reply.send(targets);
            }
            Msg::Subscribe(reply) => {
                let _ = reply.send(self.sources.values().map(SourceHandle::subscribe).collect());
            }
            Msg::SharedWith(device, reply) => {
                let shared = self
                    .sources
                    .values()
                    .filter(|h| h.status().peers.contains(&device))
                    .map(|h| {
                        let status = h.status();
                        SharedSource {
                            id: status.id,
                            root: status.path,
                            commander: h.commander(),
                            status: h.subscribe(),
                            disk: h.disk(),
                            gone: h.gone(),
                        }
                    })
                    .collect();
                let _ = reply.send(shared);
            }
        }
    }

    async fn add(&mut self, req: AddSource) -> Result<SourceStatus, Error> {
        validate_id(&req.id)?;
        if self.sources.contains_key(&req.id) {
            return Err(Error::Invalid(format!(
                "a source with id {:?} already exists; pick another id or remove it first",
                req.id
            )));
        }
        validate_format(&req.format)?;
        let single = crate::formats::by_name(&req.format)
            .is_ok_and(|f| f.layout() == crate::formats::Layout::SingleFile);
        let (path, home) = (req.path.clone(), self.home.root().to_path_buf());
        let root = tokio::task::spawn_blocking(move || {
            if single {
                validate_file_path(&path, &home)
            } else {
                validate_path(&path, &home)
            }
        })
        .await
        .map_err(|e| Error::Invalid(format!("checking the path failed: {e}")))??;
        for (id, h) in &self.sources {
            let other = h.status().path;
            if root.starts_with(&other) || other.starts_with(&root) {
                return Err(Error::Invalid(format!(
                    "{} overlaps source {id:?} at {}; sources cannot be nested",
                    root.display(),
                    other.display()
                )));
            }
        }
        let key = if req.key.trim().is_empty() {
            SourceKey::generate(0).map_err(|e| Error::Invalid(e.to_string()))?
        } else {
            SourceKey::from_text(&req.key).map_err(|e| Error::Invalid(e.to_string()))?
        };
        let mut peers = Vec::new();
        for p in &req.peers {
            let id: DeviceId = p
                .parse()
                .map_err(|e: crate::identity::ParseDeviceIdError| Error::Invalid(e.to_string()))?;
            peers.push(id.to_string());
        }
        let root_str = root.to_str().ok_or_else(|| {
            Error::Invalid(format!(
                "{} is not valid UTF-8; use a folder with a UTF-8 path",
                root.display()
            ))
        })?;
        let row = SourceRow {
            id: req.id.clone(),
            path: root_str.to_owned(),
            format: req.format.clone(),
            paused: false,
            sequence: 0,
            created_unix_ms: unix_ms_now(),
            peers,
        };
        let marker = root.clone();
        let made = tokio::task::spawn_blocking(move || {
            if single {
                crate::formats::record_file::create_agent_dir(&marker)
            } else {
                crate::layout::create_marker(&marker)
            }
        })
        .await
        .map_err(|e| Error::Invalid(format!("creating the marker failed: {e}")))?;
        made.map_err(|e| {
            Error::Invalid(format!(
                "cannot create the marker folder {}: {e}; the agent needs write access to the source",
                crate::layout::marker_path(&root).display()
            ))
        })?;
        self.store.add_source(row.clone()).await?;
        self.store
            .add_source_key(row.id.clone(), key.generation, key.bytes().to_vec())
            .await?;
        self.start(&row);
        info!(source = %row.id, path = %row.path, "source added");
        self.events
            .emit(Event::now(&row.id, EventKind::SourceAdded).detail(row.path.clone()));
        self.peers.sources_changed();
        self.sources
            .get(&row.id)
            .map(SourceHandle::status)
            .ok_or(Error::ShuttingDown)
    }

    async fn remove(&mut self, id: String) -> Result<(), Error> {
        let handle = self
            .sources
            .remove(&id)
            .ok_or_else(|| Error::UnknownSource(id.clone()))?;
        handle.stop().await;
        self.store.remove_source(id.clone()).await?;
        info!(source = %id, "source removed");
        self.events.emit(Event::now(&id, EventKind::SourceRemoved));
        self.peers.sources_changed();
        Ok(())
    }
}

fn validate_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "source id {id:?} is not valid; use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"
        )))
    }
}

fn validate_format(format: &str) -> Result<(), Error> {
    crate::formats::by_name(format)
        .map(drop)
        .map_err(|e| Error::Invalid(e.to_string()))
}

/// Checks a `host:port` to dial; empty means "the peer dials in".
fn validate_address(address: &str) -> Result<Option<String>, Error> {
    if address.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Error::Invalid(format!(
            "address {address:?} is not host:port (for example 192.168.1.20:27480 or nas.local:27480)"
        ))
    };
    if address.parse::<SocketAddr>().is_ok() {
        return Ok(Some(address.to_owned()));
    }
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
    match port.parse::<u16>() {
        Ok(p) if p > 0 && host_ok => Ok(Some(address.to_owned())),
        _ => Err(bad()),
    }
}

/// Checks the path of a single-file source: an absolute path to a file, or to a file not made
/// yet in a folder that exists (the first record a peer sends makes it).
fn validate_file_path(path: &Path, home: &Path) -> Result<PathBuf, Error> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::Invalid(format!(
            "source path {} names no file; give the path of the file (for example ~/contacts.vcf)",
            path.display()
        )));
    };
    let folder = validate_path(parent, home)?;
    let file = folder.join(name);
    match std::fs::symlink_metadata(&file) {
        Ok(m) if m.is_file() => Ok(file),
        Ok(_) => Err(Error::Invalid(format!(
            "source path {} is not a regular file; this format keeps its records in one file",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(file),
        Err(e) => Err(Error::Invalid(format!(
            "cannot open source path {}: {e}; check its permissions",
            path.display()
        ))),
    }
}

fn validate_path(path: &Path, home: &Path) -> Result<PathBuf, Error> {
    if !path.is_absolute() {
        return Err(Error::Invalid(format!(
            "source path {} is relative; give an absolute path",
            path.display()
        )));
    }
    let root = match std::fs::canonicalize(path) {
        Ok(root) => root,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Invalid(format!(
                "source path {} does not exist; create the folder first or fix the path",
                path.display()
            )));
        }
        Err(e) => {
            return Err(Error::Invalid(format!(
                "cannot open source path {}: {e}; check its permissions",
                path.display()
            )));
        }
    };
    if !root.is_dir() {
        return Err(Error::Invalid(format!(
            "source path {} is not a folder",
            path.display()
        )));
    }
    if root.starts_with(home) || home.starts_with(&root) {
        return Err(Error::Invalid(format!(
            "source path {} overlaps the agent's home {}; keep sources and the home apart",
            path.display(),
            home.display()
        )));
    }
    Ok(root)
}

/// A device ID in its canonical form, or why it is not one.
fn canonical_device(device_id: &str) -> Result<String, Error> {
    device_id
        .parse::<DeviceId>()
        .map(|d| d.to_string())
        .map_err(|e| Error::Invalid(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("docs").is_ok());
        assert!(validate_id("a.b_c-1").is_ok());
        for bad in ["", ".hidden", "a/b", "sp ace", &"x".repeat(65)] {
            let e = validate_id(bad).unwrap_err().to_string();
            assert!(e.contains("not valid"), "{bad}: {e}");
        }
    }

    #[test]
    fn addresses_are_checked() {
        assert_eq!(validate_address("").unwrap(), None);
        assert_eq!(
            validate_address("127.0.0.1:22000").unwrap().as_deref(),
            Some("127.0.0.1:22000")
        );
        assert_eq!(
            validate_address("[::1]:5").unwrap().as_deref(),
            Some("[::1]:5")
        );
        assert_eq!(
            validate_address("nas.local:22000").unwrap().as_deref(),
            Some("nas.local:22000")
        );
        for bad in ["nas.local", "host:0", "host:99999", ":22", "a b:1"] {
            let e = validate_address(bad).unwrap_err().to_string();
            assert!(e.contains("host:port"), "{bad}: {e}");
        }
    }

    #[test]
    fn formats_are_checked() {
        for known in crate::formats::names() {
            assert!(validate_format(known).is_ok(), "{known}");
        }
        // A format this build has no module for is refused, naming the ones it has.
        let refused = validate_format("vcard-folder").unwrap_err().to_string();
        assert!(refused.contains("\"vcard-folder\""), "{refused}");
        for known in crate::formats::names() {
            assert!(refused.contains(known), "{refused}");
        }
        assert!(
            validate_format("xml")
                .unwrap_err()
                .to_string()
                .contains("known formats")
        );
    }

    #[test]
    fn paths_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        let missing = dir.path().join("missing");
        let e = validate_path(&missing, &home).unwrap_err().to_string();
        assert!(e.contains("does not exist") && e.contains("missing"), "{e}");
        let e = validate_path(&home.join("x"), &home)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        std::fs::create_dir(home.join("inside")).unwrap();
        let e = validate_path(&home.join("inside"), &home)
            .unwrap_err()
            .to_string();
        assert!(e.contains("overlaps"), "{e}");
        assert!(
            validate_path(Path::new("rel"), &home)
                .unwrap_err()
                .to_string()
                .contains("relative")
        );
        let ok = dir.path().join("data");
        std::fs::create_dir(&ok).unwrap();
        assert_eq!(
            validate_path(&ok, &home).unwrap(),
            ok.canonicalize().unwrap()
        );
    }
}
