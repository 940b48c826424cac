//! Logs to stderr and to a file in the home; `RUST_LOG` picks the level (default `info`).

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

/// Name of the log file inside the home's log folder.
pub const LOG_FILE: &str = "tandemd.log";

/// Installs the global subscriber; keep the guard alive so buffered lines reach the file.
pub fn init(log_dir: &Path) -> Result<WorkerGuard, tracing_subscriber::util::TryInitError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (file, guard) =
        tracing_appender::non_blocking(tracing_appender::rolling::never(log_dir, LOG_FILE));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_writer(std::io::stderr))
        .with(fmt::layer().with_ansi(false).with_writer(file))
        .try_init()?;
    Ok(guard)
}
