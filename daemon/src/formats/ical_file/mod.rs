//! `ical-file`: a calendar as one `.ics` file holding every item, each with the time zones it
//! needs (what calendar apps export and subscribe to).

use super::codecs::ical::IcalCodec;
use super::record_file::RecordFile;
use super::{Kind, Layout, RecordFormat};

/// The `ical-file` format.
pub static FORMAT: RecordFormat = RecordFormat {
    name: "ical-file",
    kind: Kind::Calendar,
    layout: Layout::SingleFile,
    io: &RecordFile {
        codec: &IcalCodec,
        extension: "ics",
    },
};
