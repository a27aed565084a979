//! Cloudflare Workers bindings: HTTP routes, queue consumers, the merchants' Durable
//! Objects, D1 and cron. Decisions are made in the core; this layer only does I/O.

mod api;
mod app;
mod audit_api;
mod consumer;
mod http;
mod intake;
mod intent_api;
mod merchant;
mod metrics;
mod ops_api;
mod outbound;
mod pixel;
mod regions;
mod routing;
mod send;
mod settings;
mod tasks;

use crate::admin::ApiError;
use crate::config::Region;
use crate::delivery::RetryPolicy;
use crate::destinations::{Endpoints, OperatorCredentials};
use crate::retention::RetentionPolicy;
use crate::routes::{resolve, Resolution, RouteId};
use crate::secrets::Keyring;
use crate::time::utc_date;
use http::{json_error, json_response, with_header};
use routing::Routing;
use serde_json::json;
use settings::SettingsStore;
use worker::{
    console_debug, console_error, console_log, console_warn, event, Context, Date, Env,
    MessageBatch, Request, Response, Result, ScheduleContext, ScheduledEvent,
};

// The Durable Object class must be exported from the wasm module.
#[allow(unused_imports)]
pub use merchant::Merchant;

pub const DAILY_CRON: &str = "0 9 * * *";
/// Re-enqueues pending deliveries that nothing is working on (see `consumer::sweep_pending`).
pub const SWEEP_CRON: &str = "*/5 * * * *";

thread_local! {
    /// Lines below this level are dropped (`LOG_LEVEL`; each kept line is billed by
    /// Workers Logs and costs CPU to write).
    static LOG_LEVEL: std::cell::Cell<crate::log::Level> =
        const { std::cell::Cell::new(crate::log::Level::Info) };
}

/// Reads `LOG_LEVEL` for this isolate; called where each invocation starts.
pub fn configure_logging(env: &Env) {
    let level = var(env, "LOG_LEVEL")
        .map(|v| crate::log::Level::parse(&v))
        .unwrap_or(crate::log::Level::Info);
    LOG_LEVEL.with(|current| current.set(level));
}

/// Writes one structured log line (see `crate::log`) at its level.
pub fn emit(log: crate::log::Log) {
    if log.level < LOG_LEVEL.with(|level| level.get()) {
        return;
    }
    match log.level {
        crate::log::Level::Debug => console_debug!("{}", log.line()),
        crate::log::Level::Info => console_log!("{}", log.line()),
        crate::log::Level::Warn => console_warn!("{}", log.line()),
        crate::log::Level::Error => console_error!("{}", log.line()),
    }
}

pub fn now_ms() -> i64 {
    Date::now().as_millis() as i64
}

/// Operator configuration from worker vars. Merchants cannot influence any of it.
pub struct OperatorSettings {
    pub endpoints: Endpoints,
    pub operator: OperatorCredentials,
    pub retry: RetryPolicy,
}

pub fn operator_settings(env: &Env) -> OperatorSettings {
    let var = |name: &str| {
        env.var(name)
            .ok()
            .map(|v| v.to_string())
            .filter(|v| !v.is_empty())
    };
    let number = |name: &str| var(name).and_then(|v| v.parse::<u32>().ok());
    // Every registered destination names its own override variables.
    let endpoints = Endpoints::from_vars(var);
    // TrackLayer's own secrets, as each destination declares them: worker secrets
    // (plain vars also work locally).
    let secret = |name: &str| {
        env.secret(name)
            .ok()
            .map(|v| v.to_string())
            .or_else(|| var(name))
            .filter(|v| !v.is_empty())
    };
    let operator = OperatorCredentials::from_registry(secret);
    let defaults = RetryPolicy::default();
    OperatorSettings {
        endpoints,
        operator,
        retry: RetryPolicy {
            base_delay_seconds: number("RETRY_BASE_DELAY_SECONDS")
                .unwrap_or(defaults.base_delay_seconds),
            max_delay_seconds: number("RETRY_MAX_DELAY_SECONDS")
                .unwrap_or(defaults.max_delay_seconds),
            max_attempts: number("RETRY_MAX_ATTEMPTS")
                .unwrap_or(defaults.max_attempts)
                .max(1),
        },
    }
}

/// The master keys that seal merchant secrets (`MASTER_KEYS` secret), if configured
/// and well-formed. Without them no stored secret opens and none can be stored.
pub fn keyring(env: &Env) -> Option<Keyring> {
    let spec = env.secret("MASTER_KEYS").ok()?.to_string();
    match Keyring::parse(&spec) {
        Ok(keyring) => Some(keyring),
        Err(err) => {
            emit(crate::log::Log::error("MASTER_KEYS is unusable").reason(err));
            None
        }
    }
}

fn var(env: &Env, name: &str) -> Option<String> {
    env.var(name)
        .ok()
        .map(|v| v.to_string())
        .filter(|v| !v.is_empty())
}

pub fn retention_policy(env: &Env) -> RetentionPolicy {
    RetentionPolicy::from_vars(|name| var(env, name))
}

thread_local! {
    static REJECTIONS: std::cell::RefCell<crate::rejections::RejectionBuffer> =
        std::cell::RefCell::new(crate::rejections::RejectionBuffer::default());
}

/// Counts a refused request in this isolate's buffer; the first count after a flush
/// schedules the next one, so a flood costs one global write per few seconds, not one
/// per request. An empty `merchant_id` means no merchant we know: counted without an id.
pub fn record_rejection(
    env: &Env,
    ctx: &Context,
    merchant_id: &str,
    route: &str,
    status: u16,
    code: &str,
    message: &str,
) {
    let first = REJECTIONS.with(|buffer| {
        buffer
            .borrow_mut()
            .record(merchant_id, route, status, code, message, now_ms())
    });
    if first {
        let env = env.clone();
        ctx.wait_until(async move {
            let wait = std::time::Duration::from_millis(crate::rejections::FLUSH_AFTER_MS as u64);
            worker::Delay::from(wait).await;
            flush_rejections(&env).await;
        });
    }
}

/// Writes this isolate's buffered refusal counts (also before the log is read).
pub async fn flush_rejections(env: &Env) {
    let rows = REJECTIONS.with(|buffer| buffer.borrow_mut().drain());
    if rows.is_empty() {
        return;
    }
    let written = match Routing::from_env(env) {
        Ok(routing) => routing.record_rejections(&rows).await,
        Err(err) => Err(err),
    };
    if let Err(err) = written {
        emit(
            crate::log::Log::warn("rejected-request counts not written; kept for the next flush")
                .reason(err),
        );
        REJECTIONS.with(|buffer| buffer.borrow_mut().restore(rows, now_ms()));
    }
}

/// The merchant a presented API key belongs to.
pub async fn authenticate_merchant_key(
    req: &Request,
    env: &Env,
) -> Result<std::result::Result<String, ApiError>> {
    let header = req.headers().get("authorization")?;
    let Some((key_id, secret)) =
        crate::api_keys::bearer(header.as_deref()).and_then(crate::api_keys::parse)
    else {
        return Ok(Err(ApiError::InvalidApiKey));
    };
    let routing = Routing::from_env(env)?;
    let Some(row) = routing.api_key(key_id).await? else {
        return Ok(Err(ApiError::InvalidApiKey));
    };
    if row.revoked_at.is_some() || !crate::api_keys::secret_matches(secret, &row.secret_hash) {
        return Ok(Err(ApiError::InvalidApiKey));
    }
    if let Err(err) = routing.touch_api_key(key_id, now_ms()).await {
        emit(crate::log::Log::warn("api key last-used update failed").reason(err));
    }
    Ok(Ok(row.merchant_id))
}

/// The request's merchant API key must be `merchant_id`'s own: a missing, revoked or
/// unknown key is 401 `invalid_api_key`, another merchant's is 403 `forbidden`.
pub async fn authorize_merchant(
    req: &Request,
    env: &Env,
    merchant_id: &str,
) -> Result<std::result::Result<(), ApiError>> {
    Ok(match authenticate_merchant_key(req, env).await? {
        Ok(owner) if crate::hashing::constant_time_eq(owner.as_bytes(), merchant_id.as_bytes()) => {
            Ok(())
        }
        Ok(_) => Err(ApiError::ForeignMerchant),
        Err(err) => Err(err),
    })
}

pub const OPENAPI_DOCUMENT: &str = include_str!("../../openapi.json");

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
    configure_logging(&env);
    match route(req, &env, &ctx).await {
        Ok(response) => Ok(response),
        Err(err) => {
            emit(crate::log::Log::error("unhandled error").reason(err));
            json_error(500, "internal_error", "internal error")
        }
    }
}

async fn route(req: Request, env: &Env, ctx: &Context) -> Result<Response> {
    let method = req.method().to_string();
    // Routed on the path as sent: `url::Url` (and the runtime's URL) resolve `..`.
    let raw_url = req.inner().url();
    if let Err(err) = crate::routes::check_raw_path(crate::routes::raw_path_of(&raw_url)) {
        return json_error(400, "invalid_path", err.message());
    }
    let (id, params) = match resolve(&method, &req.path()) {
        Resolution::Found { id, params } => (id, params),
        Resolution::MethodNotAllowed { allowed } => {
            let response = json_error(
                405,
                "method_not_allowed",
                "method not allowed on this route",
            )?;
            return with_header(response, "allow", &allowed.join(", "));
        }
        Resolution::NotFound => return json_error(404, "route_not_found", "no such route"),
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_default()
    };
    match id {
        RouteId::Health => json_response(200, &json!({ "status": "ok" })),
        RouteId::OpenApi => {
            let response = Response::ok(OPENAPI_DOCUMENT)?;
            with_header(response, "content-type", "application/json")
        }
        RouteId::StripeWebhook => {
            intake::webhook(req, env, ctx, &crate::sources::stripe::SPEC).await
        }
        RouteId::SourceWebhook => match crate::sources::find(&param("source")) {
            Some(spec) => intake::webhook(req, env, ctx, spec).await,
            None => json_error(404, "unknown_source", "no such source integration"),
        },
        RouteId::ProductEvents => intake::product_events(req, env, ctx).await,
        RouteId::PixelScript => pixel::script(),
        RouteId::PixelCollect => pixel::collect(req, env, ctx, &param("pixel_key")).await,
        RouteId::PixelPreflight => pixel::preflight(&req, env, &param("pixel_key")).await,
        RouteId::MerchantSelf | RouteId::MerchantView => {
            api::merchant_read(id, &param("merchant_id"), &param("view"), &req, env).await
        }
        RouteId::MerchantHealth => ops_api::merchant_read(&req, env, &param("merchant_id")).await,
        RouteId::MerchantRfm => ops_api::rfm_read(&req, env, &param("merchant_id")).await,
        RouteId::MerchantAuditExport => {
            audit_api::merchant_export(&req, env, &param("merchant_id")).await
        }
        RouteId::IntentOverview
        | RouteId::IntentVisitors
        | RouteId::IntentTimeline
        | RouteId::IntentQueue => intent_api::merchant_read(id, &params, &req, env).await,
        RouteId::AppHome
        | RouteId::AppSignIn
        | RouteId::AppSignOut
        | RouteId::AppVisitor
        | RouteId::AppStyles
        | RouteId::AppScript
        | RouteId::AppHealth
        | RouteId::AppResume => app::handle(id, &params, req, env).await,
        RouteId::AdminListMerchants
        | RouteId::AdminCreateMerchant
        | RouteId::AdminGetMerchant
        | RouteId::AdminUpdateMerchant
        | RouteId::AdminDeleteMerchant
        | RouteId::AdminPutIntegration
        | RouteId::AdminDeleteIntegration
        | RouteId::AdminListApiKeys
        | RouteId::AdminCreateApiKey
        | RouteId::AdminRevokeApiKey
        | RouteId::AdminGetPixel
        | RouteId::AdminPutPixel
        | RouteId::AdminDeletePixel
        | RouteId::AdminView
        | RouteId::AdminReplayDeadLetter
        | RouteId::AdminReplayDeadLetters
        | RouteId::AdminEraseCustomer
        | RouteId::AdminRejectedRequests
        | RouteId::AdminCronRuns
        | RouteId::AdminMetrics
        | RouteId::AdminRotateSecrets
        | RouteId::AdminGetIntent
        | RouteId::AdminPutIntent
        | RouteId::AdminSeedSync
        | RouteId::AdminAuditVerify
        | RouteId::AdminAuditExport
        | RouteId::AdminHealth
        | RouteId::AdminHealthSettings
        | RouteId::AdminHealthEvaluate
        | RouteId::AdminPauseDestination
        | RouteId::AdminResumeDestination
        | RouteId::AdminRfm
        | RouteId::AdminRfmCompute => api::admin(id, &params, req, env).await,
    }
}

#[event(queue)]
async fn queue(batch: MessageBatch<String>, env: Env, _ctx: Context) -> Result<()> {
    configure_logging(&env);
    if batch.queue().starts_with("tracklayer-tasks") {
        tasks::consume(batch, &env).await;
    } else if batch.queue().ends_with("-dlq") {
        consumer::consume_dead_letters(batch, &env).await;
    } else {
        consumer::consume_deliveries(batch, &env).await;
    }
    Ok(())
}

#[event(scheduled)]
async fn scheduled(event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    configure_logging(&env);
    let cron = event.cron();
    if cron == SWEEP_CRON {
        for region in [Region::Us, Region::Eu] {
            // Anomalies are judged every 5 minutes against each merchant's baseline.
            match ops_api::evaluate_region(&env, region).await {
                Ok(0) => {}
                Ok(n) => emit(
                    crate::log::Log::warn("anomaly incidents opened")
                        .text("region", crate::admin::region_name(region))
                        .number("incidents", n as i64),
                ),
                Err(err) => emit(crate::log::Log::error("anomaly evaluation failed").reason(err)),
            }
            match consumer::sweep_pending(&env, region).await {
                Ok(0) => {}
                Ok(n) => emit(
                    crate::log::Log::warn("sweeper re-enqueued lost pending jobs")
                        .text("region", crate::admin::region_name(region))
                        .number("jobs", n as i64),
                ),
                Err(err) => emit(
                    crate::log::Log::error("sweeper failed")
                        .text("region", crate::admin::region_name(region))
                        .reason(err),
                ),
            }
        }
        return;
    }
    if cron != DAILY_CRON {
        emit(crate::log::Log::warn("scheduled: no job for this cron").text("cron", &cron));
        return;
    }
    // Every trigger fans out the seed sync: each merchant's sync is idempotent, so a
    // second trigger the same day uploads nothing twice (and retries what failed).
    let day = utc_date(event.schedule() as i64 / 1000);
    match tasks::fan_out_seed_sync(&env, &day).await {
        Ok(n) => emit(
            crate::log::Log::info("seed sync fanned out")
                .text("date", &day)
                .number("merchants", n as i64),
        ),
        Err(err) => emit(crate::log::Log::error("seed sync fan-out failed").reason(err)),
    }
    if let Err(err) = daily(&env, &cron, event.schedule() as i64).await {
        emit(crate::log::Log::error("daily job failed").reason(err));
    }
}

/// Re-reads every destination config and records which pin an API version within 30
/// days of (or past) its sunset, for the merchant's views. Returns how many.
async fn record_version_warnings(env: &Env, routing: &Routing, now: i64) -> Result<usize> {
    let keyring = keyring(env);
    let mut warnings = Vec::new();
    for region in [Region::Us, Region::Eu] {
        let store = SettingsStore::for_region(env, region)?;
        for (merchant_id, row) in store.all_configs("destination").await? {
            let context = crate::secrets::config_context(&merchant_id, "destination", &row.name);
            let Some(config) = keyring
                .as_ref()
                .and_then(|k| k.open(&row.config, &context).ok())
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            else {
                continue;
            };
            if let Some(warning) =
                crate::destinations::version_warning(&row.name, &config, now / 1000)
            {
                warnings.push((merchant_id, row.name, warning));
            }
        }
    }
    routing
        .replace_warnings("api_version", &warnings, now)
        .await?;
    Ok(warnings.len())
}

/// Runs at most once per UTC day even if the trigger fires twice: applies the
/// retention windows in every merchant's object (merchant by merchant, each purging its
/// own rows) and to the global rejected-request log.
async fn daily(env: &Env, cron: &str, scheduled_ms: i64) -> Result<()> {
    let routing = Routing::from_env(env)?;
    let run_date = utc_date(scheduled_ms / 1000);
    if !routing.claim_cron_run(cron, &run_date, now_ms()).await? {
        emit(crate::log::Log::info("daily job already ran").text("date", &run_date));
        return Ok(());
    }
    let policy = retention_policy(env);
    let now = now_ms();
    let mut detail = serde_json::Map::new();
    // Each merchant's audit chain head is signed once a day with the operator's key.
    let signing = env.secret(merchant::AUDIT_KEY_SECRET).is_ok();
    if !signing {
        emit(crate::log::Log::warn(
            "audit heads not signed: the AUDIT_SIGNING_KEY secret is not set",
        ));
    }
    detail.insert("audit_heads_signed".into(), signing.into());
    for region in [Region::Us, Region::Eu] {
        let mut purged: std::collections::BTreeMap<String, i64> = Default::default();
        for route in routing.routes(Some(region)).await? {
            let client = merchant::MerchantClient::new(
                env,
                region,
                &route.merchant_id,
                metrics::Phase::Other,
            )?;
            if signing {
                if let Err(err) = client.audit_sign(&run_date).await {
                    emit(
                        crate::log::Log::error("audit head not signed; tomorrow's run signs it")
                            .merchant(&route.merchant_id)
                            .reason(err),
                    );
                }
            }
            if let Err(err) = client.rfm_compute().await {
                emit(
                    crate::log::Log::error("RFM not computed; tomorrow's run tries again")
                        .merchant(&route.merchant_id)
                        .reason(err),
                );
            }
            match client.purge().await {
                Ok(counts) => {
                    for (table, n) in counts.as_object().into_iter().flatten() {
                        *purged.entry(table.clone()).or_default() += n.as_i64().unwrap_or(0);
                    }
                }
                Err(err) => emit(
                    crate::log::Log::error(
                        "retention failed for a merchant; tomorrow's run tries again",
                    )
                    .merchant(&route.merchant_id)
                    .reason(err),
                ),
            }
        }
        detail.insert(
            crate::admin::region_name(region).to_string(),
            serde_json::to_value(purged).unwrap_or_default(),
        );
    }
    detail.insert(
        "api_version_warnings".into(),
        record_version_warnings(env, &routing, now).await?.into(),
    );
    if let Some(cutoff) = policy.rejected_cutoff(now) {
        detail.insert(
            "rejected_requests".into(),
            routing.purge_rejections(cutoff).await?.into(),
        );
    }
    let detail = serde_json::Value::Object(detail);
    routing
        .finish_cron_run(cron, &run_date, &detail, now_ms())
        .await?;
    emit(
        crate::log::Log::info("daily job done")
            .text("date", &run_date)
            .text("detail", &detail.to_string()),
    );
    Ok(())
}
