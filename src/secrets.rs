//! Secrets at rest: source signing secrets and destination tokens are sealed with
//! AES-256-GCM under a versioned master key before they reach D1.
//!
//! Sealed form: `enc:v1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`. The key id says
//! which master key opens it, so keys can be rotated: new writes use the current key,
//! old rows open with the retired key until they are re-sealed. The associated data
//! binds a ciphertext to its row (merchant + source or destination): a sealed blob
//! copied to another merchant's row does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::Value;
use thiserror::Error;

const PREFIX: &str = "enc:v1:";
pub const NONCE_LEN: usize = 12;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SecretsError {
    #[error("MASTER_KEYS is empty")]
    NoKeys,
    #[error("MASTER_KEYS entry {0} is not `<key id>:<base64 32-byte key>`")]
    MalformedKey(usize),
    #[error("master key id {0:?} appears twice")]
    DuplicateKeyId(String),
    #[error("stored secret is not in the sealed format")]
    NotSealed,
    #[error("stored secret was sealed with master key {0:?}, which is not configured")]
    UnknownKeyId(String),
    #[error("stored secret does not open (wrong key or tampered)")]
    Tampered,
    #[error("sealing failed")]
    SealFailed,
}

/// The master keys, newest first. The first is the one new secrets are sealed with.
pub struct Keyring {
    keys: Vec<(String, Key<Aes256Gcm>)>,
}

impl std::fmt::Debug for Keyring {
    // Key material never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Keyring {
    /// Parses `MASTER_KEYS`: comma-separated `<key id>:<base64 of 32 random bytes>`,
    /// current key first, e.g. `k2:…,k1:…`.
    pub fn parse(spec: &str) -> Result<Self, SecretsError> {
        let mut keys: Vec<(String, Key<Aes256Gcm>)> = Vec::new();
        for (index, entry) in spec
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let (id, material) = entry
                .split_once(':')
                .ok_or(SecretsError::MalformedKey(index + 1))?;
            let bytes = STANDARD
                .decode(material.trim())
                .or_else(|_| URL_SAFE_NO_PAD.decode(material.trim()))
                .map_err(|_| SecretsError::MalformedKey(index + 1))?;
            if !valid_key_id(id) || bytes.len() != 32 {
                return Err(SecretsError::MalformedKey(index + 1));
            }
            if keys.iter().any(|(known, _)| known == id) {
                return Err(SecretsError::DuplicateKeyId(id.to_string()));
            }
            keys.push((id.to_string(), *Key::<Aes256Gcm>::from_slice(&bytes)));
        }
        if keys.is_empty() {
            return Err(SecretsError::NoKeys);
        }
        Ok(Keyring { keys })
    }

    /// A key for `purpose` derived from each master key (HMAC-SHA256), newest first:
    /// sign with the first, accept any, so a rotation signs nobody out at once.
    pub fn derived_keys(&self, purpose: &str) -> Vec<[u8; 32]> {
        use hmac::{Hmac, Mac};
        self.keys
            .iter()
            .map(|(_, key)| {
                let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key.as_slice())
                    .expect("HMAC takes any key length");
                mac.update(purpose.as_bytes());
                mac.finalize().into_bytes().into()
            })
            .collect()
    }

    pub fn current_key_id(&self) -> &str {
        &self.keys[0].0
    }

    /// Seals `plaintext` under the current key. `nonce` must be fresh random bytes.
    pub fn seal(
        &self,
        plaintext: &[u8],
        context: &str,
        nonce: [u8; NONCE_LEN],
    ) -> Result<String, SecretsError> {
        let (id, key) = &self.keys[0];
        let cipher = Aes256Gcm::new(key);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretsError::SealFailed)?;
        let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{id}:{}", URL_SAFE_NO_PAD.encode(blob)))
    }

    pub fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>, SecretsError> {
        let (id, blob) = split_sealed(sealed)?;
        let key = self
            .keys
            .iter()
            .find(|(known, _)| known == id)
            .map(|(_, key)| key)
            .ok_or_else(|| SecretsError::UnknownKeyId(id.to_string()))?;
        let blob = URL_SAFE_NO_PAD
            .decode(blob)
            .map_err(|_| SecretsError::NotSealed)?;
        if blob.len() < NONCE_LEN + 16 {
            return Err(SecretsError::NotSealed);
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        Aes256Gcm::new(key)
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretsError::Tampered)
    }

    /// Whether a sealed value should be re-sealed under the current key.
    pub fn needs_rotation(&self, sealed: &str) -> bool {
        split_sealed(sealed).map_or(true, |(id, _)| id != self.current_key_id())
    }
}

fn split_sealed(sealed: &str) -> Result<(&str, &str), SecretsError> {
    sealed
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .ok_or(SecretsError::NotSealed)
}

/// The associated data binding a sealed config to its row.
pub fn config_context(merchant_id: &str, kind: &str, name: &str) -> String {
    format!("tracklayer/{merchant_id}/{kind}/{name}")
}

/// What the API shows of a secret: its last 4 characters, never more (and nothing
/// at all of a secret shorter than 12 characters).
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        return "****".to_string();
    }
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("****{tail}")
}

/// Replaces every string under the named top-level fields with its mask.
pub fn mask_fields(config: &mut Value, secret_fields: &[&str]) {
    fn mask_all(value: &mut Value) {
        match value {
            Value::String(s) => *s = mask(s),
            Value::Array(items) => items.iter_mut().for_each(mask_all),
            Value::Object(map) => map.values_mut().for_each(mask_all),
            _ => {}
        }
    }
    if let Value::Object(map) = config {
        for field in secret_fields {
            if let Some(value) = map.get_mut(*field) {
                mask_all(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(byte: u8) -> String {
        STANDARD.encode([byte; 32])
    }

    #[test]
    fn seals_and_opens_with_the_same_context() {
        let ring = Keyring::parse(&format!("k1:{}", key(7))).unwrap();
        let sealed = ring
            .seal(b"whsec_abc", "tracklayer/m1/source/stripe", [1; 12])
            .unwrap();
        assert!(sealed.starts_with("enc:v1:k1:"));
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(
            ring.open(&sealed, "tracklayer/m1/source/stripe").unwrap(),
            b"whsec_abc"
        );
        // Copied to another merchant's row, it does not open.
        assert_eq!(
            ring.open(&sealed, "tracklayer/m2/source/stripe"),
            Err(SecretsError::Tampered)
        );
    }

    #[test]
    fn rotation_keeps_old_rows_readable() {
        let old = Keyring::parse(&format!("k1:{}", key(1))).unwrap();
        let sealed = old.seal(b"secret", "ctx", [2; 12]).unwrap();
        let rotated = Keyring::parse(&format!("k2:{}, k1:{}", key(2), key(1))).unwrap();
        assert_eq!(rotated.current_key_id(), "k2");
        assert_eq!(rotated.open(&sealed, "ctx").unwrap(), b"secret");
        assert!(rotated.needs_rotation(&sealed));
        let resealed = rotated.seal(b"secret", "ctx", [3; 12]).unwrap();
        assert!(!rotated.needs_rotation(&resealed));
        // Once the old key is retired, its rows say which key they need.
        let retired = Keyring::parse(&format!("k2:{}", key(2))).unwrap();
        assert_eq!(
            retired.open(&sealed, "ctx"),
            Err(SecretsError::UnknownKeyId("k1".into()))
        );
    }

    #[test]
    fn tampering_is_detected() {
        let ring = Keyring::parse(&format!("k1:{}", key(9))).unwrap();
        let sealed = ring.seal(b"token", "ctx", [4; 12]).unwrap();
        let mut chars: Vec<char> = sealed.chars().collect();
        let last = chars.len() - 5;
        chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
        let tampered: String = chars.into_iter().collect();
        assert_eq!(ring.open(&tampered, "ctx"), Err(SecretsError::Tampered));
        assert_eq!(
            ring.open("{\"plain\":1}", "ctx"),
            Err(SecretsError::NotSealed)
        );
    }

    #[test]
    fn refuses_malformed_key_specs() {
        assert_eq!(Keyring::parse("").unwrap_err(), SecretsError::NoKeys);
        assert_eq!(
            Keyring::parse("k1:c2hvcnQ=").unwrap_err(),
            SecretsError::MalformedKey(1)
        );
        assert_eq!(
            Keyring::parse(&format!("k1:{},k1:{}", key(1), key(2))).unwrap_err(),
            SecretsError::DuplicateKeyId("k1".into())
        );
        assert_eq!(
            Keyring::parse(&format!("bad id:{}", key(1))).unwrap_err(),
            SecretsError::MalformedKey(1)
        );
        // Debug output names key ids only.
        let ring = Keyring::parse(&format!("k1:{}", key(5))).unwrap();
        assert!(!format!("{ring:?}").contains(&key(5)));
    }

    #[test]
    fn masks_only_the_last_four_characters() {
        let mut config = json!({
            "endpoint_secrets": ["whsec_1234567890abcd", "short"],
            "basic_auth": [{"username": "chargebee-user", "password": "p@ssw0rd-long-9876"}],
            "tolerance_seconds": 300,
            "pixel_id": "123456789012",
        });
        mask_fields(&mut config, &["endpoint_secrets", "basic_auth"]);
        assert_eq!(
            config,
            json!({
                "endpoint_secrets": ["****abcd", "****"],
                "basic_auth": [{"username": "****user", "password": "****9876"}],
                "tolerance_seconds": 300,
                "pixel_id": "123456789012",
            })
        );
    }
}
