//! The timestamped HMAC-SHA256 scheme Stripe and Paddle share: a header carrying a unix
//! timestamp and one or more hex signatures over `"{timestamp}{separator}{raw body}"`.
//! Only the header's spelling differs between them.

use crate::error::VerifyError;
use crate::hashing::constant_time_eq;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub struct TimestampedHmac {
    pub header: &'static str,
    /// Between the header's `key=value` parts: `,` (Stripe), `;` (Paddle).
    pub part_separator: char,
    pub timestamp_key: &'static str,
    /// Every part with this key is a candidate (several during secret rotation).
    pub signature_key: &'static str,
    /// Between timestamp and body in the signed bytes: `.` (Stripe), `:` (Paddle).
    pub signed_separator: &'static str,
    pub no_timestamp: &'static str,
    pub bad_timestamp: &'static str,
    pub no_signature: &'static str,
}

impl TimestampedHmac {
    pub fn signature(&self, secret: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(timestamp.as_bytes());
        mac.update(self.signed_separator.as_bytes());
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// A header the way the platform builds it; used by tests, fixtures and demo scripts.
    pub fn sign(&self, secret: &str, timestamp: i64, body: &[u8]) -> String {
        let ts = timestamp.to_string();
        format!(
            "{}={ts}{}{}={}",
            self.timestamp_key,
            self.part_separator,
            self.signature_key,
            hex::encode(self.signature(secret, &ts, body))
        )
    }

    /// Verifies the header over the raw body: any candidate against any non-empty secret,
    /// in constant time, then the timestamp against `tolerance_seconds` either way.
    pub fn verify(
        &self,
        header: Option<&str>,
        body: &[u8],
        secrets: &[&str],
        now: i64,
        tolerance_seconds: i64,
    ) -> Result<(), VerifyError> {
        let header = header.ok_or(VerifyError::MissingHeader {
            header: self.header,
        })?;
        let malformed = |detail| VerifyError::MalformedHeader {
            header: self.header,
            detail,
        };
        let mut timestamp = None;
        let mut candidates: Vec<Vec<u8>> = Vec::new();
        for part in header.split(self.part_separator) {
            let Some((key, value)) = part.trim().split_once('=') else {
                continue;
            };
            if key == self.timestamp_key {
                timestamp = Some(value);
            } else if key == self.signature_key {
                // An undecodable signature simply cannot match; the others still may.
                candidates.extend(hex::decode(value).ok());
            }
        }
        let timestamp = timestamp.ok_or_else(|| malformed(self.no_timestamp))?;
        let signed_at: i64 = timestamp
            .parse()
            .map_err(|_| malformed(self.bad_timestamp))?;
        if candidates.is_empty() {
            return Err(malformed(self.no_signature));
        }
        let matched = usable(secrets)?.iter().any(|secret| {
            let expected = self.signature(secret, timestamp, body);
            candidates.iter().any(|c| constant_time_eq(c, &expected))
        });
        if !matched {
            return Err(VerifyError::Mismatch);
        }
        let skew = now.saturating_sub(signed_at);
        if skew.unsigned_abs() > tolerance_seconds.unsigned_abs() {
            return Err(VerifyError::StaleTimestamp {
                skew_seconds: skew,
                tolerance_seconds,
            });
        }
        Ok(())
    }
}

/// Hex HMAC-SHA256 of the raw body (Lemon Squeezy's `X-Signature`), any secret matching.
pub fn verify_hex_hmac(
    header: &'static str,
    presented: Option<&str>,
    body: &[u8],
    secrets: &[String],
) -> Result<(), VerifyError> {
    verify_hex_digest(header, presented, secrets, |secret| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    })
}

/// Hex SHA-256 of `secret ‖ parts…` (Recharge's legacy header, HubSpot v1/v2): a keyed
/// hash, not an HMAC, but still only computable with the secret.
pub fn verify_prefixed_sha256(
    header: &'static str,
    presented: Option<&str>,
    parts_after_secret: &[&[u8]],
    secrets: &[String],
) -> Result<(), VerifyError> {
    verify_hex_digest(header, presented, secrets, |secret| {
        use sha2::Digest;
        let mut hasher = Sha256::new();
        hasher.update(secret.as_bytes());
        for part in parts_after_secret {
            hasher.update(part);
        }
        hasher.finalize().to_vec()
    })
}

/// A hex digest header against `digest(secret)` for every configured secret.
fn verify_hex_digest(
    header: &'static str,
    presented: Option<&str>,
    secrets: &[String],
    digest: impl Fn(&str) -> Vec<u8>,
) -> Result<(), VerifyError> {
    let presented = presented.ok_or(VerifyError::MissingHeader { header })?;
    let presented = hex::decode(presented.trim()).map_err(|_| VerifyError::MalformedHeader {
        header,
        detail: "not a hex digest",
    })?;
    let matched = usable(secrets)?
        .iter()
        .any(|secret| constant_time_eq(&presented, &digest(secret)));
    matched.then_some(()).ok_or(VerifyError::Mismatch)
}

/// HTTP Basic credentials (Chargebee, Pipedrive): no body signature exists, so the
/// configured user and password are the only proof of origin.
pub fn verify_basic_auth(
    authorization: Option<&str>,
    credentials: &[BasicCredentials],
) -> Result<(), VerifyError> {
    const HEADER: &str = "Authorization";
    use base64::Engine;
    let credentials: Vec<&BasicCredentials> = credentials
        .iter()
        .filter(|c| !c.password.is_empty())
        .collect();
    if credentials.is_empty() {
        return Err(VerifyError::NoSecretConfigured);
    }
    let value = authorization.ok_or(VerifyError::MissingHeader { header: HEADER })?;
    let encoded = value
        .trim()
        .strip_prefix("Basic ")
        .ok_or(VerifyError::MalformedHeader {
            header: HEADER,
            detail: "not Basic credentials",
        })?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| VerifyError::MalformedHeader {
            header: HEADER,
            detail: "credentials are not base64",
        })?;
    let matched = credentials.iter().any(|c| {
        let expected = format!("{}:{}", c.username, c.password);
        constant_time_eq(&decoded, expected.as_bytes())
    });
    matched.then_some(()).ok_or(VerifyError::Mismatch)
}

/// One accepted user/password pair; several are kept while a password is rotated.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BasicCredentials {
    pub username: String,
    pub password: String,
}

/// The configured secrets that are not blank; none at all is a configuration error.
pub(crate) fn usable<'a, S: AsRef<str> + 'a>(
    secrets: impl IntoIterator<Item = &'a S>,
) -> Result<Vec<&'a str>, VerifyError> {
    let usable: Vec<&str> = secrets
        .into_iter()
        .map(AsRef::as_ref)
        .filter(|s| !s.is_empty())
        .collect();
    if usable.is_empty() {
        return Err(VerifyError::NoSecretConfigured);
    }
    Ok(usable)
}
