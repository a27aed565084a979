//! Property tests standing in for fuzz targets: for every source, arbitrary bytes and
//! arbitrary mutations of a real fixture, correctly signed or authenticated, must
//! produce a result (events or a typed error), never a panic. A panic in wasm takes the
//! isolate down with every request in it.

use crate::mapping;

use base64::Engine;
use proptest::prelude::*;
use tracklayer::config::MerchantConfig;
use tracklayer::enrich::{ConversionSource, StoredContext};
use tracklayer::ingest;
use tracklayer::sources::{
    hubspot, lemonsqueezy, paddle, recharge, stripe, Headers, WebhookRequest,
};

const NOW: i64 = 1_768_563_400;
const URL: &str = "https://edge.tracklayer.test/v1/integrations/x/events?merchant_id=m&token=tok";

fn merchant() -> MerchantConfig {
    let mut merchant = MerchantConfig {
        merchant_id: "m".into(),
        // Stripe ingest is a Scale feature.
        plan: tracklayer::config::Plan::Scale,
        ..MerchantConfig::default()
    }
    .with_source("stripe", serde_json::json!({ "endpoint_secrets": ["s"] }))
    .with_source("paddle", serde_json::json!({ "secret_keys": ["s"] }))
    .with_source(
        "lemonsqueezy",
        serde_json::json!({ "signing_secrets": ["s"] }),
    )
    .with_source("recharge", serde_json::json!({ "client_secrets": ["s"] }))
    .with_source(
        "chargebee",
        serde_json::json!({ "basic_auth": [{ "username": "u", "password": "p" }] }),
    )
    .with_source("hubspot", serde_json::json!({ "client_secrets": ["s"] }))
    .with_source(
        "salesforce",
        serde_json::json!({ "organization_id": "00D5g000004XyZaEAK", "endpoint_tokens": ["tok"] }),
    )
    .with_source(
        "pipedrive",
        serde_json::json!({ "basic_auth": [{ "username": "u", "password": "p" }] }),
    )
    .with_destination(
        "meta",
        serde_json::json!({ "pixel_id": "1", "access_token": "t" }),
    );
    merchant.lifecycle.conversions_from = ConversionSource::Crm;
    merchant
}

/// Headers that make `body` authentic for `source`.
fn authentic(source: &str, body: &[u8]) -> Headers {
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("u:p")
    );
    match source {
        "stripe" => Headers::new().with("Stripe-Signature", &stripe::sign("s", NOW, body)),
        "paddle" => Headers::new().with("Paddle-Signature", &paddle::sign("s", NOW, body)),
        "lemonsqueezy" => Headers::new().with("X-Signature", &lemonsqueezy::sign("s", body)),
        // The timestamped scheme: the legacy header is refused by default.
        "recharge" => Headers::new()
            .with(
                "X-Recharge-Webhook-Signature",
                &recharge::sign("s", NOW, body),
            )
            .with("X-Recharge-Topic", "charge/paid"),
        "hubspot" => Headers::new()
            .with(
                "X-HubSpot-Signature-v3",
                &hubspot::sign_v3("s", "POST", URL, body, NOW * 1000),
            )
            .with("X-HubSpot-Request-Timestamp", &(NOW * 1000).to_string()),
        "salesforce" => Headers::new().with("X-TrackLayer-Token", "tok"),
        _ => Headers::new().with("Authorization", &basic),
    }
}

/// Verify, map and plan; any panic fails the property.
fn survives(source: &str, body: &[u8]) {
    let merchant = merchant();
    let headers = authentic(source, body);
    if let Ok(outputs) = ingest::verify_and_map(
        source,
        &merchant,
        &WebhookRequest::post(URL, &headers, body),
        NOW,
    ) {
        for output in outputs {
            let _ = ingest::plan(output, &merchant, &StoredContext::default());
        }
    }
}

const SOURCES: [(&str, &str); 8] = [
    ("stripe", "invoice.paid.renewal.json"),
    ("paddle", "transaction.paid.renewal.json"),
    ("lemonsqueezy", "subscription_payment_success.renewal.json"),
    ("recharge", "charge.paid.recurring.json"),
    ("chargebee", "subscription_renewed.json"),
    ("hubspot", "workflow.deal-closedwon.json"),
    ("salesforce", "outbound-message.opportunities.xml"),
    ("pipedrive", "v2.deal.change.won.json"),
];

/// A fixture with one byte replaced and a slice removed: mostly still JSON/XML-shaped,
/// so the mapping code (not only the JSON parser) sees odd values.
fn mutated(fixture: &[u8], at: usize, byte: u8, cut: usize) -> Vec<u8> {
    let mut body = fixture.to_vec();
    if body.is_empty() {
        return body;
    }
    let at = at % body.len();
    body[at] = byte;
    let end = (at + cut).min(body.len());
    body.drain(at..end);
    body
}

/// JSON fixtures with one value swapped for another type (string ↔ number ↔ null …).
fn retyped(fixture: &[u8], pick: usize, replacement: u8) -> Vec<u8> {
    use serde_json::Value;
    fn count(v: &Value) -> usize {
        1 + match v {
            Value::Array(items) => items.iter().map(count).sum(),
            Value::Object(map) => map.values().map(count).sum(),
            _ => 0,
        }
    }
    fn replace_nth(v: &mut Value, n: &mut usize, new: &Value) -> bool {
        if *n == 0 {
            *v = new.clone();
            return true;
        }
        *n -= 1;
        match v {
            Value::Array(items) => items.iter_mut().any(|i| replace_nth(i, n, new)),
            Value::Object(map) => map.values_mut().any(|i| replace_nth(i, n, new)),
            _ => false,
        }
    }
    let Ok(mut doc) = serde_json::from_slice::<Value>(fixture) else {
        return fixture.to_vec();
    };
    let new = match replacement % 6 {
        0 => Value::Null,
        1 => serde_json::json!(-1),
        2 => serde_json::json!(""),
        3 => serde_json::json!(i64::MAX),
        4 => serde_json::json!([]),
        _ => serde_json::json!("9999999999999999999999.999"),
    };
    let mut n = pick % count(&doc);
    replace_nth(&mut doc, &mut n, &new);
    serde_json::to_vec(&doc).unwrap()
}

proptest! {
    // 256 cases per property by default; PROPTEST_CASES=20000 for a longer run.
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn arbitrary_authentic_bytes_never_panic(source in 0..SOURCES.len(), body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        survives(SOURCES[source].0, &body);
    }

    #[test]
    fn mutated_authentic_fixtures_never_panic(source in 0..SOURCES.len(), at in any::<usize>(), byte in any::<u8>(), cut in 0usize..64) {
        let (name, fixture) = SOURCES[source];
        let body = mutated(&mapping::fixture(name, fixture), at, byte, cut);
        survives(name, &body);
    }

    #[test]
    fn retyped_authentic_fixtures_never_panic(source in 0..SOURCES.len(), pick in any::<usize>(), replacement in any::<u8>()) {
        let (name, fixture) = SOURCES[source];
        let body = retyped(&mapping::fixture(name, fixture), pick, replacement);
        survives(name, &body);
    }
}

/// The properties above only mean something if authentic input reaches the mapping
/// code: a signing change that made every case a 401 would leave them passing silently.
#[test]
fn every_authentic_fixture_reaches_the_mapping_code() {
    for (source, fixture) in SOURCES {
        let body = mapping::fixture(source, fixture);
        let headers = authentic(source, &body);
        let outputs = ingest::verify_and_map(
            source,
            &merchant(),
            &WebhookRequest::post(URL, &headers, &body),
            NOW,
        )
        .unwrap_or_else(|e| panic!("{source}/{fixture} refused: {} ({e})", e.reason_code()));
        assert!(!outputs.is_empty(), "{source}/{fixture}");
    }
}

#[test]
fn every_registered_source_is_fuzzed() {
    let fuzzed: Vec<&str> = SOURCES.iter().map(|(name, _)| *name).collect();
    for spec in tracklayer::sources::REGISTRY {
        assert!(
            fuzzed.contains(&spec.name),
            "{} has no fuzz target",
            spec.name
        );
    }
}
