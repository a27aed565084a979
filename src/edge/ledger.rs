//! The `Ledger` Durable Object: one per (merchant, ordering key), holding source-event
//! dedup records and the subscription's latest state in its own SQLite. Single-threaded
//! execution makes claim-then-commit race free; the rules live in `crate::ledger`.

use super::regions::ledger_namespace;
use crate::config::Region;
use crate::ledger::{self, ClaimOutcome, SeenRecord, SubscriptionState};
use crate::sources::SubscriptionObservation;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;
use wasm_bindgen::JsValue;
use worker::{
    durable_object, Date, DurableObject, Env, Method, Request, RequestInit, Response, Result,
    SqlStorage, SqlStorageValue, State, Stub,
};

pub const BINDING: &str = "LEDGER";

#[derive(Serialize, Deserialize)]
struct ClaimRequest {
    key: String,
}

#[derive(Serialize, Deserialize)]
struct CommitRequest {
    key: String,
    subscription: Option<SubscriptionObservation>,
}

#[derive(Serialize, Deserialize)]
pub struct ClaimResponse {
    pub outcome: ClaimOutcome,
    /// The subscription's stored state, the context the caller maps against.
    #[serde(default)]
    pub subscription: Option<SubscriptionState>,
}

#[durable_object]
pub struct Ledger {
    state: State,
}

fn now_ms() -> i64 {
    Date::now().as_millis() as i64
}

fn int(value: i64) -> Result<SqlStorageValue> {
    SqlStorageValue::try_from_i64(value)
}

impl Ledger {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    fn ensure_schema(&self) -> Result<()> {
        let sql = self.sql();
        sql.exec(
            "CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, committed INTEGER NOT NULL, \
             lease_until INTEGER NOT NULL, first_seen INTEGER NOT NULL)",
            None,
        )?;
        sql.exec(
            "CREATE TABLE IF NOT EXISTS subscription_state (id INTEGER PRIMARY KEY CHECK (id = 1), \
             state TEXT NOT NULL)",
            None,
        )?;
        Ok(())
    }

    fn current_state(&self) -> Result<Option<SubscriptionState>> {
        #[derive(Deserialize)]
        struct Row {
            state: String,
        }
        let rows: Vec<Row> = self
            .sql()
            .exec("SELECT state FROM subscription_state WHERE id = 1", None)?
            .to_array()?;
        Ok(rows
            .first()
            .and_then(|row| serde_json::from_str(&row.state).ok()))
    }

    fn claim(&self, key: &str, now: i64) -> Result<ClaimOutcome> {
        #[derive(Deserialize)]
        struct Row {
            committed: i64,
            lease_until: i64,
        }
        let sql = self.sql();
        let existing: Vec<Row> = sql
            .exec(
                "SELECT committed, lease_until FROM seen WHERE key = ?",
                vec![key.into()],
            )?
            .to_array()?;
        let record = existing.first().map(|r| SeenRecord {
            committed: r.committed != 0,
            lease_until_ms: r.lease_until,
        });
        let outcome = ledger::claim(record, now);
        if outcome == ClaimOutcome::New {
            sql.exec(
                "INSERT INTO seen (key, committed, lease_until, first_seen) VALUES (?, 0, ?, ?) \
                 ON CONFLICT (key) DO UPDATE SET lease_until = excluded.lease_until",
                vec![key.into(), int(now + ledger::CLAIM_LEASE_MS)?, int(now)?],
            )?;
        }
        Ok(outcome)
    }

    fn commit(&self, request: &CommitRequest) -> Result<bool> {
        let sql = self.sql();
        sql.exec(
            "UPDATE seen SET committed = 1 WHERE key = ?",
            vec![request.key.as_str().into()],
        )?;
        let Some(observation) = &request.subscription else {
            return Ok(false);
        };
        let Some(next) = ledger::next_state(self.current_state()?.as_ref(), observation) else {
            return Ok(false);
        };
        let state =
            serde_json::to_string(&next).map_err(|e| worker::Error::RustError(e.to_string()))?;
        sql.exec(
            "INSERT INTO subscription_state (id, state) VALUES (1, ?) \
             ON CONFLICT (id) DO UPDATE SET state = excluded.state",
            vec![state.into()],
        )?;
        Ok(true)
    }

    async fn schedule_purge(&self) -> Result<()> {
        let storage = self.state.storage();
        if storage.get_alarm().await?.is_none() {
            storage.set_alarm(Duration::from_secs(24 * 3600)).await?;
        }
        Ok(())
    }
}

impl DurableObject for Ledger {
    fn new(state: State, _env: Env) -> Self {
        let ledger = Ledger { state };
        if let Err(err) = ledger.ensure_schema() {
            super::emit(crate::log::Log::error("ledger schema setup failed").reason(err));
        }
        ledger
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let path = req.path();
        match path.as_str() {
            "/claim" => {
                let body: ClaimRequest = req.json().await?;
                let outcome = self.claim(&body.key, now_ms())?;
                if outcome == ClaimOutcome::New {
                    self.schedule_purge().await?;
                }
                let subscription = self.current_state()?;
                Response::from_json(&ClaimResponse {
                    outcome,
                    subscription,
                })
            }
            "/commit" => {
                let body: CommitRequest = req.json().await?;
                let applied = self.commit(&body)?;
                Response::from_json(&json!({ "subscription_state_applied": applied }))
            }
            "/release" => {
                let body: ClaimRequest = req.json().await?;
                self.sql().exec(
                    "DELETE FROM seen WHERE key = ? AND committed = 0",
                    vec![body.key.as_str().into()],
                )?;
                Response::from_json(&json!({ "released": true }))
            }
            "/state" => Response::from_json(&json!({ "subscription": self.current_state()? })),
            // Whole-merchant deletion: nothing of this ledger stays behind.
            "/forget" => {
                self.state.storage().delete_alarm().await?;
                self.state.storage().delete_all().await?;
                self.ensure_schema()?;
                Response::from_json(&json!({ "forgotten": true }))
            }
            _ => Response::error("not found", 404),
        }
    }

    /// Drops dedup records past retention; re-arms while any remain.
    async fn alarm(&self) -> Result<Response> {
        let cutoff = now_ms() - ledger::DEDUP_RETENTION_MS;
        let sql = self.sql();
        sql.exec("DELETE FROM seen WHERE first_seen < ?", vec![int(cutoff)?])?;
        #[derive(Deserialize)]
        struct Count {
            n: i64,
        }
        let remaining: Vec<Count> = sql
            .exec("SELECT count(*) AS n FROM seen", None)?
            .to_array()?;
        if remaining.first().map_or(0, |c| c.n) > 0 {
            self.state
                .storage()
                .set_alarm(Duration::from_secs(24 * 3600))
                .await?;
        }
        Response::ok("purged")
    }
}

/// Caller side: a typed client for one ledger instance.
pub struct LedgerClient {
    stub: Stub,
}

impl LedgerClient {
    /// The ledger of one ordering key, in the merchant's region's jurisdiction.
    pub fn for_key(
        env: &Env,
        region: Region,
        merchant_id: &str,
        ordering_key: &str,
    ) -> Result<Self> {
        let namespace = ledger_namespace(env, BINDING, region)?;
        let stub = namespace
            .id_from_name(&format!("{merchant_id}/{ordering_key}"))?
            .get_stub()?;
        Ok(LedgerClient { stub })
    }

    async fn call<T: Serialize>(&self, path: &str, body: &T) -> Result<Response> {
        let mut init = RequestInit::new();
        let payload =
            serde_json::to_string(body).map_err(|e| worker::Error::RustError(e.to_string()))?;
        init.with_method(Method::Post)
            .with_body(Some(JsValue::from_str(&payload)));
        let request = Request::new_with_init(&format!("https://ledger{path}"), &init)?;
        let response = self.stub.fetch_with_request(request).await?;
        if response.status_code() != 200 {
            return Err(worker::Error::RustError(format!(
                "ledger {path} answered {}",
                response.status_code()
            )));
        }
        Ok(response)
    }

    pub async fn claim(&self, key: &str) -> Result<ClaimResponse> {
        let mut response = self
            .call("/claim", &ClaimRequest { key: key.into() })
            .await?;
        response.json::<ClaimResponse>().await
    }

    pub async fn commit(
        &self,
        key: &str,
        subscription: Option<SubscriptionObservation>,
    ) -> Result<()> {
        self.call(
            "/commit",
            &CommitRequest {
                key: key.into(),
                subscription,
            },
        )
        .await
        .map(|_| ())
    }

    pub async fn forget(&self) -> Result<()> {
        self.call("/forget", &json!({})).await.map(|_| ())
    }

    pub async fn release(&self, key: &str) -> Result<()> {
        self.call("/release", &ClaimRequest { key: key.into() })
            .await
            .map(|_| ())
    }
}
