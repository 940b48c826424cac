//! `tandemctl service install|uninstall [--user] [--dry-run]`: the agent as a service of this
//! machine, from the unit files in `packaging/` (systemd on Linux, launchd on macOS).
//!
//! Each command is a plan of steps (write a file, run a program, remove a file), printed as it
//! is carried out, or only printed with `--dry-run`.
//!
//! Must not: connect to the agent, or touch the agent's home and data (an uninstall leaves
//! them for a later install).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, anyhow, bail};

use crate::cli::{ServiceArgs, ServiceCommand};
use crate::{Failure, Outcome};

const SYSTEM_UNIT: &str = include_str!("../../packaging/systemd/tandemd.service");
const USER_UNIT: &str = include_str!("../../packaging/systemd/user/tandemd.service");
const SYSUSERS: &str = include_str!("../../packaging/systemd/tandem.sysusers");
const PLIST: &str = include_str!("../../packaging/launchd/net.tandem.tandemd.plist");
/// Where the packaged units expect the agent; an install points them at the one found here.
const PACKAGED_BINARY: &str = "/usr/bin/tandemd";
const PLIST_BINARY: &str = "/usr/local/bin/tandemd";
const LABEL: &str = "net.tandem.tandemd";

/// One thing an install or uninstall does.
#[derive(Debug)]
enum Step {
    Write { path: PathBuf, text: String },
    Run { program: String, args: Vec<String> },
    Remove { path: PathBuf },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Write { path, .. } => write!(f, "write {}", path.display()),
            Step::Run { program, args } => write!(f, "run {program} {}", args.join(" ")),
            Step::Remove { path } => write!(f, "remove {}", path.display()),
        }
    }
}

fn run_step(program: &str, args: &[&str]) -> Step {
    Step::Run {
        program: program.into(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
    }
}

/// Carries out `service install|uninstall`.
pub fn run(cmd: &ServiceCommand, home: Option<&Path>) -> Result<Outcome, Failure> {
    let (args, install) = match cmd {
        ServiceCommand::Install(a) => (a, true),
        ServiceCommand::Uninstall(a) => (a, false),
    };
    let steps = plan(args, install, home).map_err(Failure::Other)?;
    for step in &steps {
        if args.dry_run {
            println!("would {step}");
            if let Step::Write { text, .. } = step {
                for line in text.lines() {
                    println!("    {line}");
                }
            }
            continue;
        }
        carry_out(step)
            .with_context(|| format!("could not {step}"))
            .map_err(Failure::Other)?;
        println!("did {step}");
    }
    if !args.dry_run {
        println!("{}", after(args, install));
    }
    Ok(Outcome::Success)
}

fn carry_out(step: &Step) -> anyhow::Result<()> {
    match step {
        Step::Write { path, text } => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, text)?;
        }
        Step::Run { program, args } => {
            let out = Command::new(program).args(args).output().with_context(|| {
                format!("{program} is not on this machine's PATH; is this a systemd system?")
            })?;
            if !out.status.success() {
                bail!(
                    "{program} exited with {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Step::Remove { path } => match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        },
    }
    Ok(())
}

/// What to do next, after a real install or uninstall.
fn after(args: &ServiceArgs, install: bool) -> String {
    let user = if args.user { " --user" } else { "" };
    match (install, cfg!(target_os = "macos")) {
        (true, false) => format!(
            "the agent runs as a service; see it with: systemctl{user} status tandemd, and \
             its log with: journalctl{} -u tandemd",
            if args.user { " --user" } else { "" }
        ),
        (true, true) => format!("the agent runs as the launchd job {LABEL}"),
        (false, _) => {
            "the service is removed; the agent's home and data are left where they were".into()
        }
    }
}

fn plan(args: &ServiceArgs, install: bool, home: Option<&Path>) -> anyhow::Result<Vec<Step>> {
    if !args.user && !args.dry_run && !is_root() {
        bail!(
            "the system service needs root: run this with sudo, or use --user for a service \
             of your own"
        );
    }
    let binary = if install {
        tandemd_path()?
    } else {
        PathBuf::from(PACKAGED_BINARY)
    };
    if cfg!(target_os = "macos") {
        launchd_plan(args, install, &binary, home)
    } else {
        systemd_plan(args, install, &binary, home)
    }
}

fn is_root() -> bool {
    // No libc call for a user ID in std: `id -u` is on every Unix.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The `tandemd` beside this `tandemctl`, else the first on the PATH.
fn tandemd_path() -> anyhow::Result<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("tandemd")));
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("tandemd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    beside
        .into_iter()
        .chain(on_path)
        .find(|p| p.is_file())
        .map(|p| p.canonicalize().unwrap_or(p))
        .ok_or_else(|| {
            anyhow!(
                "no tandemd found beside tandemctl or on the PATH; install it first with: \
                 cargo install --locked --path daemon"
            )
        })
}

fn config_home() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x));
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".config"))
        .ok_or_else(|| anyhow!("HOME is not set; set it to your home folder"))
}

/// The unit with the agent's path, and `--home` when one was given.
fn unit_text(template: &str, binary: &Path, home: Option<&Path>) -> String {
    template
        .lines()
        .map(|line| match line.strip_prefix("ExecStart=") {
            Some(rest) => {
                let mut cmd = rest.replacen(PACKAGED_BINARY, &binary.to_string_lossy(), 1);
                if let Some(home) = home {
                    if let Some(at) = cmd.find(" --home ") {
                        cmd.truncate(at);
                    }
                    cmd.push_str(&format!(" --home {}", home.display()));
                }
                format!("ExecStart={cmd}\n")
            }
            None => format!("{line}\n"),
        })
        .collect()
}

fn systemd_plan(
    args: &ServiceArgs,
    install: bool,
    binary: &Path,
    home: Option<&Path>,
) -> anyhow::Result<Vec<Step>> {
    let (unit_path, ctl): (PathBuf, Vec<&str>) = if args.user {
        (
            config_home()?.join("systemd/user/tandemd.service"),
            vec!["--user"],
        )
    } else {
        (PathBuf::from("/etc/systemd/system/tandemd.service"), vec![])
    };
    let systemctl = |more: &[&str]| {
        let all: Vec<&str> = ctl.iter().chain(more).copied().collect();
        run_step("systemctl", &all)
    };
    let mut steps = Vec::new();
    if install {
        if !args.user {
            let sysusers = PathBuf::from("/etc/sysusers.d/tandem.conf");
            steps.push(Step::Write {
                path: sysusers.clone(),
                text: SYSUSERS.to_owned(),
            });
            steps.push(run_step("systemd-sysusers", &[&sysusers.to_string_lossy()]));
        }
        let template = if args.user { USER_UNIT } else { SYSTEM_UNIT };
        steps.push(Step::Write {
            path: unit_path,
            text: unit_text(template, binary, home),
        });
        steps.push(systemctl(&["daemon-reload"]));
        steps.push(systemctl(&["enable", "--now", "tandemd.service"]));
    } else {
        steps.push(systemctl(&["disable", "--now", "tandemd.service"]));
        steps.push(Step::Remove { path: unit_path });
        steps.push(systemctl(&["daemon-reload"]));
    }
    Ok(steps)
}

fn launchd_plan(
    args: &ServiceArgs,
    install: bool,
    binary: &Path,
    home: Option<&Path>,
) -> anyhow::Result<Vec<Step>> {
    let (path, domain) = if args.user {
        let home_dir =
            std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set; set it"))?;
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .context("asking `id -u` for your user ID")?;
        (
            PathBuf::from(home_dir).join(format!("Library/LaunchAgents/{LABEL}.plist")),
            format!("gui/{uid}"),
        )
    } else {
        (
            PathBuf::from(format!("/Library/LaunchDaemons/{LABEL}.plist")),
            "system".to_owned(),
        )
    };
    let plist = path.to_string_lossy().into_owned();
    Ok(if install {
        let mut program = format!("        <string>{}</string>", binary.display());
        if let Some(home) = home {
            program.push_str(&format!(
                "\n        <string>--home</string>\n        <string>{}</string>",
                home.display()
            ));
        }
        let text = PLIST.replacen(
            &format!("        <string>{PLIST_BINARY}</string>"),
            &program,
            1,
        );
        vec![
            Step::Write {
                path: path.clone(),
                text,
            },
            run_step("launchctl", &["bootstrap", &domain, &plist]),
        ]
    } else {
        vec![
            run_step("launchctl", &["bootout", &format!("{domain}/{LABEL}")]),
            Step::Remove { path },
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_points_at_the_agent_found_and_the_home_given() {
        let text = unit_text(
            SYSTEM_UNIT,
            Path::new("/opt/t/tandemd"),
            Some(Path::new("/data/t")),
        );
        assert!(
            text.contains("\nExecStart=/opt/t/tandemd --home /data/t\n"),
            "{text}"
        );
        let text = unit_text(USER_UNIT, Path::new("/home/a/.cargo/bin/tandemd"), None);
        assert!(
            text.contains("\nExecStart=/home/a/.cargo/bin/tandemd\n"),
            "{text}"
        );
    }
}
