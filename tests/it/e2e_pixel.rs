//! End to end through `wrangler dev`: the first-party pixel. The real `/v1/pixel.js` runs
//! in a small Node browser (tests/it/support/browser.cjs) on the merchant's pages: a visitor
//! lands from ads on www.example.com, later identifies on app.example.com, and weeks of
//! billing later the Stripe conversion reaches Meta, Google Ads and LinkedIn with the
//! click ids the pixel captured. Also: the server-side link (product event
//! `context.visitor_id`), origin and body refusals, erasure and disabling the pixel.
//!
//! Needs the toolchain from `bash scripts/setup.sh` (the README test command runs it).

use crate::support;

use crate::support::{
    carrying, eventually, http, now, post_stripe, stripe_event, StandIn, Worker, ROOT,
};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const SECRET: &str = "whsec_pixel_e2e";
const WAIT: Duration = Duration::from_secs(60);
const GOOGLE_UPLOAD: &str = "/v26/customers/1234567890:uploadClickConversions";

/// One page view in the test browser whose state lives in `state`.
fn visit(worker: &Worker, state: &Path, page: &str, key: &str, calls: Value) -> Value {
    visit_page(worker, state, page, key, calls, false)
}

/// A page view; `consent_required` puts `data-consent="required"` on the script tag.
fn visit_page(
    worker: &Worker,
    state: &Path,
    page: &str,
    key: &str,
    calls: Value,
    consent_required: bool,
) -> Value {
    let script_url = format!("http://127.0.0.1:{}/v1/pixel.js", worker.port);
    let mut command = Command::new("node");
    if consent_required {
        command.env("PIXEL_CONSENT", "required");
    }
    let output = command
        .arg(format!("{ROOT}/tests/it/support/browser.cjs"))
        .arg(state)
        .arg(page)
        .arg(&script_url)
        .arg(key)
        .arg(calls.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("run node");
    assert!(
        output.status.success(),
        "browser failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("browser output is JSON")
}

fn beacon(worker: &Worker, key: &str, origin: Option<&str>, body: &str) -> support::HttpResponse {
    let mut headers = vec![("content-type", "text/plain")];
    if let Some(origin) = origin {
        headers.push(("origin", origin));
    }
    http(
        "POST",
        worker.port,
        &format!("/v1/pixel/{key}/collect"),
        &headers,
        body.as_bytes(),
    )
}

#[test]
fn pixel_click_ids_reach_the_conversion_weeks_later() {
    let platforms = StandIn::start();
    platforms.script(
        "/token",
        vec![(
            200,
            r#"{"access_token":"ya29.pixel-access","expires_in":3599,"token_type":"Bearer"}"#,
        )],
    );
    let base = platforms.base_url();
    let worker = Worker::start(&[
        ("META_API_BASE_URL", base.clone()),
        ("LINKEDIN_API_BASE_URL", base.clone()),
        ("GOOGLE_ADS_API_BASE_URL", base.clone()),
        ("GOOGLE_OAUTH_TOKEN_URL", format!("{base}/token")),
        ("GOOGLE_ADS_DEVELOPER_TOKEN", "dev-token-pixel".into()),
        (
            "GOOGLE_OAUTH_CLIENT_ID",
            "pixel-e2e.apps.googleusercontent.com".into(),
        ),
        ("GOOGLE_OAUTH_CLIENT_SECRET", "oauth-secret-pixel".into()),
    ]);
    worker.provision(
        json!({ "merchant_id": "m_px", "plan": "scale" }),
        &[("stripe", json!({ "endpoint_secrets": [SECRET] }))],
        &[
            ("meta", json!({ "pixel_id": "px_px", "access_token": "tok_px_meta" })),
            (
                "linkedin",
                json!({ "access_token": "li_px_e2e", "conversion_rules": { "trial_converted": "104099" } }),
            ),
            (
                "google_ads",
                json!({
                    "customer_id": "123-456-7890",
                    "refresh_token": "1//0pixel-refresh",
                    "conversion_actions": { "trial_converted": "987654321" }
                }),
            ),
        ],
    );

    // 1. The operator enables the pixel; settings are checked, the key survives updates.
    let refused = worker.admin(
        "PUT",
        "/v1/admin/merchants/m_px/pixel",
        Some(&json!({ "allowed_origins": ["http://example.com"] })),
    );
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(refused.body.contains("https"), "{}", refused.body);
    let created = worker.admin(
        "PUT",
        "/v1/admin/merchants/m_px/pixel",
        Some(&json!({ "allowed_origins": ["https://example.com", "https://*.example.com"] })),
    );
    assert_eq!(created.status, 200, "{}", created.body);
    let pixel = created.json();
    let key = pixel["pixel_key"].as_str().unwrap().to_string();
    assert!(tracklayer::pixel::is_key(&key), "{key}");
    let snippet = pixel["snippet"].as_str().unwrap();
    assert!(
        snippet.contains(&format!("/v1/pixel.js\" data-key=\"{key}\"")),
        "{snippet}"
    );
    let updated = worker.admin(
        "PUT",
        "/v1/admin/merchants/m_px/pixel",
        Some(&json!({ "allowed_origins": ["https://*.example.com", "https://example.com"], "browser_identify": true })),
    );
    assert_eq!(updated.json()["pixel_key"], key.as_str());

    // 2. A visitor lands on the marketing site from ads (Meta, Google and LinkedIn ids in
    //    the URL; Meta's and Google Analytics' cookies already set).
    let state_dir = tempdir();
    let browser = state_dir.join("browser.json");
    std::fs::write(
        &browser,
        json!({ "storage": {}, "cookies": [
            { "name": "_fbp", "value": "fb.1.1793480000000.1098115397", "domain": "example.com", "expires": 8.64e15 },
            { "name": "_ga", "value": "GA1.1.1180129581.1793480000", "domain": "example.com", "expires": 8.64e15 }
        ]})
        .to_string(),
    )
    .unwrap();
    let landing = visit(
        &worker,
        &browser,
        "https://www.example.com/pricing?utm_source=meta&fbclid=IwAR2-pixel-click&gclid=Cj0KCQiA-pixel-gclid&li_fat_id=5b2c1d3e-0000-4000-8000-0000000pixel",
        &key,
        json!([]),
    );
    let beacons = landing["beacons"].as_array().unwrap();
    assert_eq!(beacons.len(), 1, "{landing}");
    assert_eq!(beacons[0]["status"], 204, "{landing}");
    assert_eq!(beacons[0]["allow_origin"], "https://www.example.com");
    let sent = &beacons[0]["body"];
    assert_eq!(sent["landing"]["gclid"], "Cj0KCQiA-pixel-gclid");
    assert!(
        sent["landing"].get("utm_source").is_none() && !landing.to_string().contains("utm_source"),
        "the query string is never sent: {sent}"
    );
    // The page view: path and title only.
    assert_eq!(
        sent["page"],
        json!({ "path": "/pricing", "title": "Test page" })
    );
    let visitor_id = sent["visitor_id"].as_str().unwrap().to_string();
    // The visitor id is on the widest domain, shared by www. and app.
    let vid_cookie = landing["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "_tl_vid")
        .cloned()
        .unwrap();
    assert_eq!(vid_cookie["domain"], "example.com");
    assert_eq!(vid_cookie["value"], visitor_id.as_str());

    // The same page again: a page view, without the ids (nothing changed).
    let again = visit(
        &worker,
        &browser,
        "https://www.example.com/pricing?utm_source=meta&fbclid=IwAR2-pixel-click&gclid=Cj0KCQiA-pixel-gclid&li_fat_id=5b2c1d3e-0000-4000-8000-0000000pixel",
        &key,
        json!([]),
    );
    assert_eq!(
        again["beacons"].as_array().map(|b| b.len()),
        Some(1),
        "{again}"
    );
    let page_only = &again["beacons"][0]["body"];
    assert_eq!(
        page_only,
        &json!({ "visitor_id": visitor_id, "page": { "path": "/pricing", "title": "Test page" } })
    );

    // 3. Days later the visitor signs up in the app, which calls identify.
    let signup = visit(
        &worker,
        &browser,
        "https://app.example.com/welcome",
        &key,
        json!([["identify", { "email": "Jane.Doe@example.com" }]]),
    );
    let beacons = signup["beacons"].as_array().unwrap();
    assert!(beacons.iter().all(|b| b["status"] == 204), "{signup}");
    assert!(beacons
        .iter()
        .any(|b| b["body"]["identify"]["email"] == "Jane.Doe@example.com"));
    assert!(beacons
        .iter()
        .all(|b| b["body"]["visitor_id"] == visitor_id.as_str()));
    assert_eq!(
        worker.object_count(Some("us"), &format!("SELECT count(*) AS n FROM identity_links WHERE merchant_id = 'm_px' AND visitor_key = 'visitor:{visitor_id}' AND identity_key = 'email:jane.doe@example.com'")),
        1
    );

    // 4. Stripe: the customer, then the trial conversion.
    let customer = stripe_event("customer.created.json", "evt_px_customer");
    assert_eq!(post_stripe(&worker, "m_px", SECRET, &customer).status, 202);
    let converted = stripe_event(
        "customer.subscription.updated.trial-converted.json",
        "evt_px_converted",
    );
    let answer = post_stripe(&worker, "m_px", SECRET, &converted);
    assert_eq!(answer.status, 202, "{}", answer.body);
    let event_id = answer.json()["events"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let [meta, linkedin, google] =
        eventually(WAIT, "the conversion at Meta, LinkedIn and Google", || {
            let found = [
                carrying(platforms.requests_to("/px_px/events"), &event_id),
                carrying(platforms.requests_to("/rest/conversionEvents"), &event_id),
                carrying(platforms.requests_to(GOOGLE_UPLOAD), &event_id),
            ];
            found.iter().all(|r| !r.is_empty()).then_some(found)
        });
    let meta_event = meta[0].json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == event_id.as_str())
        .cloned()
        .unwrap();
    let user = &meta_event["user_data"];
    // fbc built from the landing fbclid, in milliseconds, with Meta's prefix.
    let fbc = user["fbc"].as_str().unwrap();
    assert!(
        fbc.starts_with("fb.1.") && fbc.ends_with(".IwAR2-pixel-click"),
        "{fbc}"
    );
    let created_ms: i64 = fbc.split('.').nth(2).unwrap().parse().unwrap();
    assert!((created_ms / 1000 - now()).abs() < 600, "{fbc}");
    assert_eq!(user["fbp"], "fb.1.1793480000000.1098115397");
    // The visitor's address as the edge saw it (wrangler dev reports loopback).
    assert_eq!(user["client_ip_address"], "127.0.0.1");
    assert_eq!(
        user["client_user_agent"],
        "Mozilla/5.0 (X11; Linux x86_64) TrackLayerE2E/1.0"
    );
    let google_row = google[0].json()["conversions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["orderId"] == event_id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(google_row["gclid"], "Cj0KCQiA-pixel-gclid");
    let li = linkedin[0].json();
    assert!(
        li.to_string()
            .contains("5b2c1d3e-0000-4000-8000-0000000pixel"),
        "{li}"
    );

    // 5. The server-side link: a second visitor lands from a Meta ad; the app's server
    //    reports the signup with the `_tl_vid` it read. The signup itself carries the click.
    let browser_two = state_dir.join("browser-two.json");
    let landed = visit(
        &worker,
        &browser_two,
        "https://example.com/?fbclid=IwAR2-second-visitor",
        &key,
        json!([]),
    );
    let second_visitor = landed["beacons"][0]["body"]["visitor_id"]
        .as_str()
        .unwrap()
        .to_string();
    let api_key = worker.create_api_key("m_px");
    let auth = format!("Bearer {api_key}");
    let signup = http(
        "POST",
        worker.port,
        "/v1/product-events",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        json!({ "event": "signup", "user_id": "u_sam", "email": "sam@example.org",
                "context": { "visitor_id": second_visitor } })
        .to_string()
        .as_bytes(),
    );
    assert_eq!(signup.status, 202, "{}", signup.body);
    let signup_id = signup.json()["events"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let sent = eventually(WAIT, "the signup at Meta", || {
        let found = carrying(platforms.requests_to("/px_px/events"), &signup_id);
        (!found.is_empty()).then_some(found)
    });
    assert!(
        sent[0].body.contains(".IwAR2-second-visitor"),
        "{}",
        sent[0].body
    );

    // 6. Consent mode: nothing is stored or sent before consent, then it is.
    let browser_three = state_dir.join("browser-three.json");
    let page = "https://example.com/?gclid=Cj0-consent-gclid";
    let waiting = visit_page(&worker, &browser_three, page, &key, json!([]), true);
    assert_eq!(waiting["beacons"], json!([]), "{waiting}");
    assert_eq!(waiting["cookies"], json!([]), "{waiting}");
    let consented = visit_page(
        &worker,
        &browser_three,
        page,
        &key,
        json!([["consent", true]]),
        true,
    );
    assert_eq!(
        consented["beacons"].as_array().unwrap().len(),
        1,
        "{consented}"
    );
    assert_eq!(consented["beacons"][0]["status"], 204);
    assert_eq!(
        consented["beacons"][0]["body"]["landing"]["gclid"],
        "Cj0-consent-gclid"
    );
    let withdrawn = visit_page(
        &worker,
        &browser_three,
        page,
        &key,
        json!([["consent", false]]),
        true,
    );
    assert_eq!(withdrawn["beacons"], json!([]), "{withdrawn}");
    assert!(
        !withdrawn.to_string().contains("_tl_vid"),
        "the visitor cookie is deleted: {withdrawn}"
    );

    // 7. Refusals: other origins, no origin, bad bodies, unknown keys; CORS only for
    //    allowed origins.
    let body = json!({ "visitor_id": visitor_id }).to_string();
    let evil = beacon(&worker, &key, Some("https://evil.example"), &body);
    assert_eq!(evil.status, 403, "{}", evil.body);
    assert_eq!(evil.json()["error"]["code"], "origin_not_allowed");
    assert_eq!(evil.header("access-control-allow-origin"), None);
    let lookalike = beacon(
        &worker,
        &key,
        Some("https://example.com.evil.example"),
        &body,
    );
    assert_eq!(lookalike.status, 403);
    assert_eq!(
        beacon(&worker, &key, None, &body).json()["error"]["code"],
        "origin_required"
    );
    let malformed = beacon(
        &worker,
        &key,
        Some("https://app.example.com"),
        &json!({ "visitor_id": visitor_id, "page_url": "https://app.example.com/?email=x@y.z" })
            .to_string(),
    );
    assert_eq!(malformed.status, 400, "{}", malformed.body);
    assert_eq!(
        malformed.header("access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    let big = beacon(
        &worker,
        &key,
        Some("https://app.example.com"),
        &"x".repeat(5000),
    );
    assert_eq!(big.status, 413);
    let unknown = beacon(
        &worker,
        &format!("tlp_{}", "0".repeat(32)),
        Some("https://example.com"),
        &body,
    );
    assert_eq!(unknown.status, 404);
    let preflight = http(
        "OPTIONS",
        worker.port,
        &format!("/v1/pixel/{key}/collect"),
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
        ],
        b"",
    );
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    let rejected = eventually(WAIT, "pixel refusals in the rejected-request log", || {
        let answer = worker.admin("GET", "/v1/admin/rejected-requests?merchant_id=m_px", None);
        answer
            .body
            .contains("origin_not_allowed")
            .then_some(answer.body)
    });
    assert!(rejected.contains("\"pixel\""), "{rejected}");

    // 8. Erasure takes the visitor rows of the person with it.
    let erased = worker.admin(
        "POST",
        "/v1/admin/merchants/m_px/erasure",
        Some(&json!({ "email": "jane.doe@example.com" })),
    );
    assert_eq!(erased.status, 200, "{}", erased.body);
    assert_eq!(
        erased.json()["erased_rows"]["visitors"],
        1,
        "{}",
        erased.body
    );
    assert_eq!(
        worker.object_count(Some("us"), &format!("SELECT count(*) AS n FROM identities WHERE identity_key = 'visitor:{visitor_id}' OR identity_key = 'email:jane.doe@example.com'")),
        0
    );
    assert_eq!(
        worker.object_count(Some("us"), "SELECT count(*) AS n FROM identity_links WHERE identity_key = 'email:jane.doe@example.com'"),
        0
    );

    // 9. Disabling the pixel stops its key at once.
    assert_eq!(
        worker
            .admin("DELETE", "/v1/admin/merchants/m_px/pixel", None)
            .status,
        200
    );
    assert_eq!(
        beacon(&worker, &key, Some("https://example.com"), &body).status,
        404
    );
    assert_eq!(
        worker
            .admin("GET", "/v1/admin/merchants/m_px/pixel", None)
            .status,
        404
    );
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tracklayer-pixel-browser-{}-{}",
        std::process::id(),
        now()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
