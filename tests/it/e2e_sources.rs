//! End to end for the non-Stripe sources through `wrangler dev`: Paddle's trial, its
//! conversion reported twice, and a HubSpot Webhooks API batch for a CRM-owned merchant,
//! each reaching a recording Meta stand-in exactly once.
//!
//! Needs the toolchain from `bash scripts/setup.sh` (the README test command runs it).

use crate::support;

use crate::support::{eventually, http, now, StandIn, Worker};
use serde_json::{json, Value};
use std::time::Duration;
use tracklayer::sources::{hubspot, paddle};

const PADDLE_SECRET: &str = "pdl_ntfset_e2e_secret";
const HUBSPOT_SECRET: &str = "hubspot-e2e-client-secret";
const WAIT: Duration = Duration::from_secs(60);

fn provision(worker: &Worker) {
    worker.provision(
        json!({ "merchant_id": "m_paddle", "plan": "scale" }),
        &[("paddle", json!({ "secret_keys": [PADDLE_SECRET] }))],
        &[
            (
                "meta",
                json!({ "pixel_id": "px_paddle", "access_token": "tok_paddle_e2e" }),
            ),
            ("klaviyo", json!({ "private_api_key": "pk_paddle_e2e_key" })),
            (
                "tiktok",
                json!({ "pixel_code": "CPADDLE0001", "access_token": "tt_paddle_e2e" }),
            ),
            (
                "ga4",
                json!({ "measurement_id": "G-PADDLE01", "api_secret": "mp_paddle_e2e" }),
            ),
        ],
    );
    worker.provision(
        json!({ "merchant_id": "m_hs", "plan": "scale", "lifecycle": { "conversions_from": "crm" } }),
        &[("hubspot", json!({ "client_secrets": [HUBSPOT_SECRET] }))],
        &[("meta", json!({ "pixel_id": "px_hs", "access_token": "tok_hubspot_e2e" }))],
    );
}

/// A Paddle fixture as sent now (fresh occurred_at; ids kept so the two notifications of
/// one conversion stay related).
fn paddle_event(fixture: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/paddle/{fixture}", support::ROOT);
    let mut event: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    event["occurred_at"] = json!(tracklayer::time::utc_date(now()) + "T00:00:00Z");
    serde_json::to_vec(&event).unwrap()
}

fn post(
    worker: &Worker,
    target: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> support::HttpResponse {
    let mut all: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    all.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
    http("POST", worker.port, target, &all, body)
}

#[test]
fn paddle_and_hubspot_reach_meta_once_through_the_local_stack() {
    let meta = StandIn::start();
    // TikTok says "rate limited" inside an HTTP 200 once, then accepts.
    let tiktok_ok = r#"{"code":0,"message":"OK","request_id":"e2e","data":{}}"#;
    meta.script(
        "/open_api/v1.3/event/track/",
        vec![
            (
                200,
                r#"{"code":40100,"message":"Too many requests","request_id":"e2e"}"#,
            ),
            (200, tiktok_ok),
            (200, tiktok_ok),
        ],
    );
    let worker = Worker::start(&[
        ("META_API_BASE_URL", meta.base_url()),
        // One recording stand-in answers for both platforms (different paths).
        ("KLAVIYO_API_BASE_URL", meta.base_url()),
        ("TIKTOK_API_BASE_URL", meta.base_url()),
        ("GA4_API_BASE_URL", meta.base_url()),
        ("RETRY_BASE_DELAY_SECONDS", "1".into()),
    ]);
    provision(&worker);

    // Paddle: trial start, then the trial-end payment and the activation — one conversion.
    let paddle_target = "/v1/integrations/paddle/events?merchant_id=m_paddle";
    let send_paddle = |fixture: &str| {
        let body = paddle_event(fixture);
        let signature = paddle::sign(PADDLE_SECRET, now(), &body);
        post(
            &worker,
            paddle_target,
            &[("Paddle-Signature", signature)],
            &body,
        )
    };
    let trial = send_paddle("subscription.created.trialing.json");
    assert_eq!(trial.status, 202, "{}", trial.body);
    assert_eq!(trial.json()["events"][0]["name"], "trial_started");
    let paid = send_paddle("transaction.paid.trial-end.json");
    assert_eq!(paid.status, 202, "{}", paid.body);
    assert_eq!(paid.json()["events"][0]["name"], "trial_converted");
    let activated = send_paddle("subscription.activated.json");
    assert_eq!(
        activated.json()["events"][0]["name"],
        "trial_converted",
        "{}",
        activated.body
    );
    assert_eq!(
        activated.json()["deliveries_enqueued"],
        0,
        "already enqueued by the payment"
    );
    let stale = {
        let body = paddle_event("subscription.canceled.json");
        let signature = paddle::sign(PADDLE_SECRET, now() - 600, &body);
        post(
            &worker,
            paddle_target,
            &[("Paddle-Signature", signature)],
            &body,
        )
    };
    assert_eq!(stale.status, 401);
    assert_eq!(stale.json()["error"]["code"], "unauthenticated");

    let sent = eventually(WAIT, "two Paddle events at Meta", || {
        let requests = meta.requests_to("/px_paddle/");
        let names: Vec<String> = requests
            .iter()
            .flat_map(|r| {
                let body: Value = serde_json::from_str(&r.body).unwrap();
                body["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["event_name"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        (names.len() >= 2).then_some(names)
    });
    let mut sent_sorted = sent.clone();
    sent_sorted.sort();
    assert_eq!(sent_sorted, ["StartTrial", "Subscribe"]);

    // The same two events reach Klaviyo once each, as metrics named by canonical event,
    // with our event id as Klaviyo's `unique_id`.
    let trial_id = trial.json()["events"][0]["event_id"].clone();
    let paid_id = paid.json()["events"][0]["event_id"].clone();
    let klaviyo = eventually(WAIT, "two Paddle events at Klaviyo", || {
        let requests = meta.requests_to("/api/events");
        (requests.len() >= 2).then_some(requests)
    });
    let mut metrics: Vec<(String, Value)> = klaviyo
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_str(&r.body).unwrap();
            let attributes = body["data"]["attributes"].clone();
            (
                attributes["metric"]["data"]["attributes"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                attributes,
            )
        })
        .collect();
    metrics.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(metrics.len(), 2);
    assert_eq!(metrics[0].0, "trial_converted");
    assert_eq!(metrics[0].1["unique_id"], paid_id);
    assert!(metrics[0].1["value"].as_f64().unwrap() > 0.0);
    assert_eq!(metrics[1].0, "trial_started");
    assert_eq!(metrics[1].1["unique_id"], trial_id);
    assert!(metrics[1].1["profile"]["data"]["attributes"]["external_id"].is_string());

    // TikTok: the 200 carrying code 40100 is retried, not counted; both events end
    // delivered after three requests, with our event ids as TikTok's dedup keys.
    let delivered = eventually(WAIT, "both TikTok deliveries", || {
        let rows = worker
            .admin(
                "GET",
                "/v1/admin/merchants/m_paddle/deliveries?destination=tiktok",
                None,
            )
            .json()["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (rows.len() == 2 && rows.iter().all(|r| r["status"] == "delivered")).then_some(rows)
    });
    assert_eq!(delivered.len(), 2);
    // The two events may share a request (one queue batch) or not: either way only the
    // events of the request answered 40100 are sent again, with the same ids.
    let tiktok = meta.requests_to("/open_api/v1.3/event/track/");
    let ids_of = |r: &support::Recorded| -> Vec<String> {
        let body = r.json();
        assert_eq!(body["event_source_id"], "CPADDLE0001");
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_string())
            .collect()
    };
    let refused = ids_of(&tiktok[0]);
    let mut tiktok_ids: Vec<String> = tiktok.iter().flat_map(ids_of).collect();
    assert_eq!(
        tiktok_ids.len(),
        2 + refused.len(),
        "only the refused request's events were resent"
    );
    tiktok_ids.sort();
    tiktok_ids.dedup();
    assert_eq!(tiktok_ids.len(), 2, "the retry resent the same event ids");

    // GA4: validated before sending; the conversion is a `purchase` whose transaction id
    // is our event id, the trial a custom `trial_started`.
    let ga4 = eventually(WAIT, "two Paddle events at GA4", || {
        let requests = meta.requests_to("/mp/collect?measurement_id=G-PADDLE01");
        (requests.len() >= 2).then_some(requests)
    });
    assert_eq!(ga4.len(), 2);
    let mut ga4_events: Vec<Value> = ga4
        .iter()
        .map(|r| {
            assert!(r.target.contains("api_secret=mp_paddle_e2e"));
            let body: Value = serde_json::from_str(&r.body).unwrap();
            assert!(body["client_id"].as_str().unwrap().contains('.'));
            body["events"][0].clone()
        })
        .collect();
    ga4_events.sort_by_key(|e| e["name"].as_str().unwrap().to_string());
    assert_eq!(ga4_events[0]["name"], "purchase");
    assert_eq!(ga4_events[0]["params"]["transaction_id"], paid_id);
    assert_eq!(ga4_events[1]["name"], "trial_started");

    // HubSpot: a signed Webhooks API batch of four events for a CRM-owned merchant.
    let hubspot_target = "/v1/integrations/hubspot/events?merchant_id=m_hs";
    let url = format!("http://127.0.0.1:{}{hubspot_target}", worker.port);
    let batch = std::fs::read(format!(
        "{}/tests/fixtures/hubspot/webhooks-api.batch.json",
        support::ROOT
    ))
    .unwrap();
    let send_hubspot = |body: &[u8], signed_body: &[u8]| {
        let at = now() * 1000;
        post(
            &worker,
            hubspot_target,
            &[
                (
                    "X-HubSpot-Signature-v3",
                    hubspot::sign_v3(HUBSPOT_SECRET, "POST", &url, signed_body, at),
                ),
                ("X-HubSpot-Request-Timestamp", at.to_string()),
            ],
            body,
        )
    };
    let accepted = send_hubspot(&batch, &batch);
    assert_eq!(accepted.status, 202, "{}\n{}", accepted.body, worker.log());
    let notifications = accepted.json()["notifications"].as_array().unwrap().clone();
    assert_eq!(notifications.len(), 4);
    // Ids only: the Closed Won is recorded as a stage change, not sent as a conversion.
    assert_eq!(
        notifications[0]["events"][0]["name"],
        "pipeline_stage_changed"
    );
    assert_eq!(notifications[0]["deliveries_enqueued"], 0);
    assert_eq!(notifications[1]["status"], "ignored");
    let again = send_hubspot(&batch, &batch);
    assert_eq!(again.status, 200, "{}", again.body);
    assert!(again.json()["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["status"] == "duplicate"));
    let tampered = send_hubspot(&batch, b"[]");
    assert_eq!(tampered.status, 401);

    // The workflow webhook of that Closed Won carries email and amount: one Subscribe.
    let workflow = std::fs::read(format!(
        "{}/tests/fixtures/hubspot/workflow.deal-closedwon.json",
        support::ROOT
    ))
    .unwrap();
    let mut workflow: Value = serde_json::from_slice(&workflow).unwrap();
    workflow["occurredAt"] = json!(now() * 1000 - 5_000);
    let workflow = serde_json::to_vec(&workflow).unwrap();
    let won = send_hubspot(&workflow, &workflow);
    assert_eq!(won.status, 202, "{}", won.body);
    assert_eq!(won.json()["events"][1]["name"], "subscription_started");
    assert_eq!(
        send_hubspot(&workflow, &workflow).json()["status"],
        "duplicate"
    );

    let sent = eventually(WAIT, "the HubSpot conversion at Meta", || {
        let requests = meta.requests_to("/px_hs/");
        (!requests.is_empty()).then_some(requests)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(meta.requests_to("/px_hs/").len(), 1, "sent once");
    let body: Value = serde_json::from_str(&sent[0].body).unwrap();
    let events = body["data"].as_array().unwrap();
    assert_eq!(
        events.len(),
        1,
        "pipeline stage changes are never forwarded"
    );
    assert_eq!(events[0]["event_name"], "Subscribe");
    assert_eq!(
        events[0]["custom_data"]["canonical_event"],
        "subscription_started"
    );
    assert_eq!(events[0]["custom_data"]["value"], 24000.0);
    assert_eq!(
        events[0]["user_data"]["em"][0],
        tracklayer::hashing::sha256_hex("priya@helixlabs.example")
    );

    // A Paddle checkout whose notifications arrive out of Paddle's documented order:
    // the subscription first (MRR, no totals), the transactions after. The start waits
    // for its siblings (SIBLING_WAIT_SECONDS here), then goes out once with every value.
    worker.provision(
        json!({ "merchant_id": "m_paddle_checkout", "plan": "scale" }),
        &[("paddle", json!({ "secret_keys": [PADDLE_SECRET] }))],
        &[(
            "klaviyo",
            json!({ "private_api_key": "pk_checkout_e2e_key" }),
        )],
    );
    let checkout_target = "/v1/integrations/paddle/events?merchant_id=m_paddle_checkout";
    let mut start_id = Value::Null;
    for fixture in [
        "checkout.2.subscription.created.active.json",
        "checkout.4.transaction.completed.json",
        "checkout.3.subscription.activated.json",
        "checkout.1.transaction.paid.json",
    ] {
        let body = paddle_event(fixture);
        let signature = paddle::sign(PADDLE_SECRET, now(), &body);
        let answer = post(
            &worker,
            checkout_target,
            &[("Paddle-Signature", signature)],
            &body,
        );
        assert_eq!(answer.status, 202, "{fixture}: {}", answer.body);
        assert_eq!(answer.json()["events"][0]["name"], "subscription_started");
        start_id = answer.json()["events"][0]["event_id"].clone();
    }
    let start = eventually(WAIT, "the checkout's start at Klaviyo", || {
        meta.requests_to("/api/events")
            .into_iter()
            .map(|r| serde_json::from_str::<Value>(&r.body).unwrap())
            .find(|b| b["data"]["attributes"]["unique_id"] == start_id)
    });
    std::thread::sleep(Duration::from_secs(6));
    let sent_for_start = meta
        .requests_to("/api/events")
        .iter()
        .filter(|r| r.body.contains(start_id.as_str().unwrap()))
        .count();
    assert_eq!(sent_for_start, 1, "the start is sent once");
    let properties = &start["data"]["attributes"]["properties"];
    assert_eq!(properties["mrr"], 87.0, "{properties}");
    assert_eq!(properties["arr"], 1044.0, "{properties}");
    assert_eq!(properties["gross_value"], 103.53, "{properties}");
    assert_eq!(properties["net_value"], 87.0, "{properties}");
}
