//! The pure part of webhook ingestion: limits, merchant checks, verify + map, and the
//! delivery jobs the edge must enqueue before it may acknowledge.

use crate::config::{MerchantConfig, MerchantStatus};
use crate::delivery::DeliveryJob;
use crate::enrich::{enrich, StoredContext};
use crate::error::IngestError;
use crate::sources::{self, SourceOutput, WebhookRequest};

/// Largest accepted webhook body. Real Stripe events stay far below it; anything larger
/// is refused with 413 before it is read into memory twice.
pub const MAX_BODY_BYTES: usize = 512 * 1024;

pub fn check_body_size(size: usize) -> Result<(), IngestError> {
    if size > MAX_BODY_BYTES {
        return Err(IngestError::PayloadTooLarge {
            size,
            limit: MAX_BODY_BYTES,
        });
    }
    Ok(())
}

/// What one accepted webhook turns into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestPlan {
    pub output: SourceOutput,
    /// One per forwardable event per connected destination.
    pub jobs: Vec<DeliveryJob>,
}

/// Verifies and maps with the source's module, then checks the merchant. The signature
/// comes first: until it holds, every refusal looks the same to the caller, so an
/// unsigned request learns neither the merchant's plan nor its configured sources.
pub fn verify_and_map(
    source_name: &str,
    merchant: &MerchantConfig,
    request: &WebhookRequest,
    now: i64,
) -> Result<Vec<SourceOutput>, IngestError> {
    check_body_size(request.body.len())?;
    let source =
        sources::find(source_name).ok_or_else(|| IngestError::UnknownSource(source_name.into()))?;
    let outputs = (source.ingest)(merchant, request, now).map_err(|err| {
        if err.is_before_authentication() {
            err.unauthenticated()
        } else {
            err
        }
    })?;
    if merchant.status == MerchantStatus::Disabled {
        return Err(IngestError::MerchantDisabled(merchant.merchant_id.clone()));
    }
    if let Some(feature) = source.required_feature {
        merchant.plan.require(feature)?;
    }
    for output in &outputs {
        check_timestamps(output)?;
    }
    Ok(outputs)
}

/// Every time a mapped notification carries must be one storage and the platforms can
/// represent; sources parse their own fields, this catches whatever they let through.
fn check_timestamps(output: &SourceOutput) -> Result<(), IngestError> {
    let out_of_range = |field: &str| {
        IngestError::MalformedPayload(format!(
            "{field} (the notification's time) is out of range: unix seconds from 1970 through 9999"
        ))
    };
    let check = |value: i64, field: &str| {
        crate::input::check_unix_seconds(value)
            .map(|_| ())
            .map_err(|_| out_of_range(field))
    };
    check(output.occurred_at, "occurred_at")?;
    for event in &output.events {
        check(event.occurred_at, "occurred_at")?;
        let subscription = &event.subscription;
        for (value, field) in [
            (subscription.trial_start_at, "trial_start"),
            (subscription.trial_end_at, "trial_end"),
            (subscription.effective_end_at, "cancel_at"),
        ] {
            if let Some(value) = value {
                check(value, field)?;
            }
        }
    }
    if let Some(observation) = &output.subscription {
        check(observation.observed_at, "occurred_at")?;
        if let Some(trial_end) = observation.trial_end_at {
            check(trial_end, "trial_end")?;
        }
    }
    if let Some(customer) = &output.customer {
        check(customer.observed_at, "occurred_at")?;
    }
    Ok(())
}

/// Enriches the mapped events with stored context, then plans one delivery job per
/// forwardable event per connected destination.
pub fn plan(
    mut output: SourceOutput,
    merchant: &MerchantConfig,
    context: &StoredContext,
) -> IngestPlan {
    enrich(&mut output.events, context, &merchant.lifecycle);
    // Decided after enrichment: a renewal may have turned out to be a trial conversion.
    if let Some(siblings) = sources::find(output.source).and_then(|s| s.conversion_siblings) {
        if output
            .events
            .iter()
            .any(|e| siblings.events.contains(&e.name))
        {
            output.sibling_wait_seconds = Some(siblings.wait_seconds);
        }
    }
    let destinations = crate::destinations::connected(merchant);
    let jobs = output
        .events
        .iter()
        .filter(|event| event.name.is_forwardable())
        .flat_map(|event| {
            destinations
                .iter()
                .filter(move |d| {
                    crate::destinations::find(d).is_some_and(|spec| (spec.accepts)(event, merchant))
                })
                .map(move |d| DeliveryJob::new(event.clone(), d))
        })
        .collect();
    IngestPlan { output, jobs }
}
