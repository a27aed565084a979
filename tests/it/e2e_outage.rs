//! End to end: a platform outage does not dead-letter what is in flight. A destination
//! that answers every request with a transient failure is parked after five requests in
//! a row: its jobs are held without spending attempts, one probe at a time checks it, and
//! once a probe is answered every held event is delivered, once.

use crate::support::{eventually, post_stripe, stripe_event, StandIn, Worker};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const SECRET: &str = "whsec_outage_e2e_secret";
const WAIT: Duration = Duration::from_secs(120);
const FAILURE: &str = r#"{"error":{"message":"Service temporarily unavailable","type":"OAuthException","code":2,"is_transient":true}}"#;

#[test]
fn an_outage_parks_the_destination_and_releases_every_event_once() {
    let meta = StandIn::start();
    // Five failed requests park Meta; three failed probes follow; the fourth probe is
    // answered. Without parking, six attempts would dead-letter every event.
    meta.script("/px_outage/", vec![(503, FAILURE); 8]);
    let worker = Worker::start(&[
        ("META_API_BASE_URL", meta.base_url()),
        ("RETRY_BASE_DELAY_SECONDS", "1".into()),
        ("RETRY_MAX_ATTEMPTS", "6".into()),
    ]);
    worker.provision(
        json!({ "merchant_id": "m_outage", "plan": "scale" }),
        &[("stripe", json!({ "endpoint_secrets": [SECRET] }))],
        &[(
            "meta",
            json!({ "pixel_id": "px_outage", "access_token": "tok_outage" }),
        )],
    );
    let mut event_ids = Vec::new();
    for i in 0..3 {
        let mut event: Value = serde_json::from_slice(&stripe_event(
            "customer.subscription.created.active.json",
            &format!("evt_outage_{i}"),
        ))
        .unwrap();
        event["data"]["object"]["id"] = json!(format!("sub_outage_{i}"));
        let body = serde_json::to_vec(&event).unwrap();
        let answer = post_stripe(&worker, "m_outage", SECRET, &body);
        assert_eq!(answer.status, 202, "{}", answer.body);
        event_ids.push(
            answer.json()["events"][0]["event_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }

    // Parked: visible in the merchant's view while the outage lasts.
    let parked = eventually(WAIT, "Meta parked", || {
        let shown = worker
            .admin("GET", "/v1/admin/merchants/m_outage", None)
            .json();
        shown["parked_destinations"]
            .as_array()
            .filter(|p| !p.is_empty())
            .cloned()
    });
    assert_eq!(parked[0]["destination"], "meta");

    let rows = eventually(WAIT, "every event delivered after the outage", || {
        let rows = worker.object_rows(
            Some("us"),
            "SELECT event_id, status, attempts FROM deliveries WHERE merchant_id = 'm_outage'",
        );
        (rows.len() == 3 && rows.iter().all(|r| r["status"] == "delivered")).then_some(rows)
    });
    for row in &rows {
        assert!(
            row["attempts"].as_i64().unwrap() <= 6,
            "held jobs spent attempts: {row}"
        );
    }
    assert_eq!(
        worker.object_count(
            Some("us"),
            "SELECT count(*) AS n FROM dead_letters WHERE merchant_id = 'm_outage'"
        ),
        0
    );
    // Each event reached Meta in exactly one answered (200) request.
    let requests = meta.requests_to("/px_outage/");
    assert!(requests.len() >= 9, "{} requests", requests.len());
    let mut delivered: BTreeMap<String, usize> = BTreeMap::new();
    for request in requests.iter().skip(8) {
        let body: Value = serde_json::from_str(&request.body).unwrap();
        for event in body["data"].as_array().unwrap() {
            *delivered
                .entry(event["event_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    for id in &event_ids {
        assert_eq!(delivered.get(id), Some(&1), "{id}: {delivered:?}");
    }
    let shown = worker
        .admin("GET", "/v1/admin/merchants/m_outage", None)
        .json();
    assert_eq!(shown["parked_destinations"], json!([]), "released: {shown}");
    let log = worker.log();
    assert!(log.contains("destination parked after consecutive transient failures"));
    assert!(log.contains("destination answered a probe: released"));
}
