//! `tandemd`: the Tandem agent. Parses flags, takes the home, starts [`tandem::agent::start`], serves
//! [`tandem::control::serve`] until a signal, then stops the agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Keeps data sources the same on every device that shares them.
#[derive(Debug, Parser)]
#[command(name = "tandemd", version, about)]
struct Args {
    /// Folder for everything the agent owns: config, identity, database, socket, logs.
    #[arg(long, env = "TANDEM_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// Address for the peer service (overrides `listen` in config.toml).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// What this process is: an agent that syncs sources, or a hub that keeps sealed
    /// bundles for agents that are never online together.
    #[arg(long, value_enum, default_value_t = Role::Agent)]
    role: Role,
    /// Print this program's manual page (roff) and exit, for packagers.
    #[arg(long, hide = true)]
    man: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    Agent,
    Hub,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.man {
        use clap::CommandFactory;
        let mut out = std::io::stdout().lock();
        return match clap_mangen::Man::new(Args::command()).render(&mut out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tandemd: writing the manual page: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandemd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let home = match args.home {
        Some(home) => home,
        None => tandem::config::default_home()?,
    };
    let home = tandem::config::Home::prepare(&home)?;
    let lock = home.lock()?;
    let _log_guard = tandem::logging::init(&home.log_dir()).context("cannot start logging")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            on_signal.cancel();
        });
        if args.role == Role::Hub {
            return run_hub(&home, args.listen, shutdown).await;
        }
        let running = tandem::agent::start(&home, args.listen)
            .await
            .map_err(anyhow::Error::from)?;
        let reloads = tokio::spawn(reload_on_hangup(home.clone(), running.handle()));
        let served =
            tandem::control::serve(&home.control_socket(), running.handle(), shutdown).await;
        reloads.abort();
        if let Err(e) = &served {
            tracing::warn!(error = %e, "control socket failed; shutting down");
        }
        running.stop().await;
        served.map_err(anyhow::Error::from)
    })?;
    drop(lock);
    Ok(())
}

async fn run_hub(
    home: &tandem::config::Home,
    listen: Option<SocketAddr>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let hub = std::sync::Arc::new(tandem::hub::run::start(home, listen).await?);
    // A hub's settings are its storage; it reads them at start, and a SIGHUP must not end it.
    let hangups = tokio::spawn(async {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut hangups) = signal(SignalKind::hangup()) {
            while hangups.recv().await.is_some() {
                tracing::info!(
                    "a hub reads config.toml at start only; restart it to change settings"
                );
            }
        }
    });
    let control = tandem::hub::control::HubControl::new(hub.clone());
    let served = tandem::control::serve_service(&home.control_socket(), control, shutdown).await;
    hangups.abort();
    if let Err(e) = &served {
        tracing::warn!(error = %e, "control socket failed; shutting down");
    }
    match std::sync::Arc::try_unwrap(hub) {
        Ok(hub) => hub.stop().await,
        Err(_) => tracing::warn!("hub still in use at shutdown"),
    }
    served.map_err(anyhow::Error::from)
}

/// Reads `config.toml` again on every SIGHUP and hands it to the agent; a file that does not
/// parse is refused, and the agent goes on with the settings it has.
async fn reload_on_hangup(home: tandem::config::Home, agent: tandem::agent::AgentHandle) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; config.toml is read at start only");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        let config = match tandem::config::Config::load(&home) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "config.toml not reloaded: fix it and send SIGHUP again; the agent goes on with the settings it had"
                );
                continue;
            }
        };
        match agent.reload(config).await {
            Ok(said) if said.is_empty() => {
                tracing::info!("config.toml reloaded: nothing changed");
            }
            Ok(said) => {
                for line in said {
                    tracing::info!("config.toml reloaded: {line}");
                }
            }
            Err(e) => tracing::warn!(error = %e, "config.toml not reloaded"),
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
            // Without a handler Ctrl-C still ends the process, just without a clean shutdown.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
