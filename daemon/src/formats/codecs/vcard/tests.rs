#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::VCardCodec;
use crate::formats::native::{
    Address, Change, Codec, Contact, Name, Param, Parsed, Photo, RawProperty, Record, Text,
    WriteSettings,
};

const V21: &str = include_str!("../../../../../tests/data/records/vcard/v21-quoted-printable.vcf");
const V30: &str = include_str!("../../../../../tests/data/records/vcard/v30-apple.vcf");
const V40: &str = include_str!("../../../../../tests/data/records/vcard/v40-typed.vcf");
const SEVERAL: &str =
    include_str!("../../../../../tests/data/records/vcard/several-one-broken.vcf");

fn contacts(text: &str) -> (Vec<Contact>, Parsed) {
    let parsed = VCardCodec.parse(text);
    let list = parsed
        .records
        .iter()
        .map(|r| match &r.record {
            Record::Contact(c) => c.clone(),
            Record::Calendar(_) => panic!("a vCard gave a calendar item"),
        })
        .collect();
    (list, parsed)
}

fn one(text: &str) -> Contact {
    let (list, parsed) = contacts(text);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    assert_eq!(list.len(), 1);
    list.into_iter().next().unwrap()
}

fn param(name: &str, values: &[&str]) -> Param {
    Param {
        name: name.into(),
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Records and errors lie inside the text, in order, and never overlap.
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
fn v21_quoted_printable_and_charsets_are_decoded() {
    let c = one(V21);
    let n = c.name.unwrap();
    assert_eq!(n.family, strings(&["Müller"]));
    assert_eq!(n.given, strings(&["Jürgen"]));
    assert!(
        n.params.is_empty(),
        "CHARSET and ENCODING are transport, not kept"
    );
    assert_eq!(c.formatted_name.unwrap().value, "Jürgen Müller");
    assert_eq!(c.phones.len(), 2);
    assert_eq!(c.phones[0].value, "+49 170 1234567");
    assert_eq!(c.phones[0].types, strings(&["cell", "voice"]));
    assert_eq!(c.phones[1].types, strings(&["work"]));
    assert_eq!(c.phones[1].pref, 1);
    assert_eq!(c.emails[0].types, strings(&["internet"]));
    let a = &c.addresses[0];
    assert_eq!(
        (
            a.street.as_str(),
            a.locality.as_str(),
            a.postal_code.as_str()
        ),
        ("Straße 1", "München", "80331")
    );
    assert_eq!(a.country, "Deutschland");
    assert_eq!(a.types, strings(&["home"]));
    assert_eq!(
        c.notes[0].value,
        "Erste Zeile mit ä, und sie ist so lang, dass sie weiter geht\nZweite Zeile"
    );
    assert_eq!(
        c.raw,
        vec![RawProperty {
            name: "X-CUSTOM".into(),
            value: "Grüße".into(),
            pos: 7,
            ..RawProperty::default()
        }]
    );
    assert_eq!(c.notes[0].pos, 6);
}

/// calcard decodes 2.1's quoted-printable (soft line breaks and charsets) as well; we decode
/// it ourselves only because we keep raw values with their escapes (see `lex`).
#[test]
fn calcard_decodes_quoted_printable_too() {
    use calcard::vcard::{VCard, VCardProperty, VCardValue};
    let card = VCard::parse(V21).unwrap();
    let text = |p: VCardProperty| -> Vec<String> {
        card.entries
            .iter()
            .find(|e| e.name == p)
            .unwrap()
            .values
            .iter()
            .filter_map(|v| match v {
                VCardValue::Text(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(text(VCardProperty::Fn), strings(&["Jürgen Müller"]));
    assert_eq!(
        text(VCardProperty::Note).concat(),
        "Erste Zeile mit ä, und sie ist so lang, dass sie weiter geht\r\nZweite Zeile"
    );
}

#[test]
fn v30_apple_groups_labels_and_photo() {
    let c = one(V30);
    assert_eq!(c.uid, "6B29FC40-CA47-1067-B31D-00DD010662DA");
    assert_eq!(c.name.as_ref().unwrap().family, strings(&["Appleseed"]));
    let org = c.organization.unwrap();
    assert_eq!(
        (org.name.as_str(), org.units),
        ("Example Fruit Co.", strings(&["Engineering", ""]))
    );
    let e = &c.emails[0];
    assert_eq!(
        (
            e.value.as_str(),
            e.types.clone(),
            e.pref,
            e.group.as_str(),
            e.label.as_str()
        ),
        (
            "johnny@example.com",
            strings(&["internet"]),
            1,
            "item1",
            "_$!<Work>!$_"
        )
    );
    let t = &c.phones[0];
    assert_eq!(t.types, strings(&["cell", "voice"]));
    assert_eq!(
        (t.group.as_str(), t.label.as_str()),
        ("item2", "Mum's phone")
    );
    let a = &c.addresses[0];
    assert_eq!(
        (a.group.as_str(), a.label.as_str()),
        ("item3", "_$!<Home>!$_")
    );
    assert_eq!(a.street, "1 Orchard Way");
    assert_eq!(
        c.notes[0].value,
        "A note long enough to be folded by the writer at seventy-five octets, with a comma and \
         a semicolon; and a line break\nhere."
    );
    let b = c.birthday.unwrap();
    assert_eq!(b.value, "1985-04-12");
    assert_eq!(b.params, vec![param("VALUE", &["date"])]);
    let p = c.photo.unwrap();
    assert_eq!((p.data.len(), p.media_type.as_str()), (206, "image/jpeg"));
    assert_eq!(&p.data[..2], &[0xFF, 0xD8]);
    let cats: Vec<_> = c.categories.iter().map(|t| t.value.as_str()).collect();
    assert_eq!(cats, ["Friends", "Orchard Club"]);
    // Positions: labels count with their value; UID and VERSION not at all.
    let names: Vec<_> = c
        .raw
        .iter()
        .map(|r| (r.name.as_str(), r.group.as_str(), r.pos))
        .collect();
    assert_eq!(
        names,
        [
            ("PRODID", "", 0),
            ("X-ABADR", "item3", 8),
            ("X-SOCIALPROFILE", "", 11)
        ]
    );
    assert_eq!(c.raw[2].params, vec![param("TYPE", &["twitter"])]);
    assert_eq!(
        (
            e.pos,
            t.pos,
            a.pos,
            c.notes[0].pos,
            p.pos,
            c.categories[1].pos
        ),
        (5, 6, 7, 9, 12, 13)
    );
}

#[test]
fn v40_types_pref_and_dates() {
    let c = one(V40);
    assert_eq!(c.uid, "urn:uuid:4fbe8971-0bc3-424c-9c26-36c3e1eff6b1");
    assert_eq!(c.revision, "20261201T120000Z");
    let n = c.name.unwrap();
    assert_eq!(n.additional, strings(&["Q.", "R."]));
    assert_eq!(n.prefixes, strings(&["Dr."]));
    assert!(n.suffixes.is_empty());
    let nicks: Vec<_> = c
        .nicknames
        .iter()
        .map(|t| (t.value.as_str(), t.pos))
        .collect();
    assert_eq!(nicks, [("JD", 2), ("Janie", 2)]);
    let emails: Vec<_> = c
        .emails
        .iter()
        .map(|t| (t.value.as_str(), t.types.clone(), t.pref))
        .collect();
    assert_eq!(
        emails,
        [
            ("jane@work.example", strings(&["work"]), 1),
            ("jane@home.example", strings(&["home"]), 2),
            ("jd@other.example", strings(&["home", "internet"]), 0),
        ]
    );
    let tel = &c.phones[0];
    assert_eq!(tel.value, "tel:+1-555-555-5555");
    assert_eq!(tel.types, strings(&["voice", "cell"]));
    assert_eq!(tel.params, vec![param("VALUE", &["uri"])]);
    assert_eq!(c.birthday.unwrap().value, "--04-12");
    assert_eq!(c.anniversary.unwrap().value, "1996-04-15T10:30:00Z");
    let raw: Vec<_> = c
        .raw
        .iter()
        .map(|r| (r.name.as_str(), r.value.as_str(), r.params.clone()))
        .collect();
    assert_eq!(
        raw,
        [
            ("KIND", "individual", vec![]),
            ("GENDER", "F", vec![]),
            ("IMPP", "xmpp:jane@example.com", vec![param("PREF", &["1"])]),
        ]
    );
    let p = c.photo.unwrap();
    assert_eq!((p.data.len(), p.media_type.as_str()), (68, "image/png"));
}

#[test]
fn a_broken_card_is_an_error_and_the_others_are_read() {
    let (list, parsed) = contacts(SEVERAL);
    check_spans(SEVERAL, &parsed);
    let uids: Vec<_> = list.iter().map(|c| c.uid.as_str()).collect();
    assert_eq!(uids, ["one", "three", "five"]);
    let lines: Vec<_> = parsed.records.iter().map(|r| r.line).collect();
    assert_eq!(lines, [1, 11, 24]);
    let errors: Vec<_> = parsed
        .errors
        .iter()
        .map(|e| (e.line, e.message.as_str()))
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert_eq!(
        errors[0],
        (
            6,
            "vCard at line 6 has no END:VCARD; add the line or remove the card"
        )
    );
    assert_eq!(errors[1].0, 17);
    assert!(errors[1].1.contains("line 21"), "{}", errors[1].1);
    assert_eq!(errors[2].0, 23);
    assert!(errors[2].1.contains("not part of a vCard"));
    assert_eq!(
        &SEVERAL[parsed.errors[2].span.clone()],
        "stray text between cards\r\n"
    );
}

fn put(c: Contact) -> Change {
    Change::Put(Box::new(Record::Contact(c)))
}

#[test]
fn untouched_cards_keep_their_bytes() {
    let parsed = VCardCodec.parse(SEVERAL);
    let (list, _) = contacts(SEVERAL);
    let mut three = list[1].clone();
    three.formatted_name.as_mut().unwrap().value = "Three, renamed".into();
    let out = VCardCodec.write(
        Some((SEVERAL, &parsed)),
        &[put(three), Change::Remove("one".into())],
        &WriteSettings::default(),
    );
    // Card one is gone with its line end; the broken card, the card with a bad line, the
    // stray text and card five are byte for byte where they were.
    let cut = |n: usize| &SEVERAL[parsed.errors[n].span.clone()];
    let five = &SEVERAL[parsed.records[2].spans[0].clone()];
    assert!(out.starts_with(cut(0)), "{out}");
    assert!(out.ends_with(&format!("{}{}", cut(2), five)), "{out}");
    assert!(out.contains(cut(1)));
    assert!(!out.contains("UID:one"));
    assert!(out.contains("FN:Three\\, renamed\r\n"));
    let (again, reparsed) = contacts(&out);
    assert_eq!(reparsed.errors.len(), 3);
    let uids: Vec<_> = again.iter().map(|c| c.uid.as_str()).collect();
    assert_eq!(uids, ["three", "five"]);
    // A new card goes at the end, in the version the text uses.
    let new = Contact {
        uid: "six".into(),
        ..Contact::default()
    };
    let out2 = VCardCodec.write(
        Some((&out, &reparsed)),
        &[put(new)],
        &WriteSettings::default(),
    );
    assert!(out2.starts_with(&out));
    assert!(out2.ends_with("BEGIN:VCARD\r\nVERSION:3.0\r\nUID:six\r\nEND:VCARD\r\n"));
}

#[test]
fn a_rewritten_card_reads_back_the_same_in_every_version() {
    for text in [V21, V30, V40] {
        let c = one(text);
        for version in ["2.1", "3.0", "4.0"] {
            let settings = WriteSettings {
                vcard_version: version.into(),
            };
            let out = VCardCodec.write(None, &[put(c.clone())], &settings);
            let back = one(&out);
            let held = VCardCodec.holds(&Record::Contact(c.clone()));
            assert_eq!(
                VCardCodec.holds(&Record::Contact(back)),
                held,
                "{version}:\n{out}"
            );
        }
    }
}

#[test]
fn the_writer_keeps_the_previous_version_and_line_ends() {
    let parsed = VCardCodec.parse(V40);
    let new = Contact {
        uid: "x".into(),
        birthday: Some(Text {
            value: "1990-01-31".into(),
            ..Text::default()
        }),
        ..Contact::default()
    };
    let out = VCardCodec.write(Some((V40, &parsed)), &[put(new)], &WriteSettings::default());
    assert!(
        out.ends_with("BEGIN:VCARD\nVERSION:4.0\nUID:x\nBDAY:19900131\nEND:VCARD\n"),
        "{out}"
    );
}

#[test]
fn a_bom_bare_types_and_a_21_photo() {
    let text = "\u{feff}BEGIN:VCARD\nVERSION:2.1\nN:Doe;John\nTEL;HOME;FAX:+1 555 0100\n\
                PHOTO;JPEG;ENCODING=BASE64:\n AQID\n\nEND:VCARD\n";
    let parsed = VCardCodec.parse(text);
    assert_eq!(
        parsed.records[0].spans,
        vec![3..text.len()],
        "the BOM is no card's"
    );
    let c = one(text);
    assert_eq!(c.phones[0].types, strings(&["home", "fax"]));
    let p = c.photo.unwrap();
    assert_eq!(
        (p.data, p.media_type.as_str()),
        (vec![1, 2, 3], "image/jpeg")
    );
    let same = VCardCodec.write(Some((text, &parsed)), &[], &WriteSettings::default());
    assert_eq!(same, text);
}

#[test]
fn a_label_is_taken_only_from_a_group_of_one_value() {
    let text = "BEGIN:VCARD\r\nVERSION:3.0\r\nitem1.EMAIL:a@example.org\r\nitem1.TEL:555\r\n\
                item1.X-ABLabel:Shared\r\nitem2.URL:https://x.example\r\nitem2.X-ABLabel:Blog\r\n\
                END:VCARD\r\n";
    let c = one(text);
    assert_eq!(
        (c.emails[0].label.as_str(), c.phones[0].label.as_str()),
        ("", "")
    );
    assert_eq!(
        (
            c.raw[0].group.as_str(),
            c.raw[0].name.as_str(),
            c.raw[0].value.as_str()
        ),
        ("item1", "X-ABLABEL", "Shared")
    );
    assert_eq!((c.urls[0].label.as_str(), c.urls[0].pos), ("Blog", 3));
    // A label without a group gets one of its own when written.
    let mut c2 = c.clone();
    c2.urls[0].group.clear();
    let out = VCardCodec.write(None, &[put(c2)], &WriteSettings::default());
    assert!(
        out.contains("item2.URL:https://x.example\r\nitem2.X-ABLabel:Blog\r\n"),
        "{out}"
    );
}

// ---- property tests ----

/// `n` cases, unless PROPTEST_CASES asks for another number (for a longer run by hand).
fn free_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ,;:\\\\\"\n=äöüßé€日本]{0,16}"
}

fn types() -> impl Strategy<Value = Vec<String>> {
    proptest::sample::subsequence(vec!["home", "work", "cell", "voice", "internet"], 0..3)
        .prop_map(|v| v.into_iter().map(String::from).collect())
}

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[A-Za-z' ]{1,10}",
        Just("_$!<Work>!$_".to_string())
    ]
}

fn group() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        1 => Just("item1".to_string()),
        1 => Just("item2".to_string()),
    ]
}

fn value_text(value: BoxedStrategy<String>) -> impl Strategy<Value = Text> {
    (value, types(), label(), 0u32..4, 0u32..20, group()).prop_map(
        |(value, types, label, pref, pos, group)| Text {
            value,
            types,
            label,
            pref,
            pos,
            group,
            ..Text::default()
        },
    )
}

fn address() -> impl Strategy<Value = Address> {
    (
        free_text(),
        free_text(),
        free_text(),
        types(),
        label(),
        0u32..20,
    )
        .prop_map(|(street, locality, country, types, label, pos)| Address {
            street,
            locality,
            country,
            types,
            label,
            pos,
            ..Address::default()
        })
}

fn raw() -> impl Strategy<Value = RawProperty> {
    (
        prop_oneof![4 => "X-[A-Z]{1,6}", 1 => Just("X-ABLABEL".to_string())],
        "[a-zA-Z0-9 ,;:=äé]{0,12}",
        proptest::collection::vec(
            (
                "X-[A-Z]{1,4}",
                proptest::collection::vec("[a-z0-9]{1,5}", 0..3),
            ),
            0..2,
        ),
        0u32..20,
        group(),
    )
        .prop_map(|(name, value, params, pos, group)| RawProperty {
            group,
            name,
            value,
            params: params
                .into_iter()
                .map(|(name, values)| Param { name, values })
                .collect(),
            pos,
            ..RawProperty::default()
        })
}

prop_compose! {
    fn contact()(
        uid in "[a-z0-9-]{0,12}",
        names in proptest::collection::vec(free_text(), 0..3),
        fname in proptest::option::of(value_text(free_text().boxed())),
        emails in proptest::collection::vec(value_text("[a-z]{1,6}@[a-z]{1,6}\\.example".boxed()), 0..4),
        phones in proptest::collection::vec(value_text("\\+?[0-9 ]{3,12}".boxed()), 0..4),
        addresses in proptest::collection::vec(address(), 0..4),
        notes in proptest::collection::vec(value_text(free_text().boxed()), 0..3),
        categories in proptest::collection::vec("[A-Za-z äé]{1,8}", 0..4),
        photo in proptest::option::of((proptest::collection::vec(any::<u8>(), 1..64), prop_oneof![Just("image/jpeg"), Just("image/png")])),
        raw in proptest::collection::vec(raw(), 0..4),
        bday in proptest::option::of(prop_oneof![Just("1985-04-12"), Just("--04-12"), Just("19991231"), Just("circa 1950")]),
    ) -> Contact {
        Contact {
            uid,
            formatted_name: fname,
            name: (!names.is_empty()).then(|| Name {
                family: names.clone(),
                given: names.iter().rev().cloned().collect(),
                ..Name::default()
            }),
            emails,
            phones,
            addresses,
            notes,
            categories: categories.into_iter().map(|value| Text { value, pos: 3, ..Text::default() }).collect(),
            photo: photo.map(|(data, mt)| Photo { data, media_type: mt.into(), pos: 9, ..Photo::default() }),
            raw,
            birthday: bday.map(|v| Text { value: v.into(), ..Text::default() }),
            ..Contact::default()
        }
    }
}

proptest! {
    #![proptest_config(crate::formats::test_cases(64))]

    #[test]
    fn what_it_holds_survives_a_write_and_a_read(c in contact()) {
        let held = VCardCodec.holds(&Record::Contact(c));
        let text = VCardCodec.write(None, &[Change::Put(Box::new(held.clone()))], &WriteSettings::default());
        let parsed = VCardCodec.parse(&text);
        prop_assert!(parsed.errors.is_empty(), "{:?}\n{}", parsed.errors, text);
        prop_assert_eq!(parsed.records.len(), 1);
        prop_assert_eq!(&parsed.records[0].record, &held, "{}", text);
        prop_assert_eq!(VCardCodec.holds(&held), held);
    }

    #[test]
    fn every_version_keeps_what_it_holds(c in contact(), version in prop_oneof![Just("2.1"), Just("4.0")]) {
        let held = VCardCodec.holds(&Record::Contact(c));
        let settings = WriteSettings { vcard_version: version.into() };
        let text = VCardCodec.write(None, &[Change::Put(Box::new(held.clone()))], &settings);
        let parsed = VCardCodec.parse(&text);
        prop_assert!(parsed.errors.is_empty(), "{:?}\n{}", parsed.errors, text);
        prop_assert_eq!(parsed.records.len(), 1);
        prop_assert_eq!(&parsed.records[0].record, &held, "{}", text);
    }

    #[test]
    fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        check_any(&text);
    }

    #[test]
    fn mutated_fixtures_parse_without_panic(
        which in 0usize..4,
        op in 0u8..3,
        at in any::<proptest::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let base = [V21, V30, V40, SEVERAL][which];
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

/// Parsing never panics, parts stay apart and inside the text, and writing no change gives
/// the text back byte for byte.
fn check_any(text: &str) {
    let parsed = VCardCodec.parse(text);
    check_spans(text, &parsed);
    let out = VCardCodec.write(Some((text, &parsed)), &[], &WriteSettings::default());
    assert_eq!(out, text);
}

proptest! {
    #![proptest_config(crate::formats::test_cases(64))]

    /// `holds` is a write and a read; this checks it loses none of what a vCard carries.
    #[test]
    fn holds_keeps_every_value(mut c in contact()) {
        // Labels are only sure to come back in groups of their own (two values in one group
        // leave their labels raw), so this check is without groups.
        for t in c.emails.iter_mut().chain(c.phones.iter_mut()).chain(c.notes.iter_mut()) {
            t.group.clear();
        }
        c.raw.iter_mut().for_each(|r| r.group.clear());
        // Repeated values come back in the order of their positions.
        c.emails.sort_by_key(|t| t.pos);
        c.phones.sort_by_key(|t| t.pos);
        c.notes.sort_by_key(|t| t.pos);
        c.addresses.sort_by_key(|a| a.pos);
        c.raw.sort_by_key(|r| r.pos);
        let Record::Contact(h) = VCardCodec.holds(&Record::Contact(c.clone())) else {
            panic!("a contact held as something else");
        };
        let texts = |v: &[Text]| -> Vec<(String, Vec<String>, String, u32)> {
            v.iter().map(|t| (t.value.clone(), t.types.clone(), t.label.clone(), t.pref)).collect()
        };
        prop_assert_eq!(&h.uid, &c.uid);
        prop_assert_eq!(texts(&h.emails), texts(&c.emails));
        prop_assert_eq!(texts(&h.phones), texts(&c.phones));
        let notes = |v: &[Text]| v.iter().map(|t| t.value.clone()).collect::<Vec<_>>();
        prop_assert_eq!(notes(&h.notes), notes(&c.notes));
        prop_assert_eq!(notes(&h.categories), notes(&c.categories));
        let adr = |v: &[Address]| v.iter().map(|a| (a.street.clone(), a.locality.clone(), a.country.clone(), a.label.clone())).collect::<Vec<_>>();
        prop_assert_eq!(adr(&h.addresses), adr(&c.addresses));
        let raw = |v: &[RawProperty]| v.iter().map(|r| (r.name.clone(), r.value.clone(), r.params.clone())).collect::<Vec<_>>();
        prop_assert_eq!(raw(&h.raw), raw(&c.raw));
        prop_assert_eq!(h.photo.map(|p| (p.data, p.media_type)), c.photo.map(|p| (p.data, p.media_type)));
        // An empty name part reads back as no value at all.
        let part = |v: Vec<String>| if v == [""] { Vec::new() } else { v };
        prop_assert_eq!(
            h.name.map(|n| (n.family, n.given)),
            c.name.map(|n| (part(n.family), part(n.given)))
        );
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
        let text = VCardCodec.write(None, &puts, &WriteSettings::default());
        let parsed = VCardCodec.parse(&text);
        prop_assert_eq!(parsed.records.len(), list.len());
        let i = which.index(list.len());
        new.uid = list[i].uid.clone();
        let out = VCardCodec.write(Some((&text, &parsed)), &[put(new.clone())], &WriteSettings::default());
        let again = VCardCodec.parse(&out);
        prop_assert!(again.errors.is_empty());
        prop_assert_eq!(again.records.len(), list.len());
        for (j, (before, after)) in parsed.records.iter().zip(&again.records).enumerate() {
            if j == i {
                prop_assert_eq!(&after.record, &VCardCodec.holds(&Record::Contact(new.clone())));
            } else {
                prop_assert_eq!(&after.record, &before.record);
            }
        }
        let removed = VCardCodec.write(Some((&out, &again)), &[Change::Remove(new.uid.clone())], &WriteSettings::default());
        let left = VCardCodec.parse(&removed);
        prop_assert_eq!(left.records.len(), list.len() - 1);
        prop_assert!(left.records.iter().all(|r| r.uid() != Some(new.uid.as_str())));
    }
}

proptest! {
    #![proptest_config(crate::formats::test_cases(256))]

    /// Texts made of the pieces vCards are made of reach far more of the reader than bytes.
    #[test]
    fn texts_of_vcard_pieces_parse_without_panic(pieces in proptest::collection::vec(
        proptest::sample::select(vec![
            "BEGIN:VCARD\r\n", "END:VCARD\r\n", "VERSION:2.1\r\n", "VERSION:4.0\n", "\r\n", "\n",
            " ", "\t", ":", ";", ",", "=", "\"", "\\", "item1.", "X-ABLabel:", "EMAIL", "TEL",
            ";ENCODING=QUOTED-PRINTABLE", ";CHARSET=ISO-8859-1", ";CHARSET=KOI8-R", "=C3=A4",
            "=\r\n", "PHOTO;ENCODING=b:", "PHOTO:data:image/png;base64,", "AQID", "N:", "ADR:",
            "BDAY:", "--0412", "19850412T103000Z", "UID:", "ä", "\u{feff}", "TYPE=", "PREF=",
        ]),
        0..60,
    )) {
        check_any(&pieces.concat());
    }
}
