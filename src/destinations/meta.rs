//! Meta Conversions API: `POST /{api-version}/{pixel_id}/events`.
//!
//! <https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/server-event/>
//! `event_time` is unix seconds; events older than 7 days make Meta reject the whole
//! request, so they are refused here per event. `em` and `external_id` are SHA-256 of
//! the trimmed, lower-cased value; `event_id` is our deterministic id, which Meta uses
//! with `event_name` to deduplicate against the browser pixel and our own retries.

use super::{
    encode_query_value, plan_rows, truncate, BuildContext, BuildError, DestinationSpec, MatchKey,
    NameOverrides, OutboundRequest, Outcome, RequestPlan,
};
use crate::api_versions::v;
use crate::config::MerchantConfig;
use crate::event::{CanonicalEvent, EventName};
use crate::hashing::{hash_country, hash_email, hash_identifier, hash_name, hash_phone_digits};
use crate::identity::Identifier;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub const NAME: &str = "meta";
pub const DEFAULT_BASE_URL: &str = "https://graph.facebook.com";
/// The Graph API.
pub const GRAPH: super::EndpointSpec = super::EndpointSpec {
    default: DEFAULT_BASE_URL,
    override_var: "META_API_BASE_URL",
};
pub const DEFAULT_API_VERSION: &str = "v25.0";
pub const MAX_EVENT_AGE_SECONDS: i64 = 7 * 24 * 3600;

/// Meta Conversions API settings for one pixel / dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaConfig {
    pub pixel_id: String,
    pub access_token: String,
    #[serde(default = "default_api_version")]
    pub api_version: String,
    #[serde(default = "default_action_source")]
    pub action_source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_event_code: Option<String>,
    /// The merchant's overrides of the default mapping: canonical name (or accepted
    /// alias) → Meta `event_name`. Checked when stored, so a typo is refused then.
    #[serde(default, skip_serializing_if = "NameOverrides::is_empty")]
    pub event_names: NameOverrides,
}

fn default_api_version() -> String {
    DEFAULT_API_VERSION.to_string()
}

fn default_action_source() -> String {
    "system_generated".to_string()
}

/// Graph API versions and their sunsets (developers.facebook.com/docs/graph-api/
/// changelog/versions).
pub const VERSIONS: &[crate::api_versions::KnownVersion] = &[
    v("v19.0", "2026-05-21", true),
    v("v20.0", "2026-09-24", true),
    v("v21.0", "2027-01-21", true),
    v("v22.0", "2027-05-20", true),
    v("v23.0", "2027-10-08", true),
    v("v24.0", "2028-02-18", true),
    v("v25.0", "2028-07-29", true),
    // Released 2026-07-29; Meta keeps a version at least two years.
    v("v26.0", "2028-07-29", false),
];

pub const SPEC: DestinationSpec = DestinationSpec {
    name: NAME,
    endpoints: &[GRAPH],
    build,
    classify,
    match_keys: &[
        MatchKey {
            identifier: Identifier::Email,
            weight: 30,
        },
        MatchKey {
            identifier: Identifier::Phone,
            weight: 15,
        },
        MatchKey {
            identifier: Identifier::Fbc,
            weight: 20,
        },
        MatchKey {
            identifier: Identifier::Fbp,
            weight: 10,
        },
        MatchKey {
            identifier: Identifier::CustomerId,
            weight: 10,
        },
        MatchKey {
            identifier: Identifier::ClientIp,
            weight: 8,
        },
        MatchKey {
            identifier: Identifier::UserAgent,
            weight: 7,
        },
    ],
    secret_fields: &["access_token"],
    validate_config: crate::config::check_config::<MetaConfig>,
    accepts: super::accepts_all,
    versioning: Some(crate::api_versions::Versioning {
        config_field: "api_version",
        default: Some(DEFAULT_API_VERSION),
        rule: crate::api_versions::Rule::Table(VERSIONS),
    }),
    pause_campaigns: Some(pause_campaigns),
    ..DestinationSpec::DEFAULT
};

/// Default mapping: standard events where Meta has one, custom names otherwise.
pub fn event_name(name: EventName) -> &'static str {
    match name {
        EventName::TrialStarted => "StartTrial",
        EventName::TrialConverted
        | EventName::SubscriptionStarted
        | EventName::SubscriptionReactivated => "Subscribe",
        EventName::SubscriptionRenewed | EventName::SubscriptionUpgraded => "Purchase",
        EventName::Signup => "CompleteRegistration",
        custom => custom.custom_event_name(),
    }
}

/// Meta takes up to 1,000 events per request.
pub const MAX_BATCH: usize = 1000;

fn build(
    events: &[CanonicalEvent],
    merchant: &MerchantConfig,
    context: &BuildContext,
) -> Result<RequestPlan, BuildError> {
    let config: MetaConfig = merchant.destination_config(NAME)?;
    let base = context.endpoints.url(&GRAPH);
    let path = format!(
        "{base}/{}/{}/events",
        encode_query_value(&config.api_version),
        encode_query_value(&config.pixel_id)
    );
    plan_rows(
        events,
        MAX_BATCH,
        |event| server_event(event, merchant, &config, context.now_s),
        |data| {
            let mut body = json!({ "data": data });
            if let Some(code) = config.test_event_code.as_deref().filter(|c| !c.is_empty()) {
                body["test_event_code"] = json!(code);
            }
            Ok(OutboundRequest {
                method: "POST",
                url: format!(
                    "{path}?access_token={}",
                    encode_query_value(&config.access_token)
                ),
                log_url: path.clone(),
                headers: vec![("content-type".into(), "application/json".into())],
                body: body.to_string(),
            })
        },
    )
}

/// One `data[]` entry.
pub fn server_event(
    event: &CanonicalEvent,
    merchant: &MerchantConfig,
    config: &MetaConfig,
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
    let mut user_data = Map::new();
    if let Some(em) = event.customer.email.as_deref().and_then(hash_email) {
        user_data.insert("em".into(), json!([em]));
    }
    if let Some(external) = event
        .customer
        .customer_id
        .as_deref()
        .and_then(hash_identifier)
    {
        user_data.insert("external_id".into(), json!([external]));
    }
    if let Some(ph) = event
        .touchpoints
        .phone
        .as_deref()
        .and_then(hash_phone_digits)
    {
        user_data.insert("ph".into(), json!([ph]));
    }
    for (field, hashed) in [
        (
            "fn",
            event.customer.first_name.as_deref().and_then(hash_name),
        ),
        (
            "ln",
            event.customer.last_name.as_deref().and_then(hash_name),
        ),
        (
            "country",
            event.customer.country.as_deref().and_then(hash_country),
        ),
    ] {
        if let Some(hashed) = hashed {
            user_data.insert(field.into(), json!([hashed]));
        }
    }
    if user_data.is_empty() {
        return Err(BuildError::NoIdentity);
    }
    // Click ids, browser id and device data go unhashed, as Meta's pixel sets them.
    for (field, value) in [
        ("fbc", &event.touchpoints.fbc),
        ("fbp", &event.touchpoints.fbp),
        ("client_ip_address", &event.touchpoints.client_ip),
        ("client_user_agent", &event.touchpoints.user_agent),
    ] {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            user_data.insert(field.into(), json!(value));
        }
    }

    let mut custom_data = Map::new();
    custom_data.insert("canonical_event".into(), json!(event.name.as_str()));
    if let Some(value) = SPEC.primary_value(event, merchant) {
        custom_data.insert("value".into(), json!(value.as_f64()));
    }
    if let Some(currency) = &event.values.currency {
        custom_data.insert("currency".into(), json!(currency.to_ascii_uppercase()));
    }
    for (key, amount) in [
        ("mrr", event.values.mrr),
        ("arr", event.values.arr),
        ("mrr_delta", event.values.mrr_delta),
        ("contract_value", event.values.contract_value),
    ] {
        if let Some(amount) = amount {
            custom_data.insert(key.into(), json!(amount.as_f64()));
        }
    }
    if let Some(subscription_id) = &event.subscription.subscription_id {
        custom_data.insert("subscription_id".into(), json!(subscription_id));
    }
    if let Some(plan_id) = &event.subscription.plan_id {
        custom_data.insert("plan_id".into(), json!(plan_id));
    }
    super::insert_rfm_properties(event, &mut custom_data);

    Ok(json!({
        "event_name": config.event_names.get(event.name).unwrap_or(event_name(event.name)),
        "event_time": event.occurred_at,
        "event_id": event.event_id,
        "action_source": config.action_source,
        "user_data": user_data,
        "custom_data": custom_data,
    }))
}

/// Graph API error codes that mean "try again later" (rate limits and transient faults).
const RETRYABLE_CODES: &[i64] = &[1, 2, 4, 17, 32, 341, 368, 613, 80003];

fn classify(status: u16, retry_after: Option<&str>, body: &str) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Delivered;
    }
    let error = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").cloned());
    let code = error
        .as_ref()
        .and_then(|e| e.get("code"))
        .and_then(Value::as_i64);
    let subcode = error
        .as_ref()
        .and_then(|e| e.get("error_subcode"))
        .and_then(Value::as_i64);
    let transient = error
        .as_ref()
        .and_then(|e| e.get("is_transient"))
        .and_then(Value::as_bool)
        == Some(true);
    let message = error
        .as_ref()
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("no error message");
    let reason = format!(
        "HTTP {status}, meta error {}{}: {}",
        code.map_or("-".to_string(), |c| c.to_string()),
        subcode.map_or(String::new(), |s| format!("/{s}")),
        truncate(message, 300)
    );
    let transient = transient || code.is_some_and(|c| RETRYABLE_CODES.contains(&c));
    super::failure_outcome(status, retry_after, reason, transient)
}

/// Marketing API: `POST /{version}/{campaign id}` with `status=PAUSED`, one request per
/// campaign (Graph batch requests would hide one campaign's failure in another's).
/// Only the first id is built here; the edge calls once per campaign.
fn pause_campaigns(
    merchant: &MerchantConfig,
    context: &BuildContext,
    campaign_ids: &[String],
) -> Result<OutboundRequest, BuildError> {
    let config: MetaConfig = merchant.destination_config(NAME)?;
    let Some(campaign) = campaign_ids.first() else {
        return Err(BuildError::Invalid {
            destination: NAME,
            reason: "no campaign to pause".into(),
        });
    };
    let url = format!(
        "{}/{}/{campaign}",
        context.endpoints.url(&GRAPH),
        config.api_version
    );
    Ok(OutboundRequest {
        method: "POST",
        log_url: url.clone(),
        url,
        headers: vec![
            (
                "authorization".into(),
                format!("Bearer {}", config.access_token),
            ),
            (
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            ),
        ],
        body: "status=PAUSED".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destinations::{build_for_test, Endpoints};
    use crate::event::tests_support::build as build_event;

    use crate::money::Amount;

    const NOW: i64 = 1_767_225_600;

    fn merchant() -> MerchantConfig {
        MerchantConfig {
            merchant_id: "m_1".into(),
            ..MerchantConfig::default()
        }
        .with_destination(
            "meta",
            json!({ "pixel_id": "123456789", "access_token": "EAAB/secret+token" }),
        )
    }

    fn config() -> MetaConfig {
        merchant().destination_config(NAME).unwrap()
    }

    fn trial() -> CanonicalEvent {
        build_event(EventName::TrialStarted)
            .id("tl_0123")
            .occurred_at(NOW - 60)
            .email(" Jane.Doe@Example.com")
            .plan("price_1")
            .currency("USD")
            .arr(58800, "usd")
            .livemode(false)
            .done()
    }

    #[test]
    fn the_rfm_segment_and_ltv_ride_in_custom_data_when_carried() {
        let mut event = trial();
        event
            .properties
            .insert("rfm_segment".into(), "champions".into());
        event.properties.insert("ltv_model".into(), "913.49".into());
        let req = build_for_test(build, &[event], &merchant(), &Endpoints::default(), NOW).unwrap();
        let body: serde_json::Value = serde_json::from_str(&req.body).unwrap();
        let custom = &body["data"][0]["custom_data"];
        assert_eq!(custom["rfm_segment"], "champions");
        assert_eq!(custom["ltv_model"], 913.49);
        let plain =
            build_for_test(build, &[trial()], &merchant(), &Endpoints::default(), NOW).unwrap();
        assert!(!plain.body.contains("rfm_segment"));
    }

    #[test]
    fn a_named_campaign_is_paused_through_the_marketing_api() {
        let context = BuildContext {
            endpoints: &Endpoints::default(),
            operator: &crate::destinations::OperatorCredentials::default(),
            now_s: NOW,
            access_token: None,
        };
        let req = pause_campaigns(&merchant(), &context, &["120210000000001".into()]).unwrap();
        assert_eq!(req.url, "https://graph.facebook.com/v25.0/120210000000001");
        assert_eq!(req.body, "status=PAUSED");
        assert!(req
            .headers
            .contains(&("authorization".into(), "Bearer EAAB/secret+token".into())));
    }

    #[test]
    fn builds_documented_request() {
        let req =
            build_for_test(build, &[trial()], &merchant(), &Endpoints::default(), NOW).unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(
            req.url,
            "https://graph.facebook.com/v25.0/123456789/events?access_token=EAAB%2Fsecret%2Btoken"
        );
        assert!(!req.log_url.contains("secret"));
        let body: Value = serde_json::from_str(&req.body).unwrap();
        let ev = &body["data"][0];
        assert_eq!(ev["event_name"], "StartTrial");
        assert_eq!(ev["event_time"], NOW - 60);
        assert_eq!(ev["event_id"], "tl_0123");
        assert_eq!(ev["action_source"], "system_generated");
        assert_eq!(
            ev["user_data"]["em"][0],
            "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d"
        );
        assert_eq!(
            ev["user_data"]["external_id"][0].as_str().unwrap().len(),
            64
        );
        assert_eq!(ev["custom_data"]["value"], 49.0);
        assert_eq!(ev["custom_data"]["currency"], "USD");
        assert_eq!(ev["custom_data"]["mrr"], 49.0);
        assert_eq!(ev["custom_data"]["arr"], 588.0);
        assert_eq!(ev["custom_data"]["canonical_event"], "trial_started");
        assert!(body.get("test_event_code").is_none());
    }

    #[test]
    fn merchant_overrides_rename_events_and_keep_the_canonical_name() {
        let merchant = merchant().with_destination(
            "meta",
            json!({
                "pixel_id": "123456789",
                "access_token": "t",
                "event_names": { "trial_started": "Lead", "paid_subscription": "Purchase" }
            }),
        );
        let config: MetaConfig = merchant.destination_config(NAME).unwrap();
        let out = server_event(&trial(), &merchant, &config, NOW).unwrap();
        assert_eq!(out["event_name"], "Lead");
        assert_eq!(out["custom_data"]["canonical_event"], "trial_started");
        let mut started = trial();
        started.name = EventName::SubscriptionStarted;
        let out = server_event(&started, &merchant, &config, NOW).unwrap();
        assert_eq!(out["event_name"], "Purchase");

        for bad in [json!({ "trail_started": "Lead" }), json!({ "refund": " " })] {
            let err = (SPEC.validate_config)(&json!({
                "pixel_id": "1", "access_token": "t", "event_names": bad
            }))
            .unwrap_err();
            assert!(
                err.contains("unknown canonical event") || err.contains("platform name"),
                "{err}"
            );
        }
    }

    #[test]
    fn cancellation_is_a_custom_event_with_negative_value() {
        let mut ev = trial();
        ev.name = EventName::SubscriptionCancelled;
        ev.values.mrr_delta = Some(Amount::from_minor(-4900, "usd"));
        let out = server_event(&ev, &merchant(), &config(), NOW).unwrap();
        assert_eq!(out["event_name"], "SubscriptionCancelled");
        assert_eq!(out["custom_data"]["value"], -49.0);
        assert_eq!(out["custom_data"]["mrr_delta"], -49.0);
    }

    #[test]
    fn test_event_code_is_passed_when_configured() {
        let mut m = merchant();
        m.destinations.get_mut("meta").unwrap()["test_event_code"] = json!("TEST123");
        let req = build_for_test(build, &[trial()], &m, &Endpoints::default(), NOW).unwrap();
        let body: Value = serde_json::from_str(&req.body).unwrap();
        assert_eq!(body["test_event_code"], "TEST123");
    }

    #[test]
    fn refuses_events_older_than_seven_days() {
        let mut ev = trial();
        ev.occurred_at = NOW - MAX_EVENT_AGE_SECONDS - 1;
        assert!(matches!(
            build_for_test(build, &[ev], &merchant(), &Endpoints::default(), NOW),
            Err(BuildError::TooOld { .. })
        ));
    }

    #[test]
    fn empty_email_is_not_hashed_and_no_identity_is_refused() {
        let mut ev = trial();
        ev.customer.email = Some("  ".into());
        let out = server_event(&ev, &merchant(), &config(), NOW).unwrap();
        assert!(out["user_data"].get("em").is_none());
        ev.customer.customer_id = None;
        assert_eq!(
            server_event(&ev, &merchant(), &config(), NOW),
            Err(BuildError::NoIdentity)
        );
    }

    #[test]
    fn operator_base_url_override_is_used() {
        let endpoints = Endpoints::default().with(&GRAPH, "http://127.0.0.1:9999/");
        let req = build_for_test(build, &[trial()], &merchant(), &endpoints, NOW).unwrap();
        assert!(req
            .url
            .starts_with("http://127.0.0.1:9999/v25.0/123456789/events?"));
    }

    #[test]
    fn classifies_responses() {
        assert_eq!(
            classify(200, None, r#"{"events_received":1}"#),
            Outcome::Delivered
        );
        assert!(matches!(
            classify(500, None, ""),
            Outcome::Retry {
                after_seconds: None,
                ..
            }
        ));
        assert!(matches!(
            classify(429, Some("120"), "{}"),
            Outcome::Retry {
                after_seconds: Some(120),
                ..
            }
        ));
        let throttled = r#"{"error":{"message":"User request limit reached","code":17}}"#;
        assert!(matches!(
            classify(400, None, throttled),
            Outcome::Retry { .. }
        ));
        let transient = r#"{"error":{"message":"x","code":100,"is_transient":true}}"#;
        assert!(matches!(
            classify(400, None, transient),
            Outcome::Retry { .. }
        ));
        let invalid = r#"{"error":{"message":"Invalid parameter","type":"OAuthException","code":100,"error_subcode":2804003,"fbtrace_id":"A1"}}"#;
        match classify(400, None, invalid) {
            Outcome::Permanent { reason } => {
                assert!(reason.contains("100/2804003"), "{reason}");
                assert!(reason.contains("Invalid parameter"));
            }
            other => panic!("expected permanent, got {other:?}"),
        }
        assert!(matches!(
            classify(400, None, "not json"),
            Outcome::Permanent { .. }
        ));
    }
}
