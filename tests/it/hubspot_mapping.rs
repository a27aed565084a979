//! HubSpot: signature versions, Webhooks API batches, workflow bodies, CRM-owned
//! conversions and the deal context later billing events carry
//! (tests/fixtures/hubspot/).

use crate::mapping;

use tracklayer::config::MerchantConfig;
use tracklayer::enrich::StoredContext;
use tracklayer::event::EventName;
use tracklayer::ingest;
use tracklayer::sources::{hubspot, Headers, SourceOutput, WebhookRequest};

const SECRET: &str = "3f9c1d2e-7a4b-4c8d-9e0f-hubspot-app";
// HubSpot signs the URL exactly as it called it; %3A, %40 … are decoded first.
const URL: &str =
    "https://edge.tracklayer.test/v1/integrations/hubspot/events?merchant_id=m_hs&note=a%3Ab%40c";
const NOW_MS: i64 = 1_768_563_115_000;

fn merchant(crm_owned: bool) -> MerchantConfig {
    let mut merchant = MerchantConfig {
        merchant_id: "m_hs".into(),
        ..MerchantConfig::default()
    }
    .with_source("hubspot", serde_json::json!({ "client_secrets": [SECRET] }))
    .with_destination(
        "meta",
        serde_json::json!({ "pixel_id": "1", "access_token": "t" }),
    );
    if crm_owned {
        merchant.lifecycle.conversions_from = tracklayer::enrich::ConversionSource::Crm;
    }
    merchant
}

fn v3_headers(body: &[u8], signed_at_ms: i64) -> Headers {
    Headers::new()
        .with(
            "X-HubSpot-Signature-v3",
            &hubspot::sign_v3(SECRET, "POST", URL, body, signed_at_ms),
        )
        .with("X-HubSpot-Request-Timestamp", &signed_at_ms.to_string())
}

fn ingest_with(
    merchant: &MerchantConfig,
    headers: &Headers,
    body: &[u8],
) -> Result<Vec<SourceOutput>, tracklayer::error::IngestError> {
    ingest::verify_and_map(
        "hubspot",
        merchant,
        &WebhookRequest::post(URL, headers, body),
        NOW_MS / 1000,
    )
}

fn mapped(name: &str, merchant: &MerchantConfig) -> Vec<SourceOutput> {
    let body = mapping::fixture("hubspot", name);
    ingest_with(merchant, &v3_headers(&body, NOW_MS - 2_000), &body).expect(name)
}

#[test]
fn a_webhooks_api_batch_yields_one_notification_per_event() {
    let outputs = mapped("webhooks-api.batch.json", &merchant(false));
    let ids: Vec<&str> = outputs.iter().map(|o| o.source_event_id.as_str()).collect();
    assert_eq!(
        ids,
        ["1932084117", "1932084118", "1932084260", "1932084301"]
    );
    // Billing owns conversions: the stage change is recorded, never forwarded.
    let won = &outputs[0];
    assert_eq!(won.ordering_key, "deal:19485320761");
    assert_eq!(won.events.len(), 1);
    assert_eq!(won.events[0].name, EventName::PipelineStageChanged);
    assert_eq!(won.events[0].property("crm_stage"), Some("closedwon"));
    assert_eq!(won.events[0].property("crm_deal_id"), Some("19485320761"));
    assert_eq!(won.subscription.as_ref().unwrap().status, "closedwon");
    assert!(
        outputs[1].ignored_reason.is_some(),
        "amount change is no stage"
    );
    assert!(outputs[2].ignored_reason.is_some(), "creation is no stage");
    let plan = ingest::plan(won.clone(), &merchant(false), &StoredContext::default());
    assert!(plan.jobs.is_empty());
}

#[test]
fn crm_owned_merchants_get_conversions_from_workflow_bodies_once_per_deal_and_stage() {
    let workflow = mapped("workflow.deal-closedwon.json", &merchant(true)).remove(0);
    assert_eq!(workflow.events.len(), 2);
    let conversion = &workflow.events[1];
    assert_eq!(conversion.name, EventName::SubscriptionStarted);
    assert_eq!(
        conversion.occurrence_key,
        "deal:19485320761:dealstage:closedwon"
    );
    let plan = ingest::plan(workflow.clone(), &merchant(true), &StoredContext::default());
    assert_eq!(plan.jobs.len(), 1);
    // Without the CRM owning conversions, the same body is only recorded.
    let billing_owned = mapped("workflow.deal-closedwon.json", &merchant(false)).remove(0);
    assert_eq!(billing_owned.events.len(), 1);

    // The Webhooks API has no identity and no amount: recorded, with the reason.
    let won = mapped("webhooks-api.batch.json", &merchant(true)).remove(0);
    assert_eq!(won.events.len(), 1);
    assert!(won.events[0]
        .property("conversion_skipped")
        .unwrap()
        .contains("ids only"));
}

#[test]
fn a_contact_back_to_customer_is_reactivated_only_from_churned() {
    let merchant = merchant(true);
    let churned = mapped("webhooks-api.contact-churned.json", &merchant).remove(0);
    let reopened = mapped("workflow.contact-customer.json", &merchant).remove(0);
    assert_eq!(reopened.ordering_key, "contact:10651");
    let from_churn = StoredContext {
        subscription: churned.subscription.clone(),
        ..StoredContext::default()
    };
    let plan = ingest::plan(reopened.clone(), &merchant, &from_churn);
    let names: Vec<_> = plan.output.events.iter().map(|e| e.name).collect();
    assert_eq!(
        names,
        [
            EventName::PipelineStageChanged,
            EventName::SubscriptionReactivated
        ]
    );
    assert_eq!(
        plan.output.events[1].property("prior_status"),
        Some("churned")
    );
    // A first-time customer (no churned state) is no reactivation.
    let plan = ingest::plan(reopened, &merchant, &StoredContext::default());
    assert_eq!(plan.output.events.len(), 1);
}

#[test]
fn workflow_bodies_carry_value_and_context_for_later_billing_events() {
    let output = mapped("workflow.deal-closedwon.json", &merchant(true)).remove(0);
    assert!(output.source_event_id.starts_with("workflow:"));
    let conversion = &output.events[1];
    assert_eq!(
        conversion.values.contract_value.unwrap().to_string(),
        "24000.00"
    );
    assert_eq!(
        conversion.customer.email.as_deref(),
        Some("priya@helixlabs.example")
    );
    let context = output.crm_context.clone().unwrap();
    assert_eq!(
        context.identity_keys,
        ["email:priya@helixlabs.example", "customer:cus_QxHelix01"]
    );
    for (key, value) in [
        ("owner", "81723410"),
        ("segment", "Mid-market"),
        ("forecast_category", "COMMIT"),
        ("source_campaign", "spring-launch-2026"),
        ("deal_id", "19485320761"),
        ("stage", "closedwon"),
    ] {
        assert_eq!(
            context.fields.get(key).map(String::as_str),
            Some(value),
            "{key}"
        );
    }

    // A later Stripe renewal for that customer carries the deal's context.
    let stripe = MerchantConfig {
        merchant_id: "m_hs".into(),
        // Stripe ingest is a Scale feature.
        plan: tracklayer::config::Plan::Scale,
        ..MerchantConfig::default()
    }
    .with_source(
        "stripe",
        serde_json::json!({ "endpoint_secrets": ["whsec_x"] }),
    )
    .with_destination(
        "meta",
        serde_json::json!({ "pixel_id": "1", "access_token": "t" }),
    );
    let body = mapping::fixture("stripe", "invoice.paid.renewal.json");
    let created = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["created"]
        .as_i64()
        .unwrap();
    let headers = Headers::new().with(
        "Stripe-Signature",
        &tracklayer::sources::stripe::sign("whsec_x", created, &body),
    );
    let renewal = mapping::ingest_one("stripe", &stripe, &headers, &body, created).unwrap();
    let plan = ingest::plan(
        renewal,
        &stripe,
        &StoredContext {
            crm: Some(context),
            ..StoredContext::default()
        },
    );
    let event = &plan.output.events[0];
    assert_eq!(event.property("crm_owner"), Some("81723410"));
    assert_eq!(event.property("crm_forecast_category"), Some("COMMIT"));
    assert_eq!(event.property("crm_source"), Some("hubspot"));
}

#[test]
fn v3_signatures_are_checked_over_method_uri_body_and_millisecond_timestamp() {
    let body = mapping::fixture("hubspot", "webhooks-api.deal-lost.json");
    let merchant = merchant(false);
    let code = |headers: Headers, body: &[u8]| {
        ingest_with(&merchant, &headers, body)
            .unwrap_err()
            .reason_code()
    };
    // Six minutes old: refused although correctly signed.
    assert_eq!(
        code(v3_headers(&body, NOW_MS - 360_000), &body),
        "signature_timestamp_out_of_tolerance"
    );
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    assert_eq!(
        code(v3_headers(&body, NOW_MS), &tampered),
        "signature_invalid"
    );
    // Signed for another URL.
    let elsewhere = Headers::new()
        .with(
            "X-HubSpot-Signature-v3",
            &hubspot::sign_v3(SECRET, "POST", "https://evil.test/hook", &body, NOW_MS),
        )
        .with("X-HubSpot-Request-Timestamp", &NOW_MS.to_string());
    assert_eq!(code(elsewhere, &body), "signature_invalid");
    let no_timestamp = Headers::new().with(
        "X-HubSpot-Signature-v3",
        &hubspot::sign_v3(SECRET, "POST", URL, &body, NOW_MS),
    );
    assert_eq!(code(no_timestamp, &body), "signature_missing");
    assert_eq!(
        hubspot::v3_uri("https://x.test/a%3Ab%2fc%20d%3b"),
        "https://x.test/a:b/c%20d;"
    );
}

#[test]
fn v1_and_v2_are_accepted_only_where_configured() {
    use sha2::{Digest, Sha256};
    let body = mapping::fixture("hubspot", "webhooks-api.deal-lost.json");
    let v1 = hex::encode(Sha256::digest([SECRET.as_bytes(), &body].concat()));
    let v2 = hex::encode(Sha256::digest(
        [SECRET.as_bytes(), b"POST", URL.as_bytes(), &body].concat(),
    ));
    let headers = |signature: &str, version: &str| {
        Headers::new()
            .with("X-HubSpot-Signature", signature)
            .with("X-HubSpot-Signature-Version", version)
    };
    let strict = merchant(false);
    assert_eq!(
        ingest_with(&strict, &headers(&v1, "v1"), &body)
            .unwrap_err()
            .reason_code(),
        "signature_missing"
    );
    let lenient = strict.clone().with_source(
        "hubspot",
        serde_json::json!({ "client_secrets": [SECRET], "accepted_signature_versions": ["v1", "v2", "v3"] }),
    );
    assert!(ingest_with(&lenient, &headers(&v1, "v1"), &body).is_ok());
    assert!(ingest_with(&lenient, &headers(&v2, "v2"), &body).is_ok());
    assert_eq!(
        ingest_with(&lenient, &headers(&v1, "v2"), &body)
            .unwrap_err()
            .reason_code(),
        "signature_invalid"
    );
}
