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
        let secrets: Vec<&str> = secrets.iter().copied().filter(|s| !s.is_empty()).collect();
        if secrets.is_empty() {
            return Err(VerifyError::NoSecretConfigured);
        }
        let matched = secrets.iter().any(|secret| {
            let expected = self.signature(secret, timestamp, body);
            candidates.iter().any(|c| constant_time_eq(c, &expected))
        });
        if !matched {
            return Err(VerifyError::Mismatch);
        }
        let skew = now - signed_at;
        if skew.abs() > tolerance_seconds {
            return Err(VerifyError::StaleTimestamp {
                skew_seconds: skew,
                tolerance_seconds,
            });
        }
        Ok(())
    }
}
