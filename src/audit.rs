//! A merchant's tamper-evident audit chain: every accepted notification (with its
//! canonical events) and every change an operator or merchant makes is an entry holding
//! the previous entry's hash and SHA-256 over its own canonical JSON. Changing, removing
//! or reordering any entry breaks every link after it; [`verify`] names the first.
//!
//! The chain head is signed daily with the operator's Ed25519 key, so even a rewrite of
//! the whole chain from the start is caught against a head signed before it.
//!
//! Entries never hold secrets, and personal data only as SHA-256 ([`personal`]): an
//! erasure removes the person's records but leaves the chain intact.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What is appended: who did what to which thing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// e.g. `webhook.accepted`, `operator.put_integration`, `merchant.sign_in`.
    pub kind: String,
    /// `source:stripe`, `operator`, `merchant:<api key id>`, `system`.
    pub actor: String,
    /// What it acted on (an event id, `destinations/meta`, a key id …).
    pub subject: String,
    /// Facts without secrets; personal data hashed.
    #[serde(default)]
    pub details: Value,
}

/// One link of the chain as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at_ms: i64,
    pub kind: String,
    pub actor: String,
    pub subject: String,
    pub details: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// JSON with object keys sorted at every level and no whitespace: one text per value.
pub fn canonical_json(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for key in keys {
                    out.insert(key.clone(), sorted(&map[key]));
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // serde_json keeps the insertion order we just made sorted.
    sorted(value).to_string()
}

/// SHA-256 over the entry's canonical JSON (every field but `hash`).
pub fn entry_hash(seq: i64, at_ms: i64, record: &AuditRecord, prev_hash: &str) -> String {
    let body = serde_json::json!({
        "seq": seq,
        "at_ms": at_ms,
        "kind": record.kind,
        "actor": record.actor,
        "subject": record.subject,
        "details": record.details,
        "prev_hash": prev_hash,
    });
    crate::hashing::sha256_hex(&canonical_json(&body))
}

/// The entry that follows `previous` (or starts the chain).
pub fn link(previous: Option<(i64, &str)>, at_ms: i64, record: AuditRecord) -> AuditEntry {
    let (seq, prev_hash) = match previous {
        Some((seq, hash)) => (seq + 1, hash.to_string()),
        None => (1, GENESIS.to_string()),
    };
    let hash = entry_hash(seq, at_ms, &record, &prev_hash);
    AuditEntry {
        seq,
        at_ms,
        kind: record.kind,
        actor: record.actor,
        subject: record.subject,
        details: record.details,
        prev_hash,
        hash,
    }
}

/// Where a chain stops holding together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokenLink {
    pub seq: i64,
    pub reason: String,
}

/// Walks entries in order, continuing from `(last seq, last hash)` of an earlier page
/// (`None` at the start). Returns where the walk ended, or the first broken link.
pub fn verify<'a>(
    entries: impl IntoIterator<Item = &'a AuditEntry>,
    from: Option<(i64, String)>,
) -> Result<Option<(i64, String)>, BrokenLink> {
    let mut last = from;
    for entry in entries {
        let (expected_seq, expected_prev) = match &last {
            Some((seq, hash)) => (seq + 1, hash.as_str()),
            None => (1, GENESIS),
        };
        let broken = |reason: String| {
            Err(BrokenLink {
                seq: entry.seq,
                reason,
            })
        };
        if entry.seq != expected_seq {
            return broken(format!(
                "entry {expected_seq} is missing (found {} next)",
                entry.seq
            ));
        }
        if entry.prev_hash != expected_prev {
            return broken("prev_hash does not match the previous entry's hash".into());
        }
        let record = AuditRecord {
            kind: entry.kind.clone(),
            actor: entry.actor.clone(),
            subject: entry.subject.clone(),
            details: entry.details.clone(),
        };
        if entry_hash(entry.seq, entry.at_ms, &record, &entry.prev_hash) != entry.hash {
            return broken("the entry's content does not match its hash (edited)".into());
        }
        last = Some((entry.seq, entry.hash.clone()));
    }
    Ok(last)
}

/// Personal data as it may appear in an entry.
pub fn personal(value: &str) -> String {
    format!(
        "sha256:{}",
        crate::hashing::sha256_hex(&value.trim().to_lowercase())
    )
}

/// The text a daily head signature covers.
pub fn head_message(merchant_id: &str, day: &str, seq: i64, hash: &str) -> String {
    format!("tracklayer-audit-head/v1\n{merchant_id}\n{day}\n{seq}\n{hash}")
}

/// The operator's signing key from `AUDIT_SIGNING_KEY`: a 32-byte Ed25519 seed as
/// base64 or hex.
pub fn signing_key(text: &str) -> Result<SigningKey, String> {
    use base64::Engine;
    let text = text.trim();
    let bytes = hex::decode(text)
        .ok()
        .or_else(|| base64::engine::general_purpose::STANDARD.decode(text).ok())
        .ok_or("AUDIT_SIGNING_KEY is neither hex nor base64")?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "AUDIT_SIGNING_KEY must be a 32-byte Ed25519 seed")?;
    Ok(SigningKey::from_bytes(&seed))
}

/// (public key hex, signature hex) over `message`.
pub fn sign(key: &SigningKey, message: &str) -> (String, String) {
    let signature = key.sign(message.as_bytes());
    (
        hex::encode(key.verifying_key().to_bytes()),
        hex::encode(signature.to_bytes()),
    )
}

/// Whether `signature` (hex) by `public_key` (hex) covers `message`.
pub fn signature_valid(public_key: &str, message: &str, signature: &str) -> bool {
    let (Ok(key), Ok(signature)) = (hex::decode(public_key), hex::decode(signature)) else {
        return false;
    };
    let (Ok(key), Ok(signature)) = (
        <[u8; 32]>::try_from(key.as_slice()),
        <[u8; 64]>::try_from(signature.as_slice()),
    ) else {
        return false;
    };
    VerifyingKey::from_bytes(&key).is_ok_and(|key| {
        key.verify(message.as_bytes(), &Signature::from_bytes(&signature))
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(kind: &str, subject: &str) -> AuditRecord {
        AuditRecord {
            kind: kind.into(),
            actor: "operator".into(),
            subject: subject.into(),
            details: json!({ "b": 2, "a": { "z": 1, "y": [3, { "d": 1, "c": 2 }] } }),
        }
    }

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut entries: Vec<AuditEntry> = Vec::new();
        for i in 1..=n {
            let previous = entries.last().map(|e| (e.seq, e.hash.as_str()));
            let entry = link(
                previous,
                1_780_000_000_000 + i,
                record("operator.put_integration", &format!("destinations/{i}")),
            );
            entries.push(entry);
        }
        entries
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        assert_eq!(
            canonical_json(&json!({ "b": 2, "a": { "z": 1, "y": [3, { "d": 1, "c": 2 }] } })),
            r#"{"a":{"y":[3,{"c":2,"d":1}],"z":1},"b":2}"#
        );
    }

    #[test]
    fn the_first_entry_hash_is_a_known_value() {
        let entry = link(None, 1_780_000_000_000, record("webhook.accepted", "evt_1"));
        assert_eq!(entry.seq, 1);
        assert_eq!(entry.prev_hash, GENESIS);
        // printf '%s' '{"actor":"operator","at_ms":1780000000000,"details":{"a":{"y":[3,{"c":2,"d":1}],"z":1},"b":2},"kind":"webhook.accepted","prev_hash":"000…0","seq":1,"subject":"evt_1"}' | sha256sum
        assert_eq!(
            entry.hash,
            "5bbaf36fdf66172c6ac16a9db6e6d2127fab81712bb4fba08bf597f9cdeb35a3"
        );
    }

    #[test]
    fn an_intact_chain_verifies_in_pages() {
        let entries = chain(5);
        let first = verify(&entries[..2], None).unwrap();
        let end = verify(&entries[2..], first).unwrap().unwrap();
        assert_eq!(end, (5, entries[4].hash.clone()));
        assert_eq!(verify(&[], None).unwrap(), None);
    }

    #[test]
    fn an_edit_a_removal_or_a_reorder_names_the_first_broken_entry() {
        let mut edited = chain(5);
        edited[2].details = json!({ "b": 3 });
        let broken = verify(&edited, None).unwrap_err();
        assert_eq!(broken.seq, 3);
        assert!(broken.reason.contains("edited"), "{}", broken.reason);

        let mut removed = chain(5);
        removed.remove(1);
        assert_eq!(verify(&removed, None).unwrap_err().seq, 3);

        // Rehashing an edited entry does not help: the next entry's link breaks.
        let mut rehashed = chain(5);
        rehashed[2].subject = "destinations/other".into();
        let record = AuditRecord {
            kind: rehashed[2].kind.clone(),
            actor: rehashed[2].actor.clone(),
            subject: rehashed[2].subject.clone(),
            details: rehashed[2].details.clone(),
        };
        rehashed[2].hash = entry_hash(3, rehashed[2].at_ms, &record, &rehashed[2].prev_hash);
        let broken = verify(&rehashed, None).unwrap_err();
        assert_eq!(broken.seq, 4);
        assert!(broken.reason.contains("prev_hash"));
    }

    #[test]
    fn heads_are_signed_with_ed25519_and_checked() {
        let key = signing_key(&"07".repeat(32)).unwrap();
        let message = head_message("acme", "2026-11-30", 5, &"ab".repeat(32));
        let (public_key, signature) = sign(&key, &message);
        assert!(signature_valid(&public_key, &message, &signature));
        let other = head_message("acme", "2026-11-30", 6, &"ab".repeat(32));
        assert!(!signature_valid(&public_key, &other, &signature));
        assert!(signing_key("short").is_err());
        assert_eq!(
            signing_key(&base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                [7u8; 32]
            ))
            .unwrap()
            .to_bytes(),
            key.to_bytes()
        );
    }

    #[test]
    fn personal_data_appears_only_hashed() {
        assert_eq!(
            personal(" Jane.Doe@Example.com "),
            "sha256:86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d"
        );
    }
}
