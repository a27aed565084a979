//! Stripe webhooks: `Stripe-Signature` verification and subscription lifecycle mapping.
//!
//! Signature: `t=<unix>,v1=<hex>[,v1=<hex>…]`, HMAC-SHA256 over `"{t}.{raw body}"` keyed by
//! the endpoint secret (`whsec_…`), 300 s tolerance; several `v1` values appear while a
//! secret is rolled and any may match. Payload shapes follow API version
//! `2025-03-31.basil` and later (period fields on subscription items) and still accept
//! older ones. <https://docs.stripe.com/webhooks#verify-manually>

use super::{CustomerRecord, Headers, SourceOutput, SourceSpec, SubscriptionObservation};
use crate::config::MerchantConfig;
use crate::error::{IngestError, VerifyError};
use crate::event::{event_id, CanonicalEvent, Customer, EventName, SubscriptionDetails, Values};
use crate::money::{recurring_from_period, Amount, Interval};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

pub const NAME: &str = "stripe";
pub const SIGNATURE_HEADER: &str = "Stripe-Signature";
pub const DEFAULT_TOLERANCE_SECONDS: i64 = 300;

pub const SPEC: SourceSpec = SourceSpec { name: NAME, ingest };

fn ingest(
    merchant: &MerchantConfig,
    headers: &Headers,
    body: &[u8],
    now: i64,
) -> Result<SourceOutput, IngestError> {
    let config = merchant
        .stripe
        .as_ref()
        .ok_or_else(|| IngestError::SourceNotConfigured {
            source_name: NAME.into(),
        })?;
    let secrets: Vec<&str> = config.endpoint_secrets.iter().map(String::as_str).collect();
    verify(
        headers.get(SIGNATURE_HEADER),
        body,
        &secrets,
        now,
        config.tolerance_seconds,
    )?;
    map_event(&merchant.merchant_id, body)
}

/// Verifies the `Stripe-Signature` header over the raw body, in constant time per candidate.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[&str],
    now: i64,
    tolerance_seconds: i64,
) -> Result<(), VerifyError> {
    let header = header.ok_or(VerifyError::MissingHeader {
        header: SIGNATURE_HEADER,
    })?;
    let malformed = |detail| VerifyError::MalformedHeader {
        header: SIGNATURE_HEADER,
        detail,
    };
    let mut timestamp: Option<&str> = None;
    let mut signatures: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" => timestamp = Some(value),
            // An undecodable v1 simply cannot match; the others still may.
            "v1" => signatures.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or_else(|| malformed("no t= timestamp"))?;
    let signed_at: i64 = timestamp
        .parse()
        .map_err(|_| malformed("t= is not a unix timestamp"))?;
    if signatures.is_empty() {
        return Err(malformed("no v1= signature"));
    }
    if secrets.iter().all(|s| s.is_empty()) {
        return Err(VerifyError::NoSecretConfigured);
    }
    let matched = secrets.iter().filter(|s| !s.is_empty()).any(|secret| {
        signatures.iter().any(|candidate| {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
                .expect("HMAC accepts keys of any length");
            mac.update(timestamp.as_bytes());
            mac.update(b".");
            mac.update(body);
            mac.verify_slice(candidate).is_ok()
        })
    });
    if !matched {
        return Err(VerifyError::Mismatch);
    }
    let skew = now - signed_at;
    if skew.abs() > tolerance_seconds {
        return Err(VerifyError::StaleTimestamp {
            skew_seconds: skew,
            tolerance_seconds,
        });
    }
    Ok(())
}

/// Builds a header the way Stripe does; used by tests, fixtures and the demo script.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

#[derive(Deserialize)]
struct StripeEvent {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    created: i64,
    #[serde(default)]
    livemode: bool,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    object: Value,
}

/// `customer` is an id, or the whole object when the merchant expands it.
#[derive(Deserialize)]
#[serde(untagged)]
enum CustomerField {
    Id(String),
    Object { id: String, email: Option<String> },
}

#[derive(Deserialize)]
struct Subscription {
    id: String,
    customer: Option<CustomerField>,
    status: String,
    #[serde(default)]
    items: ItemList,
    trial_start: Option<i64>,
    trial_end: Option<i64>,
    canceled_at: Option<i64>,
    ended_at: Option<i64>,
    cancellation_details: Option<CancellationDetails>,
    currency: Option<String>,
}

#[derive(Deserialize, Default)]
struct ItemList {
    #[serde(default)]
    data: Vec<SubscriptionItem>,
}

#[derive(Deserialize)]
struct SubscriptionItem {
    price: Option<Price>,
    quantity: Option<i64>,
}

#[derive(Deserialize)]
struct Price {
    id: Option<String>,
    currency: String,
    unit_amount: Option<i64>,
    unit_amount_decimal: Option<String>,
    recurring: Option<PriceRecurring>,
}

#[derive(Deserialize)]
struct PriceRecurring {
    interval: String,
    #[serde(default = "one")]
    interval_count: u32,
    usage_type: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
struct CancellationDetails {
    reason: Option<String>,
}

#[derive(Deserialize)]
struct StripeCustomer {
    id: String,
    email: Option<String>,
}

fn malformed(err: impl std::fmt::Display) -> IngestError {
    IngestError::MalformedPayload(err.to_string())
}

/// Maps a verified Stripe event body to canonical events.
pub fn map_event(merchant_id: &str, body: &[u8]) -> Result<SourceOutput, IngestError> {
    let event: StripeEvent = serde_json::from_slice(body).map_err(malformed)?;
    let mut output = SourceOutput {
        source: NAME,
        source_event_id: event.id.clone(),
        source_event_type: event.event_type.clone(),
        occurred_at: event.created,
        ordering_key: "merchant".into(),
        events: Vec::new(),
        subscription: None,
        customer: None,
        ignored_reason: None,
    };
    match event.event_type.as_str() {
        "customer.subscription.created" | "customer.subscription.deleted" => {
            let sub: Subscription =
                serde_json::from_value(event.data.object.clone()).map_err(malformed)?;
            let name = match (event.event_type.as_str(), sub.status.as_str()) {
                ("customer.subscription.deleted", _) => EventName::SubscriptionCancelled,
                (_, "trialing") => EventName::TrialStarted,
                (_, "active") => EventName::SubscriptionStarted,
                _ => EventName::SubscriptionCreated,
            };
            output.ordering_key = format!("subscription:{}", sub.id);
            output.subscription = Some(SubscriptionObservation {
                subscription_id: sub.id.clone(),
                status: sub.status.clone(),
                observed_at: event.created,
                source_event_id: event.id.clone(),
            });
            output
                .events
                .push(subscription_event(merchant_id, &event, &sub, name));
        }
        "customer.created" | "customer.updated" => {
            let customer: StripeCustomer =
                serde_json::from_value(event.data.object.clone()).map_err(malformed)?;
            output.ordering_key = format!("customer:{}", customer.id);
            output.customer = Some(CustomerRecord {
                customer_id: customer.id,
                email: customer.email.filter(|e| !e.trim().is_empty()),
                observed_at: event.created,
            });
        }
        other => {
            output.ignored_reason = Some(format!("stripe event type {other} is not mapped"));
        }
    }
    Ok(output)
}

fn subscription_event(
    merchant_id: &str,
    event: &StripeEvent,
    sub: &Subscription,
    name: EventName,
) -> CanonicalEvent {
    let (customer_id, email) = match &sub.customer {
        Some(CustomerField::Id(id)) => (Some(id.clone()), None),
        Some(CustomerField::Object { id, email }) => (Some(id.clone()), email.clone()),
        None => (None, None),
    };
    let mut values = recurring_values(sub);
    if name == EventName::SubscriptionCancelled {
        values.mrr_delta = values.mrr.map(Amount::negated);
    }
    let first_recurring = sub
        .items
        .data
        .iter()
        .find_map(|item| item.price.as_ref().and_then(|p| p.recurring.as_ref()));
    CanonicalEvent {
        event_id: event_id(merchant_id, NAME, &event.id, name),
        merchant_id: merchant_id.to_string(),
        name,
        source: NAME.to_string(),
        source_event_id: event.id.clone(),
        source_event_type: event.event_type.clone(),
        occurred_at: event.created,
        customer: Customer {
            customer_id,
            email: email.filter(|e| !e.trim().is_empty()),
        },
        subscription: SubscriptionDetails {
            subscription_id: Some(sub.id.clone()),
            status: Some(sub.status.clone()),
            plan_id: sub
                .items
                .data
                .iter()
                .find_map(|i| i.price.as_ref()?.id.clone()),
            billing_interval: first_recurring.and_then(|r| Interval::parse(&r.interval)),
            billing_interval_count: first_recurring.map(|r| r.interval_count),
            trial_start_at: sub.trial_start,
            trial_end_at: sub.trial_end,
            effective_end_at: if name == EventName::SubscriptionCancelled {
                sub.ended_at.or(sub.canceled_at)
            } else {
                None
            },
            cancel_reason: sub
                .cancellation_details
                .as_ref()
                .and_then(|d| d.reason.clone()),
        },
        values,
        livemode: event.livemode,
    }
}

/// MRR/ARR summed over licensed recurring items (`unit_amount` × quantity). Metered and
/// tiered items have no knowable price at this point and are left out; if nothing is
/// knowable the values stay empty rather than claiming zero revenue.
fn recurring_values(sub: &Subscription) -> Values {
    let currency = sub
        .currency
        .clone()
        .or_else(|| {
            sub.items
                .data
                .iter()
                .find_map(|i| i.price.as_ref().map(|p| p.currency.clone()))
        })
        .map(|c| c.to_ascii_uppercase());
    let Some(currency) = currency else {
        return Values::default();
    };
    let mut mrr_minor: i64 = 0;
    let mut arr_minor: i64 = 0;
    let mut priced_items = 0;
    for item in &sub.items.data {
        let Some(price) = &item.price else { continue };
        let Some(recurring) = &price.recurring else {
            continue;
        };
        if recurring.usage_type.as_deref() == Some("metered")
            || !price.currency.eq_ignore_ascii_case(&currency)
        {
            continue;
        }
        let Some(unit_minor) = price.unit_amount.or_else(|| {
            // `unit_amount_decimal` may carry sub-minor precision ("1.5" cents); whole
            // minor units are what gets billed per unit.
            price
                .unit_amount_decimal
                .as_deref()
                .and_then(|d| d.split('.').next()?.parse().ok())
        }) else {
            continue;
        };
        let Some(interval) = Interval::parse(&recurring.interval) else {
            continue;
        };
        let quantity = item.quantity.unwrap_or(1);
        let Some(per_period) = unit_minor.checked_mul(quantity) else {
            continue;
        };
        let Some(r) = recurring_from_period(per_period, interval, recurring.interval_count) else {
            continue;
        };
        mrr_minor = mrr_minor.saturating_add(r.mrr_minor);
        arr_minor = arr_minor.saturating_add(r.arr_minor);
        priced_items += 1;
    }
    if priced_items == 0 {
        return Values {
            currency: Some(currency),
            ..Values::default()
        };
    }
    Values {
        mrr: Some(Amount::from_minor(mrr_minor, &currency)),
        arr: Some(Amount::from_minor(arr_minor, &currency)),
        currency: Some(currency),
        ..Values::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_5ecret";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"customer.subscription.created"}"#;
    const NOW: i64 = 1_767_225_600;

    fn check(header: Option<&str>, secrets: &[&str]) -> Result<(), VerifyError> {
        verify(header, BODY, secrets, NOW, DEFAULT_TOLERANCE_SECONDS)
    }

    #[test]
    fn valid_signature_passes() {
        let header = sign(SECRET, NOW, BODY);
        assert_eq!(check(Some(&header), &[SECRET]), Ok(()));
    }

    #[test]
    fn known_vector_matches_independent_hmac() {
        // printf '%s' '1767225600.{"id":"evt_1","type":"customer.subscription.created"}' |
        //   openssl dgst -sha256 -hmac whsec_test_5ecret
        assert_eq!(
            sign(SECRET, NOW, BODY),
            format!("t={NOW},v1=32cdf89e4c52fb419240dc39e1756a8d7736888ecd87cf511ab4b30ecd6bd6cb")
        );
    }

    #[test]
    fn tampered_body_fails() {
        let header = sign(SECRET, NOW, BODY);
        let tampered = br#"{"id":"evt_1","type":"customer.subscription.deleted"}"#;
        assert_eq!(
            verify(
                Some(&header),
                tampered,
                &[SECRET],
                NOW,
                DEFAULT_TOLERANCE_SECONDS
            ),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn wrong_secret_fails() {
        let header = sign("whsec_other", NOW, BODY);
        assert_eq!(check(Some(&header), &[SECRET]), Err(VerifyError::Mismatch));
    }

    #[test]
    fn stale_and_future_timestamps_fail_with_their_own_error() {
        let stale = sign(SECRET, NOW - 301, BODY);
        assert_eq!(
            check(Some(&stale), &[SECRET]),
            Err(VerifyError::StaleTimestamp {
                skew_seconds: 301,
                tolerance_seconds: 300
            })
        );
        let future = sign(SECRET, NOW + 301, BODY);
        assert!(matches!(
            check(Some(&future), &[SECRET]),
            Err(VerifyError::StaleTimestamp { .. })
        ));
        let edge = sign(SECRET, NOW - 300, BODY);
        assert_eq!(check(Some(&edge), &[SECRET]), Ok(()));
    }

    #[test]
    fn any_of_several_v1_values_may_match() {
        let good = sign(SECRET, NOW, BODY);
        let good_v1 = good.split("v1=").nth(1).unwrap();
        let header = format!("t={NOW},v1={},v1={good_v1},v0=deadbeef", "ab".repeat(32));
        assert_eq!(check(Some(&header), &[SECRET]), Ok(()));
    }

    #[test]
    fn any_configured_secret_may_match_during_rotation() {
        let header = sign("whsec_new", NOW, BODY);
        assert_eq!(check(Some(&header), &[SECRET, "whsec_new"]), Ok(()));
    }

    #[test]
    fn missing_and_garbage_headers_are_reported() {
        assert_eq!(
            check(None, &[SECRET]),
            Err(VerifyError::MissingHeader {
                header: SIGNATURE_HEADER
            })
        );
        for garbage in [
            "",
            "garbage",
            "t=abc,v1=00",
            "v1=abcd",
            "t=1767225600",
            "t=1767225600,v0=ab",
        ] {
            assert!(
                matches!(
                    check(Some(garbage), &[SECRET]),
                    Err(VerifyError::MalformedHeader { .. })
                ),
                "{garbage:?}"
            );
        }
        let non_hex = format!("t={NOW},v1=zz");
        assert_eq!(
            check(Some(&non_hex), &[SECRET]),
            Err(VerifyError::MalformedHeader {
                header: SIGNATURE_HEADER,
                detail: "no v1= signature"
            })
        );
    }

    #[test]
    fn empty_secret_list_is_a_configuration_error() {
        let header = sign(SECRET, NOW, BODY);
        assert_eq!(
            check(Some(&header), &[]),
            Err(VerifyError::NoSecretConfigured)
        );
        assert_eq!(
            check(Some(&header), &[""]),
            Err(VerifyError::NoSecretConfigured)
        );
    }

    #[test]
    fn malformed_json_is_a_payload_error() {
        assert!(matches!(
            map_event("m", b"{not json"),
            Err(IngestError::MalformedPayload(_))
        ));
        let wrong_shape = br#"{"id":"evt_1","type":"customer.subscription.created","created":1,"data":{"object":{"id":5}}}"#;
        assert!(matches!(
            map_event("m", wrong_shape),
            Err(IngestError::MalformedPayload(_))
        ));
    }
}
