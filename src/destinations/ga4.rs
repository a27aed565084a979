//! GA4 Measurement Protocol: `POST /mp/collect?measurement_id=…&api_secret=…`.
//!
//! <https://developers.google.com/analytics/devguides/collection/protocol/ga4/sending-events>
//! GA4 answers 2xx even for payloads it drops, so every request is validated here
//! against the documented limits before it is sent (names ≤ 40 characters, ≤ 25 params,
//! values ≤ 100 characters, no reserved prefixes, ≤ 72 h backdating). EU merchants use
//! Google's EU collection host. Purchases carry `transaction_id` (GA4 deduplicates
//! purchases on it); refunds use GA4's `refund` event.

use super::{
    encode_query_value, plan_rows, truncate, BuildContext, BuildError, DestinationSpec, MatchKey,
    NameOverrides, OutboundRequest, Outcome, RequestPlan,
};
use crate::config::{MerchantConfig, Region};
use crate::event::{CanonicalEvent, EventName};
use crate::hashing::{hash_email, hash_email_google, hash_phone_e164, sha256_hex};
use crate::identity::Identifier;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub const NAME: &str = "ga4";
pub const DEFAULT_BASE_URL: &str = "https://www.google-analytics.com";
/// Google's EU collection endpoint, used for EU merchants.
pub const DEFAULT_EU_BASE_URL: &str = "https://region1.google-analytics.com";
/// The collection host.
pub const COLLECT: super::EndpointSpec = super::EndpointSpec {
    default: DEFAULT_BASE_URL,
    override_var: "GA4_API_BASE_URL",
};
/// The EU collection host, for EU merchants (the same override replaces both).
pub const COLLECT_EU: super::EndpointSpec = super::EndpointSpec {
    default: DEFAULT_EU_BASE_URL,
    override_var: "GA4_API_BASE_URL",
};
/// GA4 accepts `timestamp_micros` up to 72 hours in the past.
pub const MAX_EVENT_AGE_SECONDS: i64 = 72 * 3600;
const MAX_PARAMS: usize = 25;
const MAX_NAME_CHARS: usize = 40;
const MAX_PARAM_VALUE_CHARS: usize = 100;
const MAX_BODY_BYTES: usize = 130 * 1024;
const RESERVED_PREFIXES: &[&str] = &["google_", "ga_", "firebase_", "_", "gtag."];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ga4Config {
    /// `G-XXXXXXX` of the web data stream.
    pub measurement_id: String,
    /// Measurement Protocol API secret of that stream.
    pub api_secret: String,
    #[serde(default, skip_serializing_if = "NameOverrides::is_empty")]
    pub event_names: NameOverrides,
}

pub const SPEC: DestinationSpec = DestinationSpec {
    name: NAME,
    endpoints: &[COLLECT, COLLECT_EU],
    build,
    classify,
    match_keys: &[
        MatchKey {
            identifier: Identifier::GaClientId,
            weight: 50,
        },
        MatchKey {
            identifier: Identifier::CustomerId,
            weight: 25,
        },
        MatchKey {
            identifier: Identifier::Email,
            weight: 15,
        },
        MatchKey {
            identifier: Identifier::Phone,
            weight: 10,
        },
    ],
    secret_fields: &["api_secret"],
    validate_config: crate::config::check_config::<Ga4Config>,
    accepts: super::accepts_all,
    ..DestinationSpec::DEFAULT
};

/// Default mapping (shared product table): GA4's recommended events where they fit.
pub fn event_name(name: EventName) -> &'static str {
    match name {
        EventName::TrialConverted
        | EventName::SubscriptionStarted
        | EventName::SubscriptionRenewed
        | EventName::SubscriptionUpgraded
        | EventName::SubscriptionReactivated => "purchase",
        EventName::Refund => "refund",
        EventName::Signup => "sign_up",
        other => other.as_str(),
    }
}

fn build(
    events: &[CanonicalEvent],
    merchant: &MerchantConfig,
    context: &BuildContext,
) -> Result<RequestPlan, BuildError> {
    let config: Ga4Config = merchant.destination_config(NAME)?;
    let base = match merchant.region {
        Region::Eu => context.endpoints.url(&COLLECT_EU),
        Region::Us => context.endpoints.url(&COLLECT),
    };
    let log_url = format!(
        "{base}/mp/collect?measurement_id={}",
        encode_query_value(&config.measurement_id)
    );
    // A Measurement Protocol request carries one user's events, and billing events in
    // one queue batch rarely share a user: one event per request.
    plan_rows(
        events,
        1,
        |event| {
            let body = collect_body(event, merchant, &config, context.now_s)?;
            validate(&body).map_err(|reason| BuildError::Invalid {
                destination: NAME,
                reason,
            })?;
            Ok(body)
        },
        |bodies| {
            let body = bodies.into_iter().next().unwrap_or_default();
            Ok(OutboundRequest {
                method: "POST",
                url: format!(
                    "{log_url}&api_secret={}",
                    encode_query_value(&config.api_secret)
                ),
                log_url: log_url.clone(),
                headers: vec![("content-type".into(), "application/json".into())],
                body: body.to_string(),
            })
        },
    )
}

/// A GA-style client id (`<digits>.<digits>`) derived from the customer, stable across
/// events, for customers without a captured `_ga` cookie.
fn fallback_client_id(merchant_id: &str, identity: &str) -> String {
    let digest = sha256_hex(&format!("{merchant_id}\u{1f}{identity}"));
    let first = u32::from_str_radix(&digest[..8], 16).unwrap_or(0);
    let second = u32::from_str_radix(&digest[8..16], 16).unwrap_or(0);
    format!("{first}.{second}")
}

/// The Measurement Protocol body for one event.
pub fn collect_body(
    event: &CanonicalEvent,
    merchant: &MerchantConfig,
    config: &Ga4Config,
    now: i64,
) -> Result<Value, BuildError> {
    if !event.name.is_forwardable() {
        return Err(BuildError::NotForwardable(event.name.as_str()));
    }
    let age = now - event.occurred_at;
    if age > MAX_EVENT_AGE_SECONDS {
        return Err(BuildError::TooOld {
            destination: NAME,
            age_seconds: age,
            limit_seconds: MAX_EVENT_AGE_SECONDS,
        });
    }
    let customer_id = event.customer.id();
    let hashed_email = event.customer.email.as_deref().and_then(hash_email);
    let client_id = match (
        event.touchpoints.get(Identifier::GaClientId),
        customer_id,
        &hashed_email,
    ) {
        (Some(cookie), _, _) if !cookie.is_empty() => cookie.to_string(),
        (_, Some(id), _) => fallback_client_id(&merchant.merchant_id, id),
        (_, None, Some(email)) => fallback_client_id(&merchant.merchant_id, email),
        _ => return Err(BuildError::NoIdentity),
    };

    let name = config
        .event_names
        .get(event.name)
        .unwrap_or(event_name(event.name));
    let mut params = Map::new();
    let transaction_id = event
        .property("invoice_id")
        .or(event.property("charge_id"))
        .unwrap_or(&event.event_id);
    if matches!(name, "purchase" | "refund") {
        params.insert("transaction_id".into(), json!(transaction_id));
    }
    if let Some(value) = SPEC.primary_value(event, merchant) {
        // GA4's `refund` is the correction itself: its value is the amount refunded.
        let amount = if name == "refund" {
            value.as_f64().abs()
        } else {
            value.as_f64()
        };
        params.insert("value".into(), json!(amount));
        if let Some(currency) = &event.values.currency {
            params.insert("currency".into(), json!(currency.to_ascii_uppercase()));
        }
    }
    if let Some(plan_id) = &event.subscription.plan_id {
        if name == "purchase" {
            let price = params.get("value").cloned().unwrap_or(json!(0));
            params.insert(
                "items".into(),
                json!([{ "item_id": plan_id, "item_name": plan_id, "price": price, "quantity": 1 }]),
            );
        }
        params.insert("plan_id".into(), json!(plan_id));
    }
    params.insert("canonical_event".into(), json!(event.name.as_str()));
    if let Some(subscription_id) = &event.subscription.subscription_id {
        params.insert("subscription_id".into(), json!(subscription_id));
    }
    if let Some(milestone) = event.property("milestone") {
        params.insert("milestone".into(), json!(milestone));
    }
    // Measurement Protocol events show in reports only with an engagement time.
    params.insert("engagement_time_msec".into(), json!(1));
    for value in params.values_mut() {
        if let Value::String(text) = value {
            *text = truncate(text, MAX_PARAM_VALUE_CHARS);
        }
    }

    let mut body = json!({
        "client_id": client_id,
        "timestamp_micros": event.occurred_at.saturating_mul(1_000_000),
        "events": [{ "name": name, "params": params }],
    });
    if let Some(id) = customer_id {
        body["user_id"] = json!(truncate(id, 256));
    }
    // user_data follows Google's normalisation (gmail dots, E.164 phone).
    let mut user_data = Map::new();
    if let Some(email) = event.customer.email.as_deref().and_then(hash_email_google) {
        user_data.insert("sha256_email_address".into(), json!([email]));
    }
    if let Some(phone) = event.touchpoints.phone.as_deref().and_then(hash_phone_e164) {
        user_data.insert("sha256_phone_number".into(), json!([phone]));
    }
    if !user_data.is_empty() {
        body["user_data"] = Value::Object(user_data);
    }
    Ok(body)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Our own check of GA4's documented limits: GA4 itself would answer 2xx and drop it.
pub fn validate(body: &Value) -> Result<(), String> {
    if body.to_string().len() > MAX_BODY_BYTES {
        return Err("body is over 130 KB".into());
    }
    if body["client_id"].as_str().is_none_or(|c| c.is_empty()) {
        return Err("client_id is required".into());
    }
    let events = body["events"].as_array().ok_or("events must be an array")?;
    if events.is_empty() || events.len() > 25 {
        return Err("1-25 events per request".into());
    }
    for event in events {
        let name = event["name"].as_str().unwrap_or_default();
        if !valid_name(name) {
            return Err(format!(
                "event name {name:?} must be 1-40 letters, digits or _, start with a letter, and not use a reserved prefix"
            ));
        }
        let params = event["params"]
            .as_object()
            .ok_or("params must be an object")?;
        if params.len() > MAX_PARAMS {
            return Err(format!(
                "event {name} has {} params, the limit is 25",
                params.len()
            ));
        }
        for (key, value) in params {
            if !valid_name(key) {
                return Err(format!("param name {key:?} is not allowed"));
            }
            if value
                .as_str()
                .is_some_and(|v| v.chars().count() > MAX_PARAM_VALUE_CHARS)
            {
                return Err(format!("param {key} is longer than 100 characters"));
            }
        }
        if matches!(name, "purchase" | "refund") && !params.contains_key("transaction_id") {
            return Err(format!("{name} needs transaction_id"));
        }
    }
    Ok(())
}

/// GA4 answers 2xx for anything it received (validation happened before sending);
/// 429 and 5xx are retried, other statuses are permanent.
fn classify(status: u16, retry_after: Option<&str>, body: &str) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Delivered;
    }
    let reason = format!("HTTP {status}, ga4: {}", truncate(body.trim(), 300));
    super::failure_outcome(status, retry_after, reason, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destinations::{build_for_test, Endpoints};
    use crate::event::tests_support::build as build_event;
    use crate::event::Customer;

    const NOW: i64 = 1_767_225_600;

    fn merchant(region: Region) -> MerchantConfig {
        MerchantConfig {
            merchant_id: "m_1".into(),
            region,
            ..MerchantConfig::default()
        }
        .with_destination(
            NAME,
            json!({ "measurement_id": "G-ABC123", "api_secret": "mp-secret-0001" }),
        )
    }

    fn event(name: EventName) -> CanonicalEvent {
        build_event(name)
            .source_event_type("invoice.paid")
            .occurred_at(NOW - 3600)
            .plan("price_pro_monthly")
            .gross(2000, "usd")
            .done()
    }

    #[test]
    fn golden_purchase_request() {
        let req = build_for_test(
            build,
            &[event(EventName::SubscriptionRenewed)],
            &merchant(Region::Us),
            &Endpoints::default(),
            NOW,
        )
        .unwrap();
        assert_eq!(
            req.url,
            "https://www.google-analytics.com/mp/collect?measurement_id=G-ABC123&api_secret=mp-secret-0001"
        );
        assert!(!req.log_url.contains("mp-secret"));
        let body: Value = serde_json::from_str(&req.body).unwrap();
        let client_id = fallback_client_id("m_1", "cus_ABC");
        assert_eq!(
            body,
            json!({
                "client_id": client_id,
                "user_id": "cus_ABC",
                "timestamp_micros": (NOW - 3600) * 1_000_000,
                "user_data": { "sha256_email_address": ["86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d"] },
                "events": [{ "name": "purchase", "params": {
                    "transaction_id": "tl_0123456789abcdef0123456789abcdef",
                    "value": 49.0,
                    "currency": "USD",
                    "items": [{ "item_id": "price_pro_monthly", "item_name": "price_pro_monthly", "price": 49.0, "quantity": 1 }],
                    "plan_id": "price_pro_monthly",
                    "canonical_event": "subscription_renewed",
                    "subscription_id": "sub_1",
                    "engagement_time_msec": 1
                } }]
            })
        );
        assert!(client_id.contains('.'));
    }

    #[test]
    fn refunds_use_the_refund_event_and_eu_merchants_the_eu_host() {
        let mut refund = event(EventName::Refund);
        refund
            .properties
            .insert("charge_id".into(), "ch_3RtQ".into());
        let req = build_for_test(
            build,
            &[refund],
            &merchant(Region::Eu),
            &Endpoints::default(),
            NOW,
        )
        .unwrap();
        assert!(req
            .url
            .starts_with("https://region1.google-analytics.com/mp/collect?"));
        let body: Value = serde_json::from_str(&req.body).unwrap();
        let params = &body["events"][0]["params"];
        assert_eq!(body["events"][0]["name"], "refund");
        assert_eq!(params["transaction_id"], "ch_3RtQ");
        assert_eq!(params["value"], 20.0, "refund value is the amount refunded");
        let cancelled = collect_body(
            &event(EventName::SubscriptionCancelled),
            &merchant(Region::Us),
            &merchant(Region::Us).destination_config(NAME).unwrap(),
            NOW,
        )
        .unwrap();
        assert_eq!(cancelled["events"][0]["name"], "subscription_cancelled");
        assert_eq!(cancelled["events"][0]["params"]["value"], -49.0);
    }

    #[test]
    fn refuses_what_ga4_would_silently_drop() {
        let old = CanonicalEvent {
            occurred_at: NOW - 4 * 86_400,
            ..event(EventName::SubscriptionRenewed)
        };
        assert!(matches!(
            build_for_test(
                build,
                &[old],
                &merchant(Region::Us),
                &Endpoints::default(),
                NOW
            ),
            Err(BuildError::TooOld { .. })
        ));
        let reserved = merchant(Region::Us).with_destination(
            NAME,
            json!({ "measurement_id": "G-1", "api_secret": "s", "event_names": { "trial_started": "ga_trial" } }),
        );
        let err = build_for_test(
            build,
            &[event(EventName::TrialStarted)],
            &reserved,
            &Endpoints::default(),
            NOW,
        )
        .unwrap_err();
        assert!(err.to_string().contains("reserved prefix"), "{err}");
        let mut anonymous = event(EventName::SubscriptionRenewed);
        anonymous.customer = Customer::default();
        assert_eq!(
            build_for_test(
                build,
                &[anonymous],
                &merchant(Region::Us),
                &Endpoints::default(),
                NOW
            ),
            Err(BuildError::NoIdentity)
        );
        assert!(validate(
            &json!({ "client_id": "1.2", "events": [{ "name": "purchase", "params": {} }] })
        )
        .unwrap_err()
        .contains("transaction_id"));
        let many: Map<String, Value> = (0..26).map(|i| (format!("p{i}"), json!(i))).collect();
        assert!(validate(
            &json!({ "client_id": "1.2", "events": [{ "name": "x", "params": many }] })
        )
        .unwrap_err()
        .contains("limit is 25"));
        assert_eq!(classify(204, None, ""), Outcome::Delivered);
        assert!(matches!(classify(500, None, ""), Outcome::Retry { .. }));
        assert!(matches!(classify(403, None, ""), Outcome::Permanent { .. }));
    }
}
