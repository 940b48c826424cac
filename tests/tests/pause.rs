//! Story: a paused source stays paused (even across a restart) and ignores changes; on resume
//! the change made meanwhile is found and recorded.

use std::time::Duration;

use tandem_tests::prior::{self};
use tandem_tests::{Agent, num, tree};

#[test]
fn a_change_made_while_paused_is_recorded_after_resume() {
    let mut agent = Agent::start();
    let data = agent.data_dir("docs");
    tree::write(&data.join("a.txt"), "0123456789");
    tree::write(&data.join("sub/b.txt"), "b");
    agent.add_source("docs", &data);
    agent.wait(Duration::from_secs(30));
    let before = agent.source("docs");
    assert_eq!(num(&before, "bytes"), 11, "{before:#}");

    agent.json(&["pause", "docs"]);
    assert_eq!(agent.source("docs")["state"], "paused");
    agent.restart();
    assert_eq!(
        agent.source("docs")["state"],
        "paused",
        "a pause is remembered across restarts"
    );
    // A paused source counts as settled: waiting does not hang on it.
    agent.wait(Duration::from_secs(10));

    let a = data.join("a.txt");
    tree::write(&a, "0123456789 and fifteen more");
    let paused = agent.source("docs");
    assert_eq!(paused["state"], "paused", "{paused:#}");
    assert_eq!(
        num(&paused, "sequence"),
        num(&before, "sequence"),
        "{paused:#}"
    );

    agent.json(&["resume", "docs"]);
    agent.wait(Duration::from_secs(30));
    let after = agent.source("docs");
    assert_eq!(after["state"], "idle", "{after:#}");
    assert!(
        num(&after, "sequence") > num(&before, "sequence"),
        "{after:#}"
    );
    assert_eq!(num(&after, "bytes"), 27 + 1, "{after:#}");
    assert_eq!(num(&after, "files"), 2, "{after:#}");

    let rows = agent.prior_state("docs");
    let row = &rows["a.txt"];
    assert_eq!(row.size, 27);
    assert!(!row.deleted);
    assert_eq!(
        u64::try_from(row.sequence).ok(),
        Some(num(&after, "sequence")),
        "a.txt's difference is the latest one"
    );
    prior::assert_matches_tree(&rows, &data);
}
