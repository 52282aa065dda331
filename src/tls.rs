//! Optional TLS (rustls, ring provider) on the device and provider listeners:
//! the certificate (loaded at start, reloaded on SIGHUP so a renewed one takes
//! effect without a restart), and the two pipe passes the shard's read and
//! write paths run a TLS connection through.
//!
//! A TLS connection is a pipe between the socket and the frame codec:
//!
//! ```text
//!  socket ──read_tls──▶ rustls ──reader()──▶ scratch ──▶ frames
//!  socket ◀─write_tls── rustls ◀─writer()── wbuf    ◀── frames
//! ```
//!
//! Not here: client certificates, ALPN.

use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection};

use crate::config::{ConfigError, TlsConfig};

/// The rustls config of each listener; `None` serves plain TCP.
#[derive(Clone, Default)]
pub struct TlsPorts {
    pub device: Option<Arc<ServerConfig>>,
    pub provider: Option<Arc<ServerConfig>>,
    /// The HTTP API listener's (`tls.http`); `http::start` adds the ALPN ids.
    pub http: Option<Arc<ServerConfig>>,
    /// The certificate all configs hand out, when either listener has TLS.
    pub cert: Option<Arc<CertStore>>,
}

impl TlsPorts {
    /// Reads the certificate and key named in `[tls]` if a listener wants TLS.
    /// Errors name the key and the file.
    pub fn load(cfg: &TlsConfig) -> Result<TlsPorts, ConfigError> {
        if !cfg.device && !cfg.provider && !cfg.http {
            return Ok(TlsPorts::default());
        }
        let required = |key: &str| ConfigError(format!("key `tls.{key}`: required when TLS is on"));
        let cert = cfg.cert.as_deref().ok_or_else(|| required("cert"))?;
        let key = cfg.key.as_deref().ok_or_else(|| required("key"))?;
        let store = Arc::new(CertStore::load(cert, key)?);
        let server = Arc::new(server_config(store.clone())?);
        Ok(TlsPorts {
            device: cfg.device.then(|| server.clone()),
            provider: cfg.provider.then(|| server.clone()),
            http: cfg.http.then(|| server.clone()),
            cert: Some(store),
        })
    }

    /// Reads the certificate and key files again (SIGHUP): new handshakes get
    /// the new pair, open connections keep theirs. On an error the current
    /// pair stays. `Ok(false)` when no listener has TLS.
    pub fn reload(&self) -> Result<bool, ConfigError> {
        match &self.cert {
            Some(store) => store.reload().map(|()| true),
            None => Ok(false),
        }
    }

    pub fn for_port(&self, device: bool) -> Option<&Arc<ServerConfig>> {
        if device {
            self.device.as_ref()
        } else {
            self.provider.as_ref()
        }
    }
}

/// The certificate chain and key every handshake gets, from the files named in
/// `[tls]`; `reload` swaps them while the gateway runs.
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Reads and checks the pair: PEM, a non-empty chain, a key that fits the certificate.
    pub fn load(cert: &Path, key: &Path) -> Result<CertStore, ConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = read_pair(cert, key, &provider)?;
        Ok(CertStore { cert: cert.into(), key: key.into(), provider, current: RwLock::new(Arc::new(pair)) })
    }

    /// Reads the files again; the current pair stays if they do not make a valid one.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let pair = Arc::new(read_pair(&self.cert, &self.key, &self.provider)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = pair;
        Ok(())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn read_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, ConfigError> {
    let file_error = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        ConfigError(format!("tls.{what} {}: {e}", path.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error("cert", cert, &e))?;
    if chain.is_empty() {
        return Err(file_error("cert", cert, &"no CERTIFICATE block"));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("key", key, &e))?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| {
        ConfigError(format!("tls.key {} does not fit tls.cert {}: {e}", key.display(), cert.display()))
    })
}

/// A rustls server config that takes its certificate from `store`.
pub fn server_config(store: Arc<CertStore>) -> Result<ServerConfig, ConfigError> {
    Ok(ServerConfig::builder_with_provider(store.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("tls: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(store))
}

/// Why a read pass ends the connection.
#[derive(Debug)]
pub enum End {
    /// The peer closed: close_notify, or TCP EOF.
    Eof,
    /// The socket failed, or rustls refused its bytes (e.g. an oversized handshake).
    Io(io::Error),
    /// A TLS protocol error; rustls queued an alert for the peer, so write it before closing.
    Tls(rustls::Error),
}

/// The outcome of [`read_pass`].
#[derive(Debug, Default)]
pub struct ReadPass {
    /// Plaintext bytes put at the start of the output buffer.
    pub plain: usize,
    /// Ciphertext bytes read from the socket.
    pub raw: usize,
    /// The socket would block and rustls holds no more plaintext: wait for the next event.
    pub drained: bool,
    pub end: Option<End>,
}

/// Moves bytes one step along the read pipe: plaintext rustls already holds,
/// else one socket read, decryption, and the plaintext that produced, into `out`.
/// Call it until `drained` or `end`; between calls, consume `out`. Handshake
/// messages the peer's bytes call for are queued in `tls` (check `wants_write`).
pub fn read_pass(tls: &mut ServerConnection, sock: &mut dyn Read, out: &mut [u8]) -> ReadPass {
    let mut pass = ReadPass::default();
    if drain_plain(tls, out, &mut pass) {
        return pass;
    }
    let mut tcp_eof = false;
    let mut would_block = false;
    loop {
        match tls.read_tls(sock) {
            Ok(0) => tcp_eof = true,
            Ok(n) => pass.raw = n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => would_block = true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                pass.end = Some(End::Io(e));
                return pass;
            }
        }
        break;
    }
    if let Err(e) = tls.process_new_packets() {
        pass.end = Some(End::Tls(e));
        return pass;
    }
    if drain_plain(tls, out, &mut pass) {
        return pass;
    }
    if tcp_eof {
        pass.end = Some(End::Eof);
    }
    pass.drained = would_block;
    pass
}

/// Copies decrypted plaintext into `out[pass.plain..]`; true if the caller
/// must stop here (`out` is full, or the stream ended).
fn drain_plain(tls: &mut ServerConnection, out: &mut [u8], pass: &mut ReadPass) -> bool {
    loop {
        if pass.plain == out.len() {
            return true;
        }
        match tls.reader().read(&mut out[pass.plain..]) {
            Ok(0) => {
                pass.end = Some(End::Eof); // close_notify
                return true;
            }
            Ok(n) => pass.plain += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => {
                pass.end = Some(End::Eof); // TCP EOF without close_notify
                return true;
            }
        }
    }
}

/// The outcome of [`write_pass`].
#[derive(Debug, Default)]
pub struct WritePass {
    /// Plaintext bytes rustls took.
    pub taken: usize,
    /// Ciphertext bytes the socket took.
    pub raw: usize,
    /// The socket failed or accepted nothing.
    pub failed: bool,
}

/// Moves `plain` into `tls` and ciphertext (handshake flights, records,
/// alerts) to the socket, until both are empty or the socket would block.
/// Everything is out when `taken == plain.len()` and `!tls.wants_write()`.
pub fn write_pass(tls: &mut ServerConnection, sock: &mut dyn Write, plain: &[u8]) -> WritePass {
    let mut pass = WritePass::default();
    loop {
        if pass.taken < plain.len() {
            // Never fails: it buffers up to rustls' limit and says how much it took.
            pass.taken += tls.writer().write(&plain[pass.taken..]).unwrap_or(0);
        }
        if !tls.wants_write() {
            return pass;
        }
        match tls.write_tls(sock) {
            Ok(0) => {
                pass.failed = true;
                return pass;
            }
            Ok(n) => pass.raw += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return pass,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                pass.failed = true;
                return pass;
            }
        }
    }
}

/// Hands ciphertext already read from the socket (what followed a PROXY
/// header) to rustls and processes it.
pub fn feed(tls: &mut ServerConnection, mut bytes: &[u8]) -> Result<(), End> {
    while !bytes.is_empty() {
        match tls.read_tls(&mut bytes) {
            Ok(0) => break, // the peer already said close_notify
            Ok(_) => tls.process_new_packets().map(drop).map_err(End::Tls)?,
            Err(e) => return Err(End::Io(e)),
        }
    }
    Ok(())
}

/// Best-effort write of what rustls has queued (a fatal alert before a close).
pub fn flush_alert(tls: &mut ServerConnection, sock: &mut dyn Write) {
    let _ = write_pass(tls, sock, &[]);
}
