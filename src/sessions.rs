//! Sign-in sessions for the merchant's pages. A merchant API key is exchanged once for
//! a cookie `v1.<merchant id, base64url>.<key id>.<expiry, unix s>.<HMAC-SHA256>`; the
//! MAC key is derived from the operator's master key, so sessions need no storage. The
//! edge still checks on every page that the key has not been revoked since.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const COOKIE: &str = "tl_session";
/// A working day; then the key is asked for again.
pub const LIFETIME_SECONDS: i64 = 8 * 3600;
/// Only the pages see the cookie.
pub const COOKIE_PATH: &str = "/app";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub merchant_id: String,
    pub key_id: String,
    pub expires_at: i64,
}

fn mac(key: &[u8; 32], payload: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(payload.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The cookie value for `session`, signed with `key`.
pub fn issue(key: &[u8; 32], session: &Session) -> String {
    let payload = format!(
        "v1.{}.{}.{}",
        URL_SAFE_NO_PAD.encode(session.merchant_id.as_bytes()),
        session.key_id,
        session.expires_at
    );
    let tag = URL_SAFE_NO_PAD.encode(mac(key, &payload));
    format!("{payload}.{tag}")
}

/// The session in `token` if one of `keys` signed it and it has not expired.
pub fn verify(keys: &[[u8; 32]], token: &str, now_s: i64) -> Option<Session> {
    let (payload, tag) = token.rsplit_once('.')?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    let signed = keys.iter().any(|key| {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(payload.as_bytes());
        mac.verify_slice(&tag).is_ok()
    });
    if !signed {
        return None;
    }
    let mut parts = payload.split('.');
    let (Some("v1"), Some(merchant), Some(key_id), Some(expires), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let merchant_id = String::from_utf8(URL_SAFE_NO_PAD.decode(merchant).ok()?).ok()?;
    let expires_at: i64 = expires.parse().ok()?;
    (expires_at > now_s).then(|| Session {
        merchant_id,
        key_id: key_id.to_string(),
        expires_at,
    })
}

/// `Set-Cookie` for a new session: never readable by scripts, never sent cross-site,
/// only over HTTPS, only to the pages, gone when it expires.
pub fn set_cookie(token: &str) -> String {
    format!(
        "{COOKIE}={token}; Max-Age={LIFETIME_SECONDS}; Path={COOKIE_PATH}; HttpOnly; Secure; SameSite=Strict"
    )
}

pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Max-Age=0; Path={COOKIE_PATH}; HttpOnly; Secure; SameSite=Strict")
}

/// The session cookie's value in a `Cookie` header.
pub fn from_cookie_header(header: &str) -> Option<&str> {
    header.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == COOKIE && !value.is_empty()).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const OLD_KEY: [u8; 32] = [9; 32];

    fn session() -> Session {
        Session {
            merchant_id: "acme-eu".into(),
            key_id: "0123456789abcdef".into(),
            expires_at: 1_000 + LIFETIME_SECONDS,
        }
    }

    #[test]
    fn a_session_verifies_until_it_expires_and_under_a_rotated_key() {
        let token = issue(&KEY, &session());
        assert_eq!(verify(&[KEY], &token, 1_000), Some(session()));
        assert_eq!(verify(&[OLD_KEY, KEY], &token, 1_000), Some(session()));
        assert_eq!(verify(&[KEY], &token, 1_000 + LIFETIME_SECONDS), None);
        assert_eq!(verify(&[OLD_KEY], &token, 1_000), None);
    }

    #[test]
    fn a_changed_merchant_expiry_or_tag_is_refused() {
        let token = issue(&KEY, &session());
        let other = URL_SAFE_NO_PAD.encode("other");
        let forged = token.replacen(&URL_SAFE_NO_PAD.encode("acme-eu"), &other, 1);
        assert_eq!(verify(&[KEY], &forged, 1_000), None);
        let later = token.replacen(
            &format!(".{}.", 1_000 + LIFETIME_SECONDS),
            ".99999999999.",
            1,
        );
        assert_eq!(verify(&[KEY], &later, 1_000), None);
        for bad in ["", "v1", "v1.a.b.c.d", "x.y", &format!("{token}x")] {
            assert_eq!(verify(&[KEY], bad, 1_000), None, "{bad}");
        }
    }

    #[test]
    fn the_cookie_is_http_only_secure_strict_and_scoped_to_the_pages() {
        let cookie = set_cookie("abc");
        for flag in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/app",
            "Max-Age=28800",
        ] {
            assert!(cookie.contains(flag), "{cookie} lacks {flag}");
        }
        assert!(clear_cookie().contains("Max-Age=0"));
        assert_eq!(
            from_cookie_header("a=1; tl_session=tok.en; b=2"),
            Some("tok.en")
        );
        assert_eq!(from_cookie_header("tl_session="), None);
        assert_eq!(from_cookie_header("x_tl_session=1"), None);
    }
}
