//! Stories of bad input: each gets a clear error naming what is wrong and what to do, and the
//! agent keeps working.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use tandem_tests::prior::{self};
use tandem_tests::{Agent, EVENT_DEADLINE, num, run_ctl, tree};

#[test]
fn unknown_source_ids_are_refused_and_point_to_source_list() {
    let agent = Agent::start();
    let data = agent.data_dir("docs");
    agent.add_source("docs", &data);
    for args in [
        &["rescan", "nope"][..],
        &["pause", "nope"],
        &["resume", "nope"],
        &["source", "remove", "nope"],
    ] {
        let stderr = agent.fails(args, 1);
        assert!(stderr.contains("\"nope\""), "{args:?}: {stderr}");
        assert!(stderr.contains("source list"), "{args:?}: {stderr}");
    }
    // The real source was not touched by any of it.
    let list = agent.json(&["source", "list"]);
    assert_eq!(list["sources"][0]["id"], "docs", "{list:#}");
    assert_ne!(list["sources"][0]["state"], "paused", "{list:#}");
}

#[test]
fn adding_a_path_that_does_not_exist_names_the_path() {
    let agent = Agent::start();
    let missing = agent.data_dir("parent").join("not-here");
    let shown = missing.to_str().expect("UTF-8 temp path");
    let stderr = agent.fails(&["source", "add", "docs", shown], 1);
    assert!(stderr.contains(shown), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    let list = agent.json(&["source", "list"]);
    assert_eq!(
        list["sources"].as_array().map(Vec::len).unwrap_or(0),
        0,
        "{list:#}"
    );
}

#[test]
fn an_unknown_format_is_refused_with_the_list_of_formats() {
    let agent = Agent::start();
    let data = agent.data_dir("docs");
    let shown = data.to_str().expect("UTF-8 temp path");
    let stderr = agent.fails(&["source", "add", "x", shown, "--format", "nope"], 1);
    assert!(stderr.contains("\"nope\""), "{stderr}");
    assert!(stderr.contains("known formats: files"), "{stderr}");
    let list = agent.json(&["source", "list"]);
    assert_eq!(
        list["sources"].as_array().map(Vec::len).unwrap_or(0),
        0,
        "{list:#}"
    );
}

#[test]
fn adding_the_same_id_twice_is_refused() {
    let agent = Agent::start();
    let first = agent.data_dir("one");
    let second = agent.data_dir("two");
    agent.add_source("docs", &first);
    let shown = second.to_str().expect("UTF-8 temp path");
    let stderr = agent.fails(&["source", "add", "docs", shown], 1);
    assert!(stderr.contains("\"docs\""), "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
    let list = agent.json(&["source", "list"]);
    let sources = list["sources"].as_array().expect("a list of sources");
    assert_eq!(sources.len(), 1, "{list:#}");
    assert_eq!(
        sources[0]["path"],
        fs::canonicalize(&first)
            .expect("canonical path")
            .to_str()
            .expect("UTF-8"),
        "the first source is unchanged"
    );
}

#[test]
fn an_unreadable_file_is_an_item_error_and_the_rest_is_scanned() {
    let Some(agent) = Agent::start_honouring_permissions() else {
        return;
    };
    let data = agent.data_dir("docs");
    tree::write(&data.join("ok1.txt"), "one");
    tree::write(&data.join("sub/ok2.txt"), "two!");
    tree::write(&data.join("sub/ok3.txt"), "three");
    let secret = data.join("sub/secret.txt");
    tree::write(&secret, "nobody may read this");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).expect("chmod 000");

    agent.add_source("docs", &data);
    agent.wait(Duration::from_secs(30));

    let s = agent.source("docs");
    assert_eq!(s["state"], "idle", "{s:#}");
    assert_eq!(num(&s, "files"), 3, "{s:#}");
    assert_eq!(num(&s, "bytes"), 3 + 4 + 5, "{s:#}");
    let errors = s["item_errors"].as_array().expect("item_errors is a list");
    assert_eq!(errors.len(), 1, "{s:#}");
    assert_eq!(errors[0]["item"], "sub/secret.txt", "{s:#}");
    let message = errors[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("Permission denied"), "{message}");
    assert!(
        !agent.prior_state("docs").contains_key("sub/secret.txt"),
        "an unread file has no prior state"
    );
}

#[test]
fn a_second_agent_on_the_same_home_is_refused_and_the_first_keeps_working() {
    let agent = Agent::start();
    let id = agent.json(&["id"]);

    let mut second = agent.tandemd_command();
    let out = tandem_tests::process::run_bounded(&mut second, Duration::from_secs(30));
    let report = tandem_tests::process::describe(&second, &out);
    assert!(!out.status.success(), "{report}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already running"), "{report}");
    assert!(
        stderr.contains(agent.home().to_str().expect("UTF-8 temp path")),
        "{report}"
    );

    assert_eq!(agent.json(&["id"]), id, "the first agent still answers");
    let data = agent.data_dir("docs");
    tree::write(&data.join("a.txt"), "still working");
    agent.add_source("docs", &data);
    agent.wait(Duration::from_secs(30));
    assert_eq!(num(&agent.source("docs"), "files"), 1);
}

#[test]
fn tandemctl_without_an_agent_exits_3_and_says_how_to_start_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path().join("home");
    let out = run_ctl(&home, &["status"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown = home.to_str().expect("UTF-8 temp path");
    assert!(stderr.contains(shown), "{stderr}");
    assert!(
        stderr.contains(&format!("tandemd --home {shown}")),
        "{stderr}"
    );
}

#[test]
fn a_source_whose_folder_disappears_stops_says_why_and_recovers() {
    let agent = Agent::start();
    let gone = agent.data_dir("gone");
    let other = agent.data_dir("other");
    let files = [("a.txt", "aaa"), ("sub/b.txt", "bb")];
    for (path, contents) in files {
        tree::write(&gone.join(path), contents);
    }
    tree::write(&other.join("o.txt"), "other");
    let added = agent.add_source("gone", &gone);
    let root = added["path"].as_str().expect("path").to_owned();
    agent.add_source("other", &other);
    agent.wait(Duration::from_secs(30));
    let mut watch = agent.watch("other");

    fs::remove_dir_all(&gone).expect("rm -r the source folder");
    let event = watch.expect_where("source-error of \"gone\"", Duration::from_secs(3), |e| {
        e["kind"] == "source-error" && e["source"] == "gone"
    });
    assert!(
        event["detail"].as_str().unwrap_or_default().contains(&root),
        "{event}"
    );
    let s = agent.source("gone");
    assert_eq!(s["state"], "error", "{s:#}");
    let error = s["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&root) && error.contains("missing"),
        "{error}"
    );
    // Nothing is recorded as deleted: the folder is missing, not emptied.
    assert!(agent.prior_state("gone").values().all(|r| !r.deleted));
    // `wait` does not hang on a stopped source; it says which one and why.
    let out = agent.ctl(&["wait", "--timeout", "20"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("gone: stopped"),
        "{out:?}"
    );

    // The other source is still served.
    tree::write(&other.join("new.txt"), "new");
    let event = watch.expect("added", "new.txt", EVENT_DEADLINE);
    assert_eq!(event["source"], "other");
    assert!(
        agent
            .prior_state("other")
            .get("new.txt")
            .is_some_and(|r| !r.deleted)
    );
    assert_eq!(agent.source("other")["error"], "");

    // The folder comes back empty (an unmounted disk's mount point, say): still stopped, now
    // because its marker is missing, and still nothing recorded as deleted.
    fs::create_dir(&gone).expect("mkdir the source folder again");
    let event = watch.expect_where(
        "source-error about the missing marker of \"gone\"",
        Duration::from_secs(15),
        |e| {
            e["kind"] == "source-error"
                && e["source"] == "gone"
                && e["detail"].as_str().is_some_and(|d| d.contains("marker"))
        },
    );
    assert!(
        event["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(".tandem"),
        "{event}"
    );
    assert_eq!(agent.source("gone")["state"], "error");
    assert!(agent.prior_state("gone").values().all(|r| !r.deleted));

    // The disk is mounted again: content and marker come back; the source retries on its own
    // and recovers.
    fs::create_dir(gone.join(".tandem")).expect("the marker comes back with the disk");
    let back = watch_mark();
    for (path, contents) in files {
        tree::write(&gone.join(path), contents);
    }
    watch.expect_where(
        "scan-finished of \"gone\" after it came back",
        Duration::from_secs(15),
        |e| {
            e["kind"] == "scan-finished"
                && e["source"] == "gone"
                && e["unix_ms"].as_u64() >= Some(back)
        },
    );
    agent.wait(Duration::from_secs(20));
    let s = agent.source("gone");
    assert_eq!(s["state"], "idle", "{s:#}");
    assert_eq!(s["error"], "", "{s:#}");
    assert_eq!(num(&s, "files"), 2, "{s:#}");
    assert_eq!(num(&s, "bytes"), 5, "{s:#}");
    // `sub` was made again with a new inode, and its row follows.
    prior::assert_matches_tree(&agent.prior_state("gone"), &gone);
}

/// Now, in the Unix milliseconds that events carry.
fn watch_mark() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(now.as_millis()).expect("fits")
}
