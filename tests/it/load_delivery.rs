//! Load script for the delivery path (not part of the test run; run it on purpose):
//!
//!     LOAD_EVENTS=1000 cargo test --release --test it load_delivery -- --ignored --nocapture
//!
//! Starts `wrangler dev` with recording stand-ins for all six platforms, posts
//! LOAD_EVENTS product events (each goes to all six), waits until every delivery is
//! delivered and reports: wall time, outbound requests per 100 queued events, what each
//! queue-consumer invocation cost (messages, outbound requests, milliseconds; from the
//! consumer's `deliveries batch` log line), and what Cloudflare bills per event: storage
//! calls, rows written and queue operations (the worker's own counters, read from
//! `GET /v1/admin/metrics`), priced at list prices. Local workerd is not production:
//! the numbers compare configurations, they are not capacity figures.

use crate::support::{self, http, StandIn, Worker};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn delivered(worker: &Worker) -> i64 {
    worker.object_count(
        Some("us"),
        "SELECT count(*) AS n FROM deliveries WHERE merchant_id = 'm_load' AND status = 'delivered'",
    )
}

/// Deliveries still pending, through the merchant's view (one object call): reading
/// the object's SQLite from this process while the worker writes would lock it.
fn pending(worker: &Worker) -> usize {
    worker
        .admin(
            "GET",
            "/v1/admin/merchants/m_load/deliveries?status=pending&limit=1",
            None,
        )
        .json()["items"]
        .as_array()
        .map_or(usize::MAX, Vec::len)
}

fn metrics(worker: &Worker) -> Value {
    let answer = worker.admin("GET", "/v1/admin/metrics", None);
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

/// List prices (USD per million), Workers Paid, before included quotas.
const ROWS_WRITTEN_PER_M: f64 = 1.00;
const QUEUE_OPERATION_PER_M: f64 = 0.40;
const OBJECT_REQUEST_PER_M: f64 = 0.15;

/// (messages, outbound requests, ms) of every consumer invocation in the log: its
/// structured `deliveries batch` line.
fn invocations(log: &str) -> Vec<(u64, u64, u64)> {
    log.lines()
        .filter(|line| line.contains("\"msg\":\"deliveries batch\""))
        .filter_map(|line| {
            let json: Value = serde_json::from_str(&line[line.find('{')?..]).ok()?;
            Some((
                json["messages"].as_u64()?,
                json["outbound_requests"].as_u64()?,
                json["duration_ms"].as_u64()?,
            ))
        })
        .collect()
}

fn summary(values: impl Iterator<Item = u64>) -> String {
    let mut values: Vec<u64> = values.collect();
    values.sort_unstable();
    if values.is_empty() {
        return "-".into();
    }
    let mean = values.iter().sum::<u64>() as f64 / values.len() as f64;
    format!(
        "mean {mean:.1}, median {}, max {}",
        values[values.len() / 2],
        values[values.len() - 1]
    )
}

#[test]
#[ignore = "load script: run with --ignored --nocapture"]
fn delivery_throughput_and_cost_per_batch() {
    let events: usize = std::env::var("LOAD_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let platforms = StandIn::start();
    let tiktok_ok = r#"{"code":0,"message":"OK","request_id":"load","data":{}}"#;
    platforms.script(
        "/open_api/v1.3/event/track/",
        vec![(200, tiktok_ok); 100_000],
    );
    platforms.script(
        "/token",
        vec![(
            200,
            r#"{"access_token":"ya29.load","expires_in":3599,"token_type":"Bearer"}"#,
        )],
    );
    let base = platforms.base_url();
    let worker = Worker::start(&support::all_platforms_at(&base));
    worker.provision(
        json!({ "merchant_id": "m_load", "plan": "scale" }),
        &[],
        &[
            ("meta", json!({ "pixel_id": "px_load", "access_token": "tok_load" })),
            ("klaviyo", json!({ "private_api_key": "pk_load_klaviyo_key" })),
            ("tiktok", json!({ "pixel_code": "CLOAD0001", "access_token": "tt_load" })),
            ("ga4", json!({ "measurement_id": "G-LOAD001", "api_secret": "mp_load" })),
            (
                "linkedin",
                json!({ "access_token": "li_load", "conversion_rules": { "activation_milestone": "104099" } }),
            ),
            (
                "google_ads",
                json!({
                    "customer_id": "123-456-7890",
                    "refresh_token": "1//0load-refresh-token",
                    "conversion_actions": { "activation_milestone": "987654399" }
                }),
            ),
        ],
    );
    let key = worker.create_api_key("m_load");
    let auth = format!("Bearer {key}");
    let before = metrics(&worker);

    let started = Instant::now();
    let ids: Vec<usize> = (0..events).collect();
    for chunk in ids.chunks(100) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|i| {
                json!({ "event": "activation_milestone", "user_id": format!("u_{i}"),
                        "email": format!("user{i}@example.com"), "milestone": "first_project" })
            })
            .collect();
        let answer = http(
            "POST",
            worker.port,
            "/v1/product-events",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            json!({ "events": batch }).to_string().as_bytes(),
        );
        assert_eq!(answer.status, 202, "{}", answer.body);
    }
    let ingested = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(900);
    while pending(&worker) > 0 {
        assert!(Instant::now() < deadline, "deliveries did not finish");
        std::thread::sleep(Duration::from_secs(1));
    }
    let finished = started.elapsed();
    let after = metrics(&worker);
    std::thread::sleep(Duration::from_secs(3));
    let meta = platforms.requests_to("/px_load/events");
    let meta_events: usize = meta.iter().map(|r| meta_ids(r.json()).len()).sum();
    let klaviyo = platforms.requests_to("/api/events");
    let recorded = delivered(&worker);
    let destinations = worker.object_count(
        Some("us"),
        "SELECT count(DISTINCT destination) AS n FROM deliveries WHERE merchant_id = 'm_load'",
    );
    let expected = destinations * events as i64;
    let runs = invocations(&worker.log());
    println!("events: {events} ({expected} deliveries)");
    println!(
        "ingest: {:.1} s; every delivery done after {:.1} s; {recorded} deliveries recorded delivered",
        ingested.as_secs_f64(),
        finished.as_secs_f64()
    );
    println!(
        "meta: {} requests for {meta_events} events = {:.1} requests per 100 events",
        meta.len(),
        100.0 * meta.len() as f64 / events as f64
    );
    println!(
        "klaviyo: {} requests = {:.1} per 100 events",
        klaviyo.len(),
        100.0 * klaviyo.len() as f64 / events as f64
    );
    println!("consumer invocations: {}", runs.len());
    println!(
        "  messages per invocation: {}",
        summary(runs.iter().map(|r| r.0))
    );
    println!(
        "  outbound requests per invocation: {}",
        summary(runs.iter().map(|r| r.1))
    );
    println!("  ms per invocation: {}", summary(runs.iter().map(|r| r.2)));
    let delta = |phase: &str, counter: &str| {
        after[phase][counter].as_f64().unwrap_or(0.0)
            - before[phase][counter].as_f64().unwrap_or(0.0)
    };
    let per_event = |total: f64| total / events as f64;
    let requests = delta("ingest", "units");
    println!(
        "ingest: {requests} requests of 100 events: {:.3} D1 queries and {:.3} object calls per request",
        delta("ingest", "d1_queries") / requests.max(1.0),
        delta("ingest", "object_calls") / requests.max(1.0),
    );
    let delivered_events = delta("delivery", "events_delivered");
    println!(
        "delivery: {delivered_events} deliveries: {:.4} D1 queries and {:.4} object calls per delivered event",
        delta("delivery", "d1_queries") / delivered_events.max(1.0),
        delta("delivery", "object_calls") / delivered_events.max(1.0),
    );
    let rows = per_event(delta("ingest", "rows_written") + delta("delivery", "rows_written"));
    // Each message is written, read and deleted; a retried one is read again.
    let sent = delta("ingest", "queue_messages_sent") + delta("delivery", "queue_messages_sent");
    let read =
        delta("delivery", "queue_messages_acked") + delta("delivery", "queue_messages_retried");
    let deleted = delta("delivery", "queue_messages_acked");
    let queue_ops = per_event(sent + read + deleted);
    let object_calls =
        per_event(delta("ingest", "object_calls") + delta("delivery", "object_calls"));
    let cost = 100_000.0
        * (rows * ROWS_WRITTEN_PER_M
            + queue_ops * QUEUE_OPERATION_PER_M
            + object_calls * OBJECT_REQUEST_PER_M)
        / 1_000_000.0;
    println!(
        "per event with {destinations} destinations: {rows:.1} rows written (ingest {:.1}, delivery {:.1}), \
         {queue_ops:.1} queue operations, {object_calls:.3} object calls",
        per_event(delta("ingest", "rows_written")),
        per_event(delta("delivery", "rows_written")),
    );
    println!(
        "cost: ${cost:.2} per 100,000 events (rows ${ROWS_WRITTEN_PER_M}/M, queue ops ${QUEUE_OPERATION_PER_M}/M, object requests ${OBJECT_REQUEST_PER_M}/M)"
    );
    assert_eq!(destinations, 6, "every platform got jobs");
    assert_eq!(recorded, expected, "every delivery recorded delivered");
    assert_eq!(meta_events, events, "no event went to Meta twice");
    assert_eq!(klaviyo.len(), events, "no event went to Klaviyo twice");
}

fn meta_ids(body: Value) -> Vec<String> {
    body["data"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| e["event_id"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}
