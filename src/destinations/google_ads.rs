//! Google Ads: offline click conversions with enhanced-conversion user identifiers, and
//! conversion adjustments for refunds (and, if the merchant wants, cancellations).
//!
//! <https://developers.google.com/google-ads/api/reference/rpc/latest/UploadClickConversionsRequest>
//! REST JSON is camelCase. `partialFailure` is always true, so a 200 can carry row
//! errors in `partialFailureError`; they are mapped back to their rows. `orderId` is our
//! event id: a resend after a timeout is answered `ORDER_ID_ALREADY_IN_USE`, never
//! counted twice. Access tokens come from the merchant's stored OAuth refresh token and
//! TrackLayer's OAuth client; the developer token is TrackLayer's too (operator secrets).

use super::{
    parse_retry_after, plan_indexed_multi_rows, truncate, AccessToken, AuthSpec, BuildContext,
    BuildError, Correction, CorrectionSpec, DeliveryStatus, DestinationSpec, MatchKey,
    OutboundRequest, Outcome, RequestPlan, StoredConversion,
};
use crate::api_versions::v;
use crate::config::MerchantConfig;
use crate::event::{CanonicalEvent, EventName};
use crate::hashing::{hash_email_google, hash_phone_e164};
use crate::identity::Identifier;
use crate::money::Amount;
use crate::plans::Feature;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

pub const NAME: &str = "google_ads";
pub const DEFAULT_BASE_URL: &str = "https://googleads.googleapis.com";
pub const DEFAULT_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// The Google Ads API.
pub const API: super::EndpointSpec = super::EndpointSpec {
    default: DEFAULT_BASE_URL,
    override_var: "GOOGLE_ADS_API_BASE_URL",
};
/// The OAuth token endpoint.
pub const OAUTH_TOKEN: super::EndpointSpec = super::EndpointSpec {
    default: DEFAULT_TOKEN_URL,
    override_var: "GOOGLE_OAUTH_TOKEN_URL",
};
pub const DEFAULT_API_VERSION: &str = "v26";
/// `TOO_MANY_CONVERSIONS_IN_REQUEST`: "Upload fewer than 2001"; adjustments likewise.
pub const MAX_BATCH: usize = 2000;
/// Google refuses a click conversion for 6 h after the click or after the conversion
/// action was created: come back then.
const RETRY_LATER_SECONDS: u32 = 6 * 3600;

/// Property a correction carries once the edge found what it adjusts: a JSON list of
/// `{event_id, name, occurred_at, value}`.
pub const ADJUSTS: &str = "adjusts";

/// TrackLayer's Google Ads API access and OAuth app (worker secrets).
pub const DEVELOPER_TOKEN: &str = "GOOGLE_ADS_DEVELOPER_TOKEN";
pub const OAUTH_CLIENT_ID: &str = "GOOGLE_OAUTH_CLIENT_ID";
pub const OAUTH_CLIENT_SECRET: &str = "GOOGLE_OAUTH_CLIENT_SECRET";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleAdsConfig {
    /// The advertiser account, 10 digits (dashes allowed).
    pub customer_id: CustomerId,
    /// The manager (MCC) account the OAuth user reaches the advertiser through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_customer_id: Option<CustomerId>,
    /// From the merchant's OAuth consent to TrackLayer's Google client.
    pub refresh_token: String,
    /// Canonical event → conversion action (numeric id or resource name).
    pub conversion_actions: ConversionActions,
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// Refunds restate (partial) or retract (full) the conversion they refund.
    #[serde(default = "yes")]
    pub adjust_refunds: bool,
    /// Cancellations retract the subscription's conversion when they come within this
    /// many days of it (a trial cancelled in week one was never a real customer). Off
    /// by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retract_cancellations_within_days: Option<u32>,
    /// EU user consent signals, sent as given: "GRANTED" or "DENIED".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_user_data_consent: Option<Consent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_personalization_consent: Option<Consent>,
}

fn default_api_version() -> String {
    DEFAULT_API_VERSION.to_string()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Consent {
    Granted,
    Denied,
}

/// Ten digits, stored without dashes (the form the API and the header want).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CustomerId(String);

impl<'de> Deserialize<'de> for CustomerId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        let digits: String = raw.chars().filter(|c| *c != '-').collect();
        if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(serde::de::Error::custom(
                "a Google Ads customer id is 10 digits (e.g. 123-456-7890)",
            ));
        }
        Ok(CustomerId(digits))
    }
}

/// Canonical event → conversion action id (digits), validated when stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConversionActions(BTreeMap<EventName, String>);

impl<'de> Deserialize<'de> for ConversionActions {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let raw = BTreeMap::<String, String>::deserialize(deserializer)?;
        let mut actions = BTreeMap::new();
        for (canonical, action) in raw {
            let name = EventName::parse(&canonical).ok_or_else(|| {
                D::Error::custom(format!("unknown canonical event {canonical:?}"))
            })?;
            if name.is_correction() || !name.is_forwardable() {
                return Err(D::Error::custom(format!(
                    "{canonical}: corrections adjust the original conversion; map the conversions"
                )));
            }
            let id = action
                .trim()
                .rsplit_once("/conversionActions/")
                .map_or(action.trim(), |(_, id)| id);
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(D::Error::custom(format!(
                    "{canonical}: a conversion action is a numeric id or customers/<id>/conversionActions/<id>"
                )));
            }
            actions.insert(name, id.to_string());
        }
        if actions.is_empty() {
            return Err(D::Error::custom(
                "map at least one canonical event to a conversion action",
            ));
        }
        Ok(ConversionActions(actions))
    }
}

impl GoogleAdsConfig {
    fn action_resource(&self, name: EventName) -> Option<String> {
        self.conversion_actions
            .0
            .get(&name)
            .map(|id| format!("customers/{}/conversionActions/{id}", self.customer_id.0))
    }
}

static AUTH: AuthSpec = AuthSpec {
    token_request,
    parse_token,
};

/// Google Ads API versions and their sunsets (developers.google.com/google-ads/api/docs/
/// sunset-dates; v23 and later projected from their release, about 12 months each).
pub const VERSIONS: &[crate::api_versions::KnownVersion] = &[
    v("v19", "2026-02-11", true),
    v("v20", "2026-06-10", true),
    v("v21", "2026-08-05", true),
    v("v22", "2026-10-07", true),
    v("v23", "2027-02-03", false),
    v("v24", "2027-04-28", false),
    v("v25", "2027-07-28", false),
    v("v26", "2027-10-13", false),
];

pub const SPEC: DestinationSpec = DestinationSpec {
    name: NAME,
    endpoints: &[API, OAUTH_TOKEN],
    build,
    classify,
    classify_rows: Some(classify_rows),
    auth: Some(&AUTH),
    match_keys: &[
        MatchKey {
            identifier: Identifier::Gclid,
            weight: 50,
        },
        MatchKey {
            identifier: Identifier::Email,
            weight: 30,
        },
        MatchKey {
            identifier: Identifier::Phone,
            weight: 20,
        },
    ],
    secret_fields: &["refresh_token"],
    validate_config: crate::config::check_config::<GoogleAdsConfig>,
    accepts,
    operator_secrets: &[DEVELOPER_TOKEN, OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET],
    corrections: Some(&CORRECTIONS),
    versioning: Some(crate::api_versions::Versioning {
        config_field: "api_version",
        default: Some(DEFAULT_API_VERSION),
        rule: crate::api_versions::Rule::Table(VERSIONS),
    }),
    pause_campaigns: Some(pause_campaigns),
    ..DestinationSpec::DEFAULT
};

/// Cancellations and refunds adjust (restate or retract) the conversions Google
/// accepted: found among the stored ones, or the correction waits or is skipped.
pub const CORRECTIONS: CorrectionSpec = CorrectionSpec {
    applies: needs_original,
    originals: conversion_names,
    resolve,
};

fn resolve(
    mut correction: CanonicalEvent,
    stored: &[StoredConversion],
    merchant: &MerchantConfig,
) -> Correction {
    let candidates: Vec<(CanonicalEvent, UploadState)> = stored
        .iter()
        .map(|(event, status)| (event.clone(), UploadState::from_status(*status)))
        .collect();
    let plan = match merchant.destination_config::<GoogleAdsConfig>(NAME) {
        Ok(config) => plan_correction(&correction, &candidates, &config),
        Err(err) => CorrectionPlan::Skip(err.to_string()),
    };
    match plan {
        CorrectionPlan::Adjust(originals) => {
            attach_originals(&mut correction, &originals, merchant);
            Correction::Send(Box::new(correction))
        }
        CorrectionPlan::Wait(reason) => Correction::Wait(reason),
        CorrectionPlan::Skip(reason) => Correction::Skip(reason),
    }
}

/// Mapped conversions, and the corrections the merchant has Google adjust for.
fn accepts(event: &CanonicalEvent, merchant: &MerchantConfig) -> bool {
    let Ok(config) = merchant.destination_config::<GoogleAdsConfig>(NAME) else {
        return false;
    };
    match event.name {
        EventName::Refund => config.adjust_refunds,
        EventName::SubscriptionCancelled => config.retract_cancellations_within_days.is_some(),
        name => config.conversion_actions.0.contains_key(&name),
    }
}

/// What the edge looks up for a correction: every conversion of the subscription it
/// corrects, among the conversions this merchant maps, with its Google delivery state.
pub fn needs_original(event: &CanonicalEvent) -> bool {
    event.name.is_correction() && event.property(ADJUSTS).is_none()
}

pub fn conversion_names(merchant: &MerchantConfig) -> Vec<EventName> {
    merchant
        .destination_config::<GoogleAdsConfig>(NAME)
        .map(|c| c.conversion_actions.0.keys().copied().collect())
        .unwrap_or_default()
}

/// Where a conversion a correction may adjust stands at Google.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadState {
    /// Queued or retrying: its fate is not known yet.
    Pending,
    Delivered,
    DeadLettered,
    /// Skipped, simulated in dry run, or never planned for Google.
    NotSent,
}

impl UploadState {
    /// From a delivery's status (`None`: never planned for this destination).
    pub fn from_status(status: Option<DeliveryStatus>) -> Self {
        match status {
            Some(DeliveryStatus::Pending) => UploadState::Pending,
            Some(DeliveryStatus::Delivered) => UploadState::Delivered,
            Some(DeliveryStatus::DeadLettered) => UploadState::DeadLettered,
            Some(DeliveryStatus::Simulated | DeliveryStatus::Skipped) | None => {
                UploadState::NotSent
            }
        }
    }
}

/// What to do with a correction now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorrectionPlan {
    /// Adjust these accepted conversions.
    Adjust(Vec<CanonicalEvent>),
    /// A conversion it corrects has not been accepted or refused yet: ask again later,
    /// without spending an attempt.
    Wait(String),
    /// Nothing to adjust, final.
    Skip(String),
}

/// Which conversions a correction adjusts, given every mapped conversion of its
/// subscription up to the correction's time and where each stands.
///
/// - A cancellation within `retract_cancellations_within_days` of a conversion retracts
///   every conversion of the subscription uploaded within that window (start, upgrades,
///   renewals); older ones stay (the revenue was real).
/// - A refund restates (or, in full, retracts) the conversion of the refunded invoice,
///   else the subscription's newest conversion.
///
/// A correction never goes out before what it corrects was accepted; if that was
/// dead-lettered or never sent, the correction is skipped with that reason.
pub fn plan_correction(
    correction: &CanonicalEvent,
    candidates: &[(CanonicalEvent, UploadState)],
    config: &GoogleAdsConfig,
) -> CorrectionPlan {
    let targets: Vec<&(CanonicalEvent, UploadState)> = match correction.name {
        EventName::SubscriptionCancelled => {
            let window_days = config.retract_cancellations_within_days.unwrap_or(0);
            let in_window: Vec<_> = candidates
                .iter()
                .filter(|(c, _)| {
                    correction.occurred_at - c.occurred_at <= i64::from(window_days) * 86_400
                })
                .collect();
            if in_window.is_empty() {
                return CorrectionPlan::Skip(if candidates.is_empty() {
                    "no conversion of this subscription was uploaded to Google Ads, so there is nothing to adjust".into()
                } else {
                    format!(
                        "cancelled more than {window_days} days after the conversion; kept as is"
                    )
                });
            }
            in_window
        }
        _ => {
            let invoice = correction.property("invoice_id");
            let refunded = candidates
                .iter()
                .find(|(c, _)| invoice.is_some() && c.property("invoice_id") == invoice)
                .or_else(|| candidates.iter().max_by_key(|(c, _)| c.occurred_at));
            match refunded {
                Some(target) => vec![target],
                None => {
                    return CorrectionPlan::Skip(
                        "no conversion of this subscription was uploaded to Google Ads, so there is nothing to adjust".into(),
                    )
                }
            }
        }
    };
    if let Some((pending, _)) = targets.iter().find(|(_, s)| *s == UploadState::Pending) {
        return CorrectionPlan::Wait(format!(
            "waiting for conversion {} to be accepted by Google Ads",
            pending.event_id
        ));
    }
    let accepted: Vec<CanonicalEvent> = targets
        .iter()
        .filter(|(_, s)| *s == UploadState::Delivered)
        .map(|(c, _)| c.clone())
        .collect();
    if !accepted.is_empty() {
        return CorrectionPlan::Adjust(accepted);
    }
    CorrectionPlan::Skip(
        if targets.iter().any(|(_, s)| *s == UploadState::DeadLettered) {
            "the conversion it corrects was dead-lettered, so Google Ads never accepted it".into()
        } else {
            "the conversion it corrects was never sent to Google Ads".into()
        },
    )
}

/// Records on the correction which conversions it adjusts, and the value each was
/// uploaded with (the merchant's value policy, as in [`click_conversion`]).
pub fn attach_originals(
    correction: &mut CanonicalEvent,
    originals: &[CanonicalEvent],
    merchant: &MerchantConfig,
) {
    let targets: Vec<Value> = originals
        .iter()
        .map(|original| {
            json!({
                "event_id": original.event_id,
                "name": original.name.as_str(),
                "occurred_at": original.occurred_at,
                "value": SPEC
                    .primary_value(original, merchant)
                    .map(|v| v.to_string()),
            })
        })
        .collect();
    correction
        .properties
        .insert(ADJUSTS.into(), Value::Array(targets).to_string());
}

fn build(
    events: &[CanonicalEvent],
    merchant: &MerchantConfig,
    context: &BuildContext,
) -> Result<RequestPlan, BuildError> {
    let config: GoogleAdsConfig = merchant.destination_config(NAME)?;
    if config.login_customer_id.is_some()
        && !merchant.plan.includes(Feature::GoogleAdsManagerAccount)
    {
        return Err(BuildError::Invalid {
            destination: NAME,
            reason: format!(
                "login_customer_id (manager account) requires plan {}",
                Feature::GoogleAdsManagerAccount
                    .minimum_plan()
                    .display_name()
            ),
        });
    }
    let (base, headers) = customer_request(&config, context)?;

    // Conversions and adjustments are two endpoints: one plan, rows in each request kept
    // in queue order.
    let mut plan = RequestPlan::default();
    for (corrections, method, field) in [
        (false, "uploadClickConversions", "conversions"),
        (true, "uploadConversionAdjustments", "conversionAdjustments"),
    ] {
        let url = format!("{base}:{method}");
        plan_indexed_multi_rows(
            &mut plan,
            events
                .iter()
                .enumerate()
                .filter(|(_, event)| event.name.is_correction() == corrections),
            MAX_BATCH,
            |event| {
                if corrections {
                    adjustment(event, &config, context.now_s)
                } else {
                    click_conversion(event, merchant, &config).map(|row| vec![row])
                }
            },
            |rows| {
                Ok(OutboundRequest {
                    method: "POST",
                    url: url.clone(),
                    log_url: url.clone(),
                    headers: headers.clone(),
                    body: json!({ field: rows, "partialFailure": true }).to_string(),
                })
            },
        )?;
    }
    Ok(plan)
}

/// `yyyy-mm-dd hh:mm:ss+00:00`, the format Google requires (offset mandatory).
pub fn date_time(unix_seconds: i64) -> String {
    let rfc3339 = crate::time::utc_rfc3339(unix_seconds);
    // "2026-11-20T10:00:00Z" → "2026-11-20 10:00:00+00:00"
    format!(
        "{}+00:00",
        rfc3339.trim_end_matches('Z').replacen('T', " ", 1)
    )
}

fn user_identifiers(event: &CanonicalEvent) -> Vec<Value> {
    let mut identifiers = Vec::new();
    if let Some(email) = event.customer.email.as_deref().and_then(hash_email_google) {
        identifiers.push(json!({ "hashedEmail": email }));
    }
    if let Some(phone) = event.touchpoints.phone.as_deref().and_then(hash_phone_e164) {
        identifiers.push(json!({ "hashedPhoneNumber": phone }));
    }
    identifiers
}

pub fn click_conversion(
    event: &CanonicalEvent,
    merchant: &MerchantConfig,
    config: &GoogleAdsConfig,
) -> Result<Value, BuildError> {
    let action = config
        .action_resource(event.name)
        .ok_or(BuildError::NotConfigured(NAME))?;
    let mut row = Map::new();
    row.insert("conversionAction".into(), json!(action));
    // Exactly one click id; gclid wins. Identifiers ride along only with a gclid or
    // alone (enhanced conversions for leads); Google refuses them with gbraid/wbraid.
    let touch = &event.touchpoints;
    let identifiers = user_identifiers(event);
    if let Some(gclid) = touch.get(Identifier::Gclid) {
        row.insert("gclid".into(), json!(gclid));
        if !identifiers.is_empty() {
            row.insert("userIdentifiers".into(), json!(identifiers));
        }
    } else if let Some(gbraid) = touch.get(Identifier::Gbraid) {
        row.insert("gbraid".into(), json!(gbraid));
    } else if let Some(wbraid) = touch.get(Identifier::Wbraid) {
        row.insert("wbraid".into(), json!(wbraid));
    } else if !identifiers.is_empty() {
        row.insert("userIdentifiers".into(), json!(identifiers));
    } else {
        return Err(BuildError::NoClickOrIdentity(NAME));
    }
    row.insert(
        "conversionDateTime".into(),
        json!(date_time(event.occurred_at)),
    );
    if let Some(value) = SPEC.primary_value(event, merchant) {
        row.insert("conversionValue".into(), json!(value.as_f64()));
        if let Some(currency) = &event.values.currency {
            row.insert("currencyCode".into(), json!(currency.to_ascii_uppercase()));
        }
    }
    row.insert("orderId".into(), json!(event.event_id));
    let mut consent = Map::new();
    if let Some(c) = config.ad_user_data_consent {
        consent.insert("adUserData".into(), json!(c));
    }
    if let Some(c) = config.ad_personalization_consent {
        consent.insert("adPersonalization".into(), json!(c));
    }
    if !consent.is_empty() {
        row.insert("consent".into(), Value::Object(consent));
    }
    Ok(Value::Object(row))
}

#[derive(Deserialize)]
struct AdjustedConversion {
    event_id: String,
    name: String,
    occurred_at: i64,
    value: Option<String>,
}

/// One adjustment row per conversion the correction adjusts: RETRACTION for a full
/// refund (or an early cancellation), RESTATEMENT to what is left after a partial
/// refund. Each identified by the original's `orderId` (our event id).
pub fn adjustment(
    event: &CanonicalEvent,
    config: &GoogleAdsConfig,
    now: i64,
) -> Result<Vec<Value>, BuildError> {
    let not_applicable = |why: &str| BuildError::NotApplicable {
        destination: NAME,
        reason: why.to_string(),
    };
    let targets: Vec<AdjustedConversion> = event
        .property(ADJUSTS)
        .and_then(|list| serde_json::from_str(list).ok())
        .filter(|list: &Vec<AdjustedConversion>| !list.is_empty())
        .ok_or_else(|| {
            not_applicable(
                "no conversion of this subscription was uploaded to Google Ads, so there is nothing to adjust",
            )
        })?;
    let mut rows = Vec::with_capacity(targets.len());
    for target in targets {
        let original_name = EventName::parse(&target.name)
            .ok_or_else(|| not_applicable("the corrected conversion is no longer mapped"))?;
        let action = config
            .action_resource(original_name)
            .ok_or_else(|| not_applicable("the corrected conversion is no longer mapped"))?;
        let original_at = target.occurred_at;
        // Google requires the adjustment to come after the conversion.
        let adjusted_at = event
            .occurred_at
            .clamp(original_at + 1, now.max(original_at + 1));
        let mut row = json!({
            "conversionAction": action,
            "orderId": target.event_id,
            "adjustmentDateTime": date_time(adjusted_at),
        });
        match event.name {
            EventName::SubscriptionCancelled => {
                let window_days = config.retract_cancellations_within_days.unwrap_or(0);
                if event.occurred_at - original_at > i64::from(window_days) * 86_400 {
                    return Err(not_applicable(&format!(
                        "cancelled more than {window_days} days after the conversion; kept as is"
                    )));
                }
                row["adjustmentType"] = json!("RETRACTION");
            }
            _ => {
                let original = target.value.as_deref().and_then(Amount::parse_decimal);
                let refunded = event
                    .values
                    .gross_value
                    .or(event.values.net_value)
                    .map(|a| a.minor.abs());
                match (original, refunded) {
                    (Some(original), Some(refunded)) if refunded < original.minor => {
                        let remaining = Amount {
                            minor: original.minor - refunded,
                            exponent: original.exponent,
                        };
                        row["adjustmentType"] = json!("RESTATEMENT");
                        row["restatementValue"] = json!({
                            "adjustedValue": remaining.as_f64(),
                            "currencyCode": event.values.currency.as_deref().unwrap_or("USD").to_ascii_uppercase(),
                        });
                    }
                    _ => row["adjustmentType"] = json!("RETRACTION"),
                }
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

fn token_request(
    merchant: &MerchantConfig,
    context: &BuildContext,
) -> Result<OutboundRequest, BuildError> {
    let config: GoogleAdsConfig = merchant.destination_config(NAME)?;
    let operator = context.operator;
    let (Some(client_id), Some(client_secret)) = (
        operator.get(OAUTH_CLIENT_ID),
        operator.get(OAUTH_CLIENT_SECRET),
    ) else {
        return Err(BuildError::OperatorMisconfigured(
            "GOOGLE_OAUTH_CLIENT_ID and GOOGLE_OAUTH_CLIENT_SECRET must be set",
        ));
    };
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", client_id),
        ("client_secret", client_secret),
        ("refresh_token", config.refresh_token.as_str()),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", super::encode_query_value(v)))
    .collect::<Vec<_>>()
    .join("&");
    Ok(OutboundRequest {
        method: "POST",
        url: context.endpoints.url(&OAUTH_TOKEN).to_string(),
        log_url: context.endpoints.url(&OAUTH_TOKEN).to_string(),
        headers: vec![(
            "content-type".into(),
            "application/x-www-form-urlencoded".into(),
        )],
        body: form,
    })
}

fn parse_token(status: u16, body: &str) -> Result<AccessToken, Outcome> {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        let token = parsed.get("access_token").and_then(Value::as_str);
        let expires = parsed
            .get("expires_in")
            .and_then(Value::as_i64)
            .unwrap_or(3600);
        return match token {
            Some(token) if !token.is_empty() => Ok(AccessToken {
                token: token.to_string(),
                expires_in_s: expires,
            }),
            _ => Err(Outcome::Retry {
                after_seconds: None,
                reason: "Google OAuth answered without an access token".into(),
            }),
        };
    }
    let error = parsed.get("error").and_then(Value::as_str).unwrap_or("-");
    let description = parsed
        .get("error_description")
        .and_then(Value::as_str)
        .unwrap_or("");
    let reason = format!(
        "Google OAuth HTTP {status}: {error} {}",
        truncate(description, 200)
    );
    Err(match (status, error) {
        (_, "invalid_grant") => Outcome::Permanent {
            reason: format!("{reason} (the merchant must reconnect Google Ads)"),
        },
        (429, _) | (500..=599, _) => Outcome::Retry {
            after_seconds: None,
            reason,
        },
        _ => Outcome::Permanent { reason },
    })
}

/// Row-level error codes → outcome.
fn classify_code(code: &str, message: &str) -> Outcome {
    let reason = format!("google_ads {code}: {}", truncate(message, 300));
    match code {
        "TOO_RECENT_EVENT"
        | "TOO_RECENT_CONVERSION_ACTION"
        | "TOO_RECENT_CONVERSION"
        | "CONVERSION_NOT_FOUND" => Outcome::Retry {
            after_seconds: Some(RETRY_LATER_SECONDS),
            reason,
        },
        // Our orderId is already there: an earlier attempt landed.
        "ORDER_ID_ALREADY_IN_USE"
        | "CLICK_CONVERSION_ALREADY_EXISTS"
        | "CONVERSION_ALREADY_RETRACTED" => Outcome::AlreadyDelivered,
        "RESOURCE_EXHAUSTED" | "INTERNAL_ERROR" | "TRANSIENT_ERROR" => Outcome::Retry {
            after_seconds: None,
            reason,
        },
        _ => Outcome::Permanent { reason },
    }
}

/// The first `errorCode` value of a Google Ads error object, e.g. `TOO_RECENT_EVENT`.
fn error_code(error: &Value) -> String {
    error
        .get("errorCode")
        .and_then(Value::as_object)
        .and_then(|codes| codes.values().next())
        .and_then(Value::as_str)
        .unwrap_or("UNKNOWN")
        .to_string()
}

fn failure_errors(status_object: &Value) -> Vec<Value> {
    status_object
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|detail| detail.get("errors").and_then(Value::as_array))
        .flatten()
        .cloned()
        .collect()
}

/// A 200 with `partialFailureError`: rows named in its errors failed, the others landed.
fn classify_rows(status: u16, body: &str, rows: usize) -> Option<Vec<Outcome>> {
    if !(200..300).contains(&status) {
        return None;
    }
    let parsed: Value = serde_json::from_str(body).ok()?;
    let mut outcomes = vec![Outcome::Delivered; rows];
    let Some(failure) = parsed
        .get("partialFailureError")
        .filter(|f| f.get("code").and_then(Value::as_i64).unwrap_or(0) != 0)
    else {
        return Some(outcomes);
    };
    let errors = failure_errors(failure);
    if errors.is_empty() {
        // A failure we cannot place: do not claim any row landed.
        let message = failure.get("message").and_then(Value::as_str).unwrap_or("");
        return Some(vec![classify_code("UNKNOWN", message); rows]);
    }
    for error in errors {
        let index = error
            .pointer("/location/fieldPathElements")
            .and_then(Value::as_array)
            .and_then(|path| path.iter().find_map(|e| e.get("index")?.as_u64()));
        let outcome = classify_code(
            &error_code(&error),
            error.get("message").and_then(Value::as_str).unwrap_or(""),
        );
        match index.and_then(|i| usize::try_from(i).ok()) {
            Some(i) if i < rows => {
                // Keep the most serious verdict when a row has several errors.
                if !matches!(outcomes[i], Outcome::Permanent { .. }) {
                    outcomes[i] = outcome;
                }
            }
            _ => return Some(vec![outcome; rows]),
        }
    }
    Some(outcomes)
}

/// Whole-request answers (non-2xx): auth, quota, server faults.
fn classify(status: u16, retry_after: Option<&str>, body: &str) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Delivered;
    }
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let error = parsed.get("error").cloned().unwrap_or(Value::Null);
    let code = failure_errors(&error)
        .first()
        .map(error_code)
        .or_else(|| {
            error
                .get("status")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "-".into());
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| truncate(body.trim(), 200));
    let reason = format!(
        "HTTP {status}, google_ads {code}: {}",
        truncate(&message, 300)
    );
    match status {
        // An expired or revoked access token: the edge drops its cached token first.
        401 => Outcome::Retry {
            after_seconds: None,
            reason,
        },
        429 | 500..=599 => Outcome::Retry {
            after_seconds: parse_retry_after(retry_after),
            reason,
        },
        _ => Outcome::Permanent { reason },
    }
}

/// The customer's API base URL and the headers every call on it carries: the OAuth
/// token, TrackLayer's developer token and, through a manager account, its id.
fn customer_request(
    config: &GoogleAdsConfig,
    context: &BuildContext,
) -> Result<(String, Vec<(String, String)>), BuildError> {
    let developer_token =
        context
            .operator
            .get(DEVELOPER_TOKEN)
            .ok_or(BuildError::OperatorMisconfigured(
                "GOOGLE_ADS_DEVELOPER_TOKEN is not set",
            ))?;
    let access_token = context
        .access_token
        .ok_or(BuildError::Misconfigured(NAME))?;
    let base = format!(
        "{}/{}/customers/{}",
        context.endpoints.url(&API),
        config.api_version,
        config.customer_id.0
    );
    let mut headers = vec![
        (
            "authorization".to_string(),
            format!("Bearer {access_token}"),
        ),
        ("developer-token".to_string(), developer_token.to_string()),
        ("content-type".to_string(), "application/json".to_string()),
    ];
    if let Some(manager) = &config.login_customer_id {
        headers.push(("login-customer-id".into(), manager.0.clone()));
    }
    Ok((base, headers))
}

/// `POST /{version}/customers/{id}/campaigns:mutate`: each named campaign's status set
/// to `PAUSED` (update mask `status`), nothing else touched.
fn pause_campaigns(
    merchant: &MerchantConfig,
    context: &BuildContext,
    campaign_ids: &[String],
) -> Result<OutboundRequest, BuildError> {
    let config: GoogleAdsConfig = merchant.destination_config(NAME)?;
    let (base, headers) = customer_request(&config, context)?;
    let customer = &config.customer_id.0;
    let operations: Vec<serde_json::Value> = campaign_ids
        .iter()
        .map(|id| {
            serde_json::json!({
                "update": { "resourceName": format!("customers/{customer}/campaigns/{id}"), "status": "PAUSED" },
                "updateMask": "status",
            })
        })
        .collect();
    let url = format!("{base}/campaigns:mutate");
    Ok(OutboundRequest {
        method: "POST",
        log_url: url.clone(),
        url,
        headers,
        body: serde_json::json!({ "operations": operations }).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Plan as PricingPlan;
    use crate::destinations::{build_for_test, Endpoints};
    use crate::event::{tests_support, Values};
    use crate::identity::Touchpoints;

    const NOW: i64 = 1_795_300_000;

    fn merchant(extra: Value) -> MerchantConfig {
        let mut config = json!({
            "customer_id": "123-456-7890",
            "refresh_token": "1//0refresh",
            "conversion_actions": {
                "trial_converted": "987654321",
                "subscription_started": "customers/1234567890/conversionActions/987654322"
            }
        });
        if let (Some(base), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
            base.extend(extra.clone());
        }
        let mut m = MerchantConfig {
            merchant_id: "m_1".into(),
            plan: PricingPlan::Scale,
            ..MerchantConfig::default()
        };
        m.destinations.insert(NAME.into(), config);
        m
    }

    fn conversion() -> CanonicalEvent {
        let mut e = tests_support::event();
        e.event_id = "tl_0123456789abcdef0123456789abcdef".into();
        e.name = EventName::TrialConverted;
        e.occurred_at = NOW - 3600;
        e.customer.email = Some(" Jane.Doe@GMail.com".into());
        e.customer.customer_id = Some("cus_ABC".into());
        e.values = Values {
            currency: Some("usd".into()),
            mrr: Some(Amount::from_minor(4900, "usd")),
            net_value: Some(Amount::from_minor(4900, "usd")),
            ..Values::default()
        };
        e.touchpoints = Touchpoints {
            gclid: Some("Cj0KCQiA1234".into()),
            phone: Some("+1 (616) 954-7888".into()),
            ..Touchpoints::default()
        };
        e
    }

    #[test]
    fn golden_click_conversion() {
        let req = build_for_test(
            build,
            &[conversion()],
            &merchant(json!({})),
            &Endpoints::default(),
            NOW,
        )
        .unwrap();
        assert_eq!(
            req.url,
            format!("https://googleads.googleapis.com/{DEFAULT_API_VERSION}/customers/1234567890:uploadClickConversions")
        );
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            header("authorization"),
            Some("Bearer ya29.test-access-token")
        );
        assert_eq!(header("developer-token"), Some("DEVTOKEN123"));
        assert_eq!(header("login-customer-id"), None);
        let body: Value = serde_json::from_str(&req.body).unwrap();
        assert_eq!(
            body,
            json!({
                "conversions": [{
                    "conversionAction": "customers/1234567890/conversionActions/987654321",
                    "gclid": "Cj0KCQiA1234",
                    "userIdentifiers": [
                        { "hashedEmail": "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69" },
                        { "hashedPhoneNumber": "0a36809ca24463df1133c40c2e2fa2b7f180038fe7d86bd1923a32a1a54dfe58" }
                    ],
                    "conversionDateTime": date_time(NOW - 3600),
                    "conversionValue": 49.0,
                    "currencyCode": "USD",
                    "orderId": "tl_0123456789abcdef0123456789abcdef"
                }],
                "partialFailure": true
            })
        );
        assert_eq!(date_time(1_795_296_400), "2026-11-21 21:26:40+00:00");
    }

    #[test]
    fn braid_ids_go_without_user_identifiers_and_no_identity_is_refused() {
        let mut e = conversion();
        e.touchpoints.gclid = None;
        e.touchpoints.gbraid = Some("0AAAAA-gbraid".into());
        let req = build_for_test(
            build,
            &[e.clone()],
            &merchant(json!({})),
            &Endpoints::default(),
            NOW,
        )
        .unwrap();
        let body: Value = serde_json::from_str(&req.body).unwrap();
        assert_eq!(body["conversions"][0]["gbraid"], "0AAAAA-gbraid");
        assert!(body["conversions"][0].get("userIdentifiers").is_none());

        e.touchpoints = Touchpoints::default();
        e.customer.email = None;
        assert_eq!(
            build_for_test(
                build,
                &[e],
                &merchant(json!({})),
                &Endpoints::default(),
                NOW
            ),
            Err(BuildError::NoClickOrIdentity(NAME))
        );
    }

    #[test]
    fn manager_account_header_needs_scale() {
        let mut m = merchant(json!({ "login_customer_id": "111-222-3333" }));
        let req = build_for_test(build, &[conversion()], &m, &Endpoints::default(), NOW).unwrap();
        assert!(req
            .headers
            .contains(&("login-customer-id".into(), "1112223333".into())));
        m.plan = PricingPlan::Starter;
        assert!(matches!(
            build_for_test(build, &[conversion()], &m, &Endpoints::default(), NOW),
            Err(BuildError::Invalid { .. })
        ));
    }

    fn refund(refunded_minor: i64) -> CanonicalEvent {
        let mut r = tests_support::event();
        r.name = EventName::Refund;
        r.occurred_at = NOW - 60;
        r.values = Values {
            currency: Some("usd".into()),
            gross_value: Some(Amount::from_minor(refunded_minor, "usd")),
            ..Values::default()
        };
        attach_originals(&mut r, &[conversion()], &merchant(json!({})));
        r
    }

    #[test]
    fn refunds_restate_or_retract_by_order_id() {
        let partial = build_for_test(
            build,
            &[refund(1900)],
            &merchant(json!({})),
            &Endpoints::default(),
            NOW,
        )
        .unwrap();
        assert!(partial
            .url
            .ends_with("/customers/1234567890:uploadConversionAdjustments"));
        let body: Value = serde_json::from_str(&partial.body).unwrap();
        assert_eq!(
            body,
            json!({
                "conversionAdjustments": [{
                    "conversionAction": "customers/1234567890/conversionActions/987654321",
                    "orderId": "tl_0123456789abcdef0123456789abcdef",
                    "adjustmentDateTime": date_time(NOW - 60),
                    "adjustmentType": "RESTATEMENT",
                    "restatementValue": { "adjustedValue": 30.0, "currencyCode": "USD" }
                }],
                "partialFailure": true
            })
        );
        let full = build_for_test(
            build,
            &[refund(4900)],
            &merchant(json!({})),
            &Endpoints::default(),
            NOW,
        )
        .unwrap();
        let body: Value = serde_json::from_str(&full.body).unwrap();
        assert_eq!(
            body["conversionAdjustments"][0]["adjustmentType"],
            "RETRACTION"
        );
        assert!(body["conversionAdjustments"][0]
            .get("restatementValue")
            .is_none());

        let mut orphan = refund(100);
        orphan.properties.clear();
        assert!(matches!(
            build_for_test(
                build,
                &[orphan],
                &merchant(json!({})),
                &Endpoints::default(),
                NOW
            ),
            Err(BuildError::NotApplicable { .. })
        ));
    }

    fn conversion_at(name: EventName, at: i64, id: &str) -> CanonicalEvent {
        let mut c = conversion();
        c.name = name;
        c.occurred_at = at;
        c.event_id = id.into();
        c
    }

    fn cancellation(at: i64) -> CanonicalEvent {
        let mut cancel = tests_support::event();
        cancel.name = EventName::SubscriptionCancelled;
        cancel.occurred_at = at;
        cancel
    }

    /// A correction handled before its conversion was recorded `skipped` for good.
    #[test]
    fn a_correction_waits_for_its_conversion_and_skips_only_when_it_failed() {
        let config: GoogleAdsConfig = merchant(json!({ "retract_cancellations_within_days": 7 }))
            .destination_config(NAME)
            .unwrap();
        let start = conversion_at(EventName::SubscriptionStarted, NOW - 3 * 86_400, "tl_start");
        let cancel = cancellation(NOW);
        {
            let state = UploadState::Pending;
            assert!(matches!(
                plan_correction(&cancel, &[(start.clone(), state)], &config),
                CorrectionPlan::Wait(_)
            ));
        }
        match plan_correction(
            &cancel,
            &[(start.clone(), UploadState::DeadLettered)],
            &config,
        ) {
            CorrectionPlan::Skip(reason) => assert!(reason.contains("dead-lettered"), "{reason}"),
            other => panic!("{other:?}"),
        }
        match plan_correction(&cancel, &[(start.clone(), UploadState::NotSent)], &config) {
            CorrectionPlan::Skip(reason) => assert!(reason.contains("never sent"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            plan_correction(&cancel, &[], &config),
            CorrectionPlan::Skip(_)
        ));
        assert_eq!(
            plan_correction(&cancel, &[(start.clone(), UploadState::Delivered)], &config),
            CorrectionPlan::Adjust(vec![start])
        );
    }

    /// A cancellation retracts every conversion of the subscription inside the window,
    /// not just the newest; older ones are kept.
    #[test]
    fn a_cancellation_retracts_every_conversion_inside_the_window() {
        let m = merchant(json!({ "retract_cancellations_within_days": 7 }));
        let config: GoogleAdsConfig = m.destination_config(NAME).unwrap();
        let old = conversion_at(EventName::SubscriptionStarted, NOW - 40 * 86_400, "tl_old");
        let upgrade = conversion_at(
            EventName::SubscriptionStarted,
            NOW - 5 * 86_400,
            "tl_upgrade",
        );
        let renewal = conversion_at(EventName::SubscriptionStarted, NOW - 86_400, "tl_renewal");
        let cancel = cancellation(NOW);
        let candidates = [
            (renewal.clone(), UploadState::Delivered),
            (upgrade.clone(), UploadState::Delivered),
            (old, UploadState::Delivered),
        ];
        let CorrectionPlan::Adjust(targets) = plan_correction(&cancel, &candidates, &config) else {
            panic!("expected adjustments");
        };
        assert_eq!(targets, vec![renewal, upgrade]);
        let mut adjusted = cancel.clone();
        attach_originals(&mut adjusted, &targets, &m);
        let req = build_for_test(build, &[adjusted], &m, &Endpoints::default(), NOW).unwrap();
        let body: Value = serde_json::from_str(&req.body).unwrap();
        let rows = body["conversionAdjustments"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["orderId"], "tl_renewal");
        assert_eq!(rows[1]["orderId"], "tl_upgrade");
        assert!(rows.iter().all(|r| r["adjustmentType"] == "RETRACTION"));
        // Outside the window: kept, nothing to retract.
        let late = cancellation(NOW + 30 * 86_400);
        assert!(matches!(
            plan_correction(&late, &candidates, &config),
            CorrectionPlan::Skip(_)
        ));
    }

    /// A refund restates the conversion of the refunded invoice, not the newest one.
    #[test]
    fn a_refund_adjusts_the_conversion_of_its_invoice() {
        let config: GoogleAdsConfig = merchant(json!({})).destination_config(NAME).unwrap();
        let mut first = conversion_at(EventName::SubscriptionStarted, NOW - 60 * 86_400, "tl_inv1");
        first.properties.insert("invoice_id".into(), "in_1".into());
        let mut second =
            conversion_at(EventName::SubscriptionStarted, NOW - 30 * 86_400, "tl_inv2");
        second.properties.insert("invoice_id".into(), "in_2".into());
        let mut refund = tests_support::event();
        refund.name = EventName::Refund;
        refund.occurred_at = NOW;
        refund.properties.insert("invoice_id".into(), "in_1".into());
        let candidates = [
            (second.clone(), UploadState::Delivered),
            (first.clone(), UploadState::Delivered),
        ];
        assert_eq!(
            plan_correction(&refund, &candidates, &config),
            CorrectionPlan::Adjust(vec![first])
        );
        refund.properties.remove("invoice_id");
        assert_eq!(
            plan_correction(&refund, &candidates, &config),
            CorrectionPlan::Adjust(vec![second])
        );
    }

    #[test]
    fn cancellations_retract_only_inside_the_window() {
        let m = merchant(json!({ "retract_cancellations_within_days": 7 }));
        let mut cancel = tests_support::event();
        cancel.name = EventName::SubscriptionCancelled;
        cancel.occurred_at = NOW - 60;
        attach_originals(&mut cancel, &[conversion()], &m);
        assert!(accepts(&cancel, &m));
        assert!(!accepts(&cancel, &merchant(json!({}))));
        let req = build_for_test(build, &[cancel.clone()], &m, &Endpoints::default(), NOW).unwrap();
        assert!(req.body.contains("RETRACTION"));
        cancel.occurred_at = NOW + 30 * 86_400;
        assert!(matches!(
            build_for_test(
                build,
                &[cancel],
                &m,
                &Endpoints::default(),
                NOW + 30 * 86_400
            ),
            Err(BuildError::NotApplicable { .. })
        ));
    }

    #[test]
    fn a_mixed_batch_splits_by_endpoint_and_keeps_row_order() {
        let operator =
            crate::destinations::OperatorCredentials::default().with(DEVELOPER_TOKEN, "DEV");
        let endpoints = Endpoints::default();
        let context = BuildContext {
            endpoints: &endpoints,
            operator: &operator,
            now_s: NOW,
            access_token: Some("tok"),
        };
        let mut second = conversion();
        second.event_id = "tl_second".into();
        let mut no_identity = conversion();
        no_identity.touchpoints = Touchpoints::default();
        no_identity.customer.email = None;
        let events = [conversion(), refund(4900), no_identity, second];
        let plan = build(&events, &merchant(json!({})), &context).unwrap();
        assert_eq!(plan.requests.len(), 2);
        assert_eq!(plan.requests[0].rows, vec![0, 3]);
        assert_eq!(plan.requests[1].rows, vec![1]);
        assert_eq!(plan.refused.len(), 1);
        assert_eq!(plan.refused[0].0, 2);
    }

    #[test]
    fn partial_failure_is_mapped_to_rows() {
        let body = json!({
            "partialFailureError": {
                "code": 3,
                "message": "Partial failure",
                "details": [{
                    "@type": "type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure",
                    "errors": [
                        { "errorCode": { "conversionUploadError": "TOO_RECENT_EVENT" },
                          "message": "The click associated with the given identifier is too recent.",
                          "location": { "fieldPathElements": [ { "fieldName": "conversions", "index": 1 } ] } },
                        { "errorCode": { "conversionUploadError": "UNPARSEABLE_GCLID" },
                          "message": "The imported gclid could not be decoded.",
                          "location": { "fieldPathElements": [ { "fieldName": "conversions", "index": 2 }, { "fieldName": "gclid" } ] } },
                        { "errorCode": { "conversionUploadError": "ORDER_ID_ALREADY_IN_USE" },
                          "message": "Order id already in use.",
                          "location": { "fieldPathElements": [ { "fieldName": "conversions", "index": 3 } ] } }
                    ]
                }]
            },
            "results": [ { "gclid": "a", "conversionAction": "x" }, {}, {}, {} ]
        })
        .to_string();
        let outcomes = classify_rows(200, &body, 4).unwrap();
        assert_eq!(outcomes[0], Outcome::Delivered);
        assert_eq!(
            outcomes[1],
            Outcome::Retry {
                after_seconds: Some(RETRY_LATER_SECONDS),
                reason: "google_ads TOO_RECENT_EVENT: The click associated with the given identifier is too recent.".into()
            }
        );
        assert!(
            matches!(&outcomes[2], Outcome::Permanent { reason } if reason.contains("UNPARSEABLE_GCLID"))
        );
        assert_eq!(outcomes[3], Outcome::AlreadyDelivered);
        // No partial failure: every row landed.
        assert_eq!(
            classify_rows(200, r#"{"results":[{},{}]}"#, 2),
            Some(vec![Outcome::Delivered; 2])
        );
    }

    #[test]
    fn whole_request_answers() {
        let denied = json!({ "error": { "code": 403, "status": "PERMISSION_DENIED",
            "message": "The caller does not have permission",
            "details": [{ "@type": "type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure",
                          "errors": [{ "errorCode": { "authorizationError": "DEVELOPER_TOKEN_NOT_APPROVED" }, "message": "not approved" }] }] } });
        assert!(matches!(classify(403, None, &denied.to_string()),
            Outcome::Permanent { reason } if reason.contains("DEVELOPER_TOKEN_NOT_APPROVED")));
        assert!(matches!(classify(401, None, "{}"), Outcome::Retry { .. }));
        assert!(matches!(
            classify(429, Some("30"), "{}"),
            Outcome::Retry {
                after_seconds: Some(30),
                ..
            }
        ));
    }

    #[test]
    fn named_campaigns_are_paused_by_a_status_only_mutate() {
        let operator =
            crate::destinations::OperatorCredentials::default().with(DEVELOPER_TOKEN, "DEV");
        let endpoints = Endpoints::default();
        let context = BuildContext {
            endpoints: &endpoints,
            operator: &operator,
            now_s: NOW,
            access_token: Some("ya29.token"),
        };
        let req = pause_campaigns(
            &merchant(json!({})),
            &context,
            &["111".into(), "222".into()],
        )
        .unwrap();
        assert_eq!(
            req.url,
            format!("https://googleads.googleapis.com/{DEFAULT_API_VERSION}/customers/1234567890/campaigns:mutate")
        );
        let body: Value = serde_json::from_str(&req.body).unwrap();
        assert_eq!(
            body,
            json!({ "operations": [
                { "update": { "resourceName": "customers/1234567890/campaigns/111", "status": "PAUSED" }, "updateMask": "status" },
                { "update": { "resourceName": "customers/1234567890/campaigns/222", "status": "PAUSED" }, "updateMask": "status" }
            ]})
        );
        assert!(req
            .headers
            .contains(&("developer-token".into(), "DEV".into())));
    }

    #[test]
    fn oauth_refresh_request_and_answers() {
        let operator = crate::destinations::OperatorCredentials::default()
            .with(OAUTH_CLIENT_ID, "cid.apps.googleusercontent.com")
            .with(OAUTH_CLIENT_SECRET, "s3cr/t");
        let endpoints = Endpoints::default();
        let context = BuildContext {
            endpoints: &endpoints,
            operator: &operator,
            now_s: NOW,
            access_token: None,
        };
        let req = token_request(&merchant(json!({})), &context).unwrap();
        assert_eq!(req.url, DEFAULT_TOKEN_URL);
        assert_eq!(
            req.body,
            "grant_type=refresh_token&client_id=cid.apps.googleusercontent.com&client_secret=s3cr%2Ft&refresh_token=1%2F%2F0refresh"
        );
        assert_eq!(
            parse_token(
                200,
                r#"{"access_token":"ya29.a0","expires_in":3599,"token_type":"Bearer"}"#
            ),
            Ok(AccessToken {
                token: "ya29.a0".into(),
                expires_in_s: 3599
            })
        );
        assert!(matches!(
            parse_token(400, r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#),
            Err(Outcome::Permanent { reason }) if reason.contains("reconnect")
        ));
        assert!(matches!(parse_token(503, ""), Err(Outcome::Retry { .. })));
        let missing = crate::destinations::OperatorCredentials::default();
        let context = BuildContext {
            operator: &missing,
            ..context
        };
        assert!(matches!(
            token_request(&merchant(json!({})), &context),
            Err(BuildError::OperatorMisconfigured(_))
        ));
    }

    #[test]
    fn config_is_validated_when_stored() {
        let check = crate::config::check_config::<GoogleAdsConfig>;
        assert!(
            check(&json!({ "customer_id": "123-456-789", "refresh_token": "r",
            "conversion_actions": { "trial_converted": "1" } }))
            .is_err()
        );
        assert!(
            check(&json!({ "customer_id": "1234567890", "refresh_token": "r",
            "conversion_actions": { "refund": "1" } }))
            .is_err()
        );
        assert!(
            check(&json!({ "customer_id": "1234567890", "refresh_token": "r",
            "conversion_actions": { "trial_converted": "abc" } }))
            .is_err()
        );
        assert!(
            check(&json!({ "customer_id": "1234567890", "refresh_token": "r",
            "conversion_actions": { "trial_converted": "1" }, "ad_user_data_consent": "GRANTED" }))
            .is_ok()
        );
    }
}
