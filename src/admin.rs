//! The operator and merchant APIs' rules, free of I/O: request validation, plan and
//! region checks, secret masking, and the list queries behind every log view.

use crate::config::{MerchantStatus, Plan, Region, ValuePolicy};
use crate::enrich::LifecycleSettings;
use crate::plans::{Feature, PlanError};
use crate::secrets::mask_fields;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ApiError {
    #[error("a valid operator token is required")]
    Unauthorized,
    #[error("a valid merchant API key is required")]
    InvalidApiKey,
    #[error("this API key belongs to another merchant")]
    ForeignMerchant,
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error(transparent)]
    PlanRequired(#[from] PlanError),
    #[error("{name} settings are invalid: {reason}")]
    InvalidConfig { name: String, reason: String },
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::InvalidRequest(_) => 400,
            ApiError::Unauthorized | ApiError::InvalidApiKey => 401,
            ApiError::ForeignMerchant | ApiError::PlanRequired(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::Conflict { .. } => 409,
            ApiError::InvalidConfig { .. } => 422,
            ApiError::Unavailable(_) => 503,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::InvalidApiKey => "invalid_api_key",
            ApiError::ForeignMerchant => "forbidden",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict { code, .. } => code,
            ApiError::PlanRequired(_) => "plan_required",
            ApiError::InvalidConfig { .. } => "invalid_config",
            ApiError::Unavailable(_) => "temporarily_unavailable",
        }
    }

    pub fn body(&self) -> Value {
        json!({ "error": { "code": self.code(), "message": self.to_string() } })
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest(message.into())
}

/// Lower-case letters, digits, `_` and `-`, 3–64 characters: safe in URLs, logs and
/// Durable Object names.
pub fn validate_merchant_id(id: &str) -> Result<(), ApiError> {
    let ok = (3..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "merchant_id must be 3-64 characters of a-z, 0-9, _ and -, starting with a letter or digit",
        ))
    }
}

/// Parses a JSON body into `T`, naming the problem without echoing values.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    crate::input::from_slice(body).map_err(|e| invalid(format!("invalid JSON body: {e}")))
}

/// A settings body parsed and checked by its own rules: 400 if it is not the shape,
/// 422 `invalid_config` naming `name` if a value is refused.
pub fn parse_settings<T: serde::de::DeserializeOwned>(
    body: &[u8],
    name: &str,
    validated: impl FnOnce(T) -> Result<T, String>,
) -> Result<T, ApiError> {
    validated(parse_body(body)?).map_err(|reason| ApiError::InvalidConfig {
        name: name.into(),
        reason,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMerchant {
    pub merchant_id: String,
    #[serde(default)]
    pub region: Region,
    #[serde(default)]
    pub plan: Plan,
    #[serde(default)]
    pub value_policy: ValuePolicy,
    #[serde(default)]
    pub lifecycle: Option<LifecycleSettings>,
    /// Start in dry-run mode (deliveries recorded, not sent).
    #[serde(default)]
    pub dry_run: bool,
}

impl NewMerchant {
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_merchant_id(&self.merchant_id)?;
        if self.region != Region::Us {
            self.plan.require(Feature::ResidencyChoice)?;
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerchantPatch {
    pub plan: Option<Plan>,
    pub status: Option<MerchantStatus>,
    pub value_policy: Option<ValuePolicy>,
    pub lifecycle: Option<LifecycleSettings>,
    pub dry_run: Option<bool>,
    /// Accepted only if unchanged: the region is fixed at creation.
    pub region: Option<Region>,
}

impl MerchantPatch {
    /// Checks the change against the merchant's fixed region.
    pub fn validate(&self, region: Region) -> Result<(), ApiError> {
        if self.region.is_some_and(|r| r != region) {
            return Err(ApiError::Conflict {
                code: "region_immutable",
                message: "a merchant's region is fixed at creation; create a new merchant in the other region".into(),
            });
        }
        if let Some(plan) = self.plan {
            if region != Region::Us && !plan.includes(Feature::ResidencyChoice) {
                return Err(ApiError::Conflict {
                    code: "plan_conflict",
                    message: format!(
                        "merchant data lives in region {}, which requires plan {}; a downgrade would have to move it",
                        region_name(region),
                        Feature::ResidencyChoice.minimum_plan().display_name()
                    ),
                });
            }
        }
        Ok(())
    }
}

pub fn region_name(region: Region) -> &'static str {
    match region {
        Region::Us => "us",
        Region::Eu => "eu",
    }
}

/// Which dead letters a bulk replay puts back on the queue: not yet replayed, of one
/// destination and time range (`dead_lettered_at`, unix ms), oldest first, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayFilter {
    #[serde(default)]
    pub destination: Option<String>,
    #[serde(default)]
    pub since: Option<i64>,
    #[serde(default)]
    pub until: Option<i64>,
    #[serde(default = "default_replay_limit")]
    pub limit: u32,
}

fn default_replay_limit() -> u32 {
    100
}

pub const MAX_REPLAY: u32 = 500;

impl ReplayFilter {
    pub fn validate(&self) -> Result<(), ApiError> {
        if !(1..=MAX_REPLAY).contains(&self.limit) {
            return Err(invalid(format!("limit must be 1-{MAX_REPLAY}")));
        }
        if let Some(destination) = &self.destination {
            integration(IntegrationKind::Destination, destination)?;
        }
        if let (Some(since), Some(until)) = (self.since, self.until) {
            if since >= until {
                return Err(invalid("since must be before until"));
            }
        }
        Ok(())
    }
}

/// Which kind of integration a config belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrationKind {
    Source,
    Destination,
}

impl IntegrationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IntegrationKind::Source => "source",
            IntegrationKind::Destination => "destination",
        }
    }
}

/// What the registry says about one integration.
#[derive(Debug, Clone, Copy)]
pub struct Integration {
    pub kind: IntegrationKind,
    pub name: &'static str,
    pub secret_fields: &'static [&'static str],
    validate_config: fn(&Value) -> Result<(), String>,
    required_feature: Option<Feature>,
}

pub fn integration(kind: IntegrationKind, name: &str) -> Result<Integration, ApiError> {
    let found = match kind {
        IntegrationKind::Source => crate::sources::find(name).map(|s| Integration {
            kind,
            name: s.name,
            secret_fields: s.secret_fields,
            validate_config: s.validate_config,
            required_feature: s.required_feature,
        }),
        IntegrationKind::Destination => crate::destinations::find(name).map(|d| Integration {
            kind,
            name: d.name,
            secret_fields: d.secret_fields,
            validate_config: d.validate_config,
            required_feature: d.required_feature,
        }),
    };
    found.ok_or_else(|| ApiError::NotFound(format!("{} {name}", kind.as_str())))
}

impl Integration {
    /// A config the module can run with, on a plan that includes it, pinning no API
    /// version past its sunset.
    pub fn check(&self, plan: Plan, config: &Value, now_s: i64) -> Result<(), ApiError> {
        if let Some(feature) = self.required_feature {
            plan.require(feature)?;
        }
        if !config.is_object() {
            return Err(ApiError::InvalidConfig {
                name: self.name.into(),
                reason: "settings must be a JSON object".into(),
            });
        }
        (self.validate_config)(config).map_err(|reason| ApiError::InvalidConfig {
            name: self.name.into(),
            reason,
        })?;
        if self.kind == IntegrationKind::Destination {
            crate::destinations::refuse_sunset(self.name, config, now_s).map_err(|reason| {
                ApiError::InvalidConfig {
                    name: self.name.into(),
                    reason,
                }
            })?;
        }
        Ok(())
    }

    /// The config as the API shows it: secrets reduced to their last 4 characters.
    pub fn masked(&self, config: &Value) -> Value {
        let mut shown = config.clone();
        mask_fields(&mut shown, self.secret_fields);
        shown
    }
}

/// A log view an operator (or the merchant itself) can page through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub name: &'static str,
    table: &'static str,
    columns: &'static str,
    /// Sort column (descending) and a unique tie-breaker, for keyset pagination.
    time_column: &'static str,
    key_column: &'static str,
    /// Query parameters accepted as equality filters, with their column.
    filters: &'static [(&'static str, &'static str)],
}

pub const VIEWS: &[View] = &[
    View {
        name: "events",
        table: "canonical_events",
        columns: "event_id, name, source, source_event_id, source_event_type, occurred_at_s, payload, received_at",
        time_column: "received_at",
        key_column: "event_id",
        filters: &[("name", "name"), ("source", "source")],
    },
    View {
        name: "deliveries",
        table: "deliveries",
        columns: "job_id, event_id, destination, status, attempts, last_error, match_score, match_keys, created_at, updated_at",
        time_column: "updated_at",
        key_column: "job_id",
        filters: &[("destination", "destination"), ("status", "status"), ("event_id", "event_id")],
    },
    View {
        name: "delivery-attempts",
        table: "delivery_attempts",
        columns: "job_id, event_id, destination, attempt, outcome, http_status, detail, request_url, duration_ms, attempted_at",
        time_column: "attempted_at",
        key_column: "id",
        filters: &[("destination", "destination"), ("outcome", "outcome"), ("job_id", "job_id")],
    },
    View {
        name: "dead-letters",
        table: "dead_letters",
        columns: "job_id, event_id, destination, attempts, reason, last_error, dead_lettered_at, replayed_at",
        time_column: "dead_lettered_at",
        key_column: "job_id",
        filters: &[("destination", "destination"), ("reason", "reason")],
    },
    View {
        name: "ignored-events",
        table: "ignored_events",
        columns: "source, source_event_id, source_event_type, reason, received_at",
        time_column: "received_at",
        key_column: "source_event_id",
        filters: &[("source", "source")],
    },
];

pub fn view(name: &str) -> Result<&'static View, ApiError> {
    VIEWS
        .iter()
        .find(|v| v.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("view {name}")))
}

/// SQL value of a list query parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SqlParam {
    Text(String),
    Int(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListQuery {
    pub sql: String,
    pub params: Vec<SqlParam>,
    pub limit: usize,
}

#[derive(Serialize, Deserialize)]
struct Cursor {
    t: i64,
    k: Value,
}

pub const DEFAULT_PAGE: usize = 50;
/// Every view accepts fewer distinct parameters than this.
pub const MAX_QUERY_PARAMS: usize = 12;
pub const MAX_PAGE: usize = 500;

impl View {
    /// One page, newest first. `query` holds the request's query pairs: `limit`,
    /// `cursor` (from the previous page), `since`/`until` (unix ms) and the view's filters.
    pub fn query(
        &self,
        merchant_id: &str,
        query: &[(String, String)],
    ) -> Result<ListQuery, ApiError> {
        let mut sql = format!(
            "SELECT {}, {} AS _t, {} AS _k FROM {} WHERE merchant_id = ?1",
            self.columns, self.time_column, self.key_column, self.table
        );
        let mut params = vec![SqlParam::Text(merchant_id.to_string())];
        let mut limit = DEFAULT_PAGE;
        // Each parameter once: 120 repeats of a filter built a statement too large for
        // D1 (503); a repeated equality filter could never match two values anyway.
        if query.len() > MAX_QUERY_PARAMS {
            return Err(invalid(format!(
                "at most {MAX_QUERY_PARAMS} query parameters are accepted"
            )));
        }
        for (i, (key, _)) in query.iter().enumerate() {
            if query[..i].iter().any(|(earlier, _)| earlier == key) {
                return Err(invalid(format!(
                    "query parameter {key} is given more than once"
                )));
            }
        }
        for (key, value) in query {
            let mut bind = |sql: &mut String, clause: &str, param: SqlParam| {
                params.push(param);
                sql.push_str(&clause.replace('?', &format!("?{}", params.len())));
            };
            match key.as_str() {
                "limit" => {
                    limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| invalid(format!("limit must be 1-{MAX_PAGE}")))?;
                }
                "since" | "until" => {
                    let ms = value
                        .parse::<i64>()
                        .map_err(|_| invalid(format!("{key} must be unix milliseconds")))?;
                    let op = if key == "since" { ">=" } else { "<" };
                    bind(
                        &mut sql,
                        &format!(" AND {} {op} ?", self.time_column),
                        SqlParam::Int(ms),
                    );
                }
                "cursor" => {
                    let cursor: Cursor = URL_SAFE_NO_PAD
                        .decode(value)
                        .ok()
                        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                        .ok_or_else(|| invalid("cursor is not one this API issued"))?;
                    let key_param = match cursor.k {
                        Value::String(s) => SqlParam::Text(s),
                        Value::Number(n) => SqlParam::Int(n.as_i64().unwrap_or_default()),
                        _ => return Err(invalid("cursor is not one this API issued")),
                    };
                    params.push(SqlParam::Int(cursor.t));
                    let t = params.len();
                    params.push(key_param);
                    let k = params.len();
                    sql.push_str(&format!(
                        " AND ({tc} < ?{t} OR ({tc} = ?{t} AND {kc} < ?{k}))",
                        tc = self.time_column,
                        kc = self.key_column
                    ));
                }
                other => match self.filters.iter().find(|(name, _)| *name == other) {
                    Some((_, column)) => bind(
                        &mut sql,
                        &format!(" AND {column} = ?"),
                        SqlParam::Text(value.clone()),
                    ),
                    None => {
                        let allowed: Vec<&str> = self.filters.iter().map(|(n, _)| *n).collect();
                        return Err(invalid(format!(
                            "unknown query parameter {other:?}; {} accepts limit, cursor, since, until{}{}",
                            self.name,
                            if allowed.is_empty() { "" } else { ", " },
                            allowed.join(", ")
                        )));
                    }
                },
            }
        }
        // One extra row says whether another page exists.
        sql.push_str(&format!(
            " ORDER BY {tc} DESC, {kc} DESC LIMIT {}",
            limit + 1,
            tc = self.time_column,
            kc = self.key_column
        ));
        Ok(ListQuery { sql, params, limit })
    }
}

/// Turns `limit + 1` rows into the page body: items (without the paging columns) and
/// the cursor of the next page, if any.
pub fn page(mut rows: Vec<Value>, limit: usize) -> Value {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = more
        .then(|| rows.last())
        .flatten()
        .and_then(|last| {
            let cursor = Cursor {
                t: last.get("_t")?.as_i64()?,
                k: last.get("_k")?.clone(),
            };
            serde_json::to_vec(&cursor).ok()
        })
        .map(|bytes| URL_SAFE_NO_PAD.encode(bytes));
    for row in &mut rows {
        if let Value::Object(map) = row {
            map.remove("_t");
            map.remove("_k");
            // Stored JSON columns read back as JSON, not as strings of JSON.
            for column in ["payload", "detail"] {
                if let Some(Value::String(text)) = map.get(column) {
                    if let Ok(parsed) = serde_json::from_str::<Value>(text) {
                        if parsed.is_object() {
                            map.insert(column.to_string(), parsed);
                        }
                    }
                }
            }
        }
    }
    json!({ "items": rows, "next_cursor": next_cursor })
}

#[cfg(test)]
mod input_tests {
    use super::*;

    /// Every Google request of a merchant pinned to a sunset version fails.
    #[test]
    fn a_destination_pinned_to_a_sunset_version_is_refused() {
        let google = integration(IntegrationKind::Destination, "google_ads").unwrap();
        let config = json!({
            "customer_id": "1234567890",
            "refresh_token": "1//refresh",
            "api_version": "v22",
            "conversion_actions": { "subscription_started": "987654321" }
        });
        let err = google
            .check(Plan::Scale, &config, 1_796_040_000)
            .unwrap_err();
        assert_eq!(err.status(), 422);
        assert!(err.to_string().contains("sunset on 2026-10-07"), "{err}");
        let mut current = config.clone();
        current["api_version"] = json!("v26");
        google.check(Plan::Scale, &current, 1_796_040_000).unwrap();
    }

    /// 120 repeated filters gave 503 (D1: "Expression tree is too large").
    #[test]
    fn repeated_or_too_many_query_parameters_are_a_400() {
        let deliveries = view("deliveries").unwrap();
        let repeated: Vec<(String, String)> = (0..120)
            .map(|i| ("destination".to_string(), format!("d{i}")))
            .collect();
        let err = deliveries.query("m1", &repeated).unwrap_err();
        assert_eq!(err.status(), 400);
        let twice = [
            ("status".to_string(), "pending".to_string()),
            ("status".to_string(), "delivered".to_string()),
        ];
        assert_eq!(deliveries.query("m1", &twice).unwrap_err().status(), 400);
        let once = [
            ("status".to_string(), "pending".to_string()),
            ("destination".to_string(), "meta".to_string()),
        ];
        assert!(deliveries.query("m1", &once).is_ok());
    }

    /// A 422 for a wrongly shaped Stripe config echoed the secret it was given.
    #[test]
    fn config_and_body_errors_never_echo_the_value() {
        let stripe = integration(IntegrationKind::Source, "stripe").unwrap();
        let err = stripe
            .check(
                Plan::Scale,
                &json!({ "endpoint_secrets": "whsec_live_leaky_secret" }),
                1_796_040_000,
            )
            .unwrap_err();
        assert_eq!(err.status(), 422);
        assert!(!err.to_string().contains("whsec_live"), "{err}");
        assert!(err.to_string().contains("endpoint_secrets"), "{err}");
        let err = parse_body::<NewMerchant>(br#"{"merchant_id": 5, "plan": "jane@example.com"}"#)
            .unwrap_err();
        assert!(!err.to_string().contains("jane@"), "{err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn merchant_ids_are_url_and_log_safe() {
        for ok in ["acme", "m_1", "acme-eu-2"] {
            assert!(validate_merchant_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ab",
            "Acme",
            "_acme",
            "acme/../b",
            "a b c",
            &"x".repeat(65),
        ] {
            assert!(validate_merchant_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn eu_residency_needs_pro_and_the_region_never_moves() {
        let starter_eu: NewMerchant =
            serde_json::from_value(json!({"merchant_id": "acme", "region": "eu"})).unwrap();
        let err = starter_eu.validate().unwrap_err();
        assert_eq!((err.status(), err.code()), (403, "plan_required"));
        assert!(err.to_string().contains("requires plan Pro"));
        let pro_eu: NewMerchant =
            serde_json::from_value(json!({"merchant_id": "acme", "region": "eu", "plan": "pro"}))
                .unwrap();
        assert!(pro_eu.validate().is_ok());

        let move_region = MerchantPatch {
            region: Some(Region::Us),
            ..MerchantPatch::default()
        };
        assert_eq!(
            move_region.validate(Region::Eu).unwrap_err().code(),
            "region_immutable"
        );
        let downgrade = MerchantPatch {
            plan: Some(Plan::Scale),
            ..MerchantPatch::default()
        };
        assert_eq!(
            downgrade.validate(Region::Eu).unwrap_err().code(),
            "plan_conflict"
        );
        assert!(downgrade.validate(Region::Us).is_ok());
        assert!(
            serde_json::from_value::<NewMerchant>(json!({"merchant_id": "a", "secret": 1}))
                .is_err()
        );
    }

    #[test]
    fn integration_configs_are_validated_gated_and_masked() {
        let stripe = integration(IntegrationKind::Source, "stripe").unwrap();
        let config = json!({"endpoint_secrets": ["whsec_abcdefghijklmnop"]});
        assert_eq!(
            stripe.check(Plan::Starter, &config, 0).unwrap_err().code(),
            "plan_required"
        );
        assert!(stripe.check(Plan::Scale, &config, 0).is_ok());
        let err = stripe
            .check(Plan::Scale, &json!({"endpoint_secret": "whsec_x"}), 0)
            .unwrap_err();
        assert_eq!((err.status(), err.code()), (422, "invalid_config"));
        assert!(!err.to_string().contains("whsec_x"));
        assert_eq!(
            stripe.masked(&config),
            json!({"endpoint_secrets": ["****mnop"]})
        );
        let meta = integration(IntegrationKind::Destination, "meta").unwrap();
        let shown =
            meta.masked(&json!({"pixel_id": "123", "access_token": "EAAB-long-token-9z9z"}));
        assert_eq!(shown["access_token"], "****9z9z");
        assert_eq!(shown["pixel_id"], "123");
        assert_eq!(
            integration(IntegrationKind::Source, "shopify")
                .unwrap_err()
                .code(),
            "not_found"
        );
    }

    #[test]
    fn replay_filters_are_bounded() {
        let ok: ReplayFilter =
            serde_json::from_value(json!({"destination": "meta", "since": 1, "until": 2})).unwrap();
        assert!(ok.validate().is_ok());
        assert_eq!(ok.limit, 100);
        for bad in [
            json!({"limit": 0}),
            json!({"limit": 501}),
            json!({"destination": "myspace"}),
            json!({"since": 5, "until": 5}),
        ] {
            let filter: ReplayFilter = serde_json::from_value(bad.clone()).unwrap();
            assert!(filter.validate().is_err(), "{bad}");
        }
        assert!(serde_json::from_value::<ReplayFilter>(json!({"merchant_id": "x"})).is_err());
    }

    #[test]
    fn list_queries_bind_every_input_and_page_by_keyset() {
        let q = view("deliveries")
            .unwrap()
            .query(
                "m1",
                &pairs(&[
                    ("status", "dead_lettered"),
                    ("since", "1000"),
                    ("limit", "2"),
                ]),
            )
            .unwrap();
        assert_eq!(
            q.sql,
            "SELECT job_id, event_id, destination, status, attempts, last_error, match_score, match_keys, created_at, updated_at, \
             updated_at AS _t, job_id AS _k FROM deliveries WHERE merchant_id = ?1 AND status = ?2 \
             AND updated_at >= ?3 ORDER BY updated_at DESC, job_id DESC LIMIT 3"
        );
        assert_eq!(
            q.params,
            vec![
                SqlParam::Text("m1".into()),
                SqlParam::Text("dead_lettered".into()),
                SqlParam::Int(1000)
            ]
        );
        let rows = vec![
            json!({"job_id": "c", "_t": 30, "_k": "c"}),
            json!({"job_id": "b", "_t": 20, "_k": "b"}),
            json!({"job_id": "a", "_t": 20, "_k": "a"}),
        ];
        let first = page(rows, 2);
        assert_eq!(first["items"], json!([{"job_id": "c"}, {"job_id": "b"}]));
        let cursor = first["next_cursor"].as_str().unwrap().to_string();
        let next = view("deliveries")
            .unwrap()
            .query("m1", &pairs(&[("cursor", &cursor)]))
            .unwrap();
        assert!(next
            .sql
            .contains("AND (updated_at < ?2 OR (updated_at = ?2 AND job_id < ?3))"));
        assert_eq!(
            next.params[1..],
            [SqlParam::Int(20), SqlParam::Text("b".into())]
        );
        assert_eq!(
            page(vec![json!({"_t": 1, "_k": "z"})], 2)["next_cursor"],
            Value::Null
        );

        let view = view("deliveries").unwrap();
        for bad in [
            ("merchant_id", "m2"),
            ("limit", "0"),
            ("cursor", "xx"),
            ("since", "yesterday"),
        ] {
            assert_eq!(
                view.query("m1", &pairs(&[bad])).unwrap_err().code(),
                "invalid_request",
                "{bad:?}"
            );
        }
    }
}
