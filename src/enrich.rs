//! Reading a mapped event in the context of what we already know: the subscription's
//! stored state (from the ledger) and the customer's stored record (from D1). Pure, so
//! the rules are tested natively; the edge only loads the context.

use crate::event::{CanonicalEvent, EventName};
use crate::ledger::SubscriptionState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A renewal whose paid period starts within this distance of the trial end is the
/// trial's first paid period, i.e. the conversion.
const TRIAL_END_SLACK_SECONDS: i64 = 24 * 3600;

pub use crate::config::{ConversionSource, LifecycleSettings};

/// Deal context kept per customer identity and attached to later billing events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrmContext {
    pub crm: String,
    /// `email:<lower-case email>` and/or `customer:<billing customer id>`.
    pub identity_keys: Vec<String>,
    pub observed_at: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

impl CrmContext {
    pub const FIELDS: [&'static str; 6] = [
        "deal_id",
        "stage",
        "owner",
        "segment",
        "forecast_category",
        "source_campaign",
    ];

    pub fn email_key(email: &str) -> String {
        format!("email:{}", email.trim().to_ascii_lowercase())
    }

    pub fn customer_key(customer_id: &str) -> String {
        format!("customer:{}", customer_id.trim())
    }
}

/// What is stored about a billing customer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownCustomer {
    pub email: Option<String>,
    /// When this customer's last subscription was cancelled (unix s), and which one.
    pub last_cancelled_at: Option<i64>,
    pub last_cancelled_subscription: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct StoredContext {
    pub subscription: Option<SubscriptionState>,
    pub customer: Option<KnownCustomer>,
    /// The newest CRM deal context for this customer, if a CRM told us one.
    pub crm: Option<CrmContext>,
}

pub fn enrich(
    events: &mut Vec<CanonicalEvent>,
    context: &StoredContext,
    settings: &LifecycleSettings,
) {
    events.retain_mut(|event| previous_stage_allows(event, context));
    for event in events.iter_mut() {
        attach_crm_context(event, context);
        fill_email(event, context);
        recognise_plan_change(event, context);
        recognise_trial_conversion(event, context);
        inherit_recurring_values(event, context);
        value_cancellation(event, context);
        recognise_reactivation(event, context, settings);
    }
}

/// A CRM conversion that only counts from certain stages (a contact reopened from churn)
/// is kept only when the record's stored stage is one of them.
fn previous_stage_allows(event: &mut CanonicalEvent, context: &StoredContext) -> bool {
    let Some(allowed) = event.properties.remove("only_if_previous_stage_in") else {
        return true;
    };
    let previous = context.subscription.as_ref().map(|s| s.status.as_str());
    let kept = previous.is_some_and(|p| allowed.split(',').any(|a| a == p));
    if let (true, Some(previous)) = (kept, previous) {
        event
            .properties
            .insert("prior_status".into(), previous.to_string());
    }
    kept
}

/// Billing events of a customer the CRM knows carry the deal's context.
fn attach_crm_context(event: &mut CanonicalEvent, context: &StoredContext) {
    let Some(crm) = &context.crm else { return };
    if event.name == EventName::PipelineStageChanged || event.property("crm_deal_id").is_some() {
        return;
    }
    for (key, value) in &crm.fields {
        event
            .properties
            .entry(format!("crm_{key}"))
            .or_insert_with(|| value.clone());
    }
    event
        .properties
        .entry("crm_source".into())
        .or_insert_with(|| crm.crm.clone());
}

fn fill_email(event: &mut CanonicalEvent, context: &StoredContext) {
    if event.customer.email.is_none() {
        event.customer.email = context.customer.as_ref().and_then(|c| c.email.clone());
    }
}

/// Sources without previous attributes (Paddle) mark updates to be compared with the
/// stored state: a changed MRR in the same currency is an upgrade or a downgrade.
fn recognise_plan_change(event: &mut CanonicalEvent, context: &StoredContext) {
    if event.name != EventName::SubscriptionUpdated
        || event.property("compare_mrr_with_state") != Some("true")
    {
        return;
    }
    let Some(state) = &context.subscription else {
        return;
    };
    let (Some(before), Some(after)) = (state.mrr, event.values.mrr) else {
        return;
    };
    if state.currency != event.values.currency || before.exponent != after.exponent {
        return;
    }
    let delta = after.minor.saturating_sub(before.minor);
    if delta == 0 {
        return;
    }
    let name = if delta > 0 {
        EventName::SubscriptionUpgraded
    } else {
        EventName::SubscriptionDowngraded
    };
    let key = event.source_event_id.clone();
    event.reclassify(name, &key);
    event.values.mrr_delta = Some(crate::money::Amount {
        minor: delta,
        exponent: after.exponent,
    });
    event
        .properties
        .insert("previous_mrr".into(), before.to_string());
}

fn recognise_trial_conversion(event: &mut CanonicalEvent, context: &StoredContext) {
    if event.name != EventName::SubscriptionRenewed {
        return;
    }
    let (Some(state), Some(sub_id)) = (&context.subscription, &event.subscription.subscription_id)
    else {
        return;
    };
    let Some(trial_end) = state.trial_end_at else {
        return;
    };
    let Some(period_start) = event
        .property("period_start")
        .and_then(|p| p.parse::<i64>().ok())
    else {
        return;
    };
    if period_start.saturating_sub(trial_end).unsigned_abs() <= TRIAL_END_SLACK_SECONDS as u64 {
        let sub_id = sub_id.clone();
        event.reclassify(EventName::TrialConverted, &sub_id);
        event.subscription.trial_end_at = Some(trial_end);
        event
            .properties
            .insert("prior_status".into(), "trialing".into());
    }
}

/// Invoices in current Stripe API versions don't carry the price's interval: the MRR
/// comes from the subscription's last known state, when in the same currency.
fn inherit_recurring_values(event: &mut CanonicalEvent, context: &StoredContext) {
    if !matches!(
        event.name,
        EventName::SubscriptionRenewed | EventName::TrialConverted | EventName::PaymentFailed
    ) {
        return;
    }
    let Some(state) = &context.subscription else {
        return;
    };
    if state.currency.is_none() || state.currency != event.values.currency {
        return;
    }
    if event.values.mrr.is_none() {
        event.values.mrr = state.mrr;
    }
    if event.values.arr.is_none() {
        event.values.arr = state.arr;
    }
}

/// A cancellation takes away what the subscription was worth: its stored MRR (as a
/// negative `mrr_delta`), or where the source states no price, the last recurring
/// payment. Sources whose cancellation payload lacks both still send a value.
fn value_cancellation(event: &mut CanonicalEvent, context: &StoredContext) {
    if event.name != EventName::SubscriptionCancelled {
        return;
    }
    let Some(state) = &context.subscription else {
        return;
    };
    if event.values.currency.is_some() && event.values.currency != state.currency {
        return;
    }
    if event.values.currency.is_none() {
        event.values.currency.clone_from(&state.currency);
    }
    if event.values.mrr.is_none() && event.values.arr.is_none() {
        event.values.mrr = state.mrr;
        event.values.arr = state.arr;
    }
    if event.values.mrr_delta.is_none() {
        event.values.mrr_delta = event.values.mrr.map(crate::money::Amount::negated);
    }
    if event.values.mrr.is_none() && event.values.net_value.is_none() {
        event.values.net_value = state.last_payment;
    }
}

fn recognise_reactivation(
    event: &mut CanonicalEvent,
    context: &StoredContext,
    settings: &LifecycleSettings,
) {
    if event.name != EventName::SubscriptionStarted
        || event.property("prior_status").is_some()
        || settings.recovery_window_days == 0
    {
        return;
    }
    let Some(customer) = &context.customer else {
        return;
    };
    let Some(cancelled_at) = customer.last_cancelled_at else {
        return;
    };
    let sub_id = event
        .subscription
        .subscription_id
        .clone()
        .unwrap_or_default();
    if customer.last_cancelled_subscription.as_deref() == Some(sub_id.as_str()) {
        return;
    }
    let window = i64::from(settings.recovery_window_days) * 86_400;
    let since = event.occurred_at.saturating_sub(cancelled_at);
    if (0..=window).contains(&since) {
        event.reclassify(EventName::SubscriptionReactivated, &sub_id);
        event
            .properties
            .insert("prior_status".into(), "canceled".into());
        event
            .properties
            .insert("reactivation_source".into(), "new_subscription".into());
        if let Some(previous) = &customer.last_cancelled_subscription {
            event
                .properties
                .insert("previous_subscription_id".into(), previous.clone());
        }
    }
}
