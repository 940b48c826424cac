//! Rendering replies: human-readable text, or the reply message as JSON.
//!
//! Must not: talk to the agent or decide exit codes; every function writes to the writer it is
//! handed, so a closed pipe surfaces as an `io::Error` the caller can recognise.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tandem_proto::control::{DoctorReply, Event, PeerInfo, SourceStatus, StatusReply, WaitReply};

/// Writes `value` as one pretty-printed JSON document.
pub fn json_document(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

/// Writes `value` as one compact JSON object on its own line (for streams).
pub fn json_line(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)
}

/// Writes one line per finding (`ok`, `warn`, `fail`), with what to do under each that is
/// not ok, and a closing count.
pub fn doctor(out: &mut impl Write, reply: &DoctorReply) -> io::Result<()> {
    for f in &reply.findings {
        writeln!(
            out,
            "{:<4}  {:<10}  {}: {}",
            f.level, f.check, f.subject, f.message
        )?;
        if !f.fix.is_empty() {
            writeln!(out, "      fix: {}", f.fix)?;
        }
    }
    let count = |level: &str| reply.findings.iter().filter(|f| f.level == level).count();
    writeln!(
        out,
        "{} checks: {} ok, {} warnings, {} failing",
        reply.findings.len(),
        count("ok"),
        count("warn"),
        count("fail")
    )
}

/// Writes the device ID, agent counters and one block per source.
pub fn status(out: &mut impl Write, reply: &StatusReply, now_ms: u64) -> io::Result<()> {
    writeln!(out, "device   {}", reply.device_id)?;
    writeln!(out, "uptime   {}", duration(reply.uptime_ms))?;
    writeln!(out, "hashed   {}", bytes(reply.hashed_bytes))?;
    if reply.sources.is_empty() {
        writeln!(
            out,
            "\nno sources; add one with: tandemctl source add ID PATH"
        )?;
    }
    for source in &reply.sources {
        writeln!(out)?;
        source_block(out, source, now_ms)?;
    }
    for hub in &reply.hubs {
        writeln!(out)?;
        hub_block(out, hub)?;
    }
    Ok(())
}

/// Writes one hub's block: where it is, whether it is reached, each source there.
fn hub_block(out: &mut impl Write, h: &tandem_proto::control::HubStatus) -> io::Result<()> {
    let state = if h.connected {
        "connected"
    } else {
        "not connected"
    };
    writeln!(out, "hub {} at {} ({state})", h.device_id, h.address)?;
    if !h.last_error.is_empty() {
        writeln!(out, "  error     {}", h.last_error)?;
    }
    for s in &h.sources {
        writeln!(
            out,
            "  source {}: uploaded through {} ({}, {})",
            s.id,
            s.uploaded,
            count(s.uploaded_bundles, "bundle", "bundles"),
            bytes(s.uploaded_bytes)
        )?;
        if !s.error.is_empty() {
            writeln!(out, "    error   {}", s.error)?;
        }
        for m in &s.members {
            let how = if m.direct { ", reached directly" } else { "" };
            writeln!(
                out,
                "    member {}: applied {} of {}{how}",
                m.device_id, m.applied, m.latest
            )?;
        }
    }
    Ok(())
}

/// Writes one source's full block: identity, state, counters, errors.
pub fn source_block(out: &mut impl Write, s: &SourceStatus, now_ms: u64) -> io::Result<()> {
    writeln!(out, "source {}", s.id)?;
    writeln!(out, "  path      {}", s.path)?;
    writeln!(out, "  format    {}", s.format)?;
    writeln!(out, "  state     {}", crate::live::state_word(s))?;
    if s.kind.is_empty() || s.kind == "files" {
        writeln!(
            out,
            "  content   {}, {}, {}, {}",
            count(s.files, "file", "files"),
            count(s.directories, "directory", "directories"),
            count(s.symlinks, "symlink", "symlinks"),
            bytes(s.bytes)
        )?;
    } else {
        writeln!(
            out,
            "  content   {} ({})",
            count(s.files, "record", "records"),
            s.kind
        )?;
    }
    writeln!(out, "  sequence  {}", s.sequence)?;
    writeln!(out, "  hashed    {}", bytes(s.hashed_bytes))?;
    writeln!(
        out,
        "  last scan {} ({})",
        last_scan(s.last_scan_unix_ms, now_ms),
        count(s.scans, "scan", "scans")
    )?;
    if !s.peers.is_empty() {
        writeln!(out, "  peers     {}", s.peers.join(", "))?;
    }
    if !s.error.is_empty() {
        writeln!(out, "  error     {}", s.error)?;
    }
    for p in &s.progress {
        writeln!(out, "  peer      {}", crate::live::peer_line(p))?;
    }
    for e in &s.item_errors {
        writeln!(out, "  ! {}: {}", e.item, e.message)?;
    }
    Ok(())
}

/// Writes one line per source: ID, state, format, path.
pub fn source_list(out: &mut impl Write, sources: &[SourceStatus]) -> io::Result<()> {
    if sources.is_empty() {
        return writeln!(
            out,
            "no sources; add one with: tandemctl source add ID PATH"
        );
    }
    let id_width = sources.iter().map(|s| s.id.len()).max().unwrap_or(0);
    let state_width = sources.iter().map(|s| s.state.len()).max().unwrap_or(0);
    let format_width = sources.iter().map(|s| s.format.len()).max().unwrap_or(0);
    for s in sources {
        writeln!(
            out,
            "{:id_width$}  {:state_width$}  {:format_width$}  {}",
            s.id, s.state, s.format, s.path
        )?;
    }
    Ok(())
}

/// One peer: its device ID and where it is dialled.
pub fn peer_line(p: &PeerInfo) -> String {
    let address = if p.address.is_empty() {
        "(dials in)"
    } else {
        p.address.as_str()
    };
    format!("{}  {}", p.device_id, address)
}

/// Writes "in sync", or what is still pending.
pub fn wait(out: &mut impl Write, reply: &WaitReply) -> io::Result<()> {
    if reply.in_sync {
        return writeln!(out, "in sync");
    }
    if reply.pending.is_empty() {
        return writeln!(out, "not in sync");
    }
    for line in &reply.pending {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Formats one event as `HH:MM:SS.mmm SOURCE KIND ITEM [DETAIL] [seq=N]` (UTC).
///
/// Empty source or item print as `-` so the columns stay in place.
pub fn event_line(e: &Event) -> String {
    let mut line = format!(
        "{} {} {} {}",
        time_of_day(e.unix_ms),
        dash_if_empty(&e.source),
        dash_if_empty(&e.kind),
        dash_if_empty(&e.item)
    );
    if !e.detail.is_empty() {
        let _ = write!(line, " {}", e.detail); // Writing to a String cannot fail.
    }
    if e.sequence != 0 {
        let _ = write!(line, " seq={}", e.sequence); // Writing to a String cannot fail.
    }
    line
}

/// Milliseconds since the Unix epoch, now; 0 if the clock is before 1970.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn dash_if_empty(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Human-readable size in binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    // Precision loss in the cast is irrelevant at one decimal.
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Human-readable duration, coarse: `950ms`, `42s`, `3m 5s`, `2h 10m`, `4d 1h`.
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// When something was last seen, for a person: `seen YYYY-MM-DD HH:MM:SS UTC, 12s ago`.
pub fn ago(now_ms: u64, unix_ms: u64) -> String {
    format!("seen {}", last_scan(unix_ms, now_ms))
}

/// `never`, or `YYYY-MM-DD HH:MM:SS UTC, 12s ago`.
fn last_scan(unix_ms: u64, now_ms: u64) -> String {
    if unix_ms == 0 {
        return "never".to_owned();
    }
    let (y, m, d) = civil_from_days(unix_ms / 86_400_000);
    let secs_of_day = unix_ms % 86_400_000 / 1000;
    let ago = if now_ms >= unix_ms {
        format!("{} ago", duration(now_ms - unix_ms))
    } else {
        "in the future; check the clock".to_owned()
    };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC, {ago}",
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60
    )
}

/// `HH:MM:SS.mmm` of a Unix-milliseconds time, in UTC.
pub fn time_of_day(unix_ms: u64) -> String {
    let ms = unix_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms % 3_600_000 / 60_000,
        ms % 60_000 / 1000,
        ms % 1000
    )
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
///
/// Howard Hinnant's `civil_from_days`, restricted to non-negative days; this saves a date-time
/// crate for the one place the client prints a date.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::control::ItemError;

    #[test]
    fn bytes_are_human_readable() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn dates_and_times_are_utc() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        // 2026-11-25 15:04:05.123 UTC
        let t = 1_795_619_045_123;
        assert_eq!(time_of_day(t), "15:04:05.123");
        assert_eq!(last_scan(t, t + 42_000), "2026-11-25 15:04:05 UTC, 42s ago");
        assert_eq!(last_scan(0, t), "never");
    }

    #[test]
    fn event_line_keeps_columns() {
        let e = Event {
            unix_ms: 1_795_619_045_123,
            source: "docs".into(),
            kind: "modified".into(),
            item: "a/b.txt".into(),
            detail: "3 chunks".into(),
            sequence: 7,
        };
        assert_eq!(
            event_line(&e),
            "15:04:05.123 docs modified a/b.txt 3 chunks seq=7"
        );
        let bare = Event {
            unix_ms: 1_795_619_045_123,
            kind: "lagged".into(),
            ..Event::default()
        };
        assert_eq!(event_line(&bare), "15:04:05.123 - lagged -");
    }

    #[test]
    fn source_block_lists_errors() {
        let s = SourceStatus {
            id: "docs".into(),
            path: "/home/u/docs".into(),
            format: "files".into(),
            state: "error".into(),
            error: "root is missing".into(),
            files: 1,
            bytes: 2048,
            item_errors: vec![ItemError {
                item: "x.txt".into(),
                message: "permission denied".into(),
            }],
            ..SourceStatus::default()
        };
        let mut out = Vec::new();
        source_block(&mut out, &s, 0).expect("write to Vec");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("  content   1 file, 0 directories, 0 symlinks, 2.0 KiB\n"));
        assert!(text.contains("  error     root is missing\n"));
        assert!(text.ends_with("  ! x.txt: permission denied\n"));
    }
}
