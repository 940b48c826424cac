//! `tandemctl doctor`: the checks that find what makes sync tools fail in the field, each with
//! what to do about it.
//!
//! The agent runs them, since it knows the sources, the peers and hubs and what went wrong
//! with them; `tandemctl` only prints the findings.
//! Must not: change anything (a check only looks), or take longer than a few seconds (probes
//! run at once, each with a short timeout).

use std::net::ToSocketAddrs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::hub_client::HubState;
use crate::peer::PeerState;
use crate::source::SourceStatus;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    /// The word `doctor` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }
}

/// One check's result about one thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Which check ("inotify", "filesystem", "home", "peer", "clock", "hub", "disk").
    pub check: &'static str,
    pub level: Level,
    /// What it is about: a source, a device, the home.
    pub subject: String,
    pub message: String,
    /// What to do; empty when all is well.
    pub fix: String,
}

impl Finding {
    fn new(check: &'static str, level: Level, subject: impl Into<String>) -> Finding {
        Finding {
            check,
            level,
            subject: subject.into(),
            message: String::new(),
            fix: String::new(),
        }
    }

    fn says(mut self, message: impl Into<String>, fix: impl Into<String>) -> Finding {
        self.message = message.into();
        self.fix = fix.into();
        self
    }
}

/// For black-box tests only: the inotify watch limit to check against instead of the
/// kernel's (a test cannot make a machine's limit low without changing it for everyone).
pub const TEST_INOTIFY_LIMIT: &str = "TANDEM_TEST_INOTIFY_LIMIT";

/// Clock skew between devices worth a warning.
const CLOCK_SKEW_MS: u64 = 30_000;

/// What the checks look at: a snapshot of the agent's state.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub home: PathBuf,
    pub sources: Vec<SourceStatus>,
    pub peers: Vec<(String, PeerState)>,
    pub hubs: Vec<(String, HubState)>,
}

/// Runs every check; findings in the order of the checks.
pub async fn run(inputs: Inputs) -> Vec<Finding> {
    let local = {
        let inputs = inputs.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = home(&inputs.home);
            out.extend(inotify(&inputs.sources));
            for s in &inputs.sources {
                out.extend(filesystem(s));
                out.extend(disk(s));
            }
            out
        })
    };
    let peers = inputs
        .peers
        .iter()
        .map(|(device, p)| peer(device.clone(), p.clone()));
    let hubs = inputs
        .hubs
        .iter()
        .map(|(device, h)| hub(device.clone(), h.clone()));
    let mut out = local.await.unwrap_or_else(|e| {
        vec![Finding::new("doctor", Level::Fail, "checks").says(e.to_string(), "")]
    });
    for p in peers {
        out.push(p.await);
    }
    for h in hubs {
        out.push(h.await);
    }
    out
}

fn home(home: &Path) -> Vec<Finding> {
    let subject = home.display().to_string();
    let meta = match std::fs::metadata(home) {
        Ok(m) => m,
        Err(e) => {
            return vec![Finding::new("home", Level::Fail, subject).says(
                format!("cannot look at the home: {e}"),
                "give the agent's user the home folder",
            )];
        }
    };
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return vec![Finding::new("home", Level::Fail, subject.clone()).says(
            format!("the home is open to others (mode {mode:o}): it holds this device's key"),
            format!("chmod 700 {subject}"),
        )];
    }
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid {
        return vec![Finding::new("home", Level::Fail, subject).says(
            format!(
                "the home belongs to user {} but the agent runs as {euid}",
                meta.uid()
            ),
            "run the agent as the home's owner, or chown the home to the agent's user",
        )];
    }
    vec![Finding::new("home", Level::Ok, subject).says("owner-only", "")]
}

/// The kernel's per-user inotify watch limit (or the tests' stand-in).
fn inotify_limit() -> Option<u64> {
    if let Some(v) = std::env::var(TEST_INOTIFY_LIMIT)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Some(v);
    }
    std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Folders an inotify watcher needs a watch for: every folder of a folder source, the folder
/// of a single-file one.
fn folders_watched(root: &Path) -> u64 {
    if !root.is_dir() {
        return 1;
    }
    let count = walkdir::WalkDir::new(root)
        .into_iter()
        .filter_entry(|e| e.file_name() != crate::layout::AGENT_DIR)
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_dir())
        .count();
    u64::try_from(count).unwrap_or(u64::MAX)
}

fn inotify(sources: &[SourceStatus]) -> Vec<Finding> {
    if !cfg!(target_os = "linux") {
        return Vec::new();
    }
    let Some(limit) = inotify_limit() else {
        return vec![
            Finding::new("inotify", Level::Warn, "watches")
                .says("cannot read /proc/sys/fs/inotify/max_user_watches", ""),
        ];
    };
    let watched: u64 = sources.iter().map(|s| folders_watched(&s.path)).sum();
    let raise = (watched.saturating_mul(2)).max(524_288);
    let fix = format!(
        "raise the limit: sudo sysctl fs.inotify.max_user_watches={raise}, and keep it with a \
         line fs.inotify.max_user_watches={raise} in /etc/sysctl.d/90-tandem.conf"
    );
    let subject = format!("{watched} folders watched, limit {limit}");
    if watched > limit {
        vec![Finding::new("inotify", Level::Fail, subject).says(
            "more folders are watched than the inotify limit allows: changes in the rest are \
             seen only by the hourly rescan",
            fix,
        )]
    } else if watched.saturating_mul(5) > limit.saturating_mul(4) {
        vec![Finding::new("inotify", Level::Warn, subject).says(
            "the folders watched are close to the inotify limit (other programs use it too)",
            fix,
        )]
    } else {
        vec![Finding::new("inotify", Level::Ok, subject).says("within the limit", "")]
    }
}

/// File systems whose inode numbers or times are not stable, by statfs magic.
fn unstable_filesystem(magic: i64) -> Option<&'static str> {
    match magic {
        0x4d44 => Some("FAT (vfat): times in 2-second steps, no stable inode numbers"),
        0x2011_BAB0 => Some("exFAT: no stable inode numbers"),
        0x5346_544e => Some("NTFS through ntfs-3g/FUSE: inode numbers may change"),
        0xFF53_4D42 | 0xFE53_4D42 => Some("SMB/CIFS: inode numbers and times set by the server"),
        0x6969 => Some("NFS: times set by the server, attributes cached"),
        0x6573_5546 => Some("a FUSE file system: inode numbers and times depend on it"),
        _ => None,
    }
}

fn filesystem(s: &SourceStatus) -> Option<Finding> {
    let at = if s.path.is_dir() {
        s.path.clone()
    } else {
        s.path.parent()?.to_path_buf()
    };
    let stat = rustix::fs::statfs(&at).ok()?;
    #[allow(clippy::useless_conversion)]
    let magic = i64::from(stat.f_type);
    Some(match unstable_filesystem(magic) {
        Some(why) => Finding::new("filesystem", Level::Warn, s.id.clone()).says(
            format!(
                "{} is on {why}; changes may be missed or seen twice",
                at.display()
            ),
            "keep the source on a local file system (ext4, xfs, btrfs, apfs), or rely on \
             content hashes: tandemctl rescan after changes made elsewhere",
        ),
        None => Finding::new("filesystem", Level::Ok, s.id.clone())
            .says("stable inode numbers and times", ""),
    })
}

fn disk(s: &SourceStatus) -> Option<Finding> {
    let at = if s.path.is_dir() {
        s.path.clone()
    } else {
        s.path.parent()?.to_path_buf()
    };
    let stat = rustix::fs::statvfs(&at).ok()?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    let total = stat.f_blocks.saturating_mul(stat.f_frsize).max(1);
    let mib = free >> 20;
    let subject = s.id.clone();
    let fix = format!(
        "free space on the file system of {} (versions of replaced files are kept in \
         .tandem/versions; tandemctl versions list shows them)",
        at.display()
    );
    Some(if free < 100 << 20 {
        Finding::new("disk", Level::Fail, subject).says(
            format!("{mib} MiB free: files from peers cannot be written"),
            fix,
        )
    } else if free < (1 << 30) || free.saturating_mul(20) < total {
        Finding::new("disk", Level::Warn, subject).says(format!("only {mib} MiB free"), fix)
    } else {
        Finding::new("disk", Level::Ok, subject).says(format!("{mib} MiB free"), "")
    })
}

/// Why a TCP connection to `address` cannot be made, or `None` when it can.
async fn tcp_probe(address: &str) -> Option<String> {
    let addrs: Vec<_> = match address.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => return Some(format!("{address} does not resolve: {e}")),
    };
    let Some(addr) = addrs.first().copied() else {
        return Some(format!("{address} resolves to no address"));
    };
    match tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(format!(
            "{address} refused the connection: nothing listens there"
        )),
        Ok(Err(e)) => Some(format!("cannot connect to {address}: {e}")),
        Err(_) => Some(format!(
            "{address} did not answer within 3 s: a firewall drops the packets, or the host is down"
        )),
    }
}

async fn peer(device: String, p: PeerState) -> Finding {
    let short = device.split('-').next().unwrap_or(&device).to_owned();
    if p.connected {
        return match p.clock_skew_ms.filter(|s| s.unsigned_abs() > CLOCK_SKEW_MS) {
            Some(skew) => Finding::new("clock", Level::Warn, short).says(
                format!(
                    "its clock is {} s {} this device's: conflicts are decided by                      modification times, so the later edit may lose",
                    skew.unsigned_abs() / 1000,
                    if skew > 0 { "ahead of" } else { "behind" }
                ),
                "keep both clocks in step with NTP: sudo timedatectl set-ntp true (on each device)",
            ),
            None => Finding::new("peer", Level::Ok, short)
                .says(format!("connected ({})", p.remote_addr), ""),
        };
    }
    let Some(address) = p.address.clone().filter(|a| !a.is_empty()) else {
        return Finding::new("peer", Level::Warn, short).says(
            "not connected, and no address is known: it must dial this device",
            format!(
                "give its address: tandemctl peer add {device} HOST:PORT, or make sure it \
                 knows this device's address"
            ),
        );
    };
    if let Some(why) = tcp_probe(&address).await {
        return Finding::new("peer", Level::Fail, short).says(
            why,
            format!("start tandemd on that device, or correct its address: tandemctl peer add {device} HOST:PORT"),
        );
    }
    let lower = p.last_error.to_lowercase();
    let (message, fix) = if lower.contains("certificate") || lower.contains("device id") {
        (
            format!(
                "{address} answers, but not as {short}: certificate mismatch ({})",
                p.last_error
            ),
            "the address belongs to another device, or the device's ID changed: check the ID \
             with tandemctl id on it"
                .to_owned(),
        )
    } else if !p.incompatible.is_empty() {
        (
            format!(
                "{address} speaks an incompatible protocol: {}",
                p.incompatible
            ),
            "run the same Tandem version on both devices".to_owned(),
        )
    } else {
        (
            format!(
                "{address} accepts connections but the exchange does not start{}",
                if p.last_error.is_empty() {
                    String::new()
                } else {
                    format!(": {}", p.last_error)
                }
            ),
            "add this device on the other side: tandemctl peer add ID there, with the ID \
             tandemctl id prints here"
                .to_owned(),
        )
    };
    Finding::new("peer", Level::Fail, short).says(message, fix)
}

async fn hub(device: String, h: HubState) -> Finding {
    let short = device.split('-').next().unwrap_or(&device).to_owned();
    if h.connected {
        return Finding::new("hub", Level::Ok, short)
            .says(format!("connected ({})", h.address), "");
    }
    if let Some(why) = tcp_probe(&h.address).await {
        return Finding::new("hub", Level::Fail, short).says(
            why,
            format!(
                "start the hub (tandemd --role hub), or correct its address: tandemctl hub \
                 remove {device}, then hub add HOST:PORT {device}"
            ),
        );
    }
    let lower = h.last_error.to_lowercase();
    let fix = if lower.contains("permission")
        || lower.contains("refus")
        || lower.contains("not served")
    {
        "the hub does not serve this device: on the hub, tandemctl --home HUB-HOME peer add THIS-ID"
            .to_owned()
    } else {
        "see the hub's log; tandemctl status shows the last error".to_owned()
    };
    Finding::new("hub", Level::Fail, short).says(
        format!(
            "{} accepts connections but the hub does not work for this device: {}",
            h.address,
            if h.last_error.is_empty() {
                "not connected yet"
            } else {
                h.last_error.as_str()
            }
        ),
        fix,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_unstable_file_systems_are_named() {
        assert!(unstable_filesystem(0x4d44).is_some_and(|w| w.contains("FAT")));
        assert!(unstable_filesystem(0xEF53).is_none(), "ext4 is stable");
    }

    #[tokio::test]
    async fn a_refused_connection_is_told_apart() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        assert_eq!(tcp_probe(&address).await, None);
        drop(listener);
        let why = tcp_probe(&address).await.expect("refused");
        assert!(why.contains("refused the connection"), "{why}");
    }
}
