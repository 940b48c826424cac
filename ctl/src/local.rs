//! Commands about `tandemctl` itself, run without an agent: shell completions and manual
//! pages, both generated from the clap definitions in `cli`.
//!
//! Must not: connect to the agent.

use std::io::{self, Write};
use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::Cli;
use crate::{Failure, Outcome};

/// Prints the completion script for `shell` to stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<Outcome, Failure> {
    let mut cmd = Cli::command();
    let mut out = io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, "tandemctl", &mut out);
    out.flush()?;
    Ok(Outcome::Success)
}

/// Writes `tandemctl.1` and a page per subcommand (`tandemctl-source.1`, …) into `dir`.
pub fn man(dir: &Path) -> Result<Outcome, Failure> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("making {}", dir.display()))
        .map_err(Failure::Other)?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing manual pages into {}", dir.display()))
        .map_err(Failure::Other)?;
    println!("wrote the manual pages into {}", dir.display());
    Ok(Outcome::Success)
}
