//! Story: the receiving side's disk fills up. The item that does not fit gets an error naming it
//! and what to do, no temp file is left behind, everything else still syncs, and the item
//! arrives on its own once there is space again.
//!
//! Needs root to mount a small tmpfs; without it the test says why and skips (CI runs as root).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tandem_tests::tree::{self, PseudoRandom};
use tandem_tests::{Agent, backoff, num, pair};

const SYNC: Duration = Duration::from_secs(60);

/// A tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Result<SmallDisk, String> {
        fs::create_dir_all(path).map_err(|e| format!("cannot create the mount point: {e}"))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tandem-test"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount failed (not root, or no tmpfs here): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallDisk {
            path: path.to_path_buf(),
        })
    }

    fn grow(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .expect("run mount -o remount");
        assert!(st.success(), "remount {} to {size}", self.path.display());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy, so a still-running agent cannot keep the mount alive after the test.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[test]
fn a_full_disk_fails_one_item_clearly_and_it_arrives_once_there_is_space() {
    let a = Agent::start();
    let b = Agent::start();
    let da = a.data_dir("docs");
    let db = b.data_dir("docs");
    let disk = match SmallDisk::mount(&db, "4m") {
        Ok(disk) => disk,
        Err(why) => {
            tandem_tests::skip(&format!(
                "this test needs to mount a small tmpfs as root: {why}"
            ));
            return;
        }
    };
    for i in 0..20 {
        tree::write(
            &da.join(format!("small/{i:02}.txt")),
            format!("small file {i}\n").repeat(100),
        );
    }
    tree::write(&da.join("big.bin"), PseudoRandom::new(5).bytes(12 << 20));
    pair(&a, &b);
    a.share("docs", &da, &[&b]);
    b.share("docs", &db, &[&a]);
    b.await_connected(&[&a], SYNC);

    // The small files arrive; the big one cannot, and says why.
    let progress = backoff::retry_with_backoff(Duration::from_secs(30), || {
        let p = b.progress("docs", &a);
        let error = p["last_error"].as_str().unwrap_or_default().to_owned();
        (error.contains("big.bin") && error.contains("no space left")).then_some(p)
    })
    .unwrap_or_else(|| panic!("B never reported big.bin as not fitting: {:#}", b.status()));
    let error = progress["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("free some space"), "{error}");
    for i in 0..20 {
        assert!(
            db.join(format!("small/{i:02}.txt")).exists(),
            "small/{i:02}.txt synced"
        );
    }
    assert!(!db.join("big.bin").exists());
    let leftovers = tree::temps(&db);
    assert!(
        leftovers.is_empty(),
        "temp files left on the full disk: {leftovers:?}"
    );
    let out = b.ctl(&["wait", "--timeout", "0.5"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "not in sync while an item waits for space"
    );

    // Space comes back: the retry brings the file without anyone asking.
    disk.grow("64m");
    b.sync_with(&[&a], SYNC);
    a.sync_with(&[&b], SYNC);
    tree::assert_same_trees(&da, &db);
    assert_eq!(num(&b.source("docs"), "files"), 21);
}
