//! `control.proto` for a hub's home: `id`, `status`, and the devices the hub serves (`peer
//! add`, `peer list`, `peer remove`, kept in storage so every hub over it serves the same).
//! An agent's commands (sources, wait, versions…) are refused with a message saying so.
//!
//! Must not: keep state.

use std::pin::Pin;
use std::sync::Arc;

use tandem_proto::control as pb;
use tandem_proto::control::control_server::Control;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::run::RunningHub;
use crate::identity::DeviceId;

/// The control service of a running hub.
pub struct HubControl {
    hub: Arc<RunningHub>,
    started: std::time::Instant,
}

impl HubControl {
    /// Control of `hub`.
    #[must_use]
    pub fn new(hub: Arc<RunningHub>) -> HubControl {
        HubControl {
            hub,
            started: std::time::Instant::now(),
        }
    }
}

fn not_here<T>(what: &str) -> Result<Response<T>, Status> {
    Err(Status::failed_precondition(format!(
        "this home runs a hub (tandemd --role hub), which keeps no sources: {what} is a \
         command for an agent's home"
    )))
}

fn storage_status(e: super::storage::StorageError) -> Status {
    Status::unavailable(e.to_string())
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl Control for HubControl {
    async fn id(&self, _: Request<pb::IdRequest>) -> Result<Response<pb::IdReply>, Status> {
        Ok(Response::new(pb::IdReply {
            device_id: self.hub.device_id.to_string(),
            home: self.hub.home.display().to_string(),
            listen: self.hub.listen.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            // A hub serves no metrics endpoint.
            metrics: String::new(),
        }))
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let allowed = self.hub.service.allowed().await.map_err(storage_status)?;
        Ok(Response::new(pb::StatusReply {
            device_id: self.hub.device_id.to_string(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            peers: allowed
                .into_iter()
                .map(|device_id| pb::PeerStatus {
                    device_id,
                    ..pb::PeerStatus::default()
                })
                .collect(),
            ..pb::StatusReply::default()
        }))
    }

    async fn source_add(
        &self,
        _: Request<pb::SourceAddRequest>,
    ) -> Result<Response<pb::SourceStatus>, Status> {
        not_here("source add")
    }

    async fn source_list(
        &self,
        _: Request<pb::SourceListRequest>,
    ) -> Result<Response<pb::SourceListReply>, Status> {
        Ok(Response::new(pb::SourceListReply::default()))
    }

    async fn source_remove(
        &self,
        _: Request<pb::SourceRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        not_here("source remove")
    }

    async fn rescan(&self, _: Request<pb::SourceRequest>) -> Result<Response<pb::Ack>, Status> {
        not_here("rescan")
    }

    async fn pause(&self, _: Request<pb::SourceRequest>) -> Result<Response<pb::Ack>, Status> {
        not_here("pause")
    }

    async fn resume(&self, _: Request<pb::SourceRequest>) -> Result<Response<pb::Ack>, Status> {
        not_here("resume")
    }

    async fn wait(&self, _: Request<pb::WaitRequest>) -> Result<Response<pb::WaitReply>, Status> {
        not_here("wait")
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        _: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        not_here("watch")
    }

    async fn peer_add(
        &self,
        req: Request<pb::PeerAddRequest>,
    ) -> Result<Response<pb::PeerInfo>, Status> {
        let req = req.into_inner();
        let device: DeviceId =
            req.device_id
                .parse()
                .map_err(|e: crate::identity::ParseDeviceIdError| {
                    Status::invalid_argument(e.to_string())
                })?;
        self.hub
            .service
            .allow(&device.to_string())
            .await
            .map_err(storage_status)?;
        Ok(Response::new(pb::PeerInfo {
            device_id: device.to_string(),
            ..pb::PeerInfo::default()
        }))
    }

    async fn peer_list(
        &self,
        _: Request<pb::PeerListRequest>,
    ) -> Result<Response<pb::PeerListReply>, Status> {
        let allowed = self.hub.service.allowed().await.map_err(storage_status)?;
        Ok(Response::new(pb::PeerListReply {
            peers: allowed
                .into_iter()
                .map(|device_id| pb::PeerInfo {
                    device_id,
                    ..pb::PeerInfo::default()
                })
                .collect(),
        }))
    }

    async fn peer_remove(
        &self,
        req: Request<pb::PeerRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let id = req.into_inner().device_id;
        let device: DeviceId = id
            .parse()
            .map_err(|e: crate::identity::ParseDeviceIdError| {
                Status::invalid_argument(e.to_string())
            })?;
        self.hub
            .service
            .disallow(&device.to_string())
            .await
            .map_err(storage_status)?;
        Ok(Response::new(pb::Ack {
            message: format!("this hub no longer serves {device}"),
        }))
    }

    async fn conflicts(
        &self,
        _: Request<pb::SourceRequest>,
    ) -> Result<Response<pb::ConflictList>, Status> {
        not_here("conflicts")
    }

    async fn versions_list(
        &self,
        _: Request<pb::VersionsRequest>,
    ) -> Result<Response<pb::VersionList>, Status> {
        not_here("versions list")
    }

    async fn source_key(
        &self,
        _: Request<pb::SourceRequest>,
    ) -> Result<Response<pb::SourceKeyReply>, Status> {
        not_here("source key")
    }

    async fn source_share(
        &self,
        _: Request<pb::SourceShareRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        not_here("source share")
    }

    async fn source_unshare(
        &self,
        _: Request<pb::SourceShareRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        not_here("source unshare")
    }

    async fn hub_add(
        &self,
        _: Request<pb::HubAddRequest>,
    ) -> Result<Response<pb::HubInfo>, Status> {
        not_here("hub add")
    }

    async fn hub_list(
        &self,
        _: Request<pb::HubListRequest>,
    ) -> Result<Response<pb::HubListReply>, Status> {
        not_here("hub list")
    }

    async fn hub_remove(&self, _: Request<pb::PeerRequest>) -> Result<Response<pb::Ack>, Status> {
        not_here("hub remove")
    }

    async fn doctor(
        &self,
        _: Request<pb::DoctorRequest>,
    ) -> Result<Response<pb::DoctorReply>, Status> {
        not_here("doctor")
    }

    async fn peer_pending(
        &self,
        _: Request<pb::PeerListRequest>,
    ) -> Result<Response<pb::PendingPeers>, Status> {
        not_here("peer pending")
    }

    async fn source_pending(
        &self,
        _: Request<pb::SourceListRequest>,
    ) -> Result<Response<pb::SourceOffers>, Status> {
        not_here("source pending")
    }

    async fn source_accept(
        &self,
        _: Request<pb::SourceAcceptRequest>,
    ) -> Result<Response<pb::SourceStatus>, Status> {
        not_here("source accept")
    }

    async fn versions_restore(
        &self,
        _: Request<pb::VersionsRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        not_here("versions restore")
    }
}
