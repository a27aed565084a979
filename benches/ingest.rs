//! Verify + parse + map (+ plan) of one webhook per source, natively:
//! `cargo bench --bench ingest`.

use base64::Engine;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tracklayer::config::MerchantConfig;
use tracklayer::enrich::StoredContext;
use tracklayer::ingest;
use tracklayer::sources::{
    hubspot, lemonsqueezy, paddle, recharge, stripe, Headers, WebhookRequest,
};

const URL: &str =
    "https://edge.tracklayer.test/v1/integrations/stripe/subscription-events?merchant_id=m_bench";

fn bench_stripe(c: &mut Criterion) {
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/stripe/customer.subscription.created.trialing.json"
    ))
    .expect("fixture");
    let now = 1_767_225_605;
    let secret = "whsec_bench";
    let merchant = MerchantConfig {
        merchant_id: "m_bench".into(),
        // Stripe ingest is a Scale feature.
        plan: tracklayer::config::Plan::Scale,
        ..MerchantConfig::default()
    }
    .with_source(
        "stripe",
        serde_json::json!({ "endpoint_secrets": [secret] }),
    )
    .with_destination(
        "meta",
        serde_json::json!({ "pixel_id": "1", "access_token": "t" }),
    );
    let headers = Headers::new().with("Stripe-Signature", &stripe::sign(secret, now, &body));
    c.bench_function("stripe verify+parse+map (5.6 KB event)", |b| {
        b.iter(|| {
            let output = ingest::verify_and_map(
                "stripe",
                black_box(&merchant),
                black_box(&WebhookRequest::post(URL, &headers, &body)),
                now,
            )
            .unwrap()
            .remove(0);
            ingest::plan(output, &merchant, &StoredContext::default())
        })
    });
    c.bench_function("stripe verify only", |b| {
        b.iter(|| {
            stripe::verify(
                headers.get("stripe-signature"),
                black_box(&body),
                &[secret],
                now,
                300,
            )
            .unwrap()
        })
    });
}

/// Every other source: verify + map + plan of one realistic fixture.
fn bench_sources(c: &mut Criterion) {
    let now = 1_768_563_400;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("u:p")
    );
    let merchant = MerchantConfig {
        merchant_id: "m_bench".into(),
        ..MerchantConfig::default()
    }
    .with_source("paddle", serde_json::json!({ "secret_keys": ["s"] }))
    .with_source(
        "lemonsqueezy",
        serde_json::json!({ "signing_secrets": ["s"] }),
    )
    .with_source("recharge", serde_json::json!({ "client_secrets": ["s"] }))
    .with_source(
        "chargebee",
        serde_json::json!({ "basic_auth": [{ "username": "u", "password": "p" }] }),
    )
    .with_source("hubspot", serde_json::json!({ "client_secrets": ["s"] }))
    .with_source(
        "salesforce",
        serde_json::json!({ "organization_id": "00D5g000004XyZaEAK", "endpoint_tokens": ["tok"] }),
    )
    .with_source(
        "pipedrive",
        serde_json::json!({ "basic_auth": [{ "username": "u", "password": "p" }] }),
    )
    .with_destination(
        "meta",
        serde_json::json!({ "pixel_id": "1", "access_token": "t" }),
    );
    let url = "https://edge.tracklayer.test/v1/integrations/x/events?merchant_id=m_bench&token=tok";
    let cases: [(&str, &str); 7] = [
        ("paddle", "transaction.paid.renewal.json"),
        ("lemonsqueezy", "subscription_payment_success.renewal.json"),
        ("recharge", "charge.paid.recurring.json"),
        ("chargebee", "subscription_renewed.json"),
        ("hubspot", "webhooks-api.batch.json"),
        ("salesforce", "outbound-message.opportunities.xml"),
        ("pipedrive", "v2.deal.change.won.json"),
    ];
    for (source, fixture) in cases {
        let body = std::fs::read(format!(
            "{}/tests/fixtures/{source}/{fixture}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("fixture");
        let headers = match source {
            "paddle" => Headers::new().with("Paddle-Signature", &paddle::sign("s", now, &body)),
            "lemonsqueezy" => Headers::new().with("X-Signature", &lemonsqueezy::sign("s", &body)),
            "recharge" => Headers::new()
                .with("X-Recharge-Hmac-Sha256", &recharge::sign_legacy("s", &body))
                .with("X-Recharge-Topic", "charge/paid"),
            "hubspot" => Headers::new()
                .with(
                    "X-HubSpot-Signature-v3",
                    &hubspot::sign_v3("s", "POST", url, &body, now * 1000),
                )
                .with("X-HubSpot-Request-Timestamp", &(now * 1000).to_string()),
            "salesforce" => Headers::new(),
            _ => Headers::new().with("Authorization", &basic),
        };
        let name = format!("{source} verify+map+plan ({} B {fixture})", body.len());
        c.bench_function(&name, |b| {
            b.iter(|| {
                let outputs = ingest::verify_and_map(
                    source,
                    black_box(&merchant),
                    black_box(&WebhookRequest::post(url, &headers, &body)),
                    now,
                )
                .unwrap();
                outputs
                    .into_iter()
                    .map(|o| {
                        ingest::plan(o, &merchant, &StoredContext::default())
                            .jobs
                            .len()
                    })
                    .sum::<usize>()
            })
        });
    }
}

/// Per request the edge opens the merchant's sealed configs; per product-events call it
/// maps a batch.
fn bench_workspaces(c: &mut Criterion) {
    use tracklayer::secrets::{config_context, Keyring};
    let keyring = Keyring::parse("k1:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=").unwrap();
    let config = br#"{"endpoint_secrets":["whsec_0123456789abcdef0123456789abcdef"],"tolerance_seconds":300}"#;
    let context = config_context("m_bench", "source", "stripe");
    let sealed = keyring.seal(config, &context, [7; 12]).unwrap();
    c.bench_function("open one sealed source config", |b| {
        b.iter(|| keyring.open(black_box(&sealed), &context).unwrap())
    });
    let events: Vec<String> = (0..100)
        .map(|i| format!(r#"{{"event":"activation_milestone","user_id":"u_{i}","milestone":"first_project","properties":{{"plan":"pro"}}}}"#))
        .collect();
    let batch = format!(r#"{{"events":[{}]}}"#, events.join(","));
    c.bench_function("product events: map a batch of 100", |b| {
        b.iter(|| {
            tracklayer::sources::product::map("m_bench", black_box(batch.as_bytes()), 1_795_300_000)
                .unwrap()
        })
    });
}

/// Building one destination request from a canonical event (the consumer's CPU work per
/// delivery; every destination sends one event per request today).
fn bench_destinations(c: &mut Criterion) {
    use tracklayer::destinations::{Context, Endpoints, OperatorCredentials, REGISTRY};
    let body = std::fs::read(format!(
        "{}/tests/fixtures/stripe/invoice.paid.renewal.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture");
    let created = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["created"]
        .as_i64()
        .unwrap();
    let merchant = MerchantConfig {
        merchant_id: "m_bench".into(),
        plan: tracklayer::config::Plan::Scale,
        ..MerchantConfig::default()
    }
    .with_source(
        "stripe",
        serde_json::json!({ "endpoint_secrets": ["whsec_b"] }),
    )
    .with_destination(
        "meta",
        serde_json::json!({ "pixel_id": "1", "access_token": "t" }),
    )
    .with_destination("klaviyo", serde_json::json!({ "private_api_key": "pk" }))
    .with_destination(
        "tiktok",
        serde_json::json!({ "pixel_code": "C1", "access_token": "t" }),
    )
    .with_destination(
        "ga4",
        serde_json::json!({ "measurement_id": "G-1", "api_secret": "s" }),
    )
    .with_destination(
        "linkedin",
        serde_json::json!({ "access_token": "t", "conversion_rules": { "subscription_renewed": "1" } }),
    )
    .with_destination(
        "google_ads",
        serde_json::json!({ "customer_id": "1234567890", "refresh_token": "r",
                            "conversion_actions": { "subscription_renewed": "987" } }),
    );
    let headers = Headers::new().with(
        "Stripe-Signature",
        &tracklayer::sources::stripe::sign("whsec_b", created, &body),
    );
    let request = WebhookRequest::post("https://edge.test/", &headers, &body);
    let output = ingest::verify_and_map("stripe", &merchant, &request, created)
        .unwrap()
        .remove(0);
    let mut event = output.events[0].clone();
    event.customer.email = Some("jane.doe@example.com".into());
    event.touchpoints.gclid = Some("Cj0KCQiA-bench".into());
    event.touchpoints.fbc = Some("fb.1.1795298000000.IwAR2xyz".into());
    let endpoints = Endpoints::default();
    let operator = OperatorCredentials {
        google_ads_developer_token: Some("dev".into()),
        ..OperatorCredentials::default()
    };
    let context = Context {
        endpoints: &endpoints,
        operator: &operator,
        now_s: created + 60,
        access_token: Some("ya29.bench"),
    };
    // 100 distinct queued events (distinct ids, as distinct renewals would be).
    let hundred: Vec<_> = (0..100)
        .map(|i| {
            let mut e = event.clone();
            e.event_id = format!("tl_bench_{i:03}");
            e
        })
        .collect();
    for spec in REGISTRY {
        let plan = (spec.build)(&hundred, &merchant, &context).unwrap();
        eprintln!(
            "{}: {} outbound request(s) per 100 queued events",
            spec.name,
            plan.requests.len()
        );
        c.bench_function(&format!("{} build one request", spec.name), |b| {
            b.iter(|| {
                (spec.build)(std::slice::from_ref(black_box(&event)), &merchant, &context).unwrap()
            })
        });
        c.bench_function(&format!("{} build and batch 100 events", spec.name), |b| {
            b.iter(|| (spec.build)(black_box(&hundred), &merchant, &context).unwrap())
        });
    }
}

fn bench_pixel(c: &mut Criterion) {
    use tracklayer::pixel::{capture, BeaconContext, PixelSettings};
    let settings = PixelSettings {
        allowed_origins: vec!["https://example.com".into(), "https://*.example.com".into()],
        browser_identify: true,
    };
    let beacon = serde_json::json!({
        "visitor_id": "0123456789abcdef0123456789abcdef",
        "landing": {"gclid": "Cj0KCQiA-bench", "fbclid": "IwAR2F4-dbP0l7Mn1Iaw"},
        "cookies": {"_fbp": "fb.1.1794990000000.1098115397", "_ga": "GA1.1.1234567890.1794990000"},
        "identify": {"email": "ann@example.com"}
    })
    .to_string();
    let context = BeaconContext {
        now_ms: 1_795_000_000_123,
        client_ip: Some("203.0.113.7"),
        user_agent: Some("Mozilla/5.0 (Macintosh) Safari/605.1.15"),
    };
    c.bench_function("pixel: origin check + beacon to touchpoints", |b| {
        b.iter(|| {
            assert!(settings.allows(black_box("https://app.example.com")));
            capture(black_box(beacon.as_bytes()), &settings, context).unwrap()
        })
    });
}

criterion_group!(
    benches,
    bench_stripe,
    bench_sources,
    bench_workspaces,
    bench_destinations,
    bench_pixel
);
criterion_main!(benches);
