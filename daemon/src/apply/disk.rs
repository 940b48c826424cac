//! The disk operations where applying a peer's item can fail or race, behind one small trait:
//! creating, writing and flushing a temp file, renaming it into place, and looking at a
//! target. [`OsDisk`] is the real one; [`FaultyDisk`] injects ENOSPC, EIO or a file changed
//! under us at a named step, so those paths are tested without root or a small mount.
//!
//! Must not: decide anything; it only carries out (or fails) one operation.

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

/// The operations of applying an item that tests inject faults into.
pub trait Disk: Send + Sync + fmt::Debug + 'static {
    /// Creates a new temp file at `temp`, failing if it exists, for the item at `target`.
    fn create(&self, temp: &Path, target: &Path) -> io::Result<fs::File>;
    /// Writes all of `buf` at `offset` of `file` (a temp file for the item at `target`).
    fn write_at(&self, file: &fs::File, target: &Path, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes `file`'s content durable (a temp file for the item at `target`).
    fn sync(&self, file: &fs::File, target: &Path) -> io::Result<()>;
    /// Makes the entries of folder `dir` durable (the renames into it, the removals from it).
    fn sync_folder(&self, dir: &Path) -> io::Result<()>;
    /// Renames `from` over `to`: the step that replaces a target.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Renames `from` to `to` only if nothing is at `to` (else `AlreadyExists`), in one step
    /// where the file system can: a folder moved for a peer never replaces anything.
    fn rename_no_replace(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// An item's metadata without following a symlink: what "unchanged since its scan" reads.
    fn symlink_metadata(&self, path: &Path) -> io::Result<fs::Metadata>;
}

/// The operating system's own file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsDisk;

impl Disk for OsDisk {
    fn create(&self, temp: &Path, _: &Path) -> io::Result<fs::File> {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(temp)
    }

    fn write_at(&self, file: &fs::File, _: &Path, buf: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }

    fn sync(&self, file: &fs::File, _: &Path) -> io::Result<()> {
        file.sync_all()
    }

    fn sync_folder(&self, dir: &Path) -> io::Result<()> {
        fs::File::open(dir)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn rename_no_replace(&self, from: &Path, to: &Path) -> io::Result<()> {
        #[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
        {
            use rustix::fs::{CWD, RenameFlags, renameat_with};
            match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
                Ok(()) => return Ok(()),
                // A file system without the flag (some network and FUSE ones) says EINVAL:
                // it gets the look-then-rename below.
                Err(e) if e != rustix::io::Errno::INVAL => return Err(e.into()),
                Err(_) => {}
            }
        }
        match fs::symlink_metadata(to) {
            Ok(_) => Err(io::Error::from(io::ErrorKind::AlreadyExists)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::rename(from, to),
            Err(e) => Err(e),
        }
    }

    fn symlink_metadata(&self, path: &Path) -> io::Result<fs::Metadata> {
        fs::symlink_metadata(path)
    }
}

/// A step of applying an item, as [`FaultyDisk`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Create,
    Write,
    Sync,
    SyncFolder,
    Rename,
    Look,
}

/// What happens at a faulty step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injected {
    /// "No space left on device".
    NoSpace,
    /// An input/output error from the device.
    Io,
    /// Someone writes these bytes to the file at that moment; the step then runs as usual.
    Change(Vec<u8>),
    /// The process dies on the spot, as under `kill -9` (for crash tests of a whole agent).
    Abort,
}

/// One planned fault: at `step`, on a path ending in `name` (for the steps on a temp file: its
/// target's path, or the folder of it), `times` times, once `after` such operations have gone
/// through.
#[derive(Debug, Clone)]
struct Fault {
    step: Step,
    name: String,
    injected: Injected,
    times: u32,
    after: u32,
}

/// A disk that fails (or changes a file) at the steps a test plans, and otherwise is the real
/// one. For tests; the agent never uses it.
#[derive(Debug, Default)]
pub struct FaultyDisk {
    planned: Mutex<Vec<Fault>>,
}

impl FaultyDisk {
    /// A disk with no faults planned yet.
    pub fn new() -> FaultyDisk {
        FaultyDisk::default()
    }

    /// Plans `injected` at `step` for the next `times` operations on a path ending in `name`
    /// (for `Create`, `Write` and `Sync`, on a temp file whose target's path, or folder, ends
    /// in `name`; an empty name matches every path).
    pub fn plan(&self, step: Step, name: &str, injected: Injected, times: u32) {
        self.lock().push(Fault {
            step,
            name: name.to_owned(),
            injected,
            times,
            after: 0,
        });
    }

    /// How many planned faults have not happened yet.
    pub fn pending(&self) -> u32 {
        self.lock().iter().map(|f| f.times).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Fault>> {
        // A test that panicked while holding the lock has failed already; its plan still holds.
        self.planned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the fault planned for this step and path (or, for a temp file's step, its
    /// target's folder), if any.
    fn take(&self, step: Step, path: &Path) -> Option<Injected> {
        let text = path.to_string_lossy();
        let folder = matches!(step, Step::Create | Step::Write | Step::Sync)
            .then(|| path.parent().map(Path::to_string_lossy))
            .flatten();
        let mut planned = self.lock();
        let fault = planned.iter_mut().find(|f| {
            let name = f.name.as_str();
            f.step == step
                && f.times > 0
                && (text.ends_with(name) || folder.as_ref().is_some_and(|d| d.ends_with(name)))
        })?;
        if fault.after > 0 {
            fault.after -= 1;
            return None;
        }
        fault.times -= 1;
        Some(fault.injected.clone())
    }

    /// Carries out a planned fault: an error to return, or a change made before the step.
    fn inject(&self, step: Step, path: &Path) -> io::Result<()> {
        match self.take(step, path) {
            None => Ok(()),
            Some(Injected::NoSpace) => Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "No space left on device (injected)",
            )),
            // EIO is 5 on Linux and macOS alike.
            Some(Injected::Io) => Err(io::Error::from_raw_os_error(5)),
            Some(Injected::Change(bytes)) => {
                let mut f = fs::OpenOptions::new().append(true).open(path)?;
                f.write_all(&bytes)
            }
            Some(Injected::Abort) => std::process::abort(),
        }
    }

    /// A disk with the faults named in `plan`: `STEP:NAME:FAULT[:TIMES[:AFTER]]` separated by
    /// `;`, where STEP is create, write, sync, sync-folder, rename or look, FAULT is nospace,
    /// io or abort, and AFTER matching operations go through first. Black-box tests start an agent with it (`TANDEM_TEST_DISK_FAULTS`) to crash
    /// it at an exact step.
    ///
    /// # Errors
    /// The part of the plan that cannot be read.
    pub fn from_plan(plan: &str) -> Result<FaultyDisk, String> {
        let disk = FaultyDisk::new();
        for part in plan.split(';').filter(|p| !p.trim().is_empty()) {
            let fields: Vec<&str> = part.trim().split(':').collect();
            let (step, name, fault, times, after) = match fields.as_slice() {
                [s, n, f] => (*s, *n, *f, "1", "0"),
                [s, n, f, t] => (*s, *n, *f, *t, "0"),
                [s, n, f, t, a] => (*s, *n, *f, *t, *a),
                _ => return Err(format!("{part:?} is not STEP:NAME:FAULT[:TIMES[:AFTER]]")),
            };
            let step = match step {
                "create" => Step::Create,
                "write" => Step::Write,
                "sync" => Step::Sync,
                "sync-folder" => Step::SyncFolder,
                "rename" => Step::Rename,
                "look" => Step::Look,
                other => return Err(format!("{other:?} is not a step")),
            };
            let injected = match fault {
                "nospace" => Injected::NoSpace,
                "io" => Injected::Io,
                "abort" => Injected::Abort,
                other => return Err(format!("{other:?} is not a fault")),
            };
            let number = |text: &str| {
                text.parse::<u32>()
                    .map_err(|_| format!("{text:?} in {part:?} is not a number"))
            };
            disk.lock().push(Fault {
                step,
                name: name.to_owned(),
                injected,
                times: number(times)?,
                after: number(after)?,
            });
        }
        Ok(disk)
    }
}

impl Disk for FaultyDisk {
    fn create(&self, temp: &Path, target: &Path) -> io::Result<fs::File> {
        self.inject(Step::Create, target)?;
        OsDisk.create(temp, target)
    }

    fn write_at(&self, file: &fs::File, target: &Path, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inject(Step::Write, target)?;
        OsDisk.write_at(file, target, buf, offset)
    }

    fn sync(&self, file: &fs::File, target: &Path) -> io::Result<()> {
        self.inject(Step::Sync, target)?;
        OsDisk.sync(file, target)
    }

    fn sync_folder(&self, dir: &Path) -> io::Result<()> {
        self.inject(Step::SyncFolder, dir)?;
        OsDisk.sync_folder(dir)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inject(Step::Rename, to)?;
        OsDisk.rename(from, to)
    }

    fn rename_no_replace(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inject(Step::Rename, to)?;
        OsDisk.rename_no_replace(from, to)
    }

    fn symlink_metadata(&self, path: &Path) -> io::Result<fs::Metadata> {
        self.inject(Step::Look, path)?;
        OsDisk.symlink_metadata(path)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_plan_from_text_lets_operations_through_first_and_refuses_what_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let disk = FaultyDisk::from_plan("rename:/b:io:1:2; look:/zz:nospace").unwrap();
        assert_eq!(disk.pending(), 2);
        for _ in 0..2 {
            fs::write(&a, b"x").unwrap();
            disk.rename(&a, &b).unwrap();
        }
        fs::write(&a, b"x").unwrap();
        assert_eq!(disk.rename(&a, &b).unwrap_err().raw_os_error(), Some(5));
        disk.rename(&a, &b).unwrap();
        for bad in [
            "rename:/b",
            "jump:/b:io",
            "rename:/b:melt",
            "rename:/b:io:x",
        ] {
            let err = FaultyDisk::from_plan(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
    }

    #[test]
    fn planned_faults_happen_as_often_as_planned_and_only_where_named() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, b"x").unwrap();
        let disk = FaultyDisk::new();
        disk.plan(Step::Rename, "/b", Injected::Io, 1);
        disk.plan(Step::Look, "/a", Injected::Change(b"y".to_vec()), 1);
        assert_eq!(disk.pending(), 2);
        let refused = disk.rename(&a, &b).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(5));
        assert!(a.exists(), "a failed rename moved nothing");
        assert_eq!(
            disk.symlink_metadata(&a).unwrap().len(),
            2,
            "changed under us"
        );
        assert_eq!(disk.symlink_metadata(&a).unwrap().len(), 2, "only once");
        disk.rename(&a, &b).unwrap();
        assert_eq!(disk.pending(), 0);
        disk.plan(Step::Create, "", Injected::NoSpace, 1);
        let full = disk
            .create(&dir.path().join("t"), &dir.path().join("d/x"))
            .unwrap_err();
        assert_eq!(full.kind(), io::ErrorKind::StorageFull);
    }
}
