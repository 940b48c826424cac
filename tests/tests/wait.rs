//! Story: `wait` means "the data is everywhere it is shared", not "nothing to do with the
//! devices that happen to be connected". A receiver whose peer has not come up yet keeps
//! waiting, says which device it has not reached and why, and returns once the files are there.

use serde_json::Value;
use tandem_tests::{Agent, run_ctl, tree};

const FILES: usize = 200;

#[test]
fn wait_holds_until_a_peer_that_is_not_up_yet_has_synced() {
    // A exists (its device ID is known) but is down when B starts waiting.
    let mut a = Agent::start();
    let a_id = a.device_id();
    let da = a.data_dir("docs");
    for i in 0..FILES {
        tree::write(
            &da.join(format!("d{}/f{i:03}.txt", i % 10)),
            format!("file {i}\n"),
        );
    }
    a.kill();

    // B shares the source with A and knows no address for it: A dials in once it is up.
    let b = Agent::start();
    let db = b.data_dir("docs");
    b.json(&["peer", "add", &a_id]);
    let added = b.json(&["source", "add", "docs", path(&db), "--peer", &a_id]);
    assert_eq!(added["id"], "docs", "{added:#}");

    let out = b.ctl(&["wait", "--timeout", "2"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "wait must not call a source in sync before its peer was ever reached: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let reply: Value = serde_json::from_slice(&out.stdout).expect("wait --json prints JSON");
    let unreached = reply["unreached"]
        .as_array()
        .unwrap_or_else(|| panic!("no unreached devices in {reply:#}"));
    assert_eq!(unreached.len(), 1, "{reply:#}");
    assert_eq!(unreached[0]["device_id"], a_id.as_str(), "{reply:#}");
    let reason = unreached[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("never connected"), "{reply:#}");

    // The human form names the device too.
    let human = b.plain(&["wait", "--timeout", "0.5"]);
    assert_eq!(human.status.code(), Some(4));
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains(&a_id) && text.contains("not reached"),
        "human wait output: {text}"
    );

    // The old meaning is still there for scripts that want it: no connected device, nothing
    // to wait for.
    let connected_only = b.ctl(&["wait", "--connected", "--timeout", "5"]);
    assert_eq!(
        connected_only.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&connected_only.stdout)
    );

    // A long wait started now returns once A has come up and B has every file.
    let home = b.home().to_path_buf();
    let waiting = std::thread::spawn(move || run_ctl(&home, &["wait", "--timeout", "120"]));
    a.start_again();
    a.add_peer(&b);
    a.json(&["source", "add", "docs", path(&da), "--peer", &b.device_id()]);
    let out = waiting.join().expect("the waiting thread ends");
    assert_eq!(
        out.status.code(),
        Some(0),
        "wait did not end in sync once the peer came up: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    tree::assert_same_trees(&da, &db);
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}
