//! Table-driven mapping over realistic Lemon Squeezy notifications
//! (tests/fixtures/lemonsqueezy/), signed the way Lemon Squeezy signs.

use crate::mapping;

use crate::mapping::Case;
use tracklayer::config::MerchantConfig;
use tracklayer::enrich::StoredContext;
use tracklayer::event::EventName;
use tracklayer::ingest;
use tracklayer::sources::{lemonsqueezy, Headers, SourceOutput};

const SECRET: &str = "ls_whsec_7Hq2mN4pR8sV1xZ3";
const SUB: &str = "1438203";
const NOW: i64 = 1_767_259_814;

fn merchant() -> MerchantConfig {
    MerchantConfig {
        merchant_id: "m_ls".into(),
        ..MerchantConfig::default()
    }
    .with_source(
        "lemonsqueezy",
        serde_json::json!({ "signing_secrets": [SECRET] }),
    )
    .with_destination(
        "meta",
        serde_json::json!({ "pixel_id": "1", "access_token": "t" }),
    )
}

fn mapped(name: &str) -> SourceOutput {
    let body = mapping::fixture("lemonsqueezy", name);
    let headers = Headers::new().with("X-Signature", &lemonsqueezy::sign(SECRET, &body));
    mapping::ingest_one("lemonsqueezy", &merchant(), &headers, &body, NOW).expect(name)
}

#[test]
fn lemonsqueezy_notifications_map_to_canonical_events() {
    let table = [
        Case {
            fixture: "subscription_created.on_trial.json",
            name: Some(EventName::TrialStarted),
            occurrence_key: SUB,
            fields: &[
                ("/customer/email", "dana@northwind.example"),
                ("/customer/customer_id", "6012345"),
                ("/subscription/trial_end_at", "1768469412"),
                ("/subscription/plan_id", "472615"),
            ],
        },
        Case {
            fixture: "subscription_created.active.json",
            name: Some(EventName::SubscriptionCreated),
            occurrence_key: "subscription_created:subscriptions:1438203:2026-01-01T09:30:14.000000Z",
            fields: &[],
        },
        Case {
            fixture: "subscription_payment_success.initial.json",
            name: Some(EventName::SubscriptionStarted),
            occurrence_key: SUB,
            fields: &[
                ("/values/currency", "EUR"),
                ("/values/gross_value", "58.80"),
                ("/values/net_value", "49.00"),
                ("/values/tax_amount", "9.80"),
                ("/properties/invoice_id", "3812201"),
            ],
        },
        Case {
            fixture: "subscription_payment_success.initial-trial.json",
            name: None,
            occurrence_key: "",
            fields: &[],
        },
        Case {
            fixture: "subscription_payment_success.renewal.json",
            name: Some(EventName::SubscriptionRenewed),
            occurrence_key: "1438203:invoice:3812204",
            fields: &[
                ("/values/net_value", "49.00"),
                ("/properties/period_start", "1768469420"),
            ],
        },
        // A plan change is billed as a proration at once: a positive charge is an
        // upgrade, valued at what was charged (Lemon Squeezy states no price, so the
        // MRR change is unknown).
        Case {
            fixture: "subscription_payment_success.updated-proration.json",
            name: Some(EventName::SubscriptionUpgraded),
            occurrence_key: "1438203:invoice:3907715",
            fields: &[
                ("/values/net_value", "25.00"),
                ("/values/gross_value", "30.00"),
                ("/values/currency", "EUR"),
                ("/customer/email", "dana@northwind.example"),
            ],
        },
        Case {
            fixture: "subscription_payment_recovered.renewal.json",
            name: Some(EventName::SubscriptionRenewed),
            occurrence_key: "1438203:invoice:3812204",
            fields: &[("/values/gross_value", "58.80")],
        },
        Case {
            fixture: "subscription_payment_failed.json",
            name: Some(EventName::PaymentFailed),
            occurrence_key: "subscription_payment_failed:subscription-invoices:3812204:2026-01-15T09:30:22.000000Z",
            fields: &[
                ("/values/gross_value", "58.80"),
                ("/properties/invoice_status", "pending"),
            ],
        },
        Case {
            fixture: "subscription_payment_refunded.partial.json",
            name: Some(EventName::Refund),
            occurrence_key: "invoice:3812204:refund:2026-01-20T16:45:03.000000Z",
            fields: &[("/values/gross_value", "29.40")],
        },
        Case {
            fixture: "subscription_cancelled.json",
            name: Some(EventName::SubscriptionUpdated),
            occurrence_key: "subscription_cancelled:subscriptions:1438203:2026-01-22T08:12:09.000000Z",
            fields: &[
                ("/properties/scheduled_change", "cancel"),
                ("/properties/scheduled_change_at", "1771147812"),
            ],
        },
        Case {
            fixture: "subscription_resumed.json",
            name: Some(EventName::SubscriptionReactivated),
            occurrence_key: "subscription_resumed:subscriptions:1438203:2026-01-25T14:00:31.000000Z",
            fields: &[("/properties/prior_status", "cancelled")],
        },
        Case {
            fixture: "subscription_expired.json",
            name: Some(EventName::SubscriptionCancelled),
            occurrence_key: SUB,
            fields: &[("/subscription/effective_end_at", "1771147812")],
        },
        Case {
            fixture: "subscription_paused.json",
            name: Some(EventName::SubscriptionPaused),
            occurrence_key: "subscription_paused:subscriptions:1438203:2026-01-28T10:00:00.000000Z",
            fields: &[
                ("/properties/pause_mode", "void"),
                ("/properties/resume_at", "1772323200"),
            ],
        },
        Case {
            fixture: "subscription_unpaused.json",
            name: Some(EventName::SubscriptionReactivated),
            occurrence_key: "subscription_unpaused:subscriptions:1438203:2026-03-01T00:00:05.000000Z",
            fields: &[("/properties/prior_status", "paused")],
        },
        Case {
            fixture: "order_created.json",
            name: None,
            occurrence_key: "",
            fields: &[],
        },
    ];
    for case in &table {
        mapping::check(case, &mapped(case.fixture));
    }
}

#[test]
fn first_payment_after_the_trial_is_the_conversion_valued_net_of_tax() {
    let trial = mapped("subscription_created.on_trial.json");
    let context = StoredContext {
        subscription: trial.subscription.clone(),
        customer: None,
        crm: None,
    };
    let plan = ingest::plan(
        mapped("subscription_payment_success.renewal.json"),
        &merchant(),
        &context,
    );
    let conversion = &plan.output.events[0];
    assert_eq!(conversion.name, EventName::TrialConverted);
    assert_eq!(conversion.occurrence_key, SUB);
    // No price on Lemon Squeezy subscriptions: the value is what the invoice charged, net.
    let value = tracklayer::destinations::meta::SPEC
        .primary_value(conversion, &merchant())
        .unwrap();
    assert_eq!(value.to_string(), "49.00");
    assert_eq!(plan.jobs.len(), 1);
}

#[test]
fn a_payment_and_its_recovery_are_one_renewal() {
    let success = mapped("subscription_payment_success.renewal.json");
    let recovered = mapped("subscription_payment_recovered.renewal.json");
    assert_ne!(success.source_event_id, recovered.source_event_id);
    assert_eq!(success.events[0].event_id, recovered.events[0].event_id);
}

#[test]
fn tampered_and_unsigned_bodies_are_refused() {
    let body = mapping::fixture("lemonsqueezy", "subscription_expired.json");
    let signature = lemonsqueezy::sign(SECRET, &body);
    let mut tampered = body.clone();
    let at = tampered.iter().position(|b| *b == b'7').unwrap();
    tampered[at] = b'8';
    let refused = |headers: Headers, body: &[u8]| {
        mapping::ingest_one("lemonsqueezy", &merchant(), &headers, body, NOW).unwrap_err()
    };
    let err = refused(Headers::new().with("X-Signature", &signature), &tampered);
    assert_eq!(
        (err.status(), err.reason_code()),
        (401, "signature_invalid")
    );
    let err = refused(Headers::new(), &body);
    assert_eq!(
        (err.status(), err.reason_code()),
        (401, "signature_missing")
    );
    let err = refused(Headers::new().with("X-Signature", "zz"), &body);
    assert_eq!(
        (err.status(), err.reason_code()),
        (401, "signature_malformed")
    );
    let wrong = lemonsqueezy::sign("another_secret", &body);
    let err = refused(Headers::new().with("X-Signature", &wrong), &body);
    assert_eq!(err.reason_code(), "signature_invalid");
}

/// A cancellation reached the platforms with no value and no currency although the
/// subscription's last invoice was known: it now takes away that payment.
#[test]
fn a_cancellation_takes_away_the_last_payment() {
    let mut pipeline = mapping::Pipeline::default();
    for name in [
        "subscription_payment_success.renewal.json",
        "subscription_expired.json",
    ] {
        let body = mapping::fixture("lemonsqueezy", name);
        let headers = Headers::new().with("X-Signature", &lemonsqueezy::sign(SECRET, &body));
        pipeline.receive("lemonsqueezy", &merchant(), &headers, &body, NOW);
    }
    let cancelled = pipeline
        .forwarded()
        .into_iter()
        .find(|e| e.name == EventName::SubscriptionCancelled)
        .expect("cancellation forwarded");
    assert_eq!(cancelled.values.currency.as_deref(), Some("EUR"));
    let value = tracklayer::destinations::meta::SPEC
        .primary_value(&cancelled, &merchant())
        .expect("a value");
    assert_eq!(value.to_string(), "-49.00");
}
