//! Stories of a hostile peer: a client with the valid certificate of a device the agent knows
//! (M), speaking `peer.proto` itself, sends what no honest agent would: paths that climb out
//! of the source, absolute paths, paths through symlinks, the agent's own folder, sources it
//! is not a member of, chunks that do not match their hash, oversized frames. Each is refused
//! (counted in `status` against M, logged with M's device ID, or the connection is dropped),
//! nothing is written outside what is allowed, and the agent keeps working afterwards.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tandem_proto::peer::{self as pb, frame::Body};
use tandem_tests::hostile::{DeviceKey, HostilePeer, body, file_item, hash, header, item};
use tandem_tests::tree::{self, Kind};
use tandem_tests::{Agent, backoff, num};

/// Longest the agent may take to react to one frame.
const LIMIT: Duration = Duration::from_secs(20);
/// The agent's frame limit (16 MiB), which the oversized frame exceeds.
const MAX_FRAME_BYTES: usize = 16 << 20;

const VICTIM: &str = "a file outside the source that must survive";
const SECRET: &str = "outside the source: never served to a peer";
const HELLO: &str = "a file inside the shared source";
const PRIVATE: &str = "a file of a source not shared with M";

/// What [`Scene::disk`] keeps of one item: its kind, and a file's or link's size, mtime and
/// inode.
type OnDisk = (Kind, Option<(u64, i64, u64)>);

/// Agent A with a source `docs` shared with device M and a source `private` that is not,
/// M's identity (M was started once, then stopped), and the folders around them.
struct Scene {
    a: Agent,
    /// Stopped; kept so its home, which holds the key, outlives the test.
    _m: Agent,
    key: DeviceKey,
    /// The folder holding `docs`, `private` and `outside`, side by side.
    data: PathBuf,
    docs: PathBuf,
    private: PathBuf,
    outside: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        let mut m = Agent::start();
        let m_id = m.device_id();
        m.kill();
        let key = DeviceKey::from_home(m.home(), &m_id);

        let a = Agent::start();
        let outside = a.data_dir("outside");
        tree::write(&outside.join("victim.txt"), VICTIM);
        tree::write(&outside.join("secret.txt"), SECRET);
        let docs = a.data_dir("docs");
        tree::write(&docs.join("hello.txt"), HELLO);
        // Made on A by its owner: links out of the source that a peer must not write through.
        symlink(&outside, docs.join("link")).expect("symlink docs/link");
        symlink(outside.join("secret.txt"), docs.join("filelink")).expect("symlink filelink");
        let private = a.data_dir("private");
        tree::write(&private.join("private.txt"), PRIVATE);
        let data = docs.parent().expect("docs has a parent").to_path_buf();

        // M is known (no address: A never dials it, M dials A).
        a.json(&["peer", "add", &m_id]);
        let docs_text = docs.to_str().expect("UTF-8 temp path");
        a.json(&["source", "add", "docs", docs_text, "--peer", &m_id]);
        a.add_source("private", &private);
        let scanned = backoff::retry_with_backoff(LIMIT, || {
            let s = a.status();
            let all = s["sources"].as_array()?;
            (all.len() == 2 && all.iter().all(|src| num(src, "scans") >= 1)).then_some(())
        });
        assert!(scanned.is_some(), "sources not scanned: {:#}", a.status());
        Scene {
            a,
            _m: m,
            key,
            data,
            docs,
            private,
            outside,
        }
    }

    fn m_id(&self) -> &str {
        &self.key.device_id
    }

    /// Opens an exchange as M, checks A's hello, and says hello sharing `sources`.
    fn connect(&self, sources: &[&str]) -> HostilePeer {
        let peer = HostilePeer::connect_with_retry(&self.a.listen(), &self.key, LIMIT);
        let hello = peer.agent_hello(LIMIT);
        let offered: Vec<&str> = hello.sources.iter().map(|c| c.source.as_str()).collect();
        assert_eq!(
            offered,
            ["docs"],
            "A offers M only what it shares with M: {hello:?}"
        );
        peer.hello(self.m_id(), sources);
        peer
    }

    /// M's `refused` counter in A's `status --json`.
    fn refused(&self) -> u64 {
        let status = self.a.status();
        status["peers"]
            .as_array()
            .and_then(|all| all.iter().find(|p| p["device_id"] == self.m_id()))
            .map(|p| num(p, "refused"))
            .unwrap_or_else(|| panic!("M is not among A's peers:\n{status:#}"))
    }

    /// Does `act`, then waits until A has counted one more refusal against M.
    fn expect_refused(&self, what: &str, act: impl FnOnce()) {
        let before = self.refused();
        act();
        let grew = backoff::retry_with_backoff(LIMIT, || (self.refused() > before).then_some(()));
        assert!(
            grew.is_some(),
            "{what}: A did not count it as refused within {LIMIT:?}; status:\n{:#}",
            self.a.status()
        );
    }

    /// A's progress entry for source `docs` with M.
    fn progress(&self) -> Value {
        let s = self.a.source("docs");
        s["progress"]
            .as_array()
            .and_then(|all| all.iter().find(|p| p["device_id"] == self.m_id()))
            .cloned()
            .unwrap_or_else(|| panic!("docs has no progress for M:\n{s:#}"))
    }

    /// Waits until `path` in `docs` holds `contents`: A applied a legitimate item.
    fn expect_landed(&self, path: &str, contents: &[u8]) {
        let file = self.docs.join(path);
        let landed = backoff::retry_with_backoff(LIMIT, || {
            fs::read(&file).ok().filter(|got| got == contents).map(drop)
        });
        assert!(
            landed.is_some(),
            "{path} did not arrive within {LIMIT:?}; status:\n{:#}",
            self.a.status()
        );
    }

    /// Everything under the data folder that a write could change: each item's kind, and a
    /// file's or link's size, mtime and inode (folder mtimes move with temp files, which
    /// are checked on their own).
    fn disk(&self) -> BTreeMap<String, OnDisk> {
        tree::snapshot(&self.data)
            .into_iter()
            .map(|(path, e)| {
                let detail = (e.kind != Kind::Directory).then_some((e.size, e.mtime_ns, e.inode));
                (path, (e.kind, detail))
            })
            .collect()
    }

    /// Waits until A's log names M's device ID on a line that contains `what`.
    fn expect_logged(&self, what: &str) {
        let log = self.a.home().join("logs").join("tandemd.log");
        let found = backoff::retry_with_backoff(LIMIT, || {
            let text = fs::read_to_string(&log).ok()?;
            text.lines()
                .any(|l| l.contains(what) && l.contains(self.m_id()))
                .then_some(())
        });
        assert!(
            found.is_some(),
            "no line of {} has both {what:?} and M's device ID {}",
            log.display(),
            self.m_id()
        );
    }
}

/// Temp files of the agent anywhere under `root`, its temp folder included.
fn temps(root: &Path) -> Vec<String> {
    tree::temps(root)
}

fn dir_item(path: &str, version: pb::Version) -> pb::Item {
    let body = pb::FileBody {
        kind: pb::ItemKind::Directory as i32,
        mode: 0o755,
        ..Default::default()
    };
    item(path, version, body)
}

fn link_item(path: &str, target: &str, version: pb::Version) -> pb::Item {
    let body = pb::FileBody {
        kind: pb::ItemKind::Symlink as i32,
        mode: 0o777,
        symlink_target: target.to_owned(),
        ..Default::default()
    };
    item(path, version, body)
}

fn tombstone(path: &str, version: pb::Version) -> pb::Item {
    let body = pb::FileBody {
        kind: pb::ItemKind::File as i32,
        ..Default::default()
    };
    let mut gone = item(path, version, body);
    header(&mut gone).deleted = true;
    gone
}

#[test]
fn paths_out_of_the_source_and_unshared_sources_are_refused_and_nothing_is_written() {
    let s = Scene::new();
    let before = s.disk();
    let mut m = s.connect(&["docs", "private", "nosuch"]);

    // Paths that climb out, are absolute, hold a NUL, or name the agent's own folder.
    let absolute = format!("{}/absolute.txt", s.outside.display());
    for path in [
        "../escape.txt",
        "a/../../escape",
        absolute.as_str(),
        "nul\0byte.txt",
        ".tandem/versions/planted.txt",
        ".tandem",
    ] {
        s.expect_refused(&format!("item path {path:?}"), || {
            let item = m.file(path, b"pwned");
            m.update("docs", vec![item]);
        });
    }

    // Through the symlink `link` that A's owner made to a folder outside the source: a new
    // file, a folder, a link, and a deletion of a file that lives out there.
    s.expect_refused("a file through a symlink", || {
        let item = m.file("link/pwned.txt", b"pwned");
        m.update("docs", vec![item]);
    });
    s.expect_refused("a folder through a symlink", || {
        let version = m.version();
        m.update("docs", vec![dir_item("link/newdir", version)]);
    });
    s.expect_refused("a link through a symlink", || {
        let version = m.version();
        m.update("docs", vec![link_item("link/evil", "/", version)]);
    });
    s.expect_refused("a deletion through a symlink", || {
        let version = m.version();
        m.update("docs", vec![tombstone("link/victim.txt", version)]);
    });

    // A link the peer makes is an ordinary item, but nothing may be written through it.
    let outside_text = s.outside.to_str().expect("UTF-8 temp path").to_owned();
    let version = m.version();
    m.update("docs", vec![link_item("esc", &outside_text, version)]);
    let made = backoff::retry_with_backoff(LIMIT, || {
        fs::symlink_metadata(s.docs.join("esc"))
            .ok()
            .filter(|meta| meta.file_type().is_symlink())
    });
    assert!(made.is_some(), "the peer's link esc did not arrive");
    s.expect_refused("a file through a link the peer made", || {
        let item = m.file("esc/pwned.txt", b"pwned");
        m.update("docs", vec![item]);
    });

    // A file M made, turned into a link out of the source and "touched" (same content, new
    // mode and mtime) in the same update: neither lands on what the link points to.
    let item = m.file("touch.txt", b"same bytes");
    m.update("docs", vec![item]);
    s.expect_landed("touch.txt", b"same bytes");
    let victim = s.outside.join("victim.txt");
    let victim_before = fs::metadata(&victim).expect("stat victim.txt");
    let victim_text = victim.to_str().expect("UTF-8 temp path").to_owned();
    let version = m.version();
    let mut touched = m.file("touch.txt", b"same bytes");
    body(&mut touched).mode = 0o777;
    body(&mut touched).mtime_ns = 1_000_000_000;
    m.update(
        "docs",
        vec![link_item("touch.txt", &victim_text, version), touched],
    );
    // The last word is the file: it comes back as a real file with the new mode.
    let replaced = backoff::retry_with_backoff(LIMIT, || {
        fs::symlink_metadata(s.docs.join("touch.txt"))
            .ok()
            .filter(|meta| meta.file_type().is_file() && meta.mode() & 0o7777 == 0o777)
    });
    assert!(
        replaced.is_some(),
        "touch.txt did not become the touched file"
    );
    let victim_after = fs::metadata(&victim).expect("stat victim.txt");
    assert_eq!(
        (
            victim_after.mode(),
            victim_after.mtime(),
            victim_after.mtime_nsec()
        ),
        (
            victim_before.mode(),
            victim_before.mtime(),
            victim_before.mtime_nsec()
        ),
        "the link's target kept its mode and mtime"
    );

    // Sources M is not a member of: one A has, one it does not.
    s.expect_refused("an update of a source not shared with M", || {
        let item = m.file("stolen.txt", b"pwned");
        m.update("private", vec![item]);
    });
    s.expect_refused("an update of a source A does not have", || {
        let item = m.file("stolen.txt", b"pwned");
        m.update("nosuch", vec![item]);
    });
    // Counts are bounded: an update with more items than allowed is refused whole.
    s.expect_refused("an update with too many items", || {
        let items = (0..5_001)
            .map(|i| file_item(&format!("many/{i}.txt"), b"x", pb::Version::default()))
            .collect();
        m.update("docs", items);
    });
    s.expect_refused("a hello naming another device", || {
        m.hello(
            "AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA",
            &["docs"],
        );
    });

    // A keeps working with M: a legitimate item lands.
    let item = m.file("ok.txt", b"a legitimate change");
    m.update("docs", vec![item]);
    s.expect_landed("ok.txt", b"a legitimate change");

    // Nothing else changed anywhere around the sources: not outside them, not inside.
    let mut expected = before;
    let after = s.disk();
    for added in ["docs/ok.txt", "docs/esc", "docs/touch.txt"] {
        let entry = after
            .get(added)
            .unwrap_or_else(|| panic!("{added} is missing"));
        expected.insert(added.to_owned(), *entry);
    }
    // M's own touch.txt, which its link replaced, is kept as a version like any file a peer
    // replaces; nothing else is.
    for (path, entry) in &after {
        if path.starts_with("docs/.tandem/versions") {
            expected.insert(path.clone(), *entry);
        }
    }
    let versions: Vec<&String> = after
        .keys()
        .filter(|p| p.starts_with("docs/.tandem/versions/"))
        .collect();
    assert!(
        versions.len() == 1 && versions[0].starts_with("docs/.tandem/versions/touch.txt~"),
        "only M's replaced touch.txt is kept as a version: {versions:?}"
    );
    assert_eq!(after, expected, "only the legitimate items were written");
    assert_eq!(
        fs::read_to_string(s.outside.join("victim.txt")).expect("victim.txt survives"),
        VICTIM
    );
    assert!(!s.private.join("stolen.txt").exists());
    assert_eq!(temps(&s.data), Vec::<String>::new(), "no temp file is left");
    s.expect_logged("refused");
}

#[test]
fn chunks_that_do_not_match_their_hash_are_refused_and_leave_nothing() {
    let s = Scene::new();
    let before = s.disk();
    let mut m = s.connect(&["docs"]);

    // The announced chunk hash is right for the announced content, but M answers A's chunk
    // request with other bytes of the same length.
    let wanted = b"the content M announced".to_vec();
    let mut item = m.file("bad-chunk.txt", &wanted);
    let forged: Vec<u8> = wanted.iter().rev().copied().collect();
    let first = body(&mut item).chunks[0].hash.clone();
    m.serve(&first, forged);
    s.expect_refused("a chunk that does not match its hash", || {
        m.update("docs", vec![item]);
    });
    // The failed item is reported (after its temp file is gone) and retried later.
    let reported = backoff::retry_with_backoff(LIMIT, || {
        let p = s.progress();
        p["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("bad-chunk.txt"))
            .then_some(())
    });
    assert!(
        reported.is_some(),
        "no error for bad-chunk.txt: {:#}",
        s.progress()
    );
    assert!(!s.docs.join("bad-chunk.txt").exists());
    assert_eq!(temps(&s.data), Vec::<String>::new(), "no temp file is left");
    assert!(
        !m.heard().chunk_requests.is_empty(),
        "A asked M for the chunk"
    );

    // Every chunk matches its own hash, but together they are not the announced content.
    let (one, two) = (vec![1u8; 70_000], vec![2u8; 70_000]);
    let mut item = m.file("bad-whole.txt", &[one.clone(), two.clone()].concat());
    body(&mut item).hash = hash(&[two, one].concat());
    s.expect_refused("content that does not match its whole hash", || {
        m.update("docs", vec![item]);
    });
    let reported = backoff::retry_with_backoff(LIMIT, || {
        let p = s.progress();
        p["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("bad-whole.txt"))
            .then_some(())
    });
    assert!(
        reported.is_some(),
        "no error for bad-whole.txt: {:#}",
        s.progress()
    );
    assert!(!s.docs.join("bad-whole.txt").exists());
    assert_eq!(temps(&s.data), Vec::<String>::new(), "no temp file is left");

    // Once M serves the right bytes, the retry brings the file in: A kept working.
    m.serve(&hash(&wanted), wanted.clone());
    s.expect_landed("bad-chunk.txt", &wanted);
    let item = m.file("ok.txt", b"a legitimate change");
    m.update("docs", vec![item]);
    s.expect_landed("ok.txt", b"a legitimate change");

    let mut expected = before;
    let after = s.disk();
    for added in ["docs/ok.txt", "docs/bad-chunk.txt"] {
        let entry = after
            .get(added)
            .unwrap_or_else(|| panic!("{added} is missing"));
        expected.insert(added.to_owned(), *entry);
    }
    assert_eq!(after, expected, "only the verified items were written");
    s.expect_logged("does not match");
}

#[test]
fn inline_content_that_does_not_match_its_entry_is_refused_and_leaves_nothing() {
    let s = Scene::new();
    let before = s.disk();
    let mut m = s.connect(&["docs"]);

    // The entry is right for the announced content, but the bytes carried with it are not.
    let wanted = b"the content M announced".to_vec();
    let mut forged_item = m.file("forged-inline.txt", &wanted);
    body(&mut forged_item).inline = wanted.iter().rev().copied().collect::<Vec<u8>>().into();
    s.expect_refused("inline content that does not match its hash", || {
        m.update("docs", vec![forged_item]);
    });
    // A legitimate small file with its content inline lands without any chunk request.
    let asked_before = m.heard().chunk_requests.len();
    let content = b"carried with its entry".to_vec();
    let mut item = file_item("inline.txt", &content, m.version());
    body(&mut item).inline = content.clone().into();
    m.update("docs", vec![item]);
    s.expect_landed("inline.txt", &content);
    assert_eq!(
        m.heard().chunk_requests.len(),
        asked_before,
        "A asked for content it already had"
    );
    assert!(!s.docs.join("forged-inline.txt").exists());
    assert_eq!(temps(&s.data), Vec::<String>::new(), "no temp file is left");
    let mut expected = before;
    let after = s.disk();
    let entry = after
        .get("docs/inline.txt")
        .expect("docs/inline.txt is there");
    expected.insert("docs/inline.txt".to_owned(), *entry);
    assert_eq!(after, expected, "only the verified item was written");
    s.expect_logged("inline content");
}

#[test]
fn chunk_requests_are_served_only_from_inside_shared_sources() {
    let s = Scene::new();
    let mut m = s.connect(&["docs"]);
    let ask = |source: &str, path: &str, contents: &str| pb::ChunkRequest {
        request_id: 0,
        source: source.to_owned(),
        path: path.to_owned(),
        offset: 0,
        len: u32::try_from(contents.len()).expect("short test text"),
        hash: hash(contents.as_bytes()),
    };

    // A file of the shared source is served.
    let answer = m
        .request_chunk(ask("docs", "hello.txt", HELLO), LIMIT)
        .expect("A answers a chunk request");
    assert_eq!(answer.data, HELLO.as_bytes(), "{answer:?}");

    // Nothing is read through a symlink out of the source, even when M knows the hash.
    for path in ["link/secret.txt", "filelink"] {
        let answer = m
            .request_chunk(ask("docs", path, SECRET), LIMIT)
            .expect("A answers a chunk request");
        assert!(
            answer.data.is_empty() && !answer.error.is_empty(),
            "{path}: A served a file outside the source: {answer:?}"
        );
    }

    // A source not shared with M is not served, and the request is counted.
    s.expect_refused("a chunk request of a source not shared with M", || {
        let answer = m
            .request_chunk(ask("private", "private.txt", PRIVATE), LIMIT)
            .expect("A answers a chunk request");
        assert!(
            answer.data.is_empty() && !answer.error.is_empty(),
            "A served a source not shared with M: {answer:?}"
        );
    });
}

#[test]
fn an_oversized_frame_drops_the_connection_and_the_agent_carries_on() {
    let s = Scene::new();
    let before = s.disk();
    let m = s.connect(&["docs"]);

    m.send(Body::ChunkAnswers(pb::ChunkAnswers {
        answers: vec![pb::ChunkData {
            request_id: 1,
            data: vec![0u8; MAX_FRAME_BYTES + 1],
            error: String::new(),
        }],
    }));
    let closed = m.wait_closed(LIMIT);
    assert!(closed.is_some(), "A kept a connection that sent 16 MiB + 1");
    s.expect_logged("refused");
    drop(m);

    // A is alive and takes M back; a legitimate item lands.
    let mut m = s.connect(&["docs"]);
    let item = m.file("ok.txt", b"after the oversized frame");
    m.update("docs", vec![item]);
    s.expect_landed("ok.txt", b"after the oversized frame");
    let mut expected = before;
    let after = s.disk();
    let entry = after.get("docs/ok.txt").expect("docs/ok.txt is there");
    expected.insert("docs/ok.txt".to_owned(), *entry);
    assert_eq!(after, expected, "only the legitimate item was written");
}

#[test]
fn a_peer_speaking_another_protocol_version_is_refused_naming_both_versions() {
    let s = Scene::new();
    let m = HostilePeer::connect_with_retry(&s.a.listen(), &s.key, LIMIT);
    let hello = m.agent_hello(LIMIT);
    assert_eq!(hello.protocol, tandem_proto::PEER_PROTOCOL, "{hello:?}");
    assert!(
        hello.capabilities.iter().any(|c| c == "kind:files"),
        "{hello:?}"
    );
    assert!(hello.sources.iter().all(|c| c.kind == "files"), "{hello:?}");

    let newer = tandem_proto::PEER_PROTOCOL + 1;
    m.hello_as(s.m_id(), &["docs"], newer, "files");
    assert!(
        m.wait_closed(LIMIT).is_some(),
        "A kept a connection that speaks protocol {newer}"
    );
    let theirs = format!("protocol {newer}");
    let ours = format!("protocol {}", tandem_proto::PEER_PROTOCOL);
    let named = backoff::retry_with_backoff(LIMIT, || {
        let status = s.a.status();
        let peer = status["peers"]
            .as_array()?
            .iter()
            .find(|p| p["device_id"] == s.m_id())?
            .clone();
        let error = peer["last_error"].as_str()?.to_owned();
        (error.contains(&theirs) && error.contains(&ours)).then_some(())
    });
    assert!(
        named.is_some(),
        "status does not name both versions:\n{:#}",
        s.a.status()
    );
    s.expect_logged(&theirs);
    // `wait` names M as not reached, and why.
    let out = s.a.ctl(&["wait", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(4));
    let reply: Value = serde_json::from_slice(&out.stdout).expect("wait --json prints JSON");
    let reason = reply["unreached"]
        .as_array()
        .and_then(|all| all.iter().find(|u| u["device_id"] == s.m_id()))
        .and_then(|u| u["reason"].as_str())
        .unwrap_or_default();
    assert!(reason.contains(&theirs), "{reply:#}");

    // Speaking the same protocol again, M is taken back.
    let mut m = s.connect(&["docs"]);
    let item = m.file("ok.txt", b"same protocol again");
    m.update("docs", vec![item]);
    s.expect_landed("ok.txt", b"same protocol again");
}

#[test]
fn a_peer_keeping_the_source_as_another_kind_of_data_is_refused_for_that_source() {
    let s = Scene::new();
    let before = s.disk();
    let mut m = HostilePeer::connect_with_retry(&s.a.listen(), &s.key, LIMIT);
    m.agent_hello(LIMIT);
    m.hello_as(s.m_id(), &["docs"], tandem_proto::PEER_PROTOCOL, "contacts");
    let said = backoff::retry_with_backoff(LIMIT, || {
        let error = s.progress()["last_error"].as_str()?.to_owned();
        (error.contains("contacts") && error.contains("files")).then_some(())
    });
    assert!(
        said.is_some(),
        "A's status does not say the kinds differ:\n{:#}",
        s.a.status()
    );
    // Nothing M sends for the refused source lands.
    s.expect_refused("an update for a source refused for its kind", || {
        let item = m.file("contact.vcf", b"BEGIN:VCARD");
        m.update("docs", vec![item]);
    });
    assert_eq!(s.disk(), before, "nothing was written");
    let out = s.a.ctl(&["wait", "--timeout", "1"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "a refused source is not in sync"
    );
}

/// A folder move with M's hash of nothing, for `from` renamed to `to`, of `items` items.
fn folder_move(from: &str, to: &str, items: u32) -> pb::FolderMove {
    pb::FolderMove {
        from: from.into(),
        to: to.into(),
        items,
        digest: vec![7; 16],
        folder: Some(pb::FileBody {
            kind: pb::ItemKind::Directory as i32,
            mode: 0o755,
            mtime_ns: 1_000_000_000,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn folder_moves_out_of_the_source_are_refused_and_one_that_does_not_match_is_asked_for() {
    let s = Scene::new();
    tree::write(&s.docs.join("photos/a.jpg"), "not really a jpeg");
    tree::write(&s.docs.join("photos/b.jpg"), "nor this");
    let scanned = backoff::retry_with_backoff(LIMIT, || {
        (num(&s.a.source("docs"), "files") == 3).then_some(())
    });
    assert!(scanned.is_some(), "photos not scanned: {:#}", s.a.status());
    let before = s.disk();
    let mut m = s.connect(&["docs"]);

    for (from, to, what) in [
        ("photos", "../escape", "a move out of the source"),
        ("../outside", "stolen", "a move of something outside"),
        ("photos", "photos/inner", "a move into itself"),
        (
            "photos",
            ".tandem/versions/x",
            "a move into the agent's folder",
        ),
        ("link", "link/x", "a move into itself through a link"),
    ] {
        s.expect_refused(what, || m.folder_move("docs", folder_move(from, to, 3)));
    }
    // Plausible, but A's photos are not what M describes (the digest is M's invention): A
    // derives nothing from it, asks for the entries instead, and moves nothing.
    m.folder_move("docs", folder_move("photos", "pictures", 3));
    let heard = m.wait_for(LIMIT, |h| !h.expand_asks.is_empty());
    assert_eq!(
        heard.expand_asks.len(),
        1,
        "A asked for the move's entries once: {:?}",
        heard.expand_asks
    );
    assert_eq!(heard.expand_asks[0].0, "docs");
    let asked = backoff::retry_with_backoff(LIMIT, || {
        (num(&s.progress(), "expanded_moves") == 1).then_some(())
    });
    assert!(asked.is_some(), "{:#}", s.progress());
    assert_eq!(num(&s.progress(), "moved_folders"), 0);
    // Until the entries come, nothing from the move on counts as applied.
    let progress = s.progress();
    assert!(
        num(&progress, "needed_items") == 0,
        "the move itself needs nothing fetched: {progress:#}"
    );
    assert_eq!(s.disk(), before, "nothing moved, nothing written");
    assert!(s.docs.join("photos/a.jpg").is_file());
    assert!(!s.docs.join("pictures").exists());
    // Asking A for the entries of a move it never announced, or in a source it does not share
    // with M, is refused; A carries on.
    for (source, what) in [
        ("docs", "a move never sent"),
        ("private", "an unshared source"),
    ] {
        s.expect_refused(what, || {
            m.send(Body::ExpandMove(pb::ExpandMove {
                source: source.into(),
                first_sequence: 999,
            }));
        });
    }
    let item = m.file("after.txt", b"still syncing");
    m.update("docs", vec![item]);
    s.expect_landed("after.txt", b"still syncing");
}
