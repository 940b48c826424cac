//! Runs the real `tandemctl` binary against a fake agent on a Unix socket in a temp home.
//!
//! The fake answers with canned replies; it checks the client's side of the contract (socket
//! path, request fields, output, exit codes), not the daemon's behaviour.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tandem_proto::control::control_server::{Control, ControlServer};
use tandem_proto::control::{
    Ack, Event, IdReply, IdRequest, ItemError, SourceAddRequest, SourceListReply,
    SourceListRequest, SourceRequest, SourceStatus, StatusReply, StatusRequest, WaitReply,
    WaitRequest, WatchRequest,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};

/// How long any single step may take before the test fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(20);

type EventSender = mpsc::Sender<Result<Event, Status>>;

/// Canned replies; `watch` hands its event sender to the test.
struct Fake {
    watchers: std::sync::Mutex<std_mpsc::Sender<EventSender>>,
}

fn docs() -> SourceStatus {
    SourceStatus {
        id: "docs".into(),
        path: "/home/u/docs".into(),
        format: "files".into(),
        state: "idle".into(),
        files: 3,
        bytes: 3 * 1024 * 1024,
        sequence: 9,
        item_errors: vec![ItemError {
            item: "secret.txt".into(),
            message: "permission denied".into(),
        }],
        ..SourceStatus::default()
    }
}

#[tonic::async_trait]
impl Control for Fake {
    async fn id(&self, _: Request<IdRequest>) -> Result<Response<IdReply>, Status> {
        Ok(Response::new(IdReply {
            device_id: "AAAA-BBBB-CCCC".into(),
            ..IdReply::default()
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        Ok(Response::new(StatusReply {
            device_id: "AAAA-BBBB-CCCC".into(),
            sources: vec![docs()],
            ..StatusReply::default()
        }))
    }

    async fn source_add(
        &self,
        request: Request<SourceAddRequest>,
    ) -> Result<Response<SourceStatus>, Status> {
        let r = request.into_inner();
        Ok(Response::new(SourceStatus {
            id: r.id,
            path: r.path,
            format: r.format,
            peers: r.peers,
            state: "scanning".into(),
            ..SourceStatus::default()
        }))
    }

    async fn source_list(
        &self,
        _: Request<SourceListRequest>,
    ) -> Result<Response<SourceListReply>, Status> {
        Ok(Response::new(SourceListReply {
            sources: vec![docs()],
        }))
    }

    async fn source_remove(
        &self,
        request: Request<SourceRequest>,
    ) -> Result<Response<Ack>, Status> {
        let id = request.into_inner().id;
        Err(Status::not_found(format!(
            "no source named {id}; see tandemctl source list"
        )))
    }

    async fn rescan(&self, request: Request<SourceRequest>) -> Result<Response<Ack>, Status> {
        Ok(Response::new(Ack {
            message: format!("rescan id={:?}", request.into_inner().id),
        }))
    }

    async fn pause(&self, _: Request<SourceRequest>) -> Result<Response<Ack>, Status> {
        Ok(Response::new(Ack::default()))
    }

    async fn resume(&self, _: Request<SourceRequest>) -> Result<Response<Ack>, Status> {
        Ok(Response::new(Ack::default()))
    }

    async fn wait(&self, request: Request<WaitRequest>) -> Result<Response<WaitReply>, Status> {
        // No limit: pretend everything is in sync; with a limit: pretend it ran out.
        let in_sync = request.into_inner().timeout_ms == 0;
        Ok(Response::new(WaitReply {
            in_sync,
            pending: if in_sync {
                Vec::new()
            } else {
                vec!["docs: 2 items to send".into()]
            },
            unreached: Vec::new(),
        }))
    }

    async fn peer_add(
        &self,
        request: Request<tandem_proto::control::PeerAddRequest>,
    ) -> Result<Response<tandem_proto::control::PeerInfo>, Status> {
        let req = request.into_inner();
        Ok(Response::new(tandem_proto::control::PeerInfo {
            device_id: req.device_id,
            address: req.address,
            added_unix_ms: 1,
        }))
    }

    async fn peer_list(
        &self,
        _: Request<tandem_proto::control::PeerListRequest>,
    ) -> Result<Response<tandem_proto::control::PeerListReply>, Status> {
        Ok(Response::new(
            tandem_proto::control::PeerListReply::default(),
        ))
    }

    async fn peer_remove(
        &self,
        request: Request<tandem_proto::control::PeerRequest>,
    ) -> Result<Response<Ack>, Status> {
        Err(Status::not_found(format!(
            "no peer with device ID {}",
            request.into_inner().device_id
        )))
    }

    async fn conflicts(
        &self,
        _: Request<SourceRequest>,
    ) -> Result<Response<tandem_proto::control::ConflictList>, Status> {
        Ok(Response::new(tandem_proto::control::ConflictList::default()))
    }

    async fn versions_list(
        &self,
        _: Request<tandem_proto::control::VersionsRequest>,
    ) -> Result<Response<tandem_proto::control::VersionList>, Status> {
        Ok(Response::new(tandem_proto::control::VersionList::default()))
    }

    async fn versions_restore(
        &self,
        _: Request<tandem_proto::control::VersionsRequest>,
    ) -> Result<Response<Ack>, Status> {
        Err(Status::not_found("no kept version"))
    }

    async fn source_key(
        &self,
        req: Request<SourceRequest>,
    ) -> Result<Response<tandem_proto::control::SourceKeyReply>, Status> {
        Err(Status::not_found(format!(
            "no source {:?}",
            req.into_inner().id
        )))
    }

    async fn source_share(
        &self,
        _: Request<tandem_proto::control::SourceShareRequest>,
    ) -> Result<Response<Ack>, Status> {
        Err(Status::unimplemented("the fake agent cannot share"))
    }

    async fn source_unshare(
        &self,
        _: Request<tandem_proto::control::SourceShareRequest>,
    ) -> Result<Response<Ack>, Status> {
        Err(Status::unimplemented("the fake agent cannot share"))
    }

    async fn hub_add(
        &self,
        _: Request<tandem_proto::control::HubAddRequest>,
    ) -> Result<Response<tandem_proto::control::HubInfo>, Status> {
        Err(Status::unimplemented("the fake agent has no hubs"))
    }

    async fn hub_list(
        &self,
        _: Request<tandem_proto::control::HubListRequest>,
    ) -> Result<Response<tandem_proto::control::HubListReply>, Status> {
        Ok(Response::new(tandem_proto::control::HubListReply::default()))
    }

    async fn hub_remove(
        &self,
        _: Request<tandem_proto::control::PeerRequest>,
    ) -> Result<Response<Ack>, Status> {
        Err(Status::unimplemented("the fake agent has no hubs"))
    }

    async fn doctor(
        &self,
        _: Request<tandem_proto::control::DoctorRequest>,
    ) -> Result<Response<tandem_proto::control::DoctorReply>, Status> {
        Err(Status::unimplemented("the fake agent has no doctor"))
    }

    async fn peer_pending(
        &self,
        _: Request<tandem_proto::control::PeerListRequest>,
    ) -> Result<Response<tandem_proto::control::PendingPeers>, Status> {
        Err(Status::unimplemented("the fake agent has no peers"))
    }

    async fn source_pending(
        &self,
        _: Request<tandem_proto::control::SourceListRequest>,
    ) -> Result<Response<tandem_proto::control::SourceOffers>, Status> {
        Err(Status::unimplemented("the fake agent has no peers"))
    }

    async fn source_accept(
        &self,
        _: Request<tandem_proto::control::SourceAcceptRequest>,
    ) -> Result<Response<SourceStatus>, Status> {
        Err(Status::unimplemented("the fake agent has no peers"))
    }

    type WatchStream = ReceiverStream<Result<Event, Status>>;

    async fn watch(&self, _: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        self.watchers
            .lock()
            .map_err(|_| Status::internal("poisoned"))?
            .send(tx)
            .map_err(|_| Status::internal("test is gone"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A fake agent serving `<home>/control.sock` on its own thread until dropped.
struct FakeAgent {
    home: tempfile::TempDir,
    watchers: std_mpsc::Receiver<EventSender>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeAgent {
    fn start() -> FakeAgent {
        let home = tempfile::tempdir().expect("temp home");
        let socket = home.path().join("control.sock");
        let (watch_tx, watchers) = std_mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready) = std_mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::UnixListener::bind(&socket).expect("bind socket");
                ready_tx.send(()).expect("test waits for ready");
                let fake = Fake {
                    watchers: std::sync::Mutex::new(watch_tx),
                };
                tonic::transport::Server::builder()
                    .add_service(ControlServer::new(fake))
                    .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                        let _ = stopped.await; // Dropped sender also means stop.
                    })
                    .await
                    .expect("serve");
            });
        });
        ready.recv_timeout(PATIENCE).expect("fake agent starts");
        FakeAgent {
            home,
            watchers,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn ctl(&self, args: &[&str]) -> Output {
        ctl_in(self.home.path(), args)
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(()); // The server may already be gone.
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join(); // A panic there already failed the test.
        }
    }
}

fn ctl_command(home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandemctl"));
    cmd.env_remove("TANDEM_HOME")
        .arg("--home")
        .arg(home)
        .args(args);
    cmd
}

fn ctl_in(home: &Path, args: &[&str]) -> Output {
    ctl_command(home, args).output().expect("run tandemctl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn no_agent_exits_3_and_says_what_to_do() {
    let home = tempfile::tempdir().expect("temp home");
    let out = ctl_in(home.path(), &["status"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    let dir = home.path().display();
    assert_eq!(
        stderr.trim_end(),
        format!(
            "tandemctl: no tandemd is running for home {dir} (no control socket at {dir}/control.sock); start it with: tandemd --home {dir}"
        )
    );
}

#[test]
fn usage_error_exits_2() {
    let home = tempfile::tempdir().expect("temp home");
    assert_eq!(
        ctl_in(home.path(), &["source", "add"]).status.code(),
        Some(2)
    );
    assert_eq!(
        ctl_in(home.path(), &["wait", "--timeout", "soon"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn id_prints_the_device_id_as_last_word() {
    let agent = FakeAgent::start();
    let out = agent.ctl(&["id"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "AAAA-BBBB-CCCC\n");

    let out = agent.ctl(&["id", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(json["device_id"], "AAAA-BBBB-CCCC");
}

#[test]
fn status_shows_sources_and_item_errors() {
    let agent = FakeAgent::start();
    let out = agent.ctl(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("device   AAAA-BBBB-CCCC\n"), "{stdout}");
    assert!(stdout.contains("source docs\n"), "{stdout}");
    assert!(stdout.contains("3.0 MiB"), "{stdout}");
    assert!(
        stdout.contains("  ! secret.txt: permission denied\n"),
        "{stdout}"
    );

    let out = agent.ctl(&["--json", "status"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(json["sources"][0]["files"], 3);
}

#[test]
fn source_add_sends_an_absolute_path() {
    let agent = FakeAgent::start();
    let out = agent.ctl(&[
        "source", "add", "notes", "rel/dir", "--peer", "P1", "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let path = json["path"].as_str().expect("path is a string");
    assert!(Path::new(path).is_absolute(), "{path}");
    assert!(path.ends_with("rel/dir"), "{path}");
    assert_eq!(json["format"], "files");
    assert_eq!(json["peers"][0], "P1");
}

#[test]
fn agent_error_exits_1_with_its_message() {
    let agent = FakeAgent::start();
    let out = agent.ctl(&["source", "remove", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "tandemctl: no source named nope; see tandemctl source list\n"
    );
}

#[test]
fn empty_id_means_all_sources() {
    let agent = FakeAgent::start();
    assert_eq!(text(&agent.ctl(&["rescan"]).stdout), "rescan id=\"\"\n");
    assert_eq!(
        text(&agent.ctl(&["rescan", "docs"]).stdout),
        "rescan id=\"docs\"\n"
    );
    assert_eq!(text(&agent.ctl(&["pause"]).stdout), "paused all sources\n");
    assert_eq!(
        text(&agent.ctl(&["resume", "docs"]).stdout),
        "resumed source docs\n"
    );
}

#[test]
fn wait_exits_4_when_not_in_sync() {
    let agent = FakeAgent::start();
    let out = agent.ctl(&["wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "in sync\n");

    let out = agent.ctl(&["wait", "--timeout", "0.5"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(text(&out.stdout), "docs: 2 items to send\n");
}

fn event(item: &str) -> Event {
    Event {
        unix_ms: 1_795_619_045_123,
        source: "docs".into(),
        kind: "added".into(),
        item: item.into(),
        sequence: 10,
        ..Event::default()
    }
}

/// Reads one line of a running `watch` on another thread, so a missing flush fails, not hangs;
/// closes the pipe when done.
fn first_line(stdout: std::process::ChildStdout) -> String {
    let (tx, rx) = std_mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line); // An error shows as an empty line.
        let _ = tx.send(line); // The test may have given up already.
    });
    let line = rx.recv_timeout(PATIENCE).expect("watch flushes each line");
    reader.join().expect("reader thread");
    line
}

/// Sends events to a `watch` whose reader has gone until it exits. More than one may be
/// needed: a process that another test forks at that moment holds a copy of the pipe's read
/// end until it execs, and a write in that instant still succeeds.
fn exit_on_closed_pipe(child: &mut std::process::Child, events: &EventSender) -> Option<i32> {
    let deadline = Instant::now() + PATIENCE;
    let mut n = 0;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        assert!(Instant::now() < deadline, "tandemctl did not exit");
        // Once it has exited, the stream is gone and sending fails: that is fine.
        let _ = events.try_send(Ok(event(&format!("b{n}.txt"))));
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn watch_streams_lines_and_stops_quietly_on_a_closed_pipe() {
    let agent = FakeAgent::start();
    for (args, expected) in [
        (
            &["watch"][..],
            "15:04:05.123 docs added a.txt seq=10\n".to_owned(),
        ),
        (
            &["watch", "--json"][..],
            format!(
                "{}\n",
                serde_json::to_string(&event("a.txt")).expect("json")
            ),
        ),
    ] {
        let mut child = ctl_command(agent.home.path(), args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tandemctl watch");
        let events = agent
            .watchers
            .recv_timeout(PATIENCE)
            .expect("watch reaches the agent");
        events.blocking_send(Ok(event("a.txt"))).expect("send");
        let stdout = child.stdout.take().expect("piped stdout");
        assert_eq!(first_line(stdout), expected);
        // The reader is gone: the next write hits a closed pipe, which is a normal stop.
        assert_eq!(
            exit_on_closed_pipe(&mut child, &events),
            Some(0),
            "{args:?}"
        );
    }
}
