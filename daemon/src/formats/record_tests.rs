//! The record layouts against real files: keys, places, guards, writes that check the file is
//! what was last read, versions, and records without a UID.
#![allow(clippy::unwrap_used)]

use std::fs;

use super::codecs::vcard::VCardCodec;
use super::native::{Record, WriteSettings};
use super::record_dir::RecordDir;
use super::record_file::{RecordFile, agent_dir};
use super::record_io::{
    Known, ReadOutcome, RecordIo, RecordJob, RecordRead, RecordSourceError, RecordWritten,
};

fn card(uid: Option<&str>, name: &str, phone: &str) -> String {
    let uid = uid.map(|u| format!("UID:{u}\r\n")).unwrap_or_default();
    format!("BEGIN:VCARD\r\nVERSION:3.0\r\n{uid}FN:{name}\r\nTEL:{phone}\r\nEND:VCARD\r\n")
}

fn known(
    outcome: &ReadOutcome,
    place_of: impl Fn(&str) -> Option<super::record_io::Place>,
) -> Vec<Known> {
    outcome
        .found
        .iter()
        .filter_map(|f| match f {
            RecordRead::Record(r) => Some(Known {
                key: r.key.clone(),
                place: r.place.clone(),
            }),
            RecordRead::Unchanged(k) => place_of(k).map(|place| Known {
                key: k.clone(),
                place,
            }),
            RecordRead::Placed(k, place) => Some(Known {
                key: k.clone(),
                place: place.clone(),
            }),
            RecordRead::Error { .. } => None,
        })
        .collect()
}

fn records(outcome: &ReadOutcome) -> Vec<(String, Record)> {
    outcome
        .found
        .iter()
        .filter_map(|f| match f {
            RecordRead::Record(r) => Some((r.key.clone(), r.record.clone())),
            _ => None,
        })
        .collect()
}

fn with_phone(record: &Record, phone: &str) -> Record {
    let mut r = record.clone();
    if let Record::Contact(c) = &mut r {
        c.phones[0].value = phone.into();
    }
    r
}

static FILE: RecordFile = RecordFile {
    codec: &VCardCodec,
    extension: "vcf",
};
static DIR: RecordDir = RecordDir {
    codec: &VCardCodec,
    extension: "vcf",
};

#[test]
fn a_single_file_keeps_untouched_cards_and_writes_a_card_without_uid_once() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("all.vcf");
    let ana = card(Some("ana"), "Ana", "+1 100");
    let nouid = card(None, "No Uid", "+1 200");
    let cy = card(Some("cy"), "Cy", "+1 300");
    fs::write(&path, format!("{ana}{nouid}{cy}")).unwrap();
    let mut src = FILE.open(&path, WriteSettings::default());
    let first = src.read(&mut || Ok(Vec::new())).unwrap();
    let read = records(&first);
    assert_eq!(read.len(), 3);
    let (nouid_key, nouid_record) = read
        .iter()
        .find(|(k, _)| k.starts_with("tandem-"))
        .cloned()
        .unwrap();
    // Read again unchanged: nothing is read at all.
    assert!(
        src.read(&mut || Ok(known(&first, |_| None)))
            .unwrap()
            .unchanged
    );

    // The card without a UID is changed: it is written once, with its key as UID.
    let jobs = vec![RecordJob {
        key: nouid_key.clone(),
        record: Some(with_phone(&nouid_record, "+1 299")),
        place: None,
    }];
    let written = src.write(jobs);
    assert!(
        matches!(written[0], Ok(RecordWritten::Done(_))),
        "{written:?}"
    );
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches("No Uid").count(), 1, "{text}");
    assert!(
        text.contains("+1 299") && !text.contains("+1 200"),
        "{text}"
    );
    assert!(text.contains(&format!("UID:{nouid_key}")), "{text}");
    assert!(
        text.starts_with(&ana) && text.contains(&cy),
        "untouched cards keep their bytes"
    );
    // Its old text went to the versions folder.
    let kept = fs::read_dir(agent_dir(&path).join("versions"))
        .unwrap()
        .count();
    assert_eq!(kept, 1);

    // Another program edits another card: the card written here is only placed (its hash
    // learnt from the text written), not compared again; the edited one is read.
    {
        let mut src = FILE.open(&path, WriteSettings::default());
        let mut recorded = known(&first, |_| None);
        for k in &mut recorded {
            if k.key == nouid_key {
                k.place = Default::default();
            }
        }
        src.read(&mut || Ok(recorded.clone())).unwrap();
        let jobs = vec![RecordJob {
            key: nouid_key.clone(),
            record: Some(with_phone(&nouid_record, "+1 298")),
            place: None,
        }];
        assert!(matches!(src.write(jobs)[0], Ok(RecordWritten::Done(_))));
        let now = fs::read_to_string(&path).unwrap();
        fs::write(&path, now.replace("+1 300", "+1 301")).unwrap();
        for k in &mut recorded {
            if k.key == nouid_key {
                k.place = Default::default();
            }
        }
        let outcome = src.read(&mut || Ok(recorded.clone())).unwrap();
        let placed: Vec<&str> = outcome
            .found
            .iter()
            .filter_map(|f| match f {
                RecordRead::Placed(k, p) if !p.native_hash.is_empty() => Some(k.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(placed, [nouid_key.as_str()], "{:?}", outcome.found);
        assert_eq!(records(&outcome).len(), 1, "only the edited card is read");
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replace("+1 301", "+1 300")).unwrap();
    }
    let text = fs::read_to_string(&path).unwrap();

    // A user's edit since the last read is never overwritten: the write waits.
    fs::write(&path, text.replace("+1 100", "+1 101")).unwrap();
    let jobs = vec![RecordJob {
        key: "cy".into(),
        record: None,
        place: None,
    }];
    assert!(matches!(
        src.write(jobs)[0],
        Ok(RecordWritten::ChangedMeanwhile)
    ));
    assert!(fs::read_to_string(&path).unwrap().contains("+1 101"));
}

#[test]
fn a_card_without_uid_edited_in_place_keeps_its_key() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("all.vcf");
    let first_two = format!(
        "{}{}",
        card(None, "One", "+1 100"),
        card(None, "Two", "+1 200")
    );
    fs::write(
        &path,
        format!("{first_two}{}", card(None, "Three", "+1 300")),
    )
    .unwrap();
    let mut src = FILE.open(&path, WriteSettings::default());
    let first = src.read(&mut || Ok(Vec::new())).unwrap();
    let keys: Vec<String> = records(&first).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), 3);
    let recorded = known(&first, |_| None);

    // The second card's phone is edited, and a card is added after it.
    let text = fs::read_to_string(&path).unwrap();
    let edited = text.replace("+1 200", "+1 201") + &card(None, "Four", "+1 400");
    fs::write(&path, edited).unwrap();
    let outcome = src.read(&mut || Ok(recorded.clone())).unwrap();
    let read = records(&outcome);
    assert_eq!(read.len(), 2, "{:?}", outcome.found);
    let two = read.iter().find(|(_, r)| {
        matches!(r, Record::Contact(c) if c.phones.first().is_some_and(|p| p.value == "+1 201"))
    });
    assert_eq!(
        two.map(|(k, _)| k),
        Some(&keys[1]),
        "same key after the edit"
    );
    let four = read.iter().find(|(k, _)| *k != keys[1]).unwrap();
    assert!(
        !keys.contains(&four.0),
        "the added card gets a key of its own"
    );
    let unchanged = outcome
        .found
        .iter()
        .filter(|f| matches!(f, RecordRead::Unchanged(_)))
        .count();
    assert_eq!(unchanged, 2);
}

#[test]
fn a_large_batch_knows_the_hash_of_what_it_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("all.vcf");
    let mut src = FILE.open(&path, WriteSettings::default());
    let template = {
        fs::write(&path, card(Some("x"), "X", "+1 0")).unwrap();
        let mut probe = FILE.open(&path, WriteSettings::default());
        let read = records(&probe.read(&mut || Ok(Vec::new())).unwrap());
        fs::remove_file(&path).unwrap();
        read[0].1.clone()
    };
    let jobs: Vec<RecordJob> = (0..100)
        .map(|i| RecordJob {
            key: format!("c{i}"),
            record: Some(with_phone(&template, &format!("+1 {i}"))),
            place: None,
        })
        .collect();
    let written = src.write(jobs);
    let recorded: Vec<Known> = written
        .iter()
        .enumerate()
        .map(|(i, w)| match w {
            Ok(RecordWritten::Done(place)) => {
                assert!(!place.native_hash.is_empty(), "record {i} has no hash");
                Known {
                    key: format!("c{i}"),
                    place: place.clone(),
                }
            }
            other => panic!("{other:?}"),
        })
        .collect();
    // Another program touches the file without changing a record: every record is found
    // unchanged by its hash, none is placed again.
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, text).unwrap();
    let mut fresh = FILE.open(&path, WriteSettings::default());
    let outcome = fresh.read(&mut || Ok(recorded.clone())).unwrap();
    assert_eq!(outcome.found.len(), 100);
    assert!(
        outcome
            .found
            .iter()
            .all(|f| matches!(f, RecordRead::Unchanged(_))),
        "{:?}",
        outcome.found.first()
    );
}

#[test]
fn a_single_file_that_vanishes_or_empties_stops_the_source() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("all.vcf");
    // A file not made yet, with nothing recorded, is an empty source.
    let mut src = FILE.open(&path, WriteSettings::default());
    assert!(src.read(&mut || Ok(Vec::new())).unwrap().found.is_empty());
    fs::write(
        &path,
        format!("{}{}", card(Some("a"), "A", "1"), card(Some("b"), "B", "2")),
    )
    .unwrap();
    let first = src.read(&mut || Ok(Vec::new())).unwrap();
    let recorded = known(&first, |_| None);
    assert_eq!(recorded.len(), 2);
    fs::write(&path, "").unwrap();
    let err = src.read(&mut || Ok(recorded.clone())).unwrap_err();
    assert!(
        matches!(err, RecordSourceError::LooksEmpty { recorded: 2, .. }),
        "{err}"
    );
    fs::remove_file(&path).unwrap();
    let err = src.read(&mut || Ok(recorded.clone())).unwrap_err();
    assert!(matches!(err, RecordSourceError::Missing { .. }), "{err}");
    assert!(
        err.to_string().contains("nothing is sent as deleted"),
        "{err}"
    );
}

#[test]
fn a_folder_names_new_files_after_their_uid_and_never_renames_one() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    crate::layout::create_marker(root).unwrap();
    fs::write(root.join("mine.vcf"), card(Some("ana"), "Ana", "+1 100")).unwrap();
    let mut src = DIR.open(root, WriteSettings::default());
    let first = src.read(&mut || Ok(Vec::new())).unwrap();
    let read = records(&first);
    let (key, ana) = read[0].clone();
    let place = known(&first, |_| None)[0].place.clone();
    assert_eq!(place.file, "mine.vcf");
    // Read again unchanged: the file is not read.
    let again = src.read(&mut || Ok(known(&first, |_| None))).unwrap();
    assert!(matches!(again.found[..], [RecordRead::Unchanged(_)]));

    let bob = card(Some("bob/1"), "Bob", "+1 200");
    let bob = parse_one(&bob);
    let results = src.write(vec![
        RecordJob {
            key: key.clone(),
            record: Some(with_phone(&ana, "+1 101")),
            place: Some(place.clone()),
        },
        RecordJob {
            key: "bob/1".into(),
            record: Some(bob),
            place: None,
        },
    ]);
    let Ok(RecordWritten::Done(ana_place)) = &results[0] else {
        panic!("{results:?}")
    };
    assert_eq!(
        ana_place.file, "mine.vcf",
        "an existing file keeps its name"
    );
    let Ok(RecordWritten::Done(bob_place)) = &results[1] else {
        panic!("{results:?}")
    };
    // "bob/1" is no safe file name: a name made of its hash.
    assert!(bob_place.file.starts_with("tandem-") && bob_place.file.ends_with(".vcf"));
    assert!(
        fs::read_to_string(root.join("mine.vcf"))
            .unwrap()
            .contains("+1 101")
    );
    assert_eq!(
        fs::read_dir(root.join(".tandem/versions")).unwrap().count(),
        1,
        "the replaced file is kept"
    );
    // Edited since: the write waits, the edit stays.
    fs::write(root.join("mine.vcf"), card(Some("ana"), "Ana", "+1 555")).unwrap();
    let results = src.write(vec![RecordJob {
        key,
        record: None,
        place: Some(ana_place.clone()),
    }]);
    assert!(matches!(results[0], Ok(RecordWritten::ChangedMeanwhile)));
    assert!(root.join("mine.vcf").exists());
}

fn parse_one(text: &str) -> Record {
    use super::native::Codec;
    VCardCodec.parse(text).records.remove(0).record
}
