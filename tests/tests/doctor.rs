//! `tandemctl doctor`: a low inotify limit against the folders watched, and a peer that
//! refuses the connection, each reported with what to do; a healthy agent passes.

use std::process::Output;

use tandem_tests::{Agent, tree};

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn doctor_reports_a_low_inotify_limit_and_a_refusing_peer() {
    // The kernel's limit is machine-wide: the agent is given a stand-in of 16 watches.
    let a = Agent::start_with_env(&[("TANDEM_TEST_INOTIFY_LIMIT", "16")]);
    let da = a.data_dir("docs");
    for i in 0..40 {
        tree::write(&da.join(format!("d{i}/f.txt")), "x");
    }
    a.add_source("docs", &da);
    a.wait(std::time::Duration::from_secs(60));

    // B stops; its address then refuses connections.
    let mut b = Agent::start();
    let b_id = b.device_id();
    let b_addr = b.listen();
    b.kill();
    a.json(&["peer", "add", &b_id, &b_addr]);

    let out = a.plain(&["doctor"]);
    let text = said(&out);
    assert_eq!(out.status.code(), Some(5), "doctor fails: {text}");
    let inotify = text
        .lines()
        .find(|l| l.contains("inotify"))
        .unwrap_or_else(|| panic!("an inotify line: {text}"));
    assert!(inotify.starts_with("fail"), "{text}");
    assert!(inotify.contains("41 folders watched, limit 16"), "{text}");
    assert!(
        text.contains("sysctl fs.inotify.max_user_watches="),
        "{text}"
    );
    let peer = text
        .lines()
        .find(|l| l.contains("peer"))
        .unwrap_or_else(|| panic!("a peer line: {text}"));
    assert!(peer.starts_with("fail"), "{text}");
    assert!(peer.contains("refused the connection"), "{text}");
    assert!(peer.contains(&b_addr), "{text}");

    let out = a.ctl(&["doctor"]);
    assert_eq!(out.status.code(), Some(5), "{}", said(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    let findings = json["findings"].as_array().expect("findings");
    assert!(
        findings
            .iter()
            .any(|f| f["check"] == "home" && f["level"] == "ok"),
        "{json:#}"
    );
    assert!(
        findings
            .iter()
            .any(|f| f["check"] == "disk" && f["subject"] == "docs"),
        "{json:#}"
    );
}

#[test]
fn a_healthy_agent_passes_the_doctor() {
    let a = Agent::start();
    let da = a.data_dir("docs");
    tree::write(&da.join("a.txt"), "a");
    a.add_source("docs", &da);
    let out = a.plain(&["doctor"]);
    let text = said(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("0 failing"), "{text}");
}

#[test]
fn doctor_warns_of_a_peer_whose_clock_is_far_off() {
    use tandem_tests::backoff;
    use tandem_tests::hostile::{DeviceKey, HostilePeer};
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

    // M's identity, speaking through a test peer whose clock is 15 minutes behind.
    let mut m = Agent::start();
    let m_id = m.device_id();
    m.kill();
    let key = DeviceKey::from_home(m.home(), &m_id);
    let a = Agent::start();
    a.json(&["peer", "add", &m_id]);
    let peer = HostilePeer::connect_with_retry(&a.listen(), &key, LIMIT);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis();
    let behind = i64::try_from(now_ms).expect("milliseconds fit") - 15 * 60 * 1000;
    peer.hello_at(&m_id, &[], behind);

    let clock = backoff::retry_with_backoff(LIMIT, || {
        let out = a.ctl(&["doctor"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["findings"]
            .as_array()?
            .iter()
            .find(|f| f["check"] == "clock")
            .cloned()
    })
    .expect("doctor names the clock skew");
    assert_eq!(clock["level"], "warn", "{clock:#}");
    let message = clock["message"].as_str().unwrap_or_default();
    assert!(message.contains("behind"), "{clock:#}");
    let seconds: u64 = message
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or(0);
    assert!((890..=910).contains(&seconds), "about 900 s: {clock:#}");
    assert!(
        clock["fix"].as_str().unwrap_or_default().contains("NTP"),
        "{clock:#}"
    );
}

#[test]
fn doctor_tells_a_certificate_mismatch_from_a_device_that_has_not_added_this_one() {
    let a = Agent::start();
    let b = Agent::start();
    let c = Agent::start();
    // C's ID at B's address: B answers with its own certificate.
    a.json(&["peer", "add", &c.device_id(), &b.listen()]);
    let mismatch =
        tandem_tests::backoff::retry_with_backoff(std::time::Duration::from_secs(60), || {
            let text = said(&a.plain(&["doctor"]));
            text.contains("certificate mismatch").then_some(text)
        })
        .expect("doctor names the certificate mismatch");
    assert!(mismatch.contains(&b.device_id()), "{mismatch}");
    assert!(mismatch.contains("tandemctl id"), "{mismatch}");

    // C at its own address, but C has not added A: the exchange is refused there.
    a.json(&["peer", "add", &c.device_id(), &c.listen()]);
    let refused =
        tandem_tests::backoff::retry_with_backoff(std::time::Duration::from_secs(60), || {
            let text = said(&a.plain(&["doctor"]));
            text.contains("refused the exchange").then_some(text)
        })
        .expect("doctor names the refusal");
    assert!(refused.contains("tandemctl peer add ID there"), "{refused}");
}
