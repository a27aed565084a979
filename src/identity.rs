//! Identity beyond email and customer id: the click ids, cookies and device data captured
//! when a person signs up (by the merchant's app, from its first-party cookies), kept per
//! merchant so that a billing event weeks later still carries them, and the match-quality
//! score of each delivery.

use crate::event::CanonicalEvent;
use serde::Serialize;

pub use crate::touchpoints::{
    ga_client_id_from_cookie, is_visitor_id, merge_freshest_first, Identifier, Touchpoints,
};

/// Identity-store keys a person can be found by: customer id (any source) and email.
pub fn keys(event: &CanonicalEvent) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(id) = event.customer.id() {
        keys.push(customer_key(id));
    }
    if let Some(email) = event
        .customer
        .email
        .as_deref()
        .and_then(crate::hashing::normalize_email)
    {
        keys.push(email_key(&email));
    }
    keys
}

pub fn customer_key(customer_id: &str) -> String {
    format!("customer:{}", customer_id.trim())
}

pub fn email_key(email: &str) -> String {
    format!("email:{}", email.trim().to_lowercase())
}

/// Whether the event carries this identifier (non-empty).
pub fn has(event: &CanonicalEvent, identifier: Identifier) -> bool {
    match identifier {
        Identifier::Email => event
            .customer
            .email
            .as_deref()
            .and_then(crate::hashing::normalize_email)
            .is_some(),
        Identifier::CustomerId => event.customer.id().is_some(),
        other => event.touchpoints.get(other).is_some(),
    }
}

/// Which identifiers a delivery could match on, and a 0–100 score weighted by how much
/// each helps that platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MatchQuality {
    pub score: u8,
    pub present: Vec<Identifier>,
}

impl MatchQuality {
    pub fn keys(&self) -> String {
        self.present
            .iter()
            .map(|id| id.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// An identifier a destination can match a person on, and its weight in the match score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchKey {
    pub identifier: Identifier,
    pub weight: u8,
}

pub fn match_quality(event: &CanonicalEvent, keys: &[MatchKey]) -> MatchQuality {
    let total: u32 = keys.iter().map(|k| u32::from(k.weight)).sum();
    let present: Vec<&MatchKey> = keys.iter().filter(|k| has(event, k.identifier)).collect();
    let got: u32 = present.iter().map(|k| u32::from(k.weight)).sum();
    let score = (got * 100 + total / 2)
        .checked_div(total)
        .map_or(0, |s| s.min(100) as u8);
    MatchQuality {
        score,
        present: present.iter().map(|k| k.identifier).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ga_cookie_becomes_client_id() {
        assert_eq!(
            ga_client_id_from_cookie("GA1.1.1234567890.1700000000").as_deref(),
            Some("1234567890.1700000000")
        );
        assert_eq!(
            ga_client_id_from_cookie("1234567890.1700000000").as_deref(),
            Some("1234567890.1700000000")
        );
        assert_eq!(ga_client_id_from_cookie("GA1.1.abc.1700"), None);
        assert_eq!(ga_client_id_from_cookie(""), None);
    }

    #[test]
    fn set_accepts_cookie_names_and_refuses_oversized_values() {
        let mut t = Touchpoints::default();
        assert_eq!(t.set("_fbc", " fb.1.1554763741205.AbCdEf "), Ok(true));
        assert_eq!(t.set("_ga", "GA1.2.111.222"), Ok(true));
        assert_eq!(t.set("gclid", "Cj0KCQ"), Ok(true));
        assert_eq!(t.set("plan", "pro"), Ok(false));
        assert!(t.set("ttclid", &"x".repeat(600)).is_err());
        assert_eq!(t.fbc.as_deref(), Some("fb.1.1554763741205.AbCdEf"));
        assert_eq!(t.ga_client_id.as_deref(), Some("111.222"));
        assert_eq!(t.get(Identifier::Gclid), Some("Cj0KCQ"));
        // An empty value sets nothing.
        assert_eq!(t.set("fbp", "  "), Ok(true));
        assert_eq!(t.fbp, None);
    }

    #[test]
    fn event_values_win_over_stored_ones() {
        let mut event = Touchpoints {
            gclid: Some("new".into()),
            ..Default::default()
        };
        let stored = Touchpoints {
            gclid: Some("old".into()),
            fbc: Some("fb.1.1.x".into()),
            captured_at: Some(100),
            ..Default::default()
        };
        event.fill_from(&stored);
        assert_eq!(event.gclid.as_deref(), Some("new"));
        assert_eq!(event.fbc.as_deref(), Some("fb.1.1.x"));
        assert_eq!(event.captured_at, Some(100));

        let newer = Touchpoints {
            ttclid: Some("tt".into()),
            captured_at: Some(200),
            ..Default::default()
        };
        let merged = merge_freshest_first([&newer, &stored]).unwrap();
        assert_eq!(merged.gclid.as_deref(), Some("old"));
        assert_eq!(merged.ttclid.as_deref(), Some("tt"));
        assert_eq!(merged.captured_at, Some(200));
    }

    #[test]
    fn freshest_record_wins_per_field() {
        let fresh = Touchpoints {
            gclid: Some("new".into()),
            captured_at: Some(200),
            ..Default::default()
        };
        let old = Touchpoints {
            gclid: Some("old".into()),
            fbp: Some("fb.1.1.1".into()),
            captured_at: Some(100),
            ..Default::default()
        };
        let merged = merge_freshest_first([&fresh, &old]).unwrap();
        assert_eq!(merged.gclid.as_deref(), Some("new"));
        assert_eq!(merged.fbp.as_deref(), Some("fb.1.1.1"));
        assert_eq!(merged.captured_at, Some(200));
        assert_eq!(merge_freshest_first([]), None);
    }

    #[test]
    fn match_score_weights_present_identifiers() {
        let keys = [
            MatchKey {
                identifier: Identifier::Email,
                weight: 5,
            },
            MatchKey {
                identifier: Identifier::Fbc,
                weight: 4,
            },
            MatchKey {
                identifier: Identifier::CustomerId,
                weight: 1,
            },
        ];
        let mut event = crate::event::tests_support::event();
        event.customer.email = Some("ann@example.com".into());
        event.customer.customer_id = None;
        let q = match_quality(&event, &keys);
        assert_eq!(q.score, 50);
        assert_eq!(q.keys(), "email");
        event.touchpoints.fbc = Some("fb.1.1.x".into());
        event.customer.customer_id = Some("cus_1".into());
        assert_eq!(match_quality(&event, &keys).score, 100);
        event.customer.email = Some("not an email".into());
        assert_eq!(match_quality(&event, &keys).score, 50);
        assert_eq!(match_quality(&event, &[]).score, 0);
    }
}
