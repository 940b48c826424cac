//! Story: an agent restarted on the same home trusts its prior state and rehashes nothing;
//! afterwards a change costs exactly the changed file.

use std::time::Duration;

use tandem_tests::{Agent, EVENT_DEADLINE, num, tree};

#[test]
fn a_restart_rehashes_nothing_and_then_only_the_changed_file() {
    let mut agent = Agent::start();
    let data = agent.data_dir("docs");
    for i in 0..60u32 {
        let size = 100 + usize::try_from(i).expect("small") * 97;
        tree::write(
            &data.join(format!("dir{}/file{i}.txt", i % 6)),
            vec![b'a'; size],
        );
    }
    agent.add_source("docs", &data);
    agent.wait(Duration::from_secs(30));
    let first = agent.source("docs");
    assert_eq!(num(&first, "files"), 60, "{first:#}");
    assert!(
        num(&first, "hashed_bytes") >= num(&first, "bytes"),
        "{first:#}"
    );

    agent.kill();
    let stopped = agent.fails(&["status"], 3);
    assert!(stopped.contains("no tandemd is running"), "{stopped}");

    agent.start_again();
    agent.wait(Duration::from_secs(30));
    let status = agent.status();
    assert_eq!(
        num(&status, "hashed_bytes"),
        0,
        "rehashed after restart: {status:#}"
    );
    let again = agent.source("docs");
    assert_eq!(again["state"], "idle", "{again:#}");
    assert!(num(&again, "scans") >= 1, "{again:#}");
    for field in ["files", "directories", "bytes", "sequence"] {
        assert_eq!(num(&again, field), num(&first, field), "{field}: {again:#}");
    }

    let mut watch = agent.watch("docs");
    let changed = data.join("dir3/file9.txt");
    let old_size = std::fs::metadata(&changed).expect("stat").len();
    let new_contents = vec![b'b'; 4321];
    tree::overwrite_in_place(&changed, &new_contents);
    watch.expect("modified", "dir3/file9.txt", EVENT_DEADLINE);
    agent.wait(Duration::from_secs(30));

    let status = agent.status();
    assert_eq!(num(&status, "hashed_bytes"), 4321, "{status:#}");
    let after = agent.source("docs");
    assert_eq!(num(&after, "hashed_bytes"), 4321, "{after:#}");
    assert_eq!(num(&after, "files"), 60, "{after:#}");
    assert_eq!(
        num(&after, "bytes"),
        num(&first, "bytes") - old_size + 4321,
        "{after:#}"
    );
    assert_eq!(
        num(&after, "sequence"),
        num(&first, "sequence") + 1,
        "{after:#}"
    );
}
