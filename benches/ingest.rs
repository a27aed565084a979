//! Verify + parse + map of one Stripe webhook, natively: `cargo bench --bench ingest`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tracklayer::config::{MerchantConfig, MetaConfig, StripeSourceConfig};
use tracklayer::enrich::StoredContext;
use tracklayer::ingest;
use tracklayer::sources::{stripe, Headers};

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
        stripe: Some(StripeSourceConfig {
            endpoint_secrets: vec![secret.into()],
            tolerance_seconds: 300,
        }),
        meta: Some(MetaConfig {
            pixel_id: "1".into(),
            access_token: "t".into(),
            api_version: "v25.0".into(),
            action_source: "system_generated".into(),
            test_event_code: None,
        }),
        ..MerchantConfig::default()
    };
    let headers = Headers::new().with("Stripe-Signature", &stripe::sign(secret, now, &body));
    c.bench_function("stripe verify+parse+map (5.6 KB event)", |b| {
        b.iter(|| {
            let output = ingest::verify_and_map(
                "stripe",
                black_box(&merchant),
                black_box(&headers),
                black_box(&body),
                now,
            )
            .unwrap();
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
