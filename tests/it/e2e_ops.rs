//! Anomaly auto-pause end to end under `wrangler dev`: a Meta stand-in that fails every
//! request makes the detector fire (evaluated on the operator's call, so the test does
//! not wait for the 5-minute cron), the alert stand-in gets one alert, the named Meta
//! campaign (and only it) is paused, nothing reaches Meta's events endpoint while the
//! destination is paused, and resuming delivers every held event once, in order.

use crate::support::{eventually, http, post_stripe, stripe_event, StandIn, Worker};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);
const SECRET: &str = "whsec_ops_e2e";
const EVENTS: &str = "/px_ops/events";
const FAILURE: &str = r#"{"error":{"message":"Service temporarily unavailable","type":"OAuthException","code":2,"is_transient":true}}"#;
const CAMPAIGN: &str = "120210000000001";

fn event_ids(body: &str) -> Vec<String> {
    let parsed: Value = serde_json::from_str(body).unwrap();
    parsed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect()
}

/// Posts signed Stripe fixtures one by one; returns the ids of the events forwarded,
/// in the order they arrived.
fn post_conversions(worker: &Worker, prefix: &str, fixtures: &[&str]) -> Vec<String> {
    let mut forwarded = Vec::new();
    for (i, fixture) in fixtures.iter().enumerate() {
        let event = stripe_event(fixture, &format!("{prefix}_{i}"));
        let answer = post_stripe(worker, "m_ops", SECRET, &event);
        assert_eq!(answer.status, 202, "{}", answer.body);
        forwarded.extend(
            answer.json()["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["forwarded"] == true)
                .map(|e| e["event_id"].as_str().unwrap().to_string()),
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    forwarded
}

#[test]
fn e2e_ops_failure_spike_pauses_alerts_and_resume_delivers_held_events_once_in_order() {
    let platforms = StandIn::start();
    // Three failures: whatever the batching, the first requests fail.
    platforms.script(EVENTS, vec![(500, FAILURE); 3]);
    let vars = vec![
        ("META_API_BASE_URL", platforms.base_url()),
        (
            "OPS_ALERT_TEST_URL",
            format!("{}/ops-alert", platforms.base_url()),
        ),
        ("RETRY_BASE_DELAY_SECONDS", "1".into()),
        ("RETRY_MAX_ATTEMPTS", "10".into()),
    ];
    let worker = Worker::start(&vars);
    worker.provision(
        json!({ "merchant_id": "m_ops", "plan": "scale" }),
        &[("stripe", json!({ "endpoint_secrets": [SECRET] }))],
        &[(
            "meta",
            json!({ "pixel_id": "px_ops", "access_token": "tok_ops_meta" }),
        )],
    );
    let settings = worker.admin(
        "PUT",
        "/v1/admin/merchants/m_ops/health/settings",
        Some(&json!({
            "failure_min_attempts": 3,
            "alert_webhook_url": "https://hooks.slack.com/services/T0/B0/ops",
            "pause_campaigns": { "meta": [CAMPAIGN] }
        })),
    );
    assert_eq!(settings.status, 200, "{}", settings.body);

    // 1. Three conversions; Meta fails them.
    let mut order = post_conversions(
        &worker,
        "evt_ops",
        &[
            "customer.subscription.created.active.json",
            "customer.subscription.created.trialing.json",
            "invoice.paid.renewal.json",
        ],
    );
    eventually(WAIT, "three failed attempts at Meta", || {
        let failed: usize = platforms
            .requests_to(EVENTS)
            .iter()
            .take(3)
            .map(|r| event_ids(&r.body).len())
            .sum();
        (failed >= 3).then_some(())
    });

    // 2. The operator's evaluation: a failure spike, Meta paused, one alert, the
    //    named campaign paused at Meta.
    let evaluated = worker.admin("POST", "/v1/admin/merchants/m_ops/health/evaluate", None);
    assert_eq!(evaluated.status, 200, "{}", evaluated.body);
    let opened = evaluated.json()["opened"].as_array().cloned().unwrap();
    assert_eq!(opened.len(), 1, "{}", evaluated.body);
    assert_eq!(opened[0]["kind"], "failure_spike");
    assert_eq!(opened[0]["destination"], "meta");
    assert_eq!(opened[0]["paused"], true);
    assert_eq!(
        opened[0]["actions"]["alert"]["sent"], true,
        "{}",
        evaluated.body
    );
    let again = worker.admin("POST", "/v1/admin/merchants/m_ops/health/evaluate", None);
    assert_eq!(again.json()["opened"], json!([]), "one incident while open");
    let alerts = platforms.requests_to("/ops-alert");
    assert_eq!(alerts.len(), 1);
    let alert: Value = serde_json::from_str(&alerts[0].body).unwrap();
    assert!(
        alert["text"].as_str().unwrap().contains("meta is paused"),
        "{alert}"
    );
    let pauses: Vec<_> = platforms
        .requests_to("/v25.0/")
        .into_iter()
        .filter(|r| !r.target.contains("/events"))
        .collect();
    assert_eq!(pauses.len(), 1, "only the named campaign");
    assert_eq!(pauses[0].target, format!("/v25.0/{CAMPAIGN}"));
    assert_eq!(pauses[0].body, "status=PAUSED");

    // 3. While paused: the retries and two new conversions are held, nothing is sent.
    //    Meta has recovered: it answers 200 from now on.
    platforms.unscript(EVENTS);
    let sent_before = platforms.requests_to(EVENTS).len();
    order.extend(post_conversions(
        &worker,
        "evt_ops_paused",
        &[
            "customer.subscription.updated.upgrade.json",
            "customer.subscription.deleted.json",
        ],
    ));
    let health = eventually(WAIT, "every job held", || {
        let health = worker
            .admin("GET", "/v1/admin/merchants/m_ops/health", None)
            .json();
        (health["paused"][0]["held"].as_u64()? as usize == order.len()).then_some(health)
    });
    assert_eq!(health["paused"][0]["destination"], "meta");
    assert_eq!(health["incidents"][0]["status"], "open");
    assert_eq!(
        platforms.requests_to(EVENTS).len(),
        sent_before,
        "nothing reaches Meta while paused"
    );

    // RFM over the same merchant's billing events, carried on events from now on.
    let rfm = worker.admin(
        "POST",
        "/v1/admin/merchants/m_ops/rfm/compute",
        Some(&json!({ "carry_on_events": true })),
    );
    assert_eq!(rfm.status, 200, "{}", rfm.body);
    let rfm = rfm.json();
    assert_eq!(rfm["carry_on_events"], true);
    assert!(
        rfm["segments"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_i64().unwrap())
            .sum::<i64>()
            >= 1,
        "{rfm}"
    );
    assert!(
        rfm["subscribers"][0]["ltv"]["expected_lifetime_months"].is_number(),
        "{rfm}"
    );

    // 4. The merchant resumes from the health page, in Chromium: every held event is
    //    delivered once, in the order it arrived, carrying its customer's RFM segment.
    let key = worker.create_api_key("m_ops");
    let page = crate::e2e_intent::chromium(&[
        "health".into(),
        format!("http://localhost:{}", worker.port),
        key,
        "meta".into(),
        crate::e2e_intent::output_dir()
            .to_string_lossy()
            .into_owned(),
    ]);
    let paused_text = page["before"]["paused"].as_str().unwrap_or_default();
    assert!(
        paused_text.contains("meta paused since")
            && paused_text.contains(&format!("{} conversions held", order.len())),
        "{page}"
    );
    assert!(page["before"]["csp"]
        .as_str()
        .unwrap()
        .contains("default-src 'none'"));
    assert!(page["before"]["destinations"].as_array().unwrap().len() >= 3);
    let rfm_text = page["before"]["rfm"].as_str().unwrap_or_default();
    assert!(
        rfm_text.contains("Predicted LTV") && rfm_text.contains("ride on outbound events"),
        "{page}"
    );
    assert_eq!(page["after"]["paused"], false, "{page}");
    assert!(
        page["after"]["incidents"][0]
            .as_str()
            .unwrap()
            .contains("by merchant:"),
        "{page}"
    );
    let delivered = eventually(WAIT, "the held events at Meta", || {
        let requests = platforms.requests_to(EVENTS);
        let after: Vec<String> = requests[sent_before..]
            .iter()
            .flat_map(|r| event_ids(&r.body))
            .collect();
        (after.len() >= order.len()).then_some(after)
    });
    std::thread::sleep(Duration::from_secs(3));
    let after: Vec<String> = platforms.requests_to(EVENTS)[sent_before..]
        .iter()
        .flat_map(|r| event_ids(&r.body))
        .collect();
    assert_eq!(after, delivered, "nothing more arrives");
    let unique: BTreeSet<&String> = after.iter().collect();
    assert_eq!(unique.len(), after.len(), "each event once: {after:?}");
    assert_eq!(after, order, "in the order they arrived");
    let carried = platforms.requests_to(EVENTS)[sent_before..]
        .iter()
        .any(|r| r.body.contains("\"rfm_segment\"") && r.body.contains("\"ltv_model\""));
    assert!(carried, "segment and LTV in Meta's custom_data");
    let health = worker
        .admin("GET", "/v1/admin/merchants/m_ops/health", None)
        .json();
    assert_eq!(health["paused"], json!([]));
    assert_eq!(health["incidents"][0]["status"], "resolved");
    assert!(health["incidents"][0]["resolved_by"]
        .as_str()
        .unwrap()
        .starts_with("merchant:"));
    assert!(
        health["destinations"]["meta"]["last_hour"]["delivered"]
            .as_u64()
            .unwrap()
            >= 5
    );
    // The pause and the resume are in the audit chain.
    let chain = worker
        .admin("GET", "/v1/admin/merchants/m_ops/audit/verify", None)
        .json();
    assert_eq!(chain["intact"], true, "{chain}");
    for shot in page["screenshots"].as_array().unwrap() {
        println!("screenshot: {}", shot.as_str().unwrap());
    }
    let merchant_view = http(
        "GET",
        worker.port,
        "/v1/merchants/m_ops/health",
        &[("authorization", "Bearer tlk_0000000000000000_wrong")],
        b"",
    );
    assert_eq!(merchant_view.status, 401);
}
