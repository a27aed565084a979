//! Rules of the per-(merchant, ordering key) ledger: source-event deduplication and
//! monotonic subscription state. The Durable Object in the edge layer stores the rows;
//! the decisions live here so they are tested natively.

use crate::sources::SubscriptionObservation;
use serde::{Deserialize, Serialize};

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
