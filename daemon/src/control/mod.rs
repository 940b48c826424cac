//! `control.proto` on the owner-only Unix socket in the home; the events behind `watch`.
//!
//! Translates requests into [`AgentHandle`] calls and agent types into protobuf replies.
//! Must not: keep state or contain business rules.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use tandem_proto::control as pb;
use tandem_proto::control::control_server::{Control, ControlServer};
use tokio::net::UnixListener;
use tokio_stream::wrappers::{
    BroadcastStream, UnixListenerStream, errors::BroadcastStreamRecvError,
};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::agent::{AddSource, AgentHandle, Error};

/// Why the control socket could not be served.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve the control socket {path}: {reason}")]
pub struct ServeError {
    path: std::path::PathBuf,
    reason: String,
}
use crate::events::{Event, unix_ms_now};
use crate::hub_client::HubBoard;
use crate::peer::Board;
use crate::source::{SourceStatus, State};
use crate::sync_state::{self, Members};

/// Serves the control socket until `shutdown` is cancelled; removes the socket afterwards.
///
/// # Errors
/// The socket cannot be made or served.
pub async fn serve(
    path: &Path,
    agent: AgentHandle,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    serve_service(path, ControlService { agent }, shutdown).await
}

/// How long calls still in flight at shutdown may go on before they are cut.
const CALLS_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Serves `service` (an agent's, or a hub's) on the control socket at `path` until
/// `shutdown`, owner-only; removes the socket afterwards.
///
/// # Errors
/// The socket cannot be made or served.
pub async fn serve_service(
    path: &Path,
    service: impl Control,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let err = |reason: String| ServeError {
        path: path.to_path_buf(),
        reason,
    };
    // The caller holds the home's lock, so a socket file left here is from a dead agent.
    match tokio::fs::remove_file(path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        err(format!(
            "{e} (a Unix socket path must be under 108 bytes; use a shorter --home)"
        ))
    })?;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .await
        .map_err(|e| err(e.to_string()))?;
    tracing::info!(socket = %path.display(), "control socket ready");
    let server = tonic::transport::Server::builder()
        .add_service(ControlServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown.cancelled());
    // A graceful shutdown waits for calls in flight, and `watch`, `status --follow` or a long
    // `wait` never end on their own: they get a moment, then are cut, so a stop stays quick.
    let cut = async {
        shutdown.cancelled().await;
        tokio::time::sleep(CALLS_GRACE).await;
    };
    let result = tokio::select! {
        served = server => served.map_err(|e| err(e.to_string())),
        () = cut => Ok(()),
    };
    // Leaving the socket behind would only mislead the next `tandemctl` into connecting.
    let _ = tokio::fs::remove_file(path).await;
    result
}

/// The offers on the board that still stand: a source shared back with the device since is
/// no longer offered.
fn offers(board: &crate::peer::Board, statuses: &[SourceStatus]) -> Vec<pb::SourceOffer> {
    board
        .offers
        .iter()
        .filter_map(|((source, device), o)| {
            let here = statuses.iter().find(|s| s.id == *source);
            if here.is_some_and(|s| s.peers.contains(device)) {
                return None;
            }
            Some(pb::SourceOffer {
                source: source.clone(),
                device_id: device.clone(),
                kind: o.kind.clone(),
                format: o.format.clone(),
                last_seen_unix_ms: o.last_seen_unix_ms,
                have: here.is_some(),
            })
        })
        .collect()
}

struct ControlService {
    agent: AgentHandle,
}

impl ControlService {
    /// Adds a source (`source add`, `source accept`) and answers with its status.
    async fn add(&self, req: AddSource) -> Result<Response<pb::SourceStatus>, Status> {
        let status = self.agent.add_source(req).await.map_err(status_of)?;
        Ok(Response::new(source_pb(
            &status,
            &self.agent.peers.board(),
            &self.agent.hubs.board(),
        )))
    }
}

fn status_of(e: Error) -> Status {
    match e {
        Error::UnknownSource(_) | Error::UnknownPeer(_) | Error::NotFound(_) => {
            Status::not_found(e.to_string())
        }
        Error::Invalid(_) => Status::invalid_argument(e.to_string()),
        Error::ShuttingDown => Status::unavailable(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

/// Progress of one source with each device it is shared with.
fn progress_pb(s: &SourceStatus, board: &Board, hubs: &HubBoard) -> Vec<pb::PeerProgress> {
    s.peers
        .iter()
        .map(|device| {
            let peer = board.peers.get(device);
            let connected = peer.is_some_and(|p| p.connected);
            let p = peer
                .and_then(|p| p.sources.get(&s.id))
                .cloned()
                .unwrap_or_default();
            pb::PeerProgress {
                device_id: device.clone(),
                connected,
                in_sync: sync_state::in_sync_with(s, device, board, hubs),
                needed_items: p.needed_items,
                needed_bytes: p.needed_bytes,
                in_flight: p.in_flight,
                done_items: p.done_items,
                fetched_bytes: p.fetched_bytes,
                reused_bytes: p.reused_bytes,
                sent_items: p.sent_items,
                moved_folders: p.moved_folders,
                expanded_moves: p.expanded_moves,
                // A source refused with this peer says why before anything else.
                last_error: if p.refused.is_empty() {
                    p.last_error
                } else {
                    p.refused
                },
            }
        })
        .collect()
}

fn source_pb(s: &SourceStatus, board: &Board, hubs: &HubBoard) -> pb::SourceStatus {
    pb::SourceStatus {
        progress: progress_pb(s, board, hubs),
        id: s.id.clone(),
        path: s.path.display().to_string(),
        format: s.format.clone(),
        kind: crate::formats::by_name(&s.format)
            .map(|f| f.kind().as_str().to_owned())
            .unwrap_or_default(),
        state: s.state.as_str().to_owned(),
        error: s.error.clone().unwrap_or_default(),
        files: s.totals.files,
        directories: s.totals.directories,
        symlinks: s.totals.symlinks,
        bytes: s.totals.bytes,
        sequence: s.totals.sequence,
        hashed_bytes: s.hashed_bytes,
        scans: s.scans,
        last_scan_unix_ms: s.last_scan_unix_ms,
        item_errors: s
            .item_errors
            .iter()
            .map(|(item, message)| pb::ItemError {
                item: item.clone(),
                message: message.clone(),
            })
            .collect(),
        peers: s.peers.clone(),
    }
}

fn peer_pb(p: crate::store::PeerRow) -> pb::PeerInfo {
    pb::PeerInfo {
        device_id: p.device_id,
        address: p.address.unwrap_or_default(),
        added_unix_ms: p.added_unix_ms,
    }
}

fn event_pb(e: Event) -> pb::Event {
    pb::Event {
        unix_ms: e.unix_ms,
        source: e.source,
        kind: e.kind.as_str().to_owned(),
        item: e.item,
        detail: e.detail,
        sequence: e.sequence,
    }
}

/// Empty id in a request means "every source".
fn target(id: String) -> Option<String> {
    if id.is_empty() { None } else { Some(id) }
}

fn ack(verb: &str, n: usize) -> Response<pb::Ack> {
    let what = if n == 1 {
        "source".to_owned()
    } else {
        format!("{n} sources")
    };
    Response::new(pb::Ack {
        message: format!("{verb} {what}"),
    })
}

/// The reply to `wait`: in sync, or each thing still pending, and the devices not reached.
fn wait_reply(pending: &[sync_state::Pending]) -> pb::WaitReply {
    let mut unreached: Vec<pb::Unreached> = Vec::new();
    for p in pending {
        let (Some(device), Some(reason)) = (&p.device, p.why.unreached_reason()) else {
            continue;
        };
        if !unreached.iter().any(|u| u.device_id == *device) {
            unreached.push(pb::Unreached {
                device_id: device.clone(),
                reason,
            });
        }
    }
    pb::WaitReply {
        in_sync: pending.is_empty(),
        pending: pending.iter().map(ToString::to_string).collect(),
        unreached,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl Control for ControlService {
    async fn id(&self, _: Request<pb::IdRequest>) -> Result<Response<pb::IdReply>, Status> {
        let info = &self.agent.info;
        Ok(Response::new(pb::IdReply {
            device_id: info.device_id.to_string(),
            home: info.home.display().to_string(),
            listen: info.listen.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            metrics: info.metrics.map(|a| a.to_string()).unwrap_or_default(),
        }))
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let statuses = self.agent.statuses().await.map_err(status_of)?;
        let board = self.agent.peers.board();
        let hubs = self.agent.hubs.board();
        let info = &self.agent.info;
        Ok(Response::new(pb::StatusReply {
            device_id: info.device_id.to_string(),
            uptime_ms: u64::try_from(info.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            hashed_bytes: statuses.iter().map(|s| s.hashed_bytes).sum(),
            sources: statuses
                .iter()
                .map(|s| source_pb(s, &board, &hubs))
                .collect(),
            peers: board
                .peers
                .iter()
                .map(|(device, p)| pb::PeerStatus {
                    device_id: device.clone(),
                    address: p.address.clone().unwrap_or_default(),
                    connected: p.connected,
                    remote_addr: p.remote_addr.clone(),
                    last_error: p.last_error.clone(),
                    refused: p.refused,
                })
                .collect(),
            refused_devices: board.refused_devices(),
            hubs: hubs_pb(&hubs),
        }))
    }

    async fn source_add(
        &self,
        req: Request<pb::SourceAddRequest>,
    ) -> Result<Response<pb::SourceStatus>, Status> {
        let req = req.into_inner();
        let format = if req.format.is_empty() {
            "files".to_owned()
        } else {
            req.format
        };
        self.add(AddSource {
            id: req.id,
            path: req.path.into(),
            format,
            peers: req.peers,
            key: req.key,
        })
        .await
    }

    async fn source_list(
        &self,
        _: Request<pb::SourceListRequest>,
    ) -> Result<Response<pb::SourceListReply>, Status> {
        let statuses = self.agent.statuses().await.map_err(status_of)?;
        let board = self.agent.peers.board();
        let hubs = self.agent.hubs.board();
        Ok(Response::new(pb::SourceListReply {
            sources: statuses
                .iter()
                .map(|s| source_pb(s, &board, &hubs))
                .collect(),
        }))
    }

    async fn source_remove(
        &self,
        req: Request<pb::SourceRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(Status::invalid_argument("name the source to remove"));
        }
        self.agent
            .remove_source(id.clone())
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::Ack {
            message: format!("removed source {id}; its folder was left as it is"),
        }))
    }

    async fn rescan(&self, req: Request<pb::SourceRequest>) -> Result<Response<pb::Ack>, Status> {
        let n = self
            .agent
            .rescan(target(req.into_inner().id))
            .await
            .map_err(status_of)?;
        Ok(ack("rescanning", n))
    }

    async fn pause(&self, req: Request<pb::SourceRequest>) -> Result<Response<pb::Ack>, Status> {
        let n = self
            .agent
            .pause(target(req.into_inner().id))
            .await
            .map_err(status_of)?;
        Ok(ack("paused", n))
    }

    async fn resume(&self, req: Request<pb::SourceRequest>) -> Result<Response<pb::Ack>, Status> {
        let n = self
            .agent
            .resume(target(req.into_inner().id))
            .await
            .map_err(status_of)?;
        Ok(ack("resumed", n))
    }

    async fn wait(&self, req: Request<pb::WaitRequest>) -> Result<Response<pb::WaitReply>, Status> {
        let req = req.into_inner();
        let timeout_ms = req.timeout_ms;
        let members = if req.connected_only {
            Members::Connected
        } else {
            Members::All
        };
        let deadline = (timeout_ms > 0)
            .then(|| tokio::time::Instant::now() + Duration::from_millis(timeout_ms));
        let receivers = self.agent.subscribe().await.map_err(status_of)?;
        let began = std::time::Instant::now();
        loop {
            // Register interest before reading, so a change between the read and the await
            // still wakes us.
            let notified = self.agent.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let statuses: Vec<SourceStatus> =
                receivers.iter().map(|r| r.borrow().clone()).collect();
            let pending = sync_state::pending(
                &statuses,
                &self.agent.peers.board(),
                &self.agent.hubs.board(),
                Some(began),
                members,
            );
            // A stopped source will not sync by waiting; say so at once.
            let stopped = statuses.iter().any(|s| s.state == State::Error);
            if pending.is_empty() || stopped {
                return Ok(Response::new(wait_reply(&pending)));
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Ok(Response::new(wait_reply(&pending)));
                    }
                }
                None => notified.await,
            }
        }
    }

    async fn peer_add(
        &self,
        req: Request<pb::PeerAddRequest>,
    ) -> Result<Response<pb::PeerInfo>, Status> {
        let req = req.into_inner();
        let row = self
            .agent
            .add_peer(&req.device_id, &req.address)
            .await
            .map_err(status_of)?;
        Ok(Response::new(peer_pb(row)))
    }

    async fn peer_list(
        &self,
        _: Request<pb::PeerListRequest>,
    ) -> Result<Response<pb::PeerListReply>, Status> {
        let peers = self.agent.peers().await.map_err(status_of)?;
        Ok(Response::new(pb::PeerListReply {
            peers: peers.into_iter().map(peer_pb).collect(),
        }))
    }

    async fn peer_remove(
        &self,
        req: Request<pb::PeerRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let id = req.into_inner().device_id;
        self.agent.remove_peer(&id).await.map_err(status_of)?;
        Ok(Response::new(pb::Ack {
            message: format!("removed peer {id}"),
        }))
    }

    async fn conflicts(
        &self,
        req: Request<pb::SourceRequest>,
    ) -> Result<Response<pb::ConflictList>, Status> {
        let found = self
            .agent
            .conflicts(target(req.into_inner().id))
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::ConflictList {
            conflicts: found
                .into_iter()
                .map(|c| pb::Conflict {
                    source: c.source,
                    path: c.item,
                    original: c.original,
                    device: c.device,
                    when: c.when,
                    field: c.field,
                    kept: c.kept,
                    lost: c.lost,
                })
                .collect(),
        }))
    }

    async fn versions_list(
        &self,
        req: Request<pb::VersionsRequest>,
    ) -> Result<Response<pb::VersionList>, Status> {
        let req = req.into_inner();
        let path = (!req.path.is_empty()).then_some(req.path);
        let versions = self
            .agent
            .versions(&req.source, path)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::VersionList {
            versions: versions
                .into_iter()
                .map(|v| pb::VersionInfo {
                    path: v.path,
                    when: v.when,
                    size: v.size,
                })
                .collect(),
        }))
    }

    async fn versions_restore(
        &self,
        req: Request<pb::VersionsRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let req = req.into_inner();
        if req.path.is_empty() {
            return Err(Status::invalid_argument("name the item path to restore"));
        }
        let at = (!req.at.is_empty()).then_some(req.at);
        let v = self
            .agent
            .restore_version(&req.source, req.path.clone(), at)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::Ack {
            message: format!("restored {} as it was replaced at {} UTC", v.path, v.when),
        }))
    }

    async fn source_key(
        &self,
        req: Request<pb::SourceRequest>,
    ) -> Result<Response<pb::SourceKeyReply>, Status> {
        let id = req.into_inner().id;
        let key = self.agent.source_key(&id).await.map_err(status_of)?;
        Ok(Response::new(pb::SourceKeyReply {
            id,
            key: key.to_text(),
            generation: key.generation,
        }))
    }

    async fn source_share(
        &self,
        req: Request<pb::SourceShareRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let req = req.into_inner();
        self.agent
            .share_source(&req.id, &req.device_id)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::Ack {
            message: format!("source {} is shared with {}", req.id, req.device_id),
        }))
    }

    async fn source_unshare(
        &self,
        req: Request<pb::SourceShareRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let req = req.into_inner();
        self.agent
            .unshare_source(&req.id, &req.device_id)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::Ack {
            message: format!(
                "{} is removed from source {}; what is written from now on uses a new key",
                req.device_id, req.id
            ),
        }))
    }

    async fn hub_add(
        &self,
        req: Request<pb::HubAddRequest>,
    ) -> Result<Response<pb::HubInfo>, Status> {
        let req = req.into_inner();
        let row = self
            .agent
            .add_hub(&req.address, &req.device_id)
            .await
            .map_err(status_of)?;
        Ok(Response::new(hub_pb(row)))
    }

    async fn hub_list(
        &self,
        _: Request<pb::HubListRequest>,
    ) -> Result<Response<pb::HubListReply>, Status> {
        let hubs = self.agent.hubs().await.map_err(status_of)?;
        Ok(Response::new(pb::HubListReply {
            hubs: hubs.into_iter().map(hub_pb).collect(),
        }))
    }

    async fn peer_pending(
        &self,
        _: Request<pb::PeerListRequest>,
    ) -> Result<Response<pb::PendingPeers>, Status> {
        let board = self.agent.peers.board();
        Ok(Response::new(pb::PendingPeers {
            peers: board
                .pending
                .iter()
                // A device added since it was seen is no longer pending.
                .filter(|(device, _)| !board.peers.contains_key(*device))
                .map(|(device, p)| pb::PendingPeer {
                    device_id: device.clone(),
                    address: p.address.clone(),
                    last_seen_unix_ms: p.last_seen_unix_ms,
                })
                .collect(),
        }))
    }

    async fn source_pending(
        &self,
        _: Request<pb::SourceListRequest>,
    ) -> Result<Response<pb::SourceOffers>, Status> {
        let statuses = self.agent.statuses().await.map_err(status_of)?;
        Ok(Response::new(pb::SourceOffers {
            offers: offers(&self.agent.peers.board(), &statuses),
        }))
    }

    async fn source_accept(
        &self,
        req: Request<pb::SourceAcceptRequest>,
    ) -> Result<Response<pb::SourceStatus>, Status> {
        let req = req.into_inner();
        let statuses = self.agent.statuses().await.map_err(status_of)?;
        let offered: Vec<pb::SourceOffer> = offers(&self.agent.peers.board(), &statuses)
            .into_iter()
            .filter(|o| o.source == req.id)
            .collect();
        let Some(first) = offered.first() else {
            return Err(Status::not_found(format!(
                "no device offers a source {:?}; `tandemctl source pending` lists what is offered",
                req.id
            )));
        };
        if first.have {
            return Err(Status::already_exists(format!(
                "source {:?} is here already; share it with the device instead: tandemctl source share {} {}",
                req.id, req.id, first.device_id
            )));
        }
        let format = if req.format.is_empty() {
            first.format.clone()
        } else {
            req.format
        };
        self.add(AddSource {
            id: req.id,
            path: req.path.into(),
            format,
            peers: offered.iter().map(|o| o.device_id.clone()).collect(),
            key: String::new(),
        })
        .await
    }

    async fn doctor(
        &self,
        _: Request<pb::DoctorRequest>,
    ) -> Result<Response<pb::DoctorReply>, Status> {
        let inputs = crate::doctor::Inputs {
            home: self.agent.info.home.clone(),
            sources: self.agent.statuses().await.map_err(status_of)?,
            peers: self.agent.peers.board().peers.into_iter().collect(),
            hubs: self.agent.hubs.board().hubs.into_iter().collect(),
        };
        let findings = crate::doctor::run(inputs).await;
        Ok(Response::new(pb::DoctorReply {
            findings: findings
                .into_iter()
                .map(|f| pb::Finding {
                    check: f.check.to_owned(),
                    level: f.level.as_str().to_owned(),
                    subject: f.subject,
                    message: f.message,
                    fix: f.fix,
                })
                .collect(),
        }))
    }

    async fn hub_remove(&self, req: Request<pb::PeerRequest>) -> Result<Response<pb::Ack>, Status> {
        let id = req.into_inner().device_id;
        self.agent.remove_hub(&id).await.map_err(status_of)?;
        Ok(Response::new(pb::Ack {
            message: format!("removed hub {id}"),
        }))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        _: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let stream = BroadcastStream::new(self.agent.events.subscribe()).map(|item| match item {
            Ok(event) => Ok(event_pb(event)),
            Err(BroadcastStreamRecvError::Lagged(n)) => Ok(pb::Event {
                unix_ms: unix_ms_now(),
                kind: "lagged".to_owned(),
                detail: format!("{n} events were dropped because this watcher fell behind"),
                ..pb::Event::default()
            }),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

fn hub_pb(row: crate::store::HubRow) -> pb::HubInfo {
    pb::HubInfo {
        device_id: row.device_id,
        address: row.address,
        added_unix_ms: row.added_unix_ms,
    }
}

fn hubs_pb(hubs: &HubBoard) -> Vec<pb::HubStatus> {
    hubs.hubs
        .iter()
        .map(|(device, h)| pb::HubStatus {
            device_id: device.clone(),
            address: h.address.clone(),
            connected: h.connected,
            last_error: h.last_error.clone(),
            sources: h
                .sources
                .iter()
                .map(|(id, s)| pb::HubSourceStatus {
                    id: id.clone(),
                    uploaded: s.uploaded,
                    uploaded_bundles: s.uploaded_bundles,
                    uploaded_bytes: s.uploaded_bytes,
                    direct_bytes: s.direct_bytes,
                    error: s.error.clone(),
                    members: s
                        .members
                        .iter()
                        .map(|(m, p)| pb::HubMemberStatus {
                            device_id: m.clone(),
                            latest: p.latest,
                            applied: p.applied,
                            needed_items: p.needed_items,
                            direct: p.direct,
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect()
}
