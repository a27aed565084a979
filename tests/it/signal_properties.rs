//! Properties every billing source must hold, checked over every fixture of every
//! source (tests/fixtures/<source>/), each signed the way its platform signs:
//!
//! 1. Identity: every forwarded event carries every identifier its own payload holds
//!    (email, customer id, phone, first/last name, country).
//! 4. Corrections carry value: every cancellation and refund has a currency and a
//!    negative value under the merchant's value rules, given what is stored.

use crate::mapping;

use base64::Engine;
use serde_json::Value;
use tracklayer::config::MerchantConfig;
use tracklayer::enrich::StoredContext;
use tracklayer::event::{CanonicalEvent, EventName};
use tracklayer::ingest;
use tracklayer::sources::{self, Headers};

const SECRET: &str = "whsec_signal_properties";
const BILLING: [&str; 5] = ["stripe", "paddle", "lemonsqueezy", "recharge", "chargebee"];

fn merchant(source: &str) -> MerchantConfig {
    let config = match source {
        "stripe" => serde_json::json!({ "endpoint_secrets": [SECRET] }),
        "paddle" => serde_json::json!({ "secret_keys": [SECRET] }),
        "lemonsqueezy" => serde_json::json!({ "signing_secrets": [SECRET] }),
        "recharge" => serde_json::json!({ "client_secrets": [SECRET] }),
        "chargebee" => {
            serde_json::json!({ "basic_auth": [{ "username": "cb", "password": SECRET }] })
        }
        other => panic!("no config for {other}"),
    };
    MerchantConfig {
        merchant_id: "m_props".into(),
        plan: tracklayer::config::Plan::Scale,
        ..MerchantConfig::default()
    }
    .with_source(source, config)
    .with_destination(
        "meta",
        serde_json::json!({ "pixel_id": "1", "access_token": "t" }),
    )
}

/// The notification's time, as each source states it.
fn occurred_at(source: &str, payload: &Value) -> i64 {
    let text_time = |v: &Value| v.as_str().and_then(tracklayer::time::parse_rfc3339);
    match source {
        "stripe" => payload["created"].as_i64(),
        "paddle" => text_time(&payload["occurred_at"]),
        "chargebee" => payload["occurred_at"].as_i64(),
        "lemonsqueezy" => text_time(&payload["data"]["attributes"]["updated_at"]),
        _ => None,
    }
    .unwrap_or(1_770_000_000)
}

fn signed(source: &str, name: &str, body: &[u8], now: i64) -> Headers {
    match source {
        "stripe" => Headers::new().with(
            "Stripe-Signature",
            &sources::stripe::sign(SECRET, now, body),
        ),
        "paddle" => Headers::new().with(
            "Paddle-Signature",
            &sources::paddle::sign(SECRET, now, body),
        ),
        "lemonsqueezy" => {
            Headers::new().with("X-Signature", &sources::lemonsqueezy::sign(SECRET, body))
        }
        "recharge" => {
            let mut parts = name.split('.');
            let topic = format!("{}/{}", parts.next().unwrap(), parts.next().unwrap());
            Headers::new()
                .with(
                    "X-Recharge-Webhook-Signature",
                    &sources::recharge::sign(SECRET, now, body),
                )
                .with("X-Recharge-Topic", &topic)
        }
        "chargebee" => {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("cb:{SECRET}"));
            Headers::new().with("Authorization", &format!("Basic {token}"))
        }
        other => panic!("{other}"),
    }
}

fn fixtures(source: &str) -> Vec<String> {
    let dir = format!("{}/tests/fixtures/{source}", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

/// Forwardable events of one fixture, planned with `context`.
fn forwarded(source: &str, name: &str, context: &StoredContext) -> (Value, Vec<CanonicalEvent>) {
    let (payload, events) = planned(source, name, context);
    (
        payload,
        events
            .into_iter()
            .filter(|e| e.name.is_forwardable())
            .collect(),
    )
}

/// Every event of one fixture, forwardable or recorded only, planned with `context`.
fn planned(source: &str, name: &str, context: &StoredContext) -> (Value, Vec<CanonicalEvent>) {
    let body = mapping::fixture(source, name);
    let payload: Value = serde_json::from_slice(&body).unwrap();
    let now = occurred_at(source, &payload) + 5;
    let headers = signed(source, name, &body, now);
    let merchant = merchant(source);
    let outputs = mapping::ingest_all(source, &merchant, &headers, &body, now)
        .unwrap_or_else(|e| panic!("{source}/{name}: {e}"));
    let events = outputs
        .into_iter()
        .flat_map(|o| ingest::plan(o, &merchant, context).output.events)
        .collect();
    (payload, events)
}

/// Identifiers a payload states about the paying person, wherever they sit in it.
#[derive(Debug, Default)]
struct Stated {
    customer_id: bool,
    emails: Vec<String>,
    phone: bool,
    first_name: bool,
    last_name: bool,
    country: bool,
}

fn stated(value: &Value, parent: &str, found: &mut Stated) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let text = v.as_str().map(str::trim).filter(|t| !t.is_empty());
                match (key.as_str(), text) {
                    ("email" | "customer_email" | "user_email", Some(t)) if t.contains('@') => {
                        found.emails.push(t.to_ascii_lowercase())
                    }
                    ("phone" | "customer_phone", Some(_)) => found.phone = true,
                    ("customer_id", _) if !v.is_null() => found.customer_id = true,
                    ("customer", Some(_)) => found.customer_id = true,
                    ("first_name", Some(_)) => found.first_name = true,
                    ("last_name", Some(_)) => found.last_name = true,
                    ("user_name" | "customer_name", Some(t)) => {
                        found.first_name = true;
                        found.last_name |= t.contains(' ');
                    }
                    ("country" | "country_code", Some(_))
                        if parent.contains("billing_address") || parent == "customer_address" =>
                    {
                        found.country = true
                    }
                    _ => stated(v, key, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| stated(v, parent, found)),
        _ => {}
    }
}

#[test]
fn every_forwarded_event_carries_every_identifier_its_payload_holds() {
    let mut checked = 0;
    for source in BILLING {
        for name in fixtures(source) {
            let (payload, events) = forwarded(source, &name, &StoredContext::default());
            let mut found = Stated::default();
            stated(&payload, "", &mut found);
            found.emails.sort();
            found.emails.dedup();
            for event in &events {
                let what = format!("{source}/{name} → {}", event.name.as_str());
                if let [email] = found.emails.as_slice() {
                    assert_eq!(
                        event
                            .customer
                            .email
                            .as_deref()
                            .map(str::to_ascii_lowercase)
                            .as_deref(),
                        Some(email.as_str()),
                        "{what}: email"
                    );
                }
                assert!(
                    !found.phone || event.touchpoints.phone.is_some(),
                    "{what}: phone"
                );
                assert!(
                    !found.first_name || event.customer.first_name.is_some(),
                    "{what}: first name"
                );
                assert!(
                    !found.last_name || event.customer.last_name.is_some(),
                    "{what}: last name"
                );
                assert!(
                    !found.country || event.customer.country.is_some(),
                    "{what}: country"
                );
                assert!(
                    !found.customer_id || event.customer.id().is_some(),
                    "{what}: customer id"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 40, "only {checked} events checked");
}

/// Chargebee sends the customer with every event and warns events arrive out of order:
/// a subscription event that beats `customer_created` still identifies the person.
#[test]
fn a_chargebee_subscription_event_alone_identifies_the_customer() {
    let (_, events) = forwarded(
        "chargebee",
        "subscription_activated.json",
        &StoredContext::default(),
    );
    let customer = &events[0].customer;
    assert_eq!(customer.email.as_deref(), Some("priya@helixlabs.example"));
    assert_eq!(customer.first_name.as_deref(), Some("Priya"));
    assert_eq!(customer.last_name.as_deref(), Some("Raman"));
}

#[test]
fn corrections_carry_a_currency_and_a_negative_value() {
    let mut checked = 0;
    for source in BILLING {
        // What the ledger holds for the subscription by the time it is cancelled: every
        // fixture's observation except the cancellation's, folded as the ledger folds.
        let mut state: Option<tracklayer::ledger::SubscriptionState> = None;
        for (i, name) in fixtures(source).iter().enumerate() {
            let body = mapping::fixture(source, name);
            let payload: Value = serde_json::from_slice(&body).unwrap();
            let now = occurred_at(source, &payload) + 5;
            let headers = signed(source, name, &body, now);
            let outputs =
                mapping::ingest_all(source, &merchant(source), &headers, &body, now).unwrap();
            for output in outputs {
                let Some(mut observation) = output.subscription else {
                    continue;
                };
                if ["cancelled", "canceled", "expired"].contains(&observation.status.as_str()) {
                    continue;
                }
                observation.observed_at = i as i64;
                state = tracklayer::ledger::next_state(state.as_ref(), &observation).or(state);
            }
        }
        let context = StoredContext {
            subscription: state,
            ..StoredContext::default()
        };
        for name in fixtures(source) {
            let merchant = merchant(source);
            let (_, events) = forwarded(source, &name, &context);
            for event in events
                .iter()
                .filter(|e| matches!(e.name, EventName::SubscriptionCancelled | EventName::Refund))
            {
                let what = format!("{source}/{name} → {}", event.name.as_str());
                assert!(event.values.currency.is_some(), "{what}: currency");
                let value = tracklayer::destinations::meta::SPEC
                    .primary_value(event, &merchant)
                    .unwrap_or_else(|| panic!("{what}: no value"));
                assert!(value.minor < 0, "{what}: {value}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 5, "only {checked} corrections checked");
}

/// Property 3, plan changes: a change of price, plan or quantity that changes recurring revenue
/// is an upgrade or a downgrade with `mrr_delta`, for every source whose payload (or the
/// stored state) makes both revenues computable. Lemon Squeezy states no price: its
/// upgrade is recognised by the proration it charges and carries no `mrr_delta`.
#[test]
fn every_revenue_changing_plan_change_is_an_upgrade_or_a_downgrade() {
    let table: [(&str, &str, EventName, Option<&str>); 6] = [
        (
            "stripe",
            "customer.subscription.updated.upgrade.json",
            EventName::SubscriptionUpgraded,
            None,
        ),
        (
            "stripe",
            "customer.subscription.updated.downgrade.json",
            EventName::SubscriptionDowngraded,
            None,
        ),
        (
            "paddle",
            "subscription.updated.seats.json",
            EventName::SubscriptionUpgraded,
            Some("1.00"),
        ),
        (
            "chargebee",
            "subscription_changed.upgrade.json",
            EventName::SubscriptionUpgraded,
            Some("1.00"),
        ),
        (
            "recharge",
            "subscription.updated.quantity.json",
            EventName::SubscriptionUpgraded,
            Some("1.00"),
        ),
        (
            "lemonsqueezy",
            "subscription_payment_success.updated-proration.json",
            EventName::SubscriptionUpgraded,
            None,
        ),
    ];
    for (source, name, expected, stored_mrr) in table {
        // Sources without previous values compare with the stored subscription: one
        // that was worth `stored_mrr` a month before this change.
        let (_, unplanned) = planned(source, name, &StoredContext::default());
        let mut context = StoredContext::default();
        if let (Some(mrr), Some(event)) = (stored_mrr, unplanned.first()) {
            context.subscription = Some(tracklayer::sources::SubscriptionObservation {
                subscription_id: event
                    .subscription
                    .subscription_id
                    .clone()
                    .unwrap_or_default(),
                status: "active".into(),
                currency: event.values.currency.clone(),
                mrr: tracklayer::money::Amount::parse_decimal(mrr),
                ..Default::default()
            });
        }
        let (_, events) = forwarded(source, name, &context);
        let change = events
            .iter()
            .find(|e| e.name == expected)
            .unwrap_or_else(|| {
                panic!(
                    "{source}/{name}: {:?}",
                    events.iter().map(|e| e.name).collect::<Vec<_>>()
                )
            });
        if source == "lemonsqueezy" {
            assert!(
                change.values.mrr_delta.is_none(),
                "{source}/{name}: no price, no delta"
            );
            assert!(
                change.values.net_value.is_some(),
                "{source}/{name}: the charge"
            );
        } else {
            let delta = change
                .values
                .mrr_delta
                .unwrap_or_else(|| panic!("{source}/{name}: no mrr_delta"));
            assert_eq!(
                delta.minor > 0,
                expected == EventName::SubscriptionUpgraded,
                "{source}/{name}: {delta}"
            );
        }
    }
}
