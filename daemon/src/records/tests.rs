#![allow(clippy::unwrap_used)]

use super::restamp::stamp_all;
use super::*;
use crate::formats::native::{Change, Codec, Parsed, WriteSettings};

fn all(r: &Record) -> Record {
    All.holds(r)
}

fn no_photo(r: &Record) -> Record {
    NoPhoto.holds(r)
}
use crate::index::{ShortId, VersionVector};

const A: u64 = 0xA;
const B: u64 = 0xB;

/// Holds everything (a vCard-like format).
#[derive(Debug)]
struct All;
/// Holds no photo and no unknown properties (a CSV-like format).
#[derive(Debug)]
struct NoPhoto;

impl Codec for All {
    fn parse(&self, _: &str) -> Parsed {
        Parsed::default()
    }
    fn holds(&self, record: &Record) -> Record {
        crate::formats::native::without_stamps(record)
    }
    fn write(&self, _: Option<(&str, &Parsed)>, _: &[Change], _: &WriteSettings) -> String {
        String::new()
    }
}

impl Codec for NoPhoto {
    fn parse(&self, _: &str) -> Parsed {
        Parsed::default()
    }
    fn holds(&self, record: &Record) -> Record {
        let mut r = crate::formats::native::without_stamps(record);
        if let Record::Contact(c) = &mut r {
            c.photo = None;
            c.raw.clear();
            for t in c.phones.iter_mut().chain(c.emails.iter_mut()) {
                t.group.clear();
                t.params.clear();
            }
        }
        r
    }
    fn write(&self, _: Option<(&str, &Parsed)>, _: &[Change], _: &WriteSettings) -> String {
        String::new()
    }
}

fn text(v: &str) -> Text {
    Text {
        value: v.into(),
        ..Text::default()
    }
}

fn dot(device: u64, counter: u64, unix_s: i64) -> Stamp {
    Stamp {
        device,
        counter,
        unix_s,
    }
}

fn version(counters: &[(u64, u64)]) -> VersionVector {
    let mut v = VersionVector::new();
    for &(d, n) in counters {
        for _ in 0..n {
            v.bump(ShortId(d));
        }
    }
    v
}

fn contact(r: &Record) -> &Contact {
    match r {
        Record::Contact(c) => c,
        Record::Calendar(_) => panic!("not a contact"),
    }
}

/// Ana, as first read on A: one email, one phone (in an Apple group), a photo, a title.
fn base() -> Record {
    let mut phone = text("+1 555 0100");
    phone.group = "item1".into();
    phone.types = vec!["cell".into()];
    phone.pos = 3;
    let mut email = text("ana@example.org");
    email.pos = 2;
    let mut title = text("Engineer");
    title.pos = 4;
    let c = Contact {
        uid: "ana".into(),
        formatted_name: Some(Text {
            pos: 1,
            ..text("Ana Lima")
        }),
        emails: vec![email],
        phones: vec![phone],
        title: Some(title),
        photo: Some(Photo {
            data: vec![1, 2, 3],
            media_type: "image/jpeg".into(),
            pos: 5,
            ..Photo::default()
        }),
        ..Contact::default()
    };
    stamp_all(Record::Contact(c), &dot(A, 1, 100))
}

#[test]
fn a_record_read_again_unchanged_is_no_difference() {
    let prior = base();
    let parsed = All.holds(&prior);
    assert_eq!(restamp(&prior, &parsed, &all, &dot(A, 2, 200)), None);
    // Nor is it through a format that holds less of it.
    let parsed = NoPhoto.holds(&prior);
    assert_eq!(restamp(&prior, &parsed, &no_photo, &dot(A, 2, 200)), None);
}

#[test]
fn a_phone_edited_in_a_csv_keeps_the_photo_and_the_phone_keeps_its_group() {
    let prior = base();
    let mut parsed = NoPhoto.holds(&prior);
    if let Record::Contact(c) = &mut parsed {
        c.phones[0].value = "+1 555 0199".into();
    }
    let now = restamp(&prior, &parsed, &no_photo, &dot(B, 1, 200)).expect("a change");
    let c = contact(&now);
    assert_eq!(c.photo, contact(&prior).photo, "the photo stays");
    assert_eq!(c.phones.len(), 1);
    assert_eq!(c.phones[0].value, "+1 555 0199");
    assert_eq!(
        c.phones[0].group, "item1",
        "what the CSV cannot hold is carried"
    );
    assert_eq!(c.phones[0].stamp, Some(dot(B, 1, 200)));
    assert_eq!(
        c.emails,
        contact(&prior).emails,
        "untouched values keep their stamps"
    );
}

#[test]
fn a_value_removed_where_the_format_holds_it_is_removed() {
    let prior = base();
    let mut parsed = All.holds(&prior);
    if let Record::Contact(c) = &mut parsed {
        c.photo = None;
        c.emails.clear();
    }
    let now = restamp(&prior, &parsed, &all, &dot(A, 2, 200)).expect("a change");
    assert_eq!(contact(&now).photo, None);
    assert!(contact(&now).emails.is_empty());
}

/// Applies an edit on a device: the new record and its version.
fn edit(
    prior: &Record,
    prior_version: &VersionVector,
    device: u64,
    unix_s: i64,
    change: impl FnOnce(&mut Contact),
) -> (Record, VersionVector) {
    let mut version = prior_version.clone();
    version.bump(ShortId(device));
    let mut parsed = All.holds(prior);
    if let Record::Contact(c) = &mut parsed {
        change(c);
    }
    let d = dot(device, version.counter(ShortId(device)), unix_s);
    (
        restamp(prior, &parsed, &all, &d).expect("a change"),
        version,
    )
}

fn both_ways(a: &(Record, VersionVector), b: &(Record, VersionVector)) -> Record {
    let ab = merge(&a.0, &a.1, &b.0, &b.1);
    let ba = merge(&b.0, &b.1, &a.0, &a.1);
    assert_eq!(normalized(&ab), normalized(&ba), "both devices agree");
    ab
}

#[test]
fn concurrent_edits_of_different_fields_both_survive() {
    let base_version = version(&[(A, 1)]);
    let base = base();
    let on_a = edit(&base, &base_version, A, 200, |c| {
        c.phones[0].value = "+1 555 0101".into();
    });
    let on_b = edit(&base, &base_version, B, 150, |c| {
        c.title = Some(text("Director"));
    });
    let merged = both_ways(&on_a, &on_b);
    let c = contact(&merged);
    assert_eq!(c.phones[0].value, "+1 555 0101");
    assert_eq!(c.title.as_ref().map(|t| t.value.as_str()), Some("Director"));
    assert!(conflicts_in(&merged).is_empty());
}

#[test]
fn an_email_added_on_each_side_keeps_both_and_a_removal_is_kept() {
    let base_version = version(&[(A, 1)]);
    let base = base();
    let on_a = edit(&base, &base_version, A, 200, |c| {
        c.emails.push(text("ana@work.example"));
        c.phones.clear();
    });
    let on_b = edit(&base, &base_version, B, 210, |c| {
        c.emails.push(text("ana@home.example"));
    });
    let merged = both_ways(&on_a, &on_b);
    let mut emails: Vec<&str> = contact(&merged)
        .emails
        .iter()
        .map(|e| e.value.as_str())
        .collect();
    emails.sort_unstable();
    assert_eq!(
        emails,
        ["ana@example.org", "ana@home.example", "ana@work.example"]
    );
    assert!(contact(&merged).phones.is_empty(), "A removed the phone");
}

#[test]
fn a_value_edited_beside_others_of_the_same_change_replaces_only_itself() {
    // Every value read in one change carries the same stamp: the old phone must not pass for
    // the work phone that shares its stamp (the 10,000-contact bench found a CSV keeping
    // both the old and the new mobile number).
    let mut base = base();
    if let Record::Contact(c) = &mut base {
        let mut work = c.phones[0].clone();
        work.value = "+1 555 0900".into();
        work.types = vec!["work".into()];
        work.pos = 6;
        c.phones.push(work);
    }
    let base_version = version(&[(A, 1)]);
    let on_a = edit(&base, &base_version, A, 200, |c| {
        c.phones[0].value = "+1 555 0101".into();
    });
    let unchanged = (base.clone(), base_version.clone());
    let merged = both_ways(&on_a, &unchanged);
    let phones: Vec<&str> = contact(&merged)
        .phones
        .iter()
        .map(|p| p.value.as_str())
        .collect();
    assert_eq!(phones, ["+1 555 0101", "+1 555 0900"]);
    // And a removal of one of them, against a device that edited nothing.
    let on_a = edit(&base, &base_version, A, 200, |c| {
        c.phones.remove(1);
    });
    let merged = both_ways(&on_a, &unchanged);
    assert_eq!(contact(&merged).phones.len(), 1);
    assert_eq!(contact(&merged).phones[0].value, "+1 555 0100");
}

#[test]
fn the_losers_own_device_keeps_the_note_of_a_merge_made_elsewhere() {
    // A sets the title, B sets it later; B merges and A then gets B's merged version, which
    // counts A's change: A must keep the note, though it counts the loser's stamp already.
    let base_version = version(&[(A, 1)]);
    let base = base();
    let on_a = edit(&base, &base_version, A, 200, |c| {
        c.title = Some(text("CTO"))
    });
    let on_b = edit(&base, &base_version, B, 300, |c| {
        c.title = Some(text("Chief Engineer"));
    });
    let at_b = merge(&on_b.0, &on_b.1, &on_a.0, &on_a.1);
    let joined = on_a.1.merge(&on_b.1);
    assert_eq!(conflicts_in(&at_b).len(), 1, "B notes the loser");
    let at_a = merge(&on_a.0, &on_a.1, &at_b, &joined);
    let notes = conflicts_in(&at_a);
    assert_eq!(notes.len(), 1, "A keeps the note: {at_a:?}");
    assert_eq!(notes[0].lost, "CTO");
    assert_eq!(
        contact(&at_a).title.as_ref().map(|t| t.value.as_str()),
        Some("Chief Engineer")
    );
    // A device that has seen the note and removed it (a later change of its own) is not given
    // it back by one that still holds it.
    let mut removed = at_a.clone();
    if let Record::Contact(c) = &mut removed {
        c.raw.clear();
    }
    let mut later = joined.clone();
    later.bump(ShortId(A));
    let back = merge(&removed, &later, &at_b, &joined);
    assert!(conflicts_in(&back).is_empty(), "{back:?}");
}

#[test]
fn the_same_field_set_on_both_sides_keeps_the_later_and_notes_the_loser() {
    let base_version = version(&[(A, 1)]);
    let base = base();
    let on_a = edit(&base, &base_version, A, 300, |c| {
        c.title = Some(text("CTO"));
    });
    let on_b = edit(&base, &base_version, B, 200, |c| {
        c.title = Some(text("Director"));
    });
    let merged = both_ways(&on_a, &on_b);
    assert_eq!(
        contact(&merged).title.as_ref().map(|t| t.value.as_str()),
        Some("CTO")
    );
    let conflicts = conflicts_in(&merged);
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].field, "title");
    assert_eq!(conflicts[0].kept, "CTO");
    assert_eq!(conflicts[0].lost, "Director");
    assert_eq!(conflicts[0].device, crate::identity::short_name(B));
    assert_eq!(conflicts[0].unix_s, 200);
    // Merging the merge again (it reaches a device by two ways) notes it once.
    let merged_version = on_a.1.merge(&on_b.1);
    let again = merge(&merged, &merged_version, &merged, &merged_version);
    assert_eq!(conflicts_in(&again).len(), 1);
}

#[test]
fn an_edit_beats_a_concurrent_removal_and_a_newer_version_wins_whole() {
    let base_version = version(&[(A, 1)]);
    let base = base();
    let on_a = edit(&base, &base_version, A, 200, |c| c.title = None);
    let on_b = edit(&base, &base_version, B, 150, |c| {
        c.title = Some(text("Director"));
    });
    let merged = both_ways(&on_a, &on_b);
    assert_eq!(
        contact(&merged).title.as_ref().map(|t| t.value.as_str()),
        Some("Director")
    );
    // B's newer version, made on top of A's: it is taken as it is.
    let (newer, newer_version) = edit(&on_a.0, &on_a.1, B, 400, |c| {
        c.emails.clear();
    });
    let taken = merge(&on_a.0, &on_a.1, &newer, &newer_version);
    assert_eq!(normalized(&taken), normalized(&newer));
}

fn event(uid: &str) -> CalendarItem {
    CalendarItem {
        uid: uid.into(),
        components: vec![Component {
            summary: Some(text("Standup")),
            start: Some(DateTime {
                value: "20261201T090000".into(),
                tzid: "Europe/Berlin".into(),
                ..DateTime::default()
            }),
            rrules: vec![text("FREQ=WEEKLY;BYDAY=TU")],
            ..Component::default()
        }],
        timezones: vec![Timezone {
            tzid: "Europe/Berlin".into(),
            text: "BEGIN:VTIMEZONE\r\nTZID:Europe/Berlin\r\nEND:VTIMEZONE\r\n".into(),
            ..Timezone::default()
        }],
    }
}

#[test]
fn calendar_items_merge_overrides_and_exdates_from_both_sides() {
    let base_version = version(&[(A, 1)]);
    let base = stamp_all(Record::Calendar(event("standup")), &dot(A, 1, 100));
    let mut on_a = base.clone();
    if let Record::Calendar(item) = &mut on_a {
        item.components[0].exdates.push(DateTime {
            value: "20261208T090000".into(),
            tzid: "Europe/Berlin".into(),
            ..DateTime::default()
        });
    }
    let mut a_version = base_version.clone();
    a_version.bump(ShortId(A));
    let on_a = restamp(&base, &on_a, &all, &dot(A, 2, 200)).expect("a change");
    let mut on_b = base.clone();
    if let Record::Calendar(item) = &mut on_b {
        item.components.push(Component {
            recurrence_id: Some(DateTime {
                value: "20261215T090000".into(),
                tzid: "Europe/Berlin".into(),
                ..DateTime::default()
            }),
            summary: Some(text("Standup (moved)")),
            pos: 1,
            ..Component::default()
        });
    }
    let mut b_version = base_version.clone();
    b_version.bump(ShortId(B));
    let on_b = restamp(&base, &on_b, &all, &dot(B, 1, 210)).expect("a change");
    let merged = both_ways(&(on_a, a_version), &(on_b, b_version));
    let Record::Calendar(item) = merged else {
        panic!("a calendar item")
    };
    assert_eq!(item.components.len(), 2);
    assert_eq!(item.components[0].exdates.len(), 1);
    assert_eq!(
        item.components[1]
            .summary
            .as_ref()
            .map(|s| s.value.as_str()),
        Some("Standup (moved)")
    );
    assert_eq!(item.timezones.len(), 1);
}
