//! A TCP proxy for fault tests: it sits on 127.0.0.1 between two agents and, when the test
//! says so, cuts connections mid-stream, delays what it forwards, flips bytes, or refuses new
//! connections. It counts what it did, so a test can show that its faults hit real traffic.
//!
//! One proxy may carry several routes (a listener each, forwarding to its own target) under one
//! set of faults and counters: with a route to each of two agents, whichever of them dials,
//! the connection crosses the same faults. Plain threads, as the rest of the harness is
//! synchronous: an accepting thread per route, and two pumps (one per direction) for every
//! connection. Must not: understand what it carries (it moves bytes, it never parses them),
//! or listen or forward anywhere but loopback.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::tree::PseudoRandom;

/// Bytes read (and so forwarded) at once by one pump.
const PUMP_BUFFER: usize = 64 * 1024;
/// Longest the proxy waits to connect to its target.
const CONNECT_LIMIT: Duration = Duration::from_secs(5);

/// A running proxy; dropping it closes every connection and stops it.
pub struct Proxy {
    shared: Arc<Shared>,
    routes: Vec<Route>,
}

/// One listener of a proxy and the thread accepting on it.
struct Route {
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

/// What [`Proxy::counts`] reports: everything the proxy did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Connections accepted and forwarded to the target.
    pub accepted: u64,
    /// Connections closed at once because new ones were being refused.
    pub refused: u64,
    /// Bytes forwarded, both directions, all connections.
    pub forwarded: u64,
    /// Cuts that closed at least one live connection.
    pub cuts: u64,
    /// Connections closed by those cuts.
    pub connections_cut: u64,
    /// Bytes the cut connections had carried before they were cut, summed.
    pub bytes_before_cuts: u64,
    /// Bytes flipped in the forwarded stream.
    pub flipped: u64,
    /// Reads held back by a delay.
    pub delayed: u64,
}

/// Everything the threads share: the switches the test flips and the counters.
struct Shared {
    stop: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    counts: Counts,
    /// Live connections, by number, so a cut can reach them all.
    live: BTreeMap<u64, Link>,
    next_link: u64,
    refusing: bool,
    delay: Duration,
    /// Cut everything once `counts.forwarded` reaches this.
    cut_at: Option<u64>,
    /// After each planned cut, the next one this many bytes later, this many more times.
    cut_every: Option<(u64, u64)>,
    /// A planned cut is decided but not yet carried out: every read meanwhile is dropped,
    /// since the connection it belongs to is about to be cut (counting it would put bytes
    /// after the cut among those before it).
    cutting: bool,
    flips: Flips,
}

/// How bytes of the forwarded stream get flipped.
#[derive(Default)]
enum Flips {
    #[default]
    Off,
    /// Once, at this position of the proxy's whole forwarded stream.
    At(u64),
    /// Again and again: the next at `next`, then a seeded gap of 1..=2×`mean_gap` bytes.
    Random {
        next: u64,
        mean_gap: u64,
        rng: PseudoRandom,
    },
}

/// One proxied connection: both sockets (to close them from a cut) and its byte count.
struct Link {
    client: TcpStream,
    server: TcpStream,
    forwarded: Arc<AtomicU64>,
}

impl Link {
    fn close(&self) {
        // Either may be closed already; a cut only needs both to be closed afterwards.
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

impl Proxy {
    /// A proxy with no routes yet and no faults switched on.
    pub fn new() -> Proxy {
        Proxy {
            shared: Arc::new(Shared {
                stop: AtomicBool::new(false),
                state: Mutex::new(State::default()),
            }),
            routes: Vec::new(),
        }
    }

    /// Starts forwarding a fresh 127.0.0.1 port to `target` (a loopback `ip:port`); returns
    /// the address to give agents instead of the target's.
    pub fn route(&mut self, target: &str) -> String {
        let target: SocketAddr = target
            .parse()
            .unwrap_or_else(|e| panic!("proxy target {target:?} is not ip:port: {e}"));
        assert!(
            target.ip().is_loopback(),
            "the proxy only forwards to loopback, not {target}"
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy on 127.0.0.1:0");
        let addr = listener.local_addr().expect("the proxy's bound address");
        let shared = self.shared.clone();
        let acceptor = std::thread::Builder::new()
            .name(format!("proxy-{}", addr.port()))
            .spawn(move || accept_loop(&listener, target, &shared))
            .expect("start the proxy's accepting thread");
        self.routes.push(Route {
            addr,
            acceptor: Some(acceptor),
        });
        addr.to_string()
    }

    /// Everything the proxy did so far.
    pub fn counts(&self) -> Counts {
        self.shared.lock().counts
    }

    /// Connections open right now.
    pub fn live(&self) -> usize {
        self.shared.lock().live.len()
    }

    /// Closes every live connection now, wherever its streams are; returns how many.
    pub fn cut_all(&self) -> usize {
        cut_all(&mut self.shared.lock())
    }

    /// Cuts every live connection once `bytes` more bytes have been forwarded, and then again
    /// after each further `bytes`, `times` times in all (the cut lands in the middle of
    /// whatever the last read held). Replaces any plan made before.
    pub fn cut_every(&self, bytes: u64, times: u64) {
        assert!(bytes > 0, "cuts need at least one byte between them");
        let mut state = self.shared.lock();
        if times == 0 {
            state.cut_at = None;
            state.cut_every = None;
            return;
        }
        state.cut_at = Some(state.counts.forwarded + bytes);
        state.cut_every = Some((bytes, times - 1));
    }

    /// Holds back every read for `delay` before forwarding it; `Duration::ZERO` stops that.
    pub fn delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    /// Flips (XOR 0xFF) the byte `bytes` bytes ahead in the forwarded stream, once.
    pub fn flip_once_after(&self, bytes: u64) {
        let mut state = self.shared.lock();
        state.flips = Flips::At(state.counts.forwarded + bytes);
    }

    /// Flips bytes again and again, on average one in `mean_gap` (gaps drawn from `seed`),
    /// until [`Proxy::stop_flipping`].
    pub fn flip_randomly(&self, seed: u64, mean_gap: u64) {
        assert!(mean_gap > 0, "a gap between flips needs at least one byte");
        let mut state = self.shared.lock();
        let mut rng = PseudoRandom::new(seed);
        let next = state.counts.forwarded + 1 + rng.below(2 * mean_gap);
        state.flips = Flips::Random {
            next,
            mean_gap,
            rng,
        };
    }

    /// Forwards every byte as it came again.
    pub fn stop_flipping(&self) {
        self.shared.lock().flips = Flips::Off;
    }

    /// While `refuse` holds, closes each new connection as soon as it is accepted (live ones
    /// are left alone; [`Proxy::cut_all`] ends those).
    pub fn refuse_new(&self, refuse: bool) {
        self.shared.lock().refusing = refuse;
    }
}

impl Default for Proxy {
    fn default() -> Proxy {
        Proxy::new()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for route in &mut self.routes {
            // Wakes the accepting thread, blocked in accept(), so it sees `stop`; if the
            // connect fails the listener is gone already.
            let _ = TcpStream::connect_timeout(&route.addr, CONNECT_LIMIT);
            if let Some(acceptor) = route.acceptor.take() {
                // A panic there already failed the test; nothing more to report here.
                let _ = acceptor.join();
            }
        }
        cut_all(&mut self.shared.lock());
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A pump that panicked holding the lock left counters that are still worth reading.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn cut_all(state: &mut State) -> usize {
    state.cutting = false;
    let n = state.live.len();
    if n == 0 {
        return 0;
    }
    for link in state.live.values() {
        state.counts.bytes_before_cuts += link.forwarded.load(Ordering::SeqCst);
        link.close();
    }
    state.counts.cuts += 1;
    state.counts.connections_cut += u64::try_from(n).expect("a count fits u64");
    // The pumps remove their own link when they end; emptied here too, so a second cut right
    // after this one does not count the same connections again.
    state.live.clear();
    n
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, shared: &Arc<Shared>) {
    for incoming in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = incoming else {
            // Accept errors (a connection reset before it was accepted) end that one only.
            continue;
        };
        {
            let mut state = shared.lock();
            if state.refusing {
                state.counts.refused += 1;
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
        }
        let Ok(server) = TcpStream::connect_timeout(&target, CONNECT_LIMIT) else {
            // The target is down (an agent restarting): the client sees a closed connection,
            // as it would see a refused one without the proxy.
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let forwarded = Arc::new(AtomicU64::new(0));
        let sockets = (
            client.try_clone(),
            server.try_clone(),
            server.try_clone(),
            client.try_clone(),
        );
        let (Ok(client_in), Ok(server_out), Ok(server_in), Ok(client_out)) = sockets else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let id = {
            let mut state = shared.lock();
            state.counts.accepted += 1;
            state.next_link += 1;
            let id = state.next_link;
            state.live.insert(
                id,
                Link {
                    client,
                    server,
                    forwarded: forwarded.clone(),
                },
            );
            id
        };
        let pumps = Arc::new(AtomicU64::new(2));
        for (from, to) in [(client_in, server_out), (server_in, client_out)] {
            let (shared, forwarded, pumps) = (shared.clone(), forwarded.clone(), pumps.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("proxy-link-{id}"))
                .spawn(move || {
                    pump(from, to, &shared, &forwarded);
                    // The last pump of a link to end forgets it.
                    if pumps.fetch_sub(1, Ordering::SeqCst) == 1 {
                        shared.lock().live.remove(&id);
                    }
                });
            assert!(spawned.is_ok(), "cannot start a proxy pump thread");
        }
    }
}

/// Forwards `from` to `to` until either ends, applying the faults switched on at each read.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared, link_bytes: &AtomicU64) {
    let mut buf = vec![0u8; PUMP_BUFFER];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => {
                // A clean end of this direction: pass it on, and let the other go on.
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let plan = plan_read(shared, &mut buf[..n]);
        if !plan.delay.is_zero() {
            // The delay is the fault under test, not a wait for the agents.
            std::thread::sleep(plan.delay);
        }
        let sent = to.write_all(&buf[..plan.forward]);
        let forwarded = u64::try_from(plan.forward).expect("a read length fits u64");
        link_bytes.fetch_add(forwarded, Ordering::SeqCst);
        if plan.cut {
            cut_all(&mut shared.lock());
            return;
        }
        if sent.is_err() {
            break;
        }
    }
    // An error in either direction ends the whole connection, as a broken link would.
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// What to do with one read: how much of it to forward, after how long, and whether to cut
/// every connection after forwarding it.
struct ReadPlan {
    forward: usize,
    delay: Duration,
    cut: bool,
}

/// Claims the next stretch of the proxy's forwarded stream for `data`, flipping the bytes due
/// in it, and decides on a planned cut.
fn plan_read(shared: &Shared, data: &mut [u8]) -> ReadPlan {
    let mut state = shared.lock();
    if state.cutting {
        return ReadPlan {
            forward: 0,
            delay: Duration::ZERO,
            cut: false,
        };
    }
    let start = state.counts.forwarded;
    let mut forward = data.len();
    let mut cut = false;
    if let Some(at) = state.cut_at {
        let left = usize::try_from(at.saturating_sub(start)).unwrap_or(usize::MAX);
        if left <= forward {
            // Forward up to the planned position and cut there, mid-read: the peer gets a
            // torn record. At least one byte, so a cut always follows some traffic.
            forward = left.max(1);
            cut = true;
            state.cutting = true;
            state.cut_at = None;
            if let Some((bytes, more)) = state.cut_every
                && more > 0
            {
                state.cut_at = Some(start + u64::try_from(forward).expect("fits") + bytes);
                state.cut_every = Some((bytes, more - 1));
            }
        }
    }
    let end = start + u64::try_from(forward).expect("a read length fits u64");
    let mut flipped = 0;
    loop {
        let due = match &state.flips {
            Flips::At(at) | Flips::Random { next: at, .. } if (start..end).contains(at) => *at,
            _ => break,
        };
        let i = usize::try_from(due - start).expect("inside this read");
        data[i] ^= 0xFF;
        flipped += 1;
        state.flips = match std::mem::take(&mut state.flips) {
            Flips::Random {
                mean_gap, mut rng, ..
            } => Flips::Random {
                next: due + 1 + rng.below(2 * mean_gap),
                mean_gap,
                rng,
            },
            _ => Flips::Off,
        };
    }
    state.counts.flipped += flipped;
    state.counts.forwarded = end;
    if !state.delay.is_zero() {
        state.counts.delayed += 1;
    }
    ReadPlan {
        forward,
        delay: state.delay,
        cut,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use super::Proxy;
    use crate::backoff::retry_with_backoff;

    const LIMIT: Duration = Duration::from_secs(10);

    /// A server that echoes every connection back until the client half-closes.
    fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo server");
        let addr = listener.local_addr().expect("echo address").to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    let mut back = conn.try_clone().expect("clone the echo socket");
                    // Ends when the proxy closes the connection; nothing to report.
                    let _ = std::io::copy(&mut conn, &mut back);
                    let _ = back.shutdown(Shutdown::Write);
                });
            }
        });
        addr
    }

    /// A proxy with one route, to a fresh echo server; and that route's address.
    fn echo_proxy() -> (Proxy, String) {
        let mut proxy = Proxy::new();
        let addr = proxy.route(&echo_server());
        (proxy, addr)
    }

    /// Sends `data` through the proxy at `addr` and reads back what arrives until the end.
    fn round_trip(addr: &str, data: &[u8]) -> Vec<u8> {
        let mut conn = TcpStream::connect(addr).expect("connect to the proxy");
        conn.set_read_timeout(Some(LIMIT))
            .expect("set a read timeout");
        let mut writer = conn.try_clone().expect("clone the client socket");
        let data = data.to_vec();
        let sender = std::thread::spawn(move || {
            // A cut ends the write early; the reader sees that.
            let _ = writer.write_all(&data);
            let _ = writer.shutdown(Shutdown::Write);
        });
        let mut back = Vec::new();
        // A cut may end the read with a reset instead of an end; both end the stream.
        let _ = conn.read_to_end(&mut back);
        sender.join().expect("the sending thread");
        back
    }

    #[test]
    fn forwards_untouched_and_counts_both_directions() {
        let (proxy, addr) = echo_proxy();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        assert!(
            round_trip(&addr, &data) == data,
            "the bytes came back changed"
        );
        let counts = proxy.counts();
        assert_eq!(counts.accepted, 1);
        assert_eq!(counts.forwarded, 2 * data.len() as u64);
        assert_eq!((counts.cuts, counts.flipped), (0, 0));
    }

    #[test]
    fn flips_exactly_one_byte_once() {
        let (proxy, addr) = echo_proxy();
        proxy.flip_once_after(1000);
        let data = vec![0x5Au8; 4000];
        let back = round_trip(&addr, &data);
        assert_eq!(back.len(), data.len());
        let changed: Vec<usize> = (0..data.len()).filter(|&i| back[i] != data[i]).collect();
        // Byte 1000 of the stream both ways together: on its way out if the whole message
        // went out in one read (as it does on loopback), else on its way back.
        assert_eq!(changed.len(), 1, "flipped: {changed:?}");
        assert!(changed[0] <= 1000, "flipped: {changed:?}");
        assert_eq!(back[changed[0]], 0x5A ^ 0xFF);
        assert_eq!(proxy.counts().flipped, 1);
    }

    #[test]
    fn random_flips_hit_again_and_again_until_stopped() {
        let (proxy, addr) = echo_proxy();
        proxy.flip_randomly(7, 5000);
        let data = vec![0u8; 200_000];
        let back = round_trip(&addr, &data);
        let flipped = proxy.counts().flipped;
        // 400,000 bytes forwarded with a mean gap of 5,000: about 80 flips.
        assert!((40..=160).contains(&flipped), "{flipped} flips");
        assert!(back.iter().any(|b| *b != 0));
        proxy.stop_flipping();
        assert!(
            round_trip(&addr, &data) == data,
            "flipped after stop_flipping"
        );
        assert_eq!(proxy.counts().flipped, flipped);
    }

    #[test]
    fn a_planned_cut_ends_the_connection_mid_stream() {
        let (proxy, addr) = echo_proxy();
        proxy.cut_every(100_000, 1);
        let data = vec![1u8; 1_000_000];
        let back = round_trip(&addr, &data);
        assert!(back.len() < data.len(), "the stream was cut short");
        let counts = proxy.counts();
        assert_eq!((counts.cuts, counts.connections_cut), (1, 1));
        // The cut falls at byte 100,000 of both directions together; the echo may have had
        // a read on its way when it came.
        assert!(
            (1..=100_000).contains(&counts.bytes_before_cuts),
            "{counts:?}"
        );
        // Once only: the next connection goes through whole.
        assert!(
            round_trip(&addr, &data[..5000]) == data[..5000],
            "cut again"
        );
    }

    #[test]
    fn cut_all_closes_idle_connections_and_refusing_turns_new_ones_away() {
        let (proxy, addr) = echo_proxy();
        let mut idle = TcpStream::connect(&addr).expect("connect");
        idle.set_read_timeout(Some(LIMIT))
            .expect("set a read timeout");
        assert!(retry_with_backoff(LIMIT, || (proxy.live() == 1).then_some(())).is_some());
        assert_eq!(proxy.cut_all(), 1);
        let mut buf = [0u8; 1];
        assert!(matches!(idle.read(&mut buf), Ok(0) | Err(_)), "closed");

        proxy.refuse_new(true);
        assert!(round_trip(&addr, b"hello").is_empty());
        assert_eq!(proxy.counts().refused, 1);
        proxy.refuse_new(false);
        assert_eq!(round_trip(&addr, b"hello"), b"hello");
    }

    #[test]
    fn routes_share_one_set_of_faults_and_counters() {
        let mut proxy = Proxy::new();
        let (first, second) = (proxy.route(&echo_server()), proxy.route(&echo_server()));
        proxy.flip_once_after(2500);
        let data = vec![7u8; 1000];
        assert!(round_trip(&first, &data) == data, "the flip came early");
        let back = round_trip(&second, &data);
        assert_eq!(back.iter().filter(|b| **b != 7).count(), 1);
        let counts = proxy.counts();
        assert_eq!(
            (counts.accepted, counts.forwarded, counts.flipped),
            (2, 4000, 1)
        );
    }

    #[test]
    fn a_delay_holds_every_read_back() {
        let (proxy, addr) = echo_proxy();
        proxy.delay(Duration::from_millis(50));
        let started = Instant::now();
        assert_eq!(round_trip(&addr, b"ping"), b"ping");
        // Out and back: two delayed reads at least.
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(proxy.counts().delayed >= 2);
    }
}
