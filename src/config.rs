//! Per-merchant configuration: region, plan, source secrets, destinations and value policy.
//!
//! Stored in D1 (see `migrations/`); this module holds the typed form and its defaults.

use crate::event::{CanonicalEvent, EventName};
use crate::money::Amount;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    #[default]
    Us,
    Eu,
}

pub use crate::plans::Plan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MerchantStatus {
    #[default]
    Active,
    Disabled,
}

/// Which stored value becomes the destination's primary `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueField {
    Mrr,
    Arr,
    ContractValue,
    Net,
    Gross,
    /// The change in MRR (upgrades, downgrades).
    MrrDelta,
}

/// Per merchant, per event type (optionally per destination), stable once chosen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValuePolicy {
    /// Event name → field, for every destination.
    #[serde(default)]
    pub events: BTreeMap<String, ValueField>,
    /// Destination → event name → field; wins over `events`.
    #[serde(default)]
    pub destinations: BTreeMap<String, BTreeMap<String, ValueField>>,
}

/// Defaults the integrations declare (see `DestinationSpec::paid_start_value` and
/// `SourceSpec::default_value`), applied when the merchant's policy says nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ValueDefaults {
    /// For paid starts and trial conversions at this destination (LinkedIn: ARR).
    pub paid_start: Option<ValueField>,
    /// For every event of this source (Paddle: net).
    pub source: Option<ValueField>,
}

impl ValuePolicy {
    /// The field used for `event` at `destination`: the merchant's choice, else the
    /// integrations' defaults, else the product's (MRR; the MRR change for up- and
    /// downgrades; gross for refunds and failed payments).
    pub fn field_for(
        &self,
        event: &CanonicalEvent,
        destination: &str,
        defaults: ValueDefaults,
    ) -> ValueField {
        let name = event.name.as_str();
        if let Some(field) = self.destinations.get(destination).and_then(|m| m.get(name)) {
            return *field;
        }
        if let Some(field) = self.events.get(name) {
            return *field;
        }
        if let Some(field) = defaults.paid_start.filter(|_| {
            matches!(
                event.name,
                EventName::SubscriptionStarted | EventName::TrialConverted
            )
        }) {
            return field;
        }
        if matches!(
            event.name,
            EventName::SubscriptionUpgraded | EventName::SubscriptionDowngraded
        ) {
            return ValueField::MrrDelta;
        }
        if let Some(field) = defaults.source {
            return field;
        }
        // A refund or a failed payment is about an amount of money, not a plan's MRR.
        if matches!(event.name, EventName::Refund | EventName::PaymentFailed) {
            return ValueField::Gross;
        }
        ValueField::Mrr
    }

    /// The primary value to send, negative for corrections (cancellations, refunds).
    /// Falls back to MRR, contract value (CRM deals), net, then gross when the chosen
    /// field is absent.
    pub fn primary_value(
        &self,
        event: &CanonicalEvent,
        destination: &str,
        defaults: ValueDefaults,
    ) -> Option<Amount> {
        let values = &event.values;
        let chosen = match self.field_for(event, destination, defaults) {
            ValueField::Mrr => values.mrr,
            ValueField::Arr => values.arr,
            ValueField::ContractValue => values.contract_value,
            ValueField::Net => values.net_value,
            ValueField::Gross => values.gross_value,
            ValueField::MrrDelta => values.mrr_delta,
        };
        // Sources without prices on subscriptions (Lemon Squeezy) still know what was paid.
        let value = chosen
            .or(values.mrr)
            .or(values.contract_value)
            .or(values.net_value)
            .or(values.gross_value)?;
        Some(if event.name.is_correction() && value.minor > 0 {
            value.negated()
        } else {
            value
        })
    }
}

/// A merchant's settings for one integration (by name) are missing or do not parse.
/// Neutral here; sources and destinations turn it into their own errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("{0} is not configured for this merchant")]
    NotConfigured(&'static str),
    #[error("the {0} settings of this merchant are invalid; the operator must fix them")]
    Misconfigured(&'static str),
}

/// Which system's events are the merchant's conversions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversionSource {
    /// Billing owns starts, renewals, failures, pauses, cancellations and refunds; CRM
    /// stage changes only enrich.
    #[default]
    Billing,
    /// No billing source: mapped CRM stages (e.g. Closed Won) are the conversions.
    Crm,
}

/// Per-merchant lifecycle rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleSettings {
    /// A customer who starts paying again within this many days of a cancellation is
    /// reactivated, not newly acquired. 0 turns the rule off.
    #[serde(default = "default_recovery_window_days")]
    pub recovery_window_days: u32,
    #[serde(default)]
    pub conversions_from: ConversionSource,
}

fn default_recovery_window_days() -> u32 {
    90
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        LifecycleSettings {
            recovery_window_days: default_recovery_window_days(),
            conversions_from: ConversionSource::default(),
        }
    }
}

/// Everything the worker needs to know about one merchant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantConfig {
    pub merchant_id: String,
    #[serde(default)]
    pub region: Region,
    #[serde(default)]
    pub plan: Plan,
    #[serde(default)]
    pub status: MerchantStatus,
    #[serde(default)]
    pub value_policy: ValuePolicy,
    #[serde(default)]
    pub lifecycle: LifecycleSettings,
    /// Simulate before going live: deliveries are built and recorded, never sent.
    #[serde(default)]
    pub dry_run: bool,
    /// Source name → that source's settings (secrets, tolerances), parsed by the source.
    #[serde(default)]
    pub sources: BTreeMap<String, serde_json::Value>,
    /// Enabled destination name → its settings and credentials, parsed by the destination.
    #[serde(default)]
    pub destinations: BTreeMap<String, serde_json::Value>,
}

/// Whether `value` parses as the settings type `T` of a source or destination. The
/// message is serde's, which names fields but never echoes values.
pub fn check_config<T: DeserializeOwned>(value: &serde_json::Value) -> Result<(), String> {
    crate::input::from_value::<T>(value)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl MerchantConfig {
    /// The typed settings of `source`. A stored config that does not parse is the
    /// operator's to fix; the error never repeats it, since it holds secrets.
    pub fn source_config<T: DeserializeOwned>(
        &self,
        source: &'static str,
    ) -> Result<T, SettingsError> {
        let raw = self
            .sources
            .get(source)
            .ok_or(SettingsError::NotConfigured(source))?;
        T::deserialize(raw).map_err(|_| SettingsError::Misconfigured(source))
    }

    /// The typed settings of `destination`, on the same terms as [`Self::source_config`].
    pub fn destination_config<T: DeserializeOwned>(
        &self,
        destination: &'static str,
    ) -> Result<T, SettingsError> {
        let raw = self
            .destinations
            .get(destination)
            .ok_or(SettingsError::NotConfigured(destination))?;
        T::deserialize(raw).map_err(|_| SettingsError::Misconfigured(destination))
    }

    pub fn with_source(mut self, source: &str, config: serde_json::Value) -> Self {
        self.sources.insert(source.into(), config);
        self
    }

    pub fn with_destination(mut self, destination: &str, config: serde_json::Value) -> Self {
        self.destinations.insert(destination.into(), config);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Customer, SubscriptionDetails, Values};

    fn event(name: EventName, source: &str) -> CanonicalEvent {
        CanonicalEvent {
            event_id: "tl_x".into(),
            merchant_id: "m".into(),
            name,
            source: source.into(),
            occurrence_key: "evt".into(),
            source_event_id: "evt".into(),
            source_event_type: "t".into(),
            occurred_at: 0,
            customer: Customer::default(),
            subscription: SubscriptionDetails::default(),
            values: Values {
                currency: Some("USD".into()),
                mrr: Some(Amount::from_minor(4900, "usd")),
                arr: Some(Amount::from_minor(58800, "usd")),
                net_value: Some(Amount::from_minor(4000, "usd")),
                ..Values::default()
            },
            livemode: false,
            properties: Default::default(),
            touchpoints: Default::default(),
        }
    }

    const NONE: ValueDefaults = ValueDefaults {
        paid_start: None,
        source: None,
    };

    #[test]
    fn defaults_follow_product_decisions() {
        let policy = ValuePolicy::default();
        let started = event(EventName::SubscriptionStarted, "stripe");
        assert_eq!(
            policy
                .primary_value(&started, "meta", NONE)
                .unwrap()
                .to_string(),
            "49.00"
        );
        let arr_for_starts = ValueDefaults {
            paid_start: Some(ValueField::Arr),
            source: None,
        };
        assert_eq!(
            policy
                .primary_value(&started, "linkedin", arr_for_starts)
                .unwrap()
                .to_string(),
            "588.00"
        );
        let paddle = event(EventName::SubscriptionRenewed, "paddle");
        let net_source = ValueDefaults {
            paid_start: None,
            source: Some(ValueField::Net),
        };
        assert_eq!(
            policy
                .primary_value(&paddle, "meta", net_source)
                .unwrap()
                .to_string(),
            "40.00"
        );
        // The integrations' own defaults: LinkedIn ARR for starts, Paddle net.
        let merchant = MerchantConfig::default();
        let linkedin = crate::destinations::find("linkedin").unwrap();
        assert_eq!(
            linkedin
                .primary_value(&started, &merchant)
                .unwrap()
                .to_string(),
            "588.00"
        );
        let meta = crate::destinations::find("meta").unwrap();
        assert_eq!(
            meta.primary_value(&paddle, &merchant).unwrap().to_string(),
            "40.00"
        );
    }

    #[test]
    fn corrections_are_negative() {
        let policy = ValuePolicy::default();
        let cancelled = event(EventName::SubscriptionCancelled, "stripe");
        assert_eq!(
            policy
                .primary_value(&cancelled, "meta", NONE)
                .unwrap()
                .to_string(),
            "-49.00"
        );
    }

    #[test]
    fn overrides_win_and_missing_fields_fall_back_to_mrr() {
        let mut policy = ValuePolicy::default();
        policy
            .events
            .insert("subscription_started".into(), ValueField::Arr);
        policy
            .destinations
            .entry("meta".into())
            .or_default()
            .insert("subscription_started".into(), ValueField::ContractValue);
        let started = event(EventName::SubscriptionStarted, "stripe");
        assert_eq!(policy.field_for(&started, "tiktok", NONE), ValueField::Arr);
        assert_eq!(
            policy.field_for(&started, "meta", NONE),
            ValueField::ContractValue
        );
        // contract_value is absent on this event: MRR is used rather than no value.
        assert_eq!(
            policy
                .primary_value(&started, "meta", NONE)
                .unwrap()
                .to_string(),
            "49.00"
        );
    }

    #[test]
    fn growth_is_an_alias_of_scale() {
        let plan: Plan = serde_json::from_str("\"growth\"").unwrap();
        assert_eq!(plan, Plan::Scale);
        assert!(Plan::Pro > Plan::Scale);
    }
}
