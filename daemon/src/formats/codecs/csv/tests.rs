#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::{CsvCodec, KEPT_CELL};
use crate::formats::native::{
    Address, CalendarItem, Change, Codec, Contact, Name, Organization, Param, Parsed, Photo,
    RawProperty, Record, Text, WriteSettings,
};

const GOOGLE: &str = include_str!("../../../../../tests/data/records/csv/google-current.csv");
const GOOGLE_OLD: &str = include_str!("../../../../../tests/data/records/csv/google-old.csv");
const OUTLOOK: &str = include_str!("../../../../../tests/data/records/csv/outlook.csv");
const WRONG: &str = include_str!("../../../../../tests/data/records/csv/wrong-cell-count.csv");

fn contacts(text: &str) -> (Vec<Contact>, Parsed) {
    let parsed = CsvCodec.parse(text);
    let list = parsed
        .records
        .iter()
        .map(|r| match &r.record {
            Record::Contact(c) => c.clone(),
            Record::Calendar(_) => panic!("a CSV gave a calendar item"),
        })
        .collect();
    (list, parsed)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// (value, types, label, pref) of each value.
fn texts(v: &[Text]) -> Vec<(&str, Vec<String>, &str, u32)> {
    v.iter()
        .map(|t| (t.value.as_str(), t.types.clone(), t.label.as_str(), t.pref))
        .collect()
}

/// (column, value, pos) of each kept cell.
fn kept(c: &Contact) -> Vec<(&str, &str, u32)> {
    c.raw
        .iter()
        .map(|r| {
            assert_eq!(r.name, KEPT_CELL);
            (r.params[0].values[0].as_str(), r.value.as_str(), r.pos)
        })
        .collect()
}

fn check_spans(text: &str, parsed: &Parsed) {
    let mut spans: Vec<_> = parsed
        .records
        .iter()
        .flat_map(|r| r.spans.clone())
        .chain(parsed.errors.iter().map(|e| e.span.clone()))
        .collect();
    spans.sort_by_key(|s| s.start);
    let mut end = 0;
    for s in spans {
        assert!(s.start >= end, "overlap at {s:?}");
        assert!(
            s.start <= s.end && s.end <= text.len(),
            "{s:?} outside the text"
        );
        assert!(text.get(s.clone()).is_some(), "{s:?} splits a character");
        end = s.end;
    }
}

#[test]
fn google_current_export() {
    let (list, parsed) = contacts(GOOGLE);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    check_spans(GOOGLE, &parsed);
    let lines: Vec<_> = parsed.records.iter().map(|r| r.line).collect();
    assert_eq!(lines, [2, 6, 7], "a row's quoted line breaks belong to it");
    let ada = &list[0];
    assert_eq!(ada.uid, "", "Google has no UID column");
    let n = ada.name.as_ref().unwrap();
    assert_eq!(
        (n.given.clone(), n.family.clone()),
        (strings(&["Ada"]), strings(&["Lovelace"]))
    );
    assert_eq!(ada.nicknames[0].value, "Countess");
    let o = ada.organization.as_ref().unwrap();
    assert_eq!(
        (o.name.as_str(), o.units.clone()),
        ("Analytical Engines Ltd", strings(&["Research"]))
    );
    assert_eq!(ada.title.as_ref().unwrap().value, "Mathematician");
    assert_eq!(ada.birthday.as_ref().unwrap().value, "1815-12-10");
    assert_eq!(
        ada.notes[0].value,
        "Likes engines, numbers; and\nlong walks."
    );
    let cats: Vec<_> = ada.categories.iter().map(|t| t.value.as_str()).collect();
    assert_eq!(cats, ["* myContacts", "Friends"]);
    assert_eq!(
        texts(&ada.emails),
        [
            ("ada@home.example", strings(&["home"]), "", 1),
            ("ada@old.example", strings(&["home"]), "", 0),
            ("ada@work.example", strings(&["work"]), "", 0),
        ]
    );
    assert_eq!(
        texts(&ada.phones),
        [
            ("+44 20 7946 0018", strings(&["cell"]), "", 0),
            ("+44 20 7946 0999", vec![], "Lab line", 0),
        ]
    );
    let a = &ada.addresses[0];
    assert_eq!(
        (
            a.street.as_str(),
            a.locality.as_str(),
            a.postal_code.as_str(),
            a.country.as_str()
        ),
        (
            "12 St James's Square",
            "London",
            "SW1Y 4JH",
            "United Kingdom"
        )
    );
    assert_eq!(a.types, strings(&["home"]));
    assert_eq!(
        texts(&ada.urls),
        [("https://ada.example", vec![], "Profile", 0)]
    );
    assert_eq!(ada.anniversary.as_ref().unwrap().value, "1835-07-08");
    assert_eq!(
        kept(ada),
        [
            ("File As", "Lovelace, Ada", 2),
            ("Photo", "https://lh3.googleusercontent.com/contacts/ada", 7),
            ("Relation 1 - Label", "Spouse", 16),
            ("Relation 1 - Value", "William", 17),
            ("Custom Field 1 - Label", "Pet", 20),
            ("Custom Field 1 - Value", "Cat", 21),
        ]
    );
    let pos: Vec<u32> = ada.emails.iter().map(|t| t.pos).collect();
    assert_eq!(pos, [10, 11, 12]);
    assert_eq!(
        (n.pos, a.pos, ada.anniversary.as_ref().unwrap().pos),
        (0, 15, 19)
    );

    let grace = &list[1];
    let n = grace.name.as_ref().unwrap();
    assert_eq!(n.additional, strings(&["Brewster"]));
    assert_eq!(n.prefixes, strings(&["Rear Admiral"]));
    assert_eq!(grace.birthday.as_ref().unwrap().value, "--12-09");
    assert_eq!(grace.phones[0].types, strings(&["work", "fax"]));
    assert!(grace.anniversary.is_none());
    let events: Vec<_> = kept(grace).into_iter().map(|(c, v, _)| (c, v)).collect();
    assert_eq!(
        events,
        [
            ("Event 1 - Label", "Retired"),
            ("Event 1 - Value", "1986-08-14")
        ]
    );
    let cats: Vec<_> = list[2]
        .categories
        .iter()
        .map(|t| t.value.as_str())
        .collect();
    assert_eq!(cats, ["* myContacts", "Família"]);
    assert_eq!(list[2].name.as_ref().unwrap().family, strings(&["Ŝtraße"]));
}

#[test]
fn google_older_export() {
    let (list, parsed) = contacts(GOOGLE_OLD);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let alan = &list[0];
    assert_eq!(alan.formatted_name.as_ref().unwrap().value, "Alan Turing");
    let n = alan.name.as_ref().unwrap();
    assert_eq!(n.additional, strings(&["Mathison"]));
    assert_eq!(alan.birthday.as_ref().unwrap().value, "1912-06-23");
    let cats: Vec<_> = alan.categories.iter().map(|t| t.value.as_str()).collect();
    assert_eq!(cats, ["* My Contacts", "Colleagues"]);
    assert_eq!(
        texts(&alan.emails),
        [
            ("alan@bletchley.example", strings(&["work"]), "", 1),
            ("alan@home.example", strings(&["home"]), "", 0),
        ]
    );
    assert_eq!(alan.phones[0].types, strings(&["cell"]));
    let a = &alan.addresses[0];
    assert_eq!(
        a.street, "Sherwood Drive, Bletchley, MK3 6EB",
        "only formatted: kept as the street"
    );
    assert_eq!(a.types, strings(&["work"]));
    let o = alan.organization.as_ref().unwrap();
    assert_eq!(
        (o.name.as_str(), o.units.clone()),
        ("GC&CS", strings(&["Hut 8"]))
    );
    assert_eq!(alan.title.as_ref().unwrap().value, "Cryptanalyst");
    assert_eq!(
        texts(&alan.urls),
        [("https://turing.example", vec![], "Home Page", 0)]
    );
    let k: Vec<_> = kept(alan).into_iter().map(|(c, v, _)| (c, v)).collect();
    assert_eq!(k, [("Gender", "male"), ("Occupation", "Codebreaker")]);
    assert_eq!(
        texts(&list[1].emails),
        [("joan@example.org", strings(&["other"]), "", 0)]
    );

    // Written back, the file is in Google's current layout; the kept columns follow it.
    let out = CsvCodec.write(Some((GOOGLE_OLD, &parsed)), &[], &WriteSettings::default());
    let header = out.lines().next().unwrap();
    assert!(
        header.starts_with("First Name,Middle Name,Last Name,"),
        "{header}"
    );
    // The old header's columns no field holds are kept, in their order, before UID.
    assert!(header.contains(",Yomi Name,"), "{header}");
    assert!(header.contains(",Gender,Location,"), "{header}");
    assert!(
        header.ends_with(",Organization 1 - Job Description,UID"),
        "{header}"
    );
    assert!(!header.contains("Given Name,"), "{header}");
    let (again, reparsed) = contacts(&out);
    assert!(reparsed.errors.is_empty());
    assert_eq!(again.len(), 2);
    assert_eq!(texts(&again[0].emails), texts(&alan.emails));
    assert_eq!(kept(&again[0]).len(), 2);
}

#[test]
fn outlook_export() {
    let (list, parsed) = contacts(OUTLOOK);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let m = &list[0];
    let n = m.name.as_ref().unwrap();
    assert_eq!(
        (n.given.clone(), n.family.clone(), n.prefixes.clone()),
        (
            strings(&["Margaret"]),
            strings(&["Hamilton"]),
            strings(&["Dr."])
        )
    );
    assert_eq!(
        texts(&m.emails),
        [
            ("margaret@apollo.example", vec![], "", 0),
            ("mh@home.example", vec![], "", 0)
        ]
    );
    assert_eq!(
        texts(&m.phones),
        [
            ("+1 617 555 0100", strings(&["work"]), "", 0),
            ("+1 617 555 0199", strings(&["cell"]), "", 0),
        ]
    );
    let o = m.organization.as_ref().unwrap();
    assert_eq!(
        (o.name.as_str(), o.units.clone()),
        (
            "MIT Instrumentation Lab",
            strings(&["Software Engineering"])
        )
    );
    assert_eq!(m.title.as_ref().unwrap().value, "Director");
    let a = &m.addresses[0];
    assert_eq!(
        (
            a.street.as_str(),
            a.locality.as_str(),
            a.region.as_str(),
            a.postal_code.as_str()
        ),
        ("75 Cambridge Parkway", "Cambridge", "MA", "02142")
    );
    assert_eq!(
        (a.country.as_str(), a.types.clone()),
        ("United States", strings(&["work"]))
    );
    assert_eq!(
        texts(&m.urls),
        [("https://apollo.example/mh", vec![], "", 0)]
    );
    assert_eq!(m.birthday.as_ref().unwrap().value, "8/17/1936");
    assert!(m.anniversary.is_none(), "0/0/00 is no date");
    assert_eq!(m.notes[0].value, "Wrote the \"priority display\" code.");
    let cats: Vec<_> = m.categories.iter().map(|t| t.value.as_str()).collect();
    assert_eq!(cats, ["Apollo", "Heroes"]);
    let k: Vec<_> = kept(m).into_iter().map(|(c, v, _)| (c, v)).collect();
    assert_eq!(k, [("Spouse", "James")]);
}

#[test]
fn a_row_of_the_wrong_length_is_an_error_and_the_others_are_read() {
    let (list, parsed) = contacts(WRONG);
    check_spans(WRONG, &parsed);
    let uids: Vec<_> = list.iter().map(|c| c.uid.as_str()).collect();
    assert_eq!(uids, ["uid-1", "uid-3", "uid-4"]);
    assert_eq!(parsed.errors.len(), 1);
    let e = &parsed.errors[0];
    assert_eq!(e.line, 3);
    assert_eq!(
        e.message,
        "row at line 3 has 5 cells, the header has 22; fix the row or remove it"
    );
    assert_eq!(&WRONG[e.span.clone()], "Two,,Broken,only,five\r\n");
    assert_eq!(list[1].notes[0].value, "line one\nline two");
    assert_eq!(parsed.records[2].line, 6);
}

#[test]
fn a_text_that_is_not_csv_is_all_errors() {
    let text = "hello there\n\nthis is, no contacts list\r\n";
    let parsed = CsvCodec.parse(text);
    assert!(parsed.records.is_empty());
    let lines: Vec<_> = parsed.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [1, 3]);
    check_spans(text, &parsed);
    assert!(CsvCodec.parse("").errors.is_empty());
    // One word we know is not yet a header.
    let notes = "Notes\nbuy milk\n";
    assert_eq!(CsvCodec.parse(notes).errors.len(), 2);
}

fn put(c: Contact) -> Change {
    Change::Put(Box::new(Record::Contact(c)))
}

#[test]
fn untouched_rows_keep_their_bytes() {
    let (list, parsed) = contacts(WRONG);
    // No change at all: the very same text.
    assert_eq!(
        CsvCodec.write(Some((WRONG, &parsed)), &[], &WriteSettings::default()),
        WRONG
    );
    let mut three = list[1].clone();
    three.notes[0].value = "changed".into();
    let out = CsvCodec.write(
        Some((WRONG, &parsed)),
        &[put(three), Change::Remove("uid-4".into())],
        &WriteSettings::default(),
    );
    let keep = &WRONG[..parsed.records[1].spans[0].start];
    assert!(out.starts_with(keep), "{out}");
    assert_eq!(
        &out[keep.len()..],
        "Three,,,,,,,,,,,,,,changed,,,,,Home,555-0103,uid-3\r\n"
    );

    // A contact with two emails widens the header: every row is written anew, and the row
    // that could not be read keeps its bytes in its place.
    let new = Contact {
        uid: "uid-5".into(),
        emails: vec![
            Text {
                value: "a@example.org".into(),
                ..Text::default()
            },
            Text {
                value: "b@example.org".into(),
                pos: 1,
                ..Text::default()
            },
        ],
        ..Contact::default()
    };
    let (list2, parsed2) = contacts(&out);
    let wide = CsvCodec.write(
        Some((&out, &parsed2)),
        &[put(new)],
        &WriteSettings::default(),
    );
    let rows: Vec<&str> = wide.split("\r\n").collect();
    assert!(rows[0].contains("E-mail 2 - Value"));
    assert_eq!(rows[2], "Two,,Broken,only,five");
    let (list3, parsed3) = contacts(&wide);
    assert_eq!(parsed3.errors.len(), 1);
    assert_eq!(list3.len(), 3);
    assert_eq!(list3[..2], list2[..]);
    assert_eq!(list3[2].emails.len(), 2);
}

#[test]
fn calendar_items_are_not_contacts() {
    let item = Record::Calendar(CalendarItem {
        uid: "e".into(),
        ..CalendarItem::default()
    });
    assert_eq!(CsvCodec.holds(&item), item);
    let out = CsvCodec.write(
        None,
        &[Change::Put(Box::new(item))],
        &WriteSettings::default(),
    );
    assert_eq!(CsvCodec.parse(&out).records.len(), 0);
}

#[test]
fn a_record_from_elsewhere_loses_what_csv_cannot_hold() {
    let c = Contact {
        uid: "u".into(),
        formatted_name: Some(Text {
            value: "Full".into(),
            ..Text::default()
        }),
        photo: Some(Photo {
            data: vec![1, 2, 3],
            ..Photo::default()
        }),
        emails: vec![Text {
            value: "x@example.org".into(),
            types: strings(&["internet", "work"]),
            label: "_$!<Home>!$_".into(),
            pref: 3,
            group: "item1".into(),
            params: vec![Param {
                name: "X-A".into(),
                values: vec![],
            }],
            ..Text::default()
        }],
        organization: Some(Organization {
            name: "Org".into(),
            ..Organization::default()
        }),
        raw: vec![RawProperty {
            name: "X-SOCIAL".into(),
            value: "v".into(),
            ..RawProperty::default()
        }],
        ..Contact::default()
    };
    let Record::Contact(h) = CsvCodec.holds(&Record::Contact(c)) else {
        panic!("not a contact");
    };
    assert!(h.formatted_name.is_none() && h.photo.is_none() && h.raw.is_empty());
    assert_eq!(
        texts(&h.emails),
        [("x@example.org", strings(&["home"]), "", 0)]
    );
    assert_eq!(h.emails[0].group, "");
    assert_eq!(h.organization.unwrap().name, "Org");
}

// ---- property tests ----

/// `n` cases, unless PROPTEST_CASES asks for another number (for a longer run by hand).
fn free_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ,;:\"\n=äöüß€日本-]{0,16}"
}

fn types() -> impl Strategy<Value = Vec<String>> {
    proptest::sample::subsequence(vec!["home", "work", "cell", "fax", "internet"], 0..3)
        .prop_map(|v| v.into_iter().map(String::from).collect())
}

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[A-Za-z' ]{1,10}",
        Just("_$!<Work>!$_".to_string())
    ]
}

fn value_text(value: BoxedStrategy<String>) -> impl Strategy<Value = Text> {
    (value, types(), label(), 0u32..3, 0u32..20).prop_map(|(value, types, label, pref, pos)| Text {
        value,
        types,
        label,
        pref,
        pos,
        ..Text::default()
    })
}

fn raw() -> impl Strategy<Value = RawProperty> {
    let column = prop_oneof![
        Just("Gender"),
        Just("Hobby"),
        Just("Photo"),
        Just("Relation 1 - Value"),
        Just("Custom Field 2 - Label"),
        Just("Event 3 - Value"),
        Just("First Name"),
    ];
    (column, free_text(), 0u32..20, any::<bool>()).prop_map(|(column, value, pos, csv)| {
        RawProperty {
            name: if csv {
                KEPT_CELL.into()
            } else {
                "X-OTHER".into()
            },
            params: vec![Param {
                name: "COLUMN".into(),
                values: vec![column.into()],
            }],
            value,
            pos,
            ..RawProperty::default()
        }
    })
}

prop_compose! {
    fn contact()(
        uid in "[a-z0-9-]{0,12}",
        names in proptest::collection::vec(free_text(), 0..3),
        emails in proptest::collection::vec(value_text("[a-z]{1,6}@[a-z]{1,6}\\.example".boxed()), 0..4),
        phones in proptest::collection::vec(value_text("\\+?[0-9 ]{3,12}".boxed()), 0..4),
        addresses in proptest::collection::vec((free_text(), free_text(), types(), label()), 0..3),
        notes in proptest::collection::vec(value_text(free_text().boxed()), 0..3),
        categories in proptest::collection::vec("[A-Za-z äé*]{1,8}", 0..4),
        org in proptest::option::of((free_text(), free_text())),
        raw in proptest::collection::vec(raw(), 0..4),
        bday in proptest::option::of(prop_oneof![Just("1985-04-12"), Just("--04-12"), Just("19991231")]),
        anniversary in proptest::option::of(Just("2001-02-03")),
    ) -> Contact {
        Contact {
            uid,
            name: (!names.is_empty()).then(|| Name {
                family: names.clone(),
                given: names.iter().rev().cloned().collect(),
                ..Name::default()
            }),
            emails,
            phones,
            addresses: addresses.into_iter().enumerate().map(|(i, (street, country, types, label))| Address {
                street, country, types, label, pos: u32::try_from(i).unwrap(), ..Address::default()
            }).collect(),
            notes,
            categories: categories.into_iter().map(|value| Text { value, ..Text::default() }).collect(),
            organization: org.map(|(name, unit)| Organization { name, units: vec![unit], ..Organization::default() }),
            raw,
            birthday: bday.map(|v| Text { value: v.into(), ..Text::default() }),
            anniversary: anniversary.map(|v| Text { value: v.into(), ..Text::default() }),
            ..Contact::default()
        }
    }
}

proptest! {
    #![proptest_config(crate::formats::test_cases(64))]

    #[test]
    fn what_it_holds_survives_a_write_and_a_read(c in contact()) {
        let held = CsvCodec.holds(&Record::Contact(c));
        let text = CsvCodec.write(None, &[Change::Put(Box::new(held.clone()))], &WriteSettings::default());
        let parsed = CsvCodec.parse(&text);
        prop_assert!(parsed.errors.is_empty(), "{:?}\n{}", parsed.errors, text);
        prop_assert_eq!(parsed.records.len(), 1);
        prop_assert_eq!(&parsed.records[0].record, &held, "{}", text);
        prop_assert_eq!(CsvCodec.holds(&held), held);
    }

    #[test]
    fn holds_keeps_emails_phones_and_kept_cells(mut c in contact()) {
        c.emails.sort_by_key(|t| t.pos);
        c.phones.sort_by_key(|t| t.pos);
        let Record::Contact(h) = CsvCodec.holds(&Record::Contact(c.clone())) else {
            panic!("a contact held as something else");
        };
        let values = |v: &[Text]| v.iter().map(|t| t.value.clone()).collect::<Vec<_>>();
        prop_assert_eq!(values(&h.emails), values(&c.emails));
        prop_assert_eq!(values(&h.phones), values(&c.phones));
        prop_assert_eq!(&h.uid, &c.uid);
        // Every kept cell of a column only kept cells fill comes back, one per column.
        let wanted: Vec<&RawProperty> = c.raw.iter().filter(|r| {
            r.name == KEPT_CELL && !r.value.is_empty() && r.params[0].values[0] != "First Name"
        }).collect();
        for r in wanted {
            let col = &r.params[0].values[0];
            prop_assert!(h.raw.iter().any(|k| &k.params[0].values[0] == col), "{} lost", col);
        }
    }

    #[test]
    fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        check_any(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_fixtures_parse_without_panic(
        which in 0usize..4,
        op in 0u8..3,
        at in any::<proptest::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let base = [GOOGLE, GOOGLE_OLD, OUTLOOK, WRONG][which];
        let mut bytes = base.as_bytes().to_vec();
        let i = at.index(bytes.len());
        match op {
            0 => bytes.truncate(i),
            1 => bytes[i] = byte,
            _ => {
                let lines: Vec<&str> = base.split_inclusive('\n').collect();
                let k = at.index(lines.len());
                let mut v = lines.clone();
                v.insert(k, lines[k]);
                bytes = v.concat().into_bytes();
            }
        }
        check_any(&String::from_utf8_lossy(&bytes));
    }
}

/// Parsing never panics, parts stay apart and inside the text, and a write of no change keeps
/// every part that could not be read.
fn check_any(text: &str) {
    let parsed = CsvCodec.parse(text);
    check_spans(text, &parsed);
    let out = CsvCodec.write(Some((text, &parsed)), &[], &WriteSettings::default());
    for e in &parsed.errors {
        assert!(out.contains(&text[e.span.clone()]), "{:?} lost", e);
    }
}

proptest! {
    #![proptest_config(crate::formats::test_cases(32))]

    /// A put replaces one record where it is, every other record reads back as it was, and a
    /// remove takes exactly one away.
    #[test]
    fn a_put_and_a_remove_touch_only_their_record(
        mut list in proptest::collection::vec(contact(), 1..4),
        mut new in contact(),
        which in any::<proptest::sample::Index>(),
    ) {
        for (i, c) in list.iter_mut().enumerate() {
            c.uid = format!("uid-{i}");
        }
        let puts: Vec<Change> = list.iter().cloned().map(put).collect();
        let text = CsvCodec.write(None, &puts, &WriteSettings::default());
        let parsed = CsvCodec.parse(&text);
        prop_assert_eq!(parsed.records.len(), list.len());
        let i = which.index(list.len());
        new.uid = list[i].uid.clone();
        let out = CsvCodec.write(Some((&text, &parsed)), &[put(new.clone())], &WriteSettings::default());
        let again = CsvCodec.parse(&out);
        prop_assert!(again.errors.is_empty());
        prop_assert_eq!(again.records.len(), list.len());
        for (j, (before, after)) in parsed.records.iter().zip(&again.records).enumerate() {
            if j == i {
                prop_assert_eq!(&after.record, &CsvCodec.holds(&Record::Contact(new.clone())));
            } else {
                prop_assert_eq!(&after.record, &before.record);
            }
        }
        let removed = CsvCodec.write(Some((&out, &again)), &[Change::Remove(new.uid.clone())], &WriteSettings::default());
        let left = CsvCodec.parse(&removed);
        prop_assert_eq!(left.records.len(), list.len() - 1);
        prop_assert!(left.records.iter().all(|r| r.uid() != Some(new.uid.as_str())));
    }
}

proptest! {
    #![proptest_config(crate::formats::test_cases(256))]

    /// Texts made of the pieces contacts CSV is made of reach far more of the reader than bytes.
    #[test]
    fn texts_of_csv_pieces_parse_without_panic(pieces in proptest::collection::vec(
        proptest::sample::select(vec![
            "First Name,Last Name,E-mail 1 - Label,E-mail 1 - Value,UID\r\n", "Name,Notes\n",
            ",", "\"", "\r\n", "\n", "\r", " ::: ", "* Home", "Work", "a@example.org", "UID",
            "Event 1 - Label", "Anniversary", "Address 2 - Formatted", "0/0/00", "ä", "\u{feff}",
            "Relation 1 - Value", "Gender", "x",
        ]),
        0..60,
    )) {
        check_any(&pieces.concat());
    }
}
