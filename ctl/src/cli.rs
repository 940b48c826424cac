//! Command-line definitions: every flag and subcommand of `tandemctl`, with its help text and
//! its parsing, in one place.
//!
//! Must not: connect to the agent or print anything; it only turns argv into plain values.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Talk to the local tandemd agent: sources, status, live events.
#[derive(Debug, Parser)]
#[command(name = "tandemctl", version, about, propagate_version = true)]
pub struct Cli {
    /// Home directory of the agent to talk to; its control socket is DIR/control.sock
    /// [default: the platform's data directory, e.g. ~/.local/share/tandem]
    #[arg(long, global = true, env = "TANDEM_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// Print the agent's reply as JSON (one object per line for `watch`)
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// One subcommand; each is a single call to the agent.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print this device's ID
    Id,
    /// Show every source's state, counters, peers and item errors, with a bar per running
    /// sync on a terminal
    Status {
        /// Keep a live view until interrupted (plain lines of what changes when piped)
        #[arg(long)]
        follow: bool,
    },
    /// Add, list or remove sources
    #[command(subcommand)]
    Source(SourceCommand),
    /// Add, list or remove the devices this device talks to
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Add, list or remove the hubs this device leaves sealed bundles at
    #[command(subcommand)]
    Hub(HubCommand),
    /// List or restore kept versions of files replaced or deleted by other devices
    #[command(subcommand)]
    Versions(VersionsCommand),
    /// List conflict copies: losing versions kept beside the winner (all sources when ID is omitted)
    Conflicts(OptionalSource),
    /// Scan a source now (all sources when ID is omitted)
    Rescan(OptionalSource),
    /// Stop syncing a source (all sources when ID is omitted)
    Pause(OptionalSource),
    /// Start syncing a paused source again (all sources when ID is omitted)
    Resume(OptionalSource),
    /// Wait until every source is in sync with every device it is shared with; exits 4 if the
    /// timeout passes first, naming each device not reached and why
    Wait {
        /// Give up after this many seconds (fractions allowed); without it, wait as long as it takes
        #[arg(long, value_name = "SECONDS", value_parser = parse_timeout)]
        timeout: Option<Duration>,
        /// Only wait for the devices connected right now (a device not reached is not waited for)
        #[arg(long)]
        connected: bool,
    },
    /// Print live events, one line each, until interrupted (times are UTC)
    Watch,
    /// Check what makes sync fail in the field (inotify limit, file systems, the home, peers,
    /// hubs, disk space) and say what to do; exits 5 when something fails
    Doctor,
    /// Install or remove the agent as a service (systemd on Linux, launchd on macOS)
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell)
    Completions {
        /// The shell to complete for
        shell: clap_complete::Shell,
    },
    /// Write the manual pages of tandemctl and its subcommands (for packagers)
    #[command(hide = true)]
    Man {
        /// Folder to write NAME.1 files into
        dir: PathBuf,
    },
}

/// `service …` subcommands. They change this machine, not the agent, so they run without one.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Write the service for this platform, enable it and start it; prints each step
    Install(ServiceArgs),
    /// Stop and disable the service and remove what `install` wrote (the agent's home and
    /// its data stay)
    Uninstall(ServiceArgs),
}

/// What `service install` and `service uninstall` act on.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// The service of the user running this (systemd --user, a launchd agent) instead of the
    /// system's (which runs as the user `tandem` and needs root)
    #[arg(long)]
    pub user: bool,
    /// Print what would be written and run, and change nothing
    #[arg(long)]
    pub dry_run: bool,
}

/// `source …` subcommands.
#[derive(Debug, Subcommand)]
pub enum SourceCommand {
    /// Start syncing the directory PATH as source ID
    Add {
        /// Name of the source; the same on every device that shares it
        id: String,
        /// Directory to sync; a relative path is taken from the current directory
        path: PathBuf,
        /// How the agent reads the source (e.g. files, vcard, ical, csv)
        #[arg(long, default_value = "files", value_name = "F")]
        format: String,
        /// Device to share the source with; repeat for several
        #[arg(long = "peer", value_name = "DEVICE")]
        peers: Vec<String>,
        /// The source's key, from `tandemctl source key ID` on a device that has the source;
        /// without it this device makes a new key (it is the source's first)
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
    },
    /// Print the key of source ID, to give to `source add … --key` on another member
    Key {
        /// Source
        id: String,
    },
    /// Share source ID with one more device
    Share {
        /// Source
        id: String,
        /// The device's ID
        device: String,
    },
    /// Remove a device from source ID: its hubs refuse it, and what is written from now on
    /// uses a new key it does not get
    Unshare {
        /// Source
        id: String,
        /// The device's ID
        device: String,
    },
    /// List the sources
    List,
    /// List sources connected devices share with this one that it does not have
    Pending,
    /// Take an offered source: keep it at PATH, shared with every device offering it
    Accept {
        /// Name of the source, as `source pending` shows it
        id: String,
        /// Where to keep it here; a relative path is taken from the current directory
        path: PathBuf,
        /// How to keep it here [default: the format of the device offering it]
        #[arg(long, value_name = "F")]
        format: Option<String>,
    },
    /// Stop syncing source ID and forget it (the files stay on disk)
    Remove {
        /// Source to remove
        id: String,
    },
}

/// `versions …` subcommands.
#[derive(Debug, Subcommand)]
pub enum VersionsCommand {
    /// List the kept versions of source ID (of one item PATH, if given)
    List {
        /// Source
        id: String,
        /// Item path inside the source
        path: Option<String>,
    },
    /// Put a kept version of PATH back (the newest, or the newest at or before --at)
    Restore {
        /// Source
        id: String,
        /// Item path inside the source
        path: String,
        /// YYYYMMDD-HHMMSS (UTC), as `versions list` shows it
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
}

/// `hub …` subcommands.
#[derive(Debug, Subcommand)]
pub enum HubCommand {
    /// Use the hub at ADDR (host:port) whose device ID is HUB_DEVICE (`tandemctl --home
    /// HUB-HOME id` prints it); its certificate is pinned to that ID
    Add {
        /// Where to reach the hub
        address: String,
        /// The hub's device ID
        hub_device: String,
    },
    /// List the hubs
    List,
    /// Stop using hub HUB_DEVICE
    Remove {
        /// The hub's device ID
        hub_device: String,
    },
}

/// `peer …` subcommands.
#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Trust device DEVICE (the ID `tandemctl id` prints there), reachable at ADDR (host:port)
    Add {
        /// The other device's ID
        device: String,
        /// Where to reach it; omit when it only dials in
        address: Option<String>,
    },
    /// List the trusted devices
    List,
    /// List devices that tried to connect without being added (add one with `peer add`)
    Pending,
    /// Stop trusting device DEVICE
    Remove {
        /// The device's ID
        device: String,
    },
}

/// An optional source ID, where omitting it means every source.
#[derive(Debug, Args)]
pub struct OptionalSource {
    /// Source to act on (all sources when omitted)
    pub id: Option<String>,
}

impl OptionalSource {
    /// The ID as the agent expects it: empty means every source.
    pub fn wire_id(&self) -> String {
        self.id.clone().unwrap_or_default()
    }
}

/// Parses `--timeout`: non-negative, finite seconds, fractions allowed.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds (e.g. 30 or 2.5)"))?;
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("`{text}` must be a finite, non-negative number of seconds"))
}

/// Milliseconds for `WaitRequest.timeout_ms`, where 0 means "no limit".
///
/// A given timeout is rounded up and never becomes 0, so `--timeout 0` still means "check once
/// and report" rather than silently waiting forever.
pub fn timeout_ms(timeout: Option<Duration>) -> u64 {
    match timeout {
        None => 0,
        Some(d) => {
            let ms = d.as_nanos().div_ceil(1_000_000);
            u64::try_from(ms).unwrap_or(u64::MAX).max(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn timeout_parses_whole_and_fractional_seconds() {
        assert_eq!(parse_timeout("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_timeout("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn timeout_rejects_nonsense() {
        for bad in ["", "abc", "-1", "NaN", "inf", "1e400"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn timeout_ms_keeps_zero_for_no_limit_only() {
        assert_eq!(timeout_ms(None), 0);
        assert_eq!(timeout_ms(Some(Duration::ZERO)), 1);
        assert_eq!(timeout_ms(Some(Duration::from_micros(1))), 1);
        assert_eq!(timeout_ms(Some(Duration::from_millis(2500))), 2500);
        assert_eq!(timeout_ms(Some(Duration::MAX)), u64::MAX);
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from(["tandemctl", "status", "--json", "--home", "/tmp/h"])
            .expect("valid command line");
        assert!(cli.json);
        assert_eq!(cli.home, Some(PathBuf::from("/tmp/h")));
    }

    #[test]
    fn source_add_defaults_and_repeated_peers() {
        let cli = Cli::try_parse_from([
            "tandemctl",
            "source",
            "add",
            "docs",
            "d",
            "--peer",
            "A",
            "--peer",
            "B",
        ])
        .expect("valid command line");
        match cli.command {
            Command::Source(SourceCommand::Add {
                id,
                path,
                format,
                peers,
                key,
            }) => {
                assert_eq!(id, "docs");
                assert_eq!(path, PathBuf::from("d"));
                assert_eq!(format, "files");
                assert_eq!(peers, ["A", "B"]);
                assert_eq!(key, None);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn missing_argument_is_a_usage_error() {
        let err = Cli::try_parse_from(["tandemctl", "source", "remove"]).expect_err("needs ID");
        assert_eq!(err.exit_code(), 2);
    }
}
