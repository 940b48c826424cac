//! What record tests share: sharing a source in a record format, and reading every file the
//! agents wrote with parsers that are not Tandem's (Python's `vobject` and `icalendar`, from
//! PyPI, which `tests/run` installs into `target/pyenv`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::Agent;
use crate::process::{describe, run_bounded};

impl Agent {
    /// `tandemctl source add ID PATH --format F --peer …`, which must succeed.
    pub fn share_as(&self, id: &str, path: &Path, format: &str, peers: &[&Agent]) -> Value {
        let path = path.to_str().expect("temp paths are UTF-8");
        let devices: Vec<String> = peers.iter().map(|p| p.device_id()).collect();
        let mut args = vec!["source", "add", id, path, "--format", format];
        for device in &devices {
            args.extend(["--peer", device.as_str()]);
        }
        self.json(&args)
    }
}

/// The Python that has `vobject` and `icalendar`: `TANDEM_PYTHON`, else `target/pyenv`. `None`
/// (with the reason) when neither has them.
pub fn validator_python() -> Result<PathBuf, String> {
    python_with("vobject, icalendar")
}

/// A Python that can import `modules` (comma-separated, as an `import` line has them):
/// `TANDEM_PYTHON`, else `target/pyenv`, where `tests/run` installs them.
pub fn python_with(modules: &str) -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = std::env::var_os("TANDEM_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python")])
        .collect();
    for python in &candidates {
        let ok = Command::new(python)
            .args(["-c", &format!("import {modules}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(python.clone());
        }
    }
    Err(format!(
        "no Python with {modules} (tried {candidates:?}); tests/run installs them into target/pyenv"
    ))
}

/// Reads every file in `files` with the independent parsers; fails naming the ones they
/// refuse. Returns what they said.
pub fn validate_with_python(python: &Path, files: &[PathBuf]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/validate_records.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).args(files);
    let out = run_bounded(&mut cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "an independent parser refused a file Tandem wrote:\n{}",
        describe(&cmd, &out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file of a folder with `extension`, outside the agent's own folder.
pub fn files_with(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == extension))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Longest a record file may take to show what its device applied.
pub const RECORD_SYNC: Duration = Duration::from_secs(90);

/// The text of a file, which must be readable.
pub fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Replaces `from` by `to` in a file, as a user editing it would; `from` must be there.
pub fn edit_text(path: &Path, from: &str, to: &str) {
    let text = read_text(path);
    assert!(
        text.contains(from),
        "{} does not hold {from:?}:\n{text}",
        path.display()
    );
    std::fs::write(path, text.replacen(from, to, 1)).expect("write the edit");
}

/// Waits until `path` holds `want` (a device applies what it received, then says it is in
/// sync; this only waits for what `wait` already promised); gives the text.
pub fn text_holding(path: &Path, want: &str) -> String {
    let mut last = String::new();
    let found = crate::backoff::retry_with_backoff(RECORD_SYNC, || {
        last = std::fs::read_to_string(path).unwrap_or_default();
        last.contains(want).then_some(())
    });
    assert!(
        found.is_some(),
        "{} never held {want:?}:\n{last}",
        path.display()
    );
    last
}
