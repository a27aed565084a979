//! Delivery health and anomaly auto-pause over HTTP and cron: the merchant's health
//! view, the operator's settings, evaluation, pause and resume, and what an incident
//! sets off (the alert webhook, the opted-in campaign pauses). Figures and detectors are
//! `crate::health`; the state is in the merchant's object (`crate::ops_store`).

use super::http::{api_error, json_response, storage_unavailable as unavailable};
use super::intent_api::merchant_object;
use super::merchant::MerchantClient;
use super::metrics::Phase;
use super::routing::Routing;
use super::settings::cached_merchant;
use super::{authorize_merchant, emit, now_ms, operator_settings, outbound};
use crate::admin::{parse_body, parse_settings, ApiError};
use crate::config::Region;
use crate::destinations::BuildContext;
use crate::health::AnomalySettings;
use crate::log::Log;
use crate::ops_store::Incident;
use crate::routes::RouteId;
use serde_json::{json, Value};
use worker::{Env, Request, Response, Result};

type Answer = std::result::Result<(u16, Value), ApiError>;

/// An operator's stand-in for every merchant's incident alerts (tests only).
pub const ALERT_TEST_URL_VAR: &str = "OPS_ALERT_TEST_URL";

/// `GET /v1/merchants/{id}/health` with the merchant's own API key.
pub async fn merchant_read(req: &Request, env: &Env, merchant_id: &str) -> Result<Response> {
    if let Err(err) = authorize_merchant(req, env, merchant_id).await? {
        return api_error(&err);
    }
    match overview(env, merchant_id).await {
        Ok(body) => json_response(200, &body),
        Err(err) => api_error(&err),
    }
}

pub async fn overview(env: &Env, merchant_id: &str) -> std::result::Result<Value, ApiError> {
    let (_, client) = merchant_object(env, merchant_id).await?;
    let overview = client.health().await.map_err(unavailable)?;
    let mut body = serde_json::to_value(&overview).unwrap_or_default();
    if let Some(url) = &overview.settings.alert_webhook_url {
        body["settings"]["alert_webhook_url"] = json!(crate::secrets::mask(url));
    }
    Ok(body)
}

/// The operator's health routes (already authorised).
pub async fn admin(
    id: RouteId,
    params: &[(&'static str, String)],
    mut req: Request,
    env: &Env,
) -> Answer {
    let param = |name: &str| {
        params
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
            .unwrap_or_default()
    };
    let merchant_id = param("merchant_id");
    match id {
        RouteId::AdminHealth => Ok((200, overview(env, merchant_id).await?)),
        RouteId::AdminHealthSettings => {
            let body = req.bytes().await.map_err(unavailable)?;
            let settings: AnomalySettings =
                parse_settings(&body, "health", AnomalySettings::validated)?;
            let (_, client) = merchant_object(env, merchant_id).await?;
            client
                .health_settings(&settings)
                .await
                .map_err(unavailable)?;
            Ok((200, overview(env, merchant_id).await?))
        }
        RouteId::AdminHealthEvaluate => {
            let (_, client) = merchant_object(env, merchant_id).await?;
            let opened = evaluate(env, merchant_id, &client)
                .await
                .map_err(unavailable)?;
            Ok((200, json!({ "opened": opened })))
        }
        RouteId::AdminPauseDestination | RouteId::AdminResumeDestination => {
            let destination = param("name");
            if crate::destinations::find(destination).is_none() {
                return Err(ApiError::NotFound(format!("destination {destination}")));
            }
            let (_, client) = merchant_object(env, merchant_id).await?;
            if id == RouteId::AdminPauseDestination {
                client
                    .pause_destination(destination)
                    .await
                    .map_err(unavailable)?;
                Ok((200, json!({ "destination": destination, "paused": true })))
            } else {
                let released = client
                    .resume_destination(destination, "operator")
                    .await
                    .map_err(unavailable)?;
                Ok((
                    200,
                    json!({ "destination": destination, "paused": false, "released_jobs": released }),
                ))
            }
        }
        _ => Err(ApiError::NotFound("route".into())),
    }
}

/// Runs the merchant's detectors; for each new incident, alerts and pauses the named
/// campaigns, and records what was done on the incident.
pub async fn evaluate(
    env: &Env,
    merchant_id: &str,
    client: &MerchantClient,
) -> Result<Vec<Incident>> {
    let evaluation = client.health_evaluate().await?;
    if evaluation.opened.is_empty() {
        return Ok(Vec::new());
    }
    let settings = &evaluation.settings;
    let mut opened = Vec::new();
    for mut incident in evaluation.opened {
        emit(
            Log::warn("anomaly: incident opened")
                .merchant(merchant_id)
                .text("kind", crate::ops_store::kind_name(incident.kind))
                .text("summary", &incident.summary),
        );
        let alert = send_alert(env, merchant_id, &incident, settings).await;
        let campaigns = pause_campaigns(env, merchant_id, settings).await;
        let actions = json!({ "alert": alert, "campaigns": campaigns });
        client
            .record_incident_actions(incident.id, &actions)
            .await?;
        incident.actions = Some(actions);
        opened.push(incident);
    }
    Ok(opened)
}

/// Every merchant of a region, from the 5-minute cron.
pub async fn evaluate_region(env: &Env, region: Region) -> Result<usize> {
    let mut opened = 0;
    for route in Routing::from_env(env)?.routes(Some(region)).await? {
        let client = MerchantClient::new(env, region, &route.merchant_id, Phase::Other)?;
        match evaluate(env, &route.merchant_id, &client).await {
            Ok(incidents) => opened += incidents.len(),
            Err(err) => emit(
                Log::error("anomaly evaluation failed")
                    .merchant(&route.merchant_id)
                    .reason(err),
            ),
        }
    }
    Ok(opened)
}

fn var(env: &Env, name: &str) -> Option<String> {
    env.var(name)
        .ok()
        .map(|v| v.to_string())
        .filter(|v| !v.is_empty())
}

async fn send_alert(
    env: &Env,
    merchant_id: &str,
    incident: &Incident,
    settings: &AnomalySettings,
) -> Value {
    let Some(url) = var(env, ALERT_TEST_URL_VAR).or_else(|| settings.alert_webhook_url.clone())
    else {
        return json!({ "sent": false, "reason": "no alert webhook configured" });
    };
    let held = match (&incident.destination, incident.paused) {
        (Some(destination), true) => format!(
            " {destination} is paused: its conversions are held, not lost, until it is resumed."
        ),
        _ => String::new(),
    };
    let message = json!({
        "text": format!("TrackLayer incident for {merchant_id}: {}.{held}", incident.summary),
        "merchant_id": merchant_id,
        "incident_id": incident.id,
        "kind": incident.kind,
        "destination": incident.destination,
        "paused": incident.paused,
        "figures": incident.figures,
    });
    match outbound::post_alert(&url, &message).await {
        Ok(()) => json!({ "sent": true }),
        Err(reason) => json!({ "sent": false, "reason": reason }),
    }
}

/// Pauses each campaign the merchant named, with its own credentials; every call is
/// recorded. Campaigns it did not name are never touched.
async fn pause_campaigns(env: &Env, merchant_id: &str, settings: &AnomalySettings) -> Vec<Value> {
    let mut calls = Vec::new();
    if settings.pause_campaigns.values().all(Vec::is_empty) {
        return calls;
    }
    let merchant = match cached_merchant(env, merchant_id, Phase::Other).await {
        Ok(Ok(merchant)) => merchant,
        _ => {
            calls.push(json!({ "ok": false, "reason": "merchant settings unavailable" }));
            return calls;
        }
    };
    let operator = operator_settings(env);
    for (destination, campaigns) in &settings.pause_campaigns {
        let Some(spec) = crate::destinations::find(destination) else {
            continue;
        };
        let Some(pause) = spec.pause_campaigns else {
            continue;
        };
        // An OAuth destination (Google Ads) needs a fresh access token first.
        let mut token = None;
        if let Some(auth) = spec.auth {
            let context = BuildContext {
                endpoints: &operator.endpoints,
                operator: &operator.operator,
                now_s: now_ms() / 1000,
                access_token: None,
            };
            let fetched = match (auth.token_request)(&merchant, &context) {
                Ok(request) => match outbound::send(&request).await {
                    Ok(answer) => (auth.parse_token)(answer.status, &answer.body)
                        .map(|t| t.token)
                        .map_err(|outcome| format!("{outcome:?}")),
                    Err(reason) => Err(reason),
                },
                Err(err) => Err(err.to_string()),
            };
            match fetched {
                Ok(fetched) => token = Some(fetched),
                Err(reason) => {
                    calls
                        .push(json!({ "destination": destination, "ok": false, "reason": reason }));
                    continue;
                }
            }
        }
        let context = BuildContext {
            endpoints: &operator.endpoints,
            operator: &operator.operator,
            now_s: now_ms() / 1000,
            access_token: token.as_deref(),
        };
        for campaign in campaigns {
            let call = match pause(&merchant, &context, std::slice::from_ref(campaign)) {
                Ok(request) => match outbound::send(&request).await {
                    Ok(answer) => json!({
                        "destination": destination,
                        "campaign": campaign,
                        "status": answer.status,
                        "ok": (200..300).contains(&answer.status),
                        "request_url": request.log_url,
                    }),
                    Err(reason) => {
                        json!({ "destination": destination, "campaign": campaign, "ok": false, "reason": reason })
                    }
                },
                Err(err) => {
                    json!({ "destination": destination, "campaign": campaign, "ok": false, "reason": err.to_string() })
                }
            };
            calls.push(call);
        }
    }
    calls
}

fn rfm_query(req: &Request) -> std::result::Result<super::merchant::RfmQuery, ApiError> {
    let page = super::intent_api::page_of(req)?;
    let segment = req
        .url()
        .map_err(unavailable)?
        .query_pairs()
        .find(|(k, _)| k == "segment")
        .map(|(_, v)| v.into_owned());
    Ok(super::merchant::RfmQuery {
        segment,
        limit: page.limit,
        offset: page.offset,
        carry_on_events: None,
    })
}

/// `GET /v1/merchants/{id}/rfm` with the merchant's own API key.
pub async fn rfm_read(req: &Request, env: &Env, merchant_id: &str) -> Result<Response> {
    if let Err(err) = authorize_merchant(req, env, merchant_id).await? {
        return api_error(&err);
    }
    let answer = async {
        let query = rfm_query(req)?;
        let (_, client) = merchant_object(env, merchant_id).await?;
        client.rfm(&query).await.map_err(unavailable)
    }
    .await;
    match answer {
        Ok(body) => json_response(200, &body),
        Err(err) => api_error(&err),
    }
}

/// The operator's RFM routes: read, or compute now (optionally turning the carrying of
/// segment and LTV on outbound events on or off).
pub async fn rfm_admin(id: RouteId, merchant_id: &str, mut req: Request, env: &Env) -> Answer {
    let (_, client) = merchant_object(env, merchant_id).await?;
    let mut query = rfm_query(&req)?;
    if id == RouteId::AdminRfmCompute {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Compute {
            #[serde(default)]
            carry_on_events: Option<bool>,
        }
        let body = req.bytes().await.map_err(unavailable)?;
        let compute: Compute = if body.is_empty() {
            Compute {
                carry_on_events: None,
            }
        } else {
            parse_body(&body)?
        };
        query.carry_on_events = compute.carry_on_events;
        client.rfm_compute().await.map_err(unavailable)?;
    }
    Ok((200, client.rfm(&query).await.map_err(unavailable)?))
}
