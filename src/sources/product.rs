//! Product events sent by the merchant's own app: `signup` and `activation_milestone`.
//!
//! Not a webhook source (not in `REGISTRY`): the request is authenticated by a
//! merchant-scoped API key at the edge, and the merchant comes from the key, never from
//! the body. A signup counts once per user and a milestone once per user and milestone,
//! whatever `event_id` the app sends, so retries and double-fires dedupe.

use super::{malformed, non_empty, parse, parse_json, Notice, SourceOutput};
use crate::error::IngestError;
use crate::event::EventName;
use crate::time::parse_timestamp_utc;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

pub const NAME: &str = "product";
/// Events per request; larger batches are the app's to split.
pub const MAX_BATCH: usize = 100;
const MAX_FIELD_CHARS: usize = 256;
const MAX_PROPERTIES: usize = 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductEvent {
    event: String,
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    occurred_at: Option<Value>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    milestone: Option<String>,
    #[serde(default)]
    properties: BTreeMap<String, Value>,
    /// Click ids, first-party cookies and device data the app read at this moment
    /// (`fbp`/`_fbp`, `fbc`/`_fbc`, `gclid`, `gbraid`, `wbraid`, `li_fat_id`, `ttclid`,
    /// `ga_client_id`/`_ga`, `client_ip`/`ip`, `user_agent`, `phone`). Kept in the
    /// merchant's identity store so later billing events carry them.
    #[serde(default)]
    context: BTreeMap<String, Value>,
}

/// Maps one request body: a single event object or `{"events": [...]}`.
pub fn map(merchant_id: &str, body: &[u8], now: i64) -> Result<Vec<SourceOutput>, IngestError> {
    let value: Value = parse_json(body)?;
    let items = match value.get("events") {
        Some(Value::Array(items)) => items.clone(),
        Some(_) => return Err(malformed("`events` must be an array")),
        None => vec![value],
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(malformed(format!(
            "send between 1 and {MAX_BATCH} events per request"
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            map_one(merchant_id, item, now).map_err(|err| match err {
                IngestError::MalformedPayload(reason) => {
                    IngestError::MalformedPayload(format!("events[{index}]: {reason}"))
                }
                other => other,
            })
        })
        .collect()
}

fn bounded(field: &str, value: Option<&str>) -> Result<Option<String>, IngestError> {
    match non_empty(value) {
        Some(v) if v.chars().count() > MAX_FIELD_CHARS => Err(malformed(format!(
            "`{field}` is longer than {MAX_FIELD_CHARS} characters"
        ))),
        other => Ok(other),
    }
}

fn map_one(merchant_id: &str, item: &Value, now: i64) -> Result<SourceOutput, IngestError> {
    let event = parse::<ProductEvent>(item)?;
    let name = match event.event.as_str() {
        "signup" => EventName::Signup,
        "activation_milestone" => EventName::ActivationMilestone,
        other => {
            return Err(malformed(format!(
                "event {other:?} is not a product event (signup, activation_milestone)"
            )))
        }
    };
    let user_id = bounded("user_id", event.user_id.as_deref())?;
    let email = bounded("email", event.email.as_deref())?;
    if email.as_deref().is_some_and(|e| !e.contains('@')) {
        return Err(malformed("`email` is not an email address"));
    }
    let identity = match (&user_id, &email) {
        (Some(user), _) => format!("user:{user}"),
        (None, Some(email)) => format!("email:{}", email.to_lowercase()),
        (None, None) => return Err(malformed("`user_id` or `email` is required")),
    };
    let milestone = bounded("milestone", event.milestone.as_deref())?;
    let occurrence_key = match (name, &milestone) {
        (EventName::ActivationMilestone, Some(milestone)) => format!("{identity}:{milestone}"),
        (EventName::ActivationMilestone, None) => {
            return Err(malformed(
                "`milestone` is required for activation_milestone",
            ))
        }
        _ => format!("{identity}:signup"),
    };
    let occurred_at = match &event.occurred_at {
        None => now,
        Some(Value::Number(n)) => n
            .as_i64()
            .filter(|s| *s > 0)
            .ok_or_else(|| malformed("`occurred_at` must be unix seconds or RFC 3339"))?,
        Some(Value::String(s)) => parse_timestamp_utc(s)
            .ok_or_else(|| malformed("`occurred_at` must be unix seconds or RFC 3339"))?,
        Some(_) => return Err(malformed("`occurred_at` must be unix seconds or RFC 3339")),
    };
    if occurred_at > now + 300 {
        return Err(malformed("`occurred_at` is in the future"));
    }
    if event.properties.len() > MAX_PROPERTIES {
        return Err(malformed(format!(
            "at most {MAX_PROPERTIES} properties per event"
        )));
    }
    let notice = Notice {
        merchant_id,
        source: NAME,
        // The app's id is kept for reference; dedup follows the occurrence.
        event_id: occurrence_key.clone(),
        event_type: name.as_str().to_string(),
        occurred_at,
        livemode: true,
    };
    let mut canonical = notice.event(name, &occurrence_key);
    canonical.customer.customer_id = user_id;
    canonical.customer.email = email.map(|e| e.to_lowercase());
    if let Some(milestone) = milestone {
        canonical.properties.insert("milestone".into(), milestone);
    }
    if let Some(app_event_id) = bounded("event_id", event.event_id.as_deref())? {
        canonical
            .properties
            .insert("app_event_id".into(), app_event_id);
    }
    for (key, value) in event.properties {
        let text = match value {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return Err(malformed(format!("property {key:?} must be a scalar"))),
        };
        let key = bounded("properties key", Some(&key))?.unwrap_or_default();
        let text = bounded("properties value", Some(&text))?.unwrap_or_default();
        // Reserved names stay ours.
        canonical.properties.entry(key).or_insert(text);
    }
    for (key, value) in &event.context {
        let Value::String(text) = value else {
            return Err(malformed(format!("context.{key} must be a string")));
        };
        match canonical.touchpoints.set(key, text) {
            Ok(true) => {}
            Ok(false) => {
                return Err(malformed(format!(
                    "context.{key} is not a known identifier (fbp, fbc, gclid, gbraid, wbraid, \
                     li_fat_id, ttclid, ga_client_id, client_ip, user_agent, phone, visitor_id)"
                )))
            }
            Err(reason) => return Err(malformed(format!("context: {reason}"))),
        }
    }
    if !canonical.touchpoints.is_empty() {
        canonical.touchpoints.captured_at = Some(occurred_at);
    }
    let mut output = notice.output(identity);
    output.events.push(canonical);
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_300_000;

    #[test]
    fn signup_counts_once_per_user_whatever_the_event_id() {
        let first = map(
            "m1",
            br#"{"event":"signup","event_id":"a1","user_id":"u_42","email":"Ann@Example.com"}"#,
            NOW,
        )
        .unwrap();
        let retry = map(
            "m1",
            br#"{"event":"signup","event_id":"a2","user_id":"u_42"}"#,
            NOW,
        )
        .unwrap();
        assert_eq!(first[0].events[0].event_id, retry[0].events[0].event_id);
        assert_eq!(first[0].source_event_id, retry[0].source_event_id);
        let event = &first[0].events[0];
        assert_eq!(event.name, EventName::Signup);
        assert_eq!(event.customer.email.as_deref(), Some("ann@example.com"));
        assert_eq!(event.property("app_event_id"), Some("a1"));
        assert_eq!(event.occurred_at, NOW);
    }

    #[test]
    fn milestones_are_per_user_and_name() {
        let body = br#"{"events":[
            {"event":"activation_milestone","user_id":"u_1","milestone":"first_project","occurred_at":"2026-11-20T10:00:00Z","properties":{"plan":"pro","seats":3}},
            {"event":"activation_milestone","user_id":"u_1","milestone":"invited_team","occurred_at":1795000000}
        ]}"#;
        let outputs = map("m1", body, NOW).unwrap();
        assert_eq!(outputs.len(), 2);
        assert_ne!(outputs[0].events[0].event_id, outputs[1].events[0].event_id);
        let first = &outputs[0].events[0];
        assert_eq!(first.property("milestone"), Some("first_project"));
        assert_eq!(first.property("seats"), Some("3"));
        assert_eq!(first.occurred_at, 1_795_168_800);
    }

    #[test]
    fn refuses_what_it_cannot_attribute() {
        let cases: [(&[u8], &str); 7] = [
            (br#"{"event":"signup"}"#, "`user_id` or `email` is required"),
            (
                br#"{"event":"purchase","user_id":"u"}"#,
                "not a product event",
            ),
            (
                br#"{"event":"activation_milestone","user_id":"u"}"#,
                "`milestone` is required",
            ),
            (br#"{"event":"signup","email":"nope"}"#, "not an email"),
            (
                br#"{"event":"signup","user_id":"u","occurred_at":9999999999}"#,
                "in the future",
            ),
            (
                br#"{"event":"signup","user_id":"u","merchant_id":"other"}"#,
                "unknown field",
            ),
            (br#"{"events":[]}"#, "between 1 and 100"),
        ];
        for (body, expected) in cases {
            match map("m1", body, NOW) {
                Err(IngestError::MalformedPayload(reason)) => {
                    assert!(reason.contains(expected), "{reason} vs {expected}")
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
    }

    #[test]
    fn context_captures_click_ids_and_refuses_unknown_keys() {
        let out = map(
            "m1",
            br#"{"event":"signup","user_id":"u_7","email":"ann@example.com","occurred_at":1795299000,
                 "context":{"_fbc":"fb.1.1795298000000.IwAR2xyz","_fbp":"fb.1.1795297000000.1234567890",
                            "gclid":"Cj0KCQiA","li_fat_id":"3a1b2c3d-0000-4000-8000-000000000001",
                            "ttclid":"E.C.P.v2abc","_ga":"GA1.1.1180129581.1795297000",
                            "ip":"203.0.113.7","user_agent":"Mozilla/5.0","phone":"+1 616 954 7888",
                            "_tl_vid":"0123456789abcdef0123456789abcdef"}}"#,
            NOW,
        )
        .unwrap();
        let t = &out[0].events[0].touchpoints;
        assert_eq!(t.fbc.as_deref(), Some("fb.1.1795298000000.IwAR2xyz"));
        assert_eq!(t.ga_client_id.as_deref(), Some("1180129581.1795297000"));
        assert_eq!(t.client_ip.as_deref(), Some("203.0.113.7"));
        assert_eq!(t.captured_at, Some(1_795_299_000));
        assert_eq!(
            t.visitor_id.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(t.for_store().visitor_id, None);
        assert!(
            out[0].events[0].properties.is_empty(),
            "never free-form properties"
        );

        let unknown = map(
            "m1",
            br#"{"event":"signup","user_id":"u_7","context":{"favourite_colour":"red"}}"#,
            NOW,
        );
        assert!(
            matches!(unknown, Err(IngestError::MalformedPayload(m)) if m.contains("context.favourite_colour"))
        );
        let not_text = map(
            "m1",
            br#"{"event":"signup","user_id":"u_7","context":{"gclid":42}}"#,
            NOW,
        );
        assert!(not_text.is_err());
        let not_a_visitor = map(
            "m1",
            br#"{"event":"signup","user_id":"u_7","context":{"visitor_id":"abc"}}"#,
            NOW,
        );
        assert!(
            matches!(not_a_visitor, Err(IngestError::MalformedPayload(m)) if m.contains("visitor id"))
        );
    }
}
