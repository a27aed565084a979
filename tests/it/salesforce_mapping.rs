//! Salesforce Outbound Messages (SOAP, org id + endpoint token, SOAP ack) and JSON
//! callouts (tests/fixtures/salesforce/).

use crate::mapping;

use tracklayer::config::MerchantConfig;
use tracklayer::enrich::{ConversionSource, StoredContext};
use tracklayer::event::EventName;
use tracklayer::ingest;
use tracklayer::sources::{find, salesforce, Headers, SourceOutput, WebhookRequest};

const TOKEN: &str = "sf-endpoint-token-4c1e9b";
const NOW: i64 = 1_768_563_400;

fn merchant(crm_owned: bool) -> MerchantConfig {
    let mut merchant = MerchantConfig {
        merchant_id: "m_sf".into(),
        ..MerchantConfig::default()
    }
    .with_source(
        "salesforce",
        serde_json::json!({ "organization_id": "00D5g000004XyZa", "endpoint_tokens": [TOKEN] }),
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

fn soap(
    merchant: &MerchantConfig,
    token: &str,
    body: &[u8],
) -> Result<Vec<SourceOutput>, tracklayer::error::IngestError> {
    let url = format!(
        "https://edge.tracklayer.test/v1/integrations/salesforce/events?merchant_id=m_sf&token={token}"
    );
    let headers = Headers::new().with("Content-Type", "text/xml; charset=utf-8");
    ingest::verify_and_map(
        "salesforce",
        merchant,
        &WebhookRequest::post(&url, &headers, body),
        NOW,
    )
}

#[test]
fn an_outbound_message_yields_one_notification_per_opportunity() {
    let body = mapping::fixture("salesforce", "outbound-message.opportunities.xml");
    let outputs = soap(&merchant(true), TOKEN, &body).unwrap();
    let ids: Vec<&str> = outputs.iter().map(|o| o.source_event_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "04l5g00000QbRfEAAV",
            "04l5g00000QbRfFAAV",
            "04l5g00000QbRfGAAV"
        ]
    );

    let won = &outputs[0];
    assert_eq!(won.ordering_key, "opportunity:0065g00000XyZabAAB");
    assert_eq!(won.occurred_at, 1_768_563_112);
    let names: Vec<_> = won.events.iter().map(|e| e.name).collect();
    assert_eq!(
        names,
        [
            EventName::PipelineStageChanged,
            EventName::SubscriptionStarted
        ]
    );
    let started = &won.events[1];
    assert_eq!(
        started.values.contract_value.unwrap().to_string(),
        "24000.00"
    );
    assert_eq!(
        started.customer.email.as_deref(),
        Some("Priya@HelixLabs.example")
    );
    let context = won.crm_context.as_ref().unwrap();
    assert_eq!(
        context.identity_keys,
        ["email:priya@helixlabs.example", "customer:cus_QxHelix01"]
    );
    assert_eq!(context.fields["owner"], "0055g00000Ab1CdAAJ");
    assert_eq!(context.fields["segment"], "Mid-Market");
    assert_eq!(context.fields["forecast_category"], "Closed");
    assert_eq!(context.fields["source_campaign"], "7015g000000LmNoAAK");

    // A renewal opportunity closed renews; nil fields are absent, not empty.
    let renewal = &outputs[1];
    assert_eq!(renewal.events[1].name, EventName::SubscriptionRenewed);
    assert_eq!(renewal.events[1].values.currency.as_deref(), Some("EUR"));
    assert!(renewal.events[1].customer.email.is_none());
    // A stage that is no conversion is only recorded.
    assert_eq!(outputs[2].events.len(), 1);
    assert_eq!(
        outputs[2].events[0].property("crm_stage"),
        Some("Negotiation/Review")
    );

    // Billing-owned merchants get the stage changes only.
    let recorded = soap(&merchant(false), TOKEN, &body).unwrap();
    assert!(recorded.iter().all(|o| o.events.len() == 1));
    let plan = ingest::plan(
        recorded[0].clone(),
        &merchant(false),
        &StoredContext::default(),
    );
    assert!(plan.jobs.is_empty());
}

#[test]
fn success_is_answered_with_the_soap_ack() {
    let (content_type, body) = (find("salesforce").unwrap().acknowledgement.unwrap())();
    assert!(content_type.starts_with("text/xml"));
    assert!(body.contains("<Ack>true</Ack>"));
    assert!(body.contains("http://soap.sforce.com/2005/09/outbound"));
    assert_eq!(body, salesforce::ACK);
}

#[test]
fn another_org_or_a_wrong_token_is_refused() {
    let body = mapping::fixture("salesforce", "outbound-message.opportunities.xml");
    let err = soap(&merchant(true), "guess", &body).unwrap_err();
    assert_eq!(
        (err.status(), err.reason_code()),
        (401, "signature_invalid")
    );
    let other_org = String::from_utf8(body.clone())
        .unwrap()
        .replace("00D5g000004XyZaEAK", "00D9z000001AbCdEAK");
    let err = soap(&merchant(true), TOKEN, other_org.as_bytes()).unwrap_err();
    assert_eq!(err.reason_code(), "signature_invalid");
    let url = "https://edge.tracklayer.test/v1/integrations/salesforce/events?merchant_id=m_sf";
    let err = ingest::verify_and_map(
        "salesforce",
        &merchant(true),
        &WebhookRequest::post(url, &Headers::new(), &body),
        NOW,
    )
    .unwrap_err();
    assert_eq!(err.reason_code(), "signature_missing");
    let err = soap(&merchant(true), TOKEN, b"<soapenv:Envelope><oops").unwrap_err();
    assert_eq!(err.status(), 400);
}

#[test]
fn a_json_callout_with_the_shared_secret_maps_an_amendment_to_an_upgrade() {
    let body = mapping::fixture("salesforce", "callout.opportunity-amendment.json");
    let url = "https://edge.tracklayer.test/v1/integrations/salesforce/events?merchant_id=m_sf";
    let headers = Headers::new().with("X-TrackLayer-Token", TOKEN);
    let outputs = ingest::verify_and_map(
        "salesforce",
        &merchant(true),
        &WebhookRequest::post(url, &headers, &body),
        NOW,
    )
    .unwrap();
    let upgrade = &outputs[0].events[1];
    assert_eq!(upgrade.name, EventName::SubscriptionUpgraded);
    assert_eq!(
        upgrade.values.contract_value.unwrap().to_string(),
        "6000.00"
    );
    assert_eq!(
        outputs[0].source_event_id,
        "callout:a0B5g00000Tq7hREAZ-1768735200"
    );
    let wrong = Headers::new().with("X-TrackLayer-Token", "nope");
    let err = ingest::verify_and_map(
        "salesforce",
        &merchant(true),
        &WebhookRequest::post(url, &wrong, &body),
        NOW,
    )
    .unwrap_err();
    assert_eq!(err.reason_code(), "signature_invalid");
}
