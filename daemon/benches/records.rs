//! Record parse benchmark: the time to read one native file of records once, for the record
//! sync benchmark (`tests/bench/records.py`) to compare the time of a sync against.
//!
//! `cargo bench -p tandem-daemon --bench records -- FILE...`: each file is parsed with the
//! codec its extension names (`.vcf` vCard, `.csv` CSV contacts, `.ics` iCalendar), seven
//! times; the median and the record count are printed, one line per file, as JSON.

use std::time::Instant;

use tandem::formats::codecs::csv::CsvCodec;
use tandem::formats::codecs::ical::IcalCodec;
use tandem::formats::codecs::vcard::VCardCodec;
use tandem::formats::native::{Change, Codec, WriteSettings};
use tandem::formats::record_io::decode_text;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; only paths are files to parse.
    let files: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if files.is_empty() {
        eprintln!("usage: cargo bench -p tandem-daemon --bench records -- FILE...");
        return Ok(());
    }
    for file in files {
        let codec: &dyn Codec = match file.rsplit_once('.').map(|(_, e)| e) {
            Some("vcf") => &VCardCodec,
            Some("csv") => &CsvCodec,
            Some("ics") => &IcalCodec,
            _ => anyhow::bail!("{file}: give a .vcf, .csv or .ics file"),
        };
        let bytes = std::fs::read(&file)?;
        let mut times = Vec::new();
        let mut records = 0;
        for _ in 0..7 {
            let started = Instant::now();
            // What a read of the file costs: decoding the text and parsing it.
            let parsed = codec.parse(&decode_text(&bytes));
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            records = parsed.records.len();
        }
        times.sort_by(f64::total_cmp);
        // What a write of one changed record into the whole text costs (the splice).
        let text = decode_text(&bytes);
        let parsed = codec.parse(&text);
        let mut writes = Vec::new();
        if let Some(first) = parsed.records.first() {
            // The change a user makes: one phone number, as the sync bench does.
            let mut record = first.record.clone();
            if let tandem::formats::native::Record::Contact(c) = &mut record
                && let Some(phone) = c.phones.first_mut()
            {
                phone.value = "+1 555 9999".into();
            }
            let change = [Change::Put(Box::new(record))];
            for _ in 0..7 {
                let started = Instant::now();
                let out = codec.write(Some((&text, &parsed)), &change, &WriteSettings::default());
                writes.push(started.elapsed().as_secs_f64() * 1000.0);
                assert!(!out.is_empty());
            }
        }
        writes.sort_by(f64::total_cmp);
        println!(
            "{{\"file\": {:?}, \"bytes\": {}, \"records\": {records}, \"parse_ms\": {:.2}, \"write_one_ms\": {:.2}}}",
            file,
            bytes.len(),
            times[times.len() / 2],
            writes.get(writes.len() / 2).copied().unwrap_or(0.0)
        );
    }
    Ok(())
}
