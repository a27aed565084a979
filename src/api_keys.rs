//! Merchant-scoped API keys: `tlk_<key id>_<secret>`. The key id locates the record;
//! only SHA-256 of the secret is stored (the secret is 32 random bytes, so a plain hash
//! is enough), compared in constant time. The full key is shown once, at creation.

use crate::hashing::constant_time_eq;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

const PREFIX: &str = "tlk_";
pub const KEY_ID_BYTES: usize = 8;
pub const SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    pub key_id: String,
    /// The full key: returned once, never stored.
    pub token: String,
    pub secret_hash: String,
}

/// Builds a key from fresh random bytes (the edge supplies them from `getrandom`).
pub fn generate(random: &[u8; KEY_ID_BYTES + SECRET_BYTES]) -> NewApiKey {
    let (id_bytes, secret) = random.split_at(KEY_ID_BYTES);
    let key_id = hex::encode(id_bytes);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    NewApiKey {
        token: format!("{PREFIX}{key_id}_{secret}"),
        secret_hash: hash_secret(&secret),
        key_id,
    }
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Splits a presented key into (key id, secret); `None` if it is not one of ours.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (key_id, secret) = rest.split_once('_')?;
    let id_ok = key_id.len() == KEY_ID_BYTES * 2 && key_id.bytes().all(|b| b.is_ascii_hexdigit());
    (id_ok && !secret.is_empty() && secret.len() <= 64).then_some((key_id, secret))
}

pub fn secret_matches(secret: &str, stored_hash: &str) -> bool {
    constant_time_eq(hash_secret(secret).as_bytes(), stored_hash.as_bytes())
}

/// The bearer token of an `Authorization` header.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_parses_and_matches_only_its_hash() {
        let mut random = [0u8; KEY_ID_BYTES + SECRET_BYTES];
        for (i, b) in random.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(7);
        }
        let key = generate(&random);
        assert!(key.token.starts_with("tlk_"));
        assert!(!key.token.contains(&key.secret_hash));
        let (key_id, secret) = parse(&key.token).unwrap();
        assert_eq!(key_id, key.key_id);
        assert!(secret_matches(secret, &key.secret_hash));
        assert!(!secret_matches("guess", &key.secret_hash));
    }

    #[test]
    fn foreign_tokens_do_not_parse() {
        for token in [
            "",
            "tlk_",
            "tlk_abc_secret",
            "sk_live_123",
            "tlk_0011223344556677_",
            "tlk_zz11223344556677_secret",
        ] {
            assert_eq!(parse(token), None, "{token}");
        }
        assert_eq!(bearer(Some("Bearer  tlk_x ")), Some("tlk_x"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(None), None);
    }
}
