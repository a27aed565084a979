//! D1 access: merchant configuration, event records, the delivery ledger and log.

use super::regions::db_binding;
use super::routing::Route;
use crate::admin::{ListQuery, SqlParam};
use crate::config::{MerchantConfig, Region};
use crate::delivery::{DeadLetter, DeliveryJob};
use crate::enrich::KnownCustomer;
use crate::event::{CanonicalEvent, EventName};
use crate::identity::{self, MatchQuality, Touchpoints};
use crate::pixel::Capture;
use crate::retention::Purge;
use crate::secrets::{config_context, Keyring};
use crate::sources::crm::CrmContext;
use crate::sources::{CustomerRecord, SourceOutput};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use wasm_bindgen::JsValue;
use worker::{D1Database, Env, Result};

/// A newer capture replaces stored values field by field (`json_patch`); an older one
/// only fills what is missing.
const IDENTITY_UPSERT: &str = "ON CONFLICT (merchant_id, identity_key) DO UPDATE SET \
     touchpoints = CASE WHEN excluded.captured_at_s >= identities.captured_at_s \
       THEN json_patch(identities.touchpoints, excluded.touchpoints) \
       ELSE json_patch(excluded.touchpoints, identities.touchpoints) END, \
     captured_at_s = max(identities.captured_at_s, excluded.captured_at_s), \
     updated_at = excluded.updated_at";

pub fn text(value: &str) -> JsValue {
    JsValue::from_str(value)
}

pub fn int(value: i64) -> JsValue {
    JsValue::from_f64(value as f64)
}

pub fn opt_text(value: Option<&str>) -> JsValue {
    value.map_or(JsValue::NULL, JsValue::from_str)
}

pub fn opt_int(value: Option<i64>) -> JsValue {
    value.map_or(JsValue::NULL, int)
}

fn rust_error(err: impl std::fmt::Display) -> worker::Error {
    worker::Error::RustError(err.to_string())
}

fn changes(result: &worker::D1Result) -> Result<i64> {
    Ok(result.meta()?.and_then(|m| m.changes).unwrap_or(0) as i64)
}

pub struct Store {
    db: D1Database,
}

/// One delivery attempt as logged, and the delivery's new state.
#[derive(Debug, Clone, Copy)]
pub struct AttemptRecord<'a> {
    pub attempt: u32,
    pub outcome: &'a str,
    pub http_status: Option<u16>,
    pub detail: Option<&'a str>,
    pub request_url: Option<&'a str>,
    pub duration_ms: i64,
    pub new_status: &'a str,
    pub match_quality: Option<&'a MatchQuality>,
}

#[derive(Deserialize)]
pub struct SettingsRow {
    pub value_policy: String,
    pub lifecycle: String,
    pub dry_run: i64,
}

#[derive(Deserialize)]
pub struct ConfigRow {
    pub name: String,
    pub config: String,
}

/// Which config table a source or destination lives in.
fn config_table(kind: &str) -> (&'static str, &'static str) {
    if kind == "destination" {
        ("merchant_destinations", "destination")
    } else {
        ("merchant_sources", "source")
    }
}

pub struct DeliveryRow {
    pub status: String,
    pub attempts: i64,
}

impl Store {
    /// The database of `region`: the only place that region's merchant data lives.
    pub fn for_region(env: &Env, region: Region) -> Result<Self> {
        Ok(Store {
            db: env.d1(db_binding(region))?,
        })
    }

    pub async fn settings(&self, merchant_id: &str) -> Result<Option<SettingsRow>> {
        self.db
            .prepare(
                "SELECT value_policy, lifecycle, dry_run FROM merchants WHERE merchant_id = ?1",
            )
            .bind(&[text(merchant_id)])?
            .first(None)
            .await
    }

    /// The merchant with its sources and enabled destinations, or `None` if this region
    /// holds no settings for it. A config that does not open or parse is loaded as
    /// `null`, which its module refuses as misconfigured (503, the source retries).
    pub async fn load_merchant(
        &self,
        route: &Route,
        keyring: Option<&Keyring>,
    ) -> Result<Option<MerchantConfig>> {
        let merchant_id = route.merchant_id.as_str();
        let Some(row) = self.settings(merchant_id).await? else {
            return Ok(None);
        };
        let mut merchant = MerchantConfig {
            merchant_id: merchant_id.to_string(),
            region: route.region,
            plan: route.plan,
            status: route.status,
            value_policy: serde_json::from_str(&row.value_policy)
                .map_err(|_| rust_error(format!("merchant {merchant_id}: invalid value_policy")))?,
            lifecycle: serde_json::from_str(&row.lifecycle)
                .map_err(|_| rust_error(format!("merchant {merchant_id}: invalid lifecycle")))?,
            dry_run: row.dry_run != 0,
            sources: Default::default(),
            destinations: Default::default(),
        };
        for row in self.configs(merchant_id, "source").await? {
            let config = open_config(merchant_id, "source", &row, keyring);
            merchant.sources.insert(row.name, config);
        }
        for row in self.configs(merchant_id, "destination").await? {
            let config = open_config(merchant_id, "destination", &row, keyring);
            merchant.destinations.insert(row.name, config);
        }
        Ok(Some(merchant))
    }

    /// Sealed configs of one kind (`source` or `destination`); destinations only if enabled.
    pub async fn configs(&self, merchant_id: &str, kind: &str) -> Result<Vec<ConfigRow>> {
        let (table, column) = config_table(kind);
        let enabled = if kind == "destination" {
            " AND enabled = 1"
        } else {
            ""
        };
        self.db
            .prepare(format!(
                "SELECT {column} AS name, config FROM {table} WHERE merchant_id = ?1{enabled} ORDER BY {column}"
            ))
            .bind(&[text(merchant_id)])?
            .all()
            .await?
            .results()
    }

    pub async fn create_settings(
        &self,
        merchant_id: &str,
        value_policy: &Value,
        lifecycle: &Value,
        dry_run: bool,
        now_ms: i64,
    ) -> Result<()> {
        self.db
            .prepare("INSERT INTO merchants (merchant_id, value_policy, lifecycle, dry_run, created_at, updated_at) \
                      VALUES (?1, ?2, ?3, ?5, ?4, ?4) ON CONFLICT (merchant_id) DO UPDATE SET \
                      value_policy = excluded.value_policy, lifecycle = excluded.lifecycle, \
                      dry_run = excluded.dry_run, updated_at = excluded.updated_at")
            .bind(&[text(merchant_id), text(&value_policy.to_string()), text(&lifecycle.to_string()), int(now_ms), int(i64::from(dry_run))])?
            .run()
            .await?;
        Ok(())
    }

    pub async fn update_settings(
        &self,
        merchant_id: &str,
        value_policy: Option<&Value>,
        lifecycle: Option<&Value>,
        dry_run: Option<bool>,
        now_ms: i64,
    ) -> Result<()> {
        self.db
            .prepare(
                "UPDATE merchants SET value_policy = COALESCE(?2, value_policy), \
                 lifecycle = COALESCE(?3, lifecycle), dry_run = COALESCE(?5, dry_run), \
                 updated_at = ?4 WHERE merchant_id = ?1",
            )
            .bind(&[
                text(merchant_id),
                opt_text(value_policy.map(Value::to_string).as_deref()),
                opt_text(lifecycle.map(Value::to_string).as_deref()),
                int(now_ms),
                opt_int(dry_run.map(i64::from)),
            ])?
            .run()
            .await?;
        Ok(())
    }

    /// Stores a sealed config (replacing the previous one).
    pub async fn put_config(
        &self,
        merchant_id: &str,
        kind: &str,
        name: &str,
        sealed: &str,
        now_ms: i64,
    ) -> Result<()> {
        let (table, column) = config_table(kind);
        self.db
            .prepare(format!(
                "INSERT INTO {table} (merchant_id, {column}, config, updated_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (merchant_id, {column}) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at"
            ))
            .bind(&[text(merchant_id), text(name), text(sealed), int(now_ms)])?
            .run()
            .await?;
        Ok(())
    }

    /// Removes a config; false if there was none.
    pub async fn delete_config(&self, merchant_id: &str, kind: &str, name: &str) -> Result<bool> {
        let (table, column) = config_table(kind);
        let result = self
            .db
            .prepare(format!(
                "DELETE FROM {table} WHERE merchant_id = ?1 AND {column} = ?2"
            ))
            .bind(&[text(merchant_id), text(name)])?
            .run()
            .await?;
        Ok(changes(&result)? > 0)
    }

    /// Every stored config of this region, for re-sealing under a new master key.
    pub async fn all_configs(&self, kind: &str) -> Result<Vec<(String, ConfigRow)>> {
        #[derive(Deserialize)]
        struct Row {
            merchant_id: String,
            name: String,
            config: String,
        }
        let (table, column) = config_table(kind);
        let rows: Vec<Row> = self
            .db
            .prepare(format!(
                "SELECT merchant_id, {column} AS name, config FROM {table}"
            ))
            .all()
            .await?
            .results()?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    r.merchant_id,
                    ConfigRow {
                        name: r.name,
                        config: r.config,
                    },
                )
            })
            .collect())
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
                         source_event_type, occurred_at_s, payload, received_at, ordering_key) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT (event_id) DO UPDATE SET \
                         payload = json_patch(excluded.payload, canonical_events.payload)",
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
                        text(&output.ordering_key),
                    ])?,
            );
        }
        statements.push(
            self.db
                .prepare("INSERT INTO ledger_keys (merchant_id, ordering_key, first_seen) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")
                .bind(&[text(merchant_id), text(&output.ordering_key), int(now_ms)])?,
        );
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
        for event in output.events.iter().filter(|e| !e.touchpoints.is_empty()) {
            statements.extend(self.remember_touchpoints(merchant_id, event, now_ms)?);
        }
        // The merchant's server names the pixel visitor this person was.
        for event in &output.events {
            let (Some(visitor_id), keys) = (&event.touchpoints.visitor_id, identity::keys(event))
            else {
                continue;
            };
            if !keys.is_empty() {
                statements.extend(self.link_visitor(
                    merchant_id,
                    &crate::pixel::visitor_key(visitor_id),
                    &keys,
                    now_ms,
                )?);
            }
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

    /// Click ids captured with an event, under each key the person can be found by.
    fn remember_touchpoints(
        &self,
        merchant_id: &str,
        event: &CanonicalEvent,
        now_ms: i64,
    ) -> Result<Vec<worker::D1PreparedStatement>> {
        let captured_at = event.touchpoints.captured_at.unwrap_or(event.occurred_at);
        identity::keys(event)
            .iter()
            .map(|key| {
                self.upsert_identity(merchant_id, key, &event.touchpoints, captured_at, now_ms)
            })
            .collect()
    }

    fn upsert_identity(
        &self,
        merchant_id: &str,
        key: &str,
        touchpoints: &Touchpoints,
        captured_at_s: i64,
        now_ms: i64,
    ) -> Result<worker::D1PreparedStatement> {
        let json = serde_json::to_string(&touchpoints.for_store()).map_err(rust_error)?;
        self.db
            .prepare(format!(
                "INSERT INTO identities (merchant_id, identity_key, touchpoints, captured_at_s, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) {IDENTITY_UPSERT}"
            ))
            .bind(&[
                text(merchant_id),
                text(key),
                text(&json),
                int(captured_at_s),
                int(now_ms),
            ])
    }

    /// Links a pixel visitor to the keys of the person it turned out to be, then copies
    /// what the pixel holds for the visitor to every key it is linked to.
    fn link_visitor(
        &self,
        merchant_id: &str,
        visitor_key: &str,
        keys: &[String],
        now_ms: i64,
    ) -> Result<Vec<worker::D1PreparedStatement>> {
        let mut statements = Vec::with_capacity(keys.len() + 1);
        for key in keys {
            statements.push(
                self.db
                    .prepare(
                        "INSERT INTO identity_links (merchant_id, visitor_key, identity_key, linked_at) \
                         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (merchant_id, visitor_key, identity_key) \
                         DO UPDATE SET linked_at = excluded.linked_at",
                    )
                    .bind(&[text(merchant_id), text(visitor_key), text(key), int(now_ms)])?,
            );
        }
        // WHERE is required before an upsert on INSERT … SELECT (SQLite parsing rule).
        statements.push(
            self.db
                .prepare(format!(
                    "INSERT INTO identities (merchant_id, identity_key, touchpoints, captured_at_s, updated_at) \
                     SELECT l.merchant_id, l.identity_key, v.touchpoints, v.captured_at_s, ?3 \
                     FROM identity_links l JOIN identities v \
                       ON v.merchant_id = l.merchant_id AND v.identity_key = l.visitor_key \
                     WHERE l.merchant_id = ?1 AND l.visitor_key = ?2 {IDENTITY_UPSERT}"
                ))
                .bind(&[text(merchant_id), text(visitor_key), int(now_ms)])?,
        );
        Ok(statements)
    }

    /// One pixel beacon: the visitor's capture, its new links, and the copy to every
    /// person it is linked to, in one transaction.
    pub async fn record_visitor(
        &self,
        merchant_id: &str,
        capture: &Capture,
        now_ms: i64,
    ) -> Result<()> {
        let captured_at = capture.touchpoints.captured_at.unwrap_or(now_ms / 1000);
        let mut statements = vec![self.upsert_identity(
            merchant_id,
            &capture.visitor_key,
            &capture.touchpoints,
            captured_at,
            now_ms,
        )?];
        statements.extend(self.link_visitor(
            merchant_id,
            &capture.visitor_key,
            &capture.link_keys,
            now_ms,
        )?);
        self.db.batch(statements).await?;
        Ok(())
    }

    /// Rows of a query whose only parameter `?1` is `list` as a JSON array (read with
    /// `json_each`): one round trip for a whole batch. An empty list reads nothing.
    async fn rows_for_list<T: serde::de::DeserializeOwned, K: Serialize>(
        &self,
        sql: &str,
        list: &[K],
    ) -> Result<Vec<T>> {
        if list.is_empty() {
            return Ok(Vec::new());
        }
        self.db
            .prepare(sql)
            .bind(&[text(&serde_json::to_string(list).map_err(rust_error)?)])?
            .all()
            .await?
            .results()
    }

    /// Every identity-store record under these (merchant, key) pairs, freshest capture
    /// first: one query for a whole queue batch.
    pub async fn identity_records(
        &self,
        keys: &[(String, String)],
    ) -> Result<Vec<(String, String, Touchpoints)>> {
        #[derive(Deserialize)]
        struct Row {
            merchant_id: String,
            identity_key: String,
            touchpoints: String,
        }
        let rows: Vec<Row> = self
            .rows_for_list(
                "SELECT merchant_id, identity_key, touchpoints FROM identities \
                 WHERE (merchant_id, identity_key) IN \
                   (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?1)) \
                 ORDER BY captured_at_s DESC",
                keys,
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let stored = serde_json::from_str::<Touchpoints>(&row.touchpoints).ok()?;
                Some((row.merchant_id, row.identity_key, stored))
            })
            .collect())
    }

    /// Stored emails of these (merchant, source, customer id) triples, in one query.
    pub async fn customer_emails(
        &self,
        customers: &[(String, String, String)],
    ) -> Result<HashMap<(String, String, String), String>> {
        #[derive(Deserialize)]
        struct Row {
            merchant_id: String,
            source: String,
            customer_id: String,
            email: Option<String>,
        }
        let rows: Vec<Row> = self
            .rows_for_list(
                "SELECT merchant_id, source, customer_id, email FROM customers \
                 WHERE (merchant_id, source, customer_id) IN \
                   (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]') \
                    FROM json_each(?1))",
                customers,
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Some(((r.merchant_id, r.source, r.customer_id), r.email?)))
            .collect())
    }

    /// Every mapped conversion of the subscription a correction corrects, up to the
    /// correction's time, with the status of its delivery to `destination` (`None`: no
    /// delivery row), newest first. One query.
    pub async fn correction_candidates(
        &self,
        merchant_id: &str,
        destination: &str,
        correction: &CanonicalEvent,
        names: &[EventName],
    ) -> Result<Vec<(CanonicalEvent, Option<String>)>> {
        #[derive(Deserialize)]
        struct Row {
            payload: String,
            status: Option<String>,
        }
        let Some(subscription_id) = correction.subscription.subscription_id.as_deref() else {
            return Ok(Vec::new());
        };
        let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        let rows: Vec<Row> = self
            .db
            .prepare(
                "SELECT e.payload, (SELECT d.status FROM deliveries d WHERE d.event_id = e.event_id \
                   AND d.destination = ?4) AS status FROM canonical_events e WHERE e.merchant_id = ?1 \
                 AND json_extract(e.payload, '$.subscription.subscription_id') = ?2 \
                 AND e.name IN (SELECT value FROM json_each(?3)) AND e.occurred_at_s <= ?5 \
                 ORDER BY e.occurred_at_s DESC LIMIT 100",
            )
            .bind(&[
                text(merchant_id),
                text(subscription_id),
                text(&serde_json::to_string(&names).map_err(rust_error)?),
                text(destination),
                int(correction.occurred_at),
            ])?
            .all()
            .await?
            .results()?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Some((serde_json::from_str(&r.payload).ok()?, r.status)))
            .collect())
    }

    /// The health of these (merchant, destination) pairs; absent ones are healthy.
    pub async fn destination_health(
        &self,
        pairs: &[(String, String)],
    ) -> Result<HashMap<(String, String), crate::delivery::DestinationHealth>> {
        #[derive(Deserialize)]
        struct Row {
            merchant_id: String,
            destination: String,
            consecutive_failures: i64,
            parked_since: Option<i64>,
            next_probe_at: Option<i64>,
            probes: i64,
        }
        if pairs.is_empty() {
            return Ok(HashMap::new());
        }
        // Row values against the primary key, so each pair is an index lookup.
        let rows: Vec<Row> = self
            .rows_for_list(
                "SELECT merchant_id, destination, consecutive_failures, parked_since, next_probe_at, probes \
                 FROM destination_health WHERE (merchant_id, destination) IN \
                 (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?1))",
                pairs,
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    (r.merchant_id, r.destination),
                    crate::delivery::DestinationHealth {
                        consecutive_failures: r.consecutive_failures.max(0) as u32,
                        parked_since: r.parked_since,
                        next_probe_at: r.next_probe_at,
                        probes: r.probes.max(0) as u32,
                    },
                )
            })
            .collect())
    }

    pub async fn put_destination_health(
        &self,
        merchant_id: &str,
        destination: &str,
        health: &crate::delivery::DestinationHealth,
        now_ms: i64,
    ) -> Result<()> {
        self.db
            .prepare(
                "INSERT INTO destination_health (merchant_id, destination, consecutive_failures, parked_since, \
                 next_probe_at, probes, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (merchant_id, destination) DO UPDATE SET consecutive_failures = excluded.consecutive_failures, \
                 parked_since = excluded.parked_since, next_probe_at = excluded.next_probe_at, probes = excluded.probes, \
                 updated_at = excluded.updated_at",
            )
            .bind(&[
                text(merchant_id),
                text(destination),
                int(i64::from(health.consecutive_failures)),
                opt_int(health.parked_since),
                opt_int(health.next_probe_at),
                int(i64::from(health.probes)),
                int(now_ms),
            ])?
            .run()
            .await?;
        Ok(())
    }

    /// Parked destinations of a merchant, for its views.
    pub async fn parked_destinations(&self, merchant_id: &str) -> Result<Vec<Value>> {
        Ok(self
            .db
            .prepare(
                "SELECT destination, parked_since, next_probe_at, probes, consecutive_failures \
                 FROM destination_health WHERE merchant_id = ?1 AND parked_since IS NOT NULL",
            )
            .bind(&[text(merchant_id)])?
            .all()
            .await?
            .results()?)
    }

    /// Pending jobs nobody has touched for a while: never attempted since
    /// `unattempted_before`, or retried but silent since `attempted_before` (longer than
    /// any queue delay). Oldest first, with their events, in one query.
    pub async fn stale_jobs(
        &self,
        unattempted_before: i64,
        attempted_before: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryJob>> {
        #[derive(Deserialize)]
        struct Row {
            job_id: String,
            destination: String,
            payload: String,
        }
        let rows: Vec<Row> = self
            .db
            .prepare(
                "SELECT d.job_id, d.destination, e.payload FROM deliveries d \
                 JOIN canonical_events e ON e.event_id = d.event_id \
                 WHERE d.status = 'pending' AND ((d.attempts = 0 AND d.updated_at < ?1) OR d.updated_at < ?2) \
                 ORDER BY d.updated_at LIMIT ?3",
            )
            .bind(&[int(unattempted_before), int(attempted_before), int(limit)])?
            .all()
            .await?
            .results()?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                Some(DeliveryJob {
                    job_id: r.job_id,
                    destination: r.destination,
                    event: serde_json::from_str(&r.payload).ok()?,
                })
            })
            .collect())
    }

    /// Marks jobs as just worked on (re-enqueued, or waiting on purpose), so the sweeper
    /// leaves them alone.
    pub async fn touch_jobs(&self, job_ids: &[&str], now_ms: i64) -> Result<()> {
        if job_ids.is_empty() {
            return Ok(());
        }
        let ids = serde_json::to_string(job_ids).map_err(rust_error)?;
        self.db
            .prepare("UPDATE deliveries SET updated_at = ?2 WHERE status = 'pending' AND job_id IN (SELECT value FROM json_each(?1))")
            .bind(&[text(&ids), int(now_ms)])?
            .run()
            .await?;
        Ok(())
    }

    /// A cached OAuth access token (sealed) that is still valid at `now_ms`.
    pub async fn cached_token(
        &self,
        merchant_id: &str,
        destination: &str,
        now_ms: i64,
    ) -> Result<Option<String>> {
        #[derive(Deserialize)]
        struct Row {
            access_token: String,
        }
        let row: Option<Row> = self
            .db
            .prepare(
                "SELECT access_token FROM oauth_tokens WHERE merchant_id = ?1 AND destination = ?2 AND expires_at_ms > ?3",
            )
            .bind(&[text(merchant_id), text(destination), int(now_ms)])?
            .first(None)
            .await?;
        Ok(row.map(|r| r.access_token))
    }

    pub async fn store_token(
        &self,
        merchant_id: &str,
        destination: &str,
        sealed: &str,
        expires_at_ms: i64,
    ) -> Result<()> {
        self.db
            .prepare(
                "INSERT INTO oauth_tokens (merchant_id, destination, access_token, expires_at_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (merchant_id, destination) DO UPDATE SET access_token = excluded.access_token, \
                 expires_at_ms = excluded.expires_at_ms",
            )
            .bind(&[text(merchant_id), text(destination), text(sealed), int(expires_at_ms)])?
            .run()
            .await?;
        Ok(())
    }

    pub async fn drop_token(&self, merchant_id: &str, destination: &str) -> Result<()> {
        self.db
            .prepare("DELETE FROM oauth_tokens WHERE merchant_id = ?1 AND destination = ?2")
            .bind(&[text(merchant_id), text(destination)])?
            .run()
            .await?;
        Ok(())
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

    /// Stored canonical events by id (jobs that travelled by reference), in one query.
    /// A missing id was erased or purged.
    pub async fn events_by_id(
        &self,
        event_ids: &[&str],
    ) -> Result<HashMap<String, CanonicalEvent>> {
        #[derive(Deserialize)]
        struct Row {
            event_id: String,
            payload: String,
        }
        if event_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<Row> = self
            .rows_for_list(
                "SELECT event_id, payload FROM canonical_events \
                 WHERE event_id IN (SELECT value FROM json_each(?1))",
                event_ids,
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Some((r.event_id, serde_json::from_str(&r.payload).ok()?)))
            .collect())
    }

    /// The delivery rows of these jobs (missing ones were erased), in one query.
    pub async fn deliveries(&self, job_ids: &[&str]) -> Result<HashMap<String, DeliveryRow>> {
        #[derive(Deserialize)]
        struct Row {
            job_id: String,
            status: String,
            attempts: i64,
        }
        let rows: Vec<Row> = self
            .rows_for_list(
                "SELECT job_id, status, attempts FROM deliveries \
                 WHERE job_id IN (SELECT value FROM json_each(?1))",
                job_ids,
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let row = DeliveryRow {
                    status: r.status,
                    attempts: r.attempts,
                };
                (r.job_id, row)
            })
            .collect())
    }

    /// Logs one attempt and moves the delivery row to its new state, atomically.
    pub async fn record_attempt(
        &self,
        job: &DeliveryJob,
        record: &AttemptRecord<'_>,
        now_ms: i64,
    ) -> Result<()> {
        let AttemptRecord {
            attempt,
            outcome,
            http_status,
            detail,
            request_url,
            duration_ms,
            new_status,
            match_quality,
        } = *record;
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
                "INSERT INTO deliveries (job_id, event_id, merchant_id, destination, status, attempts, last_error, created_at, updated_at, \
                 match_score, match_keys) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10) ON CONFLICT (job_id) DO UPDATE SET \
                 status = excluded.status, attempts = excluded.attempts, last_error = excluded.last_error, updated_at = excluded.updated_at, \
                 match_score = COALESCE(excluded.match_score, deliveries.match_score), \
                 match_keys = COALESCE(excluded.match_keys, deliveries.match_keys)",
            )
            .bind(&[
                text(&job.job_id),
                text(&job.event.event_id),
                text(&job.event.merchant_id),
                text(&job.destination),
                text(new_status),
                int(attempt as i64),
                opt_text(if matches!(outcome, "delivered" | "dry_run") { None } else { detail }),
                int(now_ms),
                opt_int(match_quality.map(|q| i64::from(q.score))),
                opt_text(match_quality.map(MatchQuality::keys).as_deref()),
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

    /// The job of a dead letter of this merchant, if it exists.
    pub async fn dead_letter_job(
        &self,
        merchant_id: &str,
        job_id: &str,
    ) -> Result<Option<DeliveryJob>> {
        #[derive(Deserialize)]
        struct Row {
            job: String,
        }
        let row: Option<Row> = self
            .db
            .prepare("SELECT job FROM dead_letters WHERE merchant_id = ?1 AND job_id = ?2")
            .bind(&[text(merchant_id), text(job_id)])?
            .first(None)
            .await?;
        row.map(|r| serde_json::from_str(&r.job).map_err(rust_error))
            .transpose()
    }

    /// Jobs of the dead letters a bulk replay selects (see `ReplayFilter`).
    pub async fn dead_letter_jobs(
        &self,
        merchant_id: &str,
        filter: &crate::admin::ReplayFilter,
    ) -> Result<Vec<DeliveryJob>> {
        #[derive(Deserialize)]
        struct Row {
            job: String,
        }
        let rows: Vec<Row> = self
            .db
            .prepare(
                "SELECT job FROM dead_letters WHERE merchant_id = ?1 AND replayed_at IS NULL \
                 AND (?2 IS NULL OR destination = ?2) AND (?3 IS NULL OR dead_lettered_at >= ?3) \
                 AND (?4 IS NULL OR dead_lettered_at < ?4) ORDER BY dead_lettered_at, job_id LIMIT ?5",
            )
            .bind(&[
                text(merchant_id),
                opt_text(filter.destination.as_deref()),
                opt_int(filter.since),
                opt_int(filter.until),
                int(i64::from(filter.limit)),
            ])?
            .all()
            .await?
            .results()?;
        rows.iter()
            .map(|r| serde_json::from_str(&r.job).map_err(rust_error))
            .collect()
    }

    /// Makes a job deliverable again: pending, attempt count from zero.
    pub async fn reset_delivery(&self, job: &DeliveryJob, now_ms: i64) -> Result<()> {
        self.db
            .prepare("INSERT INTO deliveries (job_id, event_id, merchant_id, destination, status, attempts, created_at, updated_at) \
                      VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?5) ON CONFLICT (job_id) DO UPDATE SET \
                      status = 'pending', attempts = 0, last_error = NULL, updated_at = excluded.updated_at")
            .bind(&[
                text(&job.job_id),
                text(&job.event.event_id),
                text(&job.event.merchant_id),
                text(&job.destination),
                int(now_ms),
            ])?
            .run()
            .await?;
        Ok(())
    }

    pub async fn mark_replayed(&self, job_id: &str, now_ms: i64) -> Result<()> {
        self.db
            .prepare("UPDATE dead_letters SET replayed_at = ?2 WHERE job_id = ?1")
            .bind(&[text(job_id), int(now_ms)])?
            .run()
            .await?;
        Ok(())
    }

    /// Deletes the rows one retention rule says are due.
    pub async fn purge(&self, purge: &Purge) -> Result<i64> {
        let condition = purge
            .only_if
            .map(|c| format!(" AND {c}"))
            .unwrap_or_default();
        let result = self
            .db
            .prepare(format!(
                "DELETE FROM {} WHERE {} < ?1{condition}",
                purge.table, purge.column
            ))
            .bind(&[int(purge.cutoff_ms)])?
            .run()
            .await?;
        changes(&result)
    }

    /// One page of a log view (see `crate::admin::View`).
    pub async fn list(&self, query: &ListQuery) -> Result<Vec<Value>> {
        let params: Vec<JsValue> = query
            .params
            .iter()
            .map(|p| match p {
                SqlParam::Text(t) => text(t),
                SqlParam::Int(i) => int(*i),
            })
            .collect();
        self.db
            .prepare(&query.sql)
            .bind(&params)?
            .all()
            .await?
            .results()
    }

    /// GDPR erasure of one customer: every event, delivery, attempt, dead letter,
    /// identity and deal context tied to the email or billing/user id, including ids
    /// the email is known under. Returns the count per table.
    pub async fn erase_customer(
        &self,
        merchant_id: &str,
        email: Option<&str>,
        customer_id: Option<&str>,
    ) -> Result<Value> {
        #[derive(Deserialize)]
        struct IdRow {
            customer_id: String,
        }
        let email = email.map(|e| e.trim().to_lowercase());
        let mut customer_ids: Vec<String> = customer_id.map(str::to_string).into_iter().collect();
        if let Some(email) = &email {
            let known: Vec<IdRow> = self
                .db
                .prepare("SELECT customer_id FROM customers WHERE merchant_id = ?1 AND lower(email) = ?2")
                .bind(&[text(merchant_id), text(email)])?
                .all()
                .await?
                .results()?;
            customer_ids.extend(known.into_iter().map(|r| r.customer_id));
        }
        customer_ids.sort();
        customer_ids.dedup();
        let ids_json = serde_json::to_string(&customer_ids).map_err(rust_error)?;
        let email_param = opt_text(email.as_deref());
        // The customer's events, by identity inside the stored payload.
        let matching = "SELECT event_id FROM canonical_events WHERE merchant_id = ?1 AND (\
             lower(json_extract(payload, '$.customer.email')) = ?2 OR \
             json_extract(payload, '$.customer.customer_id') IN (SELECT value FROM json_each(?3)))";
        let mut statements = Vec::new();
        let mut tables = Vec::new();
        for table in ["delivery_attempts", "dead_letters", "deliveries"] {
            tables.push(table);
            statements.push(
                self.db
                    .prepare(format!(
                        "DELETE FROM {table} WHERE merchant_id = ?1 AND event_id IN ({matching})"
                    ))
                    .bind(&[text(merchant_id), email_param.clone(), text(&ids_json)])?,
            );
        }
        tables.push("canonical_events");
        statements.push(
            self.db
                .prepare(format!(
                    "DELETE FROM canonical_events WHERE event_id IN ({matching})"
                ))
                .bind(&[text(merchant_id), email_param.clone(), text(&ids_json)])?,
        );
        tables.push("customers");
        statements.push(
            self.db
                .prepare("DELETE FROM customers WHERE merchant_id = ?1 AND (lower(email) = ?2 OR customer_id IN (SELECT value FROM json_each(?3)))")
                .bind(&[text(merchant_id), email_param.clone(), text(&ids_json)])?,
        );
        let mut keys: Vec<String> = customer_ids
            .iter()
            .map(|id| CrmContext::customer_key(id))
            .collect();
        keys.extend(email.as_deref().map(CrmContext::email_key));
        tables.push("crm_context");
        statements.push(
            self.db
                .prepare("DELETE FROM crm_context WHERE merchant_id = ?1 AND identity_key IN (SELECT value FROM json_each(?2))")
                .bind(&[text(merchant_id), text(&serde_json::to_string(&keys).map_err(rust_error)?)])?,
        );
        let mut identity_keys: Vec<String> = customer_ids
            .iter()
            .map(|id| identity::customer_key(id))
            .collect();
        identity_keys.extend(email.as_deref().map(identity::email_key));
        let identity_keys_json = serde_json::to_string(&identity_keys).map_err(rust_error)?;
        // The pixel visitors this person was (their IPs and click ids) go with them.
        tables.push("visitors");
        statements.push(
            self.db
                .prepare(
                    "DELETE FROM identities WHERE merchant_id = ?1 AND identity_key IN \
                          (SELECT visitor_key FROM identity_links WHERE merchant_id = ?1 \
                           AND identity_key IN (SELECT value FROM json_each(?2)))",
                )
                .bind(&[text(merchant_id), text(&identity_keys_json)])?,
        );
        tables.push("identity_links");
        statements.push(
            self.db
                .prepare("DELETE FROM identity_links WHERE merchant_id = ?1 AND identity_key IN (SELECT value FROM json_each(?2))")
                .bind(&[text(merchant_id), text(&identity_keys_json)])?,
        );
        tables.push("identities");
        statements.push(
            self.db
                .prepare("DELETE FROM identities WHERE merchant_id = ?1 AND identity_key IN (SELECT value FROM json_each(?2))")
                .bind(&[text(merchant_id), text(&identity_keys_json)])?,
        );
        let results = self.db.batch(statements).await?;
        let mut counts = serde_json::Map::new();
        for (table, result) in tables.into_iter().zip(results.iter()) {
            counts.insert(table.to_string(), changes(result)?.into());
        }
        Ok(Value::Object(counts))
    }

    /// The ledgers (Durable Object names) that hold state for this merchant.
    pub async fn ledger_keys(&self, merchant_id: &str) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Row {
            ordering_key: String,
        }
        let rows: Vec<Row> = self
            .db
            .prepare("SELECT ordering_key FROM ledger_keys WHERE merchant_id = ?1")
            .bind(&[text(merchant_id)])?
            .all()
            .await?
            .results()?;
        Ok(rows.into_iter().map(|r| r.ordering_key).collect())
    }

    /// Whole-merchant deletion: every row of every table in this region.
    pub async fn delete_merchant(&self, merchant_id: &str) -> Result<Value> {
        const TABLES: [&str; 15] = crate::retention::MERCHANT_REGIONAL_TABLES;
        let mut statements = Vec::new();
        for table in TABLES {
            statements.push(
                self.db
                    .prepare(format!("DELETE FROM {table} WHERE merchant_id = ?1"))
                    .bind(&[text(merchant_id)])?,
            );
        }
        let results = self.db.batch(statements).await?;
        let mut counts = serde_json::Map::new();
        for (table, result) in TABLES.into_iter().zip(results.iter()) {
            counts.insert(table.to_string(), changes(result)?.into());
        }
        Ok(Value::Object(counts))
    }
}

/// Opens one sealed config. Failures are logged without the stored text and load as
/// `null`, which the module refuses as misconfigured.
fn open_config(merchant_id: &str, kind: &str, row: &ConfigRow, keyring: Option<&Keyring>) -> Value {
    let Some(keyring) = keyring else {
        super::emit(
            crate::log::Log::error(
                "MASTER_KEYS is not configured: a stored config cannot be opened",
            )
            .merchant(merchant_id)
            .text("config", &format!("{kind} {}", row.name)),
        );
        return Value::Null;
    };
    let context = config_context(merchant_id, kind, &row.name);
    match keyring
        .open(&row.config, &context)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|_| "not JSON".to_string()))
    {
        Ok(config) => config,
        Err(reason) => {
            super::emit(
                crate::log::Log::error("a stored config does not open")
                    .merchant(merchant_id)
                    .text("config", &format!("{kind} {}", row.name))
                    .reason(reason),
            );
            Value::Null
        }
    }
}
