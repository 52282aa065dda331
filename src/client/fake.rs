//! A scripted one-connection gateway for the client tests: it speaks raw
//! frames over loopback, so the clients are tested through a real socket.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::proto::frame::{split_frame, Frame, PROVIDER_MAX_BODY};

/// The gateway side of one accepted connection.
pub struct Peer {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Peer {
    /// The next frame from the client, as type and body. Panics (failing the
    /// test) if none arrives within 5 s.
    pub fn frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if let Some((raw, used)) = split_frame(&self.buf, PROVIDER_MAX_BODY).expect("client framing") {
                let out = (raw.ftype, raw.body.to_vec());
                self.buf.drain(..used);
                return out;
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).expect("read from client");
            assert!(n > 0, "client closed while the fake expected a frame");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the client stays silent for `d` (no complete or partial frame arrives).
    pub fn silent_for(&mut self, d: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        self.s.set_read_timeout(Some(d)).expect("timeout");
        let mut chunk = [0u8; 4096];
        let silent = match self.s.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n == 0
            }
            Err(_) => true,
        };
        self.s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        silent
    }

    /// The next frame, parsed and handed to `check`.
    pub fn expect<T>(&mut self, check: impl FnOnce(Frame<'_>) -> T) -> T {
        let (ftype, body) = self.frame();
        let raw = crate::proto::RawFrame { ftype, body: &body };
        check(Frame::parse(raw).expect("client sent a frame that does not parse"))
    }

    pub fn send(&mut self, f: &Frame<'_>) {
        let mut out = Vec::new();
        f.encode(&mut out);
        self.raw(&out);
    }

    pub fn raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write to client");
    }
}

/// Listens on 127.0.0.1:0 and runs `script` on the first connection.
/// Join the handle to surface the script's assertion failures.
pub fn serve(script: impl FnOnce(Peer) + Send + 'static) -> (SocketAddr, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = l.local_addr().expect("local addr");
    let h = thread::spawn(move || {
        let (s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        script(Peer { s, buf: Vec::new() });
    });
    (addr, h)
}
