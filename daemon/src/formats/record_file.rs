//! Records in one file (a `.vcf` of many contacts, a CSV, an `.ics` calendar).
//!
//! The file is read whole when its size, mtime or inode changed since it was last read or
//! written; a record whose text did not change is not compared again. A write splices the
//! changed records into the text as last read: the order of records and the bytes of the
//! untouched ones stay as they were. It goes through a temp file beside the target and a
//! rename, and only when the file is still what was last read. The old text of every record
//! replaced or deleted goes to the versions folder (`.NAME.tandem/versions` beside the file).
//!
//! A file that vanishes, or suddenly holds no records where many were, stops the source
//! (`RecordSourceError`): it never becomes "delete everything" on the peers.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::native::{Change, Codec, NativeRecord, Parsed, WriteSettings};
use super::record_io::{
    Known, KnownLater, Place, ReadOutcome, ReadRecord, RecordIo, RecordJob, RecordRead,
    RecordSource, RecordSourceError, RecordWritten, decode_text, file_name_for, keep_text, key_for,
    native_hash,
};
use crate::apply::ApplyError;
use crate::layout;

/// A batch of at least this many records is parsed back right after it is written (see
/// `FileSource::write`).
const SETTLE_AT_ONCE: usize = 64;

/// One file holding every record; `extension` names kept versions.
#[derive(Debug)]
pub struct RecordFile {
    pub codec: &'static dyn Codec,
    pub extension: &'static str,
}

impl RecordIo for RecordFile {
    fn codec(&self) -> &'static dyn Codec {
        self.codec
    }

    fn open(&self, root: &Path, settings: WriteSettings) -> Box<dyn RecordSource> {
        Box::new(FileSource {
            file: root.to_path_buf(),
            codec: self.codec,
            extension: self.extension,
            settings,
            last: None,
            written: None,
        })
    }
}

/// The agent's own folder for a single-file source (see [`layout::single_file_agent_dir`]).
pub fn agent_dir(file: &Path) -> PathBuf {
    layout::single_file_agent_dir(file)
}

/// Removes a temp file an earlier write left beside the file.
pub fn remove_stale_temp(file: &Path) {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let _ = fs::remove_file(file.with_file_name(format!("{}{name}", layout::TEMP_PREFIX)));
}

/// Makes the agent's folder of a single-file source (owner-only).
///
/// # Errors
/// The folder cannot be made.
pub fn create_agent_dir(file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(agent_dir(file)) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// The text as last read or written, and what it parsed into (keys given).
struct Last {
    stat: (u64, i64, u64),
    text: String,
    parsed: Parsed,
    /// The key of each of `parsed.records`, in order.
    keys: Vec<String>,
    /// Which of `parsed.records` have no UID in the text (their key was given here).
    uidless: Vec<bool>,
    /// `parsed`, `keys` and `uidless` are of `text`. Right after a write they are not yet:
    /// the written text is parsed on a thread of its own (`pending`), so the write is done
    /// (and the peer's change recorded) without waiting for it.
    fresh: bool,
    /// The parse of a text just written, under way.
    pending: Option<std::thread::JoinHandle<(Parsed, Vec<String>)>>,
    /// `text` is what this device wrote (not what it read).
    written: bool,
    /// The keys of records without a UID, by the hash of their text (kept across writes,
    /// which leave those records' text as it was).
    uidless_keys: Vec<Known>,
}

impl Last {
    /// Makes `parsed`, `keys` and `uidless` those of `text`: the parse under way, or one now.
    fn settle(&mut self, codec: &dyn Codec) {
        if self.fresh {
            return;
        }
        let done = self.pending.take().and_then(|parse| parse.join().ok());
        let (mut parsed, keys) = done.unwrap_or_else(|| {
            let parsed = codec.parse(&self.text);
            let keys = keys_of(&self.text, &parsed, &self.uidless_keys);
            (parsed, keys)
        });
        self.uidless = parsed.records.iter().map(|r| r.uid().is_none()).collect();
        for (r, key) in parsed.records.iter_mut().zip(&keys) {
            crate::records::set_uid(&mut r.record, key);
        }
        self.parsed = parsed;
        self.keys = keys;
        self.fresh = true;
    }

    /// The keys of records without a UID, by the hash of their text.
    fn uidless_known(&self) -> Vec<Known> {
        if !self.fresh {
            return self.uidless_keys.clone();
        }
        self.parsed
            .records
            .iter()
            .zip(&self.keys)
            .zip(&self.uidless)
            .enumerate()
            .filter(|(_, (_, uidless))| **uidless)
            .map(|(i, ((r, k), _))| Known {
                key: k.clone(),
                place: Place {
                    keyed_here: true,
                    native_hash: native_hash(&text_of(&self.text, r)),
                    ordinal: ordinal_of(i),
                    ..Place::default()
                },
            })
            .collect()
    }
}

struct FileSource {
    file: PathBuf,
    codec: &'static dyn Codec,
    extension: &'static str,
    settings: WriteSettings,
    last: Option<Last>,
    /// The hash of each record's text as this device last wrote it, by key: kept from the
    /// last text when it was a write, for the read that follows (empty otherwise).
    written: Option<HashMap<String, Vec<u8>>>,
}

fn stat_of(meta: &fs::Metadata) -> (u64, i64, u64) {
    (
        meta.len(),
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        meta.ino(),
    )
}

/// The text of a record as it lies in its file (borrowed when it lies in one piece, as all
/// but calendar items with overrides apart do: a read of 10,000 records copies none).
fn text_of<'t>(text: &'t str, record: &NativeRecord) -> std::borrow::Cow<'t, str> {
    match record.spans.as_slice() {
        [one] => std::borrow::Cow::Borrowed(text.get(one.clone()).unwrap_or_default()),
        spans => std::borrow::Cow::Owned(
            spans
                .iter()
                .filter_map(|s| text.get(s.clone()))
                .collect::<Vec<&'t str>>()
                .concat(),
        ),
    }
}

impl FileSource {
    fn name(&self) -> String {
        self.file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Gives every record of a parse its key: its UID, else the key a record with the same text
/// got before (`known`), else the key of the record without a UID that was at the same
/// position and is not found anywhere else (its text was edited in place), else one made of
/// its text.
fn keys_of(text: &str, parsed: &Parsed, known: &[Known]) -> Vec<String> {
    let mut by_hash: HashMap<&[u8], &str> = HashMap::new();
    let mut by_ordinal: HashMap<u32, &str> = HashMap::new();
    for k in known.iter().filter(|k| k.place.keyed_here) {
        by_hash.insert(&k.place.native_hash, &k.key);
        if k.place.ordinal > 0 {
            by_ordinal.insert(k.place.ordinal, &k.key);
        }
    }
    let mut texts: Vec<Option<std::borrow::Cow<str>>> = Vec::with_capacity(parsed.records.len());
    let mut keys: Vec<Option<String>> = parsed
        .records
        .iter()
        .map(|r| match r.uid() {
            Some(uid) => {
                texts.push(None);
                Some(uid.to_owned())
            }
            None => {
                let own = text_of(text, r);
                let key = by_hash
                    .get(native_hash(&own).as_slice())
                    .map(|k| (*k).to_owned());
                texts.push(Some(own));
                key
            }
        })
        .collect();
    let mut taken: std::collections::HashSet<String> = keys.iter().flatten().cloned().collect();
    for (i, (key, own)) in keys.iter_mut().zip(&texts).enumerate() {
        let Some(own) = own.as_deref().filter(|_| key.is_none()) else {
            continue;
        };
        let at = ordinal_of(i);
        *key = Some(match by_ordinal.get(&at) {
            Some(k) if taken.insert((*k).to_owned()) => (*k).to_owned(),
            _ => key_for(format!("{i}\n{own}").as_bytes()),
        });
    }
    keys.into_iter().map(Option::unwrap_or_default).collect()
}

/// The position of the `i`th record as a place records it (0 is "not recorded").
fn ordinal_of(i: usize) -> u32 {
    u32::try_from(i).map_or(0, |i| i.saturating_add(1))
}

/// The hash of each record's text in a text this device wrote, by key.
fn written_hashes(last: &Last) -> HashMap<String, Vec<u8>> {
    last.parsed
        .records
        .iter()
        .zip(&last.keys)
        .map(|(r, k)| (k.clone(), native_hash(&text_of(&last.text, r))))
        .collect()
}

impl RecordSource for FileSource {
    fn read(&mut self, known: KnownLater<'_>) -> Result<ReadOutcome, RecordSourceError> {
        let meta = match fs::metadata(&self.file) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.last = None;
                let known = known()?;
                if known.is_empty() {
                    return Ok(ReadOutcome::default());
                }
                return Err(RecordSourceError::Missing {
                    path: self.file.clone(),
                    recorded: known.len(),
                });
            }
            Err(source) => {
                return Err(RecordSourceError::Unreadable {
                    path: self.file.clone(),
                    source,
                });
            }
        };
        let mut stat = stat_of(&meta);
        if self.last.as_ref().is_some_and(|l| l.stat == stat) {
            return Ok(ReadOutcome {
                unchanged: true,
                ..ReadOutcome::default()
            });
        }
        let mut waits = 0;
        let (text, parsed) = loop {
            let (text, parsed) = self.read_text()?;
            // A file just emptied is most often one being written in place (truncated, then
            // filled): it is read again once its size or time moves, before the guard that
            // stops the source for a file that holds nothing judges it.
            let empty = parsed.records.is_empty() && parsed.errors.is_empty();
            if empty && waits < EMPTY_WAITS && just_changed(stat) {
                waits += 1;
                if let Some(moved) = stat_moved(&self.file, stat) {
                    stat = moved;
                    continue;
                }
            }
            break (text, parsed);
        };
        let known = known()?;
        let known = known.as_slice();
        if parsed.records.is_empty() && parsed.errors.is_empty() && known.len() > 1 {
            return Err(RecordSourceError::LooksEmpty {
                path: self.file.clone(),
                recorded: known.len(),
            });
        }
        let keys = keys_of(&text, &parsed, known);
        let hashes: HashMap<&str, &[u8]> = known
            .iter()
            .map(|k| (k.key.as_str(), k.place.native_hash.as_slice()))
            .collect();
        // The hash of each record's text as this device last wrote it, learnt once, when a
        // record's hash does not match.
        let mut written: Option<HashMap<String, Vec<u8>>> = None;
        let name = self.name();
        let mut out = ReadOutcome {
            hold_deletions: !parsed.errors.is_empty(),
            ..ReadOutcome::default()
        };
        for e in &parsed.errors {
            out.found.push(RecordRead::Error {
                item: format!("{name} line {}", e.line),
                message: format!(
                    "{}; no record of the file is taken for deleted until it reads cleanly",
                    e.message
                ),
                holds: Vec::new(),
            });
        }
        let mut first_line: HashMap<&str, (u32, std::borrow::Cow<str>)> = HashMap::new();
        let mut refused: Vec<String> = Vec::new();
        for (i, (r, key)) in parsed.records.iter().zip(&keys).enumerate() {
            let own = text_of(&text, r);
            let hash = native_hash(&own);
            if let Some((line, earlier)) = first_line.get(key.as_str()) {
                if *earlier != own {
                    refused.push(key.clone());
                    out.found.push(RecordRead::Error {
                        item: format!("{name} line {}", r.line),
                        message: format!(
                            "two different records have the UID {key:?}, at lines {line} and {}; \
                             give one of them another UID or delete it",
                            r.line
                        ),
                        holds: vec![key.clone()],
                    });
                }
                continue;
            }
            first_line.insert(key, (r.line, own));
            let recorded = hashes.get(key.as_str()).copied().unwrap_or_default();
            if recorded == hash.as_slice() {
                out.found.push(RecordRead::Unchanged(key.clone()));
                continue;
            }
            // A text this device wrote itself holds the values it recorded: only its place
            // is new. That covers records written in a small batch (recorded with no hash) and
            // records a later write re-rendered without a change of value (a CSV whose
            // columns grew rewrites every row).
            if written
                .get_or_insert_with(|| self.written.take().unwrap_or_default())
                .get(key.as_str())
                == Some(&hash)
            {
                out.found.push(RecordRead::Placed(
                    key.clone(),
                    Place {
                        native_hash: hash,
                        keyed_here: r.uid().is_none(),
                        ordinal: if r.uid().is_none() { ordinal_of(i) } else { 0 },
                        ..Place::default()
                    },
                ));
                continue;
            }
            let mut record = r.record.clone();
            crate::records::set_uid(&mut record, key);
            out.found.push(RecordRead::Record(Box::new(ReadRecord {
                key: key.clone(),
                record,
                place: Place {
                    keyed_here: r.uid().is_none(),
                    native_hash: hash,
                    ordinal: if r.uid().is_none() { ordinal_of(i) } else { 0 },
                    ..Place::default()
                },
                changed_unix_s: stat.1 / 1_000_000_000,
            })));
        }
        out.found.retain(|f| match f {
            RecordRead::Record(r) => !refused.contains(&r.key),
            RecordRead::Unchanged(k) | RecordRead::Placed(k, _) => !refused.contains(k),
            RecordRead::Error { .. } => true,
        });
        let mut parsed = parsed;
        let uidless = parsed.records.iter().map(|r| r.uid().is_none()).collect();
        for (r, key) in parsed.records.iter_mut().zip(&keys) {
            crate::records::set_uid(&mut r.record, key);
        }
        self.last = Some(Last {
            stat,
            text,
            parsed,
            keys,
            uidless,
            fresh: true,
            pending: None,
            written: false,
            uidless_keys: Vec::new(),
        });
        Ok(out)
    }

    fn write(&mut self, jobs: Vec<RecordJob>) -> Vec<Result<RecordWritten, ApplyError>> {
        let n = jobs.len();
        let name = self.name();
        let io = |action: &'static str| {
            let path = name.clone();
            move |source: std::io::Error| ApplyError::Io {
                path,
                action,
                source,
            }
        };
        let now = fs::metadata(&self.file).ok().map(|m| stat_of(&m));
        let fresh = match (&self.last, now) {
            (Some(last), Some(stat)) => last.stat == stat,
            // A file not there yet (an empty source) is made by the first write.
            (None, None) => true,
            _ => false,
        };
        if !fresh {
            return (0..n)
                .map(|_| Ok(RecordWritten::ChangedMeanwhile))
                .collect();
        }
        let empty = Last {
            stat: (0, 0, 0),
            text: String::new(),
            parsed: Parsed::default(),
            keys: Vec::new(),
            uidless: Vec::new(),
            fresh: true,
            pending: None,
            written: false,
            uidless_keys: Vec::new(),
        };
        let mut last = self.last.take().unwrap_or(empty);
        last.settle(self.codec);
        let had_text = now.is_some();
        let mut changes = Vec::with_capacity(n);
        for job in &jobs {
            match &job.record {
                Some(record) => {
                    let mut record = record.clone();
                    crate::records::set_uid(&mut record, &job.key);
                    changes.push(Change::Put(Box::new(record)));
                }
                None => changes.push(Change::Remove(job.key.clone())),
            }
        }
        // A record with no UID in the text cannot be found by its key: its text is cut out
        // here, and it is written anew (with its key as UID) at the end.
        let cut: Vec<std::ops::Range<usize>> = jobs
            .iter()
            .filter_map(|j| last.keys.iter().position(|k| *k == j.key))
            .filter(|&i| last.uidless.get(i).copied().unwrap_or(false))
            .filter_map(|i| last.parsed.records.get(i))
            .flat_map(|r| r.spans.iter().cloned())
            .collect();
        let cut_text = (!cut.is_empty()).then(|| without_spans(&last.text, cut));
        let cut_parsed = cut_text.as_deref().map(|t| self.codec.parse(t));
        let base = match (&cut_text, &cut_parsed) {
            (Some(t), Some(p)) => (t.as_str(), p),
            _ => (last.text.as_str(), &last.parsed),
        };
        let previous = had_text.then_some(base);
        let text = self.codec.write(previous, &changes, &self.settings);
        let result = self
            .replace(&last, &jobs, &text)
            .map_err(io("writing the file"));
        if let Err(e) = result {
            self.last = Some(last);
            let why = e.to_string();
            return (0..n)
                .map(|_| {
                    Err(ApplyError::Io {
                        path: name.clone(),
                        action: "writing the file",
                        source: std::io::Error::other(why.clone()),
                    })
                })
                .collect();
        }
        let stat = match fs::metadata(&self.file) {
            Ok(m) => stat_of(&m),
            Err(e) => {
                let why = e.to_string();
                return (0..n)
                    .map(|_| {
                        Err(ApplyError::Io {
                            path: name.clone(),
                            action: "looking at the written file",
                            source: std::io::Error::other(why.clone()),
                        })
                    })
                    .collect();
            }
        };
        let uidless_keys = last.uidless_known();
        let mut next = Last {
            stat,
            text,
            parsed: Parsed::default(),
            keys: Vec::new(),
            uidless: Vec::new(),
            fresh: false,
            pending: None,
            written: true,
            uidless_keys,
        };
        if n < SETTLE_AT_ONCE {
            // Records this batch wrote carry their key as UID; their text is hashed by the
            // next read that finds the file changed, from a parse that runs meanwhile (so one
            // change is applied without waiting for a parse of the whole text).
            let (codec, written, known) =
                (self.codec, next.text.clone(), next.uidless_keys.clone());
            next.pending = std::thread::Builder::new()
                .name("record-parse".into())
                .spawn(move || {
                    let parsed = codec.parse(&written);
                    let keys = keys_of(&written, &parsed, &known);
                    (parsed, keys)
                })
                .ok();
            self.last = Some(next);
            return jobs
                .iter()
                .map(|_| Ok(RecordWritten::Done(Place::default())))
                .collect();
        }
        // A large batch (a first sync) learns the hash of each record it wrote now, so the
        // records are stored with it. Left to the next read, that read would record the place
        // of every one of them, and it is the read of the user's next change.
        next.settle(self.codec);
        let hashes: HashMap<&str, Vec<u8>> = next
            .parsed
            .records
            .iter()
            .zip(&next.keys)
            .map(|(r, k)| (k.as_str(), native_hash(&text_of(&next.text, r))))
            .collect();
        let results = jobs
            .iter()
            .map(|j| {
                Ok(RecordWritten::Done(Place {
                    native_hash: hashes.get(j.key.as_str()).cloned().unwrap_or_default(),
                    ..Place::default()
                }))
            })
            .collect();
        self.last = Some(next);
        results
    }
}

impl FileSource {
    /// Reads the file's text and parses it: anew where it changed since the text last read or
    /// written, which is given up here.
    fn read_text(&mut self) -> Result<(String, Parsed), RecordSourceError> {
        let bytes = fs::read(&self.file).map_err(|source| RecordSourceError::Unreadable {
            path: self.file.clone(),
            source,
        })?;
        let text = decode_text(&bytes);
        let parsed = match self.last.take() {
            // Read again where it changed since last read or written (one phone edited in a
            // book of 10,000 reads one card); the keys given to records without a UID are
            // taken back first, so the old parse is what a parse gives.
            Some(mut last) => {
                last.settle(self.codec);
                self.written = last.written.then(|| written_hashes(&last));
                let Last {
                    text: old,
                    mut parsed,
                    uidless,
                    ..
                } = last;
                for (r, _) in parsed.records.iter_mut().zip(uidless).filter(|(_, u)| *u) {
                    crate::records::set_uid(&mut r.record, "");
                }
                self.codec.reparse(&old, parsed, &text)
            }
            None => {
                self.written = None;
                self.codec.parse(&text)
            }
        };
        Ok((text, parsed))
    }
}

/// How many times a read that found the file empty waits for it to be filled.
const EMPTY_WAITS: u32 = 3;

/// True when a file's time is within the last two seconds (a writer may still be at it).
fn just_changed(stat: (u64, i64, u64)) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    now.saturating_sub(stat.1) < 2_000_000_000
}

/// Waits up to half a second for the file's size, time or inode to move from `stat`; the new
/// one, or `None` when it stayed (or the file is gone).
fn stat_moved(file: &Path, stat: (u64, i64, u64)) -> Option<(u64, i64, u64)> {
    let until = std::time::Instant::now() + std::time::Duration::from_millis(500);
    while std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(10));
        let now = stat_of(&fs::metadata(file).ok()?);
        if now != stat {
            return Some(now);
        }
    }
    None
}

/// `text` without the bytes of `spans`.
fn without_spans(text: &str, mut spans: Vec<std::ops::Range<usize>>) -> String {
    spans.sort_by_key(|s| s.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for s in spans {
        if s.start >= at {
            out.push_str(text.get(at..s.start).unwrap_or_default());
            at = s.end;
        }
    }
    out.push_str(text.get(at..).unwrap_or_default());
    out
}

impl FileSource {
    /// Keeps the old text of every record a batch replaces or deletes, then puts the new file
    /// in place atomically and durably.
    fn replace(&self, last: &Last, jobs: &[RecordJob], text: &str) -> std::io::Result<()> {
        let versions = layout::versions_dir_of(&self.file, true);
        for job in jobs {
            let old = last
                .keys
                .iter()
                .position(|k| *k == job.key)
                .and_then(|i| last.parsed.records.get(i));
            if let Some(old) = old {
                keep_text(
                    &versions,
                    &file_name_for(&job.key, self.extension),
                    &text_of(&last.text, old),
                )?;
            }
        }
        let dir = self
            .file
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let temp = dir.join(format!("{}{}", layout::TEMP_PREFIX, self.name()));
        let written = (|| {
            let mut f = fs::File::create(&temp)?;
            f.write_all(text.as_bytes())?;
            if let Ok(meta) = fs::metadata(&self.file) {
                f.set_permissions(meta.permissions())?;
            }
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        if let Err(e) = fs::rename(&temp, &self.file) {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        fs::File::open(&dir)?.sync_all()
    }
}
