//! One hub: the TLS connection (pinned to the hub's device ID), and per keyed source its
//! space joined, this device's bundles uploaded and the other members' bundles pulled.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tandem_proto::hub as pb;
use tandem_proto::hub::hub_client::HubClient;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{info, warn};

use super::feed::Members;
use super::{Ctx, POLL};
use crate::identity::DeviceId;
use crate::sealed::{Sealer, SourceKey};
use crate::store::SourceRow;

/// Largest message to or from a hub (an object plus its envelope).
pub(super) const MAX_MESSAGE: usize = crate::hub::service::MAX_OBJECT_BYTES + 4096;

/// Whether a failed call means the connection is gone (reconnect), rather than a refusal of
/// that one request.
pub(super) fn connection_lost(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
    )
}

/// Keeps the link to one hub up until `stop`, reconnecting with a growing pause.
pub(super) async fn run(ctx: Ctx, hub: String, address: String, stop: CancellationToken) {
    ctx.update(&hub, |h| h.address.clone_from(&address));
    let mut pause = Duration::from_millis(250);
    loop {
        let error = match connect(&ctx, &hub, &address).await {
            Ok(client) => {
                info!(address = %address, "hub connected");
                ctx.update(&hub, |h| {
                    h.connected = true;
                    h.last_error.clear();
                });
                pause = Duration::from_millis(250);
                let mut link = Link {
                    ctx: ctx.clone(),
                    hub: hub.clone(),
                    client,
                    me: ctx.identity.device_id.to_string(),
                    sources: BTreeMap::new(),
                };
                let error = link.run(&stop).await;
                link.stop();
                error
            }
            Err(e) => e,
        };
        ctx.update(&hub, |h| {
            h.connected = false;
            h.last_error.clone_from(&error);
        });
        if stop.is_cancelled() {
            return;
        }
        warn!(address = %address, error = %error, "hub link down");
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

/// Dials the hub over TLS, accepting only the certificate of its device ID.
async fn connect(ctx: &Ctx, hub: &str, address: &str) -> Result<HubClient<Channel>, String> {
    let device: DeviceId = hub.parse().map_err(|e| format!("hub ID {hub}: {e}"))?;
    let config =
        crate::peer::tls::client_config(&ctx.identity, device).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let addr = address.to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://tandem.hub")
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let (connector, addr) = (connector.clone(), addr.clone());
            async move {
                let tcp = TcpStream::connect(&addr).await?;
                let _ = tcp.set_nodelay(true);
                let tls = connector
                    .connect(crate::peer::tls::server_name(), tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| format!("cannot connect to hub at {address}: {e}"))?;
    Ok(HubClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// One source at this hub, while the link is up.
pub(super) struct SourceLink {
    pub sealer: Arc<Sealer>,
    /// The space's objects, straight from the store when the hub allows.
    pub objects: super::objects::Objects,
    /// The keys the sealer was made with: other keys (a new generation, or a key taken from
    /// a member) rebuild it.
    keys: Vec<SourceKey>,
    /// The other members' bundles, each into a receiver.
    pub members: Members,
    /// Chunks known to be on the hub already, as of `chunks_seen` (forgotten after a minute:
    /// the hub collects unreferenced chunks, after a grace period far longer than that).
    pub chunks_there: std::collections::HashSet<String>,
    pub chunks_seen: std::time::Instant,
    /// When the members were last asked of the hub (another member may add one).
    joined_at: std::time::Instant,
    /// This device's snapshots and cursor at the hub.
    pub own: super::upload::Own,
    /// The members as the hub last said.
    hub_members: Vec<String>,
    /// To whom this device handed over which key generation.
    handed: std::collections::BTreeSet<(u32, String)>,
}

/// How often a link asks the hub for a source's members again.
const REJOIN_EVERY: Duration = Duration::from_secs(10);

struct Link {
    ctx: Ctx,
    hub: String,
    client: HubClient<Channel>,
    me: String,
    sources: BTreeMap<String, SourceLink>,
}

impl Link {
    /// Polls until the connection fails or `stop`; the error says why it ended.
    async fn run(&mut self, stop: &CancellationToken) -> String {
        loop {
            if let Err(e) = self.step().await {
                return e;
            }
            tokio::select! {
                () = stop.cancelled() => return "stopped".to_owned(),
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Ends every receiver of this link.
    fn stop(&mut self) {
        for s in self.sources.values_mut() {
            s.members.stop_all();
        }
    }

    /// One round over every keyed source. An error is a lost connection.
    async fn step(&mut self) -> Result<(), String> {
        let rows = self
            .ctx
            .store
            .sources()
            .await
            .map_err(|e| format!("cannot read the sources: {e}"))?;
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        self.sources.retain(|id, s| {
            let keep = ids.contains(id);
            if !keep {
                s.members.stop_all();
            }
            keep
        });
        for row in rows {
            if row.paused {
                continue;
            }
            match self.source_step(&row).await {
                // A refused bundle keeps its error until it is past (see `feed`).
                Ok(()) => {}
                Err(status) if connection_lost(&status) => {
                    return Err(format!("hub connection lost: {}", status.message()));
                }
                Err(status) => {
                    let why = status.message().to_owned();
                    warn!(source = %row.id, error = %why, "hub refused a request");
                    self.ctx
                        .update_source(&self.hub, &row.id, |s| s.error.clone_from(&why));
                    // Joined again next round: membership may have changed.
                    if let Some(mut s) = self.sources.remove(&row.id) {
                        s.members.stop_all();
                    }
                }
            }
        }
        Ok(())
    }

    async fn source_step(&mut self, row: &SourceRow) -> Result<(), tonic::Status> {
        let keys = self
            .ctx
            .store
            .source_keys(row.id.clone())
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        let keys: Vec<SourceKey> = keys
            .into_iter()
            .filter_map(|(generation, bytes)| {
                Some(SourceKey::from_bytes(generation, bytes.try_into().ok()?))
            })
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        // A new generation, or a key taken from a member (another space): joined anew.
        let stale = self.sources.get(&row.id).is_none_or(|s| s.keys != keys);
        if stale {
            let sealer =
                Arc::new(Sealer::new(&keys).map_err(|e| tonic::Status::internal(e.to_string()))?);
            let joined = self.join(&sealer, row).await?;
            let (members, retention) = (
                joined.members.clone(),
                Duration::from_secs(joined.retention_s),
            );
            info!(source = %row.id, members = members.len(), "joined at the hub");
            self.ctx
                .update_source(&self.hub, &row.id, |s| s.error.clear());
            let objects = super::objects::Objects::new(
                self.client.clone(),
                self.ctx.http.clone(),
                sealer.space(),
            );
            super::keys::publish_cert(&self.ctx, &objects, &self.me).await?;
            let link = SourceLink {
                objects,
                hub_members: members.clone(),
                handed: std::collections::BTreeSet::new(),
                sealer,
                keys,
                members: Members::new(self.ctx.clone(), self.hub.clone(), row.id.clone()),
                chunks_there: std::collections::HashSet::new(),
                chunks_seen: std::time::Instant::now(),
                joined_at: std::time::Instant::now(),
                own: super::upload::Own::new(retention),
            };
            if let Some(mut old) = self.sources.insert(row.id.clone(), link) {
                old.members.stop_all();
            }
            if let Some(s) = self.sources.get_mut(&row.id) {
                s.members.set(&members, &self.me);
            }
        }
        let rejoin = self
            .sources
            .get(&row.id)
            .filter(|s| s.joined_at.elapsed() >= REJOIN_EVERY)
            .map(|s| s.sealer.clone());
        if let Some(sealer) = rejoin {
            let joined = self.join(&sealer, row).await?;
            if let Some(s) = self.sources.get_mut(&row.id) {
                s.members.set(&joined.members, &self.me);
                s.hub_members = joined.members;
                s.joined_at = std::time::Instant::now();
                // A key handed over meanwhile is looked for at each rejoin.
                s.members.needs_key = true;
            }
        }
        let Some(link) = self.sources.get_mut(&row.id) else {
            return Ok(());
        };
        super::upload::step(&self.ctx, &self.hub, &mut self.client, link, row, &self.me).await?;
        let pulled = link
            .members
            .pull(&mut self.client, &link.objects, &link.sealer, row)
            .await;
        pulled?;
        if let Some(newest) = link.keys.iter().max_by_key(|k| k.generation) {
            super::keys::hand_over(
                &self.ctx,
                &link.objects,
                &link.sealer,
                newest,
                &link.hub_members,
                &self.me,
                &mut link.handed,
            )
            .await?;
        }
        if std::mem::take(&mut link.members.needs_key) {
            super::keys::take_over(
                &self.ctx,
                &mut self.client,
                &link.objects,
                &link.sealer,
                &row.id,
                &link.hub_members,
                &self.me,
            )
            .await?;
        }
        super::upload::snapshot_and_cursor(
            &self.ctx,
            &self.hub,
            &mut self.client,
            link,
            row,
            &self.me,
        )
        .await?;
        let direct = link.objects.direct_bytes();
        self.ctx
            .update_source(&self.hub, &row.id, |s| s.direct_bytes = direct);
        Ok(())
    }

    /// Joins the source's space and adds the devices the source is shared with as members;
    /// returns the members.
    async fn join(
        &mut self,
        sealer: &Sealer,
        row: &SourceRow,
    ) -> Result<pb::Members, tonic::Status> {
        let space = sealer.space().to_owned();
        let mut members = self
            .client
            .join(pb::JoinRequest {
                space: space.clone(),
            })
            .await?
            .into_inner();
        for peer in &row.peers {
            if members.members.contains(peer) || members.removed.contains(peer) {
                continue;
            }
            members = self
                .client
                .add_member(pb::MemberRequest {
                    space: space.clone(),
                    device: peer.clone(),
                })
                .await?
                .into_inner();
        }
        tracing::debug!(source = %row.id, members = members.members.len(), "members at the hub");
        // Devices this device removed are removed at the hub too.
        let removals = self
            .ctx
            .store
            .removals(row.id.clone())
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        for device in removals {
            if members.members.contains(&device) {
                members = self
                    .client
                    .remove_member(pb::MemberRequest {
                        space: space.clone(),
                        device: device.clone(),
                    })
                    .await?
                    .into_inner();
                info!(source = %row.id, device = %device, "removed from the source at the hub");
            }
        }
        // Devices another member removed are not shared with from here either.
        for device in members.removed.iter().filter(|d| row.peers.contains(d)) {
            self.ctx
                .store
                .unshare_source(row.id.clone(), device.clone(), false)
                .await
                .map_err(|e| tonic::Status::internal(e.to_string()))?;
            let peers: Vec<String> = row.peers.iter().filter(|p| *p != device).cloned().collect();
            if let Some(shared) = self.shared(&row.id, &peers).await {
                shared.commander.set_peers(peers.clone()).await;
            }
            info!(source = %row.id, device = %device, "a member removed this device from the source; no longer shared with it");
        }
        Ok(members)
    }

    /// The running source, found through any device it is shared with.
    async fn shared(&self, source: &str, peers: &[String]) -> Option<crate::peer::SharedSource> {
        for p in peers {
            if let Some(s) = self
                .ctx
                .sources
                .shared_with(p.clone())
                .await
                .into_iter()
                .find(|s| s.id == source)
            {
                return Some(s);
            }
        }
        None
    }
}
