//! The other members' bundles at one hub, as feeds into the receiving pipeline: listed after
//! each member's cursor, opened only as the bundle asked for (that member, that sequence),
//! checked for gaps, and handed to a [`Receiver`] per member; chunks come from the hub,
//! sealed, by their keyed names.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;
use tandem_proto::hub as pb;
use tandem_proto::hub::hub_client::HubClient;
use tandem_proto::peer as peer_pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::warn;

use super::Ctx;
use super::objects::Objects;
use crate::chunker::Hash128;
use crate::feed::{
    BoxFuture, ChunkChain, ChunkProvider, ChunkWanted, Feed, LocalChunks, Origin, Progress,
    Receiver, Update,
};
use crate::hub::names::{Object, bundles_of};
use crate::sealed::{Binding, Sealer};
use crate::store::SourceRow;
use crate::universal;

/// Bundles of one member handed over per round, so one member's backlog does not hold up
/// the others (and the receiver's queue stays short).
const BUNDLES_PER_ROUND: u32 = 16;

/// A member's bundles flowing into a receiver.
struct Receiving {
    tx: mpsc::Sender<Update>,
    /// Handed over through this sequence.
    fed: u64,
    stop: CancellationToken,
    /// The last bundle refused, so it is logged once, not every round.
    refused: Option<String>,
    /// Whether the member's snapshots were looked at since this receiver started: a device
    /// back after the hub collected every bundle it missed finds no bundle to tell it so.
    looked_at_snapshots: bool,
}

/// The other members of one source at one hub.
pub(super) struct Members {
    ctx: Ctx,
    hub: String,
    source: String,
    members: BTreeMap<String, Option<Receiving>>,
    /// A bundle was sealed under a key generation this device does not hold yet: the link
    /// looks for a key handed over to it.
    pub needs_key: bool,
}

impl Members {
    pub(super) fn new(ctx: Ctx, hub: String, source: String) -> Members {
        Members {
            ctx,
            hub,
            source,
            members: BTreeMap::new(),
            needs_key: false,
        }
    }

    /// The members are now `members` (this device, `me`, left out).
    pub(super) fn set(&mut self, members: &[String], me: &str) {
        self.members.retain(|m, r| {
            let keep = members.contains(m);
            if !keep && let Some(r) = r.take() {
                r.stop.cancel();
            }
            keep
        });
        for m in members.iter().filter(|m| *m != me) {
            self.members.entry(m.clone()).or_insert(None);
        }
        let listed: Vec<String> = self.members.keys().cloned().collect();
        self.ctx.update_source(&self.hub, &self.source, |s| {
            s.members.retain(|m, _| listed.contains(m));
            for m in listed {
                s.members.entry(m).or_default();
            }
        });
    }

    /// Ends every receiver.
    pub(super) fn stop_all(&mut self) {
        for r in self.members.values_mut() {
            if let Some(r) = r.take() {
                r.stop.cancel();
            }
        }
    }

    /// Hands every member's new bundles to its receiver (members reached directly are left
    /// to the direct path).
    pub(super) async fn pull(
        &mut self,
        client: &mut HubClient<Channel>,
        objects: &Objects,
        sealer: &Arc<Sealer>,
        row: &SourceRow,
    ) -> Result<(), tonic::Status> {
        let board = self.ctx.peers.board();
        let names: Vec<String> = self.members.keys().cloned().collect();
        for member in names {
            let direct = board.peers.get(&member).is_some_and(|p| {
                p.connected
                    && p.sources
                        .get(&self.source)
                        .is_some_and(|s| s.shared_by_peer)
            });
            self.ctx.update_source(&self.hub, &self.source, |s| {
                s.members.entry(member.clone()).or_default().direct = direct;
            });
            if direct {
                if let Some(Some(r)) = self.members.get_mut(&member).map(Option::take) {
                    r.stop.cancel();
                }
                continue;
            }
            if !row.peers.contains(&member) {
                // A member another device added: this device does not share the source
                // with it, so it keeps no cursor for it.
                continue;
            }
            if matches!(self.members.get(&member), Some(None)) {
                let Some(r) = self.receive(objects, sealer, &member).await else {
                    continue;
                };
                self.members.insert(member.clone(), Some(r));
            }
            self.pull_member(client, objects, sealer, &member).await?;
        }
        Ok(())
    }

    /// Starts a receiver for `member`'s bundles after its saved cursor.
    async fn receive(
        &self,
        objects: &Objects,
        sealer: &Arc<Sealer>,
        member: &str,
    ) -> Option<Receiving> {
        let shared = self
            .ctx
            .sources
            .shared_with(member.to_owned())
            .await
            .into_iter()
            .find(|s| s.id == self.source)?;
        let applied = self
            .ctx
            .store
            .cursor(member.to_owned(), self.source.clone())
            .await
            .ok()?;
        let origin = Origin {
            device: member.to_owned(),
            short: member
                .parse::<crate::identity::DeviceId>()
                .map_or_else(|_| member.to_owned(), |d| d.short_string()),
        };
        let feed = Arc::new(HubFeed {
            ctx: self.ctx.clone(),
            hub: self.hub.clone(),
            source: self.source.clone(),
            origin,
        });
        let chunks = ChunkChain::new(vec![
            Arc::new(LocalChunks::new(self.ctx.store.clone())),
            Arc::new(HubChunks {
                objects: objects.clone(),
                sealer: sealer.clone(),
            }),
        ]);
        let receiver = Receiver::new(
            shared,
            feed,
            chunks,
            self.ctx.peers.claims(),
            self.ctx.store.clone(),
            applied,
        );
        let (tx, rx) = mpsc::channel(BUNDLES_PER_ROUND as usize * 2);
        let stop = self.ctx.cancel.child_token();
        let until = stop.clone();
        self.ctx.tasks.spawn(async move {
            tokio::select! {
                () = until.cancelled() => {}
                () = receiver.run(rx) => {}
            }
        });
        self.ctx.update_source(&self.hub, &self.source, |s| {
            let m = s.members.entry(member.to_owned()).or_default();
            m.applied = applied;
            m.fed = applied;
        });
        Some(Receiving {
            tx,
            fed: applied,
            stop,
            refused: None,
            looked_at_snapshots: false,
        })
    }

    /// Lists `member`'s bundles after what was handed over, opens each as exactly that
    /// bundle, and hands it to the receiver; stops at the first that is refused.
    async fn pull_member(
        &mut self,
        client: &mut HubClient<Channel>,
        objects: &Objects,
        sealer: &Sealer,
        member: &str,
    ) -> Result<(), tonic::Status> {
        let Some(Some(r)) = self.members.get_mut(member) else {
            return Ok(());
        };
        let space = sealer.space().to_owned();
        let began = std::time::Instant::now();
        let listed = client
            .list(pb::ListRequest {
                space: space.clone(),
                prefix: bundles_of(member),
                after: Object::Bundle {
                    device: member.to_owned(),
                    through: r.fed,
                }
                .name(),
                limit: BUNDLES_PER_ROUND,
            })
            .await?
            .into_inner();
        let mut latest = r.fed;
        let mut refusal: Option<String> = None;
        if listed.objects.is_empty() && !r.looked_at_snapshots {
            r.looked_at_snapshots = true;
            if let Ok((updates, at)) =
                from_snapshot(client, objects, sealer, member, r.fed + 1).await?
            {
                for update in updates {
                    if r.tx.send(update).await.is_err() {
                        break;
                    }
                }
                r.fed = at;
                latest = latest.max(at);
            }
        }
        let count = listed.objects.len();
        for (i, object) in listed.objects.iter().enumerate() {
            let through = match Object::parse(&object.name) {
                Ok(Object::Bundle { device, through }) if device == member && through > r.fed => {
                    through
                }
                _ => {
                    refusal = Some(format!(
                        "the hub listed {:?} among {member}'s bundles",
                        object.name
                    ));
                    break;
                }
            };
            latest = latest.max(through);
            let Some(data) = objects.get(&object.name).await? else {
                // Collected meanwhile: the next round lists again.
                break;
            };
            let update = match open_bundle(sealer, member, through, r.fed, &data) {
                Ok(update) => update,
                Err(Opened::Gap { after }) => {
                    // Collected before this device took them: start from a snapshot.
                    match from_snapshot(client, objects, sealer, member, after).await? {
                        Ok((updates, at)) => {
                            for update in updates {
                                if r.tx.send(update).await.is_err() {
                                    break;
                                }
                            }
                            r.fed = at;
                            latest = latest.max(at);
                        }
                        Err(why) => refusal = Some(why),
                    }
                    break;
                }
                Err(Opened::NoKey) => {
                    self.needs_key = true;
                    break;
                }
                Err(Opened::Refused(why)) => {
                    refusal = Some(why);
                    break;
                }
            };
            let last = i + 1 == count && !listed.more;
            if r.tx.send(update_of(update, through, last)).await.is_err() {
                break;
            }
            r.fed = through;
        }
        let fed = r.fed;
        if let Some(why) = &refusal
            && r.refused.as_ref() != Some(why)
        {
            warn!(source = %self.source, member, error = %why, "refused a bundle from the hub; nothing of it is applied");
        }
        let cleared = refusal.is_none() && r.refused.is_some();
        r.refused.clone_from(&refusal);
        self.ctx.update_source(&self.hub, &self.source, |s| {
            let m = s.members.entry(member.to_owned()).or_default();
            // A listing cut short (more to come, or a refusal) has not seen the latest.
            if !listed.more && refusal.is_none() {
                m.listed_at = Some(began);
            }
            m.fed = fed;
            m.latest = m.latest.max(latest);
            if let Some(why) = refusal {
                s.error = why;
            } else if cleared {
                s.error.clear();
            }
        });
        Ok(())
    }
}

/// Why a bundle is not handed over.
enum Opened {
    /// It follows bundles the hub no longer has (collected): it starts after `after`.
    Gap { after: u64 },
    /// It is sealed under a key generation this device does not hold (yet).
    NoKey,
    /// It is not the bundle asked for, or not a bundle at all.
    Refused(String),
}

/// Opens a member's bundle as the one named `through`, checks it follows what came before
/// (`after` no later than what was handed over), and decodes its update.
fn open_bundle(
    sealer: &Sealer,
    member: &str,
    through: u64,
    fed: u64,
    data: &[u8],
) -> Result<peer_pb::IndexUpdate, Opened> {
    let refused = Opened::Refused;
    let plain = sealer
        .open(&Binding::bundle(member, through), data)
        .map_err(|e| match e {
            crate::sealed::SealError::UnknownGeneration { .. } => Opened::NoKey,
            e => refused(format!("bundle {through} of {member}: {e}")),
        })?;
    let bundle = pb::Bundle::decode(plain.as_slice())
        .map_err(|e| refused(format!("bundle {through} of {member} does not decode: {e}")))?;
    if bundle.after > fed {
        return Err(Opened::Gap {
            after: bundle.after,
        });
    }
    let update = peer_pb::IndexUpdate::decode(bundle.update.as_slice())
        .map_err(|e| refused(format!("bundle {through} of {member} does not decode: {e}")))?;
    if update.through_sequence != through || !update.moves.is_empty() {
        return Err(refused(format!(
            "bundle {through} of {member} says it covers {} (or carries folder moves)",
            update.through_sequence
        )));
    }
    Ok(update)
}

/// The member's newest snapshot, which must reach at least `after`, as updates for the
/// receiver (cut to the size one update may have), and the sequence it covers.
async fn from_snapshot(
    client: &mut HubClient<Channel>,
    objects: &Objects,
    sealer: &Sealer,
    member: &str,
    after: u64,
) -> Result<Result<(Vec<Update>, u64), String>, tonic::Status> {
    let listed = client
        .list(pb::ListRequest {
            space: sealer.space().to_owned(),
            prefix: crate::hub::names::snapshots_of(member),
            after: String::new(),
            limit: 0,
        })
        .await?
        .into_inner();
    let newest = listed
        .objects
        .iter()
        .filter_map(|o| match Object::parse(&o.name) {
            Ok(Object::Snapshot { device, through }) if device == member => Some(through),
            _ => None,
        })
        .max();
    let Some(through) = newest.filter(|t| *t >= after) else {
        return Ok(Err(format!(
            "bundles of {member} before {after} are gone from the hub and no snapshot of it \
             reaches that far"
        )));
    };
    let name = Object::Snapshot {
        device: member.to_owned(),
        through,
    }
    .name();
    let Some(data) = objects.get(&name).await? else {
        return Ok(Err(format!(
            "snapshot {through} of {member} is gone from the hub"
        )));
    };
    let opened = sealer
        .open(&Binding::snapshot(member, through), &data)
        .map_err(|e| format!("snapshot {through} of {member}: {e}"))
        .and_then(|plain| {
            let bundle = pb::Bundle::decode(plain.as_slice()).map_err(|e| e.to_string())?;
            peer_pb::IndexUpdate::decode(bundle.update.as_slice()).map_err(|e| e.to_string())
        });
    let mut update = match opened {
        Ok(u) if u.through_sequence == through && u.moves.is_empty() => u,
        Ok(_) => {
            return Ok(Err(format!(
                "snapshot {through} of {member} says it is another"
            )));
        }
        Err(why) => return Ok(Err(why)),
    };
    // Parts below the size limit of one update; only the last says how far it reaches.
    let mut parts = Vec::new();
    let items = std::mem::take(&mut update.items);
    let count = items.len().div_ceil(universal::MAX_ITEMS_PER_UPDATE).max(1);
    let mut items = items.into_iter();
    for i in 0..count {
        let part = peer_pb::IndexUpdate {
            items: items
                .by_ref()
                .take(universal::MAX_ITEMS_PER_UPDATE)
                .collect(),
            through_sequence: through,
            ..peer_pb::IndexUpdate::default()
        };
        let mut u = update_of(part, through, false);
        if i + 1 < count {
            u.through = 0;
        }
        parts.push(u);
    }
    Ok(Ok((parts, through)))
}

/// A checked update for the receiver; an update refused whole keeps only its sequence.
fn update_of(update: peer_pb::IndexUpdate, through: u64, caught_up: bool) -> Update {
    let items = universal::update_from_pb(&update).unwrap_or_else(|e| vec![Err(e)]);
    Update {
        items,
        moves: Vec::new(),
        expands: None,
        through,
        caught_up,
    }
}

/// One member's index through one hub.
struct HubFeed {
    ctx: Ctx,
    hub: String,
    source: String,
    origin: Origin,
}

impl HubFeed {
    fn member(&self, f: impl FnOnce(&mut super::HubMember)) {
        let device = self.origin.device.clone();
        self.ctx.update_source(&self.hub, &self.source, |s| {
            f(s.members.entry(device).or_default());
        });
    }
}

impl Feed for HubFeed {
    fn origin(&self) -> &Origin {
        &self.origin
    }

    fn acknowledge(&self, applied: u64, _received: u64) -> BoxFuture<'_, ()> {
        // The receiver saved the cursor; a hub needs no acknowledgement to go on.
        Box::pin(async move { self.member(|m| m.applied = m.applied.max(applied)) })
    }

    fn progress(&self, progress: Progress) {
        match progress {
            Progress::Needed { items, .. } => self.member(|m| m.needed_items += items),
            Progress::Dealt { items, .. } => {
                self.member(|m| m.needed_items = m.needed_items.saturating_sub(items));
            }
            Progress::Acknowledged { applied, .. } => {
                self.member(|m| m.applied = m.applied.max(applied));
            }
            Progress::Error(e) => {
                self.ctx
                    .update_source(&self.hub, &self.source, |s| s.error = e);
            }
            Progress::Done(_)
            | Progress::Reused(_)
            | Progress::CaughtUp(_)
            | Progress::Moved(_) => {}
        }
    }

    fn refused(&self, what: &str) {
        warn!(source = %self.source, member = %self.origin.device, what, "refused an item of a bundle");
    }

    fn expand(&self, first_sequence: u64) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Bundles carry entries only; a move in one was refused when it was opened.
            warn!(source = %self.source, first_sequence, "a bundle cannot expand a folder move");
        })
    }
}

/// Chunks from the hub: fetched by keyed name, opened, checked against their hash.
struct HubChunks {
    objects: Objects,
    sealer: Arc<Sealer>,
}

impl ChunkProvider for HubChunks {
    fn is_local(&self) -> bool {
        false
    }

    fn get<'a>(&'a self, want: &'a ChunkWanted) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let name = self.sealer.chunk_name(&want.chunk.hash.0);
            let object = Object::Chunk(name.clone()).name();
            let got = self
                .objects
                .get(&object)
                .await
                .map_err(|e| format!("the hub did not give a chunk: {}", e.message()))?
                .ok_or_else(|| "the chunk is not on the hub (yet)".to_owned())?;
            let data = self
                .sealer
                .open(&Binding::chunk(&name), &got)
                .map_err(|e| format!("a chunk from the hub: {e}"))?;
            let chunk = want.chunk;
            if Hash128::of(&data) != chunk.hash
                || data.len() != usize::try_from(chunk.len).unwrap_or(0)
            {
                return Err("a chunk from the hub does not match its hash".to_owned());
            }
            Ok(data)
        })
    }
}
