//! The `Merchant` Durable Object: one per merchant, in its region's jurisdiction, the
//! system of record of that merchant's events, deliveries and identities (see
//! `crate::records`). One object runs one merchant's work in order, so the dedup claim
//! and "enqueued once" need no cross-request bookkeeping.

use super::http::{request_json, response_text};
use super::metrics::{self, Phase};
use super::regions::{enqueue_jobs, merchant_namespace, send_batch};
use super::{emit, now_ms, retention_policy};
use crate::admin::{ListQuery, ReplayFilter};
use crate::config::{MerchantConfig, Region};
use crate::delivery::{self, DeadLetter, DeliveryJob, EventMessage};
use crate::group_commit::Groups;
use crate::health::AnomalySettings;
use crate::ingest_rate::{self, IngestRate, IngestRoute};
use crate::intent::{Activity, FormStep, IntentSettings, SeedSettings};
use crate::intent_store::{
    IntentStore, SeedBatch, SeedCandidate, SeedRun, SeedRunStatus, Timeline, VisitorSummary,
};
use crate::ledger;
use crate::log::Log;
use crate::ops_store::{Evaluation, HealthOverview, OpsStore};
use crate::pixel::Capture;
use crate::records::{
    self, AdmitAnswer, AdmitRequest, Claimed, ObjectMemory, Outcomes, Param, Prepared, Records, Sql,
};
use crate::rfm_store::RfmStore;
use crate::sources::SourceOutput;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::cell::{Cell, RefCell};
use wasm_bindgen::JsValue;
use worker::{
    durable_object, DurableObject, Env, Method, Request, RequestInit, Response, Result, SqlStorage,
    SqlStorageValue, State, Stub,
};

pub const BINDING: &str = "MERCHANTS";

/// Requests of one merchant's webhooks: the opened settings that verified them travel
/// with the call and are never stored in the object.
#[derive(Serialize, Deserialize)]
pub struct IngestRequest {
    pub merchant: MerchantConfig,
    /// Whose budget the request spends (see `crate::ingest_rate`).
    pub route: IngestRoute,
    pub outputs: Vec<SourceOutput>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum IngestAnswer {
    Done {
        summaries: Vec<Value>,
        /// Queue messages sent (one per event with its destinations).
        #[serde(default)]
        queue_messages: usize,
        /// `sendBatch` calls this request made for its group (0 when another request
        /// sent the group it joined).
        #[serde(default)]
        queue_sends: usize,
    },
    InFlight,
    Unavailable,
    /// Over the merchant's ingest rate: nothing was claimed or recorded.
    RateLimited,
}

#[derive(Serialize, Deserialize)]
struct ReplayRequest {
    job_id: Option<String>,
    filter: ReplayFilter,
}

#[derive(Serialize, Deserialize)]
struct EraseRequest {
    email: Option<String>,
    customer_id: Option<String>,
}

/// A page of an intent list.
#[derive(Serialize, Deserialize)]
pub struct IntentPage {
    pub limit: i64,
    pub offset: i64,
}

#[derive(Serialize, Deserialize)]
struct TimelineRequest {
    visitor_id: String,
    limit: i64,
}

/// The merchant's intent settings as stored, with the segment TrackLayer created.
#[derive(Serialize, Deserialize)]
pub struct StoredIntent {
    pub settings: IntentSettings,
    pub created_segment: Option<String>,
    /// Whether the merchant saved its own (else these are the product defaults).
    pub saved: bool,
}

#[derive(Serialize, Deserialize)]
pub struct SeedPrepareRequest {
    /// The merchant's plan includes the seed sync (Pro or higher) and it is active.
    pub plan_allows: bool,
    pub day: String,
    pub trigger: String,
}

/// What the seed sync has to do for this merchant.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum SeedPrepared {
    NotConfigured,
    /// Configured but not in the plan: recorded as such, nothing sent.
    PlanRequired,
    Ready {
        seed: SeedSettings,
        /// The segment to add to; `None` until TrackLayer has created it.
        segment: Option<String>,
        batch: SeedBatch,
    },
}

#[derive(Serialize, Deserialize)]
pub struct SeedRecordRequest {
    pub run: SeedRun,
    pub uploaded: Vec<SeedCandidate>,
}

/// The seed sync's state for the merchant's view.
#[derive(Serialize, Deserialize)]
pub struct SeedOverview {
    pub segment: Option<String>,
    pub uploaded_visitors: i64,
    pub runs: Vec<SeedRun>,
}

#[derive(Serialize, Deserialize)]
pub struct RfmQuery {
    pub segment: Option<String>,
    pub limit: i64,
    pub offset: i64,
    /// Turns carrying the segment and LTV on outbound events on or off.
    #[serde(default)]
    pub carry_on_events: Option<bool>,
}

#[derive(Serialize, Deserialize)]
pub struct ResumeRequest {
    pub destination: String,
    /// Who resumed: `operator`, `merchant:<key id>`, `auto_resume`.
    pub by: String,
}

#[derive(Serialize, Deserialize)]
pub struct ActionsRequest {
    pub incident: i64,
    pub actions: Value,
}

#[derive(Serialize, Deserialize)]
pub struct AuditPage {
    pub after: i64,
    pub limit: i64,
}

/// The operator's Ed25519 seed that signs each merchant's chain head daily.
pub const AUDIT_KEY_SECRET: &str = "AUDIT_SIGNING_KEY";

/// Every answer says how many rows the call wrote (what Durable Object SQLite bills).
#[derive(Serialize, Deserialize)]
struct Answer<T> {
    rows_written: u64,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize, Deserialize)]
struct Wrapped<T> {
    value: T,
}

/// `SqlStorage` as the records' [`Sql`], counting rows written.
struct ObjectSql {
    sql: SqlStorage,
    written: Cell<u64>,
}

fn param(value: Param) -> records::Result<SqlStorageValue> {
    Ok(match value {
        Param::Null => SqlStorageValue::Null,
        Param::Int(i) => {
            SqlStorageValue::try_from_i64(i).map_err(|e| records::RecordsError(e.to_string()))?
        }
        Param::Real(f) => SqlStorageValue::Float(f),
        Param::Text(t) => SqlStorageValue::String(t),
    })
}

fn params(values: Vec<Param>) -> records::Result<Vec<SqlStorageValue>> {
    values.into_iter().map(param).collect()
}

impl Sql for ObjectSql {
    fn query(&self, sql: &str, values: Vec<Param>) -> records::Result<Vec<Map<String, Value>>> {
        let cursor = self
            .sql
            .exec(sql, params(values)?)
            .map_err(|e| records::RecordsError(e.to_string()))?;
        let rows: Vec<Map<String, Value>> = cursor
            .to_array()
            .map_err(|e| records::RecordsError(e.to_string()))?;
        self.written
            .set(self.written.get() + cursor.rows_written() as u64);
        Ok(rows)
    }

    fn execute(&self, sql: &str, values: Vec<Param>) -> records::Result<u64> {
        let cursor = self
            .sql
            .exec(sql, params(values)?)
            .map_err(|e| records::RecordsError(e.to_string()))?;
        // Drain: the statement runs to completion before its count is read.
        let _: Vec<Value> = cursor
            .to_array()
            .map_err(|e| records::RecordsError(e.to_string()))?;
        let written = cursor.rows_written() as u64;
        self.written.set(self.written.get() + written);
        Ok(written)
    }
}

fn storage_error(err: records::RecordsError) -> worker::Error {
    worker::Error::RustError(err.to_string())
}

#[durable_object]
pub struct Merchant {
    state: State,
    env: Env,
    migrated: Cell<bool>,
    /// Whether this instance has written `object_meta` (once, not per request).
    owner_recorded: Cell<bool>,
    /// The intent settings, read once per instance (this object is their only writer).
    intent_settings: RefCell<Option<IntentSettings>>,
    /// What the records keep between requests (see `ObjectMemory`).
    memory: ObjectMemory,
    /// The merchant's authenticated ingest rate, counted here (see `crate::ingest_rate`).
    ingest_rate: RefCell<IngestRate>,
    /// `INGEST_RATE_LIMIT`, read once per instance.
    ingest_limit: Cell<Option<u32>>,
    /// Accepted notifications waiting for their group's queue send and commit.
    enqueues: Groups<Enqueue, Enqueued>,
}

/// A claimed notification and its encoded queue messages, waiting for its group.
struct Enqueue {
    prepared: Box<Prepared>,
    messages: Vec<String>,
    delay_seconds: Option<u32>,
    now: i64,
}

enum Enqueued {
    /// `queue_sends`: the group's `sendBatch` calls, counted on its first notification.
    Sent { messages: usize, queue_sends: usize },
    /// The queue refused; the claim was released, so the source's retry does it again.
    NotSent,
}

impl Merchant {
    fn sql(&self) -> records::Result<ObjectSql> {
        let sql = ObjectSql {
            sql: self.state.storage().sql(),
            written: Cell::new(0),
        };
        if !self.migrated.get() {
            records::migrate(&sql)?;
            self.migrated.set(true);
        }
        Ok(sql)
    }

    /// The merchant's records in this object, sharing the instance's memory.
    fn records<'a>(&'a self, sql: &'a ObjectSql, merchant_id: &'a str) -> Records<'a> {
        Records::new(sql, merchant_id).with_memory(&self.memory)
    }

    /// Which merchant and region this object holds, written by its first write.
    fn remember_owner(&self, records: &Records, region: Region) -> Result<()> {
        if !self.owner_recorded.get() {
            records
                .remember_owner(region_name(region), now_ms())
                .map_err(storage_error)?;
            self.owner_recorded.set(true);
        }
        Ok(())
    }

    fn answer<T: Serialize>(sql: &ObjectSql, body: T) -> Result<Response> {
        Response::from_json(&Answer {
            rows_written: sql.written.get(),
            body,
        })
    }

    /// Whether one more request on `route` fits the merchant's ingest rate.
    fn within_ingest_rate(&self, route: IngestRoute) -> bool {
        let limit = match self.ingest_limit.get() {
            Some(limit) => limit,
            None => {
                let var = self
                    .env
                    .var("INGEST_RATE_LIMIT")
                    .ok()
                    .map(|v| v.to_string());
                let limit = ingest_rate::limit_from(var.as_deref());
                self.ingest_limit.set(Some(limit));
                limit
            }
        };
        self.ingest_rate.borrow_mut().admit(route, limit, now_ms())
    }

    /// Sends one group's messages (as few `sendBatch` calls as the queue's limits
    /// allow), then commits or abandons each notification in one synchronous pass, so
    /// the group's commits are one storage transaction.
    async fn send_group(
        &self,
        records: &Records<'_>,
        region: Region,
        group: Vec<Enqueue>,
    ) -> Vec<Enqueued> {
        let mut failed: Vec<Option<String>> = vec![None; group.len()];
        let mut tagged: Vec<(usize, String, Option<u32>)> = Vec::new();
        let mut counts = Vec::with_capacity(group.len());
        let mut notifications = Vec::with_capacity(group.len());
        for (index, item) in group.into_iter().enumerate() {
            counts.push(item.messages.len());
            tagged.extend(
                item.messages
                    .into_iter()
                    .map(|body| (index, body, item.delay_seconds)),
            );
            notifications.push((item.prepared, item.now));
        }
        let mut queue_sends = 0;
        for batch in delivery::queue_batches_by(tagged, |(_, body, _)| body.len()) {
            queue_sends += 1;
            let members: Vec<usize> = batch.iter().map(|(index, _, _)| *index).collect();
            let bodies = batch
                .into_iter()
                .map(|(_, body, delay)| (body, delay))
                .collect();
            if let Err(err) = send_batch(&self.env, region, bodies).await {
                for index in members {
                    failed[index] = Some(err.to_string());
                }
            }
        }
        // One synchronous pass: the group's commits are one storage transaction.
        let mut results = Vec::with_capacity(notifications.len());
        for (index, ((prepared, now), failed)) in notifications.into_iter().zip(failed).enumerate()
        {
            let Some(reason) = failed else {
                // On the queue: a failure from here on is repaired by the lease (a
                // redelivery finds the events enqueued) and the sweeper.
                if let Err(err) = records.commit(&prepared, now) {
                    emit(
                        Log::error("dedup commit failed; the event is recorded and enqueued")
                            .merchant(records.merchant_id())
                            .reason(&err),
                    );
                }
                results.push(Enqueued::Sent {
                    messages: counts[index],
                    queue_sends: if index == 0 { queue_sends } else { 0 },
                });
                continue;
            };
            emit(
                Log::error("webhook not enqueued; the source will retry")
                    .merchant(records.merchant_id())
                    .source(prepared.output.source)
                    .reason(&reason),
            );
            if let Err(err) = records.abandon(&prepared) {
                emit(Log::error("claim not released").reason(&err));
            }
            results.push(Enqueued::NotSent);
        }
        results
    }

    async fn ingest(&self, request: IngestRequest) -> Result<Response> {
        let sql = self.sql().map_err(storage_error)?;
        if !self.within_ingest_rate(request.route) {
            return Self::answer(&sql, IngestAnswer::RateLimited);
        }
        let merchant = &request.merchant;
        let records = self.records(&sql, &merchant.merchant_id);
        self.remember_owner(&records, merchant.region)?;
        // Operators may shorten a source's sibling wait (tests do).
        let wait_override = self
            .env
            .var("SIBLING_WAIT_SECONDS")
            .ok()
            .and_then(|v| v.to_string().parse::<u32>().ok());
        let mut summaries = Vec::with_capacity(request.outputs.len());
        let mut queue_messages = 0;
        let mut queue_sends = 0;
        for output in request.outputs {
            let now = now_ms();
            let source = output.source;
            let prepared = match records.prepare(output, merchant, now) {
                Ok(Claimed::Duplicate(summary)) => {
                    summaries.push(summary);
                    continue;
                }
                // Earlier notifications of a batch are recorded; the sender's retry of
                // the whole batch finds them as duplicates.
                Ok(Claimed::InFlight) => return Self::answer(&sql, IngestAnswer::InFlight),
                Ok(Claimed::Ready(prepared)) => prepared,
                Err(err) => {
                    emit(
                        Log::error("webhook not persisted; the source will retry")
                            .merchant(&merchant.merchant_id)
                            .source(source)
                            .reason(&err),
                    );
                    return Self::answer(&sql, IngestAnswer::Unavailable);
                }
            };
            let wait = prepared
                .output
                .sibling_wait_seconds
                .map(|source_wait| wait_override.unwrap_or(source_wait));
            let messages = EventMessage::for_jobs(&prepared.plan_jobs, wait.is_some())
                .into_iter()
                .map(EventMessage::encode)
                .collect();
            let dedup_key = prepared.dedup_key.clone();
            let summary = prepared.summary.clone();
            let item = Enqueue {
                prepared,
                messages,
                delay_seconds: wait,
                now,
            };
            let sent = self
                .enqueues
                .submit(item, |group| {
                    self.send_group(&records, merchant.region, group)
                })
                .await;
            match sent {
                Some(Enqueued::Sent {
                    messages,
                    queue_sends: sends,
                }) => {
                    queue_messages += messages;
                    queue_sends += sends;
                }
                Some(Enqueued::NotSent) => return Self::answer(&sql, IngestAnswer::Unavailable),
                None => {
                    // The request sending this group went away: whether the jobs got
                    // on the queue is unknown, so the source retries (a redelivery
                    // enqueues at most what the consumer already treats as a repeat).
                    records.release_claim(&dedup_key);
                    return Self::answer(&sql, IngestAnswer::Unavailable);
                }
            }
            summaries.push(summary);
        }
        Self::answer(
            &sql,
            IngestAnswer::Done {
                summaries,
                queue_messages,
                queue_sends,
            },
        )
    }

    fn intent_settings(&self, intent: &IntentStore) -> Result<IntentSettings> {
        if let Some(settings) = self.intent_settings.borrow().as_ref() {
            return Ok(settings.clone());
        }
        let settings = intent.settings().map_err(storage_error)?;
        self.intent_settings.replace(Some(settings.clone()));
        Ok(settings)
    }

    /// The settings, after turning forms left open past their window into abandons,
    /// so what is read is current even before the wake-up runs. An abandon found here
    /// may have queued an alert: the alarm is moved up to send it.
    async fn current_intent(&self, intent: &IntentStore<'_>, now: i64) -> Result<IntentSettings> {
        let settings = self.intent_settings(intent)?;
        if intent.expire_due(&settings, now).map_err(storage_error)? > 0 {
            self.schedule_wakeup(intent).await?;
        }
        Ok(settings)
    }

    /// Moves the object's alarm earlier if an open form or an alert is due sooner.
    async fn schedule_wakeup(&self, intent: &IntentStore<'_>) -> Result<()> {
        let Some(at) = intent.next_wakeup().map_err(storage_error)? else {
            return Ok(());
        };
        let storage = self.state.storage();
        let current = storage.get_alarm().await?;
        if current.is_none_or(|current| current > at) {
            storage.set_alarm((at - now_ms()).max(0)).await?;
        }
        Ok(())
    }

    fn prepare_seed(
        &self,
        intent: &IntentStore,
        settings: &IntentSettings,
        request: &SeedPrepareRequest,
        now: i64,
    ) -> Result<SeedPrepared> {
        let Some(seed) = &settings.linkedin_seed else {
            return Ok(SeedPrepared::NotConfigured);
        };
        if !request.plan_allows {
            let run = SeedRun {
                day: request.day.clone(),
                trigger: request.trigger.clone(),
                started_at: now,
                finished_at: now,
                status: SeedRunStatus::PlanRequired,
                segment: seed.segment.clone(),
                uploaded: 0,
                skipped_without_email: 0,
                failed: 0,
                error: Some(
                    "the LinkedIn seed sync needs the Pro plan or higher; nothing was sent".into(),
                ),
                segment_size: None,
                segment_status: None,
            };
            intent.record_seed_run(&run, &[]).map_err(storage_error)?;
            return Ok(SeedPrepared::PlanRequired);
        }
        let created = intent
            .stored_settings()
            .map_err(storage_error)?
            .and_then(|(_, created)| created);
        let segment = seed.segment.clone().or(created);
        // Before a segment exists, nobody is in it.
        let batch = intent
            .seed_batch(
                segment.as_deref().unwrap_or("urn:li:dmpSegment:new"),
                crate::intent_store::SEED_MAX_PER_RUN,
            )
            .map_err(storage_error)?;
        Ok(SeedPrepared::Ready {
            seed: seed.clone(),
            segment,
            batch,
        })
    }

    /// The object's alarm: abandons whose window passed, then the high-intent alerts
    /// due, then the next wake-up.
    async fn wake_up(&self) -> Result<()> {
        let sql = self.sql().map_err(storage_error)?;
        let Some(merchant_id) = Records::owner(&sql).map_err(storage_error)? else {
            return Ok(());
        };
        let intent = IntentStore::new(&sql, &merchant_id);
        // The alarm itself: abandons first (their alerts go out just below), and the
        // next alarm is set at the end.
        let settings = self.intent_settings(&intent)?;
        intent
            .expire_due(&settings, now_ms())
            .map_err(storage_error)?;
        let alerts = intent
            .due_alerts(now_ms(), ALERTS_PER_WAKEUP)
            .map_err(storage_error)?;
        let var = |name: &str| {
            self.env
                .var(name)
                .ok()
                .map(|v| v.to_string())
                .filter(|v| !v.is_empty())
        };
        let base_url = var("PUBLIC_BASE_URL");
        for alert in alerts {
            // Operators (tests) may point every alert at a stand-in.
            let url = var(ALERT_TEST_URL_VAR).or_else(|| settings.alert_webhook_url.clone());
            let Some(url) = url else {
                intent
                    .alert_result(
                        &alert.visitor_id,
                        Some("no alert webhook is configured"),
                        now_ms(),
                    )
                    .map_err(storage_error)?;
                continue;
            };
            let timeline_url = base_url.as_deref().map(|base| {
                format!(
                    "{}/app/visitors/{}",
                    base.trim_end_matches('/'),
                    alert.visitor_id
                )
            });
            let message = crate::intent::alert_message(
                &merchant_id,
                &alert.visitor_id,
                &alert.qualification,
                alert.email.as_deref(),
                timeline_url.as_deref(),
            );
            let error = super::outbound::post_alert(&url, &message).await.err();
            if let Some(error) = &error {
                emit(
                    Log::warn("high-intent alert not delivered; retrying later")
                        .merchant(&merchant_id)
                        .text("error", error),
                );
            }
            intent
                .alert_result(&alert.visitor_id, error.as_deref(), now_ms())
                .map_err(storage_error)?;
        }
        if let Some(at) = intent.next_wakeup().map_err(storage_error)? {
            // Never sooner than a second: a wake-up that keeps failing must not spin.
            self.state
                .storage()
                .set_alarm((at - now_ms()).max(1_000))
                .await?;
        }
        Ok(())
    }

    /// Releases a paused destination: its held jobs go back on the queue, oldest event
    /// first, and are touched so the sweeper leaves them. Returns the messages sent.
    async fn resume(
        &self,
        records: &Records<'_>,
        ops: &OpsStore<'_>,
        region: Region,
        destination: &str,
        by: &str,
        now: i64,
    ) -> Result<usize> {
        let jobs = ops.resume(destination, by, now).map_err(storage_error)?;
        // One message per job, in order: an event's other destinations are not resent.
        let mut messages = 0;
        for job in &jobs {
            messages += self.enqueue(region, std::slice::from_ref(job)).await?;
        }
        records.touch_jobs(&jobs, now).map_err(storage_error)?;
        records
            .append_audit(
                crate::audit::AuditRecord {
                    kind: "destination.resumed".into(),
                    actor: by.to_string(),
                    subject: format!("destinations/{destination}"),
                    details: json!({ "released_jobs": jobs.len() }),
                },
                now,
            )
            .map_err(storage_error)?;
        Ok(messages)
    }

    async fn enqueue(&self, region: Region, jobs: &[DeliveryJob]) -> Result<usize> {
        enqueue_jobs(&self.env, region, jobs).await
    }

    /// Re-enqueues pending jobs nothing is working on.
    async fn sweep(&self, merchant_id: &str, region: Region) -> Result<Response> {
        let sql = self.sql().map_err(storage_error)?;
        let records = self.records(&sql, merchant_id);
        let now = now_ms();
        let jobs = records
            .stale_jobs(
                now - SWEEP_UNATTEMPTED_AFTER_MS,
                now - SWEEP_ATTEMPTED_AFTER_MS,
                SWEEP_BATCH,
            )
            .map_err(storage_error)?;
        let mut messages = 0;
        if !jobs.is_empty() {
            messages = self.enqueue(region, &jobs).await?;
            records.touch_jobs(&jobs, now).map_err(storage_error)?;
        }
        Self::answer(
            &sql,
            json!({ "swept": jobs.len(), "queue_messages": messages }),
        )
    }

    async fn replay(
        &self,
        merchant_id: &str,
        region: Region,
        request: ReplayRequest,
    ) -> Result<Response> {
        let sql = self.sql().map_err(storage_error)?;
        let records = self.records(&sql, merchant_id);
        let jobs = records
            .replay(request.job_id.as_deref(), &request.filter, now_ms())
            .map_err(storage_error)?;
        // Pending with no attempt: if the queue refuses now, the sweeper sends them.
        let messages = self.enqueue(region, &jobs).await?;
        let ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
        Self::answer(&sql, json!({ "job_ids": ids, "queue_messages": messages }))
    }

    async fn handle(&self, mut req: Request) -> Result<Response> {
        let path = req.path();
        let url = req.url()?;
        let query = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let merchant_id = query("merchant_id");
        let region = if query("region") == "eu" {
            Region::Eu
        } else {
            Region::Us
        };
        if path == "/ingest" {
            let request: IngestRequest = request_json(&mut req).await?;
            return self.ingest(request).await;
        }
        if path == "/sweep" {
            return self.sweep(&merchant_id, region).await;
        }
        if path == "/replay" {
            let request: ReplayRequest = request_json(&mut req).await?;
            return self.replay(&merchant_id, region, request).await;
        }
        if path == "/forget" {
            // Whole-merchant deletion: nothing of this object stays behind.
            let counts = {
                let sql = self.sql().map_err(storage_error)?;
                self.records(&sql, &merchant_id)
                    .counts()
                    .map_err(storage_error)?
            };
            self.state.storage().delete_alarm().await?;
            self.state.storage().delete_all().await?;
            self.migrated.set(false);
            self.owner_recorded.set(false);
            self.intent_settings.replace(None);
            self.memory.clear();
            return Response::from_json(&Answer {
                rows_written: 0,
                body: Value::Object(counts),
            });
        }
        let sql = self.sql().map_err(storage_error)?;
        let records = self.records(&sql, &merchant_id);
        let now = now_ms();
        match path.as_str() {
            "/visitor" => {
                let capture: Capture = request_json(&mut req).await?;
                self.remember_owner(&records, region)?;
                records
                    .record_visitor(&capture, now)
                    .map_err(storage_error)?;
                let mut qualified = false;
                if let Some(activity) = &capture.activity {
                    let intent = IntentStore::new(&sql, &merchant_id);
                    let settings = self.intent_settings(&intent)?;
                    qualified = intent
                        .observe(&settings, &capture.visitor_key, now, activity)
                        .map_err(storage_error)?
                        .is_some();
                    let opens_form = matches!(
                        activity,
                        Activity::Form {
                            step: FormStep::Start,
                            ..
                        }
                    );
                    // Only a started form or a new alert needs a wake-up.
                    if qualified || opens_form {
                        self.schedule_wakeup(&intent).await?;
                    }
                }
                Self::answer(&sql, json!({ "recorded": true, "qualified": qualified }))
            }
            "/intent/settings" => {
                let intent = IntentStore::new(&sql, &merchant_id);
                if req.method() == Method::Put {
                    let settings: IntentSettings = request_json(&mut req).await?;
                    self.remember_owner(&records, region)?;
                    intent
                        .save_settings(&settings, now)
                        .map_err(storage_error)?;
                    self.intent_settings.replace(Some(settings));
                }
                let stored = intent.stored_settings().map_err(storage_error)?;
                let saved = stored.is_some();
                let (settings, created_segment) = stored.unwrap_or_default();
                Self::answer(
                    &sql,
                    Wrapped {
                        value: StoredIntent {
                            settings,
                            created_segment,
                            saved,
                        },
                    },
                )
            }
            "/intent/visitors" | "/intent/queue" => {
                let page: IntentPage = request_json(&mut req).await?;
                let intent = IntentStore::new(&sql, &merchant_id);
                let settings = self.current_intent(&intent, now).await?;
                let rows = if path == "/intent/queue" {
                    intent.queue(&settings, now, page.limit, page.offset)
                } else {
                    intent.ranked(&settings, now, page.limit, page.offset)
                }
                .map_err(storage_error)?;
                Self::answer(&sql, Wrapped { value: rows })
            }
            "/intent/timeline" => {
                let request: TimelineRequest = request_json(&mut req).await?;
                let intent = IntentStore::new(&sql, &merchant_id);
                let settings = self.current_intent(&intent, now).await?;
                let timeline = intent
                    .timeline(&settings, now, &request.visitor_id, request.limit)
                    .map_err(storage_error)?;
                Self::answer(&sql, Wrapped { value: timeline })
            }
            "/intent/seed" => {
                let intent = IntentStore::new(&sql, &merchant_id);
                let settings = self.intent_settings(&intent)?;
                let created = intent
                    .stored_settings()
                    .map_err(storage_error)?
                    .and_then(|(_, created)| created);
                let segment = settings
                    .linkedin_seed
                    .as_ref()
                    .and_then(|seed| seed.segment.clone())
                    .or(created);
                let uploaded_visitors = match &segment {
                    Some(segment) => intent.seed_uploaded(segment).map_err(storage_error)?,
                    None => 0,
                };
                let runs = intent.seed_runs(30).map_err(storage_error)?;
                Self::answer(
                    &sql,
                    Wrapped {
                        value: SeedOverview {
                            segment,
                            uploaded_visitors,
                            runs,
                        },
                    },
                )
            }
            "/intent/seed/prepare" => {
                let request: SeedPrepareRequest = request_json(&mut req).await?;
                let intent = IntentStore::new(&sql, &merchant_id);
                let settings = self.current_intent(&intent, now).await?;
                let prepared = self.prepare_seed(&intent, &settings, &request, now)?;
                Self::answer(&sql, Wrapped { value: prepared })
            }
            "/intent/seed/segment" => {
                let segment: String = request_json(&mut req).await?;
                IntentStore::new(&sql, &merchant_id)
                    .remember_segment(&segment)
                    .map_err(storage_error)?;
                Self::answer(&sql, json!({ "recorded": true }))
            }
            "/rfm/compute" => {
                let segments = RfmStore::new(&sql, &merchant_id)
                    .compute(now)
                    .map_err(storage_error)?;
                Self::answer(&sql, Wrapped { value: segments })
            }
            "/rfm" => {
                let query: RfmQuery = request_json(&mut req).await?;
                let store = RfmStore::new(&sql, &merchant_id);
                if let Some(on) = query.carry_on_events {
                    store.set_carry_on_events(on, now).map_err(storage_error)?;
                }
                let (segments, computed_at) = store.segments().map_err(storage_error)?;
                let subscribers = store
                    .scores(query.segment.as_deref(), query.limit, query.offset)
                    .map_err(storage_error)?;
                let carry = store.carry_on_events().map_err(storage_error)?;
                Self::answer(
                    &sql,
                    Wrapped {
                        value: json!({
                            "computed_at": computed_at,
                            "segments": segments,
                            "carry_on_events": carry,
                            "subscribers": subscribers,
                        }),
                    },
                )
            }
            "/health" => {
                let overview = OpsStore::new(&sql, &merchant_id)
                    .overview(now, 50)
                    .map_err(storage_error)?;
                Self::answer(&sql, Wrapped { value: overview })
            }
            "/health/settings" => {
                let settings: AnomalySettings = request_json(&mut req).await?;
                self.remember_owner(&records, region)?;
                OpsStore::new(&sql, &merchant_id)
                    .save_settings(&settings, now)
                    .map_err(storage_error)?;
                Self::answer(&sql, json!({ "recorded": true }))
            }
            "/health/evaluate" => {
                let ops = OpsStore::new(&sql, &merchant_id);
                let evaluation = ops.evaluate(now).map_err(storage_error)?;
                for incident in &evaluation.opened {
                    records
                        .append_audit(
                            crate::audit::AuditRecord {
                                kind: "anomaly.opened".into(),
                                actor: "system".into(),
                                subject: format!("incident/{}", incident.id),
                                details: json!({
                                    "kind": incident.kind,
                                    "destination": incident.destination,
                                    "paused": incident.paused,
                                    "summary": incident.summary,
                                }),
                            },
                            now,
                        )
                        .map_err(storage_error)?;
                }
                let mut resumed = 0;
                for incident in &evaluation.resolved {
                    if let Some(destination) = &incident.destination {
                        resumed += self
                            .resume(&records, &ops, region, destination, "auto_resume", now)
                            .await?;
                    }
                }
                Self::answer(
                    &sql,
                    json!({ "value": evaluation, "queue_messages": resumed }),
                )
            }
            "/health/pause" => {
                let destination: String = request_json(&mut req).await?;
                OpsStore::new(&sql, &merchant_id)
                    .pause(&destination, None, now)
                    .map_err(storage_error)?;
                Self::answer(&sql, json!({ "paused": destination }))
            }
            "/health/resume" => {
                let request: ResumeRequest = request_json(&mut req).await?;
                let ops = OpsStore::new(&sql, &merchant_id);
                let messages = self
                    .resume(
                        &records,
                        &ops,
                        region,
                        &request.destination,
                        &request.by,
                        now,
                    )
                    .await?;
                Self::answer(&sql, json!({ "queue_messages": messages }))
            }
            "/health/actions" => {
                let request: ActionsRequest = request_json(&mut req).await?;
                OpsStore::new(&sql, &merchant_id)
                    .record_actions(request.incident, &request.actions)
                    .map_err(storage_error)?;
                Self::answer(&sql, json!({ "recorded": true }))
            }
            "/audit/append" => {
                let record: crate::audit::AuditRecord = request_json(&mut req).await?;
                self.remember_owner(&records, region)?;
                let entry = records.append_audit(record, now).map_err(storage_error)?;
                Self::answer(&sql, Wrapped { value: entry })
            }
            "/audit/entries" => {
                let page: AuditPage = request_json(&mut req).await?;
                let entries = records
                    .audit_entries(page.after, page.limit)
                    .map_err(storage_error)?;
                Self::answer(&sql, Wrapped { value: entries })
            }
            "/audit/verify" => {
                let verification = records.verify_audit(&merchant_id).map_err(storage_error)?;
                Self::answer(
                    &sql,
                    Wrapped {
                        value: verification,
                    },
                )
            }
            "/audit/sign" => {
                let day: String = request_json(&mut req).await?;
                let key = self
                    .env
                    .secret(AUDIT_KEY_SECRET)
                    .ok()
                    .map(|k| k.to_string())
                    .ok_or_else(|| {
                        worker::Error::RustError(format!("{AUDIT_KEY_SECRET} is not set"))
                    })?;
                let key = crate::audit::signing_key(&key).map_err(worker::Error::RustError)?;
                let head = records
                    .sign_audit_head(&merchant_id, &day, &key, now)
                    .map_err(storage_error)?;
                Self::answer(&sql, Wrapped { value: head })
            }
            "/intent/seed/record" => {
                let request: SeedRecordRequest = request_json(&mut req).await?;
                IntentStore::new(&sql, &merchant_id)
                    .record_seed_run(&request.run, &request.uploaded)
                    .map_err(storage_error)?;
                Self::answer(&sql, json!({ "recorded": true }))
            }
            "/admit" => {
                let request: AdmitRequest = request_json(&mut req).await?;
                let answer = records.admit(request).map_err(storage_error)?;
                Self::answer(&sql, Wrapped { value: answer })
            }
            "/outcomes" => {
                let outcomes: Outcomes = request_json(&mut req).await?;
                records.record_outcomes(&outcomes).map_err(storage_error)?;
                Self::answer(&sql, json!({ "recorded": true }))
            }
            "/dead-letter" => {
                let letter: DeadLetter = request_json(&mut req).await?;
                records
                    .record_dead_letter(&letter, now)
                    .map_err(storage_error)?;
                Self::answer(&sql, json!({ "recorded": true }))
            }
            "/list" => {
                let query: ListQuery = request_json(&mut req).await?;
                let rows = records.list(&query).map_err(storage_error)?;
                Self::answer(&sql, Wrapped { value: rows })
            }
            "/parked" => {
                let rows = records.parked_destinations().map_err(storage_error)?;
                Self::answer(&sql, Wrapped { value: rows })
            }
            "/erase" => {
                let request: EraseRequest = request_json(&mut req).await?;
                let counts = records
                    .erase_customer(request.email.as_deref(), request.customer_id.as_deref())
                    .map_err(storage_error)?;
                Self::answer(&sql, Wrapped { value: counts })
            }
            "/purge" => {
                let purges = retention_policy(&self.env).regional_purges(now);
                let counts = records
                    .purge(&purges, now - ledger::DEDUP_RETENTION_MS)
                    .map_err(storage_error)?;
                Self::answer(&sql, Wrapped { value: counts })
            }
            _ => Response::error("not found", 404),
        }
    }
}

fn region_name(region: Region) -> &'static str {
    match region {
        Region::Us => "us",
        Region::Eu => "eu",
    }
}

/// A pending job untouched this long without an attempt is taken as lost (a crash
/// between the write and the queue send, a lost message) and enqueued again.
pub const SWEEP_UNATTEMPTED_AFTER_MS: i64 = 5 * 60_000;
/// A retried job is silent at most the longest queue delay (12 h); past that, lost too.
pub const SWEEP_ATTEMPTED_AFTER_MS: i64 = 13 * 3_600_000;
const SWEEP_BATCH: i64 = 1_000;

/// Alerts sent per wake-up; more wait for the next one, a second later.
const ALERTS_PER_WAKEUP: i64 = 20;
/// An operator's stand-in for every merchant's alert webhook (tests only).
pub const ALERT_TEST_URL_VAR: &str = "INTENT_ALERT_TEST_URL";

impl DurableObject for Merchant {
    fn new(state: State, env: Env) -> Self {
        super::configure_logging(&env);
        Merchant {
            state,
            env,
            migrated: Cell::new(false),
            owner_recorded: Cell::new(false),
            intent_settings: RefCell::new(None),
            memory: ObjectMemory::default(),
            ingest_rate: RefCell::new(IngestRate::default()),
            ingest_limit: Cell::new(None),
            enqueues: Groups::default(),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        match self.handle(req).await {
            Ok(response) => Ok(response),
            Err(err) => {
                emit(Log::error("merchant object call failed").reason(&err));
                Response::error(err.to_string(), 500)
            }
        }
    }

    async fn alarm(&self) -> Result<Response> {
        if let Err(err) = self.wake_up().await {
            // The runtime retries a failed alarm.
            emit(Log::error("merchant object wake-up failed").reason(&err));
            return Err(err);
        }
        Response::ok("")
    }
}

/// Caller side: a typed client for one merchant's object.
pub struct MerchantClient {
    stub: Stub,
    merchant_id: String,
    region: Region,
    phase: Phase,
}

impl MerchantClient {
    /// The merchant's object, in its region's jurisdiction.
    pub fn new(env: &Env, region: Region, merchant_id: &str, phase: Phase) -> Result<Self> {
        let namespace = merchant_namespace(env, region)?;
        let stub = namespace.id_from_name(merchant_id)?.get_stub()?;
        Ok(MerchantClient {
            stub,
            merchant_id: merchant_id.to_string(),
            region,
            phase,
        })
    }

    async fn call<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.call_with(path, Method::Post, body).await
    }

    async fn value_with<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        method: Method,
        body: &B,
    ) -> Result<T> {
        Ok(self
            .call_with::<B, Wrapped<T>>(path, method, body)
            .await?
            .value)
    }

    async fn call_with<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        method: Method,
        body: &B,
    ) -> Result<T> {
        let payload =
            serde_json::to_string(body).map_err(|e| worker::Error::RustError(e.to_string()))?;
        let mut init = RequestInit::new();
        init.with_method(method)
            .with_body(Some(JsValue::from_str(&payload)));
        let url = format!(
            "https://merchant{path}?merchant_id={}&region={}",
            urlencoding(&self.merchant_id),
            region_name(self.region)
        );
        let request = Request::new_with_init(&url, &init)?;
        metrics::object_call(self.phase);
        let response = self.stub.fetch_with_request(request).await?;
        let status = response.status_code();
        let text = response_text(response).await?;
        if status != 200 {
            return Err(worker::Error::RustError(format!(
                "merchant object {path} answered {status}: {text}"
            )));
        }
        let answer: Answer<T> =
            serde_json::from_str(&text).map_err(|e| worker::Error::RustError(e.to_string()))?;
        metrics::rows_written(self.phase, answer.rows_written);
        Ok(answer.body)
    }

    async fn value<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        Ok(self.call::<B, Wrapped<T>>(path, body).await?.value)
    }

    pub async fn ingest(&self, request: &IngestRequest) -> Result<IngestAnswer> {
        let answer: IngestAnswer = self.call("/ingest", request).await?;
        if let IngestAnswer::Done {
            queue_messages,
            queue_sends,
            ..
        } = &answer
        {
            metrics::queue_sent(self.phase, *queue_messages);
            metrics::queue_send_calls(self.phase, *queue_sends);
        }
        Ok(answer)
    }

    pub async fn record_visitor(&self, capture: &Capture) -> Result<()> {
        self.call::<_, Value>("/visitor", capture).await.map(|_| ())
    }

    pub async fn intent_settings(&self, put: Option<&IntentSettings>) -> Result<StoredIntent> {
        match put {
            Some(settings) => {
                self.value_with("/intent/settings", Method::Put, settings)
                    .await
            }
            None => self.value("/intent/settings", &json!({})).await,
        }
    }

    pub async fn intent_visitors(&self, page: &IntentPage) -> Result<Vec<VisitorSummary>> {
        self.value("/intent/visitors", page).await
    }

    pub async fn intent_queue(&self, page: &IntentPage) -> Result<Vec<VisitorSummary>> {
        self.value("/intent/queue", page).await
    }

    pub async fn intent_timeline(&self, visitor_id: &str, limit: i64) -> Result<Option<Timeline>> {
        self.value(
            "/intent/timeline",
            &TimelineRequest {
                visitor_id: visitor_id.to_string(),
                limit,
            },
        )
        .await
    }

    pub async fn seed_overview(&self) -> Result<SeedOverview> {
        self.value("/intent/seed", &json!({})).await
    }

    pub async fn seed_prepare(&self, request: &SeedPrepareRequest) -> Result<SeedPrepared> {
        self.value("/intent/seed/prepare", request).await
    }

    pub async fn seed_remember_segment(&self, segment: &str) -> Result<()> {
        self.call::<_, Value>("/intent/seed/segment", &segment)
            .await
            .map(|_| ())
    }

    pub async fn seed_record(&self, request: &SeedRecordRequest) -> Result<()> {
        self.call::<_, Value>("/intent/seed/record", request)
            .await
            .map(|_| ())
    }

    pub async fn rfm_compute(&self) -> Result<Value> {
        self.value("/rfm/compute", &json!({})).await
    }

    pub async fn rfm(&self, query: &RfmQuery) -> Result<Value> {
        self.value("/rfm", query).await
    }

    pub async fn health(&self) -> Result<HealthOverview> {
        self.value("/health", &json!({})).await
    }

    pub async fn health_settings(&self, settings: &AnomalySettings) -> Result<()> {
        self.call::<_, Value>("/health/settings", settings)
            .await
            .map(|_| ())
    }

    pub async fn health_evaluate(&self) -> Result<Evaluation> {
        let answer: Value = self.call("/health/evaluate", &json!({})).await?;
        metrics::queue_sent(
            self.phase,
            answer["queue_messages"].as_u64().unwrap_or(0) as usize,
        );
        serde_json::from_value(answer["value"].clone())
            .map_err(|e| worker::Error::RustError(e.to_string()))
    }

    pub async fn pause_destination(&self, destination: &str) -> Result<()> {
        self.call::<_, Value>("/health/pause", &destination)
            .await
            .map(|_| ())
    }

    /// Returns the held jobs released.
    pub async fn resume_destination(&self, destination: &str, by: &str) -> Result<u64> {
        let answer: Value = self
            .call(
                "/health/resume",
                &ResumeRequest {
                    destination: destination.to_string(),
                    by: by.to_string(),
                },
            )
            .await?;
        let messages = answer["queue_messages"].as_u64().unwrap_or(0);
        metrics::queue_sent(self.phase, messages as usize);
        Ok(messages)
    }

    pub async fn record_incident_actions(&self, incident: i64, actions: &Value) -> Result<()> {
        self.call::<_, Value>(
            "/health/actions",
            &ActionsRequest {
                incident,
                actions: actions.clone(),
            },
        )
        .await
        .map(|_| ())
    }

    pub async fn audit_append(&self, record: &crate::audit::AuditRecord) -> Result<()> {
        self.value::<_, crate::audit::AuditEntry>("/audit/append", record)
            .await
            .map(|_| ())
    }

    pub async fn audit_entries(&self, page: &AuditPage) -> Result<Vec<crate::audit::AuditEntry>> {
        self.value("/audit/entries", page).await
    }

    pub async fn audit_verify(&self) -> Result<records::AuditVerification> {
        self.value("/audit/verify", &json!({})).await
    }

    pub async fn audit_sign(&self, day: &str) -> Result<Option<records::SignedHead>> {
        self.value("/audit/sign", &day).await
    }

    pub async fn admit(&self, request: &AdmitRequest) -> Result<AdmitAnswer> {
        self.value("/admit", request).await
    }

    pub async fn record_outcomes(&self, outcomes: &Outcomes) -> Result<()> {
        self.call::<_, Value>("/outcomes", outcomes)
            .await
            .map(|_| ())
    }

    pub async fn record_dead_letter(&self, letter: &DeadLetter) -> Result<()> {
        self.call::<_, Value>("/dead-letter", letter)
            .await
            .map(|_| ())
    }

    pub async fn list(&self, query: &ListQuery) -> Result<Vec<Value>> {
        self.value("/list", query).await
    }

    pub async fn parked_destinations(&self) -> Result<Vec<Value>> {
        self.value("/parked", &json!({})).await
    }

    pub async fn erase_customer(
        &self,
        email: Option<&str>,
        customer_id: Option<&str>,
    ) -> Result<Value> {
        self.value(
            "/erase",
            &EraseRequest {
                email: email.map(str::to_string),
                customer_id: customer_id.map(str::to_string),
            },
        )
        .await
    }

    /// Replays one dead letter (`job_id`) or those `filter` selects; returns job ids.
    pub async fn replay(&self, job_id: Option<&str>, filter: &ReplayFilter) -> Result<Vec<String>> {
        let answer: Value = self
            .call(
                "/replay",
                &ReplayRequest {
                    job_id: job_id.map(str::to_string),
                    filter: filter.clone(),
                },
            )
            .await?;
        metrics::queue_sent(
            self.phase,
            answer["queue_messages"].as_u64().unwrap_or(0) as usize,
        );
        Ok(answer["job_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect())
    }

    pub async fn sweep(&self) -> Result<u64> {
        let answer: Value = self.call("/sweep", &json!({})).await?;
        metrics::queue_sent(
            self.phase,
            answer["queue_messages"].as_u64().unwrap_or(0) as usize,
        );
        Ok(answer["swept"].as_u64().unwrap_or(0))
    }

    pub async fn purge(&self) -> Result<Value> {
        self.value("/purge", &json!({})).await
    }

    /// Deletes everything the object holds; returns the rows per table it held.
    pub async fn forget(&self) -> Result<Value> {
        self.call("/forget", &json!({})).await
    }
}

fn urlencoding(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
