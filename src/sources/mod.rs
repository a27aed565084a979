//! Inbound sources. Each module verifies raw bytes, parses, and maps to canonical events.
//!
//! Adding a source: one module here plus one line in [`REGISTRY`].

pub mod chargebee;
pub mod crm;
pub mod hubspot;
pub mod lemonsqueezy;
pub mod paddle;
pub mod pipedrive;
pub mod product;
pub mod recharge;
pub mod salesforce;
pub mod signature;
pub mod stripe;

use crate::config::MerchantConfig;
use crate::error::IngestError;
use crate::event::{event_id, CanonicalEvent, Customer, EventName, SubscriptionDetails, Values};

/// Request headers, looked up case-insensitively.
#[derive(Debug, Clone, Default)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.insert(name, value);
        self
    }

    pub fn insert(&mut self, name: &str, value: &str) {
        self.0.push((name.to_ascii_lowercase(), value.to_string()));
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.0
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub use crate::ledger::SubscriptionObservation;

/// A customer identity the source told us about (e.g. Stripe `customer.updated`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CustomerRecord {
    pub customer_id: String,
    pub email: Option<String>,
    pub observed_at: i64,
}

/// Everything one verified webhook produced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceOutput {
    pub source: &'static str,
    pub source_event_id: String,
    pub source_event_type: String,
    pub occurred_at: i64,
    /// Events sharing a key are deduplicated and ordered together (subscription,
    /// else customer, else the merchant).
    pub ordering_key: String,
    pub events: Vec<CanonicalEvent>,
    pub subscription: Option<SubscriptionObservation>,
    pub customer: Option<CustomerRecord>,
    /// Set when the event type carries no lifecycle meaning for us.
    pub ignored_reason: Option<String>,
    /// Deal context a CRM notification leaves for later billing events.
    pub crm_context: Option<crm::CrmContext>,
    /// Set when other notifications of the same source report the same conversion with
    /// values this one lacks (Paddle's transaction and subscription events): its jobs
    /// wait this long and then read the stored event, which every sibling has merged into.
    pub sibling_wait_seconds: Option<u32>,
}

/// One webhook request as received: what every signature scheme may cover.
#[derive(Debug, Clone, Copy)]
pub struct WebhookRequest<'a> {
    pub method: &'a str,
    /// The full URL the source called, query included (HubSpot signs it).
    pub url: &'a str,
    pub headers: &'a Headers,
    pub body: &'a [u8],
}

impl<'a> WebhookRequest<'a> {
    pub fn post(url: &'a str, headers: &'a Headers, body: &'a [u8]) -> Self {
        WebhookRequest {
            method: "POST",
            url,
            headers,
            body,
        }
    }
}

/// A registered source: its URL name and its verify + map function.
pub struct SourceSpec {
    pub name: &'static str,
    /// Verifies the request and maps it. Sources that batch (HubSpot, Salesforce) yield
    /// one output per notification, each deduplicated and ordered on its own.
    pub ingest: fn(&MerchantConfig, &WebhookRequest, i64) -> Result<Vec<SourceOutput>, IngestError>,
    /// A success body the source insists on (content type, body); JSON otherwise.
    pub acknowledgement: Option<fn() -> (&'static str, String)>,
    /// Top-level config fields holding secrets: sealed at rest, masked in the API.
    pub secret_fields: &'static [&'static str],
    /// Parses a config as the module would, so the admin API refuses what would not run.
    pub validate_config: fn(&serde_json::Value) -> Result<(), String>,
    /// The plan feature ingesting from this source needs, if any.
    pub required_feature: Option<crate::plans::Feature>,
    /// Conversions this source reports through several notifications, each with part of
    /// the values, in no guaranteed order.
    pub conversion_siblings: Option<Siblings>,
    /// The value its events carry unless the merchant's value policy says otherwise
    /// (Paddle: net of tax); `None`: the general defaults.
    pub default_value: Option<crate::config::ValueField>,
}

impl SourceSpec {
    /// Every optional part at its default. A source spreads it (`..SourceSpec::DEFAULT`)
    /// after what it sets, so a new optional hook never touches the sources that do not
    /// use it.
    pub const DEFAULT: SourceSpec = SourceSpec {
        name: "",
        ingest: |_, _, _| {
            Err(IngestError::UnknownSource(
                "a source without a mapping".into(),
            ))
        },
        acknowledgement: None,
        secret_fields: &[],
        validate_config: |_| Ok(()),
        required_feature: None,
        conversion_siblings: None,
        default_value: None,
    };
}

/// Which canonical events of a source arrive as several sibling notifications, and how
/// long the first waits for the others before it is forwarded (see
/// `SourceOutput::sibling_wait_seconds`).
#[derive(Debug, Clone, Copy)]
pub struct Siblings {
    pub events: &'static [EventName],
    pub wait_seconds: u32,
}

pub const REGISTRY: &[SourceSpec] = &[
    stripe::SPEC,
    paddle::SPEC,
    lemonsqueezy::SPEC,
    recharge::SPEC,
    chargebee::SPEC,
    hubspot::SPEC,
    salesforce::SPEC,
    pipedrive::SPEC,
];

/// The identity of one source notification, shared by every event mapped from it.
pub(crate) struct Notice<'a> {
    pub merchant_id: &'a str,
    pub source: &'static str,
    pub event_id: String,
    pub event_type: String,
    pub occurred_at: i64,
    pub livemode: bool,
}

impl Notice<'_> {
    /// An event of this notification; `occurrence_key` decides its id (see [`event_id`]).
    pub fn event(&self, name: EventName, occurrence_key: &str) -> CanonicalEvent {
        CanonicalEvent {
            event_id: event_id(self.merchant_id, self.source, occurrence_key, name),
            merchant_id: self.merchant_id.to_string(),
            name,
            source: self.source.to_string(),
            occurrence_key: occurrence_key.to_string(),
            source_event_id: self.event_id.clone(),
            source_event_type: self.event_type.clone(),
            occurred_at: self.occurred_at,
            customer: Customer::default(),
            subscription: SubscriptionDetails::default(),
            values: Values::default(),
            livemode: self.livemode,
            properties: Default::default(),
            touchpoints: Default::default(),
        }
    }

    /// The subscription id for once-per-subscription milestones, else `fallback`.
    pub fn occurrence_key(&self, name: EventName, subscription_id: &str, fallback: &str) -> String {
        if name.is_once_per_subscription() {
            subscription_id.to_string()
        } else {
            fallback.to_string()
        }
    }

    pub fn output(&self, ordering_key: String) -> SourceOutput {
        SourceOutput {
            source: self.source,
            source_event_id: self.event_id.clone(),
            source_event_type: self.event_type.clone(),
            occurred_at: self.occurred_at,
            ordering_key,
            events: Vec::new(),
            subscription: None,
            customer: None,
            ignored_reason: None,
            crm_context: None,
            sibling_wait_seconds: None,
        }
    }

    pub fn ignored(&self, ordering_key: String, reason: impl Into<String>) -> SourceOutput {
        SourceOutput {
            ignored_reason: Some(reason.into()),
            ..self.output(ordering_key)
        }
    }
}

/// A payload problem in our own words. Never format an input value into it: the
/// message is answered and logged.
fn malformed(problem: impl std::fmt::Display) -> IngestError {
    IngestError::MalformedPayload(problem.to_string())
}

/// Deserialises a verified payload's object; a wrong shape is the sender's error (400),
/// named by field path and expected type, never by value.
fn parse<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> Result<T, IngestError> {
    crate::input::from_value(value).map_err(malformed)
}

/// [`parse`] from the raw body.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, IngestError> {
    crate::input::from_slice(body).map_err(malformed)
}

/// Trimmed, or `None` when absent or blank (never store or hash an empty identity).
fn non_empty(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// [`SourceOutput`] as read back (it travels to the merchant's object): the source
/// name becomes one of ours again, with its static name.
#[derive(serde::Deserialize)]
struct SourceOutputWire {
    source: String,
    source_event_id: String,
    source_event_type: String,
    occurred_at: i64,
    ordering_key: String,
    events: Vec<CanonicalEvent>,
    subscription: Option<SubscriptionObservation>,
    customer: Option<CustomerRecord>,
    ignored_reason: Option<String>,
    crm_context: Option<crm::CrmContext>,
    sibling_wait_seconds: Option<u32>,
}

impl<'de> serde::Deserialize<'de> for SourceOutput {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = <SourceOutputWire as serde::Deserialize>::deserialize(deserializer)?;
        SourceOutput::try_from(wire).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<SourceOutputWire> for SourceOutput {
    type Error = String;

    fn try_from(wire: SourceOutputWire) -> Result<Self, String> {
        let source = if wire.source == product::NAME {
            product::NAME
        } else {
            find(&wire.source)
                .map(|spec| spec.name)
                .ok_or_else(|| format!("unknown source {}", wire.source))?
        };
        Ok(SourceOutput {
            source,
            source_event_id: wire.source_event_id,
            source_event_type: wire.source_event_type,
            occurred_at: wire.occurred_at,
            ordering_key: wire.ordering_key,
            events: wire.events,
            subscription: wire.subscription,
            customer: wire.customer,
            ignored_reason: wire.ignored_reason,
            crm_context: wire.crm_context,
            sibling_wait_seconds: wire.sibling_wait_seconds,
        })
    }
}

pub fn find(name: &str) -> Option<&'static SourceSpec> {
    REGISTRY.iter().find(|spec| spec.name == name)
}
