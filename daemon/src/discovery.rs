//! LAN discovery: agents announce their device ID and peer port on the local network (IPv4
//! broadcast on every interface, IPv6 link-local multicast) on a port of their own, every 30
//! to 60 s and at once when they hear a device they had not heard before. A peer added
//! without an address is dialled where its announcement came from.
//!
//! An announcement only says where to try: the connection is still pinned to the device ID by
//! mutual TLS, so a forged one costs a failed handshake, nothing more.
//! Must not: trust anything an announcement says beyond an address to try; send anywhere but
//! the local links (broadcast, link-local multicast).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use prost::Message;
use tandem_proto::peer::Announcement;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::identity::DeviceId;
use crate::peer::PeerHandle;

/// The port announcements go to unless configured (the peer port is 27480).
pub const DEFAULT_PORT: u16 = 27482;
/// What starts every announcement, so stray datagrams on the port are dropped unread.
const MAGIC: &[u8; 5] = b"TNDM1";
/// The IPv6 link-local group announcements go to.
const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0x7464, 0x6d31);
/// Longest datagram read; an announcement is under 100 bytes.
const MAX_DATAGRAM: usize = 512;
/// For black-box tests only: no discovery, whatever the config says (test agents must send
/// nothing beyond loopback; the discovery test runs its agents in network namespaces).
pub const TEST_NO_DISCOVERY: &str = "TANDEM_TEST_NO_DISCOVERY";

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen for LAN announcements on UDP port {port}: {source}; set [discovery] port to a free one, or enabled = false"
)]
pub struct Error {
    port: u16,
    source: std::io::Error,
}

/// What an announcement carries, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    pub device: DeviceId,
    pub port: u16,
}

/// The datagram announcing `device` on `port`.
pub fn encode(device: &DeviceId, port: u16) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    Announcement {
        device_id: device.to_string(),
        port: u32::from(port),
    }
    .encode(&mut out)
    .unwrap_or_default();
    out
}

/// An announcement read back; `None` for anything else.
pub fn decode(datagram: &[u8]) -> Option<Heard> {
    let body = datagram.strip_prefix(MAGIC.as_slice())?;
    let a = Announcement::decode(body).ok()?;
    let port = u16::try_from(a.port).ok().filter(|p| *p != 0)?;
    let device = a.device_id.parse().ok()?;
    Some(Heard { device, port })
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    // Several agents on one machine each hear every announcement.
    s.set_reuse_address(true)?;
    if addr.is_ipv4() {
        s.set_broadcast(true)?;
    } else {
        s.set_only_v6(true)?;
        s.set_multicast_loop_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// Where to send an announcement now: each IPv4 interface's broadcast address, and the IPv6
/// group on each interface with a link-local address.
fn targets(port: u16) -> (Vec<SocketAddr>, Vec<u32>) {
    let mut v4 = BTreeSet::new();
    let mut v6 = BTreeSet::new();
    for i in if_addrs::get_if_addrs().unwrap_or_default() {
        if i.is_loopback() {
            continue;
        }
        match &i.addr {
            // The subnet's broadcast address, from the address and mask: an interface set up
            // without `brd` reports none (or its own address) as its broadcast.
            if_addrs::IfAddr::V4(a) if a.prefixlen < 31 => {
                v4.insert(directed_broadcast(a.ip, a.netmask));
            }
            if_addrs::IfAddr::V4(_) => {}
            if_addrs::IfAddr::V6(a) if a.ip.is_unicast_link_local() => {
                if let Some(index) = i.index {
                    v6.insert(index);
                }
            }
            if_addrs::IfAddr::V6(_) => {}
        }
    }
    let mut out: Vec<SocketAddr> = v4
        .into_iter()
        .map(|ip| SocketAddr::new(IpAddr::V4(ip), port))
        .collect();
    let indexes: Vec<u32> = v6.into_iter().collect();
    out.extend(
        indexes
            .iter()
            .map(|&i| SocketAddr::V6(SocketAddrV6::new(GROUP_V6, port, 0, i))),
    );
    (out, indexes)
}

/// The broadcast address of the subnet `ip` lies in.
fn directed_broadcast(ip: Ipv4Addr, netmask: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ip) | !u32::from(netmask))
}

/// Runs discovery until `cancel`: announces `device` with `peer_port`, and hands every device
/// heard to the peer side.
///
/// # Errors
/// The announcement port cannot be bound (IPv4; IPv6 is used where it can be).
pub async fn run(
    device: DeviceId,
    peer_port: u16,
    port: u16,
    peers: PeerHandle,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let v4 = udp_socket(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
        .map_err(|source| Error { port, source })?;
    let v6 = match udp_socket(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)) {
        Ok(s) => Some(s),
        Err(e) => {
            debug!(error = %e, "no IPv6 announcements");
            None
        }
    };
    info!(port, "LAN discovery on");
    let datagram = encode(&device, peer_port);
    let mut joined: BTreeSet<u32> = BTreeSet::new();
    let mut heard: BTreeSet<String> = BTreeSet::new();
    let mut next = tokio::time::Instant::now();
    let (mut buf4, mut buf6) = (vec![0u8; MAX_DATAGRAM], vec![0u8; MAX_DATAGRAM]);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep_until(next) => {
                let (to, indexes) = targets(port);
                debug!(to = ?to, "announcing this device");
                if let Some(v6) = &v6 {
                    for i in indexes {
                        if joined.insert(i)
                            && let Err(e) = v6.join_multicast_v6(&GROUP_V6, i)
                        {
                            debug!(interface = i, error = %e, "cannot join the IPv6 group");
                        }
                    }
                }
                for addr in to {
                    let socket = if addr.is_ipv4() { Some(&v4) } else { v6.as_ref() };
                    if let Some(s) = socket
                        && let Err(e) = s.send_to(&datagram, addr).await
                    {
                        debug!(to = %addr, error = %e, "announcement not sent");
                    }
                }
                next = tokio::time::Instant::now() + interval();
            }
            got = v4.recv_from(&mut buf4) => {
                if let Ok((n, from)) = got
                    && heard_one(&buf4[..n.min(buf4.len())], from, &device, &peers, &mut heard).await
                {
                    next = tokio::time::Instant::now() + Duration::from_millis(200);
                }
            }
            got = recv6(v6.as_ref(), &mut buf6) => {
                if let Ok((n, from)) = got
                    && heard_one(&buf6[..n.min(buf6.len())], from, &device, &peers, &mut heard).await
                {
                    next = tokio::time::Instant::now() + Duration::from_millis(200);
                }
            }
        }
    }
}

async fn recv6(socket: Option<&UdpSocket>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// Takes one datagram; true when it announced a device not heard before (then this device
/// announces itself at once, so the other learns of it without waiting a round).
async fn heard_one(
    datagram: &[u8],
    from: SocketAddr,
    me: &DeviceId,
    peers: &PeerHandle,
    heard: &mut BTreeSet<String>,
) -> bool {
    let Some(h) = decode(datagram) else {
        debug!(from = %from, "a datagram on the discovery port that is no announcement");
        return false;
    };
    if h.device == *me {
        return false;
    }
    let address = SocketAddr::new(from.ip(), h.port);
    let text = h.device.to_string();
    let new = heard.insert(text.clone());
    if new {
        info!(device = %h.device.short_string(), address = %address, "heard a device on the LAN");
    }
    peers.discovered(text, address.to_string()).await;
    new
}

/// 30 to 60 s, drawn anew each time so agents started together spread out.
fn interval() -> Duration {
    let mut b = [0u8; 2];
    if getrandom::fill(&mut b).is_err() {
        warn!("no randomness for the announcement interval; 45 s");
        return Duration::from_secs(45);
    }
    Duration::from_millis(30_000 + u64::from(u16::from_le_bytes(b)) % 30_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_reads_back_and_nothing_else_does() {
        let id = DeviceId::from_bytes([7; 32]);
        let d = encode(&id, 27480);
        assert_eq!(
            decode(&d),
            Some(Heard {
                device: id,
                port: 27480
            })
        );
        assert_eq!(decode(b"TNDM1"), None);
        assert_eq!(decode(&d[1..]), None, "no magic");
        assert_eq!(decode(&encode(&id, 0)), None, "port 0");
        let mut forged = MAGIC.to_vec();
        Announcement {
            device_id: "NOT-AN-ID".into(),
            port: 1,
        }
        .encode(&mut forged)
        .unwrap_or_default();
        assert_eq!(decode(&forged), None, "a device ID that does not check");
    }

    #[test]
    fn the_broadcast_address_comes_from_address_and_mask() {
        assert_eq!(
            directed_broadcast(Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(255, 255, 255, 0)),
            Ipv4Addr::new(10, 77, 0, 255)
        );
        assert_eq!(
            directed_broadcast(
                Ipv4Addr::new(192, 168, 5, 9),
                Ipv4Addr::new(255, 255, 252, 0)
            ),
            Ipv4Addr::new(192, 168, 7, 255)
        );
    }

    #[test]
    fn intervals_lie_between_30_and_60_seconds() {
        for _ in 0..100 {
            let i = interval();
            assert!(
                i >= Duration::from_secs(30) && i < Duration::from_secs(60),
                "{i:?}"
            );
        }
    }
}
