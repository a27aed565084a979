//! Shared by the table-driven mapping tests: fixtures and one-request ingestion.
#![allow(dead_code)]

use tracklayer::config::MerchantConfig;
use tracklayer::error::IngestError;
use tracklayer::ingest;
use tracklayer::sources::{Headers, SourceOutput, WebhookRequest};

pub const URL: &str = "https://edge.tracklayer.test/v1/integrations/test/events?merchant_id=m";

pub fn fixture(source: &str, name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{source}/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap_or_else(|e| panic!("fixture {source}/{name}: {e}"))
}

/// Every notification a request carried.
pub fn ingest_all(
    source: &str,
    merchant: &MerchantConfig,
    headers: &Headers,
    body: &[u8],
    now: i64,
) -> Result<Vec<SourceOutput>, IngestError> {
    ingest::verify_and_map(
        source,
        merchant,
        &WebhookRequest::post(URL, headers, body),
        now,
    )
}

/// The single notification a request carried.
pub fn ingest_one(
    source: &str,
    merchant: &MerchantConfig,
    headers: &Headers,
    body: &[u8],
    now: i64,
) -> Result<SourceOutput, IngestError> {
    ingest_all(source, merchant, headers, body, now).map(|mut outputs| {
        assert_eq!(outputs.len(), 1, "one notification expected");
        outputs.remove(0)
    })
}
