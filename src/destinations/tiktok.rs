//! TikTok Events API 2.0: `POST /open_api/v1.3/event/track/`.
//!
//! <https://business-api.tiktok.com/portal/docs?id=1771100865818625>
//! `Access-Token` header, `event_source` + `event_source_id` (the pixel code), `data[]`
//! with `event_time` in unix seconds and `event_id` as the dedup key shared with the
//! pixel. Email and external id are SHA-256 of the normalised value; `ttclid` is never
//! hashed. TikTok answers HTTP 200 with `code` ≠ 0 for failures, so the body decides.

use super::{
    parse_retry_after, plan_rows, truncate, BuildContext, BuildError, DestinationSpec, MatchKey,
    NameOverrides, OutboundRequest, Outcome, RequestPlan,
};
use crate::config::MerchantConfig;
use crate::event::{CanonicalEvent, EventName};
use crate::hashing::{hash_email, hash_identifier, hash_phone_e164};
use crate::identity::Identifier;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub const NAME: &str = "tiktok";
pub const DEFAULT_BASE_URL: &str = "https://business-api.tiktok.com";
/// The Business API.
pub const API: super::EndpointSpec = super::EndpointSpec {
    default: DEFAULT_BASE_URL,
    override_var: "TIKTOK_API_BASE_URL",
};
const TRACK_PATH: &str = "/open_api/v1.3/event/track/";

/// TikTok settings for one pixel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TikTokConfig {
    pub pixel_code: String,
    pub access_token: String,
    /// `web` for a pixel (the default), `crm` for a CRM event set.
    #[serde(default = "default_event_source")]
    pub event_source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_event_code: Option<String>,
    #[serde(default, skip_serializing_if = "NameOverrides::is_empty")]
    pub event_names: NameOverrides,
}

fn default_event_source() -> String {
    "web".to_string()
}

pub const SPEC: DestinationSpec = DestinationSpec {
    name: NAME,
    endpoints: &[API],
    build,
    classify,
    classify_rows: Some(classify_rows),
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
            identifier: Identifier::Ttclid,
            weight: 25,
        },
        MatchKey {
            identifier: Identifier::CustomerId,
            weight: 10,
        },
        MatchKey {
            identifier: Identifier::ClientIp,
            weight: 10,
        },
        MatchKey {
            identifier: Identifier::UserAgent,
            weight: 10,
        },
    ],
    secret_fields: &["access_token"],
    validate_config: crate::config::check_config::<TikTokConfig>,
    accepts: super::accepts_all,
    ..DestinationSpec::DEFAULT
};

/// Default mapping (shared product table): standard events where TikTok has one.
pub fn event_name(name: EventName) -> &'static str {
    match name {
        EventName::TrialStarted => "Lead",
        EventName::SubscriptionStarted | EventName::SubscriptionReactivated => "Subscribe",
        EventName::TrialConverted
        | EventName::SubscriptionRenewed
        | EventName::SubscriptionUpgraded => "CompletePayment",
        EventName::Signup => "CompleteRegistration",
        custom => custom.custom_event_name(),
    }
}

/// Events API 2.0 takes up to 1,000 events per request.
pub const MAX_BATCH: usize = 1000;

fn build(
    events: &[CanonicalEvent],
    merchant: &MerchantConfig,
    context: &BuildContext,
) -> Result<RequestPlan, BuildError> {
    let config: TikTokConfig = merchant.destination_config(NAME)?;
    let url = format!("{}{TRACK_PATH}", context.endpoints.url(&API));
    plan_rows(
        events,
        MAX_BATCH,
        |event| track_event(event, merchant, &config),
        |data| {
            let mut body = json!({
                "event_source": config.event_source,
                "event_source_id": config.pixel_code,
                "data": data,
            });
            if let Some(code) = config.test_event_code.as_deref().filter(|c| !c.is_empty()) {
                body["test_event_code"] = json!(code);
            }
            Ok(OutboundRequest {
                method: "POST",
                log_url: url.clone(),
                url: url.clone(),
                headers: vec![
                    ("access-token".into(), config.access_token.clone()),
                    ("content-type".into(), "application/json".into()),
                ],
                body: body.to_string(),
            })
        },
    )
}

/// One `data[]` entry.
pub fn track_event(
    event: &CanonicalEvent,
    merchant: &MerchantConfig,
    config: &TikTokConfig,
) -> Result<Value, BuildError> {
    if !event.name.is_forwardable() {
        return Err(BuildError::NotForwardable(event.name.as_str()));
    }
    let mut user = Map::new();
    if let Some(email) = event.customer.email.as_deref().and_then(hash_email) {
        user.insert("email".into(), json!(email));
    }
    if let Some(external) = event
        .customer
        .customer_id
        .as_deref()
        .and_then(hash_identifier)
    {
        user.insert("external_id".into(), json!(external));
    }
    // E.164 with '+' before hashing, as for Google (TikTok's own text is unconfirmed).
    if let Some(phone) = event.touchpoints.phone.as_deref().and_then(hash_phone_e164) {
        user.insert("phone".into(), json!(phone));
    }
    if user.is_empty() && event.touchpoints.ttclid.is_none() {
        return Err(BuildError::NoIdentity);
    }
    // Click id, IP and user agent go unhashed.
    for (field, value) in [
        ("ttclid", &event.touchpoints.ttclid),
        ("ip", &event.touchpoints.client_ip),
        ("user_agent", &event.touchpoints.user_agent),
    ] {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            user.insert(field.into(), json!(value));
        }
    }
    let mut properties = Map::new();
    // No refund primitive at TikTok: corrections go out as custom events whose value
    // is negative (the value policy negates them).
    if let Some(value) = SPEC.primary_value(event, merchant) {
        properties.insert("value".into(), json!(value.as_f64()));
    }
    if let Some(currency) = &event.values.currency {
        properties.insert("currency".into(), json!(currency.to_ascii_uppercase()));
    }
    if let Some(plan_id) = &event.subscription.plan_id {
        properties.insert("content_type".into(), json!("product"));
        properties.insert(
            "contents".into(),
            json!([{ "content_id": plan_id, "quantity": 1 }]),
        );
    }
    if let Some(invoice) = event.property("invoice_id") {
        properties.insert("order_id".into(), json!(invoice));
    }
    properties.insert("description".into(), json!(event.name.as_str()));
    Ok(json!({
        "event": config.event_names.get(event.name).unwrap_or(event_name(event.name)),
        "event_time": event.occurred_at,
        "event_id": event.event_id,
        "user": user,
        "properties": properties,
    }))
}

/// TikTok `code`s that mean "later": rate limiting (40100) and its internal errors (5xxxx).
fn retryable_code(code: i64) -> bool {
    code == 40100 || (50000..60000).contains(&code)
}

/// TikTok's partial success (HTTP 200, code 20001) does not say which events of a batch
/// were refused, so a batch answered that way is not taken as delivered: each event is
/// re-sent alone and judged on its own answer (TikTok deduplicates by `event_id`, so an
/// event that did land is not counted twice).
fn classify_rows(status: u16, body: &str, rows: usize) -> Option<Vec<Outcome>> {
    let code = serde_json::from_str::<Value>(body)
        .ok()?
        .get("code")
        .and_then(Value::as_i64);
    ((200..300).contains(&status) && code == Some(PARTIAL_SUCCESS) && rows > 1).then(Vec::new)
}

const PARTIAL_SUCCESS: i64 = 20001;

fn classify(status: u16, retry_after: Option<&str>, body: &str) -> Outcome {
    let parsed = serde_json::from_str::<Value>(body).ok();
    let code = parsed
        .as_ref()
        .and_then(|v| v.get("code"))
        .and_then(Value::as_i64);
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("no message");
    let reason = format!(
        "HTTP {status}, tiktok code {}: {}",
        code.map_or("-".to_string(), |c| c.to_string()),
        truncate(message, 300)
    );
    if (200..300).contains(&status) {
        // Partial success of a single-event request: the event was taken (a batch
        // answered so is re-sent event by event, see `classify_rows`).
        match code {
            Some(0) | Some(PARTIAL_SUCCESS) => return Outcome::Delivered,
            Some(c) if retryable_code(c) => {
                return Outcome::Retry {
                    after_seconds: parse_retry_after(retry_after),
                    reason,
                }
            }
            _ => return Outcome::Permanent { reason },
        }
    }
    super::failure_outcome(status, retry_after, reason, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests_support::build as build_event;

    /// A batch answered with partial success was marked delivered as a whole.
    #[test]
    fn partial_success_of_a_batch_resends_each_event_alone() {
        let body = r#"{"code":20001,"message":"Partial Success","data":{}}"#;
        assert_eq!(
            crate::destinations::row_outcomes(&SPEC, 200, None, body, 3),
            None,
            "a batch with unknown failed rows must be resolved per event"
        );
        assert_eq!(
            crate::destinations::row_outcomes(&SPEC, 200, None, body, 1),
            Some(vec![Outcome::Delivered])
        );
        let ok = r#"{"code":0,"message":"OK","data":{}}"#;
        assert_eq!(
            crate::destinations::row_outcomes(&SPEC, 200, None, ok, 3),
            Some(vec![Outcome::Delivered; 3])
        );
    }
    use crate::destinations::{build_for_test, Endpoints};

    use crate::identity::Touchpoints;

    fn merchant() -> MerchantConfig {
        MerchantConfig {
            merchant_id: "m_1".into(),
            ..MerchantConfig::default()
        }
        .with_destination(
            NAME,
            json!({ "pixel_code": "CABC123XYZ", "access_token": "tt-secret-token-0001" }),
        )
    }

    fn event(name: EventName) -> CanonicalEvent {
        build_event(name)
            .source_event_type("invoice.paid")
            .email(" Jane.Doe@Example.com")
            .plan("price_pro_monthly")
            .property("invoice_id", "in_1")
            .touchpoints(Touchpoints {
                ttclid: Some("E.C.P.abc123".into()),
                ..Touchpoints::default()
            })
            .done()
    }

    #[test]
    fn golden_track_request() {
        let req = build_for_test(
            build,
            &[event(EventName::TrialConverted)],
            &merchant(),
            &Endpoints::default(),
            0,
        )
        .unwrap();
        assert_eq!(
            req.url,
            "https://business-api.tiktok.com/open_api/v1.3/event/track/"
        );
        assert!(req
            .headers
            .contains(&("access-token".into(), "tt-secret-token-0001".into())));
        assert!(!req.log_url.contains("tt-secret"));
        let body: Value = serde_json::from_str(&req.body).unwrap();
        assert_eq!(
            body,
            json!({
                "event_source": "web",
                "event_source_id": "CABC123XYZ",
                "data": [{
                    "event": "CompletePayment",
                    "event_time": 1_767_225_600,
                    "event_id": "tl_0123456789abcdef0123456789abcdef",
                    "user": {
                        "email": "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d",
                        "external_id": "de782ba4f953774a5064516dbdbfbc5966244a90b8ec8da591b6395663a0b438",
                        "ttclid": "E.C.P.abc123"
                    },
                    "properties": {
                        "value": 49.0,
                        "currency": "USD",
                        "content_type": "product",
                        "contents": [{ "content_id": "price_pro_monthly", "quantity": 1 }],
                        "order_id": "in_1",
                        "description": "trial_converted"
                    }
                }]
            })
        );
    }

    #[test]
    fn default_mapping_follows_the_product_table() {
        for (name, expected) in [
            (EventName::TrialStarted, "Lead"),
            (EventName::SubscriptionStarted, "Subscribe"),
            (EventName::SubscriptionRenewed, "CompletePayment"),
            (EventName::SubscriptionReactivated, "Subscribe"),
            (EventName::SubscriptionCancelled, "SubscriptionCancelled"),
        ] {
            assert_eq!(event_name(name), expected);
        }
        let config: TikTokConfig = merchant().destination_config(NAME).unwrap();
        let cancelled = track_event(
            &event(EventName::SubscriptionCancelled),
            &merchant(),
            &config,
        )
        .unwrap();
        assert_eq!(cancelled["properties"]["value"], -49.0);
    }

    #[test]
    fn a_200_with_an_error_code_is_not_a_success() {
        assert_eq!(
            classify(
                200,
                None,
                r#"{"code":0,"message":"OK","request_id":"r1","data":{}}"#
            ),
            Outcome::Delivered
        );
        match classify(
            200,
            None,
            r#"{"code":40002,"message":"Invalid value for event_source_id"}"#,
        ) {
            Outcome::Permanent { reason } => {
                assert!(
                    reason.contains("40002") && reason.contains("event_source_id"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(
                200,
                Some("30"),
                r#"{"code":40100,"message":"Too many requests"}"#
            ),
            Outcome::Retry {
                after_seconds: Some(30),
                ..
            }
        ));
        assert!(matches!(
            classify(502, None, "bad gateway"),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(200, None, "not json"),
            Outcome::Permanent { .. }
        ));
    }
}
