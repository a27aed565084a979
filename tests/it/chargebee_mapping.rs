//! Table-driven mapping over realistic Chargebee events (tests/fixtures/chargebee/),
//! authenticated the way Chargebee does: HTTP Basic credentials.

use crate::mapping;

use crate::mapping::Case;
use base64::Engine;
use tracklayer::config::MerchantConfig;
use tracklayer::enrich::StoredContext;
use tracklayer::event::EventName;
use tracklayer::ingest;
use tracklayer::sources::{Headers, SourceOutput};

const SUB: &str = "AzyZk5UX1bC9q3Ft";
const NOW: i64 = 1_780_000_000;

fn merchant() -> MerchantConfig {
    MerchantConfig {
        merchant_id: "m_cb".into(),
        ..MerchantConfig::default()
    }
    .with_source(
        "chargebee",
        serde_json::json!({ "basic_auth": [{ "username": "chargebee", "password": "cb-hook-9f3k2" }] }),
    )
    .with_destination("meta", serde_json::json!({ "pixel_id": "1", "access_token": "t" }))
}

fn basic(user: &str, password: &str) -> Headers {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    Headers::new().with("Authorization", &format!("Basic {token}"))
}

fn mapped(name: &str) -> SourceOutput {
    let body = mapping::fixture("chargebee", name);
    mapping::ingest_one(
        "chargebee",
        &merchant(),
        &basic("chargebee", "cb-hook-9f3k2"),
        &body,
        NOW,
    )
    .expect(name)
}

#[test]
fn chargebee_events_map_to_canonical_events() {
    let table = [
        Case {
            fixture: "subscription_created.in_trial.json",
            name: Some(EventName::TrialStarted),
            occurrence_key: SUB,
            // 3 × 49.00 plan + 20.00 addon; the one-off onboarding charge is not recurring.
            fields: &[
                ("/values/mrr", "167.00"),
                ("/values/arr", "2004.00"),
                ("/subscription/trial_end_at", "1768470600"),
                ("/subscription/plan_id", "growth-USD-Monthly"),
            ],
        },
        Case {
            fixture: "subscription_activated.json",
            name: Some(EventName::TrialConverted),
            occurrence_key: SUB,
            fields: &[
                ("/values/mrr", "167.00"),
                ("/values/gross_value", "180.36"),
                ("/values/net_value", "167.00"),
                ("/properties/invoice_id", "inv_1043"),
            ],
        },
        Case {
            fixture: "subscription_created.active.json",
            name: Some(EventName::SubscriptionStarted),
            occurrence_key: SUB,
            fields: &[("/values/mrr", "167.00"), ("/values/gross_value", "342.36")],
        },
        Case {
            fixture: "subscription_renewed.json",
            name: Some(EventName::SubscriptionRenewed),
            occurrence_key: "AzyZk5UX1bC9q3Ft@1771149000",
            fields: &[
                ("/values/gross_value", "180.36"),
                ("/values/tax_amount", "13.36"),
                ("/properties/period_start", "1771149000"),
            ],
        },
        Case {
            fixture: "subscription_changed.upgrade.json",
            name: Some(EventName::SubscriptionUpdated),
            occurrence_key: "ev_AzyZk5UX1bFDu7Jy",
            fields: &[
                ("/values/mrr", "265.00"),
                ("/properties/compare_mrr_with_state", "true"),
            ],
        },
        Case {
            fixture: "subscription_cancellation_scheduled.json",
            name: Some(EventName::SubscriptionUpdated),
            occurrence_key: "ev_AzyZk5UX1bGEv8Kz",
            fields: &[
                ("/properties/scheduled_change", "cancel"),
                ("/properties/scheduled_change_at", "1773568200"),
            ],
        },
        Case {
            fixture: "subscription_scheduled_cancellation_removed.json",
            name: Some(EventName::SubscriptionReactivated),
            occurrence_key: "ev_AzyZk5UX1bHFw9La",
            fields: &[("/properties/prior_status", "non_renewing")],
        },
        Case {
            fixture: "subscription_paused.json",
            name: Some(EventName::SubscriptionPaused),
            occurrence_key: "ev_AzyZk5UX1bIGx0Mb",
            fields: &[("/properties/resume_at", "1776246600")],
        },
        Case {
            fixture: "subscription_resumed.json",
            name: Some(EventName::SubscriptionReactivated),
            occurrence_key: "ev_AzyZk5UX1bJHy1Nc",
            fields: &[("/properties/prior_status", "paused")],
        },
        Case {
            fixture: "subscription_cancelled.json",
            name: Some(EventName::SubscriptionCancelled),
            occurrence_key: SUB,
            fields: &[
                ("/subscription/cancel_reason", "Switched to competitor"),
                ("/subscription/effective_end_at", "1778838600"),
                ("/values/mrr_delta", "-167.00"),
            ],
        },
        Case {
            fixture: "payment_failed.json",
            name: Some(EventName::PaymentFailed),
            occurrence_key: "ev_AzyZk5UX1bLJa3Pe",
            fields: &[
                ("/values/gross_value", "180.36"),
                ("/properties/attempt_count", "1"),
                ("/properties/error_code", "card_declined"),
                ("/customer/email", "priya@helixlabs.example"),
            ],
        },
        Case {
            fixture: "payment_refunded.json",
            name: Some(EventName::Refund),
            occurrence_key: "transaction:txn_AzyZk5UX1bMKb3Qe",
            fields: &[("/values/gross_value", "90.18")],
        },
        Case {
            fixture: "payment_succeeded.json",
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
fn a_seat_change_is_an_upgrade_against_the_stored_state() {
    let before = mapped("subscription_renewed.json");
    let context = StoredContext {
        subscription: before.subscription.clone(),
        customer: None,
        crm: None,
    };
    let plan = ingest::plan(
        mapped("subscription_changed.upgrade.json"),
        &merchant(),
        &context,
    );
    let event = &plan.output.events[0];
    assert_eq!(event.name, EventName::SubscriptionUpgraded);
    assert_eq!(event.values.mrr_delta.unwrap().to_string(), "98.00");
}

#[test]
fn customer_changes_record_the_email() {
    let customer = mapped("customer_changed.json").customer.unwrap();
    assert_eq!(
        customer.email.as_deref(),
        Some("priya.raman@helixlabs.example")
    );
}

#[test]
fn wrong_or_missing_credentials_are_refused() {
    let body = mapping::fixture("chargebee", "subscription_cancelled.json");
    let refused = |headers: Headers| {
        mapping::ingest_one("chargebee", &merchant(), &headers, &body, NOW).unwrap_err()
    };
    assert_eq!(refused(Headers::new()).reason_code(), "signature_missing");
    assert_eq!(
        refused(basic("chargebee", "guess")).reason_code(),
        "signature_invalid"
    );
    assert_eq!(
        refused(basic("admin", "cb-hook-9f3k2")).reason_code(),
        "signature_invalid"
    );
    let bearer = Headers::new().with("Authorization", "Bearer cb-hook-9f3k2");
    assert_eq!(refused(bearer).reason_code(), "signature_malformed");
}
