//! Salesforce: Outbound Messages (SOAP) and JSON callouts from Flow / Apex.
//!
//! Outbound Messages carry no signature. A message is accepted only when its
//! `OrganizationId` is the merchant's org (15- or 18-character form) and the endpoint
//! URL carries one of the merchant's endpoint tokens (`&token=…`, constant-time checked),
//! since Salesforce cannot add headers. Up to 100 `Notification`s per message, each
//! deduplicated on its `Id`; success must be answered with the SOAP `Ack` or Salesforce
//! retries for 24 h. <https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_om_outboundmessaging_understanding.htm>
//!
//! A Flow HTTP callout (JSON) authenticates with the shared secret in `X-TrackLayer-Token`
//! (a Named Credential custom header) and sends
//! `{"id", "occurred_at", "object", "record": {Id, StageName, Amount, …}}`.

use super::crm::{stage_output, StageChange, StageRule};
use super::signature::usable;
use super::{malformed, non_empty, parse_json, Notice, SourceOutput, SourceSpec, WebhookRequest};
use crate::config::MerchantConfig;
use crate::error::{IngestError, VerifyError};
use crate::event::EventName;
use crate::hashing::constant_time_eq;
use crate::money::Amount;
use crate::time::parse_rfc3339;
use quick_xml::events::Event as XmlEvent;
use quick_xml::Reader;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

pub const NAME: &str = "salesforce";
pub const TOKEN_HEADER: &str = "X-TrackLayer-Token";

pub const SPEC: SourceSpec = SourceSpec {
    name: NAME,
    ingest,
    acknowledgement: Some(acknowledgement),
    secret_fields: &["endpoint_tokens"],
    validate_config: crate::config::check_config::<Config>,
    conversion_siblings: None,
    ..SourceSpec::DEFAULT
};

/// The answer Salesforce requires before it stops retrying a message.
pub const ACK: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8"?>"#,
    r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">"#,
    r#"<soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">"#,
    r#"<Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#
);

fn acknowledgement() -> (&'static str, String) {
    ("text/xml; charset=utf-8", ACK.to_string())
}

/// Salesforce settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The org's id; messages from any other org are refused.
    pub organization_id: String,
    /// Accepted `token` query values (Outbound Messages) and `X-TrackLayer-Token`
    /// values (JSON callouts); several while rotating.
    pub endpoint_tokens: Vec<String>,
    /// `Type:StageName` (`*` = any type) → conversion for CRM-owned merchants.
    #[serde(default = "default_stage_events")]
    pub stage_events: BTreeMap<String, StageRule>,
    #[serde(default)]
    pub fields: Fields,
    /// For orgs without multi-currency (no `CurrencyIsoCode`).
    #[serde(default = "default_currency")]
    pub default_currency: String,
}

/// API names of the Opportunity fields that hold context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Fields {
    pub email: String,
    pub billing_customer_id: String,
    pub segment: String,
    pub source_campaign: String,
}

impl Default for Fields {
    fn default() -> Self {
        Fields {
            email: "Contact_Email__c".into(),
            billing_customer_id: "Billing_Customer_Id__c".into(),
            segment: "Segment__c".into(),
            source_campaign: "CampaignId".into(),
        }
    }
}

fn default_currency() -> String {
    "USD".into()
}

/// The seed's Salesforce rows: Closed Won starts (a renewal opportunity renews, an
/// amendment upgrades).
pub fn default_stage_events() -> BTreeMap<String, StageRule> {
    BTreeMap::from([
        (
            "*:Closed Won".into(),
            StageRule::new(EventName::SubscriptionStarted),
        ),
        (
            "Renewal:Closed Won".into(),
            StageRule::new(EventName::SubscriptionRenewed),
        ),
        (
            "Amendment:Closed Won".into(),
            StageRule::new(EventName::SubscriptionUpgraded),
        ),
        (
            "Upsell:Closed Won".into(),
            StageRule::new(EventName::SubscriptionUpgraded),
        ),
    ])
}

fn ingest(
    merchant: &MerchantConfig,
    request: &WebhookRequest,
    now: i64,
) -> Result<Vec<SourceOutput>, IngestError> {
    let config: Config = merchant.source_config(NAME)?;
    let body = request.body;
    let is_json = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    if is_json {
        check_token(request.headers.get(TOKEN_HEADER), TOKEN_HEADER, &config)?;
        return Ok(vec![callout(merchant, &config, body, now)?]);
    }
    let token = url::Url::parse(request.url).ok().and_then(|url| {
        url.query_pairs()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    check_token(token.as_deref(), "token (query)", &config)?;
    let message = parse_outbound_message(body)?;
    if !same_org(&message.organization_id, &config.organization_id) {
        return Err(VerifyError::Mismatch.into());
    }
    message
        .notifications
        .into_iter()
        .map(|n| Ok(notification(merchant, &config, n, now)))
        .collect()
}

fn check_token(
    presented: Option<&str>,
    header: &'static str,
    config: &Config,
) -> Result<(), VerifyError> {
    let tokens = usable(&config.endpoint_tokens)?;
    if config.organization_id.is_empty() {
        return Err(VerifyError::NoSecretConfigured);
    }
    let presented = presented.ok_or(VerifyError::MissingHeader { header })?;
    tokens
        .iter()
        .any(|t| constant_time_eq(presented.as_bytes(), t.as_bytes()))
        .then_some(())
        .ok_or(VerifyError::Mismatch)
}

/// Org ids come as 15 (case-sensitive) or 18 characters; the first 15 identify the org.
fn same_org(presented: &str, configured: &str) -> bool {
    let (a, b) = (presented.trim(), configured.trim());
    a.len() >= 15 && b.len() >= 15 && a.get(..15) == b.get(..15)
}

#[derive(Debug, Default)]
pub struct OutboundMessage {
    pub organization_id: String,
    pub notifications: Vec<Notification>,
}

#[derive(Debug, Default)]
pub struct Notification {
    pub id: String,
    pub object_type: String,
    pub fields: BTreeMap<String, String>,
}

fn local(name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    name.rsplit(':').next().unwrap_or_default().to_string()
}

/// Reads the SOAP envelope: org id and each notification's sObject fields (prefixes
/// dropped, nil fields absent).
pub fn parse_outbound_message(body: &[u8]) -> Result<OutboundMessage, IngestError> {
    let mut reader = Reader::from_reader(body);
    reader.config_mut().trim_text(true);
    let mut message = OutboundMessage::default();
    let mut path: Vec<String> = Vec::new();
    let mut current: Option<Notification> = None;
    let mut buf = Vec::new();
    loop {
        match reader
            .read_event_into(&mut buf)
            .map_err(|_| malformed("not well-formed XML"))?
        {
            XmlEvent::Start(start) => {
                let name = local(start.name().as_ref());
                if name == "Notification" {
                    current = Some(Notification::default());
                }
                if name == "sObject" {
                    if let (Some(n), Some(kind)) = (
                        current.as_mut(),
                        start
                            .attributes()
                            .flatten()
                            .find(|a| local(a.key.as_ref()) == "type"),
                    ) {
                        n.object_type = local(&kind.value);
                    }
                }
                path.push(name);
            }
            XmlEvent::End(_) => {
                let closed = path.pop();
                if closed.as_deref() == Some("Notification") {
                    message.notifications.extend(current.take());
                }
            }
            XmlEvent::Text(text) => {
                let value = text
                    .unescape()
                    .map_err(|_| malformed("an XML text has an invalid escape"))?
                    .into_owned();
                let depth = path.len();
                let (parent, field) = match depth {
                    0 | 1 => continue,
                    _ => (path[depth - 2].as_str(), path[depth - 1].as_str()),
                };
                match (parent, field) {
                    ("notifications", "OrganizationId") => message.organization_id = value,
                    ("Notification", "Id") => {
                        if let Some(n) = current.as_mut() {
                            n.id = value;
                        }
                    }
                    ("sObject", field) => {
                        if let Some(n) = current.as_mut() {
                            n.fields.insert(field.to_string(), value);
                        }
                    }
                    _ => {}
                }
            }
            XmlEvent::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if message.organization_id.is_empty() {
        return Err(malformed("no OrganizationId in the outbound message"));
    }
    if message.notifications.iter().any(|n| n.id.is_empty()) {
        return Err(malformed("a Notification without Id"));
    }
    Ok(message)
}

fn notification(
    merchant: &MerchantConfig,
    config: &Config,
    notification: Notification,
    now: i64,
) -> SourceOutput {
    let occurred_at = notification
        .fields
        .get("LastModifiedDate")
        .and_then(|t| parse_rfc3339(t))
        .unwrap_or(now);
    let notice = Notice {
        merchant_id: &merchant.merchant_id,
        source: NAME,
        event_id: notification.id.clone(),
        event_type: format!("outbound_message.{}", notification.object_type),
        occurred_at,
        livemode: true,
    };
    record_output(
        &notice,
        merchant,
        config,
        &notification.object_type,
        &notification.fields,
    )
}

#[derive(Deserialize)]
struct Callout {
    id: String,
    occurred_at: String,
    #[serde(default = "default_object")]
    object: String,
    record: BTreeMap<String, Value>,
}

fn default_object() -> String {
    "Opportunity".into()
}

fn callout(
    merchant: &MerchantConfig,
    config: &Config,
    body: &[u8],
    _now: i64,
) -> Result<SourceOutput, IngestError> {
    let callout: Callout = parse_json(body)?;
    let occurred_at = parse_rfc3339(&callout.occurred_at)
        .ok_or_else(|| malformed("occurred_at is not an RFC 3339 timestamp"))?;
    let fields: BTreeMap<String, String> = callout
        .record
        .iter()
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((k.clone(), text))
        })
        .collect();
    let notice = Notice {
        merchant_id: &merchant.merchant_id,
        source: NAME,
        event_id: format!("callout:{}", callout.id),
        event_type: format!("callout.{}", callout.object),
        occurred_at,
        livemode: true,
    };
    Ok(record_output(
        &notice,
        merchant,
        config,
        &callout.object,
        &fields,
    ))
}

fn record_output(
    notice: &Notice,
    merchant: &MerchantConfig,
    config: &Config,
    object: &str,
    fields: &BTreeMap<String, String>,
) -> SourceOutput {
    let get = |name: &str| non_empty(fields.get(name).map(String::as_str));
    let id = get("Id").unwrap_or_default();
    let record = format!("{}:{id}", object.to_ascii_lowercase());
    let Some(stage) = get("StageName") else {
        return notice.ignored(record, format!("salesforce {object} without StageName"));
    };
    let kind = get("Type").unwrap_or_default();
    let typed = format!("{kind}:{stage}");
    let stage_key = if config.stage_events.contains_key(&typed) {
        typed
    } else {
        format!("*:{stage}")
    };
    let currency = get("CurrencyIsoCode")
        .unwrap_or_else(|| config.default_currency.clone())
        .to_ascii_uppercase();
    let amount = get("Amount").and_then(|a| Amount::from_major_str(&a, &currency));
    let mut context = BTreeMap::from([("deal_id".to_string(), id.clone())]);
    for (key, name) in [
        ("owner", "OwnerId"),
        ("forecast_category", "ForecastCategoryName"),
        ("segment", config.fields.segment.as_str()),
        ("source_campaign", config.fields.source_campaign.as_str()),
        ("opportunity_type", "Type"),
    ] {
        if let Some(value) = get(name) {
            context.insert(key.to_string(), value);
        }
    }
    stage_output(
        notice,
        merchant,
        &config.stage_events,
        StageChange {
            record,
            stage_key,
            stage,
            email: get(&config.fields.email),
            billing_customer_id: get(&config.fields.billing_customer_id),
            amount,
            currency: Some(currency),
            context,
            not_a_conversion: None,
        },
    )
}
