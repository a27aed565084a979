//! Load script for the delivery path (not part of the test run; run it on purpose):
//!
//!     LOAD_EVENTS=1000 cargo test --release --test load_delivery -- --ignored --nocapture
//!
//! Starts `wrangler dev` with recording stand-ins for Meta (batched) and Klaviyo (one
//! request per event), posts LOAD_EVENTS product events (each goes to both), waits until
//! every delivery is delivered and reports: wall time, outbound requests per 100 queued
//! events, and what each queue-consumer invocation cost (messages, outbound requests,
//! milliseconds; from the consumer's `deliveries batch:` log line). Local workerd is not
//! production: the numbers compare configurations, they are not capacity figures.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{http, StandIn, Worker};

fn delivered(worker: &Worker) -> i64 {
    worker.object_count(
        Some("us"),
        "SELECT count(*) AS n FROM deliveries WHERE merchant_id = 'm_load' AND status = 'delivered'",
    )
}

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
    let worker = Worker::start(&[
        ("META_API_BASE_URL", platforms.base_url()),
        ("KLAVIYO_API_BASE_URL", platforms.base_url()),
    ]);
    worker.provision(
        json!({ "merchant_id": "m_load", "plan": "scale" }),
        &[],
        &[
            (
                "meta",
                json!({ "pixel_id": "px_load", "access_token": "tok_load" }),
            ),
            (
                "klaviyo",
                json!({ "private_api_key": "pk_load_klaviyo_key" }),
            ),
        ],
    );
    let key = worker
        .admin("POST", "/v1/admin/merchants/m_load/api-keys", None)
        .json()["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    let auth = format!("Bearer {key}");

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
    // Progress is read from the stand-ins: polling D1 from a second process locks the
    // local SQLite file, so the worker's own writes fail and its messages are retried.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let meta_done = distinct(&platforms.requests_to("/px_load/events"), meta_ids);
        let klaviyo_done = distinct(&platforms.requests_to("/api/events"), klaviyo_ids);
        if meta_done >= events && klaviyo_done >= events {
            break;
        }
        assert!(Instant::now() < deadline, "deliveries did not finish");
        std::thread::sleep(Duration::from_millis(200));
    }
    let finished = started.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let meta = platforms.requests_to("/px_load/events");
    let meta_events: usize = meta.iter().map(|r| meta_ids(r.json()).len()).sum();
    let klaviyo = platforms.requests_to("/api/events");
    let recorded = delivered(&worker);
    let expected = 2 * events as i64;
    let runs = invocations(&worker.log());
    println!("events: {events} ({expected} deliveries)");
    println!(
        "ingest: {:.1} s; every event at both platforms after {:.1} s; {recorded} deliveries recorded delivered",
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

fn klaviyo_ids(body: Value) -> Vec<String> {
    vec![body["data"]["attributes"]["unique_id"]
        .as_str()
        .unwrap_or("")
        .to_string()]
}

/// How many different ids these requests carried.
fn distinct(requests: &[support::Recorded], ids: fn(Value) -> Vec<String>) -> usize {
    let mut all: Vec<String> = requests.iter().flat_map(|r| ids(r.json())).collect();
    all.sort();
    all.dedup();
    all.len()
}
