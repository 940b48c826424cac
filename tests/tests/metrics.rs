//! The metrics endpoint seen from outside: an agent with `[metrics] listen` in its
//! `config.toml` serves Prometheus text on `GET /metrics` that counts what a sync moved; an
//! agent without it serves none; a bad address stops the start naming the setting.
//!
//! The endpoint is asked for port 0 and found through `tandemctl id --json` (`metrics`), so no
//! test picks a port. Scrapes are plain HTTP/1.0 over a std `TcpStream`, and the text is read
//! by the small parser below, which refuses any line that is not a sample or a comment.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tandem_tests::process::{describe, run_bounded};
use tandem_tests::tree::{self, PseudoRandom};
use tandem_tests::{Agent, num, pair, settle};

/// Longest a small source may take to reach the other device.
const SYNC: Duration = Duration::from_secs(60);
/// Longest a scrape, or a start that must fail, may take.
const LIMIT: Duration = Duration::from_secs(30);

/// Appends `text` to the agent's `config.toml` (the agent is stopped: it reads it at start).
fn append_config(agent: &Agent, text: &str) {
    let path = agent.home().join("config.toml");
    let mut file = OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    file.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Where the agent's metrics endpoint listens, from `tandemctl id --json`; empty: nowhere.
fn metrics_address(agent: &Agent) -> String {
    agent.json(&["id"])["metrics"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The first group of a device ID, as the metrics name a device.
fn short(device_id: &str) -> &str {
    device_id.split('-').next().unwrap_or(device_id)
}

/// `GET /metrics` over HTTP/1.0; the body of a 200 answer.
fn scrape(address: &str) -> String {
    let mut stream =
        TcpStream::connect(address).unwrap_or_else(|e| panic!("cannot connect to {address}: {e}"));
    stream
        .set_read_timeout(Some(LIMIT))
        .expect("set a read timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("send the request");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .unwrap_or_else(|e| panic!("no answer from {address}: {e}"));
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer:\n{answer}"));
    let status = head.lines().next().unwrap_or_default();
    assert!(
        status.contains(" 200 "),
        "scrape answered {status:?}:\n{answer}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("text/plain; version=0.0.4"),
        "not Prometheus text:\n{head}"
    );
    body.to_owned()
}

/// One sample: its labels, in order of name.
type Labels = BTreeMap<String, String>;

/// Prometheus text format, strictly: `# HELP`/`# TYPE` comments and `name{labels} value`
/// lines; every sample's family declared by a `# TYPE` line before it.
fn parse(text: &str) -> Vec<(String, Labels, f64)> {
    let mut typed: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if words.next() == Some("TYPE") {
                let name = words.next().unwrap_or_else(|| panic!("bad TYPE: {line}"));
                let kind = words.next().unwrap_or_else(|| panic!("bad TYPE: {line}"));
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "unknown type in {line:?}"
                );
                typed.push(name.to_owned());
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                (name, parse_labels(inner, line))
            }
            None => (series, Labels::new()),
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        assert!(
            typed.iter().any(|t| t == name),
            "{name} has no # TYPE line before it"
        );
        samples.push((name.to_owned(), labels, value));
    }
    samples
}

/// `a="x",b="y \"quoted\""` into a map.
fn parse_labels(mut rest: &str, line: &str) -> Labels {
    let mut labels = Labels::new();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad label in {line:?}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("bad escape in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unclosed label value in {line:?}"),
            }
        };
        labels.insert(key.to_owned(), value);
        rest = after[end + 1..]
            .strip_prefix(',')
            .unwrap_or(&after[end + 1..]);
    }
    labels
}

/// The value of the one sample named `name` whose labels include `want`.
fn value(samples: &[(String, Labels, f64)], name: &str, want: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .collect();
    match found.as_slice() {
        [v] => *v,
        _ => panic!(
            "{} samples of {name} with {want:?}: {samples:#?}",
            found.len()
        ),
    }
}

#[test]
fn a_scrape_after_a_sync_shows_the_bytes_moved() {
    let mut a = Agent::start();
    let b = Agent::start();
    a.kill();
    append_config(&a, "\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    a.start_again();
    let address = metrics_address(&a);
    assert!(
        address.starts_with("127.0.0.1:") && !address.ends_with(":0"),
        "A should serve metrics on a port of 127.0.0.1, `id` says {address:?}"
    );
    assert_eq!(
        metrics_address(&b),
        "",
        "B has no [metrics] listen and must serve none"
    );

    // Small files go inline with their entries, larger ones as chunks: both are counted.
    let (da, db) = (a.data_dir("docs"), b.data_dir("docs"));
    let sizes = [3_000_usize, 40_000, 300_000, 900_000];
    for (i, size) in sizes.iter().enumerate() {
        let seed = u64::try_from(i).expect("a small index") + 1;
        tree::write(
            &da.join(format!("file-{i}.bin")),
            PseudoRandom::new(seed).bytes(*size),
        );
    }
    let moved = u64::try_from(sizes.iter().sum::<usize>()).expect("a small total");
    pair(&a, &b);
    a.share("docs", &da, &[&b]);
    b.share("docs", &db, &[&a]);
    settle(&a, &b, SYNC);
    tree::assert_same_trees(&da, &db);

    let text = scrape(&address);
    let samples = parse(&text);
    let b_id = b.device_id();
    let peer = short(&b_id);
    let sent = value(&samples, "tandem_peer_bytes_sent_total", &[("peer", peer)]);
    assert!(
        sent >= moved as f64,
        "A sent {sent} bytes to B, less than the {moved} bytes of the files B now has:\n{text}"
    );
    let received = value(
        &samples,
        "tandem_peer_bytes_received_total",
        &[("peer", peer)],
    );
    assert!(received > 0.0, "A heard nothing from B:\n{text}");
    let source = a.source("docs");
    let items = num(&source, "files") + num(&source, "directories") + num(&source, "symlinks");
    assert_eq!(items, u64::try_from(sizes.len()).expect("a small count"));
    let docs = [("source", "docs")];
    assert_eq!(value(&samples, "tandem_source_items", &docs), items as f64);
    assert_eq!(value(&samples, "tandem_source_bytes", &docs), moved as f64);
    assert_eq!(value(&samples, "tandem_source_item_errors", &docs), 0.0);
    assert_eq!(value(&samples, "tandem_source_conflicts", &docs), 0.0);
    let with_b = [("source", "docs"), ("peer", peer)];
    assert!(value(&samples, "tandem_peer_items_sent_total", &with_b) >= items as f64);
    assert_eq!(value(&samples, "tandem_peer_in_sync", &with_b), 1.0);
    assert_eq!(value(&samples, "tandem_peer_needed_items", &with_b), 0.0);
    assert_eq!(
        value(&samples, "tandem_peer_connected", &[("peer", peer)]),
        1.0
    );

    // Counters only grow: a second scrape after one more file shows at least as much.
    tree::write(&da.join("later.txt"), "one more");
    settle(&a, &b, SYNC);
    let again = parse(&scrape(&address));
    let sent_again = value(&again, "tandem_peer_bytes_sent_total", &[("peer", peer)]);
    assert!(sent_again > sent, "{sent_again} after {sent}");
}

#[test]
fn a_bad_metrics_address_stops_the_start_naming_the_setting() {
    let mut agent = Agent::start();
    agent.kill();
    let config = agent.home().join("config.toml");
    let before = fs::read_to_string(&config).expect("read config.toml");
    append_config(&agent, "\n[metrics]\nlisten = \"localhost\"\n");
    let mut cmd = agent.tandemd_command();
    let out = run_bounded(&mut cmd, LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("metrics.listen"),
        "tandemd should refuse metrics.listen = \"localhost\"\n{}",
        describe(&cmd, &out)
    );
    // The same home starts again once the setting is gone.
    fs::write(&config, before).expect("restore config.toml");
    agent.start_again();
    assert_eq!(metrics_address(&agent), "");
}
