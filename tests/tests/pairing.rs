//! Pairing in few steps: a device that dials in unknown is listed as pending, is added, gets
//! a source offered, accepts it at a path of its own, and the source syncs.

use std::time::Duration;

use serde_json::Value;
use tandem_tests::{Agent, backoff, tree};

const LIMIT: Duration = Duration::from_secs(60);

fn listed<'v>(v: &'v Value, field: &str) -> &'v [Value] {
    v[field].as_array().map_or(&[], Vec::as_slice)
}

#[test]
fn a_device_that_dials_in_is_pending_then_added_offered_a_source_and_accepts_it() {
    let a = Agent::start();
    let b = Agent::start();
    let da = a.data_dir("docs");
    tree::write(&da.join("hello.txt"), "from A");
    tree::write(&da.join("sub/deeper.txt"), "deeper");

    // 1. B trusts A and dials it; A does not know B yet, refuses, and lists it.
    b.add_peer(&a);
    let pending = backoff::retry_with_backoff(LIMIT, || {
        let v = a.json(&["peer", "pending"]);
        listed(&v, "peers")
            .iter()
            .any(|p| p["device_id"] == b.device_id())
            .then_some(v)
    })
    .expect("A lists B as pending");
    let entry = listed(&pending, "peers")
        .iter()
        .find(|p| p["device_id"] == b.device_id())
        .expect("B's entry");
    assert!(
        entry["address"]
            .as_str()
            .is_some_and(|s| s.starts_with("127.0.0.1:")),
        "{pending:#}"
    );
    assert!(
        entry["last_seen_unix_ms"].as_u64().unwrap_or(0) > 0,
        "{pending:#}"
    );
    let plain = a.plain(&["peer", "pending"]);
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(
        text.contains(&format!("tandemctl peer add {}", b.device_id())),
        "{text}"
    );

    // 2. A adds it; it is no longer pending.
    a.json(&["peer", "add", &b.device_id()]);
    a.await_connected(&[&b], LIMIT);
    let v = a.json(&["peer", "pending"]);
    assert!(listed(&v, "peers").is_empty(), "{v:#}");

    // 3. A shares a source with B; B lists the offer.
    a.share("docs", &da, &[&b]);
    let offers = backoff::retry_with_backoff(LIMIT, || {
        let v = b.json(&["source", "pending"]);
        listed(&v, "offers")
            .iter()
            .any(|o| o["source"] == "docs")
            .then_some(v)
    })
    .expect("B lists the offer of docs");
    let offer = listed(&offers, "offers")
        .iter()
        .find(|o| o["source"] == "docs")
        .expect("the offer");
    assert_eq!(offer["device_id"], a.device_id(), "{offers:#}");
    assert_eq!(offer["kind"], "files", "{offers:#}");
    assert_eq!(offer["have"], false, "{offers:#}");

    // 4. B accepts it at a path of its own; the source syncs, and the offer is gone.
    let db = b.data_dir("docs");
    let accepted = b.json(&["source", "accept", "docs", db.to_str().expect("utf-8 path")]);
    assert_eq!(accepted["format"], "files", "{accepted:#}");
    tandem_tests::settle(&a, &b, LIMIT);
    tree::assert_same_trees(&da, &db);
    let v = b.json(&["source", "pending"]);
    assert!(listed(&v, "offers").is_empty(), "{v:#}");

    // Taking an offer nobody made says what to do.
    let err = b.fails(
        &["source", "accept", "nothing", db.to_str().expect("path")],
        1,
    );
    assert!(err.contains("source pending"), "{err}");
}
