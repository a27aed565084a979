//! Pipedrive webhooks v1 and v2 with Basic auth (tests/fixtures/pipedrive/).

use crate::mapping;

use base64::Engine;
use tracklayer::config::MerchantConfig;
use tracklayer::enrich::ConversionSource;
use tracklayer::event::EventName;
use tracklayer::sources::{Headers, SourceOutput};

const NOW: i64 = 1_768_563_200;

fn merchant(crm_owned: bool) -> MerchantConfig {
    let mut merchant = MerchantConfig {
        merchant_id: "m_pd".into(),
        ..MerchantConfig::default()
    }
    .with_source(
        "pipedrive",
        serde_json::json!({
            "basic_auth": [{ "username": "tracklayer", "password": "pd-hook-71c2" }],
            "billing_customer_id_field": "8f5e2d7c1a9b3e4f6d0c2b8a7e1f3d5c9b7a0e2d"
        }),
    )
    .with_destination(
        "meta",
        serde_json::json!({ "pixel_id": "1", "access_token": "t" }),
    );
    if crm_owned {
        merchant.lifecycle.conversions_from = ConversionSource::Crm;
    }
    merchant
}

fn auth(password: &str) -> Headers {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("tracklayer:{password}"));
    Headers::new().with("Authorization", &format!("Basic {token}"))
}

fn mapped(name: &str, merchant: &MerchantConfig) -> SourceOutput {
    let body = mapping::fixture("pipedrive", name);
    mapping::ingest_one("pipedrive", merchant, &auth("pd-hook-71c2"), &body, NOW).expect(name)
}

#[test]
fn a_v2_deal_won_is_a_stage_change_and_for_crm_owned_merchants_a_start() {
    let output = mapped("v2.deal.change.won.json", &merchant(true));
    assert_eq!(
        output.source_event_id,
        "6b1f7c3e-2d4a-4f8b-9c0e-5a7d3b1e9f24"
    );
    assert_eq!(output.ordering_key, "deal:4812");
    let names: Vec<_> = output.events.iter().map(|e| e.name).collect();
    assert_eq!(
        names,
        [
            EventName::PipelineStageChanged,
            EventName::SubscriptionStarted
        ]
    );
    let started = &output.events[1];
    // Deal value is in major units.
    assert_eq!(
        started.values.contract_value.unwrap().to_string(),
        "24000.00"
    );
    assert_eq!(
        started.customer.customer_id.as_deref(),
        Some("cus_QxHelix01")
    );
    assert_eq!(started.occurrence_key, "deal:4812:status:won");
    let context = output.crm_context.unwrap();
    assert_eq!(context.identity_keys, ["customer:cus_QxHelix01"]);
    assert_eq!(context.fields["owner"], "13355217");

    let billing_owned = mapped("v2.deal.change.won.json", &merchant(false));
    assert_eq!(billing_owned.events.len(), 1);
}

#[test]
fn v1_stage_moves_are_recorded_and_other_changes_ignored() {
    let output = mapped("v1.updated.deal.stage.json", &merchant(true));
    assert_eq!(
        output.source_event_id,
        "v1:updated.deal:4812:1768400000412377"
    );
    assert_eq!(output.events.len(), 1, "stage 4 has no conversion rule");
    assert_eq!(output.events[0].property("crm_stage"), Some("stage_id:4"));
    assert_eq!(output.events[0].property("crm_owner"), Some("13355217"));
    let title = mapped("v2.deal.change.title.json", &merchant(true));
    assert!(title.events.is_empty() && title.ignored_reason.is_some());
    let person = mapped("v2.person.create.json", &merchant(true));
    assert!(person.ignored_reason.is_some());
}

#[test]
fn wrong_credentials_are_refused() {
    let body = mapping::fixture("pipedrive", "v2.deal.change.won.json");
    let err =
        mapping::ingest_one("pipedrive", &merchant(true), &auth("nope"), &body, NOW).unwrap_err();
    assert_eq!(
        (err.status(), err.reason_code()),
        (401, "signature_invalid")
    );
    let err =
        mapping::ingest_one("pipedrive", &merchant(true), &Headers::new(), &body, NOW).unwrap_err();
    assert_eq!(err.reason_code(), "signature_missing");
}
