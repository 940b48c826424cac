//! A TLS stream that tells tonic which device is on the other end.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

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
