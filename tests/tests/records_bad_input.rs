//! Bad record files: each gets an error in `status` naming the file (and the line) and saying
//! what to do, every other record keeps syncing, and the broken file is never overwritten.

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tandem_tests::{Agent, backoff, pair};

const SYNC: Duration = Duration::from_secs(90);

fn card(uid: &str, name: &str, phone: &str) -> String {
    format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:{uid}\r\nFN:{name}\r\nN:{name};;;;\r\nTEL;TYPE=CELL:{phone}\r\nEND:VCARD\r\n"
    )
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Waits until `check` holds for the text of `path`.
fn until(path: &Path, what: &str, check: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    let ok = backoff::retry_with_backoff(SYNC, || {
        last = fs::read_to_string(path).unwrap_or_default();
        check(&last).then_some(())
    });
    assert!(ok.is_some(), "{}: never {what}:\n{last}", path.display());
    last
}

/// Waits until the source's status lists an error whose item contains `item`; gives it.
fn error_for(agent: &Agent, source: &str, item: &str) -> Value {
    let mut last = Value::Null;
    let found = backoff::retry_with_backoff(SYNC, || {
        last = agent.source(source);
        last["item_errors"]
            .as_array()?
            .iter()
            .find(|e| e["item"].as_str().is_some_and(|i| i.contains(item)))
            .cloned()
    });
    found.unwrap_or_else(|| panic!("no error for {item:?} in status:\n{last:#}"))
}

fn message(error: &Value) -> String {
    error["message"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_broken_vcard_in_a_folder_of_100_is_named_and_never_overwritten() {
    let (a, b) = (Agent::start(), Agent::start());
    let dir = a.data_dir("book");
    for i in 0..100 {
        let text = card(
            &format!("c{i:03}"),
            &format!("Person {i}"),
            &format!("+1 555 {i:04}"),
        );
        fs::write(dir.join(format!("c{i:03}.vcf")), text).expect("write a card");
    }
    let file_b = b.data_dir("phone").join("all.vcf");
    pair(&a, &b);
    a.share_as("book", &dir, "vcard-dir", &[&b]);
    b.share_as("book", &file_b, "vcard-file", &[&a]);
    a.sync_with(&[&b], SYNC);
    b.sync_with(&[&a], SYNC);
    until(&file_b, "held 100 cards", |t| {
        t.matches("BEGIN:VCARD").count() == 100
    });

    // Card 42 loses its last line on A; B then edits that contact and adds another.
    let broken = dir.join("c042.vcf");
    let text = read(&broken).replace("END:VCARD\r\n", "");
    fs::write(&broken, &text).expect("break a card");
    let error = error_for(&a, "book", "c042.vcf");
    let said = message(&error);
    assert!(
        said.contains("END:VCARD") && said.contains("line 1"),
        "{error:#}"
    );
    let all = read(&file_b);
    // The new contact goes after the first card; the rest stay as they were.
    let once = {
        let first_end = all.find("END:VCARD\r\n").expect("a card") + "END:VCARD\r\n".len();
        format!(
            "{}{}{}",
            &all[..first_end],
            card("c100", "Person 100", "+1 555 0100"),
            &all[first_end..]
        )
        .replace("+1 555 0042", "+1 555 4242")
    };
    fs::write(&file_b, once).expect("edit on B");

    // The new contact reaches A; the broken file stays exactly as the user left it.
    until(&dir.join("c100.vcf"), "held the new contact", |t| {
        t.contains("Person 100")
    });
    assert_eq!(read(&broken), text, "the broken card was overwritten");
    let s = a.source("book");
    assert_eq!(s["state"], "idle", "one broken card stops nothing: {s:#}");

    // Fixed, it takes B's edit and the error goes.
    fs::write(&broken, format!("{text}END:VCARD\r\n")).expect("fix the card");
    until(&broken, "took B's edit", |t| t.contains("+1 555 4242"));
    let cleared = backoff::retry_with_backoff(SYNC, || {
        let s = a.source("book");
        let errors = s["item_errors"].as_array().map_or(0, Vec::len);
        (errors == 0).then_some(())
    });
    assert!(cleared.is_some(), "{:#}", a.source("book"));
}

#[test]
fn a_csv_row_with_the_wrong_number_of_cells_is_named_and_kept() {
    let (a, b) = (Agent::start(), Agent::start());
    let csv = b.data_dir("exports").join("contacts.csv");
    let header =
        "First Name,Last Name,E-mail 1 - Label,E-mail 1 - Value,Phone 1 - Label,Phone 1 - Value";
    let bad_row = "Bea,Broken,Home,bea@example.org,Mobile";
    let text = format!(
        "{header}\r\nAda,Lovelace,Home,ada@example.org,Mobile,+44 20 7946 0018\r\n{bad_row}\r\nCarl,Gauss,Work,carl@example.org,Work,+49 551 0\r\n"
    );
    fs::write(&csv, &text).expect("write the CSV");
    let dir = a.data_dir("book");
    pair(&a, &b);
    b.share_as("book", &csv, "csv-contacts", &[&a]);
    a.share_as("book", &dir, "vcard-dir", &[&b]);

    let error = error_for(&b, "book", "contacts.csv line 3");
    let said = message(&error);
    assert!(said.contains("cells"), "{error:#}");
    b.sync_with(&[&a], SYNC);
    a.sync_with(&[&b], SYNC);
    let names: Vec<String> = fs::read_dir(&dir)
        .expect("A's folder")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "vcf"))
        .map(|p| read(&p))
        .collect();
    assert_eq!(names.len(), 2, "Ada and Carl: {names:?}");
    assert!(names.iter().any(|n| n.contains("Lovelace")));
    assert!(names.iter().all(|n| !n.contains("Broken")));

    // A contact added on A is written into B's CSV; the broken row keeps its bytes.
    fs::write(dir.join("new.vcf"), card("d1", "Dora Diaz", "+34 91 000")).expect("add on A");
    let now = until(&csv, "held the new contact", |t| t.contains("Dora Diaz"));
    assert!(
        now.contains(bad_row),
        "the broken row must stay as it was:\n{now}"
    );
}

#[test]
fn an_unterminated_calendar_component_is_named_and_the_rest_syncs() {
    let (a, c) = (Agent::start(), Agent::start());
    let ics = c.data_dir("export").join("cal.ics");
    let broken = include_str!("../data/records/ical/broken.ics");
    fs::write(&ics, broken).expect("write the calendar");
    let dir = a.data_dir("cal");
    pair(&a, &c);
    c.share_as("cal", &ics, "ical-file", &[&a]);
    a.share_as("cal", &dir, "ical-dir", &[&c]);

    let error = error_for(&c, "cal", "cal.ics line");
    let said = message(&error);
    assert!(
        said.contains("END:VEVENT") || said.contains("no END"),
        "{error:#}"
    );
    c.sync_with(&[&a], SYNC);
    a.sync_with(&[&c], SYNC);
    let texts: Vec<String> = fs::read_dir(&dir)
        .expect("A's folder")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ics"))
        .map(|p| read(&p))
        .collect();
    assert!(
        texts.iter().any(|t| t.contains("SUMMARY:First")),
        "{texts:?}"
    );
    assert!(
        texts.iter().all(|t| !t.contains("Never closed")),
        "{texts:?}"
    );
    assert_eq!(
        read(&ics),
        broken,
        "nothing changed: C's file is not rewritten"
    );
}

#[test]
fn differing_duplicate_uids_are_named_and_identical_ones_are_one() {
    let (a, b) = (Agent::start(), Agent::start());
    let dir = a.data_dir("book");
    fs::write(dir.join("ana.vcf"), card("ana", "Ana Lima", "+1 555 0100")).expect("write");
    fs::write(
        dir.join("ana-copy.vcf"),
        card("ana", "Ana Lima", "+1 555 0100"),
    )
    .expect("write");
    fs::write(dir.join("bob.vcf"), card("bob", "Bob Stone", "+1 555 0200")).expect("write");
    fs::write(
        dir.join("bob-old.vcf"),
        card("bob", "Bob Stone", "+1 555 0999"),
    )
    .expect("write");
    fs::write(dir.join("cy.vcf"), card("cy", "Cy Twombly", "+1 555 0300")).expect("write");
    let file_b = b.data_dir("phone").join("all.vcf");
    pair(&a, &b);
    a.share_as("book", &dir, "vcard-dir", &[&b]);
    b.share_as("book", &file_b, "vcard-file", &[&a]);

    let error = error_for(&a, "book", "bob");
    let said = message(&error);
    assert!(
        said.contains("bob.vcf") && said.contains("bob-old.vcf"),
        "both files are named: {error:#}"
    );
    a.sync_with(&[&b], SYNC);
    b.sync_with(&[&a], SYNC);
    let all = until(&file_b, "held Ana and Cy", |t| {
        t.contains("Ana Lima") && t.contains("Cy Twombly")
    });
    assert_eq!(
        all.matches("UID:ana").count(),
        1,
        "identical copies are one: {all}"
    );
    assert!(
        !all.contains("Bob Stone"),
        "a UID in doubt is not sent: {all}"
    );
    let s = a.source("book");
    let errors = s["item_errors"].as_array().map_or(0, Vec::len);
    assert_eq!(errors, 1, "only Bob's UID is in error: {s:#}");
}

/// The `last_error` of `source`'s progress with `peer`, once it says something.
fn progress_error(agent: &Agent, source: &str, peer: &Agent) -> String {
    let mut last = Value::Null;
    let said = backoff::retry_with_backoff(SYNC, || {
        last = agent.progress(source, peer);
        last["last_error"]
            .as_str()
            .filter(|e| e.contains("keeps it as"))
            .map(str::to_owned)
    });
    said.unwrap_or_else(|| panic!("no refusal of {source:?} in its progress:\n{last:#}"))
}

#[test]
fn contacts_against_a_calendar_or_files_are_refused_on_both_sides() {
    let (a, b, c) = (Agent::start(), Agent::start(), Agent::start());
    let book = a.data_dir("book");
    fs::write(book.join("ana.vcf"), card("ana", "Ana Lima", "+1 555 0100")).expect("write");
    let cal = b.data_dir("cal");
    let files = c.data_dir("files");
    fs::write(files.join("notes.txt"), "notes").expect("write");
    pair(&a, &b);
    pair(&a, &c);
    a.share_as("shared", &book, "vcard-dir", &[&b, &c]);
    b.share_as("shared", &cal, "ical-dir", &[&a]);
    c.share_as("shared", &files, "files", &[&a]);
    for (agent, peer, ours, theirs) in [
        (&a, &b, "contacts", "calendar"),
        (&b, &a, "calendar", "contacts"),
        (&a, &c, "contacts", "files"),
        (&c, &a, "files", "contacts"),
    ] {
        let why = progress_error(agent, "shared", peer);
        assert!(
            why.contains(&format!("keeps it as {theirs}"))
                && why.contains(&format!("this device as {ours}")),
            "{why}"
        );
    }
    // Nothing crossed: B's calendar and C's folder hold only their own.
    let in_cal: Vec<_> = fs::read_dir(&cal)
        .expect("B's folder")
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(in_cal.is_empty(), "{in_cal:?}");
    assert!(!files.join("ana.vcf").exists());
}
