//! HubSpot webhooks: signature v3 (v1/v2 where the merchant allows them) and deal /
//! contact stage changes.
//!
//! - v3: `X-HubSpot-Signature-v3` = base64 HMAC-SHA256(client secret, method + URI + body +
//!   `X-HubSpot-Request-Timestamp`), the timestamp in milliseconds and at most 5 minutes
//!   old. The URI is the full URL HubSpot called, with `%3A %2F %3F %40 %21 %24 %27 %28 %29
//!   %2A %2C %3B` decoded. <https://developers.hubspot.com/docs/api/webhooks/validating-requests>
//! - v1: hex SHA-256(secret + body); v2: hex SHA-256(secret + method + URI + body). Both
//!   have no timestamp, so they are refused unless listed in `accepted_signature_versions`.
//!
//! Two payloads are understood:
//! - Webhooks API: a JSON array of up to 100 events (`eventId`, `subscriptionType`,
//!   `objectId`, `propertyName`, `propertyValue`, `occurredAt` ms). Ids only: no email
//!   and no amount, so these stage changes are recorded but never become conversions
//!   (nothing to match or value them with). Each event is deduplicated on its `eventId`.
//! - A workflow "Send a webhook" action: one CRM object with its `properties` (values
//!   plain or `{ "value": … }`), which does carry email, amount and owner. It has no event
//!   id: its dedup key is the SHA-256 of the body, which HubSpot's retries repeat exactly.

use super::crm::{stage_output, StageChange, StageRule};
use super::signature::{usable, verify_prefixed_sha256};
use super::{malformed, non_empty, parse_json, Notice, SourceOutput, SourceSpec, WebhookRequest};
use crate::config::MerchantConfig;
use crate::error::{IngestError, VerifyError};
use crate::event::EventName;
use crate::hashing::constant_time_eq;
use crate::money::Amount;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use std::collections::BTreeMap;

pub const NAME: &str = "hubspot";
pub const V3_HEADER: &str = "X-HubSpot-Signature-v3";
pub const TIMESTAMP_HEADER: &str = "X-HubSpot-Request-Timestamp";
pub const LEGACY_HEADER: &str = "X-HubSpot-Signature";
pub const VERSION_HEADER: &str = "X-HubSpot-Signature-Version";
pub const MAX_AGE_MS: i64 = 5 * 60 * 1000;

pub const SPEC: SourceSpec = SourceSpec {
    name: NAME,
    ingest,
    secret_fields: &["client_secrets"],
    validate_config: crate::config::check_config::<Config>,
    conversion_siblings: None,
    ..SourceSpec::DEFAULT
};

/// HubSpot settings: the app's client secret(s), signature versions, stage rules and
/// the CRM properties that hold context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub client_secrets: Vec<String>,
    #[serde(default = "default_versions")]
    pub accepted_signature_versions: Vec<String>,
    /// `property:value` → conversion, for merchants whose conversions come from the CRM.
    #[serde(default = "default_stage_events")]
    pub stage_events: BTreeMap<String, StageRule>,
    #[serde(default)]
    pub context_properties: ContextProperties,
}

/// Which HubSpot properties hold each piece of context (internal names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContextProperties {
    pub email: String,
    pub billing_customer_id: String,
    pub owner: String,
    pub segment: String,
    pub forecast_category: String,
    pub source_campaign: String,
    pub amount: String,
    pub currency: String,
}

impl Default for ContextProperties {
    fn default() -> Self {
        ContextProperties {
            email: "email".into(),
            billing_customer_id: "billing_customer_id".into(),
            owner: "hubspot_owner_id".into(),
            segment: "customer_segment".into(),
            forecast_category: "hs_manual_forecast_category".into(),
            source_campaign: "hs_analytics_source_data_1".into(),
            amount: "amount".into(),
            currency: "deal_currency_code".into(),
        }
    }
}

fn default_versions() -> Vec<String> {
    vec!["v3".into()]
}

/// The seed's HubSpot rows: deal → Customer (Closed Won) starts, deal → Lost or
/// Churned cancels, a contact back to customer from churned reactivates.
pub fn default_stage_events() -> BTreeMap<String, StageRule> {
    BTreeMap::from([
        (
            "dealstage:closedwon".into(),
            StageRule::new(EventName::SubscriptionStarted),
        ),
        (
            "dealstage:closedlost".into(),
            StageRule::new(EventName::SubscriptionCancelled),
        ),
        (
            "dealstage:churned".into(),
            StageRule::new(EventName::SubscriptionCancelled),
        ),
        (
            "lifecyclestage:customer".into(),
            StageRule {
                event: EventName::SubscriptionReactivated,
                only_from: vec!["churned".into()],
            },
        ),
    ])
}

fn ingest(
    merchant: &MerchantConfig,
    request: &WebhookRequest,
    now: i64,
) -> Result<Vec<SourceOutput>, IngestError> {
    let config: Config = merchant.source_config(NAME)?;
    verify(request, &config, now)?;
    map_request(merchant, &config, request.body)
}

const DECODED: [(&str, &str); 12] = [
    ("%3A", ":"),
    ("%2F", "/"),
    ("%3F", "?"),
    ("%40", "@"),
    ("%21", "!"),
    ("%24", "$"),
    ("%27", "'"),
    ("%28", "("),
    ("%29", ")"),
    ("%2A", "*"),
    ("%2C", ","),
    ("%3B", ";"),
];

/// The URI as HubSpot hashes it for v3.
pub fn v3_uri(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let candidate = rest.get(at..at + 3).unwrap_or("");
        match DECODED
            .iter()
            .find(|(code, _)| code.eq_ignore_ascii_case(candidate))
        {
            Some((_, plain)) => {
                out.push_str(plain);
                rest = &rest[at + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn v3_signature(secret: &str, method: &str, url: &str, body: &[u8], timestamp: &str) -> Vec<u8> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(method.as_bytes());
    mac.update(v3_uri(url).as_bytes());
    mac.update(body);
    mac.update(timestamp.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The v3 header for a request, as HubSpot builds it; used by tests and fixtures.
pub fn sign_v3(secret: &str, method: &str, url: &str, body: &[u8], timestamp_ms: i64) -> String {
    base64::engine::general_purpose::STANDARD.encode(v3_signature(
        secret,
        method,
        url,
        body,
        &timestamp_ms.to_string(),
    ))
}

fn verify(request: &WebhookRequest, config: &Config, now: i64) -> Result<(), VerifyError> {
    let accepts = |v: &str| config.accepted_signature_versions.iter().any(|a| a == v);
    if let Some(presented) = request.headers.get(V3_HEADER) {
        let malformed = |detail| VerifyError::MalformedHeader {
            header: V3_HEADER,
            detail,
        };
        let timestamp =
            request
                .headers
                .get(TIMESTAMP_HEADER)
                .ok_or(VerifyError::MissingHeader {
                    header: TIMESTAMP_HEADER,
                })?;
        let signed_at_ms: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| malformed("request timestamp is not epoch milliseconds"))?;
        let presented = base64::engine::general_purpose::STANDARD
            .decode(presented.trim())
            .map_err(|_| malformed("not base64"))?;
        let matched = usable(&config.client_secrets)?.iter().any(|secret| {
            let expected = v3_signature(
                secret,
                request.method,
                request.url,
                request.body,
                timestamp.trim(),
            );
            constant_time_eq(&presented, &expected)
        });
        if !matched {
            return Err(VerifyError::Mismatch);
        }
        let skew_ms = now.saturating_mul(1000).saturating_sub(signed_at_ms);
        if skew_ms.unsigned_abs() > MAX_AGE_MS as u64 {
            return Err(VerifyError::StaleTimestamp {
                skew_seconds: skew_ms / 1000,
                tolerance_seconds: MAX_AGE_MS / 1000,
            });
        }
        return Ok(());
    }
    let version = request.headers.get(VERSION_HEADER).unwrap_or("v1");
    if request.headers.get(LEGACY_HEADER).is_none() || !accepts(version) {
        return Err(VerifyError::MissingHeader { header: V3_HEADER });
    }
    let presented = request.headers.get(LEGACY_HEADER);
    match version {
        "v1" => verify_prefixed_sha256(
            LEGACY_HEADER,
            presented,
            &[request.body],
            &config.client_secrets,
        ),
        "v2" => verify_prefixed_sha256(
            LEGACY_HEADER,
            presented,
            &[
                request.method.as_bytes(),
                request.url.as_bytes(),
                request.body,
            ],
            &config.client_secrets,
        ),
        _ => Err(VerifyError::MalformedHeader {
            header: VERSION_HEADER,
            detail: "unknown signature version",
        }),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiEvent {
    event_id: Value,
    subscription_type: String,
    object_id: Value,
    occurred_at: i64,
    property_name: Option<String>,
    property_value: Option<String>,
    /// New developer platform: `object.propertyChange` with the object type id.
    object_type_id: Option<String>,
}

fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// Maps a verified request: one output per Webhooks API event, or one for a workflow body.
pub fn map_request(
    merchant: &MerchantConfig,
    config: &Config,
    body: &[u8],
) -> Result<Vec<SourceOutput>, IngestError> {
    let payload: Value = parse_json(body)?;
    match payload {
        Value::Array(events) => events
            .iter()
            .map(|raw| {
                let event: ApiEvent = super::parse(raw)?;
                Ok(api_event(merchant, config, &event))
            })
            .collect(),
        Value::Object(_) => Ok(vec![workflow(merchant, config, &payload, body)?]),
        _ => Err(malformed("expected an array of events or one CRM object")),
    }
}

fn api_event(merchant: &MerchantConfig, config: &Config, event: &ApiEvent) -> SourceOutput {
    let event_id = id_text(&event.event_id).unwrap_or_default();
    let object_id = id_text(&event.object_id).unwrap_or_default();
    let object = match (
        event.subscription_type.split('.').next(),
        event.object_type_id.as_deref(),
    ) {
        (Some("deal"), _) | (Some("object"), Some("0-3")) => "deal",
        (Some("contact"), _) | (Some("object"), Some("0-1")) => "contact",
        (Some(other), _) => other,
        (None, _) => "object",
    };
    let notice = Notice {
        merchant_id: &merchant.merchant_id,
        source: NAME,
        event_id,
        event_type: event.subscription_type.clone(),
        occurred_at: event.occurred_at / 1000,
        livemode: true,
    };
    let record = format!("{object}:{object_id}");
    let stage_property = matches!(
        event.property_name.as_deref(),
        Some("dealstage" | "lifecyclestage")
    );
    let (true, Some(property), Some(stage)) = (
        event.subscription_type.ends_with(".propertyChange") && stage_property,
        event.property_name.as_deref(),
        non_empty(event.property_value.as_deref()),
    ) else {
        return notice.ignored(
            record,
            format!(
                "hubspot {} {} carries no stage change",
                event.subscription_type,
                event.property_name.as_deref().unwrap_or("")
            ),
        );
    };
    let mut context = BTreeMap::new();
    if object == "deal" {
        context.insert("deal_id".into(), object_id.clone());
    }
    stage_output(
        &notice,
        merchant,
        &config.stage_events,
        StageChange {
            record,
            stage_key: format!("{property}:{stage}"),
            stage,
            context,
            not_a_conversion: Some(
                "the Webhooks API sends ids only; send conversions from a workflow webhook",
            ),
            ..StageChange::default()
        },
    )
}

/// A property value, plain or in the legacy `{ "value": … }` wrapper.
fn property(properties: &Value, name: &str) -> Option<String> {
    let raw = properties.get(name)?;
    let value = raw.get("value").unwrap_or(raw);
    match value {
        Value::String(s) => non_empty(Some(s)),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn workflow(
    merchant: &MerchantConfig,
    config: &Config,
    payload: &Value,
    body: &[u8],
) -> Result<SourceOutput, IngestError> {
    let object_id = payload
        .get("objectId")
        .or_else(|| payload.get("hs_object_id"))
        .and_then(id_text)
        .ok_or_else(|| malformed("workflow webhook without objectId"))?;
    let empty = Value::Object(Default::default());
    let properties = payload.get("properties").unwrap_or(&empty);
    let names = &config.context_properties;
    let (object, stage_property) = if property(properties, "dealstage").is_some() {
        ("deal", "dealstage")
    } else {
        ("contact", "lifecyclestage")
    };
    let occurred_at = payload
        .get("occurredAt")
        .and_then(Value::as_i64)
        .or_else(|| property(properties, "hs_lastmodifieddate").and_then(|v| v.parse::<i64>().ok()))
        .map(|ms| ms / 1000)
        .ok_or_else(|| malformed("workflow webhook without occurredAt or hs_lastmodifieddate"))?;
    let notice = Notice {
        merchant_id: &merchant.merchant_id,
        source: NAME,
        event_id: format!("workflow:{}", &sha256_hex_bytes(body)[..32]),
        event_type: format!("workflow.{object}"),
        occurred_at,
        livemode: true,
    };
    let record = format!("{object}:{object_id}");
    let Some(stage) = property(properties, stage_property) else {
        return Ok(notice.ignored(record, "workflow webhook without a stage property"));
    };
    let currency = property(properties, &names.currency).map(|c| c.to_ascii_uppercase());
    let amount = match (property(properties, &names.amount), &currency) {
        (Some(amount), Some(currency)) => Some(
            Amount::from_major_str(&amount, currency)
                .ok_or_else(|| malformed("amount is not a decimal"))?,
        ),
        _ => None,
    };
    let mut context = BTreeMap::new();
    for (key, name) in [
        ("owner", &names.owner),
        ("segment", &names.segment),
        ("forecast_category", &names.forecast_category),
        ("source_campaign", &names.source_campaign),
    ] {
        if let Some(value) = property(properties, name) {
            context.insert(key.to_string(), value);
        }
    }
    if object == "deal" {
        context.insert("deal_id".into(), object_id.clone());
    }
    Ok(stage_output(
        &notice,
        merchant,
        &config.stage_events,
        StageChange {
            record,
            stage_key: format!("{stage_property}:{stage}"),
            stage,
            email: property(properties, &names.email),
            billing_customer_id: property(properties, &names.billing_customer_id),
            amount,
            currency,
            context,
            not_a_conversion: None,
        },
    ))
}

fn sha256_hex_bytes(body: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(Sha256::digest(body))
}
