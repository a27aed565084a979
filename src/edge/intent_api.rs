//! Intent over HTTP: the merchant's read API (`/v1/merchants/{id}/intent…`, merchant
//! API key), the operator's settings and "sync now" (`/v1/admin/merchants/{id}/intent…`),
//! and the reads the timeline pages share. The data lives in the merchant's object.

use super::http::{api_error, json_response, query_numbers, storage_unavailable as unavailable};
use super::merchant::{IntentPage, MerchantClient, SeedOverview, StoredIntent};
use super::metrics::Phase;
use super::routing::{MerchantRoute, Routing};
use super::{authorize_merchant, now_ms};
use crate::admin::{parse_settings, ApiError};
use crate::intent::IntentSettings;
use crate::intent_store::{Timeline, VisitorSummary};
use crate::plans::Feature;
use crate::routes::RouteId;
use serde_json::{json, Value};
use worker::{Env, Request, Response, Result};

type Answer = std::result::Result<(u16, Value), ApiError>;

pub const DEFAULT_PAGE: i64 = 50;
pub const MAX_PAGE: i64 = 500;
/// Timeline entries of each kind read for one visitor.
pub const TIMELINE_LIMIT: i64 = 500;

/// The merchant's route and a client of its object.
pub async fn merchant_object(
    env: &Env,
    merchant_id: &str,
) -> std::result::Result<(MerchantRoute, MerchantClient), ApiError> {
    let routing = Routing::from_env(env).map_err(unavailable)?;
    let route = routing
        .route(merchant_id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| ApiError::NotFound(format!("merchant {merchant_id}")))?;
    let client =
        MerchantClient::new(env, route.region, merchant_id, Phase::Other).map_err(unavailable)?;
    Ok((route, client))
}

/// `limit` and `offset` from the query string, bounded.
pub fn page_of(req: &Request) -> std::result::Result<IntentPage, ApiError> {
    let numbers = query_numbers(req, &["limit", "offset"])?;
    Ok(IntentPage {
        limit: numbers
            .get("limit")
            .map_or(DEFAULT_PAGE, |l| (*l).clamp(1, MAX_PAGE)),
        offset: numbers.get("offset").copied().unwrap_or(0),
    })
}

/// Settings as a merchant may read them: the alert URL (a credential) masked.
fn settings_json(settings: &IntentSettings) -> Value {
    let mut value = serde_json::to_value(settings).unwrap_or_default();
    if let Some(url) = &settings.alert_webhook_url {
        value["alert_webhook_url"] = json!(crate::secrets::mask(url));
    }
    value
}

/// Everything the overview shows: settings, whether the plan includes the sync, and the
/// sync's segment, size and history.
pub struct Overview {
    pub route: MerchantRoute,
    pub intent: StoredIntent,
    pub seed: SeedOverview,
}

impl Overview {
    pub fn seed_included(&self) -> bool {
        self.route.plan.includes(Feature::LinkedinSeedSync)
    }

    pub fn to_json(&self) -> Value {
        let latest = self.seed.runs.iter().find(|run| run.segment_size.is_some());
        json!({
            "merchant_id": self.route.merchant_id,
            "plan": self.route.plan,
            "settings": settings_json(&self.intent.settings),
            "settings_saved": self.intent.saved,
            "seed_sync": {
                "included_in_plan": self.seed_included(),
                "configured": self.intent.settings.linkedin_seed.is_some(),
                "segment": self.seed.segment,
                "uploaded_visitors": self.seed.uploaded_visitors,
                "segment_size": latest.and_then(|r| r.segment_size),
                "segment_status": latest.and_then(|r| r.segment_status.clone()),
                "minimum_to_serve": crate::seed::MIN_SERVING_AUDIENCE,
                "runs": self.seed.runs,
            },
        })
    }
}

pub async fn overview(env: &Env, merchant_id: &str) -> std::result::Result<Overview, ApiError> {
    let (route, client) = merchant_object(env, merchant_id).await?;
    let intent = client.intent_settings(None).await.map_err(unavailable)?;
    let seed = client.seed_overview().await.map_err(unavailable)?;
    Ok(Overview {
        route,
        intent,
        seed,
    })
}

pub async fn visitors(
    env: &Env,
    merchant_id: &str,
    page: &IntentPage,
    queue: bool,
) -> std::result::Result<Vec<VisitorSummary>, ApiError> {
    let (_, client) = merchant_object(env, merchant_id).await?;
    let rows = if queue {
        client.intent_queue(page).await
    } else {
        client.intent_visitors(page).await
    };
    rows.map_err(unavailable)
}

pub async fn timeline(
    env: &Env,
    merchant_id: &str,
    visitor_id: &str,
) -> std::result::Result<Timeline, ApiError> {
    if !crate::identity::is_visitor_id(visitor_id) {
        return Err(ApiError::InvalidRequest(
            "visitor_id must be 32 lowercase hex digits".into(),
        ));
    }
    let (_, client) = merchant_object(env, merchant_id).await?;
    client
        .intent_timeline(visitor_id, TIMELINE_LIMIT)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| ApiError::NotFound(format!("visitor {visitor_id}")))
}

/// `GET /v1/merchants/{id}/intent…` with the merchant's own API key.
pub async fn merchant_read(
    id: RouteId,
    params: &[(&'static str, String)],
    req: &Request,
    env: &Env,
) -> Result<Response> {
    let param = |name: &str| {
        params
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
            .unwrap_or_default()
    };
    let merchant_id = param("merchant_id");
    if let Err(err) = authorize_merchant(req, env, merchant_id).await? {
        return api_error(&err);
    }
    let answer: Answer = async {
        match id {
            RouteId::IntentOverview => Ok((200, overview(env, merchant_id).await?.to_json())),
            RouteId::IntentVisitors | RouteId::IntentQueue => {
                let page = page_of(req)?;
                let rows = visitors(env, merchant_id, &page, id == RouteId::IntentQueue).await?;
                Ok((
                    200,
                    json!({ "visitors": rows, "limit": page.limit, "offset": page.offset }),
                ))
            }
            RouteId::IntentTimeline => {
                let timeline = timeline(env, merchant_id, param("visitor_id")).await?;
                Ok((200, serde_json::to_value(timeline).unwrap_or_default()))
            }
            _ => Err(ApiError::NotFound("route".into())),
        }
    }
    .await;
    match answer {
        Ok((status, body)) => json_response(status, &body),
        Err(err) => api_error(&err),
    }
}

/// The operator's intent routes (already authorised by the caller).
pub async fn admin(id: RouteId, merchant_id: &str, mut req: Request, env: &Env) -> Answer {
    match id {
        RouteId::AdminGetIntent => {
            let overview = overview(env, merchant_id).await?;
            Ok((200, overview.to_json()))
        }
        RouteId::AdminPutIntent => {
            let body = req.bytes().await.map_err(unavailable)?;
            let settings: IntentSettings =
                parse_settings(&body, "intent", IntentSettings::validated)?;
            let (route, client) = merchant_object(env, merchant_id).await?;
            if settings.linkedin_seed.is_some() {
                route.plan.require(Feature::LinkedinSeedSync)?;
            }
            client
                .intent_settings(Some(&settings))
                .await
                .map_err(unavailable)?;
            Ok((200, overview(env, merchant_id).await?.to_json()))
        }
        RouteId::AdminSeedSync => {
            let (route, _) = merchant_object(env, merchant_id).await?;
            route.plan.require(Feature::LinkedinSeedSync)?;
            let day = crate::time::utc_date(now_ms() / 1000);
            match super::tasks::seed_sync(env, merchant_id, &day, "manual").await {
                Ok(Some(run)) => Ok((200, json!({ "run": run }))),
                Ok(None) => Err(ApiError::InvalidRequest(
                    "no LinkedIn seed is configured for this merchant".into(),
                )),
                Err(reason) => Err(ApiError::Unavailable(format!(
                    "the sync failed and is recorded; retry later: {reason}"
                ))),
            }
        }
        _ => Err(ApiError::NotFound("route".into())),
    }
}
