//! Logs to stderr and to files in the home; `RUST_LOG` picks the level (default `info`).
//!
//! On stderr: colours and times on a terminal; under systemd (`JOURNAL_STREAM`, stderr not a
//! terminal) plain lines without a time, which the journal adds; piped elsewhere, plain lines
//! with times. In the home: `logs/tandemd.log`, owner-only, rotated when it passes 10 MiB, the
//! last five kept as `tandemd.log.1` … `.5` (`file-rotate`).

use std::io::IsTerminal;
use std::path::Path;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt};

/// Name of the log file inside the home's log folder.
pub const LOG_FILE: &str = "tandemd.log";
/// Size past which the log file is rotated.
const ROTATE_AT: usize = 10 << 20;
/// Rotated files kept beside the current one.
const KEEP: usize = 5;

/// How lines on stderr look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// A person at a terminal: colours and times.
    Terminal,
    /// systemd's journal: no colours, no time (the journal stamps each line).
    Journal,
    /// A pipe or a file: no colours, with times.
    Plain,
}

impl Console {
    /// The style for a stderr that is (or is not) a terminal, with `JOURNAL_STREAM` as set.
    pub fn choose(is_terminal: bool, journal_stream: Option<&str>) -> Console {
        match (is_terminal, journal_stream.filter(|s| !s.is_empty())) {
            (true, _) => Console::Terminal,
            (false, Some(_)) => Console::Journal,
            (false, None) => Console::Plain,
        }
    }
}

/// Installs the global subscriber; keep the guard alive so buffered lines reach the file.
pub fn init(log_dir: &Path) -> Result<WorkerGuard, tracing_subscriber::util::TryInitError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // What file-rotate opens with by default, owner-only: logs name paths and devices.
    let mut open = std::fs::OpenOptions::new();
    open.read(true).create(true).append(true);
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(0o600);
    }
    let file = FileRotate::new(
        log_dir.join(LOG_FILE),
        AppendCount::new(KEEP),
        ContentLimit::BytesSurpassed(ROTATE_AT),
        Compression::None,
        Some(open),
    );
    let (file, guard) = tracing_appender::non_blocking(file);
    let journal = std::env::var("JOURNAL_STREAM").ok();
    let console: Box<dyn Layer<Registry> + Send + Sync> =
        match Console::choose(std::io::stderr().is_terminal(), journal.as_deref()) {
            Console::Terminal => fmt::layer().with_writer(std::io::stderr).boxed(),
            Console::Journal => fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .without_time()
                .boxed(),
            Console::Plain => fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .boxed(),
        };
    tracing_subscriber::registry()
        .with(console)
        .with(filter)
        .with(fmt::layer().with_ansi(false).with_writer(file))
        .try_init()?;
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_style_follows_where_it_goes() {
        assert_eq!(Console::choose(true, None), Console::Terminal);
        assert_eq!(Console::choose(true, Some("8:1234")), Console::Terminal);
        assert_eq!(Console::choose(false, Some("8:1234")), Console::Journal);
        assert_eq!(Console::choose(false, Some("")), Console::Plain);
        assert_eq!(Console::choose(false, None), Console::Plain);
    }
}
