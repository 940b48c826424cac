//! One address book kept in three formats by three real agents: A as a folder of vCards
//! (`vcard-dir`), B as a CSV file (`csv-contacts`), C as one `.vcf` (`vcard-file`). Edits made
//! anywhere reach the others field by field; every file written is read back by Python's
//! `vobject` (and the csv module).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_tests::records::{
    edit_text as edit, files_with, read_text as read, text_holding as holds, validate_with_python,
    validator_python,
};
use tandem_tests::{Agent, backoff, pair, skip};

const SYNC: Duration = Duration::from_secs(90);

/// Ana as Apple Contacts exports her: vCard 3.0, a grouped phone with its label, a photo.
const ANA: &str = "BEGIN:VCARD\r\n\
VERSION:3.0\r\n\
PRODID:-//Apple Inc.//iPhone OS 17.0//EN\r\n\
N:Lima;Ana;;;\r\n\
FN:Ana Lima\r\n\
ORG:Acme;\r\n\
TITLE:Engineer\r\n\
EMAIL;type=INTERNET;type=HOME;type=pref:ana@example.org\r\n\
item1.TEL;type=CELL;type=VOICE:+1 555 0100\r\n\
item1.X-ABLabel:_$!<Mobile>!$_\r\n\
PHOTO;ENCODING=b;TYPE=JPEG:/9j/4AAQSkZJRgABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4fICEi\r\n \
IyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj9AQUJDREVGR0hJSktMTU5P\r\n\
UID:ana-lima-0001\r\n\
END:VCARD\r\n";

struct Book {
    a: Agent,
    b: Agent,
    c: Agent,
    dir_a: PathBuf,
    csv_b: PathBuf,
    vcf_c: PathBuf,
}

impl Book {
    /// A with Ana in its folder; B and C start with nothing.
    fn start() -> Book {
        let (a, b, c) = (Agent::start(), Agent::start(), Agent::start());
        let dir_a = a.data_dir("book");
        fs::write(dir_a.join("ana.vcf"), ANA).expect("write ana.vcf");
        let csv_b = b.data_dir("exports").join("contacts.csv");
        let vcf_c = c.data_dir("phone").join("contacts.vcf");
        pair(&a, &b);
        pair(&b, &c);
        pair(&a, &c);
        a.share_as("book", &dir_a, "vcard-dir", &[&b, &c]);
        b.share_as("book", &csv_b, "csv-contacts", &[&a, &c]);
        c.share_as("book", &vcf_c, "vcard-file", &[&a, &b]);
        let book = Book {
            a,
            b,
            c,
            dir_a,
            csv_b,
            vcf_c,
        };
        book.settle();
        book
    }

    fn settle(&self) {
        for (one, others) in [
            (&self.a, [&self.b, &self.c]),
            (&self.b, [&self.a, &self.c]),
            (&self.c, [&self.a, &self.b]),
        ] {
            one.sync_with(&others, SYNC);
        }
        // A second round: what one device merged reaches the others.
        for (one, others) in [
            (&self.a, [&self.b, &self.c]),
            (&self.b, [&self.a, &self.c]),
            (&self.c, [&self.a, &self.b]),
        ] {
            one.sync_with(&others, SYNC);
        }
    }

    fn ana_a(&self) -> String {
        read(&self.dir_a.join("ana.vcf"))
    }

    /// Pauses the source on two devices, so edits made now meet as concurrent ones.
    fn pause(&self, agents: &[&Agent]) {
        for agent in agents {
            agent.json(&["pause", "book"]);
        }
    }

    fn resume(&self, agents: &[&Agent]) {
        for agent in agents {
            agent.json(&["resume", "book"]);
        }
    }

    fn validate(&self, python: &Path) {
        let mut files = files_with(&self.dir_a, "vcf");
        files.push(self.vcf_c.clone());
        files.push(self.csv_b.clone());
        validate_with_python(python, &files);
    }
}

fn conflicts(agent: &Agent) -> serde_json::Value {
    agent.json(&["conflicts", "book"])["conflicts"].clone()
}

#[test]
fn one_address_book_in_three_formats_edited_anywhere() {
    let python = validator_python();
    let book = Book::start();

    // Added on A: in B's CSV and in C's file, the photo with it where the format holds one.
    let csv = holds(&book.csv_b, "ana@example.org");
    assert!(csv.contains("+1 555 0100"), "{csv}");
    assert!(csv.starts_with("First Name,"), "Google's layout: {csv}");
    let vcf = holds(&book.vcf_c, "UID:ana-lima-0001");
    assert!(vcf.contains("PHOTO"), "{vcf}");
    assert!(vcf.contains("X-ABLabel"), "Apple's label kept: {vcf}");

    // A phone changed in B's CSV reaches A's .vcf and C's file, and A's photo stays.
    edit(&book.csv_b, "+1 555 0100", "+1 555 0199");
    book.settle();
    let a = holds(&book.dir_a.join("ana.vcf"), "+1 555 0199");
    assert!(a.contains("PHOTO"), "A's photo stays: {a}");
    assert!(!a.contains("+1 555 0100"), "{a}");
    assert!(a.contains("item1.TEL"), "the phone keeps its group: {a}");
    holds(&book.vcf_c, "+1 555 0199");

    // Concurrent edits of different fields on A and B both survive, everywhere.
    book.pause(&[&book.a, &book.b]);
    edit(
        &book.dir_a.join("ana.vcf"),
        "TITLE:Engineer",
        "TITLE:Director",
    );
    edit(&book.csv_b, "ana@example.org", "ana@lima.example");
    book.resume(&[&book.a, &book.b]);
    book.settle();
    for path in [&book.dir_a.join("ana.vcf"), &book.vcf_c, &book.csv_b] {
        let text = holds(path, "Director");
        assert!(
            text.contains("ana@lima.example"),
            "{}:\n{text}",
            path.display()
        );
        assert!(
            !text.contains("ana@example.org"),
            "{}:\n{text}",
            path.display()
        );
    }

    // The same field edited on A and B: one winner everywhere, the loser listed.
    book.pause(&[&book.a, &book.b]);
    edit(&book.dir_a.join("ana.vcf"), "TITLE:Director", "TITLE:CTO");
    edit(&book.csv_b, "Director", "Chief Engineer");
    book.resume(&[&book.a, &book.b]);
    book.settle();
    let a = book.ana_a();
    let (winner, loser) = if a.contains("TITLE:CTO") {
        ("CTO", "Chief Engineer")
    } else {
        ("Chief Engineer", "CTO")
    };
    for path in [&book.dir_a.join("ana.vcf"), &book.vcf_c, &book.csv_b] {
        holds(path, winner);
    }
    for (name, agent) in [("A", &book.a), ("B", &book.b), ("C", &book.c)] {
        let listed = conflicts(agent);
        let found = listed.as_array().is_some_and(|all| {
            all.iter()
                .any(|c| c["field"] == "title" && c["lost"] == loser && c["kept"] == winner)
        });
        assert!(
            found,
            "conflicts on {name} must list {loser:?} losing to {winner:?}: {listed:#}"
        );
    }

    match &python {
        Ok(python) => book.validate(python),
        Err(why) => skip(why),
    }

    // A deletion on C removes the contact everywhere; A keeps the old file in versions.
    let text = read(&book.vcf_c);
    let start = text.find("BEGIN:VCARD").expect("a card");
    let end = text.find("END:VCARD").expect("its end") + "END:VCARD\r\n".len();
    fs::write(
        &book.vcf_c,
        format!("{}{}", &text[..start], &text[end.min(text.len())..]),
    )
    .expect("delete the card");
    book.settle();
    let gone = backoff::retry_with_backoff(SYNC, || {
        (!book.dir_a.join("ana.vcf").exists()).then_some(())
    });
    assert!(gone.is_some(), "ana.vcf is still in A's folder");
    let kept = fs::read_dir(book.dir_a.join(".tandem/versions"))
        .map(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("ana.vcf~"))
        })
        .unwrap_or(false);
    assert!(kept, "A keeps the deleted card in its versions folder");
    let csv = read(&book.csv_b);
    assert!(!csv.contains("Lima"), "B's CSV still holds Ana:\n{csv}");
}
