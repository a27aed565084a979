//! Plan gates. Each gated feature names the lowest plan that includes it; the check
//! runs where the feature runs (ingest, delivery, admin changes) and its error names
//! the plan required.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The merchant's billing tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    #[default]
    Starter,
    /// Also sold as "Growth".
    #[serde(alias = "growth")]
    Scale,
    Pro,
    Enterprise,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    StripeIngest,
    LinkedinCapi,
    GoogleAdsManagerAccount,
    MultiTouchAttribution,
    AudienceCompilation,
    LinkedinSeedSync,
    ResidencyChoice,
    CustomAdapters,
    AuditLogExport,
    RegionalAudienceSync,
}

impl Feature {
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::StripeIngest => "stripe_ingest",
            Feature::LinkedinCapi => "linkedin_capi",
            Feature::GoogleAdsManagerAccount => "google_ads_manager_account",
            Feature::MultiTouchAttribution => "multi_touch_attribution",
            Feature::AudienceCompilation => "audience_compilation",
            Feature::LinkedinSeedSync => "linkedin_seed_sync",
            Feature::ResidencyChoice => "residency_choice",
            Feature::CustomAdapters => "custom_adapters",
            Feature::AuditLogExport => "audit_log_export",
            Feature::RegionalAudienceSync => "regional_audience_sync",
        }
    }

    pub fn minimum_plan(self) -> Plan {
        match self {
            Feature::StripeIngest
            | Feature::LinkedinCapi
            | Feature::GoogleAdsManagerAccount
            | Feature::MultiTouchAttribution
            | Feature::AudienceCompilation => Plan::Scale,
            Feature::LinkedinSeedSync | Feature::ResidencyChoice => Plan::Pro,
            Feature::CustomAdapters | Feature::AuditLogExport | Feature::RegionalAudienceSync => {
                Plan::Enterprise
            }
        }
    }
}

impl Plan {
    fn rank(self) -> u8 {
        match self {
            Plan::Starter => 0,
            Plan::Scale => 1,
            Plan::Pro => 2,
            Plan::Enterprise => 3,
        }
    }

    pub fn display_name(self) -> &'static str {
        match self {
            Plan::Starter => "Starter",
            Plan::Scale => "Scale",
            Plan::Pro => "Pro",
            Plan::Enterprise => "Enterprise",
        }
    }

    pub fn includes(self, feature: Feature) -> bool {
        self.rank() >= feature.minimum_plan().rank()
    }

    pub fn require(self, feature: Feature) -> Result<(), PlanError> {
        if self.includes(feature) {
            Ok(())
        } else {
            Err(PlanError {
                feature,
                required: feature.minimum_plan(),
                current: self,
            })
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("feature {} requires plan {} (merchant is on {})", .feature.as_str(), .required.display_name(), .current.display_name())]
pub struct PlanError {
    pub feature: Feature,
    pub required: Plan,
    pub current: Plan,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_follow_the_plan_table() {
        let cases = [
            (Plan::Starter, Feature::StripeIngest, false),
            (Plan::Scale, Feature::StripeIngest, true),
            (Plan::Starter, Feature::LinkedinCapi, false),
            (Plan::Scale, Feature::LinkedinCapi, true),
            (Plan::Scale, Feature::LinkedinSeedSync, false),
            (Plan::Pro, Feature::LinkedinSeedSync, true),
            (Plan::Scale, Feature::ResidencyChoice, false),
            (Plan::Pro, Feature::ResidencyChoice, true),
            (Plan::Pro, Feature::AuditLogExport, false),
            (Plan::Enterprise, Feature::AuditLogExport, true),
            (Plan::Enterprise, Feature::StripeIngest, true),
        ];
        for (plan, feature, allowed) in cases {
            assert_eq!(plan.includes(feature), allowed, "{plan:?} {feature:?}");
        }
    }

    #[test]
    fn error_names_the_plan_required() {
        let err = Plan::Starter.require(Feature::ResidencyChoice).unwrap_err();
        assert_eq!(
            err.to_string(),
            "feature residency_choice requires plan Pro (merchant is on Starter)"
        );
        let growth: Plan = serde_json::from_str("\"growth\"").unwrap();
        assert!(growth.require(Feature::LinkedinCapi).is_ok());
    }
}
