//! A hostile peer: a client that speaks `proto/peer.proto` on its own (the generated types of
//! `tandem-proto`, tonic over TLS 1.3 with rustls) with the certificate and key of a device the
//! agent knows, and sends whatever a test hands it, including what no real agent would send.
//!
//! It answers the agent the way a plain peer would, so the agent keeps talking: it records the
//! agent's hello, acknowledges its index updates, serves the chunks a test registered (with
//! whatever bytes the test chose, right or wrong), and records everything else it hears.
//! Tests block on it; it runs its own small tokio runtime inside. Must not: link the daemon or
//! reuse its connection code: an independent speaker of the wire format is the point.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tandem_proto::peer::{self as pb, Frame, frame::Body, peer_client::PeerClient};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// Largest piece a file is cut into by [`file_item`]; far below the agent's chunk limit.
const PIECE: usize = 64 << 10;
/// The name a device's TLS client connects with (the agent pins devices by certificate).
const SERVER_NAME: &str = "tandem";
/// Longest the TCP + TLS + HTTP/2 set-up of one connection may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// A device's certificate and private key, as `tandemd` keeps them in `HOME/identity`.
pub struct DeviceKey {
    /// The device ID the agent shows for this certificate (`tandemctl id`).
    pub device_id: String,
    cert: CertificateDer<'static>,
    key_pem: Vec<u8>,
}

impl DeviceKey {
    /// Reads `HOME/identity/{cert,key}.pem` of a stopped agent whose ID is `device_id`.
    pub fn from_home(home: &Path, device_id: &str) -> DeviceKey {
        let dir = home.join("identity");
        let cert_path = dir.join("cert.pem");
        let cert = CertificateDer::from_pem_file(&cert_path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", cert_path.display()));
        let key_path = dir.join("key.pem");
        let key_pem = std::fs::read(&key_path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", key_path.display()));
        DeviceKey {
            device_id: device_id.to_owned(),
            cert,
            key_pem,
        }
    }

    /// The device's key in version vectors: the first 8 bytes of its certificate's SHA-256.
    pub fn short(&self) -> u64 {
        let digest = Sha256::digest(self.cert.as_ref());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(&self.key_pem).expect("the identity's key.pem is a PEM key")
    }
}

/// What the hostile peer has heard from the agent so far.
#[derive(Debug, Clone, Default)]
pub struct Heard {
    /// The agent's latest hello.
    pub hello: Option<pb::Hello>,
    /// Chunk requests the agent sent, oldest first.
    pub chunk_requests: Vec<pb::ChunkRequest>,
    /// Answers to this side's chunk requests, by request ID.
    pub chunk_answers: BTreeMap<u64, pb::ChunkData>,
    /// Index updates received per source (they are acknowledged at once).
    pub index_updates: BTreeMap<String, u64>,
    /// Folder moves the agent asked to have sent entry by entry: (source, first sequence).
    pub expand_asks: Vec<(String, u64)>,
    /// Why the exchange ended, once it has.
    pub closed: Option<String>,
}

/// One exchange with an agent, driven by a test.
pub struct HostilePeer {
    rt: Runtime,
    out: mpsc::Sender<Frame>,
    heard: watch::Receiver<Heard>,
    /// Bytes to answer a chunk request with, by the requested hash.
    serving: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>,
    short: u64,
    next_sequence: u64,
    next_version: u64,
    next_request: u64,
}

impl HostilePeer {
    /// Dials the agent at `addr` as the device of `key` and opens the exchange stream; `Err`
    /// says what failed (the agent refusing a second connection from the same device, say).
    pub fn connect(addr: &str, key: &DeviceKey) -> Result<HostilePeer, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
        let config = client_config(key)?;
        let (out, out_rx) = mpsc::channel::<Frame>(64);
        let inbound = rt.block_on(async {
            tokio::time::timeout(CONNECT_LIMIT, open(addr.to_owned(), config, out_rx))
                .await
                .map_err(|_| format!("connecting to {addr} took over {CONNECT_LIMIT:?}"))?
        })?;
        let (heard_tx, heard) = watch::channel(Heard::default());
        let serving = Arc::new(Mutex::new(HashMap::new()));
        rt.spawn(listen(inbound, out.clone(), heard_tx, serving.clone()));
        Ok(HostilePeer {
            rt,
            out,
            heard,
            serving,
            short: key.short(),
            next_sequence: 0,
            next_version: 0,
            next_request: 0,
        })
    }

    /// Like [`HostilePeer::connect`], retried with the harness's backoff for up to `limit`
    /// (after a dropped connection the agent needs a moment to let go of it).
    pub fn connect_with_retry(addr: &str, key: &DeviceKey, limit: Duration) -> HostilePeer {
        let mut last = String::new();
        crate::backoff::retry_with_backoff(limit, || match HostilePeer::connect(addr, key) {
            Ok(peer) => Some(peer),
            Err(e) => {
                last = e;
                None
            }
        })
        .unwrap_or_else(|| panic!("cannot open an exchange with {addr} within {limit:?}: {last}"))
    }

    /// Waits for the agent's hello (its first frame) and returns it.
    pub fn agent_hello(&self, limit: Duration) -> pb::Hello {
        let heard = self.wait_for(limit, |h| h.hello.is_some() || h.closed.is_some());
        match heard.hello {
            Some(hello) => hello,
            None => panic!(
                "no hello from the agent within {limit:?}: {:?}",
                heard.closed
            ),
        }
    }

    /// Says hello as `device_id`, claiming to share `sources` as files (cursors at zero), in
    /// the protocol version this build speaks.
    pub fn hello(&self, device_id: &str, sources: &[&str]) {
        self.hello_as(device_id, sources, tandem_proto::PEER_PROTOCOL, "files");
    }

    /// Says hello as `device_id` in protocol version `protocol`, claiming to keep `sources`
    /// as data of `kind`.
    pub fn hello_as(&self, device_id: &str, sources: &[&str], protocol: u32, kind: &str) {
        self.hello_full(device_id, sources, protocol, kind, 0);
    }

    /// Says hello as `device_id` with its clock at `unix_ms` (0: not said).
    pub fn hello_at(&self, device_id: &str, sources: &[&str], unix_ms: i64) {
        self.hello_full(
            device_id,
            sources,
            tandem_proto::PEER_PROTOCOL,
            "files",
            unix_ms,
        );
    }

    fn hello_full(
        &self,
        device_id: &str,
        sources: &[&str],
        protocol: u32,
        kind: &str,
        unix_ms: i64,
    ) {
        let sources = sources
            .iter()
            .map(|s| pb::SourceCursor {
                source: (*s).to_owned(),
                applied: 0,
                local: self.next_sequence,
                kind: kind.to_owned(),
                format: "hostile".to_owned(),
                ..pb::SourceCursor::default()
            })
            .collect();
        self.send(Body::Hello(pb::Hello {
            device_id: device_id.to_owned(),
            version: "hostile".to_owned(),
            sources,
            protocol,
            capabilities: Vec::new(),
            unix_ms,
        }));
    }

    /// Sends one frame as it is.
    pub fn send(&self, body: Body) {
        let frame = Frame { body: Some(body) };
        // The stream may be closed by now; a test that cares asks `closed`.
        let _ = self.rt.block_on(self.out.send(frame));
    }

    /// Sends `items` of `source` as one index update, numbered with this peer's next
    /// sequences, as a real peer numbers its changes.
    pub fn update(&mut self, source: &str, mut items: Vec<pb::Item>) {
        for item in &mut items {
            self.next_sequence += 1;
            header(item).sequence = self.next_sequence;
        }
        self.send(Body::Index(pb::IndexUpdate {
            source: source.to_owned(),
            items,
            caught_up: true,
            through_sequence: self.next_sequence,
            ..Default::default()
        }));
    }

    /// Sends one folder move of `source` as an index update of its own, numbered with this
    /// peer's next sequences (two per item moved, as a real peer numbers them).
    pub fn folder_move(&mut self, source: &str, mut mv: pb::FolderMove) {
        mv.first_sequence = self.next_sequence + 1;
        self.next_sequence += 2 * u64::from(mv.items);
        mv.last_sequence = self.next_sequence;
        mv.author = self.short;
        self.send(Body::Index(pb::IndexUpdate {
            source: source.to_owned(),
            caught_up: true,
            through_sequence: self.next_sequence,
            moves: vec![mv],
            ..Default::default()
        }));
    }

    /// A live file item at `path` with a correct hash and chunk list for `data`, versioned by
    /// this device; its chunks are served with the right bytes.
    pub fn file(&mut self, path: &str, data: &[u8]) -> pb::Item {
        let mut item = file_item(path, data, self.version());
        for (chunk, piece) in body(&mut item).chunks.iter().zip(data.chunks(PIECE)) {
            self.serve(&chunk.hash, piece.to_vec());
        }
        item
    }

    /// A fresh version vector of this device alone, newer than any it made before.
    pub fn version(&mut self) -> pb::Version {
        self.next_version += 1;
        pb::Version {
            counters: vec![pb::Counter {
                device: self.short,
                value: self.next_version,
            }],
        }
    }

    /// Answers every request for the chunk named `hash` with `data`, right or wrong.
    pub fn serve(&self, hash: &[u8], data: Vec<u8>) {
        self.serving
            .lock()
            .expect("the serving table is never poisoned")
            .insert(hash.to_vec(), data);
    }

    /// Asks the agent for a chunk and waits for its answer.
    pub fn request_chunk(
        &mut self,
        mut req: pb::ChunkRequest,
        limit: Duration,
    ) -> Option<pb::ChunkData> {
        self.next_request += 1;
        let id = self.next_request;
        req.request_id = id;
        self.send(Body::ChunkRequests(pb::ChunkRequests {
            requests: vec![req],
        }));
        let heard = self.wait_for(limit, |h| {
            h.chunk_answers.contains_key(&id) || h.closed.is_some()
        });
        heard.chunk_answers.get(&id).cloned()
    }

    /// Everything heard so far.
    pub fn heard(&self) -> Heard {
        self.heard.borrow().clone()
    }

    /// Waits until the agent has closed the exchange; `None` if it is still open after `limit`.
    pub fn wait_closed(&self, limit: Duration) -> Option<String> {
        self.wait_for(limit, |h| h.closed.is_some()).closed
    }

    /// Waits until `done` holds for what was heard, or `limit` passes; returns what was heard.
    pub fn wait_for(&self, limit: Duration, done: impl Fn(&Heard) -> bool) -> Heard {
        let mut heard = self.heard.clone();
        self.rt.block_on(async {
            // Timing out is the caller's to judge from what is returned.
            let _ = tokio::time::timeout(limit, heard.wait_for(|h| done(h))).await;
        });
        heard.borrow().clone()
    }
}

/// The xxh3-128 of `data`, as the wire names chunks and contents.
pub fn hash(data: &[u8]) -> Vec<u8> {
    xxhash_rust::xxh3::xxh3_128(data).to_be_bytes().to_vec()
}

/// A live file item at `path` with a correct hash and chunk list for `data`.
pub fn file_item(path: &str, data: &[u8], version: pb::Version) -> pb::Item {
    let chunks = data
        .chunks(PIECE)
        .map(|piece| pb::ChunkInfo {
            hash: hash(piece),
            len: u32::try_from(piece.len()).expect("a piece is 64 KiB at most"),
        })
        .collect();
    item(
        path,
        version,
        pb::FileBody {
            kind: pb::ItemKind::File as i32,
            size: u64::try_from(data.len()).expect("test data fits in u64"),
            mtime_ns: 1_700_000_000_000_000_000,
            mode: 0o644,
            hash: hash(data),
            chunks,
            symlink_target: String::new(),
            inline: Default::default(),
        },
    )
}

/// An item of a `files` source at `path`, live, at `version`, with `body`.
pub fn item(path: &str, version: pb::Version, body: pb::FileBody) -> pb::Item {
    pb::Item {
        key: Some(pb::item::Key::Path(path.to_owned())),
        header: Some(pb::Header {
            version: Some(version),
            ..Default::default()
        }),
        body: Some(pb::item::Body::File(body)),
    }
}

/// The file body of an item made here, to change before sending.
pub fn body(item: &mut pb::Item) -> &mut pb::FileBody {
    match &mut item.body {
        Some(pb::item::Body::File(body)) => body,
        _ => panic!("items made by this harness have a file body"),
    }
}

/// The header of an item made here, to change before sending.
pub fn header(item: &mut pb::Item) -> &mut pb::Header {
    item.header.get_or_insert_with(Default::default)
}

/// TCP, TLS 1.3 and HTTP/2 up to the open `Exchange` stream.
async fn open(
    addr: String,
    config: Arc<ClientConfig>,
    out_rx: mpsc::Receiver<Frame>,
) -> Result<tonic::Streaming<Frame>, String> {
    let connector = tokio_rustls::TlsConnector::from(config);
    let server_name = ServerName::try_from(SERVER_NAME).map_err(|e| e.to_string())?;
    let target = addr.clone();
    let channel = tonic::transport::Endpoint::from_static("http://tandem.peer")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let (connector, target, name) =
                (connector.clone(), target.clone(), server_name.clone());
            async move {
                let tcp = TcpStream::connect(&target).await?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    // No limits of our own: sending what the agent must refuse is the point.
    let mut client = PeerClient::new(channel)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    client
        .exchange(ReceiverStream::new(out_rx))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| format!("{addr} refused the exchange: {}", e.message()))
}

/// Reads the agent's frames until the stream ends, answering as a plain peer would.
async fn listen(
    mut inbound: tonic::Streaming<Frame>,
    out: mpsc::Sender<Frame>,
    heard: watch::Sender<Heard>,
    serving: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>,
) {
    let why = loop {
        let body = match inbound.message().await {
            Ok(Some(Frame { body: Some(body) })) => body,
            Ok(Some(Frame { body: None })) => continue,
            Ok(None) => break "the agent ended the exchange".to_owned(),
            Err(e) => break format!("the exchange failed: {e}"),
        };
        let reply = match body {
            Body::Hello(hello) => {
                heard.send_modify(|h| h.hello = Some(hello));
                None
            }
            Body::Index(update) => {
                let ack = pb::Applied {
                    source: update.source.clone(),
                    sequence: update.through_sequence,
                    received: update.through_sequence,
                };
                heard.send_modify(|h| *h.index_updates.entry(update.source).or_default() += 1);
                Some(Body::Applied(ack))
            }
            Body::Applied(_) => None,
            Body::ExpandMove(ask) => {
                heard.send_modify(|h| h.expand_asks.push((ask.source, ask.first_sequence)));
                None
            }
            Body::ChunkRequests(batch) => {
                let table = serving.lock().expect("the serving table is never poisoned");
                let answers = batch
                    .requests
                    .iter()
                    .map(|req| {
                        let data = table.get(&req.hash).cloned();
                        pb::ChunkData {
                            request_id: req.request_id,
                            error: if data.is_none() {
                                "not here".to_owned()
                            } else {
                                String::new()
                            },
                            data: data.unwrap_or_default(),
                        }
                    })
                    .collect();
                drop(table);
                heard.send_modify(|h| h.chunk_requests.extend(batch.requests));
                Some(Body::ChunkAnswers(pb::ChunkAnswers { answers }))
            }
            Body::ChunkAnswers(batch) => {
                heard.send_modify(|h| {
                    for data in batch.answers {
                        h.chunk_answers.insert(data.request_id, data);
                    }
                });
                None
            }
        };
        if let Some(body) = reply
            && out.send(Frame { body: Some(body) }).await.is_err()
        {
            break "this side hung up".to_owned();
        }
    };
    heard.send_modify(|h| h.closed = Some(why));
}

fn client_config(key: &DeviceKey) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyAgent {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![key.cert.clone()], key.key())
        .map_err(|e| format!("the device's certificate and key do not suit TLS: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts whichever agent answers (the test dialled it itself), but still checks that it
/// proves the key of the certificate it shows.
#[derive(Debug)]
struct AnyAgent {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyAgent {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("only TLS 1.3 is offered".to_owned()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
