//! Outbound destinations. Each module builds the platform's request from canonical events
//! and classifies the platform's answer.
//!
//! Adding a destination: one module here plus one line in [`REGISTRY`].

pub mod ga4;
pub mod google_ads;
pub mod klaviyo;
pub mod linkedin;
pub mod meta;
pub mod tiktok;
pub mod webhook;

use crate::config::MerchantConfig;
use crate::event::{CanonicalEvent, EventName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// One base URL a destination calls: its default, and the operator variable that may
/// replace it (to point tests at a local stand-in). Merchant input never can. Declared
/// by the destination's module and listed in its spec, so the edge reads every override
/// from the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointSpec {
    pub default: &'static str,
    pub override_var: &'static str,
}

/// The operator's base URL overrides, by variable name; everything else is the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    overrides: std::collections::BTreeMap<&'static str, String>,
}

impl Endpoints {
    /// Reads the override variable of every registered destination's endpoints.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let mut endpoints = Endpoints::default();
        for endpoint in REGISTRY.iter().flat_map(|spec| spec.endpoints) {
            if let Some(url) = var(endpoint.override_var).filter(|u| !u.is_empty()) {
                endpoints.overrides.insert(endpoint.override_var, url);
            }
        }
        endpoints
    }

    /// An override, as the operator's variable would set it (tests).
    pub fn with(mut self, endpoint: &EndpointSpec, url: &str) -> Self {
        self.overrides
            .insert(endpoint.override_var, url.to_string());
        self
    }

    /// The operator's replacement for `endpoint`, if one is set.
    pub fn overridden(&self, endpoint: &EndpointSpec) -> Option<&str> {
        self.overrides
            .get(endpoint.override_var)
            .map(|url| url.trim_end_matches('/'))
    }

    /// The base URL to call, without a trailing slash.
    pub fn url(&self, endpoint: &EndpointSpec) -> &str {
        self.overridden(endpoint)
            .unwrap_or(endpoint.default.trim_end_matches('/'))
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
    #[error("{0} needs a click id (gclid, gbraid, wbraid) or a hashed email or phone")]
    NoClickOrIdentity(&'static str),
    /// Nothing to send, by design (e.g. a refund of a conversion the platform never got):
    /// recorded as skipped, not dead-lettered.
    #[error("{destination}: {reason}")]
    NotApplicable {
        destination: &'static str,
        reason: String,
    },
    /// TrackLayer's own platform credentials are missing: the operator must set them.
    #[error("operator configuration: {0}")]
    OperatorMisconfigured(&'static str),
}

/// TrackLayer's own secrets that destinations need (never a merchant's), by the name
/// each destination declares in `DestinationSpec::operator_secrets`; the edge reads them
/// from worker secrets for every registered destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorCredentials {
    values: BTreeMap<&'static str, String>,
}

impl OperatorCredentials {
    /// Each declared secret `read` finds (empty values count as missing).
    pub fn from_registry(read: impl Fn(&str) -> Option<String>) -> Self {
        let values = REGISTRY
            .iter()
            .flat_map(|spec| spec.operator_secrets.iter())
            .filter_map(|name| Some((*name, read(name).filter(|v| !v.is_empty())?)))
            .collect();
        OperatorCredentials { values }
    }

    pub fn with(mut self, name: &'static str, value: &str) -> Self {
        self.values.insert(name, value.to_string());
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
}

/// Everything a builder needs besides the events and the merchant's settings.
#[derive(Debug, Clone, Copy)]
pub struct BuildContext<'a> {
    pub endpoints: &'a Endpoints,
    pub operator: &'a OperatorCredentials,
    pub now_s: i64,
    /// OAuth access token fetched by the edge for destinations with an [`AuthSpec`].
    pub access_token: Option<&'a str>,
}

/// One request and the events it carries: `rows[i]` is the index (into the events given
/// to `build`) of the i-th row of the request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRequest {
    pub request: OutboundRequest,
    pub rows: Vec<usize>,
}

/// What a builder makes of a group of events: as few requests as the platform allows,
/// plus the events it refuses, each with its own reason. One bad event never fails the
/// others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestPlan {
    pub requests: Vec<PlannedRequest>,
    pub refused: Vec<(usize, BuildError)>,
}

/// An OAuth access token and its lifetime in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub token: String,
    pub expires_in_s: i64,
}

/// How a destination obtains a short-lived access token from stored credentials.
pub struct AuthSpec {
    pub token_request: fn(&MerchantConfig, &BuildContext) -> Result<OutboundRequest, BuildError>,
    /// (HTTP status, body) → token, or the outcome every waiting event gets.
    pub parse_token: fn(u16, &str) -> Result<AccessToken, Outcome>,
}

pub use crate::identity::MatchKey;

impl From<crate::config::SettingsError> for BuildError {
    fn from(err: crate::config::SettingsError) -> Self {
        match err {
            crate::config::SettingsError::NotConfigured(name) => BuildError::NotConfigured(name),
            crate::config::SettingsError::Misconfigured(name) => BuildError::Misconfigured(name),
        }
    }
}

/// Destinations this merchant has connected, by registry name.
pub fn connected(merchant: &MerchantConfig) -> Vec<&'static str> {
    REGISTRY
        .iter()
        .filter(|d| merchant.destinations.contains_key(d.name))
        // A destination above the merchant's plan (after a downgrade) stays
        // configured but receives nothing.
        .filter(|d| d.required_feature.is_none_or(|f| merchant.plan.includes(f)))
        .map(|d| d.name)
        .collect()
}

/// (HTTP status, body, number of rows) → one outcome per row, when the answer says.
pub type RowClassifier = fn(u16, &str, usize) -> Option<Vec<Outcome>>;

pub struct DestinationSpec {
    pub name: &'static str,
    /// The base URLs it calls (see [`EndpointSpec`]).
    pub endpoints: &'static [EndpointSpec],
    pub build:
        fn(&[CanonicalEvent], &MerchantConfig, &BuildContext) -> Result<RequestPlan, BuildError>,
    /// (HTTP status, `Retry-After` header, body) → outcome of the whole request.
    pub classify: fn(u16, Option<&str>, &str) -> Outcome,
    /// Per-row outcomes, for platforms that report them (Google Ads partial failure,
    /// LinkedIn batch statuses). `None` → the whole-request outcome applies; an empty
    /// list → some rows failed without saying which, so each row is re-sent alone.
    pub classify_rows: Option<RowClassifier>,
    /// Present when the destination needs an OAuth access token.
    pub auth: Option<&'static AuthSpec>,
    /// Identifiers the destination matches on, for the per-delivery match-quality score.
    pub match_keys: &'static [MatchKey],
    /// Top-level config fields holding credentials: sealed at rest, masked in the API.
    pub secret_fields: &'static [&'static str],
    /// Parses a config as the module would, so the admin API refuses what would not run.
    pub validate_config: fn(&serde_json::Value) -> Result<(), String>,
    /// The plan feature delivering to this destination needs, if any.
    pub required_feature: Option<crate::plans::Feature>,
    /// Whether this merchant's event is planned for the destination at all (LinkedIn
    /// takes only events mapped to a conversion rule).
    pub accepts: fn(&CanonicalEvent, &MerchantConfig) -> bool,
    /// The value a paid start or trial conversion carries here unless the merchant's
    /// value policy says otherwise (LinkedIn: ARR); `None`: the general defaults.
    pub paid_start_value: Option<crate::config::ValueField>,
    /// TrackLayer's own secrets this destination needs (Google Ads: its developer token
    /// and OAuth client), read by the edge from worker secrets of these names.
    pub operator_secrets: &'static [&'static str],
    /// Present when the platform adjusts earlier conversions by reference (Google Ads):
    /// the consumer then reads the stored conversions a correction may adjust.
    pub corrections: Option<&'static CorrectionSpec>,
    /// Present when the merchant pins a platform API version: which config field, the
    /// default, and how its sunset is dated (see `crate::api_versions`).
    pub versioning: Option<crate::api_versions::Versioning>,
    /// Present when TrackLayer can pause the merchant's named campaigns at the platform
    /// (an anomaly's spend protection): the request that sets them `PAUSED`.
    pub pause_campaigns: Option<PauseCampaigns>,
}

/// Builds the request pausing `campaign_ids` with the merchant's own credentials.
pub type PauseCampaigns =
    fn(&MerchantConfig, &BuildContext, &[String]) -> Result<OutboundRequest, BuildError>;

/// Where one (event, destination) delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    DeadLettered,
    /// Built and recorded for a dry-run merchant, never sent.
    Simulated,
    /// Nothing to send by design (a refund of a conversion the platform never got).
    Skipped,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::DeadLettered => "dead_lettered",
            DeliveryStatus::Simulated => "simulated",
            DeliveryStatus::Skipped => "skipped",
        }
    }
}

/// How a destination corrects conversions it already received.
pub struct CorrectionSpec {
    /// Whether this event is a correction that must name what it corrects.
    pub applies: fn(&CanonicalEvent) -> bool,
    /// The conversions a correction may adjust, as this merchant maps them.
    pub originals: fn(&MerchantConfig) -> Vec<EventName>,
    /// Given the subscription's stored conversions (newest first) with the status of
    /// their delivery here (`None`: never planned here): what to do now.
    pub resolve: fn(CanonicalEvent, &[StoredConversion], &MerchantConfig) -> Correction,
}

/// A stored conversion a correction may adjust, with the status of its delivery to the
/// correcting destination (`None`: never planned there).
pub type StoredConversion = (CanonicalEvent, Option<DeliveryStatus>);

/// What becomes of a correction now.
#[derive(Debug, Clone, PartialEq)]
pub enum Correction {
    /// Send this event (it now names what it adjusts).
    Send(Box<CanonicalEvent>),
    /// What it corrects is not settled yet: ask again later, spending no attempt.
    Wait(String),
    /// Nothing to correct here, final.
    Skip(String),
}

impl DestinationSpec {
    /// Every optional part at its default. A destination spreads it
    /// (`..DestinationSpec::DEFAULT`) after what it sets, so a new optional hook never
    /// touches the destinations that do not use it.
    pub const DEFAULT: DestinationSpec = DestinationSpec {
        name: "",
        endpoints: &[],
        build: build_nothing,
        classify: classify_by_status,
        classify_rows: None,
        auth: None,
        match_keys: &[],
        secret_fields: &[],
        validate_config: |_| Ok(()),
        required_feature: None,
        accepts: accepts_all,
        paid_start_value: None,
        operator_secrets: &[],
        corrections: None,
        versioning: None,
        pause_campaigns: None,
    };

    /// What `event` is worth at this destination under the merchant's value policy,
    /// with this destination's and the event's source's defaults.
    pub fn primary_value(
        &self,
        event: &CanonicalEvent,
        merchant: &MerchantConfig,
    ) -> Option<crate::money::Amount> {
        let defaults = crate::config::ValueDefaults {
            paid_start: self.paid_start_value,
            source: crate::sources::find(&event.source).and_then(|s| s.default_value),
        };
        merchant
            .value_policy
            .primary_value(event, self.name, defaults)
    }
}

fn build_nothing(
    _: &[CanonicalEvent],
    _: &MerchantConfig,
    _: &BuildContext,
) -> Result<RequestPlan, BuildError> {
    Err(BuildError::NotConfigured("a destination without a builder"))
}

/// The whole-request outcome from the HTTP status alone: 2xx delivered, the rest read by
/// [`failure_outcome`].
pub fn classify_by_status(status: u16, retry_after: Option<&str>, body: &str) -> Outcome {
    if (200..300).contains(&status) {
        Outcome::Delivered
    } else {
        let reason = format!("HTTP {status}: {}", truncate(body.trim(), 300));
        failure_outcome(status, retry_after, reason, false)
    }
}

/// The usual plan: each event becomes a row (or is refused with its reason), and the
/// rows go out in requests of at most `max_rows`.
pub fn plan_rows<R>(
    events: &[CanonicalEvent],
    max_rows: usize,
    row: impl FnMut(&CanonicalEvent) -> Result<R, BuildError>,
    request: impl FnMut(Vec<R>) -> Result<OutboundRequest, BuildError>,
) -> Result<RequestPlan, BuildError> {
    let mut plan = RequestPlan::default();
    plan_indexed_rows(&mut plan, events.iter().enumerate(), max_rows, row, request)?;
    Ok(plan)
}

/// [`plan_rows`] over a chosen subset of the events (indices into the builder's slice),
/// adding to `plan`: for platforms with several endpoints per group.
pub fn plan_indexed_rows<'a, R>(
    plan: &mut RequestPlan,
    events: impl IntoIterator<Item = (usize, &'a CanonicalEvent)>,
    max_rows: usize,
    mut row: impl FnMut(&CanonicalEvent) -> Result<R, BuildError>,
    request: impl FnMut(Vec<R>) -> Result<OutboundRequest, BuildError>,
) -> Result<(), BuildError> {
    plan_indexed_multi_rows(plan, events, max_rows, |e| row(e).map(|r| vec![r]), request)
}

/// Like [`plan_indexed_rows`], for events that become several rows (a cancellation
/// retracting several conversions). An event's rows stay in one request; the plan's
/// `rows` name the event once per row (see [`merge_row_outcomes`]).
pub fn plan_indexed_multi_rows<'a, R>(
    plan: &mut RequestPlan,
    events: impl IntoIterator<Item = (usize, &'a CanonicalEvent)>,
    max_rows: usize,
    mut row: impl FnMut(&CanonicalEvent) -> Result<Vec<R>, BuildError>,
    mut request: impl FnMut(Vec<R>) -> Result<OutboundRequest, BuildError>,
) -> Result<(), BuildError> {
    let max_rows = max_rows.max(1);
    let mut rows: Vec<usize> = Vec::new();
    let mut built: Vec<R> = Vec::new();
    for (index, event) in events {
        match row(event) {
            Ok(event_rows) if event_rows.is_empty() => {}
            Ok(event_rows) => {
                if !built.is_empty() && built.len() + event_rows.len() > max_rows {
                    plan.requests.push(PlannedRequest {
                        request: request(std::mem::take(&mut built))?,
                        rows: std::mem::take(&mut rows),
                    });
                }
                rows.extend(std::iter::repeat_n(index, event_rows.len()));
                built.extend(event_rows);
            }
            Err(err) => plan.refused.push((index, err)),
        }
    }
    if !built.is_empty() {
        plan.requests.push(PlannedRequest {
            request: request(built)?,
            rows,
        });
    }
    Ok(())
}

/// One outcome per event from one per request row: an event with several rows gets the
/// most serious of theirs (permanent, then retry, then delivered), in first-row order.
pub fn merge_row_outcomes(rows: &[usize], outcomes: Vec<Outcome>) -> Vec<(usize, Outcome)> {
    fn rank(outcome: &Outcome) -> u8 {
        match outcome {
            Outcome::AlreadyDelivered => 0,
            Outcome::Delivered => 1,
            Outcome::Retry { .. } => 2,
            Outcome::Permanent { .. } => 3,
        }
    }
    let mut merged: Vec<(usize, Outcome)> = Vec::new();
    for (&index, outcome) in rows.iter().zip(outcomes) {
        match merged.iter_mut().find(|(i, _)| *i == index) {
            Some((_, kept)) if rank(&outcome) > rank(kept) => *kept = outcome,
            Some(_) => {}
            None => merged.push((index, outcome)),
        }
    }
    merged
}

/// The distinct events of a request, in first-row order.
pub fn distinct_rows(rows: &[usize]) -> Vec<usize> {
    let mut distinct: Vec<usize> = Vec::with_capacity(rows.len());
    for &i in rows {
        if !distinct.contains(&i) {
            distinct.push(i);
        }
    }
    distinct
}

/// Outcomes per row of one answer. A permanent refusal of a multi-row request that the
/// platform does not break down by row is not trusted for every row: those rows are
/// re-sent alone (`None`), so one bad event cannot sink the others. Every destination
/// sends its own dedup key, so a row the platform did accept is not counted twice.
pub fn row_outcomes(
    spec: &DestinationSpec,
    status: u16,
    retry_after: Option<&str>,
    body: &str,
    rows: usize,
) -> Option<Vec<Outcome>> {
    if let Some(per_row) = spec.classify_rows.and_then(|f| f(status, body, rows)) {
        if per_row.is_empty() && rows > 1 {
            return None;
        }
        if per_row.len() == rows {
            return Some(per_row);
        }
    }
    match (spec.classify)(status, retry_after, body) {
        Outcome::Permanent { .. } if rows > 1 => None,
        outcome => Some(vec![outcome; rows]),
    }
}

/// For destinations that take every forwardable event.
pub fn accepts_all(_event: &CanonicalEvent, _merchant: &MerchantConfig) -> bool {
    true
}

#[cfg(test)]
mod row_tests {
    use super::*;

    #[test]
    fn every_endpoint_is_overridable_only_by_its_documented_operator_variable() {
        let readme = include_str!("../../README.md");
        for spec in REGISTRY {
            assert!(
                !spec.endpoints.is_empty(),
                "{} calls no base URL",
                spec.name
            );
            for endpoint in spec.endpoints {
                assert!(endpoint.default.starts_with("https://"), "{endpoint:?}");
                assert!(
                    readme.contains(&format!("`{}`", endpoint.override_var)),
                    "{} is not in the README's configuration",
                    endpoint.override_var
                );
                let overridden = Endpoints::from_vars(|name| {
                    (name == endpoint.override_var).then(|| "http://127.0.0.1:1/".to_string())
                });
                assert_eq!(overridden.url(endpoint), "http://127.0.0.1:1");
                assert_eq!(Endpoints::default().url(endpoint), endpoint.default);
            }
        }
    }

    #[test]
    fn an_event_with_several_rows_gets_its_most_serious_outcome() {
        let retry = Outcome::Retry {
            after_seconds: None,
            reason: "r".into(),
        };
        let merged = merge_row_outcomes(
            &[4, 4, 7, 4],
            vec![
                Outcome::Delivered,
                retry.clone(),
                Outcome::AlreadyDelivered,
                Outcome::AlreadyDelivered,
            ],
        );
        assert_eq!(merged, vec![(4, retry), (7, Outcome::AlreadyDelivered)]);
        assert_eq!(distinct_rows(&[4, 4, 7, 4]), vec![4, 7]);
    }
}

pub const REGISTRY: &[DestinationSpec] = &[
    meta::SPEC,
    klaviyo::SPEC,
    tiktok::SPEC,
    ga4::SPEC,
    linkedin::SPEC,
    google_ads::SPEC,
    webhook::SPEC,
];

/// A builder, as registered in [`DestinationSpec::build`].
pub type BuildFn =
    fn(&[CanonicalEvent], &MerchantConfig, &BuildContext) -> Result<RequestPlan, BuildError>;

/// The request for a single event, or why it is refused: how a row isolated from its
/// batch is re-sent.
pub fn build_single(
    build: BuildFn,
    event: &CanonicalEvent,
    merchant: &MerchantConfig,
    context: &BuildContext,
) -> Result<OutboundRequest, BuildError> {
    let plan = build(std::slice::from_ref(event), merchant, context)?;
    first_request(plan, BuildError::NotForwardable(event.name.as_str()))
}

/// A plan's first refusal, else its first request, else `when_empty`.
fn first_request(plan: RequestPlan, when_empty: BuildError) -> Result<OutboundRequest, BuildError> {
    if let Some((_, err)) = plan.refused.into_iter().next() {
        return Err(err);
    }
    plan.requests
        .into_iter()
        .next()
        .map(|planned| planned.request)
        .ok_or(when_empty)
}

/// Unit-test shorthand: the first request of a plan, or the first refusal.
#[cfg(test)]
pub(crate) fn build_for_test(
    build: BuildFn,
    events: &[CanonicalEvent],
    merchant: &MerchantConfig,
    endpoints: &Endpoints,
    now: i64,
) -> Result<OutboundRequest, BuildError> {
    let operator = OperatorCredentials::default()
        .with(google_ads::DEVELOPER_TOKEN, "DEVTOKEN123")
        .with(
            google_ads::OAUTH_CLIENT_ID,
            "client.apps.googleusercontent.com",
        )
        .with(google_ads::OAUTH_CLIENT_SECRET, "client-secret");
    let context = BuildContext {
        endpoints,
        operator: &operator,
        now_s: now,
        access_token: Some("ya29.test-access-token"),
    };
    first_request(
        build(events, merchant, &context)?,
        BuildError::NotConfigured("test"),
    )
}

pub fn find(name: &str) -> Option<&'static DestinationSpec> {
    REGISTRY.iter().find(|spec| spec.name == name)
}

/// Why a destination config pinning a sunset API version is refused, if it is.
pub fn refuse_sunset(name: &str, config: &serde_json::Value, now_s: i64) -> Result<(), String> {
    match find(name).and_then(|spec| spec.versioning) {
        Some(versioning) => crate::api_versions::refuse_sunset(&versioning, config, now_s),
        None => Ok(()),
    }
}

/// The warning a merchant sees for a pinned version near or past its sunset.
pub fn version_warning(
    name: &str,
    config: &serde_json::Value,
    now_s: i64,
) -> Option<serde_json::Value> {
    let versioning = find(name)?.versioning?;
    crate::api_versions::warning(name, &versioning, config, now_s)
}

/// The shared reading of a failed answer: 429 and 5xx (and whatever the platform itself
/// marks `transient`) are retried, honouring `Retry-After`; anything else refuses this
/// request for good.
pub fn failure_outcome(
    status: u16,
    retry_after: Option<&str>,
    reason: String,
    transient: bool,
) -> Outcome {
    if transient || status == 429 || status >= 500 {
        Outcome::Retry {
            after_seconds: parse_retry_after(retry_after),
            reason,
        }
    } else {
        Outcome::Permanent { reason }
    }
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

/// The customer's RFM segment and predicted LTV, where the merchant carries them on
/// events (`rfm_segment`, `ltv_model` as a number), into a payload's property map.
pub fn insert_rfm_properties(
    event: &CanonicalEvent,
    properties: &mut serde_json::Map<String, serde_json::Value>,
) {
    if let Some(segment) = event.property("rfm_segment") {
        properties.insert("rfm_segment".into(), serde_json::json!(segment));
    }
    if let Some(ltv) = event
        .property("ltv_model")
        .and_then(|v| v.parse::<f64>().ok())
    {
        properties.insert("ltv_model".into(), serde_json::json!(ltv));
    }
}

pub fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}
