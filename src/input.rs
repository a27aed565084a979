//! Deserialising untrusted input with errors that name the field and the expected type,
//! never the value: serde's own messages quote what they were given (an email in a
//! timestamp, a secret in a config), and those messages end up in logs and answers.

use serde::de::DeserializeOwned;
use std::fmt;

/// Where the input went wrong and what was expected there. Holds no input value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// Dotted field path (`data.object.created`, `items[0].price`), `.` for the root.
    pub path: String,
    pub problem: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path == "." || self.path.is_empty() {
            write!(f, "{}", self.problem)
        } else {
            write!(f, "field {}: {}", self.path, self.problem)
        }
    }
}

impl std::error::Error for InputError {}

/// `T` from JSON bytes.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, InputError> {
    // Well-formed input is parsed once without tracking paths (every webhook pays for
    // this); only a failure is parsed again, to name the field.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(from_path_error)?;
    deserializer.end().map_err(|e| InputError {
        path: ".".into(),
        problem: problem(&e),
    })?;
    Ok(value)
}

/// `T` from an already parsed JSON value.
pub fn from_value<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, InputError> {
    // As in `from_slice`: paths are tracked only to explain a failure.
    if let Ok(parsed) = T::deserialize(value) {
        return Ok(parsed);
    }
    serde_path_to_error::deserialize(value).map_err(from_path_error)
}

fn from_path_error(err: serde_path_to_error::Error<serde_json::Error>) -> InputError {
    InputError {
        path: safe_path(&err.path().to_string()),
        problem: problem(err.inner()),
    }
}

/// Map keys appear in paths; a key that is not a plain identifier may be data (an email
/// used as a key), so it is replaced.
fn safe_path(path: &str) -> String {
    path.split('.')
        .map(|segment| {
            let name = segment.split('[').next().unwrap_or("");
            if is_plain_name(name) {
                segment.to_string()
            } else {
                format!("?{}", &segment[name.len()..])
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'$'))
}

/// serde's message with any quoted input removed.
fn problem(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax => format!(
            "not valid JSON (line {}, column {})",
            err.line(),
            err.column()
        ),
        Category::Eof => "the JSON ends early".into(),
        Category::Io => "could not be read".into(),
        Category::Data => data_problem(&err.to_string(), err.line(), err.column()),
    }
}

/// Data errors: `invalid type: string "x@y.z", expected i64`, `unknown variant `v`,
/// expected one of …`, `invalid value: …, expected …`, `missing field `f``, or a custom
/// message. Only the expectation, which comes from our types, is kept.
fn data_problem(message: &str, line: usize, column: usize) -> String {
    let message = message
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(message);
    let kind = message.split([':', ' ']).next().unwrap_or("");
    if let Some((_, expected)) = message.rsplit_once(", expected ") {
        let what = match kind {
            "unknown" if message.starts_with("unknown variant") => "unknown value",
            "unknown" => "unknown field",
            "invalid" if message.starts_with("invalid length") => "wrong number of items",
            "invalid" if message.starts_with("invalid type") => "wrong type",
            _ => "invalid value",
        };
        return format!("{what}, expected {expected}");
    }
    if message.starts_with("missing field") || message.starts_with("duplicate field") {
        return message.to_string();
    }
    // Custom messages come from our own types; those that could quote input say so
    // with a backtick or a double quote, and are cut there.
    match message.find(['"', '`']) {
        Some(cut) => message[..cut].trim_end_matches([' ', ':']).to_string(),
        None => message.to_string(),
    }
}

/// Unix seconds that a browser, a JavaScript runtime and SQLite all represent exactly:
/// from 1970 through 9999-12-31. Beyond 2^53 the ledger's storage cannot commit them.
pub const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

/// Deserialises unix seconds, refusing values outside [`MAX_UNIX_SECONDS`]:
/// `#[serde(deserialize_with = "crate::input::unix_seconds")]`.
pub fn unix_seconds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let value = <i64 as serde::Deserialize>::deserialize(deserializer)?;
    check_unix_seconds(value).map_err(serde::de::Error::custom)
}

/// The optional form of [`unix_seconds`].
pub fn opt_unix_seconds<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    let value = <Option<i64> as serde::Deserialize>::deserialize(deserializer)?;
    value
        .map(check_unix_seconds)
        .transpose()
        .map_err(serde::de::Error::custom)
}

pub fn check_unix_seconds(value: i64) -> Result<i64, &'static str> {
    if (0..=MAX_UNIX_SECONDS).contains(&value) {
        Ok(value)
    } else {
        Err("out of range: unix seconds from 1970 through 9999")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Event {
        data: Data,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Data {
        #[serde(deserialize_with = "unix_seconds")]
        created: i64,
        #[serde(default)]
        kind: Option<Kind>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Trial,
    }

    fn err(json: &str) -> InputError {
        from_slice::<Event>(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn wrong_type_names_path_and_expectation_never_the_value() {
        let e = err(r#"{"data":{"created":"jane.doe@example.com"}}"#);
        assert_eq!(e.path, "data.created");
        assert_eq!(e.problem, "wrong type, expected i64");
        assert!(!e.to_string().contains("jane"), "{e}");
    }

    #[test]
    fn unknown_variants_and_secrets_are_not_echoed() {
        let e = err(r#"{"data":{"created":1,"kind":"whsec_supersecret"}}"#);
        assert_eq!(e.path, "data.kind");
        assert!(!e.to_string().contains("whsec"), "{e}");
        assert!(e.problem.starts_with("unknown value, expected"), "{e}");
        let e = err(r#"{"data":{"created":1,"endpoint_secrets":"whsec_x"}}"#);
        assert!(!e.to_string().contains("whsec_x"), "{e}");
    }

    #[test]
    fn timestamps_beyond_the_representable_range_are_refused_by_field() {
        let e = err(r#"{"data":{"created":9200000000000000000}}"#);
        assert_eq!(e.path, "data.created");
        assert!(e.problem.contains("out of range"), "{e}");
        let e = err(r#"{"data":{"created":-5}}"#);
        assert!(e.problem.contains("out of range"), "{e}");
        assert!(from_slice::<Event>(br#"{"data":{"created":1764000000}}"#).is_ok());
    }

    #[test]
    fn syntax_errors_and_missing_fields() {
        assert!(err("{").problem.contains("ends early") || err("{").problem.contains("JSON"));
        assert_eq!(err(r#"{"data":{}}"#).problem, "missing field `created`");
        let e = err(r#"{"data":{"created":1}} "tail@example.com""#);
        assert!(!e.to_string().contains("tail@"), "{e}");
    }

    #[test]
    fn personal_map_keys_are_masked_in_paths() {
        let value: serde_json::Value =
            serde_json::from_str(r#"{"jane@example.com":{"created":"x"}}"#).unwrap();
        let e = from_value::<std::collections::BTreeMap<String, Data>>(&value).unwrap_err();
        assert!(!e.path.contains("jane"), "{}", e.path);
    }
}
