//! The peer side of the receiving pipeline: a connection as a [`Feed`] (acknowledgements
//! go out as `Applied` frames, progress onto the board) and connected peers as a
//! [`ChunkProvider`] (chunk requests spread over every peer sharing the source).

use std::time::Duration;

use tandem_proto::peer::{self as pb, frame::Body};
use tokio::sync::{mpsc, oneshot};

use super::connection::{Fetch, Outbound};
use super::{Ctx, PeerSourceStatus, board_update, refuse};
use crate::chunker::{Hash128, MAX_CHUNK_SIZE};
use crate::feed::{BoxFuture, ChunkProvider, ChunkWanted, Feed, Origin, Progress};

/// Longest a peer may take to answer one chunk request.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

/// One source's index from one connected peer.
pub(super) struct PeerFeed {
    pub(super) ctx: Ctx,
    pub(super) origin: Origin,
    pub(super) source: String,
    pub(super) out: Outbound,
}

impl PeerFeed {
    fn board(&self, f: impl FnOnce(&mut PeerSourceStatus)) {
        board_update(&self.ctx, &self.origin.device, &self.source, f);
    }
}

impl Feed for PeerFeed {
    fn origin(&self) -> &Origin {
        &self.origin
    }

    fn acknowledge(&self, applied: u64, received: u64) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // A closed connection ends the receiver soon; the cursor is saved already.
            self.out
                .send(Body::Applied(pb::Applied {
                    source: self.source.clone(),
                    sequence: applied,
                    received,
                }))
                .await;
        })
    }

    fn progress(&self, progress: Progress) {
        match progress {
            Progress::Needed { items, bytes } => self.board(|s| {
                s.needed_items += items;
                s.needed_bytes += bytes;
                s.receiving_idle = false;
            }),
            Progress::Dealt { items, bytes } => self.board(|s| {
                s.needed_items = s.needed_items.saturating_sub(items);
                s.needed_bytes = s.needed_bytes.saturating_sub(bytes);
            }),
            Progress::Done(n) => self.board(|s| s.done_items += n),
            Progress::Reused(n) => self.board(|s| s.reused_bytes += n),
            Progress::Acknowledged {
                applied,
                seen,
                idle,
            } => self.board(|s| {
                s.applied = applied;
                s.peer_sequence = s.peer_sequence.max(seen);
                s.receiving_idle = idle;
            }),
            Progress::CaughtUp(caught_up) => self.board(|s| s.peer_caught_up = caught_up),
            Progress::Moved(true) => self.board(|s| s.moved_folders += 1),
            Progress::Moved(false) => self.board(|s| s.expanded_moves += 1),
            Progress::Error(e) => self.board(|s| s.last_error = e),
        }
    }

    fn refused(&self, what: &str) {
        refuse(&self.ctx, &self.origin.device, what);
    }

    fn expand(&self, first_sequence: u64) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // A closed connection asks again on the next one: the cursor stays before it.
            self.out
                .send(Body::ExpandMove(pb::ExpandMove {
                    source: self.source.clone(),
                    first_sequence,
                }))
                .await;
        })
    }
}

/// Chunks from the connected peers that share a source: the one that announced the item,
/// and the others by turns.
pub(super) struct PeerChunks {
    pub(super) ctx: Ctx,
    /// The device whose feed this provider serves; asked when no other peer is.
    pub(super) origin: String,
    pub(super) fetch: mpsc::Sender<Fetch>,
}

impl ChunkProvider for PeerChunks {
    fn is_local(&self) -> bool {
        false
    }

    fn get<'a>(&'a self, want: &'a ChunkWanted) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(async move {
            // Spread requests over every connected peer that shares the source (the chunk is
            // asked for by hash, so any of them may have it); the peer that announced the item is
            // the fallback.
            let mut holders: Vec<(String, mpsc::Sender<Fetch>)> = self
                .ctx
                .fetchers
                .borrow()
                .iter()
                .filter(|(d, f)| **d != self.origin && f.sources.contains(&want.source))
                .map(|(d, f)| (d.clone(), f.tx.clone()))
                .collect();
            holders.sort_by(|a, b| a.0.cmp(&b.0));
            let mut order = vec![(self.origin.clone(), self.fetch.clone())];
            if !holders.is_empty() {
                let slot = usize::try_from(want.chunk.offset / u64::from(MAX_CHUNK_SIZE / 4))
                    .unwrap_or(0)
                    % (holders.len() + 1);
                if slot > 0 {
                    order.insert(0, holders.swap_remove(slot - 1));
                }
            }
            let mut last_error = String::new();
            for (device, fetch) in order {
                match self.ask(&device, &fetch, want).await {
                    Ok(data) => return Ok(data),
                    Err(e) => last_error = e,
                }
            }
            Err(last_error)
        })
    }
}

/// One chunk request on the wire, for the board's in-flight count.
struct InFlight<'a> {
    ctx: &'a Ctx,
    device: &'a str,
    source: &'a str,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        board_update(self.ctx, self.device, self.source, |s| {
            s.in_flight = s.in_flight.saturating_sub(1)
        });
    }
}

impl PeerChunks {
    /// Asks one peer for a chunk and verifies the answer.
    async fn ask(
        &self,
        device: &str,
        fetch: &mpsc::Sender<Fetch>,
        want: &ChunkWanted,
    ) -> Result<Vec<u8>, String> {
        let chunk = want.chunk;
        let (reply, rx) = oneshot::channel();
        let req = pb::ChunkRequest {
            request_id: 0,
            source: want.source.clone(),
            path: want.item.clone(),
            offset: chunk.offset,
            len: chunk.len,
            hash: chunk.hash.0.to_vec(),
        };
        fetch
            .send(Fetch { req, reply })
            .await
            .map_err(|_| "the connection closed".to_owned())?;
        board_update(&self.ctx, device, &want.source, |s| s.in_flight += 1);
        // Counted down however this ends, even when the file's other chunks failed and this
        // request is abandoned mid-flight.
        let in_flight = InFlight {
            ctx: &self.ctx,
            device,
            source: &want.source,
        };
        let answer = tokio::time::timeout(CHUNK_TIMEOUT, rx).await;
        drop(in_flight);
        let data = match answer {
            Ok(Ok(Ok(data))) => data,
            Ok(Ok(Err(e))) => return Err(format!("the peer could not send a chunk: {e}")),
            Ok(Err(_)) => return Err("the connection closed".into()),
            Err(_) => return Err("a chunk request timed out".into()),
        };
        if Hash128::of(&data) != chunk.hash || data.len() != usize::try_from(chunk.len).unwrap_or(0)
        {
            refuse(
                &self.ctx,
                device,
                &format!("a chunk of {} that does not match its hash", want.item),
            );
            return Err("the peer sent a chunk that does not match its hash".into());
        }
        let n = u64::from(chunk.len);
        board_update(&self.ctx, device, &want.source, |s| s.fetched_bytes += n);
        Ok(data)
    }
}
