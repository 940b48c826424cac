//! `csv-contacts`: contacts as one CSV file. Reads Google Contacts' exports (current and
//! older) and Outlook's by their header names; writes Google's current layout, so the file
//! imports back into Google Contacts, and keeps the columns it does not know.

use super::codecs::csv::CsvCodec;
use super::record_file::RecordFile;
use super::{Kind, Layout, RecordFormat};

/// The `csv-contacts` format.
pub static FORMAT: RecordFormat = RecordFormat {
    name: "csv-contacts",
    kind: Kind::Contacts,
    layout: Layout::SingleFile,
    io: &RecordFile {
        codec: &CsvCodec,
        extension: "csv",
    },
};
