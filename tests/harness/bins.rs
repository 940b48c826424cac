//! Finding the `tandemd` and `tandemctl` binaries under test.
//!
//! As ripgrep's `tests/util.rs` does: an environment variable first (`TANDEMD`, `TANDEMCTL`),
//! else the cargo target folder beside the test executable. Must not: build anything; the test
//! command (`cargo build --workspace && cargo test -p tandem-tests`) does that first.

use std::env;
use std::path::PathBuf;

/// Path of the `tandemd` binary.
pub fn tandemd() -> PathBuf {
    find("TANDEMD", "tandemd")
}

/// Path of the `tandemctl` binary.
pub fn tandemctl() -> PathBuf {
    find("TANDEMCTL", "tandemctl")
}

fn find(var: &str, name: &str) -> PathBuf {
    if let Some(given) = env::var_os(var) {
        let path = PathBuf::from(given);
        assert!(
            path.is_file(),
            "{var}={} is not a file; point it at a built {name} or unset it",
            path.display()
        );
        return path;
    }
    // The test executable is target/<profile>/deps/<name>-<hash>; binaries sit in target/<profile>.
    let exe = env::current_exe().expect("path of the running test executable");
    let mut dir = exe
        .parent()
        .expect("the test executable lives in a folder")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{name} not found at {}; run `cargo build --workspace` first (or set {var} to its path)",
        path.display()
    );
    path
}
