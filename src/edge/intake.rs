//! Intake: source webhooks and the merchant's product events, from request to durably
//! recorded and enqueued events. Nothing is acknowledged before that.

use super::http::{
    ingest_error, json_response, read_body_limited, with_header, EdgeError, EdgeResult,
};
use super::merchant::{IngestAnswer, IngestRequest, MerchantClient};
use super::metrics::{self, Phase};
use super::settings::{cached_merchant, Missing};
use super::{authenticate_merchant_key, emit, now_ms, record_rejection};
use crate::config::MerchantConfig;
use crate::error::IngestError;
use crate::ingest;
use crate::ingest_rate::{self, IngestRoute};
use crate::log::Log;
use crate::sources::{product, Headers, SourceOutput, SourceSpec, WebhookRequest};
use serde_json::json;
use worker::{Context, Env, Request, Response, Result};

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
    address: &str,
    known_merchant: &str,
    route: &str,
    err: IngestError,
) -> Result<Response> {
    let err = err.unauthenticated();
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

/// One debug line per notification: what became of it and how long the webhook took.
/// Debug, not info: in `wrangler dev` each line cost a fifth of a webhook's CPU, Workers
/// Logs bills each one, and every accepted notification is already an event record
/// and an audit entry. Refusals are logged at warn.
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
            Log::debug("webhook")
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
async fn read_body(req: &mut Request) -> EdgeResult<Vec<u8>> {
    read_body_limited(req, ingest::MAX_BODY_BYTES)
        .await?
        .map_err(|size| {
            IngestError::PayloadTooLarge {
                size,
                limit: ingest::MAX_BODY_BYTES,
            }
            .into()
        })
}

/// The merchant's settings (cached per isolate).
async fn load_merchant(env: &Env, merchant_id: &str) -> EdgeResult<MerchantConfig> {
    match cached_merchant(env, merchant_id, Phase::Ingest).await? {
        Ok(merchant) => Ok(merchant),
        Err(Missing::Unknown) => Err(IngestError::UnknownMerchant(merchant_id.to_string()).into()),
        Err(Missing::NoSettings) => Err(IngestError::Unavailable(
            "merchant settings are missing in its region".into(),
        )
        .into()),
    }
}

/// Verify at the edge, then one call to the merchant's object, which claims, records
/// and enqueues. Answers 2xx only after every notification's events are recorded and
/// their jobs on the queue. A refusal is counted under the merchant only once the id
/// is known to name one.
pub async fn webhook(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    source: &'static SourceSpec,
) -> Result<Response> {
    let route = format!("webhook:{}", source.name);
    let address = client_address(&req);
    let mut known_merchant = String::new();
    match accept_webhook(&mut req, env, source, &mut known_merchant).await {
        Ok(response) => Ok(response),
        Err(EdgeError::Refused(err)) if err.is_before_authentication() => {
            refuse_unverified(env, ctx, &address, &known_merchant, &route, err).await
        }
        Err(EdgeError::Refused(err)) => refuse(env, ctx, &known_merchant, &route, &err),
        Err(EdgeError::Runtime(err)) => Err(err),
    }
}

async fn accept_webhook(
    req: &mut Request,
    env: &Env,
    source: &'static SourceSpec,
    known_merchant: &mut String,
) -> EdgeResult<Response> {
    let url = req.url()?;
    let merchant_id = url
        .query_pairs()
        .find(|(k, _)| k == "merchant_id")
        .map(|(_, v)| v.into_owned())
        .ok_or(IngestError::MissingMerchantId)?;
    let body = read_body(req).await?;
    let merchant = match load_merchant(env, &merchant_id).await {
        Err(EdgeError::Refused(IngestError::Unavailable(reason))) => {
            // Routed, so the id names a merchant: counted under it.
            *known_merchant = merchant_id;
            return Err(IngestError::Unavailable(reason).into());
        }
        loaded => loaded?,
    };
    *known_merchant = merchant_id.clone();
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
    let outputs = ingest::verify_and_map(source.name, &merchant, &request, now / 1000)?;
    // Only requests that proved they hold the secret reach the object, which counts
    // them against the merchant's ingest rate.
    let summaries = accept_all(env, merchant, IngestRoute::Webhook, outputs).await?;
    log_accepted(&merchant_id, source.name, &summaries, now_ms() - now);
    if let Some(acknowledgement) = source.acknowledgement {
        let (content_type, body) = acknowledgement();
        let response = Response::ok(body)?;
        response.headers().set("content-type", content_type)?;
        return Ok(response);
    }
    Ok(summary_response(summaries)?)
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
    match accept_product_events(&mut req, env, &merchant_id).await {
        Ok(response) => Ok(response),
        Err(EdgeError::Refused(err)) => refuse(env, ctx, &merchant_id, route, &err),
        Err(EdgeError::Runtime(err)) => Err(err),
    }
}

async fn accept_product_events(
    req: &mut Request,
    env: &Env,
    merchant_id: &str,
) -> EdgeResult<Response> {
    let body = read_body(req).await?;
    let merchant = load_merchant(env, merchant_id).await?;
    if merchant.status == crate::config::MerchantStatus::Disabled {
        return Err(IngestError::MerchantDisabled(merchant_id.to_string()).into());
    }
    let outputs = product::map(merchant_id, &body, now_ms() / 1000)?;
    let summaries = accept_all(env, merchant, IngestRoute::ProductEvents, outputs).await?;
    Ok(summary_response(summaries)?)
}

/// One call to the merchant's object for every notification of the request; the
/// object also counts the request against the merchant's ingest rate for `route`.
async fn accept_all(
    env: &Env,
    merchant: MerchantConfig,
    route: IngestRoute,
    outputs: Vec<SourceOutput>,
) -> EdgeResult<Vec<serde_json::Value>> {
    let client = MerchantClient::new(env, merchant.region, &merchant.merchant_id, Phase::Ingest)?;
    let merchant_id = merchant.merchant_id.clone();
    // Source settings (signing secrets) were for verifying here; the object plans with
    // the rest, so the secrets never travel with each notification.
    let merchant = MerchantConfig {
        sources: Default::default(),
        ..merchant
    };
    let answer = client
        .ingest(&IngestRequest {
            merchant,
            route,
            outputs,
        })
        .await;
    let refused = match answer {
        Ok(IngestAnswer::Done { summaries, .. }) => {
            metrics::unit(Phase::Ingest);
            return Ok(summaries);
        }
        Ok(IngestAnswer::InFlight) => IngestError::InFlight,
        Ok(IngestAnswer::RateLimited) => IngestError::RateLimited {
            retry_after_seconds: ingest_rate::PERIOD_SECONDS,
        },
        Ok(IngestAnswer::Unavailable) => {
            IngestError::Unavailable("could not persist the event".into())
        }
        Err(err) => {
            emit(
                Log::error("webhook not persisted; the source will retry")
                    .merchant(&merchant_id)
                    .reason(&err),
            );
            IngestError::Unavailable("could not persist the event".into())
        }
    };
    Err(refused.into())
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
