//! The versions folder: a file replaced or deleted by a peer's change is kept here first, named
//! `PATH~YYYYMMDD-HHMMSS` under `ROOT/.tandem/versions/`, pruned after a retention period, and
//! can be restored as a local change.
//!
//! Must not: decide what to replace (that is `apply` and the source task) or touch SQL.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::events::utc_stamp;
pub use crate::layout::versions_dir;

/// One kept version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The item path it was a version of.
    pub path: String,
    /// When it was replaced, `YYYYMMDD-HHMMSS` UTC.
    pub when: String,
    pub size: u64,
    /// Where the copy lives.
    pub file: PathBuf,
}

/// Errors of the versions folder, naming the item.
#[derive(Debug, thiserror::Error)]
pub enum VersionsError {
    #[error("{path}: {action} failed: {source}")]
    Io {
        path: String,
        action: &'static str,
        source: io::Error,
    },
    #[error("no kept version of {path}{at}; `tandemctl versions list` shows what is kept")]
    NotFound { path: String, at: String },
}

/// The current time as a versions name stamp (UTC, YYYYMMDD-HHMMSS).
pub fn stamp_now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    utc_stamp(secs)
}

/// Keeps the current file at `item` before it is replaced or deleted: a hard link when it is
/// about to be replaced by rename (so the target never disappears, and the old inode lives on
/// only here), a rename when it is going away anyway.
/// Returns the kept copy, or `None` when there was no regular file to keep.
pub fn keep(root: &Path, item: &str, going_away: bool) -> Result<Option<PathBuf>, VersionsError> {
    let target = root.join(item);
    match fs::symlink_metadata(&target) {
        Ok(m) if m.file_type().is_file() => {}
        _ => return Ok(None),
    }
    let err = |action| {
        move |source| VersionsError::Io {
            path: item.to_owned(),
            action,
            source,
        }
    };
    let stamp = stamp_now();
    let base = versions_dir(root).join(format!("{item}~{stamp}"));
    if let Some(dir) = base.parent() {
        fs::create_dir_all(dir).map_err(err("creating the versions folder"))?;
    }
    // Several replacements within one second each keep their own copy.
    let mut kept = base.clone();
    let mut n = 1;
    while fs::symlink_metadata(&kept).is_ok() {
        n += 1;
        kept = versions_dir(root).join(format!("{item}~{stamp}-{n}"));
    }
    if going_away {
        fs::rename(&target, &kept).map_err(err("moving the old version aside"))?;
    } else if fs::hard_link(&target, &kept).is_err() {
        fs::copy(&target, &kept).map_err(err("copying the old version aside"))?;
    }
    Ok(Some(kept))
}

/// Every kept version, or those of one item path, oldest first.
pub fn list(root: &Path, only: Option<&str>) -> Vec<Version> {
    list_in(&versions_dir(root), only)
}

/// [`list`] of the versions folder `base` (a single-file source keeps its own).
pub fn list_in(base: &Path, only: Option<&str>) -> Vec<Version> {
    let base = base.to_path_buf();
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(&base)
        .follow_links(false)
        .into_iter()
        .flatten()
    {
        if !entry.file_type().is_file() {
            continue;
        }
        let Ok(rel) = entry.path().strip_prefix(&base) else {
            continue;
        };
        let Some(rel) = rel.to_str() else { continue };
        let Some((path, when)) = rel.rsplit_once('~') else {
            continue;
        };
        if only.is_some_and(|o| o != path) {
            continue;
        }
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        out.push(Version {
            path: path.to_owned(),
            when: when.to_owned(),
            size,
            file: entry.path().to_path_buf(),
        });
    }
    out.sort_by(|a, b| (a.path.as_str(), a.when.as_str()).cmp(&(b.path.as_str(), b.when.as_str())));
    out
}

/// Removes versions older than `keep_for`; returns how many went.
pub fn prune(root: &Path, keep_for: Duration) -> usize {
    prune_in(&versions_dir(root), keep_for)
}

/// [`prune`] of the versions folder `base`.
pub fn prune_in(base: &Path, keep_for: Duration) -> usize {
    let now = SystemTime::now();
    let mut removed = 0;
    for v in list_in(base, None) {
        let old = fs::metadata(&v.file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > keep_for);
        if old && fs::remove_file(&v.file).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Puts a kept version back at its path (the newest one, or the newest at or before `at`).
/// The current file, if any, is kept as a version first. The result is an ordinary local change
/// that the scanner records and peers receive.
pub fn restore(root: &Path, item: &str, at: Option<&str>) -> Result<Version, VersionsError> {
    let chosen = list(root, Some(item))
        .into_iter()
        .rfind(|v| at.is_none_or(|at| v.when.as_str() <= at))
        .ok_or_else(|| VersionsError::NotFound {
            path: item.to_owned(),
            at: at.map(|a| format!(" at or before {a}")).unwrap_or_default(),
        })?;
    let err = |action| {
        move |source| VersionsError::Io {
            path: item.to_owned(),
            action,
            source,
        }
    };
    let target = root.join(item);
    if let Some(dir) = target.parent() {
        fs::create_dir_all(dir).map_err(err("creating its folder"))?;
    }
    keep(root, item, false)?;
    let temp = crate::apply::temp_beside(&target);
    fs::copy(&chosen.file, &temp).map_err(err("copying the version back"))?;
    if let Err(e) = fs::rename(&temp, &target) {
        let _ = fs::remove_file(&temp);
        return Err(err("putting the version in place")(e));
    }
    Ok(chosen)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keep_list_restore_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("d")).unwrap();
        fs::write(root.join("d/f.txt"), b"one").unwrap();
        let kept = keep(root, "d/f.txt", false).unwrap().unwrap();
        assert_eq!(fs::read(&kept).unwrap(), b"one");
        assert!(
            root.join("d/f.txt").exists(),
            "a replacement keeps the target in place"
        );
        // Replaced the way apply does it: a new file renamed over the old name.
        fs::write(root.join("new"), b"two").unwrap();
        fs::rename(root.join("new"), root.join("d/f.txt")).unwrap();
        assert_eq!(fs::read(&kept).unwrap(), b"one");
        assert!(keep(root, "d/missing", true).unwrap().is_none());

        let versions = list(root, Some("d/f.txt"));
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0].size, 3);
        assert!(list(root, Some("other")).is_empty());

        let restored = restore(root, "d/f.txt", None).unwrap();
        assert_eq!(restored.when, versions[0].when);
        assert_eq!(fs::read(root.join("d/f.txt")).unwrap(), b"one");
        let err = restore(root, "d/f.txt", Some("19700101-000000"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no kept version") && err.contains("d/f.txt"),
            "{err}"
        );
        let err = restore(root, "nope", None).unwrap_err().to_string();
        assert!(err.contains("versions list"), "{err}");

        assert_eq!(prune(root, Duration::from_secs(3600)), 0);
        let all = list(root, None).len();
        assert_eq!(all, 2, "the restore kept the version it replaced");
        assert_eq!(prune(root, Duration::ZERO), all);
        assert!(list(root, None).is_empty());
    }

    #[test]
    fn a_deleted_file_moves_into_versions() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("gone.txt"), b"bye").unwrap();
        let kept = keep(root, "gone.txt", true).unwrap().unwrap();
        assert!(!root.join("gone.txt").exists());
        assert_eq!(fs::read(kept).unwrap(), b"bye");
    }
}
