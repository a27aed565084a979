//! What CRM sources (HubSpot, Salesforce, Pipedrive) share: stage rules, the context a
//! deal leaves behind for later billing events, and the events a stage change yields.
//!
//! Billing owns conversions. A stage change is always recorded as `pipeline_stage_changed`
//! (never forwarded); it becomes a conversion too only for merchants whose lifecycle
//! settings say the CRM owns conversions (no billing source). Either way the deal's
//! context (owner, segment, forecast category, source campaign, deal id) is stored under
//! the customer's email and billing customer id and travels on later billing events.

use super::{Notice, SourceOutput, SubscriptionObservation};
use crate::config::MerchantConfig;
use crate::enrich::ConversionSource;
use crate::event::{EventName, Values};
use crate::money::Amount;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a stage (`field:value`, e.g. `dealstage:closedwon`) means as a conversion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRule {
    pub event: EventName,
    /// Only when the record's previous stage is one of these (e.g. reopened from churn).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only_from: Vec<String>,
}

impl StageRule {
    pub fn new(event: EventName) -> Self {
        StageRule {
            event,
            only_from: Vec::new(),
        }
    }
}

pub use crate::enrich::CrmContext;

/// One stage change of one CRM record, as the CRM module read it.
#[derive(Debug, Clone, Default)]
pub struct StageChange {
    /// `deal:<id>`, `contact:<id>`, `opportunity:<id>`: ordering and state key.
    pub record: String,
    /// `field:value` looked up in the stage rules.
    pub stage_key: String,
    pub stage: String,
    pub email: Option<String>,
    pub billing_customer_id: Option<String>,
    pub amount: Option<Amount>,
    pub currency: Option<String>,
    /// owner, segment, forecast_category, source_campaign, deal_id …
    pub context: BTreeMap<String, String>,
    /// Why this change cannot be a conversion even for a CRM-owned merchant (e.g. the
    /// payload has ids only: no identity to match and no amount).
    pub not_a_conversion: Option<&'static str>,
}

/// Builds the output of one stage change: the pipeline event, the conversion for
/// CRM-owned merchants, the record's new state and the context to store.
pub(crate) fn stage_output(
    notice: &Notice,
    merchant: &MerchantConfig,
    rules: &BTreeMap<String, StageRule>,
    change: StageChange,
) -> SourceOutput {
    let mut output = notice.output(change.record.clone());
    output.subscription = Some(SubscriptionObservation {
        subscription_id: change.record.clone(),
        status: change.stage.clone(),
        observed_at: notice.occurred_at,
        source_event_id: notice.event_id.clone(),
        ..Default::default()
    });
    let values = Values {
        currency: change.currency.clone(),
        contract_value: change.amount,
        ..Values::default()
    };
    let mut pipeline = notice.event(EventName::PipelineStageChanged, &notice.event_id);
    pipeline.customer.email = change.email.clone();
    pipeline.customer.customer_id = change.billing_customer_id.clone();
    pipeline.values = values.clone();
    pipeline
        .properties
        .insert("crm_stage".into(), change.stage.clone());
    pipeline
        .properties
        .insert("crm_record".into(), change.record.clone());
    for (key, value) in &change.context {
        pipeline
            .properties
            .insert(format!("crm_{key}"), value.clone());
    }
    let crm_owned = merchant.lifecycle.conversions_from == ConversionSource::Crm;
    let rule = rules.get(&change.stage_key);
    let mut change = change;
    if change.email.is_none() && change.billing_customer_id.is_none() {
        // A conversion no platform can match would only end in the dead-letter store.
        change.not_a_conversion = change.not_a_conversion.or(Some(
            "no email or billing customer id to match the conversion on",
        ));
    }
    if let (true, Some(_), Some(reason)) = (crm_owned, rule, change.not_a_conversion) {
        pipeline
            .properties
            .insert("conversion_skipped".into(), reason.into());
    }
    if let (true, Some(rule), None) = (crm_owned, rule, change.not_a_conversion) {
        // One conversion per record and stage, however often the CRM re-sends it.
        let key = format!("{}:{}", change.record, change.stage_key);
        let mut conversion = pipeline.clone();
        conversion.reclassify(rule.event, &key);
        conversion.subscription.subscription_id = Some(change.record.clone());
        if !rule.only_from.is_empty() {
            conversion
                .properties
                .insert("only_if_previous_stage_in".into(), rule.only_from.join(","));
        }
        output.events.push(pipeline);
        output.events.push(conversion);
    } else {
        output.events.push(pipeline);
    }
    let mut identity_keys = Vec::new();
    if let Some(email) = &change.email {
        identity_keys.push(CrmContext::email_key(email));
    }
    if let Some(customer) = &change.billing_customer_id {
        identity_keys.push(CrmContext::customer_key(customer));
    }
    if !identity_keys.is_empty() {
        let mut fields = change.context;
        fields.insert("stage".into(), change.stage);
        output.crm_context = Some(CrmContext {
            crm: notice.source.to_string(),
            identity_keys,
            observed_at: notice.occurred_at,
            fields,
        });
    }
    output
}
