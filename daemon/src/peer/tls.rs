//! Mutual TLS between devices: rustls configurations in which both sides
//! present their self-signed device certificate, the client pins the server
//! to the device ID it expects, and both verify the handshake signatures, so a
//! peer proves it holds the key of the certificate its device ID is made from.
//!
//! TLS 1.3 only, ring provider, no session resumption (every connection
//! presents and proves its certificate afresh).
//!
//! Must not: decide whether a connecting device is known (the server accepts
//! any device certificate; the caller reads [`peer_device_id`] after the
//! handshake and refuses, and logs, unknown devices); open sockets; trust any
//! CA, certificate name or validity period: a device is its certificate's hash.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate};
use rustls::{
    ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureScheme,
};

use crate::identity::{DeviceId, Identity};

/// The server name every device connects with; certificates are pinned by device ID, not by name.
pub const SERVER_NAME: &str = "tandem";

/// The ALPN protocol both sides offer: gRPC runs over HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// Why a TLS configuration could not be made from this device's identity.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The identity's private key is not a PEM private key.
    #[error(
        "the private key of this device ({device_id}) cannot be read for TLS ({source}); restore the identity folder from a backup (a new identity would give this device a new device ID that every peer must add again)"
    )]
    Key {
        /// This device.
        device_id: DeviceId,
        /// What the PEM parser said.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the certificate, the key or the protocol settings.
    #[error(
        "cannot set up TLS with the certificate and key of this device ({device_id}): {source}; restore the identity folder from a backup, or report a bug if it is intact"
    )]
    Config {
        /// This device.
        device_id: DeviceId,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
}

/// The server side: presents our certificate and requires one from every client, of any device.
///
/// # Errors
///
/// [`TlsError`] if the identity's key cannot be loaded or does not suit TLS 1.3.
pub fn server_config(identity: &Identity) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(AnyDevice {
        algorithms: provider.signature_verification_algorithms,
    });
    let (cert, key) = cert_and_key(identity)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error(identity))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)
        .map_err(config_error(identity))?;
    // Without resumption every handshake carries and proves the client certificate.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The client side: presents our certificate and accepts only the server whose device ID is `expected`.
///
/// Connect with [`server_name`]; the name is not checked.
///
/// # Errors
///
/// [`TlsError`] if the identity's key cannot be loaded or does not suit TLS 1.3.
pub fn client_config(
    identity: &Identity,
    expected: DeviceId,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedDevice {
        expected,
        algorithms: provider.signature_verification_algorithms,
    });
    let (cert, key) = cert_and_key(identity)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error(identity))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![cert], key)
        .map_err(config_error(identity))?;
    config.resumption = Resumption::disabled();
    config.enable_sni = false;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// [`SERVER_NAME`] as the `ServerName` a `TlsConnector` takes.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("SERVER_NAME is a valid DNS name")
}

/// The device ID of the other side of an established connection, from its certificate.
///
/// `None` before the handshake has finished (after it, both sides always have one).
pub fn peer_device_id(conn: &CommonState) -> Option<DeviceId> {
    let cert = conn.peer_certificates()?.first()?;
    Some(DeviceId::from_cert_der(cert.as_ref()))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn cert_and_key(
    identity: &Identity,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).map_err(|source| {
        TlsError::Key {
            device_id: identity.device_id,
            source,
        }
    })?;
    Ok((CertificateDer::from(identity.cert_der.clone()), key))
}

fn config_error(identity: &Identity) -> impl FnOnce(rustls::Error) -> TlsError {
    let device_id = identity.device_id;
    move |source| TlsError::Config { device_id, source }
}

/// TLS 1.2 is never negotiated (both configurations offer 1.3 only); refuse its signatures anyway.
fn tls12_refused() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is not used between devices".to_owned())
}

/// Server side: any client certificate that parses is accepted; its holder
/// must still prove its key, and the caller decides whether the device is known.
#[derive(Debug)]
struct AnyDevice {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyDevice {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Self-signed device certificates have no CA to check against; refuse
        // only what is not a certificate at all.
        ParsedCertificate::try_from(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
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

/// Client side: the server's certificate must hash to the expected device ID
/// and its holder must prove the key.
#[derive(Debug)]
struct PinnedDevice {
    expected: DeviceId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedDevice {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = DeviceId::from_cert_der(end_entity.as_ref());
        if got != self.expected {
            return Err(rustls::Error::General(format!(
                "the device at this address has device ID {got}, not the expected {}; check the address and device ID given to `tandemctl peer add`",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rustls::server::ResolvesServerCert;
    use rustls::sign::{CertifiedKey, SingleCertAndKey};
    use std::io;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

    type Handshake = (
        io::Result<server::TlsStream<TcpStream>>,
        io::Result<client::TlsStream<TcpStream>>,
    );

    fn device() -> (tempfile::TempDir, Identity) {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity::load_or_create(dir.path()).unwrap();
        (dir, identity)
    }

    /// Runs both sides of one handshake over a real loopback socket.
    async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Handshake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = async {
            let (tcp, _) = listener.accept().await?;
            TlsAcceptor::from(server).accept(tcp).await
        };
        let connect = async {
            let tcp = TcpStream::connect(addr).await?;
            TlsConnector::from(client).connect(server_name(), tcp).await
        };
        tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(accept, connect)
        })
        .await
        .expect("handshake hung")
    }

    /// The rustls error inside an I/O error from tokio-rustls.
    fn tls_error(err: &io::Error) -> Option<&rustls::Error> {
        err.get_ref()?.downcast_ref()
    }

    fn is_bad_signature(err: &io::Error) -> bool {
        matches!(
            tls_error(err),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadSignature
            ))
        )
    }

    /// A certificate presented with a key that is not its own.
    fn stolen(cert_of: &Identity, key_of: &Identity) -> Arc<SingleCertAndKey> {
        let key = PrivateKeyDer::from_pem_slice(key_of.key_pem.as_bytes()).unwrap();
        let key = provider().key_provider.load_private_key(key).unwrap();
        let cert = CertificateDer::from(cert_of.cert_der.clone());
        Arc::new(SingleCertAndKey::from(CertifiedKey::new(vec![cert], key)))
    }

    #[tokio::test]
    async fn known_devices_see_each_other_and_talk() {
        let ((_a, a), (_b, b)) = (device(), device());
        let (server, client) = handshake(
            server_config(&a).unwrap(),
            client_config(&b, a.device_id).unwrap(),
        )
        .await;
        let (mut server, mut client) = (server.unwrap(), client.unwrap());
        assert_eq!(peer_device_id(server.get_ref().1), Some(b.device_id));
        assert_eq!(peer_device_id(client.get_ref().1), Some(a.device_id));
        assert_eq!(server.get_ref().1.alpn_protocol(), Some(ALPN_H2));

        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        server.write_all(b"pong").await.unwrap();
        server.flush().await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
    }

    #[tokio::test]
    async fn a_server_with_another_device_id_is_refused() {
        let ((_a, a), (_b, b), (_c, c)) = (device(), device(), device());
        let (server, client) = handshake(
            server_config(&a).unwrap(),
            client_config(&b, c.device_id).unwrap(),
        )
        .await;
        let text = client.unwrap_err().to_string();
        assert!(text.contains(&c.device_id.to_string()), "{text}");
        assert!(text.contains(&a.device_id.to_string()), "{text}");
        assert!(server.is_err());
    }

    #[tokio::test]
    async fn a_client_without_a_certificate_is_refused() {
        let ((_a, a), (_b, _)) = (device(), device());
        let anonymous = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedDevice {
                expected: a.device_id,
                algorithms: provider().signature_verification_algorithms,
            }))
            .with_no_client_auth();
        let (server, client) = handshake(server_config(&a).unwrap(), Arc::new(anonymous)).await;
        let err = server.unwrap_err();
        assert!(
            matches!(
                tls_error(&err),
                Some(rustls::Error::NoCertificatesPresented)
            ),
            "{err:?}"
        );
        // TLS 1.3 clients finish before the server's verdict; they learn it on first read.
        if let Ok(mut client) = client {
            let mut buf = [0u8; 1];
            assert!(!matches!(client.read(&mut buf).await, Ok(1)));
        }
    }

    #[tokio::test]
    async fn the_server_sees_the_device_id_of_an_unknown_client() {
        let ((_a, a), (_u, unknown)) = (device(), device());
        let (server, client) = handshake(
            server_config(&a).unwrap(),
            client_config(&unknown, a.device_id).unwrap(),
        )
        .await;
        client.unwrap();
        let server = server.unwrap();
        // What the caller does: compare with its known devices, refuse and log.
        let known = [a.device_id];
        let seen = peer_device_id(server.get_ref().1).unwrap();
        assert_eq!(seen, unknown.device_id);
        assert!(!known.contains(&seen));
    }

    #[tokio::test]
    async fn a_certificate_without_its_key_is_refused_on_both_sides() {
        let ((_a, a), (_b, b), (_m, mallory)) = (device(), device(), device());

        // Mallory's server presents A's certificate, which is no secret.
        let resolver: Arc<dyn ResolvesServerCert> = stolen(&a, &mallory);
        let mut fake_server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(Arc::new(AnyDevice {
                algorithms: provider().signature_verification_algorithms,
            }))
            .with_cert_resolver(resolver);
        fake_server.alpn_protocols = vec![ALPN_H2.to_vec()];
        let (_, client) = handshake(
            Arc::new(fake_server),
            client_config(&b, a.device_id).unwrap(),
        )
        .await;
        let err = client.expect_err("client accepted a server without A's key");
        assert!(is_bad_signature(&err), "{err:?}");

        // Mallory's client presents B's certificate to A.
        let fake_client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedDevice {
                expected: a.device_id,
                algorithms: provider().signature_verification_algorithms,
            }))
            .with_client_cert_resolver(stolen(&b, &mallory));
        let (server, _) = handshake(server_config(&a).unwrap(), Arc::new(fake_client)).await;
        let err = server.expect_err("server accepted a client without B's key");
        assert!(is_bad_signature(&err), "{err:?}");
    }
}
