//! Flood proof (not part of the test run; `bash scripts/flood-proof.sh` runs it):
//!
//!     cargo test --release --test proof_flood -- --ignored --nocapture
//!
//! A merchant's real, signed Stripe webhooks must not be refused or held back by a flood
//! of forged requests naming that merchant (or random merchants). Sends signed webhooks
//! at a steady pace, first alone and then during a flood from six clients, and prints the
//! statuses and latencies of both, what the flood was answered, and how many rows the
//! flood wrote to the global rejected-request table.

use crate::support::{http, now, stripe_event, StandIn, Worker};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const SECRET: &str = "whsec_flood_proof_secret";
const SIGNED_PER_PHASE: usize = 40;

fn signed_webhook(port: u16, i: usize) -> (u16, Duration) {
    let mut event: serde_json::Value = serde_json::from_slice(&stripe_event(
        "customer.subscription.created.active.json",
        &format!("evt_flood_{i:05}"),
    ))
    .unwrap();
    event["data"]["object"]["id"] = json!(format!("sub_flood_{i:05}"));
    let body = serde_json::to_vec(&event).unwrap();
    let signature = tracklayer::sources::stripe::sign(SECRET, now(), &body);
    let started = Instant::now();
    let answer = http(
        "POST",
        port,
        "/v1/integrations/stripe/events?merchant_id=m_flood",
        &[
            ("content-type", "application/json"),
            ("Stripe-Signature", &signature),
        ],
        &body,
    );
    (answer.status, started.elapsed())
}

fn phase(port: u16, offset: usize) -> Vec<(u16, Duration)> {
    (0..SIGNED_PER_PHASE)
        .map(|i| {
            let result = signed_webhook(port, offset + i);
            thread::sleep(Duration::from_millis(250));
            result
        })
        .collect()
}

fn describe(results: &[(u16, Duration)]) -> String {
    let mut latencies: Vec<u128> = results.iter().map(|(_, d)| d.as_millis()).collect();
    latencies.sort_unstable();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for (status, _) in results {
        *statuses.entry(*status).or_default() += 1;
    }
    format!(
        "statuses {statuses:?}, latency p50 {} ms, p99 {} ms, max {} ms",
        latencies[latencies.len() / 2],
        latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)],
        latencies[latencies.len() - 1]
    )
}

#[test]
#[ignore = "flood proof: run with --ignored --nocapture"]
fn a_forged_flood_does_not_hold_back_signed_webhooks() {
    let meta = StandIn::start();
    let worker = Worker::start(&[("META_API_BASE_URL", meta.base_url())]);
    worker.provision(
        json!({ "merchant_id": "m_flood", "plan": "scale" }),
        &[("stripe", json!({ "endpoint_secrets": [SECRET] }))],
        &[(
            "meta",
            json!({ "pixel_id": "px_flood", "access_token": "tok_flood" }),
        )],
    );
    let port = worker.port;
    let rows = || worker.count("DB", "SELECT count(*) AS n FROM rejected_requests");

    let alone = phase(port, 0);
    println!("signed, alone:        {}", describe(&alone));

    let rows_before = rows();
    let stop = Arc::new(AtomicBool::new(false));
    let forged: Arc<Mutex<BTreeMap<u16, usize>>> = Arc::default();
    let flooders: Vec<_> = (0..6)
        .map(|client| {
            let (stop, forged) = (stop.clone(), forged.clone());
            thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    // Half name the merchant with a forged signature, half make ids up.
                    let merchant = if client % 2 == 0 {
                        "m_flood".to_string()
                    } else {
                        format!("made_up_{client}_{i}")
                    };
                    let answer = http(
                        "POST",
                        port,
                        &format!("/v1/integrations/stripe/events?merchant_id={merchant}"),
                        &[
                            ("content-type", "application/json"),
                            ("Stripe-Signature", "t=1796000000,v1=00ff"),
                        ],
                        b"{\"id\":\"evt_forged\"}",
                    );
                    *forged.lock().unwrap().entry(answer.status).or_default() += 1;
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(3));
    let flood_started = Instant::now();
    let during = phase(port, SIGNED_PER_PHASE);
    let flood_seconds = flood_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        let _ = flooder.join();
    }
    let rows_during = rows() - rows_before;
    let forged = forged.lock().unwrap().clone();
    let forged_total: usize = forged.values().sum();
    println!("signed, during flood: {}", describe(&during));
    println!(
        "forged requests: {forged_total} in {:.0} s ({:.0}/s), answered {forged:?}; \
         rejected_requests rows written during the flood: {rows_during}",
        flood_seconds + 3.0,
        forged_total as f64 / (flood_seconds + 3.0)
    );
    assert!(
        during.iter().all(|(status, _)| (200..300).contains(status)),
        "a signed webhook was refused during the flood"
    );
    assert!(forged.keys().all(|s| matches!(s, 401 | 429)), "{forged:?}");
    assert!(
        rows_during < 20,
        "{rows_during} rows for {forged_total} refusals"
    );
}
