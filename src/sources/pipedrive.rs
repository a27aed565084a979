//! Pipedrive webhooks (v1 and v2): HTTP Basic authentication and deal stage changes.
//!
//! Pipedrive signs nothing; the webhook is created with `http_auth_user` /
//! `http_auth_password`, which are checked here. v2 (the default since 2025-03-17) sends
//! `{meta, data, previous}` with a unique `meta.id`; v1 sends `{meta, current, previous,
//! event}` with no event id, so its dedup key is `event:object id:timestamp_micro`. Deal
//! `value` is in major units. Only a change of `status` or `stage_id` is a stage change.
//! <https://pipedrive.readme.io/docs/guide-for-webhooks-v2>

use super::crm::{stage_output, StageChange, StageRule};
use super::signature::{verify_basic_auth, BasicCredentials};
use super::{malformed, parse_json, Notice, SourceOutput, SourceSpec, WebhookRequest};
use crate::config::MerchantConfig;
use crate::error::IngestError;
use crate::event::EventName;
use crate::money::Amount;
use crate::time::parse_rfc3339;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

pub const NAME: &str = "pipedrive";

pub const SPEC: SourceSpec = SourceSpec {
    name: NAME,
    ingest,
    secret_fields: &["basic_auth"],
    validate_config: crate::config::check_config::<Config>,
    conversion_siblings: None,
    ..SourceSpec::DEFAULT
};

/// Pipedrive settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub basic_auth: Vec<BasicCredentials>,
    /// `status:won`, `status:lost`, `stage_id:<id>` → conversion for CRM-owned merchants.
    #[serde(default = "default_stage_events")]
    pub stage_events: BTreeMap<String, StageRule>,
    /// Key of the deal custom field holding the billing customer id (a 40-char hash).
    #[serde(default)]
    pub billing_customer_id_field: Option<String>,
}

pub fn default_stage_events() -> BTreeMap<String, StageRule> {
    BTreeMap::from([(
        "status:won".into(),
        StageRule::new(EventName::SubscriptionStarted),
    )])
}

fn ingest(
    merchant: &MerchantConfig,
    request: &WebhookRequest,
    _now: i64,
) -> Result<Vec<SourceOutput>, IngestError> {
    let config: Config = merchant.source_config(NAME)?;
    verify_basic_auth(request.headers.get("Authorization"), &config.basic_auth)?;
    Ok(vec![map_event(merchant, &config, request.body)?])
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        // v1 nests people and owners as objects with an id or value.
        Value::Object(o) => text(o.get("value").or_else(|| o.get("id"))),
        _ => None,
    }
}

/// Maps a verified Pipedrive webhook of either version.
pub fn map_event(
    merchant: &MerchantConfig,
    config: &Config,
    body: &[u8],
) -> Result<SourceOutput, IngestError> {
    let payload: Value = parse_json(body)?;
    let meta = payload
        .get("meta")
        .ok_or_else(|| malformed("no meta object"))?;
    let v2 = text(meta.get("version")).as_deref() == Some("2.0");
    let (entity, action, event_id, occurred_at, deal) = if v2 {
        let at = text(meta.get("timestamp"))
            .and_then(|t| parse_rfc3339(&t))
            .ok_or_else(|| malformed("meta.timestamp is not an RFC 3339 timestamp"))?;
        (
            text(meta.get("entity")).unwrap_or_default(),
            text(meta.get("action")).unwrap_or_default(),
            text(meta.get("id")).ok_or_else(|| malformed("meta.id missing"))?,
            at,
            payload.get("data"),
        )
    } else {
        let at = meta
            .get("timestamp")
            .and_then(Value::as_i64)
            .ok_or_else(|| malformed("meta.timestamp is not unix seconds"))?;
        let event = text(payload.get("event")).unwrap_or_default();
        let micro = text(meta.get("timestamp_micro")).unwrap_or_else(|| at.to_string());
        (
            text(meta.get("object")).unwrap_or_default(),
            text(meta.get("action")).unwrap_or_default(),
            format!(
                "v1:{event}:{}:{micro}",
                text(meta.get("id")).unwrap_or_default()
            ),
            at,
            payload.get("current"),
        )
    };
    let notice = Notice {
        merchant_id: &merchant.merchant_id,
        source: NAME,
        event_id,
        event_type: format!("{action}.{entity}"),
        occurred_at,
        livemode: true,
    };
    let previous = payload.get("previous").filter(|p| p.is_object());
    let Some(deal) = deal.filter(|_| entity == "deal") else {
        return Ok(notice.ignored(
            format!(
                "{entity}:{}",
                text(meta.get("entity_id").or(meta.get("id"))).unwrap_or_default()
            ),
            format!("pipedrive {action} on {entity} is not a deal stage change"),
        ));
    };
    let id = text(deal.get("id")).ok_or_else(|| malformed("deal without id"))?;
    let record = format!("deal:{id}");
    let status = text(deal.get("status")).unwrap_or_default();
    let stage_id = text(deal.get("stage_id")).unwrap_or_default();
    let changed = |field: &str| match previous {
        // v2 lists changed fields only; v1 repeats the whole deal.
        Some(previous) => previous
            .get(field)
            .is_some_and(|before| text(Some(before)) != text(deal.get(field))),
        None => true,
    };
    let (stage_key, stage) = if changed("status") && status != "open" {
        (format!("status:{status}"), status.clone())
    } else if changed("stage_id") {
        (
            format!("stage_id:{stage_id}"),
            format!("stage_id:{stage_id}"),
        )
    } else {
        return Ok(notice.ignored(record, "deal changed without a status or stage change"));
    };
    let currency = text(deal.get("currency")).map(|c| c.to_ascii_uppercase());
    let amount = match (text(deal.get("value")), &currency) {
        (Some(value), Some(currency)) => Amount::from_major_str(&value, currency),
        _ => None,
    };
    let mut context = BTreeMap::from([("deal_id".to_string(), id.clone())]);
    if let Some(owner) = text(deal.get("owner_id").or_else(|| deal.get("user_id"))) {
        context.insert("owner".into(), owner);
    }
    if let Some(reason) = text(deal.get("lost_reason")) {
        context.insert("lost_reason".into(), reason);
    }
    let billing_customer_id = config
        .billing_customer_id_field
        .as_deref()
        .and_then(|field| {
            text(
                deal.get(field)
                    .or_else(|| deal.get("custom_fields").and_then(|c| c.get(field))),
            )
        });
    Ok(stage_output(
        &notice,
        merchant,
        &config.stage_events,
        StageChange {
            record,
            stage_key,
            stage,
            email: None,
            billing_customer_id,
            amount,
            currency,
            context,
            not_a_conversion: None,
        },
    ))
}
