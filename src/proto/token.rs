//! Device tokens: derived from the app id and the device's secret with a
//! gateway-held key, so the same device always gets the same token and the
//! gateway needs no table to check one.
//!
//! `token = id(16) || tag(8)` where
//! `id  = HMAC-SHA256(key, "pushgate/token-id/v1"  || len(app) || app || secret)[..16]`
//! `tag = HMAC-SHA256(key, "pushgate/token-app/v1" || len(app) || app || id)[..8]`.
//! The id carries 128 bits nobody can compute without the key and the device
//! secret; the tag binds the token to its app, so a push naming another
//! app's token, or a forged one, fails verification without a lookup.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::hash::Hasher;

type HmacSha256 = Hmac<Sha256>;

/// Bytes in a device token.
pub const TOKEN_LEN: usize = 24;
const ID_LEN: usize = 16;

/// A device token as it travels on the wire; shown to people as 48 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub [u8; TOKEN_LEN]);

impl Token {
    /// Parses 48 hex digits.
    pub fn from_hex(s: &str) -> Option<Token> {
        let mut t = [0u8; TOKEN_LEN];
        hex::decode_to_slice(s.trim(), &mut t).ok()?;
        Some(Token(t))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The shard that owns this token among `shards`: a pure function of the token.
    pub fn shard(&self, shards: usize) -> usize {
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.0[..8]);
        (u64::from_be_bytes(a) % shards.max(1) as u64) as usize
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({})", self.to_hex())
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The gateway's 256-bit token key. Every node behind one load balancer must
/// share it; losing it invalidates every token.
#[derive(Clone)]
pub struct TokenKey {
    key: [u8; 32],
    /// HMAC state with the key already absorbed: cloning it skips re-keying
    /// (two of the four SHA-256 blocks) on every derive and verify.
    keyed: HmacSha256,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    pub fn new(key: [u8; 32]) -> TokenKey {
        // A key of any length is accepted by HMAC, so this cannot fail.
        let keyed = <HmacSha256 as Mac>::new_from_slice(&key).expect("HMAC takes any key length");
        TokenKey { key, keyed }
    }

    /// A fresh key from the OS's random source.
    pub fn generate() -> std::io::Result<TokenKey> {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).map_err(std::io::Error::other)?;
        Ok(TokenKey::new(key))
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.key
    }

    fn mac(&self, label: &[u8], app_id: &str, data: &[u8]) -> HmacSha256 {
        let mut m = self.keyed.clone();
        m.update(label);
        m.update(&[app_id.len() as u8]);
        m.update(app_id.as_bytes());
        m.update(data);
        m
    }

    /// The token of the device holding `secret` in app `app_id`.
    pub fn derive(&self, app_id: &str, secret: &[u8]) -> Token {
        let id = self.mac(b"pushgate/token-id/v1", app_id, secret).finalize().into_bytes();
        let tag = self.mac(b"pushgate/token-app/v1", app_id, &id[..ID_LEN]).finalize().into_bytes();
        let mut t = [0u8; TOKEN_LEN];
        t[..ID_LEN].copy_from_slice(&id[..ID_LEN]);
        t[ID_LEN..].copy_from_slice(&tag[..TOKEN_LEN - ID_LEN]);
        Token(t)
    }

    /// Whether `token` was issued by this key for app `app_id` (constant time).
    pub fn verify(&self, app_id: &str, token: &Token) -> bool {
        self.mac(b"pushgate/token-app/v1", app_id, &token.0[..ID_LEN])
            .verify_truncated_left(&token.0[ID_LEN..])
            .is_ok()
    }
}

/// Hashes a token by 8 of its bytes. Tokens reaching the map are HMAC outputs
/// (derived by us, or MAC-verified), so a peer cannot aim collisions at it.
#[derive(Default)]
pub struct TokenHasher(u64);

impl Hasher for TokenHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).skip(1).take(1) {
            let mut a = [0u8; 8];
            a[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_secret_same_token_and_bound_to_app() {
        let k = TokenKey::new([7; 32]);
        let a = k.derive("app.one", b"0123456789abcdef");
        assert_eq!(a, k.derive("app.one", b"0123456789abcdef"));
        assert_ne!(a, k.derive("app.one", b"0123456789abcdeF"));
        assert_ne!(a, k.derive("app.two", b"0123456789abcdef"));
        assert!(k.verify("app.one", &a));
        assert!(!k.verify("app.two", &a));
        let mut forged = a;
        forged.0[3] ^= 1;
        assert!(!k.verify("app.one", &forged));
        assert!(!TokenKey::new([8; 32]).verify("app.one", &a));
    }

    #[test]
    fn hex_round_trip_and_shard_range() {
        let t = TokenKey::new([1; 32]).derive("a", &[0; 16]);
        assert_eq!(Token::from_hex(&t.to_hex()), Some(t));
        assert_eq!(Token::from_hex("zz"), None);
        for n in 1..9 {
            assert!(t.shard(n) < n);
        }
    }
}
