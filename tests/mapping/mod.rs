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

/// One row of a mapping table: the fixture, the event it must yield (`None`: recorded as
/// ignored), its occurrence key, and JSON-pointer fields of the canonical event ("" =
/// only present).
pub struct Case {
    pub fixture: &'static str,
    pub name: Option<tracklayer::event::EventName>,
    pub occurrence_key: &'static str,
    pub fields: &'static [(&'static str, &'static str)],
}

pub fn check(case: &Case, output: &SourceOutput) {
    let Some(name) = case.name else {
        assert!(output.events.is_empty(), "{}", case.fixture);
        assert!(output.ignored_reason.is_some(), "{}", case.fixture);
        return;
    };
    assert_eq!(output.events.len(), 1, "{}", case.fixture);
    let event = &output.events[0];
    assert_eq!(event.name, name, "{}", case.fixture);
    assert_eq!(
        event.occurrence_key, case.occurrence_key,
        "{}",
        case.fixture
    );
    let json = serde_json::to_value(event).unwrap();
    for (pointer, expected) in case.fields {
        let found = json
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{} {pointer} missing in {json}", case.fixture));
        let text = found
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| found.to_string());
        if !expected.is_empty() {
            assert_eq!(text, *expected, "{} {pointer}", case.fixture);
        }
    }
}
