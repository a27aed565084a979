//! End to end through the real Workers runtime: `wrangler dev` (workerd with local D1,
//! Queues, Durable Objects, cron) and a recording stand-in for Meta's Graph API.
//!
//! Needs the toolchain from `bash scripts/setup.sh` (the README test command runs it).

use crate::support;

use crate::support::{eventually, http, now, stripe_event, StandIn, Worker};
use serde_json::{json, Value};
use std::thread;
use std::time::Duration;
use tracklayer::hashing::sha256_hex;
use tracklayer::sources::stripe;

const SECRET: &str = "whsec_e2e_secret";
const ADMIN: &str = support::ADMIN_TOKEN;
const WAIT: Duration = Duration::from_secs(60);

fn provision(worker: &Worker) {
    for (merchant, pixel) in [
        ("m_ok", "px_ok"),
        ("m_flaky", "px_flaky"),
        ("m_bad", "px_bad"),
        ("m_conv", "px_conv"),
    ] {
        // Stripe ingest is a Scale feature.
        worker.provision(
            json!({ "merchant_id": merchant, "plan": "scale" }),
            &[("stripe", json!({ "endpoint_secrets": [SECRET] }))],
            &[(
                "meta",
                json!({ "pixel_id": pixel, "access_token": format!("tok_{merchant}") }),
            )],
        );
    }
}

fn post_stripe(
    worker: &Worker,
    merchant: &str,
    body: &[u8],
    signature: Option<String>,
) -> support::HttpResponse {
    let target = format!("/v1/integrations/stripe/subscription-events?merchant_id={merchant}");
    let mut headers = vec![("content-type", "application/json".to_string())];
    if let Some(sig) = signature {
        headers.push(("Stripe-Signature", sig));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http("POST", worker.port, &target, &headers, body)
}

fn signed(body: &[u8]) -> Option<String> {
    Some(stripe::sign(SECRET, now(), body))
}

fn admin(worker: &Worker, path: &str) -> Value {
    let auth = format!("Bearer {ADMIN}");
    let response = http("GET", worker.port, path, &[("authorization", &auth)], b"");
    assert_eq!(response.status, 200, "{path}: {}", response.body);
    response.json()
}

fn items(worker: &Worker, merchant: &str, view: &str) -> Vec<Value> {
    admin(worker, &format!("/v1/admin/merchants/{merchant}/{view}"))["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn stripe_webhook_travels_to_meta_on_a_local_cloudflare_stack() {
    let meta = StandIn::start();
    meta.script(
        "/px_flaky/",
        vec![
            (500, r#"{"error":{"message":"unknown","code":1}}"#),
            (500, "{}"),
        ],
    );
    meta.script(
        "/px_bad/",
        vec![(
            400,
            r#"{"error":{"message":"Invalid parameter","type":"OAuthException","code":100,"error_subcode":2804019,"fbtrace_id":"AxYz"}}"#,
        )],
    );
    let vars = [
        ("META_API_BASE_URL", meta.base_url()),
        ("RETRY_BASE_DELAY_SECONDS", "1".into()),
        ("RETRY_MAX_ATTEMPTS", "4".into()),
        ("LINKEDIN_API_BASE_URL", meta.base_url()),
        (
            "WEBHOOK_DESTINATION_TEST_URL",
            format!("{}/merchant-hook", meta.base_url()),
        ),
    ];
    let worker = Worker::start(&vars);
    provision(&worker);
    // m_conv also reports trial conversions to LinkedIn (a Scale feature).
    let linkedin = worker.admin(
        "PUT",
        "/v1/admin/merchants/m_conv/destinations/linkedin",
        Some(&json!({
            "access_token": "AQV-e2e-linkedin-token",
            "conversion_rules": { "trial_converted": "104012" }
        })),
    );
    assert_eq!(linkedin.status, 200, "{}", linkedin.body);

    // 1. A signed trialing subscription → exactly one Meta request with the right body.
    let trial = stripe_event(
        "customer.subscription.created.trialing.json",
        "evt_e2e_trial_0001",
    );
    let accepted = post_stripe(&worker, "m_ok", &trial, signed(&trial));
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let accepted = accepted.json();
    assert_eq!(accepted["status"], "accepted");
    assert_eq!(accepted["events"][0]["name"], "trial_started");
    let event_id = accepted["events"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_string();

    let sent = eventually(WAIT, "the Meta request", || {
        let requests = meta.requests_to("/px_ok/");
        (!requests.is_empty()).then_some(requests)
    });
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].method, "POST");
    assert_eq!(sent[0].target, "/v25.0/px_ok/events?access_token=tok_m_ok");
    let body: Value = serde_json::from_str(&sent[0].body).unwrap();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    let ev = &data[0];
    assert_eq!(ev["event_name"], "StartTrial");
    assert_eq!(ev["event_id"], event_id.as_str());
    assert_eq!(ev["action_source"], "system_generated");
    let event_time = ev["event_time"].as_i64().unwrap();
    assert!(
        (now() - event_time - 30).abs() < 120,
        "event_time is unix seconds: {event_time}"
    );
    assert_eq!(
        ev["user_data"]["external_id"][0],
        sha256_hex("cus_spq8gwma1zbxyt")
    );
    assert!(
        ev["user_data"].get("em").is_none(),
        "no email in this event, none may be invented"
    );
    assert_eq!(ev["custom_data"]["value"], 49.0);
    assert_eq!(ev["custom_data"]["currency"], "USD");
    assert_eq!(ev["custom_data"]["mrr"], 49.0);
    assert_eq!(ev["custom_data"]["arr"], 588.0);
    assert_eq!(ev["custom_data"]["canonical_event"], "trial_started");
    assert_eq!(
        ev["custom_data"]["subscription_id"],
        "sub_1RtQ8iLkdIwHu7ixq2nWcH4E"
    );

    // 2. The same webhook redelivered (Stripe re-signs each attempt) → still one request.
    let again = post_stripe(&worker, "m_ok", &trial, signed(&trial));
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["status"], "duplicate");

    // 3. Refusals, nothing delivered for any of them. Before the signature holds they
    //    all look the same (the specific reason goes to the operator's log).
    let tampered = post_stripe(
        &worker,
        "m_ok",
        &stripe_event(
            "customer.subscription.created.trialing.json",
            "evt_e2e_bad_sig",
        ),
        signed(b"other body"),
    );
    assert_eq!(
        (tampered.status, tampered.json()["error"]["code"].clone()),
        (401, json!("unauthenticated"))
    );
    let wrong_secret = post_stripe(
        &worker,
        "m_ok",
        &trial,
        Some(stripe::sign("whsec_wrong", now(), &trial)),
    );
    assert_eq!(
        (
            wrong_secret.status,
            wrong_secret.json()["error"]["code"].clone()
        ),
        (401, json!("unauthenticated"))
    );
    let stale = post_stripe(
        &worker,
        "m_ok",
        &trial,
        Some(stripe::sign(SECRET, now() - 3600, &trial)),
    );
    assert_eq!(
        (stale.status, stale.json()["error"]["code"].clone()),
        (401, json!("unauthenticated"))
    );
    let missing = post_stripe(&worker, "m_ok", &trial, None);
    assert_eq!(
        (missing.status, missing.json()["error"]["code"].clone()),
        (401, json!("unauthenticated"))
    );
    let garbage = b"{not json";
    let malformed = post_stripe(&worker, "m_ok", garbage, signed(garbage));
    assert_eq!(
        (malformed.status, malformed.json()["error"]["code"].clone()),
        (400, json!("malformed_payload"))
    );
    let unknown = post_stripe(&worker, "m_nobody", &trial, signed(&trial));
    assert_eq!(
        (unknown.status, unknown.json()["error"]["code"].clone()),
        (401, json!("unauthenticated"))
    );
    assert_eq!(
        unknown.body, missing.body,
        "an unknown merchant looks like a bad signature"
    );
    let huge = vec![b' '; 600 * 1024];
    let too_large = post_stripe(&worker, "m_ok", &huge, signed(&huge));
    assert_eq!(
        (too_large.status, too_large.json()["error"]["code"].clone()),
        (413, json!("payload_too_large"))
    );
    let other_type = stripe_event("payment_method.attached.json", "evt_e2e_pm_attached");
    let ignored = post_stripe(&worker, "m_ok", &other_type, signed(&other_type));
    assert_eq!(ignored.status, 200, "{}", ignored.body);
    assert_eq!(ignored.json()["status"], "ignored");
    let ignored_rows = items(&worker, "m_ok", "ignored-events");
    assert_eq!(ignored_rows.len(), 1);
    assert_eq!(
        ignored_rows[0]["source_event_type"],
        "payment_method.attached"
    );

    // 4. Meta answers 500 twice, then 200 → delivered once, three attempts logged.
    let flaky = stripe_event(
        "customer.subscription.created.active.json",
        "evt_e2e_flaky_0001",
    );
    assert_eq!(
        post_stripe(&worker, "m_flaky", &flaky, signed(&flaky)).status,
        202
    );
    let attempts = eventually(WAIT, "the flaky delivery to succeed", || {
        let rows = items(&worker, "m_flaky", "delivery-attempts");
        rows.iter()
            .any(|r| r["outcome"] == "delivered")
            .then_some(rows)
    });
    let mut outcomes: Vec<(i64, String)> = attempts
        .iter()
        .map(|r| {
            (
                r["attempt"].as_i64().unwrap(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        vec![
            (1, "retry".to_string()),
            (2, "retry".to_string()),
            (3, "delivered".to_string())
        ]
    );
    assert_eq!(
        attempts.iter().filter(|r| r["http_status"] == 500).count(),
        2
    );
    assert!(
        attempts
            .iter()
            .all(|r| !r["request_url"].as_str().unwrap_or("").contains("tok_")),
        "no token in logs"
    );
    assert_eq!(meta.requests_to("/px_flaky/").len(), 3);
    let deliveries = items(&worker, "m_flaky", "deliveries");
    assert_eq!(
        (deliveries.len(), deliveries[0]["status"].clone()),
        (1, json!("delivered"))
    );
    let flaky_body: Value = serde_json::from_str(&meta.requests_to("/px_flaky/")[2].body).unwrap();
    assert_eq!(flaky_body["data"][0]["event_name"], "Subscribe");
    assert_eq!(flaky_body["data"][0]["custom_data"]["value"], 500.0); // 5 seats × 1,200/yr → MRR 500
    assert_eq!(flaky_body["data"][0]["custom_data"]["arr"], 6000.0);
    assert_eq!(
        flaky_body["data"][0]["user_data"]["em"][0],
        sha256_hex("ops@acme-analytics.io")
    );

    // 5. Meta answers 400 → dead letter with the reason, after one attempt.
    let bad = stripe_event("customer.subscription.deleted.json", "evt_e2e_bad_0001");
    assert_eq!(
        post_stripe(&worker, "m_bad", &bad, signed(&bad)).status,
        202
    );
    let letters = eventually(WAIT, "the dead letter", || {
        let rows = items(&worker, "m_bad", "dead-letters");
        (!rows.is_empty()).then_some(rows)
    });
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["reason"], "permanent");
    assert_eq!(letters[0]["attempts"], 1);
    let last_error = letters[0]["last_error"].as_str().unwrap();
    assert!(
        last_error.contains("HTTP 400") && last_error.contains("100/2804019"),
        "{last_error}"
    );
    assert_eq!(meta.requests_to("/px_bad/").len(), 1);
    let bad_body: Value = serde_json::from_str(&meta.requests_to("/px_bad/")[0].body).unwrap();
    assert_eq!(bad_body["data"][0]["event_name"], "SubscriptionCancelled");
    assert_eq!(bad_body["data"][0]["custom_data"]["value"], -49.0);
    let bad_deliveries = items(&worker, "m_bad", "deliveries");
    assert_eq!(bad_deliveries[0]["status"], "dead_lettered");

    // The operator replays the dead letter (Meta's stand-in now answers 200): delivered
    // with a fresh attempt count, and the letter records the replay.
    let job_id = letters[0]["job_id"].as_str().unwrap();
    let replay_path = format!("/v1/admin/merchants/m_bad/dead-letters/{job_id}/replay");
    let replayed = worker.admin("POST", &replay_path, None);
    assert_eq!(replayed.status, 202, "{}", replayed.body);
    eventually(WAIT, "the replayed delivery", || {
        (items(&worker, "m_bad", "deliveries")[0]["status"] == "delivered").then_some(())
    });
    assert_eq!(meta.requests_to("/px_bad/").len(), 2);
    assert!(!items(&worker, "m_bad", "dead-letters")[0]["replayed_at"].is_null());
    let unknown = worker.admin(
        "POST",
        "/v1/admin/merchants/m_bad/dead-letters/job_nope/replay",
        None,
    );
    assert_eq!(unknown.status, 404);

    // Bulk replay by destination: a second refusal, then every un-replayed meta letter.
    meta.script(
        "/px_bad/",
        vec![(
            400,
            r#"{"error":{"message":"Invalid parameter","code":100}}"#,
        )],
    );
    let bad_again = stripe_event("customer.subscription.deleted.json", "evt_e2e_bad_0002");
    let mut bad_again: Value = serde_json::from_slice(&bad_again).unwrap();
    bad_again["data"]["object"]["id"] = json!("sub_e2e_bad_second");
    let bad_again = serde_json::to_vec(&bad_again).unwrap();
    assert_eq!(
        post_stripe(&worker, "m_bad", &bad_again, signed(&bad_again)).status,
        202
    );
    eventually(WAIT, "the second dead letter", || {
        let rows = items(&worker, "m_bad", "dead-letters");
        (rows.len() == 2).then_some(())
    });
    let bulk = worker.admin(
        "POST",
        "/v1/admin/merchants/m_bad/dead-letters/replay",
        Some(&json!({ "destination": "meta" })),
    );
    assert_eq!(bulk.status, 202, "{}", bulk.body);
    assert_eq!(
        bulk.json()["requeued"],
        1,
        "the first letter was already replayed"
    );
    eventually(WAIT, "both m_bad deliveries delivered", || {
        let rows = items(&worker, "m_bad", "deliveries");
        (rows.len() == 2 && rows.iter().all(|r| r["status"] == "delivered")).then_some(())
    });
    assert_eq!(meta.requests_to("/px_bad/").len(), 4);

    // Log views page newest first with a cursor.
    let first = admin(
        &worker,
        "/v1/admin/merchants/m_flaky/delivery-attempts?limit=2",
    );
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_string();
    let second = admin(
        &worker,
        &format!("/v1/admin/merchants/m_flaky/delivery-attempts?limit=2&cursor={cursor}"),
    );
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert!(second["next_cursor"].is_null());
    assert_eq!(
        second["items"][0]["attempt"], 1,
        "the oldest attempt comes last"
    );
    let filtered = admin(
        &worker,
        "/v1/admin/merchants/m_flaky/delivery-attempts?outcome=retry",
    );
    assert_eq!(filtered["items"].as_array().unwrap().len(), 2);

    // Nothing above produced a second request for the first merchant.
    assert_eq!(
        meta.requests_to("/px_ok/").len(),
        1,
        "duplicates or refusals reached Meta"
    );

    // 6. One conversion reported by two webhooks (the trial-end invoice, then the status
    // change) reaches Meta once, as Subscribe with the trial's MRR.
    let trial = stripe_event(
        "customer.subscription.created.trialing.json",
        "evt_e2e_conv_trial",
    );
    assert_eq!(
        post_stripe(&worker, "m_conv", &trial, signed(&trial)).status,
        202
    );
    let paid = stripe_event("invoice.paid.trial-end.json", "evt_e2e_conv_invoice");
    let first = post_stripe(&worker, "m_conv", &paid, signed(&paid));
    assert_eq!(first.status, 202, "{}", first.body);
    let first = first.json();
    assert_eq!(first["events"][0]["name"], "trial_converted");
    assert_eq!(first["events"][0]["forwarded"], true);
    let update = stripe_event(
        "customer.subscription.updated.trial-converted.json",
        "evt_e2e_conv_update",
    );
    let second = post_stripe(&worker, "m_conv", &update, signed(&update));
    assert_eq!(second.status, 202, "{}", second.body);
    let second = second.json();
    assert_eq!(second["events"][0]["name"], "trial_converted");
    assert_eq!(
        second["events"][0]["event_id"],
        first["events"][0]["event_id"]
    );
    assert_eq!(second["events"][0]["forwarded"], false);
    assert_eq!(second["deliveries_enqueued"], 0);
    // Trial and conversion may arrive in one queue batch, and then in one Meta request.
    let sent_events = |requests: Vec<support::Recorded>| -> Vec<Value> {
        requests
            .iter()
            .flat_map(|r| r.json()["data"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    eventually(WAIT, "trial and conversion at Meta", || {
        (sent_events(meta.requests_to("/px_conv/")).len() >= 2).then_some(())
    });
    thread::sleep(Duration::from_secs(3));
    let conversions = sent_events(meta.requests_to("/px_conv/"));
    assert_eq!(conversions.len(), 2, "the conversion was sent twice");
    let subscribe = json!({
        "data": [conversions
            .iter()
            .find(|e| e["event_name"] == "Subscribe")
            .expect("a Subscribe event")]
    });
    assert_eq!(subscribe["data"][0]["custom_data"]["value"], 49.0);
    // LinkedIn got the conversion once (the trial has no rule), valued at ARR.
    let linkedin = meta.requests_to("/rest/conversionEvents");
    assert_eq!(linkedin.len(), 1);
    let conversion: Value = serde_json::from_str(&linkedin[0].body).unwrap();
    assert_eq!(
        conversion["conversion"],
        "urn:lla:llaPartnerConversion:104012"
    );
    assert_eq!(conversion["eventId"], first["events"][0]["event_id"]);
    assert_eq!(conversion["conversionValue"]["amount"], "588.00");
    assert_eq!(conversion["user"]["userIds"][0]["idType"], "SHA256_EMAIL");
    assert_eq!(
        subscribe["data"][0]["event_id"],
        first["events"][0]["event_id"]
    );

    // 7. The daily cron reaches the scheduled handler, once per day, and records a
    //    warning the merchant sees for an API version within 30 days of its sunset.
    let near_sunset = support::linkedin_version_near_sunset();
    worker.provision(
        json!({ "merchant_id": "m_version", "plan": "scale" }),
        &[],
        &[(
            "linkedin",
            json!({ "access_token": "li_version_e2e", "linkedin_version": near_sunset,
                    "conversion_rules": { "trial_started": "104011" } }),
        )],
    );
    let sunset = worker.admin(
        "PUT",
        "/v1/admin/merchants/m_version/destinations/linkedin",
        Some(
            &json!({ "access_token": "li_version_e2e", "linkedin_version": "202401",
                      "conversion_rules": { "trial_started": "104011" } }),
        ),
    );
    assert_eq!(
        sunset.status, 422,
        "a sunset version is refused: {}",
        sunset.body
    );
    for _ in 0..2 {
        let fired = http(
            "GET",
            worker.port,
            "/cdn-cgi/handler/scheduled?cron=0+9+*+*+*",
            &[],
            b"",
        );
        assert_eq!(fired.status, 200, "{}", fired.body);
    }
    let runs = eventually(WAIT, "the cron run record", || {
        let rows = admin(&worker, "/v1/admin/cron-runs")["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        rows.iter()
            .any(|r| !r["finished_at"].is_null())
            .then_some(rows)
    });
    assert_eq!(runs.len(), 1, "the daily job is idempotent per UTC day");
    assert_eq!(runs[0]["cron"], "0 9 * * *");
    let shown = admin(&worker, "/v1/admin/merchants/m_version");
    let warnings = shown["warnings"].as_array().cloned().unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{shown}");
    assert_eq!(warnings[0]["destination"], "linkedin");
    assert_eq!(warnings[0]["version"], near_sunset.as_str());
    assert_eq!(warnings[0]["level"], "warning");
    assert!(admin(&worker, "/v1/admin/merchants/m_ok")["warnings"]
        .as_array()
        .is_some_and(|w| w.is_empty()));

    // 7b. A delivery lost between the write and the queue (a crash, a lost message)
    //     stays pending with no attempt: the 5-minute sweeper has the merchant's
    //     object enqueue it again. The loss is made with the worker stopped.
    let job = worker.object_rows(
        Some("us"),
        "SELECT job_id FROM deliveries WHERE merchant_id = 'm_ok' AND destination = 'meta' \
         AND status = 'delivered' LIMIT 1",
    )[0]["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let sent_before = meta.requests_to("/px_ok/").len();
    let state = worker.kill_hard();
    support::object_execute_in(
        &state,
        &format!(
            "UPDATE canonical_events SET deliveries = json_set(deliveries, '$.meta.status', 'pending', \
             '$.meta.attempts', 0, '$.meta.updated_at', {t}), pending = 1, pending_since = {t} \
             WHERE event_id = (SELECT event_id FROM deliveries WHERE job_id = '{job}')",
            t = (now() - 600) * 1000
        ),
    );
    let worker = Worker::start_on(state, &vars);
    let swept = http(
        "GET",
        worker.port,
        "/cdn-cgi/handler/scheduled?cron=%2A%2F5+%2A+%2A+%2A+%2A",
        &[],
        b"",
    );
    assert_eq!(swept.status, 200, "{}", swept.body);
    eventually(WAIT, "the swept job delivered", || {
        let status = worker.object_rows(
            Some("us"),
            &format!("SELECT status FROM deliveries WHERE job_id = '{job}'"),
        )[0]["status"]
            .clone();
        (status == "delivered" && meta.requests_to("/px_ok/").len() > sent_before).then_some(())
    });

    // 7c. A signed event too large for one queue message (a 300 KB field; the body is
    //     under the 512 KiB limit) is accepted and delivered: its jobs travel by
    //     reference to the stored event. It used to get 503 forever.
    let mut large: Value = serde_json::from_slice(&stripe_event(
        "customer.subscription.created.active.json",
        "evt_e2e_large_1",
    ))
    .unwrap();
    let long_price = format!("price_{}", "L".repeat(300 * 1024));
    large["data"]["object"]["id"] = json!("sub_e2e_large_1");
    large["data"]["object"]["items"]["data"][0]["price"]["id"] = json!(long_price);
    let large = serde_json::to_vec(&large).unwrap();
    assert!(large.len() > 300 * 1024 && large.len() < 512 * 1024);
    let accepted_large = post_stripe(&worker, "m_ok", &large, signed(&large));
    assert_eq!(accepted_large.status, 202, "{}", accepted_large.body);
    let large_event_id = accepted_large.json()["events"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    eventually(WAIT, "the large event at Meta", || {
        meta.requests_to("/px_ok/")
            .iter()
            .any(|r| r.body.contains(&large_event_id))
            .then_some(())
    });

    // 7d. Enterprise: the signed webhook to the merchant's own endpoint carries the
    //     canonical event; the signature verifies with the merchant's secret.
    const HOOK_SECRET: &str = "whsec_merchant_hook_e2e_0001";
    let refused = worker.admin(
        "PUT",
        "/v1/admin/merchants/m_ok/destinations/webhook",
        Some(&json!({ "url": "https://hooks.acme.example/tl", "signing_secrets": [HOOK_SECRET] })),
    );
    assert_eq!(refused.status, 403, "a Scale merchant: {}", refused.body);
    worker.provision(
        json!({ "merchant_id": "m_hook", "plan": "enterprise" }),
        &[("stripe", json!({ "endpoint_secrets": [SECRET] }))],
        &[(
            "webhook",
            json!({ "url": "https://hooks.acme.example/tl", "signing_secrets": [HOOK_SECRET] }),
        )],
    );
    let private = worker.admin(
        "PUT",
        "/v1/admin/merchants/m_hook/destinations/webhook",
        Some(&json!({ "url": "https://169.254.169.254/latest", "signing_secrets": [HOOK_SECRET] })),
    );
    assert_eq!(private.status, 422, "{}", private.body);
    let hooked = stripe_event(
        "customer.subscription.created.trialing.json",
        "evt_e2e_hook_1",
    );
    let accepted_hook = post_stripe(&worker, "m_hook", &hooked, signed(&hooked));
    assert_eq!(accepted_hook.status, 202, "{}", accepted_hook.body);
    let hook_event_id = accepted_hook.json()["events"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let received = eventually(WAIT, "the merchant's webhook", || {
        meta.requests_to("/merchant-hook").into_iter().next()
    });
    let header = |name: &str| {
        received
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(header("tracklayer-event-id"), hook_event_id);
    let signature = header("tracklayer-signature");
    let t: i64 = signature
        .split(',')
        .find_map(|p| p.strip_prefix("t="))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        signature,
        tracklayer::destinations::webhook::sign(&[HOOK_SECRET.to_string()], t, &received.body)
    );
    let body: Value = serde_json::from_str(&received.body).unwrap();
    assert_eq!(body["event_id"], hook_event_id.as_str());
    assert_eq!(body["name"], "trial_started");

    // 8. Dry run: built and recorded exactly as it would be sent, never sent; after
    //    going live the next event is delivered.
    worker.provision(
        json!({ "merchant_id": "m_dry", "plan": "scale", "dry_run": true }),
        &[("stripe", json!({ "endpoint_secrets": [SECRET] }))],
        &[(
            "meta",
            json!({ "pixel_id": "px_dry", "access_token": "tok_m_dry" }),
        )],
    );
    let simulated = stripe_event(
        "customer.subscription.created.trialing.json",
        "evt_e2e_dry_1",
    );
    assert_eq!(
        post_stripe(&worker, "m_dry", &simulated, signed(&simulated)).status,
        202
    );
    let attempts = eventually(WAIT, "the simulated delivery", || {
        let rows = items(&worker, "m_dry", "delivery-attempts");
        (!rows.is_empty()).then_some(rows)
    });
    assert_eq!(attempts[0]["outcome"], "simulated");
    // The log shows the request body as it would have gone out.
    assert_eq!(attempts[0]["detail"]["data"][0]["event_name"], "StartTrial");
    assert!(!attempts[0]["request_url"]
        .as_str()
        .unwrap()
        .contains("tok_m_dry"));
    assert_eq!(
        items(&worker, "m_dry", "deliveries")[0]["status"],
        "simulated"
    );
    let live = worker.admin(
        "PATCH",
        "/v1/admin/merchants/m_dry",
        Some(&json!({ "dry_run": false })),
    );
    assert_eq!(live.status, 200, "{}", live.body);
    assert_eq!(live.json()["dry_run"], false);
    let real = stripe_event("customer.subscription.created.active.json", "evt_e2e_dry_2");
    assert_eq!(
        post_stripe(&worker, "m_dry", &real, signed(&real)).status,
        202
    );
    eventually(WAIT, "the live delivery", || {
        (meta.requests_to("/px_dry/").len() == 1).then_some(())
    });
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        meta.requests_to("/px_dry/").len(),
        1,
        "the simulated event was never sent"
    );

    // Operator endpoints refuse a missing or wrong token.
    let denied = http(
        "GET",
        worker.port,
        "/v1/admin/merchants/m_ok/deliveries",
        &[("authorization", "Bearer nope")],
        b"",
    );
    assert_eq!(denied.status, 401);
}
