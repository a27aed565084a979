//! The `Merchant` Durable Object: one per merchant, in its region's jurisdiction, the
//! system of record of that merchant's events, deliveries and identities (see
//! `crate::records`). One object runs one merchant's work in order, so the dedup claim
//! and "enqueued once" need no cross-request bookkeeping.

use super::metrics::{self, Phase};
use super::regions::{enqueue_jobs, enqueue_jobs_after, merchant_namespace};
use super::{emit, now_ms, retention_policy};
use crate::admin::{ListQuery, ReplayFilter};
use crate::config::{MerchantConfig, Region};
use crate::delivery::{DeadLetter, DeliveryJob};
use crate::ledger;
use crate::log::Log;
use crate::pixel::Capture;
use crate::records::{self, AdmitAnswer, AdmitRequest, Claimed, Outcomes, Param, Records, Sql};
use crate::sources::SourceOutput;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::cell::Cell;
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
    },
    InFlight,
    Unavailable,
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

    async fn ingest(&self, request: IngestRequest) -> Result<Response> {
        let sql = self.sql().map_err(storage_error)?;
        let merchant = &request.merchant;
        let records = Records::new(&sql, &merchant.merchant_id);
        self.remember_owner(&records, merchant.region)?;
        // Operators may shorten a source's sibling wait (tests do).
        let wait_override = self
            .env
            .var("SIBLING_WAIT_SECONDS")
            .ok()
            .and_then(|v| v.to_string().parse::<u32>().ok());
        let mut summaries = Vec::with_capacity(request.outputs.len());
        let mut queue_messages = 0;
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
            let sent =
                enqueue_jobs_after(&self.env, merchant.region, &prepared.plan_jobs, wait).await;
            let sent = sent.map(|n| queue_messages += n);
            if let Err(err) = sent {
                emit(
                    Log::error("webhook not enqueued; the source will retry")
                        .merchant(&merchant.merchant_id)
                        .source(source)
                        .reason(&err),
                );
                if let Err(err) = records.abandon(&prepared) {
                    emit(Log::error("claim not released").reason(&err));
                }
                return Self::answer(&sql, IngestAnswer::Unavailable);
            }
            // The jobs are on the queue: a failure from here on is repaired by the
            // lease (a redelivery finds the events enqueued) and the sweeper.
            if let Err(err) = records.commit(&prepared.dedup_key, &prepared.output, now) {
                emit(
                    Log::error("dedup commit failed; the event is recorded and enqueued")
                        .merchant(&merchant.merchant_id)
                        .reason(&err),
                );
            }
            summaries.push(prepared.summary.clone());
        }
        Self::answer(
            &sql,
            IngestAnswer::Done {
                summaries,
                queue_messages,
            },
        )
    }

    async fn enqueue(&self, region: Region, jobs: &[DeliveryJob]) -> Result<usize> {
        enqueue_jobs(&self.env, region, jobs).await
    }

    /// Re-enqueues pending jobs nothing is working on.
    async fn sweep(&self, merchant_id: &str, region: Region) -> Result<Response> {
        let sql = self.sql().map_err(storage_error)?;
        let records = Records::new(&sql, merchant_id);
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
        let records = Records::new(&sql, merchant_id);
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
            let request: IngestRequest = req.json().await?;
            return self.ingest(request).await;
        }
        if path == "/sweep" {
            return self.sweep(&merchant_id, region).await;
        }
        if path == "/replay" {
            let request: ReplayRequest = req.json().await?;
            return self.replay(&merchant_id, region, request).await;
        }
        if path == "/forget" {
            // Whole-merchant deletion: nothing of this object stays behind.
            let counts = {
                let sql = self.sql().map_err(storage_error)?;
                Records::new(&sql, &merchant_id)
                    .counts()
                    .map_err(storage_error)?
            };
            self.state.storage().delete_alarm().await?;
            self.state.storage().delete_all().await?;
            self.migrated.set(false);
            self.owner_recorded.set(false);
            return Response::from_json(&Answer {
                rows_written: 0,
                body: Value::Object(counts),
            });
        }
        let sql = self.sql().map_err(storage_error)?;
        let records = Records::new(&sql, &merchant_id);
        let now = now_ms();
        match path.as_str() {
            "/visitor" => {
                let capture: Capture = req.json().await?;
                self.remember_owner(&records, region)?;
                records
                    .record_visitor(&capture, now)
                    .map_err(storage_error)?;
                Self::answer(&sql, json!({ "recorded": true }))
            }
            "/admit" => {
                let request: AdmitRequest = req.json().await?;
                let answer = records.admit(request).map_err(storage_error)?;
                Self::answer(&sql, Wrapped { value: answer })
            }
            "/outcomes" => {
                let outcomes: Outcomes = req.json().await?;
                records.record_outcomes(&outcomes).map_err(storage_error)?;
                Self::answer(&sql, json!({ "recorded": true }))
            }
            "/dead-letter" => {
                let letter: DeadLetter = req.json().await?;
                records
                    .record_dead_letter(&letter, now)
                    .map_err(storage_error)?;
                Self::answer(&sql, json!({ "recorded": true }))
            }
            "/list" => {
                let query: ListQuery = req.json().await?;
                let rows = records.list(&query).map_err(storage_error)?;
                Self::answer(&sql, Wrapped { value: rows })
            }
            "/parked" => {
                let rows = records.parked_destinations().map_err(storage_error)?;
                Self::answer(&sql, Wrapped { value: rows })
            }
            "/erase" => {
                let request: EraseRequest = req.json().await?;
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

impl DurableObject for Merchant {
    fn new(state: State, env: Env) -> Self {
        super::configure_logging(&env);
        Merchant {
            state,
            env,
            migrated: Cell::new(false),
            owner_recorded: Cell::new(false),
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
        let payload =
            serde_json::to_string(body).map_err(|e| worker::Error::RustError(e.to_string()))?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_body(Some(JsValue::from_str(&payload)));
        let url = format!(
            "https://merchant{path}?merchant_id={}&region={}",
            urlencoding(&self.merchant_id),
            region_name(self.region)
        );
        let request = Request::new_with_init(&url, &init)?;
        metrics::object_call(self.phase);
        let mut response = self.stub.fetch_with_request(request).await?;
        if response.status_code() != 200 {
            let text = response.text().await.unwrap_or_default();
            return Err(worker::Error::RustError(format!(
                "merchant object {path} answered {}: {text}",
                response.status_code()
            )));
        }
        let answer: Answer<T> = response.json().await?;
        metrics::rows_written(self.phase, answer.rows_written);
        Ok(answer.body)
    }

    async fn value<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        Ok(self.call::<B, Wrapped<T>>(path, body).await?.value)
    }

    pub async fn ingest(&self, request: &IngestRequest) -> Result<IngestAnswer> {
        let answer: IngestAnswer = self.call("/ingest", request).await?;
        if let IngestAnswer::Done { queue_messages, .. } = &answer {
            metrics::queue_sent(self.phase, *queue_messages);
        }
        Ok(answer)
    }

    pub async fn record_visitor(&self, capture: &Capture) -> Result<()> {
        self.call::<_, Value>("/visitor", capture).await.map(|_| ())
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
