//! Black-box harness for Tandem: real `tandemd` processes driven by the real `tandemctl`.
//!
//! An [`Agent`] (after ripgrep's `tests/util.rs` `Dir`) owns a temp folder holding the agent's
//! `--home` and the tests' source folders, starts `tandemd --home … --listen 127.0.0.1:0`, and
//! talks to it only through `tandemctl --json`. It waits with `tandemctl wait` or on `watch`
//! events ([`Watch`]), never with a sleep. When a test fails, dropping the agent prints its log
//! tail and the temp tree. Several agents meet through [`peers`], directly or through a
//! fault-injecting [`proxy`]; [`hostile`] is a peer that speaks the wire protocol itself and
//! misbehaves on purpose. Must not: link the daemon or reach into it, apart from reading
//! `tandem.db` read-only in [`prior`] (the generated wire types of `tandem-proto` are fine:
//! they are the protocol, not the daemon).

pub mod backoff;
pub mod bins;
pub mod hostile;
pub mod hubs;
pub mod peers;
pub mod prior;
pub mod process;
pub mod proxy;
pub mod records;
pub mod s3;
pub mod skip;
pub mod tree;
mod watch;

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

pub use crate::peers::{SlowPair, pair, settle, two_sharing, two_sharing_slowly};
pub use crate::skip::skip;
pub use crate::watch::{EVENT_DEADLINE, Watch};

/// Longest a fresh `tandemd` may take to answer `tandemctl id`.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);
/// Longest a `tandemd` may take to exit after SIGTERM.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);
/// Longest one `tandemctl` call may take beyond its own `--timeout`.
const CTL_LIMIT: Duration = Duration::from_secs(60);
/// Lines of the agent's log printed when a test fails.
const LOG_TAIL_LINES: usize = 60;
/// Lines of the temp tree listing printed when a test fails.
const TREE_LINES: usize = 200;

/// `setpriv` arguments that take away root's power to ignore file permissions.
const SETPRIV_ARGS: &[&str] = &[
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
    "--",
];
const SETPRIV: &str = "/usr/bin/setpriv";

/// How `tandemd` is launched.
#[derive(Debug, Clone)]
enum Launch {
    /// As the test's own user.
    Direct,
    /// Under `setpriv`, so that root is subject to file permissions like anyone else.
    WithoutDacOverride,
    /// In a network namespace the test made, listening on `listen` there, with LAN
    /// discovery on (everywhere else it is off: test agents send nothing beyond loopback).
    InNetns { ns: String, listen: String },
}

/// A running `tandemd` with its own temp home; killed on drop.
pub struct Agent {
    dir: TempDir,
    home: PathBuf,
    launch: Launch,
    child: Option<Child>,
    watches: AtomicUsize,
    /// Extra environment for the next starts (a test's fault plan, say).
    env: Vec<(String, String)>,
    /// Extra arguments for `tandemd` (`--role hub`).
    args: Vec<String>,
}

impl Agent {
    /// Starts an agent on a fresh temp home and waits until it answers.
    pub fn start() -> Agent {
        Agent::launch(Launch::Direct)
    }

    /// Starts an agent for which unreadable files are unreadable. When the tests run as root
    /// (as CI does) that takes `setpriv`; without it this prints why and returns `None`, and
    /// the caller skips its test.
    pub fn start_honouring_permissions() -> Option<Agent> {
        if !running_as_root() {
            return Some(Agent::start());
        }
        if !Path::new(SETPRIV).is_file() {
            skip(&format!(
                "running as root, where file permissions do not stop reads, and \
                 {SETPRIV} (util-linux) is missing to drop that power; install util-linux"
            ));
            return None;
        }
        let probe = Command::new(SETPRIV)
            .args(SETPRIV_ARGS)
            .arg("true")
            .output();
        match probe {
            Ok(out) if out.status.success() => Some(Agent::launch(Launch::WithoutDacOverride)),
            Ok(out) => {
                skip(&format!(
                    "running as root and {SETPRIV} cannot drop dac_override here ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                None
            }
            Err(e) => {
                skip(&format!("running as root and {SETPRIV} cannot run: {e}"));
                None
            }
        }
    }

    /// Starts an agent inside network namespace `ns` (made by the test), listening on
    /// `listen` there, with LAN discovery on.
    pub fn start_in_netns(ns: &str, listen: &str) -> Agent {
        Agent::launch(Launch::InNetns {
            ns: ns.to_owned(),
            listen: listen.to_owned(),
        })
    }

    fn launch(launch: Launch) -> Agent {
        Agent::launch_with(launch, Vec::new())
    }

    fn launch_with(launch: Launch, env: Vec<(String, String)>) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("tandem-test-")
            .tempdir()
            .expect("create a temp folder for the agent");
        let home = dir.path().join("home");
        let mut agent = Agent {
            dir,
            home,
            launch,
            child: None,
            watches: AtomicUsize::new(0),
            env,
            args: Vec::new(),
        };
        agent.spawn();
        agent
    }

    /// Starts a hub (`tandemd --role hub`) on a fresh temp home, storing in a folder under
    /// it, and waits until it answers.
    pub fn start_hub() -> Agent {
        Agent::start_hub_with_config("")
    }

    /// Starts a hub whose home's `config.toml` is `config` (an S3 store, say).
    pub fn start_hub_with_config(config: &str) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("tandem-hub-")
            .tempdir()
            .expect("create a temp folder for the hub");
        let home = dir.path().join("home");
        if !config.is_empty() {
            fs::create_dir_all(&home).expect("create the hub's home");
            fs::write(home.join("config.toml"), config).expect("write the hub's config.toml");
        }
        let mut hub = Agent {
            dir,
            home,
            launch: Launch::Direct,
            child: None,
            watches: AtomicUsize::new(0),
            env: Vec::new(),
            args: vec!["--role".to_owned(), "hub".to_owned()],
        };
        hub.spawn();
        hub
    }

    /// Starts an agent whose `tandemd` runs with these extra environment variables.
    pub fn start_with_env(vars: &[(&str, &str)]) -> Agent {
        let env = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Agent::launch_with(Launch::Direct, env)
    }

    /// Drops the extra environment from the next start on.
    pub fn clear_env(&mut self) {
        self.env.clear();
    }

    /// Waits for the agent to exit by itself (a planned crash, say) and reaps it; `None` if it
    /// is still running after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let exit = backoff::retry_with_backoff(limit, || self.try_exit_status())?;
        self.child = None;
        Some(exit)
    }

    /// The agent's `--home`.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// A fresh folder for a source's data, beside (not inside) the home.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join("data").join(name);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        path
    }

    /// A `tandemd` command line for this home, as the agent itself is started.
    pub fn tandemd_command(&self) -> Command {
        let mut cmd = match &self.launch {
            Launch::Direct => Command::new(bins::tandemd()),
            Launch::WithoutDacOverride => {
                let mut cmd = Command::new(SETPRIV);
                cmd.args(SETPRIV_ARGS).arg(bins::tandemd());
                cmd
            }
            Launch::InNetns { ns, .. } => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(bins::tandemd());
                cmd
            }
        };
        let listen = match &self.launch {
            Launch::InNetns { listen, .. } => listen.clone(),
            _ => {
                cmd.env("TANDEM_TEST_NO_DISCOVERY", "1");
                "127.0.0.1:0".to_owned()
            }
        };
        cmd.arg("--home")
            .arg(&self.home)
            .args(["--listen", &listen])
            .env_remove("TANDEM_HOME")
            .env("RUST_LOG", "info,tandem=debug")
            .env("NO_COLOR", "1")
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "tandemd is already running");
        let stderr_path = self.dir.path().join("tandemd.stderr");
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", stderr_path.display()));
        let mut cmd = self.tandemd_command();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", process::show_command(&cmd)));
        self.child = Some(child);
        let ready = backoff::retry_with_backoff(STARTUP_LIMIT, || {
            if let Some(exit) = self.try_exit_status() {
                return Some(Err(exit));
            }
            self.ctl(&["id"]).status.success().then_some(Ok(()))
        });
        match ready {
            Some(Ok(())) => {}
            Some(Err(exit)) => panic!(
                "tandemd exited during start-up ({exit}): {}",
                process::show_command(&cmd)
            ),
            None => panic!(
                "tandemd did not answer `tandemctl id` within {STARTUP_LIMIT:?}: {}",
                process::show_command(&cmd)
            ),
        }
    }

    fn try_exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("check whether tandemd is running"))
    }

    /// Sends `signal` (a name `kill` takes: `HUP`, `TERM`) to the running agent.
    pub fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .expect("tandemd is running")
            .id()
            .to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {pid} failed: {sent}");
    }

    /// The agent's log file as written so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.home.join("logs").join("tandemd.log")).unwrap_or_default()
    }

    /// Stops the agent cleanly (SIGTERM) and checks that it exits successfully.
    pub fn kill(&mut self) {
        self.stop_timed();
    }

    /// Stops the agent cleanly (SIGTERM), checks that it exits successfully, and returns how
    /// long it took from the signal to its exit.
    pub fn stop_timed(&mut self) -> Duration {
        let mut child = self.child.take().expect("tandemd is running");
        let signalled = std::time::Instant::now();
        let pid = child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed: {sent}");
        let exit = backoff::retry_with_backoff(SHUTDOWN_LIMIT, || {
            child.try_wait().expect("check whether tandemd exited")
        });
        let Some(exit) = exit else {
            // Not reaped yet, so the pid is still this child's.
            let _ = child.kill();
            let _ = child.wait();
            panic!("tandemd did not stop within {SHUTDOWN_LIMIT:?} of SIGTERM");
        };
        let took = signalled.elapsed();
        assert!(exit.success(), "tandemd exited with {exit} after SIGTERM");
        took
    }

    /// Kills the agent with SIGKILL, as a crash or power cut would, and reaps it.
    pub fn crash(&mut self) {
        let mut child = self.child.take().expect("tandemd is running");
        child.kill().expect("send SIGKILL to tandemd");
        child.wait().expect("reap tandemd");
    }

    /// Starts the agent again on the same home after [`Agent::kill`].
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Stops the agent cleanly and starts it again on the same home.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs `tandemctl --home HOME --json ARGS…` and returns how it ended, whatever that was.
    pub fn ctl(&self, args: &[&str]) -> Output {
        run_ctl(&self.home, args)
    }

    /// Runs `tandemctl --home HOME ARGS…` without `--json`: what a person sees.
    pub fn plain(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bins::tandemctl());
        cmd.arg("--home")
            .arg(&self.home)
            .args(args)
            .env_remove("TANDEM_HOME");
        process::run_bounded(&mut cmd, CTL_LIMIT)
    }

    /// Runs a `tandemctl --json` command that must succeed, and parses what it prints.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut cmd = ctl_command(&self.home, args);
        let out = process::run_bounded(&mut cmd, CTL_LIMIT);
        assert!(
            out.status.success(),
            "tandemctl failed\n{}",
            process::describe(&cmd, &out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "tandemctl printed no JSON ({e})\n{}",
                process::describe(&cmd, &out)
            )
        })
    }

    /// Runs a `tandemctl --json` command that must exit with `code`; returns its stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let mut cmd = ctl_command(&self.home, args);
        let out = process::run_bounded(&mut cmd, CTL_LIMIT);
        assert_eq!(
            out.status.code(),
            Some(code),
            "expected exit code {code}\n{}",
            process::describe(&cmd, &out)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `tandemctl status --json`.
    pub fn status(&self) -> Value {
        self.json(&["status"])
    }

    /// One source's entry in `status --json`.
    pub fn source(&self, id: &str) -> Value {
        let status = self.status();
        status["sources"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("no source {id:?} in status:\n{status:#}"))
    }

    /// `tandemctl source add ID PATH`, which must succeed.
    pub fn add_source(&self, id: &str, path: &Path) -> Value {
        let path = path.to_str().expect("temp paths are UTF-8");
        self.json(&["source", "add", id, path])
    }

    /// `tandemctl wait --timeout T`, which must report every source in sync with every device
    /// it is shared with.
    pub fn wait(&self, timeout: Duration) {
        self.wait_with(timeout, &[]);
    }

    /// `tandemctl wait --connected --timeout T`: in sync with the devices connected now (those
    /// not reached are not waited for), which must be reported.
    pub fn wait_connected(&self, timeout: Duration) {
        self.wait_with(timeout, &["--connected"]);
    }

    fn wait_with(&self, timeout: Duration, flags: &[&str]) {
        let secs = format!("{:.3}", timeout.as_secs_f64());
        let mut args = vec!["wait", "--timeout", &secs];
        args.extend_from_slice(flags);
        let mut cmd = ctl_command(&self.home, &args);
        let out = process::run_bounded(&mut cmd, timeout + CTL_LIMIT);
        if !out.status.success() {
            let status = self.ctl(&["status"]);
            panic!(
                "not in sync within {timeout:?}\n{}\nstatus then:\n{}",
                process::describe(&cmd, &out),
                String::from_utf8_lossy(&status.stdout)
            );
        }
    }

    /// Starts `tandemctl --json watch` and returns once it is known to receive events: it
    /// asks for a `rescan` of `source` until that shows up (which rescans `source`).
    pub fn watch(&self, source: &str) -> Watch {
        let n = self.watches.fetch_add(1, Ordering::Relaxed);
        let stderr = self.dir.path().join(format!("watch-{n}.stderr"));
        let mut watch = Watch::spawn(ctl_command(&self.home, &["watch"]), stderr);
        watch.handshake(source, || {
            self.json(&["rescan", source]);
        });
        watch
    }

    /// Every `items` row of `source` in the agent's database.
    pub fn prior_state(&self, source: &str) -> std::collections::BTreeMap<String, prior::Row> {
        prior::read(&self.home.join("tandem.db"), source)
    }

    /// The agent's log tail and the temp tree, for failure reports.
    pub fn diagnostics(&mut self) -> String {
        let mut s = String::new();
        let log = self.home.join("logs").join("tandemd.log");
        // Writing to a String cannot fail.
        let _ = writeln!(s, "\n──── tandemd log tail ({}) ────", log.display());
        match fs::read_to_string(&log) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                // `TANDEM_TEST_LOG_TAIL=N` prints more when chasing a failure.
                let tail = std::env::var("TANDEM_TEST_LOG_TAIL")
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(LOG_TAIL_LINES);
                for line in &lines[lines.len().saturating_sub(tail)..] {
                    let _ = writeln!(s, "{line}");
                }
            }
            Err(e) => {
                let _ = writeln!(s, "(cannot read it: {e})");
            }
        }
        if let Some(exit) = self.try_exit_status() {
            let stderr =
                fs::read_to_string(self.dir.path().join("tandemd.stderr")).unwrap_or_default();
            let lines: Vec<&str> = stderr.lines().collect();
            let _ = writeln!(s, "──── tandemd exited ({exit}); stderr tail ────");
            for line in &lines[lines.len().saturating_sub(20)..] {
                let _ = writeln!(s, "{line}");
            }
        }
        let _ = writeln!(s, "──── temp tree ({}) ────", self.dir.path().display());
        s.push_str(&tree::listing(self.dir.path(), TREE_LINES));
        s
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        if let Some(mut child) = self.child.take() {
            // It may have exited already; either way it is reaped here.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `tandemctl --home HOME --json ARGS…` for any home, agent or not.
pub fn run_ctl(home: &Path, args: &[&str]) -> Output {
    process::run_bounded(&mut ctl_command(home, args), CTL_LIMIT)
}

fn ctl_command(home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bins::tandemctl());
    cmd.arg("--home")
        .arg(home)
        .arg("--json")
        .args(args)
        .env_remove("TANDEM_HOME");
    cmd
}

fn running_as_root() -> bool {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .expect("run `id -u` to learn the current uid");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// A JSON number as `u64`, failing with the field's name when it is not one.
pub fn num(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a number in {v:#}"))
}
