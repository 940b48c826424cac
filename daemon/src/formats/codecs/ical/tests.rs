#![allow(clippy::unwrap_used)]

use calcard::icalendar::{ICalendarComponentType, ICalendarProperty, ICalendarValue};
use proptest::prelude::*;

use super::*;
use crate::formats::native::{
    Alarm, Component, ComponentKind, DateTime, Param, Person, RawProperty, Text,
};

const GOOGLE: &str = include_str!("../../../../../tests/data/records/ical/google.ics");
const APPLE: &str = include_str!("../../../../../tests/data/records/ical/apple.ics");
const THUNDERBIRD: &str = include_str!("../../../../../tests/data/records/ical/thunderbird.ics");
const BROKEN: &str = include_str!("../../../../../tests/data/records/ical/broken.ics");

fn parse(text: &str) -> Parsed {
    IcalCodec.parse(text)
}

/// The items of `text`, checking that it reads without errors.
fn items(text: &str) -> Vec<CalendarItem> {
    let parsed = parse(text);
    assert_eq!(parsed.errors, vec![], "errors in\n{text}");
    parsed
        .records
        .into_iter()
        .map(|r| match r.record {
            Record::Calendar(item) => item,
            Record::Contact(_) => panic!("a contact from iCalendar"),
        })
        .collect()
}

fn param(name: &str, value: &str) -> Param {
    Param {
        name: name.to_string(),
        values: vec![value.to_string()],
    }
}

fn raw_names(c: &Component) -> Vec<(&str, &str, u32)> {
    c.raw
        .iter()
        .map(|r| (r.name.as_str(), r.value.as_str(), r.pos))
        .collect()
}

fn date(d: &Option<DateTime>) -> (&str, &str) {
    let d = d.as_ref().unwrap();
    (d.value.as_str(), d.tzid.as_str())
}

fn text_of(t: &Option<Text>) -> &str {
    t.as_ref().map(|t| t.value.as_str()).unwrap()
}

#[test]
fn google_export_groups_a_recurring_event_with_its_override() {
    let parsed = parse(GOOGLE);
    let all = items(GOOGLE);
    let uids: Vec<&str> = all.iter().map(|i| i.uid.as_str()).collect();
    assert_eq!(
        uids,
        [
            "4f1c2a7e9b@google.com",
            "7d0e55c1a2@google.com",
            "b93e0f11c8@google.com"
        ]
    );

    let standup = &all[0];
    let record = &parsed.records[0];
    assert_eq!(record.line, 26, "the master's BEGIN:VEVENT");
    assert_eq!(record.spans.len(), 2, "master and override lie apart");
    assert!(
        GOOGLE[record.spans[0].clone()]
            .starts_with("BEGIN:VEVENT\r\nDTSTART;TZID=Europe/Berlin:20261201T100000")
    );
    assert!(GOOGLE[record.spans[1].clone()].contains("RECURRENCE-ID"));
    assert!(GOOGLE[record.spans[1].clone()].ends_with("END:VEVENT\r\n"));

    let master = &standup.components[0];
    assert_eq!(master.pos, 0);
    assert_eq!(master.kind(), ComponentKind::Event);
    assert_eq!(master.recurrence_id, None);
    assert_eq!(date(&master.start), ("20261201T100000", "Europe/Berlin"));
    assert_eq!(date(&master.end), ("20261201T103000", "Europe/Berlin"));
    assert_eq!(master.rrules.len(), 1);
    assert_eq!(master.rrules[0].value, "FREQ=WEEKLY;WKST=MO;BYDAY=TU");
    let exdates: Vec<(&str, &str, u32)> = master
        .exdates
        .iter()
        .map(|d| (d.value.as_str(), d.tzid.as_str(), d.pos))
        .collect();
    assert_eq!(
        exdates,
        [
            ("20261222T100000", "Europe/Berlin", 3),
            ("20261229T100000", "Europe/Berlin", 3)
        ]
    );
    assert_eq!(master.sequence, 2);
    assert_eq!(text_of(&master.status), "CONFIRMED");
    assert_eq!(text_of(&master.summary), "Team standup");
    assert_eq!(
        raw_names(master),
        [
            ("DTSTAMP", "20261120T083000Z", 4),
            ("CREATED", "20261101T090000Z", 6),
            ("LAST-MODIFIED", "20261110T120000Z", 7),
            ("TRANSP", "OPAQUE", 11),
        ]
    );

    let moved = &standup.components[1];
    assert_eq!(moved.pos, 1);
    assert_eq!(
        date(&moved.recurrence_id),
        ("20261208T100000", "Europe/Berlin")
    );
    assert_eq!(date(&moved.start), ("20261209T143000", "Europe/Berlin"));
    assert_eq!(moved.sequence, 3);
    assert_eq!(text_of(&moved.summary), "Team standup (moved to Wednesday)");

    assert_eq!(standup.timezones.len(), 1);
    let tz = &standup.timezones[0];
    assert_eq!(tz.tzid, "Europe/Berlin");
    assert!(
        tz.text
            .starts_with("BEGIN:VTIMEZONE\r\nTZID:Europe/Berlin\r\n")
    );
    assert!(tz.text.ends_with("END:STANDARD\r\nEND:VTIMEZONE\r\n"));
    assert!(GOOGLE.contains(&tz.text));
}

#[test]
fn google_export_all_day_event_and_attendees() {
    let all = items(GOOGLE);
    let christmas = &all[1].components[0];
    let start = christmas.start.as_ref().unwrap();
    assert_eq!(
        (start.value.as_str(), start.tzid.as_str()),
        ("20261224", "")
    );
    assert_eq!(start.params, [param("VALUE", "DATE")]);
    assert_eq!(date(&christmas.end), ("20261227", ""));
    assert!(
        all[1].timezones.is_empty(),
        "an all-day event names no zone"
    );
    // SEQUENCE:0 cannot come back from the field (0 is "not said"), so it stays raw.
    assert_eq!(christmas.sequence, 0);
    assert!(raw_names(christmas).contains(&("SEQUENCE", "0", 6)));

    let budget = &all[2].components[0];
    assert_eq!(date(&budget.start), ("20261203T130000Z", ""));
    let organizer = budget.organizer.as_ref().unwrap();
    assert_eq!(organizer.address, "mailto:ana.lima@example.com");
    assert_eq!(organizer.name, "Ana Lima");
    let people: Vec<(&str, &str, &str, &str, bool)> = budget
        .attendees
        .iter()
        .map(|p| {
            (
                p.address.as_str(),
                p.name.as_str(),
                p.role.as_str(),
                p.status.as_str(),
                p.rsvp,
            )
        })
        .collect();
    assert_eq!(
        people,
        [
            (
                "mailto:ana.lima@example.com",
                "Ana Lima",
                "REQ-PARTICIPANT",
                "ACCEPTED",
                false
            ),
            (
                "mailto:ben.okafor@example.com",
                "Okafor, Ben",
                "OPT-PARTICIPANT",
                "NEEDS-ACTION",
                true
            ),
        ]
    );
    assert_eq!(
        budget.attendees[1].params,
        [param("CUTYPE", "INDIVIDUAL"), param("X-NUM-GUESTS", "0")]
    );
    assert_eq!(
        text_of(&budget.description),
        "Agenda:\n1. Budget; Q1, Q2 and Q3\n2. Hiring – two roles in München\n\n\
         Join with Google Meet: https://meet.google.com/abc-defg-hij"
    );
    assert_eq!(text_of(&budget.location), "Room 4.12, Building B");
    let conference = budget
        .raw
        .iter()
        .find(|r| r.name == "X-GOOGLE-CONFERENCE")
        .unwrap();
    assert_eq!(conference.value, "https://meet.google.com/abc-defg-hij");
    assert_eq!(conference.pos, 7);
}

#[test]
fn apple_todo_with_due_and_alarm() {
    let parsed = parse(APPLE);
    let all = items(APPLE);
    assert_eq!(all.len(), 2);
    assert!(APPLE[parsed.records[0].spans[0].clone()].starts_with("BEGIN:VTODO\r\n"));

    let todo = &all[0];
    assert_eq!(todo.uid, "8C1F4E2B-5A7D-4D3E-9F60-2B1A0C9D8E7F");
    let c = &todo.components[0];
    assert_eq!(c.kind(), ComponentKind::Todo);
    assert_eq!(date(&c.due), ("20261205T170000", "Europe/Berlin"));
    assert_eq!(text_of(&c.status), "NEEDS-ACTION");
    assert_eq!(
        raw_names(c),
        [
            ("CREATED", "20261118T071203Z", 0),
            ("DTSTAMP", "20261118T071311Z", 1),
            ("LAST-MODIFIED", "20261118T071311Z", 3),
            ("PRIORITY", "1", 4),
            ("X-APPLE-SORT-ORDER", "785142731", 8),
        ]
    );
    assert_eq!(c.alarms.len(), 1);
    let alarm = &c.alarms[0];
    assert_eq!(alarm.pos, 9);
    assert_eq!(alarm.action, "DISPLAY");
    assert_eq!(alarm.trigger, "-PT1H");
    assert_eq!(alarm.trigger_params, [param("RELATED", "END")]);
    assert_eq!(alarm.description, "Reminder");
    let alarm_raw: Vec<(&str, u32)> = alarm.raw.iter().map(|r| (r.name.as_str(), r.pos)).collect();
    assert_eq!(alarm_raw, [("UID", 3), ("X-WR-ALARMUID", 4)]);
    assert_eq!(todo.timezones.len(), 1);
    assert_eq!(todo.timezones[0].tzid, "Europe/Berlin");

    let market = &all[1].components[0];
    assert_eq!(date(&market.start), ("20261206T100000", ""), "floating");
    assert_eq!(text_of(&market.summary), "Market, then brunch; bring bags");
    assert_eq!(text_of(&market.location), "Farmers' market");
    assert!(all[1].timezones.is_empty());
}

#[test]
fn thunderbird_lf_text_keeps_journal_out_of_the_records() {
    let parsed = parse(THUNDERBIRD);
    let all = items(THUNDERBIRD);
    let uids: Vec<&str> = all.iter().map(|i| i.uid.as_str()).collect();
    assert_eq!(
        uids,
        [
            "5a9c3b2e-7f14-4d8a-b6e0-1c2d3e4f5a6b",
            "c0ffee00-1111-4222-8333-444455556666"
        ]
    );
    let birthday = &all[0].components[0];
    let categories: Vec<(&str, u32)> = birthday
        .categories
        .iter()
        .map(|t| (t.value.as_str(), t.pos))
        .collect();
    assert_eq!(categories, [("Birthday", 6), ("Family", 6)]);
    assert_eq!(birthday.alarms[0].trigger, "-PT15H");
    assert_eq!(
        birthday.alarms[0].trigger_params,
        [param("VALUE", "DURATION")]
    );
    assert!(raw_names(birthday).contains(&("X-MOZ-GENERATION", "3", 10)));
    let todo = &all[1].components[0];
    assert_eq!(date(&todo.due), ("20270115", ""));
    // The journal is no record, and neither part of one.
    for r in &parsed.records {
        for s in &r.spans {
            assert!(!THUNDERBIRD[s.clone()].contains("VJOURNAL"));
        }
    }
}

#[test]
fn unterminated_event_is_an_error_and_the_others_read() {
    let parsed = parse(BROKEN);
    let uids: Vec<&str> = parsed.records.iter().filter_map(|r| r.uid()).collect();
    assert_eq!(uids, ["first@example.com", "third@example.com"]);
    assert_eq!(parsed.errors.len(), 1);
    let error = &parsed.errors[0];
    assert_eq!(error.line, 10);
    assert_eq!(
        error.message,
        "VEVENT at line 10 has no END:VEVENT; add it or remove the event"
    );
    assert!(BROKEN[error.span.clone()].starts_with("BEGIN:VEVENT\r\nUID:broken@example.com"));
    assert!(BROKEN[error.span.clone()].ends_with("SUMMARY:Never closed\r\n"));
}

#[test]
fn other_broken_shapes_name_their_line() {
    let cases = [
        (
            "BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:a\nEND:VTODO\nEND:VCALENDAR\n",
            "VEVENT at line 2 ends with END:VTODO at line 4; make it END:VEVENT",
        ),
        (
            "BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:a\nBEGIN:VALARM\nEND:VEVENT\nEND:VCALENDAR\n",
            "VALARM at line 4 has no END:VALARM; add it or remove the alarm",
        ),
        (
            "BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:a\nnonsense\nEND:VEVENT\nEND:VCALENDAR\n",
            "line 4 in the VEVENT at line 2 is not a property (no name and ':'); fix or remove \
             the line",
        ),
        (
            "BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:a\nEND:VEVENT\n",
            "VCALENDAR at line 1 has no END:VCALENDAR; add it after its last component",
        ),
        (
            "BEGIN:VCALENDAR\nEND:VEVENT\nEND:VCALENDAR\n",
            "END:VEVENT at line 2 closes nothing; remove the line",
        ),
    ];
    for (text, message) in cases {
        let parsed = parse(text);
        let messages: Vec<&str> = parsed.errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, [message], "in {text:?}");
    }
}

/// The records of `text` by UID.
fn by_uid(text: &str) -> HashMap<String, CalendarItem> {
    items(text)
        .into_iter()
        .map(|i| (i.uid.clone(), i))
        .collect()
}

#[test]
fn write_keeps_untouched_items_byte_for_byte() {
    let parsed = parse(GOOGLE);
    let before = by_uid(GOOGLE);
    let mut budget = before["b93e0f11c8@google.com"].clone();
    budget.components[0].summary.as_mut().unwrap().value = "Budget review, take two".into();
    let out = IcalCodec.write(
        Some((GOOGLE, &parsed)),
        &[
            Change::Put(Box::new(Record::Calendar(budget.clone()))),
            Change::Remove("7d0e55c1a2@google.com".into()),
        ],
        &WriteSettings::default(),
    );
    let christmas = parsed.records[1].spans[0].clone();
    let budget_span = parsed.records[2].spans[0].clone();
    let kept_head = format!(
        "{}{}",
        &GOOGLE[..christmas.start],
        &GOOGLE[christmas.end..budget_span.start]
    );
    assert!(out.starts_with(&kept_head), "{out}");
    assert!(out.ends_with(&GOOGLE[budget_span.end..]));
    assert!(!out.contains("Christmas"));

    let after = by_uid(&out);
    assert_eq!(after.len(), 2);
    assert_eq!(
        after["4f1c2a7e9b@google.com"],
        before["4f1c2a7e9b@google.com"]
    );
    let written = &after["b93e0f11c8@google.com"];
    assert_eq!(*written, budget, "a parsed item comes back as it was put");
}

#[test]
fn write_keeps_broken_parts_and_journals() {
    for text in [BROKEN, THUNDERBIRD] {
        let parsed = parse(text);
        let item = items_of(&parsed)[0].clone();
        let uid = item.uid.clone();
        let out = IcalCodec.write(
            Some((text, &parsed)),
            &[Change::Remove(uid)],
            &WriteSettings::default(),
        );
        let first = parsed.records[0].spans[0].clone();
        assert_eq!(
            out,
            format!("{}{}", &text[..first.start], &text[first.end..])
        );
    }
}

fn items_of(parsed: &Parsed) -> Vec<CalendarItem> {
    parsed
        .records
        .iter()
        .filter_map(|r| match &r.record {
            Record::Calendar(i) => Some(i.clone()),
            Record::Contact(_) => None,
        })
        .collect()
}

#[test]
fn put_items_bring_a_missing_time_zone_once() {
    let berlin = items(GOOGLE)[0].timezones[0].clone();
    let parsed = parse(THUNDERBIRD);
    let mut birthday = items_of(&parsed)[0].clone();
    let start = birthday.components[0].start.as_mut().unwrap();
    start.value = "20260312T180000".into();
    start.tzid = "Europe/Berlin".into();
    start.params.clear();
    birthday.components[0].end = None;
    birthday.timezones = vec![berlin.clone()];
    let meeting = CalendarItem {
        uid: "new-meeting@example.com".into(),
        components: vec![Component {
            start: Some(DateTime {
                value: "20261207T090000".into(),
                tzid: "Europe/Berlin".into(),
                ..DateTime::default()
            }),
            summary: Some(Text {
                value: "Planning".into(),
                ..Text::default()
            }),
            ..Component::default()
        }],
        timezones: vec![berlin.clone()],
    };
    let out = IcalCodec.write(
        Some((THUNDERBIRD, &parsed)),
        &[
            Change::Put(Box::new(Record::Calendar(birthday.clone()))),
            Change::Put(Box::new(Record::Calendar(meeting.clone()))),
        ],
        &WriteSettings::default(),
    );
    assert_eq!(out.matches("BEGIN:VTIMEZONE").count(), 1, "{out}");
    let tz_at = out.find(&berlin.text).unwrap();
    assert!(tz_at < out.find("BEGIN:VEVENT").unwrap(), "{out}");
    assert!(out.starts_with(
        "BEGIN:VCALENDAR\nPRODID:-//Mozilla.org/NONSGML Mozilla Calendar V1.1//EN\nVERSION:2.0\n"
    ));
    assert!(
        out.ends_with("END:VEVENT\r\nEND:VCALENDAR\n"),
        "new items before the end"
    );
    let after = by_uid(&out);
    assert_eq!(after.len(), 3);
    assert_eq!(
        after["new-meeting@example.com"],
        IcalCodec.holds(&Record::Calendar(meeting)).calendar()
    );
    assert_eq!(after[&birthday.uid].timezones, [berlin]);
    assert!(out.contains("BEGIN:VJOURNAL\nUID:journal-1\n"));
}

#[test]
fn new_text_has_a_calendar_around_the_items() {
    let item = items(APPLE)[0].clone();
    let out = IcalCodec.write(
        None,
        &[Change::Put(Box::new(Record::Calendar(item.clone())))],
        &WriteSettings::default(),
    );
    assert!(out.starts_with(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Tandem//Tandem//EN\r\nBEGIN:VTIMEZONE\r\n"
    ));
    assert!(out.ends_with("END:VTODO\r\nEND:VCALENDAR\r\n"));
    assert!(out.lines().all(|l| l.len() <= 76), "folded at 75 octets");
    assert_eq!(items(&out), [item]);
    // calcard, an independent reader, finds the same to-do in it.
    let Ok(cal) = calcard::icalendar::ICalendar::parse(&out) else {
        panic!("calcard cannot read {out}");
    };
    assert!(
        cal.components
            .iter()
            .any(|c| c.component_type == calcard::icalendar::ICalendarComponentType::VTodo)
    );
}

trait CalendarOf {
    fn calendar(self) -> CalendarItem;
}

impl CalendarOf for Record {
    fn calendar(self) -> CalendarItem {
        match self {
            Record::Calendar(item) => item,
            Record::Contact(_) => panic!("not a calendar item"),
        }
    }
}

#[test]
fn contacts_pass_through() {
    let contact = Record::Contact(crate::formats::native::Contact {
        uid: "c".into(),
        ..Default::default()
    });
    assert_eq!(IcalCodec.holds(&contact), contact);
    let out = IcalCodec.write(
        Some((APPLE, &parse(APPLE))),
        &[Change::Put(Box::new(contact))],
        &WriteSettings::default(),
    );
    assert_eq!(out, APPLE);
}

// ---- properties ----

fn zone_text(tzid: &str) -> String {
    format!(
        "BEGIN:VTIMEZONE\r\nTZID:{tzid}\r\nBEGIN:STANDARD\r\nDTSTART:19701025T030000\r\n\
         TZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nEND:STANDARD\r\nEND:VTIMEZONE\r\n"
    )
}

const ZONES: [&str; 2] = ["Europe/Berlin", "America/New_York"];

fn any_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ,;:\\\\\"\n\täöü€😀'=.-]{0,40}"
}

fn any_params() -> impl Strategy<Value = Vec<Param>> {
    prop::collection::vec(
        (
            "X-[A-Z]{1,6}|LANGUAGE|ALTREP",
            prop::collection::vec("[a-zA-Z0-9 ,;:\"é-]{0,8}", 0..3),
        )
            .prop_map(|(name, values)| Param { name, values }),
        0..2,
    )
}

fn any_pos() -> impl Strategy<Value = u32> {
    0u32..24
}

/// A date: all day, floating, UTC, or local to one of [`ZONES`].
fn any_date() -> impl Strategy<Value = DateTime> {
    (
        0..4usize,
        2020u32..2030,
        1u32..13,
        1u32..29,
        0u32..24,
        any_pos(),
    )
        .prop_map(|(kind, y, m, d, h, pos)| {
            let day = format!("{y:04}{m:02}{d:02}");
            let (value, tzid, params) = match kind {
                0 => (day, String::new(), vec![param("VALUE", "DATE")]),
                1 => (format!("{day}T{h:02}0000"), String::new(), vec![]),
                2 => (format!("{day}T{h:02}0000Z"), String::new(), vec![]),
                _ => (
                    format!("{day}T{h:02}3000"),
                    ZONES[(h % 2) as usize].to_string(),
                    vec![],
                ),
            };
            DateTime {
                value,
                tzid,
                params,
                pos,
                stamp: None,
            }
        })
}

fn any_text_field() -> impl Strategy<Value = Text> {
    (any_text(), any_params(), any_pos()).prop_map(|(value, params, pos)| Text {
        value,
        params,
        pos,
        ..Text::default()
    })
}

fn any_raw() -> impl Strategy<Value = RawProperty> {
    // Besides ordinary extras, names the reader gives a meaning to (a second SUMMARY, a raw
    // UID, BEGIN and END of nested components), which the writer must still get back right.
    let name = prop_oneof![
        4 => "X-[A-Z-]{1,10}|CLASS|URL|DTSTAMP|x-lower",
        1 => prop::sample::select(vec![
            "BEGIN", "END", "UID", "SEQUENCE", "SUMMARY", "DTSTART", "RDATE", "ATTENDEE",
            "ACTION", "TRIGGER", "DESCRIPTION", "CATEGORIES", "BAD NAME", "",
        ])
        .prop_map(str::to_string),
    ];
    let value = prop_oneof![
        4 => "[a-zA-Z0-9 ,;:\\\\é/-]{0,30}",
        1 => prop::sample::select(vec!["VALARM", "X-PLACE", "VEVENT", "VCALENDAR", "5", "0", ""])
            .prop_map(str::to_string),
    ];
    (name, any_params(), value, any_pos()).prop_map(|(name, params, value, pos)| RawProperty {
        name,
        params,
        value,
        pos,
        ..RawProperty::default()
    })
}

fn any_person() -> impl Strategy<Value = Person> {
    (
        "mailto:[a-z]{1,8}@example\\.com",
        "[a-zA-Z ,é]{0,12}",
        prop::sample::select(vec!["", "CHAIR", "REQ-PARTICIPANT"]),
        prop::sample::select(vec!["", "ACCEPTED", "NEEDS-ACTION"]),
        any::<bool>(),
        any_params(),
        any_pos(),
    )
        .prop_map(|(address, name, role, status, rsvp, params, pos)| Person {
            address,
            name,
            role: role.to_string(),
            status: status.to_string(),
            rsvp,
            params,
            pos,
            stamp: None,
        })
}

fn any_alarm() -> impl Strategy<Value = Alarm> {
    (
        prop::sample::select(vec!["", "DISPLAY", "AUDIO"]),
        prop::sample::select(vec!["-PT15M", "-P1D", "20261201T080000Z"]),
        prop::collection::vec(
            prop::sample::select(vec![param("RELATED", "END"), param("VALUE", "DATE-TIME")]),
            0..2,
        ),
        any_text(),
        prop::collection::vec(any_raw(), 0..2),
        any_pos(),
    )
        .prop_map(
            |(action, trigger, trigger_params, description, raw, pos)| Alarm {
                action: action.to_string(),
                trigger: trigger.to_string(),
                trigger_params,
                description,
                raw,
                pos,
                stamp: None,
            },
        )
}

fn any_component() -> impl Strategy<Value = Component> {
    (
        (
            any::<bool>(),
            0u32..5,
            prop::option::of(any_text_field()),
            prop::option::of(any_text_field()),
            prop::option::of(any_text_field()),
            prop::option::of(any_date()),
            prop::option::of(any_date()),
            prop::option::of(any_date()),
        ),
        (
            prop::collection::vec(
                prop::sample::select(vec!["FREQ=WEEKLY;BYDAY=MO,WE", "FREQ=DAILY;COUNT=5"]),
                0..2,
            ),
            prop::collection::vec(any_date(), 0..3),
            prop::collection::vec(any_date(), 0..3),
            prop::collection::vec(any_alarm(), 0..3),
            prop::option::of(any_person()),
            prop::collection::vec(any_person(), 0..3),
            prop::collection::vec(any_text_field(), 0..3),
            prop::collection::vec(any_raw(), 0..4),
            any_pos(),
        ),
    )
        .prop_map(
            |(
                (todo, sequence, summary, description, location, start, end, due),
                (rrules, rdates, exdates, alarms, organizer, attendees, categories, raw, pos),
            )| Component {
                kind: if todo {
                    ComponentKind::Todo
                } else {
                    ComponentKind::Event
                } as i32,
                sequence,
                summary,
                description,
                location,
                start,
                end,
                due: if todo { due } else { None },
                rrules: rrules
                    .into_iter()
                    .map(|v| Text {
                        value: v.to_string(),
                        pos: 5,
                        ..Text::default()
                    })
                    .collect(),
                rdates,
                exdates,
                alarms,
                organizer,
                attendees,
                categories,
                raw,
                pos,
                ..Component::default()
            },
        )
}

/// A master and up to two overrides with distinct recurrence ids, and the zones they need.
fn any_item() -> impl Strategy<Value = CalendarItem> {
    (
        "[a-zA-Z0-9@._;,\\\\-]{1,24}",
        any_component(),
        prop::collection::vec((any_component(), any_date()), 0..3),
    )
        .prop_map(|(uid, master, overrides)| {
            let mut components = vec![master];
            let mut seen = Vec::new();
            for (mut c, rid) in overrides {
                if seen.contains(&rid.value) {
                    continue;
                }
                seen.push(rid.value.clone());
                c.recurrence_id = Some(rid);
                components.push(c);
            }
            let timezones = ZONES
                .iter()
                .map(|z| Timezone {
                    tzid: z.to_string(),
                    text: zone_text(z),
                    stamp: None,
                    pos: 0,
                })
                .collect();
            CalendarItem {
                uid,
                components,
                timezones,
            }
        })
}

fn write_one(item: &CalendarItem) -> String {
    IcalCodec.write(
        None,
        &[Change::Put(Box::new(Record::Calendar(item.clone())))],
        &WriteSettings::default(),
    )
}

/// Spans inside the text, on character boundaries, in order and apart.
fn check_spans(text: &str, parsed: &Parsed) {
    let mut spans: Vec<Range<usize>> = parsed
        .records
        .iter()
        .flat_map(|r| r.spans.iter().cloned())
        .chain(parsed.errors.iter().map(|e| e.span.clone()))
        .collect();
    spans.sort_by_key(|s| s.start);
    let mut end = 0;
    for s in spans {
        assert!(s.start >= end, "overlap at {s:?}");
        assert!(
            s.start <= s.end && text.get(s.clone()).is_some(),
            "{s:?} out of the text"
        );
        end = s.end;
    }
}

/// A fixture changed the way files get damaged.
fn mutated() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![GOOGLE, APPLE, THUNDERBIRD, BROKEN]),
        0..3usize,
        any::<prop::sample::Index>(),
        any::<u8>(),
    )
        .prop_map(|(text, how, at, byte)| {
            let mut bytes = text.as_bytes().to_vec();
            let i = at.index(bytes.len());
            match how {
                0 => bytes.truncate(i),
                1 => bytes[i] ^= byte | 1,
                _ => {
                    let start = bytes[..i]
                        .iter()
                        .rposition(|b| *b == b'\n')
                        .map_or(0, |n| n + 1);
                    let end = bytes[i..]
                        .iter()
                        .position(|b| *b == b'\n')
                        .map_or(bytes.len(), |n| i + n + 1);
                    let line = bytes[start..end].to_vec();
                    bytes.splice(start..start, line);
                }
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
}

proptest! {
    #![proptest_config(crate::formats::test_cases(64))]

    #[test]
    fn held_items_come_back_whole(item in any_item()) {
        let held = IcalCodec.holds(&Record::Calendar(item.clone())).calendar();
        let text = write_one(&held);
        prop_assert_eq!(items(&text), vec![held.clone()], "{}", text);
        prop_assert_eq!(IcalCodec.holds(&Record::Calendar(held.clone())).calendar(), held.clone());
        // What every item has a place for survives as it was put.
        prop_assert_eq!(&held.uid, &item.uid);
        prop_assert_eq!(held.components.len(), item.components.len());
        // Unless a raw property stands in for a field: then it may become that field.
        let plain_raw = |r: &RawProperty| r.name.starts_with("X-") || ["CLASS", "URL", "DTSTAMP"].contains(&r.name.as_str());
        let ordinary = item.components.iter().all(|c| {
            c.raw.iter().all(plain_raw) && c.alarms.iter().all(|a| a.raw.iter().all(plain_raw))
        });
        for c in item.components.iter().filter(|_| ordinary) {
            let back = held
                .components
                .iter()
                .find(|h| h.recurrence_id.as_ref().map(|d| &d.value) == c.recurrence_id.as_ref().map(|d| &d.value))
                .unwrap();
            prop_assert_eq!(back.summary.as_ref().map(|t| &t.value), c.summary.as_ref().map(|t| &t.value));
            prop_assert_eq!(back.description.as_ref().map(|t| &t.value), c.description.as_ref().map(|t| &t.value));
            prop_assert_eq!(back.start.as_ref().map(|d| (&d.value, &d.tzid)), c.start.as_ref().map(|d| (&d.value, &d.tzid)));
            prop_assert_eq!(back.exdates.len(), c.exdates.len());
            prop_assert_eq!(back.attendees.len(), c.attendees.len());
            prop_assert_eq!(back.alarms.len(), c.alarms.len());
            prop_assert_eq!(back.sequence, c.sequence);
        }
        if ordinary {
            // calcard, an independent reader, finds the same components and summaries.
            let cal = calcard::icalendar::ICalendar::parse(&text);
            prop_assert!(cal.is_ok(), "calcard cannot read {}", text);
            let cal = cal.unwrap();
            let summaries: Vec<Option<String>> = cal
                .components
                .iter()
                .filter(|c| matches!(c.component_type, ICalendarComponentType::VEvent | ICalendarComponentType::VTodo))
                .map(|c| {
                    c.entries.iter().find(|e| e.name == ICalendarProperty::Summary).map(|e| {
                        e.values.iter().map(|v| match v {
                            ICalendarValue::Text(t) => t.clone(),
                            other => format!("{other:?}"),
                        }).collect::<String>()
                    })
                })
                .collect();
            let mut ours: Vec<&Component> = held.components.iter().collect();
            ours.sort_by_key(|c| c.pos);
            let ours: Vec<Option<String>> = ours.iter().map(|c| c.summary.as_ref().map(|t| t.value.clone())).collect();
            prop_assert_eq!(summaries, ours);
        }
        let used: Vec<&str> = held.components.iter().flat_map(read::tzids_of).collect();
        for tz in &held.timezones {
            prop_assert!(used.contains(&tz.tzid.as_str()));
        }
    }

    #[test]
    fn arbitrary_bytes_never_break_the_reader(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let text = String::from_utf8_lossy(&bytes);
        check_spans(&text, &parse(&text));
    }

    #[test]
    fn shuffled_calendar_lines_never_break_the_reader(lines in prop::collection::vec(
        prop::sample::select(vec![
            "BEGIN:VCALENDAR", "END:VCALENDAR", "BEGIN:VEVENT", "END:VEVENT", "BEGIN:VTODO",
            "END:VTODO", "BEGIN:VALARM", "END:VALARM", "BEGIN:VTIMEZONE", "END:VTIMEZONE",
            "BEGIN:X-THING", "END:X-THING", "UID:a", "UID:b", "SUMMARY:x\\, y", " folded",
            "DTSTART;TZID=\"Europe/Berlin\":20261201T100000", "TZID:Europe/Berlin",
            "RECURRENCE-ID:20261201", "no colon", "", "X-A;P=\"open:1",
        ]),
        0..40,
    ), crlf in any::<bool>()) {
        let text = lines.join(if crlf { "\r\n" } else { "\n" });
        let parsed = parse(&text);
        check_spans(&text, &parsed);
        for r in &parsed.records {
            let Record::Calendar(item) = &r.record else { continue };
            prop_assert_eq!(&IcalCodec.holds(&r.record), &r.record, "{}", text);
            prop_assert_eq!(item.components.len(), r.spans.len());
        }
    }

    #[test]
    fn damaged_fixtures_read_and_take_new_items(text in mutated()) {
        let parsed = parse(&text);
        check_spans(&text, &parsed);
        let item = CalendarItem {
            uid: "added@example.com".into(),
            components: vec![Component {
                summary: Some(Text { value: "Added".into(), ..Text::default() }),
                ..Component::default()
            }],
            timezones: vec![],
        };
        let out = IcalCodec.write(
            Some((&text, &parsed)),
            &[Change::Put(Box::new(Record::Calendar(item.clone())))],
            &WriteSettings::default(),
        );
        let again = parse(&out);
        let added: Vec<&NativeRecord> =
            again.records.iter().filter(|r| r.uid() == Some("added@example.com")).collect();
        prop_assert_eq!(added.len(), 1, "{}", out);
        prop_assert_eq!(&added[0].record, &IcalCodec.holds(&Record::Calendar(item)));
        // Every record that was read keeps its bytes.
        for r in &parsed.records {
            for s in &r.spans {
                prop_assert!(out.contains(&text[s.clone()]));
            }
        }
    }
}

#[test]
fn fixture_items_are_held_as_read() {
    for text in [GOOGLE, APPLE, THUNDERBIRD, BROKEN] {
        for item in items_of(&parse(text)) {
            let record = Record::Calendar(item);
            assert_eq!(IcalCodec.holds(&record), record);
        }
    }
}

#[test]
fn a_time_zone_last_in_the_text_is_held_as_read() {
    let text = "BEGIN:VEVENT\nUID:z\nDTSTART;TZID=Z:20261201T100000\nEND:VEVENT\n\
                BEGIN:VTIMEZONE\nTZID:Z\nEND:VTIMEZONE";
    let item = items(text).remove(0);
    assert_eq!(
        item.timezones[0].text,
        "BEGIN:VTIMEZONE\nTZID:Z\nEND:VTIMEZONE\r\n"
    );
    let record = Record::Calendar(item);
    assert_eq!(IcalCodec.holds(&record), record);
}

#[test]
fn boundaries_are_found_in_any_case_and_folded() {
    let text =
        "begin:vcalendar\nBEGIN:VEV\n ENT\nuid:low\nsummary:Quiet\nEnd:VEvent\nend:vcalendar\n";
    let parsed = parse(text);
    assert_eq!(parsed.errors, vec![]);
    assert_eq!(parsed.records.len(), 1);
    assert_eq!(parsed.records[0].spans, vec![Range { start: 16, end: 64 }]);
    assert_eq!(parsed.records[0].line, 2);
    let item = items(text).remove(0);
    assert_eq!(item.uid, "low");
    assert_eq!(text_of(&item.components[0].summary), "Quiet");
}

fn raw(name: &str, value: &str, pos: u32) -> RawProperty {
    RawProperty {
        name: name.into(),
        value: value.into(),
        pos,
        ..RawProperty::default()
    }
}

/// Found by the round-trip proptest: nested components spelled as raw BEGIN/END lines.
#[test]
fn raw_nested_components_stay_whole() {
    let held = |c: Component| {
        let item = CalendarItem {
            uid: "n@example.com".into(),
            components: vec![c],
            timezones: vec![],
        };
        let held = IcalCodec.holds(&Record::Calendar(item)).calendar();
        assert_eq!(items(&write_one(&held)), std::slice::from_ref(&held));
        held.components[0].clone()
    };
    // An open BEGIN inside an alarm is closed inside the alarm, not after it.
    let c = held(Component {
        alarms: vec![Alarm {
            trigger: "-PT15M".into(),
            raw: vec![raw("BEGIN", "", 0)],
            ..Alarm::default()
        }],
        ..Component::default()
    });
    assert_eq!(c.alarms.len(), 1);
    assert_eq!(c.alarms[0].trigger, "-PT15M");
    // The UID never lands inside a nested component, where it would be read as raw.
    let c = held(Component {
        raw: vec![
            raw("BEGIN", "X-PLACE", 0),
            raw("X-NAME", "Hall", 1),
            raw("END", "X-PLACE", 3),
        ],
        ..Component::default()
    });
    let names: Vec<(&str, &str, u32)> = raw_names(&c);
    assert_eq!(
        names,
        [
            ("BEGIN", "X-PLACE", 0),
            ("X-NAME", "Hall", 1),
            ("END", "X-PLACE", 2)
        ]
    );
}

#[test]
fn a_put_item_lying_apart_is_written_whole_at_its_first_place() {
    let parsed = parse(GOOGLE);
    let mut standup = items_of(&parsed)[0].clone();
    standup.components[1].summary.as_mut().unwrap().value = "Standup, Wednesday".into();
    let out = IcalCodec.write(
        Some((GOOGLE, &parsed)),
        &[Change::Put(Box::new(Record::Calendar(standup.clone())))],
        &WriteSettings::default(),
    );
    let spans = &parsed.records[0].spans;
    let christmas = &GOOGLE[parsed.records[1].spans[0].clone()];
    assert!(out.starts_with(&GOOGLE[..spans[0].start]));
    assert!(
        out.ends_with(&GOOGLE[spans[1].end..]),
        "what followed the override stays"
    );
    let moved = out.find("SUMMARY:Standup\\, Wednesday").unwrap();
    assert!(
        moved < out.find(christmas).unwrap(),
        "both components where the master was"
    );
    assert_eq!(out.matches("RECURRENCE-ID").count(), 1);
    let after = parse(&out);
    assert_eq!(after.records[0].record, Record::Calendar(standup));
    assert_eq!(after.records[0].spans.len(), 2);
}
