//! A TLS stream that tells tonic which device is on the other end.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::identity::DeviceId;

/// Who is on the other end of an accepted connection; found in each request's extensions.
#[derive(Debug, Clone)]
pub struct PeerConnInfo {
    pub device: DeviceId,
    pub addr: SocketAddr,
}

/// An accepted, authenticated peer connection.
pub struct PeerIo {
    inner: TlsStream<TcpStream>,
    info: PeerConnInfo,
}

impl PeerIo {
    /// Wraps a finished handshake.
    pub fn new(inner: TlsStream<TcpStream>, info: PeerConnInfo) -> PeerIo {
        PeerIo { inner, info }
    }
}

/// Accepts connections on `listener` until `cancel`: each one's TLS handshake (10 s at most)
/// runs on a task of `tasks`, and a connection whose device `admit` takes goes out on the
/// returned channel, for a tonic server's incoming stream.
pub fn accept(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    tasks: &TaskTracker,
    cancel: CancellationToken,
    admit: impl Fn(&PeerConnInfo) -> bool + Send + Sync + 'static,
) -> mpsc::Receiver<Result<PeerIo, io::Error>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (conn_tx, conn_rx) = mpsc::channel::<Result<PeerIo, io::Error>>(16);
    let admit = Arc::new(admit);
    let spawner = tasks.clone();
    tasks.spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                () = cancel.cancelled() => break,
                res = listener.accept() => match res {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (acceptor, conn_tx, admit) = (acceptor.clone(), conn_tx.clone(), admit.clone());
            spawner.spawn(async move {
                let _ = tcp.set_nodelay(true);
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        debug!(peer_addr = %addr, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(peer_addr = %addr, "TLS handshake timed out");
                        return;
                    }
                };
                let Some(device) = super::tls::peer_device_id(tls.get_ref().1) else {
                    return;
                };
                let info = PeerConnInfo { device, addr };
                if admit(&info) {
                    let _ = conn_tx.send(Ok(PeerIo::new(tls, info))).await;
                }
            });
        }
    });
    conn_rx
}

impl Connected for PeerIo {
    type ConnectInfo = PeerConnInfo;
    fn connect_info(&self) -> PeerConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
