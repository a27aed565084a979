//! The audit chain over HTTP: operator changes are appended as they happen, the
//! operator verifies a merchant's chain, and an Enterprise merchant (or the operator for
//! it) exports it as NDJSON for a SIEM. Rules are in `crate::audit`; entries live in
//! the merchant's object.

use super::http::{api_error, json_response, query_numbers, storage_unavailable as unavailable};
use super::intent_api::merchant_object;
use super::merchant::AuditPage;
use super::{authorize_merchant, emit};
use crate::admin::ApiError;
use crate::audit::AuditRecord;
use crate::plans::Feature;
use crate::routes::RouteId;
use serde_json::{json, Value};
use worker::{Env, Request, Response, Result};

const EXPORT_PAGE: i64 = 1_000;

/// The record of an operator change that succeeded: the route and what it named, never
/// the body (it may hold secrets).
pub fn operator_record(id: RouteId, params: &[(&'static str, String)], status: u16) -> AuditRecord {
    let route = format!("{id:?}");
    let action = route.strip_prefix("Admin").unwrap_or(&route);
    let mut kind = String::from("operator.");
    for (i, c) in action.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            kind.push('_');
        }
        kind.push(c.to_ascii_lowercase());
    }
    let subject = params
        .iter()
        .filter(|(name, _)| *name != "merchant_id")
        .map(|(_, value)| value.as_str())
        .collect::<Vec<_>>()
        .join("/");
    let subject = if subject.is_empty() {
        "merchant".to_string()
    } else {
        subject
    };
    AuditRecord {
        kind,
        actor: "operator".into(),
        subject,
        details: json!({ "status": status }),
    }
}

/// Appends a record to the merchant's chain; a failure is logged loudly (the change
/// itself has happened and is not undone).
pub async fn append(env: &Env, merchant_id: &str, record: &AuditRecord) {
    let appended = async {
        let (_, client) = merchant_object(env, merchant_id)
            .await
            .map_err(|e| e.to_string())?;
        client.audit_append(record).await.map_err(|e| e.to_string())
    }
    .await;
    if let Err(reason) = appended {
        emit(
            crate::log::Log::error("audit entry not appended")
                .merchant(merchant_id)
                .text("kind", &record.kind)
                .text("error", &reason),
        );
    }
}

fn page_of(req: &Request) -> std::result::Result<AuditPage, ApiError> {
    let numbers = query_numbers(req, &["after", "limit"])?;
    Ok(AuditPage {
        after: numbers.get("after").copied().unwrap_or(0),
        limit: numbers
            .get("limit")
            .map_or(EXPORT_PAGE, |l| (*l).clamp(1, EXPORT_PAGE)),
    })
}

/// NDJSON, one entry per line; `x-next-after` names the next page's `after`.
async fn export(req: &Request, env: &Env, merchant_id: &str) -> Result<Response> {
    let answer = async {
        let page = page_of(req)?;
        let (route, client) = merchant_object(env, merchant_id).await?;
        route.plan.require(Feature::AuditLogExport)?;
        let entries = client.audit_entries(&page).await.map_err(unavailable)?;
        Ok::<_, ApiError>((page, entries))
    }
    .await;
    let (page, entries) = match answer {
        Ok(found) => found,
        Err(err) => return api_error(&err),
    };
    let mut body = String::new();
    for entry in &entries {
        body.push_str(&serde_json::to_string(entry).unwrap_or_default());
        body.push('\n');
    }
    let response = Response::ok(body)?;
    let headers = response.headers();
    headers.set("content-type", "application/x-ndjson")?;
    if entries.len() as i64 == page.limit {
        if let Some(last) = entries.last() {
            headers.set("x-next-after", &last.seq.to_string())?;
        }
    }
    Ok(response)
}

/// `GET /v1/merchants/{id}/audit/export` with the merchant's own API key.
pub async fn merchant_export(req: &Request, env: &Env, merchant_id: &str) -> Result<Response> {
    if let Err(err) = authorize_merchant(req, env, merchant_id).await? {
        return api_error(&err);
    }
    export(req, env, merchant_id).await
}

/// The operator's audit routes (already authorised).
pub async fn admin(id: RouteId, req: &Request, env: &Env, merchant_id: &str) -> Result<Response> {
    match id {
        RouteId::AdminAuditExport => export(req, env, merchant_id).await,
        _ => {
            let verified = async {
                let (_, client) = merchant_object(env, merchant_id).await?;
                client.audit_verify().await.map_err(unavailable)
            }
            .await;
            match verified {
                Ok(verification) => {
                    let body: Value = serde_json::to_value(&verification).unwrap_or_default();
                    let intact = verification.broken.is_none()
                        && verification
                            .signed_heads
                            .iter()
                            .all(|h| h.signature_valid && h.matches_chain);
                    let mut body = body;
                    body["intact"] = json!(intact);
                    json_response(200, &body)
                }
                Err(err) => api_error(&err),
            }
        }
    }
}
