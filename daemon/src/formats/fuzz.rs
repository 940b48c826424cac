//! Fuzzing on stable Rust, as property tests: every codec, and the decoding of what a peer
//! sends, over arbitrary bytes and over mutations of the test files (truncations, flipped
//! bytes, duplicated and dropped lines). Nothing may panic; what a parse holds stays bounded
//! by the size of its text; a part that cannot be read is an error naming its line, and
//! every byte of the text is either a record's or an error's or blank. A short run is part of
//! the suite; `tests/fuzz-records` runs these with many more cases and says how many.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use prost::Message;
use tandem_proto::peer as pb;

use super::codecs::csv::CsvCodec;
use super::codecs::ical::IcalCodec;
use super::codecs::vcard::VCardCodec;
use super::native::{Change, Codec, Parsed, WriteSettings};

const FIXTURES: &[(&str, &str)] = &[
    (
        "vcf",
        include_str!("../../../tests/data/records/vcard/v21-quoted-printable.vcf"),
    ),
    (
        "vcf",
        include_str!("../../../tests/data/records/vcard/v30-apple.vcf"),
    ),
    (
        "vcf",
        include_str!("../../../tests/data/records/vcard/v40-typed.vcf"),
    ),
    (
        "vcf",
        include_str!("../../../tests/data/records/vcard/several-one-broken.vcf"),
    ),
    (
        "csv",
        include_str!("../../../tests/data/records/csv/google-current.csv"),
    ),
    (
        "csv",
        include_str!("../../../tests/data/records/csv/google-old.csv"),
    ),
    (
        "csv",
        include_str!("../../../tests/data/records/csv/outlook.csv"),
    ),
    (
        "csv",
        include_str!("../../../tests/data/records/csv/wrong-cell-count.csv"),
    ),
    (
        "ics",
        include_str!("../../../tests/data/records/ical/google.ics"),
    ),
    (
        "ics",
        include_str!("../../../tests/data/records/ical/apple.ics"),
    ),
    (
        "ics",
        include_str!("../../../tests/data/records/ical/thunderbird.ics"),
    ),
    (
        "ics",
        include_str!("../../../tests/data/records/ical/broken.ics"),
    ),
];

fn codec(ext: &str) -> &'static dyn Codec {
    match ext {
        "vcf" => &VCardCodec,
        "csv" => &CsvCodec,
        _ => &IcalCodec,
    }
}

/// What every parse must give, whatever the text.
fn check_parse(codec: &dyn Codec, text: &str) -> Parsed {
    let parsed = codec.parse(text);
    // Bounded: a record never holds much more than the text it came from.
    let held: usize = parsed
        .records
        .iter()
        .map(|r| {
            pb::RecordBody {
                record: Some(r.record.clone()),
            }
            .encoded_len()
        })
        .sum();
    assert!(
        held <= 8 * text.len() + 4096,
        "{held} bytes of records from a text of {}",
        text.len()
    );
    let mut spans: Vec<std::ops::Range<usize>> = parsed
        .records
        .iter()
        .flat_map(|r| r.spans.iter().cloned())
        .chain(parsed.errors.iter().map(|e| e.span.clone()))
        .collect();
    spans.sort_by_key(|s| s.start);
    for w in spans.windows(2) {
        assert!(w[0].end <= w[1].start, "parts overlap: {spans:?}");
    }
    for s in &spans {
        assert!(
            s.start <= s.end && s.end <= text.len(),
            "{s:?} outside the text"
        );
        assert!(text.get(s.clone()).is_some(), "{s:?} splits a character");
    }
    for e in &parsed.errors {
        assert!(e.line >= 1 && !e.message.is_empty(), "{e:?}");
    }
    // A write on top of what was read never panics and keeps what could not be read.
    let written = codec.write(Some((text, &parsed)), &[], &WriteSettings::default());
    for e in &parsed.errors {
        let part = text.get(e.span.clone()).unwrap_or_default().trim();
        assert!(
            written.contains(part),
            "an unreadable part was lost by a write: {part:?}"
        );
    }
    if let Some(first) = parsed.records.first() {
        let again = codec.write(
            Some((text, &parsed)),
            &[Change::Put(Box::new(first.record.clone()))],
            &WriteSettings::default(),
        );
        codec.parse(&again);
    }
    parsed
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    DuplicateLine(usize),
    DropLine(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Flip(at, b)),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        any::<usize>().prop_map(Mutation::DropLine),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for m in mutations {
        if bytes.is_empty() {
            break;
        }
        match *m {
            Mutation::Truncate(at) => bytes.truncate(at % bytes.len()),
            Mutation::Flip(at, b) => {
                let at = at % bytes.len();
                bytes[at] ^= b | 1;
            }
            Mutation::DuplicateLine(n) | Mutation::DropLine(n) => {
                let lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
                let at = n % lines.len();
                let mut out = Vec::with_capacity(bytes.len() + 80);
                for (i, line) in lines.iter().enumerate() {
                    let times = match (i == at, m) {
                        (true, Mutation::DropLine(_)) => 0,
                        (true, _) => 2,
                        _ => 1,
                    };
                    for _ in 0..times {
                        out.extend_from_slice(line);
                    }
                }
                bytes = out;
            }
        }
    }
    crate::formats::record_io::decode_text(&bytes)
}

proptest! {
    #![proptest_config(super::test_cases(96))]

    #[test]
    fn fuzz_codecs_take_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048), which in 0usize..3) {
        let text = crate::formats::record_io::decode_text(&bytes);
        check_parse(codec(["vcf", "csv", "ics"][which]), &text);
    }

    #[test]
    fn fuzz_codecs_take_mutated_test_files(
        which in 0..FIXTURES.len(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let (ext, text) = FIXTURES[which];
        let parsed = check_parse(codec(ext), &mutate(text, &mutations));
        // Whatever broke, the parse accounted for it: records, errors, or nothing left.
        prop_assert!(parsed.records.len() + parsed.errors.len() < 10_000);
    }

    #[test]
    fn fuzz_a_text_read_again_after_an_edit_parses_as_the_whole_text(
        which in 0..FIXTURES.len(),
        before in proptest::collection::vec(mutation(), 0..2),
        edits in proptest::collection::vec(mutation(), 1..4),
    ) {
        let (ext, text) = FIXTURES[which];
        let old = mutate(text, &before);
        let new = mutate(&old, &edits);
        let codec = codec(ext);
        prop_assert_eq!(codec.reparse(&old, codec.parse(&old), &new), codec.parse(&new));
    }

    #[test]
    fn fuzz_peer_frames_of_arbitrary_bytes_are_refused_or_checked(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        if let Ok(frame) = pb::Frame::decode(bytes.as_slice())
            && let Some(pb::frame::Body::Index(update)) = frame.body
        {
            for item in &update.items {
                let _ = crate::universal::item_from_pb(item);
            }
        }
    }

    #[test]
    fn fuzz_mutated_record_items_are_refused_or_checked(
        which in 0..FIXTURES.len(),
        at in any::<usize>(),
        flip in any::<u8>(),
        cut in any::<usize>(),
    ) {
        let (ext, text) = FIXTURES[which];
        let parsed = codec(ext).parse(text);
        let Some(first) = parsed.records.first() else {
            return Ok(());
        };
        let uid = match &first.record {
            pb::record_body::Record::Contact(c) => c.uid.clone(),
            pb::record_body::Record::Calendar(c) => c.uid.clone(),
        };
        let item = pb::Item {
            key: Some(pb::item::Key::Uid(uid)),
            header: Some(pb::Header {
                version: Some(pb::Version {
                    counters: vec![pb::Counter { device: 7, value: 1 }],
                }),
                sequence: 1,
                deleted: false,
                modified_by: String::new(),
            }),
            body: Some(pb::item::Body::Record(pb::RecordBody {
                record: Some(first.record.clone()),
            })),
        };
        let mut bytes = item.encode_to_vec();
        let at = at % bytes.len();
        bytes[at] ^= flip | 1;
        bytes.truncate(bytes.len() - cut % (bytes.len() / 4 + 1));
        if let Ok(item) = pb::Item::decode(bytes.as_slice()) {
            let _ = crate::universal::item_from_pb(&item);
        }
    }
}
