//! Table-driven mapping over realistic Paddle Billing notifications
//! (tests/fixtures/paddle/), signed the way Paddle signs and sent through the ingest path.

use crate::mapping;

use crate::mapping::Case;

use tracklayer::config::MerchantConfig;
use tracklayer::enrich::{KnownCustomer, StoredContext};
use tracklayer::event::EventName;
use tracklayer::ingest;
use tracklayer::sources::{paddle, Headers, SourceOutput};
use tracklayer::time::parse_rfc3339;

const SECRET: &str = "pdl_ntfset_01jh7q2c4e6g8j1l3n5q7s9u2w_fixture";
const SUB: &str = "sub_01jh8x5t2kq3ve9r7m4c6n1bza";

fn merchant() -> MerchantConfig {
    MerchantConfig {
        merchant_id: "m_paddle".into(),
        ..MerchantConfig::default()
    }
    .with_source("paddle", serde_json::json!({ "secret_keys": [SECRET] }))
    .with_destination(
        "meta",
        serde_json::json!({ "pixel_id": "1234", "access_token": "token" }),
    )
}

fn mapped(name: &str) -> SourceOutput {
    let (headers, body, now) = signed(name);
    mapping::ingest_one("paddle", &merchant(), &headers, &body, now).expect(name)
}

#[test]
fn paddle_notifications_map_to_canonical_events() {
    let table = [
        Case {
            fixture: "subscription.created.trialing.json",
            name: Some(EventName::TrialStarted),
            occurrence_key: SUB,
            fields: &[
                ("/values/currency", "EUR"),
                ("/values/mrr", "87.00"),
                ("/values/arr", "1044.00"),
                ("/customer/customer_id", "ctm_01jh8x2w9s6p4k7y3b5d8f1gqe"),
            ],
        },
        Case {
            fixture: "subscription.activated.json",
            name: Some(EventName::TrialConverted),
            occurrence_key: SUB,
            fields: &[("/values/mrr", "87.00"), ("/subscription/status", "active")],
        },
        Case {
            fixture: "subscription.updated.cancel-scheduled.json",
            name: Some(EventName::SubscriptionUpdated),
            occurrence_key: "evt_01jn4d8e1g4j6l8n1q3s5u7w9y",
            fields: &[
                ("/properties/scheduled_change", "cancel"),
                ("/properties/scheduled_change_at", "1773911564"),
            ],
        },
        Case {
            fixture: "subscription.canceled.json",
            name: Some(EventName::SubscriptionCancelled),
            occurrence_key: SUB,
            fields: &[
                ("/values/mrr_delta", "-145.00"),
                ("/subscription/effective_end_at", ""),
            ],
        },
        Case {
            fixture: "transaction.paid.renewal.json",
            name: Some(EventName::SubscriptionRenewed),
            occurrence_key: "sub_01jh8x5t2kq3ve9r7m4c6n1bza@1771492364",
            fields: &[
                ("/values/gross_value", "172.55"),
                ("/values/tax_amount", "27.55"),
                ("/values/net_value", "145.00"),
                ("/properties/origin", "subscription_recurring"),
            ],
        },
        Case {
            fixture: "transaction.updated.past-due.json",
            name: Some(EventName::PaymentFailed),
            occurrence_key: "txn_01jr7g1h3k5m7p9r2t4v6x8z1b#past_due",
            fields: &[("/values/gross_value", "172.55")],
        },
        Case {
            fixture: "adjustment.updated.refund-approved.json",
            name: Some(EventName::Refund),
            occurrence_key: "adj_01jq2a4c6e8g1j3l5n7q9s2u4w",
            fields: &[
                ("/values/gross_value", "59.50"),
                ("/values/net_value", "50.00"),
                (
                    "/properties/transaction_id",
                    "txn_01jp5e9a1c3e5g7j9l2n4q6s8u",
                ),
            ],
        },
        Case {
            fixture: "adjustment.created.refund-pending.json",
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
fn customer_notifications_record_the_email() {
    let output = mapped("customer.created.json");
    assert!(output.events.is_empty());
    let customer = output.customer.unwrap();
    assert_eq!(customer.email.as_deref(), Some("lena.vogel@example.de"));
}

#[test]
fn trial_end_payment_and_activation_are_one_conversion_valued_net_of_tax() {
    let trial = mapped("subscription.created.trialing.json");
    let context = StoredContext {
        subscription: trial.subscription.clone(),
        customer: Some(KnownCustomer {
            email: Some("lena.vogel@example.de".into()),
            ..KnownCustomer::default()
        }),
        crm: None,
    };
    let paid = ingest::plan(
        mapped("transaction.paid.trial-end.json"),
        &merchant(),
        &context,
    );
    let activated = ingest::plan(mapped("subscription.activated.json"), &merchant(), &context);
    let conversion = &paid.output.events[0];
    assert_eq!(conversion.name, EventName::TrialConverted);
    assert_eq!(conversion.event_id, activated.output.events[0].event_id);
    assert_eq!(
        conversion.customer.email.as_deref(),
        Some("lena.vogel@example.de")
    );
    // Paddle's default primary value is net of tax.
    assert_eq!(
        tracklayer::destinations::meta::SPEC
            .primary_value(conversion, &merchant())
            .unwrap()
            .to_string(),
        "87.00"
    );
    assert_eq!(conversion.values.gross_value.unwrap().to_string(), "103.53");
}

#[test]
fn a_seat_change_is_an_upgrade_against_the_stored_state() {
    let activated = mapped("subscription.activated.json");
    let context = StoredContext {
        subscription: activated.subscription.clone(),
        customer: None,
        crm: None,
    };
    let plan = ingest::plan(
        mapped("subscription.updated.seats.json"),
        &merchant(),
        &context,
    );
    let event = &plan.output.events[0];
    assert_eq!(event.name, EventName::SubscriptionUpgraded);
    assert_eq!(event.values.mrr_delta.unwrap().to_string(), "58.00");
    assert_eq!(event.property("previous_mrr"), Some("87.00"));
    assert_eq!(plan.jobs.len(), 1);
    // Without stored state nothing is invented: a plain, unforwarded update.
    let cold = ingest::plan(
        mapped("subscription.updated.seats.json"),
        &merchant(),
        &StoredContext::default(),
    );
    assert_eq!(cold.output.events[0].name, EventName::SubscriptionUpdated);
    assert!(cold.jobs.is_empty());
}

#[test]
fn signature_is_checked_on_the_raw_bytes() {
    let body = br#"{"event_id":"evt_x","event_type":"subscription.created","occurred_at":"2026-01-05T09:12:46Z","data":{}}"#;
    let header = paddle::sign(SECRET, 1_767_604_366, body);
    let mut tampered = body.to_vec();
    tampered[10] = b'y';
    let err = mapping::ingest_one(
        "paddle",
        &merchant(),
        &Headers::new().with("Paddle-Signature", &header),
        &tampered,
        1_767_604_366,
    )
    .unwrap_err();
    assert_eq!(err.status(), 401);
}

fn signed(name: &str) -> (Headers, Vec<u8>, i64) {
    let body = mapping::fixture("paddle", name);
    let occurred = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["occurred_at"]
        .as_str()
        .and_then(parse_rfc3339)
        .unwrap();
    let headers = Headers::new().with(
        "Paddle-Signature",
        &paddle::sign(SECRET, occurred + 1, &body),
    );
    (headers, body, occurred + 2)
}

fn forwarded_in(order: &[&str]) -> Vec<String> {
    let mut pipeline = mapping::Pipeline::default();
    for name in order {
        let (headers, body, now) = signed(name);
        pipeline.receive("paddle", &merchant(), &headers, &body, now);
    }
    pipeline
        .forwarded()
        .iter()
        .map(mapping::value_fields)
        .collect()
}

/// The first notification of a checkout used to become the forwarded start, built from
/// the transaction totals only (no MRR/ARR for LinkedIn's ARR). Every arrival order of
/// Paddle's four notifications must forward the same start with every value.
#[test]
fn a_checkout_forwards_the_same_start_in_every_arrival_order() {
    let notifications = [
        "checkout.1.transaction.paid.json",
        "checkout.2.subscription.created.active.json",
        "checkout.3.subscription.activated.json",
        "checkout.4.transaction.completed.json",
    ];
    let orders = mapping::permutations(&notifications);
    assert_eq!(orders.len(), 24);
    let documented = forwarded_in(&notifications);
    assert_eq!(documented.len(), 1, "{documented:?}");
    assert!(
        documented[0].contains("subscription_started"),
        "{documented:?}"
    );
    // 3 seats × €29.00 monthly; totals of the first payment.
    for expected in [
        "currency=Some(\"EUR\")",
        "mrr=Some(\"87.00\")",
        "arr=Some(\"1044.00\")",
        "gross=Some(\"103.53\")",
        "net=Some(\"87.00\")",
        "tax=Some(\"16.53\")",
    ] {
        assert!(
            documented[0].contains(expected),
            "{expected}: {documented:?}"
        );
    }
    for order in &orders {
        assert_eq!(forwarded_in(order), documented, "order {order:?}");
    }
}

/// A trial conversion is reported by the trial-end transaction and subscription.activated.
#[test]
fn a_trial_conversion_forwards_the_same_values_in_either_order() {
    let start = "subscription.created.trialing.json";
    let conversion = [
        "transaction.paid.trial-end.json",
        "subscription.activated.json",
    ];
    let mut results = Vec::new();
    for order in mapping::permutations(&conversion) {
        let all: Vec<&str> = std::iter::once(start)
            .chain(order.iter().copied())
            .collect();
        let forwarded = forwarded_in(&all);
        let converted: Vec<&String> = forwarded
            .iter()
            .filter(|f| f.contains("trial_converted"))
            .collect();
        assert_eq!(converted.len(), 1, "{forwarded:?}");
        assert!(
            converted[0].contains("mrr=Some(\"87.00\")"),
            "{converted:?}"
        );
        assert!(
            converted[0].contains("gross=Some(\"103.53\")"),
            "{converted:?}"
        );
        results.push(forwarded);
    }
    assert_eq!(results[0], results[1]);
}

/// Both the transaction and the subscription notification of a start ask the edge to
/// wait for their siblings before forwarding (jobs by reference, delayed).
#[test]
fn start_notifications_wait_for_their_siblings() {
    for name in [
        "checkout.1.transaction.paid.json",
        "checkout.2.subscription.created.active.json",
        "checkout.3.subscription.activated.json",
    ] {
        let plan = ingest::plan(mapped(name), &merchant(), &StoredContext::default());
        assert_eq!(
            plan.output.sibling_wait_seconds,
            Some(paddle::SIBLING_WAIT_SECONDS),
            "{name}"
        );
    }
    let renewal = ingest::plan(
        mapped("transaction.paid.renewal.json"),
        &merchant(),
        &StoredContext::default(),
    );
    assert_eq!(renewal.output.sibling_wait_seconds, None);
}
