//! Cloudflare Workers bindings: HTTP routes, queue consumers, the ledger Durable
//! Object, D1 and cron. Decisions are made in the core; this layer only does I/O.

mod consumer;
mod http;
mod ledger;
mod outbound;
mod store;

use crate::config::MerchantConfig;
use crate::delivery::RetryPolicy;
use crate::destinations::Endpoints;
use crate::enrich::StoredContext;
use crate::error::IngestError;
use crate::hashing::constant_time_eq;
use crate::ingest;
use crate::ledger::ClaimOutcome;
use crate::sources::crm::CrmContext;
use crate::sources::{Headers, SourceOutput, SourceSpec, WebhookRequest};
use crate::time::utc_date;
use http::{ingest_error, json_error, json_response};
use ledger::LedgerClient;
use serde_json::json;
use store::Store;
use worker::{
    console_error, console_log, console_warn, event, Context, Date, Env, MessageBatch,
    MessageBuilder, Method, QueueContentType, Request, Response, Result, ScheduleContext,
    ScheduledEvent,
};

// The Durable Object class must be exported from the wasm module.
#[allow(unused_imports)]
pub use ledger::Ledger;

pub const DELIVERIES_BINDING: &str = "DELIVERIES";
pub const DAILY_CRON: &str = "0 9 * * *";

pub fn now_ms() -> i64 {
    Date::now().as_millis() as i64
}

/// Operator configuration from worker vars. Merchants cannot influence any of it.
pub struct OperatorSettings {
    pub endpoints: Endpoints,
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
    let mut endpoints = Endpoints::default();
    if let Some(url) = var("META_API_BASE_URL") {
        endpoints.meta_graph = url;
    }
    let defaults = RetryPolicy::default();
    OperatorSettings {
        endpoints,
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

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    match route(req, &env).await {
        Ok(response) => Ok(response),
        Err(err) => {
            console_error!("unhandled error: {err}");
            json_error(500, "internal_error", "internal error")
        }
    }
}

async fn route(req: Request, env: &Env) -> Result<Response> {
    let path = req.path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (Method::Get, ["healthz"]) => json_response(200, &json!({ "status": "ok" })),
        (Method::Post, ["v1", "integrations", "stripe", "subscription-events"]) => {
            webhook(req, env, &crate::sources::stripe::SPEC).await
        }
        (Method::Post, ["v1", "integrations", source, "events"]) => {
            match crate::sources::find(source) {
                Some(spec) => webhook(req, env, spec).await,
                None => json_error(404, "unknown_source", "no such source integration"),
            }
        }
        (Method::Get, ["v1", "admin", "cron-runs"]) => admin_read(&req, env, "", "cron-runs").await,
        (Method::Get, ["v1", "admin", "merchants", merchant_id, view]) => {
            let merchant_id = merchant_id.to_string();
            let view = view.to_string();
            admin_read(&req, env, &merchant_id, &view).await
        }
        (_, ["healthz"])
        | (_, ["v1", "integrations", "stripe", "subscription-events"])
        | (_, ["v1", "integrations", _, "events"])
        | (_, ["v1", "admin", "merchants", _, _]) => json_error(
            405,
            "method_not_allowed",
            "method not allowed on this route",
        ),
        _ => json_error(404, "route_not_found", "no such route"),
    }
}

/// Verify → map → per notification: dedup claim → record + enqueue → commit. Answers
/// 2xx only after every notification's events are in D1 and their jobs on the queue.
async fn webhook(mut req: Request, env: &Env, source: &'static SourceSpec) -> Result<Response> {
    let url = req.url()?;
    let Some(merchant_id) = url
        .query_pairs()
        .find(|(k, _)| k == "merchant_id")
        .map(|(_, v)| v.into_owned())
    else {
        return ingest_error(&IngestError::MissingMerchantId);
    };
    if let Some(length) = req
        .headers()
        .get("content-length")?
        .and_then(|v| v.parse::<usize>().ok())
    {
        if let Err(err) = ingest::check_body_size(length) {
            return ingest_error(&err);
        }
    }
    let store = Store::from_env(env)?;
    let Some(merchant) = store.load_merchant(&merchant_id).await? else {
        return ingest_error(&IngestError::UnknownMerchant(merchant_id));
    };
    let body = req.bytes().await?;
    let mut headers = Headers::new();
    for (name, value) in req.headers().entries() {
        headers.insert(&name, &value);
    }
    let url_text = url.to_string();
    let method = req.method().to_string();
    let request = WebhookRequest {
        method: &method,
        url: &url_text,
        headers: &headers,
        body: &body,
    };
    let now = now_ms();
    let name = source.name;
    let outputs = match ingest::verify_and_map(name, &merchant, &request, now / 1000) {
        Ok(outputs) => outputs,
        Err(err) => {
            if let IngestError::Signature(reason) = &err {
                console_warn!("{name} webhook for merchant {merchant_id} refused: {reason}");
            }
            return ingest_error(&err);
        }
    };
    let mut summaries = Vec::with_capacity(outputs.len());
    for output in outputs {
        match accept(env, &store, &merchant, output, now).await? {
            Ok(summary) => summaries.push(summary),
            // Earlier notifications of a batch are recorded; the source's retry of the
            // whole batch finds them as duplicates.
            Err(err) => return ingest_error(&err),
        }
    }
    if let Some(acknowledgement) = source.acknowledgement {
        let (content_type, body) = acknowledgement();
        let response = Response::ok(body)?;
        response.headers().set("content-type", content_type)?;
        return Ok(response);
    }
    let accepted = summaries.iter().any(|s| s["status"] == "accepted");
    let status = if accepted { 202 } else { 200 };
    match summaries.as_slice() {
        [single] => json_response(status, single),
        _ => json_response(
            status,
            &json!({
                "status": if accepted { "accepted" } else { "ignored" },
                "notifications": summaries,
            }),
        ),
    }
}

/// One notification: claim its source id, enrich, record, enqueue, commit. The inner
/// error is the answer to give the source (in flight, or not persisted: retry).
async fn accept(
    env: &Env,
    store: &Store,
    merchant: &MerchantConfig,
    output: SourceOutput,
    now: i64,
) -> Result<std::result::Result<serde_json::Value, IngestError>> {
    let merchant_id = merchant.merchant_id.as_str();
    let source = output.source;
    let source_event_id = output.source_event_id.clone();
    let dedup_key = format!("{source}:{source_event_id}");
    let ledger = LedgerClient::for_key(env, merchant_id, &output.ordering_key)?;
    let claim = ledger.claim(&dedup_key).await?;
    match claim.outcome {
        ClaimOutcome::Duplicate => {
            return Ok(Ok(
                json!({ "status": "duplicate", "source_event_id": source_event_id }),
            ));
        }
        ClaimOutcome::InFlight => return Ok(Err(IngestError::InFlight)),
        ClaimOutcome::New => {}
    }
    let accepted = async {
        // CRM notifications carry the billing customer id of another source: there is
        // no stored customer or deal context to read for them.
        let from_crm = output.crm_context.is_some();
        let customer = match output
            .events
            .iter()
            .find_map(|e| e.customer.customer_id.clone())
            .filter(|_| !from_crm)
        {
            Some(customer_id) => {
                store
                    .known_customer(merchant_id, source, &customer_id)
                    .await?
            }
            None => None,
        };
        // CRM deal context travels on billing events of the same customer.
        let crm = if from_crm {
            None
        } else {
            let mut keys = Vec::new();
            for event in &output.events {
                let email = event
                    .customer
                    .email
                    .as_deref()
                    .or(customer.as_ref().and_then(|c| c.email.as_deref()));
                keys.extend(email.map(CrmContext::email_key));
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
            store.crm_context(merchant_id, &keys).await?
        };
        let context = StoredContext {
            subscription: claim.subscription,
            customer,
            crm,
        };
        let plan = ingest::plan(output, merchant, &context);
        let enqueued = record_and_enqueue(env, store, merchant_id, &plan, now).await?;
        Ok::<_, worker::Error>((plan, enqueued))
    }
    .await;
    let (plan, enqueued) = match accepted {
        Ok(done) => done,
        Err(err) => {
            console_error!("{source} event {source_event_id} not accepted: {err}");
            if let Err(release_err) = ledger.release(&dedup_key).await {
                console_error!("ledger release failed: {release_err}");
            }
            return Ok(Err(IngestError::Unavailable(
                "could not persist the event".into(),
            )));
        }
    };
    let output = &plan.output;
    if let Err(err) = ledger.commit(&dedup_key, output.subscription.clone()).await {
        // The event is safe in D1 and on the queue; a redelivery after the lease is
        // stopped by the enqueue bookkeeping and the consumer's per-job ledger.
        console_error!("ledger commit failed for {dedup_key}: {err}");
    }
    let status = if output.ignored_reason.is_some() {
        "ignored"
    } else {
        "accepted"
    };
    let events: Vec<_> = output
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
    Ok(Ok(json!({
        "status": status,
        "source_event_id": output.source_event_id,
        "reason": output.ignored_reason,
        "events": events,
        "deliveries_enqueued": deliveries_enqueued,
    })))
}

/// Records the plan in D1, then enqueues the jobs of events not enqueued before (the
/// same conversion may already have come through another webhook), then marks them.
/// Returns the ids of the events whose jobs this call enqueued.
async fn record_and_enqueue(
    env: &Env,
    store: &Store,
    merchant_id: &str,
    plan: &ingest::IngestPlan,
    now: i64,
) -> Result<Vec<String>> {
    store
        .record_ingest(merchant_id, &plan.output, &plan.jobs, now)
        .await?;
    let ids: Vec<&str> = plan
        .output
        .events
        .iter()
        .map(|e| e.event_id.as_str())
        .collect();
    let pending = store.events_to_enqueue(&ids).await?;
    let jobs: Vec<_> = plan
        .jobs
        .iter()
        .filter(|job| pending.contains(&job.event.event_id))
        .collect();
    let queue = env.queue(DELIVERIES_BINDING)?;
    // Pre-serialised JSON as text: what arrives is exactly what was sent.
    // sendBatch takes at most 100 messages.
    for chunk in jobs.chunks(100) {
        let mut batch = Vec::with_capacity(chunk.len());
        for job in chunk {
            let body =
                serde_json::to_string(job).map_err(|e| worker::Error::RustError(e.to_string()))?;
            batch.push(
                MessageBuilder::new(body)
                    .content_type(QueueContentType::Text)
                    .build(),
            );
        }
        queue.send_batch(batch).await?;
    }
    let pending_refs: Vec<&str> = pending.iter().map(String::as_str).collect();
    store.mark_enqueued(&pending_refs, now).await?;
    Ok(pending)
}
/// Read-only operator views, authenticated by the `ADMIN_TOKEN` secret.
async fn admin_read(req: &Request, env: &Env, merchant_id: &str, view: &str) -> Result<Response> {
    let Ok(expected) = env.secret("ADMIN_TOKEN").map(|s| s.to_string()) else {
        return json_error(
            503,
            "admin_disabled",
            "ADMIN_TOKEN is not configured on this worker",
        );
    };
    let presented = req.headers().get("authorization")?.unwrap_or_default();
    let token = presented.strip_prefix("Bearer ").unwrap_or("");
    if expected.is_empty() || !constant_time_eq(token.as_bytes(), expected.as_bytes()) {
        return json_error(401, "unauthorized", "a valid operator token is required");
    }
    let url = req.url()?;
    let limit = url
        .query_pairs()
        .find(|(k, _)| k == "limit")
        .and_then(|(_, v)| v.parse::<i64>().ok())
        .unwrap_or(100)
        .clamp(1, 500);
    let sql: &'static str = match view {
        "deliveries" => {
            "SELECT job_id, event_id, destination, status, attempts, last_error, created_at, updated_at \
             FROM deliveries WHERE merchant_id = ?1 ORDER BY updated_at DESC LIMIT ?2"
        }
        "delivery-attempts" => {
            "SELECT job_id, event_id, destination, attempt, outcome, http_status, detail, request_url, duration_ms, attempted_at \
             FROM delivery_attempts WHERE merchant_id = ?1 ORDER BY id DESC LIMIT ?2"
        }
        "dead-letters" => {
            "SELECT job_id, event_id, destination, attempts, reason, last_error, dead_lettered_at, replayed_at \
             FROM dead_letters WHERE merchant_id = ?1 ORDER BY dead_lettered_at DESC LIMIT ?2"
        }
        "events" => {
            "SELECT event_id, name, source, source_event_id, source_event_type, occurred_at_s, payload, received_at \
             FROM canonical_events WHERE merchant_id = ?1 ORDER BY received_at DESC LIMIT ?2"
        }
        "ignored-events" => {
            "SELECT source, source_event_id, source_event_type, reason, received_at \
             FROM ignored_events WHERE merchant_id = ?1 ORDER BY received_at DESC LIMIT ?2"
        }
        "cron-runs" => {
            "SELECT cron, run_date, started_at, finished_at, detail FROM cron_runs \
             WHERE ?1 = ?1 ORDER BY started_at DESC LIMIT ?2"
        }
        _ => return json_error(404, "route_not_found", "no such admin view"),
    };
    let rows = Store::from_env(env)?.list(sql, merchant_id, limit).await?;
    json_response(200, &json!({ "merchant_id": merchant_id, "items": rows }))
}

#[event(queue)]
async fn queue(batch: MessageBatch<String>, env: Env, _ctx: Context) -> Result<()> {
    if batch.queue().ends_with("-dlq") {
        consumer::consume_dead_letters(batch, &env).await;
    } else {
        consumer::consume_deliveries(batch, &env).await;
    }
    Ok(())
}

#[event(scheduled)]
async fn scheduled(event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    let cron = event.cron();
    if cron != DAILY_CRON {
        console_warn!("scheduled: no job for cron {cron}");
        return;
    }
    if let Err(err) = daily(&env, &cron, event.schedule() as i64).await {
        console_error!("daily job failed: {err}");
    }
}

/// Retention of bookkeeping rows, in days.
const ATTEMPT_LOG_RETENTION_DAYS: i64 = 90;
const IGNORED_RETENTION_DAYS: i64 = 30;

/// Runs at most once per UTC day even if the trigger fires twice.
async fn daily(env: &Env, cron: &str, scheduled_ms: i64) -> Result<()> {
    let store = Store::from_env(env)?;
    let run_date = utc_date(scheduled_ms / 1000);
    if !store.claim_cron_run(cron, &run_date, now_ms()).await? {
        console_log!("daily job for {run_date} already ran");
        return Ok(());
    }
    let day_ms = 86_400_000;
    let purged_attempts = store
        .purge_older_than(
            "delivery_attempts",
            "attempted_at",
            now_ms() - ATTEMPT_LOG_RETENTION_DAYS * day_ms,
        )
        .await?;
    let purged_ignored = store
        .purge_older_than(
            "ignored_events",
            "received_at",
            now_ms() - IGNORED_RETENTION_DAYS * day_ms,
        )
        .await?;
    let detail = json!({
        "purged_delivery_attempts": purged_attempts,
        "purged_ignored_events": purged_ignored,
    });
    store
        .finish_cron_run(cron, &run_date, &detail, now_ms())
        .await?;
    console_log!("daily job {run_date}: {detail}");
    Ok(())
}
