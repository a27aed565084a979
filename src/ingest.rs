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

/// Checks the merchant and the body, then verifies and maps with the source's module.
pub fn verify_and_map(
    source_name: &str,
    merchant: &MerchantConfig,
    request: &WebhookRequest,
    now: i64,
) -> Result<Vec<SourceOutput>, IngestError> {
    if merchant.status == MerchantStatus::Disabled {
        return Err(IngestError::MerchantDisabled(merchant.merchant_id.clone()));
    }
    check_body_size(request.body.len())?;
    let source =
        sources::find(source_name).ok_or_else(|| IngestError::UnknownSource(source_name.into()))?;
    if let Some(feature) = source.required_feature {
        merchant.plan.require(feature)?;
    }
    (source.ingest)(merchant, request, now)
}

/// Enriches the mapped events with stored context, then plans one delivery job per
/// forwardable event per connected destination.
pub fn plan(
    mut output: SourceOutput,
    merchant: &MerchantConfig,
    context: &StoredContext,
) -> IngestPlan {
    enrich(&mut output.events, context, &merchant.lifecycle);
    let destinations = merchant.connected_destinations();
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
