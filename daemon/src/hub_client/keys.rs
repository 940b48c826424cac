//! Keys between members that never meet: each member's certificate is kept at the hub (it is
//! public, and checked against the member's device ID before use), and after a member is
//! removed, the new key is handed over to each member that stays, sealed for it alone
//! (`sealed::hand_over`). A removed member gets none.

use std::collections::BTreeSet;

use tandem_proto::hub as pb;
use tandem_proto::hub::hub_client::HubClient;
use tonic::transport::Channel;
use tracing::{info, warn};

use super::Ctx;
use super::objects::Objects;
use crate::hub::names::{Object, handovers_of};
use crate::identity::DeviceId;
use crate::sealed::{Handover, Sealer, SourceKey};

fn internal(e: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::internal(e.to_string())
}

/// This device's certificate, DER.
fn own_cert(ctx: &Ctx) -> Result<Vec<u8>, tonic::Status> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(ctx.identity.cert_pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| internal(format!("this device's certificate: {e}")))
}

/// Puts this device's certificate at the hub (once; the same ID is the same certificate).
pub(super) async fn publish_cert(
    ctx: &Ctx,
    objects: &Objects,
    me: &str,
) -> Result<(), tonic::Status> {
    let name = Object::Cert {
        device: me.to_owned(),
    }
    .name();
    objects.put(&name, own_cert(ctx)?, true).await
}

/// A member's certificate from the hub, only if it is that member's (its hash is the ID).
async fn cert_of(objects: &Objects, member: &str) -> Result<Option<Vec<u8>>, tonic::Status> {
    let name = Object::Cert {
        device: member.to_owned(),
    }
    .name();
    let Some(cert) = objects.get(&name).await? else {
        return Ok(None);
    };
    let claimed: Result<DeviceId, _> = member.parse();
    match claimed {
        Ok(id) if DeviceId::from_cert_der(&cert) == id => Ok(Some(cert)),
        _ => {
            warn!(
                member,
                "the hub holds a certificate that is not this member's; ignored"
            );
            Ok(None)
        }
    }
}

/// Hands the newest key (of a generation after the first) to every member that has not got
/// it from this device yet; `handed` remembers who has.
pub(super) async fn hand_over(
    ctx: &Ctx,
    objects: &Objects,
    sealer: &Sealer,
    newest: &SourceKey,
    members: &[String],
    me: &str,
    handed: &mut BTreeSet<(u32, String)>,
) -> Result<(), tonic::Status> {
    if newest.generation == 0 {
        return Ok(());
    }
    for member in members.iter().filter(|m| *m != me) {
        if handed.contains(&(newest.generation, member.clone())) {
            continue;
        }
        // A member that never joined has no certificate yet: tried again next round.
        let Some(cert) = cert_of(objects, member).await? else {
            continue;
        };
        let h = Handover {
            space: sealer.space(),
            from: me,
            to: member,
            generation: newest.generation,
        };
        let sealed =
            crate::sealed::hand_over(&ctx.identity.key_pem, &cert, &h, newest).map_err(internal)?;
        let name = Object::Handover {
            device: me.to_owned(),
            generation: u64::from(newest.generation),
            member: member.clone(),
        }
        .name();
        objects.put(&name, sealed, true).await?;
        handed.insert((newest.generation, member.clone()));
    }
    Ok(())
}

/// Takes the keys other members handed to this device of generations after `newest`; true
/// when one was kept (the link then seals and opens with it).
pub(super) async fn take_over(
    ctx: &Ctx,
    client: &mut HubClient<Channel>,
    objects: &Objects,
    sealer: &Sealer,
    source: &str,
    members: &[String],
    me: &str,
) -> Result<bool, tonic::Status> {
    let mut took = false;
    for member in members.iter().filter(|m| *m != me) {
        let listed = client
            .list(pb::ListRequest {
                space: sealer.space().to_owned(),
                prefix: handovers_of(member),
                after: String::new(),
                limit: 0,
            })
            .await?
            .into_inner();
        for object in listed.objects {
            let Ok(Object::Handover {
                device,
                generation,
                member: to,
            }) = Object::parse(&object.name)
            else {
                continue;
            };
            let Ok(generation) = u32::try_from(generation) else {
                continue;
            };
            if device != *member || to != me || generation <= sealer.generation() {
                continue;
            }
            let (Some(sealed), Some(cert)) = (
                objects.get(&object.name).await?,
                cert_of(objects, member).await?,
            ) else {
                continue;
            };
            let h = Handover {
                space: sealer.space(),
                from: member,
                to: me,
                generation,
            };
            match crate::sealed::take_over(&ctx.identity.key_pem, &cert, &h, &sealed) {
                Ok(key) => {
                    ctx.store
                        .add_source_key(source.to_owned(), key.generation, key.bytes().to_vec())
                        .await
                        .map_err(internal)?;
                    info!(source, from = %member, generation, "took a new source key handed over at the hub");
                    took = true;
                }
                Err(e) => {
                    warn!(source, from = %member, error = %e, "a key handed over at the hub does not open; ignored");
                }
            }
        }
    }
    Ok(took)
}
