//! Table-driven mapping over realistic Stripe fixtures (tests/fixtures/stripe/), each
//! signed the way Stripe signs and sent through the same ingest path the worker uses.

use crate::mapping;

use tracklayer::config::MerchantConfig;
use tracklayer::enrich::StoredContext;
use tracklayer::event::EventName;
use tracklayer::ingest;
use tracklayer::sources::{stripe, Headers};

const SECRET: &str = "whsec_fixture_secret";

fn merchant() -> MerchantConfig {
    MerchantConfig {
        merchant_id: "m_fixture".into(),
        // Stripe ingest is a Scale feature.
        plan: tracklayer::config::Plan::Scale,
        ..MerchantConfig::default()
    }
    .with_source(
        "stripe",
        serde_json::json!({ "endpoint_secrets": [SECRET] }),
    )
    .with_destination(
        "meta",
        serde_json::json!({ "pixel_id": "1234", "access_token": "token" }),
    )
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
    let output = mapping::ingest_one("stripe", &merchant(), &headers, &body, now).expect(name);
    ingest::plan(output, &merchant(), &StoredContext::default())
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
    let err = mapping::ingest_one("stripe", &merchant(), &Headers::new(), &body, 0).unwrap_err();
    assert_eq!(err.status(), 413);
}

/// One lifecycle fixture: the canonical event it must become (`None`: acknowledged and
/// recorded as ignored), its occurrence key, and fields of the serialised event.
struct Lifecycle {
    fixture: &'static str,
    name: Option<EventName>,
    occurrence_key: &'static str,
    fields: &'static [(&'static str, &'static str)],
}

const SUB: &str = "sub_1RtQ8iLkdIwHu7ixq2nWcH4E";

#[test]
fn lifecycle_events_map_to_one_canonical_event_each() {
    let table = [
        Lifecycle {
            fixture: "customer.subscription.updated.trial-converted.json",
            name: Some(EventName::TrialConverted),
            occurrence_key: SUB,
            fields: &[
                ("/values/mrr", "49.00"),
                ("/values/arr", "588.00"),
                ("/properties/prior_status", "trialing"),
                ("/subscription/status", "active"),
            ],
        },
        Lifecycle {
            fixture: "customer.subscription.updated.upgrade.json",
            name: Some(EventName::SubscriptionUpgraded),
            occurrence_key: "evt_1SpUpgradeSeats0001",
            fields: &[
                ("/values/mrr", "147.00"),
                ("/values/mrr_delta", "98.00"),
                ("/properties/previous_mrr", "49.00"),
            ],
        },
        Lifecycle {
            fixture: "customer.subscription.updated.downgrade.json",
            name: Some(EventName::SubscriptionDowngraded),
            occurrence_key: "evt_1SpDowngradePlan001",
            fields: &[
                ("/values/mrr", "49.00"),
                ("/values/mrr_delta", "-100.00"),
                ("/subscription/plan_id", "price_1RkT9aLkdIwHu7ixGrowthM"),
            ],
        },
        Lifecycle {
            fixture: "customer.subscription.updated.cancel-scheduled.json",
            name: Some(EventName::SubscriptionUpdated),
            occurrence_key: "evt_1SpCancelSched0001",
            fields: &[
                ("/properties/cancel_scheduled_for", "1773532800"),
                ("/subscription/cancel_reason", "cancellation_requested"),
            ],
        },
        Lifecycle {
            fixture: "customer.subscription.updated.cancel-reverted.json",
            name: Some(EventName::SubscriptionReactivated),
            occurrence_key: "evt_1SpCancelUndone001",
            fields: &[
                ("/properties/prior_status", "cancel_scheduled"),
                ("/values/mrr", "49.00"),
            ],
        },
        Lifecycle {
            fixture: "customer.subscription.updated.pause-collection.json",
            name: Some(EventName::SubscriptionPaused),
            occurrence_key: "evt_1SpPauseCollect001",
            fields: &[("/properties/pause_kind", "pause_collection")],
        },
        Lifecycle {
            fixture: "customer.subscription.paused.json",
            name: Some(EventName::SubscriptionPaused),
            occurrence_key: "evt_1SpSubPaused00001",
            fields: &[("/subscription/status", "paused")],
        },
        Lifecycle {
            fixture: "customer.subscription.resumed.json",
            name: Some(EventName::SubscriptionReactivated),
            occurrence_key: "evt_1SpSubResumed0001",
            fields: &[("/properties/prior_status", "paused")],
        },
        Lifecycle {
            fixture: "invoice.paid.renewal.json",
            name: Some(EventName::SubscriptionRenewed),
            occurrence_key: "sub_1RtQ8iLkdIwHu7ixq2nWcH4E@1771113600",
            fields: &[
                ("/values/currency", "USD"),
                ("/values/gross_value", "53.90"),
                ("/values/net_value", "49.00"),
                ("/values/tax_amount", "4.90"),
                ("/customer/email", "jane.doe@example.com"),
                ("/subscription/subscription_id", SUB),
                ("/properties/invoice_id", "in_1SpRenewalFeb00001"),
                ("/properties/period_start", "1771113600"),
            ],
        },
        Lifecycle {
            fixture: "invoice.paid.renewal.legacy-2024-06-20.json",
            name: Some(EventName::SubscriptionRenewed),
            occurrence_key: "sub_1RtQ8iLkdIwHu7ixq2nWcH4E@1771113600",
            fields: &[
                ("/values/gross_value", "49.00"),
                ("/values/mrr", "49.00"),
                ("/values/arr", "588.00"),
                ("/subscription/subscription_id", SUB),
            ],
        },
        Lifecycle {
            fixture: "invoice.payment_failed.json",
            name: Some(EventName::PaymentFailed),
            occurrence_key: "in_1SpRenewalMar00001#2",
            fields: &[
                ("/values/gross_value", "53.90"),
                ("/properties/attempt_count", "2"),
                ("/properties/next_payment_attempt", "1773964800"),
                ("/subscription/subscription_id", SUB),
            ],
        },
        Lifecycle {
            fixture: "refund.created.partial.json",
            name: Some(EventName::Refund),
            occurrence_key: "re_3SpRfnLkdIwHu7ix0Partial",
            fields: &[
                ("/values/gross_value", "20.00"),
                ("/properties/charge_id", "ch_3SpRenLkdIwHu7ix1ChgFeb"),
                ("/properties/refund_reason", "requested_by_customer"),
            ],
        },
        Lifecycle {
            fixture: "charge.refunded.partial.json",
            name: Some(EventName::Refund),
            occurrence_key: "ch_3SpRenLkdIwHu7ix1ChgFeb:refunded:2000",
            fields: &[
                ("/values/gross_value", "20.00"),
                ("/customer/email", "jane.doe@example.com"),
                ("/customer/customer_id", "cus_SpQ8gWmA1ZbXyT"),
            ],
        },
        Lifecycle {
            fixture: "invoice.paid.trial-invoice.json",
            name: None,
            occurrence_key: "",
            fields: &[],
        },
        Lifecycle {
            fixture: "invoice.payment_succeeded.renewal.json",
            name: None,
            occurrence_key: "",
            fields: &[],
        },
    ];
    for case in table {
        let plan = ingest_fixture(case.fixture);
        let Some(name) = case.name else {
            assert!(plan.output.events.is_empty(), "{}", case.fixture);
            assert!(plan.output.ignored_reason.is_some(), "{}", case.fixture);
            assert!(plan.jobs.is_empty(), "{}", case.fixture);
            continue;
        };
        assert_eq!(plan.output.events.len(), 1, "{}", case.fixture);
        let event = &plan.output.events[0];
        assert_eq!(event.name, name, "{}", case.fixture);
        assert_eq!(
            event.occurrence_key, case.occurrence_key,
            "{}",
            case.fixture
        );
        let json = serde_json::to_value(event).unwrap();
        for (pointer, expected) in case.fields {
            assert_eq!(
                json.pointer(pointer).and_then(|v| v.as_str()),
                Some(*expected),
                "{} {pointer}",
                case.fixture
            );
        }
        let forwarded = usize::from(name.is_forwardable());
        assert_eq!(plan.jobs.len(), forwarded, "{}", case.fixture);
    }
}

fn mapped(name: &str) -> tracklayer::sources::SourceOutput {
    let body = fixture(name);
    let created = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["created"]
        .as_i64()
        .unwrap();
    let headers = Headers::new().with("stripe-signature", &stripe::sign(SECRET, created, &body));
    mapping::ingest_one("stripe", &merchant(), &headers, &body, created).expect(name)
}

#[test]
fn the_trial_end_invoice_and_the_status_change_are_one_conversion() {
    let trial = mapped("customer.subscription.created.trialing.json");
    let context = StoredContext {
        subscription: trial.subscription.clone(),
        customer: None,
        crm: None,
    };
    let from_invoice = ingest::plan(mapped("invoice.paid.trial-end.json"), &merchant(), &context);
    let from_update = ingest::plan(
        mapped("customer.subscription.updated.trial-converted.json"),
        &merchant(),
        &context,
    );
    let invoice_event = &from_invoice.output.events[0];
    assert_eq!(invoice_event.name, EventName::TrialConverted);
    assert_eq!(
        invoice_event.event_id,
        from_update.output.events[0].event_id
    );
    assert_eq!(from_invoice.jobs[0].job_id, from_update.jobs[0].job_id);
    // The invoice side learns MRR from the stored subscription state.
    assert_eq!(invoice_event.values.mrr.unwrap().to_string(), "49.00");
    assert_eq!(
        invoice_event.values.gross_value.unwrap().to_string(),
        "49.00"
    );

    // Without the trial in context, the same invoice is a renewal (nothing is invented).
    let cold = ingest::plan(
        mapped("invoice.paid.trial-end.json"),
        &merchant(),
        &StoredContext::default(),
    );
    assert_eq!(cold.output.events[0].name, EventName::SubscriptionRenewed);

    // A later period is a renewal, and inherits the MRR of the current state.
    let renewal = ingest::plan(mapped("invoice.paid.renewal.json"), &merchant(), &context);
    assert_eq!(
        renewal.output.events[0].name,
        EventName::SubscriptionRenewed
    );
    assert_eq!(
        renewal.output.events[0].values.mrr.unwrap().to_string(),
        "49.00"
    );
}

#[test]
fn both_refund_webhooks_of_one_refund_count_once_when_stripe_names_it() {
    let refund = mapped("refund.created.partial.json");
    // Before API version 2022-11-15, charge.refunded lists its refunds.
    let mut legacy: serde_json::Value =
        serde_json::from_slice(&fixture("charge.refunded.partial.json")).unwrap();
    let refund_object =
        serde_json::from_slice::<serde_json::Value>(&fixture("refund.created.partial.json"))
            .unwrap()["data"]["object"]
            .clone();
    legacy["api_version"] = "2020-08-27".into();
    legacy["data"]["object"]["refunds"] = serde_json::json!({
        "object": "list", "data": [refund_object], "has_more": false, "total_count": 1
    });
    let body = serde_json::to_vec(&legacy).unwrap();
    let created = legacy["created"].as_i64().unwrap();
    let headers = Headers::new().with("stripe-signature", &stripe::sign(SECRET, created, &body));
    let from_charge = mapping::ingest_one("stripe", &merchant(), &headers, &body, created).unwrap();
    assert_eq!(from_charge.events[0].event_id, refund.events[0].event_id);
    assert_eq!(from_charge.ordering_key, refund.ordering_key);
    assert_eq!(
        from_charge.events[0].customer.email.as_deref(),
        Some("jane.doe@example.com")
    );
}

#[test]
fn a_new_subscription_soon_after_a_cancellation_is_a_reactivation() {
    let started = mapped("customer.subscription.created.active.json");
    let occurred = started.events[0].occurred_at;
    let customer = |days_ago: i64, sub: &str| tracklayer::enrich::KnownCustomer {
        email: Some("ops@acme-analytics.io".into()),
        last_cancelled_at: Some(occurred - days_ago * 86_400),
        last_cancelled_subscription: Some(sub.into()),
    };
    let within = ingest::plan(
        started.clone(),
        &merchant(),
        &StoredContext {
            subscription: None,
            customer: Some(customer(20, "sub_old")),
            crm: None,
        },
    );
    let event = &within.output.events[0];
    assert_eq!(event.name, EventName::SubscriptionReactivated);
    assert_eq!(event.property("prior_status"), Some("canceled"));
    assert_eq!(event.property("previous_subscription_id"), Some("sub_old"));
    assert_eq!(within.jobs.len(), 1);

    let outside = ingest::plan(
        started.clone(),
        &merchant(),
        &StoredContext {
            subscription: None,
            customer: Some(customer(200, "sub_old")),
            crm: None,
        },
    );
    assert_eq!(
        outside.output.events[0].name,
        EventName::SubscriptionStarted
    );

    let mut no_window = merchant();
    no_window.lifecycle.recovery_window_days = 0;
    let off = ingest::plan(
        started,
        &no_window,
        &StoredContext {
            subscription: None,
            customer: Some(customer(20, "sub_old")),
            crm: None,
        },
    );
    assert_eq!(off.output.events[0].name, EventName::SubscriptionStarted);
}

#[test]
fn refunds_and_failed_payments_are_valued_by_their_amount() {
    let merchant = merchant();
    let policy = &tracklayer::destinations::meta::SPEC;
    let refund = &ingest_fixture("refund.created.partial.json").output.events[0];
    assert_eq!(
        policy.primary_value(refund, &merchant).unwrap().to_string(),
        "-20.00"
    );
    let failed = &ingest_fixture("invoice.payment_failed.json").output.events[0];
    assert_eq!(
        policy.primary_value(failed, &merchant).unwrap().to_string(),
        "53.90"
    );
}

#[test]
fn stripe_ingest_needs_the_scale_plan() {
    let starter = MerchantConfig {
        plan: tracklayer::config::Plan::Starter,
        ..merchant()
    };
    let body = fixture("customer.subscription.created.trialing.json");
    let created = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["created"]
        .as_i64()
        .unwrap();
    let headers = Headers::new().with("stripe-signature", &stripe::sign(SECRET, created, &body));
    let err = mapping::ingest_one("stripe", &starter, &headers, &body, created).unwrap_err();
    assert_eq!((err.status(), err.reason_code()), (403, "plan_required"));
    assert_eq!(
        err.to_string(),
        "feature stripe_ingest requires plan Scale (merchant is on Starter)"
    );
}

#[test]
fn linkedin_gets_only_mapped_events_and_only_from_scale_up() {
    let with_linkedin = merchant().with_destination(
        "linkedin",
        serde_json::json!({
            "access_token": "AQV-token",
            "conversion_rules": { "subscription_started": "104012" }
        }),
    );
    let jobs_for = |merchant: &MerchantConfig, fixture_name: &str| -> Vec<String> {
        let body = fixture(fixture_name);
        let created = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["created"]
            .as_i64()
            .unwrap();
        let headers =
            Headers::new().with("stripe-signature", &stripe::sign(SECRET, created, &body));
        let output = mapping::ingest_one("stripe", merchant, &headers, &body, created).unwrap();
        ingest::plan(output, merchant, &StoredContext::default())
            .jobs
            .iter()
            .map(|job| job.destination.clone())
            .collect()
    };
    assert_eq!(
        jobs_for(&with_linkedin, "customer.subscription.created.active.json"),
        ["meta", "linkedin"]
    );
    assert_eq!(
        jobs_for(
            &with_linkedin,
            "customer.subscription.created.trialing.json"
        ),
        ["meta"],
        "trial_started has no LinkedIn conversion rule"
    );
    // After a downgrade below Scale the LinkedIn settings stay but nothing is sent.
    let downgraded = MerchantConfig {
        plan: tracklayer::config::Plan::Starter,
        ..with_linkedin
    };
    assert_eq!(tracklayer::destinations::connected(&downgraded), ["meta"]);
}

/// An unsigned request to a Starter merchant learns nothing: not its plan, not that
/// Stripe is configured. The plan answer comes only once the signature holds.
#[test]
fn an_unsigned_request_learns_neither_plan_nor_sources() {
    let starter = MerchantConfig {
        plan: tracklayer::config::Plan::Starter,
        ..merchant()
    };
    let unconfigured = MerchantConfig {
        merchant_id: "m_fixture".into(),
        ..MerchantConfig::default()
    };
    let body = fixture("customer.subscription.created.trialing.json");
    let forged = Headers::new().with("stripe-signature", "t=1,v1=00");
    let answers: Vec<(u16, String)> = [&starter, &merchant(), &unconfigured]
        .into_iter()
        .map(|m| {
            let err = mapping::ingest_one("stripe", m, &forged, &body, 1).unwrap_err();
            (err.status(), err.body())
        })
        .collect();
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert_eq!(answers[0].0, 401);
    assert!(!answers[0].1.contains("plan") && !answers[0].1.contains("stripe"));
}

fn signed_variant(edit: impl Fn(&mut serde_json::Value)) -> (Headers, Vec<u8>) {
    let mut event: serde_json::Value =
        serde_json::from_slice(&fixture("customer.subscription.created.trialing.json")).unwrap();
    edit(&mut event);
    let body = serde_json::to_vec(&event).unwrap();
    let headers = Headers::new().with(
        "stripe-signature",
        &stripe::sign(SECRET, 1_770_000_000, &body),
    );
    (headers, body)
}

/// serde quotes the value it could not use; a signed event with an email where a
/// timestamp belongs must not carry that email into the answer or the rejected log.
#[test]
fn a_wrongly_typed_field_is_named_without_its_value() {
    let (headers, body) = signed_variant(|e| e["created"] = "jane.doe@example.com".into());
    let err =
        mapping::ingest_one("stripe", &merchant(), &headers, &body, 1_770_000_000).unwrap_err();
    assert_eq!(err.status(), 400);
    let said = format!("{} {}", err.body(), err.log_message());
    assert!(!said.contains("jane.doe"), "{said}");
    assert!(said.contains("created"), "{said}");
}

/// A `created` of 9.2e18 was accepted and broke the ledger on commit after the 202.
#[test]
fn timestamps_beyond_the_representable_range_are_refused_naming_the_field() {
    for created in [
        serde_json::json!(9_200_000_000_000_000_000u64),
        serde_json::json!(-1),
    ] {
        let (headers, body) = signed_variant(|e| e["created"] = created.clone());
        let err =
            mapping::ingest_one("stripe", &merchant(), &headers, &body, 1_770_000_000).unwrap_err();
        assert_eq!(
            (err.status(), err.code()),
            (400, "malformed_payload"),
            "{err}"
        );
        assert!(err.to_string().contains("created"), "{err}");
    }
}

fn forwarded_in(order: &[&str]) -> Vec<tracklayer::event::CanonicalEvent> {
    let mut pipeline = mapping::Pipeline::default();
    for name in order {
        let body = fixture(name);
        let created = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["created"]
            .as_i64()
            .unwrap();
        let headers = Headers::new().with(
            "stripe-signature",
            &stripe::sign(SECRET, created + 5, &body),
        );
        pipeline.receive("stripe", &merchant(), &headers, &body, created + 5);
    }
    pipeline.forwarded()
}

/// Stripe reports a trial conversion twice: `customer.subscription.updated` (MRR, ARR)
/// and the trial-end `invoice.paid` (what was charged). Either order forwards one
/// conversion with both.
#[test]
fn a_trial_conversion_forwards_the_same_values_in_either_order() {
    let trial = "customer.subscription.created.trialing.json";
    let siblings = [
        "customer.subscription.updated.trial-converted.json",
        "invoice.paid.trial-end.json",
    ];
    let mut results = Vec::new();
    for order in mapping::permutations(&siblings) {
        let all: Vec<&str> = std::iter::once(trial)
            .chain(order.iter().copied())
            .collect();
        let converted: Vec<String> = forwarded_in(&all)
            .iter()
            .filter(|e| e.name == EventName::TrialConverted)
            .map(mapping::value_fields)
            .collect();
        assert_eq!(converted.len(), 1, "{order:?}: {converted:?}");
        for part in [
            "mrr=Some",
            "arr=Some",
            "gross=Some",
            "net=Some",
            "currency=Some",
        ] {
            assert!(
                converted[0].contains(part),
                "{order:?} lacks {part}: {converted:?}"
            );
        }
        results.push(converted);
    }
    assert_eq!(results[0], results[1]);
}

/// The first of the two waits for the other before it is forwarded.
#[test]
fn both_notifications_of_a_trial_conversion_wait_for_their_sibling() {
    for name in [
        "customer.subscription.updated.trial-converted.json",
        "invoice.paid.trial-end.json",
    ] {
        let body = fixture(name);
        let created = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["created"]
            .as_i64()
            .unwrap();
        let headers =
            Headers::new().with("stripe-signature", &stripe::sign(SECRET, created, &body));
        let output = mapping::ingest_one("stripe", &merchant(), &headers, &body, created).unwrap();
        let context = StoredContext {
            subscription: Some(tracklayer::sources::SubscriptionObservation {
                subscription_id: output.events[0]
                    .subscription
                    .subscription_id
                    .clone()
                    .unwrap_or_default(),
                status: "trialing".into(),
                trial_end_at: output.events[0].subscription.trial_end_at.or(Some(created)),
                ..Default::default()
            }),
            ..StoredContext::default()
        };
        let plan = ingest::plan(output, &merchant(), &context);
        assert!(
            plan.output.sibling_wait_seconds.is_some(),
            "{name}: {:?}",
            plan.output
                .events
                .iter()
                .map(|e| e.name)
                .collect::<Vec<_>>()
        );
    }
}
