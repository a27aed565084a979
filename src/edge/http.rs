//! JSON responses and the mapping of typed errors to them.

use crate::error::IngestError;
use serde_json::{json, Value};
use worker::{Request, Response, Result};

/// How an edge step fails: a refusal answered with its own status and JSON reason, or
/// the runtime failing under us (storage, a binding), which the handler reports as is.
/// Steps return [`EdgeResult`] and use `?` for both.
#[derive(Debug)]
pub enum EdgeError {
    Refused(IngestError),
    Runtime(worker::Error),
}

pub type EdgeResult<T> = std::result::Result<T, EdgeError>;

impl From<IngestError> for EdgeError {
    fn from(err: IngestError) -> Self {
        EdgeError::Refused(err)
    }
}

impl From<worker::Error> for EdgeError {
    fn from(err: worker::Error) -> Self {
        EdgeError::Runtime(err)
    }
}

/// A response's whole body as text, read by the runtime in one call. worker's own
/// `Response::text` pulls a streamed body chunk by chunk through wasm, which
/// profiling showed costs more than the rest of the object call.
pub async fn response_text(response: Response) -> Result<String> {
    let response: worker::web_sys::Response = response.into();
    let text = worker::wasm_bindgen_futures::JsFuture::from(response.text()?).await?;
    Ok(text.as_string().unwrap_or_default())
}

/// A request's JSON body, parsed by serde_json from the runtime's text: cheaper than
/// `Request::json`, which builds JavaScript objects and walks them back into Rust.
pub async fn request_json<T: serde::de::DeserializeOwned>(req: &mut Request) -> Result<T> {
    let text = req.text().await?;
    serde_json::from_str(&text).map_err(|e| worker::Error::RustError(e.to_string()))
}

pub fn json_response(status: u16, body: &Value) -> Result<Response> {
    Ok(Response::from_json(body)?.with_status(status))
}

pub fn json_error(status: u16, code: &str, message: &str) -> Result<Response> {
    json_response(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}

pub fn ingest_error(err: &IngestError) -> Result<Response> {
    let resp = Response::ok(err.body())?.with_status(err.status());
    resp.headers().set("content-type", "application/json")?;
    Ok(resp)
}

pub fn with_header(response: Response, name: &str, value: &str) -> Result<Response> {
    response.headers().set(name, value)?;
    Ok(response)
}

/// The non-negative whole-number query parameters among `names` (the last given
/// wins); any other value for one of them is a 400 naming it.
pub fn query_numbers(
    req: &Request,
    names: &[&str],
) -> std::result::Result<std::collections::BTreeMap<String, i64>, crate::admin::ApiError> {
    let url = req.url().map_err(storage_unavailable)?;
    let mut found = std::collections::BTreeMap::new();
    for (name, value) in url.query_pairs() {
        if !names.contains(&name.as_ref()) {
            continue;
        }
        let number = value
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                crate::admin::ApiError::InvalidRequest(format!("{name} must be a whole number"))
            })?;
        found.insert(name.into_owned(), number);
    }
    Ok(found)
}

/// A storage call that failed under an API route: logged with its reason, answered as
/// a 503 the caller may retry.
pub fn storage_unavailable(err: worker::Error) -> crate::admin::ApiError {
    super::emit(crate::log::Log::error("API: storage unavailable").reason(err));
    crate::admin::ApiError::Unavailable("storage is temporarily unavailable; retry".into())
}

pub fn api_error(err: &crate::admin::ApiError) -> Result<Response> {
    json_response(err.status(), &err.body())
}

/// The body, unless it is over `limit` bytes: then `Err(size)`, refused by the declared
/// `Content-Length` before reading when there is one.
pub async fn read_body_limited(
    req: &mut Request,
    limit: usize,
) -> Result<std::result::Result<Vec<u8>, usize>> {
    if let Some(length) = req
        .headers()
        .get("content-length")?
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|length| *length > limit)
    {
        return Ok(Err(length));
    }
    let body = req.bytes().await?;
    Ok(if body.len() > limit {
        Err(body.len())
    } else {
        Ok(body)
    })
}
