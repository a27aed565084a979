//! A signed webhook to the merchant's own endpoint (Enterprise: custom adapters). Each
//! event is POSTed as its canonical JSON, so a merchant's own systems receive exactly what
//! TrackLayer forwards to the ad platforms, with the same ids and values.
//!
//! Signature, so the receiver can check the body came from TrackLayer and is fresh:
//! `TrackLayer-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`, keyed
//! by the merchant's signing secret; while rotating, one `v1` per configured secret. The
//! receiver recomputes the HMAC over the raw bytes, compares in constant time, and refuses
//! a `t` more than five minutes away. `TrackLayer-Event-Id` repeats the event id: the
//! receiver deduplicates on it, since a retried delivery carries the same id.
//!
//! The URL is the merchant's own: https only, a public host name (no IP literal, no
//! `localhost` or internal suffix), no credentials in it. The operator may point it at a
//! local stand-in for tests with `WEBHOOK_DESTINATION_TEST_URL`, never a merchant.

use super::{
    failure_outcome, plan_rows, truncate, BuildContext, BuildError, DestinationSpec, EndpointSpec,
    MatchKey, OutboundRequest, Outcome, RequestPlan,
};
use crate::config::MerchantConfig;
use crate::event::CanonicalEvent;
use crate::identity::Identifier;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

pub const NAME: &str = "webhook";
pub const SIGNATURE_HEADER: &str = "TrackLayer-Signature";
pub const EVENT_ID_HEADER: &str = "TrackLayer-Event-Id";

/// Only an operator's stand-in: when this variable is set, requests go to it instead of
/// the merchant's URL (which must still be valid). There is no platform default.
pub const TEST_URL: EndpointSpec = EndpointSpec {
    default: "https://merchant-endpoint.invalid",
    override_var: "WEBHOOK_DESTINATION_TEST_URL",
};

pub const SPEC: DestinationSpec = DestinationSpec {
    name: NAME,
    endpoints: &[TEST_URL],
    build,
    classify,
    match_keys: &[
        MatchKey {
            identifier: Identifier::Email,
            weight: 60,
        },
        MatchKey {
            identifier: Identifier::CustomerId,
            weight: 40,
        },
    ],
    secret_fields: &["signing_secrets"],
    validate_config: validate,
    required_feature: Some(crate::plans::Feature::CustomAdapters),
    accepts: super::accepts_all,
    ..DestinationSpec::DEFAULT
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The merchant's receiving endpoint.
    pub url: String,
    /// First one signs; during a rotation every listed secret signs (one `v1` each).
    pub signing_secrets: Vec<String>,
}

fn validate(value: &serde_json::Value) -> Result<(), String> {
    let config: WebhookConfig = crate::input::from_value(value).map_err(|e| e.to_string())?;
    check_url(&config.url)?;
    if config.signing_secrets.is_empty()
        || config.signing_secrets.iter().any(|s| s.trim().len() < 16)
    {
        return Err("signing_secrets: at least one secret of 16 or more characters".into());
    }
    Ok(())
}

/// A public https endpoint: no IP literal, no local or internal name, no credentials.
pub fn check_url(raw: &str) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|_| "url: not a URL".to_string())?;
    if url.scheme() != "https" {
        return Err("url: must be https".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("url: must not carry credentials; use the signing secret".into());
    }
    let host = match url.host() {
        Some(url::Host::Domain(host)) => host.to_ascii_lowercase(),
        Some(_) => return Err("url: an IP address is not accepted; use a host name".into()),
        None => return Err("url: no host".into()),
    };
    let internal = [
        ".localhost",
        ".local",
        ".internal",
        ".lan",
        ".home.arpa",
        ".invalid",
    ];
    if host == "localhost" || !host.contains('.') || internal.iter().any(|s| host.ends_with(s)) {
        return Err("url: must be a public host name".into());
    }
    Ok(())
}

/// `t=<timestamp>,v1=<hex>[,v1=<hex>…]`, one `v1` per secret.
pub fn sign(secrets: &[String], timestamp: i64, body: &str) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            continue;
        };
        mac.update(format!("{timestamp}.{body}").as_bytes());
        header.push_str(&format!(",v1={}", hex::encode(mac.finalize().into_bytes())));
    }
    header
}

fn build(
    events: &[CanonicalEvent],
    merchant: &MerchantConfig,
    context: &BuildContext,
) -> Result<RequestPlan, BuildError> {
    let config: WebhookConfig = merchant.destination_config(NAME)?;
    check_url(&config.url).map_err(|reason| BuildError::Invalid {
        destination: NAME,
        reason,
    })?;
    let url = context
        .endpoints
        .overridden(&TEST_URL)
        .map_or_else(|| config.url.clone(), str::to_string);
    // One event per request: the receiver answers for each on its own.
    plan_rows(
        events,
        1,
        |event| {
            if !event.name.is_forwardable() {
                return Err(BuildError::NotForwardable(event.name.as_str()));
            }
            // The pixel's visitor id is ours, for linking; it never leaves.
            let mut event = event.clone();
            event.touchpoints.visitor_id = None;
            let body = serde_json::to_string(&event).map_err(|e| BuildError::Invalid {
                destination: NAME,
                reason: e.to_string(),
            })?;
            Ok((event.event_id.clone(), body))
        },
        |rows| {
            let (event_id, body) = rows.into_iter().next().unwrap_or_default();
            Ok(OutboundRequest {
                method: "POST",
                url: url.clone(),
                log_url: url.clone(),
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    (
                        SIGNATURE_HEADER.to_ascii_lowercase(),
                        sign(&config.signing_secrets, context.now_s, &body),
                    ),
                    (EVENT_ID_HEADER.to_ascii_lowercase(), event_id),
                ],
                body,
            })
        },
    )
}

/// 2xx delivered; 409 means the receiver already has this event id; 408, 429 and 5xx
/// are retried; any other answer is the receiver refusing the event.
fn classify(status: u16, retry_after: Option<&str>, body: &str) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        409 => Outcome::AlreadyDelivered,
        _ => failure_outcome(
            status,
            retry_after,
            format!(
                "HTTP {status}, merchant endpoint: {}",
                truncate(body.trim(), 300)
            ),
            status == 408,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destinations::{build_for_test, Endpoints};
    use serde_json::json;

    const NOW: i64 = 1_767_225_600;

    fn merchant() -> MerchantConfig {
        MerchantConfig {
            merchant_id: "m_1".into(),
            plan: crate::config::Plan::Enterprise,
            ..MerchantConfig::default()
        }
        .with_destination(
            NAME,
            json!({ "url": "https://hooks.acme.example/tracklayer", "signing_secrets": ["whsec_merchant_0123456789"] }),
        )
    }

    #[test]
    fn the_signature_is_a_known_hmac_vector() {
        // printf '%s' '1767225600.{"a":1}' | openssl dgst -sha256 -hmac whsec_merchant_0123456789
        assert_eq!(
            sign(&["whsec_merchant_0123456789".into()], NOW, r#"{"a":1}"#),
            format!("t={NOW},v1={KNOWN}")
        );
        let two = sign(&["a".repeat(16), "b".repeat(16)], NOW, "{}");
        assert_eq!(two.matches(",v1=").count(), 2);
    }

    const KNOWN: &str = "657470797ea4c4e80ef77749836969e22fe5c1579a01035e0cc9e6db6eb4230e";

    #[test]
    fn each_event_is_posted_signed_as_its_canonical_json() {
        let event = crate::event::tests_support::event();
        let req = build_for_test(
            build,
            std::slice::from_ref(&event),
            &merchant(),
            &Endpoints::default(),
            NOW,
        )
        .unwrap();
        assert_eq!(req.url, "https://hooks.acme.example/tracklayer");
        let sent: CanonicalEvent = serde_json::from_str(&req.body).unwrap();
        assert_eq!(sent, event);
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("tracklayer-event-id"), Some(event.event_id.clone()));
        assert_eq!(
            header("tracklayer-signature"),
            Some(sign(&["whsec_merchant_0123456789".into()], NOW, &req.body))
        );
        // Only the operator's variable redirects it (tests); merchant input cannot.
        let stand_in = Endpoints::default().with(&TEST_URL, "http://127.0.0.1:9/hook");
        let req = build_for_test(build, &[event], &merchant(), &stand_in, NOW).unwrap();
        assert_eq!(req.url, "http://127.0.0.1:9/hook");
    }

    #[test]
    fn only_public_https_endpoints_are_accepted() {
        for bad in [
            "http://hooks.acme.example/x",
            "https://127.0.0.1/x",
            "https://[::1]/x",
            "https://10.0.0.8/x",
            "https://localhost/x",
            "https://metadata.internal/x",
            "https://printer.local/x",
            "https://intranet/x",
            "https://user:pass@hooks.acme.example/x",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(check_url("https://hooks.acme.example:8443/tracklayer?x=1").is_ok());
        let short = json!({ "url": "https://hooks.acme.example/x", "signing_secrets": ["short"] });
        assert!(validate(&short).is_err());
        let unknown = json!({ "url": "https://hooks.acme.example/x", "signing_secrets": ["x".repeat(16)], "verify": false });
        assert!(validate(&unknown).is_err());
    }

    #[test]
    fn answers() {
        assert_eq!(classify(204, None, ""), Outcome::Delivered);
        assert_eq!(classify(409, None, ""), Outcome::AlreadyDelivered);
        assert!(matches!(classify(408, None, ""), Outcome::Retry { .. }));
        assert!(matches!(
            classify(503, Some("30"), ""),
            Outcome::Retry {
                after_seconds: Some(30),
                ..
            }
        ));
        assert!(matches!(
            classify(400, None, "bad"),
            Outcome::Permanent { .. }
        ));
    }
}
