//! End to end for merchant workspaces through `wrangler dev`: the admin API, secrets
//! sealed at rest, plan gates, EU/US residency (rows only in the merchant's regional
//! database), merchant API keys and their isolation, product events, GDPR erasure,
//! whole-merchant deletion, the ingest rate limit and the rejected-request log.
//!
//! Needs the toolchain from `bash scripts/setup.sh` (the README test command runs it).

use crate::support;

use crate::support::{eventually, http, post_stripe, stripe_event, StandIn, Worker};
use serde_json::json;
use std::time::Duration;

const STRIPE_SECRET_EU: &str = "whsec_eu_workspace_secret_7d1f";
const STRIPE_SECRET_US: &str = "whsec_us_workspace_secret_3c9a";
const STRIPE_SECRET_FLOOD: &str = "whsec_flood_workspace_secret_5e2b";
const META_TOKEN_EU: &str = "EAAB-eu-token-never-shown-41f0";
const WAIT: Duration = Duration::from_secs(60);

fn with_key(
    worker: &Worker,
    method: &str,
    path: &str,
    key: &str,
    body: &[u8],
) -> support::HttpResponse {
    let auth = format!("Bearer {key}");
    http(
        method,
        worker.port,
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
}

/// The merchant's rejected-request log once it holds a row with `code` (refusals are
/// counted in memory and written in batches).
fn rejected_log_once_it_has(worker: &Worker, merchant: &str, code: &str) -> Vec<serde_json::Value> {
    let path = format!("/v1/admin/rejected-requests?merchant_id={merchant}");
    eventually(WAIT, &format!("{code} in the rejected-request log"), || {
        let items = worker.admin("GET", &path, None).json()["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        items.iter().any(|r| r["code"] == code).then_some(items)
    })
}

#[test]
fn workspaces_keep_secrets_sealed_data_in_region_and_keys_scoped() {
    let meta = StandIn::start();
    let worker = Worker::start(&[
        ("META_API_BASE_URL", meta.base_url()),
        ("RETRY_BASE_DELAY_SECONDS", "1".into()),
    ]);

    // 1. Admin API: plan gates and validation, with errors naming the plan required.
    let denied = worker.admin(
        "POST",
        "/v1/admin/merchants",
        Some(&json!({ "merchant_id": "m_eu", "region": "eu", "plan": "scale" })),
    );
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert_eq!(denied.json()["error"]["code"], "plan_required");
    assert!(denied.body.contains("requires plan Pro"), "{}", denied.body);
    let unauthorized = http("GET", worker.port, "/v1/admin/merchants", &[], b"");
    assert_eq!(unauthorized.status, 401);

    worker.provision(
        json!({ "merchant_id": "m_eu", "region": "eu", "plan": "pro" }),
        &[("stripe", json!({ "endpoint_secrets": [STRIPE_SECRET_EU] }))],
        &[(
            "meta",
            json!({ "pixel_id": "px_eu", "access_token": META_TOKEN_EU }),
        )],
    );
    worker.provision(
        json!({ "merchant_id": "m_us", "plan": "scale" }),
        &[("stripe", json!({ "endpoint_secrets": [STRIPE_SECRET_US] }))],
        &[(
            "meta",
            json!({ "pixel_id": "px_us", "access_token": "EAAB-us-token-0000-77aa" }),
        )],
    );
    worker.provision(json!({ "merchant_id": "m_starter" }), &[], &[]);
    let again = worker.admin(
        "POST",
        "/v1/admin/merchants",
        Some(&json!({ "merchant_id": "m_us" })),
    );
    assert_eq!(
        (again.status, again.json()["error"]["code"].clone()),
        (409, json!("merchant_exists"))
    );
    let gated = worker.admin(
        "PUT",
        "/v1/admin/merchants/m_starter/sources/stripe",
        Some(&json!({ "endpoint_secrets": ["whsec_x"] })),
    );
    assert_eq!(gated.status, 403, "{}", gated.body);
    assert!(
        gated.body.contains("stripe_ingest requires plan Scale"),
        "{}",
        gated.body
    );
    let invalid = worker.admin(
        "PUT",
        "/v1/admin/merchants/m_us/destinations/meta",
        Some(&json!({ "pixel": "px" })),
    );
    assert_eq!(
        (invalid.status, invalid.json()["error"]["code"].clone()),
        (422, json!("invalid_config"))
    );
    let moved = worker.admin(
        "PATCH",
        "/v1/admin/merchants/m_eu",
        Some(&json!({ "region": "us" })),
    );
    assert_eq!(moved.json()["error"]["code"], "region_immutable");

    // 2. Secrets: masked to the last 4 characters in the API, sealed in D1.
    let shown = worker.admin("GET", "/v1/admin/merchants/m_eu", None);
    assert_eq!(shown.status, 200, "{}", shown.body);
    let shown = shown.json();
    assert_eq!(shown["region"], "eu");
    assert_eq!(
        shown["sources"]["stripe"]["endpoint_secrets"],
        json!(["****7d1f"])
    );
    assert_eq!(shown["destinations"]["meta"]["access_token"], "****41f0");
    assert_eq!(shown["destinations"]["meta"]["pixel_id"], "px_eu");
    assert!(!shown.to_string().contains(STRIPE_SECRET_EU));
    let stored = worker.d1_rows("DB_EU", "SELECT config FROM merchant_destinations");
    assert_eq!(stored.len(), 1);
    let sealed = stored[0]["config"].as_str().unwrap();
    assert!(sealed.starts_with("enc:v1:t1:"), "{sealed}");
    assert!(!sealed.contains(META_TOKEN_EU));

    // 3. Residency: each merchant's events, identity and deliveries exist only in its
    //    region's database.
    for (merchant, secret) in [("m_eu", STRIPE_SECRET_EU), ("m_us", STRIPE_SECRET_US)] {
        let customer = stripe_event(
            "customer.created.json",
            &format!("evt_ws_{merchant}_customer"),
        );
        let answer = post_stripe(&worker, merchant, secret, &customer);
        assert!(
            answer.status == 200 || answer.status == 202,
            "{}",
            answer.body
        );
    }
    let eu_event = stripe_event("invoice.paid.renewal.json", "evt_ws_eu_renewal_1");
    let answer = post_stripe(&worker, "m_eu", STRIPE_SECRET_EU, &eu_event);
    assert_eq!(answer.status, 202, "{}", answer.body);
    let us_event = stripe_event("invoice.paid.renewal.json", "evt_ws_us_renewal_1");
    let answer = post_stripe(&worker, "m_us", STRIPE_SECRET_US, &us_event);
    assert_eq!(answer.status, 202, "{}", answer.body);
    eventually(WAIT, "both Meta deliveries", || {
        (meta.requests_to("/px_eu/").len() == 1 && meta.requests_to("/px_us/").len() == 1)
            .then_some(())
    });
    eventually(WAIT, "both deliveries recorded", || {
        let eu = worker.object_count(
            Some("eu"),
            "SELECT count(*) AS n FROM deliveries WHERE status = 'delivered'",
        );
        let us = worker.object_count(
            Some("us"),
            "SELECT count(*) AS n FROM deliveries WHERE status = 'delivered'",
        );
        (eu == 1 && us == 1).then_some(())
    });
    // Records: each merchant's own object, created for its region.
    for (region, own, other) in [("eu", "m_eu", "m_us"), ("us", "m_us", "m_eu")] {
        for table in [
            "canonical_events",
            "customers",
            "deliveries",
            "delivery_attempts",
            "object_meta",
        ] {
            let count = |merchant: &str| {
                worker.object_count(
                    Some(region),
                    &format!("SELECT count(*) AS n FROM {table} WHERE merchant_id = '{merchant}'"),
                )
            };
            assert!(
                count(own) >= 1,
                "{region} objects: {table} lacks {own}'s rows"
            );
            assert_eq!(
                count(other),
                0,
                "{region} objects: {table} holds {other}'s rows"
            );
        }
    }
    // Settings: the region's D1 only.
    for (binding, own, other) in [("DB_EU", "m_eu", "m_us"), ("DB_US", "m_us", "m_eu")] {
        for table in ["merchants", "merchant_sources"] {
            let mine = worker.count(
                binding,
                &format!("SELECT count(*) AS n FROM {table} WHERE merchant_id = '{own}'"),
            );
            let theirs = worker.count(
                binding,
                &format!("SELECT count(*) AS n FROM {table} WHERE merchant_id = '{other}'"),
            );
            assert!(mine >= 1, "{binding}.{table} lacks {own}'s rows");
            assert_eq!(theirs, 0, "{binding}.{table} holds {other}'s rows");
        }
    }
    let global_tables: Vec<String> = worker
        .d1_rows("DB", "SELECT name FROM sqlite_master WHERE type = 'table'")
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect();
    for personal in [
        "canonical_events",
        "customers",
        "deliveries",
        "dead_letters",
        "crm_context",
    ] {
        assert!(
            !global_tables.contains(&personal.to_string()),
            "global DB has {personal}"
        );
    }

    // 4. Merchant API keys: shown once, stored hashed, scoped to one merchant.
    let created = worker.admin(
        "POST",
        "/v1/admin/merchants/m_us/api-keys",
        Some(&json!({ "label": "app" })),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let us_key = created.json()["api_key"].as_str().unwrap().to_string();
    let eu_key = worker.create_api_key("m_eu");
    let listed = worker.admin("GET", "/v1/admin/merchants/m_us/api-keys", None);
    assert!(
        !listed.body.contains(&us_key) && !listed.body.contains("secret_hash"),
        "{}",
        listed.body
    );
    let stored_keys = worker.d1_rows("DB", "SELECT secret_hash FROM api_keys");
    assert!(stored_keys
        .iter()
        .all(|r| !us_key.contains(r["secret_hash"].as_str().unwrap())));

    let signup = br#"{"event":"signup","user_id":"u_9","email":"Signup.Person@example.com","event_id":"app-1"}"#;
    let answer = with_key(&worker, "POST", "/v1/product-events", &us_key, signup);
    assert_eq!(answer.status, 202, "{}", answer.body);
    let again = with_key(&worker, "POST", "/v1/product-events", &us_key, signup);
    assert_eq!(again.json()["status"], "duplicate", "{}", again.body);
    let bad = with_key(
        &worker,
        "POST",
        "/v1/product-events",
        &us_key,
        br#"{"event":"signup"}"#,
    );
    assert_eq!(
        (bad.status, bad.json()["error"]["code"].clone()),
        (400, json!("malformed_payload"))
    );
    let anonymous = http("POST", worker.port, "/v1/product-events", &[], signup);
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        worker.object_count(Some("us"), "SELECT count(*) AS n FROM canonical_events WHERE merchant_id = 'm_us' AND name = 'signup'"),
        1
    );
    assert_eq!(
        worker.object_count(
            Some("eu"),
            "SELECT count(*) AS n FROM canonical_events WHERE name = 'signup'"
        ),
        0
    );

    // A key of merchant A never reads merchant B.
    let foreign = with_key(&worker, "GET", "/v1/merchants/m_eu/events", &us_key, b"");
    assert_eq!(
        (foreign.status, foreign.json()["error"]["code"].clone()),
        (403, json!("forbidden"))
    );
    let own = with_key(&worker, "GET", "/v1/merchants/m_eu/events", &eu_key, b"");
    assert_eq!(own.status, 200, "{}", own.body);
    let own = own.json();
    assert_eq!(own["items"].as_array().unwrap().len(), 1);
    assert!(own["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["payload"]["merchant_id"] == "m_eu"));
    let switched = with_key(
        &worker,
        "GET",
        "/v1/merchants/m_us/events?merchant_id=m_eu",
        &us_key,
        b"",
    );
    assert_eq!(switched.status, 400, "{}", switched.body);
    let me = with_key(&worker, "GET", "/v1/merchants/m_eu", &eu_key, b"").json();
    assert_eq!(me["sources"], json!(["stripe"]));
    assert!(!me.to_string().contains("****"));

    let key_id = us_key.split('_').nth(1).unwrap();
    let revoked = worker.admin(
        "DELETE",
        &format!("/v1/admin/merchants/m_us/api-keys/{key_id}"),
        None,
    );
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    let after = with_key(&worker, "GET", "/v1/merchants/m_us/events", &us_key, b"");
    assert_eq!(after.status, 401);
    // `..` in a path once resolved to the merchant itself: DELETE …/api-keys/.. deleted
    // m_us. Refused before routing, however it is spelled, and the merchant stays.
    for (method, path) in [
        ("DELETE", "/v1/admin/merchants/m_us/api-keys/.."),
        ("DELETE", "/v1/admin/merchants/m_us/api-keys/%2e%2e"),
        ("DELETE", "/v1/admin/merchants/m_us/sources/.."),
        ("DELETE", "/v1/admin/merchants/m_us/pixel/.."),
        ("PATCH", "/v1/admin/merchants/m_us/api-keys/.."),
        ("DELETE", "/v1/admin/merchants/m_us/"),
        ("GET", "/v1//admin/merchants"),
    ] {
        let refused = worker.admin(method, path, Some(&json!({ "status": "disabled" })));
        assert_eq!(refused.status, 400, "{method} {path}: {}", refused.body);
        assert_eq!(refused.json()["error"]["code"], "invalid_path");
    }
    let still = worker.admin("GET", "/v1/admin/merchants/m_us", None);
    assert_eq!(still.status, 200, "{}", still.body);
    assert_eq!(still.json()["status"], "active");

    // 5. GDPR erasure of one customer leaves none of their events or identity.
    let erased = worker.admin(
        "POST",
        "/v1/admin/merchants/m_us/erasure",
        Some(&json!({ "email": "Jane.Doe@example.com" })),
    );
    assert_eq!(erased.status, 200, "{}", erased.body);
    assert_eq!(
        erased.json()["erased_rows"]["canonical_events"],
        1,
        "{}",
        erased.body
    );
    let left = worker.object_count(
        Some("us"),
        "SELECT count(*) AS n FROM canonical_events WHERE payload LIKE '%jane.doe@example.com%' \
         OR payload LIKE '%cus_SpQ8gWmA1ZbXyT%'",
    );
    assert_eq!(left, 0);
    let identities = worker.object_count(
        Some("us"),
        "SELECT count(*) AS n FROM customers WHERE merchant_id = 'm_us'",
    );
    assert_eq!(identities, 0);
    assert_eq!(
        erased.json()["erased_rows"]["customers"],
        1,
        "{}",
        erased.body
    );
    assert_eq!(
        worker.object_count(
            Some("us"),
            "SELECT count(*) AS n FROM deliveries WHERE merchant_id = 'm_us'"
        ),
        1,
        "only the signup's delivery remains"
    );
    assert_eq!(worker.object_count(Some("us"), "SELECT count(*) AS n FROM delivery_attempts WHERE merchant_id = 'm_us' AND event_id NOT IN (SELECT event_id FROM canonical_events)"), 0);

    // 6. Whole-merchant deletion leaves nothing of it in its region or the routing table.
    let deleted = worker.admin("DELETE", "/v1/admin/merchants/m_eu", None);
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert!(
        deleted.json()["deleted_rows"]["canonical_events"]
            .as_i64()
            .unwrap()
            >= 1,
        "{}",
        deleted.body
    );
    for table in ["merchants", "merchant_sources", "merchant_destinations"] {
        assert_eq!(
            worker.count("DB_EU", &format!("SELECT count(*) AS n FROM {table}")),
            0,
            "{table}"
        );
    }
    for table in tracklayer::records::TABLES {
        assert_eq!(
            worker.object_count(Some("eu"), &format!("SELECT count(*) AS n FROM {table}")),
            0,
            "the EU merchant's object still holds {table}"
        );
    }
    assert_eq!(
        worker.count(
            "DB",
            "SELECT count(*) AS n FROM merchant_routes WHERE merchant_id = 'm_eu'"
        ),
        0
    );
    assert_eq!(
        worker.count(
            "DB",
            "SELECT count(*) AS n FROM api_keys WHERE merchant_id = 'm_eu'"
        ),
        0
    );
    let gone = post_stripe(&worker, "m_eu", STRIPE_SECRET_EU, &eu_event);
    assert_eq!(gone.status, 401, "{}", gone.body);

    // 7. A forged flood: refused 401, then 429 once the unverified budget is spent,
    //    while the merchant's signed webhooks keep their own budget and pass. Refusals
    //    are counted without a global write per request, and never under made-up ids.
    worker.provision(
        json!({ "merchant_id": "m_flood", "plan": "scale" }),
        &[(
            "stripe",
            json!({ "endpoint_secrets": [STRIPE_SECRET_FLOOD] }),
        )],
        &[],
    );
    let rejected_rows = || worker.count("DB", "SELECT count(*) AS n FROM rejected_requests");
    let rows_before = rejected_rows();
    let mut limited = None;
    for attempt in 0..300 {
        let forged = http(
            "POST",
            worker.port,
            "/v1/integrations/stripe/subscription-events?merchant_id=m_flood",
            &[
                ("content-type", "application/json"),
                ("stripe-signature", "t=1,v1=00"),
            ],
            b"{}",
        );
        if forged.status == 429 {
            limited = Some((attempt, forged));
            break;
        }
        assert_eq!(forged.status, 401, "{}", forged.body);
        assert_eq!(forged.json()["error"]["code"], "unauthenticated");
    }
    let (attempt, limited) = limited.expect("no 429 within 300 forged requests");
    // The address budget is 120 per minute; earlier steps spent a few of it.
    assert!(attempt >= 110, "limited after only {attempt} requests");
    assert_eq!(limited.json()["error"]["code"], "rate_limited");
    assert_eq!(limited.header("retry-after").as_deref(), Some("60"));
    let flood_event = stripe_event(
        "customer.subscription.created.trialing.json",
        "evt_flood_signed",
    );
    let signed = post_stripe(&worker, "m_flood", STRIPE_SECRET_FLOOD, &flood_event);
    assert_eq!(
        signed.status, 202,
        "a signed webhook during a forged flood: {}",
        signed.body
    );
    for i in 0..200 {
        let random = http(
            "POST",
            worker.port,
            &format!("/v1/integrations/stripe/subscription-events?merchant_id=random_{i}"),
            &[("content-type", "application/json")],
            b"{}",
        );
        assert!(matches!(random.status, 401 | 429), "{}", random.body);
    }
    // Nothing was written per request: the buffered counts are not in D1 yet.
    assert!(
        rejected_rows() - rows_before < 5,
        "rows written during the flood"
    );
    let log = rejected_log_once_it_has(&worker, "m_flood", "unverified_rate_limited");
    let invalid: i64 = log
        .iter()
        .filter(|r| r["code"] == "signature_invalid")
        .map(|r| r["count"].as_i64().unwrap())
        .sum();
    assert!(invalid >= 110, "{log:?}");
    assert_eq!(
        worker.count(
            "DB",
            "SELECT count(*) AS n FROM rejected_requests WHERE merchant_id LIKE 'random_%'"
        ),
        0,
        "rows keyed by ids that name no merchant"
    );
    assert!(rejected_rows() - rows_before < 10, "{log:?}");

    // 8. The served OpenAPI document is the repository's.
    let spec = http("GET", worker.port, "/v1/openapi.json", &[], b"");
    assert_eq!(spec.status, 200);
    assert_eq!(spec.json()["openapi"], "3.1.0");
}

#[test]
fn the_merchant_object_limits_each_merchants_authenticated_ingest_rate() {
    let worker = Worker::start(&[("INGEST_RATE_LIMIT", "4".into())]);
    for merchant in ["m_rate", "m_rate_other"] {
        worker.provision(
            json!({ "merchant_id": merchant, "plan": "scale" }),
            &[("stripe", json!({ "endpoint_secrets": [STRIPE_SECRET_US] }))],
            &[],
        );
    }
    // Distinct subscriptions, so each webhook is a new trial rather than a repeat.
    let event = |id: &str| {
        let mut event: serde_json::Value = serde_json::from_slice(&stripe_event(
            "customer.subscription.created.trialing.json",
            id,
        ))
        .unwrap();
        event["data"]["object"]["id"] = json!(format!("sub_{id}"));
        serde_json::to_vec(&event).unwrap()
    };

    // Four distinct signed webhooks fit the minute's budget; the fifth is refused
    // before anything of it is claimed or recorded.
    for i in 0..4 {
        let answer = post_stripe(
            &worker,
            "m_rate",
            STRIPE_SECRET_US,
            &event(&format!("evt_rate_{i}")),
        );
        assert_eq!(answer.status, 202, "{}", answer.body);
    }
    let over = post_stripe(&worker, "m_rate", STRIPE_SECRET_US, &event("evt_rate_over"));
    assert_eq!(over.status, 429, "{}", over.body);
    assert_eq!(over.json()["error"]["code"], "rate_limited");
    assert_eq!(over.header("retry-after").as_deref(), Some("60"));
    assert_eq!(
        worker.object_count(
            None,
            "SELECT count(*) AS n FROM canonical_events WHERE source_event_id = 'evt_rate_over'"
        ),
        0
    );
    assert_eq!(
        worker.object_count(
            None,
            "SELECT count(DISTINCT source_event_id) AS n FROM canonical_events \
             WHERE source_event_id LIKE 'evt_rate_%'"
        ),
        4
    );

    // The budget is the merchant's own, and product events have theirs.
    let other = post_stripe(
        &worker,
        "m_rate_other",
        STRIPE_SECRET_US,
        &event("evt_rate_other"),
    );
    assert_eq!(other.status, 202, "{}", other.body);
    let key = worker.create_api_key("m_rate");
    let signup = br#"{"event":"signup","user_id":"u_rate","email":"rate@example.com","event_id":"app-rate-1"}"#;
    let product = with_key(&worker, "POST", "/v1/product-events", &key, signup);
    assert_eq!(product.status, 202, "{}", product.body);

    // The refusal is in the operator's rejected-request log under the merchant.
    let log = rejected_log_once_it_has(&worker, "m_rate", "rate_limited");
    assert!(log
        .iter()
        .any(|r| r["code"] == "rate_limited" && r["status"] == 429));
    assert!(
        log.iter().all(|r| r["code"] == "rate_limited"),
        "only the over-budget webhook was refused: {log:?}"
    );
}
