//! Structured log lines: one JSON object per line, so Workers Logs can filter by
//! merchant, source, destination, event and outcome. Fields hold ids, codes, counts and
//! durations only: never a secret, a payload or a personal value (emails, IPs). Free
//! text is cut short so a payload cannot ride along in an error message.

use serde_json::{Map, Value};

/// Longest text kept in one field.
pub const MAX_FIELD_CHARS: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// A line per accepted webhook: each is also an event record and an audit entry.
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    /// The operator's `LOG_LEVEL` (`debug`, `info`, `warn`, `error`); anything else is
    /// `info`.
    pub fn parse(text: &str) -> Level {
        match text.trim().to_ascii_lowercase().as_str() {
            "debug" => Level::Debug,
            "warn" | "warning" => Level::Warn,
            "error" => Level::Error,
            _ => Level::Info,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// One log line under construction: `Log::warn("delivery retry").merchant(m).job(j)…`.
#[derive(Debug, Clone)]
pub struct Log {
    pub level: Level,
    fields: Map<String, Value>,
}

impl Log {
    pub fn new(level: Level, message: &str) -> Self {
        let mut fields = Map::new();
        fields.insert("level".into(), level.as_str().into());
        fields.insert("msg".into(), cut(message).into());
        Log { level, fields }
    }

    pub fn debug(message: &str) -> Self {
        Log::new(Level::Debug, message)
    }

    pub fn info(message: &str) -> Self {
        Log::new(Level::Info, message)
    }

    pub fn warn(message: &str) -> Self {
        Log::new(Level::Warn, message)
    }

    pub fn error(message: &str) -> Self {
        Log::new(Level::Error, message)
    }

    pub fn merchant(self, merchant_id: &str) -> Self {
        self.text("merchant", merchant_id)
    }

    pub fn source(self, source: &str) -> Self {
        self.text("source", source)
    }

    pub fn destination(self, destination: &str) -> Self {
        self.text("destination", destination)
    }

    pub fn event(self, event_id: &str) -> Self {
        self.text("event_id", event_id)
    }

    pub fn job(self, job_id: &str) -> Self {
        self.text("job_id", job_id)
    }

    pub fn outcome(self, outcome: &str) -> Self {
        self.text("outcome", outcome)
    }

    pub fn duration_ms(self, ms: i64) -> Self {
        self.number("duration_ms", ms)
    }

    /// An error's text, cut short (storage and runtime errors, our typed reasons).
    pub fn reason(self, reason: impl std::fmt::Display) -> Self {
        self.text("reason", &reason.to_string())
    }

    pub fn text(mut self, name: &str, value: &str) -> Self {
        self.fields.insert(name.into(), cut(value).into());
        self
    }

    pub fn number(mut self, name: &str, value: impl Into<i64>) -> Self {
        self.fields.insert(name.into(), Value::from(value.into()));
        self
    }

    /// The JSON line.
    pub fn line(&self) -> String {
        Value::Object(self.fields.clone()).to_string()
    }
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_FIELD_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_json_object_per_line_with_the_named_fields() {
        let line = Log::warn("delivery retry")
            .merchant("m_1")
            .destination("meta")
            .event("tl_1")
            .job("job_1")
            .outcome("retry")
            .duration_ms(42)
            .reason("HTTP 500")
            .line();
        assert!(!line.contains('\n'));
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["level"], "warn");
        assert_eq!(parsed["msg"], "delivery retry");
        assert_eq!(parsed["merchant"], "m_1");
        assert_eq!(parsed["destination"], "meta");
        assert_eq!(parsed["event_id"], "tl_1");
        assert_eq!(parsed["job_id"], "job_1");
        assert_eq!(parsed["outcome"], "retry");
        assert_eq!(parsed["duration_ms"], 42);
        assert_eq!(parsed["reason"], "HTTP 500");
    }

    #[test]
    fn long_text_is_cut_so_no_payload_rides_along() {
        let line = Log::error("x").reason("y".repeat(10_000)).line();
        assert!(line.len() < MAX_FIELD_CHARS + 100, "{}", line.len());
    }
}
