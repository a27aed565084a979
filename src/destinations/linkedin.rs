//! LinkedIn Conversions API: `POST /rest/conversionEvents`.
//!
//! <https://learn.microsoft.com/en-us/linkedin/marketing/integrations/ads-reporting/conversions-api>
//! Each canonical event goes to the conversion rule the merchant mapped it to
//! (`urn:lla:llaPartnerConversion:<id>`); events without a rule are not planned for
//! LinkedIn at all. `LinkedIn-Version` is required and pinned (a sunset version answers
//! 426). `conversionHappenedAt` is epoch milliseconds, `amount` a decimal string, and
//! `user.userIds` carries the SHA-256 email and the unhashed `li_fat_id`. Scale plan.

use super::{
    plan_rows, truncate, BuildContext, BuildError, DestinationSpec, MatchKey, OutboundRequest,
    Outcome, RequestPlan,
};
use crate::config::MerchantConfig;
use crate::event::{CanonicalEvent, EventName};
use crate::hashing::hash_email;
use crate::identity::Identifier;
use crate::plans::Feature;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const NAME: &str = "linkedin";
pub const DEFAULT_BASE_URL: &str = "https://api.linkedin.com";
/// The REST API.
pub const API: super::EndpointSpec = super::EndpointSpec {
    default: DEFAULT_BASE_URL,
    override_var: "LINKEDIN_API_BASE_URL",
};
/// Monthly versions are supported about a year; pinned, overridable per merchant.
pub const DEFAULT_VERSION: &str = "202608";
/// LinkedIn refuses conversions older than 90 days.
pub const MAX_EVENT_AGE_SECONDS: i64 = 90 * 86_400;
const RULE_URN_PREFIX: &str = "urn:lla:llaPartnerConversion:";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkedInConfig {
    pub access_token: String,
    #[serde(default = "default_version")]
    pub linkedin_version: String,
    /// Canonical event (or alias) → conversion rule id or URN.
    pub conversion_rules: ConversionRules,
}

fn default_version() -> String {
    DEFAULT_VERSION.to_string()
}

/// Rule ids validated on parse: numeric ids become URNs; unknown event names refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConversionRules(BTreeMap<EventName, String>);

impl<'de> Deserialize<'de> for ConversionRules {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let raw = BTreeMap::<String, String>::deserialize(deserializer)?;
        let mut rules = BTreeMap::new();
        for (canonical, rule) in raw {
            let name = EventName::parse(&canonical).ok_or_else(|| {
                D::Error::custom(format!("unknown canonical event {canonical:?}"))
            })?;
            let rule = rule.trim();
            let id = rule.strip_prefix(RULE_URN_PREFIX).unwrap_or(rule);
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(D::Error::custom(format!(
                    "{canonical}: a conversion rule is a numeric id or {RULE_URN_PREFIX}<id>"
                )));
            }
            rules.insert(name, format!("{RULE_URN_PREFIX}{id}"));
        }
        if rules.is_empty() {
            return Err(D::Error::custom(
                "map at least one canonical event to a conversion rule",
            ));
        }
        Ok(ConversionRules(rules))
    }
}

pub const SPEC: DestinationSpec = DestinationSpec {
    name: NAME,
    endpoints: &[API],
    build,
    classify,
    classify_rows: Some(classify_batch),
    match_keys: &[
        MatchKey {
            identifier: Identifier::Email,
            weight: 50,
        },
        MatchKey {
            identifier: Identifier::LiFatId,
            weight: 50,
        },
    ],
    secret_fields: &["access_token"],
    validate_config: crate::config::check_config::<LinkedInConfig>,
    required_feature: Some(Feature::LinkedinCapi),
    accepts,
    paid_start_value: Some(crate::config::ValueField::Arr),
    versioning: Some(crate::api_versions::Versioning {
        config_field: "linkedin_version",
        default: Some(DEFAULT_VERSION),
        rule: crate::api_versions::Rule::MonthlyOneYear,
    }),
    ..DestinationSpec::DEFAULT
};

/// Only events the merchant mapped to a conversion rule go to LinkedIn.
fn accepts(event: &CanonicalEvent, merchant: &MerchantConfig) -> bool {
    merchant
        .destination_config::<LinkedInConfig>(NAME)
        .is_ok_and(|config| config.conversion_rules.0.contains_key(&event.name))
}

/// Conversion events per batch-create call (LinkedIn allows 5,000).
pub const MAX_BATCH: usize = 5000;

fn build(
    events: &[CanonicalEvent],
    merchant: &MerchantConfig,
    context: &BuildContext,
) -> Result<RequestPlan, BuildError> {
    let config: LinkedInConfig = merchant.destination_config(NAME)?;
    let url = format!("{}/rest/conversionEvents", context.endpoints.url(&API));
    plan_rows(
        events,
        MAX_BATCH,
        |event| conversion_event(event, merchant, &config, context.now_s),
        |mut elements| {
            let mut headers = vec![
                (
                    "authorization".into(),
                    format!("Bearer {}", config.access_token),
                ),
                ("linkedin-version".into(), config.linkedin_version.clone()),
                ("x-restli-protocol-version".into(), "2.0.0".into()),
                ("content-type".into(), "application/json".into()),
            ];
            // One event is a plain create; several are a Rest.li batch create.
            let body = if elements.len() == 1 {
                elements.pop().unwrap_or_default()
            } else {
                headers.push(("x-restli-method".into(), "BATCH_CREATE".into()));
                json!({ "elements": elements })
            };
            Ok(OutboundRequest {
                method: "POST",
                log_url: url.clone(),
                url: url.clone(),
                headers,
                body: body.to_string(),
            })
        },
    )
}

/// A Rest.li batch create answers 200 with one status per element, in request order.
fn classify_batch(status: u16, body: &str, rows: usize) -> Option<Vec<Outcome>> {
    if rows < 2 || !(200..300).contains(&status) {
        return None;
    }
    let parsed: Value = serde_json::from_str(body).ok()?;
    let elements = parsed.get("elements")?.as_array()?;
    if elements.len() != rows {
        return None;
    }
    Some(
        elements
            .iter()
            .map(|element| {
                let status = element
                    .get("status")
                    .and_then(Value::as_u64)
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or(500);
                let error = element
                    .get("error")
                    .map(Value::to_string)
                    .unwrap_or_default();
                classify(status, None, &error)
            })
            .collect(),
    )
}

pub fn conversion_event(
    event: &CanonicalEvent,
    merchant: &MerchantConfig,
    config: &LinkedInConfig,
    now: i64,
) -> Result<Value, BuildError> {
    if !event.name.is_forwardable() {
        return Err(BuildError::NotForwardable(event.name.as_str()));
    }
    let rule = config
        .conversion_rules
        .0
        .get(&event.name)
        .ok_or(BuildError::NotConfigured(NAME))?;
    let age = now - event.occurred_at;
    if age > MAX_EVENT_AGE_SECONDS {
        return Err(BuildError::TooOld {
            destination: NAME,
            age_seconds: age,
            limit_seconds: MAX_EVENT_AGE_SECONDS,
        });
    }
    let mut user_ids = Vec::new();
    if let Some(email) = event.customer.email.as_deref().and_then(hash_email) {
        user_ids.push(json!({ "idType": "SHA256_EMAIL", "idValue": email }));
    }
    if let Some(li_fat_id) = event.touchpoints.get(Identifier::LiFatId) {
        user_ids.push(
            json!({ "idType": "LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID", "idValue": li_fat_id }),
        );
    }
    if user_ids.is_empty() {
        return Err(BuildError::NoIdentity);
    }
    let mut body = json!({
        "conversion": rule,
        "conversionHappenedAt": event.occurred_at.saturating_mul(1000),
        "eventId": event.event_id,
        "user": { "userIds": user_ids },
    });
    // LinkedIn has no negative conversions: corrections go without a value.
    if let (Some(value), Some(currency)) = (
        SPEC.primary_value(event, merchant),
        event.values.currency.as_deref(),
    ) {
        if value.minor > 0 {
            body["conversionValue"] = json!({
                "currencyCode": currency.to_ascii_uppercase(),
                "amount": value.to_string(),
            });
        }
    }
    Ok(body)
}

fn classify(status: u16, retry_after: Option<&str>, body: &str) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Delivered;
    }
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            let code = v
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("-")
                .to_string();
            let text = v.get("message").and_then(Value::as_str)?.to_string();
            Some(format!("{code}: {text}"))
        })
        .unwrap_or_else(|| truncate(body.trim(), 200));
    let hint = if status == 426 {
        " (LinkedIn-Version is sunset: set a current linkedin_version)"
    } else {
        ""
    };
    let reason = format!("HTTP {status}, linkedin {}{hint}", truncate(&message, 300));
    super::failure_outcome(status, retry_after, reason, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Plan;
    use crate::destinations::{build_for_test, Endpoints};
    use crate::event::tests_support::build as build_event;

    use crate::identity::Touchpoints;

    const NOW: i64 = 1_767_225_600;

    fn merchant() -> MerchantConfig {
        MerchantConfig {
            merchant_id: "m_1".into(),
            plan: Plan::Scale,
            ..MerchantConfig::default()
        }
        .with_destination(
            NAME,
            json!({
                "access_token": "AQV-linkedin-token",
                "conversion_rules": { "paid_subscription": "104012", "trial_started": "urn:lla:llaPartnerConversion:104011" }
            }),
        )
    }

    fn event(name: EventName) -> CanonicalEvent {
        build_event(name)
            .occurred_at(NOW - 60)
            .arr(58800, "usd")
            .touchpoints(Touchpoints {
                li_fat_id: Some("a1b2c3d4-e5f6-7890".into()),
                ..Touchpoints::default()
            })
            .done()
    }

    #[test]
    fn golden_conversion_event_with_arr_for_paid_starts() {
        let req = build_for_test(
            build,
            &[event(EventName::SubscriptionStarted)],
            &merchant(),
            &Endpoints::default(),
            NOW,
        )
        .unwrap();
        assert_eq!(req.url, "https://api.linkedin.com/rest/conversionEvents");
        for header in [
            ("authorization", "Bearer AQV-linkedin-token"),
            ("linkedin-version", "202608"),
            ("x-restli-protocol-version", "2.0.0"),
        ] {
            assert!(
                req.headers.contains(&(header.0.into(), header.1.into())),
                "{header:?}"
            );
        }
        let body: Value = serde_json::from_str(&req.body).unwrap();
        assert_eq!(
            body,
            json!({
                "conversion": "urn:lla:llaPartnerConversion:104012",
                "conversionHappenedAt": (NOW - 60) * 1000,
                "conversionValue": { "currencyCode": "USD", "amount": "588.00" },
                "eventId": "tl_0123456789abcdef0123456789abcdef",
                "user": { "userIds": [
                    { "idType": "SHA256_EMAIL", "idValue": "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d" },
                    { "idType": "LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID", "idValue": "a1b2c3d4-e5f6-7890" }
                ] }
            })
        );
    }

    #[test]
    fn only_mapped_events_are_planned_and_rules_are_validated() {
        assert!(accepts(&event(EventName::TrialStarted), &merchant()));
        assert!(!accepts(
            &event(EventName::SubscriptionRenewed),
            &merchant()
        ));
        for bad in [
            json!({ "access_token": "t", "conversion_rules": {} }),
            json!({ "access_token": "t", "conversion_rules": { "trial_started": "abc" } }),
            json!({ "access_token": "t", "conversion_rules": { "trail_started": "1" } }),
        ] {
            assert!((SPEC.validate_config)(&bad).is_err(), "{bad}");
        }
        assert_eq!(SPEC.required_feature, Some(Feature::LinkedinCapi));
    }

    #[test]
    fn old_events_are_refused_and_sunset_versions_explained() {
        let config: LinkedInConfig = merchant().destination_config(NAME).unwrap();
        let old = CanonicalEvent {
            occurred_at: NOW - 91 * 86_400,
            ..event(EventName::TrialStarted)
        };
        assert!(matches!(
            conversion_event(&old, &merchant(), &config, NOW),
            Err(BuildError::TooOld { .. })
        ));
        match classify(
            426,
            None,
            r#"{"status":426,"code":"VERSION_SUNSET","message":"Requested version 202511 is not active"}"#,
        ) {
            Outcome::Permanent { reason } => {
                assert!(
                    reason.contains("VERSION_SUNSET") && reason.contains("linkedin_version"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(classify(201, None, ""), Outcome::Delivered);
        assert!(matches!(
            classify(429, Some("60"), ""),
            Outcome::Retry {
                after_seconds: Some(60),
                ..
            }
        ));
    }
}
