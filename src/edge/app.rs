//! The merchant's pages (`/app`): sign in with an API key, then the intent overview and
//! each visitor's timeline. HTML comes from `crate::pages`, sessions from
//! `crate::sessions`; this file reads requests and sets headers.

use super::http::{read_body_limited, storage_unavailable};
use super::intent_api::{self, DEFAULT_PAGE};
use super::merchant::IntentPage;
use super::routing::Routing;
use super::{emit, keyring, now_ms};
use crate::admin::ApiError;
use crate::pages;
use crate::routes::RouteId;
use crate::sessions::{self, Session};
use worker::{Env, Request, Response, Result};

const SESSION_PURPOSE: &str = "tracklayer app session v1";
const MAX_SIGN_IN_BYTES: usize = 2048;

fn html(status: u16, body: String) -> Result<Response> {
    let response = Response::ok(body)?.with_status(status);
    let headers = response.headers();
    headers.set("content-type", "text/html; charset=utf-8")?;
    headers.set("content-security-policy", pages::CONTENT_SECURITY_POLICY)?;
    headers.set("x-content-type-options", "nosniff")?;
    headers.set("x-frame-options", "DENY")?;
    headers.set("referrer-policy", "no-referrer")?;
    headers.set("cache-control", "no-store")?;
    Ok(response)
}

fn asset(body: &'static str, content_type: &str) -> Result<Response> {
    let response = Response::ok(body)?;
    let headers = response.headers();
    headers.set("content-type", content_type)?;
    headers.set("x-content-type-options", "nosniff")?;
    headers.set("cache-control", "public, max-age=300")?;
    Ok(response)
}

fn redirect(location: &str, cookie: Option<&str>) -> Result<Response> {
    let response = Response::empty()?.with_status(303);
    let headers = response.headers();
    headers.set("location", location)?;
    headers.set("cache-control", "no-store")?;
    if let Some(cookie) = cookie {
        headers.set("set-cookie", cookie)?;
    }
    Ok(response)
}

fn session_keys(env: &Env) -> Option<Vec<[u8; 32]>> {
    keyring(env).map(|k| k.derived_keys(SESSION_PURPOSE))
}

/// The signed-in session, if the cookie is ours, current, and its key still valid.
async fn session(req: &Request, env: &Env) -> Result<Option<Session>> {
    let Some(header) = req.headers().get("cookie")? else {
        return Ok(None);
    };
    let (Some(token), Some(keys)) = (sessions::from_cookie_header(&header), session_keys(env))
    else {
        return Ok(None);
    };
    let Some(session) = sessions::verify(&keys, token, now_ms() / 1000) else {
        return Ok(None);
    };
    // A revoked key ends its sessions at once.
    let row = Routing::from_env(env)?.api_key(&session.key_id).await?;
    Ok(row
        .filter(|row| row.revoked_at.is_none() && row.merchant_id == session.merchant_id)
        .map(|_| session))
}

/// Whether a form post comes from a page of this worker: the browser says so
/// (`Sec-Fetch-Site: same-origin`, which no page can set), or its `Origin` is the
/// request's own.
fn same_origin(req: &Request) -> Result<bool> {
    let headers = req.headers();
    if headers.get("sec-fetch-site")?.as_deref() == Some("same-origin") {
        return Ok(true);
    }
    let own = req.url()?.origin().ascii_serialization();
    Ok(headers.get("origin")?.is_some_and(|origin| origin == own))
}

fn error_page(merchant_id: &str, err: &ApiError) -> Result<Response> {
    let (status, title) = match err {
        ApiError::NotFound(_) => (404, "Not found"),
        ApiError::InvalidRequest(_) => (400, "Not a valid request"),
        _ => (503, "Temporarily unavailable"),
    };
    html(
        status,
        pages::message(Some(merchant_id), title, &err.to_string()),
    )
}

pub async fn handle(
    id: RouteId,
    params: &[(&'static str, String)],
    mut req: Request,
    env: &Env,
) -> Result<Response> {
    match id {
        RouteId::AppStyles => return asset(pages::STYLES, "text/css; charset=utf-8"),
        RouteId::AppScript => return asset(pages::SCRIPT, "application/javascript; charset=utf-8"),
        RouteId::AppSignOut => return redirect("/app", Some(&sessions::clear_cookie())),
        RouteId::AppSignIn => return sign_in(&mut req, env).await,
        _ => {}
    }
    let Some(session) = session(&req, env).await? else {
        return match id {
            RouteId::AppHome => html(200, pages::sign_in(None)),
            _ => redirect("/app", None),
        };
    };
    let merchant_id = session.merchant_id.as_str();
    match id {
        RouteId::AppHome => {
            let page = IntentPage {
                limit: DEFAULT_PAGE,
                offset: 0,
            };
            let loaded = async {
                let overview = intent_api::overview(env, merchant_id).await?;
                let ranked = intent_api::visitors(env, merchant_id, &page, false).await?;
                let queue = intent_api::visitors(env, merchant_id, &page, true).await?;
                Ok::<_, ApiError>((overview, ranked, queue))
            }
            .await;
            match loaded {
                Ok((overview, ranked, queue)) => html(
                    200,
                    pages::overview(&pages::OverviewPage {
                        merchant_id,
                        threshold: overview.intent.settings.threshold,
                        ranked: &ranked,
                        queue: &queue,
                        seed_included: overview.seed_included(),
                        seed_configured: overview.intent.settings.linkedin_seed.is_some(),
                        segment: overview.seed.segment.as_deref(),
                        uploaded_visitors: overview.seed.uploaded_visitors,
                        runs: &overview.seed.runs,
                    }),
                ),
                Err(err) => error_page(merchant_id, &err),
            }
        }
        RouteId::AppHealth => {
            let loaded = async {
                let (_, client) = intent_api::merchant_object(env, merchant_id).await?;
                let overview = client.health().await.map_err(storage_unavailable)?;
                let rfm = client
                    .rfm(&super::merchant::RfmQuery {
                        segment: None,
                        limit: DEFAULT_PAGE,
                        offset: 0,
                        carry_on_events: None,
                    })
                    .await
                    .map_err(storage_unavailable)?;
                Ok::<_, ApiError>((overview, rfm))
            }
            .await;
            match loaded {
                Ok((overview, rfm)) => html(200, pages::health(merchant_id, &overview, &rfm)),
                Err(err) => error_page(merchant_id, &err),
            }
        }
        RouteId::AppResume => {
            // Same-origin forms only (the cookie is SameSite=Strict as well).
            if !same_origin(&req)? {
                return html(
                    403,
                    pages::message(
                        Some(merchant_id),
                        "Refused",
                        "The form must come from this site.",
                    ),
                );
            }
            let body = match read_body_limited(&mut req, MAX_SIGN_IN_BYTES).await? {
                Ok(body) => body,
                Err(_) => return redirect("/app/health", None),
            };
            let destination = url::form_urlencoded::parse(&body)
                .find(|(name, _)| name == "destination")
                .map(|(_, value)| value.into_owned())
                .unwrap_or_default();
            if crate::destinations::find(&destination).is_none() {
                return error_page(
                    merchant_id,
                    &ApiError::NotFound(format!("destination {destination}")),
                );
            }
            let resumed = async {
                let (_, client) = intent_api::merchant_object(env, merchant_id).await?;
                client
                    .resume_destination(&destination, &format!("merchant:{}", session.key_id))
                    .await
                    .map_err(storage_unavailable)
            }
            .await;
            match resumed {
                Ok(_) => redirect("/app/health", None),
                Err(err) => error_page(merchant_id, &err),
            }
        }
        RouteId::AppVisitor => {
            let visitor_id = params
                .iter()
                .find(|(k, _)| *k == "visitor_id")
                .map(|(_, v)| v.as_str())
                .unwrap_or_default();
            match intent_api::timeline(env, merchant_id, visitor_id).await {
                Ok(timeline) => html(200, pages::visitor(merchant_id, &timeline)),
                Err(err) => error_page(merchant_id, &err),
            }
        }
        _ => redirect("/app", None),
    }
}

/// `POST /app/session`: the API key from the form becomes a session cookie.
async fn sign_in(req: &mut Request, env: &Env) -> Result<Response> {
    let refused = |message: &str| html(401, pages::sign_in(Some(message)));
    let Some(keys) = session_keys(env) else {
        return html(
            503,
            pages::sign_in(Some(
                "Sign-in is unavailable: the operator has not configured MASTER_KEYS.",
            )),
        );
    };
    let body = match read_body_limited(req, MAX_SIGN_IN_BYTES).await? {
        Ok(body) => body,
        Err(_) => return refused("That API key is not valid."),
    };
    let api_key = url::form_urlencoded::parse(&body)
        .find(|(name, _)| name == "api_key")
        .map(|(_, value)| value.trim().to_string())
        .unwrap_or_default();
    let Some((key_id, secret)) = crate::api_keys::parse(&api_key) else {
        return refused("That API key is not valid.");
    };
    let routing = Routing::from_env(env)?;
    let row = match routing.api_key(key_id).await {
        Ok(row) => row,
        Err(err) => {
            emit(crate::log::Log::error("sign-in: key lookup failed").reason(err));
            return html(
                503,
                pages::sign_in(Some("Sign-in is temporarily unavailable; try again.")),
            );
        }
    };
    let Some(row) = row.filter(|row| {
        row.revoked_at.is_none() && crate::api_keys::secret_matches(secret, &row.secret_hash)
    }) else {
        return refused("That API key is not valid.");
    };
    let token = sessions::issue(
        &keys[0],
        &Session {
            merchant_id: row.merchant_id.clone(),
            key_id: key_id.to_string(),
            expires_at: now_ms() / 1000 + sessions::LIFETIME_SECONDS,
        },
    );
    redirect("/app", Some(&sessions::set_cookie(&token)))
}
