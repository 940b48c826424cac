//! Whether a source is in sync, decided in one place for `wait` and `status`.
//!
//! A source is in sync when it is settled here (scanned, nothing pending) and, with every
//! device it is shared with, both sides have exchanged indexes since the last change and
//! nothing is being fetched or retried. A device that has not been reached keeps the source
//! out of sync, with the reason: a `wait` that returned while a peer was still unreachable
//! would tell a script the data is everywhere when it is nowhere yet. Must not: do I/O, or
//! keep state of its own (it reads snapshots).

use std::fmt;

use crate::hub_client::HubBoard;
use crate::peer::{Board, PeerState};
use crate::source::{SourceStatus, State};

/// Which of a source's devices count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Members {
    /// Every device the source is shared with, reached or not.
    All,
    /// Only the devices connected right now (`wait --connected`).
    Connected,
}

/// One reason a source is not in sync yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub source: String,
    /// The device it concerns, when it concerns one.
    pub device: Option<String>,
    pub why: Why,
}

/// What keeps a source (or a source with one device) from being in sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// The source is stopped as a whole.
    Stopped(String),
    /// The first scan has not finished.
    FirstScan,
    /// Changes are waiting to be scanned.
    Scanning,
    /// The source names a device that was never added with `peer add`.
    NotAPeer,
    /// Added, but no connection has ever been made with it.
    NeverConnected { address: Option<String> },
    /// Not connected now; the last thing that went wrong.
    Unreachable { error: String },
    /// Connected, but it speaks a protocol this device cannot.
    Incompatible(String),
    /// Connected, but the source is refused with it (it keeps another kind of data).
    Refused(String),
    /// Connected, but it has not said it shares this source.
    NotShared,
    /// Connected and sharing, with indexes or content still moving.
    Behind {
        /// The peer has not yet said it sent its whole index.
        peer_sending: bool,
        needed_items: u64,
        needed_bytes: u64,
        in_flight: u64,
        peer_applied: u64,
        local: u64,
    },
    /// Not reached directly, but through a hub, with bundles still to upload or to apply.
    BehindHub,
    /// This device's changes are not all at a hub it uses yet (or the hub is not reached).
    Hub(String),
}

impl Why {
    /// True when the device has not been reached at all (as opposed to still syncing).
    pub fn unreached(&self) -> bool {
        self.unreached_reason().is_some()
    }

    /// Why the device counts as not reached, in words; `None` when it was reached.
    pub fn unreached_reason(&self) -> Option<String> {
        Some(match self {
            Why::NotAPeer => "it was never added as a peer; add it with `tandemctl peer add \
                              DEVICE [HOST:PORT]`"
                .to_owned(),
            Why::NeverConnected {
                address: Some(address),
            } => format!(
                "never connected (dialling {address}); check that its agent runs and that it \
                 added this device"
            ),
            Why::NeverConnected { address: None } => "never connected, and it has no address \
                here, so it must dial in; give its address with `tandemctl peer add DEVICE \
                HOST:PORT`"
                .to_owned(),
            Why::Unreachable { error } => error.clone(),
            Why::Incompatible(error) | Why::Refused(error) => format!("refused: {error}"),
            _ => return None,
        })
    }
}

impl fmt::Display for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.source)?;
        if let Some(device) = &self.device {
            write!(f, "device {device}: ")?;
        }
        match &self.why {
            Why::Stopped(error) => write!(f, "stopped: {error}"),
            Why::FirstScan => write!(f, "first scan not finished"),
            Why::Scanning => write!(f, "changes waiting to be scanned"),
            // A source refused for its kind was reached; the others were not.
            Why::Refused(why) => write!(f, "refused: {why}"),
            why @ (Why::NotAPeer
            | Why::NeverConnected { .. }
            | Why::Unreachable { .. }
            | Why::Incompatible(_)) => {
                write!(
                    f,
                    "not reached: {}",
                    why.unreached_reason().unwrap_or_default()
                )
            }
            Why::Hub(why) => write!(f, "{why}"),
            Why::BehindHub => write!(
                f,
                "reached through a hub only; its bundles are not all applied here yet, or this \
                 device's changes are not all uploaded"
            ),
            Why::NotShared => write!(
                f,
                "connected, but it has not shared this source with this device yet; add it \
                 there with `tandemctl source add ID PATH --peer THIS-DEVICE`"
            ),
            Why::Behind {
                peer_sending,
                needed_items,
                needed_bytes,
                in_flight,
                peer_applied,
                local,
            } => {
                if *peer_sending {
                    write!(f, "its index is still coming (it may be scanning); ")?;
                }
                write!(
                    f,
                    "{needed_items} items ({needed_bytes} bytes) to fetch, {in_flight} chunks \
                     in flight, it has applied {} of {local} changes",
                    peer_applied.min(local)
                )
            }
        }
    }
}

/// Everything that keeps the given sources out of sync; empty when all are in sync.
///
/// A device reached only through a hub counts once a listing of its bundles begun at or after
/// `hubs_since` was applied (`wait` passes when it began; `None` takes any listing).
pub fn pending(
    statuses: &[SourceStatus],
    board: &Board,
    hubs: &HubBoard,
    hubs_since: Option<std::time::Instant>,
    members: Members,
) -> Vec<Pending> {
    let mut out = Vec::new();
    for s in statuses {
        if !s.settled() {
            let why = match s.state {
                State::Error => Why::Stopped(
                    s.error
                        .clone()
                        .unwrap_or_else(|| "unknown error".to_owned()),
                ),
                State::Scanning if s.scans == 0 => Why::FirstScan,
                _ => Why::Scanning,
            };
            out.push(Pending {
                source: s.id.clone(),
                device: None,
                why,
            });
            continue;
        }
        if s.state == State::Paused {
            continue;
        }
        if let Some(why) = hubs.not_uploaded(&s.id, s.totals.sequence, members == Members::All) {
            out.push(Pending {
                source: s.id.clone(),
                device: None,
                why: Why::Hub(why),
            });
        }
        for device in &s.peers {
            if let Some(why) = with_device(s, device, board, hubs, hubs_since, members) {
                out.push(Pending {
                    source: s.id.clone(),
                    device: Some(device.clone()),
                    why,
                });
            }
        }
    }
    out
}

/// Whether `source` is in sync with `device` (for `status`): reached (directly or through a
/// hub), sharing, caught up.
pub fn in_sync_with(s: &SourceStatus, device: &str, board: &Board, hubs: &HubBoard) -> bool {
    with_device(s, device, board, hubs, None, Members::All).is_none()
}

/// What keeps one source out of sync with one device, if anything: directly, else through a
/// hub that serves both (every bundle of the device applied here, every change of this
/// device uploaded).
fn with_device(
    s: &SourceStatus,
    device: &str,
    board: &Board,
    hubs: &HubBoard,
    hubs_since: Option<std::time::Instant>,
    members: Members,
) -> Option<Why> {
    let peer = board.peers.get(device);
    let directly = peer.is_some_and(|p| p.connected);
    if !directly && hubs.reaches(&s.id, device) {
        let synced = hubs.in_sync(&s.id, device, s.totals.sequence, hubs_since);
        return (!synced).then_some(Why::BehindHub);
    }
    directly_with(s, peer, members)
}

/// What keeps one source out of sync with one device over a direct connection.
fn directly_with(s: &SourceStatus, peer: Option<&PeerState>, members: Members) -> Option<Why> {
    let Some(peer) = peer else {
        return (members == Members::All).then_some(Why::NotAPeer);
    };
    if !peer.connected {
        if members == Members::Connected {
            return None;
        }
        if !peer.incompatible.is_empty() {
            return Some(Why::Incompatible(peer.incompatible.clone()));
        }
        if !peer.last_error.is_empty() {
            return Some(Why::Unreachable {
                error: peer.last_error.clone(),
            });
        }
        if !peer.ever_connected {
            return Some(Why::NeverConnected {
                address: peer.address.clone(),
            });
        }
        return Some(Why::Unreachable {
            error: "disconnected".to_owned(),
        });
    }
    if let Some(refused) = peer.sources.get(&s.id).filter(|p| !p.refused.is_empty()) {
        return Some(Why::Refused(refused.refused.clone()));
    }
    let p = match peer.sources.get(&s.id).filter(|p| p.shared_by_peer) {
        Some(p) => p,
        // Connected now-only waits keep today's meaning: a peer that does not share the
        // source (yet) is not waited for.
        None if members == Members::Connected => return None,
        None => return Some(Why::NotShared),
    };
    let local = s.totals.sequence;
    if p.in_sync(local) {
        return None;
    }
    Some(Why::Behind {
        peer_sending: !p.peer_caught_up,
        needed_items: p.needed_items,
        needed_bytes: p.needed_bytes,
        in_flight: p.in_flight,
        peer_applied: p.peer_applied,
        local,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::peer::PeerSourceStatus;

    fn source(peers: &[&str]) -> SourceStatus {
        SourceStatus {
            id: "docs".into(),
            path: PathBuf::from("/x"),
            format: "files".into(),
            state: State::Idle,
            error: None,
            totals: crate::store::Totals {
                sequence: 5,
                ..Default::default()
            },
            hashed_bytes: 0,
            scans: 1,
            last_scan_unix_ms: 0,
            item_errors: BTreeMap::new(),
            peers: peers.iter().map(|p| (*p).to_owned()).collect(),
            pending: false,
            ignores: Arc::default(),
            started: true,
        }
    }

    fn caught_up() -> PeerSourceStatus {
        PeerSourceStatus {
            peer_applied: 5,
            peer_caught_up: true,
            receiving_idle: true,
            shared_by_peer: true,
            ..Default::default()
        }
    }

    fn check(board: &Board, members: Members) -> Vec<Why> {
        pending(
            &[source(&["B"])],
            board,
            &HubBoard::default(),
            None,
            members,
        )
        .into_iter()
        .map(|p| p.why)
        .collect()
    }

    #[test]
    fn a_device_never_reached_keeps_the_source_out_of_sync() {
        let mut board = Board::default();
        assert_eq!(check(&board, Members::All), vec![Why::NotAPeer]);
        assert!(check(&board, Members::Connected).is_empty());
        board.peers.insert(
            "B".into(),
            PeerState {
                address: Some("127.0.0.1:9".into()),
                ..Default::default()
            },
        );
        assert_eq!(
            check(&board, Members::All),
            vec![Why::NeverConnected {
                address: Some("127.0.0.1:9".into())
            }]
        );
        board.peers.get_mut("B").unwrap().last_error = "connection refused".into();
        let why = check(&board, Members::All);
        assert_eq!(
            why,
            vec![Why::Unreachable {
                error: "connection refused".into()
            }]
        );
        assert!(why[0].unreached());
        assert!(check(&board, Members::Connected).is_empty());
    }

    #[test]
    fn a_connected_device_counts_once_it_shares_and_caught_up() {
        let mut board = Board::default();
        let mut peer = PeerState {
            connected: true,
            ever_connected: true,
            ..Default::default()
        };
        board.peers.insert("B".into(), peer.clone());
        assert_eq!(check(&board, Members::All), vec![Why::NotShared]);
        assert!(check(&board, Members::Connected).is_empty());
        let mut behind = caught_up();
        behind.needed_items = 3;
        peer.sources.insert("docs".into(), behind);
        board.peers.insert("B".into(), peer.clone());
        assert!(matches!(
            check(&board, Members::Connected)[..],
            [Why::Behind {
                needed_items: 3,
                ..
            }]
        ));
        peer.sources.insert("docs".into(), caught_up());
        board.peers.insert("B".into(), peer);
        assert!(check(&board, Members::All).is_empty());
        assert!(in_sync_with(
            &source(&["B"]),
            "B",
            &board,
            &HubBoard::default()
        ));
    }

    #[test]
    fn a_paused_source_is_settled_and_a_stopped_one_says_why() {
        let board = Board::default();
        let mut s = source(&["B"]);
        s.state = State::Paused;
        assert!(
            pending(
                &[s.clone()],
                &board,
                &HubBoard::default(),
                None,
                Members::All
            )
            .is_empty()
        );
        s.state = State::Error;
        s.error = Some("marker missing".into());
        let p = pending(&[s], &board, &HubBoard::default(), None, Members::All);
        assert_eq!(p[0].why, Why::Stopped("marker missing".into()));
        assert_eq!(p[0].to_string(), "docs: stopped: marker missing");
    }
}
