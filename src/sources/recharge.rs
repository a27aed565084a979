//! Recharge webhooks: both signature schemes and lifecycle mapping.
//!
//! - Legacy `X-Recharge-Hmac-Sha256`: hex SHA-256 of `client_secret ‖ raw body`. Not an
//!   HMAC and not timestamped. <https://docs.getrecharge.com/docs/webhooks-overview>
//! - Newer `X-Recharge-Webhook-Signature: t=<unix>,v1=<hex>`: HMAC-SHA256 over
//!   `"{t}.{raw body}"`, checked against `tolerance_seconds` (default 300 s).
//!
//! The legacy scheme is refused unless a merchant sets `accept_legacy_signature`: a
//! hash of a secret prefix is open to length extension.
//! Payloads are the REST resource wrapped in its key (`{"subscription": {…}}`); money is a
//! major-unit decimal string. There is no event id: the dedup key is
//! `topic:resource:id:updated_at`. The topic comes from `X-Recharge-Topic`, else a `topic`
//! query parameter on the webhook URL, else the resource's status.

use super::signature::{verify_prefixed_sha256, TimestampedHmac};
use super::{malformed, non_empty, parse_json, Notice, SourceOutput, SourceSpec, WebhookRequest};
use super::{CustomerRecord, SubscriptionObservation};
use crate::config::MerchantConfig;
use crate::error::{IngestError, VerifyError};
use crate::event::{EventName, Values};
use crate::money::{recurring_from_period, Amount, Interval};
use crate::time::parse_timestamp_utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const NAME: &str = "recharge";
pub const LEGACY_HEADER: &str = "X-Recharge-Hmac-Sha256";
pub const SIGNATURE_HEADER: &str = "X-Recharge-Webhook-Signature";
pub const TOPIC_HEADER: &str = "X-Recharge-Topic";
pub const DEFAULT_TOLERANCE_SECONDS: i64 = 300;

pub const SPEC: SourceSpec = SourceSpec {
    name: NAME,
    ingest,
    secret_fields: &["client_secrets"],
    validate_config: crate::config::check_config::<Config>,
    conversion_siblings: None,
    ..SourceSpec::DEFAULT
};

/// Recharge settings: the API client secret(s) that sign webhooks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub client_secrets: Vec<String>,
    #[serde(default = "default_tolerance")]
    pub tolerance_seconds: i64,
    /// Accept the untimestamped legacy header, SHA-256(secret ‖ body). Off by default:
    /// a plain hash of a secret prefix is open to length extension, so one genuine
    /// webhook lets anyone forge a longer body that still verifies.
    #[serde(default)]
    pub accept_legacy_signature: bool,
}

fn default_tolerance() -> i64 {
    DEFAULT_TOLERANCE_SECONDS
}

const SCHEME: TimestampedHmac = TimestampedHmac {
    header: SIGNATURE_HEADER,
    part_separator: ',',
    timestamp_key: "t",
    signature_key: "v1",
    signed_separator: ".",
    no_timestamp: "no t= timestamp",
    bad_timestamp: "t= is not a unix timestamp",
    no_signature: "no v1= signature",
};

fn ingest(
    merchant: &MerchantConfig,
    request: &WebhookRequest,
    now: i64,
) -> Result<Vec<SourceOutput>, IngestError> {
    let config: Config = merchant.source_config(NAME)?;
    verify(request, &config, now)?;
    let topic = request
        .headers
        .get(TOPIC_HEADER)
        .map(str::to_string)
        .or_else(|| {
            url::Url::parse(request.url).ok().and_then(|url| {
                url.query_pairs()
                    .find(|(k, _)| k == "topic")
                    .map(|(_, v)| v.into_owned())
            })
        });
    Ok(vec![map_event(
        &merchant.merchant_id,
        topic.as_deref(),
        request.body,
    )?])
}

fn verify(request: &WebhookRequest, config: &Config, now: i64) -> Result<(), VerifyError> {
    let secrets: Vec<&str> = config.client_secrets.iter().map(String::as_str).collect();
    if let Some(header) = request.headers.get(SIGNATURE_HEADER) {
        return SCHEME.verify(
            Some(header),
            request.body,
            &secrets,
            now,
            config.tolerance_seconds,
        );
    }
    if !config.accept_legacy_signature {
        return Err(VerifyError::MissingHeader {
            header: SIGNATURE_HEADER,
        });
    }
    verify_prefixed_sha256(
        LEGACY_HEADER,
        request.headers.get(LEGACY_HEADER),
        &[request.body],
        &config.client_secrets,
    )
}

/// The legacy header value: hex SHA-256 of secret then body.
pub fn sign_legacy(secret: &str, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(secret.as_bytes());
    hasher.update(body);
    hex::encode(hasher.finalize())
}

/// The newer timestamped header value.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    SCHEME.sign(secret, timestamp, body)
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn field<'a>(object: &'a Value, name: &str) -> Option<&'a Value> {
    object.get(name).filter(|v| !v.is_null())
}

/// Major-unit money field ("29.00", or a number in some API versions).
fn money(object: &Value, name: &str, currency: &str) -> Result<Option<Amount>, IngestError> {
    let Some(raw) = text(field(object, name)) else {
        return Ok(None);
    };
    Amount::from_major_str(&raw, currency)
        .map(Some)
        .ok_or_else(|| malformed(format!("{name} {raw:?} is not an amount in {currency}")))
}

fn timestamp(object: &Value, name: &str) -> Option<i64> {
    field(object, name)
        .and_then(Value::as_str)
        .and_then(parse_timestamp_utc)
}

/// Maps a verified Recharge notification.
pub fn map_event(
    merchant_id: &str,
    topic: Option<&str>,
    body: &[u8],
) -> Result<SourceOutput, IngestError> {
    let payload: Value = parse_json(body)?;
    let (resource, object) = ["subscription", "charge", "customer", "order"]
        .into_iter()
        .find_map(|key| payload.get(key).filter(|v| v.is_object()).map(|v| (key, v)))
        .ok_or_else(|| malformed("no subscription, charge, customer or order object"))?;
    let id =
        text(field(object, "id")).ok_or_else(|| malformed(format!("{resource}.id missing")))?;
    let status = text(field(object, "status"))
        .unwrap_or_default()
        .to_ascii_lowercase();
    let topic = match topic {
        Some(topic) => topic.to_string(),
        None => inferred_topic(resource, &status),
    };
    let updated_at = text(field(object, "updated_at")).unwrap_or_default();
    let notice = Notice {
        merchant_id,
        source: NAME,
        event_id: format!("{topic}:{resource}:{id}:{updated_at}"),
        event_type: topic.clone(),
        occurred_at: timestamp(object, "updated_at")
            .or_else(|| timestamp(object, "created_at"))
            .ok_or_else(|| malformed(format!("{resource}.updated_at is not a timestamp")))?,
        livemode: true,
    };
    match resource {
        "subscription" => subscription(&notice, &id, object, &status),
        "charge" => charge(&notice, &id, object, &status),
        "customer" => {
            let mut output = notice.output(format!("customer:{id}"));
            output.customer = Some(CustomerRecord {
                customer_id: id,
                email: non_empty(field(object, "email").and_then(Value::as_str)),
                observed_at: notice.occurred_at,
            });
            Ok(output)
        }
        _ => Ok(notice.ignored(
            format!("{resource}:{id}"),
            format!("recharge {topic} is not a subscription lifecycle event"),
        )),
    }
}

/// Without a topic, the resource's status tells the lifecycle step apart.
fn inferred_topic(resource: &str, status: &str) -> String {
    let action = match (resource, status) {
        ("subscription", "cancelled" | "expired") => "cancelled",
        ("subscription", _) => "updated",
        ("charge", "success") => "paid",
        ("charge", "error") => "failed",
        ("charge", "refunded" | "partially_refunded") => "refunded",
        (_, _) => "updated",
    };
    format!("{resource}/{action}")
}

fn subscription(
    notice: &Notice,
    id: &str,
    sub: &Value,
    status: &str,
) -> Result<SourceOutput, IngestError> {
    let name = match notice.event_type.as_str() {
        "subscription/created" => EventName::SubscriptionStarted,
        "subscription/activated" => EventName::SubscriptionReactivated,
        "subscription/cancelled" | "subscription/deleted" => EventName::SubscriptionCancelled,
        "subscription/paused" => EventName::SubscriptionPaused,
        "subscription/updated" => EventName::SubscriptionUpdated,
        other => {
            return Ok(notice.ignored(
                format!("subscription:{id}"),
                format!("recharge {other} is not mapped"),
            ))
        }
    };
    let currency = text(field(sub, "presentment_currency"))
        .or_else(|| text(field(sub, "currency")))
        .unwrap_or_else(|| "USD".into())
        .to_ascii_uppercase();
    let price = money(sub, "price", &currency)?;
    let quantity = field(sub, "quantity")
        .and_then(|q| q.as_i64().or_else(|| q.as_str()?.parse().ok()))
        .unwrap_or(1);
    let interval = text(field(sub, "order_interval_unit")).and_then(|u| Interval::parse(&u));
    // Billing follows the charge interval; the order interval may ship more often.
    let every = ["charge_interval_frequency", "order_interval_frequency"]
        .into_iter()
        .find_map(|f| text(field(sub, f))?.parse::<u32>().ok());
    let recurring = match (price, interval, every) {
        (Some(price), Some(interval), Some(every)) => {
            recurring_from_period(price.minor.saturating_mul(quantity), interval, every)
        }
        _ => None,
    };
    let amount = |minor| Amount::from_minor(minor, &currency);
    let values = Values {
        currency: Some(currency.clone()),
        mrr: recurring.map(|r| amount(r.mrr_minor)),
        arr: recurring.map(|r| amount(r.arr_minor)),
        ..Values::default()
    };
    let mut output = notice.output(format!("subscription:{id}"));
    output.subscription = Some(SubscriptionObservation {
        subscription_id: id.to_string(),
        status: status.to_string(),
        observed_at: notice.occurred_at,
        source_event_id: notice.event_id.clone(),
        trial_end_at: None,
        currency: values.currency.clone(),
        mrr: values.mrr,
        arr: values.arr,
        last_payment: None,
    });
    let key = notice.occurrence_key(name, id, &notice.event_id);
    let mut event = notice.event(name, &key);
    event.customer.customer_id = text(field(sub, "customer_id"));
    event.customer.email = non_empty(field(sub, "email").and_then(Value::as_str));
    event.subscription.subscription_id = Some(id.to_string());
    event.subscription.status = Some(status.to_string());
    event.subscription.plan_id =
        text(field(sub, "external_variant_id").and_then(|v| v.get("ecommerce")))
            .or_else(|| text(field(sub, "shopify_variant_id")))
            .or_else(|| text(field(sub, "sku")));
    event.subscription.billing_interval = interval;
    event.subscription.billing_interval_count = every;
    event.values = values;
    match name {
        EventName::SubscriptionCancelled => {
            event.subscription.effective_end_at = timestamp(sub, "cancelled_at");
            event.subscription.cancel_reason = text(field(sub, "cancellation_reason"));
            event.values.mrr_delta = event.values.mrr.map(Amount::negated);
        }
        EventName::SubscriptionReactivated => {
            event
                .properties
                .insert("prior_status".into(), "cancelled".into());
            event.properties.insert(
                "reactivation_source".into(),
                "subscription/activated".into(),
            );
        }
        // No previous values in the payload: a price or quantity change is found against
        // the stored state during enrichment.
        EventName::SubscriptionUpdated => {
            event
                .properties
                .insert("compare_mrr_with_state".into(), "true".into());
        }
        _ => {}
    }
    if let Some(next) = text(field(sub, "next_charge_scheduled_at")) {
        event
            .properties
            .insert("next_charge_scheduled_at".into(), next);
    }
    output.events.push(event);
    Ok(output)
}

fn charge(
    notice: &Notice,
    id: &str,
    charge: &Value,
    status: &str,
) -> Result<SourceOutput, IngestError> {
    // One charge may bill several subscriptions of an address; it is ordered with the first.
    let subscription_id = field(charge, "line_items")
        .and_then(Value::as_array)
        .and_then(|items| {
            items.iter().find_map(|item| {
                text(field(item, "purchase_item_id"))
                    .or_else(|| text(field(item, "subscription_id")))
            })
        });
    let ordering_key = match &subscription_id {
        Some(sub) => format!("subscription:{sub}"),
        None => format!("charge:{id}"),
    };
    let kind = text(field(charge, "type"))
        .unwrap_or_default()
        .to_ascii_lowercase();
    let (name, key) = match notice.event_type.as_str() {
        "charge/paid" | "charge/success" | "charge/processed" if kind == "checkout" => {
            return Ok(notice.ignored(
                ordering_key,
                "the checkout charge opens the subscription; subscription/created counts the start",
            ))
        }
        "charge/paid" | "charge/success" | "charge/processed" if status == "success" => {
            (EventName::SubscriptionRenewed, format!("charge:{id}"))
        }
        "charge/failed" => (EventName::PaymentFailed, notice.event_id.clone()),
        "charge/refunded" => (EventName::Refund, notice.event_id.clone()),
        other => {
            return Ok(notice.ignored(
                ordering_key,
                format!("recharge {other} (status {status}) is not mapped"),
            ))
        }
    };
    let currency = text(field(charge, "currency"))
        .unwrap_or_else(|| "USD".into())
        .to_ascii_uppercase();
    let total = money(charge, "total_price", &currency)?;
    let tax = money(charge, "total_tax", &currency)?;
    let mut output = notice.output(ordering_key);
    let mut event = notice.event(name, &key);
    event.customer.customer_id = text(field(charge, "customer_id"))
        .or_else(|| text(field(charge, "customer").and_then(|c| c.get("id"))));
    event.customer.email = non_empty(
        field(charge, "email")
            .or_else(|| field(charge, "customer").and_then(|c| c.get("email")))
            .and_then(Value::as_str),
    );
    // The charge's billing address names the payer.
    if let Some(address) = field(charge, "billing_address") {
        let part = |name| non_empty(address.get(name).and_then(Value::as_str));
        event.customer.first_name = part("first_name");
        event.customer.last_name = part("last_name");
        event
            .customer
            .set_country(address.get("country_code").and_then(Value::as_str));
        event.touchpoints.phone = part("phone");
    }
    event.subscription.subscription_id = subscription_id;
    event.values = Values {
        currency: Some(currency.clone()),
        gross_value: total,
        tax_amount: tax,
        // total_price includes the tax whether or not prices were tax-inclusive.
        net_value: match (total, tax) {
            (Some(total), Some(tax)) => Some(Amount {
                minor: total.minor.saturating_sub(tax.minor),
                ..total
            }),
            (total, None) => total,
            (None, _) => None,
        },
        ..Values::default()
    };
    if name == EventName::Refund {
        if let Some(refunded) = money(charge, "total_refunds", &currency)?.filter(|a| a.minor > 0) {
            event.values.gross_value = Some(refunded);
            event.values.net_value = None;
            event.values.tax_amount = None;
        }
    }
    if name == EventName::PaymentFailed {
        for (property, source) in [
            ("attempt_count", "charge_attempts"),
            ("error_type", "error_type"),
            ("next_attempt_at", "retry_date"),
        ] {
            if let Some(value) = text(field(charge, source)) {
                event.properties.insert(property.into(), value);
            }
        }
    }
    if let Some(at) = timestamp(charge, "scheduled_at") {
        event
            .properties
            .insert("period_start".into(), at.to_string());
    }
    event.properties.insert("charge_id".into(), id.to_string());
    output.events.push(event);
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_signature_is_sha256_of_secret_then_body() {
        // printf 'rc_secret{"a":1}' | sha256sum
        assert_eq!(
            sign_legacy("rc_secret", br#"{"a":1}"#),
            "9859c973b5a0bbeb47f1dedda8856327883ec42eaef451893e3030611af67aea"
        );
    }
}
