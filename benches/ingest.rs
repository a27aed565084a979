//! Verify + parse + map of one Stripe webhook, natively: `cargo bench --bench ingest`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tracklayer::config::MerchantConfig;
use tracklayer::enrich::StoredContext;
use tracklayer::ingest;
use tracklayer::sources::{stripe, Headers, WebhookRequest};

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

criterion_group!(benches, bench_stripe);
criterion_main!(benches);
