//! `hub.proto` served to devices: every request is checked against the caller's device ID
//! (from its certificate), the space's members and the one-writer layout before it reaches
//! storage.
//!
//! Must not: open a sealed object; keep state outside storage (the members cache in
//! `space` is re-read before a refusal).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tandem_proto::hub as pb;
use tandem_proto::hub::hub_server::Hub;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::names::{BadName, Object, space_prefix};
use super::space::{SpaceError, Spaces};
use super::storage::{Created, StorageError};
use crate::peer::io::PeerConnInfo;

/// The largest object a device may put through the hub (a bundle or a snapshot; chunks are
/// at most 256 KiB before sealing).
pub const MAX_OBJECT_BYTES: usize = 64 << 20;
/// Most objects one listing returns.
const LIST_LIMIT: usize = 10_000;
/// How long a presigned URL stays valid.
const PRESIGNED_FOR: Duration = Duration::from_secs(15 * 60);

/// The devices this hub serves: the hub's operator adds them (`tandemctl --home HUB peer add
/// DEVICE`), and every hub over the same storage sees the same list.
fn allowed_name(device: &str) -> String {
    format!("hub/devices/{device}")
}

/// The hub's service to devices.
#[derive(Debug, Clone)]
pub struct HubService {
    spaces: Arc<Spaces>,
    /// Told to members, who write their cursors well within it.
    retention: Duration,
}

fn status_of(e: SpaceError) -> Status {
    match e {
        SpaceError::Refused(r) => Status::permission_denied(r.to_string()),
        SpaceError::Name(n) => Status::invalid_argument(n.to_string()),
        SpaceError::Storage(s) => Status::unavailable(s.to_string()),
        SpaceError::Corrupt { .. } => Status::data_loss(e.to_string()),
        SpaceError::Busy => Status::aborted(e.to_string()),
    }
}

fn storage_status(e: StorageError) -> Status {
    Status::unavailable(e.to_string())
}

fn name_status(e: BadName) -> Status {
    Status::invalid_argument(e.to_string())
}

impl HubService {
    /// A service over the spaces in one storage.
    #[must_use]
    pub fn new(spaces: Arc<Spaces>, retention: Duration) -> HubService {
        HubService { spaces, retention }
    }

    /// Lets `device` use this hub (and every hub over the same storage).
    ///
    /// # Errors
    /// Storage fails.
    pub async fn allow(&self, device: &str) -> Result<(), StorageError> {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.spaces
            .storage()
            .put(&allowed_name(device), Bytes::from(format!("added {at}\n")))
            .await
    }

    /// Stops letting `device` use the hub.
    ///
    /// # Errors
    /// Storage fails.
    pub async fn disallow(&self, device: &str) -> Result<(), StorageError> {
        self.spaces.storage().delete(&allowed_name(device)).await
    }

    /// The devices allowed to use the hub.
    ///
    /// # Errors
    /// Storage fails.
    pub async fn allowed(&self) -> Result<Vec<String>, StorageError> {
        Ok(self
            .spaces
            .storage()
            .list("hub/devices/", None)
            .await?
            .into_iter()
            .filter_map(|l| l.name.strip_prefix("hub/devices/").map(str::to_owned))
            .collect())
    }

    /// The calling device, if the hub's operator allowed it.
    async fn caller<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let info = req
            .extensions()
            .get::<PeerConnInfo>()
            .ok_or_else(|| Status::unauthenticated("no device certificate"))?;
        let device = info.device.to_string();
        let known = self
            .spaces
            .storage()
            .exists(&allowed_name(&device))
            .await
            .map_err(storage_status)?;
        if !known {
            warn!(device = %device, addr = %info.addr, "refused a device this hub does not serve");
            return Err(Status::permission_denied(format!(
                "this hub does not serve device {device}; its operator can allow it with \
                 `tandemctl --home HUB-HOME peer add {device}`"
            )));
        }
        Ok(device)
    }

    /// The caller, checked as a member of `space`.
    async fn member<T>(&self, req: &Request<T>, space: &str) -> Result<String, Status> {
        let device = self.caller(req).await?;
        self.spaces.check(space, &device).await.map_err(|e| {
            warn!(device = %device, space, error = %e, "refused a request");
            status_of(e)
        })?;
        Ok(device)
    }

    fn members_reply(&self, space: &str, m: &super::members::Members) -> pb::Members {
        pb::Members {
            space: space.to_owned(),
            members: m.members.iter().cloned().collect(),
            removed: m.removed.iter().cloned().collect(),
            retention_s: self.retention.as_secs(),
        }
    }

    /// The whole storage name of an object the caller named within `space`.
    fn full_name(space: &str, name: &str) -> Result<(Object, String), Status> {
        let object = Object::parse(name).map_err(name_status)?;
        let prefix = space_prefix(space).map_err(name_status)?;
        Ok((object, format!("{prefix}/{name}")))
    }
}

#[tonic::async_trait]
impl Hub for HubService {
    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::Members>, Status> {
        let device = self.caller(&req).await?;
        let space = req.into_inner().space;
        let m = self
            .spaces
            .change(&space, |m| m.join(&device))
            .await
            .map_err(status_of)?;
        info!(device = %device, space = %space, "joined");
        Ok(Response::new(self.members_reply(&space, &m)))
    }

    async fn add_member(
        &self,
        req: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::Members>, Status> {
        let by = self.caller(&req).await?;
        let r = req.into_inner();
        let m = self
            .spaces
            .change(&r.space, |m| m.add(&by, &r.device))
            .await
            .map_err(status_of)?;
        Ok(Response::new(self.members_reply(&r.space, &m)))
    }

    async fn remove_member(
        &self,
        req: Request<pb::MemberRequest>,
    ) -> Result<Response<pb::Members>, Status> {
        let by = self.caller(&req).await?;
        let r = req.into_inner();
        let m = self
            .spaces
            .change(&r.space, |m| m.remove(&by, &r.device))
            .await
            .map_err(status_of)?;
        info!(by = %by, device = %r.device, space = %r.space, "member removed");
        Ok(Response::new(self.members_reply(&r.space, &m)))
    }

    async fn locate(
        &self,
        req: Request<pb::LocateRequest>,
    ) -> Result<Response<pb::Locations>, Status> {
        let device = self.member(&req, &req.get_ref().space).await?;
        let r = req.into_inner();
        let members = self.spaces.members(&r.space).await.map_err(status_of)?;
        let storage = self.spaces.storage();
        let mut put = Vec::with_capacity(r.put.len());
        for name in &r.put {
            let (object, full) = Self::full_name(&r.space, name)?;
            if !object.member_may_write(&device) {
                return Err(Status::permission_denied(format!(
                    "{device} may not write {name}"
                )));
            }
            let url = storage
                .presign(true, &full, PRESIGNED_FOR)
                .await
                .map_err(storage_status)?;
            put.push(pb::Location {
                name: name.clone(),
                url: url.unwrap_or_default(),
                expires_s: PRESIGNED_FOR.as_secs(),
            });
        }
        let mut get = Vec::with_capacity(r.get.len());
        for name in &r.get {
            let (_, full) = Self::full_name(&r.space, name)?;
            let url = storage
                .presign(false, &full, PRESIGNED_FOR)
                .await
                .map_err(storage_status)?;
            get.push(pb::Location {
                name: name.clone(),
                url: url.unwrap_or_default(),
                expires_s: PRESIGNED_FOR.as_secs(),
            });
        }
        Ok(Response::new(pb::Locations {
            own_prefix: format!("devices/{device}/"),
            chunk_prefix: "chunks/".into(),
            member_prefixes: members
                .members
                .iter()
                .map(|m| format!("devices/{m}/"))
                .collect(),
            put,
            get,
        }))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutReply>, Status> {
        let device = self.member(&req, &req.get_ref().space).await?;
        let r = req.into_inner();
        let (object, full) = Self::full_name(&r.space, &r.name)?;
        if !object.member_may_write(&device) {
            warn!(device = %device, name = %r.name, "refused a write to another member's object");
            return Err(Status::permission_denied(format!(
                "{device} may not write {}: each member writes only its own objects",
                r.name
            )));
        }
        if r.data.len() > MAX_OBJECT_BYTES {
            return Err(Status::invalid_argument(format!(
                "{} is {} bytes, over the hub's limit of {MAX_OBJECT_BYTES}",
                r.name,
                r.data.len()
            )));
        }
        let storage = self.spaces.storage();
        let existed = if object.create_only() {
            storage
                .create(&full, Bytes::from(r.data))
                .await
                .map_err(storage_status)?
                == Created::Existed
        } else {
            storage
                .put(&full, Bytes::from(r.data))
                .await
                .map_err(storage_status)?;
            false
        };
        Ok(Response::new(pb::PutReply { existed }))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetReply>, Status> {
        self.member(&req, &req.get_ref().space).await?;
        let r = req.into_inner();
        let (_, full) = Self::full_name(&r.space, &r.name)?;
        let got = self
            .spaces
            .storage()
            .get(&full)
            .await
            .map_err(storage_status)?;
        Ok(Response::new(pb::GetReply {
            found: got.is_some(),
            data: got.map(|b| b.to_vec()).unwrap_or_default(),
        }))
    }

    async fn list(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::ListReply>, Status> {
        self.member(&req, &req.get_ref().space).await?;
        let r = req.into_inner();
        let prefix = space_prefix(&r.space).map_err(name_status)?;
        // A listing is of one folder of the layout: a member's objects or the chunks.
        let folder = r.prefix.trim_end_matches('/');
        let parts: Vec<&str> = folder.split('/').collect();
        let allowed = matches!(
            parts.as_slice(),
            ["chunks"]
                | [
                    "devices",
                    _,
                    "bundles" | "snapshots" | "bundle-refs" | "snapshot-refs" | "handovers"
                ]
        ) && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !allowed {
            return Err(Status::invalid_argument(format!(
                "{:?} is not a folder of a space that can be listed",
                r.prefix
            )));
        }
        let after = (!r.after.is_empty()).then(|| format!("{prefix}/{}", r.after));
        let listed = self
            .spaces
            .storage()
            .list(&format!("{prefix}/{folder}/"), after.as_deref())
            .await
            .map_err(storage_status)?;
        let limit = match r.limit {
            0 => LIST_LIMIT,
            n => (n as usize).min(LIST_LIMIT),
        };
        let more = listed.len() > limit;
        let objects = listed
            .into_iter()
            .take(limit)
            .filter_map(|l| {
                l.name
                    .strip_prefix(&format!("{prefix}/"))
                    .map(|name| pb::ObjectInfo {
                        name: name.to_owned(),
                        size: l.size,
                    })
            })
            .collect();
        Ok(Response::new(pb::ListReply { objects, more }))
    }

    async fn has(&self, req: Request<pb::HasRequest>) -> Result<Response<pb::HasReply>, Status> {
        self.member(&req, &req.get_ref().space).await?;
        let r = req.into_inner();
        if r.names.len() > LIST_LIMIT {
            return Err(Status::invalid_argument(format!(
                "{} names asked for at once, over {LIST_LIMIT}",
                r.names.len()
            )));
        }
        let mut present = Vec::with_capacity(r.names.len());
        for name in &r.names {
            let (_, full) = Self::full_name(&r.space, name)?;
            present.push(
                self.spaces
                    .storage()
                    .exists(&full)
                    .await
                    .map_err(storage_status)?,
            );
        }
        Ok(Response::new(pb::HasReply { present }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteReply>, Status> {
        let device = self.member(&req, &req.get_ref().space).await?;
        let r = req.into_inner();
        let (object, full) = Self::full_name(&r.space, &r.name)?;
        // Chunks are collected by the hub in two phases, never deleted by one member.
        if object.owner() != Some(device.as_str()) {
            return Err(Status::permission_denied(format!(
                "{device} may not delete {}: only its own objects",
                r.name
            )));
        }
        self.spaces
            .storage()
            .delete(&full)
            .await
            .map_err(storage_status)?;
        Ok(Response::new(pb::DeleteReply {}))
    }
}
