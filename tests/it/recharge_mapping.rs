//! Table-driven mapping over realistic Recharge webhooks (tests/fixtures/recharge/),
//! signed with the legacy and the timestamped scheme.

use crate::mapping;

use crate::mapping::Case;
use tracklayer::config::MerchantConfig;
use tracklayer::enrich::StoredContext;
use tracklayer::event::EventName;
use tracklayer::ingest;
use tracklayer::sources::{recharge, Headers, SourceOutput};

const SECRET: &str = "rc_cs_5b1f0e9a7c2d4e8f";
const SUB: &str = "418839205";
const NOW: i64 = 1_770_282_100;

fn merchant() -> MerchantConfig {
    MerchantConfig {
        merchant_id: "m_rc".into(),
        ..MerchantConfig::default()
    }
    // The fixtures are signed the legacy way, which a merchant must opt in to.
    .with_source(
        "recharge",
        serde_json::json!({ "client_secrets": [SECRET], "accept_legacy_signature": true }),
    )
    .with_destination(
        "meta",
        serde_json::json!({ "pixel_id": "1", "access_token": "t" }),
    )
}

/// Fixture names are `<resource>.<action>[.variant].json`: the topic header.
fn mapped(name: &str) -> SourceOutput {
    let body = mapping::fixture("recharge", name);
    let mut parts = name.split('.');
    let topic = format!("{}/{}", parts.next().unwrap(), parts.next().unwrap());
    let headers = Headers::new()
        .with(
            "X-Recharge-Hmac-Sha256",
            &recharge::sign_legacy(SECRET, &body),
        )
        .with("X-Recharge-Topic", &topic);
    mapping::ingest_one("recharge", &merchant(), &headers, &body, NOW).expect(name)
}

#[test]
fn recharge_webhooks_map_to_canonical_events() {
    let table = [
        Case {
            fixture: "subscription.created.json",
            name: Some(EventName::SubscriptionStarted),
            occurrence_key: SUB,
            // 2 × 39.00 monthly.
            fields: &[
                ("/values/mrr", "78.00"),
                ("/values/arr", "936.00"),
                ("/values/currency", "USD"),
                ("/subscription/plan_id", "42918377619647"),
                ("/customer/customer_id", "118530642"),
            ],
        },
        Case {
            fixture: "subscription.updated.quantity.json",
            name: Some(EventName::SubscriptionUpdated),
            occurrence_key: "subscription/updated:subscription:418839205:2026-01-20T08:05:12+00:00",
            fields: &[
                ("/values/mrr", "117.00"),
                ("/properties/compare_mrr_with_state", "true"),
            ],
        },
        Case {
            fixture: "subscription.cancelled.json",
            name: Some(EventName::SubscriptionCancelled),
            occurrence_key: SUB,
            fields: &[
                ("/subscription/cancel_reason", "Too expensive"),
                ("/subscription/effective_end_at", "1772473203"),
                ("/values/mrr_delta", "-78.00"),
            ],
        },
        Case {
            fixture: "subscription.activated.json",
            name: Some(EventName::SubscriptionReactivated),
            occurrence_key:
                "subscription/activated:subscription:418839205:2026-03-20T11:15:44+00:00",
            fields: &[
                ("/properties/prior_status", "cancelled"),
                ("/values/mrr", "78.00"),
            ],
        },
        Case {
            fixture: "charge.paid.recurring.json",
            name: Some(EventName::SubscriptionRenewed),
            occurrence_key: "charge:961238471",
            fields: &[
                ("/values/gross_value", "84.24"),
                ("/values/tax_amount", "6.24"),
                ("/values/net_value", "78.00"),
                ("/customer/email", "riley.moss@example.com"),
                ("/subscription/subscription_id", SUB),
            ],
        },
        Case {
            fixture: "charge.paid.recurring.legacy-2021-01.json",
            name: Some(EventName::SubscriptionRenewed),
            occurrence_key: "charge:961238472",
            fields: &[
                ("/values/net_value", "78.00"),
                ("/occurred_at", "1772701242"),
                ("/subscription/subscription_id", SUB),
            ],
        },
        Case {
            fixture: "charge.paid.checkout.json",
            name: None,
            occurrence_key: "",
            fields: &[],
        },
        Case {
            fixture: "charge.failed.json",
            name: Some(EventName::PaymentFailed),
            occurrence_key: "charge/failed:charge:961238471:2026-02-05T09:00:44+00:00",
            fields: &[
                ("/values/gross_value", "84.24"),
                ("/properties/attempt_count", "1"),
                ("/properties/error_type", "CARD_DECLINED"),
            ],
        },
        Case {
            fixture: "charge.refunded.partial.json",
            name: Some(EventName::Refund),
            occurrence_key: "charge/refunded:charge:961238471:2026-02-09T13:27:05+00:00",
            fields: &[("/values/gross_value", "42.12")],
        },
    ];
    for case in &table {
        mapping::check(case, &mapped(case.fixture));
    }
}

#[test]
fn quantity_change_is_an_upgrade_against_the_stored_state() {
    let started = mapped("subscription.created.json");
    let context = StoredContext {
        subscription: started.subscription.clone(),
        customer: None,
        crm: None,
    };
    let plan = ingest::plan(
        mapped("subscription.updated.quantity.json"),
        &merchant(),
        &context,
    );
    let event = &plan.output.events[0];
    assert_eq!(event.name, EventName::SubscriptionUpgraded);
    assert_eq!(event.values.mrr_delta.unwrap().to_string(), "39.00");
}

#[test]
fn renewals_inherit_mrr_and_customers_record_email() {
    let started = mapped("subscription.created.json");
    let context = StoredContext {
        subscription: started.subscription.clone(),
        customer: None,
        crm: None,
    };
    let plan = ingest::plan(mapped("charge.paid.recurring.json"), &merchant(), &context);
    assert_eq!(
        plan.output.events[0].values.mrr.unwrap().to_string(),
        "78.00"
    );
    let customer = mapped("customer.updated.json").customer.unwrap();
    assert_eq!(customer.email.as_deref(), Some("riley.moss@example.com"));
}

#[test]
fn without_a_topic_header_the_status_decides() {
    let body = mapping::fixture("recharge", "subscription.cancelled.json");
    let headers = Headers::new().with(
        "X-Recharge-Hmac-Sha256",
        &recharge::sign_legacy(SECRET, &body),
    );
    let output = mapping::ingest_one("recharge", &merchant(), &headers, &body, NOW).unwrap();
    assert_eq!(output.events[0].name, EventName::SubscriptionCancelled);
}

#[test]
fn timestamped_signature_is_checked_and_can_be_required() {
    let body = mapping::fixture("recharge", "charge.paid.recurring.json");
    let signed = |at| {
        Headers::new()
            .with(
                "X-Recharge-Webhook-Signature",
                &recharge::sign(SECRET, at, &body),
            )
            .with("X-Recharge-Topic", "charge/paid")
    };
    assert!(mapping::ingest_one("recharge", &merchant(), &signed(NOW - 10), &body, NOW).is_ok());
    let stale =
        mapping::ingest_one("recharge", &merchant(), &signed(NOW - 900), &body, NOW).unwrap_err();
    assert_eq!(stale.reason_code(), "signature_timestamp_out_of_tolerance");

    let strict = merchant().with_source(
        "recharge",
        serde_json::json!({ "client_secrets": [SECRET], "accept_legacy_signature": false }),
    );
    let legacy = Headers::new()
        .with(
            "X-Recharge-Hmac-Sha256",
            &recharge::sign_legacy(SECRET, &body),
        )
        .with("X-Recharge-Topic", "charge/paid");
    let err = mapping::ingest_one("recharge", &strict, &legacy, &body, NOW).unwrap_err();
    assert_eq!(err.reason_code(), "signature_missing");
}

/// SHA-256(secret ‖ body) is open to length extension: from one genuine webhook, a
/// longer body with a valid legacy header can be computed without the secret. So the
/// legacy header is refused unless the merchant opts in.
#[test]
fn the_legacy_signature_is_refused_by_default() {
    let body = mapping::fixture("recharge", "charge.paid.recurring.json");
    let by_default = MerchantConfig {
        merchant_id: "m_rc".into(),
        ..MerchantConfig::default()
    }
    .with_source(
        "recharge",
        serde_json::json!({ "client_secrets": [SECRET] }),
    );
    let legacy = Headers::new()
        .with(
            "X-Recharge-Hmac-Sha256",
            &recharge::sign_legacy(SECRET, &body),
        )
        .with("X-Recharge-Topic", "charge/paid");
    let err = mapping::ingest_one("recharge", &by_default, &legacy, &body, NOW).unwrap_err();
    assert_eq!((err.status(), err.code()), (401, "unauthenticated"));
    assert_eq!(err.reason_code(), "signature_missing");
}

#[test]
fn a_legacy_signature_over_another_body_or_secret_is_refused() {
    let body = mapping::fixture("recharge", "charge.paid.recurring.json");
    let other = mapping::fixture("recharge", "charge.failed.json");
    for header in [
        recharge::sign_legacy(SECRET, &other),
        recharge::sign_legacy("rc_cs_other", &body),
    ] {
        let headers = Headers::new().with("X-Recharge-Hmac-Sha256", &header);
        let err = mapping::ingest_one("recharge", &merchant(), &headers, &body, NOW).unwrap_err();
        assert_eq!(
            (err.status(), err.reason_code()),
            (401, "signature_invalid")
        );
    }
}
