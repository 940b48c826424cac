//! The `--home` layout and `config.toml`, read once into plain validated structs.
//!
//! Must not: be a global, or change at run time behind anyone's back. Several agents with
//! different homes run side by side in one test process, so everything is passed down.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::layout;

/// Errors while preparing the home folder or reading its configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot use {path} as the agent's home: {source}; pick a writable folder with --home")]
    Home {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another tandemd is already running with home {home}{pid}; stop it first, or start this one with a different --home"
    )]
    AlreadyRunning { home: PathBuf, pid: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {reason}; fix the file or delete it to get the defaults back")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "no home folder given and none could be derived (is $HOME set?); pass --home DIR or set TANDEM_HOME"
    )]
    NoDefaultHome,
}

/// The platform's default home: `~/.local/share/tandem` on Linux. `tandemctl` uses the same rule.
pub fn default_home() -> Result<PathBuf, Error> {
    directories::ProjectDirs::from("", "", "tandem")
        .map(|dirs| dirs.data_local_dir().to_path_buf())
        .ok_or(Error::NoDefaultHome)
}

/// Where every file the agent owns lives, under one `--home` folder.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// Creates the folder (owner-only) if needed and makes the path absolute.
    pub fn prepare(root: &Path) -> Result<Home, Error> {
        let err = |source| Error::Home {
            path: root.to_path_buf(),
            source,
        };
        if !root.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .map_err(err)?;
        }
        let root = fs::canonicalize(root).map_err(err)?;
        let home = Home { root };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(home.log_dir())
            .map_err(|source| Error::Home {
                path: home.log_dir(),
                source,
            })?;
        Ok(home)
    }

    /// The home folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `config.toml`: settings the user may edit.
    pub fn config_file(&self) -> PathBuf {
        self.root.join(layout::CONFIG_FILE)
    }
    /// Folder of the TLS certificate and key that make the device identity.
    pub fn identity_dir(&self) -> PathBuf {
        self.root.join(layout::IDENTITY_DIR)
    }
    /// The SQLite database with the prior state of every source.
    pub fn database(&self) -> PathBuf {
        self.root.join(layout::DATABASE_FILE)
    }
    /// The owner-only Unix socket `tandemctl` talks to.
    pub fn control_socket(&self) -> PathBuf {
        self.root.join(layout::CONTROL_SOCKET)
    }
    /// Folder of the agent's log files.
    pub fn log_dir(&self) -> PathBuf {
        self.root.join(layout::LOG_DIR)
    }
    /// The lock file that keeps a second agent off this home.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(layout::LOCK_FILE)
    }

    /// Takes the home's lock for the life of the returned guard.
    ///
    /// # Errors
    /// [`Error::AlreadyRunning`] when another process holds it.
    pub fn lock(&self) -> Result<HomeLock, Error> {
        let path = self.lock_file();
        let io = |source| Error::Home {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                // The pid is only a hint for the message; an unreadable one is left out.
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                let pid = if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                };
                return Err(Error::AlreadyRunning {
                    home: self.root.clone(),
                    pid,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        Ok(HomeLock { _file: file })
    }
}

/// Holds the home's lock; dropping it (or the process dying) releases it.
#[derive(Debug)]
pub struct HomeLock {
    _file: File,
}

/// Settings from `config.toml`, validated; every field has a sensible default.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the peer service listens on; `--listen` overrides it.
    pub listen: SocketAddr,
    /// How long the watcher waits for a burst of events to settle before scanning.
    pub debounce: Duration,
    /// Longest a change may wait in the debouncer while events keep coming.
    pub debounce_max: Duration,
    /// Full rescan of every source this often, as a safety net behind the watcher.
    pub rescan_interval: Duration,
    /// How long replaced and deleted files stay in a source's versions folder; `None` keeps
    /// them forever.
    pub versions_keep: Option<Duration>,
    /// Per source id: the vCard version new contacts are written in ("2.1", "3.0", "4.0").
    /// A source not named here writes the version it already uses, else 3.0.
    pub vcard_versions: std::collections::BTreeMap<String, String>,
    /// The hub role's settings (`[hub]`), unused by an agent.
    pub hub: HubConfig,
    /// Where the Prometheus metrics endpoint listens (`[metrics] listen`); `None`, the
    /// default, serves none.
    pub metrics: Option<SocketAddr>,
    /// LAN discovery (`[discovery]`): announce this device and hear others.
    pub discovery: Discovery,
}

/// LAN discovery settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    pub enabled: bool,
    /// The UDP port announcements go to and are heard on.
    pub port: u16,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            enabled: true,
            port: crate::discovery::DEFAULT_PORT,
        }
    }
}

/// What `tandemd --role hub` serves from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Where the objects live.
    pub storage: HubStorage,
    /// A member whose cursor has not moved for this long no longer holds back collection;
    /// it catches up from a snapshot.
    pub retention: Duration,
    /// How long a chunk marked unreferenced is kept before it is deleted, so an upload that
    /// counted on it meanwhile is not hurt.
    pub chunk_grace: Duration,
    /// How often the hub collects what every member has passed.
    pub gc_interval: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            storage: HubStorage::Local,
            retention: Duration::from_secs(90 * 86_400),
            chunk_grace: Duration::from_secs(86_400),
            gc_interval: Duration::from_secs(600),
        }
    }
}

/// The object store behind a hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubStorage {
    /// A folder under the hub's home (`HOME/storage`), served by the hub itself.
    Local,
    /// An S3-compatible store.
    S3(S3Config),
}

/// An S3-compatible store; credentials not given here come from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `http(s)://host:port`; empty: AWS itself.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Hand agents presigned URLs, so the bulk of the data bypasses the hub.
    pub presign: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 27480)),
            debounce: Duration::from_millis(50),
            debounce_max: Duration::from_millis(500),
            rescan_interval: Duration::from_secs(3600),
            versions_keep: Some(Duration::from_secs(30 * 86_400)),
            vcard_versions: std::collections::BTreeMap::new(),
            hub: HubConfig::default(),
            metrics: None,
            discovery: Discovery::default(),
        }
    }
}

/// `config.toml` as written by a person: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    debounce_ms: Option<u64>,
    debounce_max_ms: Option<u64>,
    rescan_interval_s: Option<u64>,
    versions_keep_days: Option<u64>,
    sources: Option<std::collections::BTreeMap<String, RawSourceConfig>>,
    hub: Option<RawHubConfig>,
    metrics: Option<RawMetricsConfig>,
    discovery: Option<RawDiscoveryConfig>,
}

/// `[discovery]` in `config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiscoveryConfig {
    enabled: Option<bool>,
    port: Option<u16>,
}

/// `[metrics]` in `config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetricsConfig {
    listen: Option<String>,
}

/// `[hub]` in `config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHubConfig {
    storage: Option<String>,
    retention_days: Option<u64>,
    /// Seconds; overrides `retention_days` (for tests and small setups).
    retention_s: Option<u64>,
    chunk_grace_s: Option<u64>,
    gc_interval_s: Option<u64>,
    s3: Option<RawS3Config>,
}

/// `[hub.s3]` in `config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3Config {
    endpoint: Option<String>,
    bucket: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    presign: Option<bool>,
}

impl RawHubConfig {
    fn validate(self) -> Result<HubConfig, String> {
        let mut hub = HubConfig::default();
        if let Some(days) = self.retention_days {
            if !(1..=36_500).contains(&days) {
                return Err(format!(
                    "[hub] retention_days = {days} is outside 1..=36500"
                ));
            }
            hub.retention = Duration::from_secs(days * 86_400);
        }
        if let Some(s) = self.retention_s {
            if !(1..=36_500 * 86_400).contains(&s) {
                return Err(format!("[hub] retention_s = {s} is outside 1..=3153600000"));
            }
            hub.retention = Duration::from_secs(s);
        }
        if let Some(s) = self.gc_interval_s {
            if !(1..=86_400).contains(&s) {
                return Err(format!("[hub] gc_interval_s = {s} is outside 1..=86400"));
            }
            hub.gc_interval = Duration::from_secs(s);
        }
        if let Some(s) = self.chunk_grace_s {
            if !(1..=30 * 86_400).contains(&s) {
                return Err(format!("[hub] chunk_grace_s = {s} is outside 1..=2592000"));
            }
            hub.chunk_grace = Duration::from_secs(s);
        }
        match (self.storage.as_deref().unwrap_or("local"), self.s3) {
            ("local", None) => {}
            ("local", Some(_)) => {
                return Err("[hub.s3] is set but [hub] storage is not \"s3\"".into());
            }
            ("s3", s3) => {
                let s3 = s3.unwrap_or_default();
                let bucket = s3
                    .bucket
                    .filter(|b| !b.is_empty())
                    .ok_or("[hub] storage = \"s3\" needs [hub.s3] bucket = \"NAME\"")?;
                let endpoint = s3.endpoint.unwrap_or_default();
                if !(endpoint.is_empty()
                    || endpoint.starts_with("http://")
                    || endpoint.starts_with("https://"))
                {
                    return Err(format!(
                        "[hub.s3] endpoint = {endpoint:?} is not an http:// or https:// URL"
                    ));
                }
                hub.storage = HubStorage::S3(S3Config {
                    endpoint,
                    bucket,
                    region: s3.region.unwrap_or_else(|| "us-east-1".into()),
                    access_key_id: s3.access_key_id,
                    secret_access_key: s3.secret_access_key,
                    presign: s3.presign.unwrap_or(true),
                });
            }
            (other, _) => {
                return Err(format!(
                    "[hub] storage = {other:?} is not \"local\" or \"s3\""
                ));
            }
        }
        Ok(hub)
    }
}

/// `[sources.ID]` in `config.toml`: settings of one source.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSourceConfig {
    vcard_version: Option<String>,
}

const DEFAULT_CONFIG: &str = "\
# Tandem agent settings. Every key is optional; delete one to get its default back.

# Address the peer service listens on (the --listen flag overrides it).
# listen = \"0.0.0.0:27480\"

# Milliseconds to let a burst of file events settle before scanning.
# debounce_ms = 50

# Longest, in milliseconds, a change waits while events keep coming.
# debounce_max_ms = 500

# Seconds between full rescans of every source (a safety net behind the watcher).
# rescan_interval_s = 3600

# Days a file replaced or deleted by another device stays in the source's
# .tandem/versions folder (0 keeps them forever).
# versions_keep_days = 30

# Per source: the vCard version new contacts are written in (\"2.1\", \"3.0\" or \"4.0\").
# By default a source writes the version its cards already use, else 3.0, which Apple,
# Google and khard all read.
# [sources.contacts]
# vcard_version = \"4.0\"

# Only for `tandemd --role hub`: where bundles and chunks are stored. \"local\" keeps
# them in HOME/storage; \"s3\" uses an S3-compatible store (credentials from here or
# from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
# [hub]
# storage = \"local\"
# retention_days = 90
# chunk_grace_s = 86400
# gc_interval_s = 600
# [hub.s3]
# endpoint = \"https://s3.example.com\"
# bucket = \"tandem\"
# region = \"us-east-1\"
# presign = true

# A Prometheus metrics endpoint (GET /metrics): items, bytes, conflicts, errors and
# queues per source and device. Off unless an address is given; keep it on 127.0.0.1
# unless something on another machine must scrape it (anyone who reaches it can read
# the numbers, source ids and device names).
# [metrics]
# listen = \"127.0.0.1:27481\"

# LAN discovery: this device announces its ID and peer port on the local network (IPv4
# broadcast, IPv6 link-local multicast) and dials peers added without an address where it
# hears them. Connections are still pinned to device IDs.
# [discovery]
# enabled = true
# port = 27482
";

impl Config {
    /// Reads `config.toml` from the home, writing the commented defaults on first start.
    pub fn load(home: &Home) -> Result<Config, Error> {
        let path = home.config_file();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::write(&path, DEFAULT_CONFIG).map_err(|source| Error::Home {
                    path: path.clone(),
                    source,
                })?;
                DEFAULT_CONFIG.to_owned()
            }
            Err(source) => return Err(Error::Read { path, source }),
        };
        Self::parse(&text).map_err(|reason| Error::Invalid { path, reason })
    }

    /// Parses and validates the text of a `config.toml`.
    pub fn parse(text: &str) -> Result<Config, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut config = Config::default();
        if let Some(listen) = raw.listen {
            config.listen = listen
                .parse()
                .map_err(|_| format!("listen = {listen:?} is not an address like 0.0.0.0:27480"))?;
        }
        if let Some(ms) = raw.debounce_ms {
            if !(1..=60_000).contains(&ms) {
                return Err(format!("debounce_ms = {ms} is outside 1..=60000"));
            }
            config.debounce = Duration::from_millis(ms);
        }
        if let Some(ms) = raw.debounce_max_ms {
            if !(1..=600_000).contains(&ms) {
                return Err(format!("debounce_max_ms = {ms} is outside 1..=600000"));
            }
            config.debounce_max = Duration::from_millis(ms);
        }
        if config.debounce_max < config.debounce {
            config.debounce_max = config.debounce;
        }
        if let Some(s) = raw.rescan_interval_s {
            if s < 10 {
                return Err(format!(
                    "rescan_interval_s = {s} is below the minimum of 10"
                ));
            }
            config.rescan_interval = Duration::from_secs(s);
        }
        if let Some(days) = raw.versions_keep_days {
            config.versions_keep = match days {
                0 => None,
                d if d <= 36_500 => Some(Duration::from_secs(d * 86_400)),
                d => {
                    return Err(format!(
                        "versions_keep_days = {d} is above 36500 (use 0 to keep forever)"
                    ));
                }
            };
        }
        for (id, source) in raw.sources.unwrap_or_default() {
            if let Some(v) = source.vcard_version {
                if !["2.1", "3.0", "4.0"].contains(&v.as_str()) {
                    return Err(format!(
                        "[sources.{id}] vcard_version = {v:?} is not one of \"2.1\", \"3.0\", \"4.0\""
                    ));
                }
                config.vcard_versions.insert(id, v);
            }
        }
        if let Some(hub) = raw.hub {
            config.hub = hub.validate()?;
        }
        if let Some(d) = raw.discovery {
            if let Some(enabled) = d.enabled {
                config.discovery.enabled = enabled;
            }
            if let Some(port) = d.port {
                if port == 0 {
                    return Err("discovery.port = 0 is no port; give one like 27482".into());
                }
                config.discovery.port = port;
            }
        }
        if let Some(listen) = raw.metrics.and_then(|m| m.listen) {
            config.metrics = Some(listen.parse().map_err(|_| {
                format!(
                    "metrics.listen = {listen:?} is not an address like 127.0.0.1:27481; \
                     give one, or remove it to serve no metrics"
                )
            })?);
        }
        Ok(config)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_to_the_default_config() {
        let c = Config::parse(DEFAULT_CONFIG).unwrap();
        assert_eq!(c.debounce, Config::default().debounce);
        assert_eq!(c.listen, Config::default().listen);
    }

    #[test]
    fn a_source_may_name_its_vcard_version() {
        let c = Config::parse("[sources.book]\nvcard_version = \"4.0\"\n").unwrap();
        assert_eq!(
            c.vcard_versions.get("book").map(String::as_str),
            Some("4.0")
        );
        let e = Config::parse("[sources.book]\nvcard_version = \"5.0\"\n").unwrap_err();
        assert!(e.contains("sources.book") && e.contains("5.0"), "{e}");
        let e = Config::parse("[sources.book]\ncolour = \"red\"\n").unwrap_err();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn a_hub_may_use_s3_and_bad_hub_settings_are_named() {
        let c = Config::parse(
            "[hub]\nstorage = \"s3\"\nretention_days = 7\n[hub.s3]\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9000\"\n",
        )
        .unwrap();
        assert_eq!(c.hub.retention, Duration::from_secs(7 * 86_400));
        let HubStorage::S3(s3) = c.hub.storage else {
            panic!("not s3")
        };
        assert_eq!((s3.bucket.as_str(), s3.presign), ("b", true));
        for (bad, names) in [
            ("[hub]\nstorage = \"s3\"\n", "bucket"),
            ("[hub]\nstorage = \"ftp\"\n", "ftp"),
            ("[hub.s3]\nbucket = \"b\"\n", "hub.s3"),
            (
                "[hub]\nstorage = \"s3\"\n[hub.s3]\nbucket = \"b\"\nendpoint = \"x\"\n",
                "endpoint",
            ),
            ("[hub]\nretention_days = 0\n", "retention_days"),
        ] {
            let e = Config::parse(bad).unwrap_err();
            assert!(e.contains(names), "{bad}: {e}");
        }
        assert_eq!(Config::parse("").unwrap().hub.storage, HubStorage::Local);
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Config::parse("listen = \"nowhere\"").unwrap_err();
        assert!(e.contains("listen"), "{e}");
        let e = Config::parse("rescan_interval_s = 1").unwrap_err();
        assert!(e.contains("rescan_interval_s"), "{e}");
        let e = Config::parse("colour = 3").unwrap_err();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn discovery_is_on_unless_turned_off() {
        let c = Config::parse(DEFAULT_CONFIG).unwrap();
        assert!(c.discovery.enabled);
        assert_eq!(c.discovery.port, crate::discovery::DEFAULT_PORT);
        let c = Config::parse("[discovery]\nenabled = false\nport = 30000\n").unwrap();
        assert_eq!(
            c.discovery,
            Discovery {
                enabled: false,
                port: 30000
            }
        );
        let e = Config::parse("[discovery]\nport = 0\n").unwrap_err();
        assert!(e.contains("discovery.port"), "{e}");
    }

    #[test]
    fn metrics_are_off_unless_an_address_is_given() {
        assert_eq!(Config::parse(DEFAULT_CONFIG).unwrap().metrics, None);
        assert_eq!(Config::parse("[metrics]\n").unwrap().metrics, None);
        let c = Config::parse("[metrics]\nlisten = \"127.0.0.1:27481\"\n").unwrap();
        assert_eq!(c.metrics, Some(SocketAddr::from(([127, 0, 0, 1], 27481))));
        for bad in ["localhost", "127.0.0.1", "127.0.0.1:99999", ""] {
            let text = format!("[metrics]\nlisten = {bad:?}\n");
            let e = Config::parse(&text).unwrap_err();
            assert!(
                e.contains("metrics.listen") && e.contains(bad),
                "{bad}: {e}"
            );
        }
        let e = Config::parse("[metrics]\nport = 1\n").unwrap_err();
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn second_lock_on_the_same_home_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::prepare(dir.path()).unwrap();
        let _first = home.lock().unwrap();
        let err = home.lock().unwrap_err();
        assert!(matches!(err, Error::AlreadyRunning { .. }), "{err}");
        assert!(err.to_string().contains("already running"));
    }
}
