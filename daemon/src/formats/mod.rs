//! Native formats behind one trait, and the registry that finds them by name.
//!
//! A format says what kind of data a source holds (files, contacts, calendar) and how it lies
//! on disk (a folder, or a single file); it reads that data into items against the prior state
//! and writes staged items back. The source task only ever talks to a `dyn Format`, so adding
//! a format is its folder here plus one line in [`REGISTRY`]. Must not: rename files outside
//! its writer, touch SQL, or reach into another format.

pub mod codecs;
pub mod csv_contacts;
pub mod files;
#[cfg(test)]
mod fuzz;
pub mod ical_dir;
pub mod ical_file;
pub mod native;
pub mod record_dir;
pub mod record_file;
pub mod record_io;
#[cfg(test)]
mod record_tests;
pub mod reparse;
pub mod vcard_dir;
pub mod vcard_file;

use std::fmt;
use std::path::Path;

use crate::apply::{ApplyError, Disk};
use crate::scanner::{ScanError, ScanRequest, ScanSummary, Sink};
use crate::universal::ItemPath;

pub use files::{Loser, Write, WriteJob, Written};

/// How one item of a batch was written.
pub type WriteResult = Result<Write, ApplyError>;

/// What kind of data a source holds. Devices may keep one source in different formats of the
/// same kind (contacts as a folder of vCards here, as a CSV there), never of different kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Files,
    Contacts,
    Calendar,
}

impl Kind {
    /// The name shown to people and sent in the hello.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Files => "files",
            Kind::Contacts => "contacts",
            Kind::Calendar => "calendar",
        }
    }

    /// Inverse of [`Kind::as_str`]; `None` for a kind this build does not know.
    pub fn parse(name: &str) -> Option<Kind> {
        [Kind::Files, Kind::Contacts, Kind::Calendar]
            .into_iter()
            .find(|k| k.as_str() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a format's data lies on disk: the rules that keep a source from turning into "delete
/// everything" differ (a folder has a marker; a single file can vanish or go empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A folder: one item per file (or per entry).
    Folder,
    /// One file holding every item.
    SingleFile,
}

/// A native format: reads a source's data into items and writes items back.
pub trait Format: Send + Sync + fmt::Debug + 'static {
    /// The name `source add --format` takes.
    fn name(&self) -> &'static str;
    /// The kind of data it holds.
    fn kind(&self) -> Kind;
    /// How it lies on disk.
    fn layout(&self) -> Layout;
    /// The record side of a record format (`None` for `files`): the source task reads and
    /// writes such a source through it, and never through [`Format::read`] or
    /// [`Format::write`], which are the files side.
    fn records(&self) -> Option<&dyn record_io::RecordIo> {
        None
    }
    /// Reads what is in scope and reports every item that differs from its prior state (and
    /// every item that cannot be read) to `sink`. Blocking; a bad item never aborts the read.
    ///
    /// # Errors
    /// Only when the source as a whole cannot be read (missing, unreadable, suddenly empty).
    fn read(&self, req: ScanRequest, sink: &mut dyn Sink) -> Result<ScanSummary, ScanError>;
    /// Writes a batch of checked and journaled items into the source at `root` through
    /// `disk`, in order, each atomically: a target is replaced only if it is still what the
    /// prior state recorded. Blocking. One result per job; every item reported written is
    /// durable when this returns (durability is paid once per batch, not per item).
    ///
    /// A job's error is that item's alone: it names the item, and nothing of it is left
    /// half-written.
    fn write(&self, disk: &dyn Disk, root: &Path, jobs: Vec<WriteJob>) -> Vec<WriteResult>;
    /// Moves the folder `from` to `to` in one step, durably, for a peer's folder move the
    /// source task has checked and journaled. Blocking. `Ok(false)` when the format has no
    /// such step (the default): the move's items are then written one by one.
    ///
    /// # Errors
    /// The move failed and nothing moved; the error names the item.
    fn move_folder(
        &self,
        _disk: &dyn Disk,
        _root: &Path,
        _from: &ItemPath,
        _to: &ItemPath,
    ) -> Result<bool, ApplyError> {
        Ok(false)
    }
}

/// The kind of data a record is.
pub fn kind_of_record(record: &native::Record) -> Kind {
    match record {
        native::Record::Contact(_) => Kind::Contacts,
        native::Record::Calendar(_) => Kind::Calendar,
    }
}

/// A record format: a name, a kind and the record I/O (a layout and a codec). The five record
/// formats are each one of these, in their own module.
#[derive(Debug)]
pub struct RecordFormat {
    pub name: &'static str,
    pub kind: Kind,
    pub layout: Layout,
    pub io: &'static (dyn record_io::RecordIo + 'static),
}

impl Format for RecordFormat {
    fn name(&self) -> &'static str {
        self.name
    }

    fn kind(&self) -> Kind {
        self.kind
    }

    fn layout(&self) -> Layout {
        self.layout
    }

    fn records(&self) -> Option<&dyn record_io::RecordIo> {
        Some(self.io)
    }

    fn read(&self, req: ScanRequest, _: &mut dyn Sink) -> Result<ScanSummary, ScanError> {
        Err(ScanError::NotFiles(req.root))
    }

    fn write(&self, _: &dyn Disk, _: &Path, jobs: Vec<WriteJob>) -> Vec<WriteResult> {
        jobs.into_iter()
            .map(|j| {
                Err(ApplyError::NotAFile {
                    key: j.item.path.to_string(),
                })
            })
            .collect()
    }
}

/// A property test's config: `n` cases, unless `PROPTEST_CASES` asks for another number (the
/// long fuzz run, `tests/fuzz-records`, does).
#[cfg(test)]
pub(crate) fn test_cases(n: u32) -> proptest::prelude::ProptestConfig {
    let mut config = proptest::prelude::ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = n;
    }
    config
}

/// Every format this build can read and write. Adding a format adds one line here.
static REGISTRY: &[&dyn Format] = &[
    &files::Files,
    &vcard_dir::FORMAT,
    &vcard_file::FORMAT,
    &csv_contacts::FORMAT,
    &ical_dir::FORMAT,
    &ical_file::FORMAT,
];

/// A format name the registry does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown format {name:?}; known formats: {}; pick one with --format", names().join(", "))]
pub struct UnknownFormat {
    pub name: String,
}

/// The format registered under `name`.
///
/// # Errors
/// [`UnknownFormat`], whose message lists the known formats.
pub fn by_name(name: &str) -> Result<&'static dyn Format, UnknownFormat> {
    REGISTRY
        .iter()
        .copied()
        .find(|f| f.name() == name)
        .ok_or_else(|| UnknownFormat {
            name: name.to_owned(),
        })
}

/// Every kind of data the registered formats keep, each once, in registry order.
pub fn kinds() -> Vec<Kind> {
    let mut kinds: Vec<Kind> = Vec::new();
    for kind in REGISTRY.iter().map(|f| f.kind()) {
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    kinds
}

/// The names of every registered format, in registry order.
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|f| f.name()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_finds_formats_by_name_and_lists_them_when_it_cannot() {
        let files = by_name("files").expect("files is registered");
        assert_eq!(files.kind(), Kind::Files);
        assert_eq!(files.layout(), Layout::Folder);
        let err = by_name("nope").expect_err("nope is not a format");
        let message = err.to_string();
        assert!(message.contains("\"nope\""), "{message}");
        assert!(message.contains("files"), "{message}");
        for name in names() {
            assert_eq!(by_name(name).map(|f| f.name()), Ok(name));
        }
        let kinds = kinds();
        assert!(kinds.contains(&Kind::Files));
        for name in names() {
            let kind = by_name(name).map(|f| f.kind()).unwrap_or(Kind::Files);
            assert_eq!(kinds.iter().filter(|k| **k == kind).count(), 1, "{kinds:?}");
        }
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in [Kind::Files, Kind::Contacts, Kind::Calendar] {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::parse("photos"), None);
    }
}
