//! What `status` shows a person at a terminal: a bar per running sync with bytes, rate and
//! ETA (`indicatif`), and `status --follow`'s live view until interrupted. Piped, both print
//! plain lines instead.
//!
//! Must not: keep anything of the agent's beyond the start of each running sync (to measure
//! the bar from); every number comes from the agent's `status` reply.

use std::collections::BTreeMap;
use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tandem_proto::control::{PeerProgress, SourceStatus, StatusReply, StatusRequest};

use crate::commands::Ctx;
use crate::{Failure, Outcome, output};

/// How often the live view asks the agent.
const TICK: Duration = Duration::from_millis(250);

/// True when stdout is a terminal a person looks at.
pub fn on_terminal() -> bool {
    io::stdout().is_terminal()
}

/// A peer's sync of a source is running: something is still needed from it or in flight.
fn running(p: &PeerProgress) -> bool {
    p.connected && !p.in_sync && (p.needed_bytes > 0 || p.needed_items > 0 || p.in_flight > 0)
}

/// The word for a source's state as a person reads it.
pub fn state_word(s: &SourceStatus) -> &str {
    if s.state == "idle" && s.progress.iter().any(running) {
        "syncing"
    } else {
        &s.state
    }
}

/// One line about a peer of a source: in sync, syncing, or not reached and why.
pub fn peer_line(p: &PeerProgress) -> String {
    let short = p.device_id.split('-').next().unwrap_or(&p.device_id);
    if !p.connected {
        let why = if p.last_error.is_empty() {
            "not connected".to_owned()
        } else {
            format!("not connected: {}", p.last_error)
        };
        return format!("{short}  {why} (tandemctl doctor says why and what to do)");
    }
    if running(p) {
        return format!(
            "{short}  syncing: {} items, {} to go",
            p.needed_items,
            output::bytes(p.needed_bytes)
        );
    }
    if p.in_sync {
        format!("{short}  in sync")
    } else {
        format!("{short}  catching up")
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "  {prefix:<18} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

fn line_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// The running syncs of a reply, by (source, device), with bytes fetched so far and still
/// needed.
fn syncs(reply: &StatusReply) -> BTreeMap<(String, String), (u64, u64)> {
    reply
        .sources
        .iter()
        .flat_map(|s| {
            s.progress.iter().filter(|p| running(p)).map(|p| {
                (
                    (s.id.clone(), p.device_id.clone()),
                    (p.fetched_bytes, p.needed_bytes),
                )
            })
        })
        .collect()
}

/// Under the plain status on a terminal: one bar per running sync, its rate taken from a
/// second look half a second later.
pub async fn bars<W: Write>(ctx: &mut Ctx<W>, first: &StatusReply) -> Result<(), Failure> {
    let before = syncs(first);
    if before.is_empty() {
        return Ok(());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reply = ctx.client.status(StatusRequest {}).await?.into_inner();
    let after = syncs(&reply);
    ctx.out.flush()?;
    for ((source, device), (fetched, needed)) in &after {
        let start = before
            .get(&(source.clone(), device.clone()))
            .map_or(*fetched, |(f, _)| *f);
        let rate = fetched.saturating_sub(start).saturating_mul(2);
        let eta = needed
            .checked_div(rate)
            .map_or_else(|| "unknown".to_owned(), |s| format!("{s}s"));
        let bar =
            ProgressBar::with_draw_target(Some(fetched + needed), ProgressDrawTarget::stdout());
        bar.set_style(
            ProgressStyle::with_template("  {prefix:<18} [{bar:30}] {bytes}/{total_bytes} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(format!(
            "{source} {}",
            device.split('-').next().unwrap_or(device)
        ));
        bar.set_position(*fetched);
        bar.abandon_with_message(format!("{}/s, ETA {eta}", output::bytes(rate)));
    }
    Ok(())
}

/// `status --follow`: a live view on a terminal, plain lines of what changed otherwise,
/// until interrupted.
pub async fn follow<W: Write>(ctx: &mut Ctx<W>) -> Result<Outcome, Failure> {
    if !on_terminal() {
        return follow_plain(ctx).await;
    }
    let view = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
    let mut lines: BTreeMap<String, ProgressBar> = BTreeMap::new();
    // A bar per running sync, with the bytes fetched when it started.
    let mut bars: BTreeMap<(String, String), (ProgressBar, u64)> = BTreeMap::new();
    loop {
        let reply = ctx.client.status(StatusRequest {}).await?.into_inner();
        for s in &reply.sources {
            let line = lines.entry(s.id.clone()).or_insert_with(|| {
                let l = view.add(ProgressBar::new_spinner());
                l.set_style(line_style());
                l
            });
            let mut msg = format!("source {} ({}): {}", s.id, s.format, state_word(s));
            if !s.error.is_empty() {
                msg.push_str(&format!(" - {}", s.error));
            }
            for p in &s.progress {
                if !running(p) {
                    msg.push_str(&format!("\n  {}", peer_line(p)));
                }
            }
            line.set_message(msg);
            for p in &s.progress {
                let key = (s.id.clone(), p.device_id.clone());
                if running(p) {
                    let (bar, base) = bars.entry(key).or_insert_with(|| {
                        let b = view.insert_after(line, ProgressBar::new(0));
                        b.set_style(bar_style());
                        b.set_prefix(format!(
                            "{} {}",
                            s.id,
                            p.device_id.split('-').next().unwrap_or(&p.device_id)
                        ));
                        (b, p.fetched_bytes)
                    });
                    let done = p.fetched_bytes.saturating_sub(*base);
                    bar.set_length(done + p.needed_bytes);
                    bar.set_position(done);
                    bar.set_message(format!("{} items to go", p.needed_items));
                } else if let Some((bar, _)) = bars.remove(&key) {
                    bar.finish_and_clear();
                }
            }
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            () = tokio::time::sleep(TICK) => {}
        }
    }
    for (bar, _) in bars.values() {
        bar.abandon();
    }
    Ok(Outcome::Success)
}

/// `status --follow` into a pipe: a line whenever a source's or a peer's state changes.
async fn follow_plain<W: Write>(ctx: &mut Ctx<W>) -> Result<Outcome, Failure> {
    let mut said: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let reply = ctx.client.status(StatusRequest {}).await?.into_inner();
        for s in &reply.sources {
            let mut lines = vec![(s.id.clone(), format!("source {}: {}", s.id, state_word(s)))];
            for p in &s.progress {
                lines.push((
                    format!("{} {}", s.id, p.device_id),
                    format!("source {} peer {}", s.id, peer_line(p)),
                ));
            }
            for (key, line) in lines {
                if said.get(&key) != Some(&line) {
                    writeln!(
                        ctx.out,
                        "{} {line}",
                        output::time_of_day(output::now_unix_ms())
                    )?;
                    said.insert(key, line);
                }
            }
        }
        ctx.out.flush()?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            () = tokio::time::sleep(TICK) => {}
        }
    }
    Ok(Outcome::Success)
}
