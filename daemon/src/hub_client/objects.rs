//! Objects of one space at one hub, moved straight to and from the store with presigned URLs
//! when the hub hands them out (S3), else through the hub's own put and get. Either way the
//! hub checks each name against the caller's membership first (`Locate` or the call itself).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tandem_proto::hub as pb;
use tandem_proto::hub::hub_client::HubClient;
use tonic::Status;
use tonic::transport::Channel;

/// A space's objects at one hub.
#[derive(Clone)]
pub(super) struct Objects {
    client: HubClient<Channel>,
    /// `None`: no HTTP client could be made; everything goes through the hub.
    http: Option<reqwest::Client>,
    space: String,
    /// The hub said it gives no URLs (a local store): go through it without asking again.
    through_hub: Arc<AtomicBool>,
    /// Bytes moved straight to and from the store, past the hub.
    direct: Arc<AtomicU64>,
}

fn http_error(what: &str, e: &reqwest::Error) -> Status {
    // A store that cannot be reached is like a hub that cannot: try again later.
    Status::unavailable(format!("{what}: {e}"))
}

impl Objects {
    pub(super) fn new(
        client: HubClient<Channel>,
        http: Option<reqwest::Client>,
        space: &str,
    ) -> Objects {
        Objects {
            through_hub: Arc::new(AtomicBool::new(http.is_none())),
            direct: Arc::new(AtomicU64::new(0)),
            client,
            http,
            space: space.to_owned(),
        }
    }

    /// Bytes moved straight to and from the store so far, past the hub.
    pub(super) fn direct_bytes(&self) -> u64 {
        self.direct.load(Ordering::Relaxed)
    }

    /// A presigned URL for the object, if the hub gives one.
    async fn url(&self, name: &str, put: bool) -> Result<Option<String>, Status> {
        if self.through_hub.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let names = vec![name.to_owned()];
        let (put_names, get_names) = if put {
            (names, Vec::new())
        } else {
            (Vec::new(), names)
        };
        let located = self
            .client
            .clone()
            .locate(pb::LocateRequest {
                space: self.space.clone(),
                put: put_names,
                get: get_names,
            })
            .await?
            .into_inner();
        let url = if put { located.put } else { located.get }
            .into_iter()
            .next()
            .map(|l| l.url)
            .filter(|u| !u.is_empty());
        if url.is_none() {
            self.through_hub.store(true, Ordering::Relaxed);
        }
        Ok(url)
    }

    /// Writes an object; with `create_only`, one already there is left as it is (and that is
    /// no error: the same name is the same object).
    pub(super) async fn put(
        &self,
        name: &str,
        data: Vec<u8>,
        create_only: bool,
    ) -> Result<(), Status> {
        let (Some(url), Some(http)) = (self.url(name, true).await?, &self.http) else {
            self.client
                .clone()
                .put(pb::PutRequest {
                    space: self.space.clone(),
                    name: name.to_owned(),
                    data,
                    create_only,
                })
                .await?;
            return Ok(());
        };
        let len = data.len() as u64;
        let mut req = http.put(url).body(data);
        if create_only {
            req = req.header(reqwest::header::IF_NONE_MATCH, "*");
        }
        let reply = req
            .send()
            .await
            .map_err(|e| http_error("writing to the hub's store", &e))?;
        match reply.status() {
            s if s.is_success() => {
                self.direct.fetch_add(len, Ordering::Relaxed);
                Ok(())
            }
            reqwest::StatusCode::PRECONDITION_FAILED | reqwest::StatusCode::CONFLICT
                if create_only =>
            {
                Ok(())
            }
            s => Err(Status::unavailable(format!(
                "the hub's store refused a write of {name}: {s}"
            ))),
        }
    }

    /// Reads an object; `None` when there is none.
    pub(super) async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, Status> {
        let (Some(url), Some(http)) = (self.url(name, false).await?, &self.http) else {
            let got = self
                .client
                .clone()
                .get(pb::GetRequest {
                    space: self.space.clone(),
                    name: name.to_owned(),
                })
                .await?
                .into_inner();
            return Ok(got.found.then_some(got.data));
        };
        let reply = http
            .get(url)
            .send()
            .await
            .map_err(|e| http_error("reading from the hub's store", &e))?;
        match reply.status() {
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let too_big = |n: u64| n > super::link::MAX_MESSAGE as u64;
                if reply.content_length().is_some_and(too_big) {
                    return Err(Status::invalid_argument(format!(
                        "{name} in the hub's store is over the size limit"
                    )));
                }
                let body = reply
                    .bytes()
                    .await
                    .map_err(|e| http_error("reading from the hub's store", &e))?;
                if body.len() > super::link::MAX_MESSAGE {
                    return Err(Status::invalid_argument(format!(
                        "{name} from the hub's store is {} bytes, over the limit",
                        body.len()
                    )));
                }
                self.direct.fetch_add(body.len() as u64, Ordering::Relaxed);
                Ok(Some(body.to_vec()))
            }
            s => Err(Status::unavailable(format!(
                "the hub's store refused a read of {name}: {s}"
            ))),
        }
    }
}
