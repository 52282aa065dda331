//! Which HTTP a connection speaks: the ALPN id when TLS negotiated one, else whether its first bytes
//! are the HTTP/2 client preface (prior knowledge); and [`Rewind`], which gives those bytes back.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

/// What the client negotiated by ALPN (`None`: nothing, or no TLS).
pub fn from_alpn(alpn: Option<&[u8]>) -> Option<Proto> {
    match alpn? {
        b"h2" => Some(Proto::Http2),
        b"http/1.1" | b"http/1.0" => Some(Proto::Http1),
        _ => None,
    }
}

/// Reads until the first bytes are, or cannot be, the HTTP/2 preface: at most its 24 bytes, so an
/// HTTP/1.1 request head stays in the socket for hyper. A connection closed first is an error.
pub async fn sniff<I: AsyncRead + Unpin>(mut io: I) -> io::Result<(Proto, Rewind<I>)> {
    let mut buf = [0u8; PREFACE.len()];
    let mut n = 0;
    loop {
        let got = io.read(&mut buf[n..]).await?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        n += got;
        let proto = if buf[..n] != PREFACE[..n] {
            Proto::Http1
        } else if n == PREFACE.len() {
            Proto::Http2
        } else {
            continue;
        };
        return Ok((proto, Rewind { prefix: buf, start: 0, end: n, inner: io }));
    }
}

/// A stream that first yields the bytes [`sniff`] read, then the stream's own.
pub struct Rewind<I> {
    prefix: [u8; PREFACE.len()],
    start: usize,
    end: usize,
    inner: I,
}

impl<I> Rewind<I> {
    /// Nothing to give back (the protocol came from ALPN).
    pub fn new(inner: I) -> Rewind<I> {
        Rewind { prefix: [0; PREFACE.len()], start: 0, end: 0, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.start < self.end {
            let n = (self.end - self.start).min(buf.remaining());
            buf.put_slice(&self.prefix[self.start..self.start + n]);
            self.start += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn sniffed(bytes: &[u8]) -> (Proto, Vec<u8>) {
        let (p, mut io) = sniff(bytes).await.unwrap();
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        (p, all)
    }

    #[tokio::test]
    async fn tells_the_h2_preface_from_an_http1_head_and_gives_every_byte_back() {
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04";
        assert_eq!(sniffed(h2).await, (Proto::Http2, h2.to_vec()));
        let h1 = b"POST /v1/push HTTP/1.1\r\nhost: x\r\n\r\n";
        assert_eq!(sniffed(h1).await, (Proto::Http1, h1.to_vec()));
        // Even a head that starts like the preface.
        assert_eq!(sniffed(b"PRIX").await, (Proto::Http1, b"PRIX".to_vec()));
        assert!(sniff(&b"PRI * HTTP"[..]).await.is_err(), "closed before the preface was complete");
        assert_eq!(from_alpn(Some(b"h2")), Some(Proto::Http2));
        assert_eq!(from_alpn(Some(b"http/1.1")), Some(Proto::Http1));
        assert_eq!(from_alpn(None), None);
    }
}
