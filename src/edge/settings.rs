//! Regional D1: each merchant's settings and sealed source/destination configs
//! (shared, read-mostly). The merchant's own records live in its Durable Object
//! (`super::merchant`); a warm webhook reads settings from the per-isolate cache here.

use super::metrics::{self, Phase};
use super::regions::db_binding;
use super::routing::{MerchantRoute, Routing};
use crate::config::{MerchantConfig, Region};
use crate::secrets::{config_context, Keyring};
use serde::Deserialize;
use serde_json::Value;
use wasm_bindgen::JsValue;
use worker::{D1Database, Env, Result};

/// How long an isolate reuses a merchant's route and settings. An operator change made
/// through this isolate clears the cache at once; other isolates see it within this.
pub const MERCHANT_CACHE_TTL_MS: i64 = 5_000;
/// While one request reloads an expired entry, concurrent ones keep using it this long
/// at most, so an expiry under load costs one reload, not one per request in flight.
const MERCHANT_REFRESH_GRACE_MS: i64 = 2_000;
const MERCHANT_CACHE_MAX: usize = 1_024;

struct CachedMerchant {
    loaded_at: i64,
    /// `None`: the id names no merchant.
    merchant: Option<MerchantConfig>,
    refreshing_since: Option<i64>,
}

thread_local! {
    static MERCHANTS: std::cell::RefCell<std::collections::HashMap<String, CachedMerchant>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The cached entry if it may be used now; otherwise marks this caller as the one that
/// reloads it.
fn cached(merchant_id: &str, now: i64) -> Option<Option<MerchantConfig>> {
    MERCHANTS.with(|cache| {
        let mut cache = cache.borrow_mut();
        let entry = cache.get_mut(merchant_id)?;
        let fresh = now - entry.loaded_at < MERCHANT_CACHE_TTL_MS;
        let being_refreshed = entry
            .refreshing_since
            .is_some_and(|since| now - since < MERCHANT_REFRESH_GRACE_MS);
        if fresh || being_refreshed {
            return Some(entry.merchant.clone());
        }
        entry.refreshing_since = Some(now);
        None
    })
}

/// Forgets every cached merchant: called after any operator write.
pub fn forget_merchants() {
    MERCHANTS.with(|cache| cache.borrow_mut().clear());
}

/// Why a merchant's settings could not be loaded.
pub enum Missing {
    /// No route: the id names no merchant.
    Unknown,
    /// Routed, but its region holds no settings (an incomplete creation or deletion).
    NoSettings,
}

/// The merchant's route and opened settings, from the per-isolate cache (warm: no
/// storage read) or D1 (route, settings, sources, destinations: four queries).
pub async fn cached_merchant(
    env: &Env,
    merchant_id: &str,
    phase: Phase,
) -> Result<std::result::Result<MerchantConfig, Missing>> {
    let now = super::now_ms();
    let merchant = match cached(merchant_id, now) {
        Some(merchant) => merchant,
        None => {
            metrics::d1_queries(phase, 1);
            let loaded = match Routing::from_env(env)?.route(merchant_id).await? {
                None => None,
                Some(route) => {
                    metrics::d1_queries(phase, 3);
                    let store = SettingsStore::for_region(env, route.region)?;
                    match store
                        .load_merchant(&route, super::keyring(env).as_ref())
                        .await?
                    {
                        Some(merchant) => Some(merchant),
                        None => return Ok(Err(Missing::NoSettings)),
                    }
                }
            };
            MERCHANTS.with(|cache| {
                let mut cache = cache.borrow_mut();
                if cache.len() >= MERCHANT_CACHE_MAX {
                    cache.retain(|_, entry| now - entry.loaded_at < MERCHANT_CACHE_TTL_MS);
                    if cache.len() >= MERCHANT_CACHE_MAX {
                        cache.clear();
                    }
                }
                cache.insert(
                    merchant_id.to_string(),
                    CachedMerchant {
                        loaded_at: now,
                        merchant: loaded.clone(),
                        refreshing_since: None,
                    },
                );
            });
            loaded
        }
    };
    Ok(merchant.ok_or(Missing::Unknown))
}

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

pub struct SettingsStore {
    db: D1Database,
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

impl SettingsStore {
    /// The settings database of `region`.
    pub fn for_region(env: &Env, region: Region) -> Result<Self> {
        Ok(SettingsStore {
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
        route: &MerchantRoute,
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

    /// Whole-merchant deletion of its settings; returns the rows per table.
    pub async fn delete_merchant(&self, merchant_id: &str) -> Result<Value> {
        const TABLES: [&str; 3] = crate::retention::MERCHANT_REGIONAL_TABLES;
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
