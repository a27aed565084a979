//! Outbound destinations. Each module builds the platform's request from canonical events
//! and classifies the platform's answer.
//!
//! Adding a destination: one module here plus one line in [`REGISTRY`].

pub mod ga4;
pub mod klaviyo;
pub mod linkedin;
pub mod meta;
pub mod tiktok;

use crate::config::MerchantConfig;
use crate::event::{CanonicalEvent, EventName};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Base URLs of the platforms. Only operator configuration (worker env vars) may change
/// them, so tests can point at a local stand-in; merchant input never can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub meta_graph: String,
    pub klaviyo: String,
    pub tiktok: String,
    pub ga4: String,
    pub linkedin: String,
    /// GA4's EU collection host, for EU merchants.
    pub ga4_eu: String,
}

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints {
            meta_graph: meta::DEFAULT_BASE_URL.to_string(),
            klaviyo: klaviyo::DEFAULT_BASE_URL.to_string(),
            tiktok: tiktok::DEFAULT_BASE_URL.to_string(),
            ga4: ga4::DEFAULT_BASE_URL.to_string(),
            linkedin: linkedin::DEFAULT_BASE_URL.to_string(),
            ga4_eu: ga4::DEFAULT_EU_BASE_URL.to_string(),
        }
    }
}

/// A fully built HTTP request. `log_url` is `url` with credentials removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRequest {
    pub method: &'static str,
    pub url: String,
    pub log_url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// What a platform's answer means for one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// The platform recognised our dedup key: success, nothing to resend.
    AlreadyDelivered,
    Retry {
        after_seconds: Option<u32>,
        reason: String,
    },
    Permanent {
        reason: String,
    },
}

/// Why no request could be built. All are permanent for this event.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BuildError {
    #[error("destination {0} is not configured for this merchant")]
    NotConfigured(&'static str),
    #[error("the {0} settings of this merchant are invalid; the operator must fix them")]
    Misconfigured(&'static str),
    #[error(
        "event is {age_seconds}s old; {destination} refuses events older than {limit_seconds}s"
    )]
    TooOld {
        destination: &'static str,
        age_seconds: i64,
        limit_seconds: i64,
    },
    #[error("no customer identifier to match on (need an email or a customer id)")]
    NoIdentity,
    #[error("{destination} would drop this payload: {reason}")]
    Invalid {
        destination: &'static str,
        reason: String,
    },
    #[error("event {0} is not forwarded to destinations")]
    NotForwardable(&'static str),
}

pub struct DestinationSpec {
    pub name: &'static str,
    pub build: fn(
        &[CanonicalEvent],
        &MerchantConfig,
        &Endpoints,
        i64,
    ) -> Result<OutboundRequest, BuildError>,
    /// (HTTP status, `Retry-After` header, body) → outcome.
    pub classify: fn(u16, Option<&str>, &str) -> Outcome,
    /// Top-level config fields holding credentials: sealed at rest, masked in the API.
    pub secret_fields: &'static [&'static str],
    /// Parses a config as the module would, so the admin API refuses what would not run.
    pub validate_config: fn(&serde_json::Value) -> Result<(), String>,
    /// The plan feature delivering to this destination needs, if any.
    pub required_feature: Option<crate::plans::Feature>,
    /// Whether this merchant's event is planned for the destination at all (LinkedIn
    /// takes only events mapped to a conversion rule).
    pub accepts: fn(&CanonicalEvent, &MerchantConfig) -> bool,
}

/// For destinations that take every forwardable event.
pub fn accepts_all(_event: &CanonicalEvent, _merchant: &MerchantConfig) -> bool {
    true
}

pub const REGISTRY: &[DestinationSpec] = &[
    meta::SPEC,
    klaviyo::SPEC,
    tiktok::SPEC,
    ga4::SPEC,
    linkedin::SPEC,
];

pub fn find(name: &str) -> Option<&'static DestinationSpec> {
    REGISTRY.iter().find(|spec| spec.name == name)
}

/// `Retry-After` in seconds (HTTP-date forms are rare on these APIs and are ignored).
pub fn parse_retry_after(header: Option<&str>) -> Option<u32> {
    header.and_then(|v| v.trim().parse::<u32>().ok())
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay as they are).
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A merchant's overrides of a destination's default mapping: canonical event (or an
/// accepted alias) → the platform's event or metric name, validated on parse.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NameOverrides(std::collections::BTreeMap<EventName, String>);

impl NameOverrides {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, name: EventName) -> Option<&str> {
        self.0.get(&name).map(String::as_str)
    }
}

impl<'de> Deserialize<'de> for NameOverrides {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let raw = std::collections::BTreeMap::<String, String>::deserialize(deserializer)?;
        let mut overrides = std::collections::BTreeMap::new();
        for (canonical, platform) in raw {
            let name = EventName::parse(&canonical).ok_or_else(|| {
                D::Error::custom(format!("unknown canonical event {canonical:?}"))
            })?;
            let platform = platform.trim();
            if platform.is_empty() || platform.chars().count() > 50 {
                return Err(D::Error::custom(format!(
                    "{canonical}: the platform name must be 1-50 characters"
                )));
            }
            overrides.insert(name, platform.to_string());
        }
        Ok(NameOverrides(overrides))
    }
}

pub fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}
