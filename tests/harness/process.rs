//! Running a command to its end within a time limit, and describing what it did.
//!
//! Must not: interpret the output; callers decide what success means.

use std::fmt::Write as _;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Runs `cmd` to completion with piped output. If it is still running after `limit`, it is
/// killed and the test fails, naming the command.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let shown = show_command(cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // The receiver is gone only if the test already failed on the time limit.
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("cannot collect the output of {shown}: {e}"),
        Err(_) => {
            // The waiter thread still owns the child, so it has not been reaped and the pid is
            // still ours to kill.
            let killed = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{shown} did not finish within {limit:?} (killed: {killed:?})");
        }
    }
}

/// The command line as a person would type it.
pub fn show_command(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// A ripgrep-style report of one finished command: what ran, how it ended, what it printed.
pub fn describe(cmd: &Command, output: &Output) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(s, "command: {}", show_command(cmd));
    let _ = writeln!(s, "status:  {}", output.status);
    let _ = writeln!(
        s,
        "stdout:\n{}",
        String::from_utf8_lossy(&output.stdout).trim_end()
    );
    let _ = writeln!(
        s,
        "stderr:\n{}",
        String::from_utf8_lossy(&output.stderr).trim_end()
    );
    s
}
