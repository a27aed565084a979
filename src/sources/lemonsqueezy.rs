//! Lemon Squeezy webhooks: `X-Signature` verification and lifecycle mapping.
//!
//! Signature: hex HMAC-SHA256 of the raw body keyed by the webhook's signing secret. It has
//! no timestamp, so replays are stopped by deduplication alone. Notifications carry no
//! event id: the dedup key is `event_name:type:id:updated_at`, which is stable across Lemon
//! Squeezy's retries of one notification and differs between two real changes.
//! <https://docs.lemonsqueezy.com/help/webhooks/signing-requests>
//!
//! Subscriptions carry no price: values come from `subscription_payment_*` invoices
//! (`data.type = "subscription-invoices"`, amounts in cents, `data.id` = the invoice).
//! A `cancelled` subscription keeps access until `ends_at`; only `subscription_expired`
//! is the effective cancellation.

use super::signature::verify_hex_hmac;
use super::{
    malformed, non_empty, parse, parse_json, Notice, SourceOutput, SourceSpec, WebhookRequest,
};
use super::{CustomerRecord, SubscriptionObservation};
use crate::config::MerchantConfig;
use crate::error::IngestError;
use crate::event::{CanonicalEvent, EventName, Values};
use crate::money::Amount;
use crate::time::parse_rfc3339;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const NAME: &str = "lemonsqueezy";
pub const SIGNATURE_HEADER: &str = "X-Signature";

pub const SPEC: SourceSpec = SourceSpec {
    name: NAME,
    ingest,
    secret_fields: &["signing_secrets"],
    validate_config: crate::config::check_config::<Config>,
    conversion_siblings: None,
    ..SourceSpec::DEFAULT
};

/// Lemon Squeezy settings: the signing secret(s) given when the webhook was created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub signing_secrets: Vec<String>,
}

fn ingest(
    merchant: &MerchantConfig,
    request: &WebhookRequest,
    _now: i64,
) -> Result<Vec<SourceOutput>, IngestError> {
    let config: Config = merchant.source_config(NAME)?;
    verify_hex_hmac(
        SIGNATURE_HEADER,
        request.headers.get(SIGNATURE_HEADER),
        request.body,
        &config.signing_secrets,
    )?;
    Ok(vec![map_event(&merchant.merchant_id, request.body)?])
}

/// Builds the header the way Lemon Squeezy does; used by tests and fixtures.
pub fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[derive(Deserialize)]
struct Envelope {
    meta: Meta,
    data: Resource,
}

#[derive(Deserialize)]
struct Meta {
    event_name: String,
    #[serde(default)]
    test_mode: bool,
}

#[derive(Deserialize)]
struct Resource {
    #[serde(rename = "type")]
    kind: String,
    id: String,
    attributes: Value,
}

/// Lemon Squeezy ids are JSON numbers; kept as text like every other source id.
fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

#[derive(Deserialize)]
struct Subscription {
    customer_id: Value,
    #[serde(default)]
    variant_id: Value,
    user_email: Option<String>,
    user_name: Option<String>,
    status: String,
    trial_ends_at: Option<String>,
    renews_at: Option<String>,
    ends_at: Option<String>,
    pause: Option<Pause>,
}

#[derive(Deserialize)]
struct Pause {
    mode: Option<String>,
    resumes_at: Option<String>,
}

#[derive(Deserialize)]
struct Invoice {
    subscription_id: Value,
    customer_id: Value,
    user_email: Option<String>,
    user_name: Option<String>,
    billing_reason: String,
    currency: String,
    status: String,
    subtotal: i64,
    #[serde(default)]
    discount_total: i64,
    #[serde(default)]
    tax: i64,
    total: i64,
    #[serde(default)]
    refunded_amount: Option<i64>,
    created_at: String,
    updated_at: String,
}

#[derive(Deserialize)]
struct LsCustomer {
    email: Option<String>,
    updated_at: String,
}

fn time(text: &str, field: &str) -> Result<i64, IngestError> {
    parse_rfc3339(text).ok_or_else(|| malformed(format!("{field} is not an RFC 3339 timestamp")))
}

/// Maps a verified Lemon Squeezy notification.
pub fn map_event(merchant_id: &str, body: &[u8]) -> Result<SourceOutput, IngestError> {
    let envelope: Envelope = parse_json(body)?;
    let event_name = envelope.meta.event_name.as_str();
    let data = &envelope.data;
    let updated_at = data
        .attributes
        .get("updated_at")
        .and_then(Value::as_str)
        .unwrap_or("");
    let notice = Notice {
        merchant_id,
        source: NAME,
        event_id: format!("{event_name}:{}:{}:{updated_at}", data.kind, data.id),
        event_type: event_name.to_string(),
        occurred_at: time(updated_at, "data.attributes.updated_at")?,
        livemode: !envelope.meta.test_mode,
    };
    match (data.kind.as_str(), event_name) {
        ("subscriptions", _) => {
            let sub: Subscription = parse(&data.attributes)?;
            let name = match event_name {
                "subscription_created" if sub.status == "on_trial" => EventName::TrialStarted,
                // The paid start is the initial invoice, which carries the amount.
                "subscription_created" => EventName::SubscriptionCreated,
                "subscription_paused" => EventName::SubscriptionPaused,
                "subscription_unpaused" | "subscription_resumed" => {
                    EventName::SubscriptionReactivated
                }
                "subscription_expired" => EventName::SubscriptionCancelled,
                _ => EventName::SubscriptionUpdated,
            };
            subscription(&notice, &data.id, &sub, name)
        }
        ("subscription-invoices", _) => {
            let invoice: Invoice = parse(&data.attributes)?;
            invoice_event(&notice, &data.id, &invoice)
        }
        ("customers", _) => {
            let customer: LsCustomer = parse(&data.attributes)?;
            let mut output = notice.output(format!("customer:{}", data.id));
            output.customer = Some(CustomerRecord {
                customer_id: data.id.clone(),
                email: non_empty(customer.email.as_deref()),
                observed_at: time(&customer.updated_at, "updated_at")?,
            });
            Ok(output)
        }
        (kind, name) => Ok(notice.ignored(
            format!("{kind}:{}", data.id),
            format!("lemonsqueezy {name} on {kind} is not a subscription lifecycle event"),
        )),
    }
}

fn subscription(
    notice: &Notice,
    id: &str,
    sub: &Subscription,
    name: EventName,
) -> Result<SourceOutput, IngestError> {
    let mut output = notice.output(format!("subscription:{id}"));
    let trial_end_at = sub.trial_ends_at.as_deref().and_then(parse_rfc3339);
    output.subscription = Some(SubscriptionObservation {
        subscription_id: id.to_string(),
        status: sub.status.clone(),
        observed_at: notice.occurred_at,
        source_event_id: notice.event_id.clone(),
        trial_end_at,
        ..Default::default()
    });
    let key = notice.occurrence_key(name, id, &notice.event_id);
    let mut event = notice.event(name, &key);
    event.customer.customer_id = id_text(&sub.customer_id);
    event.customer.email = non_empty(sub.user_email.as_deref());
    event.customer.set_full_name(sub.user_name.as_deref());
    event.subscription.subscription_id = Some(id.to_string());
    event.subscription.status = Some(sub.status.clone());
    event.subscription.plan_id = id_text(&sub.variant_id);
    event.subscription.trial_end_at = trial_end_at;
    let ends_at = sub.ends_at.as_deref().and_then(parse_rfc3339);
    match name {
        EventName::SubscriptionCancelled => event.subscription.effective_end_at = ends_at,
        EventName::SubscriptionPaused => {
            if let Some(pause) = &sub.pause {
                if let Some(mode) = &pause.mode {
                    event.properties.insert("pause_mode".into(), mode.clone());
                }
                if let Some(at) = pause.resumes_at.as_deref().and_then(parse_rfc3339) {
                    event.properties.insert("resume_at".into(), at.to_string());
                }
            }
        }
        EventName::SubscriptionReactivated => {
            let prior = if notice.event_type == "subscription_unpaused" {
                "paused"
            } else {
                "cancelled"
            };
            event.properties.insert("prior_status".into(), prior.into());
            event
                .properties
                .insert("reactivation_source".into(), notice.event_type.clone());
        }
        _ => {}
    }
    if notice.event_type == "subscription_cancelled" {
        // Cancel intent: access (and revenue already paid) runs until ends_at.
        event
            .properties
            .insert("scheduled_change".into(), "cancel".into());
        if let Some(at) = ends_at {
            event
                .properties
                .insert("scheduled_change_at".into(), at.to_string());
        }
    }
    if let Some(at) = sub.renews_at.as_deref().and_then(parse_rfc3339) {
        event
            .properties
            .insert("current_period_end".into(), at.to_string());
    }
    output.events.push(event);
    Ok(output)
}

fn invoice_event(
    notice: &Notice,
    invoice_id: &str,
    invoice: &Invoice,
) -> Result<SourceOutput, IngestError> {
    let subscription_id = id_text(&invoice.subscription_id)
        .ok_or_else(|| malformed("subscription invoice without subscription_id"))?;
    let ordering_key = format!("subscription:{subscription_id}");
    let ignored = |reason: &str| Ok(notice.ignored(ordering_key.clone(), reason));
    let (name, key) = match notice.event_type.as_str() {
        "subscription_payment_success" | "subscription_payment_recovered" if invoice.total <= 0 => {
            return ignored("a zero-amount invoice (trial start) is not revenue")
        }
        "subscription_payment_success" | "subscription_payment_recovered" => {
            match invoice.billing_reason.as_str() {
                "initial" => (EventName::SubscriptionStarted, subscription_id.clone()),
                // Keyed on the invoice: a recovered payment and its success are one renewal.
                "renewal" => (
                    EventName::SubscriptionRenewed,
                    format!("{subscription_id}:invoice:{invoice_id}"),
                ),
                // A plan change is billed at once as a proration: a positive charge is
                // an upgrade. Lemon Squeezy states no price, so the MRR change is not
                // known; the value is the charge (see README).
                "updated" => (
                    EventName::SubscriptionUpgraded,
                    format!("{subscription_id}:invoice:{invoice_id}"),
                ),
                other => return ignored(&format!("invoice billing_reason {other} is not mapped")),
            }
        }
        "subscription_payment_failed" => (EventName::PaymentFailed, notice.event_id.clone()),
        "subscription_payment_refunded" => (
            EventName::Refund,
            format!("invoice:{invoice_id}:refund:{}", invoice.updated_at),
        ),
        other => return ignored(&format!("lemonsqueezy {other} is not mapped")),
    };
    let currency = invoice.currency.to_ascii_uppercase();
    let money = |minor: i64| Amount::from_minor(minor, &currency);
    let mut event: CanonicalEvent = notice.event(name, &key);
    event.customer.customer_id = id_text(&invoice.customer_id);
    event.customer.email = non_empty(invoice.user_email.as_deref());
    event.customer.set_full_name(invoice.user_name.as_deref());
    event.subscription.subscription_id = Some(subscription_id);
    event.values = Values {
        currency: Some(currency.clone()),
        gross_value: Some(money(invoice.total)),
        net_value: Some(money(invoice.total.saturating_sub(invoice.tax))),
        tax_amount: Some(money(invoice.tax)),
        ..Values::default()
    };
    if name == EventName::Refund {
        let refunded = invoice
            .refunded_amount
            .filter(|a| *a > 0)
            .unwrap_or(invoice.total);
        event.values.gross_value = Some(money(refunded));
        event.values.net_value = None;
        event.values.tax_amount = None;
    }
    event
        .properties
        .insert("invoice_id".into(), invoice_id.to_string());
    event
        .properties
        .insert("invoice_status".into(), invoice.status.clone());
    event
        .properties
        .insert("billing_reason".into(), invoice.billing_reason.clone());
    event
        .properties
        .insert("subtotal".into(), money(invoice.subtotal).to_string());
    if invoice.discount_total != 0 {
        event
            .properties
            .insert("discount".into(), money(invoice.discount_total).to_string());
    }
    if name == EventName::SubscriptionRenewed {
        // Billed in advance: the invoice opens the period it pays, which lets enrichment
        // recognise the first payment after a trial as the conversion.
        if let Some(at) = parse_rfc3339(&invoice.created_at) {
            event
                .properties
                .insert("period_start".into(), at.to_string());
        }
    }
    let mut output = notice.output(ordering_key);
    if matches!(
        name,
        EventName::SubscriptionStarted | EventName::SubscriptionRenewed
    ) {
        // A paid period: the subscription is active and worth this payment per period,
        // which values its cancellation later.
        output.subscription = Some(SubscriptionObservation {
            subscription_id: event
                .subscription
                .subscription_id
                .clone()
                .unwrap_or_default(),
            status: "active".into(),
            observed_at: notice.occurred_at,
            source_event_id: notice.event_id.clone(),
            currency: Some(currency.clone()),
            last_payment: event.values.net_value,
            ..SubscriptionObservation::default()
        });
    }
    output.events.push(event);
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_of_the_body() {
        // printf '{"a":1}' | openssl dgst -sha256 -hmac whsec_ls
        assert_eq!(
            sign("whsec_ls", br#"{"a":1}"#),
            "de815fdd1bfafc4321b80606a3ba985c255574fceab385947d2a4177dad3bae2"
        );
    }
}
