//! `ical-dir`: a calendar as a folder of `.ics` files, one item each (an event or task with
//! its overrides, as the vdir layout of vdirsyncer and khal has it).

use super::codecs::ical::IcalCodec;
use super::record_dir::RecordDir;
use super::{Kind, Layout, RecordFormat};

/// The `ical-dir` format.
pub static FORMAT: RecordFormat = RecordFormat {
    name: "ical-dir",
    kind: Kind::Calendar,
    layout: Layout::Folder,
    io: &RecordDir {
        codec: &IcalCodec,
        extension: "ics",
    },
};
