//! What a person sees: during a large sync, `status` and `status --follow` on a terminal (a
//! pty made by `script`) draw a bar with bytes, rate and ETA; piped, `status` prints plain
//! lines without escape codes.

use std::process::Command;
use std::time::Duration;

use tandem_tests::tree::write_pseudo_random;
use tandem_tests::{Agent, SlowPair, backoff, bins, num, skip};

const MIB: u64 = 1 << 20;
const LIMIT: Duration = Duration::from_secs(120);

/// Runs `tandemctl ARGS` on a pseudo-terminal for at most `secs` seconds (then SIGINT, as a
/// person's Ctrl-C), and returns what it drew.
fn on_a_terminal(agent: &Agent, args: &str, secs: u32) -> String {
    let command = format!(
        "{} --home {} {args}",
        bins::tandemctl().display(),
        agent.home().display()
    );
    let out = Command::new("timeout")
        .args([
            "-s",
            "INT",
            &secs.to_string(),
            "script",
            "-qfec",
            &command,
            "/dev/null",
        ])
        .env("TERM", "xterm-256color")
        .output()
        .expect("run script");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_large_sync_shows_a_bar_on_a_terminal_and_plain_lines_in_a_pipe() {
    if Command::new("script").arg("--version").output().is_err() {
        skip("`script` (util-linux) is not installed: no pseudo-terminal to draw on");
        return;
    }
    // Every read held back: the sync runs for many seconds while the terminal is looked at.
    let SlowPair { a, b, proxy, .. } = tandem_tests::two_sharing_slowly(
        |da| {
            for i in 0..4 {
                write_pseudo_random(&da.join(format!("big-{i}.bin")), 0x7E57_0000 + i, 16 * MIB);
            }
        },
        Duration::from_millis(20),
    );
    backoff::retry_with_backoff(LIMIT, || {
        (num(&b.progress("docs", &a), "fetched_bytes") > MIB).then_some(())
    })
    .expect("B starts fetching");

    let drawn = on_a_terminal(&b, "status", 10);
    assert!(drawn.contains("syncing"), "{drawn}");
    assert!(
        drawn.contains("=>") || drawn.contains("=="),
        "a bar: {drawn}"
    );
    assert!(drawn.contains("/s, ETA"), "rate and ETA: {drawn}");

    let live = on_a_terminal(&b, "status --follow", 3);
    assert!(live.contains("source docs (files): syncing"), "{live}");
    assert!(live.contains("ETA"), "{live}");
    assert!(live.contains("MiB"), "bytes: {live}");

    let piped = b.plain(&["status"]);
    let text = String::from_utf8_lossy(&piped.stdout);
    assert!(text.contains("state     syncing"), "{text}");
    assert!(text.contains("syncing:"), "a plain line per peer: {text}");
    assert!(
        !text.contains('\u{1b}'),
        "no escape codes in a pipe: {text:?}"
    );
    assert!(!text.contains("ETA"), "no bar in a pipe: {text}");

    proxy.delay(Duration::ZERO);
    tandem_tests::settle(&a, &b, LIMIT);
    let piped = b.plain(&["status"]);
    let text = String::from_utf8_lossy(&piped.stdout);
    assert!(text.contains("in sync"), "{text}");
}
