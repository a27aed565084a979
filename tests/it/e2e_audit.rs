//! The audit chain end to end under `wrangler dev`: operator changes and an accepted
//! webhook are chained in the merchant's object, the daily trigger signs the head, an
//! Enterprise merchant exports the chain as NDJSON (a Pro merchant may not), and an
//! entry edited directly in storage is named by `verify`.

use crate::support::{
    eventually, http, object_execute_in, post_stripe, stripe_event, StandIn, Worker,
};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "whsec_audit_e2e";
/// A test-only Ed25519 seed (hex).
const SIGNING_KEY: &str = "4242424242424242424242424242424242424242424242424242424242424242";

fn verify(worker: &Worker) -> Value {
    let answer = worker.admin("GET", "/v1/admin/merchants/m_audit/audit/verify", None);
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

#[test]
fn e2e_audit_chain_signs_exports_and_names_a_tampered_entry() {
    let platforms = StandIn::start();
    let vars = vec![
        ("META_API_BASE_URL", platforms.base_url()),
        ("AUDIT_SIGNING_KEY", SIGNING_KEY.to_string()),
    ];
    let worker = Worker::start(&vars);
    worker.provision(
        json!({ "merchant_id": "m_audit", "plan": "enterprise" }),
        &[("stripe", json!({ "endpoint_secrets": [SECRET] }))],
        &[(
            "meta",
            json!({ "pixel_id": "px_audit", "access_token": "tok_audit_meta" }),
        )],
    );
    worker.provision(
        json!({ "merchant_id": "m_audit_pro", "plan": "pro" }),
        &[],
        &[],
    );
    let key = worker.create_api_key("m_audit");
    let event = stripe_event("customer.subscription.created.active.json", "evt_audit_e2e");
    assert_eq!(post_stripe(&worker, "m_audit", SECRET, &event).status, 202);

    // 1. The chain: create, source, destination, key, then the webhook; intact.
    let chain = verify(&worker);
    assert_eq!(chain["intact"], true, "{chain}");
    assert_eq!(chain["entries"], 5, "{chain}");
    let export = |auth: &str, merchant: &str, query: &str| {
        http(
            "GET",
            worker.port,
            &format!("/v1/merchants/{merchant}/audit/export{query}"),
            &[("authorization", &format!("Bearer {auth}"))],
            b"",
        )
    };
    let exported = export(&key, "m_audit", "");
    assert_eq!(exported.status, 200, "{}", exported.body);
    assert_eq!(
        exported.header("content-type").as_deref(),
        Some("application/x-ndjson")
    );
    let lines: Vec<Value> = exported
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "operator.create_merchant",
            "operator.put_integration",
            "operator.put_integration",
            "operator.create_api_key",
            "webhook.accepted"
        ]
    );
    assert_eq!(lines[2]["subject"], "destinations/meta");
    assert!(
        !exported.body.contains("tok_audit_meta") && !exported.body.contains("whsec_"),
        "no secrets in the chain"
    );
    assert!(
        !exported
            .body
            .to_lowercase()
            .contains("ops@acme-analytics.io"),
        "personal data only hashed"
    );
    let page = export(&key, "m_audit", "?after=3&limit=1");
    assert_eq!(page.body.lines().count(), 1);
    assert_eq!(page.header("x-next-after").as_deref(), Some("4"));
    // The export is an Enterprise feature.
    let pro_key = worker.create_api_key("m_audit_pro");
    let refused = export(&pro_key, "m_audit_pro", "");
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(export(&key, "m_audit_pro", "").status, 403);

    // 2. The daily trigger signs the head.
    let fired = http(
        "GET",
        worker.port,
        "/cdn-cgi/handler/scheduled?cron=0+9+*+*+*",
        &[],
        b"",
    );
    assert_eq!(fired.status, 200);
    let signed = eventually(WAIT, "a signed head", || {
        let chain = verify(&worker);
        (chain["signed_heads"].as_array()?.len() == 1).then_some(chain)
    });
    let head = &signed["signed_heads"][0];
    assert_eq!(head["signature_valid"], true, "{signed}");
    assert_eq!(head["matches_chain"], true);
    assert!(head["seq"].as_i64().unwrap() >= 5);
    let public_key = head["public_key"].as_str().unwrap().to_string();
    let message = tracklayer::audit::head_message(
        "m_audit",
        head["day"].as_str().unwrap(),
        head["seq"].as_i64().unwrap(),
        head["hash"].as_str().unwrap(),
    );
    assert!(tracklayer::audit::signature_valid(
        &public_key,
        &message,
        head["signature"].as_str().unwrap()
    ));

    // 3. Someone edits entry 3 (the Meta destination change) in storage.
    let state = worker.kill_hard();
    object_execute_in(
        &state,
        "UPDATE audit_log SET subject = 'destinations/tiktok' WHERE merchant_id = 'm_audit' AND seq = 3",
    );
    let worker = Worker::start_on(state, &vars);
    let tampered = verify(&worker);
    assert_eq!(tampered["intact"], false, "{tampered}");
    assert_eq!(tampered["broken"]["seq"], 3, "{tampered}");
    assert_eq!(tampered["entries"], 2);
    assert_eq!(
        tampered["signed_heads"][0]["signature_valid"], true,
        "the signature still holds for the head it signed"
    );
}
