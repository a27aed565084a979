//! Identity normalisation and SHA-256 hashing shared by every destination.
//!
//! Rules: never hash an empty value; pass through a value that is already SHA-256 hex;
//! normalise before hashing exactly as the platform's own pixel does, or the hashes
//! will not match theirs.

use sha2::{Digest, Sha256};

pub fn sha256_hex(input: &str) -> String {
    hex::encode(Sha256::digest(input.as_bytes()))
}

/// 64 lower-case hex characters: a value some upstream already hashed.
pub fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Trimmed and lower-cased; `None` when empty or not an address.
pub fn normalize_email(raw: &str) -> Option<String> {
    let email = raw.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    if local.is_empty() || domain.is_empty() || email.contains(char::is_whitespace) {
        return None;
    }
    Some(email)
}

/// SHA-256 of the normalised email, or the value itself when it is already a hash.
pub fn hash_email(raw: &str) -> Option<String> {
    hash_normalized(raw, normalize_email)
}

/// The shared rule: a value that is already SHA-256 hex (any case) passes through
/// lower-cased; otherwise SHA-256 of its normalised form, and nothing when the
/// normaliser refuses it (never a hash of an empty value).
fn hash_normalized(raw: &str, normalize: impl FnOnce(&str) -> Option<String>) -> Option<String> {
    let trimmed = raw.trim().to_lowercase();
    if is_sha256_hex(&trimmed) {
        return Some(trimmed);
    }
    normalize(&trimmed).map(|value| sha256_hex(&value))
}

/// Generic identifier (external_id): trimmed and lower-cased, as Meta's SDK normalises it.
pub fn hash_identifier(raw: &str) -> Option<String> {
    hash_normalized(raw, |value| (!value.is_empty()).then(|| value.to_string()))
}

/// Phone digits with the country code, no `+`, spaces or punctuation (Meta's and
/// TikTok's `ph` rule). A leading international `00` is dropped. `None` when the result is
/// not 7–15 digits (E.164 allows at most 15): a number without its country code cannot
/// be repaired here.
pub fn normalize_phone_digits(raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    if trimmed.bytes().any(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
    let digits = match digits.strip_prefix("00") {
        Some(rest) if !trimmed.starts_with('+') => rest.to_string(),
        _ => digits,
    };
    (7..=15).contains(&digits.len()).then_some(digits)
}

/// SHA-256 of the phone digits (Meta, TikTok), or the value itself if already a hash.
/// A first or last name as Meta and TikTok match it: trimmed, lower-cased, without
/// punctuation (letters of any script kept), SHA-256 hex.
pub fn hash_name(raw: &str) -> Option<String> {
    let normalized: String = raw
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .collect();
    let normalized = normalized.trim();
    (!normalized.is_empty()).then(|| sha256_hex(normalized))
}

/// A country as Meta matches it: the ISO 3166-1 alpha-2 code, lower-cased, SHA-256 hex.
pub fn hash_country(raw: &str) -> Option<String> {
    let code = raw.trim().to_ascii_lowercase();
    (code.len() == 2 && code.bytes().all(|b| b.is_ascii_lowercase())).then(|| sha256_hex(&code))
}

pub fn hash_phone_digits(raw: &str) -> Option<String> {
    hash_normalized(raw, normalize_phone_digits)
}

/// SHA-256 of the E.164 form `+<digits>` (Google Ads enhanced conversions, GA4).
pub fn hash_phone_e164(raw: &str) -> Option<String> {
    hash_normalized(raw, |phone| {
        normalize_phone_digits(phone).map(|digits| format!("+{digits}"))
    })
}

/// Google's email rule: trimmed, lower-cased, and for gmail.com / googlemail.com the dots
/// of the local part removed.
pub fn normalize_email_google(raw: &str) -> Option<String> {
    let email = normalize_email(raw)?;
    let (local, domain) = email.split_once('@')?;
    if matches!(domain, "gmail.com" | "googlemail.com") {
        return Some(format!("{}@{domain}", local.replace('.', "")));
    }
    Some(email)
}

pub fn hash_email_google(raw: &str) -> Option<String> {
    hash_normalized(raw, normalize_email_google)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_countries_hash_as_meta_normalises_them() {
        // printf '%s' 'priya' | sha256sum
        assert_eq!(
            hash_name("  Priya ").unwrap(),
            "44bcff24eb6751fdcc80626affe0ad38e91deadf89b4c1df821055688b96aa47"
        );
        assert_eq!(
            hash_name("O'Brien").unwrap(),
            "b4cb6cb33fe4b865868de825023a1e2790dc12ac01ecc8d7c5afe8254071c8ba"
        );
        assert_eq!(
            hash_name("Zoë").unwrap(),
            "2752b88686847fa5c86f47b94ce652b7b3f22a91c37617d451a4db9afa431450"
        );
        assert_eq!(hash_name(" . "), None);
        assert_eq!(
            hash_country("US").unwrap(),
            "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"
        );
        assert_eq!(
            hash_country("us").unwrap(),
            "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"
        );
        assert_eq!(hash_country("USA"), None);
    }

    #[test]
    fn sha256_known_vectors() {
        assert_eq!(
            sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn email_is_trimmed_and_lowercased_before_hashing() {
        // Vector computed independently: printf %s jane.doe@example.com | sha256sum
        let expected =
            "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d".to_string();
        assert_eq!(
            hash_email("  Jane.Doe@Example.COM \n"),
            Some(expected.clone())
        );
        assert_eq!(hash_email("jane.doe@example.com"), Some(expected));
    }

    #[test]
    fn empty_and_invalid_values_are_never_hashed() {
        assert_eq!(hash_email(""), None);
        assert_eq!(hash_email("   "), None);
        assert_eq!(hash_email("not-an-email"), None);
        assert_eq!(hash_identifier(""), None);
        assert_eq!(hash_identifier(" \t"), None);
    }

    #[test]
    fn already_hashed_values_pass_through() {
        let hashed = "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d".to_string();
        assert_eq!(hash_email(&hashed), Some(hashed.clone()));
        assert_eq!(hash_email(&hashed.to_uppercase()), Some(hashed.clone()));
        assert_eq!(hash_identifier(&hashed), Some(hashed));
    }

    #[test]
    fn external_id_is_normalised() {
        assert_eq!(
            hash_identifier(" CUS_Abc ").as_deref(),
            Some("de782ba4f953774a5064516dbdbfbc5966244a90b8ec8da591b6395663a0b438")
        );
    }
}

/// Compares secrets without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Hashing first makes the comparison length-independent too.
    let (da, db) = (Sha256::digest(a), Sha256::digest(b));
    da.iter()
        .zip(db.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod constant_time_tests {
    use super::*;

    #[test]
    fn compares_equal_and_unequal() {
        assert!(constant_time_eq(b"token-1", b"token-1"));
        assert!(!constant_time_eq(b"token-1", b"token-2"));
        assert!(!constant_time_eq(b"token", b"token-longer"));
    }

    #[test]
    fn phone_vectors() {
        // Meta's documented example: "+1 (616) 954-7888" → "16169547888".
        assert_eq!(
            normalize_phone_digits("+1 (616) 954-7888").as_deref(),
            Some("16169547888")
        );
        assert_eq!(
            normalize_phone_digits("0044 20 7946 0958").as_deref(),
            Some("442079460958")
        );
        assert_eq!(normalize_phone_digits("555-1234x"), None);
        assert_eq!(normalize_phone_digits("12345"), None);
        assert_eq!(normalize_phone_digits(""), None);
        assert_eq!(
            hash_phone_digits("+1 (616) 954-7888"),
            Some("bb2fa2e6d2cea4746530c99686d0c7886ab2019875dca2d7e9e171c0e6ada00d".to_string())
        );
        assert_eq!(
            hash_phone_e164("+1 (616) 954-7888"),
            Some("0a36809ca24463df1133c40c2e2fa2b7f180038fe7d86bd1923a32a1a54dfe58".to_string())
        );
        let hashed = "bb2fa2e6d2cea4746530c99686d0c7886ab2019875dca2d7e9e171c0e6ada00d".to_string();
        assert_eq!(hash_phone_digits(&hashed), Some(hashed.clone()));
        assert_eq!(hash_phone_e164(&hashed.to_uppercase()), Some(hashed));
    }

    #[test]
    fn google_email_rule_drops_gmail_dots_only() {
        assert_eq!(
            normalize_email_google(" Jane.Doe@GMail.com ").as_deref(),
            Some("janedoe@gmail.com")
        );
        assert_eq!(
            normalize_email_google("jane.doe@googlemail.com").as_deref(),
            Some("janedoe@googlemail.com")
        );
        assert_eq!(
            normalize_email_google("jane.doe@example.com").as_deref(),
            Some("jane.doe@example.com")
        );
        assert_eq!(
            hash_email_google("Jane.Doe@gmail.com"),
            Some("d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69".to_string())
        );
        assert_eq!(hash_email_google("   "), None);
    }
}
