//! Finding the agent: resolve the home directory and open a gRPC channel over its control socket.
//!
//! Must not: issue RPCs or print; callers decide what a failure means for the user.

use std::error::Error as StdError;
use std::io;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tandem_proto::control::control_client::ControlClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::Failure;

/// File name of the control socket inside the agent's home.
const SOCKET_NAME: &str = "control.sock";

/// The agent's home: `--home`/`TANDEM_HOME`, else the same platform default `tandemd` uses.
///
/// # Errors
/// A usage failure when no home was given and the platform has no data directory (no `$HOME`).
pub fn resolve_home(given: Option<PathBuf>) -> Result<PathBuf, Failure> {
    let home = match given {
        Some(home) => home,
        None => directories::ProjectDirs::from("", "", "tandem")
            .map(|dirs| dirs.data_local_dir().to_path_buf())
            .ok_or_else(|| {
                Failure::Usage(
                    "cannot find a default home directory (is $HOME set?); pass --home DIR or set TANDEM_HOME"
                        .to_owned(),
                )
            })?,
    };
    // Absolute, so the "start it with" hint works from any directory.
    std::path::absolute(&home)
        .map_err(|err| Failure::Usage(format!("--home {}: {err}", home.display())))
}

/// Path of the control socket under `home`.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join(SOCKET_NAME)
}

/// Opens a client on `<home>/control.sock`.
///
/// # Errors
/// [`Failure::NoAgent`] when nothing listens there; otherwise a general failure naming the socket.
pub async fn connect(home: &Path) -> Result<ControlClient<Channel>, Failure> {
    let socket = socket_path(home);
    // The URI is required by tonic but never dialled: the connector below ignores it.
    let endpoint = Endpoint::try_from("http://[::]:50051")
        .map_err(|err| Failure::Other(anyhow::Error::new(err).context("building the endpoint")))?;
    let path = socket.clone();
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|err| match io_error_kind(&err) {
            Some(io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => Failure::NoAgent {
                home: home.to_path_buf(),
            },
            Some(io::ErrorKind::PermissionDenied) => Failure::Other(anyhow::anyhow!(
                "cannot open the control socket {}: permission denied; run tandemctl as the user that runs tandemd",
                socket.display()
            )),
            _ => Failure::Other(
                anyhow::Error::new(err)
                    .context(format!("connecting to the control socket {}", socket.display())),
            ),
        })?;
    Ok(ControlClient::new(channel))
}

/// The kind of the first `io::Error` in an error's source chain, if any.
fn io_error_kind(err: &(dyn StdError + 'static)) -> Option<io::ErrorKind> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_socket_means_no_agent() {
        let home = tempfile::tempdir().expect("temp dir");
        let result = connect(home.path()).await;
        assert!(
            matches!(result, Err(Failure::NoAgent { .. })),
            "{:?}",
            result.err()
        );
    }

    #[tokio::test]
    async fn stale_socket_means_no_agent() {
        let home = tempfile::tempdir().expect("temp dir");
        // A socket file left behind by an agent that died: connecting is refused.
        drop(std::os::unix::net::UnixListener::bind(socket_path(home.path())).expect("bind"));
        let result = connect(home.path()).await;
        assert!(
            matches!(result, Err(Failure::NoAgent { .. })),
            "{:?}",
            result.err()
        );
    }

    #[test]
    fn explicit_home_is_made_absolute() {
        let home = resolve_home(Some(PathBuf::from("rel/home"))).expect("resolves");
        assert!(home.is_absolute());
        assert!(home.ends_with("rel/home"));
    }
}
