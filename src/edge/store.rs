//! D1 access: merchant configuration, event records, the delivery ledger and log.

use crate::config::MerchantConfig;
use crate::delivery::{DeadLetter, DeliveryJob};
use crate::enrich::KnownCustomer;
use crate::event::{CanonicalEvent, EventName};
use crate::sources::crm::CrmContext;
use crate::sources::{CustomerRecord, SourceOutput};
use serde::Deserialize;
use serde_json::Value;
use wasm_bindgen::JsValue;
use worker::{console_warn, D1Database, Env, Result};

pub const BINDING: &str = "DB";

fn text(value: &str) -> JsValue {
    JsValue::from_str(value)
}

fn int(value: i64) -> JsValue {
    JsValue::from_f64(value as f64)
}

fn opt_text(value: Option<&str>) -> JsValue {
    value.map_or(JsValue::NULL, JsValue::from_str)
}

fn opt_int(value: Option<i64>) -> JsValue {
    value.map_or(JsValue::NULL, int)
}

pub struct Store {
    db: D1Database,
}

#[derive(Deserialize)]
struct MerchantRow {
    merchant_id: String,
    region: String,
    plan: String,
    status: String,
    value_policy: String,
    lifecycle: String,
}

#[derive(Deserialize)]
struct ConfigRow {
    name: String,
    config: String,
}

#[derive(Deserialize)]
pub struct DeliveryRow {
    pub status: String,
    pub attempts: i64,
}

impl Store {
    pub fn from_env(env: &Env) -> Result<Self> {
        Ok(Store {
            db: env.d1(BINDING)?,
        })
    }

    /// The merchant with its sources and enabled destinations, or `None` if unknown.
    /// Parse failures never echo the stored JSON, which holds secrets.
    pub async fn load_merchant(&self, merchant_id: &str) -> Result<Option<MerchantConfig>> {
        let row: Option<MerchantRow> = self
            .db
            .prepare("SELECT merchant_id, region, plan, status, value_policy, lifecycle FROM merchants WHERE merchant_id = ?1")
            .bind(&[text(merchant_id)])?
            .first(None)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let mut merchant = MerchantConfig {
            merchant_id: row.merchant_id,
            region: enum_field(merchant_id, "region", &row.region)?,
            plan: enum_field(merchant_id, "plan", &row.plan)?,
            status: enum_field(merchant_id, "status", &row.status)?,
            value_policy: serde_json::from_str(&row.value_policy).map_err(|_| {
                worker::Error::RustError(format!("merchant {merchant_id}: invalid value_policy"))
            })?,
            lifecycle: serde_json::from_str(&row.lifecycle).map_err(|_| {
                worker::Error::RustError(format!("merchant {merchant_id}: invalid lifecycle"))
            })?,
            sources: Default::default(),
            destinations: Default::default(),
        };
        let sources: Vec<ConfigRow> = self
            .db
            .prepare("SELECT source AS name, config FROM merchant_sources WHERE merchant_id = ?1")
            .bind(&[text(merchant_id)])?
            .all()
            .await?
            .results()?;
        for row in sources {
            if let Some(config) = parse_config(merchant_id, &row) {
                merchant.sources.insert(row.name, config);
            }
        }
        let destinations: Vec<ConfigRow> = self
            .db
            .prepare("SELECT destination AS name, config FROM merchant_destinations WHERE merchant_id = ?1 AND enabled = 1")
            .bind(&[text(merchant_id)])?
            .all()
            .await?
            .results()?;
        for row in destinations {
            if let Some(config) = parse_config(merchant_id, &row) {
                merchant.destinations.insert(row.name, config);
            }
        }
        Ok(Some(merchant))
    }

    /// Records what one verified webhook produced, all in one D1 transaction: events,
    /// pending deliveries, an ignored marker, and customer identity (newest wins).
    pub async fn record_ingest(
        &self,
        merchant_id: &str,
        output: &SourceOutput,
        jobs: &[DeliveryJob],
        now_ms: i64,
    ) -> Result<()> {
        let mut statements = Vec::new();
        for event in &output.events {
            let payload = serde_json::to_string(event)
                .map_err(|e| worker::Error::RustError(e.to_string()))?;
            statements.push(
                self.db
                    .prepare(
                        "INSERT INTO canonical_events (event_id, merchant_id, name, source, source_event_id, \
                         source_event_type, occurred_at_s, payload, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                         ON CONFLICT (event_id) DO NOTHING",
                    )
                    .bind(&[
                        text(&event.event_id),
                        text(merchant_id),
                        text(event.name.as_str()),
                        text(&event.source),
                        text(&event.source_event_id),
                        text(&event.source_event_type),
                        int(event.occurred_at),
                        text(&payload),
                        int(now_ms),
                    ])?,
            );
        }
        for job in jobs {
            statements.push(
                self.db
                    .prepare(
                        "INSERT INTO deliveries (job_id, event_id, merchant_id, destination, status, attempts, created_at, updated_at) \
                         VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?5) ON CONFLICT (job_id) DO NOTHING",
                    )
                    .bind(&[text(&job.job_id), text(&job.event.event_id), text(merchant_id), text(&job.destination), int(now_ms)])?,
            );
        }
        if let Some(reason) = &output.ignored_reason {
            statements.push(
                self.db
                    .prepare(
                        "INSERT INTO ignored_events (merchant_id, source, source_event_id, source_event_type, reason, received_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                    )
                    .bind(&[
                        text(merchant_id),
                        text(output.source),
                        text(&output.source_event_id),
                        text(&output.source_event_type),
                        text(reason),
                        int(now_ms),
                    ])?,
            );
        }
        if let Some(customer) = &output.customer {
            statements.push(self.upsert_customer(merchant_id, output.source, customer, now_ms)?);
        }
        if let Some(context) = &output.crm_context {
            let json = serde_json::to_string(context)
                .map_err(|e| worker::Error::RustError(e.to_string()))?;
            for key in &context.identity_keys {
                // Newest deal context wins; an older redelivery never overwrites it.
                statements.push(
                    self.db
                        .prepare(
                            "INSERT INTO crm_context (merchant_id, identity_key, crm, context, observed_at_s, updated_at) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (merchant_id, identity_key) DO UPDATE SET \
                             crm = excluded.crm, context = excluded.context, observed_at_s = excluded.observed_at_s, \
                             updated_at = excluded.updated_at WHERE excluded.observed_at_s >= crm_context.observed_at_s",
                        )
                        .bind(&[
                            text(merchant_id),
                            text(key),
                            text(&context.crm),
                            text(&json),
                            int(context.observed_at),
                            int(now_ms),
                        ])?,
                );
            }
        }
        for event in &output.events {
            if event.name == EventName::SubscriptionCancelled {
                if let Some(statement) = self.remember_cancellation(merchant_id, event, now_ms)? {
                    statements.push(statement);
                }
            }
        }
        if !statements.is_empty() {
            self.db.batch(statements).await?;
        }
        Ok(())
    }

    fn upsert_customer(
        &self,
        merchant_id: &str,
        source: &str,
        customer: &CustomerRecord,
        now_ms: i64,
    ) -> Result<worker::D1PreparedStatement> {
        // An older customer event never overwrites a newer one.
        self.db
            .prepare(
                "INSERT INTO customers (merchant_id, source, customer_id, email, observed_at_s, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (merchant_id, source, customer_id) DO UPDATE SET \
                 email = excluded.email, observed_at_s = excluded.observed_at_s, updated_at = excluded.updated_at \
                 WHERE excluded.observed_at_s >= customers.observed_at_s",
            )
            .bind(&[
                text(merchant_id),
                text(source),
                text(&customer.customer_id),
                opt_text(customer.email.as_deref()),
                int(customer.observed_at),
                int(now_ms),
            ])
    }

    /// The newest cancellation per customer, for the reactivation rule.
    fn remember_cancellation(
        &self,
        merchant_id: &str,
        event: &CanonicalEvent,
        now_ms: i64,
    ) -> Result<Option<worker::D1PreparedStatement>> {
        let Some(customer_id) = &event.customer.customer_id else {
            return Ok(None);
        };
        let cancelled_at = event
            .subscription
            .effective_end_at
            .unwrap_or(event.occurred_at);
        let statement = self
            .db
            .prepare(
                "INSERT INTO customers (merchant_id, source, customer_id, email, observed_at_s, updated_at, \
                 last_cancelled_at_s, last_cancelled_subscription) VALUES (?1, ?2, ?3, NULL, 0, ?4, ?5, ?6) \
                 ON CONFLICT (merchant_id, source, customer_id) DO UPDATE SET \
                 last_cancelled_at_s = excluded.last_cancelled_at_s, \
                 last_cancelled_subscription = excluded.last_cancelled_subscription, updated_at = excluded.updated_at \
                 WHERE customers.last_cancelled_at_s IS NULL OR excluded.last_cancelled_at_s >= customers.last_cancelled_at_s",
            )
            .bind(&[
                text(merchant_id),
                text(&event.source),
                text(customer_id),
                int(now_ms),
                int(cancelled_at),
                opt_text(event.subscription.subscription_id.as_deref()),
            ])?;
        Ok(Some(statement))
    }

    pub async fn known_customer(
        &self,
        merchant_id: &str,
        source: &str,
        customer_id: &str,
    ) -> Result<Option<KnownCustomer>> {
        #[derive(Deserialize)]
        struct Row {
            email: Option<String>,
            last_cancelled_at_s: Option<i64>,
            last_cancelled_subscription: Option<String>,
        }
        let row: Option<Row> = self
            .db
            .prepare(
                "SELECT email, last_cancelled_at_s, last_cancelled_subscription FROM customers \
                 WHERE merchant_id = ?1 AND source = ?2 AND customer_id = ?3",
            )
            .bind(&[text(merchant_id), text(source), text(customer_id)])?
            .first(None)
            .await?;
        Ok(row.map(|r| KnownCustomer {
            email: r.email,
            last_cancelled_at: r.last_cancelled_at_s,
            last_cancelled_subscription: r.last_cancelled_subscription,
        }))
    }

    /// The newest CRM deal context stored under any of these identity keys.
    pub async fn crm_context(
        &self,
        merchant_id: &str,
        keys: &[String],
    ) -> Result<Option<CrmContext>> {
        #[derive(Deserialize)]
        struct Row {
            context: String,
        }
        if keys.is_empty() {
            return Ok(None);
        }
        let keys =
            serde_json::to_string(keys).map_err(|e| worker::Error::RustError(e.to_string()))?;
        let row: Option<Row> = self
            .db
            .prepare(
                "SELECT context FROM crm_context WHERE merchant_id = ?1 \
                 AND identity_key IN (SELECT value FROM json_each(?2)) ORDER BY observed_at_s DESC LIMIT 1",
            )
            .bind(&[text(merchant_id), text(&keys)])?
            .first(None)
            .await?;
        Ok(row.and_then(|r| serde_json::from_str(&r.context).ok()))
    }

    /// Of these events, the ones whose delivery jobs are not on the queue yet. One
    /// logical conversion reported by two webhooks is enqueued once.
    pub async fn events_to_enqueue(&self, event_ids: &[&str]) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Row {
            event_id: String,
        }
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::to_string(event_ids)
            .map_err(|e| worker::Error::RustError(e.to_string()))?;
        let rows: Vec<Row> = self
            .db
            .prepare(
                "SELECT event_id FROM canonical_events WHERE enqueued_at IS NULL \
                 AND event_id IN (SELECT value FROM json_each(?1))",
            )
            .bind(&[text(&ids)])?
            .all()
            .await?
            .results()?;
        let pending: Vec<String> = rows.into_iter().map(|r| r.event_id).collect();
        Ok(pending)
    }

    pub async fn mark_enqueued(&self, event_ids: &[&str], now_ms: i64) -> Result<()> {
        let mut statements = Vec::new();
        for event_id in event_ids {
            statements.push(
                self.db
                    .prepare("UPDATE canonical_events SET enqueued_at = ?2 WHERE event_id = ?1 AND enqueued_at IS NULL")
                    .bind(&[text(event_id), int(now_ms)])?,
            );
        }
        if !statements.is_empty() {
            self.db.batch(statements).await?;
        }
        Ok(())
    }

    pub async fn delivery(&self, job_id: &str) -> Result<Option<DeliveryRow>> {
        self.db
            .prepare("SELECT status, attempts FROM deliveries WHERE job_id = ?1")
            .bind(&[text(job_id)])?
            .first(None)
            .await
    }

    /// Logs one attempt and moves the delivery row to its new state, atomically.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_attempt(
        &self,
        job: &DeliveryJob,
        attempt: u32,
        outcome: &str,
        http_status: Option<u16>,
        detail: Option<&str>,
        request_url: Option<&str>,
        duration_ms: i64,
        new_status: &str,
        now_ms: i64,
    ) -> Result<()> {
        let log = self
            .db
            .prepare(
                "INSERT INTO delivery_attempts (job_id, event_id, merchant_id, destination, attempt, outcome, http_status, \
                 detail, request_url, duration_ms, attempted_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .bind(&[
                text(&job.job_id),
                text(&job.event.event_id),
                text(&job.event.merchant_id),
                text(&job.destination),
                int(attempt as i64),
                text(outcome),
                opt_int(http_status.map(i64::from)),
                opt_text(detail),
                opt_text(request_url),
                int(duration_ms),
                int(now_ms),
            ])?;
        let state = self
            .db
            .prepare(
                "INSERT INTO deliveries (job_id, event_id, merchant_id, destination, status, attempts, last_error, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) ON CONFLICT (job_id) DO UPDATE SET \
                 status = excluded.status, attempts = excluded.attempts, last_error = excluded.last_error, updated_at = excluded.updated_at",
            )
            .bind(&[
                text(&job.job_id),
                text(&job.event.event_id),
                text(&job.event.merchant_id),
                text(&job.destination),
                text(new_status),
                int(attempt as i64),
                opt_text(if outcome == "delivered" { None } else { detail }),
                int(now_ms),
            ])?;
        self.db.batch(vec![log, state]).await?;
        Ok(())
    }

    pub async fn record_dead_letter(&self, letter: &DeadLetter, now_ms: i64) -> Result<()> {
        let job_json = serde_json::to_string(&letter.job)
            .map_err(|e| worker::Error::RustError(e.to_string()))?;
        let job = &letter.job;
        let insert = self
            .db
            .prepare(
                "INSERT INTO dead_letters (job_id, event_id, merchant_id, destination, attempts, reason, last_error, job, dead_lettered_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (job_id) DO UPDATE SET attempts = excluded.attempts, \
                 reason = excluded.reason, last_error = excluded.last_error, dead_lettered_at = excluded.dead_lettered_at, replayed_at = NULL",
            )
            .bind(&[
                text(&job.job_id),
                text(&job.event.event_id),
                text(&job.event.merchant_id),
                text(&job.destination),
                int(letter.attempts as i64),
                text(&letter.reason),
                text(&letter.last_error),
                text(&job_json),
                int(now_ms),
            ])?;
        let status = self
            .db
            .prepare("UPDATE deliveries SET status = 'dead_lettered', last_error = ?2, updated_at = ?3 WHERE job_id = ?1")
            .bind(&[text(&job.job_id), text(&letter.last_error), int(now_ms)])?;
        self.db.batch(vec![insert, status]).await?;
        Ok(())
    }

    /// Claims today's run of a cron expression; false if it already ran.
    pub async fn claim_cron_run(&self, cron: &str, run_date: &str, now_ms: i64) -> Result<bool> {
        let result = self
            .db
            .prepare("INSERT INTO cron_runs (cron, run_date, started_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")
            .bind(&[text(cron), text(run_date), int(now_ms)])?
            .run()
            .await?;
        Ok(result.meta()?.and_then(|m| m.changes).unwrap_or(0) > 0)
    }

    pub async fn finish_cron_run(
        &self,
        cron: &str,
        run_date: &str,
        detail: &Value,
        now_ms: i64,
    ) -> Result<()> {
        self.db
            .prepare("UPDATE cron_runs SET finished_at = ?3, detail = ?4 WHERE cron = ?1 AND run_date = ?2")
            .bind(&[text(cron), text(run_date), int(now_ms), text(&detail.to_string())])?
            .run()
            .await?;
        Ok(())
    }

    /// Deletes rows older than `cutoff_ms` from a table with the given time column.
    pub async fn purge_older_than(
        &self,
        table: &'static str,
        column: &'static str,
        cutoff_ms: i64,
    ) -> Result<i64> {
        let result = self
            .db
            .prepare(format!("DELETE FROM {table} WHERE {column} < ?1"))
            .bind(&[int(cutoff_ms)])?
            .run()
            .await?;
        Ok(result.meta()?.and_then(|m| m.changes).unwrap_or(0) as i64)
    }

    /// Rows for the operator read endpoints, newest first.
    pub async fn list(
        &self,
        sql: &'static str,
        merchant_id: &str,
        limit: i64,
    ) -> Result<Vec<Value>> {
        self.db
            .prepare(sql)
            .bind(&[text(merchant_id), int(limit)])?
            .all()
            .await?
            .results()
    }
}

fn enum_field<T: serde::de::DeserializeOwned>(
    merchant_id: &str,
    field: &str,
    value: &str,
) -> Result<T> {
    serde_json::from_value(Value::String(value.to_string()))
        .map_err(|_| worker::Error::RustError(format!("merchant {merchant_id}: invalid {field}")))
}

/// The stored JSON of one source or destination; its module checks the shape when used.
fn parse_config(merchant_id: &str, row: &ConfigRow) -> Option<Value> {
    match serde_json::from_str(&row.config) {
        Ok(config) => Some(config),
        Err(_) => {
            console_warn!(
                "merchant {merchant_id}: stored {} config is not JSON; treating as not configured",
                row.name
            );
            None
        }
    }
}
