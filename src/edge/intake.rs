//! Intake: source webhooks and the merchant's product events, from request to durably
//! recorded and enqueued events. Nothing is acknowledged before that.

use super::http::{ingest_error, json_response, read_body_limited, with_header};
use super::ledger::LedgerClient;
use super::routing::Routing;
use super::store::Store;
use super::{authenticate_merchant_key, emit, keyring, now_ms, record_rejection};
use crate::config::MerchantConfig;
use crate::enrich::StoredContext;
use crate::error::IngestError;
use crate::ingest;
use crate::ledger::ClaimOutcome;
use crate::log::Log;
use crate::sources::crm::CrmContext;
use crate::sources::{product, Headers, SourceOutput, SourceSpec, WebhookRequest};
use serde_json::json;
use worker::{Context, Env, Request, Response, Result};

/// Requests per minute per merchant and route family that proved they hold the
/// merchant's secret (signed webhooks, API-keyed product events).
const RATE_LIMIT_BINDING: &str = "INGEST_RATE_LIMITER";
/// Refusals before authentication, per client address and per merchant: a separate
/// budget, so a forged flood never spends what the merchant's signed webhooks need.
const UNVERIFIED_RATE_LIMIT_BINDING: &str = "UNVERIFIED_RATE_LIMITER";
const RATE_LIMIT_PERIOD_SECONDS: u32 = 60;

/// Whether `key` is within `binding`'s budget. Without the binding (misconfigured
/// deploy) requests pass: losing webhooks is worse than no limit.
async fn within_budget(env: &Env, binding: &str, key: String) -> Result<bool> {
    let Ok(limiter) = env.rate_limiter(binding) else {
        return Ok(true);
    };
    Ok(limiter.limit(key).await?.success)
}

/// Refuses with 429 once the merchant is over its authenticated ingest rate.
async fn check_rate(
    env: &Env,
    merchant_id: &str,
    family: &str,
) -> Result<std::result::Result<(), IngestError>> {
    Ok(
        if within_budget(env, RATE_LIMIT_BINDING, format!("{merchant_id}/{family}")).await? {
            Ok(())
        } else {
            Err(IngestError::RateLimited {
                retry_after_seconds: RATE_LIMIT_PERIOD_SECONDS,
            })
        },
    )
}

/// The caller's address as Cloudflare saw it.
fn client_address(req: &Request) -> String {
    req.headers()
        .get("cf-connecting-ip")
        .ok()
        .flatten()
        .unwrap_or_else(|| "unknown".into())
}

/// A refusal before authentication: the same 401 for every reason, or 429 once the
/// caller's address or this merchant's unverified budget is spent. `known_merchant` is
/// empty when the id names no merchant, so no log row is keyed by a made-up id.
async fn refuse_unverified(
    env: &Env,
    ctx: &Context,
    req: &Request,
    known_merchant: &str,
    route: &str,
    err: IngestError,
) -> Result<Response> {
    let err = err.unauthenticated();
    let address = client_address(req);
    let by_address = within_budget(
        env,
        UNVERIFIED_RATE_LIMIT_BINDING,
        format!("addr:{address}"),
    )
    .await?;
    let by_merchant = known_merchant.is_empty()
        || within_budget(
            env,
            UNVERIFIED_RATE_LIMIT_BINDING,
            format!("merchant:{known_merchant}"),
        )
        .await?;
    if by_address && by_merchant {
        return refuse(env, ctx, known_merchant, route, &err);
    }
    let limited = IngestError::RateLimited {
        retry_after_seconds: RATE_LIMIT_PERIOD_SECONDS,
    };
    record_rejection(
        env,
        ctx,
        known_merchant,
        route,
        limited.status(),
        "unverified_rate_limited",
        &err.log_message(),
    );
    let response = ingest_error(&limited)?;
    with_header(
        response,
        "retry-after",
        &RATE_LIMIT_PERIOD_SECONDS.to_string(),
    )
}

/// The error response, counted in the operator's rejected-request log.
pub fn refuse(
    env: &Env,
    ctx: &Context,
    merchant_id: &str,
    route: &str,
    err: &IngestError,
) -> Result<Response> {
    emit(
        Log::warn("request refused")
            .merchant(merchant_id)
            .text("route", route)
            .number("status", i64::from(err.status()))
            .outcome(err.reason_code()),
    );
    record_rejection(
        env,
        ctx,
        merchant_id,
        route,
        err.status(),
        err.reason_code(),
        &err.log_message(),
    );
    let response = ingest_error(err)?;
    match err {
        IngestError::RateLimited {
            retry_after_seconds,
        } => with_header(response, "retry-after", &retry_after_seconds.to_string()),
        _ => Ok(response),
    }
}

/// One log line per notification: what became of it and how long the webhook took.
fn log_accepted(
    merchant_id: &str,
    source: &str,
    summaries: &[serde_json::Value],
    duration_ms: i64,
) {
    for summary in summaries {
        let events: Vec<&str> = summary["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["event_id"].as_str())
            .collect();
        emit(
            Log::info("webhook")
                .merchant(merchant_id)
                .source(source)
                .text(
                    "source_event_id",
                    summary["source_event_id"].as_str().unwrap_or(""),
                )
                .event(&events.join(","))
                .outcome(summary["status"].as_str().unwrap_or(""))
                .number(
                    "deliveries_enqueued",
                    summary["deliveries_enqueued"].as_i64().unwrap_or(0),
                )
                .duration_ms(duration_ms),
        );
    }
}

/// Body bytes within the ingest limit.
async fn read_body(req: &mut Request) -> Result<std::result::Result<Vec<u8>, IngestError>> {
    Ok(read_body_limited(req, ingest::MAX_BODY_BYTES)
        .await?
        .map_err(|size| IngestError::PayloadTooLarge {
            size,
            limit: ingest::MAX_BODY_BYTES,
        }))
}

/// How long an isolate reuses a merchant's route and settings. An operator change made
/// through this isolate clears the cache at once; other isolates see it within this.
const MERCHANT_CACHE_TTL_MS: i64 = 5_000;
const MERCHANT_CACHE_MAX: usize = 1_024;

thread_local! {
    /// merchant id → (loaded at, settings; `None` for an id that names no merchant).
    static MERCHANTS: std::cell::RefCell<std::collections::HashMap<String, (i64, Option<MerchantConfig>)>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Forgets every cached merchant: called after any operator write.
pub fn forget_merchants() {
    MERCHANTS.with(|cache| cache.borrow_mut().clear());
}

/// The merchant's route and settings from its region; `Err` is the answer to give.
/// Cached briefly, so a flood of forged requests naming a merchant costs no storage reads.
async fn load_merchant(
    env: &Env,
    merchant_id: &str,
) -> Result<std::result::Result<(MerchantConfig, Store), IngestError>> {
    let now = now_ms();
    let cached = MERCHANTS.with(|cache| {
        cache
            .borrow()
            .get(merchant_id)
            .filter(|(at, _)| now - at < MERCHANT_CACHE_TTL_MS)
            .map(|(_, merchant)| merchant.clone())
    });
    let merchant = match cached {
        Some(merchant) => merchant,
        None => {
            let loaded = match Routing::from_env(env)?.route(merchant_id).await? {
                None => None,
                Some(route) => {
                    let store = Store::for_region(env, route.region)?;
                    match store.load_merchant(&route, keyring(env).as_ref()).await? {
                        Some(merchant) => Some(merchant),
                        None => {
                            return Ok(Err(IngestError::Unavailable(
                                "merchant settings are missing in its region".into(),
                            )))
                        }
                    }
                }
            };
            MERCHANTS.with(|cache| {
                let mut cache = cache.borrow_mut();
                if cache.len() >= MERCHANT_CACHE_MAX {
                    cache.retain(|_, (at, _)| now - *at < MERCHANT_CACHE_TTL_MS);
                    if cache.len() >= MERCHANT_CACHE_MAX {
                        cache.clear();
                    }
                }
                cache.insert(merchant_id.to_string(), (now, loaded.clone()));
            });
            loaded
        }
    };
    match merchant {
        Some(merchant) => {
            let store = Store::for_region(env, merchant.region)?;
            Ok(Ok((merchant, store)))
        }
        None => Ok(Err(IngestError::UnknownMerchant(merchant_id.to_string()))),
    }
}

/// Verify → map → per notification: dedup claim → record + enqueue → commit. Answers
/// 2xx only after every notification's events are in D1 and their jobs on the queue.
pub async fn webhook(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    source: &'static SourceSpec,
) -> Result<Response> {
    let route = format!("webhook:{}", source.name);
    let url = req.url()?;
    let Some(merchant_id) = url
        .query_pairs()
        .find(|(k, _)| k == "merchant_id")
        .map(|(_, v)| v.into_owned())
    else {
        return refuse(env, ctx, "", &route, &IngestError::MissingMerchantId);
    };
    let body = match read_body(&mut req).await? {
        Ok(body) => body,
        Err(err) => return refuse(env, ctx, "", &route, &err),
    };
    let (merchant, store) = match load_merchant(env, &merchant_id).await? {
        Ok(loaded) => loaded,
        Err(err) if err.is_before_authentication() => {
            return refuse_unverified(env, ctx, &req, "", &route, err).await
        }
        Err(err) => return refuse(env, ctx, &merchant_id, &route, &err),
    };
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
        Err(err) if err.is_before_authentication() => {
            return refuse_unverified(env, ctx, &req, &merchant_id, &route, err).await
        }
        Err(err) => return refuse(env, ctx, &merchant_id, &route, &err),
    };
    // Only requests that proved they hold the secret spend the merchant's budget.
    if let Err(err) = check_rate(env, &merchant_id, "webhook").await? {
        return refuse(env, ctx, &merchant_id, &route, &err);
    }
    let summaries = match accept_all(env, &store, &merchant, outputs, now).await? {
        Ok(summaries) => summaries,
        Err(err) => return refuse(env, ctx, &merchant_id, &route, &err),
    };
    log_accepted(&merchant_id, name, &summaries, now_ms() - now);
    if let Some(acknowledgement) = source.acknowledgement {
        let (content_type, body) = acknowledgement();
        let response = Response::ok(body)?;
        response.headers().set("content-type", content_type)?;
        return Ok(response);
    }
    summary_response(summaries)
}

/// `POST /v1/product-events`: the merchant's app, authenticated by its API key. The
/// merchant is the key's, never one named in the request.
pub async fn product_events(mut req: Request, env: &Env, ctx: &Context) -> Result<Response> {
    let route = "product-events";
    let merchant_id = match authenticate_merchant_key(&req, env).await? {
        Ok(merchant_id) => merchant_id,
        Err(err) => {
            record_rejection(
                env,
                ctx,
                "",
                route,
                err.status(),
                err.code(),
                &err.to_string(),
            );
            return json_response(err.status(), &err.body());
        }
    };
    if let Err(err) = check_rate(env, &merchant_id, route).await? {
        return refuse(env, ctx, &merchant_id, route, &err);
    }
    let body = match read_body(&mut req).await? {
        Ok(body) => body,
        Err(err) => return refuse(env, ctx, &merchant_id, route, &err),
    };
    let (merchant, store) = match load_merchant(env, &merchant_id).await? {
        Ok(loaded) => loaded,
        Err(err) => return refuse(env, ctx, &merchant_id, route, &err),
    };
    if merchant.status == crate::config::MerchantStatus::Disabled {
        return refuse(
            env,
            ctx,
            &merchant_id,
            route,
            &IngestError::MerchantDisabled(merchant_id.clone()),
        );
    }
    let now = now_ms();
    let outputs = match product::map(&merchant_id, &body, now / 1000) {
        Ok(outputs) => outputs,
        Err(err) => return refuse(env, ctx, &merchant_id, route, &err),
    };
    match accept_all(env, &store, &merchant, outputs, now).await? {
        Ok(summaries) => summary_response(summaries),
        Err(err) => refuse(env, ctx, &merchant_id, route, &err),
    }
}

async fn accept_all(
    env: &Env,
    store: &Store,
    merchant: &MerchantConfig,
    outputs: Vec<SourceOutput>,
    now: i64,
) -> Result<std::result::Result<Vec<serde_json::Value>, IngestError>> {
    let mut summaries = Vec::with_capacity(outputs.len());
    for output in outputs {
        match accept(env, store, merchant, output, now).await? {
            Ok(summary) => summaries.push(summary),
            // Earlier notifications of a batch are recorded; the sender's retry of the
            // whole batch finds them as duplicates.
            Err(err) => return Ok(Err(err)),
        }
    }
    Ok(Ok(summaries))
}

fn summary_response(summaries: Vec<serde_json::Value>) -> Result<Response> {
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
pub async fn accept(
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
    let ledger = LedgerClient::for_key(env, merchant.region, merchant_id, &output.ordering_key)?;
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
        let enqueued = record_and_enqueue(env, store, merchant, &plan, now).await?;
        Ok::<_, worker::Error>((plan, enqueued))
    }
    .await;
    let (plan, enqueued) = match accepted {
        Ok(done) => done,
        Err(err) => {
            emit(
                Log::error("webhook not persisted; the source will retry")
                    .merchant(merchant_id)
                    .source(source)
                    .text("source_event_id", &source_event_id)
                    .reason(&err),
            );
            if let Err(release_err) = ledger.release(&dedup_key).await {
                emit(
                    Log::error("ledger release failed")
                        .merchant(merchant_id)
                        .source(source)
                        .reason(release_err),
                );
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
        emit(
            Log::error("ledger commit failed; the event is recorded and enqueued")
                .merchant(merchant_id)
                .source(source)
                .text("source_event_id", &output.source_event_id)
                .reason(err),
        );
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
    merchant: &MerchantConfig,
    plan: &ingest::IngestPlan,
    now: i64,
) -> Result<Vec<String>> {
    let merchant_id = merchant.merchant_id.as_str();
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
    // Operators may shorten the wait (tests do); a source's own wait is the default.
    let wait = plan.output.sibling_wait_seconds.map(|source_wait| {
        env.var("SIBLING_WAIT_SECONDS")
            .ok()
            .and_then(|v| v.to_string().parse::<u32>().ok())
            .unwrap_or(source_wait)
    });
    super::regions::enqueue_jobs_after(env, merchant.region, jobs, wait).await?;
    let pending_refs: Vec<&str> = pending.iter().map(String::as_str).collect();
    store.mark_enqueued(&pending_refs, now).await?;
    Ok(pending)
}
