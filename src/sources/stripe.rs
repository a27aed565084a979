//! Stripe webhooks: `Stripe-Signature` verification and subscription lifecycle mapping.
//!
//! Signature: `t=<unix>,v1=<hex>[,v1=<hex>…]`, HMAC-SHA256 over `"{t}.{raw body}"` keyed by
//! the endpoint secret (`whsec_…`), 300 s tolerance; several `v1` values appear while a
//! secret is rolled and any may match. Payload shapes follow API version
//! `2025-03-31.basil` and later (period fields on subscription items) and still accept
//! older ones. <https://docs.stripe.com/webhooks#verify-manually>

use super::signature::TimestampedHmac;
use super::{
    non_empty, parse, parse_json, CustomerRecord, Notice, SourceOutput, SourceSpec,
    SubscriptionObservation, WebhookRequest,
};
use crate::config::MerchantConfig;
use crate::error::{IngestError, VerifyError};
use crate::event::{CanonicalEvent, Customer, EventName, SubscriptionDetails, Values};
use crate::money::{recurring_from_period, Amount, Interval};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const NAME: &str = "stripe";
pub const SIGNATURE_HEADER: &str = "Stripe-Signature";
pub const DEFAULT_TOLERANCE_SECONDS: i64 = 300;

pub const SPEC: SourceSpec = SourceSpec {
    name: NAME,
    ingest,
    secret_fields: &["endpoint_secrets"],
    validate_config: crate::config::check_config::<Config>,
    required_feature: Some(crate::plans::Feature::StripeIngest),
    conversion_siblings: Some(super::Siblings {
        // `customer.subscription.updated` (MRR) and the trial-end `invoice.paid` (charge).
        events: &[EventName::TrialConverted],
        wait_seconds: 60,
    }),
    ..SourceSpec::DEFAULT
};

/// Stripe source settings. Several secrets are kept while an endpoint secret is rolled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub endpoint_secrets: Vec<String>,
    #[serde(default = "default_tolerance")]
    pub tolerance_seconds: i64,
}

fn default_tolerance() -> i64 {
    DEFAULT_TOLERANCE_SECONDS
}

fn ingest(
    merchant: &MerchantConfig,
    request: &WebhookRequest,
    now: i64,
) -> Result<Vec<SourceOutput>, IngestError> {
    let config: Config = merchant.source_config(NAME)?;
    let secrets: Vec<&str> = config.endpoint_secrets.iter().map(String::as_str).collect();
    verify(
        request.headers.get(SIGNATURE_HEADER),
        request.body,
        &secrets,
        now,
        config.tolerance_seconds,
    )?;
    Ok(vec![map_event(&merchant.merchant_id, request.body)?])
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

/// Verifies the `Stripe-Signature` header over the raw body, in constant time per candidate.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[&str],
    now: i64,
    tolerance_seconds: i64,
) -> Result<(), VerifyError> {
    SCHEME.verify(header, body, secrets, now, tolerance_seconds)
}

/// Builds a header the way Stripe does; used by tests, fixtures and the demo script.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    SCHEME.sign(secret, timestamp, body)
}

#[derive(Deserialize)]
struct StripeEvent {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(deserialize_with = "crate::input::unix_seconds")]
    created: i64,
    #[serde(default)]
    livemode: bool,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    object: Value,
    /// Only on `*.updated`: the changed attributes' previous values.
    #[serde(default)]
    previous_attributes: Option<Value>,
}

/// `customer`, `charge`, `subscription`: an id, or the whole object when expanded.
#[derive(Deserialize)]
#[serde(untagged)]
enum Expandable {
    Id(String),
    Object {
        id: String,
        #[serde(default)]
        email: Option<String>,
    },
}

impl Expandable {
    fn id(&self) -> &str {
        match self {
            Expandable::Id(id) | Expandable::Object { id, .. } => id,
        }
    }

    fn email(&self) -> Option<&str> {
        match self {
            Expandable::Id(_) => None,
            Expandable::Object { email, .. } => email.as_deref(),
        }
    }
}

#[derive(Deserialize)]
struct Subscription {
    id: String,
    customer: Option<Expandable>,
    status: String,
    #[serde(default)]
    items: ItemList,
    trial_start: Option<i64>,
    trial_end: Option<i64>,
    canceled_at: Option<i64>,
    ended_at: Option<i64>,
    cancel_at: Option<i64>,
    #[serde(default)]
    cancel_at_period_end: bool,
    /// Before `2025-03-31.basil`; later versions carry it per item.
    current_period_end: Option<i64>,
    pause_collection: Option<Value>,
    cancellation_details: Option<CancellationDetails>,
    currency: Option<String>,
}

#[derive(Deserialize, Default)]
struct ItemList {
    #[serde(default)]
    data: Vec<SubscriptionItem>,
}

#[derive(Deserialize)]
struct SubscriptionItem {
    price: Option<Price>,
    quantity: Option<i64>,
    current_period_end: Option<i64>,
}

#[derive(Deserialize)]
struct Price {
    id: Option<String>,
    currency: String,
    unit_amount: Option<i64>,
    unit_amount_decimal: Option<String>,
    recurring: Option<PriceRecurring>,
}

#[derive(Deserialize)]
struct PriceRecurring {
    interval: String,
    #[serde(default = "one")]
    interval_count: u32,
    usage_type: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
struct CancellationDetails {
    reason: Option<String>,
}

#[derive(Deserialize)]
struct StripeCustomer {
    id: String,
    email: Option<String>,
}

#[derive(Deserialize)]
struct Invoice {
    id: String,
    customer: Option<Expandable>,
    customer_email: Option<String>,
    customer_name: Option<String>,
    customer_phone: Option<String>,
    customer_address: Option<Address>,
    currency: String,
    #[serde(default)]
    amount_paid: i64,
    #[serde(default)]
    amount_due: i64,
    billing_reason: Option<String>,
    attempt_count: Option<i64>,
    next_payment_attempt: Option<i64>,
    /// Before `2025-03-31.basil`.
    subscription: Option<Expandable>,
    /// `2025-03-31.basil` and later: `parent.subscription_details.subscription`.
    parent: Option<InvoiceParent>,
    /// Before basil: one tax total.
    tax: Option<i64>,
    /// Basil and later: taxes itemised.
    total_taxes: Option<Vec<TaxAmount>>,
    #[serde(default)]
    lines: InvoiceLines,
}

#[derive(Deserialize)]
struct Address {
    country: Option<String>,
}

#[derive(Deserialize)]
struct InvoiceParent {
    subscription_details: Option<SubscriptionDetailsRef>,
}

#[derive(Deserialize)]
struct SubscriptionDetailsRef {
    subscription: Option<Expandable>,
}

#[derive(Deserialize)]
struct TaxAmount {
    amount: i64,
}

#[derive(Deserialize, Default)]
struct InvoiceLines {
    #[serde(default)]
    data: Vec<InvoiceLine>,
}

#[derive(Deserialize)]
struct InvoiceLine {
    period: Option<Period>,
    /// Before basil the line carries the price itself.
    price: Option<Price>,
    quantity: Option<i64>,
}

#[derive(Deserialize)]
struct Period {
    start: i64,
    end: i64,
}

impl Invoice {
    fn subscription_id(&self) -> Option<&str> {
        self.parent
            .as_ref()
            .and_then(|p| p.subscription_details.as_ref())
            .and_then(|d| d.subscription.as_ref())
            .or(self.subscription.as_ref())
            .map(Expandable::id)
    }

    fn tax_minor(&self) -> i64 {
        match &self.total_taxes {
            Some(taxes) => taxes
                .iter()
                .fold(0i64, |total, t| total.saturating_add(t.amount)),
            None => self.tax.unwrap_or(0),
        }
    }

    /// The service period the invoice pays for (line periods, not the invoice's own
    /// `period_start`, which for cycle invoices describes the period just ended).
    fn service_period(&self) -> Option<&Period> {
        self.lines.data.iter().find_map(|l| l.period.as_ref())
    }
}

#[derive(Deserialize)]
struct Refund {
    id: String,
    amount: i64,
    currency: String,
    charge: Option<Expandable>,
    status: Option<String>,
    reason: Option<String>,
    /// Only used to pick the newest refund in a pre-2022-11-15 `charge.refunds` list.
    #[serde(default)]
    created: i64,
}

#[derive(Deserialize)]
struct Charge {
    id: String,
    currency: String,
    #[serde(default)]
    amount_refunded: i64,
    customer: Option<Expandable>,
    billing_details: Option<BillingDetails>,
    receipt_email: Option<String>,
    invoice: Option<Expandable>,
    /// Included before API version 2022-11-15 only.
    refunds: Option<RefundList>,
}

#[derive(Deserialize)]
struct BillingDetails {
    email: Option<String>,
}

#[derive(Deserialize)]
struct RefundList {
    #[serde(default)]
    data: Vec<Refund>,
}

/// Maps a verified Stripe event body to canonical events.
///
/// One event family per fact, so nothing counts twice: starts, conversions, plan
/// changes, pauses and cancellations come from `customer.subscription.*`; renewals and
/// payment failures from invoices (`invoice.paid`, not `invoice.payment_succeeded`);
/// refunds from `refund.created`, or `charge.refunded` when it lists the refund.
pub fn map_event(merchant_id: &str, body: &[u8]) -> Result<SourceOutput, IngestError> {
    let event: StripeEvent = parse_json(body)?;
    let notice = Notice {
        merchant_id,
        source: NAME,
        event_id: event.id.clone(),
        event_type: event.event_type.clone(),
        occurred_at: event.created,
        livemode: event.livemode,
    };
    let mut mapper = Mapper {
        output: notice.output("merchant".into()),
        notice,
        event: &event,
    };
    let object = &event.data.object;
    match event.event_type.as_str() {
        "customer.subscription.created" => {
            let sub: Subscription = parse(object)?;
            let name = match sub.status.as_str() {
                "trialing" => EventName::TrialStarted,
                "active" => EventName::SubscriptionStarted,
                _ => EventName::SubscriptionCreated,
            };
            mapper.subscription(&sub, name, None);
        }
        "customer.subscription.updated" => {
            let sub: Subscription = parse(object)?;
            let previous = event.data.previous_attributes.clone().unwrap_or_default();
            mapper.subscription_update(&sub, &previous)?;
        }
        "customer.subscription.paused" => {
            let sub: Subscription = parse(object)?;
            mapper.subscription(&sub, EventName::SubscriptionPaused, None);
        }
        "customer.subscription.resumed" => {
            let sub: Subscription = parse(object)?;
            mapper.subscription(&sub, EventName::SubscriptionReactivated, Some("paused"));
        }
        "customer.subscription.deleted" => {
            let sub: Subscription = parse(object)?;
            mapper.subscription(&sub, EventName::SubscriptionCancelled, None);
        }
        "invoice.paid" => mapper.invoice_paid(&parse(object)?),
        "invoice.payment_failed" => mapper.invoice_failed(&parse(object)?),
        "refund.created" => {
            let refund: Refund = parse(object)?;
            mapper.refund(&refund, None);
        }
        "charge.refunded" => {
            let charge: Charge = parse(object)?;
            let previous = event.data.previous_attributes.as_ref();
            mapper.charge_refunded(&charge, previous);
        }
        "customer.created" | "customer.updated" => {
            let customer: StripeCustomer = parse(object)?;
            mapper.output.ordering_key = format!("customer:{}", customer.id);
            mapper.output.customer = Some(CustomerRecord {
                customer_id: customer.id,
                email: non_empty(customer.email.as_deref()),
                observed_at: event.created,
            });
        }
        "invoice.payment_succeeded" => {
            mapper.ignore("counted from invoice.paid, which Stripe sends for the same payment")
        }
        "customer.subscription.trial_will_end" => {
            mapper.ignore("a reminder before the trial ends, not a lifecycle change")
        }
        other => mapper.ignore(&format!("stripe event type {other} is not mapped")),
    }
    Ok(mapper.output)
}

struct Mapper<'a> {
    notice: Notice<'a>,
    event: &'a StripeEvent,
    output: SourceOutput,
}

impl Mapper<'_> {
    fn ignore(&mut self, reason: &str) {
        self.output.ignored_reason = Some(reason.to_string());
    }

    fn new_event(&self, name: EventName, occurrence_key: &str) -> CanonicalEvent {
        self.notice.event(name, occurrence_key)
    }

    fn occurrence_key(&self, name: EventName, sub: &Subscription) -> String {
        self.notice.occurrence_key(name, &sub.id, &self.event.id)
    }

    fn subscription(&mut self, sub: &Subscription, name: EventName, prior_status: Option<&str>) {
        let values = recurring_values(&item_prices(&sub.items.data), sub.currency.as_deref());
        self.observe(sub, &values);
        let mut event = self.new_event(name, &self.occurrence_key(name, sub));
        event.customer = Customer {
            customer_id: sub.customer.as_ref().map(|c| c.id().to_string()),
            email: non_empty(sub.customer.as_ref().and_then(Expandable::email)),
            ..Customer::default()
        };
        let first_recurring = sub
            .items
            .data
            .iter()
            .find_map(|item| item.price.as_ref().and_then(|p| p.recurring.as_ref()));
        event.subscription = SubscriptionDetails {
            subscription_id: Some(sub.id.clone()),
            status: Some(sub.status.clone()),
            plan_id: sub
                .items
                .data
                .iter()
                .find_map(|i| i.price.as_ref()?.id.clone()),
            billing_interval: first_recurring.and_then(|r| Interval::parse(&r.interval)),
            billing_interval_count: first_recurring.map(|r| r.interval_count),
            trial_start_at: sub.trial_start,
            trial_end_at: sub.trial_end,
            effective_end_at: if name == EventName::SubscriptionCancelled {
                sub.ended_at.or(sub.canceled_at)
            } else {
                None
            },
            cancel_reason: sub
                .cancellation_details
                .as_ref()
                .and_then(|d| d.reason.clone()),
        };
        event.values = values;
        if name == EventName::SubscriptionCancelled {
            event.values.mrr_delta = event.values.mrr.map(Amount::negated);
        }
        if let Some(prior) = prior_status {
            event.properties.insert("prior_status".into(), prior.into());
        }
        self.output.events.push(event);
    }

    fn observe(&mut self, sub: &Subscription, values: &Values) {
        self.output.ordering_key = format!("subscription:{}", sub.id);
        self.output.subscription = Some(SubscriptionObservation {
            subscription_id: sub.id.clone(),
            status: sub.status.clone(),
            observed_at: self.event.created,
            source_event_id: self.event.id.clone(),
            trial_end_at: sub.trial_end,
            currency: values.currency.clone(),
            mrr: values.mrr,
            arr: values.arr,
            last_payment: None,
        });
    }

    /// `customer.subscription.updated`: what changed is in `previous_attributes`.
    fn subscription_update(
        &mut self,
        sub: &Subscription,
        previous: &Value,
    ) -> Result<(), IngestError> {
        let previous_status = previous.get("status").and_then(Value::as_str);
        let changed = |key: &str| previous.get(key).is_some();
        if let Some(before) = previous_status {
            match (before, sub.status.as_str()) {
                ("trialing", "active") => {
                    self.subscription(sub, EventName::TrialConverted, Some(before));
                    return Ok(());
                }
                ("incomplete", "active") => {
                    // First payment of a subscription created `incomplete` (e.g. SCA).
                    self.subscription(sub, EventName::SubscriptionStarted, Some(before));
                    return Ok(());
                }
                _ => {}
            }
        }
        if changed("items") && previous_status.is_none() {
            let old_items: ItemList = parse(&previous["items"])?;
            let before = recurring_values(&item_prices(&old_items.data), sub.currency.as_deref());
            let after = recurring_values(&item_prices(&sub.items.data), sub.currency.as_deref());
            if let (Some(old_mrr), Some(new_mrr)) = (before.mrr, after.mrr) {
                let delta = new_mrr.minor.saturating_sub(old_mrr.minor);
                if delta != 0 {
                    let name = if delta > 0 {
                        EventName::SubscriptionUpgraded
                    } else {
                        EventName::SubscriptionDowngraded
                    };
                    self.subscription(sub, name, None);
                    if let Some(event) = self.output.events.last_mut() {
                        event.values.mrr_delta = Some(Amount {
                            minor: delta,
                            exponent: new_mrr.exponent,
                        });
                        event
                            .properties
                            .insert("previous_mrr".into(), old_mrr.to_string());
                    }
                    return Ok(());
                }
            }
        }
        if changed("pause_collection") {
            let was_paused = !previous["pause_collection"].is_null();
            let is_paused = sub.pause_collection.as_ref().is_some_and(|p| !p.is_null());
            if !was_paused && is_paused {
                self.subscription(sub, EventName::SubscriptionPaused, None);
                self.tag_last("pause_kind", "pause_collection");
                return Ok(());
            }
            if was_paused && !is_paused {
                self.subscription(sub, EventName::SubscriptionReactivated, Some("paused"));
                return Ok(());
            }
        }
        let cancel_was_scheduled = previous
            .get("cancel_at_period_end")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            || previous.get("cancel_at").is_some_and(|v| !v.is_null());
        let cancel_is_scheduled = sub.cancel_at_period_end || sub.cancel_at.is_some();
        if (changed("cancel_at_period_end") || changed("cancel_at"))
            && cancel_was_scheduled
            && !cancel_is_scheduled
            && sub.status != "canceled"
        {
            self.subscription(
                sub,
                EventName::SubscriptionReactivated,
                Some("cancel_scheduled"),
            );
            return Ok(());
        }
        // Anything else (scheduled cancellation, renewal bookkeeping, metadata, status
        // moves counted by their own events) is recorded without revenue meaning.
        self.subscription(sub, EventName::SubscriptionUpdated, previous_status);
        if cancel_is_scheduled && !cancel_was_scheduled {
            let end = sub.cancel_at.or_else(|| {
                sub.current_period_end
                    .or_else(|| sub.items.data.iter().find_map(|i| i.current_period_end))
            });
            if let Some(end) = end {
                self.tag_last("cancel_scheduled_for", &end.to_string());
            }
        }
        Ok(())
    }

    fn tag_last(&mut self, key: &str, value: &str) {
        if let Some(event) = self.output.events.last_mut() {
            event.properties.insert(key.into(), value.into());
        }
    }

    fn invoice_event(&mut self, invoice: &Invoice, name: EventName, key: &str) -> CanonicalEvent {
        let mut event = self.new_event(name, key);
        if let Some(sub_id) = invoice.subscription_id() {
            self.output.ordering_key = format!("subscription:{sub_id}");
            event.subscription.subscription_id = Some(sub_id.to_string());
        }
        event.customer = Customer {
            customer_id: invoice.customer.as_ref().map(|c| c.id().to_string()),
            email: non_empty(
                invoice
                    .customer_email
                    .as_deref()
                    .or(invoice.customer.as_ref().and_then(Expandable::email)),
            ),
            ..Customer::default()
        };
        // Invoices copy the customer's name, phone and address at finalisation.
        event
            .customer
            .set_full_name(invoice.customer_name.as_deref());
        event.customer.set_country(
            invoice
                .customer_address
                .as_ref()
                .and_then(|a| a.country.as_deref()),
        );
        event.touchpoints.phone = non_empty(invoice.customer_phone.as_deref());
        event
            .properties
            .insert("invoice_id".into(), invoice.id.clone());
        event
    }

    fn invoice_paid(&mut self, invoice: &Invoice) {
        let reason = invoice.billing_reason.as_deref().unwrap_or("");
        if invoice.amount_paid <= 0 {
            return self.ignore("invoice paid with amount 0 carries no revenue");
        }
        let Some(sub_id) = invoice.subscription_id().map(str::to_string) else {
            return self.ignore("invoice is not for a subscription");
        };
        match reason {
            "subscription_cycle" => {}
            "subscription_create" => {
                self.output.ordering_key = format!("subscription:{sub_id}");
                return self.ignore(
                    "first invoice: the start is counted from customer.subscription.created/updated",
                );
            }
            "subscription_update" => {
                self.output.ordering_key = format!("subscription:{sub_id}");
                return self.ignore(
                    "proration invoice: the change is counted from customer.subscription.updated",
                );
            }
            other => {
                return self.ignore(&format!(
                    "invoice billing_reason {other:?} is not a renewal"
                ))
            }
        }
        let period = invoice.service_period();
        let key = match period {
            Some(p) => format!("{sub_id}@{}", p.start),
            None => format!("{sub_id}@{}", invoice.id),
        };
        let mut event = self.invoice_event(invoice, EventName::SubscriptionRenewed, &key);
        let currency = invoice.currency.to_ascii_uppercase();
        let tax = invoice.tax_minor();
        event.values = Values {
            gross_value: Some(Amount::from_minor(invoice.amount_paid, &currency)),
            net_value: Some(Amount::from_minor(
                invoice.amount_paid.saturating_sub(tax),
                &currency,
            )),
            tax_amount: Some(Amount::from_minor(tax, &currency)),
            ..line_recurring_values(&invoice.lines.data, &currency)
        };
        if let Some(p) = period {
            event
                .properties
                .insert("period_start".into(), p.start.to_string());
            event
                .properties
                .insert("period_end".into(), p.end.to_string());
        }
        self.output.events.push(event);
    }

    fn invoice_failed(&mut self, invoice: &Invoice) {
        let attempt = invoice.attempt_count.unwrap_or(1);
        let key = format!("{}#{attempt}", invoice.id);
        let mut event = self.invoice_event(invoice, EventName::PaymentFailed, &key);
        event.values = amount_values(invoice.amount_due, &invoice.currency);
        event
            .properties
            .insert("attempt_count".into(), attempt.to_string());
        if let Some(reason) = &invoice.billing_reason {
            event
                .properties
                .insert("billing_reason".into(), reason.clone());
        }
        if let Some(next) = invoice.next_payment_attempt {
            event
                .properties
                .insert("next_payment_attempt".into(), next.to_string());
        }
        self.output.events.push(event);
    }

    fn refund(&mut self, refund: &Refund, charge: Option<&Charge>) {
        if matches!(refund.status.as_deref(), Some("failed" | "canceled")) {
            return self.ignore("refund did not go through");
        }
        let charge_id = refund
            .charge
            .as_ref()
            .map(|c| c.id().to_string())
            .or_else(|| charge.map(|c| c.id.clone()));
        self.output.ordering_key = match &charge_id {
            Some(id) => format!("charge:{id}"),
            None => format!("refund:{}", refund.id),
        };
        let mut event = self.new_event(EventName::Refund, &refund.id);
        event.values = amount_values(refund.amount, &refund.currency);
        event
            .properties
            .insert("refund_id".into(), refund.id.clone());
        if let Some(id) = charge_id {
            event.properties.insert("charge_id".into(), id);
        }
        if let Some(reason) = &refund.reason {
            event
                .properties
                .insert("refund_reason".into(), reason.clone());
        }
        if let Some(charge) = charge {
            fill_charge_context(&mut event, charge);
        }
        self.output.events.push(event);
    }

    /// `charge.refunded` names the refund only in API versions before 2022-11-15; then it
    /// shares `refund.created`'s occurrence key (the refund id). Without the list, the
    /// refunded amount is the growth of `amount_refunded`.
    fn charge_refunded(&mut self, charge: &Charge, previous: Option<&Value>) {
        if let Some(newest) = charge
            .refunds
            .as_ref()
            .and_then(|list| list.data.iter().max_by_key(|r| (r.created, r.id.as_str())))
        {
            return self.refund(newest, Some(charge));
        }
        let before = previous
            .and_then(|p| p.get("amount_refunded"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let amount = charge.amount_refunded.saturating_sub(before);
        if amount <= 0 {
            return self.ignore("charge.refunded without a newly refunded amount");
        }
        self.output.ordering_key = format!("charge:{}", charge.id);
        let key = format!("{}:refunded:{}", charge.id, charge.amount_refunded);
        let mut event = self.new_event(EventName::Refund, &key);
        event.values = amount_values(amount, &charge.currency);
        event
            .properties
            .insert("charge_id".into(), charge.id.clone());
        fill_charge_context(&mut event, charge);
        self.output.events.push(event);
    }
}

fn fill_charge_context(event: &mut CanonicalEvent, charge: &Charge) {
    event.customer.customer_id = charge.customer.as_ref().map(|c| c.id().to_string());
    event.customer.email = non_empty(
        charge
            .billing_details
            .as_ref()
            .and_then(|b| b.email.as_deref())
            .or(charge.receipt_email.as_deref())
            .or(charge.customer.as_ref().and_then(Expandable::email)),
    );
    if let Some(invoice) = &charge.invoice {
        event
            .properties
            .insert("invoice_id".into(), invoice.id().to_string());
    }
}

/// An amount of money (paid, due or refunded) in a Stripe currency code.
fn amount_values(minor: i64, currency: &str) -> Values {
    let currency = currency.to_ascii_uppercase();
    Values {
        gross_value: Some(Amount::from_minor(minor, &currency)),
        currency: Some(currency),
        ..Values::default()
    }
}

/// Each subscription item's price and quantity.
fn item_prices(items: &[SubscriptionItem]) -> Vec<(&Price, Option<i64>)> {
    items
        .iter()
        .filter_map(|item| Some((item.price.as_ref()?, item.quantity)))
        .collect()
}

/// MRR/ARR from pre-basil invoice lines that carry their price; basil lines don't, and
/// the renewal inherits the subscription's known MRR during enrichment instead.
fn line_recurring_values(lines: &[InvoiceLine], currency: &str) -> Values {
    let prices: Vec<(&Price, Option<i64>)> = lines
        .iter()
        .filter_map(|line| Some((line.price.as_ref()?, line.quantity)))
        .collect();
    recurring_values(&prices, Some(currency))
}

/// MRR/ARR summed over licensed recurring prices (`unit_amount` × quantity). Metered and
/// tiered prices have no knowable amount at this point and are left out; if nothing is
/// knowable the values stay empty rather than claiming zero revenue.
fn recurring_values(prices: &[(&Price, Option<i64>)], currency: Option<&str>) -> Values {
    let currency = currency
        .map(str::to_string)
        .or_else(|| prices.first().map(|(p, _)| p.currency.clone()))
        .map(|c| c.to_ascii_uppercase());
    let Some(currency) = currency else {
        return Values::default();
    };
    let mut mrr_minor: i64 = 0;
    let mut arr_minor: i64 = 0;
    let mut priced_items = 0;
    for &(price, quantity) in prices {
        let Some(recurring) = &price.recurring else {
            continue;
        };
        if recurring.usage_type.as_deref() == Some("metered")
            || !price.currency.eq_ignore_ascii_case(&currency)
        {
            continue;
        }
        let Some(unit_minor) = price.unit_amount.or_else(|| {
            // `unit_amount_decimal` may carry sub-minor precision ("1.5" cents); whole
            // minor units are what gets billed per unit.
            price
                .unit_amount_decimal
                .as_deref()
                .and_then(|d| d.split('.').next()?.parse().ok())
        }) else {
            continue;
        };
        let Some(interval) = Interval::parse(&recurring.interval) else {
            continue;
        };
        let Some(per_period) = unit_minor.checked_mul(quantity.unwrap_or(1)) else {
            continue;
        };
        let Some(r) = recurring_from_period(per_period, interval, recurring.interval_count) else {
            continue;
        };
        mrr_minor = mrr_minor.saturating_add(r.mrr_minor);
        arr_minor = arr_minor.saturating_add(r.arr_minor);
        priced_items += 1;
    }
    if priced_items == 0 {
        return Values {
            currency: Some(currency),
            ..Values::default()
        };
    }
    Values {
        mrr: Some(Amount::from_minor(mrr_minor, &currency)),
        arr: Some(Amount::from_minor(arr_minor, &currency)),
        currency: Some(currency),
        ..Values::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_5ecret";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"customer.subscription.created"}"#;
    const NOW: i64 = 1_767_225_600;

    fn check(header: Option<&str>, secrets: &[&str]) -> Result<(), VerifyError> {
        verify(header, BODY, secrets, NOW, DEFAULT_TOLERANCE_SECONDS)
    }

    #[test]
    fn valid_signature_passes() {
        let header = sign(SECRET, NOW, BODY);
        assert_eq!(check(Some(&header), &[SECRET]), Ok(()));
    }

    #[test]
    fn known_vector_matches_independent_hmac() {
        // printf '%s' '1767225600.{"id":"evt_1","type":"customer.subscription.created"}' |
        //   openssl dgst -sha256 -hmac whsec_test_5ecret
        assert_eq!(
            sign(SECRET, NOW, BODY),
            format!("t={NOW},v1=32cdf89e4c52fb419240dc39e1756a8d7736888ecd87cf511ab4b30ecd6bd6cb")
        );
    }

    #[test]
    fn tampered_body_fails() {
        let header = sign(SECRET, NOW, BODY);
        let tampered = br#"{"id":"evt_1","type":"customer.subscription.deleted"}"#;
        assert_eq!(
            verify(
                Some(&header),
                tampered,
                &[SECRET],
                NOW,
                DEFAULT_TOLERANCE_SECONDS
            ),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn wrong_secret_fails() {
        let header = sign("whsec_other", NOW, BODY);
        assert_eq!(check(Some(&header), &[SECRET]), Err(VerifyError::Mismatch));
    }

    #[test]
    fn stale_and_future_timestamps_fail_with_their_own_error() {
        let stale = sign(SECRET, NOW - 301, BODY);
        assert_eq!(
            check(Some(&stale), &[SECRET]),
            Err(VerifyError::StaleTimestamp {
                skew_seconds: 301,
                tolerance_seconds: 300
            })
        );
        let future = sign(SECRET, NOW + 301, BODY);
        assert!(matches!(
            check(Some(&future), &[SECRET]),
            Err(VerifyError::StaleTimestamp { .. })
        ));
        let edge = sign(SECRET, NOW - 300, BODY);
        assert_eq!(check(Some(&edge), &[SECRET]), Ok(()));
    }

    #[test]
    fn any_of_several_v1_values_may_match() {
        let good = sign(SECRET, NOW, BODY);
        let good_v1 = good.split("v1=").nth(1).unwrap();
        let header = format!("t={NOW},v1={},v1={good_v1},v0=deadbeef", "ab".repeat(32));
        assert_eq!(check(Some(&header), &[SECRET]), Ok(()));
    }

    #[test]
    fn any_configured_secret_may_match_during_rotation() {
        let header = sign("whsec_new", NOW, BODY);
        assert_eq!(check(Some(&header), &[SECRET, "whsec_new"]), Ok(()));
    }

    #[test]
    fn missing_and_garbage_headers_are_reported() {
        assert_eq!(
            check(None, &[SECRET]),
            Err(VerifyError::MissingHeader {
                header: SIGNATURE_HEADER
            })
        );
        for garbage in [
            "",
            "garbage",
            "t=abc,v1=00",
            "v1=abcd",
            "t=1767225600",
            "t=1767225600,v0=ab",
        ] {
            assert!(
                matches!(
                    check(Some(garbage), &[SECRET]),
                    Err(VerifyError::MalformedHeader { .. })
                ),
                "{garbage:?}"
            );
        }
        let non_hex = format!("t={NOW},v1=zz");
        assert_eq!(
            check(Some(&non_hex), &[SECRET]),
            Err(VerifyError::MalformedHeader {
                header: SIGNATURE_HEADER,
                detail: "no v1= signature"
            })
        );
    }

    #[test]
    fn empty_secret_list_is_a_configuration_error() {
        let header = sign(SECRET, NOW, BODY);
        assert_eq!(
            check(Some(&header), &[]),
            Err(VerifyError::NoSecretConfigured)
        );
        assert_eq!(
            check(Some(&header), &[""]),
            Err(VerifyError::NoSecretConfigured)
        );
    }

    #[test]
    fn malformed_json_is_a_payload_error() {
        assert!(matches!(
            map_event("m", b"{not json"),
            Err(IngestError::MalformedPayload(_))
        ));
        let wrong_shape = br#"{"id":"evt_1","type":"customer.subscription.created","created":1,"data":{"object":{"id":5}}}"#;
        assert!(matches!(
            map_event("m", wrong_shape),
            Err(IngestError::MalformedPayload(_))
        ));
    }
}
