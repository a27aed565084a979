//! Outbound HTTP to ad platforms, with a timeout (Workers' fetch has none by default).

use crate::destinations::OutboundRequest;
use futures_util::future::{select, Either};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use wasm_bindgen::JsValue;
use worker::{AbortController, Delay, Fetch, Headers, Method, Request, RequestInit};

pub const TIMEOUT: Duration = Duration::from_secs(15);

/// Requests sent by this isolate so far: the consumer logs how many a batch cost.
static REQUESTS_SENT: AtomicU64 = AtomicU64::new(0);

pub fn requests_sent() -> u64 {
    REQUESTS_SENT.load(Ordering::Relaxed)
}

pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    /// The id of a created entity (LinkedIn's `x-restli-id`, else `Location`).
    pub created_id: Option<String>,
    pub location: Option<String>,
    pub body: String,
}

/// `Err` means no answer (network error or timeout): the platform may or may not have
/// the event, which is why every request carries the platform's own dedup key.
pub async fn send(request: &OutboundRequest) -> Result<Answer, String> {
    REQUESTS_SENT.fetch_add(1, Ordering::Relaxed);
    let headers = Headers::new();
    for (name, value) in &request.headers {
        headers.set(name, value).map_err(|e| e.to_string())?;
    }
    let mut init = RequestInit::new();
    let method = if request.method == "GET" {
        Method::Get
    } else {
        Method::Post
    };
    init.with_method(method).with_headers(headers);
    // A GET may not carry a body.
    if request.method != "GET" {
        init.with_body(Some(JsValue::from_str(&request.body)));
    }
    let req = Request::new_with_init(&request.url, &init).map_err(|e| e.to_string())?;
    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(req);
    let sending = Box::pin(fetch.send_with_signal(&signal));
    let timer = Box::pin(Delay::from(TIMEOUT));
    let raced = select(sending, timer).await;
    match raced {
        Either::Left((Ok(response), _)) => {
            let header = |name: &str| response.headers().get(name).ok().flatten();
            let retry_after = header("retry-after");
            let created_id = header("x-restli-id").or_else(|| header("x-linkedin-id"));
            let location = header("location");
            let status = response.status_code();
            let body = super::http::response_text(response)
                .await
                .unwrap_or_default();
            Ok(Answer {
                status,
                retry_after,
                created_id,
                location,
                body,
            })
        }
        Either::Left((Err(err), _)) => Err(format!("network error: {err}")),
        Either::Right(_) => {
            controller.abort();
            Err(format!("timed out after {}s", TIMEOUT.as_secs()))
        }
    }
}

/// POSTs a JSON alert to a merchant's webhook (Slack-compatible receivers): `Err` says
/// why it was not taken (an HTTP status outside 2xx, a network error, a timeout).
pub async fn post_alert(url: &str, message: &serde_json::Value) -> Result<(), String> {
    let request = OutboundRequest {
        method: "POST",
        url: url.to_string(),
        log_url: url.to_string(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: message.to_string(),
    };
    match send(&request).await? {
        answer if (200..300).contains(&answer.status) => Ok(()),
        answer => Err(format!("HTTP {}", answer.status)),
    }
}
