//! The I/O side of the record formats: a source of records is read into universal records,
//! each with its key and its place (the file that holds it), and written back a batch at a
//! time. Two layouts share it: a folder with one file per record (`record_dir`) and one file
//! holding every record (`record_file`); a format is a layout, a codec and a name.
//!
//! Must not: decide which version wins, touch SQL, or write a file that changed since it was
//! last read (it reports that, and the source task reads it first).

use std::path::{Path, PathBuf};

use super::native::{Codec, Record, WriteSettings};
use crate::apply::ApplyError;

/// Where one record lies in this device's native form, as the store keeps it with the record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Place {
    /// Dir layouts: the file that holds it.
    pub file: String,
    /// That file's size, mtime and inode when last read or written (dir layouts).
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    /// The record had no UID natively: its key was given here.
    pub keyed_here: bool,
    /// For a record without a UID in a single file: a hash of its native text.
    pub native_hash: Vec<u8>,
    /// For a record without a UID in a single file: its position among the file's records.
    pub ordinal: u32,
}

/// A live record of the prior state, as a read needs it.
#[derive(Debug, Clone)]
pub struct Known {
    pub key: String,
    pub place: Place,
}

/// A record as read, with its key.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub key: String,
    /// Only what the format holds, without stamps.
    pub record: Record,
    pub place: Place,
    /// When its text last changed, as far as the file says (Unix seconds; 0: not known): of
    /// two values set at once on two devices, the later one wins.
    pub changed_unix_s: i64,
}

/// One result of a read.
#[derive(Debug, Clone)]
pub enum RecordRead {
    /// A record read from its text.
    Record(Box<ReadRecord>),
    /// A record whose file did not change since it was last read or written: not read again.
    Unchanged(String),
    /// A record whose values did not change but whose place is to be recorded (this
    /// device wrote it, and now knows the hash of its text).
    Placed(String, Place),
    /// A part that cannot be read. `item` names the file (and line) for status; the keys in
    /// `holds` were recorded there, and are not taken for deleted while it stays unreadable.
    Error {
        item: String,
        message: String,
        holds: Vec<String>,
    },
}

/// Everything a read found.
#[derive(Debug, Clone, Default)]
pub struct ReadOutcome {
    pub found: Vec<RecordRead>,
    /// Nothing changed since the last read or write: nothing was read.
    pub unchanged: bool,
    /// Part of the source could not be read and its records are not known: no record is taken
    /// for deleted in this read.
    pub hold_deletions: bool,
}

/// Why a record source as a whole cannot be read. Nothing is taken for deleted.
#[derive(Debug, thiserror::Error)]
pub enum RecordSourceError {
    #[error(
        "{path} is gone but held {recorded} records; nothing is sent as deleted. Put the file back, or remove the source"
    )]
    Missing { path: PathBuf, recorded: usize },
    #[error(
        "{path} holds no records but {recorded} were recorded in it; nothing is sent as deleted. \
         Restore the file, or delete the records one by one while the agent runs, or remove and re-add the source"
    )]
    LooksEmpty { path: PathBuf, recorded: usize },
    #[error("cannot read the prior state: {0}; nothing is sent as deleted")]
    Prior(String),
    #[error("cannot read {path}: {source}; give the agent's user access to it")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One record to write: its new state (`None`: delete it) and what it was checked against.
#[derive(Debug, Clone)]
pub struct RecordJob {
    pub key: String,
    pub record: Option<Record>,
    /// Where it lies now (`None`: new here).
    pub place: Option<Place>,
}

/// How writing one record went, short of an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordWritten {
    /// Written (or deleted: the place it had), durably.
    Done(Place),
    /// Its file changed since it was last read: nothing was written; read it first.
    ChangedMeanwhile,
}

/// A record format's way of reading and writing a source.
pub trait RecordIo: Send + Sync + std::fmt::Debug {
    /// The codec of its native text.
    fn codec(&self) -> &'static dyn Codec;
    /// Opens a source at `root` (a folder, or the one file) for reading and writing. What it
    /// keeps between calls (the last text read) is a cache: a new one starts by reading.
    fn open(&self, root: &Path, settings: WriteSettings) -> Box<dyn RecordSource>;
}

/// The live prior state of a source, asked for when a read needs it.
pub type KnownLater<'a> = &'a mut dyn FnMut() -> Result<Vec<Known>, RecordSourceError>;

/// One open record source. Blocking.
pub trait RecordSource: Send + Sync {
    /// Reads every record that may have changed; `known` gives the live prior state, which
    /// may still be on its way from the store (a read asks for it only once it needs it, so
    /// the two are read at once; a file that did not change needs it not at all).
    ///
    /// # Errors
    /// The source as a whole cannot be read, or it suddenly holds nothing.
    fn read(&mut self, known: KnownLater<'_>) -> Result<ReadOutcome, RecordSourceError>;
    /// Writes a batch, each record atomically; one result per job, durable when this returns.
    fn write(&mut self, jobs: Vec<RecordJob>) -> Vec<Result<RecordWritten, ApplyError>>;
}

/// Reads a native text: a BOM is dropped, and a text that is not UTF-8 is taken as Latin-1
/// (what vCard 2.1 exporters without a CHARSET wrote), so no byte stops a read.
pub fn decode_text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

/// A key for a record without a UID, from what identifies it here (its file's name, or its
/// text): the same record read again gets the same key.
pub fn key_for(seed: &[u8]) -> String {
    format!("tandem-{:032x}", xxhash_rust::xxh3::xxh3_128(seed))
}

/// A hash of a record's native text, to know a record without a UID again.
pub fn native_hash(text: &str) -> Vec<u8> {
    xxhash_rust::xxh3::xxh3_128(text.as_bytes())
        .to_be_bytes()
        .to_vec()
}

/// Keeps a record's old text in a versions folder as `NAME~YYYYMMDD-HHMMSS`.
///
/// # Errors
/// The folder or the file cannot be written.
pub fn keep_text(versions: &Path, name: &str, text: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(versions)?;
    let stamp = crate::versions::stamp_now();
    let mut kept = versions.join(format!("{name}~{stamp}"));
    let mut n = 1;
    while std::fs::symlink_metadata(&kept).is_ok() {
        n += 1;
        kept = versions.join(format!("{name}~{stamp}-{n}"));
    }
    std::fs::write(&kept, text)?;
    Ok(kept)
}

/// A file name made of a key when it is safe as one (letters, digits and `-_.@+`, not
/// starting with a dot, not too long), else of its hash.
pub fn file_name_for(key: &str, extension: &str) -> String {
    let safe = !key.is_empty()
        && key.len() <= 200
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@+".contains(&b));
    if safe {
        format!("{key}.{extension}")
    } else {
        format!("{}.{extension}", key_for(key.as_bytes()))
    }
}
