//! Records in a folder, one file each (the vdir layout of vdirsyncer, khard and khal): a
//! `.vcf` per contact, an `.ics` per calendar item.
//!
//! A file that did not change since it was last read (same size, mtime and inode) is not read
//! again. The name of an existing record's file is never changed; a new record's file is
//! named after its UID when that is safe as a file name. Writes go through a temp file in the
//! source's `.tandem/tmp` and a rename, after the replaced file went to the versions folder.
//!
//! Must not: write a file that changed since it was last read, or read outside the folder.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::native::{Change, Codec, Parsed, Record, WriteSettings};
use super::record_io::{
    Known, KnownLater, Place, ReadOutcome, ReadRecord, RecordIo, RecordJob, RecordRead,
    RecordSource, RecordSourceError, RecordWritten, decode_text, file_name_for, key_for,
};
use crate::apply::ApplyError;
use crate::layout;

/// A folder of one file per record, with `extension` (no dot).
#[derive(Debug)]
pub struct RecordDir {
    pub codec: &'static dyn Codec,
    pub extension: &'static str,
}

impl RecordIo for RecordDir {
    fn codec(&self) -> &'static dyn Codec {
        self.codec
    }

    fn open(&self, root: &Path, settings: WriteSettings) -> Box<dyn RecordSource> {
        Box::new(DirSource {
            root: root.to_path_buf(),
            codec: self.codec,
            extension: self.extension,
            settings,
        })
    }
}

struct DirSource {
    root: PathBuf,
    codec: &'static dyn Codec,
    extension: &'static str,
    settings: WriteSettings,
}

fn place_of(file: &str, meta: &fs::Metadata) -> Place {
    Place {
        file: file.to_owned(),
        size: meta.len(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        inode: meta.ino(),
        keyed_here: false,
        native_hash: Vec::new(),
        ordinal: 0,
    }
}

fn same_stat(a: &Place, b: &Place) -> bool {
    a.size == b.size && a.mtime_ns == b.mtime_ns && a.inode == b.inode
}

impl DirSource {
    /// The record files of the folder, by name, with their metadata.
    fn list(&self) -> Result<Vec<(String, fs::Metadata)>, RecordSourceError> {
        let unreadable = |source| RecordSourceError::Unreadable {
            path: self.root.clone(),
            source,
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(unreadable)? {
            let entry = entry.map_err(unreadable)?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let ours = name.starts_with('.') || layout::is_temp_name(&name);
            let wanted = name
                .rsplit_once('.')
                .is_some_and(|(_, ext)| ext.eq_ignore_ascii_case(self.extension));
            if ours || !wanted {
                continue;
            }
            if let Ok(meta) = entry.metadata()
                && meta.is_file()
            {
                files.push((name, meta));
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(files)
    }
}

impl RecordSource for DirSource {
    fn read(&mut self, known: KnownLater<'_>) -> Result<ReadOutcome, RecordSourceError> {
        let files = self.list()?;
        let known = known()?;
        let known = known.as_slice();
        if files.is_empty() && !known.is_empty() {
            return Err(RecordSourceError::LooksEmpty {
                path: self.root.clone(),
                recorded: known.len(),
            });
        }
        let mut by_file: HashMap<&str, Vec<&Known>> = HashMap::new();
        for k in known {
            by_file.entry(k.place.file.as_str()).or_default().push(k);
        }
        let mut out = ReadOutcome::default();
        // The first file each key was read from, to name both when two differ.
        let mut seen: HashMap<String, (String, Record)> = HashMap::new();
        let mut refused: HashSet<String> = HashSet::new();
        for (name, meta) in files {
            let place = place_of(&name, &meta);
            let here = by_file.get(name.as_str()).cloned().unwrap_or_default();
            if !here.is_empty() && here.iter().all(|k| same_stat(&k.place, &place)) {
                out.found
                    .extend(here.iter().map(|k| RecordRead::Unchanged(k.key.clone())));
                continue;
            }
            let holds = || here.iter().map(|k| k.key.clone()).collect::<Vec<_>>();
            let bytes = match fs::read(self.root.join(&name)) {
                Ok(b) => b,
                Err(e) => {
                    out.found.push(RecordRead::Error {
                        item: name.clone(),
                        message: format!("cannot read it: {e}; give the agent's user access"),
                        holds: holds(),
                    });
                    continue;
                }
            };
            let text = decode_text(&bytes);
            let parsed = self.codec.parse(&text);
            if let Some(e) = parsed.errors.first() {
                out.found.push(RecordRead::Error {
                    item: format!("{name} line {}", e.line),
                    message: format!(
                        "{}; fix the file (it is never overwritten while it cannot be read)",
                        e.message
                    ),
                    holds: holds(),
                });
                continue;
            }
            if parsed.records.len() != 1 {
                out.found.push(RecordRead::Error {
                    item: name.clone(),
                    message: format!(
                        "holds {} records; this layout keeps one per file: split it, or use a single-file format",
                        parsed.records.len()
                    ),
                    holds: holds(),
                });
                continue;
            }
            let Some(read) = parsed.records.into_iter().next() else {
                continue;
            };
            let mut place = place;
            let key = match read.uid() {
                Some(uid) => uid.to_owned(),
                None => {
                    place.keyed_here = true;
                    here.iter()
                        .find(|k| k.place.keyed_here)
                        .map_or_else(|| key_for(name.as_bytes()), |k| k.key.clone())
                }
            };
            let mut record = read.record;
            // Copies written elsewhere carry the key as their UID.
            crate::records::set_uid(&mut record, &key);
            if let Some((first, earlier)) = seen.get(&key) {
                if crate::records::normalized(earlier) != crate::records::normalized(&record) {
                    refused.insert(key.clone());
                    out.found.push(RecordRead::Error {
                        item: key.clone(),
                        message: format!(
                            "two different records have this UID, in {first} and {name}; \
                             give one of them another UID or delete it"
                        ),
                        holds: vec![key.clone()],
                    });
                }
                // Byte-identical copies are one record.
                continue;
            }
            seen.insert(key.clone(), (name.clone(), record.clone()));
            let changed_unix_s = place.mtime_ns / 1_000_000_000;
            out.found.push(RecordRead::Record(Box::new(ReadRecord {
                key,
                record,
                place,
                changed_unix_s,
            })));
        }
        out.found.retain(|f| match f {
            RecordRead::Record(r) => !refused.contains(&r.key),
            _ => true,
        });
        Ok(out)
    }

    fn write(&mut self, jobs: Vec<RecordJob>) -> Vec<Result<RecordWritten, ApplyError>> {
        let mut results = Vec::with_capacity(jobs.len());
        let mut wrote = false;
        for job in jobs {
            let result = self.write_one(job);
            wrote |= matches!(result, Ok(RecordWritten::Done(_)));
            results.push(result);
        }
        if wrote && let Err(e) = fs::File::open(&self.root).and_then(|d| d.sync_all()) {
            let why = e.to_string();
            for r in &mut results {
                if matches!(r, Ok(RecordWritten::Done(_))) {
                    *r = Err(ApplyError::Io {
                        path: self.root.display().to_string(),
                        action: "flushing the folder",
                        source: std::io::Error::other(why.clone()),
                    });
                }
            }
        }
        results
    }
}

impl DirSource {
    fn write_one(&self, job: RecordJob) -> Result<RecordWritten, ApplyError> {
        let err = |action: &'static str, name: &str| {
            let path = name.to_owned();
            move |source: std::io::Error| ApplyError::Io {
                path,
                action,
                source,
            }
        };
        let name = match &job.place {
            Some(p) => p.file.clone(),
            None => self.free_name(&job.key),
        };
        let target = self.root.join(&name);
        // The file must still be what was last read: a user's edit since is read first.
        let now = fs::symlink_metadata(&target).ok();
        let unchanged = match (&job.place, &now) {
            (Some(p), Some(meta)) => meta.is_file() && same_stat(p, &place_of(&name, meta)),
            (Some(_), None) => job.record.is_none(),
            (None, None) => true,
            (None, Some(_)) => false,
        };
        if !unchanged {
            return Ok(RecordWritten::ChangedMeanwhile);
        }
        let Some(record) = job.record else {
            if now.is_some() {
                crate::versions::keep(&self.root, &name, true).map_err(|e| ApplyError::Io {
                    path: name.clone(),
                    action: "moving the deleted record to the versions folder",
                    source: std::io::Error::other(e.to_string()),
                })?;
            }
            return Ok(RecordWritten::Done(job.place.unwrap_or_default()));
        };
        // An existing file is written through its own text, so its version and what lies
        // around the record stay.
        let previous = match &now {
            Some(_) => {
                let bytes = fs::read(&target).map_err(err("reading the record's file", &name))?;
                let text = decode_text(&bytes);
                let parsed = self.codec.parse(&text);
                Some((text, parsed))
            }
            None => None,
        };
        let mut record = record;
        let keyed_here = job.place.as_ref().is_some_and(|p| p.keyed_here);
        let mut prev: Option<(String, Parsed)> = previous;
        if keyed_here && let Some((_, parsed)) = &mut prev {
            // Its text has no UID: match it by the key it was given, and keep the text without
            // one (the record's copies elsewhere carry the key as their UID).
            for r in &mut parsed.records {
                crate::records::set_uid(&mut r.record, &job.key);
            }
        }
        if keyed_here {
            crate::records::set_uid(&mut record, "");
        }
        let change = if keyed_here {
            // A file of one record: written anew from the record, in the file's version.
            vec![
                Change::Remove(job.key.clone()),
                Change::Put(Box::new(record)),
            ]
        } else {
            vec![Change::Put(Box::new(record))]
        };
        let text = self.codec.write(
            prev.as_ref().map(|(t, p)| (t.as_str(), p)),
            &change,
            &self.settings,
        );
        let tmp_dir = layout::temp_dir(&self.root);
        fs::create_dir_all(&tmp_dir).map_err(err("creating the temp folder", &name))?;
        let temp = tmp_dir.join(format!("{}{}", layout::TEMP_PREFIX, name));
        let written = (|| {
            let mut f = fs::File::create(&temp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(err("writing the record", &name)(e));
        }
        if now.is_some() {
            crate::versions::keep(&self.root, &name, false).map_err(|e| ApplyError::Io {
                path: name.clone(),
                action: "keeping the old version",
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        if let Err(e) = fs::rename(&temp, &target) {
            let _ = fs::remove_file(&temp);
            return Err(err("putting the record in place", &name)(e));
        }
        let meta = fs::symlink_metadata(&target).map_err(err("looking at the record", &name))?;
        let mut place = place_of(&name, &meta);
        place.keyed_here = keyed_here;
        Ok(RecordWritten::Done(place))
    }

    /// A file name for a new record that no file has.
    fn free_name(&self, key: &str) -> String {
        let name = file_name_for(key, self.extension);
        if fs::symlink_metadata(self.root.join(&name)).is_err() {
            return name;
        }
        let stem = name
            .strip_suffix(&format!(".{}", self.extension))
            .unwrap_or(&name)
            .to_owned();
        (2..)
            .map(|n| format!("{stem}-{n}.{}", self.extension))
            .find(|n| fs::symlink_metadata(self.root.join(n)).is_err())
            .unwrap_or(name)
    }
}
