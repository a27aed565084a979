//! A merchant's own records: the dedup ledger, subscription and customer state,
//! identities, canonical events, deliveries, attempts, dead letters and CRM context.
//!
//! They live in that merchant's Durable Object (its own SQLite, in its region's
//! jurisdiction); this module is the storage logic, written against the small [`Sql`]
//! trait so it runs natively in tests (rusqlite) and in the object (`SqlStorage`).
//! Everything here is synchronous: inside the object one call's statements run without
//! an await between them, so they commit together and no other request interleaves.

use crate::admin::{ListQuery, ReplayFilter, SqlParam};
use crate::audit::{self, AuditEntry, AuditRecord};
use crate::config::MerchantConfig;
use crate::delivery::{
    AttemptOutcome, DeadLetter, DeliveryJob, DeliveryStatus, DestinationHealth, EventMessage,
};
use crate::enrich::{KnownCustomer, StoredContext};
use crate::event::{CanonicalEvent, EventName};
use crate::identity::{self, Touchpoints};
use crate::ingest::{self, IngestPlan};
use crate::ledger::{self, ClaimOutcome, SeenRecord, SubscriptionState};
use crate::pixel::Capture;
use crate::retention::Purge;
use crate::sources::crm::CrmContext;
use crate::sources::{CustomerRecord, SourceOutput};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, thiserror::Error)]
#[error("merchant records: {0}")]
pub struct RecordsError(pub String);

impl RecordsError {
    fn of(err: impl std::fmt::Display) -> Self {
        RecordsError(err.to_string())
    }
}

pub type Result<T> = std::result::Result<T, RecordsError>;

/// One bound parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl From<&str> for Param {
    fn from(value: &str) -> Self {
        Param::Text(value.to_string())
    }
}
impl From<&String> for Param {
    fn from(value: &String) -> Self {
        Param::Text(value.clone())
    }
}
impl From<String> for Param {
    fn from(value: String) -> Self {
        Param::Text(value)
    }
}
impl From<i64> for Param {
    fn from(value: i64) -> Self {
        Param::Int(value)
    }
}
impl From<f64> for Param {
    fn from(value: f64) -> Self {
        Param::Real(value)
    }
}
impl<T: Into<Param>> From<Option<T>> for Param {
    fn from(value: Option<T>) -> Self {
        value.map_or(Param::Null, Into::into)
    }
}

/// A text column of a row as `Sql::query` returns it.
pub fn row_text(row: &Map<String, Value>, name: &str) -> Option<String> {
    row.get(name).and_then(Value::as_str).map(str::to_string)
}

/// An integer column of a row as `Sql::query` returns it.
pub fn row_int(row: &Map<String, Value>, name: &str) -> Option<i64> {
    row.get(name).and_then(Value::as_i64)
}

/// The SQLite a merchant's records live in. Placeholders are numbered (`?1`).
pub trait Sql {
    /// Rows as JSON objects (integers as numbers, text as strings, NULL as null).
    fn query(&self, sql: &str, params: Vec<Param>) -> Result<Vec<Map<String, Value>>>;
    /// Runs a statement; returns the rows it wrote.
    fn execute(&self, sql: &str, params: Vec<Param>) -> Result<u64>;
}

/// The object's schema, one step per version; applied in order, each once.
///
/// Durable Object SQLite bills every row written, index entries included, so the layout
/// is few and wide: an event's deliveries live in its own row (`deliveries`, one entry
/// per destination) and one batch's attempts at an event in one `attempt_log` row. The
/// views `deliveries` and `delivery_attempts` show them one row per delivery and per
/// attempt. Tables keyed by text are `WITHOUT ROWID` (one b-tree, one row written); an
/// index exists only where a hot path or paging needs it.
pub const SCHEMA: &[&str] = &[
    // v1
    "CREATE TABLE IF NOT EXISTS object_meta (id INTEGER PRIMARY KEY CHECK (id = 1), merchant_id TEXT NOT NULL,
       region TEXT NOT NULL, created_at INTEGER NOT NULL);
     CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, committed INTEGER NOT NULL, lease_until INTEGER NOT NULL,
       first_seen INTEGER NOT NULL) WITHOUT ROWID;
     CREATE TABLE IF NOT EXISTS subscription_state (ordering_key TEXT PRIMARY KEY, state TEXT NOT NULL,
       updated_at INTEGER NOT NULL) WITHOUT ROWID;
     CREATE TABLE IF NOT EXISTS customers (merchant_id TEXT NOT NULL, source TEXT NOT NULL, customer_id TEXT NOT NULL, email TEXT,
       observed_at_s INTEGER NOT NULL, updated_at INTEGER NOT NULL, last_cancelled_at_s INTEGER, last_cancelled_subscription TEXT,
       PRIMARY KEY (merchant_id, source, customer_id)) WITHOUT ROWID;
     CREATE TABLE IF NOT EXISTS canonical_events (event_id TEXT PRIMARY KEY, merchant_id TEXT NOT NULL, name TEXT NOT NULL,
       source TEXT NOT NULL, source_event_id TEXT NOT NULL, source_event_type TEXT NOT NULL, occurred_at_s INTEGER NOT NULL,
       payload TEXT NOT NULL, received_at INTEGER NOT NULL, enqueued_at INTEGER, ordering_key TEXT,
       deliveries TEXT NOT NULL DEFAULT '{}', pending INTEGER NOT NULL DEFAULT 0, pending_since INTEGER) WITHOUT ROWID;
     CREATE INDEX IF NOT EXISTS canonical_events_by_time ON canonical_events (received_at);
     CREATE INDEX IF NOT EXISTS canonical_events_pending ON canonical_events (pending_since) WHERE pending > 0;
     CREATE VIEW IF NOT EXISTS deliveries AS SELECT json_extract(d.value, '$.job_id') AS job_id, e.event_id AS event_id,
       e.merchant_id AS merchant_id, d.key AS destination, json_extract(d.value, '$.status') AS status,
       json_extract(d.value, '$.attempts') AS attempts, json_extract(d.value, '$.last_error') AS last_error,
       json_extract(d.value, '$.match_score') AS match_score, json_extract(d.value, '$.match_keys') AS match_keys,
       json_extract(d.value, '$.created_at') AS created_at, json_extract(d.value, '$.updated_at') AS updated_at
       FROM canonical_events e, json_each(e.deliveries) d;
     CREATE TABLE IF NOT EXISTS ignored_events (merchant_id TEXT NOT NULL, source TEXT NOT NULL, source_event_id TEXT NOT NULL,
       source_event_type TEXT NOT NULL, reason TEXT NOT NULL, received_at INTEGER NOT NULL,
       PRIMARY KEY (merchant_id, source, source_event_id)) WITHOUT ROWID;
     CREATE TABLE IF NOT EXISTS attempt_log (id INTEGER PRIMARY KEY, event_id TEXT NOT NULL, merchant_id TEXT NOT NULL,
       attempted_at INTEGER NOT NULL, attempts TEXT NOT NULL);
     CREATE VIEW IF NOT EXISTS delivery_attempts AS SELECT a.id * 1000 + x.key AS id, json_extract(x.value, '$.job_id') AS job_id,
       a.event_id AS event_id, a.merchant_id AS merchant_id, json_extract(x.value, '$.destination') AS destination,
       json_extract(x.value, '$.attempt') AS attempt, json_extract(x.value, '$.outcome') AS outcome,
       json_extract(x.value, '$.http_status') AS http_status, json_extract(x.value, '$.detail') AS detail,
       json_extract(x.value, '$.request_url') AS request_url, json_extract(x.value, '$.duration_ms') AS duration_ms,
       a.attempted_at AS attempted_at FROM attempt_log a, json_each(a.attempts) x;
     CREATE TABLE IF NOT EXISTS dead_letters (job_id TEXT PRIMARY KEY, event_id TEXT NOT NULL, merchant_id TEXT NOT NULL,
       destination TEXT NOT NULL, attempts INTEGER NOT NULL, reason TEXT NOT NULL, last_error TEXT NOT NULL, job TEXT NOT NULL,
       dead_lettered_at INTEGER NOT NULL, replayed_at INTEGER) WITHOUT ROWID;
     CREATE TABLE IF NOT EXISTS crm_context (merchant_id TEXT NOT NULL, identity_key TEXT NOT NULL, crm TEXT NOT NULL,
       context TEXT NOT NULL, observed_at_s INTEGER NOT NULL, updated_at INTEGER NOT NULL,
       PRIMARY KEY (merchant_id, identity_key)) WITHOUT ROWID;
     CREATE TABLE IF NOT EXISTS identities (merchant_id TEXT NOT NULL, identity_key TEXT NOT NULL, touchpoints TEXT NOT NULL,
       captured_at_s INTEGER NOT NULL, updated_at INTEGER NOT NULL, PRIMARY KEY (merchant_id, identity_key)) WITHOUT ROWID;
     CREATE TABLE IF NOT EXISTS identity_links (merchant_id TEXT NOT NULL, visitor_key TEXT NOT NULL, identity_key TEXT NOT NULL,
       linked_at INTEGER NOT NULL, PRIMARY KEY (merchant_id, visitor_key, identity_key)) WITHOUT ROWID;
     CREATE INDEX IF NOT EXISTS identity_links_by_identity ON identity_links (merchant_id, identity_key);
     CREATE TABLE IF NOT EXISTS oauth_tokens (merchant_id TEXT NOT NULL, destination TEXT NOT NULL, access_token TEXT NOT NULL,
       expires_at_ms INTEGER NOT NULL, PRIMARY KEY (merchant_id, destination)) WITHOUT ROWID;
     CREATE TABLE IF NOT EXISTS destination_health (merchant_id TEXT NOT NULL, destination TEXT NOT NULL,
       consecutive_failures INTEGER NOT NULL DEFAULT 0, parked_since INTEGER, next_probe_at INTEGER,
       probes INTEGER NOT NULL DEFAULT 0, updated_at INTEGER NOT NULL, PRIMARY KEY (merchant_id, destination)) WITHOUT ROWID;",
    // v2: visitor intent (`crate::intent_store`). A page view writes one activity row and
    // updates its visitor; signals are keyed per rule and day, so a rule scores once a day.
    "CREATE TABLE IF NOT EXISTS intent_settings (id INTEGER PRIMARY KEY CHECK (id = 1), settings TEXT NOT NULL,
       created_segment TEXT, updated_at INTEGER NOT NULL);
     CREATE TABLE IF NOT EXISTS intent_visitors (merchant_id TEXT NOT NULL, visitor_key TEXT NOT NULL, state TEXT NOT NULL,
       rank_key INTEGER NOT NULL, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, page_views INTEGER NOT NULL DEFAULT 0,
       qualified_at INTEGER, qualified_rule TEXT, due_at INTEGER, PRIMARY KEY (merchant_id, visitor_key)) WITHOUT ROWID;
     CREATE INDEX IF NOT EXISTS intent_visitors_by_rank ON intent_visitors (merchant_id, rank_key);
     CREATE INDEX IF NOT EXISTS intent_visitors_qualified ON intent_visitors (merchant_id, qualified_at) WHERE qualified_at IS NOT NULL;
     CREATE INDEX IF NOT EXISTS intent_visitors_due ON intent_visitors (due_at) WHERE due_at IS NOT NULL;
     CREATE TABLE IF NOT EXISTS intent_activity (merchant_id TEXT NOT NULL, visitor_key TEXT NOT NULL, at_ms INTEGER NOT NULL,
       kind TEXT NOT NULL, path TEXT NOT NULL, title TEXT, detail TEXT,
       PRIMARY KEY (merchant_id, visitor_key, at_ms, kind, path)) WITHOUT ROWID;
     CREATE TABLE IF NOT EXISTS intent_signals (merchant_id TEXT NOT NULL, visitor_key TEXT NOT NULL, rule TEXT NOT NULL,
       day INTEGER NOT NULL, at_ms INTEGER NOT NULL, path TEXT, points INTEGER NOT NULL, score_after REAL NOT NULL,
       PRIMARY KEY (merchant_id, visitor_key, rule, day)) WITHOUT ROWID;
     CREATE TABLE IF NOT EXISTS intent_alerts (merchant_id TEXT NOT NULL, visitor_key TEXT NOT NULL, qualification TEXT NOT NULL,
       created_at INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER, sent_at INTEGER, last_error TEXT,
       PRIMARY KEY (merchant_id, visitor_key)) WITHOUT ROWID;
     CREATE TABLE IF NOT EXISTS seed_uploads (merchant_id TEXT NOT NULL, segment TEXT NOT NULL, visitor_key TEXT NOT NULL,
       email_sha256 TEXT NOT NULL, uploaded_at INTEGER NOT NULL,
       PRIMARY KEY (merchant_id, segment, visitor_key, email_sha256)) WITHOUT ROWID;
     CREATE TABLE IF NOT EXISTS seed_runs (id INTEGER PRIMARY KEY, merchant_id TEXT NOT NULL, day TEXT NOT NULL,
       trigger TEXT NOT NULL, started_at INTEGER NOT NULL, finished_at INTEGER NOT NULL, status TEXT NOT NULL, segment TEXT,
       uploaded INTEGER NOT NULL, skipped_without_email INTEGER NOT NULL, failed INTEGER NOT NULL, error TEXT, segment_size INTEGER,
       segment_status TEXT);",
    // v3: the audit chain (`crate::audit`): one row per entry, kept until the merchant is
    // deleted (no retention window: SOC2 reviews read a year back and more).
    "CREATE TABLE IF NOT EXISTS audit_log (seq INTEGER PRIMARY KEY, merchant_id TEXT NOT NULL, at_ms INTEGER NOT NULL,
       kind TEXT NOT NULL, actor TEXT NOT NULL, subject TEXT NOT NULL, details TEXT NOT NULL, prev_hash TEXT NOT NULL,
       hash TEXT NOT NULL);
     CREATE TABLE IF NOT EXISTS audit_heads (day TEXT PRIMARY KEY, merchant_id TEXT NOT NULL, seq INTEGER NOT NULL,
       hash TEXT NOT NULL, public_key TEXT NOT NULL, signature TEXT NOT NULL, signed_at INTEGER NOT NULL) WITHOUT ROWID;",
    // v4: anomaly settings, incidents, and destination pauses (kept apart from the
    // consumer's parking state, which it rewrites).
    "ALTER TABLE destination_health ADD COLUMN paused_since INTEGER;
     ALTER TABLE destination_health ADD COLUMN paused_incident INTEGER;
     CREATE TABLE IF NOT EXISTS anomaly_settings (id INTEGER PRIMARY KEY CHECK (id = 1), settings TEXT NOT NULL,
       updated_at INTEGER NOT NULL);
     CREATE TABLE IF NOT EXISTS incidents (id INTEGER PRIMARY KEY, merchant_id TEXT NOT NULL, kind TEXT NOT NULL,
       destination TEXT, opened_at INTEGER NOT NULL, summary TEXT NOT NULL, figures TEXT NOT NULL, status TEXT NOT NULL,
       paused INTEGER NOT NULL DEFAULT 0, resolved_at INTEGER, resolved_by TEXT, actions TEXT);",
    // v5: daily RFM scores and LTV per subscriber (`crate::rfm`), replaced each day.
    "CREATE TABLE IF NOT EXISTS rfm_settings (id INTEGER PRIMARY KEY CHECK (id = 1), carry_on_events INTEGER NOT NULL,
       updated_at INTEGER NOT NULL);
     CREATE TABLE IF NOT EXISTS rfm_scores (merchant_id TEXT NOT NULL, customer_key TEXT NOT NULL, cohort TEXT NOT NULL,
       r INTEGER NOT NULL, f INTEGER NOT NULL, m INTEGER NOT NULL, segment TEXT NOT NULL, recency_days INTEGER,
       frequency INTEGER NOT NULL, monetary TEXT NOT NULL, ltv TEXT, computed_at INTEGER NOT NULL,
       PRIMARY KEY (merchant_id, customer_key)) WITHOUT ROWID;",
];

/// Tables holding the merchant's records, in the order whole-merchant deletion and
/// counting walk them (the views `deliveries` and `delivery_attempts` read
/// `canonical_events` and `attempt_log`).
pub const TABLES: [&str; 26] = [
    "rfm_scores",
    "rfm_settings",
    "incidents",
    "anomaly_settings",
    "audit_heads",
    "audit_log",
    "seed_runs",
    "seed_uploads",
    "intent_alerts",
    "intent_signals",
    "intent_activity",
    "intent_visitors",
    "intent_settings",
    "destination_health",
    "identity_links",
    "identities",
    "oauth_tokens",
    "attempt_log",
    "dead_letters",
    "canonical_events",
    "ignored_events",
    "customers",
    "crm_context",
    "subscription_state",
    "seen",
    "object_meta",
];

/// One delivery of an event, as its row keeps it (`canonical_events.deliveries`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub job_id: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_score: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_keys: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Taken off the queue while its destination is paused: resuming re-enqueues it
    /// (a job still on the queue is not, so nothing is sent twice).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

impl Delivery {
    /// A delivery not yet attempted (new, or replayed from a dead letter).
    fn pending(job_id: &str, now_ms: i64) -> Self {
        Delivery {
            job_id: job_id.to_string(),
            status: DeliveryStatus::Pending,
            attempts: 0,
            last_error: None,
            match_score: None,
            match_keys: None,
            created_at: now_ms,
            updated_at: now_ms,
            held: false,
        }
    }
}

type Deliveries = BTreeMap<String, Delivery>;

/// How many deliveries are pending, and since when the quietest of them has been.
fn pending_of(deliveries: &Deliveries) -> (i64, Option<i64>) {
    let pending: Vec<i64> = deliveries
        .values()
        .filter(|d| d.status == DeliveryStatus::Pending)
        .map(|d| d.updated_at)
        .collect();
    (pending.len() as i64, pending.iter().min().copied())
}

/// A newer capture replaces stored values field by field (`json_patch`); an older one
/// only fills what is missing.
const IDENTITY_UPSERT: &str = "ON CONFLICT (merchant_id, identity_key) DO UPDATE SET \
     touchpoints = CASE WHEN excluded.captured_at_s >= identities.captured_at_s \
       THEN json_patch(identities.touchpoints, excluded.touchpoints) \
       ELSE json_patch(excluded.touchpoints, identities.touchpoints) END, \
     captured_at_s = max(identities.captured_at_s, excluded.captured_at_s), \
     updated_at = excluded.updated_at";

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(RecordsError::of)
}

/// Applies the schema steps this database has not seen yet.
pub fn migrate(sql: &dyn Sql) -> Result<()> {
    sql.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)",
        vec![],
    )?;
    let current = sql
        .query("SELECT version FROM schema_version WHERE id = 1", vec![])?
        .first()
        .and_then(|r| r.get("version").and_then(Value::as_i64))
        .unwrap_or(0);
    for (index, step) in SCHEMA.iter().enumerate().skip(current.max(0) as usize) {
        for statement in step.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            sql.execute(statement, vec![])?;
        }
        sql.execute(
            "INSERT INTO schema_version (id, version) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET version = excluded.version",
            vec![Param::Int(index as i64 + 1)],
        )?;
    }
    Ok(())
}

/// One delivery attempt as logged, and the delivery's new state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub job_id: String,
    pub event_id: String,
    pub destination: String,
    pub attempt: u32,
    pub outcome: AttemptOutcome,
    pub http_status: Option<u16>,
    pub detail: Option<String>,
    pub request_url: Option<String>,
    pub duration_ms: i64,
    pub new_status: DeliveryStatus,
    pub match_score: Option<i64>,
    pub match_keys: Option<String>,
    pub at_ms: i64,
}

/// A claimed notification, recorded, its jobs ready for the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub dedup_key: String,
    /// The notification as planned (enriched events, the sibling wait decided).
    pub output: SourceOutput,
    pub plan_jobs: Vec<DeliveryJob>,
    /// Events whose jobs this call enqueues (not enqueued by a sibling before).
    pub enqueue_events: Vec<String>,
    pub summary: Value,
}

pub enum Claimed {
    Duplicate(Value),
    InFlight,
    Ready(Box<Prepared>),
}

/// A job admitted for one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Admitted {
    /// The caller's index of the message.
    pub message: usize,
    pub job: DeliveryJob,
    pub attempt: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AdmitRequest {
    /// Queue messages by the caller's index.
    pub messages: Vec<(usize, EventMessage)>,
    /// Destination (with corrections) → the conversions a correction may adjust there,
    /// as the merchant maps them.
    #[serde(default)]
    pub correction_names: BTreeMap<String, Vec<EventName>>,
    /// Destinations whose cached OAuth token the caller needs.
    #[serde(default)]
    pub token_destinations: Vec<String>,
    pub now_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AdmitAnswer {
    /// Pending jobs, events enriched with stored identity; in request order.
    pub admitted: Vec<Admitted>,
    /// Jobs with nothing to do (message index, job id): done already, erased, or
    /// another merchant's.
    pub dropped: Vec<(usize, String)>,
    pub health: BTreeMap<String, DestinationHealth>,
    /// Correction job id → the stored conversions it may adjust, with their status.
    pub corrections: BTreeMap<String, Vec<crate::destinations::StoredConversion>>,
    /// Destination → sealed access token still valid.
    pub tokens: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcomes {
    pub attempts: Vec<AttemptRecord>,
    pub dead_letters: Vec<DeadLetter>,
    pub health: Vec<(String, DestinationHealth)>,
    /// Pending jobs held or waiting on purpose (event id, destination): touched so the
    /// sweeper leaves them.
    pub touch: Vec<(String, String)>,
    /// (destination, sealed token, expires at ms)
    pub store_tokens: Vec<(String, String, i64)>,
    pub drop_tokens: Vec<String>,
    /// Pending jobs of a paused destination taken off the queue (event id, destination).
    #[serde(default)]
    pub held: Vec<(String, String)>,
    pub now_ms: i64,
}

/// The records of one merchant.
pub struct Records<'a> {
    sql: &'a dyn Sql,
    merchant_id: &'a str,
    memory: Memory<'a>,
}

/// What the merchant's object keeps in memory between requests, so the hot path reads
/// less: the audit chain's head (the object is its only writer, so an append writes
/// without reading first), the notifications between claim and commit, and the
/// subscription states it last read or wrote. A fresh instance starts empty and reads
/// what it needs; nothing here is the record.
#[derive(Debug, Default)]
pub struct ObjectMemory {
    audit_head: std::cell::RefCell<Option<(i64, String)>>,
    /// Dedup key → lease end (ms). A claim is held in memory only: one object runs
    /// one merchant's requests in one instance, and a crash forgets a claim without
    /// losing anything (nothing was committed; the retry finds the recorded events and
    /// enqueues none twice, and the sweeper sends what was recorded and never sent).
    /// The lease still ends, so a request that never finished cannot block retries.
    claims: std::cell::RefCell<HashMap<String, i64>>,
    /// Subscription states as last read or written here, by ordering key (`None`: none
    /// stored). Written through by `commit`, the only writer of subscription state, so
    /// a commit after the queue await needs no second read even when other requests
    /// ran meanwhile.
    subscriptions: std::cell::RefCell<HashMap<String, Option<SubscriptionState>>>,
}

impl ObjectMemory {
    /// Forgets everything (the store was wiped).
    pub fn clear(&self) {
        self.audit_head.replace(None);
        self.claims.borrow_mut().clear();
        self.subscriptions.borrow_mut().clear();
    }

    fn subscription(&self, ordering_key: &str) -> Option<Option<SubscriptionState>> {
        self.subscriptions.borrow().get(ordering_key).cloned()
    }

    fn remember_subscription(&self, ordering_key: &str, state: Option<SubscriptionState>) {
        let mut subscriptions = self.subscriptions.borrow_mut();
        if subscriptions.len() >= MAX_SUBSCRIPTIONS_IN_MEMORY {
            subscriptions.clear();
        }
        subscriptions.insert(ordering_key.to_string(), state);
    }

    fn forget_subscription(&self, ordering_key: &str) {
        self.subscriptions.borrow_mut().remove(ordering_key);
    }

    /// Claims `key` unless a live claim holds it.
    fn claim(&self, key: &str, now_ms: i64) -> bool {
        let mut claims = self.claims.borrow_mut();
        let record = claims.get(key).map(|lease_until| SeenRecord {
            committed: false,
            lease_until_ms: *lease_until,
        });
        if ledger::claim(record, now_ms) != ClaimOutcome::New {
            return false;
        }
        if claims.len() >= MAX_CLAIMS_IN_MEMORY {
            claims.retain(|_, lease_until| *lease_until > now_ms);
        }
        claims.insert(key.to_string(), now_ms + ledger::CLAIM_LEASE_MS);
        true
    }

    fn release(&self, key: &str) {
        self.claims.borrow_mut().remove(key);
    }
}

/// Expired claims are pruned when this many are held.
const MAX_CLAIMS_IN_MEMORY: usize = 1024;
/// Remembered subscription states are dropped (and read again) past this many.
const MAX_SUBSCRIPTIONS_IN_MEMORY: usize = 4096;

enum Memory<'a> {
    Own(ObjectMemory),
    Shared(&'a ObjectMemory),
}

impl Memory<'_> {
    fn get(&self) -> &ObjectMemory {
        match self {
            Memory::Own(memory) => memory,
            Memory::Shared(memory) => memory,
        }
    }
}

/// Whether the merchant carries RFM segments on events (`rfm_settings`); read here
/// for admission and by `RfmStore` for its settings.
pub fn rfm_carried_on_events(sql: &dyn Sql) -> Result<bool> {
    Ok(sql
        .query(
            "SELECT carry_on_events FROM rfm_settings WHERE id = 1",
            vec![],
        )?
        .first()
        .and_then(|r| r.get("carry_on_events").and_then(Value::as_i64))
        == Some(1))
}

/// What one statement reads for a notification before anything is written: whether
/// it was committed before, and the stored context its events are enriched with.
#[derive(Debug, Deserialize)]
struct IntakeRead {
    seen: Option<i64>,
    customer: Option<String>,
    crm: Option<String>,
    subscription: Option<String>,
    /// JSON array of this notification's event ids already enqueued.
    enqueued: Option<String>,
}

impl<'a> Records<'a> {
    pub fn new(sql: &'a dyn Sql, merchant_id: &'a str) -> Self {
        Records {
            sql,
            merchant_id,
            memory: Memory::Own(ObjectMemory::default()),
        }
    }

    /// Records that keep their memory in `memory`, which outlives them: the object's,
    /// shared by every request it serves.
    pub fn with_memory(mut self, memory: &'a ObjectMemory) -> Self {
        self.memory = Memory::Shared(memory);
        self
    }

    fn rows<T: DeserializeOwned>(&self, sql: &str, params: Vec<Param>) -> Result<Vec<T>> {
        self.sql
            .query(sql, params)?
            .into_iter()
            .map(|row| serde_json::from_value(Value::Object(row)).map_err(RecordsError::of))
            .collect()
    }

    fn exec(&self, sql: &str, params: Vec<Param>) -> Result<u64> {
        self.sql.execute(sql, params)
    }

    pub fn merchant_id(&self) -> &str {
        self.merchant_id
    }

    fn merchant(&self) -> Param {
        Param::from(self.merchant_id)
    }

    /// The merchant this object holds, once its first write named it.
    pub fn owner(sql: &dyn Sql) -> Result<Option<String>> {
        Ok(sql
            .query("SELECT merchant_id FROM object_meta WHERE id = 1", vec![])?
            .first()
            .and_then(|r| {
                r.get("merchant_id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }))
    }

    /// Which merchant and region this object belongs to; written once.
    pub fn remember_owner(&self, region: &str, now_ms: i64) -> Result<()> {
        self.exec(
            "INSERT INTO object_meta (id, merchant_id, region, created_at) VALUES (1, ?1, ?2, ?3) ON CONFLICT (id) DO NOTHING",
            vec![self.merchant(), region.into(), now_ms.into()],
        )?;
        Ok(())
    }

    // ---- intake ------------------------------------------------------------------

    /// Claims the notification, reads what is stored about it (one statement), plans,
    /// records events and jobs, and marks the events this call will enqueue. The caller
    /// enqueues, then calls [`Records::commit`] (or [`Records::abandon`] if the queue
    /// refused).
    pub fn prepare(
        &self,
        output: SourceOutput,
        merchant: &MerchantConfig,
        now_ms: i64,
    ) -> Result<Claimed> {
        let dedup_key = format!("{}:{}", output.source, output.source_event_id);
        let memory = self.memory.get();
        if !memory.claim(&dedup_key, now_ms) {
            return Ok(Claimed::InFlight);
        }
        let prepared = self.read_and_record(output, merchant, &dedup_key, now_ms);
        if !matches!(prepared, Ok(Claimed::Ready(_))) {
            memory.release(&dedup_key);
        }
        prepared
    }

    fn read_and_record(
        &self,
        output: SourceOutput,
        merchant: &MerchantConfig,
        dedup_key: &str,
        now_ms: i64,
    ) -> Result<Claimed> {
        let (seen, context, mut enqueued) = self.intake_read(dedup_key, &output)?;
        if seen {
            return Ok(Claimed::Duplicate(
                json!({ "status": "duplicate", "source_event_id": output.source_event_id }),
            ));
        }
        // Read just now, and every write goes through `commit`: current until then.
        self.memory
            .get()
            .remember_subscription(&output.ordering_key, context.subscription.clone());
        let read_ids: Vec<String> = output.events.iter().map(|e| e.event_id.clone()).collect();
        let plan = ingest::plan(output, merchant, &context);
        // Enrichment may reclassify an event (a renewal that converts a trial), which
        // gives it a new id: only those are looked up again.
        let reclassified: Vec<&str> = plan
            .output
            .events
            .iter()
            .map(|e| e.event_id.as_str())
            .filter(|id| !read_ids.iter().any(|read| read == id))
            .collect();
        if !reclassified.is_empty() {
            enqueued.extend(self.enqueued_among(&reclassified)?);
        }
        // A sibling notification already enqueued its own jobs for these.
        let mut enqueue_events: Vec<String> = Vec::with_capacity(plan.output.events.len());
        for event in &plan.output.events {
            if !enqueued.contains(&event.event_id) && !enqueue_events.contains(&event.event_id) {
                enqueue_events.push(event.event_id.clone());
            }
        }
        self.record_ingest(&plan.output, &plan.jobs, &enqueue_events, now_ms)?;
        let summary = summary(&plan, &enqueue_events);
        let jobs = plan
            .jobs
            .into_iter()
            .filter(|job| enqueue_events.contains(&job.event.event_id))
            .collect();
        Ok(Claimed::Ready(Box::new(Prepared {
            dedup_key: dedup_key.to_string(),
            output: plan.output,
            plan_jobs: jobs,
            enqueue_events,
            summary,
        })))
    }

    /// The jobs are on the queue: the notification is done, and the subscription's
    /// state moves on.
    pub fn commit(&self, prepared: &Prepared, now_ms: i64) -> Result<()> {
        let output = &prepared.output;
        let memory = self.memory.get();
        let committed = self.exec(
            "INSERT INTO seen (key, committed, lease_until, first_seen) VALUES (?1, 1, 0, ?2) \
             ON CONFLICT (key) DO UPDATE SET committed = 1",
            vec![prepared.dedup_key.as_str().into(), now_ms.into()],
        );
        memory.release(&prepared.dedup_key);
        committed?;
        if !output.events.is_empty() {
            self.append_audit(accepted_record(output), now_ms)?;
        }
        let Some(observation) = &output.subscription else {
            return Ok(());
        };
        let key = output.ordering_key.as_str();
        // Other requests may have moved the state on while this one awaited the queue.
        let current = match memory.subscription(key) {
            Some(known) => known,
            None => self.subscription_state(key)?,
        };
        if let Some(next) = ledger::next_state(current.as_ref(), observation) {
            let written = self.exec(
                "INSERT INTO subscription_state (ordering_key, state, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (ordering_key) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                vec![key.into(), to_json(&next)?.into(), now_ms.into()],
            );
            match written {
                Ok(_) => memory.remember_subscription(key, Some(next)),
                Err(err) => {
                    memory.forget_subscription(key);
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Releases a claim whose outcome is unknown (the request sending its group went
    /// away before the group finished), so the source's retry need not wait out the
    /// lease.
    pub fn release_claim(&self, dedup_key: &str) {
        self.memory.get().release(dedup_key);
    }

    /// The queue refused: the events are not enqueued and the claim is released, so
    /// the source's retry does it all again.
    pub fn abandon(&self, prepared: &Prepared) -> Result<()> {
        self.release_claim(&prepared.dedup_key);
        self.set_enqueued(&prepared.enqueue_events, None)
    }

    pub fn subscription_state(&self, ordering_key: &str) -> Result<Option<SubscriptionState>> {
        #[derive(Deserialize)]
        struct Row {
            state: String,
        }
        let rows: Vec<Row> = self.rows(
            "SELECT state FROM subscription_state WHERE ordering_key = ?1",
            vec![ordering_key.into()],
        )?;
        Ok(rows
            .first()
            .and_then(|r| serde_json::from_str(&r.state).ok()))
    }

    /// One statement for everything intake reads about a notification: whether it was
    /// committed before, the subscription's state, the known customer, the newest CRM
    /// deal context under its identities, and which of its events are already enqueued.
    fn intake_read(
        &self,
        dedup_key: &str,
        output: &SourceOutput,
    ) -> Result<(bool, StoredContext, Vec<String>)> {
        // CRM notifications carry the billing customer id of another source: there is
        // no stored customer or deal context to read for them.
        let from_crm = output.crm_context.is_some();
        let customer_id = output
            .events
            .iter()
            .find_map(|e| e.customer.customer_id.as_deref())
            .filter(|_| !from_crm);
        // Deal context is looked up under each event's email (the stored customer's
        // when the event has none) and billing customer id.
        let mut keys = Vec::new();
        let mut needs_stored_email = false;
        if !from_crm {
            for event in &output.events {
                match event.customer.email.as_deref() {
                    Some(email) => keys.push(CrmContext::email_key(email)),
                    None => needs_stored_email = true,
                }
                keys.extend(
                    event
                        .customer
                        .customer_id
                        .as_deref()
                        .map(CrmContext::customer_key),
                );
            }
            keys.sort();
            keys.dedup();
        }
        let event_ids: Vec<&str> = output.events.iter().map(|e| e.event_id.as_str()).collect();
        // `'email:' || lower(trim(email))` is `CrmContext::email_key` of a stored email
        // (stored trimmed; SQLite's lower() folds ASCII, as to_ascii_lowercase does).
        let rows: Vec<IntakeRead> = self.rows(
            "SELECT \
               (SELECT committed FROM seen WHERE key = ?1 AND committed = 1) AS seen, \
               (SELECT json_object('email', email, 'last_cancelled_at', last_cancelled_at_s, \
                  'last_cancelled_subscription', last_cancelled_subscription) FROM customers \
                WHERE merchant_id = ?2 AND source = ?3 AND customer_id = ?4) AS customer, \
               (SELECT context FROM crm_context WHERE merchant_id = ?2 AND ( \
                  identity_key IN (SELECT value FROM json_each(?5)) \
                  OR (?6 = 1 AND identity_key = (SELECT 'email:' || lower(trim(email)) FROM customers \
                      WHERE merchant_id = ?2 AND source = ?3 AND customer_id = ?4 AND email IS NOT NULL))) \
                ORDER BY observed_at_s DESC LIMIT 1) AS crm, \
               (SELECT state FROM subscription_state WHERE ordering_key = ?7) AS subscription, \
               (SELECT json_group_array(event_id) FROM canonical_events WHERE enqueued_at IS NOT NULL \
                  AND event_id IN (SELECT value FROM json_each(?8))) AS enqueued",
            vec![
                dedup_key.into(),
                self.merchant(),
                output.source.into(),
                customer_id.into(),
                to_json(&keys)?.into(),
                i64::from(needs_stored_email && customer_id.is_some()).into(),
                output.ordering_key.as_str().into(),
                to_json(&event_ids)?.into(),
            ],
        )?;
        let Some(read) = rows.into_iter().next() else {
            return Err(RecordsError("the intake read returned no row".into()));
        };
        fn parse<T: DeserializeOwned>(text: Option<String>) -> Option<T> {
            text.and_then(|t| serde_json::from_str(&t).ok())
        }
        let customer: Option<KnownCustomer> = parse(read.customer);
        let context = StoredContext {
            subscription: parse(read.subscription),
            customer,
            crm: if from_crm { None } else { parse(read.crm) },
        };
        let enqueued: Vec<String> = parse(read.enqueued).unwrap_or_default();
        Ok((read.seen.is_some(), context, enqueued))
    }

    /// Records what one verified notification produced: events (siblings merged),
    /// pending deliveries, an ignored marker, customer identity (newest wins), click
    /// ids, visitor links, CRM context and cancellations.
    pub fn record_ingest(
        &self,
        output: &SourceOutput,
        jobs: &[DeliveryJob],
        enqueue_events: &[String],
        now_ms: i64,
    ) -> Result<()> {
        for event in &output.events {
            let deliveries: Deliveries = jobs
                .iter()
                .filter(|job| job.event.event_id == event.event_id)
                .map(|job| {
                    (
                        job.destination.clone(),
                        Delivery::pending(&job.job_id, now_ms),
                    )
                })
                .collect();
            let (pending, pending_since) = pending_of(&deliveries);
            let enqueued_at = enqueue_events.contains(&event.event_id).then_some(now_ms);
            // A sibling fills the stored event's gaps and adds deliveries it lacks;
            // what is stored wins for both.
            self.exec(
                "INSERT INTO canonical_events (event_id, merchant_id, name, source, source_event_id, \
                 source_event_type, occurred_at_s, payload, received_at, ordering_key, enqueued_at, deliveries, \
                 pending, pending_since) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
                 ON CONFLICT (event_id) DO UPDATE SET \
                 payload = json_patch(excluded.payload, canonical_events.payload), \
                 enqueued_at = COALESCE(canonical_events.enqueued_at, excluded.enqueued_at), \
                 deliveries = json_patch(excluded.deliveries, canonical_events.deliveries), \
                 pending = (SELECT count(*) FROM json_each(json_patch(excluded.deliveries, canonical_events.deliveries)) \
                   WHERE json_extract(value, '$.status') = 'pending'), \
                 pending_since = COALESCE(min(canonical_events.pending_since, excluded.pending_since), \
                   canonical_events.pending_since, excluded.pending_since)",
                vec![
                    event.event_id.as_str().into(),
                    self.merchant(),
                    event.name.as_str().into(),
                    event.source.as_str().into(),
                    event.source_event_id.as_str().into(),
                    event.source_event_type.as_str().into(),
                    event.occurred_at.into(),
                    to_json(event)?.into(),
                    now_ms.into(),
                    output.ordering_key.as_str().into(),
                    enqueued_at.into(),
                    to_json(&deliveries)?.into(),
                    pending.into(),
                    pending_since.into(),
                ],
            )?;
        }
        if let Some(reason) = &output.ignored_reason {
            self.exec(
                "INSERT INTO ignored_events (merchant_id, source, source_event_id, source_event_type, reason, received_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                vec![
                    self.merchant(),
                    output.source.into(),
                    output.source_event_id.as_str().into(),
                    output.source_event_type.as_str().into(),
                    reason.as_str().into(),
                    now_ms.into(),
                ],
            )?;
        }
        if let Some(customer) = &output.customer {
            self.upsert_customer(output.source, customer, now_ms)?;
        }
        for event in output.events.iter().filter(|e| !e.touchpoints.is_empty()) {
            let captured_at = event.touchpoints.captured_at.unwrap_or(event.occurred_at);
            for key in identity::keys(event) {
                self.upsert_identity(&key, &event.touchpoints, captured_at, now_ms)?;
            }
        }
        // The merchant's server names the pixel visitor this person was.
        for event in &output.events {
            let (Some(visitor_id), keys) = (&event.touchpoints.visitor_id, identity::keys(event))
            else {
                continue;
            };
            if !keys.is_empty() {
                self.link_visitor(&crate::pixel::visitor_key(visitor_id), &keys, now_ms)?;
            }
        }
        if let Some(context) = &output.crm_context {
            let json = to_json(context)?;
            for key in &context.identity_keys {
                // Newest deal context wins; an older redelivery never overwrites it.
                self.exec(
                    "INSERT INTO crm_context (merchant_id, identity_key, crm, context, observed_at_s, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (merchant_id, identity_key) DO UPDATE SET \
                     crm = excluded.crm, context = excluded.context, observed_at_s = excluded.observed_at_s, \
                     updated_at = excluded.updated_at WHERE excluded.observed_at_s >= crm_context.observed_at_s",
                    vec![
                        self.merchant(),
                        key.as_str().into(),
                        context.crm.as_str().into(),
                        json.as_str().into(),
                        context.observed_at.into(),
                        now_ms.into(),
                    ],
                )?;
            }
        }
        for event in &output.events {
            if event.name == EventName::SubscriptionCancelled {
                self.remember_cancellation(event, now_ms)?;
            }
        }
        Ok(())
    }

    fn upsert_customer(&self, source: &str, customer: &CustomerRecord, now_ms: i64) -> Result<()> {
        // An older customer event never overwrites a newer one.
        self.exec(
            "INSERT INTO customers (merchant_id, source, customer_id, email, observed_at_s, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (merchant_id, source, customer_id) DO UPDATE SET \
             email = excluded.email, observed_at_s = excluded.observed_at_s, updated_at = excluded.updated_at \
             WHERE excluded.observed_at_s >= customers.observed_at_s",
            vec![
                self.merchant(),
                source.into(),
                customer.customer_id.as_str().into(),
                customer.email.as_deref().into(),
                customer.observed_at.into(),
                now_ms.into(),
            ],
        )?;
        Ok(())
    }

    fn upsert_identity(
        &self,
        key: &str,
        touchpoints: &Touchpoints,
        captured_at_s: i64,
        now_ms: i64,
    ) -> Result<()> {
        self.exec(
            &format!(
                "INSERT INTO identities (merchant_id, identity_key, touchpoints, captured_at_s, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) {IDENTITY_UPSERT}"
            ),
            vec![
                self.merchant(),
                key.into(),
                to_json(&touchpoints.for_store())?.into(),
                captured_at_s.into(),
                now_ms.into(),
            ],
        )?;
        Ok(())
    }

    /// Links a pixel visitor to the keys of the person it turned out to be, then copies
    /// what the pixel holds for the visitor to every key it is linked to.
    fn link_visitor(&self, visitor_key: &str, keys: &[String], now_ms: i64) -> Result<()> {
        for key in keys {
            self.exec(
                "INSERT INTO identity_links (merchant_id, visitor_key, identity_key, linked_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (merchant_id, visitor_key, identity_key) \
                 DO UPDATE SET linked_at = excluded.linked_at",
                vec![
                    self.merchant(),
                    visitor_key.into(),
                    key.as_str().into(),
                    now_ms.into(),
                ],
            )?;
        }
        // WHERE is required before an upsert on INSERT … SELECT (SQLite parsing rule).
        self.exec(
            &format!(
                "INSERT INTO identities (merchant_id, identity_key, touchpoints, captured_at_s, updated_at) \
                 SELECT l.merchant_id, l.identity_key, v.touchpoints, v.captured_at_s, ?3 \
                 FROM identity_links l JOIN identities v \
                   ON v.merchant_id = l.merchant_id AND v.identity_key = l.visitor_key \
                 WHERE l.merchant_id = ?1 AND l.visitor_key = ?2 {IDENTITY_UPSERT}"
            ),
            vec![self.merchant(), visitor_key.into(), now_ms.into()],
        )?;
        Ok(())
    }

    /// One pixel beacon: the visitor's capture, its new links, and the copy to every
    /// person it is linked to.
    pub fn record_visitor(&self, capture: &Capture, now_ms: i64) -> Result<()> {
        if !capture.reports_ids {
            return Ok(());
        }
        let captured_at = capture.touchpoints.captured_at.unwrap_or(now_ms / 1000);
        self.upsert_identity(
            &capture.visitor_key,
            &capture.touchpoints,
            captured_at,
            now_ms,
        )?;
        self.link_visitor(&capture.visitor_key, &capture.link_keys, now_ms)
    }

    /// The newest cancellation per customer, for the reactivation rule.
    fn remember_cancellation(&self, event: &CanonicalEvent, now_ms: i64) -> Result<()> {
        let Some(customer_id) = &event.customer.customer_id else {
            return Ok(());
        };
        let cancelled_at = event
            .subscription
            .effective_end_at
            .unwrap_or(event.occurred_at);
        self.exec(
            "INSERT INTO customers (merchant_id, source, customer_id, email, observed_at_s, updated_at, \
             last_cancelled_at_s, last_cancelled_subscription) VALUES (?1, ?2, ?3, NULL, 0, ?4, ?5, ?6) \
             ON CONFLICT (merchant_id, source, customer_id) DO UPDATE SET \
             last_cancelled_at_s = excluded.last_cancelled_at_s, \
             last_cancelled_subscription = excluded.last_cancelled_subscription, updated_at = excluded.updated_at \
             WHERE customers.last_cancelled_at_s IS NULL OR excluded.last_cancelled_at_s >= customers.last_cancelled_at_s",
            vec![
                self.merchant(),
                event.source.as_str().into(),
                customer_id.as_str().into(),
                now_ms.into(),
                cancelled_at.into(),
                event.subscription.subscription_id.as_deref().into(),
            ],
        )?;
        Ok(())
    }

    /// Of these events, the ones whose jobs are on the queue already.
    fn enqueued_among(&self, event_ids: &[&str]) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Row {
            event_id: String,
        }
        let rows: Vec<Row> = self.rows(
            "SELECT event_id FROM canonical_events WHERE enqueued_at IS NOT NULL \
             AND event_id IN (SELECT value FROM json_each(?1))",
            vec![to_json(&event_ids)?.into()],
        )?;
        Ok(rows.into_iter().map(|r| r.event_id).collect())
    }

    fn set_enqueued(&self, event_ids: &[String], at_ms: Option<i64>) -> Result<()> {
        if event_ids.is_empty() {
            return Ok(());
        }
        self.exec(
            "UPDATE canonical_events SET enqueued_at = ?2 WHERE event_id IN (SELECT value FROM json_each(?1))",
            vec![to_json(&event_ids)?.into(), at_ms.into()],
        )?;
        Ok(())
    }

    // ---- delivery ----------------------------------------------------------------

    /// Admission for one queue batch of this merchant: which jobs are still pending
    /// (and their attempt number), their events with identity learnt since, the
    /// destinations' health, Google Ads correction candidates and cached tokens.
    pub fn admit(&self, request: AdmitRequest) -> Result<AdmitAnswer> {
        let mut answer = AdmitAnswer::default();
        let referenced: Vec<&str> = request
            .messages
            .iter()
            .filter(|(_, m)| m.event.is_none())
            .map(|(_, m)| m.event_id.as_str())
            .collect();
        let stored = self.events_by_id(&referenced)?;
        let mut jobs: Vec<(usize, DeliveryJob)> = Vec::new();
        for (message, queued) in request.messages {
            let event = match queued.event {
                Some(event) if event.merchant_id == self.merchant_id => Some(event),
                Some(_) => None,
                // Erased or purged since: nothing may be sent.
                None => stored
                    .get(&queued.event_id)
                    .filter(|_| queued.merchant_id == self.merchant_id)
                    .cloned(),
            };
            for job in queued.jobs {
                match &event {
                    Some(event) => jobs.push((
                        message,
                        DeliveryJob {
                            job_id: job.job_id,
                            destination: job.destination,
                            event: event.clone(),
                        },
                    )),
                    None => answer.dropped.push((message, job.job_id)),
                }
            }
        }
        let ids: Vec<&str> = jobs
            .iter()
            .map(|(_, j)| j.event.event_id.as_str())
            .collect();
        let rows = self.deliveries_of(&ids)?;
        let mut seen_jobs = std::collections::HashSet::new();
        let mut admitted = Vec::new();
        for (message, job) in jobs {
            let row = rows
                .get(&job.event.event_id)
                .and_then(|deliveries| deliveries.get(&job.destination))
                .filter(|d| d.job_id == job.job_id)
                .map(|d| (d.status, d.attempts));
            match row.as_ref() {
                // No delivery: erased, or the merchant deleted since.
                None => answer.dropped.push((message, job.job_id)),
                Some((status, _)) if *status != DeliveryStatus::Pending => {
                    answer.dropped.push((message, job.job_id))
                }
                // The same job twice in one batch (a sweep and its original) goes once.
                Some(_) if !seen_jobs.insert(job.job_id.clone()) => {
                    answer.dropped.push((message, job.job_id))
                }
                Some((_, attempts)) => admitted.push(Admitted {
                    message,
                    attempt: attempts + 1,
                    job,
                }),
            }
        }
        let enriched = self.enrich_identities(admitted.iter().map(|a| &a.job.event))?;
        for member in &mut admitted {
            if let Some(event) = enriched.get(&member.job.event.event_id) {
                member.job.event = event.clone();
            }
        }
        let mut destinations: Vec<&str> = admitted
            .iter()
            .map(|a| a.job.destination.as_str())
            .collect();
        destinations.sort();
        destinations.dedup();
        answer.health = self.destination_health(&destinations)?;
        for member in &admitted {
            let corrections = crate::destinations::find(&member.job.destination)
                .and_then(|spec| spec.corrections)
                .filter(|c| (c.applies)(&member.job.event));
            let names = request.correction_names.get(&member.job.destination);
            if let (Some(_), Some(names)) = (corrections, names) {
                let candidates =
                    self.correction_candidates(&member.job.destination, &member.job.event, names)?;
                answer
                    .corrections
                    .insert(member.job.job_id.clone(), candidates);
            }
        }
        for destination in &request.token_destinations {
            if let Some(token) = self.cached_token(destination, request.now_ms)? {
                answer.tokens.insert(destination.clone(), token);
            }
        }
        self.carry_rfm(&mut admitted)?;
        answer.admitted = admitted;
        Ok(answer)
    }

    /// Where the merchant turned it on, the customer's RFM segment and predicted LTV
    /// travel with the event (`rfm_segment`, `ltv_model` properties).
    fn carry_rfm(&self, admitted: &mut [Admitted]) -> Result<()> {
        if !rfm_carried_on_events(self.sql)? {
            return Ok(());
        }
        for member in admitted.iter_mut() {
            let event = &mut member.job.event;
            let Some(key) = identity::keys(event).into_iter().next() else {
                continue;
            };
            let rows = self.sql.query(
                "SELECT segment, ltv FROM rfm_scores WHERE merchant_id = ?1 AND customer_key = ?2",
                vec![self.merchant(), key.into()],
            )?;
            let Some(row) = rows.first() else { continue };
            if let Some(segment) = row.get("segment").and_then(Value::as_str) {
                event
                    .properties
                    .insert("rfm_segment".into(), segment.to_string());
            }
            let ltv = row
                .get("ltv")
                .and_then(Value::as_str)
                .and_then(|t| serde_json::from_str::<Value>(t).ok());
            if let Some(value) = ltv.as_ref().and_then(|l| l["predicted_ltv"].as_f64()) {
                event
                    .properties
                    .insert("ltv_model".into(), format!("{value:.2}"));
            }
        }
        Ok(())
    }

    /// Everything one queue batch decided for this merchant, in one call: per event, one
    /// write of its deliveries and one attempt-log row.
    pub fn record_outcomes(&self, outcomes: &Outcomes) -> Result<()> {
        let now = outcomes.now_ms;
        let mut events: Vec<&str> = outcomes
            .attempts
            .iter()
            .map(|a| a.event_id.as_str())
            .chain(
                outcomes
                    .dead_letters
                    .iter()
                    .map(|l| l.job.event.event_id.as_str()),
            )
            .chain(outcomes.touch.iter().map(|(event, _)| event.as_str()))
            .chain(outcomes.held.iter().map(|(event, _)| event.as_str()))
            .collect();
        events.sort();
        events.dedup();
        let mut rows = self.deliveries_of(&events)?;
        for record in &outcomes.attempts {
            if let Some(delivery) = rows
                .get_mut(&record.event_id)
                .and_then(|d| d.get_mut(&record.destination))
            {
                delivery.status = record.new_status;
                delivery.attempts = record.attempt;
                delivery.held = false;
                delivery.last_error = if record.outcome.is_success() {
                    None
                } else {
                    record.detail.clone()
                };
                delivery.match_score = record.match_score.or(delivery.match_score);
                delivery.match_keys = record.match_keys.clone().or(delivery.match_keys.take());
                delivery.updated_at = record.at_ms;
            }
        }
        for (event, destination) in &outcomes.touch {
            if let Some(delivery) = rows.get_mut(event).and_then(|d| d.get_mut(destination)) {
                if delivery.status == DeliveryStatus::Pending {
                    delivery.updated_at = now;
                }
            }
        }
        for (event, destination) in &outcomes.held {
            if let Some(delivery) = rows.get_mut(event).and_then(|d| d.get_mut(destination)) {
                if delivery.status == DeliveryStatus::Pending {
                    delivery.held = true;
                    delivery.updated_at = now;
                }
            }
        }
        for letter in &outcomes.dead_letters {
            let job = &letter.job;
            if let Some(delivery) = rows
                .get_mut(&job.event.event_id)
                .and_then(|d| d.get_mut(&job.destination))
            {
                delivery.status = DeliveryStatus::DeadLettered;
                delivery.last_error = Some(letter.last_error.clone());
                delivery.updated_at = now;
            }
            self.insert_dead_letter(letter, now)?;
        }
        self.put_deliveries(&rows)?;
        let mut by_event: BTreeMap<&str, Vec<&AttemptRecord>> = BTreeMap::new();
        for record in &outcomes.attempts {
            by_event
                .entry(record.event_id.as_str())
                .or_default()
                .push(record);
        }
        // One attempt-log row per event, all in one statement.
        let mut logs = Vec::with_capacity(by_event.len());
        for (event_id, records) in by_event {
            let attempts: Vec<Value> = records
                .iter()
                .map(|r| {
                    json!({
                        "job_id": r.job_id, "destination": r.destination, "attempt": r.attempt,
                        "outcome": r.outcome, "http_status": r.http_status, "detail": r.detail,
                        "request_url": r.request_url, "duration_ms": r.duration_ms,
                    })
                })
                .collect();
            let attempted_at = records.iter().map(|r| r.at_ms).max().unwrap_or(now);
            logs.push(json!([event_id, attempted_at, to_json(&attempts)?]));
        }
        if !logs.is_empty() {
            self.exec(
                "INSERT INTO attempt_log (event_id, merchant_id, attempted_at, attempts) \
                 SELECT json_extract(value, '$[0]'), ?2, json_extract(value, '$[1]'), json_extract(value, '$[2]') \
                 FROM json_each(?1)",
                vec![to_json(&logs)?.into(), self.merchant()],
            )?;
        }
        for (destination, health) in &outcomes.health {
            self.put_destination_health(destination, health, now)?;
        }
        for (destination, sealed, expires_at_ms) in &outcomes.store_tokens {
            self.exec(
                "INSERT INTO oauth_tokens (merchant_id, destination, access_token, expires_at_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (merchant_id, destination) DO UPDATE SET access_token = excluded.access_token, \
                 expires_at_ms = excluded.expires_at_ms",
                vec![
                    self.merchant(),
                    destination.as_str().into(),
                    sealed.as_str().into(),
                    (*expires_at_ms).into(),
                ],
            )?;
        }
        for destination in &outcomes.drop_tokens {
            self.exec(
                "DELETE FROM oauth_tokens WHERE merchant_id = ?1 AND destination = ?2",
                vec![self.merchant(), destination.as_str().into()],
            )?;
        }
        Ok(())
    }

    /// One JSON column of these events, parsed (absent: erased or purged).
    fn event_column<T: DeserializeOwned>(
        &self,
        column: &'static str,
        event_ids: &[&str],
    ) -> Result<HashMap<String, T>> {
        if event_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = self.sql.query(
            &format!(
                "SELECT event_id, {column} AS value FROM canonical_events \
                 WHERE event_id IN (SELECT value FROM json_each(?1))"
            ),
            vec![to_json(&event_ids)?.into()],
        )?;
        rows.into_iter()
            .map(|row| {
                let id = row
                    .get("event_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let text = row.get("value").and_then(Value::as_str).unwrap_or_default();
                let value = serde_json::from_str(text).map_err(RecordsError::of)?;
                Ok((id.to_string(), value))
            })
            .collect()
    }

    /// The deliveries of these events (absent: erased or purged).
    fn deliveries_of(&self, event_ids: &[&str]) -> Result<HashMap<String, Deliveries>> {
        self.event_column("deliveries", event_ids)
    }

    /// Writes events' deliveries back, with their pending counts: one statement for the
    /// whole batch (the consumer settles up to a hundred events at a time).
    fn put_deliveries(&self, rows: &HashMap<String, Deliveries>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut updates = Vec::with_capacity(rows.len());
        for (event_id, deliveries) in rows {
            let (pending, pending_since) = pending_of(deliveries);
            updates.push(json!([
                event_id,
                to_json(deliveries)?,
                pending,
                pending_since
            ]));
        }
        self.exec(
            "UPDATE canonical_events SET deliveries = json_extract(u.value, '$[1]'), \
             pending = json_extract(u.value, '$[2]'), pending_since = json_extract(u.value, '$[3]') \
             FROM json_each(?1) AS u WHERE canonical_events.event_id = json_extract(u.value, '$[0]')",
            vec![to_json(&updates)?.into()],
        )?;
        Ok(())
    }

    /// Stored canonical events by id. A missing id was erased or purged.
    pub fn events_by_id(&self, event_ids: &[&str]) -> Result<HashMap<String, CanonicalEvent>> {
        self.event_column("payload", event_ids)
    }

    /// Identity enrichment at send time: a customer event, or a signup with click ids,
    /// may have arrived after the billing event.
    fn enrich_identities<'e>(
        &self,
        events: impl Iterator<Item = &'e CanonicalEvent>,
    ) -> Result<HashMap<String, CanonicalEvent>> {
        #[derive(Deserialize)]
        struct EmailRow {
            source: String,
            customer_id: String,
            email: Option<String>,
        }
        #[derive(Deserialize)]
        struct IdentityRow {
            identity_key: String,
            touchpoints: String,
        }
        let mut enriched: HashMap<String, CanonicalEvent> = HashMap::new();
        for event in events {
            enriched
                .entry(event.event_id.clone())
                .or_insert_with(|| event.clone());
        }
        let without_email: Vec<(String, String)> = enriched
            .values()
            .filter(|e| e.customer.email.is_none())
            .filter_map(|e| Some((e.source.clone(), e.customer.customer_id.clone()?)))
            .collect();
        if !without_email.is_empty() {
            let rows: Vec<EmailRow> = self.rows(
                "SELECT source, customer_id, email FROM customers WHERE merchant_id = ?1 AND (source, customer_id) IN \
                 (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?2))",
                vec![self.merchant(), to_json(&without_email)?.into()],
            )?;
            let emails: HashMap<(String, String), String> = rows
                .into_iter()
                .filter_map(|r| Some(((r.source, r.customer_id), r.email?)))
                .collect();
            for event in enriched.values_mut() {
                if event.customer.email.is_none() {
                    if let Some(customer_id) = &event.customer.customer_id {
                        event.customer.email = emails
                            .get(&(event.source.clone(), customer_id.clone()))
                            .cloned();
                    }
                }
            }
        }
        let mut keys: Vec<String> = enriched.values().flat_map(identity::keys).collect();
        keys.sort();
        keys.dedup();
        if keys.is_empty() {
            return Ok(enriched);
        }
        let rows: Vec<IdentityRow> = self.rows(
            "SELECT identity_key, touchpoints FROM identities WHERE merchant_id = ?1 \
             AND identity_key IN (SELECT value FROM json_each(?2)) ORDER BY captured_at_s DESC",
            vec![self.merchant(), to_json(&keys)?.into()],
        )?;
        let records: Vec<(String, Touchpoints)> = rows
            .into_iter()
            .filter_map(|r| Some((r.identity_key, serde_json::from_str(&r.touchpoints).ok()?)))
            .collect();
        for event in enriched.values_mut() {
            let own_keys = identity::keys(event);
            let stored = identity::merge_freshest_first(
                records
                    .iter()
                    .filter(|(key, _)| own_keys.contains(key))
                    .map(|(_, touchpoints)| touchpoints),
            );
            if let Some(stored) = stored {
                event.touchpoints.fill_from(&stored);
            }
        }
        Ok(enriched)
    }

    /// Every mapped conversion of the subscription a correction corrects, up to the
    /// correction's time, with the status of its delivery to `destination`, newest first.
    pub fn correction_candidates(
        &self,
        destination: &str,
        correction: &CanonicalEvent,
        names: &[EventName],
    ) -> Result<Vec<crate::destinations::StoredConversion>> {
        #[derive(Deserialize)]
        struct Row {
            payload: String,
            status: Option<DeliveryStatus>,
        }
        let Some(subscription_id) = correction.subscription.subscription_id.as_deref() else {
            return Ok(Vec::new());
        };
        let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        let rows: Vec<Row> = self.rows(
            "SELECT e.payload, json_extract(e.deliveries, ?4) AS status FROM canonical_events e WHERE e.merchant_id = ?1 \
             AND json_extract(e.payload, '$.subscription.subscription_id') = ?2 \
             AND e.name IN (SELECT value FROM json_each(?3)) AND e.occurred_at_s <= ?5 \
             ORDER BY e.occurred_at_s DESC LIMIT 100",
            vec![
                self.merchant(),
                subscription_id.into(),
                to_json(&names)?.into(),
                format!("$.\"{destination}\".status").into(),
                correction.occurred_at.into(),
            ],
        )?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Some((serde_json::from_str(&r.payload).ok()?, r.status)))
            .collect())
    }

    /// The health of these destinations; absent ones are healthy.
    pub fn destination_health(
        &self,
        destinations: &[&str],
    ) -> Result<BTreeMap<String, DestinationHealth>> {
        #[derive(Deserialize)]
        struct Row {
            destination: String,
            consecutive_failures: i64,
            parked_since: Option<i64>,
            next_probe_at: Option<i64>,
            probes: i64,
            paused_since: Option<i64>,
        }
        if destinations.is_empty() {
            return Ok(BTreeMap::new());
        }
        let rows: Vec<Row> = self.rows(
            "SELECT destination, consecutive_failures, parked_since, next_probe_at, probes, paused_since \
             FROM destination_health WHERE merchant_id = ?1 AND destination IN (SELECT value FROM json_each(?2))",
            vec![self.merchant(), to_json(&destinations)?.into()],
        )?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    r.destination,
                    DestinationHealth {
                        consecutive_failures: r.consecutive_failures.max(0) as u32,
                        parked_since: r.parked_since,
                        next_probe_at: r.next_probe_at,
                        probes: r.probes.max(0) as u32,
                        paused_since: r.paused_since,
                    },
                )
            })
            .collect())
    }

    fn put_destination_health(
        &self,
        destination: &str,
        health: &DestinationHealth,
        now_ms: i64,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO destination_health (merchant_id, destination, consecutive_failures, parked_since, \
             next_probe_at, probes, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (merchant_id, destination) DO UPDATE SET consecutive_failures = excluded.consecutive_failures, \
             parked_since = excluded.parked_since, next_probe_at = excluded.next_probe_at, probes = excluded.probes, \
             updated_at = excluded.updated_at",
            vec![
                self.merchant(),
                destination.into(),
                i64::from(health.consecutive_failures).into(),
                health.parked_since.into(),
                health.next_probe_at.into(),
                i64::from(health.probes).into(),
                now_ms.into(),
            ],
        )?;
        Ok(())
    }

    /// Destinations an anomaly or an operator has paused.
    pub fn paused_destinations(&self) -> Result<std::collections::BTreeSet<String>> {
        Ok(self
            .sql
            .query(
                "SELECT destination FROM destination_health WHERE merchant_id = ?1 AND paused_since IS NOT NULL",
                vec![self.merchant()],
            )?
            .iter()
            .filter_map(|r| r.get("destination").and_then(Value::as_str).map(str::to_string))
            .collect())
    }

    /// Parked destinations, for the merchant's views.
    pub fn parked_destinations(&self) -> Result<Vec<Value>> {
        Ok(self
            .sql
            .query(
                "SELECT destination, parked_since, next_probe_at, probes, consecutive_failures \
                 FROM destination_health WHERE merchant_id = ?1 AND parked_since IS NOT NULL",
                vec![self.merchant()],
            )?
            .into_iter()
            .map(Value::Object)
            .collect())
    }

    fn cached_token(&self, destination: &str, now_ms: i64) -> Result<Option<String>> {
        #[derive(Deserialize)]
        struct Row {
            access_token: String,
        }
        let rows: Vec<Row> = self.rows(
            "SELECT access_token FROM oauth_tokens WHERE merchant_id = ?1 AND destination = ?2 AND expires_at_ms > ?3",
            vec![self.merchant(), destination.into(), now_ms.into()],
        )?;
        Ok(rows.into_iter().next().map(|r| r.access_token))
    }

    /// Keeps a dead letter, replayable, and marks its delivery dead-lettered.
    pub fn record_dead_letter(&self, letter: &DeadLetter, now_ms: i64) -> Result<()> {
        self.record_outcomes(&Outcomes {
            dead_letters: vec![letter.clone()],
            now_ms,
            ..Outcomes::default()
        })
    }

    /// The letter's job carries the stored event when there is one (siblings merged
    /// into it; a job that travelled by reference has no other).
    fn insert_dead_letter(&self, letter: &DeadLetter, now_ms: i64) -> Result<()> {
        let mut job = letter.job.clone();
        if let Some(stored) = self
            .events_by_id(&[job.event.event_id.as_str()])?
            .remove(&job.event.event_id)
        {
            job.event = stored;
        }
        self.exec(
            "INSERT INTO dead_letters (job_id, event_id, merchant_id, destination, attempts, reason, last_error, job, dead_lettered_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (job_id) DO UPDATE SET attempts = excluded.attempts, \
             reason = excluded.reason, last_error = excluded.last_error, dead_lettered_at = excluded.dead_lettered_at, replayed_at = NULL",
            vec![
                job.job_id.as_str().into(),
                job.event.event_id.as_str().into(),
                self.merchant(),
                job.destination.as_str().into(),
                i64::from(letter.attempts).into(),
                letter.reason.as_str().into(),
                letter.last_error.as_str().into(),
                to_json(&job)?.into(),
                now_ms.into(),
            ],
        )?;
        Ok(())
    }

    /// Pending jobs nobody has touched for a while: never attempted since
    /// `unattempted_before`, or retried but silent since `attempted_before` (longer than
    /// any queue delay). Oldest first, with their events; found through the index of
    /// events with pending deliveries.
    pub fn stale_jobs(
        &self,
        unattempted_before: i64,
        attempted_before: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryJob>> {
        #[derive(Deserialize)]
        struct Row {
            payload: String,
            deliveries: String,
        }
        let rows: Vec<Row> = self.rows(
            "SELECT payload, deliveries FROM canonical_events WHERE pending > 0 AND pending_since < ?1 \
             ORDER BY pending_since LIMIT ?2",
            vec![unattempted_before.max(attempted_before).into(), limit.into()],
        )?;
        // A paused destination's jobs wait for its resumption, not the sweeper.
        let paused = self.paused_destinations()?;
        let mut jobs = Vec::new();
        for row in rows {
            let (Ok(event), Ok(deliveries)) = (
                serde_json::from_str::<CanonicalEvent>(&row.payload),
                serde_json::from_str::<Deliveries>(&row.deliveries),
            ) else {
                continue;
            };
            for (destination, delivery) in deliveries {
                if paused.contains(&destination) {
                    continue;
                }
                let lost = delivery.status == DeliveryStatus::Pending
                    && ((delivery.attempts == 0 && delivery.updated_at < unattempted_before)
                        || delivery.updated_at < attempted_before);
                if lost {
                    jobs.push(DeliveryJob {
                        job_id: delivery.job_id,
                        destination,
                        event: event.clone(),
                    });
                }
            }
        }
        Ok(jobs)
    }

    /// Marks jobs as just worked on (re-enqueued), so the sweeper leaves them alone.
    pub fn touch_jobs(&self, jobs: &[DeliveryJob], now_ms: i64) -> Result<()> {
        self.record_outcomes(&Outcomes {
            touch: jobs
                .iter()
                .map(|j| (j.event.event_id.clone(), j.destination.clone()))
                .collect(),
            now_ms,
            ..Outcomes::default()
        })
    }

    // ---- operator and merchant views -----------------------------------------------

    /// One page of a log view (see `crate::admin::View`).
    pub fn list(&self, query: &ListQuery) -> Result<Vec<Value>> {
        let params = query
            .params
            .iter()
            .map(|p| match p {
                SqlParam::Text(t) => Param::Text(t.clone()),
                SqlParam::Int(i) => Param::Int(*i),
            })
            .collect();
        Ok(self
            .sql
            .query(&query.sql, params)?
            .into_iter()
            .map(Value::Object)
            .collect())
    }

    /// The jobs of the dead letters a replay selects, made deliverable again (pending,
    /// attempts from zero) and marked replayed. A job id names one dead letter.
    pub fn replay(
        &self,
        job_id: Option<&str>,
        filter: &ReplayFilter,
        now_ms: i64,
    ) -> Result<Vec<DeliveryJob>> {
        #[derive(Deserialize)]
        struct Row {
            job: String,
        }
        let rows: Vec<Row> = match job_id {
            Some(job_id) => self.rows(
                "SELECT job FROM dead_letters WHERE merchant_id = ?1 AND job_id = ?2",
                vec![self.merchant(), job_id.into()],
            )?,
            None => self.rows(
                "SELECT job FROM dead_letters WHERE merchant_id = ?1 AND replayed_at IS NULL \
                 AND (?2 IS NULL OR destination = ?2) AND (?3 IS NULL OR dead_lettered_at >= ?3) \
                 AND (?4 IS NULL OR dead_lettered_at < ?4) ORDER BY dead_lettered_at, job_id LIMIT ?5",
                vec![
                    self.merchant(),
                    filter.destination.as_deref().into(),
                    filter.since.into(),
                    filter.until.into(),
                    i64::from(filter.limit).into(),
                ],
            )?,
        };
        let jobs: Vec<DeliveryJob> = rows
            .iter()
            .map(|r| serde_json::from_str(&r.job).map_err(RecordsError::of))
            .collect::<Result<_>>()?;
        let ids: Vec<&str> = jobs.iter().map(|j| j.event.event_id.as_str()).collect();
        let mut rows = self.deliveries_of(&ids)?;
        let mut replayed = Vec::with_capacity(jobs.len());
        for job in jobs {
            // An erased or purged event is not brought back.
            let Some(deliveries) = rows.get_mut(&job.event.event_id) else {
                continue;
            };
            deliveries.insert(
                job.destination.clone(),
                Delivery::pending(&job.job_id, now_ms),
            );
            self.exec(
                "UPDATE dead_letters SET replayed_at = ?2 WHERE job_id = ?1",
                vec![job.job_id.as_str().into(), now_ms.into()],
            )?;
            replayed.push(job);
        }
        self.put_deliveries(&rows)?;
        Ok(replayed)
    }

    /// Deletes the rows retention rules say are due, and dedup records past theirs.
    /// Returns the count per table.
    pub fn purge(&self, purges: &[Purge], dedup_cutoff_ms: i64) -> Result<Map<String, Value>> {
        let mut counts = Map::new();
        for purge in purges {
            let condition = purge
                .only_if
                .map(|c| format!(" AND {c}"))
                .unwrap_or_default();
            let removed = self.exec(
                &format!(
                    "DELETE FROM {} WHERE {} < ?1{condition}",
                    purge.table, purge.column
                ),
                vec![purge.cutoff_ms.into()],
            )?;
            counts.insert(purge.table.to_string(), removed.into());
        }
        let removed = self.exec(
            "DELETE FROM seen WHERE first_seen < ?1",
            vec![dedup_cutoff_ms.into()],
        )?;
        counts.insert("seen".into(), removed.into());
        Ok(counts)
    }

    /// GDPR erasure of one customer: every event, delivery, attempt, dead letter,
    /// identity and deal context tied to the email or billing/user id, including ids
    /// the email is known under. Returns the count per table.
    pub fn erase_customer(&self, email: Option<&str>, customer_id: Option<&str>) -> Result<Value> {
        #[derive(Deserialize)]
        struct IdRow {
            customer_id: String,
        }
        let email = email.map(|e| e.trim().to_lowercase());
        let mut customer_ids: Vec<String> = customer_id.map(str::to_string).into_iter().collect();
        if let Some(email) = &email {
            let known: Vec<IdRow> = self.rows(
                "SELECT customer_id FROM customers WHERE merchant_id = ?1 AND lower(email) = ?2",
                vec![self.merchant(), email.as_str().into()],
            )?;
            customer_ids.extend(known.into_iter().map(|r| r.customer_id));
        }
        customer_ids.sort();
        customer_ids.dedup();
        let ids_json = to_json(&customer_ids)?;
        let email_param = Param::from(email.as_deref());
        // The customer's events, by identity inside the stored payload.
        let matching = "SELECT event_id FROM canonical_events WHERE merchant_id = ?1 AND (\
             lower(json_extract(payload, '$.customer.email')) = ?2 OR \
             json_extract(payload, '$.customer.customer_id') IN (SELECT value FROM json_each(?3)))";
        let by_event = || {
            vec![
                self.merchant(),
                email_param.clone(),
                ids_json.as_str().into(),
            ]
        };
        let mut counts = Map::new();
        // Deliveries and attempts live in their event's row and attempt-log rows.
        for (name, count) in [
            ("deliveries", "SELECT count(*) AS n FROM deliveries"),
            (
                "delivery_attempts",
                "SELECT count(*) AS n FROM delivery_attempts",
            ),
        ] {
            let n = self
                .sql
                .query(
                    &format!("{count} WHERE merchant_id = ?1 AND event_id IN ({matching})"),
                    by_event(),
                )?
                .first()
                .and_then(|r| r.get("n").cloned())
                .unwrap_or(Value::from(0));
            counts.insert(name.into(), n);
        }
        for table in ["attempt_log", "dead_letters"] {
            let n = self.exec(
                &format!("DELETE FROM {table} WHERE merchant_id = ?1 AND event_id IN ({matching})"),
                by_event(),
            )?;
            if table == "dead_letters" {
                counts.insert(table.into(), n.into());
            }
        }
        let n = self.exec(
            &format!("DELETE FROM canonical_events WHERE event_id IN ({matching})"),
            by_event(),
        )?;
        counts.insert("canonical_events".into(), n.into());
        let n = self.exec(
            "DELETE FROM customers WHERE merchant_id = ?1 AND (lower(email) = ?2 OR customer_id IN (SELECT value FROM json_each(?3)))",
            by_event(),
        )?;
        counts.insert("customers".into(), n.into());
        let mut keys: Vec<String> = customer_ids
            .iter()
            .map(|id| CrmContext::customer_key(id))
            .collect();
        keys.extend(email.as_deref().map(CrmContext::email_key));
        let n = self.exec(
            "DELETE FROM crm_context WHERE merchant_id = ?1 AND identity_key IN (SELECT value FROM json_each(?2))",
            vec![self.merchant(), to_json(&keys)?.into()],
        )?;
        counts.insert("crm_context".into(), n.into());
        let mut identity_keys: Vec<String> = customer_ids
            .iter()
            .map(|id| identity::customer_key(id))
            .collect();
        identity_keys.extend(email.as_deref().map(identity::email_key));
        let identity_keys = to_json(&identity_keys)?;
        // What the pixel saw those visitors do, and their seed uploads, go with them.
        for table in [
            "intent_activity",
            "intent_signals",
            "intent_alerts",
            "intent_visitors",
            "seed_uploads",
        ] {
            let n = self.exec(
                &format!(
                    "DELETE FROM {table} WHERE merchant_id = ?1 AND visitor_key IN \
                     (SELECT visitor_key FROM identity_links WHERE merchant_id = ?1 \
                      AND identity_key IN (SELECT value FROM json_each(?2)))"
                ),
                vec![self.merchant(), identity_keys.as_str().into()],
            )?;
            counts.insert(table.into(), n.into());
        }
        // The pixel visitors this person was (their IPs and click ids) go with them.
        let n = self.exec(
            "DELETE FROM identities WHERE merchant_id = ?1 AND identity_key IN \
             (SELECT visitor_key FROM identity_links WHERE merchant_id = ?1 \
              AND identity_key IN (SELECT value FROM json_each(?2)))",
            vec![self.merchant(), identity_keys.as_str().into()],
        )?;
        counts.insert("visitors".into(), n.into());
        for table in ["identity_links", "identities"] {
            let n = self.exec(
                &format!("DELETE FROM {table} WHERE merchant_id = ?1 AND identity_key IN (SELECT value FROM json_each(?2))"),
                vec![self.merchant(), identity_keys.as_str().into()],
            )?;
            counts.insert(table.into(), n.into());
        }
        Ok(Value::Object(counts))
    }

    // ---- audit chain --------------------------------------------------------------

    /// Appends one entry after the current head.
    pub fn append_audit(&self, record: AuditRecord, now_ms: i64) -> Result<AuditEntry> {
        let cached = self.memory.get().audit_head.borrow().clone();
        let head = match cached {
            Some(head) => Some(head),
            None => self.audit_head()?,
        };
        let entry = audit::link(head.as_ref().map(|(s, h)| (*s, h.as_str())), now_ms, record);
        let written = self.exec(
            "INSERT INTO audit_log (seq, merchant_id, at_ms, kind, actor, subject, details, prev_hash, hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            vec![
                entry.seq.into(),
                self.merchant(),
                entry.at_ms.into(),
                entry.kind.as_str().into(),
                entry.actor.as_str().into(),
                entry.subject.as_str().into(),
                audit::canonical_json(&entry.details).into(),
                entry.prev_hash.as_str().into(),
                entry.hash.as_str().into(),
            ],
        );
        self.memory
            .get()
            .audit_head
            .replace(written.is_ok().then(|| (entry.seq, entry.hash.clone())));
        written?;
        Ok(entry)
    }

    /// The last entry's (seq, hash).
    pub fn audit_head(&self) -> Result<Option<(i64, String)>> {
        let rows = self.sql.query(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            vec![],
        )?;
        Ok(rows.first().and_then(|r| {
            Some((
                r.get("seq")?.as_i64()?,
                r.get("hash")?.as_str()?.to_string(),
            ))
        }))
    }

    /// Entries after `after_seq`, in order.
    pub fn audit_entries(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditEntry>> {
        self.sql
            .query(
                "SELECT seq, at_ms, kind, actor, subject, details, prev_hash, hash FROM audit_log \
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                vec![after_seq.into(), limit.into()],
            )?
            .into_iter()
            .map(|mut row| {
                // Details are stored as canonical JSON text.
                let details = row
                    .get("details")
                    .and_then(Value::as_str)
                    .map(|t| serde_json::from_str(t).unwrap_or(Value::String(t.to_string())))
                    .unwrap_or(Value::Null);
                row.insert("details".into(), details);
                serde_json::from_value(Value::Object(row)).map_err(RecordsError::of)
            })
            .collect()
    }

    /// Walks the whole chain and checks every signed daily head against it.
    pub fn verify_audit(&self, merchant_id: &str) -> Result<AuditVerification> {
        const PAGE: i64 = 1_000;
        let mut walked: Option<(i64, String)> = None;
        let mut broken = None;
        let mut hashes: BTreeMap<i64, String> = BTreeMap::new();
        let heads: Vec<SignedHead> = self.rows(
            "SELECT day, seq, hash, public_key, signature, signed_at FROM audit_heads ORDER BY day",
            vec![],
        )?;
        let wanted: std::collections::BTreeSet<i64> = heads.iter().map(|h| h.seq).collect();
        loop {
            let after = walked.as_ref().map_or(0, |(seq, _)| *seq);
            let page = self.audit_entries(after, PAGE)?;
            if page.is_empty() {
                break;
            }
            for entry in page.iter().filter(|e| wanted.contains(&e.seq)) {
                hashes.insert(entry.seq, entry.hash.clone());
            }
            match audit::verify(&page, walked.clone()) {
                Ok(end) => walked = end,
                Err(link) => {
                    broken = Some(link);
                    break;
                }
            }
        }
        let heads = heads
            .into_iter()
            .map(|mut head| {
                let message = audit::head_message(merchant_id, &head.day, head.seq, &head.hash);
                head.signature_valid =
                    audit::signature_valid(&head.public_key, &message, &head.signature);
                head.matches_chain = hashes.get(&head.seq) == Some(&head.hash);
                head
            })
            .collect();
        Ok(AuditVerification {
            entries: match &broken {
                Some(link) => link.seq - 1,
                None => walked.as_ref().map_or(0, |(seq, _)| *seq),
            },
            head: walked,
            broken,
            signed_heads: heads,
        })
    }

    /// Signs today's head with the operator's key (once per day).
    pub fn sign_audit_head(
        &self,
        merchant_id: &str,
        day: &str,
        key: &ed25519_dalek::SigningKey,
        now_ms: i64,
    ) -> Result<Option<SignedHead>> {
        let Some((seq, hash)) = self.audit_head()? else {
            return Ok(None);
        };
        let (public_key, signature) =
            audit::sign(key, &audit::head_message(merchant_id, day, seq, &hash));
        self.exec(
            "INSERT INTO audit_heads (day, merchant_id, seq, hash, public_key, signature, signed_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (day) DO NOTHING",
            vec![
                day.into(),
                merchant_id.into(),
                seq.into(),
                hash.as_str().into(),
                public_key.as_str().into(),
                signature.as_str().into(),
                now_ms.into(),
            ],
        )?;
        Ok(Some(SignedHead {
            day: day.to_string(),
            seq,
            hash,
            public_key,
            signature,
            signed_at: now_ms,
            signature_valid: true,
            matches_chain: true,
        }))
    }

    /// Rows per table, for whole-merchant deletion's report.
    pub fn counts(&self) -> Result<Map<String, Value>> {
        let mut counts = Map::new();
        for table in TABLES {
            let n = self
                .sql
                .query(&format!("SELECT count(*) AS n FROM {table}"), vec![])?
                .first()
                .and_then(|r| r.get("n").cloned())
                .unwrap_or(Value::from(0));
            counts.insert(table.into(), n);
        }
        Ok(counts)
    }
}

/// A daily signature of the chain head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedHead {
    pub day: String,
    pub seq: i64,
    pub hash: String,
    pub public_key: String,
    pub signature: String,
    pub signed_at: i64,
    /// Set by verification: the signature is the key's over this head.
    #[serde(default)]
    pub signature_valid: bool,
    /// Set by verification: the chain still has this hash at this seq.
    #[serde(default)]
    pub matches_chain: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditVerification {
    /// Entries walked intact.
    pub entries: i64,
    pub head: Option<(i64, String)>,
    /// The first broken link, if any.
    pub broken: Option<audit::BrokenLink>,
    pub signed_heads: Vec<SignedHead>,
}

/// The audit record of an accepted notification: its canonical events, the customer
/// only as a hash.
fn accepted_record(output: &SourceOutput) -> AuditRecord {
    let events: Vec<Value> = output
        .events
        .iter()
        .map(|e| json!({ "event_id": e.event_id, "name": e.name.as_str(), "occurred_at": e.occurred_at }))
        .collect();
    let customer = output
        .events
        .iter()
        .find_map(|e| {
            e.customer
                .id()
                .map(str::to_string)
                .or(e.customer.email.clone())
        })
        .map(|c| audit::personal(&c));
    AuditRecord {
        kind: "webhook.accepted".into(),
        actor: format!("source:{}", output.source),
        subject: output.source_event_id.clone(),
        details: json!({
            "source_event_type": output.source_event_type,
            "events": events,
            "customer": customer,
        }),
    }
}

/// The webhook's answer for one notification.
fn summary(plan: &IngestPlan, enqueued: &[String]) -> Value {
    let output = &plan.output;
    let status = if output.ignored_reason.is_some() {
        "ignored"
    } else {
        "accepted"
    };
    let events: Vec<Value> = output
        .events
        .iter()
        .map(|e| {
            json!({
                "event_id": e.event_id,
                "name": e.name.as_str(),
                "forwarded": e.name.is_forwardable() && enqueued.contains(&e.event_id),
            })
        })
        .collect();
    let deliveries_enqueued = plan
        .jobs
        .iter()
        .filter(|job| enqueued.contains(&job.event.event_id))
        .count();
    json!({
        "status": status,
        "source_event_id": output.source_event_id,
        "reason": output.ignored_reason,
        "events": events,
        "deliveries_enqueued": deliveries_enqueued,
    })
}
