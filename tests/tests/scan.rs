//! Story: a source with a thousand files in nested folders is scanned and counted exactly.

use std::time::Duration;

use tandem_tests::prior::{self};
use tandem_tests::{Agent, num, tree};

#[test]
fn a_thousand_files_in_nested_folders_are_counted_exactly() {
    let agent = Agent::start();
    let data = agent.data_dir("photos");
    // 10 folders × 10 subfolders × 10 files, sizes from 0 bytes to just under 12 KiB.
    let mut total_bytes = 0u64;
    for a in 0..10u64 {
        for b in 0..10u64 {
            for f in 0..10u64 {
                let n = a * 100 + b * 10 + f;
                let size = (n * 7919) % 12_000;
                let byte = u8::try_from(n % 251).expect("below 251");
                let contents = vec![byte; usize::try_from(size).expect("small")];
                tree::write(&data.join(format!("d{a}/e{b}/f{f}.bin")), contents);
                total_bytes += size;
            }
        }
    }

    agent.add_source("photos", &data);
    agent.wait(Duration::from_secs(60));

    let s = agent.source("photos");
    assert_eq!(s["state"], "idle", "{s:#}");
    assert_eq!(num(&s, "files"), 1000, "{s:#}");
    assert_eq!(num(&s, "directories"), 110, "{s:#}");
    assert_eq!(num(&s, "symlinks"), 0, "{s:#}");
    assert_eq!(num(&s, "bytes"), total_bytes, "{s:#}");
    assert_eq!(s["item_errors"].as_array().map(Vec::len), Some(0), "{s:#}");
    // One difference per item, each with its own sequence number.
    assert_eq!(num(&s, "sequence"), 1110, "{s:#}");
    // Every byte was read at least once (recently written files may be read twice).
    assert!(num(&s, "hashed_bytes") >= total_bytes, "{s:#}");

    let rows = agent.prior_state("photos");
    assert_eq!(rows.len(), 1110);
    prior::assert_matches_tree(&rows, &data);
}
