//! Tests that cannot run on this machine (no root, a missing tool) say so instead of passing.
//!
//! libtest has no "skipped at run time" outcome, so a skipping test returns early (counted as
//! passed by cargo) after calling [`skip`], which prints the reason and appends a line to the
//! file named by `TANDEM_SKIPPED_LOG`. `tests/run` sets that variable and moves those tests
//! from "passed" to "skipped" in the suite's closing line, listing each with its reason.
//! Must not: decide whether a test can run (the test does), or hide a failure.

use std::io::Write as _;

/// Environment variable naming the file where skipped tests are recorded.
pub const SKIPPED_LOG: &str = "TANDEM_SKIPPED_LOG";

/// Records the running test as skipped, with `reason`; the caller returns right after.
pub fn skip(reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("unknown test");
    let reason = reason.replace('\n', " ");
    eprintln!("skipped: {test}: {reason}");
    let Some(path) = std::env::var_os(SKIPPED_LOG) else {
        return;
    };
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{test}\t{reason}"));
    if let Err(e) = written {
        // The closing line would count this test as passed: fail loudly instead.
        panic!(
            "cannot record a skipped test in {}: {e}",
            std::path::Path::new(&path).display()
        );
    }
}
