//! Stories of devices that are never online together, syncing through a hub
//! (`tandemd --role hub`): every device knows the others without an address, so the hub is
//! the only path; each waits with `tandemctl wait`, which counts a device reached through a
//! hub as in sync once its bundles are applied and this device's changes are uploaded.

use std::fs;
use std::time::Duration;

use tandem_tests::Agent;
use tandem_tests::tree;

/// Longest a small source may take to go through the hub.
const SYNC: Duration = Duration::from_secs(60);

#[test]
fn a_device_converges_through_the_hub_alone_after_the_other_stopped() {
    let hub = Agent::start_hub();
    let a = Agent::start();
    let mut b = Agent::start();
    a.use_hub(&hub);
    b.use_hub(&hub);
    a.know(&b);
    b.know(&a);

    let a_docs = a.data_dir("docs");
    tree::write(&a_docs.join("notes/plan.txt"), b"first plan\n");
    tree::write_pseudo_random(&a_docs.join("big.bin"), 7, 3 << 20);
    a.share_keyed("docs", &a_docs, "files", &[&b], "");
    let key = a.source_key("docs");
    let b_docs = b.data_dir("docs");
    b.share_keyed("docs", &b_docs, "files", &[&a], &key);
    a.wait(SYNC);
    b.wait(SYNC);
    tree::assert_same_trees(&a_docs, &b_docs);

    // B is off while A changes things; then A is off and B comes back: only the hub has them.
    b.kill();
    tree::write(&a_docs.join("notes/plan.txt"), b"second plan\n");
    tree::write(&a_docs.join("notes/new.txt"), b"added while B was away\n");
    tree::write_pseudo_random(&a_docs.join("big.bin"), 8, 3 << 20);
    fs::remove_file(a_docs.join("notes/plan.txt")).expect("delete plan");
    tree::write(&a_docs.join("notes/plan2.txt"), b"the plan, renamed\n");
    a.wait(SYNC);
    let mut a = a;
    a.kill();
    b.start_again();
    b.wait(SYNC);
    tree::assert_same_trees(&a_docs, &b_docs);
    assert!(!b_docs.join("notes/plan.txt").exists());
    assert_eq!(
        fs::read(b_docs.join("notes/new.txt")).expect("new.txt on B"),
        b"added while B was away\n"
    );
}
