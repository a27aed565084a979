//! Table-driven mapping over realistic Stripe fixtures (tests/fixtures/stripe/), each
//! signed the way Stripe signs and sent through the same ingest path the worker uses.

use tracklayer::config::{MerchantConfig, MetaConfig, StripeSourceConfig};
use tracklayer::event::EventName;
use tracklayer::ingest;
use tracklayer::sources::{stripe, Headers};

const SECRET: &str = "whsec_fixture_secret";

fn merchant() -> MerchantConfig {
    MerchantConfig {
        merchant_id: "m_fixture".into(),
        stripe: Some(StripeSourceConfig {
            endpoint_secrets: vec![SECRET.into()],
            tolerance_seconds: 300,
        }),
        meta: Some(MetaConfig {
            pixel_id: "1234".into(),
            access_token: "token".into(),
            api_version: "v25.0".into(),
            action_source: "system_generated".into(),
            test_event_code: None,
        }),
        ..MerchantConfig::default()
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/stripe/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn ingest_fixture(name: &str) -> ingest::IngestPlan {
    let body = fixture(name);
    let created = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["created"]
        .as_i64()
        .unwrap();
    let now = created + 5;
    let headers = Headers::new().with("stripe-signature", &stripe::sign(SECRET, now, &body));
    ingest::plan("stripe", &merchant(), &headers, &body, now).expect(name)
}

struct Expect {
    fixture: &'static str,
    name: EventName,
    subscription_id: &'static str,
    currency: &'static str,
    mrr: Option<&'static str>,
    arr: Option<&'static str>,
    mrr_delta: Option<&'static str>,
    email: Option<&'static str>,
    interval: Option<&'static str>,
}

#[test]
fn subscription_events_map_to_canonical_events() {
    let table = [
        Expect {
            fixture: "customer.subscription.created.trialing.json",
            name: EventName::TrialStarted,
            subscription_id: "sub_1RtQ8iLkdIwHu7ixq2nWcH4E",
            currency: "USD",
            mrr: Some("49.00"),
            arr: Some("588.00"),
            mrr_delta: None,
            email: None,
            interval: Some("month"),
        },
        Expect {
            fixture: "customer.subscription.created.active.json",
            name: EventName::SubscriptionStarted,
            subscription_id: "sub_1RtRb0LkdIwHu7ixTeam5Yr",
            currency: "USD",
            mrr: Some("500.00"),
            arr: Some("6000.00"),
            mrr_delta: None,
            email: Some("Ops@Acme-Analytics.io"),
            interval: Some("year"),
        },
        Expect {
            fixture: "customer.subscription.deleted.json",
            name: EventName::SubscriptionCancelled,
            subscription_id: "sub_1RtQ8iLkdIwHu7ixq2nWcH4E",
            currency: "USD",
            mrr: Some("49.00"),
            arr: Some("588.00"),
            mrr_delta: Some("-49.00"),
            email: None,
            interval: Some("month"),
        },
        Expect {
            fixture: "customer.subscription.created.legacy-2024-06-20.jpy.json",
            name: EventName::TrialStarted,
            subscription_id: "sub_1PbLegacyJpy0001",
            currency: "JPY",
            mrr: Some("3267"),
            arr: Some("39200"),
            mrr_delta: None,
            email: None,
            interval: Some("month"),
        },
        Expect {
            fixture: "customer.subscription.created.weekly.json",
            name: EventName::TrialStarted,
            subscription_id: "sub_1RtWeekly0001",
            currency: "USD",
            mrr: Some("43.33"),
            arr: Some("520.00"),
            mrr_delta: None,
            email: None,
            interval: Some("week"),
        },
    ];
    for case in table {
        let plan = ingest_fixture(case.fixture);
        assert_eq!(plan.output.events.len(), 1, "{}", case.fixture);
        let event = &plan.output.events[0];
        let label = case.fixture;
        assert_eq!(event.name, case.name, "{label}");
        assert_eq!(
            event.subscription.subscription_id.as_deref(),
            Some(case.subscription_id),
            "{label}"
        );
        assert_eq!(
            event.values.currency.as_deref(),
            Some(case.currency),
            "{label}"
        );
        assert_eq!(
            event.values.mrr.map(|a| a.to_string()).as_deref(),
            case.mrr,
            "{label}"
        );
        assert_eq!(
            event.values.arr.map(|a| a.to_string()).as_deref(),
            case.arr,
            "{label}"
        );
        assert_eq!(
            event.values.mrr_delta.map(|a| a.to_string()).as_deref(),
            case.mrr_delta,
            "{label}"
        );
        assert_eq!(event.customer.email.as_deref(), case.email, "{label}");
        let interval = event
            .subscription
            .billing_interval
            .map(|i| serde_json::to_value(i).unwrap());
        assert_eq!(
            interval.as_ref().and_then(|v| v.as_str()),
            case.interval,
            "{label}"
        );
        assert_eq!(
            plan.output.ordering_key,
            format!("subscription:{}", case.subscription_id)
        );
        // One job per connected destination (only Meta here).
        assert_eq!(plan.jobs.len(), 1, "{label}");
        assert_eq!(plan.jobs[0].destination, "meta");
    }
}

#[test]
fn cancellation_carries_effective_end_and_reason() {
    let plan = ingest_fixture("customer.subscription.deleted.json");
    let event = &plan.output.events[0];
    assert_eq!(event.subscription.effective_end_at, Some(1767830398));
    assert_eq!(
        event.subscription.cancel_reason.as_deref(),
        Some("cancellation_requested")
    );
    assert_eq!(
        plan.output.subscription.as_ref().unwrap().status,
        "canceled"
    );
}

#[test]
fn customer_events_record_identity_without_forwarding() {
    let plan = ingest_fixture("customer.created.json");
    assert!(plan.output.events.is_empty());
    assert!(plan.jobs.is_empty());
    let customer = plan.output.customer.unwrap();
    assert_eq!(customer.customer_id, "cus_SpQ8gWmA1ZbXyT");
    assert_eq!(customer.email.as_deref(), Some("jane.doe@example.com"));
}

#[test]
fn unmapped_types_are_ignored_with_a_reason() {
    let plan = ingest_fixture("payment_method.attached.json");
    assert!(plan.output.events.is_empty());
    assert!(plan
        .output
        .ignored_reason
        .unwrap()
        .contains("payment_method.attached"));
}

#[test]
fn redelivery_yields_identical_event_ids() {
    let first = ingest_fixture("customer.subscription.created.trialing.json");
    let second = ingest_fixture("customer.subscription.created.trialing.json");
    assert_eq!(
        first.output.events[0].event_id,
        second.output.events[0].event_id
    );
    assert_eq!(first.jobs[0].job_id, second.jobs[0].job_id);
}

#[test]
fn oversized_body_is_refused_before_verification() {
    let body = vec![b' '; ingest::MAX_BODY_BYTES + 1];
    let err = ingest::plan("stripe", &merchant(), &Headers::new(), &body, 0).unwrap_err();
    assert_eq!(err.status(), 413);
}
