//! Chargebee webhooks: HTTP Basic authentication and lifecycle mapping.
//!
//! Chargebee signs nothing: the webhook is protected by the Basic credentials set in
//! Settings → Webhooks ("Protect webhook URL with basic authentication"). Deliveries may
//! be duplicated and out of order; the event `id` (`ev_…`) is the dedup key and
//! `occurred_at` (unix s) orders subscription state. Money is in minor units with
//! `currency_code`. <https://www.chargebee.com/docs/2.0/webhook_settings.html>

use super::signature::{verify_basic_auth, BasicCredentials};
use super::{
    malformed, non_empty, parse, parse_json, Notice, SourceOutput, SourceSpec, WebhookRequest,
};
use super::{CustomerRecord, SubscriptionObservation};
use crate::config::MerchantConfig;
use crate::error::IngestError;
use crate::event::{EventName, Values};
use crate::money::{recurring_from_period, Amount, Interval};
use serde::{Deserialize, Serialize};

pub const NAME: &str = "chargebee";

pub const SPEC: SourceSpec = SourceSpec {
    name: NAME,
    ingest,
    secret_fields: &["basic_auth"],
    validate_config: crate::config::check_config::<Config>,
    conversion_siblings: None,
    ..SourceSpec::DEFAULT
};

/// Chargebee settings: the webhook's Basic credentials (several while rotating).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub basic_auth: Vec<BasicCredentials>,
}

fn ingest(
    merchant: &MerchantConfig,
    request: &WebhookRequest,
    _now: i64,
) -> Result<Vec<SourceOutput>, IngestError> {
    let config: Config = merchant.source_config(NAME)?;
    verify_basic_auth(request.headers.get("Authorization"), &config.basic_auth)?;
    Ok(vec![map_event(&merchant.merchant_id, request.body)?])
}

#[derive(Deserialize)]
struct Event {
    id: String,
    #[serde(deserialize_with = "crate::input::unix_seconds")]
    occurred_at: i64,
    event_type: String,
    content: Content,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Content {
    subscription: Option<Subscription>,
    customer: Option<Customer>,
    invoice: Option<Invoice>,
    transaction: Option<Transaction>,
}

#[derive(Deserialize)]
struct Subscription {
    id: String,
    customer_id: Option<String>,
    status: String,
    currency_code: Option<String>,
    billing_period: Option<u32>,
    billing_period_unit: Option<String>,
    #[serde(default)]
    subscription_items: Vec<SubscriptionItem>,
    /// Chargebee's own MRR, used when items cannot be priced.
    mrr: Option<i64>,
    #[serde(default, deserialize_with = "crate::input::opt_unix_seconds")]
    trial_start: Option<i64>,
    #[serde(default, deserialize_with = "crate::input::opt_unix_seconds")]
    trial_end: Option<i64>,
    #[serde(default, deserialize_with = "crate::input::opt_unix_seconds")]
    current_term_start: Option<i64>,
    #[serde(default, deserialize_with = "crate::input::opt_unix_seconds")]
    current_term_end: Option<i64>,
    #[serde(default, deserialize_with = "crate::input::opt_unix_seconds")]
    cancelled_at: Option<i64>,
    cancel_reason_code: Option<String>,
    cancel_reason: Option<String>,
    #[serde(default, deserialize_with = "crate::input::opt_unix_seconds")]
    pause_date: Option<i64>,
    #[serde(default, deserialize_with = "crate::input::opt_unix_seconds")]
    resume_date: Option<i64>,
}

#[derive(Deserialize)]
struct SubscriptionItem {
    item_price_id: String,
    item_type: String,
    quantity: Option<i64>,
    unit_price: Option<i64>,
    amount: Option<i64>,
}

#[derive(Deserialize)]
struct Customer {
    id: String,
    email: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    phone: Option<String>,
    billing_address: Option<BillingAddress>,
}

#[derive(Deserialize)]
struct BillingAddress {
    country: Option<String>,
}

/// Everything the notification says about the person: every Chargebee event carries
/// `content.customer`, and Chargebee warns events may arrive out of order, so a
/// subscription event must not wait for `customer_created` to be identifiable.
fn identify(event: &mut crate::event::CanonicalEvent, customer: Option<&Customer>) {
    let Some(customer) = customer else { return };
    event.customer.customer_id = Some(customer.id.clone());
    event.customer.email = non_empty(customer.email.as_deref());
    event.customer.first_name = non_empty(customer.first_name.as_deref());
    event.customer.last_name = non_empty(customer.last_name.as_deref());
    event.customer.set_country(
        customer
            .billing_address
            .as_ref()
            .and_then(|a| a.country.as_deref()),
    );
    event.touchpoints.phone = non_empty(customer.phone.as_deref());
}

fn customer_record(customer: &Customer, observed_at: i64) -> CustomerRecord {
    CustomerRecord {
        customer_id: customer.id.clone(),
        email: non_empty(customer.email.as_deref()),
        observed_at,
    }
}

#[derive(Deserialize)]
struct Invoice {
    id: String,
    total: Option<i64>,
    tax: Option<i64>,
    amount_due: Option<i64>,
    currency_code: String,
    #[serde(default)]
    dunning_attempts: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Transaction {
    id: String,
    amount: Option<i64>,
    currency_code: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    error_code: Option<String>,
    subscription_id: Option<String>,
}

/// Maps a verified Chargebee event.
pub fn map_event(merchant_id: &str, body: &[u8]) -> Result<SourceOutput, IngestError> {
    let raw: serde_json::Value = parse_json(body)?;
    let event: Event = parse(&raw)?;
    let notice = Notice {
        merchant_id,
        source: NAME,
        event_id: event.id.clone(),
        event_type: event.event_type.clone(),
        occurred_at: event.occurred_at,
        livemode: true,
    };
    let content = &event.content;
    let name = match event.event_type.as_str() {
        "subscription_created" | "subscription_started" => {
            match content.subscription.as_ref().map(|s| s.status.as_str()) {
                Some("in_trial") => Some(EventName::TrialStarted),
                Some("active" | "non_renewing") => Some(EventName::SubscriptionStarted),
                _ => Some(EventName::SubscriptionCreated),
            }
        }
        "subscription_activated" => match content.subscription.as_ref() {
            Some(sub) if sub.trial_end.is_some() => Some(EventName::TrialConverted),
            _ => Some(EventName::SubscriptionStarted),
        },
        "subscription_changed" | "subscription_cancellation_scheduled" => {
            Some(EventName::SubscriptionUpdated)
        }
        "subscription_renewed" => Some(EventName::SubscriptionRenewed),
        "subscription_paused" => Some(EventName::SubscriptionPaused),
        "subscription_resumed"
        | "subscription_reactivated"
        | "subscription_scheduled_cancellation_removed" => Some(EventName::SubscriptionReactivated),
        "subscription_cancelled" => Some(EventName::SubscriptionCancelled),
        _ => None,
    };
    if let (Some(name), Some(sub)) = (name, &content.subscription) {
        return subscription(&notice, sub, content, name);
    }
    match event.event_type.as_str() {
        "payment_failed" | "payment_refunded" => payment(&notice, content),
        "customer_created" | "customer_changed" => {
            let customer = content
                .customer
                .as_ref()
                .ok_or_else(|| malformed("customer event without content.customer"))?;
            let mut output = notice.output(format!("customer:{}", customer.id));
            output.customer = Some(customer_record(customer, notice.occurred_at));
            Ok(output)
        }
        "payment_succeeded" => Ok(notice.ignored(
            ordering_key(content),
            "payments are counted by subscription_created/activated/renewed",
        )),
        other => Ok(notice.ignored(
            ordering_key(content),
            format!("chargebee {other} is not mapped"),
        )),
    }
}

fn ordering_key(content: &Content) -> String {
    content
        .subscription
        .as_ref()
        .map(|s| s.id.clone())
        .or_else(|| {
            content
                .transaction
                .as_ref()
                .and_then(|t| t.subscription_id.clone())
        })
        .map(|id| format!("subscription:{id}"))
        .or_else(|| {
            content
                .customer
                .as_ref()
                .map(|c| format!("customer:{}", c.id))
        })
        .unwrap_or_else(|| "merchant".into())
}

/// MRR/ARR of the recurring items (plans and addons; one-off charges excluded), else
/// Chargebee's own `mrr`.
fn recurring_values(sub: &Subscription) -> Values {
    let currency = sub
        .currency_code
        .clone()
        .unwrap_or_else(|| "USD".into())
        .to_ascii_uppercase();
    let per_period: Option<i64> = sub
        .subscription_items
        .iter()
        .filter(|item| item.item_type != "charge")
        .map(|item| {
            item.amount
                .or_else(|| Some(item.unit_price?.saturating_mul(item.quantity.unwrap_or(1))))
        })
        .try_fold(0i64, |total, amount| Some(total.saturating_add(amount?)));
    let interval = sub.billing_period_unit.as_deref().and_then(Interval::parse);
    let recurring = match (per_period, interval, sub.billing_period) {
        (Some(amount), Some(interval), Some(every)) if !sub.subscription_items.is_empty() => {
            recurring_from_period(amount, interval, every)
        }
        _ => None,
    };
    let amount = |minor| Amount::from_minor(minor, &currency);
    let (mrr, arr) = match (recurring, sub.mrr) {
        (Some(r), _) => (Some(amount(r.mrr_minor)), Some(amount(r.arr_minor))),
        (None, Some(mrr)) => (Some(amount(mrr)), Some(amount(mrr.saturating_mul(12)))),
        (None, None) => (None, None),
    };
    Values {
        currency: Some(currency),
        mrr,
        arr,
        ..Values::default()
    }
}

fn subscription(
    notice: &Notice,
    sub: &Subscription,
    content: &Content,
    name: EventName,
) -> Result<SourceOutput, IngestError> {
    let invoice = content.invoice.as_ref();
    let values = recurring_values(sub);
    let mut output = notice.output(format!("subscription:{}", sub.id));
    output.subscription = Some(SubscriptionObservation {
        subscription_id: sub.id.clone(),
        status: sub.status.clone(),
        observed_at: notice.occurred_at,
        source_event_id: notice.event_id.clone(),
        trial_end_at: sub.trial_end,
        currency: values.currency.clone(),
        mrr: values.mrr,
        arr: values.arr,
        last_payment: None,
    });
    let key = match name {
        EventName::SubscriptionRenewed => {
            format!(
                "{}@{}",
                sub.id,
                sub.current_term_start.unwrap_or(notice.occurred_at)
            )
        }
        _ => notice.occurrence_key(name, &sub.id, &notice.event_id),
    };
    let mut event = notice.event(name, &key);
    event.customer.customer_id = sub.customer_id.clone();
    identify(&mut event, content.customer.as_ref());
    // The person is remembered too, for later events that lack it.
    output.customer = content
        .customer
        .as_ref()
        .map(|c| customer_record(c, notice.occurred_at));
    event.subscription.subscription_id = Some(sub.id.clone());
    event.subscription.status = Some(sub.status.clone());
    event.subscription.plan_id = sub
        .subscription_items
        .iter()
        .find(|i| i.item_type == "plan")
        .map(|i| i.item_price_id.clone());
    event.subscription.billing_interval =
        sub.billing_period_unit.as_deref().and_then(Interval::parse);
    event.subscription.billing_interval_count = sub.billing_period;
    event.subscription.trial_start_at = sub.trial_start;
    event.subscription.trial_end_at = sub.trial_end;
    event.values = values;
    if let Some(invoice) = invoice.filter(|_| {
        matches!(
            name,
            EventName::SubscriptionRenewed
                | EventName::SubscriptionStarted
                | EventName::TrialConverted
        )
    }) {
        let currency = invoice.currency_code.to_ascii_uppercase();
        let money = |minor| Amount::from_minor(minor, &currency);
        event.values.gross_value = invoice.total.map(money);
        event.values.tax_amount = invoice.tax.map(money);
        event.values.net_value = invoice
            .total
            .map(|total| money(total.saturating_sub(invoice.tax.unwrap_or(0))));
        event
            .properties
            .insert("invoice_id".into(), invoice.id.clone());
    }
    match name {
        EventName::SubscriptionCancelled => {
            event.subscription.effective_end_at = sub.cancelled_at;
            event.subscription.cancel_reason =
                sub.cancel_reason_code.clone().or(sub.cancel_reason.clone());
            event.values.mrr_delta = event.values.mrr.map(Amount::negated);
        }
        EventName::SubscriptionPaused => {
            if let Some(at) = sub.resume_date {
                event.properties.insert("resume_at".into(), at.to_string());
            }
            if let Some(at) = sub.pause_date {
                event.properties.insert("paused_at".into(), at.to_string());
            }
        }
        EventName::SubscriptionReactivated => {
            let prior = match notice.event_type.as_str() {
                "subscription_resumed" => "paused",
                "subscription_scheduled_cancellation_removed" => "non_renewing",
                _ => "cancelled",
            };
            event.properties.insert("prior_status".into(), prior.into());
            event
                .properties
                .insert("reactivation_source".into(), notice.event_type.clone());
        }
        EventName::SubscriptionUpdated if notice.event_type == "subscription_changed" => {
            event
                .properties
                .insert("compare_mrr_with_state".into(), "true".into());
        }
        EventName::SubscriptionUpdated => {
            event
                .properties
                .insert("scheduled_change".into(), "cancel".into());
            if let Some(at) = sub.current_term_end {
                event
                    .properties
                    .insert("scheduled_change_at".into(), at.to_string());
            }
        }
        EventName::SubscriptionRenewed => {
            if let Some(at) = sub.current_term_start {
                event
                    .properties
                    .insert("period_start".into(), at.to_string());
            }
        }
        _ => {}
    }
    output.events.push(event);
    Ok(output)
}

fn payment(notice: &Notice, content: &Content) -> Result<SourceOutput, IngestError> {
    let transaction = content
        .transaction
        .as_ref()
        .ok_or_else(|| malformed(format!("{} without content.transaction", notice.event_type)))?;
    let refund = notice.event_type == "payment_refunded";
    if refund && transaction.kind.as_deref() != Some("refund") {
        return Ok(notice.ignored(ordering_key(content), "not a refund transaction"));
    }
    let (name, key) = if refund {
        (EventName::Refund, format!("transaction:{}", transaction.id))
    } else {
        (EventName::PaymentFailed, notice.event_id.clone())
    };
    let mut output = notice.output(ordering_key(content));
    let mut event = notice.event(name, &key);
    let currency = transaction.currency_code.to_ascii_uppercase();
    let amount = if refund {
        transaction.amount
    } else {
        content
            .invoice
            .as_ref()
            .and_then(|i| i.amount_due)
            .or(transaction.amount)
    };
    event.values = Values {
        currency: Some(currency.clone()),
        gross_value: amount.map(|minor| Amount::from_minor(minor, &currency)),
        ..Values::default()
    };
    identify(&mut event, content.customer.as_ref());
    event.subscription.subscription_id = transaction
        .subscription_id
        .clone()
        .or_else(|| content.subscription.as_ref().map(|s| s.id.clone()));
    event
        .properties
        .insert("transaction_id".into(), transaction.id.clone());
    if let Some(invoice) = &content.invoice {
        event
            .properties
            .insert("invoice_id".into(), invoice.id.clone());
        if !refund {
            event.properties.insert(
                "attempt_count".into(),
                invoice.dunning_attempts.len().max(1).to_string(),
            );
        }
    }
    if let Some(code) = &transaction.error_code {
        event.properties.insert("error_code".into(), code.clone());
    }
    output.events.push(event);
    Ok(output)
}
