//! Rules of the merchant's ledger: source-event deduplication and monotonic
//! subscription state per ordering key. The `records` module stores the rows in the
//! merchant's Durable Object; the decisions live here so they are tested natively.

use serde::{Deserialize, Serialize};

/// The latest known state of one subscription, as observed in one source event.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubscriptionObservation {
    pub subscription_id: String,
    pub status: String,
    /// Source event creation time (unix s); state only moves forward in this order.
    pub observed_at: i64,
    pub source_event_id: String,
    /// Kept so later events (invoices, transactions) can be read in context: a paid
    /// period right after the trial is the conversion, a renewal inherits the MRR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial_end_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mrr: Option<crate::money::Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arr: Option<crate::money::Amount>,
    /// The last recurring payment, net of tax (one period): what a cancellation takes
    /// away where the source states no price (Lemon Squeezy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_payment: Option<crate::money::Amount>,
}

/// Dedup records outlive every source's retry window (Stripe: 3 days, Paddle: 3 days).
pub const DEDUP_RETENTION_MS: i64 = 30 * 24 * 3600 * 1000;
/// How long a claim blocks a concurrent redelivery before it may be taken over.
pub const CLAIM_LEASE_MS: i64 = 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimOutcome {
    /// First sighting (or an abandoned claim): the caller processes it.
    New,
    /// Already recorded and enqueued: acknowledge without doing anything.
    Duplicate,
    /// Another request is processing it right now.
    InFlight,
}

/// A stored dedup row: committed, or claimed until `lease_until_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenRecord {
    pub committed: bool,
    pub lease_until_ms: i64,
}

pub fn claim(existing: Option<SeenRecord>, now_ms: i64) -> ClaimOutcome {
    match existing {
        None => ClaimOutcome::New,
        Some(record) if record.committed => ClaimOutcome::Duplicate,
        Some(record) if record.lease_until_ms > now_ms => ClaimOutcome::InFlight,
        Some(_) => ClaimOutcome::New,
    }
}

/// Stored state of one subscription: its newest observation.
pub type SubscriptionState = SubscriptionObservation;

/// An observation replaces the state only if it is newer; ties (same second) are
/// broken by event id so replays of any order converge on the same state.
pub fn should_apply(
    current: Option<&SubscriptionState>,
    incoming: &SubscriptionObservation,
) -> bool {
    match current {
        None => true,
        Some(state) => {
            (incoming.observed_at, incoming.source_event_id.as_str())
                > (state.observed_at, state.source_event_id.as_str())
        }
    }
}

/// The state after `incoming`, if it is newer: the incoming observation, with what it
/// does not state (a payment event knows no MRR; a subscription event no last payment)
/// carried over from the current state.
pub fn next_state(
    current: Option<&SubscriptionState>,
    incoming: &SubscriptionObservation,
) -> Option<SubscriptionState> {
    if !should_apply(current, incoming) {
        return None;
    }
    let mut next = incoming.clone();
    if let Some(current) = current {
        let same_currency = next.currency.is_none() || next.currency == current.currency;
        if next.trial_end_at.is_none() {
            next.trial_end_at = current.trial_end_at;
        }
        if same_currency {
            if next.currency.is_none() {
                next.currency.clone_from(&current.currency);
            }
            if next.mrr.is_none() && next.arr.is_none() {
                next.mrr = current.mrr;
                next.arr = current.arr;
            }
            if next.last_payment.is_none() {
                next.last_payment = current.last_payment;
            }
        }
    }
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_rules() {
        assert_eq!(claim(None, 10), ClaimOutcome::New);
        assert_eq!(
            claim(
                Some(SeenRecord {
                    committed: true,
                    lease_until_ms: 0
                }),
                10
            ),
            ClaimOutcome::Duplicate
        );
        assert_eq!(
            claim(
                Some(SeenRecord {
                    committed: false,
                    lease_until_ms: 20
                }),
                10
            ),
            ClaimOutcome::InFlight
        );
        assert_eq!(
            claim(
                Some(SeenRecord {
                    committed: false,
                    lease_until_ms: 5
                }),
                10
            ),
            ClaimOutcome::New
        );
    }

    fn obs(status: &str, at: i64, id: &str) -> SubscriptionObservation {
        SubscriptionObservation {
            subscription_id: "sub_1".into(),
            status: status.into(),
            observed_at: at,
            source_event_id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_newer_observation_keeps_what_it_does_not_state() {
        let usd = |minor| crate::money::Amount::from_minor(minor, "USD");
        let subscribed = SubscriptionObservation {
            currency: Some("USD".into()),
            mrr: Some(usd(4900)),
            arr: Some(usd(58800)),
            ..obs("active", 100, "evt_a")
        };
        let paid = SubscriptionObservation {
            currency: Some("USD".into()),
            last_payment: Some(usd(4900)),
            ..obs("active", 200, "evt_b")
        };
        let next = next_state(Some(&subscribed), &paid).unwrap();
        assert_eq!(
            (next.mrr, next.last_payment),
            (Some(usd(4900)), Some(usd(4900)))
        );
        let cancelled = obs("cancelled", 300, "evt_c");
        let last = next_state(Some(&next), &cancelled).unwrap();
        assert_eq!(last.status, "cancelled");
        assert_eq!(last.mrr, Some(usd(4900)));
        assert_eq!(last.last_payment, Some(usd(4900)));
        assert_eq!(next_state(Some(&last), &paid), None, "older never applies");
    }

    #[test]
    fn older_events_never_overwrite_newer_state() {
        let cancelled = obs("canceled", 200, "evt_b");
        assert!(!should_apply(
            Some(&cancelled),
            &obs("trialing", 100, "evt_a")
        ));
        assert!(should_apply(Some(&cancelled), &obs("active", 300, "evt_c")));
        assert!(should_apply(None, &obs("trialing", 100, "evt_a")));
        // Same event again is not "newer".
        assert!(!should_apply(
            Some(&cancelled),
            &obs("canceled", 200, "evt_b")
        ));
    }
}
