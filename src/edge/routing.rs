//! The global D1 database: merchant routes (id → region, plan, status), API key hashes,
//! rejected-request counts and cron bookkeeping. Nothing personal lives here.

use super::regions::GLOBAL_DB;
use super::settings::{int, text};
use crate::config::{MerchantStatus, Plan, Region};
use crate::pixel::PixelSettings;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use worker::{D1Database, Env, Result};

pub struct Routing {
    db: D1Database,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MerchantRoute {
    pub merchant_id: String,
    pub region: Region,
    pub plan: Plan,
    pub status: MerchantStatus,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyRow {
    pub key_id: String,
    pub merchant_id: String,
    #[serde(skip_serializing)]
    pub secret_hash: String,
    pub label: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// A merchant's pixel, with what a beacon needs of its route.
#[derive(Debug, Clone, Deserialize)]
pub struct PixelRow {
    pub pixel_key: String,
    pub merchant_id: String,
    pub allowed_origins: String,
    pub browser_identify: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub region: Region,
    pub status: MerchantStatus,
}

impl PixelRow {
    pub fn settings(&self) -> PixelSettings {
        PixelSettings {
            allowed_origins: serde_json::from_str(&self.allowed_origins).unwrap_or_default(),
            browser_identify: self.browser_identify != 0,
        }
    }
}

const PIXEL_COLUMNS: &str = "p.pixel_key, p.merchant_id, p.allowed_origins, p.browser_identify, \
     p.created_at, p.updated_at, r.region, r.status \
     FROM pixel_keys p JOIN merchant_routes r ON r.merchant_id = p.merchant_id";

fn enum_text<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn changes(result: &worker::D1Result) -> Result<u64> {
    Ok(result.meta()?.and_then(|m| m.changes).unwrap_or(0) as u64)
}

impl Routing {
    pub fn from_env(env: &Env) -> Result<Self> {
        Ok(Routing {
            db: env.d1(GLOBAL_DB)?,
        })
    }

    pub async fn route(&self, merchant_id: &str) -> Result<Option<MerchantRoute>> {
        self.db
            .prepare("SELECT merchant_id, region, plan, status, created_at, updated_at FROM merchant_routes WHERE merchant_id = ?1")
            .bind(&[text(merchant_id)])?
            .first(None)
            .await
    }

    pub async fn routes(&self, region: Option<Region>) -> Result<Vec<MerchantRoute>> {
        let region = region.map(|r| enum_text(&r));
        self.db
            .prepare("SELECT merchant_id, region, plan, status, created_at, updated_at FROM merchant_routes \
                      WHERE ?1 IS NULL OR region = ?1 ORDER BY merchant_id")
            .bind(&[region.as_deref().map_or(wasm_bindgen::JsValue::NULL, text)])?
            .all()
            .await?
            .results()
    }

    /// Creates the route; false if the merchant id is taken.
    pub async fn create(&self, route: &MerchantRoute) -> Result<bool> {
        let result = self
            .db
            .prepare("INSERT INTO merchant_routes (merchant_id, region, plan, status, created_at, updated_at) \
                      VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT DO NOTHING")
            .bind(&[
                text(&route.merchant_id),
                text(&enum_text(&route.region)),
                text(&enum_text(&route.plan)),
                text(&enum_text(&route.status)),
                int(route.created_at),
            ])?
            .run()
            .await?;
        Ok(changes(&result)? > 0)
    }

    pub async fn update(
        &self,
        merchant_id: &str,
        plan: Plan,
        status: MerchantStatus,
        now_ms: i64,
    ) -> Result<()> {
        self.db
            .prepare("UPDATE merchant_routes SET plan = ?2, status = ?3, updated_at = ?4 WHERE merchant_id = ?1")
            .bind(&[text(merchant_id), text(&enum_text(&plan)), text(&enum_text(&status)), int(now_ms)])?
            .run()
            .await?;
        Ok(())
    }

    /// Removes the route and every API key of the merchant.
    pub async fn delete(&self, merchant_id: &str) -> Result<()> {
        let mut statements = Vec::new();
        for table in crate::retention::MERCHANT_GLOBAL_TABLES {
            statements.push(
                self.db
                    .prepare(format!("DELETE FROM {table} WHERE merchant_id = ?1"))
                    .bind(&[text(merchant_id)])?,
            );
        }
        self.db.batch(statements).await?;
        Ok(())
    }

    /// The pixel a beacon names, with its merchant's region and status: one read.
    pub async fn pixel(&self, pixel_key: &str) -> Result<Option<PixelRow>> {
        self.db
            .prepare(format!("SELECT {PIXEL_COLUMNS} WHERE p.pixel_key = ?1"))
            .bind(&[text(pixel_key)])?
            .first(None)
            .await
    }

    pub async fn pixel_of(&self, merchant_id: &str) -> Result<Option<PixelRow>> {
        self.db
            .prepare(format!("SELECT {PIXEL_COLUMNS} WHERE p.merchant_id = ?1"))
            .bind(&[text(merchant_id)])?
            .first(None)
            .await
    }

    /// Saves the settings; a merchant without a pixel gets `new_key`, one with a pixel
    /// keeps its key (pages already carry it).
    pub async fn put_pixel(
        &self,
        merchant_id: &str,
        new_key: &str,
        settings: &PixelSettings,
        now_ms: i64,
    ) -> Result<()> {
        let origins = serde_json::to_string(&settings.allowed_origins)
            .map_err(|e| worker::Error::RustError(e.to_string()))?;
        self.db
            .prepare(
                "INSERT INTO pixel_keys (pixel_key, merchant_id, allowed_origins, browser_identify, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT (merchant_id) DO UPDATE SET \
                 allowed_origins = excluded.allowed_origins, browser_identify = excluded.browser_identify, \
                 updated_at = excluded.updated_at",
            )
            .bind(&[
                text(new_key),
                text(merchant_id),
                text(&origins),
                int(i64::from(settings.browser_identify)),
                int(now_ms),
            ])?
            .run()
            .await?;
        Ok(())
    }

    /// Removes the pixel; its key stops working at once. False if there was none.
    pub async fn delete_pixel(&self, merchant_id: &str) -> Result<bool> {
        let result = self
            .db
            .prepare("DELETE FROM pixel_keys WHERE merchant_id = ?1")
            .bind(&[text(merchant_id)])?
            .run()
            .await?;
        Ok(changes(&result)? > 0)
    }

    pub async fn insert_api_key(&self, row: &ApiKeyRow) -> Result<()> {
        self.db
            .prepare("INSERT INTO api_keys (key_id, merchant_id, secret_hash, label, created_at) VALUES (?1, ?2, ?3, ?4, ?5)")
            .bind(&[
                text(&row.key_id),
                text(&row.merchant_id),
                text(&row.secret_hash),
                text(&row.label),
                int(row.created_at),
            ])?
            .run()
            .await?;
        Ok(())
    }

    pub async fn api_key(&self, key_id: &str) -> Result<Option<ApiKeyRow>> {
        self.db
            .prepare("SELECT key_id, merchant_id, secret_hash, label, created_at, last_used_at, revoked_at FROM api_keys WHERE key_id = ?1")
            .bind(&[text(key_id)])?
            .first(None)
            .await
    }

    pub async fn api_keys(&self, merchant_id: &str) -> Result<Vec<ApiKeyRow>> {
        self.db
            .prepare("SELECT key_id, merchant_id, secret_hash, label, created_at, last_used_at, revoked_at FROM api_keys \
                      WHERE merchant_id = ?1 ORDER BY created_at DESC")
            .bind(&[text(merchant_id)])?
            .all()
            .await?
            .results()
    }

    /// Revokes a key of this merchant; false if no such (unrevoked) key.
    pub async fn revoke_api_key(
        &self,
        merchant_id: &str,
        key_id: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let result = self
            .db
            .prepare("UPDATE api_keys SET revoked_at = ?3 WHERE merchant_id = ?1 AND key_id = ?2 AND revoked_at IS NULL")
            .bind(&[text(merchant_id), text(key_id), int(now_ms)])?
            .run()
            .await?;
        Ok(changes(&result)? > 0)
    }

    /// Marks a key used, at most once a minute so reads stay cheap.
    pub async fn touch_api_key(&self, key_id: &str, now_ms: i64) -> Result<()> {
        self.db
            .prepare("UPDATE api_keys SET last_used_at = ?2 WHERE key_id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2 - 60000)")
            .bind(&[text(key_id), int(now_ms)])?
            .run()
            .await?;
        Ok(())
    }

    /// Counts one refused request in its minute.
    /// Replaces every warning of `kind` with the current set, in one transaction.
    pub async fn replace_warnings(
        &self,
        kind: &str,
        warnings: &[(String, String, Value)],
        now_ms: i64,
    ) -> Result<()> {
        let mut statements = vec![self
            .db
            .prepare("DELETE FROM merchant_warnings WHERE kind = ?1")
            .bind(&[text(kind)])?];
        for (merchant_id, subject, detail) in warnings {
            statements.push(
                self.db
                    .prepare("INSERT OR REPLACE INTO merchant_warnings (merchant_id, kind, subject, detail, recorded_at) \
                              VALUES (?1, ?2, ?3, ?4, ?5)")
                    .bind(&[
                        text(merchant_id),
                        text(kind),
                        text(subject),
                        text(&detail.to_string()),
                        int(now_ms),
                    ])?,
            );
        }
        self.db.batch(statements).await?;
        Ok(())
    }

    /// The merchant's current warnings, newest first.
    pub async fn warnings(&self, merchant_id: &str) -> Result<Vec<Value>> {
        #[derive(Deserialize)]
        struct Row {
            kind: String,
            detail: String,
            recorded_at: i64,
        }
        let rows: Vec<Row> = self
            .db
            .prepare("SELECT kind, detail, recorded_at FROM merchant_warnings WHERE merchant_id = ?1 ORDER BY recorded_at DESC")
            .bind(&[text(merchant_id)])?
            .all()
            .await?
            .results()?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let mut detail: Value = serde_json::from_str(&r.detail).unwrap_or(Value::Null);
                detail["kind"] = Value::String(r.kind);
                detail["recorded_at"] = Value::from(r.recorded_at);
                detail
            })
            .collect())
    }

    /// Adds a batch of per-minute refusal counts (see `crate::rejections`) in one round trip.
    pub async fn record_rejections(
        &self,
        rows: &[(
            crate::rejections::RejectionKey,
            crate::rejections::RejectionCount,
        )],
    ) -> Result<()> {
        let mut statements = Vec::with_capacity(rows.len());
        for (key, count) in rows {
            statements.push(
                self.db
                    .prepare("INSERT INTO rejected_requests (merchant_id, route, code, status, minute, count, last_message, last_at) \
                              VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (merchant_id, route, code, minute) DO UPDATE SET \
                              count = count + excluded.count, status = excluded.status, last_message = excluded.last_message, \
                              last_at = MAX(last_at, excluded.last_at)")
                    .bind(&[
                        text(&key.merchant_id),
                        text(&key.route),
                        text(&key.code),
                        int(i64::from(count.status)),
                        int(key.minute),
                        int(count.count),
                        text(&count.last_message),
                        int(count.last_at),
                    ])?,
            );
        }
        if !statements.is_empty() {
            self.db.batch(statements).await?;
        }
        Ok(())
    }

    pub async fn rejections(
        &self,
        merchant_id: Option<&str>,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<Value>> {
        self.db
            .prepare("SELECT merchant_id, route, code, status, minute, count, last_message, last_at FROM rejected_requests \
                      WHERE (?1 IS NULL OR merchant_id = ?1) AND last_at >= ?2 ORDER BY last_at DESC LIMIT ?3")
            .bind(&[merchant_id.map_or(wasm_bindgen::JsValue::NULL, text), int(since_ms), int(limit)])?
            .all()
            .await?
            .results()
    }

    pub async fn purge_rejections(&self, cutoff_ms: i64) -> Result<u64> {
        let result = self
            .db
            .prepare("DELETE FROM rejected_requests WHERE last_at < ?1")
            .bind(&[int(cutoff_ms)])?
            .run()
            .await?;
        changes(&result)
    }

    /// Claims today's run of a cron expression; false if it already ran.
    pub async fn claim_cron_run(&self, cron: &str, run_date: &str, now_ms: i64) -> Result<bool> {
        let result = self
            .db
            .prepare("INSERT INTO cron_runs (cron, run_date, started_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")
            .bind(&[text(cron), text(run_date), int(now_ms)])?
            .run()
            .await?;
        Ok(changes(&result)? > 0)
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

    pub async fn cron_runs(&self, limit: i64) -> Result<Vec<Value>> {
        self.db
            .prepare("SELECT cron, run_date, started_at, finished_at, detail FROM cron_runs ORDER BY started_at DESC LIMIT ?1")
            .bind(&[int(limit)])?
            .all()
            .await?
            .results()
    }
}
