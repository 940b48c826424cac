//! `vcard-dir`: contacts as a folder of `.vcf` files, one contact each (the vdir layout that
//! vdirsyncer and khard use).

use super::codecs::vcard::VCardCodec;
use super::record_dir::RecordDir;
use super::{Kind, Layout, RecordFormat};

/// The `vcard-dir` format.
pub static FORMAT: RecordFormat = RecordFormat {
    name: "vcard-dir",
    kind: Kind::Contacts,
    layout: Layout::Folder,
    io: &RecordDir {
        codec: &VCardCodec,
        extension: "vcf",
    },
};
