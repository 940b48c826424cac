//! One calendar kept in two formats by two real agents: A as a folder of `.ics` files, one
//! item each (`ical-dir`), C as one `.ics` holding them all (`ical-file`), the shape Google
//! Calendar exports. The recurring event's moved occurrence and its excluded dates survive
//! the trip; every file written is read back by Python's `icalendar`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_tests::records::{
    edit_text as edit, files_with, read_text as read, text_holding as holds, validate_with_python,
    validator_python,
};
use tandem_tests::{Agent, backoff, pair, skip};

const SYNC: Duration = Duration::from_secs(90);

const GOOGLE: &str = include_str!("../data/records/ical/google.ics");

/// A to-do as Apple Reminders writes one: due in Berlin time, with an alarm before it.
const TODO: &str = "BEGIN:VCALENDAR\r\n\
VERSION:2.0\r\n\
PRODID:-//Apple Inc.//macOS 15.1//EN\r\n\
BEGIN:VTIMEZONE\r\n\
TZID:Europe/Berlin\r\n\
BEGIN:STANDARD\r\n\
TZOFFSETFROM:+0200\r\n\
TZOFFSETTO:+0100\r\n\
DTSTART:19701025T030000\r\n\
RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r\n\
END:STANDARD\r\n\
END:VTIMEZONE\r\n\
BEGIN:VTODO\r\n\
DTSTAMP:20261118T071311Z\r\n\
DUE;TZID=Europe/Berlin:20261205T170000\r\n\
SUMMARY:Submit expense report\r\n\
UID:8C1F4E2B-5A7D-4D3E-9F60-2B1A0C9D8E7F\r\n\
BEGIN:VALARM\r\n\
ACTION:DISPLAY\r\n\
DESCRIPTION:Reminder\r\n\
TRIGGER;RELATED=END:-PT1H\r\n\
END:VALARM\r\n\
END:VTODO\r\n\
END:VCALENDAR\r\n";

const STANDUP: &str = "4f1c2a7e9b@google.com";

/// The one file of A's folder that holds `uid`.
fn file_of(dir: &Path, uid: &str) -> PathBuf {
    let mut found = None;
    backoff::retry_with_backoff(SYNC, || {
        found = files_with(dir, "ics")
            .into_iter()
            .find(|p| read(p).contains(&format!("UID:{uid}")));
        found.as_ref().map(|_| ())
    });
    found.unwrap_or_else(|| panic!("no file in {} holds {uid}", dir.display()))
}

fn settle(a: &Agent, c: &Agent) {
    for _ in 0..2 {
        a.sync_with(&[c], SYNC);
        c.sync_with(&[a], SYNC);
    }
}

#[test]
fn one_calendar_as_a_folder_and_as_one_file() {
    let python = validator_python();
    let (a, c) = (Agent::start(), Agent::start());
    let dir_a = a.data_dir("calendar");
    fs::write(dir_a.join("expenses.ics"), TODO).expect("write the to-do");
    let ics_c = c.data_dir("export").join("work.ics");
    fs::write(&ics_c, GOOGLE).expect("write Google's export");
    pair(&a, &c);
    a.share_as("work", &dir_a, "ical-dir", &[&c]);
    c.share_as("work", &ics_c, "ical-file", &[&a]);
    settle(&a, &c);

    // Each of C's items is a file of its own on A; the recurring event keeps its override and
    // its excluded dates in the same file, with the time zone they need.
    let standup = file_of(&dir_a, STANDUP);
    let text = read(&standup);
    assert_eq!(text.matches("BEGIN:VEVENT").count(), 2, "{text}");
    assert!(
        text.contains("RECURRENCE-ID;TZID=Europe/Berlin:20261208T100000"),
        "{text}"
    );
    assert!(text.contains("Team standup (moved to Wednesday)"), "{text}");
    assert!(
        text.contains("20261222T100000") && text.contains("20261229T100000"),
        "{text}"
    );
    assert!(
        text.contains("BEGIN:VTIMEZONE") && text.contains("TZID:Europe/Berlin"),
        "{text}"
    );
    let christmas = read(&file_of(&dir_a, "7d0e55c1a2@google.com"));
    assert!(
        christmas.contains("DTSTART;VALUE=DATE:20261224"),
        "{christmas}"
    );
    // A's to-do is in C's file, alarm and all; C's own items kept their bytes.
    let c_text = holds(&ics_c, "Submit expense report");
    assert!(c_text.contains("TRIGGER;RELATED=END:-PT1H"), "{c_text}");
    assert!(
        c_text.contains("DUE;TZID=Europe/Berlin:20261205T170000"),
        "{c_text}"
    );
    let block = |text: &str, uid: &str| -> Option<String> {
        let at = text.find(&format!("UID:{uid}"))?;
        let start = text[..at].rfind("BEGIN:VEVENT")?;
        let end = at + text[at..].find("END:VEVENT")?;
        Some(text[start..end].to_owned())
    };
    assert_eq!(
        block(&c_text, "7d0e55c1a2@google.com"),
        block(GOOGLE, "7d0e55c1a2@google.com"),
        "an untouched event keeps its bytes"
    );
    assert_eq!(c_text.matches("BEGIN:VTIMEZONE").count(), 1, "{c_text}");

    // The moved occurrence edited on A reaches C; the EXDATE stays.
    edit(
        &standup,
        "Team standup (moved to Wednesday)",
        "Standup, Wednesday this week",
    );
    settle(&a, &c);
    let c_text = holds(&ics_c, "Standup\\, Wednesday this week");
    assert!(
        c_text.contains("RECURRENCE-ID;TZID=Europe/Berlin:20261208T100000"),
        "{c_text}"
    );
    assert!(c_text.contains("20261229T100000"), "{c_text}");

    // Concurrent edits of two fields of one event, one on each side, both survive.
    for agent in [&a, &c] {
        agent.json(&["pause", "work"]);
    }
    let meeting = file_of(&dir_a, "b93e0f11c8@google.com");
    edit(
        &meeting,
        "LOCATION:Room 4.12\\, Building B",
        "LOCATION:Room 1.01",
    );
    edit(
        &ics_c,
        "SUMMARY:Budget review",
        "SUMMARY:Budget review (moved online)",
    );
    for agent in [&a, &c] {
        agent.json(&["resume", "work"]);
    }
    settle(&a, &c);
    for path in [&meeting, &ics_c] {
        let text = holds(path, "Budget review (moved online)");
        assert!(
            text.contains("LOCATION:Room 1.01"),
            "{}:\n{text}",
            path.display()
        );
    }

    // The same field of one event set on both sides: one winner in both files, and the loser
    // listed by `conflicts` on both devices.
    for agent in [&a, &c] {
        agent.json(&["pause", "work"]);
    }
    let christmas_file = file_of(&dir_a, "7d0e55c1a2@google.com");
    edit(
        &christmas_file,
        "SUMMARY:Christmas",
        "SUMMARY:Christmas at home",
    );
    edit(&ics_c, "SUMMARY:Christmas", "SUMMARY:Christmas in Lisbon");
    for agent in [&a, &c] {
        agent.json(&["resume", "work"]);
    }
    settle(&a, &c);
    let on_a = read(&christmas_file);
    let (winner, loser) = if on_a.contains("SUMMARY:Christmas at home") {
        ("Christmas at home", "Christmas in Lisbon")
    } else {
        ("Christmas in Lisbon", "Christmas at home")
    };
    holds(&ics_c, &format!("SUMMARY:{winner}"));
    for agent in [&a, &c] {
        let listed = agent.json(&["conflicts", "work"])["conflicts"].clone();
        let found = listed.as_array().is_some_and(|all| {
            all.iter()
                .any(|x| x["field"] == "summary" && x["lost"] == loser && x["kept"] == winner)
        });
        assert!(
            found,
            "conflicts must list {loser:?} losing to {winner:?}: {listed:#}"
        );
    }

    match &python {
        Ok(python) => {
            let mut files = files_with(&dir_a, "ics");
            files.push(ics_c.clone());
            validate_with_python(python, &files);
        }
        Err(why) => skip(why),
    }

    // Deleted on C: gone from A's folder, and kept in A's versions.
    let christmas_file = file_of(&dir_a, "7d0e55c1a2@google.com");
    let text = read(&ics_c);
    let gone = block(&text, "7d0e55c1a2@google.com").expect("Christmas is in C's file");
    let cut = text.replacen(&format!("{gone}END:VEVENT\r\n"), "", 1);
    assert_ne!(cut, text);
    fs::write(&ics_c, cut).expect("delete an event on C");
    settle(&a, &c);
    let removed = backoff::retry_with_backoff(SYNC, || (!christmas_file.exists()).then_some(()));
    assert!(
        removed.is_some(),
        "{} is still there",
        christmas_file.display()
    );
    let name = christmas_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let kept = fs::read_dir(dir_a.join(".tandem/versions")).is_ok_and(|d| {
        d.filter_map(Result::ok).any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}~"))
        })
    });
    assert!(kept, "A keeps the deleted event in its versions folder");
}
