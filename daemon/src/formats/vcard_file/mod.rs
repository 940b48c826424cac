//! `vcard-file`: contacts as one `.vcf` file holding them all (what address books export).

use super::codecs::vcard::VCardCodec;
use super::record_file::RecordFile;
use super::{Kind, Layout, RecordFormat};

/// The `vcard-file` format.
pub static FORMAT: RecordFormat = RecordFormat {
    name: "vcard-file",
    kind: Kind::Contacts,
    layout: Layout::SingleFile,
    io: &RecordFile {
        codec: &VCardCodec,
        extension: "vcf",
    },
};
