//! Provider authentication on the HTTP API: `Authorization: Bearer <JWT>`, HS256 signed with the app's
//! secret (like APNs token auth), `iss` = app id, `iat` within the last hour. The secret never crosses
//! the wire; the MAC is checked with `hmac`'s constant-time comparison.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::proto::Apps;

/// How old a token's `iat` may be, seconds (as APNs: one hour).
pub const MAX_AGE_S: u64 = 3600;
/// How far in the future a token's `iat` may lie (clock skew), seconds.
pub const MAX_SKEW_S: u64 = 60;
/// Longest `Authorization` value looked at; a real token is about 150 bytes.
pub const MAX_TOKEN_LEN: usize = 2048;

/// Why a request was not authenticated; each becomes a 401 with a JSON error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer` header, or one that is not a JWT.
    Missing,
    /// Not a well-formed HS256 JWT with `iss` and `iat`.
    Malformed(&'static str),
    /// `iss` is not a configured app.
    UnknownApp,
    /// The signature does not match the app's secret.
    BadSignature,
    /// `iat` is older than an hour.
    Expired,
    /// `iat` is more than a minute ahead of the gateway's clock.
    FromTheFuture,
}

impl AuthError {
    /// The error code of the JSON body (protocol.md §6.2 names).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::UnknownApp => "unknown_app",
            _ => "auth_failed",
        }
    }

    pub fn message(&self) -> String {
        match self {
            AuthError::Missing => "send `Authorization: Bearer <JWT>` (see `pushgate token`)".into(),
            AuthError::Malformed(why) => format!("malformed token: {why}"),
            AuthError::UnknownApp => "the token's iss is not an app configured on this gateway".into(),
            AuthError::BadSignature => "the token's signature does not match the app's secret".into(),
            AuthError::Expired => format!("the token's iat is more than {MAX_AGE_S} s old; make a new one"),
            AuthError::FromTheFuture => {
                format!("the token's iat is more than {MAX_SKEW_S} s ahead of the gateway's clock")
            }
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    iat: u64,
}

/// Checks an `Authorization` header value at unix time `now_s`; returns the app index.
pub fn verify(authorization: Option<&[u8]>, apps: &Apps, now_s: u64) -> Result<u16, AuthError> {
    verify_iat(authorization, apps, now_s).map(|(app, _)| app)
}

/// Whether a token issued at `iat` is valid at `now_s`; else why not.
fn check_age(iat: u64, now_s: u64) -> Result<(), AuthError> {
    if iat > now_s.saturating_add(MAX_SKEW_S) {
        return Err(AuthError::FromTheFuture);
    }
    if iat.saturating_add(MAX_AGE_S) < now_s {
        return Err(AuthError::Expired);
    }
    Ok(())
}

/// [`verify`], also returning the token's `iat`.
fn verify_iat(authorization: Option<&[u8]>, apps: &Apps, now_s: u64) -> Result<(u16, u64), AuthError> {
    let value = authorization.ok_or(AuthError::Missing)?;
    if value.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed("longer than 2048 bytes"));
    }
    let value = std::str::from_utf8(value).map_err(|_| AuthError::Missing)?;
    let (scheme, jwt) = value.trim().split_once(' ').ok_or(AuthError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing);
    }
    let jwt = jwt.trim();
    let mut parts = jwt.split('.');
    let (Some(h64), Some(c64), Some(s64), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("not three dot-separated parts"));
    };
    let header: Header = decode_json(h64).ok_or(AuthError::Malformed("header is not base64url JSON"))?;
    if header.alg != "HS256" {
        return Err(AuthError::Malformed("alg must be HS256"));
    }
    let claims: Claims =
        decode_json(c64).ok_or(AuthError::Malformed("claims are not base64url JSON with iss and iat"))?;
    let sig = URL_SAFE_NO_PAD.decode(s64).map_err(|_| AuthError::Malformed("signature is not base64url"))?;
    let app = apps.index_of(&claims.iss).ok_or(AuthError::UnknownApp)?;
    let signed_len = h64.len() + 1 + c64.len();
    let mut mac = mac(apps.secret(app));
    mac.update(&jwt.as_bytes()[..signed_len]);
    mac.verify_slice(&sig).map_err(|_| AuthError::BadSignature)?;
    check_age(claims.iat, now_s)?;
    Ok((app, claims.iat))
}

/// One connection's last verified `Authorization` value, so a client that sends the same token on
/// every request (as they do, for up to an hour) pays for its HMAC, base64 and JSON once. A hit
/// needs the very same bytes and is checked against the token's `iat` every time, so a cached token
/// stops working exactly when [`verify`] would refuse it. Per connection, not shared: what a
/// request is compared with is only what the same client sent before.
#[derive(Default)]
pub struct Cache {
    last: std::sync::Mutex<Option<Cached>>,
}

struct Cached {
    value: Vec<u8>,
    app: u16,
    iat: u64,
}

impl Cache {
    /// [`verify`], answered from the cache when `authorization` is the value verified last.
    pub fn verify(&self, authorization: Option<&[u8]>, apps: &Apps, now_s: u64) -> Result<u16, AuthError> {
        let value = authorization.ok_or(AuthError::Missing)?;
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = last.as_ref().filter(|c| c.value == value) {
            check_age(c.iat, now_s)?;
            return Ok(c.app);
        }
        let (app, iat) = verify_iat(Some(value), apps, now_s)?;
        match last.as_mut() {
            Some(c) => {
                c.value.clear();
                c.value.extend_from_slice(value);
                (c.app, c.iat) = (app, iat);
            }
            None => *last = Some(Cached { value: value.to_vec(), app, iat }),
        }
        Ok(app)
    }
}

/// Makes a token for `app_id` issued at `iat` (unix seconds), signed with `secret`.
pub fn sign(app_id: &str, secret: &[u8], iat: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(serde_json::json!({ "iss": app_id, "iat": iat }).to_string());
    let mut m = mac(secret);
    m.update(header.as_bytes());
    m.update(b".");
    m.update(claims.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{header}.{claims}.{sig}")
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Unix seconds now.
pub fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apps() -> Apps {
        let mut a = Apps::new();
        a.add("demo", b"0123456789abcdef");
        a.add("other", b"fedcba9876543210");
        a
    }

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    #[test]
    fn a_signed_token_verifies_and_names_its_app() {
        let now = 1_800_000_000;
        let t = sign("other", b"fedcba9876543210", now - 10);
        assert_eq!(verify(Some(&bearer(&t)), &apps(), now), Ok(1));
        assert_eq!(verify(Some(format!("bearer  {t} ").as_bytes()), &apps(), now), Ok(1));
    }

    proptest::proptest! {
        #[test]
        fn any_header_value_is_refused_without_a_panic(v in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            proptest::prop_assert!(verify(Some(&v), &apps(), 1_800_000_000).is_err());
        }

        #[test]
        fn any_dotted_text_is_refused_without_a_panic(a in "[A-Za-z0-9_-]{0,60}", b in "[A-Za-z0-9_-]{0,60}", c in "[A-Za-z0-9_.-]{0,60}") {
            let v = format!("Bearer {a}.{b}.{c}");
            proptest::prop_assert!(verify(Some(v.as_bytes()), &apps(), 1_800_000_000).is_err());
        }
    }

    #[test]
    fn the_cache_answers_as_verify_and_honours_expiry() {
        let now = 1_800_000_000;
        let a = apps();
        let cache = Cache::default();
        let t = bearer(&sign("demo", b"0123456789abcdef", now - 10));
        assert_eq!(cache.verify(Some(&t), &a, now), Ok(0));
        // A hit: the same bytes, still within the token's hour.
        assert_eq!(cache.verify(Some(&t), &a, now + 1), Ok(0));
        assert_eq!(cache.verify(Some(&t), &a, now - 10 + MAX_AGE_S), Ok(0));
        // The cached token expires when verify would refuse it, and stays refused.
        assert_eq!(cache.verify(Some(&t), &a, now - 10 + MAX_AGE_S + 1), Err(AuthError::Expired));
        assert_eq!(verify(Some(&t), &a, now - 10 + MAX_AGE_S + 1), Err(AuthError::Expired));
        // Before its iat (less the skew) it is refused too, cached or not.
        assert_eq!(cache.verify(Some(&t), &a, now - 10 - MAX_SKEW_S - 1), Err(AuthError::FromTheFuture));
        // Other bytes are verified afresh: a bad signature is not let through by a warm cache.
        let bad = bearer(&sign("demo", b"fedcba9876543210", now));
        assert_eq!(cache.verify(Some(&bad), &a, now), Err(AuthError::BadSignature));
        assert_eq!(cache.verify(Some(&t), &a, now), Ok(0));
        let other = bearer(&sign("other", b"fedcba9876543210", now));
        assert_eq!(cache.verify(Some(&other), &a, now), Ok(1));
        assert_eq!(cache.verify(None, &a, now), Err(AuthError::Missing));
    }

    #[test]
    fn rejections() {
        let now = 1_800_000_000;
        let a = apps();
        assert_eq!(verify(None, &a, now), Err(AuthError::Missing));
        assert_eq!(verify(Some(b"Basic abc"), &a, now), Err(AuthError::Missing));
        let wrong_secret = sign("demo", b"fedcba9876543210", now);
        assert_eq!(verify(Some(&bearer(&wrong_secret)), &a, now), Err(AuthError::BadSignature));
        let old = sign("demo", b"0123456789abcdef", now - MAX_AGE_S - 1);
        assert_eq!(verify(Some(&bearer(&old)), &a, now), Err(AuthError::Expired));
        let future = sign("demo", b"0123456789abcdef", now + MAX_SKEW_S + 1);
        assert_eq!(verify(Some(&bearer(&future)), &a, now), Err(AuthError::FromTheFuture));
        let unknown = sign("nope", b"0123456789abcdef", now);
        assert_eq!(verify(Some(&bearer(&unknown)), &a, now), Err(AuthError::UnknownApp));
        // alg "none" with an empty signature is refused before any MAC is looked at.
        let good = sign("demo", b"0123456789abcdef", now);
        let mut parts = good.split('.');
        let _ = parts.next();
        let none =
            format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#), parts.next().unwrap_or(""));
        assert!(matches!(verify(Some(&bearer(&none)), &a, now), Err(AuthError::Malformed(_))));
        for junk in ["a.b", "a.b.c.d", "...", "x.y.z", "\u{00e9}.\u{00e9}.\u{00e9}"] {
            assert!(matches!(verify(Some(&bearer(junk)), &a, now), Err(AuthError::Malformed(_))), "{junk}");
        }
        // A tampered claim breaks the signature.
        let tampered = good.replacen('.', ".e", 1);
        assert!(verify(Some(&bearer(&tampered)), &a, now).is_err());
    }
}
