//! The operator API (`/v1/admin/…`, `ADMIN_TOKEN`) and the merchant's own read API
//! (`/v1/merchants/{id}/…`, merchant API key). Rules live in `crate::admin`; this file
//! reads requests, calls the stores and answers.

use super::http::{api_error, json_response, storage_unavailable as unavailable};
use super::merchant::MerchantClient;
use super::metrics::{self, Phase};
use super::routing::{ApiKeyRow, MerchantRoute, PixelRow, Routing};
use super::settings::{forget_merchants, SettingsStore};
use super::{authorize_merchant, keyring, now_ms};
use crate::admin::{
    integration, parse_body, parse_settings, region_name, view, ApiError, IntegrationKind,
    MerchantPatch, NewMerchant, ReplayFilter,
};
use crate::config::MerchantStatus;
use crate::hashing::constant_time_eq;
use crate::pixel::PixelSettings;
use crate::routes::RouteId;
use crate::secrets::{config_context, Keyring, NONCE_LEN};
use serde::Deserialize;
use serde_json::{json, Value};
use worker::{Env, Request, Response, Result};

type Answer = std::result::Result<(u16, Value), ApiError>;

fn random_bytes<const N: usize>() -> std::result::Result<[u8; N], ApiError> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes)
        .map_err(|_| ApiError::Unavailable("no randomness available".into()))?;
    Ok(bytes)
}

fn require_keyring(env: &Env) -> std::result::Result<Keyring, ApiError> {
    keyring(env).ok_or_else(|| {
        ApiError::Unavailable(
            "MASTER_KEYS is not configured on this worker; secrets cannot be sealed".into(),
        )
    })
}

fn authorize_operator(req: &Request, env: &Env) -> std::result::Result<(), ApiError> {
    let expected = env
        .secret("ADMIN_TOKEN")
        .map(|s| s.to_string())
        .unwrap_or_default();
    let header = req.headers().get("authorization").ok().flatten();
    let token = crate::api_keys::bearer(header.as_deref()).unwrap_or("");
    if expected.is_empty() || !constant_time_eq(token.as_bytes(), expected.as_bytes()) {
        return Err(ApiError::Unauthorized);
    }
    Ok(())
}

fn query_pairs(req: &Request) -> Result<Vec<(String, String)>> {
    Ok(req
        .url()?
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect())
}

async fn route_of(
    routing: &Routing,
    merchant_id: &str,
) -> std::result::Result<MerchantRoute, ApiError> {
    routing
        .route(merchant_id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| ApiError::NotFound(format!("merchant {merchant_id}")))
}

fn respond(answer: Answer) -> Result<Response> {
    match answer {
        Ok((status, body)) => json_response(status, &body),
        Err(err) => api_error(&err),
    }
}

pub async fn admin(
    id: RouteId,
    params: &[(&'static str, String)],
    req: Request,
    env: &Env,
) -> Result<Response> {
    if let Err(err) = authorize_operator(&req, env) {
        return api_error(&err);
    }
    // Any operator write may change what ingest reads: this isolate re-reads it.
    let writes = req.method() != worker::Method::Get;
    if writes {
        forget_merchants();
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
            .unwrap_or_default()
    };
    let merchant_id = param("merchant_id").to_string();
    if matches!(id, RouteId::AdminAuditVerify | RouteId::AdminAuditExport) {
        return super::audit_api::admin(id, &req, env, &merchant_id).await;
    }
    let answer = match id {
        RouteId::AdminListMerchants => list_merchants(env).await,
        RouteId::AdminCreateMerchant => create_merchant(req, env).await,
        RouteId::AdminGetMerchant => get_merchant(env, &merchant_id).await,
        RouteId::AdminUpdateMerchant => update_merchant(req, env, &merchant_id).await,
        RouteId::AdminDeleteMerchant => delete_merchant(env, &merchant_id).await,
        RouteId::AdminPutIntegration | RouteId::AdminDeleteIntegration => {
            let kind = match param("kind") {
                "sources" => IntegrationKind::Source,
                "destinations" => IntegrationKind::Destination,
                other => {
                    return api_error(&ApiError::NotFound(format!("collection {other}")));
                }
            };
            if id == RouteId::AdminPutIntegration {
                put_integration(req, env, &merchant_id, kind, param("name")).await
            } else {
                delete_integration(env, &merchant_id, kind, param("name")).await
            }
        }
        RouteId::AdminListApiKeys => list_api_keys(env, &merchant_id).await,
        RouteId::AdminCreateApiKey => create_api_key(req, env, &merchant_id).await,
        RouteId::AdminRevokeApiKey => revoke_api_key(env, &merchant_id, param("key_id")).await,
        RouteId::AdminGetPixel => get_pixel(&req, env, &merchant_id).await,
        RouteId::AdminPutPixel => put_pixel(req, env, &merchant_id).await,
        RouteId::AdminDeletePixel => delete_pixel(env, &merchant_id).await,
        RouteId::AdminView => read_view(&req, env, &merchant_id, param("view")).await,
        RouteId::AdminReplayDeadLetter => replay(env, &merchant_id, param("job_id")).await,
        RouteId::AdminReplayDeadLetters => replay_many(req, env, &merchant_id).await,
        RouteId::AdminEraseCustomer => erase_customer(req, env, &merchant_id).await,
        RouteId::AdminRejectedRequests => rejected_requests(&req, env).await,
        RouteId::AdminCronRuns => cron_runs(env).await,
        RouteId::AdminMetrics => Ok((200, json!(metrics::snapshot()))),
        RouteId::AdminRotateSecrets => rotate_secrets(env).await,
        RouteId::AdminHealth
        | RouteId::AdminHealthSettings
        | RouteId::AdminHealthEvaluate
        | RouteId::AdminPauseDestination
        | RouteId::AdminResumeDestination => super::ops_api::admin(id, params, req, env).await,
        RouteId::AdminRfm | RouteId::AdminRfmCompute => {
            super::ops_api::rfm_admin(id, &merchant_id, req, env).await
        }
        RouteId::AdminGetIntent | RouteId::AdminPutIntent | RouteId::AdminSeedSync => {
            super::intent_api::admin(id, &merchant_id, req, env).await
        }
        // Not operator routes; the edge dispatches them elsewhere.
        RouteId::Health
        | RouteId::OpenApi
        | RouteId::StripeWebhook
        | RouteId::SourceWebhook
        | RouteId::ProductEvents
        | RouteId::PixelScript
        | RouteId::PixelCollect
        | RouteId::PixelPreflight
        | RouteId::MerchantSelf
        | RouteId::MerchantView
        | RouteId::IntentOverview
        | RouteId::IntentVisitors
        | RouteId::IntentTimeline
        | RouteId::IntentQueue
        | RouteId::AppHome
        | RouteId::AppSignIn
        | RouteId::AppSignOut
        | RouteId::AppVisitor
        | RouteId::AppStyles
        | RouteId::AppScript
        | RouteId::AppHealth
        | RouteId::AppResume
        | RouteId::MerchantAuditExport
        | RouteId::MerchantHealth
        | RouteId::MerchantRfm
        | RouteId::AdminAuditVerify
        | RouteId::AdminAuditExport => Err(ApiError::NotFound("route".into())),
    };
    // Every change that succeeded goes into the merchant's audit chain (not deletion,
    // which removes the chain with the merchant, nor the global key rotation).
    if let (true, Ok((status, body))) = (writes, &answer) {
        let merchant = match id {
            RouteId::AdminCreateMerchant => body["merchant_id"].as_str().unwrap_or_default(),
            _ => merchant_id.as_str(),
        };
        if !merchant.is_empty()
            && !matches!(
                id,
                RouteId::AdminDeleteMerchant | RouteId::AdminRotateSecrets
            )
        {
            let record = super::audit_api::operator_record(id, params, *status);
            super::audit_api::append(env, merchant, &record).await;
        }
    }
    respond(answer)
}

fn route_json(route: &MerchantRoute) -> Value {
    json!({
        "merchant_id": route.merchant_id,
        "region": route.region,
        "plan": route.plan,
        "status": route.status,
        "created_at": route.created_at,
        "updated_at": route.updated_at,
    })
}

async fn list_merchants(env: &Env) -> Answer {
    let routes = Routing::from_env(env)
        .map_err(unavailable)?
        .routes(None)
        .await
        .map_err(unavailable)?;
    let items: Vec<Value> = routes.iter().map(route_json).collect();
    Ok((200, json!({ "items": items })))
}

async fn create_merchant(mut req: Request, env: &Env) -> Answer {
    let body = req.bytes().await.map_err(unavailable)?;
    let new: NewMerchant = parse_body(&body)?;
    new.validate()?;
    let routing = Routing::from_env(env).map_err(unavailable)?;
    let now = now_ms();
    let route = MerchantRoute {
        merchant_id: new.merchant_id.clone(),
        region: new.region,
        plan: new.plan,
        status: MerchantStatus::Active,
        created_at: now,
        updated_at: now,
    };
    if !routing.create(&route).await.map_err(unavailable)? {
        return Err(ApiError::Conflict {
            code: "merchant_exists",
            message: format!("merchant {} already exists", new.merchant_id),
        });
    }
    let store = SettingsStore::for_region(env, new.region).map_err(unavailable)?;
    let value_policy = serde_json::to_value(&new.value_policy).unwrap_or_default();
    let lifecycle = serde_json::to_value(new.lifecycle.unwrap_or_default()).unwrap_or_default();
    if let Err(err) = store
        .create_settings(
            &new.merchant_id,
            &value_policy,
            &lifecycle,
            new.dry_run,
            now,
        )
        .await
    {
        // Without its regional settings the route would point at nothing.
        let _ = routing.delete(&new.merchant_id).await;
        return Err(unavailable(err));
    }
    Ok((201, route_json(&route)))
}

/// The merchant with its integrations, secrets masked to their last 4 characters.
async fn merchant_view(env: &Env, route: &MerchantRoute) -> Answer {
    let store = SettingsStore::for_region(env, route.region).map_err(unavailable)?;
    let settings = store
        .settings(&route.merchant_id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| {
            ApiError::Unavailable("merchant settings are missing in its region".into())
        })?;
    let keyring = keyring(env);
    let mut body = route_json(route);
    for (kind, field) in [
        (IntegrationKind::Source, "sources"),
        (IntegrationKind::Destination, "destinations"),
    ] {
        let mut shown = serde_json::Map::new();
        for row in store
            .configs(&route.merchant_id, kind.as_str())
            .await
            .map_err(unavailable)?
        {
            let opened = keyring.as_ref().and_then(|k| {
                k.open(
                    &row.config,
                    &config_context(&route.merchant_id, kind.as_str(), &row.name),
                )
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            });
            let value = match (opened, integration(kind, &row.name)) {
                (Some(config), Ok(spec)) => spec.masked(&config),
                _ => {
                    json!({ "error": "stored settings do not open with the configured master keys" })
                }
            };
            shown.insert(row.name, value);
        }
        body[field] = Value::Object(shown);
    }
    // Destinations failing every request: their jobs are held and probed (see README).
    body["parked_destinations"] = Value::Array(
        records(env, route)?
            .parked_destinations()
            .await
            .map_err(unavailable)?,
    );
    // Written by the daily job (API versions near or past their sunset).
    body["warnings"] = Value::Array(
        Routing::from_env(env)
            .map_err(unavailable)?
            .warnings(&route.merchant_id)
            .await
            .map_err(unavailable)?,
    );
    body["value_policy"] = serde_json::from_str(&settings.value_policy).unwrap_or(Value::Null);
    body["lifecycle"] = serde_json::from_str(&settings.lifecycle).unwrap_or(Value::Null);
    body["dry_run"] = Value::Bool(settings.dry_run != 0);
    Ok((200, body))
}

async fn get_merchant(env: &Env, merchant_id: &str) -> Answer {
    let routing = Routing::from_env(env).map_err(unavailable)?;
    let route = route_of(&routing, merchant_id).await?;
    merchant_view(env, &route).await
}

async fn update_merchant(mut req: Request, env: &Env, merchant_id: &str) -> Answer {
    let body = req.bytes().await.map_err(unavailable)?;
    let patch: MerchantPatch = parse_body(&body)?;
    let routing = Routing::from_env(env).map_err(unavailable)?;
    let route = route_of(&routing, merchant_id).await?;
    patch.validate(route.region)?;
    let now = now_ms();
    if patch.plan.is_some() || patch.status.is_some() {
        routing
            .update(
                merchant_id,
                patch.plan.unwrap_or(route.plan),
                patch.status.unwrap_or(route.status),
                now,
            )
            .await
            .map_err(unavailable)?;
    }
    if patch.value_policy.is_some() || patch.lifecycle.is_some() || patch.dry_run.is_some() {
        let value_policy = patch
            .value_policy
            .as_ref()
            .map(|v| serde_json::to_value(v).unwrap_or_default());
        let lifecycle = patch
            .lifecycle
            .as_ref()
            .map(|l| serde_json::to_value(l).unwrap_or_default());
        SettingsStore::for_region(env, route.region)
            .map_err(unavailable)?
            .update_settings(
                merchant_id,
                value_policy.as_ref(),
                lifecycle.as_ref(),
                patch.dry_run,
                now,
            )
            .await
            .map_err(unavailable)?;
    }
    get_merchant(env, merchant_id).await
}

/// The merchant's own records (its Durable Object).
fn records(env: &Env, route: &MerchantRoute) -> std::result::Result<MerchantClient, ApiError> {
    MerchantClient::new(env, route.region, &route.merchant_id, Phase::Other).map_err(unavailable)
}

/// Whole-merchant deletion: its object (every record), its regional settings, then the
/// route and keys.
async fn delete_merchant(env: &Env, merchant_id: &str) -> Answer {
    let routing = Routing::from_env(env).map_err(unavailable)?;
    let route = route_of(&routing, merchant_id).await?;
    let records_deleted = records(env, &route)?.forget().await.map_err(unavailable)?;
    let settings_deleted = SettingsStore::for_region(env, route.region)
        .map_err(unavailable)?
        .delete_merchant(merchant_id)
        .await
        .map_err(unavailable)?;
    routing.delete(merchant_id).await.map_err(unavailable)?;
    Ok((
        200,
        json!({
            "merchant_id": merchant_id,
            "region": region_name(route.region),
            "deleted_rows": records_deleted,
            "deleted_settings": settings_deleted,
        }),
    ))
}

async fn put_integration(
    mut req: Request,
    env: &Env,
    merchant_id: &str,
    kind: IntegrationKind,
    name: &str,
) -> Answer {
    let spec = integration(kind, name)?;
    let body = req.bytes().await.map_err(unavailable)?;
    let config: Value = parse_body(&body)?;
    let routing = Routing::from_env(env).map_err(unavailable)?;
    let route = route_of(&routing, merchant_id).await?;
    spec.check(route.plan, &config, now_ms() / 1000)?;
    let keyring = require_keyring(env)?;
    let plaintext = serde_json::to_vec(&config).unwrap_or_default();
    let sealed = keyring
        .seal(
            &plaintext,
            &config_context(merchant_id, kind.as_str(), spec.name),
            random_bytes::<NONCE_LEN>()?,
        )
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    SettingsStore::for_region(env, route.region)
        .map_err(unavailable)?
        .put_config(merchant_id, kind.as_str(), spec.name, &sealed, now_ms())
        .await
        .map_err(unavailable)?;
    Ok((
        200,
        json!({
            "merchant_id": merchant_id,
            "kind": kind.as_str(),
            "name": spec.name,
            "config": spec.masked(&config),
            "sealed_with_key": keyring.current_key_id(),
        }),
    ))
}

async fn delete_integration(
    env: &Env,
    merchant_id: &str,
    kind: IntegrationKind,
    name: &str,
) -> Answer {
    let spec = integration(kind, name)?;
    let routing = Routing::from_env(env).map_err(unavailable)?;
    let route = route_of(&routing, merchant_id).await?;
    let removed = SettingsStore::for_region(env, route.region)
        .map_err(unavailable)?
        .delete_config(merchant_id, kind.as_str(), spec.name)
        .await
        .map_err(unavailable)?;
    if !removed {
        return Err(ApiError::NotFound(format!(
            "{} {name} of merchant {merchant_id}",
            kind.as_str()
        )));
    }
    Ok((
        200,
        json!({ "deleted": true, "kind": kind.as_str(), "name": spec.name }),
    ))
}

async fn list_api_keys(env: &Env, merchant_id: &str) -> Answer {
    let routing = Routing::from_env(env).map_err(unavailable)?;
    route_of(&routing, merchant_id).await?;
    let keys = routing.api_keys(merchant_id).await.map_err(unavailable)?;
    Ok((200, json!({ "items": keys })))
}

async fn create_api_key(mut req: Request, env: &Env, merchant_id: &str) -> Answer {
    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct NewKey {
        #[serde(default)]
        label: String,
    }
    let body = req.bytes().await.map_err(unavailable)?;
    let new: NewKey = if body.is_empty() {
        NewKey::default()
    } else {
        parse_body(&body)?
    };
    if new.label.chars().count() > 100 {
        return Err(ApiError::InvalidRequest(
            "label is longer than 100 characters".into(),
        ));
    }
    let routing = Routing::from_env(env).map_err(unavailable)?;
    route_of(&routing, merchant_id).await?;
    let key = crate::api_keys::generate(&random_bytes::<
        { crate::api_keys::KEY_ID_BYTES + crate::api_keys::SECRET_BYTES },
    >()?);
    let row = ApiKeyRow {
        key_id: key.key_id.clone(),
        merchant_id: merchant_id.to_string(),
        secret_hash: key.secret_hash.clone(),
        label: new.label,
        created_at: now_ms(),
        last_used_at: None,
        revoked_at: None,
    };
    routing.insert_api_key(&row).await.map_err(unavailable)?;
    let mut body = serde_json::to_value(&row).unwrap_or_default();
    // The only time the full key is ever shown.
    body["api_key"] = Value::String(key.token);
    Ok((201, body))
}

async fn revoke_api_key(env: &Env, merchant_id: &str, key_id: &str) -> Answer {
    let routing = Routing::from_env(env).map_err(unavailable)?;
    if !routing
        .revoke_api_key(merchant_id, key_id, now_ms())
        .await
        .map_err(unavailable)?
    {
        return Err(ApiError::NotFound(format!(
            "active api key {key_id} of merchant {merchant_id}"
        )));
    }
    Ok((200, json!({ "key_id": key_id, "revoked": true })))
}

/// The pixel as the operator sees it, with the tags to paste into the merchant's pages
/// (pointing at the host this request reached).
fn pixel_json(req: &Request, row: &PixelRow) -> std::result::Result<Value, ApiError> {
    let base = req
        .url()
        .map_err(unavailable)?
        .origin()
        .ascii_serialization();
    let settings = row.settings();
    Ok(json!({
        "merchant_id": row.merchant_id,
        "pixel_key": row.pixel_key,
        "allowed_origins": settings.allowed_origins,
        "browser_identify": settings.browser_identify,
        "snippet": crate::pixel::snippet(&base, &row.pixel_key),
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }))
}

async fn get_pixel(req: &Request, env: &Env, merchant_id: &str) -> Answer {
    let routing = Routing::from_env(env).map_err(unavailable)?;
    route_of(&routing, merchant_id).await?;
    let row = routing
        .pixel_of(merchant_id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| ApiError::NotFound(format!("pixel of merchant {merchant_id}")))?;
    Ok((200, pixel_json(req, &row)?))
}

/// Creates the pixel (new public key) or updates its settings (same key).
async fn put_pixel(mut req: Request, env: &Env, merchant_id: &str) -> Answer {
    let body = req.bytes().await.map_err(unavailable)?;
    let settings: PixelSettings = parse_settings(&body, "pixel", PixelSettings::validated)?;
    let routing = Routing::from_env(env).map_err(unavailable)?;
    route_of(&routing, merchant_id).await?;
    let new_key =
        crate::pixel::generate_key(&random_bytes::<{ crate::pixel::KEY_RANDOM_BYTES }>()?);
    routing
        .put_pixel(merchant_id, &new_key, &settings, now_ms())
        .await
        .map_err(unavailable)?;
    get_pixel(&req, env, merchant_id).await
}

async fn delete_pixel(env: &Env, merchant_id: &str) -> Answer {
    let routing = Routing::from_env(env).map_err(unavailable)?;
    route_of(&routing, merchant_id).await?;
    if !routing
        .delete_pixel(merchant_id)
        .await
        .map_err(unavailable)?
    {
        return Err(ApiError::NotFound(format!(
            "pixel of merchant {merchant_id}"
        )));
    }
    Ok((200, json!({ "merchant_id": merchant_id, "deleted": true })))
}

async fn read_view(req: &Request, env: &Env, merchant_id: &str, view_name: &str) -> Answer {
    let view = view(view_name)?;
    let query = view.query(merchant_id, &query_pairs(req).map_err(unavailable)?)?;
    let routing = Routing::from_env(env).map_err(unavailable)?;
    let route = route_of(&routing, merchant_id).await?;
    let rows = records(env, &route)?
        .list(&query)
        .await
        .map_err(unavailable)?;
    let mut page = crate::admin::page(rows, query.limit);
    page["merchant_id"] = Value::String(merchant_id.to_string());
    Ok((200, page))
}

/// Puts a dead-lettered job back on its region's queue with a fresh attempt count.
async fn replay(env: &Env, merchant_id: &str, job_id: &str) -> Answer {
    let routing = Routing::from_env(env).map_err(unavailable)?;
    let route = route_of(&routing, merchant_id).await?;
    let filter: ReplayFilter = parse_body(b"{}")?;
    let replayed = records(env, &route)?
        .replay(Some(job_id), &filter)
        .await
        .map_err(unavailable)?;
    if replayed.is_empty() {
        return Err(ApiError::NotFound(format!(
            "dead letter {job_id} of merchant {merchant_id}"
        )));
    }
    Ok((202, json!({ "job_id": job_id, "status": "requeued" })))
}

/// Bulk replay: the selected dead letters go back on the region's queue, each with a
/// fresh attempt count. Run again to continue past `limit`.
async fn replay_many(mut req: Request, env: &Env, merchant_id: &str) -> Answer {
    let body = req.bytes().await.map_err(unavailable)?;
    let filter: ReplayFilter = if body.is_empty() {
        parse_body(b"{}")?
    } else {
        parse_body(&body)?
    };
    filter.validate()?;
    let routing = Routing::from_env(env).map_err(unavailable)?;
    let route = route_of(&routing, merchant_id).await?;
    let job_ids = records(env, &route)?
        .replay(None, &filter)
        .await
        .map_err(unavailable)?;
    Ok((
        202,
        json!({ "requeued": job_ids.len(), "job_ids": job_ids, "limit": filter.limit }),
    ))
}

async fn erase_customer(mut req: Request, env: &Env, merchant_id: &str) -> Answer {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Erasure {
        email: Option<String>,
        customer_id: Option<String>,
    }
    let body = req.bytes().await.map_err(unavailable)?;
    let erasure: Erasure = parse_body(&body)?;
    let email = erasure
        .email
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty());
    let customer_id = erasure
        .customer_id
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    if email.is_none() && customer_id.is_none() {
        return Err(ApiError::InvalidRequest(
            "give an email or a customer_id to erase".into(),
        ));
    }
    let routing = Routing::from_env(env).map_err(unavailable)?;
    let route = route_of(&routing, merchant_id).await?;
    let erased = records(env, &route)?
        .erase_customer(email, customer_id)
        .await
        .map_err(unavailable)?;
    Ok((
        200,
        json!({ "merchant_id": merchant_id, "erased_rows": erased }),
    ))
}

async fn rejected_requests(req: &Request, env: &Env) -> Answer {
    super::flush_rejections(env).await;
    let mut merchant = None;
    let mut since = 0;
    let mut limit = 100;
    for (key, value) in query_pairs(req).map_err(unavailable)? {
        match key.as_str() {
            "merchant_id" => merchant = Some(value),
            "since" => {
                since = value.parse().map_err(|_| {
                    ApiError::InvalidRequest("since must be unix milliseconds".into())
                })?
            }
            "limit" => {
                limit = value
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (1..=500).contains(n))
                    .ok_or_else(|| ApiError::InvalidRequest("limit must be 1-500".into()))?
            }
            other => {
                return Err(ApiError::InvalidRequest(format!(
                    "unknown query parameter {other:?}; accepts merchant_id, since, limit"
                )))
            }
        }
    }
    let rows = Routing::from_env(env)
        .map_err(unavailable)?
        .rejections(merchant.as_deref(), since, limit)
        .await
        .map_err(unavailable)?;
    Ok((200, json!({ "items": rows })))
}

async fn cron_runs(env: &Env) -> Answer {
    let rows = Routing::from_env(env)
        .map_err(unavailable)?
        .cron_runs(100)
        .await
        .map_err(unavailable)?;
    Ok((200, json!({ "items": rows })))
}

/// Re-seals every stored config not sealed under the current master key, in both
/// regions. Run after putting a new key first in `MASTER_KEYS`; retire the old key
/// only once this reports nothing left.
async fn rotate_secrets(env: &Env) -> Answer {
    let keyring = require_keyring(env)?;
    let mut resealed = 0u32;
    let mut failed = Vec::new();
    for region in [crate::config::Region::Us, crate::config::Region::Eu] {
        let store = SettingsStore::for_region(env, region).map_err(unavailable)?;
        for kind in ["source", "destination"] {
            for (merchant_id, row) in store.all_configs(kind).await.map_err(unavailable)? {
                if !keyring.needs_rotation(&row.config) {
                    continue;
                }
                let context = config_context(&merchant_id, kind, &row.name);
                let plaintext = match keyring.open(&row.config, &context) {
                    Ok(plaintext) => plaintext,
                    Err(err) => {
                        failed.push(json!({
                            "merchant_id": merchant_id, "kind": kind, "name": row.name,
                            "error": err.to_string(),
                        }));
                        continue;
                    }
                };
                let sealed = keyring
                    .seal(&plaintext, &context, random_bytes::<NONCE_LEN>()?)
                    .map_err(|e| ApiError::Unavailable(e.to_string()))?;
                store
                    .put_config(&merchant_id, kind, &row.name, &sealed, now_ms())
                    .await
                    .map_err(unavailable)?;
                resealed += 1;
            }
        }
    }
    Ok((
        200,
        json!({
            "current_key_id": keyring.current_key_id(),
            "resealed": resealed,
            "failed": failed,
        }),
    ))
}

/// `GET /v1/merchants/{id}` and `/v1/merchants/{id}/{view}` with the merchant's own
/// API key: a key only ever reads its own merchant.
pub async fn merchant_read(
    id: RouteId,
    merchant_id: &str,
    view_name: &str,
    req: &Request,
    env: &Env,
) -> Result<Response> {
    if let Err(err) = authorize_merchant(req, env, merchant_id).await? {
        return api_error(&err);
    }
    let answer = if id == RouteId::MerchantSelf {
        own_merchant(env, merchant_id).await
    } else {
        read_view(req, env, merchant_id, view_name).await
    };
    respond(answer)
}

/// What a merchant sees of itself: no secrets, not even masked.
async fn own_merchant(env: &Env, merchant_id: &str) -> Answer {
    let routing = Routing::from_env(env).map_err(unavailable)?;
    let route = route_of(&routing, merchant_id).await?;
    let store = SettingsStore::for_region(env, route.region).map_err(unavailable)?;
    let mut body = route_json(&route);
    for (kind, field) in [("source", "sources"), ("destination", "destinations")] {
        let names: Vec<String> = store
            .configs(merchant_id, kind)
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(|row| row.name)
            .collect();
        body[field] = json!(names);
    }
    Ok((200, body))
}
