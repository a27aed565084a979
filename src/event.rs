//! The canonical lifecycle event every source maps to and every destination reads.

use crate::hashing::sha256_hex;
use crate::money::{Amount, Interval};
use crate::touchpoints::Touchpoints;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Canonical taxonomy v1 (see shared product decisions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventName {
    TrialStarted,
    TrialConverted,
    SubscriptionStarted,
    SubscriptionRenewed,
    SubscriptionUpgraded,
    SubscriptionDowngraded,
    SubscriptionPaused,
    SubscriptionReactivated,
    SubscriptionCancelled,
    PaymentFailed,
    Refund,
    Signup,
    ActivationMilestone,
    PipelineStageChanged,
    /// Created, neither trialing nor paid yet. Recorded, never forwarded.
    SubscriptionCreated,
    /// A change without revenue meaning. Recorded, never forwarded.
    SubscriptionUpdated,
}

impl EventName {
    pub const ALL: [EventName; 16] = [
        EventName::TrialStarted,
        EventName::TrialConverted,
        EventName::SubscriptionStarted,
        EventName::SubscriptionRenewed,
        EventName::SubscriptionUpgraded,
        EventName::SubscriptionDowngraded,
        EventName::SubscriptionPaused,
        EventName::SubscriptionReactivated,
        EventName::SubscriptionCancelled,
        EventName::PaymentFailed,
        EventName::Refund,
        EventName::Signup,
        EventName::ActivationMilestone,
        EventName::PipelineStageChanged,
        EventName::SubscriptionCreated,
        EventName::SubscriptionUpdated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventName::TrialStarted => "trial_started",
            EventName::TrialConverted => "trial_converted",
            EventName::SubscriptionStarted => "subscription_started",
            EventName::SubscriptionRenewed => "subscription_renewed",
            EventName::SubscriptionUpgraded => "subscription_upgraded",
            EventName::SubscriptionDowngraded => "subscription_downgraded",
            EventName::SubscriptionPaused => "subscription_paused",
            EventName::SubscriptionReactivated => "subscription_reactivated",
            EventName::SubscriptionCancelled => "subscription_cancelled",
            EventName::PaymentFailed => "payment_failed",
            EventName::Refund => "refund",
            EventName::Signup => "signup",
            EventName::ActivationMilestone => "activation_milestone",
            EventName::PipelineStageChanged => "pipeline_stage_changed",
            EventName::SubscriptionCreated => "subscription_created",
            EventName::SubscriptionUpdated => "subscription_updated",
        }
    }

    /// The PascalCase custom-event name ad platforms get where they have no standard
    /// event for it (Meta, TikTok).
    pub fn custom_event_name(self) -> &'static str {
        match self {
            EventName::TrialStarted => "TrialStarted",
            EventName::TrialConverted => "TrialConverted",
            EventName::SubscriptionStarted => "SubscriptionStarted",
            EventName::SubscriptionRenewed => "SubscriptionRenewed",
            EventName::SubscriptionUpgraded => "SubscriptionUpgraded",
            EventName::SubscriptionDowngraded => "SubscriptionDowngraded",
            EventName::SubscriptionPaused => "SubscriptionPaused",
            EventName::SubscriptionReactivated => "SubscriptionReactivated",
            EventName::SubscriptionCancelled => "SubscriptionCancelled",
            EventName::PaymentFailed => "PaymentFailed",
            EventName::Refund => "Refund",
            EventName::Signup => "Signup",
            EventName::ActivationMilestone => "ActivationMilestone",
            EventName::PipelineStageChanged => "PipelineStageChanged",
            EventName::SubscriptionCreated => "SubscriptionCreated",
            EventName::SubscriptionUpdated => "SubscriptionUpdated",
        }
    }

    /// Canonical names plus the landing page's accepted aliases.
    pub fn parse(text: &str) -> Option<Self> {
        let canonical = match text {
            "paid_subscription" => "subscription_started",
            "subscription_canceled" => "subscription_cancelled",
            "expansion" => "subscription_upgraded",
            other => other,
        };
        EventName::ALL
            .into_iter()
            .find(|name| name.as_str() == canonical)
    }

    /// Whether destinations ever receive this event. Pipeline stages only enrich,
    /// and the non-optimising records exist for state and reporting.
    pub fn is_forwardable(self) -> bool {
        !matches!(
            self,
            EventName::PipelineStageChanged
                | EventName::SubscriptionCreated
                | EventName::SubscriptionUpdated
        )
    }

    /// Milestones a subscription reaches at most once: their occurrence key is the
    /// subscription id, so every webhook reporting one yields the same event id.
    pub fn is_once_per_subscription(self) -> bool {
        matches!(
            self,
            EventName::TrialStarted
                | EventName::TrialConverted
                | EventName::SubscriptionStarted
                | EventName::SubscriptionCancelled
        )
    }

    /// Cancellations and refunds correct an earlier conversion: their value is sent negative.
    pub fn is_correction(self) -> bool {
        matches!(self, EventName::SubscriptionCancelled | EventName::Refund)
    }
}

/// Who the event is about, as far as the source payload tells.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// The billing system's customer id (e.g. Stripe `cus_…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// ISO 3166-1 alpha-2, as the billing address gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

impl Customer {
    /// A full name as one field (`user_name`, `customer_name`): first word, then the rest.
    pub fn set_full_name(&mut self, full_name: Option<&str>) {
        let Some(name) = full_name.map(str::trim).filter(|n| !n.is_empty()) else {
            return;
        };
        let (first, last) = name.split_once(char::is_whitespace).unwrap_or((name, ""));
        self.first_name = Some(first.trim().to_string());
        let last = last.trim();
        if !last.is_empty() {
            self.last_name = Some(last.to_string());
        }
    }

    /// A two-letter country code, upper-cased; anything else is not a country code.
    pub fn set_country(&mut self, country: Option<&str>) {
        if let Some(code) = country
            .map(str::trim)
            .filter(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()))
        {
            self.country = Some(code.to_ascii_uppercase());
        }
    }

    /// The customer id, trimmed; `None` when missing or blank.
    pub fn id(&self) -> Option<&str> {
        self.customer_id
            .as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty())
    }
}

/// Money attached to an event, always with the billed currency (upper-case ISO-4217).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Values {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mrr: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arr: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract_value: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gross_value: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_value: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_amount: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mrr_delta: Option<Amount>,
}

/// Lifecycle details a destination or later enrichment may need.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_interval: Option<Interval>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_interval_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial_start_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial_end_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_end_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
}

/// One canonical lifecycle event. Serialised as JSON into queue messages and D1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanonicalEvent {
    /// Deterministic: the same occurrence always yields the same id (see [`event_id`]).
    pub event_id: String,
    pub merchant_id: String,
    pub name: EventName,
    pub source: String,
    /// What identifies this occurrence at the source. Once-per-subscription milestones
    /// (trial start, conversion, paid start, cancellation) use the subscription id, so the
    /// same milestone reported by two webhook families (e.g. `customer.subscription.updated`
    /// and `invoice.paid`) gets one event id and is counted once; renewals use the
    /// subscription and period; everything else uses the source event id.
    #[serde(default)]
    pub occurrence_key: String,
    pub source_event_id: String,
    pub source_event_type: String,
    /// When it happened at the source, unix seconds.
    pub occurred_at: i64,
    #[serde(default)]
    pub customer: Customer,
    #[serde(default)]
    pub subscription: SubscriptionDetails,
    #[serde(default)]
    pub values: Values,
    #[serde(default)]
    pub livemode: bool,
    /// Source facts worth keeping that have no typed field (invoice id, attempt count,
    /// period start, milestone name, prior status …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// Click ids and device data: carried by the event itself or, at send time, filled
    /// from the merchant's identity store. Never forwarded as free-form properties.
    #[serde(default, skip_serializing_if = "Touchpoints::is_unset")]
    pub touchpoints: Touchpoints,
}

#[cfg(test)]
pub mod tests_support {
    use super::*;
    use crate::money::Amount;

    /// The one way unit tests make events: a Stripe subscription event of Jane Doe's
    /// (`cus_ABC`, `sub_1`, 49.00 USD a month), adjusted by what each test cares about.
    pub struct EventBuilder(CanonicalEvent);

    pub fn build(name: EventName) -> EventBuilder {
        EventBuilder(CanonicalEvent {
            event_id: "tl_0123456789abcdef0123456789abcdef".into(),
            merchant_id: "m_1".into(),
            name,
            source: "stripe".into(),
            occurrence_key: "sub_1".into(),
            source_event_id: "evt_1".into(),
            source_event_type: "customer.subscription.created".into(),
            occurred_at: 1_767_225_600,
            customer: Customer {
                customer_id: Some("cus_ABC".into()),
                email: Some("Jane.Doe@Example.com".into()),
                ..Customer::default()
            },
            subscription: SubscriptionDetails {
                subscription_id: Some("sub_1".into()),
                ..SubscriptionDetails::default()
            },
            values: Values {
                currency: Some("usd".into()),
                mrr: Some(Amount::from_minor(4900, "usd")),
                ..Values::default()
            },
            livemode: true,
            properties: BTreeMap::new(),
            touchpoints: Touchpoints::default(),
        })
    }

    impl EventBuilder {
        pub fn id(mut self, event_id: &str) -> Self {
            self.0.event_id = event_id.into();
            self
        }
        pub fn source_event_type(mut self, event_type: &str) -> Self {
            self.0.source_event_type = event_type.into();
            self
        }
        pub fn occurred_at(mut self, unix_seconds: i64) -> Self {
            self.0.occurred_at = unix_seconds;
            self
        }
        pub fn email(mut self, email: &str) -> Self {
            self.0.customer.email = Some(email.into());
            self
        }
        pub fn plan(mut self, plan_id: &str) -> Self {
            self.0.subscription.plan_id = Some(plan_id.into());
            self
        }
        pub fn trial_end_at(mut self, unix_seconds: i64) -> Self {
            self.0.subscription.trial_end_at = Some(unix_seconds);
            self
        }
        pub fn currency(mut self, currency: &str) -> Self {
            self.0.values.currency = Some(currency.into());
            self
        }
        /// Annual revenue, in minor units of `currency`.
        pub fn arr(mut self, minor: i64, currency: &str) -> Self {
            self.0.values.arr = Some(Amount::from_minor(minor, currency));
            self
        }
        pub fn gross(mut self, minor: i64, currency: &str) -> Self {
            self.0.values.gross_value = Some(Amount::from_minor(minor, currency));
            self
        }
        pub fn property(mut self, key: &str, value: &str) -> Self {
            self.0.properties.insert(key.into(), value.into());
            self
        }
        pub fn touchpoints(mut self, touchpoints: Touchpoints) -> Self {
            self.0.touchpoints = touchpoints;
            self
        }
        pub fn livemode(mut self, livemode: bool) -> Self {
            self.0.livemode = livemode;
            self
        }
        pub fn done(self) -> CanonicalEvent {
            self.0
        }
    }

    /// A plain renewal with no customer, for unit tests to adjust.
    pub fn event() -> CanonicalEvent {
        let mut event = build(EventName::SubscriptionRenewed)
            .id("tl_test")
            .source_event_type("invoice.paid")
            .occurred_at(1_795_300_000)
            .done();
        event.merchant_id = "m_test".into();
        event.occurrence_key = "sub_1:2026-11".into();
        event.customer = Customer::default();
        event.subscription = SubscriptionDetails::default();
        event.values = Values::default();
        event
    }
}

impl CanonicalEvent {
    /// Renames the event after enrichment learnt more (e.g. a renewal that is really the
    /// first paid period after a trial), keeping the id deterministic.
    pub fn reclassify(&mut self, name: EventName, occurrence_key: &str) {
        self.name = name;
        self.occurrence_key = occurrence_key.to_string();
        self.event_id = event_id(&self.merchant_id, &self.source, occurrence_key, name);
    }

    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties.get(key).map(String::as_str)
    }

    /// Folds in what a sibling notification of the same occurrence (same event id) knows
    /// and this one does not: what is already here stays, gaps are filled. The store
    /// does the same with SQLite's `json_patch(sibling, stored)`; a test keeps the two
    /// in step.
    pub fn merge_sibling(&mut self, sibling: &CanonicalEvent) {
        fn fill<T: Clone>(slot: &mut Option<T>, other: &Option<T>) {
            if slot.is_none() {
                slot.clone_from(other);
            }
        }
        let (v, o) = (&mut self.values, &sibling.values);
        fill(&mut v.currency, &o.currency);
        fill(&mut v.mrr, &o.mrr);
        fill(&mut v.arr, &o.arr);
        fill(&mut v.contract_value, &o.contract_value);
        fill(&mut v.gross_value, &o.gross_value);
        fill(&mut v.net_value, &o.net_value);
        fill(&mut v.tax_amount, &o.tax_amount);
        fill(&mut v.mrr_delta, &o.mrr_delta);
        let (c, o) = (&mut self.customer, &sibling.customer);
        fill(&mut c.customer_id, &o.customer_id);
        fill(&mut c.email, &o.email);
        fill(&mut c.first_name, &o.first_name);
        fill(&mut c.last_name, &o.last_name);
        fill(&mut c.country, &o.country);
        let (s, o) = (&mut self.subscription, &sibling.subscription);
        fill(&mut s.subscription_id, &o.subscription_id);
        fill(&mut s.status, &o.status);
        fill(&mut s.plan_id, &o.plan_id);
        fill(&mut s.billing_interval, &o.billing_interval);
        fill(&mut s.billing_interval_count, &o.billing_interval_count);
        fill(&mut s.trial_start_at, &o.trial_start_at);
        fill(&mut s.trial_end_at, &o.trial_end_at);
        fill(&mut s.effective_end_at, &o.effective_end_at);
        fill(&mut s.cancel_reason, &o.cancel_reason);
        for (key, value) in &sibling.properties {
            self.properties
                .entry(key.clone())
                .or_insert_with(|| value.clone());
        }
        self.touchpoints.fill_from(&sibling.touchpoints);
    }
}

/// `tl_` + 32 hex chars of SHA-256 over (merchant, source, occurrence key, canonical name).
/// Stable across retries and redeliveries, unique per logical conversion, and short
/// enough for every platform's dedup key field.
pub fn event_id(merchant_id: &str, source: &str, occurrence_key: &str, name: EventName) -> String {
    let digest = sha256_hex(&format!(
        "{merchant_id}\u{1f}{source}\u{1f}{occurrence_key}\u{1f}{}",
        name.as_str()
    ));
    format!("tl_{}", &digest[..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_aliases_resolve() {
        for name in EventName::ALL {
            assert_eq!(EventName::parse(name.as_str()), Some(name));
            let json = serde_json::to_string(&name).unwrap();
            assert_eq!(json, format!("\"{}\"", name.as_str()));
        }
        assert_eq!(
            EventName::parse("paid_subscription"),
            Some(EventName::SubscriptionStarted)
        );
        assert_eq!(
            EventName::parse("subscription_canceled"),
            Some(EventName::SubscriptionCancelled)
        );
        assert_eq!(
            EventName::parse("expansion"),
            Some(EventName::SubscriptionUpgraded)
        );
        assert_eq!(EventName::parse("purchase"), None);
    }

    #[test]
    fn event_id_is_deterministic_and_scoped() {
        let a = event_id("m1", "stripe", "evt_1", EventName::TrialStarted);
        assert_eq!(
            a,
            event_id("m1", "stripe", "evt_1", EventName::TrialStarted)
        );
        // printf 'm1\x1fstripe\x1fevt_1\x1ftrial_started' | sha256sum | cut -c1-32
        assert_eq!(a, "tl_64cee6641c3c1c6231992b588dacacc9");
        assert_ne!(
            a,
            event_id("m2", "stripe", "evt_1", EventName::TrialStarted)
        );
        assert_ne!(
            a,
            event_id("m1", "stripe", "evt_2", EventName::TrialStarted)
        );
        assert_ne!(
            a,
            event_id("m1", "stripe", "evt_1", EventName::TrialConverted)
        );
        assert_ne!(
            a,
            event_id("m1", "paddle", "evt_1", EventName::TrialStarted)
        );
    }

    #[test]
    fn only_revenue_and_funnel_events_are_forwarded() {
        assert!(EventName::TrialStarted.is_forwardable());
        assert!(EventName::SubscriptionCancelled.is_forwardable());
        assert!(!EventName::PipelineStageChanged.is_forwardable());
        assert!(!EventName::SubscriptionCreated.is_forwardable());
        assert!(EventName::Refund.is_correction());
        assert!(!EventName::PaymentFailed.is_correction());
    }
}
