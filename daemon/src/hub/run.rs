//! Start-up of the hub role: identity, storage, the TLS listener and the service.
//!
//! Must not: hold anything the storage does not (a restarted hub, or another hub over the same
//! storage, serves the same).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tandem_proto::hub::hub_server::HubServer;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::service::{HubService, MAX_OBJECT_BYTES};
use super::space::Spaces;
use super::storage::{Storage, StorageError};
use crate::config::{Config, Home, HubStorage};
use crate::identity::{DeviceId, Identity};

/// Why the hub cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error(transparent)]
    Identity(#[from] crate::identity::Error),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot listen on {addr}: {source}; pick another with --listen")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::peer::tls::TlsError),
}

/// A running hub.
pub struct RunningHub {
    pub device_id: DeviceId,
    pub listen: SocketAddr,
    pub home: std::path::PathBuf,
    pub service: HubService,
    /// What the objects are kept in, for `status`.
    pub storage: String,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl RunningHub {
    /// Stops serving and waits for the connections' tasks to end.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), self.tasks.wait())
            .await
            .is_err()
        {
            warn!("hub tasks did not stop within 10 s");
        }
    }
}

/// Starts the hub of `home`, listening on `listen` (else the config's address).
///
/// # Errors
/// The config, identity or storage cannot be opened, or the address is taken.
pub async fn start(home: &Home, listen: Option<SocketAddr>) -> Result<RunningHub, HubError> {
    let config = Config::load(home)?;
    let identity = Identity::load_or_create(&home.identity_dir())?;
    let storage = Storage::open(&home.root().join("storage"), &config.hub.storage)?;
    let described = match &config.hub.storage {
        HubStorage::Local => format!("local folder {}", home.root().join("storage").display()),
        HubStorage::S3(s3) => format!("s3 bucket {} at {}", s3.bucket, s3.endpoint),
    };
    let spaces = Arc::new(Spaces::new(storage));
    let service = HubService::new(spaces.clone(), config.hub.retention);
    let addr = listen.unwrap_or(config.listen);
    let (listener, bound) = crate::peer::bind(addr)
        .await
        .map_err(|source| HubError::Listen { addr, source })?;
    let tls = crate::peer::tls::server_config(&identity)?;
    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();
    // Devices are checked on each request (`HubService::caller`), against the allowed list in
    // storage that every hub over it shares.
    let incoming = crate::peer::io::accept(listener, tls, &tasks, cancel.clone(), |_| true);
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(
            HubServer::new(service.clone())
                .max_decoding_message_size(MAX_OBJECT_BYTES + 4096)
                .max_encoding_message_size(MAX_OBJECT_BYTES + 4096),
        );
    tasks.spawn(super::gc::run(spaces, config.hub.clone(), cancel.clone()));
    let shutdown = cancel.clone();
    tasks.spawn(async move {
        if let Err(e) = server
            .serve_with_incoming_shutdown(ReceiverStream::new(incoming), shutdown.cancelled())
            .await
        {
            warn!(error = %e, "hub service stopped");
        }
    });
    info!(device = %identity.device_id, listen = %bound, storage = %described, "hub ready");
    Ok(RunningHub {
        device_id: identity.device_id,
        listen: bound,
        home: home.root().to_path_buf(),
        service,
        storage: described,
        tasks,
        cancel,
    })
}
