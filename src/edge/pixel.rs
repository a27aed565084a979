//! The first-party pixel's routes: the script, and the beacons it sends. Rules are in
//! `crate::pixel`; this file reads the request, checks the limits and writes D1.

use super::http::{json_response, read_body_limited, with_header};
use super::routing::{PixelRow, Routing};
use super::{now_ms, record_rejection};
use crate::config::MerchantStatus;
use crate::pixel::{self, BeaconContext, PixelError};
use worker::{Context, Env, Request, Response, Result};

/// Beacons per minute per merchant and visitor address, if the binding exists.
const RATE_LIMIT_BINDING: &str = "PIXEL_RATE_LIMITER";
const RATE_LIMIT_PERIOD_SECONDS: u32 = 60;
const ROUTE: &str = "pixel";

/// `GET /v1/pixel.js`: the same script for every merchant (the key is in the tag).
pub fn script() -> Result<Response> {
    let response = Response::ok(pixel::SCRIPT)?;
    let headers = response.headers();
    headers.set("content-type", "application/javascript; charset=utf-8")?;
    headers.set("cache-control", "public, max-age=3600")?;
    headers.set("x-content-type-options", "nosniff")?;
    Ok(response)
}

/// `OPTIONS /v1/pixel/{key}/collect`: the script sends simple requests, but a page that
/// posts JSON itself gets a proper preflight answer for its allowed origin.
pub async fn preflight(req: &Request, env: &Env, pixel_key: &str) -> Result<Response> {
    let response = Response::empty()?.with_status(204);
    // No Origin, no lookup: only a browser on an allowed origin gets CORS headers.
    let Some(origin) = req.headers().get("origin")? else {
        return Ok(response);
    };
    if lookup(env, pixel_key)
        .await
        .is_ok_and(|row| row.settings().allows(&origin))
    {
        let headers = response.headers();
        allow_origin(&response, &origin)?;
        headers.set("access-control-allow-methods", "POST")?;
        headers.set("access-control-allow-headers", "content-type")?;
        headers.set("access-control-max-age", "86400")?;
    }
    Ok(response)
}

/// `POST /v1/pixel/{key}/collect`: answers 204 once the capture is in the merchant's
/// regional identity store.
pub async fn collect(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    pixel_key: &str,
) -> Result<Response> {
    let origin = req.headers().get("origin")?;
    let row = match lookup(env, pixel_key).await {
        Ok(row) => row,
        Err(err) => return refuse(env, ctx, None, origin.as_deref(), &err),
    };
    let merchant = Some(row.merchant_id.as_str());
    let client_ip = req.headers().get("cf-connecting-ip")?;
    // The limit comes first: every later refusal writes to the rejected-request log.
    if let Err(err) = check_rate(env, &row.merchant_id, client_ip.as_deref()).await? {
        return refuse(env, ctx, merchant, None, &err);
    }
    let settings = row.settings();
    let Some(origin) = origin else {
        return refuse(env, ctx, merchant, None, &PixelError::OriginRequired);
    };
    if !settings.allows(&origin) {
        let err = PixelError::OriginNotAllowed(origin);
        return refuse(env, ctx, merchant, None, &err);
    }
    if row.status == MerchantStatus::Disabled {
        return refuse(
            env,
            ctx,
            merchant,
            Some(&origin),
            &PixelError::MerchantDisabled,
        );
    }
    let body = match read_body(&mut req).await? {
        Ok(body) => body,
        Err(err) => return refuse(env, ctx, merchant, Some(&origin), &err),
    };
    let user_agent = req.headers().get("user-agent")?;
    let now = now_ms();
    let context = BeaconContext {
        now_ms: now,
        client_ip: client_ip.as_deref(),
        user_agent: user_agent.as_deref(),
    };
    let capture = match pixel::capture(&body, &settings, context) {
        Ok(capture) => capture,
        Err(err) => return refuse(env, ctx, merchant, Some(&origin), &err),
    };
    let stored = async {
        super::merchant::MerchantClient::new(
            env,
            row.region,
            &row.merchant_id,
            super::metrics::Phase::Ingest,
        )?
        .record_visitor(&capture)
        .await
    }
    .await;
    if let Err(err) = stored {
        super::emit(
            crate::log::Log::error("pixel beacon not stored")
                .merchant(&row.merchant_id)
                .reason(&err),
        );
        let err = PixelError::Unavailable("could not store the beacon".into());
        return refuse(env, ctx, merchant, Some(&origin), &err);
    }
    let response = Response::empty()?.with_status(204);
    allow_origin(&response, &origin)?;
    Ok(response)
}

async fn lookup(env: &Env, pixel_key: &str) -> std::result::Result<PixelRow, PixelError> {
    if !pixel::is_key(pixel_key) {
        return Err(PixelError::UnknownKey);
    }
    let found = async { Routing::from_env(env)?.pixel(pixel_key).await }.await;
    match found {
        Ok(Some(row)) => Ok(row),
        Ok(None) => Err(PixelError::UnknownKey),
        Err(err) => {
            super::emit(crate::log::Log::error("pixel lookup failed").reason(&err));
            Err(PixelError::Unavailable(
                "pixel settings are unavailable".into(),
            ))
        }
    }
}

async fn check_rate(
    env: &Env,
    merchant_id: &str,
    client_ip: Option<&str>,
) -> Result<std::result::Result<(), PixelError>> {
    // Without the binding (misconfigured deploy) beacons pass, as ingest does.
    let Ok(limiter) = env.rate_limiter(RATE_LIMIT_BINDING) else {
        return Ok(Ok(()));
    };
    let key = format!("{merchant_id}/{}", client_ip.unwrap_or("unknown"));
    let outcome = limiter.limit(key).await?;
    Ok(if outcome.success {
        Ok(())
    } else {
        Err(PixelError::RateLimited {
            retry_after_seconds: RATE_LIMIT_PERIOD_SECONDS,
        })
    })
}

async fn read_body(req: &mut Request) -> Result<std::result::Result<Vec<u8>, PixelError>> {
    Ok(read_body_limited(req, pixel::MAX_BEACON_BYTES)
        .await?
        .map_err(|size| PixelError::TooLarge {
            size,
            limit: pixel::MAX_BEACON_BYTES,
        }))
}

fn allow_origin(response: &Response, origin: &str) -> Result<()> {
    response
        .headers()
        .set("access-control-allow-origin", origin)?;
    response.headers().set("vary", "Origin")?;
    Ok(())
}

/// The JSON error; readable by the page only when its origin is allowed. Refusals of a
/// known merchant's pixel are counted in the rejected-request log, except rate limits
/// (the limiter already counts those, and logging them would let a flood write).
fn refuse(
    env: &Env,
    ctx: &Context,
    merchant_id: Option<&str>,
    allowed_origin: Option<&str>,
    err: &PixelError,
) -> Result<Response> {
    if let (Some(merchant_id), false) = (merchant_id, matches!(err, PixelError::RateLimited { .. }))
    {
        record_rejection(
            env,
            ctx,
            merchant_id,
            ROUTE,
            err.status(),
            err.code(),
            &err.to_string(),
        );
    }
    let response = json_response(err.status(), &err.body())?;
    if let Some(origin) = allowed_origin {
        allow_origin(&response, origin)?;
    }
    match err {
        PixelError::RateLimited {
            retry_after_seconds,
        } => with_header(response, "retry-after", &retry_after_seconds.to_string()),
        _ => Ok(response),
    }
}
