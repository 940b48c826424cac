//! One function per subcommand: build the request, make the one RPC, print the reply.
//!
//! Must not: hold daemon logic (validation of IDs, formats or paths beyond making PATH absolute
//! is the agent's job) or choose exit codes; it reports an [`Outcome`] or a [`Failure`].

use std::io::Write;
use std::path::Path;

use tandem_proto::control::control_client::ControlClient;
use tandem_proto::control::{
    Ack, HubAddRequest, HubListRequest, IdRequest, PeerAddRequest, PeerListRequest, PeerRequest,
    SourceAddRequest, SourceListRequest, SourceRequest, SourceShareRequest, StatusRequest,
    WaitRequest, WatchRequest,
};
use tonic::transport::Channel;

use crate::cli::{
    self, Command, HubCommand, OptionalSource, PeerCommand, SourceCommand, VersionsCommand,
};
use crate::output;
use crate::{Failure, Outcome};

/// Connection and output settings shared by every command.
pub struct Ctx<W> {
    /// Client on the agent's control socket.
    pub client: ControlClient<Channel>,
    /// Print JSON instead of human text.
    pub json: bool,
    /// Where replies go (stdout in the binary).
    pub out: W,
}

/// Runs `command` against the agent.
///
/// # Errors
/// Agent errors, usage problems the agent can't see (a non-UTF-8 PATH) and output failures.
pub async fn run<W: Write>(ctx: &mut Ctx<W>, command: Command) -> Result<Outcome, Failure> {
    match command {
        Command::Id => id(ctx).await,
        Command::Status { follow: true } => crate::live::follow(ctx).await,
        Command::Status { follow: false } => status(ctx).await,
        Command::Source(SourceCommand::Add {
            id,
            path,
            format,
            peers,
            key,
        }) => source_add(ctx, id, &path, format, peers, key.unwrap_or_default()).await,
        Command::Source(SourceCommand::Key { id }) => {
            let reply = ctx
                .client
                .source_key(SourceRequest { id })
                .await?
                .into_inner();
            if ctx.json {
                output::json_document(&mut ctx.out, &reply)?;
            } else {
                writeln!(ctx.out, "{}", reply.key)?;
            }
            Ok(Outcome::Success)
        }
        Command::Source(SourceCommand::Share { id, device }) => {
            let ack = ctx
                .client
                .source_share(SourceShareRequest {
                    id: id.clone(),
                    device_id: device.clone(),
                })
                .await?
                .into_inner();
            print_ack(ctx, &ack, &format!("source {id} is shared with {device}"))
        }
        Command::Source(SourceCommand::Unshare { id, device }) => {
            let ack = ctx
                .client
                .source_unshare(SourceShareRequest {
                    id: id.clone(),
                    device_id: device.clone(),
                })
                .await?
                .into_inner();
            print_ack(ctx, &ack, &format!("{device} is removed from source {id}"))
        }
        Command::Hub(HubCommand::Add {
            address,
            hub_device,
        }) => {
            let reply = ctx
                .client
                .hub_add(HubAddRequest {
                    address,
                    device_id: hub_device,
                })
                .await?
                .into_inner();
            if ctx.json {
                output::json_document(&mut ctx.out, &reply)?;
            } else {
                writeln!(
                    ctx.out,
                    "added hub {} at {}",
                    reply.device_id, reply.address
                )?;
            }
            Ok(Outcome::Success)
        }
        Command::Hub(HubCommand::List) => {
            let reply = ctx.client.hub_list(HubListRequest {}).await?.into_inner();
            if ctx.json {
                output::json_document(&mut ctx.out, &reply)?;
            } else if reply.hubs.is_empty() {
                writeln!(
                    ctx.out,
                    "no hubs; add one with: tandemctl hub add ADDR HUB-DEVICE"
                )?;
            } else {
                for h in &reply.hubs {
                    writeln!(ctx.out, "{}  {}", h.device_id, h.address)?;
                }
            }
            Ok(Outcome::Success)
        }
        Command::Hub(HubCommand::Remove { hub_device }) => {
            let ack = ctx
                .client
                .hub_remove(PeerRequest {
                    device_id: hub_device.clone(),
                })
                .await?
                .into_inner();
            print_ack(ctx, &ack, &format!("removed hub {hub_device}"))
        }
        Command::Source(SourceCommand::List) => source_list(ctx).await,
        Command::Source(SourceCommand::Remove { id }) => {
            let ack = ctx
                .client
                .source_remove(SourceRequest { id: id.clone() })
                .await?
                .into_inner();
            print_ack(ctx, &ack, &format!("removed source {id}"))
        }
        Command::Peer(PeerCommand::Add { device, address }) => {
            let reply = ctx
                .client
                .peer_add(PeerAddRequest {
                    device_id: device,
                    address: address.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if ctx.json {
                output::json_document(&mut ctx.out, &reply)?;
            } else {
                writeln!(ctx.out, "added peer {}", output::peer_line(&reply))?;
            }
            Ok(Outcome::Success)
        }
        Command::Peer(PeerCommand::Pending) => {
            let reply = ctx
                .client
                .peer_pending(PeerListRequest {})
                .await?
                .into_inner();
            if ctx.json {
                output::json_document(&mut ctx.out, &reply)?;
            } else if reply.peers.is_empty() {
                writeln!(ctx.out, "no device is waiting to be added")?;
            } else {
                let now = output::now_unix_ms();
                for p in &reply.peers {
                    writeln!(
                        ctx.out,
                        "{}  from {}, {}; add it with: tandemctl peer add {}",
                        p.device_id,
                        p.address,
                        output::ago(now, p.last_seen_unix_ms),
                        p.device_id
                    )?;
                }
            }
            Ok(Outcome::Success)
        }
        Command::Source(SourceCommand::Pending) => {
            let reply = ctx
                .client
                .source_pending(SourceListRequest {})
                .await?
                .into_inner();
            if ctx.json {
                output::json_document(&mut ctx.out, &reply)?;
            } else if reply.offers.is_empty() {
                writeln!(ctx.out, "no source is offered")?;
            } else {
                let now = output::now_unix_ms();
                for o in &reply.offers {
                    let take = if o.have {
                        format!("tandemctl source share {} {}", o.source, o.device_id)
                    } else {
                        format!("tandemctl source accept {} PATH", o.source)
                    };
                    writeln!(
                        ctx.out,
                        "{}  {} ({}) from {}, {}; take it with: {take}",
                        o.source,
                        o.kind,
                        o.format,
                        o.device_id,
                        output::ago(now, o.last_seen_unix_ms)
                    )?;
                }
            }
            Ok(Outcome::Success)
        }
        Command::Source(SourceCommand::Accept { id, path, format }) => {
            let path = absolute_path(&path)?;
            let reply = ctx
                .client
                .source_accept(tandem_proto::control::SourceAcceptRequest {
                    id,
                    path,
                    format: format.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if ctx.json {
                output::json_document(&mut ctx.out, &reply)?;
            } else {
                writeln!(
                    ctx.out,
                    "accepted source {}: {} (format {}, shared with {})",
                    reply.id,
                    reply.path,
                    reply.format,
                    reply.peers.join(", ")
                )?;
            }
            Ok(Outcome::Success)
        }
        Command::Peer(PeerCommand::List) => {
            let reply = ctx.client.peer_list(PeerListRequest {}).await?.into_inner();
            if ctx.json {
                output::json_document(&mut ctx.out, &reply)?;
            } else if reply.peers.is_empty() {
                writeln!(
                    ctx.out,
                    "no peers; add one with: tandemctl peer add DEVICE [ADDR]"
                )?;
            } else {
                for p in &reply.peers {
                    writeln!(ctx.out, "{}", output::peer_line(p))?;
                }
            }
            Ok(Outcome::Success)
        }
        Command::Peer(PeerCommand::Remove { device }) => {
            let ack = ctx
                .client
                .peer_remove(PeerRequest {
                    device_id: device.clone(),
                })
                .await?
                .into_inner();
            print_ack(ctx, &ack, &format!("removed peer {device}"))
        }
        Command::Versions(VersionsCommand::List { id, path }) => {
            let reply = ctx
                .client
                .versions_list(tandem_proto::control::VersionsRequest {
                    source: id,
                    path: path.unwrap_or_default(),
                    at: String::new(),
                })
                .await?
                .into_inner();
            if ctx.json {
                output::json_document(&mut ctx.out, &reply)?;
            } else if reply.versions.is_empty() {
                writeln!(ctx.out, "no kept versions")?;
            } else {
                for v in &reply.versions {
                    writeln!(ctx.out, "{}  {}  {}", v.when, output::bytes(v.size), v.path)?;
                }
            }
            Ok(Outcome::Success)
        }
        Command::Versions(VersionsCommand::Restore { id, path, at }) => {
            let ack = ctx
                .client
                .versions_restore(tandem_proto::control::VersionsRequest {
                    source: id,
                    path: path.clone(),
                    at: at.unwrap_or_default(),
                })
                .await?
                .into_inner();
            print_ack(ctx, &ack, &format!("restored {path}"))
        }
        Command::Conflicts(target) => {
            let reply = ctx.client.conflicts(request(&target)).await?.into_inner();
            if ctx.json {
                output::json_document(&mut ctx.out, &reply)?;
            } else if reply.conflicts.is_empty() {
                writeln!(ctx.out, "no conflicts")?;
            } else {
                for c in &reply.conflicts {
                    if c.field.is_empty() {
                        writeln!(
                            ctx.out,
                            "{}  {}  (lost to {}; version of device {}, {} UTC)",
                            c.source, c.path, c.original, c.device, c.when
                        )?;
                    } else {
                        writeln!(
                            ctx.out,
                            "{}  {}  {}: kept {:?}, lost {:?} (set on device {}, {} UTC)",
                            c.source, c.path, c.field, c.kept, c.lost, c.device, c.when
                        )?;
                    }
                }
            }
            Ok(Outcome::Success)
        }
        Command::Rescan(target) => {
            let ack = ctx.client.rescan(request(&target)).await?.into_inner();
            print_ack(ctx, &ack, &describe("rescanning", &target))
        }
        Command::Pause(target) => {
            let ack = ctx.client.pause(request(&target)).await?.into_inner();
            print_ack(ctx, &ack, &describe("paused", &target))
        }
        Command::Resume(target) => {
            let ack = ctx.client.resume(request(&target)).await?.into_inner();
            print_ack(ctx, &ack, &describe("resumed", &target))
        }
        Command::Wait { timeout, connected } => {
            let req = WaitRequest {
                timeout_ms: cli::timeout_ms(timeout),
                connected_only: connected,
            };
            wait(ctx, req).await
        }
        Command::Watch => watch(ctx).await,
        Command::Doctor => doctor(ctx).await,
        // `main` runs these without an agent; they never come here.
        Command::Service(_) | Command::Completions { .. } | Command::Man { .. } => {
            Err(Failure::Usage("this command runs without the agent".into()))
        }
    }
}

async fn id<W: Write>(ctx: &mut Ctx<W>) -> Result<Outcome, Failure> {
    let reply = ctx.client.id(IdRequest {}).await?.into_inner();
    if ctx.json {
        output::json_document(&mut ctx.out, &reply)?;
    } else {
        // Just the ID: scripts take the last word of stdout.
        writeln!(ctx.out, "{}", reply.device_id)?;
    }
    Ok(Outcome::Success)
}

async fn doctor<W: Write>(ctx: &mut Ctx<W>) -> Result<Outcome, Failure> {
    let reply = ctx
        .client
        .doctor(tandem_proto::control::DoctorRequest {})
        .await?
        .into_inner();
    if ctx.json {
        output::json_document(&mut ctx.out, &reply)?;
    } else {
        output::doctor(&mut ctx.out, &reply)?;
    }
    Ok(if reply.findings.iter().any(|f| f.level == "fail") {
        Outcome::Unhealthy
    } else {
        Outcome::Success
    })
}

async fn status<W: Write>(ctx: &mut Ctx<W>) -> Result<Outcome, Failure> {
    let reply = ctx.client.status(StatusRequest {}).await?.into_inner();
    if ctx.json {
        output::json_document(&mut ctx.out, &reply)?;
    } else {
        output::status(&mut ctx.out, &reply, output::now_unix_ms())?;
        if crate::live::on_terminal() {
            crate::live::bars(ctx, &reply).await?;
        }
    }
    Ok(Outcome::Success)
}

/// PATH made absolute: the agent has a different working directory.
fn absolute_path(path: &Path) -> Result<String, Failure> {
    let absolute = std::path::absolute(path)
        .map_err(|err| Failure::Usage(format!("PATH {}: {err}", path.display())))?;
    absolute.to_str().map(str::to_owned).ok_or_else(|| {
        Failure::Usage(format!(
            "PATH {} is not valid UTF-8; rename it or pick another directory",
            absolute.display()
        ))
    })
}

async fn source_add<W: Write>(
    ctx: &mut Ctx<W>,
    id: String,
    path: &Path,
    format: String,
    peers: Vec<String>,
    key: String,
) -> Result<Outcome, Failure> {
    let path = absolute_path(path)?;
    let reply = ctx
        .client
        .source_add(SourceAddRequest {
            id,
            path,
            format,
            peers,
            key,
        })
        .await?
        .into_inner();
    if ctx.json {
        output::json_document(&mut ctx.out, &reply)?;
    } else {
        writeln!(
            ctx.out,
            "added source {}: {} (format {}, {})",
            reply.id, reply.path, reply.format, reply.state
        )?;
    }
    Ok(Outcome::Success)
}

async fn source_list<W: Write>(ctx: &mut Ctx<W>) -> Result<Outcome, Failure> {
    let reply = ctx
        .client
        .source_list(SourceListRequest {})
        .await?
        .into_inner();
    if ctx.json {
        output::json_document(&mut ctx.out, &reply)?;
    } else {
        output::source_list(&mut ctx.out, &reply.sources)?;
    }
    Ok(Outcome::Success)
}

async fn wait<W: Write>(ctx: &mut Ctx<W>, req: WaitRequest) -> Result<Outcome, Failure> {
    let reply = ctx.client.wait(req).await?.into_inner();
    if ctx.json {
        output::json_document(&mut ctx.out, &reply)?;
    } else {
        output::wait(&mut ctx.out, &reply)?;
    }
    Ok(if reply.in_sync {
        Outcome::Success
    } else {
        Outcome::NotInSync
    })
}

async fn watch<W: Write>(ctx: &mut Ctx<W>) -> Result<Outcome, Failure> {
    let mut events = ctx.client.watch(WatchRequest {}).await?.into_inner();
    while let Some(event) = events.message().await? {
        if ctx.json {
            output::json_line(&mut ctx.out, &event)?;
        } else {
            writeln!(ctx.out, "{}", output::event_line(&event))?;
        }
        // Readers follow the stream line by line through a pipe; don't let lines sit in a buffer.
        ctx.out.flush()?;
    }
    // The agent closed the stream (it is shutting down): a normal end.
    Ok(Outcome::Success)
}

fn request(target: &OptionalSource) -> SourceRequest {
    SourceRequest {
        id: target.wire_id(),
    }
}

fn describe(done: &str, target: &OptionalSource) -> String {
    match &target.id {
        Some(id) => format!("{done} source {id}"),
        None => format!("{done} all sources"),
    }
}

/// Prints an acknowledgement: its JSON, its message, or `fallback` when the agent sent none.
fn print_ack<W: Write>(ctx: &mut Ctx<W>, ack: &Ack, fallback: &str) -> Result<Outcome, Failure> {
    if ctx.json {
        output::json_document(&mut ctx.out, ack)?;
    } else if ack.message.is_empty() {
        writeln!(ctx.out, "{fallback}")?;
    } else {
        writeln!(ctx.out, "{}", ack.message)?;
    }
    Ok(Outcome::Success)
}
