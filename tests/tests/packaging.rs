//! Packaging: the systemd units pass `systemd-analyze verify` as the tests install them, the
//! service commands say what they would do, and the Debian package builds, installs with
//! `dpkg -i`, and gives a working `tandemd --version`, `man tandemctl` and bash completion.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tandem_tests::{bins, skip};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lies in the repository")
        .to_path_buf()
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The manual pages of both programs, as the package installs them, for `man` to find.
fn man_pages(dir: &Path) {
    let man1 = dir.join("man1");
    let out = Command::new(bins::tandemctl())
        .arg("man")
        .arg(&man1)
        .output()
        .expect("run tandemctl man");
    assert!(out.status.success(), "{}", text(&out));
    let page = Command::new(bins::tandemd())
        .arg("--man")
        .output()
        .expect("run tandemd --man");
    assert!(page.status.success(), "{}", text(&page));
    fs::write(man1.join("tandemd.1"), page.stdout).expect("write tandemd.1");
}

#[test]
fn both_units_pass_systemd_analyze_verify() {
    if !have("systemd-analyze") {
        skip("systemd-analyze is not installed (Debian package systemd)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let man = dir.path().join("man");
    man_pages(&man);
    let tandemd = bins::tandemd();
    // The tests' own install: the packaged units, pointed at the agent under test.
    for (unit, user) in [
        ("packaging/systemd/tandemd.service", false),
        ("packaging/systemd/user/tandemd.service", true),
    ] {
        let units = dir.path().join(if user { "user" } else { "system" });
        fs::create_dir_all(&units).expect("units dir");
        let source = fs::read_to_string(repo().join(unit)).expect("read the unit");
        assert!(source.contains("ExecStart=/usr/bin/tandemd"), "{unit}");
        let installed = units.join("tandemd.service");
        fs::write(
            &installed,
            source.replace("/usr/bin/tandemd", &tandemd.to_string_lossy()),
        )
        .expect("install the unit");
        let runtime = dir.path().join("runtime");
        fs::create_dir_all(&runtime).expect("runtime dir");
        let mut cmd = Command::new("systemd-analyze");
        if user {
            cmd.arg("--user").env("XDG_RUNTIME_DIR", &runtime);
        }
        let out = cmd
            .arg("verify")
            .arg(&installed)
            .env("MANPATH", &man)
            .output()
            .expect("run systemd-analyze");
        let said = text(&out);
        assert!(out.status.success(), "{unit}: {said}");
        let about_ours: Vec<&str> = said
            .lines()
            .filter(|l| l.contains("tandemd.service"))
            .collect();
        assert!(about_ours.is_empty(), "{unit}: {said}");
    }
}

#[test]
fn service_install_dry_run_says_what_it_would_do_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config");
    let out = Command::new(bins::tandemctl())
        .args(["service", "install", "--user", "--dry-run", "--home"])
        .arg(dir.path().join("home"))
        .env("XDG_CONFIG_HOME", &config)
        .output()
        .expect("run tandemctl");
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    let unit = config.join("systemd/user/tandemd.service");
    assert!(
        said.contains(&format!("would write {}", unit.display())),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "ExecStart={} --home {}",
            bins::tandemd()
                .canonicalize()
                .expect("tandemd path")
                .display(),
            dir.path().join("home").display()
        )),
        "the unit runs the agent found, with the home given: {said}"
    );
    assert!(
        said.contains("would run systemctl --user enable --now tandemd.service"),
        "{said}"
    );
    assert!(!unit.exists(), "a dry run writes nothing");
    let out = Command::new(bins::tandemctl())
        .args(["service", "uninstall", "--user", "--dry-run"])
        .env("XDG_CONFIG_HOME", &config)
        .output()
        .expect("run tandemctl");
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("would run systemctl --user disable --now tandemd.service"),
        "{said}"
    );
}

#[test]
fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bins::tandemctl())
            .args(["completions", shell])
            .output()
            .expect("run tandemctl");
        assert!(out.status.success(), "{}", text(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("tandemctl") && script.contains("source"),
            "{shell}"
        );
    }
    let out = Command::new(bins::tandemctl())
        .args(["completions", "tcsh"])
        .output()
        .expect("run tandemctl");
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
    assert!(text(&out).contains("tcsh"), "{}", text(&out));
}

#[test]
fn both_programs_say_their_version() {
    for bin in [bins::tandemd(), bins::tandemctl()] {
        let out = Command::new(&bin)
            .arg("--version")
            .output()
            .expect("run --version");
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains(env!("CARGO_PKG_VERSION")),
            "{}",
            text(&out)
        );
    }
}

#[test]
fn the_debian_package_builds_installs_and_works() {
    if !is_root() {
        skip("dpkg -i needs root (CI runs as root)");
        return;
    }
    let cargo_deb = std::env::var("CARGO_DEB").unwrap_or_else(|_| "cargo-deb".into());
    if !have("dpkg") || !have(&cargo_deb) {
        skip("dpkg or cargo-deb is not installed (cargo install cargo-deb --locked)");
        return;
    }
    let built = Command::new(repo().join("packaging/build-deb"))
        .env("PROFILE", "dev")
        .env("CARGO_DEB", &cargo_deb)
        .current_dir(repo())
        .output()
        .expect("run packaging/build-deb");
    assert!(built.status.success(), "{}", text(&built));
    let deb = String::from_utf8_lossy(&built.stdout)
        .lines()
        .rev()
        .find(|l| l.ends_with(".deb"))
        .map(|l| repo().join(l.trim()))
        .expect("build-deb names the package it made");
    let installed = Command::new("dpkg")
        .arg("-i")
        .arg(&deb)
        .output()
        .expect("run dpkg");
    // Removed again whatever the checks say, so the machine is left as it was.
    let checks = std::panic::catch_unwind(|| {
        assert!(installed.status.success(), "{}", text(&installed));
        let version = Command::new("/usr/bin/tandemd")
            .arg("--version")
            .output()
            .expect("run the installed tandemd");
        assert!(version.status.success(), "{}", text(&version));
        assert!(text(&version).starts_with("tandemd "), "{}", text(&version));
        let page = Command::new("sh")
            .args(["-c", "MANPAGER=cat man tandemctl"])
            .output()
            .expect("run man");
        assert!(page.status.success(), "{}", text(&page));
        assert!(text(&page).contains("tandemctl"), "{}", text(&page));
        // Bash completes a subcommand from the installed script.
        let completed = Command::new("bash")
            .args([
                "-c",
                "source /usr/share/bash-completion/completions/tandemctl; \
                 COMP_WORDS=(tandemctl sou); COMP_CWORD=1; _tandemctl tandemctl sou tandemctl; \
                 echo \"${COMPREPLY[@]}\"",
            ])
            .output()
            .expect("run bash");
        assert!(
            String::from_utf8_lossy(&completed.stdout).contains("source"),
            "{}",
            text(&completed)
        );
        for path in [
            "/usr/lib/systemd/system/tandemd.service",
            "/usr/lib/systemd/user/tandemd.service",
            "/usr/lib/sysusers.d/tandem.conf",
        ] {
            assert!(Path::new(path).is_file(), "{path} is installed");
        }
    });
    let removed = Command::new("dpkg")
        .args(["--purge", "tandem"])
        .output()
        .expect("run dpkg --purge");
    if let Err(panic) = checks {
        std::panic::resume_unwind(panic);
    }
    assert!(removed.status.success(), "{}", text(&removed));
}
