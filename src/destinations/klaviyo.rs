//! Klaviyo Events API: `POST /api/events` (JSON:API), one event per request.
//!
//! <https://developers.klaviyo.com/en/reference/create_event>
//! Auth `Authorization: Klaviyo-API-Key <private key>` with a pinned `revision` header.
//! The metric is the canonical name unless the merchant renames it; the profile is found
//! by email and/or external id (sent in clear: Klaviyo does not take hashes). `unique_id`
//! is our event id, so a resend after a timeout is deduplicated by Klaviyo. Klaviyo has
//! no correction primitive: cancellations and refunds carry their negative value in the
//! properties, never as the revenue `value`.

use super::{
    plan_rows, truncate, BuildContext, BuildError, DestinationSpec, MatchKey, NameOverrides,
    OutboundRequest, Outcome, RequestPlan,
};
use crate::config::MerchantConfig;
use crate::event::CanonicalEvent;
use crate::hashing::{normalize_email, normalize_phone_digits};
use crate::identity::Identifier;
use crate::time::utc_rfc3339;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub const NAME: &str = "klaviyo";
pub const DEFAULT_BASE_URL: &str = "https://a.klaviyo.com";
/// The Klaviyo API.
pub const API: super::EndpointSpec = super::EndpointSpec {
    default: DEFAULT_BASE_URL,
    override_var: "KLAVIYO_API_BASE_URL",
};
/// Klaviyo revisions are supported about two years; pinned, overridable per merchant.
pub const DEFAULT_REVISION: &str = "2026-04-15";

/// Klaviyo settings: a private API key with the events:write scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KlaviyoConfig {
    pub private_api_key: String,
    #[serde(default = "default_revision")]
    pub revision: String,
    /// Canonical event → metric name, for merchants whose flows use other names.
    #[serde(default, skip_serializing_if = "NameOverrides::is_empty")]
    pub metric_names: NameOverrides,
}

fn default_revision() -> String {
    DEFAULT_REVISION.to_string()
}

pub const SPEC: DestinationSpec = DestinationSpec {
    name: NAME,
    endpoints: &[API],
    build,
    classify,
    match_keys: &[
        MatchKey {
            identifier: Identifier::Email,
            weight: 60,
        },
        MatchKey {
            identifier: Identifier::CustomerId,
            weight: 30,
        },
        MatchKey {
            identifier: Identifier::Phone,
            weight: 10,
        },
    ],
    secret_fields: &["private_api_key"],
    validate_config: crate::config::check_config::<KlaviyoConfig>,
    accepts: super::accepts_all,
    versioning: Some(crate::api_versions::Versioning {
        config_field: "revision",
        default: Some(DEFAULT_REVISION),
        rule: crate::api_versions::Rule::DatedTwoYears,
    }),
    ..DestinationSpec::DEFAULT
};

fn build(
    events: &[CanonicalEvent],
    merchant: &MerchantConfig,
    context: &BuildContext,
) -> Result<RequestPlan, BuildError> {
    let config: KlaviyoConfig = merchant.destination_config(NAME)?;
    let url = format!("{}/api/events", context.endpoints.url(&API));
    // Create Event takes one event. (The bulk endpoint is an asynchronous job without
    // per-event results, which would hide a refused event.)
    plan_rows(
        events,
        1,
        |event| create_event_body(event, merchant, &config),
        |bodies| {
            Ok(OutboundRequest {
                method: "POST",
                log_url: url.clone(),
                url: url.clone(),
                headers: vec![
                    (
                        "authorization".into(),
                        format!("Klaviyo-API-Key {}", config.private_api_key),
                    ),
                    ("revision".into(), config.revision.clone()),
                    ("content-type".into(), "application/vnd.api+json".into()),
                    ("accept".into(), "application/vnd.api+json".into()),
                ],
                body: bodies.into_iter().next().unwrap_or_default().to_string(),
            })
        },
    )
}

/// The JSON:API document for one event.
pub fn create_event_body(
    event: &CanonicalEvent,
    merchant: &MerchantConfig,
    config: &KlaviyoConfig,
) -> Result<Value, BuildError> {
    if !event.name.is_forwardable() {
        return Err(BuildError::NotForwardable(event.name.as_str()));
    }
    let mut profile = Map::new();
    if let Some(email) = event.customer.email.as_deref().and_then(normalize_email) {
        profile.insert("email".into(), json!(email));
    }
    if let Some(id) = event.customer.id() {
        profile.insert("external_id".into(), json!(id));
    }
    if profile.is_empty() {
        return Err(BuildError::NoIdentity);
    }
    // Klaviyo wants E.164; only numbers that already carry their country code qualify.
    if let Some(digits) = event
        .touchpoints
        .phone
        .as_deref()
        .filter(|p| p.trim().starts_with('+'))
        .and_then(normalize_phone_digits)
    {
        profile.insert("phone_number".into(), json!(format!("+{digits}")));
    }
    for (field, value) in [
        ("first_name", &event.customer.first_name),
        ("last_name", &event.customer.last_name),
    ] {
        if let Some(value) = value {
            profile.insert(field.into(), json!(value));
        }
    }
    if let Some(country) = &event.customer.country {
        profile.insert("location".into(), json!({ "country": country }));
    }
    // The RFM segment and predicted LTV are facts about the person: profile properties.
    let mut profile_properties = Map::new();
    super::insert_rfm_properties(event, &mut profile_properties);
    if !profile_properties.is_empty() {
        profile.insert("properties".into(), Value::Object(profile_properties));
    }

    let mut properties = Map::new();
    properties.insert("canonical_event".into(), json!(event.name.as_str()));
    properties.insert("source".into(), json!(event.source));
    for (key, amount) in [
        ("mrr", event.values.mrr),
        ("arr", event.values.arr),
        ("mrr_delta", event.values.mrr_delta),
        ("contract_value", event.values.contract_value),
        ("net_value", event.values.net_value),
        ("gross_value", event.values.gross_value),
    ] {
        if let Some(amount) = amount {
            properties.insert(key.into(), json!(amount.as_f64()));
        }
    }
    let details = &event.subscription;
    for (key, value) in [
        ("subscription_id", details.subscription_id.as_deref()),
        ("plan_id", details.plan_id.as_deref()),
        ("status", details.status.as_deref()),
        ("cancel_reason", details.cancel_reason.as_deref()),
    ] {
        if let Some(value) = value {
            properties.insert(key.into(), json!(value));
        }
    }
    for (key, at) in [
        ("trial_end_at", details.trial_end_at),
        ("effective_end_at", details.effective_end_at),
    ] {
        if let Some(at) = at {
            properties.insert(key.into(), json!(utc_rfc3339(at)));
        }
    }
    for (key, value) in &event.properties {
        if key == "rfm_segment" || key == "ltv_model" {
            continue;
        }
        properties
            .entry(key.clone())
            .or_insert_with(|| json!(value));
    }

    let mut attributes = Map::new();
    let metric = config
        .metric_names
        .get(event.name)
        .unwrap_or(event.name.as_str());
    attributes.insert(
        "metric".into(),
        json!({ "data": { "type": "metric", "attributes": { "name": metric } } }),
    );
    attributes.insert(
        "profile".into(),
        json!({ "data": { "type": "profile", "attributes": profile } }),
    );
    if let Some(value) = SPEC.primary_value(event, merchant) {
        if event.name.is_correction() {
            properties.insert("correction_value".into(), json!(value.as_f64()));
        } else {
            attributes.insert("value".into(), json!(value.as_f64()));
        }
    }
    if let Some(currency) = &event.values.currency {
        let currency = currency.to_ascii_uppercase();
        properties.insert("currency".into(), json!(currency));
        if attributes.contains_key("value") {
            attributes.insert("value_currency".into(), json!(currency));
        }
    }
    attributes.insert("properties".into(), Value::Object(properties));
    attributes.insert("time".into(), json!(utc_rfc3339(event.occurred_at)));
    attributes.insert("unique_id".into(), json!(event.event_id));
    Ok(json!({ "data": { "type": "event", "attributes": attributes } }))
}

/// 202 accepted; 429 and 5xx later (`Retry-After` honoured); other 4xx are permanent,
/// with Klaviyo's JSON:API error detail as the reason.
fn classify(status: u16, retry_after: Option<&str>, body: &str) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Delivered;
    }
    let detail = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            let first = v.get("errors")?.get(0)?.clone();
            let code = first
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("-")
                .to_string();
            let text = first
                .get("detail")
                .and_then(Value::as_str)
                .unwrap_or("no detail")
                .to_string();
            Some(format!("{code}: {text}"))
        })
        .unwrap_or_else(|| "no error body".to_string());
    let reason = format!("HTTP {status}, klaviyo {}", truncate(&detail, 300));
    // Klaviyo documents 408 as worth retrying too.
    super::failure_outcome(status, retry_after, reason, status == 408)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destinations::{build_for_test, Endpoints};
    use crate::event::tests_support::build as build_event;
    use crate::event::{Customer, EventName};

    fn merchant(config: Value) -> MerchantConfig {
        MerchantConfig {
            merchant_id: "m_1".into(),
            ..MerchantConfig::default()
        }
        .with_destination(NAME, config)
    }

    fn event(name: EventName) -> CanonicalEvent {
        build_event(name)
            .source_event_type("customer.subscription.updated")
            .email(" Jane.Doe@Example.com ")
            .plan("price_pro_monthly")
            .trial_end_at(1_767_225_600)
            .arr(58800, "usd")
            .done()
    }

    #[test]
    fn the_rfm_segment_and_ltv_are_profile_properties_when_carried() {
        let merchant = merchant(json!({ "private_api_key": "pk_live_abcdef123456" }));
        let mut event = event(EventName::TrialConverted);
        event
            .properties
            .insert("rfm_segment".into(), "at_risk".into());
        event.properties.insert("ltv_model".into(), "120.50".into());
        let req = build_for_test(build, &[event], &merchant, &Endpoints::default(), 0).unwrap();
        let body: Value = serde_json::from_str(&req.body).unwrap();
        let attributes = &body["data"]["attributes"];
        let profile = &attributes["profile"]["data"]["attributes"]["properties"];
        assert_eq!(profile["rfm_segment"], "at_risk");
        assert_eq!(profile["ltv_model"], 120.5);
        assert!(attributes["properties"].get("rfm_segment").is_none());
    }

    #[test]
    fn golden_create_event_request() {
        let merchant = merchant(json!({ "private_api_key": "pk_live_abcdef123456" }));
        let endpoints = Endpoints::default();
        let req = build_for_test(
            build,
            &[event(EventName::TrialConverted)],
            &merchant,
            &endpoints,
            0,
        )
        .unwrap();
        assert_eq!(req.url, "https://a.klaviyo.com/api/events");
        assert_eq!(req.log_url, req.url);
        assert!(req.headers.contains(&(
            "authorization".into(),
            "Klaviyo-API-Key pk_live_abcdef123456".into()
        )));
        assert!(req
            .headers
            .contains(&("revision".into(), "2026-04-15".into())));
        let body: Value = serde_json::from_str(&req.body).unwrap();
        assert_eq!(
            body,
            json!({ "data": { "type": "event", "attributes": {
                "metric": { "data": { "type": "metric", "attributes": { "name": "trial_converted" } } },
                "profile": { "data": { "type": "profile", "attributes": {
                    "email": "jane.doe@example.com", "external_id": "cus_ABC" } } },
                "properties": {
                    "canonical_event": "trial_converted", "source": "stripe",
                    "mrr": 49.0, "arr": 588.0, "currency": "USD",
                    "subscription_id": "sub_1", "plan_id": "price_pro_monthly",
                    "trial_end_at": "2026-01-01T00:00:00Z"
                },
                "value": 49.0,
                "value_currency": "USD",
                "time": "2026-01-01T00:00:00Z",
                "unique_id": "tl_0123456789abcdef0123456789abcdef"
            } } })
        );
    }

    #[test]
    fn corrections_keep_revenue_out_and_metric_names_follow_overrides() {
        let merchant = merchant(json!({
            "private_api_key": "k",
            "metric_names": { "subscription_canceled": "Subscription Cancelled (win-back)" }
        }));
        let config: KlaviyoConfig = merchant.destination_config(NAME).unwrap();
        let body = create_event_body(&event(EventName::SubscriptionCancelled), &merchant, &config)
            .unwrap();
        let attributes = &body["data"]["attributes"];
        assert_eq!(
            attributes["metric"]["data"]["attributes"]["name"],
            "Subscription Cancelled (win-back)"
        );
        assert!(attributes.get("value").is_none());
        assert!(attributes.get("value_currency").is_none());
        assert_eq!(attributes["properties"]["correction_value"], -49.0);
    }

    #[test]
    fn needs_an_identity_and_classifies_answers() {
        let merchant = merchant(json!({ "private_api_key": "k" }));
        let config: KlaviyoConfig = merchant.destination_config(NAME).unwrap();
        let mut anonymous = event(EventName::SubscriptionRenewed);
        anonymous.customer = Customer::default();
        assert_eq!(
            create_event_body(&anonymous, &merchant, &config),
            Err(BuildError::NoIdentity)
        );
        assert_eq!(classify(202, None, ""), Outcome::Delivered);
        assert!(matches!(
            classify(429, Some("7"), "{}"),
            Outcome::Retry {
                after_seconds: Some(7),
                ..
            }
        ));
        assert!(matches!(classify(503, None, ""), Outcome::Retry { .. }));
        let refused = classify(
            400,
            None,
            r#"{"errors":[{"id":"x","status":400,"code":"invalid","title":"Invalid input.","detail":"One of attributes, relationships or id must be included","source":{"pointer":"/data"}}]}"#,
        );
        match refused {
            Outcome::Permanent { reason } => {
                assert!(
                    reason.contains("HTTP 400") && reason.contains("One of attributes"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(
            (SPEC.validate_config)(&json!({ "private_api_key": "k", "revison": "x" })).is_err()
        );
    }
}
