//! `tandemctl`: a thin command-line client of the local `tandemd` control socket.
//!
//! Each command makes one RPC and prints the reply as text or `--json`. This file owns the one
//! mapping from outcome to exit code:
//!
//! | code | meaning |
//! | ---- | ------- |
//! | 0 | success (also: stdout closed early, e.g. `tandemctl watch \| head`) |
//! | 1 | the agent returned an error, or another runtime failure |
//! | 2 | usage error (bad flags or arguments) |
//! | 3 | no agent is running for this home |
//! | 4 | `wait` timed out before every source was in sync |
//! | 5 | `doctor` found something that fails |
//!
//! Must not: hold daemon logic or state; everything it prints comes from the agent's reply.

mod cli;
mod commands;
mod connect;
mod live;
mod local;
mod output;
mod service;

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

/// How a command ended when it did what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Success,
    /// `wait` returned before every source was in sync.
    NotInSync,
    /// `doctor` found something that fails.
    Unhealthy,
}

/// Why a command did not do what was asked.
#[derive(Debug)]
pub enum Failure {
    /// Nothing listens on `<home>/control.sock`.
    NoAgent {
        /// The home whose agent was looked for.
        home: PathBuf,
    },
    /// The agent answered with an error.
    Agent(tonic::Status),
    /// The command line is wrong in a way clap can't see.
    Usage(String),
    /// Writing to stdout failed.
    Output(io::Error),
    /// Anything else, with context.
    Other(anyhow::Error),
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Failure::Agent(status)
    }
}

impl From<io::Error> for Failure {
    fn from(err: io::Error) -> Self {
        Failure::Output(err)
    }
}

fn main() -> ExitCode {
    // Exits 2 on usage errors, 0 for --help and --version.
    let cli = Cli::parse();
    let result = run(cli);
    ExitCode::from(report(result))
}

fn run(cli: Cli) -> Result<Outcome, Failure> {
    // Commands about this machine or this program, not the agent: no socket is needed.
    match cli.command {
        Command::Completions { shell } => return local::completions(shell),
        Command::Man { dir } => return local::man(&dir),
        Command::Service(cmd) => return service::run(&cmd, cli.home.as_deref()),
        _ => {}
    }
    let home = connect::resolve_home(cli.home)?;
    // One RPC at a time: a single-threaded runtime is all a client needs.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Failure::Other(anyhow::Error::new(err).context("starting the runtime")))?;
    runtime.block_on(async {
        let client = connect::connect(&home).await?;
        let mut ctx = commands::Ctx {
            client,
            json: cli.json,
            out: io::stdout().lock(),
        };
        commands::run(&mut ctx, cli.command).await
    })
}

/// Prints what went wrong to stderr and returns the exit code: the one place codes are chosen.
fn report(result: Result<Outcome, Failure>) -> u8 {
    match result {
        Ok(Outcome::Success) => 0,
        Ok(Outcome::NotInSync) => 4,
        Ok(Outcome::Unhealthy) => 5,
        // The reader went away (`| head`, a test closing its pipe): a normal stop.
        Err(Failure::Output(err)) if err.kind() == io::ErrorKind::BrokenPipe => 0,
        Err(Failure::NoAgent { home }) => {
            let socket = connect::socket_path(&home);
            eprintln!(
                "tandemctl: no tandemd is running for home {home} (no control socket at {socket}); start it with: tandemd --home {home}",
                home = home.display(),
                socket = socket.display(),
            );
            3
        }
        Err(Failure::Agent(status)) => {
            if status.message().is_empty() {
                eprintln!("tandemctl: the agent failed: {}", status.code());
            } else {
                eprintln!("tandemctl: {}", status.message());
            }
            1
        }
        Err(Failure::Usage(message)) => {
            eprintln!("tandemctl: {message}");
            2
        }
        Err(Failure::Output(err)) => {
            eprintln!("tandemctl: writing output: {err}");
            1
        }
        Err(Failure::Other(err)) => {
            eprintln!("tandemctl: {err:#}");
            1
        }
    }
}
