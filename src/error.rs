//! Typed errors of the ingest path, each with a stable machine-readable code and an HTTP status.

use serde_json::json;
use thiserror::Error;

/// Why a webhook signature was refused. Messages never include secrets or expected digests.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    #[error("signature header {header} is missing")]
    MissingHeader { header: &'static str },
    #[error("signature header {header} is malformed: {detail}")]
    MalformedHeader {
        header: &'static str,
        detail: &'static str,
    },
    #[error("no signature matches the configured secret")]
    Mismatch,
    #[error(
        "signature timestamp is {skew_seconds}s away from now, tolerance is {tolerance_seconds}s"
    )]
    StaleTimestamp {
        skew_seconds: i64,
        tolerance_seconds: i64,
    },
    #[error("no signing secret is configured for this source")]
    NoSecretConfigured,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IngestError {
    #[error("query parameter merchant_id is required")]
    MissingMerchantId,
    #[error("merchant {0} does not exist")]
    UnknownMerchant(String),
    #[error("merchant {0} is disabled")]
    MerchantDisabled(String),
    #[error("source {source_name} is not configured for this merchant")]
    SourceNotConfigured { source_name: String },
    #[error("the {source_name} settings of this merchant are invalid; the operator must fix them")]
    SourceMisconfigured { source_name: String },
    #[error("unknown source {0}")]
    UnknownSource(String),
    #[error(transparent)]
    Signature(#[from] VerifyError),
    #[error("payload is not valid: {0}")]
    MalformedPayload(String),
    #[error("payload is {size} bytes, the limit is {limit} bytes")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("the same event is being processed right now; retry later")]
    InFlight,
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    PlanRequired(#[from] crate::plans::PlanError),
    #[error("too many requests for this merchant; retry after {retry_after_seconds}s")]
    RateLimited { retry_after_seconds: u32 },
    /// Any refusal before the request proved it holds the merchant's secret: unknown
    /// merchant, source not configured, bad or missing signature. The caller learns
    /// nothing about the merchant; `detail` goes to the operator's rejected log only.
    #[error("the request could not be authenticated")]
    Unauthenticated {
        reason: &'static str,
        detail: String,
    },
}

impl IngestError {
    pub fn status(&self) -> u16 {
        match self {
            IngestError::MissingMerchantId | IngestError::MalformedPayload(_) => 400,
            IngestError::Signature(_) | IngestError::Unauthenticated { .. } => 401,
            IngestError::MerchantDisabled(_) | IngestError::PlanRequired(_) => 403,
            IngestError::UnknownMerchant(_)
            | IngestError::SourceNotConfigured { .. }
            | IngestError::UnknownSource(_) => 404,
            IngestError::InFlight => 409,
            IngestError::PayloadTooLarge { .. } => 413,
            IngestError::RateLimited { .. } => 429,
            IngestError::Unavailable(_) | IngestError::SourceMisconfigured { .. } => 503,
        }
    }

    /// Stable code clients can branch on; never changes once published.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::MissingMerchantId => "merchant_id_required",
            IngestError::UnknownMerchant(_) => "merchant_not_found",
            IngestError::MerchantDisabled(_) => "merchant_disabled",
            IngestError::SourceNotConfigured { .. } => "source_not_configured",
            IngestError::SourceMisconfigured { .. } => "source_misconfigured",
            IngestError::UnknownSource(_) => "source_not_found",
            IngestError::Signature(VerifyError::MissingHeader { .. }) => "signature_missing",
            IngestError::Signature(VerifyError::MalformedHeader { .. }) => "signature_malformed",
            IngestError::Signature(VerifyError::Mismatch) => "signature_invalid",
            IngestError::Signature(VerifyError::StaleTimestamp { .. }) => {
                "signature_timestamp_out_of_tolerance"
            }
            IngestError::Signature(VerifyError::NoSecretConfigured) => {
                "signing_secret_not_configured"
            }
            IngestError::MalformedPayload(_) => "malformed_payload",
            IngestError::PayloadTooLarge { .. } => "payload_too_large",
            IngestError::InFlight => "event_in_flight",
            IngestError::Unavailable(_) => "temporarily_unavailable",
            IngestError::PlanRequired(_) => "plan_required",
            IngestError::RateLimited { .. } => "rate_limited",
            IngestError::Unauthenticated { .. } => "unauthenticated",
        }
    }

    /// The refusal before authentication: what the caller sees of any of them.
    pub fn unauthenticated(self) -> IngestError {
        match self {
            IngestError::Unauthenticated { .. } => self,
            other => IngestError::Unauthenticated {
                reason: other.code(),
                detail: format!("{}: {other}", other.code()),
            },
        }
    }

    /// The specific reason code, also behind an `unauthenticated` answer (logs, tests).
    pub fn reason_code(&self) -> &'static str {
        match self {
            IngestError::Unauthenticated { reason, .. } => reason,
            other => other.code(),
        }
    }

    /// Whether this refusal came before the request proved it holds the secret.
    pub fn is_before_authentication(&self) -> bool {
        matches!(
            self,
            IngestError::Signature(_)
                | IngestError::UnknownMerchant(_)
                | IngestError::SourceNotConfigured { .. }
                | IngestError::SourceMisconfigured { .. }
                | IngestError::Unauthenticated { .. }
        )
    }

    /// What the operator's rejected log keeps: the specific reason, never input values.
    pub fn log_message(&self) -> String {
        match self {
            IngestError::Unauthenticated { detail, .. } => detail.clone(),
            other => other.to_string(),
        }
    }

    pub fn body(&self) -> String {
        json!({ "error": { "code": self.code(), "message": self.to_string() } }).to_string()
    }
}

impl From<crate::config::SettingsError> for IngestError {
    fn from(err: crate::config::SettingsError) -> Self {
        match err {
            crate::config::SettingsError::NotConfigured(name) => IngestError::SourceNotConfigured {
                source_name: name.into(),
            },
            crate::config::SettingsError::Misconfigured(name) => IngestError::SourceMisconfigured {
                source_name: name.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_failures_are_401_with_distinct_codes() {
        let stale = IngestError::from(VerifyError::StaleTimestamp {
            skew_seconds: 900,
            tolerance_seconds: 300,
        });
        let bad = IngestError::from(VerifyError::Mismatch);
        let missing = IngestError::from(VerifyError::MissingHeader {
            header: "Stripe-Signature",
        });
        assert_eq!(
            (stale.status(), bad.status(), missing.status()),
            (401, 401, 401)
        );
        assert_ne!(stale.code(), bad.code());
        assert_ne!(missing.code(), bad.code());
    }

    #[test]
    fn refusals_before_authentication_all_look_the_same() {
        let refusals = [
            IngestError::from(VerifyError::Mismatch),
            IngestError::from(VerifyError::NoSecretConfigured),
            IngestError::UnknownMerchant("m_secret_name".into()),
            IngestError::SourceNotConfigured {
                source_name: "stripe".into(),
            },
        ];
        let bodies: Vec<(u16, String)> = refusals
            .iter()
            .map(|e| {
                let e = e.clone().unauthenticated();
                (e.status(), e.body())
            })
            .collect();
        assert!(bodies.iter().all(|b| *b == bodies[0]), "{bodies:?}");
        assert_eq!(bodies[0].0, 401);
        assert!(!bodies[0].1.contains("m_secret_name"));
        let logged = refusals[2].clone().unauthenticated();
        assert_eq!(logged.reason_code(), "merchant_not_found");
        assert!(logged.log_message().contains("merchant_not_found"));
    }

    #[test]
    fn body_is_json_with_code_and_message() {
        let err = IngestError::PayloadTooLarge { size: 10, limit: 5 };
        let body: serde_json::Value = serde_json::from_str(&err.body()).unwrap();
        assert_eq!(body["error"]["code"], "payload_too_large");
        assert_eq!(err.status(), 413);
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit is 5"));
    }
}
